//! The Alertmanager notifier: posts firing and resolved alerts to Alertmanager's v2 API and
//! re-sends firing ones before Alertmanager would let them expire.
//!
//! Every replica runs the loop; each round one of them (the holder of an advisory lock) sends
//! what is due, pages of [`BATCH`] alerts per POST. An alert counts as delivered only once
//! Alertmanager answered 2xx; anything else is retried next round. Plain `http://` only:
//! Alertmanager belongs on the private network, like the operations listener (https is not
//! supported yet).
//!
//! Severity is a label, so to Alertmanager an alert whose severity changes is a new alert; the
//! old one ends by itself when its lease (four resend intervals) runs out.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Request, StatusCode, Uri, header};
use hyper_util::rt::TokioIo;
use prometheus::{IntCounterVec, Opts, Registry};
use serde::Serialize;

use serde::Deserialize;

use crate::config::ConfigError;
use crate::storage::notify::{Due, NotifierLock, OutgoingAlert};
use crate::storage::{Storage, StorageError};

/// Alerts per POST: a fleet-wide incident (thousands of appliances) goes out in a few requests
/// of bounded size rather than one huge one.
pub const BATCH: usize = 1000;
/// Alertmanager is told a firing alert ends after this many resend intervals, so that it
/// resolves our alerts by itself if every ingest stops, and not because one resend was late.
pub const ENDS_AFTER_RESENDS: u32 = 4;
/// Rounds run at least this often, so a new alert or a resolution goes out within seconds
/// even when the resend interval is long.
const MAX_ROUND_INTERVAL: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// For one POST, from the request to the end of the response.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Alertmanager answers with a short JSON or text; more than this is not read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// How much of an error response goes into the log.
const MAX_LOGGED_RESPONSE_CHARS: usize = 512;

static NOTIFICATIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        Opts::new(
            "phonehome_alertmanager_notifications_total",
            "Alerts posted to Alertmanager, by result: sent (Alertmanager answered 2xx), \
             failed (retried next round) or held (new alerts beyond max_new_per_minute, sent in \
             the next rounds).",
        ),
        &["result"],
    )
    .expect("static metric definition");
    // Both series exist from the start, so a rate() over them is never empty.
    for result in ["sent", "failed"] {
        c.with_label_values(&[result]);
    }
    c
});

/// Adds the notifier's counter to `registry` (the one `/metrics` renders). The counter is
/// process-wide, so registering it in several registries shows the same counts in each.
pub fn register(registry: &Registry) -> Result<(), prometheus::Error> {
    registry.register(Box::new(NOTIFICATIONS.clone()))
}

/// Why the notifier could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot connect to Alertmanager at {authority}: {message}")]
    Connect { authority: String, message: String },
    #[error("Alertmanager at {authority} did not answer within {timeout:?}")]
    Timeout {
        authority: String,
        timeout: Duration,
    },
    #[error("HTTP exchange with Alertmanager at {authority} failed: {source}")]
    Http {
        authority: String,
        source: hyper::Error,
    },
    #[error("Alertmanager at {authority} answered {status}: {body}")]
    Status {
        authority: String,
        status: StatusCode,
        body: String,
    },
    #[error("cannot build the request to Alertmanager: {0}")]
    Request(String),
}

/// Why an Alertmanager URL is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("https is not supported yet: put Alertmanager on the private network and use http://")]
    Https,
    #[error("must start with http://, as in http://alertmanager.internal:9093")]
    Scheme,
    #[error("is not a URL: {0}")]
    Syntax(String),
    #[error("has no host")]
    NoHost,
    #[error("credentials in the URL are not supported")]
    Credentials,
    #[error("must not carry a query or a fragment")]
    Query,
}

/// Where alerts are posted: Alertmanager's address and `…/api/v2/alerts` below its route prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or address, without IPv6 brackets, for connecting.
    host: String,
    port: u16,
    /// `host:port` as written, for the `Host` header and messages.
    authority: String,
    /// Path of the alerts resource.
    path: String,
}

