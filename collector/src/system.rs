//! Operating system (`os-release`), kernel release, architecture, uptime, load and memory.

use phonehome_schema::{CollectionError, ErrorKind, LoadAverage, Memory, OsRelease, SystemSection};

use crate::machine::{MachineRoot, invalid};

const OS_RELEASE: &str = "/etc/os-release";
/// os-release(5): read when `/etc/os-release` does not exist.
const OS_RELEASE_FALLBACK: &str = "/usr/lib/os-release";
const OS_RELEASE_LIMIT: u64 = 64 * 1024;
const OSRELEASE: &str = "/proc/sys/kernel/osrelease";
const UPTIME: &str = "/proc/uptime";
const LOADAVG: &str = "/proc/loadavg";
const MEMINFO: &str = "/proc/meminfo";
const MEMINFO_LIMIT: u64 = 64 * 1024;

pub fn collect(root: &MachineRoot) -> SystemSection {
    let mut errors = Vec::new();
    let os = match read_os_release(root) {
        Ok(os) => Some(os),
        Err(e) => {
            errors.push(e);
            None
        }
    };
    let kernel = match root.read_attribute(OSRELEASE) {
        Ok(k) if !k.is_empty() => Some(k),
        Ok(_) => {
            errors.push(invalid(OSRELEASE, "empty"));
            None
        }
        Err(e) => {
            errors.push(e);
            None
        }
    };
    let uptime_seconds = match root.read_attribute(UPTIME).and_then(|t| parse_uptime(&t)) {
        Ok(s) => Some(s),
        Err(e) => {
            errors.push(e);
            None
        }
    };
    let load = match root.read_attribute(LOADAVG).and_then(|t| parse_loadavg(&t)) {
        Ok(l) => Some(l),
        Err(e) => {
            errors.push(e);
            None
        }
    };
    let memory = match root
        .read_bytes(MEMINFO, MEMINFO_LIMIT)
        .and_then(|b| parse_meminfo(&String::from_utf8_lossy(&b)))
    {
        Ok(m) => Some(m),
        Err(e) => {
            errors.push(e);
            None
        }
    };
    SystemSection {
        os,
        kernel,
        arch: Some(std::env::consts::ARCH.to_owned()),
        uptime_seconds,
        load,
        memory,
        errors,
    }
}

fn read_os_release(root: &MachineRoot) -> Result<OsRelease, CollectionError> {
    let bytes = match root.read_bytes(OS_RELEASE, OS_RELEASE_LIMIT) {
        Err(e) if e.kind == ErrorKind::NotFound => root
            .read_bytes(OS_RELEASE_FALLBACK, OS_RELEASE_LIMIT)
            .map_err(|_| e)?,
        other => other?,
    };
    Ok(parse_os_release(&String::from_utf8_lossy(&bytes)))
}

/// Parses the fields we report from os-release's shell-like `KEY=value` lines.
pub fn parse_os_release(text: &str) -> OsRelease {
    let mut os = OsRelease::default();
    for line in text.lines() {
        let line = line.trim();
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let slot = match key {
            "ID" => &mut os.id,
            "VERSION_ID" => &mut os.version_id,
            "PRETTY_NAME" => &mut os.pretty_name,
            _ => continue,
        };
        let value = unquote(value);
        if !value.is_empty() {
            *slot = Some(value);
        }
    }
    os
}

/// Shell quoting as os-release(5) allows it: double quotes with backslash escapes, single quotes
/// verbatim, or a bare word.
fn unquote(value: &str) -> String {
    if let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some(escaped @ ('"' | '\\' | '$' | '`')) => out.push(escaped),
                    Some(other) => {
                        out.push('\\');
                        out.push(other);
                    }
                    None => out.push('\\'),
                }
            } else {
                out.push(c);
            }
        }
        out
    } else if let Some(inner) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        inner.to_owned()
    } else {
        value.to_owned()
    }
}

