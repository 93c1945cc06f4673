//! Routing labels operators put on appliances (`customer`, `site`, `tier`, …): every
//! Alertmanager alert of the appliance carries them, so ops route and group by customer, and the
//! fleet pages filter by them. Names and values are checked here, once, at the edge; the rest of
//! the ingest only sees valid ones.

use std::collections::BTreeMap;
use std::fmt;

/// Labels one appliance may carry: each one rides on every alert and every alert's series.
pub const MAX_LABELS: usize = 16;
/// Longest label name.
pub const MAX_NAME_CHARS: usize = 32;
/// Longest label value: a customer's name, a site code.
pub const MAX_VALUE_CHARS: usize = 128;
/// Names the ingest's alerts already use (and Prometheus' own target labels): an operator's
/// label may not replace them.
pub const RESERVED: [&str; 6] = [
    "alertname",
    "serial",
    "severity",
    "subject",
    "instance",
    "job",
];

/// A label name: lower-case ASCII letters, digits and `_`, starting with a letter, not
/// reserved. Valid as a Prometheus/Alertmanager label name by construction.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LabelName(String);

impl LabelName {
    pub fn parse(s: &str) -> Result<LabelName, String> {
        let ok = s.len() <= MAX_NAME_CHARS
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !ok {
            return Err(format!(
                "label name {s:?} must be 1 to {MAX_NAME_CHARS} lower-case letters, digits or _, \
                 starting with a letter"
            ));
        }
        if RESERVED.contains(&s) {
            return Err(format!(
                "label name {s:?} is reserved (the ingest's alerts use it)"
            ));
        }
        Ok(LabelName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LabelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A label value: 1 to [`MAX_VALUE_CHARS`] characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelValue(String);

impl LabelValue {
    pub fn parse(s: &str) -> Result<LabelValue, String> {
        let n = s.chars().count();
        if n == 0 || n > MAX_VALUE_CHARS || s.chars().any(char::is_control) {
            return Err(format!(
                "label value {:?} must be 1 to {MAX_VALUE_CHARS} characters without control \
                 characters",
                s.chars().take(40).collect::<String>()
            ));
        }
        Ok(LabelValue(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A change to an appliance's labels: set these, remove those (`None`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelChange(pub BTreeMap<LabelName, Option<LabelValue>>);

impl LabelChange {
    /// From a JSON object `{"customer": "acme", "site": null}` (null removes).
    pub fn from_json(v: &serde_json::Value) -> Result<LabelChange, String> {
        let obj = v.as_object().ok_or_else(|| {
            "expected an object of label names to values (a string, or null to remove)".to_owned()
        })?;
        let mut change = BTreeMap::new();
        for (name, value) in obj {
            let name = LabelName::parse(name)?;
            let value = match value {
                serde_json::Value::Null => None,
                serde_json::Value::String(s) => Some(LabelValue::parse(s)?),
                other => return Err(format!("label {name}: {other} is not a string or null")),
            };
            change.insert(name, value);
        }
        Ok(LabelChange(change))
    }

    /// From command-line words `name=value` (and `name=` to remove).
    pub fn from_args(args: &[String]) -> Result<LabelChange, String> {
        let mut change = BTreeMap::new();
        for a in args {
            let (name, value) = a
                .split_once('=')
                .ok_or_else(|| format!("{a:?} is not NAME=VALUE (NAME= removes the label)"))?;
            let name = LabelName::parse(name)?;
            let value = (!value.is_empty())
                .then(|| LabelValue::parse(value))
                .transpose()?;
            change.insert(name, value);
        }
        Ok(LabelChange(change))
    }

    /// The labels after this change to `current`; too many is an error and changes nothing.
    pub fn apply(
        &self,
        current: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, String> {
        let mut next = current.clone();
        for (name, value) in &self.0 {
            match value {
                Some(v) => next.insert(name.as_str().to_owned(), v.as_str().to_owned()),
                None => next.remove(name.as_str()),
            };
        }
        if next.len() > MAX_LABELS {
            return Err(format!(
                "an appliance carries at most {MAX_LABELS} labels ({} after this change)",
                next.len()
            ));
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_values_are_checked_and_reserved_names_refused() {
        assert!(LabelName::parse("customer").is_ok());
        assert!(LabelName::parse("site_2").is_ok());
        for bad in [
            "",
            "Customer",
            "2site",
            "a-b",
            "severity",
            "serial",
            &"x".repeat(33),
        ] {
            assert!(LabelName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(LabelValue::parse("Acme GmbH & Co. KG").is_ok());
        for bad in ["", "a\nb", &"v".repeat(129)] {
            assert!(LabelValue::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn changes_set_and_remove_and_the_count_is_bounded() {
        let current = BTreeMap::from([("site".to_owned(), "fra1".to_owned())]);
        let c =
            LabelChange::from_json(&serde_json::json!({"customer": "acme", "site": null})).unwrap();
        assert_eq!(
            c.apply(&current).unwrap(),
            BTreeMap::from([("customer".to_owned(), "acme".to_owned())])
        );
        let c = LabelChange::from_args(&["tier=gold".into(), "site=".into()]).unwrap();
        assert_eq!(
            c.apply(&current).unwrap(),
            BTreeMap::from([("tier".to_owned(), "gold".to_owned())])
        );
        assert!(LabelChange::from_args(&["tier".into()]).is_err());
        assert!(LabelChange::from_json(&serde_json::json!({"tier": 3})).is_err());
        assert!(LabelChange::from_json(&serde_json::json!(["tier"])).is_err());
        let many: Vec<String> = (0..17).map(|i| format!("l{i}=v")).collect();
        let c = LabelChange::from_args(&many).unwrap();
        assert!(
            c.apply(&BTreeMap::new())
                .unwrap_err()
                .contains("at most 16")
        );
    }
}
