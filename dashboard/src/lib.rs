//! The operations dashboard: server-rendered pages over a read-only view of the fleet, and the
//! same views as JSON under `/api/v1`, so a script sees what a person sees.
//!
//! The dashboard never talks to a database: the ingest hands it a [`FleetSource`], so the pages
//! can be tested with any source and the storage stays in one place. Every page is HTML with
//! escaping by default (maud) and charts as inline SVG: nothing needs a script, and nothing is
//! loaded from anywhere but the ingest itself.

pub mod chart;
mod format;
pub mod model;
mod openapi;
mod pages;
pub mod query;
pub mod reliability;

use std::future::Future;

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

pub use model::*;
pub use query::{
    AlertCursor, AlertQuery, AlertStateFilter, ApplianceCursor, ApplianceQuery, ApplianceSort,
    AuditQuery, BadParameter, DriveQuery, encode,
};

/// Where the dashboard reads the fleet from. Lists are pages in the query's order; fleet-wide
/// numbers may be a few seconds old (see [`Summary::as_of`]).
pub trait FleetSource: Clone + Send + Sync + 'static {
    /// Error shown to the log (never to the page).
    type Error: std::fmt::Display + Send;

    /// The alert rules this ingest knows, for filters and their checks.
    fn rules(&self) -> &'static [&'static str];

    fn summary(&self) -> impl Future<Output = Result<Summary, Self::Error>> + Send;

    fn appliances(
        &self,
        q: &ApplianceQuery,
    ) -> impl Future<Output = Result<Page<ApplianceRow>, Self::Error>> + Send;

    fn alerts(
        &self,
        q: &AlertQuery,
    ) -> impl Future<Output = Result<Page<AlertRow>, Self::Error>> + Send;

    fn drives(
        &self,
        q: &DriveQuery,
    ) -> impl Future<Output = Result<Page<DriveRow>, Self::Error>> + Send;

    /// One drive by its key with `days` of samples; `None` when no report named it.
    fn drive(
        &self,
        key: &str,
        days: u32,
    ) -> impl Future<Output = Result<Option<DriveDetail>, Self::Error>> + Send;

    /// Versions in use now, and `days` of adoption.
    fn versions(&self, days: u32) -> impl Future<Output = Result<Versions, Self::Error>> + Send;

    /// The fleet's drive reliability as maintenance last computed it; `None` before then.
    fn reliability(
        &self,
    ) -> impl Future<Output = Result<Option<reliability::Reliability>, Self::Error>> + Send;

    /// A page of the audit log, newest first (`Page::next` is the `before` of the next page).
    fn audit(
        &self,
        q: &AuditQuery,
    ) -> impl Future<Output = Result<Page<AuditRow>, Self::Error>> + Send;

    /// One appliance with `days` of history; `None` when the serial never reported.
    fn appliance(
        &self,
        serial: &str,
        days: u32,
    ) -> impl Future<Output = Result<Option<ApplianceView>, Self::Error>> + Send;
}

/// The path of appliance `serial`'s page. A serial may hold any printable ASCII (spaces,
/// slashes), so it is percent-encoded as one path segment.
pub fn appliance_path(serial: &str) -> String {
    format!("/appliances/{}", encode(serial))
}

/// The path of a drive's page, its key percent-encoded as one segment.
pub fn drive_path(key: &str) -> String {
    format!("/drives/{}", encode(key))
}

/// The dashboard's routes: the pages, their JSON under `/api/v1`, the stylesheet, and an HTML
/// 404 for any other path. Every answer carries the security headers (see [`secure`]).
pub fn router<S: FleetSource>(source: S) -> Router {
    Router::new()
        .route("/", get(summary_page::<S>))
        .route("/appliances", get(appliances_page::<S>))
        .route("/appliances/{serial}", get(appliance_page::<S>))
        .route("/alerts", get(alerts_page::<S>))
        .route("/drives", get(drives_page::<S>))
        .route("/drives/{key}", get(drive_page::<S>))
        .route("/versions", get(versions_page::<S>))
        .route("/reliability", get(reliability_page::<S>))
        .route("/audit", get(audit_page::<S>))
        .route("/assets/style.css", get(stylesheet))
        .route("/assets/icon.svg", get(icon))
        .route("/favicon.ico", get(icon))
        .route("/api/v1/summary", get(summary_json::<S>))
        .route("/api/v1/appliances", get(appliances_json::<S>))
        .route("/api/v1/alerts", get(alerts_json::<S>))
        .route("/api/v1/drives", get(drives_json::<S>))
        .route("/api/v1/drives/{key}", get(drive_json::<S>))
        .route("/api/v1/versions", get(versions_json::<S>))
        .route("/api/v1/reliability", get(reliability_json::<S>))
        .route("/api/v1/openapi.json", get(openapi_json))
        .fallback(not_found_page)
        .layer(axum::middleware::map_response(secure))
        .with_state(source)
}

