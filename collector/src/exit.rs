//! Process exit codes, from sysexits.h, so that cron wrappers and systemd can tell "try again
//! later" from "a human must fix the configuration" from "the disk is failing".
//!
//! For `run`, when several apply, the first in this order wins: 78, 74, 65, 75, 0.

/// Everything was delivered: this run's report and every report spooled before it (2xx).
pub const OK: u8 = 0;
/// EX_DATAERR: the ingest refused a report for good (400, 413, 415, 422, or 403 for a spooled
/// report of another serial than this run's, i.e. written before the appliance was re-imaged);
/// it was set aside as `*.rejected` in the spool directory and the others were delivered or
/// kept.
pub const DATAERR: u8 = 65;
/// EX_SOFTWARE: a bug in the collector (the report could not be encoded).
pub const SOFTWARE: u8 = 70;
/// EX_IOERR: `collect` could not write the report to standard output; `run` found the spool
/// unusable (it could not be opened, or this run's report could not be written to it), even if
/// the report was then delivered directly, or could neither spool nor deliver this run's
/// report. A report still gets out when the disk fails, but the operator must learn of it.
pub const IOERR: u8 = 74;
/// EX_TEMPFAIL: reports wait in the spool (the network failed, the ingest was unreachable or
/// busy, or another run is delivering); a later run delivers them.
pub const TEMPFAIL: u8 = 75;
/// EX_CONFIG: configuration, certificate, key or CA missing or unusable; a spool directory
/// that is missing and cannot be created (this run's report is still sent directly); no
/// serial; a TLS certificate not accepted by either side; or the ingest answered 403 for this
/// run's serial (the certificate is not this serial's) or a status that means a wrong
/// `server`. Spooled reports are kept.
pub const CONFIG: u8 = 78;
