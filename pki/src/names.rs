//! How a certificate names an appliance: its serial in the subject CN and in a URI SAN.

use phonehome_schema::Serial;

/// Prefix of the URI SAN that names an appliance: `urn:phonehome:serial:<percent-encoded serial>`.
pub const SERIAL_URI_PREFIX: &str = "urn:phonehome:serial:";

/// The URI SAN for a serial. Serials may hold spaces and URI delimiters, so everything outside
/// the unreserved set is percent-encoded.
pub fn serial_uri(serial: &Serial) -> String {
    let mut out = String::from(SERIAL_URI_PREFIX);
    for b in serial.as_str().bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reverses [`serial_uri`]; `None` if `uri` is not a phonehome serial URI.
pub fn serial_from_uri(uri: &str) -> Option<String> {
    let rest = uri.strip_prefix(SERIAL_URI_PREFIX)?;
    let bytes = rest.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = rest.get(i.checked_add(1)?..i.checked_add(3)?)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i = i.checked_add(3)?;
        } else {
            out.push(b);
            i = i.checked_add(1)?;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_uri_round_trips_awkward_serials() {
        for s in ["CZJ1234ABC", "VMware-56 4d 9e", "a/b?c#d%e", "x:y+z"] {
            let serial = Serial::parse(s).unwrap();
            let uri = serial_uri(&serial);
            assert!(uri.bytes().all(|b| b.is_ascii_graphic()), "{uri}");
            assert_eq!(serial_from_uri(&uri).as_deref(), Some(s));
        }
        assert_eq!(serial_from_uri("urn:other:x"), None);
        assert_eq!(serial_from_uri("urn:phonehome:serial:%zz"), None);
        assert_eq!(serial_from_uri("urn:phonehome:serial:%4"), None);
    }
}
