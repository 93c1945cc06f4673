//! Capacity smartctl leaves out, read from the kernel instead.
//!
//! smartctl sizes an NVMe drive from the controller's total capacity (`tnvmcap`, which many
//! controllers leave at 0) or, when the controller has exactly one namespace, from that
//! namespace. A controller with more than one namespace (QEMU's `nvme` with two `nvme-ns`,
//! multi-tenant data-centre drives) gets no capacity at all for `/dev/nvme0`. The kernel knows
//! every namespace's size: `/sys/block/nvme0nY/size`, in 512-byte sectors whatever the block
//! size. A controller's capacity is then the sum of its namespaces (what is provisioned, which
//! is what the appliance can use); a namespace named directly (`/dev/nvme0n2`) is its own size.

use phonehome_schema::SmartDevice;

use crate::machine::MachineRoot;

/// `/sys/block/*/size` counts 512-byte sectors.
const SECTOR: u64 = 512;

/// Fills in `capacity_bytes` of NVMe devices that smartctl could not size, from sysfs below
/// `root`. Devices that already have one, and those whose namespaces cannot be read, are left
/// as they are.
pub fn fill_from_sysfs(root: &MachineRoot, devices: &mut [SmartDevice]) {
    for device in devices.iter_mut().filter(|d| d.capacity_bytes.is_none()) {
        let is_nvme = device
            .protocol
            .as_deref()
            .is_some_and(|p| p.eq_ignore_ascii_case("nvme"))
            || device.device_type.as_deref() == Some("nvme");
        if !is_nvme {
            continue;
        }
        if let Some(bytes) = nvme_capacity(root, &device.name) {
            device.capacity_bytes = Some(bytes);
        }
    }
}

/// `/dev/nvme3` → (3, None); `/dev/nvme3n2` → (3, Some(2)); anything else → None.
fn nvme_name(name: &str) -> Option<(u32, Option<u32>)> {
    let rest = name.strip_prefix("/dev/nvme")?;
    let (controller, namespace) = match rest.split_once('n') {
        Some((c, n)) => (c, Some(n)),
        None => (rest, None),
    };
    let number = |s: &str| -> Option<u32> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let namespace = match namespace {
        Some(n) => Some(number(n)?),
        None => None,
    };
    Some((number(controller)?, namespace))
}

/// The bytes of the namespaces of the controller (or the one namespace) `name` stands for;
/// `None` when there is none or one cannot be read, since a partial sum would be a wrong size.
fn nvme_capacity(root: &MachineRoot, name: &str) -> Option<u64> {
    let (controller, namespace) = nvme_name(name)?;
    let blocks: Vec<String> = match namespace {
        Some(n) => vec![format!("nvme{controller}n{n}")],
        None => {
            let prefix = format!("nvme{controller}n");
            let mut found: Vec<String> = std::fs::read_dir(root.path("/sys/block"))
                .ok()?
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|b| {
                    b.strip_prefix(&prefix)
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
                })
                .collect();
            found.sort();
            found
        }
    };
    if blocks.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    for block in blocks {
        let sectors: u64 = root
            .read_attribute_io(&format!("/sys/block/{block}/size"))
            .ok()?
            .parse()
            .ok()?;
        total = total.checked_add(sectors.checked_mul(SECTOR)?)?;
    }
    (total > 0).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(blocks: &[(&str, &str)]) -> (tempfile::TempDir, MachineRoot) {
        let dir = tempfile::tempdir().expect("temp dir");
        for (block, size) in blocks {
            let d = dir.path().join("sys/block").join(block);
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join("size"), size).expect("write size");
        }
        let root = MachineRoot::new(dir.path());
        (dir, root)
    }

    fn nvme(name: &str, capacity: Option<u64>) -> SmartDevice {
        SmartDevice {
            name: name.to_owned(),
            protocol: Some("NVMe".to_owned()),
            capacity_bytes: capacity,
            ..SmartDevice::default()
        }
    }

    #[test]
    fn names_of_controllers_and_namespaces() {
        assert_eq!(nvme_name("/dev/nvme0"), Some((0, None)));
        assert_eq!(nvme_name("/dev/nvme12n3"), Some((12, Some(3))));
        for other in [
            "/dev/sda",
            "/dev/nvme",
            "/dev/nvme0n",
            "/dev/nvmeXn1",
            "/dev/nvme0n1p2",
        ] {
            assert_eq!(nvme_name(other), None, "{other}");
        }
    }

    #[test]
    fn a_controller_with_two_namespaces_is_their_sum_and_a_namespace_its_own_size() {
        // As the virtual appliance has them: 256 MiB and 64 MiB, a SATA disk beside them, and
        // a second controller's namespace that must not count.
        let (_dir, root) = machine(&[
            ("nvme0n1", "524288\n"),
            ("nvme0n2", "131072\n"),
            ("nvme1n1", "2048\n"),
            ("sda", "524288\n"),
        ]);
        let mut devices = vec![
            nvme("/dev/nvme0", None),
            nvme("/dev/nvme0n2", None),
            nvme("/dev/nvme1", Some(7)),
            SmartDevice {
                name: "/dev/sda".to_owned(),
                protocol: Some("ATA".to_owned()),
                ..SmartDevice::default()
            },
        ];
        fill_from_sysfs(&root, &mut devices);
        let sizes: Vec<Option<u64>> = devices.iter().map(|d| d.capacity_bytes).collect();
        assert_eq!(
            sizes,
            vec![
                Some(320 * 1024 * 1024),
                Some(64 * 1024 * 1024),
                Some(7),
                None
            ]
        );
    }

    #[test]
    fn an_unreadable_or_missing_namespace_leaves_the_capacity_unknown() {
        let (_dir, root) = machine(&[("nvme0n1", "524288"), ("nvme0n2", "lots")]);
        let mut devices = vec![nvme("/dev/nvme0", None), nvme("/dev/nvme5", None)];
        fill_from_sysfs(&root, &mut devices);
        assert_eq!(devices[0].capacity_bytes, None, "no partial sum");
        assert_eq!(devices[1].capacity_bytes, None, "no namespace at all");
        let (_dir, root) = machine(&[("nvme0n1", "0")]);
        let mut devices = vec![nvme("/dev/nvme0", None)];
        fill_from_sysfs(&root, &mut devices);
        assert_eq!(
            devices[0].capacity_bytes, None,
            "an empty namespace is no size"
        );
    }
}
