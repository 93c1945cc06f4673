//! The collector's own resource use (CPU time and peak memory of this process alone, not of
//! smartctl or checks it ran), for the footprint benchmark: enabled by
//! `PHONEHOME_COLLECTOR_FOOTPRINT=1`, printed as one line on stderr at exit.

/// The environment variable that turns the footprint line on.
pub const ENV: &str = "PHONEHOME_COLLECTOR_FOOTPRINT";

/// This process's CPU time (user + system) and peak resident set size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    pub cpu_ms: u64,
    pub peak_rss_kib: u64,
}

/// Reads `/proc/self/stat` (utime, stime in clock ticks; children are counted separately there,
/// so smartctl's time is not ours) and `/proc/self/status` (`VmHWM`, the peak RSS).
pub fn measure() -> Option<Footprint> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name in parentheses may hold spaces; fields are counted after its `)`.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5), i.e. 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux architecture we ship for.
    let cpu_ms = ticks * 10;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let peak_rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(Footprint {
        cpu_ms,
        peak_rss_kib,
    })
}

/// Prints the footprint line when [`ENV`] is set.
pub fn report_if_asked() {
    if std::env::var_os(ENV).is_none() {
        return;
    }
    match measure() {
        Some(f) => eprintln!(
            "phonehome-collector: footprint cpu_ms={} peak_rss_kib={}",
            f.cpu_ms, f.peak_rss_kib
        ),
        None => eprintln!("phonehome-collector: footprint unavailable (no /proc/self)"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_has_a_plausible_footprint() {
        let f = super::measure().expect("/proc/self is readable");
        assert!(f.peak_rss_kib > 100, "{f:?}");
        assert!(f.peak_rss_kib < 10 * 1024 * 1024, "{f:?}");
    }
}
