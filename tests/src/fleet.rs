//! A small simulated fleet for the dashboard's tests: healthy appliances with three days of
//! history, and one of each kind an operator must find: a failing drive, a silent appliance, an
//! outdated app, a degrading drive. Each has its own identity and drives, so nothing looks cloned.

use chrono::{Duration, SubsecRound, Utc};
use phonehome_ingest::storage::{InsertOutcome, Storage};
use phonehome_schema::Report;

/// The serials of the seeded fleet, by what is wrong with them.
#[derive(Debug, Clone)]
pub struct SeededFleet {
    /// Every serial, in the order stored.
    pub all: Vec<String>,
    /// Its ATA drive's overall health failed on the last day: `disk_failing`, critical.
    pub critical: String,
    /// The key of that failing drive.
    pub failing_drive: String,
    /// Last heard from three days ago.
    pub silent: String,
    /// Runs app 4.1.0 (the others 4.3.0).
    pub outdated: String,
    /// Its ATA drive's reallocated sectors rose every day: `disk_degrading`.
    pub degrading: String,
    /// Nothing wrong.
    pub healthy: Vec<String>,
}

/// The example report for appliance `i` of a fleet: its own serial, identity, drives and MAC.
pub fn report_for(serial: &str, i: usize) -> Report {
    let mut r = crate::example_report(serial);
    r.identity.hostname = Some(format!("host-{i:03}"));
    r.identity.machine_id = Some(format!("{:032x}", 0xfeed_0000_u64 + i as u64));
    r.identity.system_uuid = Some(uuid::Uuid::new_v4());
    r.smart.errors.clear();
    for (k, d) in r.smart.devices.iter_mut().enumerate() {
        if let Some(s) = &mut d.serial {
            *s = format!("{s}-{i:03}");
        }
        if d.wwn.is_some() {
            d.wwn = Some(if d.protocol.as_deref() == Some("NVMe") {
                format!("eui.0025385791{i:06x}")
            } else {
                format!("0x5000c500{i:06x}{k:02x}")
            });
        }
    }
    for n in &mut r.nics.nics {
        n.mac = Some(format!("02:00:00:00:{:02x}:{:02x}", i / 256, i % 256));
    }
    r.app.version = Some("4.3.0".into());
    r
}

/// Stores `healthy + 4` appliances with `prefix` serials through the ingest's storage layer into
/// `db`. The silent one is made silent as time would: its last report arrived three days ago.
pub async fn seed(
    db: &crate::TestDb,
    storage: &Storage,
    prefix: &str,
    healthy: usize,
) -> SeededFleet {
    let serial = |i: usize| format!("{prefix}-{i:03}");
    let critical = serial(0);
    let silent = serial(1);
    let outdated = serial(2);
    let degrading = serial(3);
    let mut failing_drive = String::new();
    let count = healthy + 4;
    for i in 0..count {
        let base = report_for(&serial(i), i);
        let days: &[i64] = if i == 1 { &[4, 3] } else { &[2, 1, 0] };
        for (n, &days_ago) in days.iter().enumerate() {
            let mut r = base.clone();
            r.report_id = uuid::Uuid::new_v4();
            r.collected_at =
                (Utc::now() - Duration::days(days_ago) - Duration::hours(1)).trunc_subsecs(0);
            // Some drift, so the charts have a line to draw.
            r.smart.devices[0].temperature_celsius = Some(30 + n as i64 + (i % 5) as i64);
            if let Some(fs) = r.filesystems.filesystems.first_mut() {
                let grow = 5_000_000_000 * n as u64;
                fs.bytes_used = fs.bytes_used.saturating_add(grow);
                fs.bytes_available = fs.bytes_available.saturating_sub(grow);
            }
            if i == 0 && days_ago == 0 {
                r.smart.devices[0].health_passed = Some(false);
                failing_drive = phonehome_ingest::storage::rows::drive_key(&r.smart.devices[0])
                    .expect("the ATA drive has a key");
            }
            if i == 2 {
                r.app.version = Some("4.1.0".into());
            }
            if i == 3 {
                r.smart.devices[0].reallocated_sectors = Some(8 * n as u64);
            }
            assert_eq!(
                crate::store_report(storage, &r).await,
                InsertOutcome::Stored,
                "{} day -{days_ago}",
                r.identity.serial
            );
        }
    }
    db.client()
        .await
        .execute(
            "UPDATE appliances SET last_report_at = now() - interval '3 days' WHERE serial = $1",
            &[&silent],
        )
        .await
        .expect("backdate the silent appliance");
    SeededFleet {
        all: (0..count).map(serial).collect(),
        critical,
        failing_drive,
        silent,
        outdated,
        degrading,
        healthy: (4..count).map(serial).collect(),
    }
}
