//! phonehome ingest: receives appliance reports over mutual TLS, keeps the fleet's history in
//! PostgreSQL, and serves `/healthz`, `/readyz`, `/metrics` and the dashboard to operators.
//!
//! The binary only parses its command line and calls into this library, so tests start the real
//! server on port 0 with [`serve`].

pub mod alertmanager;
pub mod alerts;
pub mod api;
pub mod auth;
pub mod certs;
pub mod config;
pub mod dashboard;
pub mod demo;
pub mod engine;
pub mod error;
pub mod fdlimit;
pub mod labels;
pub mod lifecycle;
pub mod metrics;
pub mod model;
pub mod pgcluster;
pub mod reports;
pub mod revocation;
pub mod server;
pub mod storage;
pub mod tasks;
pub mod telemetry;
pub mod tls;
pub mod verdict;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};

pub use server::serve;

use crate::metrics::Metrics;
use crate::storage::Storage;

/// Shared by every request handler; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The primary: reports, alert evaluation, tokens, every write, `/healthz`.
    pub storage: Storage,
    /// What the dashboard, the read API and `/metrics`' fleet counts read through: the read
    /// database when `read_database_url` is set, else the primary ([`Storage::reads`]).
    pub reads: Storage,
    pub metrics: Arc<Metrics>,
    /// Largest accepted report, after decompression.
    pub max_body_bytes: usize,
    /// Reports being received or stored at once; past this the ingest answers 503 rather than
    /// queue without bound.
    pub admission: Arc<tokio::sync::Semaphore>,
    /// Open connections on the report listener (handshaking or idle included).
    pub connections: Arc<tokio::sync::Semaphore>,
    /// How long a request waits for an admission slot before its 503.
    pub admission_wait: std::time::Duration,
    /// The dashboard's view of the fleet, whose counts `/metrics` shares.
    pub dashboard: dashboard::DashboardSource,
    /// Supervised background work (silence check, notifier, maintenance), for `/metrics` and
    /// `/readyz`.
    pub tasks: tasks::Tasks,
    /// Reports in flight per appliance (`max_in_flight_per_appliance`).
    pub per_appliance: Arc<reports::PerAppliance>,
    /// Open connections on the operations listener (`ops_max_connections`).
    pub ops_connections: Arc<tokio::sync::Semaphore>,
    /// Host names the operations listener answers for, beside localhost and IP addresses.
    pub ops_hosts: Arc<Vec<String>>,
    /// How a report's body must arrive (`body_timeout_secs`, `min_body_bytes_per_sec`).
    pub body_pace: reports::BodyPace,
    /// The operations listener's header deadline and connection lifetime.
    pub ops_timeouts: server::OpsTimeouts,
    /// Who may read and write through the operations listener (API tokens).
    pub auth: Arc<auth::Auth>,
    /// The revocation list every mutual-TLS request is checked against.
    pub revocations: revocation::Revocations,
    /// How enrolment and renewal issue certificates.
    pub issuing: Arc<certs::IssuingSettings>,
}

impl AppState {
    pub fn new(storage: Storage, max_body_bytes: usize) -> Self {
        let metrics = Metrics::new();
        metrics
            .max_in_flight
            .set(i64::try_from(config::DEFAULT_MAX_IN_FLIGHT).unwrap_or(i64::MAX));
        // Reads need a token unless the configuration opens them (`ops_reads_require_token`).
        let auth = auth::Auth::new(storage.clone(), false, metrics.registry())
            .expect("metric names are distinct");
        AppState {
            auth: Arc::new(auth),
            dashboard: dashboard::DashboardSource::new(
                storage.reads(),
                dashboard::DEFAULT_COUNTS_MAX_AGE,
            ),
            reads: storage.reads(),
            storage,
            metrics: Arc::new(metrics),
            max_body_bytes,
            admission: Arc::new(tokio::sync::Semaphore::new(config::DEFAULT_MAX_IN_FLIGHT)),
            connections: Arc::new(tokio::sync::Semaphore::new(config::DEFAULT_MAX_CONNECTIONS)),
            admission_wait: std::time::Duration::from_millis(config::DEFAULT_ADMISSION_WAIT_MS),
            tasks: tasks::Tasks::default(),
            per_appliance: Arc::new(reports::PerAppliance::new(
                config::DEFAULT_MAX_IN_FLIGHT_PER_APPLIANCE,
            )),
            ops_connections: Arc::new(tokio::sync::Semaphore::new(
                config::DEFAULT_OPS_MAX_CONNECTIONS,
            )),
            ops_hosts: Arc::default(),
            body_pace: reports::BodyPace::default(),
            ops_timeouts: server::OpsTimeouts::default(),
            revocations: revocation::Revocations::default(),
            issuing: Arc::default(),
        }
    }

