//! The operations JSON API under `/api/v1` that is not a dashboard page's: one appliance's state
//! and history, and stored reports as sent. The lists (summary, appliances, alerts, drives,
//! versions) answer from the dashboard crate with the pages' own filters. Handlers check
//! parameters and shape answers; the rows come from `storage::read`.
//!
//! Reads (everything under GET) go to the read database when `read_database_url` is set
//! (`AppState::reads`); writes to the primary.
//!
//! Parameters are checked strictly (an unknown name or value is a 400 naming it) because a
//! misspelt filter that is silently ignored returns the whole fleet and looks like an answer.

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use axum::{Extension, body::Bytes};

use phonehome_dashboard::query::quoted;

use crate::AppState;
use crate::auth::Actor;
use crate::error::ApiError;
use crate::lifecycle::{Change, State as LifecycleState};
use crate::storage::{FailureKind, StorageError};

/// The API's routes, to be merged into the operations router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/appliances/{serial}", get(appliance))
        .route(
            "/api/v1/appliances/{serial}/reports/{report_id}",
            get(report),
        )
        .route(
            "/api/v1/appliances/{serial}/lifecycle",
            get(lifecycle).put(set_lifecycle),
        )
        .route(
            "/api/v1/appliances/{serial}/labels",
            get(labels).put(set_labels),
        )
        .route("/api/v1/revocations", axum::routing::post(revoke))
        .route("/api/v1/alerts/{id}/ack", axum::routing::post(acknowledge))
        .route(
            "/api/v1/appliances/{serial}/mutes",
            axum::routing::post(mute),
        )
        .route("/api/v1/audit", get(audit))
        // A client of a JSON API gets JSON, a wrong path included.
        .route("/api/v1/{*rest}", get(no_route))
        .with_state(state)
}

type QueryPairs = Result<Query<Vec<(String, String)>>, QueryRejection>;

async fn appliance(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let Path(serial) = path.map_err(bad_path)?;
    let p = Params::new(query, &["days"])?;
    let days = p.days()?;
    match state
        .reads
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
        .reads
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

/// Largest write request body: a state, a date, a bounded note, labels.
const MAX_WRITE_BODY: usize = 16 * 1024;

/// `GET .../lifecycle`: the stored state (`active` when none is).
async fn lifecycle(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(serial) = path.map_err(bad_path)?;
    let serial = parse_serial(&serial)?;
    let stored = state
        .reads
        .lifecycle(serial.as_str())
        .await
        .map_err(storage_error)?;
    let now = chrono::Utc::now();
    Ok(Json(serde_json::json!({
        "serial": serial.as_str(),
        "state": stored.as_ref().map_or(LifecycleState::Active, |l| l.state),
        "effective_state": stored.as_ref().map_or(LifecycleState::Active, |l| l.effective(now)),
        "until": stored.as_ref().and_then(|l| l.until),
        "note": stored.as_ref().map(|l| l.note.as_str()).unwrap_or(""),
        "changed_at": stored.as_ref().map(|l| l.changed_at),
        "changed_by": stored.as_ref().map(|l| l.changed_by.as_str()),
    }))
    .into_response())
}

/// `PUT .../lifecycle` (admin): `{state, until?, note?}`; the change, its effects on alerts
/// and revocation, and the audit row commit together.
async fn set_lifecycle(
    State(state): State<AppState>,
    actor: Option<Extension<Actor>>,
    path: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let actor = admin(actor)?;
    let Path(serial) = path.map_err(bad_path)?;
    let serial = parse_serial(&serial)?;
    bounded(&body)?;
    let change: Change = serde_json::from_slice(&body).map_err(|e| {
        ApiError::MalformedJson(format!(
            "expected {{\"state\": \"active\"|\"expected_offline\"|\"retired\",              \"until\"?: RFC 3339 time, \"note\"?: text}}: {e}"
        ))
    })?;
    change
        .check(chrono::Utc::now())
        .map_err(|message| ApiError::BadParameter {
            parameter: "body".into(),
            message,
        })?;
    let done = state
        .storage
        .set_lifecycle(serial.as_str(), &change, &actor.audit_name())
        .await
        .map_err(storage_error)?;
    Ok(Json(serde_json::json!({
        "serial": serial.as_str(),
        "state": change.state,
        "previous_state": done.previous,
        "until": change.until,
        "resolved_alerts": done.resolved_alerts,
        "serial_revoked": change.state == LifecycleState::Retired,
        "audit_id": done.audit_id,
    }))
    .into_response())
}

/// `GET .../labels`: the appliance's routing labels, by name.
async fn labels(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(serial) = path.map_err(bad_path)?;
    let serial = parse_serial(&serial)?;
    let labels = state
        .reads
        .labels(serial.as_str())
        .await
        .map_err(storage_error)?;
    Ok(Json(serde_json::json!({ "serial": serial.as_str(), "labels": labels })).into_response())
}

/// `PUT .../labels` (admin): `{"customer": "acme", "site": null}` sets and removes (null)
/// labels, leaving the others; the change and its audit row commit together.
async fn set_labels(
    State(state): State<AppState>,
    actor: Option<Extension<Actor>>,
    path: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let actor = admin(actor)?;
    let Path(serial) = path.map_err(bad_path)?;
    let serial = parse_serial(&serial)?;
    bounded(&body)?;
    let json: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::MalformedJson(format!("expected a JSON object: {e}")))?;
    let change =
        crate::labels::LabelChange::from_json(&json).map_err(|message| ApiError::BadParameter {
            parameter: "body".into(),
            message,
        })?;
    let labels = state
        .storage
        .set_labels(serial.as_str(), &change, &actor.audit_name())
        .await
        .map_err(|e| match e {
            crate::storage::admin::LabelError::Refused(message) => ApiError::BadParameter {
                parameter: "body".into(),
                message,
            },
            crate::storage::admin::LabelError::Storage(e) => storage_error(e),
        })?;
    Ok(Json(serde_json::json!({ "serial": serial.as_str(), "labels": labels })).into_response())
}

