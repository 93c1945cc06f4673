//! Network interfaces from `/sys/class/net`: link state, speed, MTU, MAC, driver and every
//! counter under `statistics/`.

use std::collections::BTreeMap;
use std::fs;
use std::io;

use phonehome_schema::{CollectionError, Nic, NicsSection};

use crate::machine::{MachineRoot, invalid, io_error};

const CLASS_NET: &str = "/sys/class/net";

pub fn collect(root: &MachineRoot) -> NicsSection {
    let mut section = NicsSection::default();
    let entries = match fs::read_dir(root.path(CLASS_NET)) {
        Ok(entries) => entries,
        Err(e) => {
            section.errors.push(io_error(CLASS_NET, &e));
            return section;
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => {
                let name = entry.file_name().to_string_lossy().into_owned();
                // Interfaces are (links to) directories; `bonding_masters` and the like are
                // control files that live beside them.
                if name != "lo" && fs::metadata(entry.path()).is_ok_and(|m| m.is_dir()) {
                    names.push(name);
                }
            }
            Err(e) => section.errors.push(io_error(CLASS_NET, &e)),
        }
    }
    names.sort();
    for name in names {
        section
            .nics
            .push(read_nic(root, &name, &mut section.errors));
    }
    section
}

/// Reads one interface; what cannot be read is recorded and left out, the rest is kept.
fn read_nic(root: &MachineRoot, name: &str, errors: &mut Vec<CollectionError>) -> Nic {
    let dir = format!("{CLASS_NET}/{name}");
    let mut attribute = |file: &str| -> Option<String> {
        let path = format!("{dir}/{file}");
        match root.read_attribute_io(&path) {
            Ok(value) => Some(value),
            // Missing files, and EINVAL, which the kernel returns for `carrier` and `speed` while
            // the link is down: the attribute does not apply right now.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::InvalidInput
                ) =>
            {
                None
            }
            Err(e) => {
                errors.push(io_error(&path, &e));
                None
            }
        }
    };
    let operstate = attribute("operstate").filter(|s| !s.is_empty());
    let carrier_text = attribute("carrier");
    let speed_text = attribute("speed");
    let mtu_text = attribute("mtu");
    let mac = attribute("address").filter(|s| !s.is_empty());

    let carrier = carrier_text.and_then(|t| match t.as_str() {
        "1" => Some(true),
        "0" => Some(false),
        other => {
            errors.push(invalid(
                &format!("{dir}/carrier"),
                format!("{other:?} is not 0 or 1"),
            ));
            None
        }
    });
    // The kernel reports -1 (or an error) when the speed is unknown, e.g. for a link that is down
    // or a virtual device.
    let speed_mbps = speed_text.and_then(|t| match t.parse::<i64>() {
        Ok(s) if s < 0 => None,
        Ok(s) => u32::try_from(s).ok(),
        Err(e) => {
            errors.push(invalid(&format!("{dir}/speed"), format!("{t:?}: {e}")));
            None
        }
    });
    let mtu = mtu_text.and_then(|t| match t.parse::<u32>() {
        Ok(m) => Some(m),
        Err(e) => {
            errors.push(invalid(&format!("{dir}/mtu"), format!("{t:?}: {e}")));
            None
        }
    });
    let driver = read_driver(root, &dir, errors);
    let counters = read_counters(root, &dir, errors);
    Nic {
        name: name.to_owned(),
        operstate,
        carrier,
        speed_mbps,
        mtu,
        mac,
        driver,
        counters,
    }
}

/// The kernel driver bound to the interface's device; virtual interfaces have none.
fn read_driver(root: &MachineRoot, dir: &str, errors: &mut Vec<CollectionError>) -> Option<String> {
    let link = format!("{dir}/device/driver");
    match fs::read_link(root.path(&link)) {
        Ok(target) => target.file_name().map(|n| n.to_string_lossy().into_owned()),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            None
        }
        Err(e) => {
            errors.push(io_error(&link, &e));
            None
        }
    }
}

fn read_counters(
    root: &MachineRoot,
    dir: &str,
    errors: &mut Vec<CollectionError>,
) -> BTreeMap<String, u64> {
    let mut counters = BTreeMap::new();
    let stats = format!("{dir}/statistics");
    let entries = match fs::read_dir(root.path(&stats)) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return counters,
        Err(e) => {
            errors.push(io_error(&stats, &e));
            return counters;
        }
    };
    for entry in entries {
        let name = match entry {
            Ok(entry) => entry.file_name().to_string_lossy().into_owned(),
            Err(e) => {
                errors.push(io_error(&stats, &e));
                continue;
            }
        };
        let path = format!("{stats}/{name}");
        match root.read_attribute(&path) {
            Ok(text) => match text.parse::<u64>() {
                Ok(value) => {
                    counters.insert(name, value);
                }
                Err(e) => errors.push(invalid(&path, format!("{text:?}: {e}"))),
            },
            Err(e) => errors.push(e),
        }
    }
    counters
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_broken_interface_does_not_hide_the_others() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let net = dir.path().join("sys/class/net");
        for (nic, files) in [
            ("lo", &[("operstate", "unknown")][..]),
            (
                "eth0",
                &[
                    ("operstate", "up"),
                    ("carrier", "1"),
                    ("speed", "10000"),
                    ("mtu", "9000"),
                ],
            ),
            (
                "eth1",
                &[("operstate", "down"), ("speed", "-1"), ("mtu", "many")],
            ),
        ] {
            fs::create_dir_all(net.join(nic).join("statistics"))?;
            for (file, value) in files {
                fs::write(net.join(nic).join(file), format!("{value}\n"))?;
            }
        }
        fs::write(net.join("eth0/statistics/rx_errors"), "7\n")?;
        fs::write(net.join("eth1/statistics/tx_dropped"), "lots\n")?;
        fs::write(net.join("bonding_masters"), "bond0\n")?;

        let section = collect(&MachineRoot::new(dir.path()));
        let names: Vec<&str> = section.nics.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["eth0", "eth1"]);
        let eth0 = &section.nics[0];
        assert_eq!(
            (eth0.carrier, eth0.speed_mbps, eth0.mtu),
            (Some(true), Some(10000), Some(9000))
        );
        assert_eq!(eth0.counters.get("rx_errors"), Some(&7));
        let eth1 = &section.nics[1];
        assert_eq!(
            (eth1.operstate.as_deref(), eth1.speed_mbps, eth1.mtu),
            (Some("down"), None, None)
        );
        let items: Vec<&str> = section.errors.iter().map(|e| e.item.as_str()).collect();
        assert_eq!(
            items,
            [
                "/sys/class/net/eth1/mtu",
                "/sys/class/net/eth1/statistics/tx_dropped"
            ]
        );
        Ok(())
    }
}