impl Endpoint {
    /// Parses Alertmanager's base URL (`http://host[:port][/prefix]`).
    pub fn parse(url: &str) -> Result<Self, EndpointError> {
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("https://") {
            return Err(EndpointError::Https);
        }
        if !lower.starts_with("http://") {
            return Err(EndpointError::Scheme);
        }
        if url.contains(['?', '#']) {
            return Err(EndpointError::Query);
        }
        let uri: Uri = url
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| EndpointError::Syntax(e.to_string()))?;
        let authority = uri.authority().ok_or(EndpointError::NoHost)?;
        if authority.as_str().contains('@') {
            return Err(EndpointError::Credentials);
        }
        let host = authority.host();
        if host.is_empty() {
            return Err(EndpointError::NoHost);
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        // `Uri` accepts any text after the colon; a port that is not one must not mean 80.
        let port = match authority.as_str().rsplit_once(':') {
            Some((_, p)) if !p.contains(']') => p
                .parse::<u16>()
                .map_err(|_| EndpointError::Syntax(format!("{p:?} is not a port")))?,
            _ => 80,
        };
        let prefix = uri.path().trim_end_matches('/');
        Ok(Endpoint {
            host,
            port,
            authority: authority.as_str().to_owned(),
            path: format!("{prefix}/api/v2/alerts"),
        })
    }

    /// `host:port` as configured.
    pub fn authority(&self) -> &str {
        &self.authority
    }
}

/// One alert as Alertmanager's v2 API takes it (`postableAlert`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PostableAlert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<&'static str, String>,
    #[serde(rename = "startsAt")]
    pub starts_at: DateTime<Utc>,
    #[serde(rename = "endsAt")]
    pub ends_at: DateTime<Utc>,
    #[serde(rename = "generatorURL", skip_serializing_if = "Option::is_none")]
    pub generator_url: Option<String>,
}

/// What Alertmanager is told about `alerts` at `now`.
///
/// A firing alert ends at `now` + [`ENDS_AFTER_RESENDS`] × `resend`, a resolved one when it
/// resolved. Alertmanager refuses an alert that ends before it starts (and answers 400 for the
/// whole POST), so the end is never before the start, whatever the appliance clocks said.
pub fn payload(
    alerts: &[OutgoingAlert],
    now: DateTime<Utc>,
    resend: Duration,
    dashboard_url: Option<&str>,
) -> Vec<PostableAlert> {
    let lease = chrono::Duration::from_std(resend * ENDS_AFTER_RESENDS)
        .unwrap_or(chrono::Duration::days(1));
    alerts
        .iter()
        .map(|a| {
            // The operator's routing labels first: the ingest's own names are reserved
            // (`labels::RESERVED`) and would win anyway.
            let mut labels = a.labels.clone();
            labels.extend([
                ("alertname".to_owned(), a.rule.clone()),
                ("serial".to_owned(), a.serial.clone()),
                ("severity".to_owned(), a.severity.clone()),
            ]);
            // Alertmanager treats an empty label as absent; leaving it out says so plainly.
            if !a.subject.is_empty() {
                labels.insert("subject".to_owned(), a.subject.clone());
            }
            let link = dashboard_url.map(|base| appliance_link(base, &a.serial));
            let mut annotations =
                BTreeMap::from([("summary", a.summary.clone()), ("value", a.value.clone())]);
            if let Some(link) = &link {
                annotations.insert("dashboard", link.clone());
            }
            let ends_at = match a.resolved_at {
                Some(t) => t,
                None => now + lease,
            };
            PostableAlert {
                labels,
                annotations,
                starts_at: a.started_at,
                ends_at: ends_at.max(a.started_at),
                generator_url: link,
            }
        })
        .collect()
}

