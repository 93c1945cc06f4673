//! Keeping a report under the size the ingest accepts (1 MiB after decompression by default):
//! a report the ingest refuses with 413 would be set aside every day and the appliance would go
//! dark. What does not fit is left out, largest and least essential first, and the report says
//! what was left out and why. The same for the contract's bounds on lists and names
//! (`MAX_ITEMS`, `MAX_NAME_CHARS`): a report past them would be refused with 422 every day.

use phonehome_schema::{CollectionError, ErrorKind, MAX_ITEMS, MAX_NAME_CHARS, Report};

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
    let bounded = bound(report);
    if size(report) <= limit {
        return bounded;
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

fn bound_note(errors: &mut Vec<CollectionError>, what: String, why: &str) {
    errors.push(CollectionError {
        item: what,
        kind: ErrorKind::Failed,
        message: format!("left out: {why}"),
    });
}

/// Cuts `s` to the contract's name length.
fn shorten(s: &mut String) -> bool {
    match s.char_indices().nth(MAX_NAME_CHARS) {
        Some((at, _)) => {
            s.truncate(at);
            true
        }
        None => false,
    }
}

/// Keeps `report` within the contract's bounds: at most [`MAX_ITEMS`] devices, filesystems, NICs
/// and app checks (the rest named as left out), names cut to [`MAX_NAME_CHARS`] characters.
/// Returns whether anything was cut.
fn bound(report: &mut Report) -> bool {
    let why = format!("the report contract accepts at most {MAX_ITEMS} of them");
    let mut cut = false;
    let over = |n: usize| n.saturating_sub(MAX_ITEMS);
    let n = over(report.filesystems.filesystems.len());
    if n > 0 {
        report.filesystems.filesystems.truncate(MAX_ITEMS);
        bound_note(
            &mut report.filesystems.errors,
            format!("{n} filesystems"),
            &why,
        );
        cut = true;
    }
    let n = over(report.nics.nics.len());
    if n > 0 {
        report.nics.nics.truncate(MAX_ITEMS);
        bound_note(
            &mut report.nics.errors,
            format!("{n} network interfaces"),
            &why,
        );
        cut = true;
    }
    let n = over(report.smart.devices.len());
    if n > 0 {
        report.smart.devices.truncate(MAX_ITEMS);
        bound_note(&mut report.smart.errors, format!("{n} disks"), &why);
        cut = true;
    }
    let n = over(report.app.checks.len());
    if n > 0 {
        report.app.checks.truncate(MAX_ITEMS);
        bound_note(&mut report.app.errors, format!("{n} app checks"), &why);
        cut = true;
    }
    let mut names: Vec<&mut String> = vec![&mut report.collector.version];
    names.extend(report.identity.hostname.as_mut());
    names.extend(report.system.kernel.as_mut());
    if let Some(os) = report.system.os.as_mut() {
        names.extend(os.id.as_mut());
        names.extend(os.version_id.as_mut());
        names.extend(os.pretty_name.as_mut());
    }
    names.extend(report.app.version.as_mut());
    for d in &mut report.smart.devices {
        names.push(&mut d.name);
        names.extend(d.model.as_mut());
        names.extend(d.serial.as_mut());
        names.extend(d.wwn.as_mut());
        names.extend(d.firmware.as_mut());
        names.extend(d.protocol.as_mut());
    }
    for f in &mut report.filesystems.filesystems {
        names.push(&mut f.mount_point);
        names.push(&mut f.device);
        names.push(&mut f.fs_type);
    }
    for nic in &mut report.nics.nics {
        names.push(&mut nic.name);
    }
    let shortened = names.into_iter().map(shorten).filter(|c| *c).count();
    if shortened > 0 {
        report.identity.errors.push(CollectionError {
            item: format!("{shortened} names"),
            kind: ErrorKind::Failed,
            message: format!("cut to the report contract's {MAX_NAME_CHARS} characters"),
        });
        cut = true;
    }
    cut
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
        // Within the contract's bounds, over the size limit.
        r.filesystems.filesystems = (0..500).map(filesystem).collect();
        r.nics.nics = (0..50)
            .map(|i| Nic {
                name: format!("veth{i}"),
                ..Nic::default()
            })
            .collect();
        assert!(size(&r) > 400_000);

        assert!(fit(&mut r, 60_000));
        assert!(size(&r) <= 60_000, "{}", size(&r));
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

    #[test]
    fn lists_and_names_past_the_contract_s_bounds_are_cut_and_said() {
        let mut r = example();
        r.nics.nics = (0..600)
            .map(|i| Nic {
                name: format!("veth{i}"),
                ..Nic::default()
            })
            .collect();
        r.app.version = Some("é".repeat(MAX_NAME_CHARS + 5));
        assert!(r.check(r.collected_at).is_err());
        assert!(fit(&mut r, DEFAULT_MAX_REPORT_BYTES));
        assert_eq!(r.check(r.collected_at), Ok(()), "the ingest will take it");
        assert_eq!(r.nics.nics.len(), MAX_ITEMS);
        assert!(
            r.nics
                .errors
                .iter()
                .any(|e| e.item == "88 network interfaces")
        );
        assert_eq!(
            r.app.version.as_deref().map(|v| v.chars().count()),
            Some(MAX_NAME_CHARS)
        );
        assert!(r.identity.errors.iter().any(|e| e.item == "1 names"));
    }
}