/// Whole seconds since boot from `/proc/uptime` (`12345.67 23456.78`).
pub fn parse_uptime(text: &str) -> Result<u64, CollectionError> {
    let first = text.split_whitespace().next().unwrap_or_default();
    match first.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds >= 0.0 && seconds < u64::MAX as f64 => {
            Ok(seconds.floor() as u64)
        }
        _ => Err(invalid(
            UPTIME,
            format!("{first:?} is not a number of seconds"),
        )),
    }
}

/// The three load averages from `/proc/loadavg` (`0.52 0.58 0.59 1/467 12345`).
pub fn parse_loadavg(text: &str) -> Result<LoadAverage, CollectionError> {
    let mut fields = text
        .split_whitespace()
        .map(|f| f.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0));
    match (
        fields.next().flatten(),
        fields.next().flatten(),
        fields.next().flatten(),
    ) {
        (Some(one), Some(five), Some(fifteen)) => Ok(LoadAverage { one, five, fifteen }),
        _ => Err(invalid(
            LOADAVG,
            format!(
                "{:?} does not start with three load averages",
                text.chars().take(80).collect::<String>()
            ),
        )),
    }
}

/// Memory and swap from `/proc/meminfo` (values in kB, which the kernel means as KiB).
pub fn parse_meminfo(text: &str) -> Result<Memory, CollectionError> {
    let field = |name: &str| {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
            Some(kib.saturating_mul(1024))
        })
    };
    let total_bytes = field("MemTotal").ok_or_else(|| invalid(MEMINFO, "no MemTotal line"))?;
    Ok(Memory {
        total_bytes,
        // Kernels before 3.14 have no MemAvailable; free memory is the closest they offer.
        available_bytes: field("MemAvailable")
            .or_else(|| field("MemFree"))
            .unwrap_or(0),
        swap_total_bytes: field("SwapTotal").unwrap_or(0),
        swap_free_bytes: field("SwapFree").unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_quotes_are_removed() {
        let os = parse_os_release(
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n\
             VERSION_ID=\"12\"\nID=debian\n# ID=commented\n\nBAD LINE\n",
        );
        assert_eq!(os.id.as_deref(), Some("debian"));
        assert_eq!(os.version_id.as_deref(), Some("12"));
        assert_eq!(
            os.pretty_name.as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );

        let os = parse_os_release("ID='rhel'\nPRETTY_NAME=\"Say \\\"hi\\\" \\$HOME\"\n");
        assert_eq!(os.id.as_deref(), Some("rhel"));
        assert_eq!(os.pretty_name.as_deref(), Some("Say \"hi\" $HOME"));
        assert_eq!(os.version_id, None);
    }

    #[test]
    fn load_and_memory_are_parsed() {
        let l = parse_loadavg("0.52 1.58 12.00 1/467 12345\n").unwrap();
        assert_eq!((l.one, l.five, l.fifteen), (0.52, 1.58, 12.0));
        for bad in ["", "1 2", "a b c", "-1 0 0", "inf 1 1"] {
            assert!(parse_loadavg(bad).is_err(), "{bad:?}");
        }
        let m = parse_meminfo(
            "MemTotal:       24576000 kB\nMemFree:  1000 kB\nMemAvailable:   20000000 kB\n\
             SwapTotal:  0 kB\nSwapFree: 0 kB\n",
        )
        .unwrap();
        assert_eq!(m.total_bytes, 24_576_000 * 1024);
        assert_eq!(m.available_bytes, 20_000_000 * 1024);
        let old = parse_meminfo("MemTotal: 100 kB\nMemFree: 40 kB\n").unwrap();
        assert_eq!(old.available_bytes, 40 * 1024);
        assert!(parse_meminfo("garbage").is_err());
    }

    #[test]
    fn uptime_is_whole_seconds() {
        assert_eq!(parse_uptime("433.97 613.09\n").ok(), Some(433));
        assert_eq!(parse_uptime("0.99 0.00").ok(), Some(0));
        for bad in ["", "abc 1", "-5.0 1", "NaN 1"] {
            let err = parse_uptime(bad).err();
            assert_eq!(err.map(|e| e.kind), Some(ErrorKind::Invalid), "{bad:?}");
        }
    }
}