/// The dashboard's page for appliance `serial`.
pub fn appliance_link(dashboard_url: &str, serial: &str) -> String {
    format!(
        "{}{}",
        dashboard_url.trim_end_matches('/'),
        phonehome_dashboard::appliance_path(serial)
    )
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundSummary {
    /// Firing alerts never sent before, or changed since.
    pub fresh: usize,
    /// Firing alerts sent again so they do not expire.
    pub resent: usize,
    pub resolved: usize,
    /// New alerts held back by the storm brake; they go out in the next rounds.
    pub held: usize,
}

/// The brake on alert storms: at most `limit` new alerts a minute.
#[derive(Debug)]
struct Brake {
    limit: u32,
    window: std::time::Instant,
    used: u32,
}

impl Brake {
    /// How many of `wanted` new alerts may go now.
    fn take(&mut self, wanted: usize) -> usize {
        if self.window.elapsed() >= Duration::from_secs(60) {
            self.window = std::time::Instant::now();
            self.used = 0;
        }
        let left = self.limit.saturating_sub(self.used);
        let granted = u32::try_from(wanted).unwrap_or(u32::MAX).min(left);
        self.used = self.used.saturating_add(granted);
        usize::try_from(granted).unwrap_or(usize::MAX)
    }
}

/// Posts alerts to one Alertmanager.
#[derive(Debug, Clone)]
pub struct Notifier {
    endpoint: Endpoint,
    resend: Duration,
    dashboard_url: Option<String>,
    brake: std::sync::Arc<std::sync::Mutex<Brake>>,
}

impl Notifier {
    /// The notifier `config` asks for; `None` when no Alertmanager is configured.
    pub fn from_config(config: &AlertmanagerConfig) -> Result<Option<Self>, EndpointError> {
        let Some(url) = &config.url else {
            return Ok(None);
        };
        Ok(Some(Notifier {
            endpoint: Endpoint::parse(url)?,
            resend: Duration::from_secs(config.resend_seconds.max(1)),
            dashboard_url: config
                .dashboard_url
                .as_ref()
                .map(|u| u.trim_end_matches('/').to_owned()),
            brake: std::sync::Arc::new(std::sync::Mutex::new(Brake {
                limit: config.max_new_per_minute.max(1),
                window: std::time::Instant::now(),
                used: 0,
            })),
        }))
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// How often rounds run: at least every resend interval, and often enough that news is
    /// not held back for a whole one.
    pub fn round_interval(&self) -> Duration {
        self.resend.min(MAX_ROUND_INTERVAL)
    }

    /// Sends whatever is due, unless another replica is doing so (`None`).
    pub async fn round(&self, storage: &Storage) -> Result<Option<RoundSummary>, NotifyError> {
        let Some(lock) = storage.lock_notifier().await? else {
            return Ok(None);
        };
        let result = self.round_locked(&lock).await;
        lock.release().await?;
        result.map(Some)
    }

    async fn round_locked(&self, lock: &NotifierLock) -> Result<RoundSummary, NotifyError> {
        let mut summary = RoundSummary::default();
        let limit = i64::try_from(BATCH).unwrap_or(i64::MAX);
        for due in [Due::Resolved, Due::Firing] {
            let mut after_id = 0;
            loop {
                let alerts = lock
                    .alerts_to_notify(due, after_id, self.resend, limit)
                    .await?;
                let Some(last) = alerts.last() else {
                    break;
                };
                after_id = last.id;
                let page_full = alerts.len() >= BATCH;
                let alerts = self.brake(due, alerts, &mut summary);
                if alerts.is_empty() {
                    if page_full {
                        continue;
                    }
                    break;
                }
                let body = payload(
                    &alerts,
                    Utc::now(),
                    self.resend,
                    self.dashboard_url.as_deref(),
                );
                let count = u64::try_from(alerts.len()).unwrap_or(u64::MAX);
                if let Err(e) = self.post(&body).await {
                    NOTIFICATIONS.with_label_values(&["failed"]).inc_by(count);
                    return Err(e);
                }
                NOTIFICATIONS.with_label_values(&["sent"]).inc_by(count);
                lock.mark_notified(&alerts).await?;
                for a in &alerts {
                    match (due, a.fresh) {
                        (Due::Resolved, _) => summary.resolved += 1,
                        (Due::Firing, true) => summary.fresh += 1,
                        (Due::Firing, false) => summary.resent += 1,
                    }
                }
                if !page_full {
                    break;
                }
            }
        }
        if summary.held > 0 {
            tracing::warn!(
                held = summary.held,
                sent = summary.fresh,
                "alert storm: new alerts beyond alertmanager.max_new_per_minute wait for the \
                 next rounds"
            );
        }
        Ok(summary)
    }

    /// Holds back new firing alerts beyond the brake's allowance (the oldest go first);
    /// resends and resolutions always go.
    fn brake(
        &self,
        due: Due,
        alerts: Vec<OutgoingAlert>,
        summary: &mut RoundSummary,
    ) -> Vec<OutgoingAlert> {
        if due != Due::Firing {
            return alerts;
        }
        let fresh = alerts.iter().filter(|a| a.fresh).count();
        let granted = match self.brake.lock() {
            Ok(mut b) => b.take(fresh),
            Err(_) => fresh,
        };
        let held = fresh.saturating_sub(granted);
        if held == 0 {
            return alerts;
        }
        summary.held = summary.held.saturating_add(held);
        NOTIFICATIONS
            .with_label_values(&["held"])
            .inc_by(u64::try_from(held).unwrap_or(u64::MAX));
        let mut allowed = granted;
        alerts
            .into_iter()
            .filter(|a| {
                if !a.fresh {
                    return true;
                }
                if allowed > 0 {
                    allowed -= 1;
                    return true;
                }
                false
            })
            .collect()
    }

    /// POSTs `alerts` to Alertmanager; `Ok` only for a 2xx answer.
    pub async fn post(&self, alerts: &[PostableAlert]) -> Result<(), NotifyError> {
        let body = serde_json::to_vec(alerts).map_err(|e| NotifyError::Request(e.to_string()))?;
        let authority = self.endpoint.authority.clone();
        let exchange = async {
            let tcp = tokio::time::timeout(
                CONNECT_TIMEOUT,
                tokio::net::TcpStream::connect((self.endpoint.host.as_str(), self.endpoint.port)),
            )
            .await
            .map_err(|_| NotifyError::Timeout {
                authority: authority.clone(),
                timeout: CONNECT_TIMEOUT,
            })?
            .map_err(|e| NotifyError::Connect {
                authority: authority.clone(),
                message: e.to_string(),
            })?;
            let _ = tcp.set_nodelay(true);
            let http = |source| NotifyError::Http {
                authority: authority.clone(),
                source,
            };
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(http)?;
            // The connection is driven beside the request and ends with the exchange, a timed
            // out one included.
            let _conn = AbortOnDrop(tokio::spawn(async move {
                let _ = conn.await;
            }));
            let request = Request::post(self.endpoint.path.as_str())
                .header(header::HOST, authority.as_str())
                .header(header::CONTENT_TYPE, "application/json")
                .header(
                    header::USER_AGENT,
                    concat!("phonehome-ingest/", env!("CARGO_PKG_VERSION")),
                )
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| NotifyError::Request(e.to_string()))?;
            let response = sender.send_request(request).await.map_err(http)?;
            let status = response.status();
            if status.is_success() {
                return Ok(());
            }
            let text = match Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
            {
                Ok(b) => String::from_utf8_lossy(&b.to_bytes())
                    .chars()
                    .take(MAX_LOGGED_RESPONSE_CHARS)
                    .collect::<String>()
                    .trim()
                    .to_owned(),
                Err(e) => format!("(response body unreadable: {e})"),
            };
            Err(NotifyError::Status {
                authority: authority.clone(),
                status,
                body: text,
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(NotifyError::Timeout {
                    authority: self.endpoint.authority.clone(),
                    timeout: REQUEST_TIMEOUT,
                })
            })
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs notification rounds until the task is aborted; every replica runs this loop.
pub fn spawn(storage: Storage, notifier: Notifier) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(storage, notifier))
}

/// The loop [`spawn`] runs, for a supervisor to run and restart.
pub async fn run(storage: Storage, notifier: Notifier) {
    {
        tracing::info!(
            alertmanager = notifier.endpoint.authority(),
            resend = ?notifier.resend,
            "posting alerts to Alertmanager"
        );
        let mut ticker = tokio::time::interval(notifier.round_interval());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match notifier.round(&storage).await {
                Ok(None) => tracing::debug!("alertmanager: another replica holds this round"),
                Ok(Some(s)) if s.fresh > 0 || s.resolved > 0 => tracing::info!(
                    firing = s.fresh,
                    resolved = s.resolved,
                    resent = s.resent,
                    "alertmanager: alerts sent"
                ),
                Ok(Some(s)) => tracing::debug!(resent = s.resent, "alertmanager: round done"),
                Err(e) => tracing::warn!(
                    error = %e,
                    "alertmanager: notification round failed; unsent alerts go out next round"
                ),
            }
        }
    }
}

/// `[alertmanager]`: the Alertmanager the ingest posts its alerts to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertmanagerConfig {
    /// Base URL, `http://host:port` (with Alertmanager's route prefix, if it has one). Plain
    /// HTTP only: Alertmanager belongs on the private network, like the operations listener.
    pub url: Option<String>,
    /// How often a firing alert is sent again; Alertmanager is told it ends after four of
    /// these, so it resolves alerts by itself if every ingest stops.
    pub resend_seconds: u64,
    /// The operations dashboard as operators reach it (`http://ops.example:8080`), for the
    /// link in each alert.
    pub dashboard_url: Option<String>,
    /// The brake on alert storms: new alerts posted per minute at most (resends and
    /// resolutions always go). The rest wait, oldest first, for the next minutes.
    pub max_new_per_minute: u32,
}

