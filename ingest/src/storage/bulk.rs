//! Bulk writes for filling a database with history (the load generator's `fill`): reports go
//! through the same batch transaction as posted ones (`batch::write`: samples, current state,
//! membership, versions, alerts), without HTTP, admission or the writer queue, so a caller can
//! put many days of many appliances in one transaction and keep several transactions in flight.

// Numbers from reports meet arithmetic here: every sum, difference and product must say
// what happens at the edge (checked, saturating), never panic or wrap.
#![warn(clippy::arithmetic_side_effects)]

use chrono::{DateTime, Utc};
use phonehome_schema::Report;

use super::rows::{self, PreparedReport};
use super::{InsertOutcome, Storage, StorageError};

impl Storage {
    /// Prepares `report` for [`Storage::write_prepared`] as the ingest prepares a posted one:
    /// its JSON is the evidence body, compressed with the newest report-body dictionary this
    /// handle has loaded, and the alert rules are the storage's own.
    pub fn prepare_report(
        &self,
        report: &Report,
        cert_sha256: &[u8],
        received_at: DateTime<Utc>,
    ) -> Result<PreparedReport, StorageError> {
        let json = serde_json::to_vec(report)
            .map_err(|e| StorageError::Config(format!("serialise a report: {e}")))?;
        let body = self
            .codec()
            .compress(&json)
            .map_err(|e| StorageError::Config(format!("zstd: {e}")))?;
        Ok(rows::prepare(
            report,
            cert_sha256,
            received_at,
            body,
            &self.settings().alerts,
        ))
    }

    /// Commits `reports` in one transaction, creating the months' partitions they need, and
    /// says per report whether it was stored or a duplicate. Reports of one appliance may span
    /// many days: they are applied oldest first, as a spool's backlog is.
    pub async fn write_prepared(
        &self,
        reports: &[PreparedReport],
    ) -> Result<Vec<InsertOutcome>, StorageError> {
        let refs: Vec<&PreparedReport> = reports.iter().collect();
        self.core.write_batch(&refs).await
    }
}
