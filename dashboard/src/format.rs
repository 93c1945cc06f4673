//! Numbers and times as an operator reads them: "3 h ago", "1.5 TB", "87 %", "12,345".

use chrono::{DateTime, Utc};

/// "3 h ago", "2 d ago": how long since something happened.
pub fn ago(then: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - then).num_seconds();
    if secs < 0 {
        return "in the future".into();
    }
    match secs {
        0..60 => format!("{secs} s ago"),
        60..3600 => format!("{} min ago", secs / 60),
        3600..86400 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86400),
    }
}

/// How far ahead a deadline is: `in 212 d`, `in 5 h`, or `passed 3 d ago`.
pub fn until(then: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (then - now).num_seconds();
    match secs {
        i64::MIN..=0 => format!("passed {}", ago(then, now)),
        1..3600 => format!("in {} min", secs / 60),
        3600..86400 => format!("in {} h", secs / 3600),
        _ => format!("in {} d", secs / 86400),
    }
}

/// `2026-12-06 04:23 UTC`.
pub fn stamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// `1.5 TB`: powers of 1000, as `df -H` prints them.
pub fn bytes(n: i64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = n as f64;
    let mut u = 0;
    while v.abs() >= 1000.0 && u < units.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// `87 %` of `total`; a dash when there is no total.
pub fn percent(used: i64, total: i64) -> String {
    if total <= 0 {
        return "—".into();
    }
    format!("{:.0} %", used as f64 * 100.0 / total as f64)
}

/// `12,345`: thousands separated, so fleet counts read at a glance.
pub fn count(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Appliance-supplied text cut to `max` characters for a table cell (the page links to the
/// whole value where it matters); escaping is the template's job.
pub fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_as_an_operator_expects() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(100_000), "100,000");
        assert_eq!(count(-1_234_567), "-1,234,567");
        assert_eq!(count(i64::MIN), "-9,223,372,036,854,775,808");
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1_500_000_000_000), "1.5 TB");
        assert_eq!(bytes(i64::MAX), "9.2 EB");
        assert_eq!(percent(87, 100), "87 %");
        assert_eq!(percent(1, 0), "—");
        assert_eq!(short("abcdef", 4), "abc…");
        assert_eq!(short("abc", 4), "abc");
        let now = Utc::now();
        assert_eq!(ago(now - chrono::Duration::hours(3), now), "3 h ago");
        assert_eq!(ago(now + chrono::Duration::hours(3), now), "in the future");
    }
}