    /// Sets the operations listener's connection cap (at least 1) and the host names it
    /// answers for beside localhost and IP addresses.
    pub fn with_ops_limits(mut self, connections: usize, hosts: Vec<String>) -> Self {
        self.ops_connections = Arc::new(tokio::sync::Semaphore::new(connections.max(1)));
        self.ops_hosts = Arc::new(hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect());
        self
    }

    /// Sets how a report's body must arrive: within `whole` seconds, and after the grace at
    /// `min_rate` bytes per second or faster (0: no rate).
    pub fn with_body_pace(mut self, whole: std::time::Duration, min_rate: u64) -> Self {
        self.body_pace = reports::BodyPace {
            whole,
            min_rate,
            grace: config::BODY_RATE_GRACE,
        };
        self
    }

    /// Opens reads (pages, read API, `/metrics`) to requests without a token, for an
    /// operations listener behind an authenticating proxy or on a trusted network; writes
    /// still need an admin token.
    pub fn with_open_reads(mut self, open: bool) -> Self {
        self.auth = Arc::new(self.auth.with_reads_open(open));
        self
    }

    /// Sets the operations listener's header deadline (also its keep-alive idle limit) and
    /// connection lifetime.
    pub fn with_ops_timeouts(mut self, timeouts: server::OpsTimeouts) -> Self {
        self.ops_timeouts = timeouts;
        self
    }

    /// Sets how the ingest issues certificates (enrolment, renewal, CRL).
    pub fn with_issuing(mut self, issuing: certs::IssuingSettings) -> Self {
        self.issuing = Arc::new(issuing);
        self
    }

    /// Sets how often the revocation list is reloaded.
    pub fn with_revocation_refresh(mut self, refresh: std::time::Duration) -> Self {
        self.revocations = revocation::Revocations::new(refresh);
        self
    }

    /// Sets how many reports one appliance may have in flight at once (at least 1).
    pub fn with_max_in_flight_per_appliance(mut self, n: usize) -> Self {
        self.per_appliance = Arc::new(reports::PerAppliance::new(n));
        self
    }

    /// The supervisor the process's background tasks run under.
    pub fn with_tasks(mut self, tasks: tasks::Tasks) -> Self {
        self.tasks = tasks;
        self
    }

    /// Sets how old the fleet-wide counts on the dashboard and `/metrics` may be (0: fresh
    /// for every view).
    pub fn with_counts_max_age(mut self, max_age: std::time::Duration) -> Self {
        self.dashboard = dashboard::DashboardSource::new(self.reads.clone(), max_age);
        self
    }

    /// Sets how long a request waits for an in-flight slot before it is refused (0: at once).
    pub fn with_admission_wait(mut self, wait: std::time::Duration) -> Self {
        self.admission_wait = wait;
        self
    }

    /// Sets how many connections the report listener holds open at once (at least 1).
    pub fn with_max_connections(mut self, n: usize) -> Self {
        self.connections = Arc::new(tokio::sync::Semaphore::new(n.max(1)));
        self
    }

