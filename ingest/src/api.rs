//! The operations JSON API under `/api/v1`: alerts, the fleet's current state, one appliance's
//! history, and stored reports as sent. Handlers check parameters and shape answers; the rows
//! come from `storage::read`.
//!
//! Parameters are checked strictly (an unknown name or value is a 400 naming it) because a
//! misspelt filter that is silently ignored returns the whole fleet and looks like an answer.

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;

use crate::AppState;
use crate::alerts::RULES;
use crate::error::ApiError;
use crate::storage::read::{AlertFilter, ApplianceFilter};
use crate::storage::{FailureKind, StorageError};

/// Rows per page when the client does not say.
pub const DEFAULT_LIMIT: i64 = 100;
/// Most rows per page: a page is built in memory.
pub const MAX_LIMIT: i64 = 1000;
/// Days of history with an appliance when the client does not say.
pub const DEFAULT_DAYS: u32 = 30;
/// Most days of history: the default retention.
pub const MAX_DAYS: u32 = 400;

const STATES: [&str; 2] = ["firing", "resolved"];
const SEVERITIES: [&str; 3] = ["critical", "warning", "info"];
const APP_STATUSES: [&str; 4] = ["healthy", "degraded", "unhealthy", "unknown"];

/// The API's routes, to be merged into the operations router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/appliances", get(appliances))
        .route("/api/v1/appliances/{serial}", get(appliance))
        .route(
            "/api/v1/appliances/{serial}/reports/{report_id}",
            get(report),
        )
        // A client of a JSON API gets JSON, a wrong path included.
        .route("/api/v1/{*rest}", get(no_route))
        .with_state(state)
}

type QueryPairs = Result<Query<Vec<(String, String)>>, QueryRejection>;

async fn alerts(State(state): State<AppState>, query: QueryPairs) -> Result<Response, ApiError> {
    let p = Params::new(
        query,
        &["state", "rule", "severity", "serial", "limit", "before_id"],
    )?;
    let filter = AlertFilter {
        state: p.one_of("state", &STATES)?,
        rule: p.one_of("rule", &RULES)?,
        severity: p.one_of("severity", &SEVERITIES)?,
        serial: p.get("serial").map(str::to_owned),
        before_id: p.number("before_id", 1, i64::MAX)?,
        limit: p.number("limit", 1, MAX_LIMIT)?.unwrap_or(DEFAULT_LIMIT),
    };
    let page = state
        .storage
        .alerts_page(&filter)
        .await
        .map_err(storage_error)?;
    Ok(Json(page).into_response())
}

async fn appliances(
    State(state): State<AppState>,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let p = Params::new(query, &["status", "limit", "after"])?;
    let filter = ApplianceFilter {
        status: p.one_of("status", &APP_STATUSES)?,
        after: p.get("after").map(str::to_owned),
        limit: p.number("limit", 1, MAX_LIMIT)?.unwrap_or(DEFAULT_LIMIT),
    };
    let page = state
        .storage
        .appliances_page(&filter)
        .await
        .map_err(storage_error)?;
    Ok(Json(page).into_response())
}

async fn appliance(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let Path(serial) = path.map_err(bad_path)?;
    let p = Params::new(query, &["days"])?;
    let days = p.number("days", 1, MAX_DAYS)?.unwrap_or(DEFAULT_DAYS);
    match state
        .storage
        .appliance_detail(&serial, days)
        .await
        .map_err(storage_error)?
    {
        Some(detail) => Ok(Json(detail).into_response()),
        None => Err(unknown_appliance(&serial)),
    }
}

async fn report(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((serial, report_id)) = path.map_err(bad_path)?;
    let report_id: uuid::Uuid = report_id.parse().map_err(|_| ApiError::BadParameter {
        parameter: "report_id".into(),
        message: "report_id must be a UUID".into(),
    })?;
    match state
        .storage
        .report_json(&serial, report_id)
        .await
        .map_err(storage_error)?
    {
        // The body exactly as the appliance sent it: already JSON, so not re-encoded.
        Some(body) => Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response()),
        None => Err(ApiError::NotFound(format!(
            "no report {report_id} from appliance {}",
            quoted(&serial)
        ))),
    }
}

async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!(
        "no API route {}; see /api/v1/alerts and /api/v1/appliances",
        quoted(uri.path())
    ))
}

fn unknown_appliance(serial: &str) -> ApiError {
    ApiError::NotFound(format!("no appliance {} has reported", quoted(serial)))
}

/// A client-supplied string inside a message: JSON-quoted, and cut short so an error body stays
/// small whatever was sent.
fn quoted(s: &str) -> String {
    let short: String = s.chars().take(128).collect();
    serde_json::Value::String(short).to_string()
}

/// A read cannot carry bad client data into the database, so every failure is ours: either
/// worth a retry (503) or internal (500), never the 422 a report would get.
fn storage_error(e: StorageError) -> ApiError {
    match e.kind() {
        FailureKind::Transient => ApiError::Unavailable(e),
        FailureKind::BadData | FailureKind::Internal => ApiError::Internal(e),
    }
}

fn bad_path(e: PathRejection) -> ApiError {
    ApiError::BadParameter {
        parameter: "path".into(),
        message: e.body_text(),
    }
}

/// The query string, checked: only known names, each at most once.
struct Params(Vec<(String, String)>);

impl Params {
    fn new(query: QueryPairs, allowed: &[&str]) -> Result<Self, ApiError> {
        let Query(pairs) = query.map_err(|e| ApiError::BadParameter {
            parameter: "query".into(),
            message: e.body_text(),
        })?;
        for (i, (name, _)) in pairs.iter().enumerate() {
            if !allowed.contains(&name.as_str()) {
                return Err(ApiError::BadParameter {
                    parameter: name.chars().take(64).collect(),
                    message: format!(
                        "unknown parameter {}; known: {}",
                        quoted(name),
                        allowed.join(", ")
                    ),
                });
            }
            if pairs[..i].iter().any(|(n, _)| n == name) {
                return Err(ApiError::BadParameter {
                    parameter: name.clone(),
                    message: format!("parameter {name} given more than once"),
                });
            }
        }
        Ok(Params(pairs))
    }

    /// The value of `name`; an empty value counts as absent (what a blank form field sends).
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    fn one_of(&self, name: &str, valid: &[&str]) -> Result<Option<String>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) if valid.contains(&v) => Ok(Some(v.to_owned())),
            Some(v) => Err(ApiError::BadParameter {
                parameter: name.to_owned(),
                message: format!("{name} {} is not one of: {}", quoted(v), valid.join(", ")),
            }),
        }
    }

    fn number<T>(&self, name: &str, min: T, max: T) -> Result<Option<T>, ApiError>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        match v.parse::<T>() {
            Ok(n) if n >= min && n <= max => Ok(Some(n)),
            _ => Err(ApiError::BadParameter {
                parameter: name.to_owned(),
                message: format!("{name} must be a whole number from {min} to {max}"),
            }),
        }
    }
}
