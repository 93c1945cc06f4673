//! An appliance's lifecycle (issue 14, item 5): active, expected offline until a date
//! (maintenance, shipped, shelved), or retired (RMA, decommissioned). The rules here are pure
//! functions of a loaded lifecycle and the time, so they are tested without a database; the
//! storage layer loads the rows and applies the verdicts.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The state an operator set. No row in `appliance_lifecycle` means [`State::Active`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Active,
    ExpectedOffline,
    Retired,
}

impl State {
    /// The name stored in the database and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Active => "active",
            State::ExpectedOffline => "expected_offline",
            State::Retired => "retired",
        }
    }

    /// Accepts the stored spelling and the command line's (`expected-offline`).
    pub fn parse(s: &str) -> Option<State> {
        match s {
            "active" => Some(State::Active),
            "expected_offline" | "expected-offline" => Some(State::ExpectedOffline),
            "retired" => Some(State::Retired),
            _ => None,
        }
    }
}

/// One appliance's lifecycle as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lifecycle {
    pub serial: String,
    pub state: State,
    /// `expected_offline` only: until when it is expected to be quiet (`None`: until further
    /// notice, e.g. shelved).
    pub until: Option<DateTime<Utc>>,
    pub note: String,
    pub changed_at: DateTime<Utc>,
    pub changed_by: String,
}

impl Lifecycle {
    /// The state in force at `now`: an `expected_offline` whose date has passed is active
    /// again, without anybody having to remember to switch it back.
    pub fn effective(&self, now: DateTime<Utc>) -> State {
        effective_state(self.state, self.until, now)
    }

    /// Whether the `appliance_silent` rule leaves this appliance alone at `now`.
    pub fn silence_exempt(&self, now: DateTime<Utc>) -> bool {
        self.effective(now) != State::Active
    }

    /// Whether any alert may be opened for this appliance at `now` (a retired one gets none).
    pub fn alerts_allowed(&self, now: DateTime<Utc>) -> bool {
        self.effective(now) != State::Retired
    }
}

/// [`Lifecycle::effective`] for a state and date read on their own (lists).
pub fn effective_state(state: State, until: Option<DateTime<Utc>>, now: DateTime<Utc>) -> State {
    match (state, until) {
        (State::ExpectedOffline, Some(until)) if until <= now => State::Active,
        (state, _) => state,
    }
}

/// Serials by the state in force at `now` (active ones are those in neither list).
pub fn serials_in(rows: &[Lifecycle], state: State, now: DateTime<Utc>) -> Vec<String> {
    rows.iter()
        .filter(|l| l.effective(now) == state)
        .map(|l| l.serial.clone())
        .collect()
}

/// The serials the silence check must skip at `now`, from every stored lifecycle.
pub fn silence_exempt_serials(rows: &[Lifecycle], now: DateTime<Utc>) -> Vec<String> {
    rows.iter()
        .filter(|l| l.silence_exempt(now))
        .map(|l| l.serial.clone())
        .collect()
}

/// What an operator asks for: `PUT /api/v1/appliances/{serial}/lifecycle` and
/// `appliance set-state`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    pub state: State,
    #[serde(default)]
    pub until: Option<DateTime<Utc>>,
    #[serde(default)]
    pub note: Option<String>,
}

/// Longest note kept: an operator's reason, not a document.
pub const MAX_NOTE_CHARS: usize = 1000;

/// What the alert side must do when a change is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertEffect {
    /// Nothing to resolve.
    None,
    /// Resolve a firing `appliance_silent` (expected offline, date ahead).
    ResolveSilent,
    /// Resolve every firing alert (retired).
    ResolveAll,
}

impl Change {
    /// Checks the request against `now`: `until` belongs to `expected_offline` only and must
    /// lie ahead (a date already past would change nothing and look as if it did); notes are
    /// bounded.
    pub fn check(&self, now: DateTime<Utc>) -> Result<(), String> {
        match (self.state, self.until) {
            (State::ExpectedOffline, Some(until)) if until <= now => {
                return Err(format!(
                    "until {} is not in the future",
                    until.format("%Y-%m-%dT%H:%M:%SZ")
                ));
            }
            (State::Active | State::Retired, Some(_)) => {
                return Err(format!(
                    "until applies to expected_offline only, not {}",
                    self.state.as_str()
                ));
            }
            _ => {}
        }
        if let Some(note) = &self.note {
            if note.chars().count() > MAX_NOTE_CHARS {
                return Err(format!("note is longer than {MAX_NOTE_CHARS} characters"));
            }
            if note.chars().any(|c| c.is_control() && c != '\n') {
                return Err("note holds control characters".into());
            }
        }
        Ok(())
    }

