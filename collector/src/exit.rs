//! Process exit codes, from sysexits.h, so that cron wrappers and systemd can tell "try again
//! later" from "a human must fix the configuration".

/// The report was delivered (2xx).
pub const OK: u8 = 0;
/// EX_DATAERR: the ingest refused the report itself (400, 413, 415, 422).
pub const DATAERR: u8 = 65;
/// EX_SOFTWARE: a bug in the collector (the report could not be encoded).
pub const SOFTWARE: u8 = 70;
/// EX_IOERR: the report could not be written to standard output.
pub const IOERR: u8 = 74;
/// EX_TEMPFAIL: network error, timeout, TLS failure, 5xx, 408 or 429; the next run may succeed.
pub const TEMPFAIL: u8 = 75;
/// EX_CONFIG: configuration, certificate, key or CA missing or wrong, no serial, or the ingest
/// answered 403 (the certificate is not this serial's) or a status that means a wrong `server`.
pub const CONFIG: u8 = 78;
