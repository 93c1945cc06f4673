//! SMART status of the disks. Not collected by this collector version: the section says so
//! instead of pretending the machine has no disks.

use phonehome_schema::{CollectionError, ErrorKind, SmartSection};

pub fn collect() -> SmartSection {
    SmartSection {
        devices: Vec::new(),
        errors: vec![CollectionError {
            item: "smartctl".to_owned(),
            kind: ErrorKind::Unsupported,
            message: "SMART collection arrives in a later collector version".to_owned(),
        }],
    }
}