/// Longest note on an acknowledgement or a mute.
const MAX_NOTE_CHARS: usize = 1000;

fn note_of(v: &serde_json::Value) -> Result<String, ApiError> {
    let note = match v.get("note") {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(ApiError::BadParameter {
                parameter: "note".into(),
                message: "must be text".into(),
            });
        }
    };
    if note.chars().count() > MAX_NOTE_CHARS {
        return Err(ApiError::BadParameter {
            parameter: "note".into(),
            message: format!("at most {MAX_NOTE_CHARS} characters"),
        });
    }
    Ok(note)
}

fn small_json(body: &Bytes) -> Result<serde_json::Value, ApiError> {
    bounded(body)?;
    if body.is_empty() {
        return Ok(serde_json::json!({}));
    }
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::MalformedJson(format!("expected a JSON object: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::MalformedJson("expected a JSON object".into()));
    }
    Ok(v)
}

/// `POST /api/v1/alerts/{id}/ack` (admin), `{"note"?: text}`: the firing alert resolves and
/// its condition stays quiet until it gets worse (a higher severity, a new reason, another
/// rise).
async fn acknowledge(
    State(state): State<AppState>,
    actor: Option<Extension<Actor>>,
    path: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    use crate::storage::admin::AckError;
    let actor = admin(actor)?;
    let Path(id) = path.map_err(bad_path)?;
    let id: i64 = id.parse().map_err(|_| ApiError::BadParameter {
        parameter: "id".into(),
        message: "an alert id is a number".into(),
    })?;
    let note = note_of(&small_json(&body)?)?;
    let done = state
        .storage
        .acknowledge(id, &actor.audit_name(), &note)
        .await
        .map_err(|e| match e {
            AckError::NoAlert(_) => ApiError::NotFound(e.to_string()),
            AckError::NotFiring(..) => ApiError::BadParameter {
                parameter: "id".into(),
                message: e.to_string(),
            },
            AckError::Storage(s) => storage_error(s),
        })?;
    Ok(Json(serde_json::json!({
        "alert": id, "serial": done.serial, "rule": done.rule, "subject": done.subject,
        "state": "resolved", "audit_id": done.audit_id,
    }))
    .into_response())
}

/// `POST /api/v1/appliances/{serial}/mutes` (admin), `{"rule"?: name, "until": RFC 3339 time,
/// "note"?: text}`: no alert of the rule (every rule without one) opens for the appliance
/// until then, and its firing ones resolve.
async fn mute(
    State(state): State<AppState>,
    actor: Option<Extension<Actor>>,
    path: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let actor = admin(actor)?;
    let Path(serial) = path.map_err(bad_path)?;
    let serial = parse_serial(&serial)?;
    let v = small_json(&body)?;
    let note = note_of(&v)?;
    let rule = match v.get("rule") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(r)) if crate::alerts::RULES.contains(&r.as_str()) => {
            Some(r.clone())
        }
        Some(other) => {
            return Err(ApiError::BadParameter {
                parameter: "rule".into(),
                message: format!(
                    "{other} is not a rule; one of {}",
                    crate::alerts::RULES.join(", ")
                ),
            });
        }
    };
    let until = v
        .get("until")
        .and_then(|u| u.as_str())
        .ok_or_else(|| ApiError::BadParameter {
            parameter: "until".into(),
            message: "required: an RFC 3339 time (or a date, 2027-01-31) in the future".into(),
        })
        .and_then(|u| {
            crate::lifecycle::parse_until(u).map_err(|message| ApiError::BadParameter {
                parameter: "until".into(),
                message,
            })
        })?;
    if until <= chrono::Utc::now() {
        return Err(ApiError::BadParameter {
            parameter: "until".into(),
            message: "must be in the future".into(),
        });
    }
    let done = state
        .storage
        .mute(
            serial.as_str(),
            rule.as_deref(),
            until,
            &actor.audit_name(),
            &note,
        )
        .await
        .map_err(storage_error)?;
    Ok(Json(serde_json::json!({
        "mute": done.id, "serial": serial.as_str(), "rule": rule, "until": until,
        "resolved_alerts": done.resolved_alerts, "audit_id": done.audit_id,
    }))
    .into_response())
}