    /// The alerts this change resolves when it is stored.
    pub fn alert_effect(&self) -> AlertEffect {
        match self.state {
            State::Active => AlertEffect::None,
            State::ExpectedOffline => AlertEffect::ResolveSilent,
            State::Retired => AlertEffect::ResolveAll,
        }
    }
}

/// Parses a date from the command line: `2027-01-31` (the start of that day, UTC) or an
/// RFC 3339 time.
pub fn parse_until(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| format!("{s:?} is neither a date (2027-01-31) nor an RFC 3339 time"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn row(state: State, until: Option<DateTime<Utc>>) -> Lifecycle {
        Lifecycle {
            serial: "SN1".into(),
            state,
            until,
            note: String::new(),
            changed_at: Utc::now(),
            changed_by: "test".into(),
        }
    }

    #[test]
    fn expected_offline_holds_silence_until_its_date_then_ends_by_itself() {
        let now = Utc::now();
        let shelved = row(State::ExpectedOffline, Some(now + Duration::days(3)));
        assert!(shelved.silence_exempt(now));
        assert!(shelved.alerts_allowed(now));
        assert!(!shelved.silence_exempt(now + Duration::days(3)));
        assert_eq!(shelved.effective(now + Duration::days(4)), State::Active);
        // Without a date: until further notice.
        assert!(row(State::ExpectedOffline, None).silence_exempt(now + Duration::days(999)));
    }

    #[test]
    fn retired_is_never_silent_and_gets_no_alerts() {
        let now = Utc::now();
        let retired = row(State::Retired, None);
        assert!(retired.silence_exempt(now));
        assert!(!retired.alerts_allowed(now));
        assert!(!row(State::Active, None).silence_exempt(now));
    }

    #[test]
    fn exempt_serials_are_those_whose_state_is_in_force() {
        let now = Utc::now();
        let mut past = row(State::ExpectedOffline, Some(now - Duration::hours(1)));
        past.serial = "PAST".into();
        let mut ahead = row(State::ExpectedOffline, Some(now + Duration::hours(1)));
        ahead.serial = "AHEAD".into();
        let mut retired = row(State::Retired, None);
        retired.serial = "GONE".into();
        assert_eq!(
            silence_exempt_serials(&[past, ahead, retired], now),
            vec!["AHEAD".to_owned(), "GONE".to_owned()]
        );
    }

    #[test]
    fn changes_are_checked() {
        let now = Utc::now();
        let ok = Change {
            state: State::ExpectedOffline,
            until: Some(now + Duration::days(1)),
            note: Some("shipped to the customer".into()),
        };
        assert_eq!(ok.check(now), Ok(()));
        assert_eq!(ok.alert_effect(), AlertEffect::ResolveSilent);
        let past = Change {
            until: Some(now - Duration::days(1)),
            ..ok.clone()
        };
        assert!(past.check(now).unwrap_err().contains("not in the future"));
        let retired_until = Change {
            state: State::Retired,
            ..ok.clone()
        };
        assert!(retired_until.check(now).is_err());
        let long = Change {
            note: Some("x".repeat(MAX_NOTE_CHARS + 1)),
            ..ok.clone()
        };
        assert!(long.check(now).is_err());
        let retire = Change {
            state: State::Retired,
            until: None,
            note: None,
        };
        assert_eq!(retire.check(now), Ok(()));
        assert_eq!(retire.alert_effect(), AlertEffect::ResolveAll);
    }

    #[test]
    fn dates_from_the_command_line() {
        assert_eq!(
            parse_until("2027-01-31").map(|t| t.to_rfc3339()),
            Ok("2027-01-31T00:00:00+00:00".to_owned())
        );
        assert!(parse_until("2027-01-31T12:00:00Z").is_ok());
        assert!(parse_until("next week").is_err());
        assert_eq!(
            State::parse("expected-offline"),
            Some(State::ExpectedOffline)
        );
        assert_eq!(State::parse("gone"), None);
    }
}