    /// Sets how many reports may be in flight at once (at least 1).
    pub fn with_max_in_flight(mut self, n: usize) -> Self {
        self.admission = Arc::new(tokio::sync::Semaphore::new(n.max(1)));
        self.metrics
            .max_in_flight
            .set(i64::try_from(n.max(1)).unwrap_or(i64::MAX));
        self
    }
}

/// The report API, as mounted on the mutual-TLS listener. Every request passes the revocation
/// and expiry gate ([`certs::gate`]).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/reports", post(reports::post_report))
        .route("/v1/renew", post(certs::renew))
        .route("/v1/crl", get(certs::crl))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            certs::gate,
        ))
        // The real limit is enforced while reading the body, after decompression.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

/// What a connection that offered the enrolment ALPN (and so presented no certificate) may
/// reach: enrolment and the CRL, nothing else.
pub fn enrol_router(state: AppState) -> Router {
    Router::new()
        .route("/v1/enroll", post(certs::enroll))
        .route("/v1/crl", get(certs::crl))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

/// The operations API and the dashboard, as mounted on the plain-HTTP listener.
pub fn ops_router(state: AppState) -> Router {
    let hosts = state.ops_hosts.clone();
    let refused = state
        .metrics
        .listeners
        .ops_refused
        .with_label_values(&["host"]);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state.clone())
        .merge(api::router(state.clone()))
        .merge(phonehome_dashboard::router(state.dashboard))
        // Inside the Host check: a request for a foreign name is refused before anything
        // looks at its credentials.
        .layer(axum::middleware::from_fn_with_state(
            state.auth.clone(),
            auth::gate,
        ))
        .layer(axum::middleware::from_fn(move |req, next| {
            host_check(hosts.clone(), refused.clone(), req, next)
        }))
}

/// Answers only requests for a host this listener is known by: `localhost`, an IP address, or
/// a configured name. A web page on another site that rebinds its own name to this address
/// (DNS rebinding) sends its own name, and gets 421 instead of the API.
async fn host_check(
    hosts: Arc<Vec<String>>,
    refused: prometheus::IntCounter,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.to_owned());
    match host {
        // HTTP/1.0 without Host: not a browser.
        None => next.run(req).await,
        Some(h) if host_allowed(&h, &hosts) => next.run(req).await,
        Some(h) => {
            // A rebinding page can send these in a loop: the counter tells, the log line is
            // for debugging. The name is shortened: the answer stays short whatever was sent.
            refused.inc();
            let shown: String = h.chars().take(100).collect();
            tracing::debug!(host = %shown.escape_debug(), "operations request for a foreign host name refused");
            (
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "this operations listener does not answer for host {shown:?}; add the name \
                     to ops_allowed_hosts if operators reach it by that name\n"
                ),
            )
                .into_response()
        }
    }
}

/// Whether `host` (a Host header: name or address, with or without a port) is one the
/// operations listener answers for.
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let host = host.trim().to_ascii_lowercase();
    // [v6]:port, [v6], v4:port, name:port, name.
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((addr, _)) => addr.to_owned(),
            None => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name.to_owned(),
            _ => host.clone(),
        }
    };
    let name = name.trim_end_matches('.');
    name == "localhost"
        || name.parse::<std::net::IpAddr>().is_ok()
        || allowed.iter().any(|a| {
            let a = a.trim_end_matches('.');
            a == name || a == host
        })
}

/// Every answer of the report API is JSON, a wrong path included.
async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({
            "error": "not_found",
            "message": format!("no route for {method} {}; reports go to POST /v1/reports", uri.path()),
        })),
    )
}

async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    match state.storage.ping().await {
        Ok(()) => (StatusCode::OK, "ok\n"),
        Err(e) => {
            tracing::warn!(error = %e, "health check: database unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n")
        }
    }
}

