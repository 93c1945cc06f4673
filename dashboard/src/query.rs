//! Query strings, parsed once for both the pages and the JSON API: typed filters, sort orders
//! and paging cursors, and a [`BadParameter`] naming the first parameter that is wrong.
//!
//! Parameters are strict (an unknown name or value is an error) because a misspelt filter that
//! is silently ignored returns the whole fleet and looks like an answer.

use std::fmt::Write;

use chrono::{DateTime, Utc};

use crate::model::{Health, Severity};

/// Rows per page when the client does not say.
pub const DEFAULT_LIMIT: i64 = 50;
/// Most rows per page: a page is built in memory and must stay small.
pub const MAX_LIMIT: i64 = 500;
/// Days of history on an appliance or drive page when the client does not say.
pub const DEFAULT_DAYS: u32 = 30;
/// The periods the pages offer; the API takes any number of days up to [`MAX_DAYS`].
pub const PERIODS: [u32; 4] = [7, 30, 90, 365];
pub const MAX_DAYS: u32 = 400;
/// Longest accepted filter or search value; serials and versions are far shorter.
const MAX_VALUE_CHARS: usize = 256;
/// Longest accepted cursor: it carries a drive key, whose model and serial a drive reports.
const MAX_CURSOR_CHARS: usize = 4096;

/// A parameter the request got wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadParameter {
    pub parameter: String,
    pub message: String,
}

impl BadParameter {
    fn new(parameter: &str, message: String) -> Self {
        BadParameter {
            parameter: parameter.chars().take(64).collect(),
            message,
        }
    }
}

/// A client-supplied string inside a message: quoted and cut short, so an error stays small
/// whatever was sent.
pub fn quoted(s: &str) -> String {
    let short: String = s.chars().take(64).collect();
    serde_json::Value::String(short).to_string()
}

/// The query string's pairs, checked: only known names, each at most once.
#[derive(Debug)]
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn new(pairs: Vec<(String, String)>, allowed: &[&str]) -> Result<Self, BadParameter> {
        for (i, (name, value)) in pairs.iter().enumerate() {
            if !allowed.contains(&name.as_str()) {
                return Err(BadParameter::new(
                    name,
                    format!(
                        "unknown parameter {}; known: {}",
                        quoted(name),
                        allowed.join(", ")
                    ),
                ));
            }
            if pairs[..i].iter().any(|(n, _)| n == name) {
                return Err(BadParameter::new(
                    name,
                    format!("parameter {name} given more than once"),
                ));
            }
            let max = if name == "after" {
                MAX_CURSOR_CHARS
            } else {
                MAX_VALUE_CHARS
            };
            if value.chars().count() > max {
                return Err(BadParameter::new(
                    name,
                    format!("{name} is longer than {max} characters"),
                ));
            }
            // Nothing the fleet holds has a control character, and PostgreSQL refuses a NUL.
            if value.chars().any(char::is_control) {
                return Err(BadParameter::new(
                    name,
                    format!("{name} has a control character"),
                ));
            }
        }
        Ok(Params(pairs))
    }

    /// The value of `name`; an empty value counts as absent (what a blank form field sends).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, v)| n == name && !v.trim().is_empty())
            .map(|(_, v)| v.trim())
    }

    fn text(&self, name: &str) -> Option<String> {
        self.get(name).map(str::to_owned)
    }

    fn one_of<T>(
        &self,
        name: &str,
        parse: impl Fn(&str) -> Option<T>,
        valid: &[&str],
    ) -> Result<Option<T>, BadParameter> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => parse(v).map(Some).ok_or_else(|| {
                BadParameter::new(
                    name,
                    format!("{name} {} is not one of: {}", quoted(v), valid.join(", ")),
                )
            }),
        }
    }

    pub fn number<T>(&self, name: &str, min: T, max: T) -> Result<Option<T>, BadParameter>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        match v.parse::<T>() {
            Ok(n) if n >= min && n <= max => Ok(Some(n)),
            _ => Err(BadParameter::new(
                name,
                format!("{name} must be a whole number from {min} to {max}"),
            )),
        }
    }

    fn limit(&self) -> Result<i64, BadParameter> {
        Ok(self.number("limit", 1, MAX_LIMIT)?.unwrap_or(DEFAULT_LIMIT))
    }

    pub fn days(&self) -> Result<u32, BadParameter> {
        Ok(self.number("days", 1, MAX_DAYS)?.unwrap_or(DEFAULT_DAYS))
    }

    fn cursor<T>(&self, parse: impl Fn(&str) -> Option<T>) -> Result<Option<T>, BadParameter> {
        match self.get("after") {
            None => Ok(None),
            Some(v) => parse(v).map(Some).ok_or_else(|| {
                BadParameter::new(
                    "after",
                    format!(
                        "after {} is not a cursor of this list and order; use the `next` of \
                         the previous page",
                        quoted(v)
                    ),
                )
            }),
        }
    }
}

