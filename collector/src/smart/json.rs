//! Lenient reading of untrusted JSON: every accessor returns `None` for a missing key, a wrong
//! type or an out-of-range number, so one odd field never costs the rest of a device.

use serde_json::Value;

/// Longest text kept from smartctl output (model names, messages …); real ones are far shorter,
/// so this only bounds what a broken or hostile smartctl could make the report carry.
pub const TEXT_LIMIT: usize = 512;

/// The value at `path` below `v`, walking object keys.
pub fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, key| v.as_object()?.get(*key))
}

/// An unsigned integer. JSON integers up to `u64::MAX` are exact (serde_json parses them as
/// integers, never through `f64`, so raw values above 2^53 survive). A number beyond `u64::MAX`
/// (NVMe counters are 128-bit) saturates; negative, fractional or non-finite numbers are not
/// counters and give `None`. A decimal string is accepted, as some smartctl builds quote
/// numbers.
pub fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            let f = n.as_f64()?;
            // 2^64 as f64 is exact; anything at or above it is a genuinely huge counter.
            (f.is_finite() && f >= 18_446_744_073_709_551_616.0).then_some(u64::MAX)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

pub fn u64_at(v: &Value, path: &[&str]) -> Option<u64> {
    at(v, path).and_then(as_u64)
}

pub fn u8_at(v: &Value, path: &[&str]) -> Option<u8> {
    u64_at(v, path).and_then(|n| u8::try_from(n).ok())
}

pub fn u32_at(v: &Value, path: &[&str]) -> Option<u32> {
    u64_at(v, path).and_then(|n| u32::try_from(n).ok())
}

/// A signed integer (temperatures); fractions and strings are not accepted.
pub fn i64_at(v: &Value, path: &[&str]) -> Option<i64> {
    at(v, path).and_then(Value::as_i64)
}

pub fn bool_at(v: &Value, path: &[&str]) -> Option<bool> {
    at(v, path).and_then(Value::as_bool)
}

/// Trimmed, non-empty text, cut to [`TEXT_LIMIT`] characters, control characters replaced
/// (a drive's identify strings can hold any byte; PostgreSQL's jsonb refuses NUL, and a report
/// it refuses is a report lost).
pub fn as_text(v: &Value) -> Option<String> {
    let s = v.as_str()?.trim();
    if s.is_empty() {
        return None;
    }
    Some(printable(&bounded(s)))
}

fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// `v` with every NUL in its strings and keys replaced, so it can be stored as jsonb.
pub fn without_nul(v: Value) -> Value {
    let clean = |s: String| {
        if s.contains('\0') {
            s.replace('\0', "\u{fffd}")
        } else {
            s
        }
    };
    match v {
        Value::String(s) => Value::String(clean(s)),
        Value::Array(items) => Value::Array(items.into_iter().map(without_nul).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (clean(k), without_nul(v)))
                .collect(),
        ),
        other => other,
    }
}

pub fn text_at(v: &Value, path: &[&str]) -> Option<String> {
    at(v, path).and_then(as_text)
}

/// `s` cut to [`TEXT_LIMIT`] characters (never inside a character).
pub fn bounded(s: &str) -> String {
    match s.char_indices().nth(TEXT_LIMIT) {
        Some((end, _)) => s.get(..end).unwrap_or_default().to_owned(),
        None => s.to_owned(),
    }
}

pub fn array_at<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    at(v, path)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The integer a smartctl raw string starts with: `36` from `36 (Min/Max 16/31)`, `37054` from
/// `37054h+12m+58.233s`, `0` from `0/0`.
pub fn leading_u64(s: &str) -> Option<u64> {
    let s = s.trim_start();
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s.get(..end).filter(|d| !d.is_empty())?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn integers_are_exact_and_odd_numbers_are_refused() -> Result<(), serde_json::Error> {
        let v: Value = serde_json::from_str(
            r#"{"big": 12884541110758725, "max": 18446744073709551615, "over": 18446744073709551616,
                "neg": -1, "frac": 1.5, "str": " 42 ", "bad": "4x", "huge": 1e300}"#,
        )?;
        assert_eq!(u64_at(&v, &["big"]), Some(12_884_541_110_758_725));
        assert_eq!(u64_at(&v, &["max"]), Some(u64::MAX));
        assert_eq!(u64_at(&v, &["over"]), Some(u64::MAX));
        assert_eq!(u64_at(&v, &["huge"]), Some(u64::MAX));
        assert_eq!(u64_at(&v, &["neg"]), None);
        assert_eq!(u64_at(&v, &["frac"]), None);
        assert_eq!(u64_at(&v, &["str"]), Some(42));
        assert_eq!(u64_at(&v, &["bad"]), None);
        assert_eq!(u8_at(&v, &["big"]), None);
        assert_eq!(u64_at(&v, &["big", "deeper"]), None);
        Ok(())
    }

    #[test]
    fn raw_strings_give_their_leading_integer() {
        assert_eq!(leading_u64("36 (Min/Max 16/31)"), Some(36));
        assert_eq!(leading_u64("37054h+12m+58.233s"), Some(37054));
        assert_eq!(leading_u64("0/0"), Some(0));
        assert_eq!(leading_u64("  7"), Some(7));
        assert_eq!(leading_u64("h7"), None);
        assert_eq!(leading_u64(""), None);
        assert_eq!(leading_u64("99999999999999999999999"), None);
    }

    #[test]
    fn nul_never_reaches_the_report() {
        assert_eq!(
            as_text(&json!("AB\u{0}C\u{1b}")),
            Some("AB\u{fffd}C\u{fffd}".to_owned())
        );
        let v = without_nul(json!({"a\u{0}": ["x\u{0}", {"b": "\u{0}"}], "n": 1}));
        assert_eq!(
            v,
            json!({"a\u{fffd}": ["x\u{fffd}", {"b": "\u{fffd}"}], "n": 1})
        );
    }

    #[test]
    fn text_is_trimmed_and_bounded() {
        assert_eq!(as_text(&json!("  WDC  ")), Some("WDC".to_owned()));
        assert_eq!(as_text(&json!("   ")), None);
        assert_eq!(as_text(&json!(5)), None);
        let long = "é".repeat(TEXT_LIMIT + 10);
        assert_eq!(
            as_text(&json!(long)).map(|s| s.chars().count()),
            Some(TEXT_LIMIT)
        );
    }
}
