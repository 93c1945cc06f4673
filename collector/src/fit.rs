//! Keeping a report under the size the ingest accepts (1 MiB after decompression by default):
//! a report the ingest refuses with 413 would be set aside every day and the appliance would go
//! dark. What does not fit is left out, largest and least essential first, and the report says
//! what was left out and why.

use phonehome_schema::{CollectionError, ErrorKind, Report};

/// Default bound: under the ingest's default 1 MiB limit, with room for its JSON framing.
pub const DEFAULT_MAX_REPORT_BYTES: usize = 1_000_000;

fn size(report: &Report) -> usize {
    serde_json::to_vec(report)
        .map(|v| v.len())
        .unwrap_or(usize::MAX)
}

fn note(errors: &mut Vec<CollectionError>, what: &str, limit: usize) {
    errors.push(CollectionError {
        item: what.to_owned(),
        kind: ErrorKind::Failed,
        message: format!("left out: the report would exceed max_report_bytes ({limit})"),
    });
}

/// Shrinks `report` until its JSON is at most `limit` bytes: first SMART evidence (smartctl's
/// full output, kept for failing disks), then ATA attribute tables, then the longest of the
/// device, filesystem and NIC lists, halving it each time. Returns whether anything was cut.
pub fn fit(report: &mut Report, limit: usize) -> bool {
    if size(report) <= limit {
        return false;
    }
    for device in &mut report.smart.devices {
        if device.evidence.take().is_some() {
            note(
                &mut report.smart.errors,
                &format!("{}: smartctl output (evidence)", device.name),
                limit,
            );
        }
    }
    if size(report) <= limit {
        return true;
    }
    for device in &mut report.smart.devices {
        if !device.attributes.is_empty() {
            device.attributes.clear();
            note(
                &mut report.smart.errors,
                &format!("{}: ATA attribute table", device.name),
                limit,
            );
        }
    }
    // Halve the longest list until the report fits; every cut is named in its section.
    while size(report) > limit {
        let lens = [
            report.filesystems.filesystems.len(),
            report.nics.nics.len(),
            report.smart.devices.len(),
        ];
        let Some((longest, &len)) = lens.iter().enumerate().max_by_key(|(_, l)| **l) else {
            break;
        };
        if len == 0 {
            // Only error lists and scalars remain: cap the error lists, the last resort.
            let cap = |errors: &mut Vec<CollectionError>| errors.truncate(10);
            cap(&mut report.identity.errors);
            cap(&mut report.system.errors);
            cap(&mut report.smart.errors);
            cap(&mut report.filesystems.errors);
            cap(&mut report.nics.errors);
            cap(&mut report.app.errors);
            report.app.checks.truncate(10);
            break;
        }
        let keep = len / 2;
        let cut = len - keep;
        match longest {
            0 => {
                report.filesystems.filesystems.truncate(keep);
                note(
                    &mut report.filesystems.errors,
                    &format!("{cut} filesystems"),
                    limit,
                );
            }
            1 => {
                report.nics.nics.truncate(keep);
                note(
                    &mut report.nics.errors,
                    &format!("{cut} network interfaces"),
                    limit,
                );
            }
            _ => {
                report.smart.devices.truncate(keep);
                note(&mut report.smart.errors, &format!("{cut} disks"), limit);
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use phonehome_schema::{Filesystem, Nic, SmartDevice};

    fn example() -> Report {
        serde_json::from_str(include_str!("../../schema/examples/report.json")).unwrap()
    }

    fn filesystem(i: usize) -> Filesystem {
        Filesystem {
            mount_point: format!("/var/lib/containers/storage/overlay/{i:064}/merged"),
            device: "overlay".into(),
            fs_type: "overlay".into(),
            read_only: false,
            bytes_total: 1,
            bytes_used: 1,
            bytes_available: 0,
            inodes_total: 1,
            inodes_used: 1,
            inodes_available: 0,
        }
    }

    #[test]
    fn a_small_report_is_left_alone() {
        let mut r = example();
        let before = r.clone();
        assert!(!fit(&mut r, DEFAULT_MAX_REPORT_BYTES));
        assert_eq!(r, before);
    }

    #[test]
    fn evidence_goes_first_then_the_longest_lists_and_the_report_says_so() {
        let mut r = example();
        r.smart.devices.push(SmartDevice {
            name: "/dev/sdz".into(),
            evidence: Some(serde_json::json!({"blob": "x".repeat(400_000)})),
            ..SmartDevice::default()
        });
        r.filesystems.filesystems = (0..20_000).map(filesystem).collect();
        r.nics.nics = (0..50)
            .map(|i| Nic {
                name: format!("veth{i}"),
                ..Nic::default()
            })
            .collect();
        assert!(size(&r) > 5_000_000);

        assert!(fit(&mut r, 1_000_000));
        assert!(size(&r) <= 1_000_000, "{}", size(&r));
        assert!(r.smart.devices.iter().all(|d| d.evidence.is_none()));
        assert!(
            r.smart
                .errors
                .iter()
                .any(|e| e.item == "/dev/sdz: smartctl output (evidence)")
        );
        assert!(
            !r.filesystems.filesystems.is_empty(),
            "as many filesystems as fit are kept"
        );
        assert!(r.filesystems.errors.iter().any(|e| e.item.ends_with(" filesystems")
            && e.message.contains("max_report_bytes")));
        assert_eq!(r.nics.nics.len(), 50, "the short NIC list is untouched");
        // Still a valid report.
        assert_eq!(r.check(r.collected_at), Ok(()));
    }
}
