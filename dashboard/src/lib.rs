//! The operations dashboard: server-rendered HTML pages over a read-only view of the fleet.
//!
//! The dashboard never talks to a database: the ingest hands it a [`FleetSource`], so the pages
//! can be tested with any source and the storage stays in one place.

mod html;

use std::fmt::Write;
use std::future::Future;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};

pub use html::escape;

/// One appliance's current state, as the fleet page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplianceRow {
    pub serial: String,
    pub hostname: Option<String>,
    pub last_report_at: DateTime<Utc>,
    pub app_version: Option<String>,
    pub app_status: String,
    pub os: Option<String>,
    pub report_count: i64,
}

/// Where the dashboard reads the fleet from.
pub trait FleetSource: Clone + Send + Sync + 'static {
    /// Error shown to the log (never to the page).
    type Error: std::fmt::Display + Send;

    /// Appliances, most recently heard from first, at most `limit`.
    fn appliances(
        &self,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<ApplianceRow>, Self::Error>> + Send;

    /// How many appliances have ever reported (the page may list fewer).
    fn fleet_size(&self) -> impl Future<Output = Result<i64, Self::Error>> + Send;

    /// One appliance with what its page shows; `None` when the serial never reported.
    fn appliance(
        &self,
        serial: &str,
    ) -> impl Future<Output = Result<Option<ApplianceView>, Self::Error>> + Send;
}

/// One appliance as its page shows it: what it is now, what is wrong, what it holds, and what
/// changed lately.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplianceView {
    pub row: ApplianceRow,
    pub kernel: Option<String>,
    pub collector_version: String,
    /// No report for longer than the silence threshold.
    pub silent: bool,
    /// Parts of the newest report the collector could not gather.
    pub collection_errors: i32,
    /// Firing alerts, then the newest resolved ones.
    pub alerts: Vec<AlertView>,
    pub drives: Vec<DriveView>,
    pub filesystems: Vec<FilesystemView>,
    pub nics: Vec<NicView>,
    /// Version changes, drive and identity events, newest first.
    pub events: Vec<EventView>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertView {
    pub rule: String,
    pub subject: String,
    pub severity: String,
    /// `firing` or `resolved`.
    pub state: String,
    pub started_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub summary: String,
}

/// A drive in the appliance now, with its newest sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveView {
    pub device_name: String,
    pub model: Option<String>,
    pub serial: Option<String>,
    /// When it was first seen in this appliance.
    pub since: DateTime<Utc>,
    /// SMART's overall assessment; `None` when the drive did not give one.
    pub health_passed: Option<bool>,
    /// The ingest's own judgement from the counters (a drive can pass SMART and be failing).
    pub failing: bool,
    pub temperature_celsius: Option<i64>,
    pub power_on_hours: Option<i64>,
    /// The error counters this drive reports that are not zero, by name.
    pub counters: Vec<(String, i64)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesystemView {
    pub mount_point: String,
    pub bytes_used: i64,
    pub bytes_total: i64,
    pub inodes_used: i64,
    pub inodes_total: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicView {
    pub name: String,
    pub rx_errors: Option<i64>,
    pub tx_errors: Option<i64>,
    pub rx_dropped: Option<i64>,
    pub tx_dropped: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventView {
    pub at: DateTime<Utc>,
    /// What kind of change, in a word or two ("app version", "drive moved", "system UUID").
    pub kind: String,
    pub detail: String,
}

/// The path of appliance `serial`'s page. A serial may hold any printable ASCII (spaces,
/// slashes), so it is percent-encoded as one path segment.
pub fn appliance_path(serial: &str) -> String {
    let mut path = String::from("/appliances/");
    for b in serial.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            path.push(char::from(b));
        } else {
            let _ = write!(path, "%{b:02X}");
        }
    }
    path
}

/// Most appliances listed on the fleet page until it gains paging.
pub const FLEET_PAGE_LIMIT: i64 = 1000;

/// The dashboard's routes: `/` is the fleet page, `/appliances/{serial}` one appliance's page
/// (the page an alert links to).
pub fn router<S: FleetSource>(source: S) -> Router {
    Router::new()
        .route("/", get(fleet_page::<S>))
        .route("/appliances/{serial}", get(appliance_page::<S>))
        .with_state(source)
}

async fn fleet_page<S: FleetSource>(State(source): State<S>) -> Response {
    let read = async {
        Ok::<_, S::Error>((
            source.fleet_size().await?,
            source.appliances(FLEET_PAGE_LIMIT).await?,
        ))
    };
    match read.await {
        Ok((total, rows)) => Html(html::fleet_page(&rows, total, Utc::now())).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "dashboard: cannot read the fleet");
            unavailable()
        }
    }
}

async fn appliance_page<S: FleetSource>(
    State(source): State<S>,
    Path(serial): Path<String>,
) -> Response {
    match source.appliance(&serial).await {
        Ok(Some(view)) => Html(html::appliance_page(&view, Utc::now())).into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Html(html::unknown_appliance_page(&serial)),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, serial = %serial, "dashboard: cannot read the appliance");
            unavailable()
        }
    }
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html::unavailable_page(),
    )
        .into_response()
}