/// What every dashboard answer carries: nothing runs but what the ingest serves (no scripts at
/// all), no framing, no sniffing, no referrer leaving the operations network, and no stale
/// fleet in a cache. The stylesheet may be cached briefly.
async fn secure(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

type QueryPairs = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// The query string's pairs; a string that is not a query string is a bad `query`.
fn pairs(query: QueryPairs) -> Result<Vec<(String, String)>, BadParameter> {
    query.map(|Query(p)| p).map_err(|e| BadParameter {
        parameter: "query".into(),
        message: e.body_text(),
    })
}

/// How a handler fails: what the client did wrong, what is not there, or ours.
enum Failure {
    Bad(BadParameter),
    NotFound(String),
    Unavailable,
}

impl From<BadParameter> for Failure {
    fn from(b: BadParameter) -> Self {
        Failure::Bad(b)
    }
}

/// Logs a source error once and hides it from the client.
fn unavailable(what: &str, e: impl std::fmt::Display) -> Failure {
    tracing::error!(error = %e, "dashboard: cannot read {what}");
    Failure::Unavailable
}

impl Failure {
    fn html(self) -> Response {
        match self {
            Failure::Bad(b) => (
                StatusCode::BAD_REQUEST,
                Html(pages::error_page(
                    "Bad request",
                    &format!("{}: {}", b.parameter, b.message),
                )),
            )
                .into_response(),
            Failure::NotFound(what) => (
                StatusCode::NOT_FOUND,
                Html(pages::error_page("Not found", &what)),
            )
                .into_response(),
            Failure::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "5")],
                Html(pages::error_page(
                    "Temporarily unavailable",
                    "The fleet database cannot be read right now; this page will work again \
                     once it can. The ingest's log says why.",
                )),
            )
                .into_response(),
        }
    }

    /// The same JSON error body as the rest of the API: `error`, `message`, `field`.
    fn json(self) -> Response {
        let (status, body) = match self {
            Failure::Bad(b) => (
                StatusCode::BAD_REQUEST,
                json!({"error": "bad_parameter", "message": b.message, "field": b.parameter}),
            ),
            Failure::NotFound(what) => (
                StatusCode::NOT_FOUND,
                json!({"error": "not_found", "message": what}),
            ),
            Failure::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "unavailable", "message": "the database is unavailable; retry later"}),
            ),
        };
        let mut r = (status, axum::Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        r
    }
}

fn html_or(result: Result<String, Failure>) -> Response {
    match result {
        Ok(page) => Html(page).into_response(),
        Err(f) => f.html(),
    }
}

