//! Who this appliance is: its serial (configuration, DMI, or machine-id as a stand-in), system
//! UUID, machine-id, hostname and boot id.

use std::fmt;

use phonehome_schema::{CollectionError, ErrorKind, Identity, Serial, SerialSource, is_machine_id};
use uuid::Uuid;

use crate::machine::{ATTRIBUTE_LIMIT, MachineRoot, invalid};

const DMI_DIR: &str = "/sys/class/dmi/id";
const PRODUCT_UUID: &str = "/sys/class/dmi/id/product_uuid";
const MACHINE_ID: &str = "/etc/machine-id";
const HOSTNAME: &str = "/proc/sys/kernel/hostname";
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// DMI serial files in the order they are trusted: the product (system) serial is what vendors
/// print on the label; chassis and board serials are fallbacks for white-box hardware.
const DMI_SERIALS: [(&str, SerialSource); 3] = [
    ("/sys/class/dmi/id/product_serial", SerialSource::DmiProduct),
    ("/sys/class/dmi/id/chassis_serial", SerialSource::DmiChassis),
    ("/sys/class/dmi/id/board_serial", SerialSource::DmiBoard),
];

/// Values firmware writes when nobody filled in a serial. Compared case-insensitively.
const PLACEHOLDERS: &[&str] = &[
    "to be filled by o.e.m.",
    "to be filled by o.e.m",
    "default string",
    "system serial number",
    "chassis serial number",
    "base board serial number",
    "not specified",
    "not applicable",
    "not available",
    "n/a",
    "0123456789",
    "none",
    "unknown",
];

/// No serial could be established: neither configured, nor in DMI, nor a usable machine-id; or
/// DMI holds a serial this process may not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoSerialError {
    /// What went wrong on the way, machine-id last.
    pub errors: Vec<CollectionError>,
    /// A DMI serial file that exists but is unreadable to us (usually root-only, 0400).
    pub denied: Option<String>,
}

impl fmt::Display for NoSerialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(path) = &self.denied {
            // Falling back to the machine-id here would silently give the appliance another
            // identity than the one its certificate was issued for.
            return write!(
                f,
                "cannot read the DMI serial {path}: permission denied; run the collector as root \
                 or set `serial` in its configuration file"
            );
        }
        write!(
            f,
            "no serial number for this appliance: DMI has no usable serial and {MACHINE_ID} \
             cannot stand in"
        )?;
        if let Some(e) = self.errors.iter().rev().find(|e| e.item == MACHINE_ID) {
            write!(f, " ({})", e.message)?;
        }
        write!(f, "; set `serial` in the collector's configuration file")
    }
}

impl std::error::Error for NoSerialError {}

/// Gathers the identity section. `serial_override` comes from the configuration.
pub fn collect(
    root: &MachineRoot,
    serial_override: Option<&Serial>,
) -> Result<Identity, NoSerialError> {
    let mut errors = Vec::new();
    // A machine without DMI (many virtual machines, most ARM boards) is normal, not an error;
    // a DMI directory with unreadable files is worth reporting.
    let dmi_present = root.path(DMI_DIR).is_dir();

    let machine_id = match read_machine_id(root) {
        Ok(id) => Some(id),
        Err(e) => {
            errors.push(e);
            None
        }
    };

    let found = match serial_override {
        Some(serial) => Some((serial.clone(), SerialSource::Config)),
        None if dmi_present => dmi_serial(root, &mut errors).map_err(|denied| {
            errors.push(denied.clone());
            NoSerialError {
                errors: errors.clone(),
                denied: Some(denied.item),
            }
        })?,
        None => None,
    };
    let (serial, serial_source) = match found {
        Some(found) => found,
        None => match machine_id.as_deref().map(Serial::parse) {
            Some(Ok(serial)) => (serial, SerialSource::MachineId),
            Some(Err(e)) => {
                errors.push(invalid(MACHINE_ID, e.to_string()));
                return Err(NoSerialError {
                    errors,
                    denied: None,
                });
            }
            None => {
                return Err(NoSerialError {
                    errors,
                    denied: None,
                });
            }
        },
    };

    let system_uuid = if dmi_present {
        read_system_uuid(root, &mut errors)
    } else {
        None
    };
    let hostname = match root.read_attribute(HOSTNAME) {
        // The kernel's value before anyone set a hostname.
        Ok(h) if h.is_empty() || h == "(none)" => None,
        Ok(h) => Some(h),
        Err(e) => {
            errors.push(e);
            None
        }
    };
    let boot_id = read_uuid(root, BOOT_ID, &mut errors);

    Ok(Identity {
        serial,
        serial_source,
        system_uuid,
        machine_id,
        hostname,
        boot_id,
        errors,
    })
}