/// For a load balancer: 503 while this replica turns reports away (every in-flight slot taken)
/// or cannot reach PostgreSQL, so new connections go to a replica with room. `/healthz` stays
/// about liveness and the database only. A read database that does not answer is said but
/// keeps the answer 200: reports are still taken, only pages and the read API are down.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.admission.available_permits() == 0 {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "saturated: every in-flight slot is taken (max_in_flight)\n".to_owned(),
        );
    }
    // PostgreSQL can answer and still not store (out of disk, read-only): writes tell.
    if let Some((for_how_long, error)) = state.storage.write_health().failing {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "cannot store reports: every write for {} s has failed: {error}\n",
                for_how_long.as_secs()
            ),
        );
    }
    // Without a current revocation list a revoked certificate could deliver: this replica
    // stays out of the balancer until the list loads again.
    if state.revocations.stale() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            match state.revocations.age() {
                Some(age) => format!(
                    "the revocation list could not be reloaded for {} s\n",
                    age.as_secs()
                ),
                None => "the revocation list has not been loaded yet\n".to_owned(),
            },
        );
    }
    // A background task that is down is said, but does not take intake away: reports are
    // still stored, and the supervisor restarts it.
    let down: Vec<String> = state
        .tasks
        .records()
        .into_iter()
        .filter(|(_, r)| !r.up)
        .map(|(name, r)| format!("{name} (restarted {} times)", r.restarts))
        .collect();
    let mut notes = Vec::new();
    if !down.is_empty() {
        notes.push(format!(
            "background task down, restarting: {}",
            down.join(", ")
        ));
    }
    if state.storage.has_read_database() {
        if let Err(e) = read_side(&state).await {
            notes.push(format!(
                "read database (read_database_url) unavailable, the dashboard and read API \
                 answer 503: {e}"
            ));
        }
    }
    let ready = if notes.is_empty() {
        "ready\n".to_owned()
    } else {
        format!("ready; {}\n", notes.join("; "))
    };
    match state.storage.ping().await {
        Ok(()) => (StatusCode::OK, ready),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check: database unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "database unavailable\n".to_owned(),
            )
        }
    }
}

/// How long `/readyz` and `/metrics` wait for the read database to answer: a replica that
/// does not answer must not make a load balancer's check time out.
const READ_SIDE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether the database the dashboard reads from answers, within [`READ_SIDE_WAIT`].
async fn read_side(state: &AppState) -> Result<(), String> {
    match tokio::time::timeout(READ_SIDE_WAIT, state.reads.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {READ_SIDE_WAIT:?}")),
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    state
        .metrics
        .read_database_up
        .set(i64::from(read_side(&state).await.is_ok()));
    let read = async {
        let counts = state.dashboard.fleet_counts().await?;
        let maintenance = state.storage.maintenance_last_success().await?;
        Ok::<_, storage::StorageError>((counts, maintenance))
    };
    match read.await {
        Ok((counts, maintenance)) => state.metrics.set_fleet(&counts, maintenance),
        // The ingest's own counters are still worth a scrape; the fleet gauges keep their last
        // values.
        Err(e) => tracing::warn!(error = %e, "metrics: cannot read the fleet's numbers"),
    }
    state
        .metrics
        .set_health(&state.storage.write_health(), &state.tasks.records());
    state
        .metrics
        .identity
        .revocations_age
        .set(state.revocations.age().map_or(-1.0, |a| a.as_secs_f64()));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::host_allowed;

    #[test]
    fn the_operations_listener_knows_its_own_names_only() {
        let allowed = vec!["ops.example".to_owned()];
        for ok in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "[::1]:8080",
            "LOCALHOST:8080",
            "10.1.2.3",
            "ops.example:8080",
            "OPS.example.",
        ] {
            assert!(host_allowed(ok, &allowed), "{ok}");
        }
        for refused in [
            "evil.example",
            "127.0.0.1.evil.example",
            "ops.example.evil",
            "[::1",
            "",
        ] {
            assert!(!host_allowed(refused, &allowed), "{refused}");
        }
    }
}