fn json_or(result: Result<serde_json::Value, Failure>) -> Response {
    match result {
        Ok(v) => axum::Json(v).into_response(),
        Err(f) => f.json(),
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<serde_json::Value, Failure> {
    serde_json::to_value(v).map_err(|e| unavailable("a view as JSON", e))
}

/// A path segment that did not decode (not UTF-8) names nothing the fleet holds.
fn segment(path: Result<Path<String>, PathRejection>, what: &str) -> Result<String, Failure> {
    path.map(|Path(s)| s)
        .map_err(|_| Failure::NotFound(format!("no such {what}")))
}

async fn summary_data<S: FleetSource>(
    source: &S,
    query: QueryPairs,
) -> Result<(Summary, Page<ApplianceRow>), Failure> {
    query::Params::new(pairs(query)?, &[])?;
    let summary = source
        .summary()
        .await
        .map_err(|e| unavailable("the summary", e))?;
    // The longest-silent appliances, whatever else is firing: silence is what a fleet page
    // must never hide.
    let silent = ApplianceQuery {
        silent: Some(true),
        sort: ApplianceSort::Oldest,
        limit: 10,
        ..ApplianceQuery::default()
    };
    let silent = source
        .appliances(&silent)
        .await
        .map_err(|e| unavailable("silent appliances", e))?;
    Ok((summary, silent))
}

async fn summary_page<S: FleetSource>(State(source): State<S>, query: QueryPairs) -> Response {
    html_or(
        summary_data(&source, query)
            .await
            .map(|(s, silent)| pages::summary(&s, &silent.items)),
    )
}

async fn summary_json<S: FleetSource>(State(source): State<S>, query: QueryPairs) -> Response {
    json_or(
        async {
            let (s, silent) = summary_data(&source, query).await?;
            let mut v = to_json(&s)?;
            v["silent_appliances"] = to_json(&silent.items)?;
            Ok(v)
        }
        .await,
    )
}

async fn appliance_list<S: FleetSource>(
    source: &S,
    query: QueryPairs,
) -> Result<(ApplianceQuery, Page<ApplianceRow>), Failure> {
    let q = ApplianceQuery::parse(pairs(query)?, source.rules())?;
    let page = source
        .appliances(&q)
        .await
        .map_err(|e| unavailable("appliances", e))?;
    Ok((q, page))
}

async fn appliances_page<S: FleetSource>(State(source): State<S>, query: QueryPairs) -> Response {
    html_or(
        appliance_list(&source, query)
            .await
            .map(|(q, page)| pages::appliances(&q, &page, source.rules())),
    )
}

async fn appliances_json<S: FleetSource>(State(source): State<S>, query: QueryPairs) -> Response {
    json_or(
        async {
            let (_, page) = appliance_list(&source, query).await?;
            Ok(json!({"appliances": to_json(&page.items)?, "next": page.next}))
        }
        .await,
    )
}

async fn appliance_page<S: FleetSource>(
    State(source): State<S>,
    path: Result<Path<String>, PathRejection>,
    query: QueryPairs,
) -> Response {
    html_or(
        async {
            let serial = segment(path, "appliance")?;
            let p = query::Params::new(pairs(query)?, &["days"])?;
            let days = p.days()?;
            match source
                .appliance(&serial, days)
                .await
                .map_err(|e| unavailable("the appliance", e))?
            {
                Some(view) => Ok(pages::appliance(&view)),
                None => Err(Failure::NotFound(format!(
                    "No appliance with serial {} has reported.",
                    query::quoted(&serial)
                ))),
            }
        }
        .await,
    )
}

async fn alert_list<S: FleetSource>(
    source: &S,
    query: QueryPairs,
) -> Result<(AlertQuery, Page<AlertRow>), Failure> {
    let q = AlertQuery::parse(pairs(query)?, source.rules())?;
    let page = source
        .alerts(&q)
        .await
        .map_err(|e| unavailable("alerts", e))?;
    Ok((q, page))
}

async fn alerts_page<S: FleetSource>(State(source): State<S>, query: QueryPairs) -> Response {
    html_or(
        alert_list(&source, query)
            .await
            .map(|(q, page)| pages::alerts(&q, &page, source.rules())),
    )
}

async fn alerts_json<S: FleetSource>(State(source): State<S>, query: QueryPairs) -> Response {
    json_or(
        async {
            let (_, page) = alert_list(&source, query).await?;
            Ok(json!({"alerts": to_json(&page.items)?, "next": page.next}))
        }
        .await,
    )
}

async fn drive_list<S: FleetSource>(
    source: &S,
    query: QueryPairs,
) -> Result<(DriveQuery, Page<DriveRow>), Failure> {
    let q = DriveQuery::parse(pairs(query)?)?;
    let page = source
        .drives(&q)
        .await
        .map_err(|e| unavailable("drives", e))?;
    Ok((q, page))
}

async fn drives_page<S: FleetSource>(State(source): State<S>, query: QueryPairs) -> Response {
    html_or(
        drive_list(&source, query)
            .await
            .map(|(q, page)| pages::drives(&q, &page)),
    )
}

async fn drives_json<S: FleetSource>(State(source): State<S>, query: QueryPairs) -> Response {
    json_or(
        async {
            let (_, page) = drive_list(&source, query).await?;
            Ok(json!({"drives": to_json(&page.items)?, "next": page.next}))
        }
        .await,
    )
}

async fn one_drive<S: FleetSource>(
    source: &S,
    path: Result<Path<String>, PathRejection>,
    query: QueryPairs,
) -> Result<DriveDetail, Failure> {
    let key = segment(path, "drive")?;
    let days = query::Params::new(pairs(query)?, &["days"])?.days()?;
    source
        .drive(&key, days)
        .await
        .map_err(|e| unavailable("the drive", e))?
        .ok_or_else(|| {
            Failure::NotFound(format!(
                "No report has named a drive {}.",
                query::quoted(&key)
            ))
        })
}

async fn drive_page<S: FleetSource>(
    State(source): State<S>,
    path: Result<Path<String>, PathRejection>,
    query: QueryPairs,
) -> Response {
    html_or(
        one_drive(&source, path, query)
            .await
            .map(|d| pages::drive(&d)),
    )
}

async fn drive_json<S: FleetSource>(
    State(source): State<S>,
    path: Result<Path<String>, PathRejection>,
    query: QueryPairs,
) -> Response {
    json_or(async { to_json(&one_drive(&source, path, query).await?) }.await)
}

/// Days of adoption the versions page charts when the client does not say.
const DEFAULT_ADOPTION_DAYS: u32 = 90;

async fn version_data<S: FleetSource>(source: &S, query: QueryPairs) -> Result<Versions, Failure> {
    let p = query::Params::new(pairs(query)?, &["days"])?;
    let days = p
        .number("days", 1, query::MAX_DAYS)?
        .unwrap_or(DEFAULT_ADOPTION_DAYS);
    source
        .versions(days)
        .await
        .map_err(|e| unavailable("versions", e))
}

async fn versions_page<S: FleetSource>(State(source): State<S>, query: QueryPairs) -> Response {
    html_or(
        version_data(&source, query)
            .await
            .map(|v| pages::versions(&v)),
    )
}

async fn versions_json<S: FleetSource>(State(source): State<S>, query: QueryPairs) -> Response {
    json_or(async { to_json(&version_data(&source, query).await?) }.await)
}

async fn reliability_page<S: FleetSource>(State(source): State<S>) -> Response {
    html_or(
        source
            .reliability()
            .await
            .map(|r| pages::reliability(r.as_ref()))
            .map_err(|e| unavailable("the reliability figures", e)),
    )
}

async fn reliability_json<S: FleetSource>(State(source): State<S>) -> Response {
    json_or(
        async {
            let r = source
                .reliability()
                .await
                .map_err(|e| unavailable("the reliability figures", e))?;
            to_json(&r)
        }
        .await,
    )
}

async fn audit_page<S: FleetSource>(State(source): State<S>, query: QueryPairs) -> Response {
    let data = async {
        let q = AuditQuery::parse(pairs(query)?)?;
        let page = source
            .audit(&q)
            .await
            .map_err(|e| unavailable("the audit log", e))?;
        Ok::<_, Failure>(pages::audit(&q, &page))
    };
    html_or(data.await)
}

async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi::DOCUMENT,
    )
        .into_response()
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        pages::stylesheet(),
    )
        .into_response()
}

/// A small icon, so browsers that ask for one get it from here rather than a 404.
async fn icon() -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 16 16\">\
         <circle cx=\"8\" cy=\"8\" r=\"6\" fill=\"#137333\"/></svg>",
    )
        .into_response()
}

/// Any other path: an HTML page for people, JSON under the API.
async fn not_found_page(uri: axum::http::Uri) -> Response {
    let path = uri.path();
    let what = format!("There is no page at {}.", query::quoted(path));
    if path.starts_with("/api/") {
        Failure::NotFound(what).json()
    } else {
        Failure::NotFound(what).html()
    }
}