/// The first usable DMI serial. `Err` when a serial file is there but unreadable to us: the next
/// source would be a different identity from the one the appliance has when run as root.
fn dmi_serial(
    root: &MachineRoot,
    errors: &mut Vec<CollectionError>,
) -> Result<Option<(Serial, SerialSource)>, CollectionError> {
    for (path, source) in DMI_SERIALS {
        let bytes = match root.read_bytes(path, ATTRIBUTE_LIMIT) {
            Ok(bytes) => bytes,
            Err(e) if e.kind == ErrorKind::PermissionDenied => return Err(e),
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        match usable_serial(&bytes) {
            Ok(Some(serial)) => return Ok(Some((serial, source))),
            Ok(None) => {}
            Err(message) => errors.push(invalid(path, message)),
        }
    }
    Ok(None)
}

/// The serial in a DMI file's bytes: `Ok(None)` for a vendor placeholder, `Err` for a value that
/// cannot be a serial.
pub fn usable_serial(bytes: &[u8]) -> Result<Option<Serial>, String> {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    if is_placeholder(text) {
        return Ok(None);
    }
    Serial::parse(text)
        .map(Some)
        .map_err(|e| format!("{e}: {:?}", shorten(text)))
}

/// True for the values firmware writes instead of a real serial.
pub fn is_placeholder(value: &str) -> bool {
    let significant: Vec<char> = value
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | ':' | '.'))
        .collect();
    significant.is_empty()
        || significant.iter().all(|c| *c == '0')
        || significant.iter().all(|c| c.eq_ignore_ascii_case(&'f'))
        || PLACEHOLDERS.iter().any(|p| p.eq_ignore_ascii_case(value))
}

fn read_machine_id(root: &MachineRoot) -> Result<String, CollectionError> {
    let id = root.read_attribute(MACHINE_ID)?;
    if !is_machine_id(&id) {
        return Err(invalid(
            MACHINE_ID,
            format!("{:?} is not 32 lowercase hexadecimal digits", shorten(&id)),
        ));
    }
    // An all-zero id is what broken images ship; as a serial it would merge every such machine.
    if id.bytes().all(|b| b == b'0') {
        return Err(invalid(MACHINE_ID, "is all zeros, a placeholder"));
    }
    Ok(id)
}

fn read_system_uuid(root: &MachineRoot, errors: &mut Vec<CollectionError>) -> Option<Uuid> {
    let uuid = read_uuid(root, PRODUCT_UUID, errors)?;
    // Firmware that has no UUID fills the field with all zeros or all ones; those would make
    // every such machine look identical.
    if uuid.is_nil() || uuid.as_bytes().iter().all(|b| *b == 0xff) {
        None
    } else {
        Some(uuid)
    }
}

fn read_uuid(root: &MachineRoot, path: &str, errors: &mut Vec<CollectionError>) -> Option<Uuid> {
    let text = match root.read_attribute(path) {
        Ok(text) => text,
        Err(e) => {
            errors.push(e);
            return None;
        }
    };
    match Uuid::parse_str(&text) {
        Ok(uuid) => Some(uuid),
        Err(e) => {
            errors.push(CollectionError {
                item: path.to_owned(),
                kind: ErrorKind::Invalid,
                message: format!("{:?} is not a UUID: {e}", shorten(&text)),
            });
            None
        }
    }
}

/// Keeps messages about odd file contents short.
fn shorten(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let mut short: String = s.chars().take(MAX).collect();
        short.push('…');
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_not_serials() {
        for value in [
            "To Be Filled By O.E.M.",
            "TO BE FILLED BY O.E.M.",
            "Default string",
            "System Serial Number",
            "Not Specified",
            "0123456789",
            "None",
            "",
            "   ",
            "0000000000",
            "00000000-0000-0000-0000-000000000000",
            "FFFFFFFF",
            "ffff-ffff",
            "...",
        ] {
            assert!(is_placeholder(value), "{value:?} should be a placeholder");
            assert_eq!(usable_serial(value.as_bytes()), Ok(None), "{value:?}");
        }
    }

    #[test]
    fn real_serials_survive_trimming() {
        for (bytes, expected) in [
            (&b"7N62AI2\n"[..], "7N62AI2"),
            (b"  CZJ1234ABC  \n", "CZJ1234ABC"),
            (b".7N62AI2.GRTCL6944100GP.\n", ".7N62AI2.GRTCL6944100GP."),
            (b"VMware-56 4d 9e 0e\n", "VMware-56 4d 9e 0e"),
            (b"F00D\n", "F00D"),
        ] {
            let serial = usable_serial(bytes).ok().flatten().map(String::from);
            assert_eq!(serial.as_deref(), Some(expected), "{bytes:?}");
        }
    }

    #[test]
    fn non_utf8_bytes_are_refused_with_a_reason() {
        let err = usable_serial(b"AB\xffCD\n").err().unwrap_or_default();
        assert!(err.contains("only printable ASCII"), "{err}");
    }
}