/// What `POST /api/v1/revocations` takes: one of `serial` and `certificate`, and why.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    serial: Option<String>,
    /// SHA-256 fingerprint, hex (colons allowed).
    certificate: Option<String>,
    #[serde(default)]
    reason: String,
}

/// Longest `reason` kept in the audit log and the CRL's table.
const MAX_REASON_CHARS: usize = 1000;

/// `POST /api/v1/revocations` (admin): what `phonehome-ingest ca revoke` does, through the API.
/// Every replica refuses the certificate within `revocation_refresh_secs`; `GET /v1/crl` lists
/// it at once.
async fn revoke(
    State(state): State<AppState>,
    actor: Option<Extension<Actor>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    use crate::storage::identity::RevokeTarget;
    let actor = admin(actor)?;
    bounded(&body)?;
    let req: RevokeRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::MalformedJson(format!(
            "expected {{\"serial\": text | \"certificate\": SHA-256 hex, \"reason\"?: text}}: {e}"
        ))
    })?;
    let bad = |parameter: &str, message: String| ApiError::BadParameter {
        parameter: parameter.into(),
        message,
    };
    if req.reason.chars().count() > MAX_REASON_CHARS {
        return Err(bad(
            "reason",
            format!("at most {MAX_REASON_CHARS} characters"),
        ));
    }
    let target = match (req.serial, req.certificate) {
        (Some(s), None) => RevokeTarget::Serial(parse_serial(&s)?),
        (None, Some(fp)) => {
            RevokeTarget::Certificate(phonehome_pki::parse_fingerprint(&fp).ok_or_else(|| {
                bad(
                    "certificate",
                    "not a SHA-256 fingerprint (64 hex digits)".into(),
                )
            })?)
        }
        _ => {
            return Err(bad(
                "body",
                "give exactly one of \"serial\" and \"certificate\"".into(),
            ));
        }
    };
    let done = state
        .storage
        .revoke(&target, &actor.audit_name(), &req.reason)
        .await
        .map_err(storage_error)?;
    Ok(Json(serde_json::json!({
        "revoked_at": done.revoked_at,
        "known_certificates": done.known_certificates,
        "refused_within_seconds": state.revocations.refresh.as_secs_f64().ceil(),
    }))
    .into_response())
}

/// `GET /api/v1/audit?target=&before=`: the audit log, newest first.
async fn audit(State(state): State<AppState>, query: QueryPairs) -> Result<Response, ApiError> {
    let p = Params::new(query, &["target", "before"])?;
    let target = p.0.get("target").map(str::to_owned);
    let before =
        p.0.number::<i64>("before", 1, i64::MAX)
            .map_err(bad_parameter)?;
    let rows = state
        .reads
        .audit_log(target.as_deref(), before, crate::storage::admin::AUDIT_PAGE)
        .await
        .map_err(storage_error)?;
    let next = (rows.len() == usize::try_from(crate::storage::admin::AUDIT_PAGE).unwrap_or(0))
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    Ok(Json(serde_json::json!({ "items": rows, "next_before": next })).into_response())
}

/// The operator behind a write. The gate lets no write through without an admin token;
/// should it ever, refuse.
fn admin(actor: Option<Extension<Actor>>) -> Result<Actor, ApiError> {
    actor
        .map(|Extension(a)| a)
        .ok_or_else(|| ApiError::Forbidden("writes need an admin token".into()))
}

/// A write's body: small (a state, a date, a note, labels).
fn bounded(body: &Bytes) -> Result<(), ApiError> {
    if body.len() > MAX_WRITE_BODY {
        return Err(ApiError::TooLarge {
            limit: MAX_WRITE_BODY,
            after: "",
        });
    }
    Ok(())
}

fn parse_serial(serial: &str) -> Result<phonehome_schema::Serial, ApiError> {
    phonehome_schema::Serial::parse(serial).map_err(|e| ApiError::BadParameter {
        parameter: "serial".into(),
        message: e.to_string(),
    })
}

async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!(
        "no API route {}; see /api/v1/openapi.json",
        quoted(uri.path())
    ))
}

fn unknown_appliance(serial: &str) -> ApiError {
    ApiError::NotFound(format!("no appliance {} has reported", quoted(serial)))
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

/// The query string, checked by the dashboard's rules (only known names, each at most once).
struct Params(phonehome_dashboard::query::Params);

impl Params {
    fn new(query: QueryPairs, allowed: &[&str]) -> Result<Self, ApiError> {
        let Query(pairs) = query.map_err(|e| ApiError::BadParameter {
            parameter: "query".into(),
            message: e.body_text(),
        })?;
        phonehome_dashboard::query::Params::new(pairs, allowed)
            .map(Params)
            .map_err(bad_parameter)
    }

    fn days(&self) -> Result<u32, ApiError> {
        self.0.days().map_err(bad_parameter)
    }
}

fn bad_parameter(b: phonehome_dashboard::BadParameter) -> ApiError {
    ApiError::BadParameter {
        parameter: b.parameter,
        message: b.message,
    }
}
