//! Test support for phonehome's end-to-end tests: a fresh PostgreSQL database per test, a
//! private cluster for tests that crash PostgreSQL, a throwaway PKI, the real binaries, a real
//! Alertmanager, a small TLS client that can misbehave on purpose, and a headless Chromium
//! driven through chromedriver for the dashboard.

pub mod alertmanager;
pub mod bins;
pub mod browser;
pub mod client;
pub mod cluster;
pub mod fleet;
pub mod pg;
pub mod pki;
pub mod proxy;
pub mod scaleout;

pub use pg::{TestDb, report_copies};

use phonehome_ingest::storage::{InsertOutcome, Storage};
use phonehome_ingest::tls::ApplianceIdentity;
use phonehome_schema::Report;

/// Stores `r` through the ingest's storage layer, as the ingest would after the handshake with a
/// certificate for its serial (every such certificate has the same fingerprint here), and says
/// whether it was new.
pub async fn store_report(storage: &Storage, r: &Report) -> InsertOutcome {
    try_store_report(storage, r).await.expect("report stored")
}

/// [`store_report`], returning the storage layer's error instead of failing the test.
pub async fn try_store_report(
    storage: &Storage,
    r: &Report,
) -> Result<InsertOutcome, phonehome_ingest::storage::StorageError> {
    let identity = ApplianceIdentity {
        serial: r.identity.serial.clone(),
        cert_sha256: [7; 32],
        not_before: chrono::DateTime::<chrono::Utc>::MIN_UTC,
        not_after: chrono::DateTime::<chrono::Utc>::MAX_UTC,
    };
    let body = serde_json::to_string(r).expect("json");
    storage.insert_report(r, &identity, &body).await
}

/// The contract's example report (`schema/examples/report.json`) for `serial`, with a fresh
/// `report_id` and collected now, as a collector would send it today.
pub fn example_report(serial: &str) -> Report {
    let mut r: Report = serde_json::from_str(include_str!("../../schema/examples/report.json"))
        .expect("the contract's example is a valid report");
    r.identity.serial = serial.parse().expect("test serial is valid");
    r.report_id = uuid::Uuid::new_v4();
    r.collected_at = chrono::Utc::now();
    r
}