/// Percent-encodes `s` for a query string value or a path segment.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Builds `path?name=value&…` from the pairs that have a value.
pub fn href(path: &str, pairs: &[(&str, Option<String>)]) -> String {
    let mut out = path.to_owned();
    let mut first = true;
    for (name, value) in pairs {
        if let Some(v) = value {
            out.push(if first { '?' } else { '&' });
            first = false;
            let _ = write!(out, "{name}={}", encode(v));
        }
    }
    out
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "true" | "yes" | "1" => Some(true),
        "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

fn split_cursor(s: &str, n: usize) -> Option<Vec<&str>> {
    let parts: Vec<&str> = s.splitn(n, '~').collect();
    (parts.len() == n && !parts[n - 1].is_empty()).then_some(parts)
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn time_key(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// How the appliance list is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ApplianceSort {
    #[default]
    Serial,
    /// Most recently heard from first.
    LastReport,
    /// Oldest report first: the silent ones lead.
    Oldest,
    /// Worst health first, then by serial.
    Health,
}

impl ApplianceSort {
    pub const ALL: [ApplianceSort; 4] = [
        ApplianceSort::Serial,
        ApplianceSort::LastReport,
        ApplianceSort::Oldest,
        ApplianceSort::Health,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ApplianceSort::Serial => "serial",
            ApplianceSort::LastReport => "last_report",
            ApplianceSort::Oldest => "oldest",
            ApplianceSort::Health => "health",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// Where the previous page of appliances ended, in the list's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplianceCursor {
    Serial(String),
    Time(DateTime<Utc>, String),
    Health(Health, String),
}

impl ApplianceCursor {
    pub fn encode(&self) -> String {
        match self {
            ApplianceCursor::Serial(s) => s.clone(),
            ApplianceCursor::Time(t, s) => format!("{}~{s}", time_key(t)),
            ApplianceCursor::Health(h, s) => format!("{}~{s}", h.as_str()),
        }
    }

    fn parse(sort: ApplianceSort, s: &str) -> Option<Self> {
        match sort {
            ApplianceSort::Serial => Some(ApplianceCursor::Serial(s.to_owned())),
            ApplianceSort::LastReport | ApplianceSort::Oldest => {
                let p = split_cursor(s, 2)?;
                Some(ApplianceCursor::Time(parse_time(p[0])?, p[1].to_owned()))
            }
            ApplianceSort::Health => {
                let p = split_cursor(s, 2)?;
                Some(ApplianceCursor::Health(
                    Health::parse(p[0])?,
                    p[1].to_owned(),
                ))
            }
        }
    }
}

/// Which appliances to list, in what order, from where.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplianceQuery {
    /// Serial or hostname prefix, case-insensitive.
    pub q: Option<String>,
    pub health: Option<Health>,
    pub silent: Option<bool>,
    /// Only appliances with this rule firing.
    pub rule: Option<String>,
    pub app_version: Option<String>,
    pub os: Option<String>,
    /// Only appliances holding a drive of this model now.
    pub drive_model: Option<String>,
    /// The application's own status (`healthy`, `degraded`, `unhealthy`, `unknown`).
    pub status: Option<String>,
    /// Only appliances whose app version is below the configured minimum.
    pub below_minimum: bool,
    /// Only appliances in this lifecycle state (`active`, `expected_offline`, `retired`).
    pub state: Option<String>,
    /// Only appliances carrying this routing label: `label=customer:acme`.
    pub label: Option<(String, String)>,
    pub sort: ApplianceSort,
    pub after: Option<ApplianceCursor>,
    pub limit: i64,
}

pub const LIFECYCLE_STATES: [&str; 3] = ["active", "expected_offline", "retired"];
pub const APP_STATUSES: [&str; 4] = ["healthy", "degraded", "unhealthy", "unknown"];
const HEALTHS: [&str; 4] = ["ok", "info", "warning", "critical"];
const SEVERITIES: [&str; 3] = ["critical", "warning", "info"];

impl ApplianceQuery {
    pub const PARAMS: [&str; 14] = [
        "q",
        "state",
        "label",
        "health",
        "silent",
        "rule",
        "app_version",
        "os",
        "drive_model",
        "status",
        "below_minimum",
        "sort",
        "after",
        "limit",
    ];

    pub fn parse(pairs: Vec<(String, String)>, rules: &[&str]) -> Result<Self, BadParameter> {
        let p = Params::new(pairs, &Self::PARAMS)?;
        let sort = p
            .one_of(
                "sort",
                ApplianceSort::parse,
                &ApplianceSort::ALL.map(|s| s.as_str()),
            )?
            .unwrap_or_default();
        Ok(ApplianceQuery {
            q: p.text("q"),
            health: p.one_of("health", Health::parse, &HEALTHS)?,
            silent: p.one_of("silent", parse_bool, &["true", "false"])?,
            rule: p.one_of("rule", |v| rules.contains(&v).then(|| v.to_owned()), rules)?,
            app_version: p.text("app_version"),
            os: p.text("os"),
            drive_model: p.text("drive_model"),
            status: p.one_of(
                "status",
                |v| APP_STATUSES.contains(&v).then(|| v.to_owned()),
                &APP_STATUSES,
            )?,
            below_minimum: p
                .one_of("below_minimum", parse_bool, &["true", "false"])?
                .unwrap_or(false),
            state: p.one_of(
                "state",
                |v| LIFECYCLE_STATES.contains(&v).then(|| v.to_owned()),
                &LIFECYCLE_STATES,
            )?,
            label: match p.text("label") {
                None => None,
                Some(v) => Some(
                    v.split_once(':')
                        .filter(|(n, v)| !n.is_empty() && !v.is_empty())
                        .map(|(n, v)| (n.to_owned(), v.to_owned()))
                        .ok_or_else(|| BadParameter {
                            parameter: "label".into(),
                            message: format!(
                                "{} is not NAME:VALUE, e.g. customer:acme",
                                quoted(&v)
                            ),
                        })?,
                ),
            },
            sort,
            after: p.cursor(|v| ApplianceCursor::parse(sort, v))?,
            limit: p.limit()?,
        })
    }

    /// The filters as query pairs (no cursor): what a shared link carries.
    pub fn pairs(&self) -> Vec<(&'static str, Option<String>)> {
        vec![
            ("q", self.q.clone()),
            (
                "label",
                self.label.as_ref().map(|(n, v)| format!("{n}:{v}")),
            ),
            ("health", self.health.map(|h| h.as_str().to_owned())),
            ("silent", self.silent.map(|s| s.to_string())),
            ("rule", self.rule.clone()),
            ("app_version", self.app_version.clone()),
            ("os", self.os.clone()),
            ("drive_model", self.drive_model.clone()),
            ("status", self.status.clone()),
            (
                "below_minimum",
                self.below_minimum.then(|| "true".to_owned()),
            ),
            ("state", self.state.clone()),
            (
                "sort",
                (self.sort != ApplianceSort::Serial).then(|| self.sort.as_str().to_owned()),
            ),
            (
                "limit",
                (self.limit != DEFAULT_LIMIT).then(|| self.limit.to_string()),
            ),
        ]
    }

    /// Any filter set (a search counts).
    pub fn filtered(&self) -> bool {
        self.q.is_some()
            || self.health.is_some()
            || self.silent.is_some()
            || self.rule.is_some()
            || self.app_version.is_some()
            || self.os.is_some()
            || self.drive_model.is_some()
            || self.status.is_some()
            || self.below_minimum
            || self.state.is_some()
            || self.label.is_some()
    }
}

/// Which alerts: firing ones (the default), resolved ones, or all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AlertStateFilter {
    #[default]
    Firing,
    Resolved,
    All,
}

impl AlertStateFilter {
    pub const ALL: [AlertStateFilter; 3] = [
        AlertStateFilter::Firing,
        AlertStateFilter::Resolved,
        AlertStateFilter::All,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertStateFilter::Firing => "firing",
            AlertStateFilter::Resolved => "resolved",
            AlertStateFilter::All => "all",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// Where the previous page of alerts ended: firing alerts are ordered by severity, then
/// longest-firing first; resolved ones newest first; all of them firing first, then resolved,
/// newest first within each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertCursor {
    Firing(Severity, DateTime<Utc>, i64),
    Id(i64),
    /// (resolved, id)
    All(bool, i64),
}

impl AlertCursor {
    pub fn encode(&self) -> String {
        match self {
            AlertCursor::Firing(s, t, id) => format!("{}~{}~{id}", s.as_str(), time_key(t)),
            AlertCursor::Id(id) => id.to_string(),
            AlertCursor::All(resolved, id) => {
                format!("{}~{id}", if *resolved { "resolved" } else { "firing" })
            }
        }
    }

    fn parse(state: AlertStateFilter, s: &str) -> Option<Self> {
        match state {
            AlertStateFilter::Firing => {
                let p = split_cursor(s, 3)?;
                Some(AlertCursor::Firing(
                    Severity::parse(p[0])?,
                    parse_time(p[1])?,
                    p[2].parse().ok()?,
                ))
            }
            AlertStateFilter::Resolved => s
                .parse()
                .ok()
                .filter(|id: &i64| *id > 0)
                .map(AlertCursor::Id),
            AlertStateFilter::All => {
                let p = split_cursor(s, 2)?;
                let resolved = match p[0] {
                    "firing" => false,
                    "resolved" => true,
                    _ => return None,
                };
                let id = p[1].parse().ok().filter(|id: &i64| *id > 0)?;
                Some(AlertCursor::All(resolved, id))
            }
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertQuery {
    pub state: AlertStateFilter,
    pub rule: Option<String>,
    pub severity: Option<Severity>,
    pub serial: Option<String>,
    pub after: Option<AlertCursor>,
    pub limit: i64,
}

impl AlertQuery {
    pub const PARAMS: [&str; 6] = ["state", "rule", "severity", "serial", "after", "limit"];

    pub fn parse(pairs: Vec<(String, String)>, rules: &[&str]) -> Result<Self, BadParameter> {
        let p = Params::new(pairs, &Self::PARAMS)?;
        let state = p
            .one_of(
                "state",
                AlertStateFilter::parse,
                &AlertStateFilter::ALL.map(|s| s.as_str()),
            )?
            .unwrap_or_default();
        Ok(AlertQuery {
            state,
            rule: p.one_of("rule", |v| rules.contains(&v).then(|| v.to_owned()), rules)?,
            severity: p.one_of("severity", Severity::parse, &SEVERITIES)?,
            serial: p.text("serial"),
            after: p.cursor(|v| AlertCursor::parse(state, v))?,
            limit: p.limit()?,
        })
    }

    pub fn pairs(&self) -> Vec<(&'static str, Option<String>)> {
        vec![
            (
                "state",
                (self.state != AlertStateFilter::Firing).then(|| self.state.as_str().to_owned()),
            ),
            ("rule", self.rule.clone()),
            ("severity", self.severity.map(|s| s.as_str().to_owned())),
            ("serial", self.serial.clone()),
            (
                "limit",
                (self.limit != DEFAULT_LIMIT).then(|| self.limit.to_string()),
            ),
        ]
    }
}

/// Which drives: worst health first, then by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriveQuery {
    pub model: Option<String>,
    pub firmware: Option<String>,
    /// `ATA`, `NVMe` or `SCSI`.
    pub protocol: Option<String>,
    pub health: Option<Health>,
    pub after: Option<(Health, String)>,
    pub limit: i64,
}

pub const PROTOCOLS: [&str; 3] = ["ATA", "NVMe", "SCSI"];

impl DriveQuery {
    pub const PARAMS: [&str; 6] = ["model", "firmware", "protocol", "health", "after", "limit"];

    pub fn parse(pairs: Vec<(String, String)>) -> Result<Self, BadParameter> {
        let p = Params::new(pairs, &Self::PARAMS)?;
        Ok(DriveQuery {
            model: p.text("model"),
            firmware: p.text("firmware"),
            protocol: p.one_of(
                "protocol",
                |v| {
                    PROTOCOLS
                        .iter()
                        .find(|p| p.eq_ignore_ascii_case(v))
                        .map(|p| (*p).to_owned())
                },
                &PROTOCOLS,
            )?,
            health: p.one_of("health", Health::parse, &HEALTHS)?,
            after: p.cursor(|v| {
                let parts = split_cursor(v, 2)?;
                Some((Health::parse(parts[0])?, parts[1].to_owned()))
            })?,
            limit: p.limit()?,
        })
    }

    pub fn cursor(health: Health, key: &str) -> String {
        format!("{}~{key}", health.as_str())
    }

    pub fn pairs(&self) -> Vec<(&'static str, Option<String>)> {
        vec![
            ("model", self.model.clone()),
            ("firmware", self.firmware.clone()),
            ("protocol", self.protocol.clone()),
            ("health", self.health.map(|h| h.as_str().to_owned())),
            (
                "limit",
                (self.limit != DEFAULT_LIMIT).then(|| self.limit.to_string()),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    const RULES: [&str; 2] = ["disk_failing", "appliance_silent"];

    #[test]
    fn every_bad_parameter_is_named() {
        for (query, parameter) in [
            (vec![("sort", "size")], "sort"),
            (vec![("health", "sick")], "health"),
            (vec![("silent", "maybe")], "silent"),
            (vec![("rule", "disk_exploded")], "rule"),
            (vec![("limit", "0")], "limit"),
            (vec![("limit", "501")], "limit"),
            (vec![("limit", "ten")], "limit"),
            (vec![("color", "red")], "color"),
            (vec![("q", "a"), ("q", "b")], "q"),
            (vec![("q", "SN\u{0}")], "q"),
            (vec![("below_minimum", "maybe")], "below_minimum"),
            (vec![("sort", "health"), ("after", "SN-1")], "after"),
            (
                vec![("sort", "last_report"), ("after", "yesterday~SN-1")],
                "after",
            ),
        ] {
            let err = ApplianceQuery::parse(pairs(&query), &RULES).unwrap_err();
            assert_eq!(err.parameter, parameter, "{query:?}: {}", err.message);
        }
        let err = AlertQuery::parse(pairs(&[("after", "12")]), &RULES).unwrap_err();
        assert_eq!(err.parameter, "after", "a firing cursor has three parts");
        let err = DriveQuery::parse(pairs(&[("protocol", "USB")])).unwrap_err();
        assert_eq!(err.parameter, "protocol");
    }

    #[test]
    fn cursors_survive_a_round_trip_through_a_link() {
        let t = Utc::now();
        for (sort, cursor) in [
            (
                ApplianceSort::Serial,
                ApplianceCursor::Serial("SN 7/B~x".into()),
            ),
            (
                ApplianceSort::Oldest,
                ApplianceCursor::Time(t, "SN~1".into()),
            ),
            (
                ApplianceSort::Health,
                ApplianceCursor::Health(Health::Warning, "A".into()),
            ),
        ] {
            let q = ApplianceQuery::parse(
                pairs(&[("sort", sort.as_str()), ("after", &cursor.encode())]),
                &RULES,
            )
            .unwrap();
            let back = match (&q.after, &cursor) {
                // Microseconds are what PostgreSQL keeps.
                (Some(ApplianceCursor::Time(a, s)), ApplianceCursor::Time(b, s2)) => {
                    (*a - *b).num_microseconds() == Some(0) && s == s2
                }
                (a, b) => a.as_ref() == Some(b),
            };
            assert!(back, "{sort:?}: {:?} != {cursor:?}", q.after);
        }
        let c = AlertCursor::Firing(Severity::Critical, t, 42);
        let q = AlertQuery::parse(pairs(&[("after", &c.encode())]), &RULES).unwrap();
        assert!(matches!(
            q.after,
            Some(AlertCursor::Firing(Severity::Critical, _, 42))
        ));
    }

    #[test]
    fn a_shared_link_carries_the_filters() {
        let q = ApplianceQuery::parse(
            pairs(&[("q", "sn 7/b"), ("health", "critical"), ("sort", "health")]),
            &RULES,
        )
        .unwrap();
        assert_eq!(
            href("/appliances", &q.pairs()),
            "/appliances?q=sn%207%2Fb&health=critical&sort=health"
        );
        assert!(q.filtered());
        assert!(!ApplianceQuery::parse(vec![], &RULES).unwrap().filtered());
    }
}

/// Which audit rows: about one target (a serial, `token:NAME`), from where (newest first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub target: Option<String>,
    /// Rows older than this id.
    pub before: Option<i64>,
}

impl AuditQuery {
    pub const PARAMS: [&str; 2] = ["target", "before"];

    pub fn parse(pairs: Vec<(String, String)>) -> Result<Self, BadParameter> {
        let p = Params::new(pairs, &Self::PARAMS)?;
        Ok(AuditQuery {
            target: p.text("target"),
            before: p.number("before", 1, i64::MAX)?,
        })
    }
}