pub const DEFAULT_ALERTMANAGER_RESEND_SECONDS: u64 = 60;
pub const DEFAULT_ALERTMANAGER_MAX_NEW_PER_MINUTE: u32 = 600;
/// Alertmanager is told a firing alert ends after four resend intervals; past a day that is
/// no longer a heartbeat.
pub const MAX_ALERTMANAGER_RESEND_SECONDS: u64 = 86_400;

impl Default for AlertmanagerConfig {
    fn default() -> Self {
        AlertmanagerConfig {
            url: None,
            resend_seconds: DEFAULT_ALERTMANAGER_RESEND_SECONDS,
            dashboard_url: None,
            max_new_per_minute: DEFAULT_ALERTMANAGER_MAX_NEW_PER_MINUTE,
        }
    }
}

impl AlertmanagerConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_new_per_minute == 0 {
            return Err(ConfigError::Invalid(
                "alertmanager.max_new_per_minute must be at least 1".into(),
            ));
        }
        if !(1..=MAX_ALERTMANAGER_RESEND_SECONDS).contains(&self.resend_seconds) {
            return Err(ConfigError::Invalid(format!(
                "alertmanager.resend_seconds = {} must be between 1 and {MAX_ALERTMANAGER_RESEND_SECONDS}",
                self.resend_seconds
            )));
        }
        if let Some(url) = &self.url {
            // The value is not echoed: a URL with credentials in it must not reach a log.
            Endpoint::parse(url)
                .map_err(|e| ConfigError::Invalid(format!("alertmanager.url: {e}")))?;
        }
        if let Some(url) = &self.dashboard_url {
            let ok = (url.starts_with("http://") || url.starts_with("https://"))
                && url.parse::<hyper::Uri>().is_ok_and(|u| u.host().is_some());
            if !ok {
                return Err(ConfigError::Invalid(format!(
                    "alertmanager.dashboard_url = {url:?} must be an http:// or https:// URL \
                     with a host"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_brake_grants_up_to_its_limit_a_minute() {
        let mut b = Brake {
            limit: 5,
            window: std::time::Instant::now(),
            used: 0,
        };
        assert_eq!(b.take(3), 3);
        assert_eq!(b.take(3), 2);
        assert_eq!(b.take(1), 0);
        // A minute later the allowance is whole again.
        b.window = std::time::Instant::now() - Duration::from_secs(61);
        assert_eq!(b.take(9), 5);
    }

    fn alert(subject: &str, resolved_at: Option<DateTime<Utc>>) -> OutgoingAlert {
        OutgoingAlert {
            id: 7,
            version: 1,
            rule: "disk_degrading".into(),
            serial: "SN 1/2".into(),
            subject: subject.into(),
            severity: "warning".into(),
            started_at: "2026-03-01T10:00:00Z".parse().unwrap(),
            resolved_at,
            value: "reallocated 8 → 24 (+16)".into(),
            summary: "sda reallocated 16 more sectors".into(),
            fresh: true,
            labels: BTreeMap::from([("customer".to_owned(), "Acme".to_owned())]),
        }
    }

    #[test]
    fn firing_alerts_carry_labels_annotations_and_a_lease_of_four_resends() {
        let now: DateTime<Utc> = "2026-03-02T12:00:00Z".parse().unwrap();
        let out = payload(
            &[alert("wwn:0x5000c500a1b2c3d4", None)],
            now,
            Duration::from_secs(60),
            Some("http://ops.example:8080"),
        );
        let json = serde_json::to_value(&out).unwrap();
        assert_eq!(
            json,
            serde_json::json!([{
                "labels": {
                    "alertname": "disk_degrading",
                    "customer": "Acme",
                    "serial": "SN 1/2",
                    "severity": "warning",
                    "subject": "wwn:0x5000c500a1b2c3d4",
                },
                "annotations": {
                    "summary": "sda reallocated 16 more sectors",
                    "value": "reallocated 8 → 24 (+16)",
                    "dashboard": "http://ops.example:8080/appliances/SN%201%2F2",
                },
                "startsAt": "2026-03-01T10:00:00Z",
                "endsAt": "2026-03-02T12:04:00Z",
                "generatorURL": "http://ops.example:8080/appliances/SN%201%2F2",
            }])
        );
    }

    #[test]
    fn resolved_alerts_end_when_they_resolved_and_empty_subjects_and_links_are_left_out() {
        let now: DateTime<Utc> = "2026-03-05T00:00:00Z".parse().unwrap();
        let resolved: DateTime<Utc> = "2026-03-04T09:30:00Z".parse().unwrap();
        let out = payload(
            &[alert("", Some(resolved))],
            now,
            Duration::from_secs(60),
            None,
        );
        let json = serde_json::to_value(&out).unwrap();
        let a = &json[0];
        assert_eq!(a["endsAt"], "2026-03-04T09:30:00Z");
        assert_eq!(
            a["labels"],
            serde_json::json!({"alertname": "disk_degrading", "customer": "Acme", "serial": "SN 1/2", "severity": "warning"})
        );
        assert!(a["annotations"].get("dashboard").is_none(), "{a}");
        assert!(a.get("generatorURL").is_none(), "{a}");
    }

    #[test]
    fn an_alert_never_ends_before_it_starts() {
        // An appliance whose clock runs ahead: started "in the future", and resolved by a
        // report that claims an even earlier time.
        let now: DateTime<Utc> = "2026-03-01T00:00:00Z".parse().unwrap();
        let mut firing = alert("x", None);
        firing.started_at = now + chrono::Duration::hours(1);
        let mut resolved = alert("x", Some(now - chrono::Duration::hours(2)));
        resolved.started_at = now - chrono::Duration::hours(1);
        let out = payload(&[firing, resolved], now, Duration::from_secs(1), None);
        for a in &out {
            assert!(a.ends_at >= a.starts_at, "{a:?}");
        }
        assert_eq!(out[0].ends_at, out[0].starts_at);
    }

    #[test]
    fn endpoints_are_plain_http_with_an_optional_route_prefix() {
        let e = Endpoint::parse("http://am.internal:9093").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("am.internal", 9093));
        assert_eq!(e.path, "/api/v2/alerts");
        let e = Endpoint::parse("http://[::1]/alertmanager/").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 80));
        assert_eq!(e.authority(), "[::1]");
        assert_eq!(e.path, "/alertmanager/api/v2/alerts");
        assert_eq!(
            Endpoint::parse("https://am:9093"),
            Err(EndpointError::Https)
        );
        assert_eq!(Endpoint::parse("am:9093"), Err(EndpointError::Scheme));
        assert_eq!(
            Endpoint::parse("http://u:p@am:9093"),
            Err(EndpointError::Credentials)
        );
        assert_eq!(
            Endpoint::parse("http://am:9093/?x=1"),
            Err(EndpointError::Query)
        );
        assert!(matches!(
            Endpoint::parse("http://am:notaport"),
            Err(EndpointError::Syntax(_))
        ));
    }

    #[test]
    fn the_counter_registers_with_both_results() {
        let registry = Registry::new();
        register(&registry).unwrap();
        let mut text = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut text,
        )
        .unwrap();
        let text = String::from_utf8(text).unwrap();
        for result in ["sent", "failed"] {
            let series =
                format!("phonehome_alertmanager_notifications_total{{result=\"{result}\"}} ");
            assert!(text.contains(&series), "{series} missing from:\n{text}");
        }
    }

    #[tokio::test]
    async fn a_refused_post_is_an_error_with_the_answer_in_it() {
        // A one-shot server answering 400, as Alertmanager does for an invalid alert.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut s, _) = listener.accept().await.unwrap();
            let mut raw = Vec::new();
            let mut buf = [0; 4096];
            while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "client closed before sending its headers");
                raw.extend_from_slice(&buf[..n]);
            }
            let request = String::from_utf8_lossy(&raw).into_owned();
            let answer = "{\"code\":400,\"message\":\"start time must be before end time\"}";
            s.write_all(
                format!(
                    "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\n\r\n{answer}",
                    answer.len()
                )
                .as_bytes(),
            )
            .await
            .unwrap();
            request
        });
        let notifier = Notifier::from_config(&AlertmanagerConfig {
            url: Some(format!("http://{addr}/prefix")),
            ..AlertmanagerConfig::default()
        })
        .unwrap()
        .unwrap();
        let body = payload(
            &[alert("x", None)],
            Utc::now(),
            Duration::from_secs(60),
            None,
        );
        let err = notifier.post(&body).await.unwrap_err();
        assert!(
            matches!(&err, NotifyError::Status { status, body, .. }
                if *status == StatusCode::BAD_REQUEST && body.contains("start time")),
            "{err}"
        );
        let request = server.await.unwrap();
        assert!(
            request.starts_with("POST /prefix/api/v2/alerts HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request
                .to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{request}"
        );

        // Nothing listening: a connection error, not a hang.
        drop(notifier);
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let notifier = Notifier::from_config(&AlertmanagerConfig {
            url: Some(format!("http://127.0.0.1:{port}")),
            ..AlertmanagerConfig::default()
        })
        .unwrap()
        .unwrap();
        let err = notifier.post(&body).await.unwrap_err();
        assert!(matches!(err, NotifyError::Connect { .. }), "{err}");
    }
}
