//! Prepared reports and appliance rows for the engine's unit tests.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::Before;
use crate::alerts::AlertsConfig;
use crate::model::PreparedReport;

/// The contract's example (two identified drives, `/dev/sda` and `/dev/nvme0`), prepared.
pub fn prepared() -> PreparedReport {
    let mut report: phonehome_schema::Report =
        serde_json::from_str(include_str!("../../../schema/examples/report.json"))
            .expect("the contract's example");
    // Its one SMART error names a device: the section still counts as complete.
    report.smart.errors.clear();
    prepared_from(&report, &AlertsConfig::default())
}

/// `report` as the ingest prepares it on arrival, a minute after it was collected.
pub fn prepared_from(report: &phonehome_schema::Report, config: &AlertsConfig) -> PreparedReport {
    let received_at = report.collected_at + chrono::Duration::minutes(1);
    crate::storage::rows::prepare(report, &[1; 32], received_at, (Vec::new(), None), config)
}

/// Appliance 1's row: `fresh` (nothing kept yet) or known with nothing recorded.
pub fn before(fresh: bool) -> Before {
    Before {
        id: 1,
        fresh,
        last_collected_at: DateTime::<Utc>::MIN_UTC,
        system_uuid: None,
        machine_id: None,
        versions: HashMap::new(),
        boot_id: None,
        rule_state: None,
        last_cert: None,
    }
}
