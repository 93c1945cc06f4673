//! The operations dashboard: server-rendered HTML pages over a read-only view of the fleet.
//!
//! The dashboard never talks to a database: the ingest hands it a [`FleetSource`], so the pages
//! can be tested with any source and the storage stays in one place.

mod html;

use std::future::Future;

use axum::Router;
use axum::extract::State;
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
}

/// Most appliances listed on the fleet page until it gains paging.
pub const FLEET_PAGE_LIMIT: i64 = 1000;

/// The dashboard's routes: `/` is the fleet page.
pub fn router<S: FleetSource>(source: S) -> Router {
    Router::new()
        .route("/", get(fleet_page::<S>))
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
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                html::unavailable_page(),
            )
                .into_response()
        }
    }
}
