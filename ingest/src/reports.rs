//! `POST /v1/reports`: bounded body reading, decompression, contract checks, the identity check
//! against the client certificate, and the commit that the 202 acknowledges.

// Numbers from reports meet arithmetic here: every sum, difference and product must say
// what happens at the edge (checked, saturating), never panic or wrap.
#![warn(clippy::arithmetic_side_effects)]

use std::io::Read;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use chrono::{DateTime, Utc};
use http_body_util::BodyExt;
use phonehome_schema::Report;
use serde_json::json;
use tracing::Instrument;

use crate::AppState;
use crate::error::ApiError;
use crate::storage::InsertOutcome;
use crate::tls::{ApplianceIdentity, IdentityError};

/// The identity of the connection a request arrived on, inserted by the report listener.
#[derive(Debug, Clone)]
pub struct PeerIdentity(pub Result<ApplianceIdentity, IdentityError>);

/// How a report's body must arrive once its headers are in: the whole of it within `whole`,
/// and after `grace` at an average of at least `min_rate` bytes per second. A post that breaks
/// either gets 408 and gives its in-flight slot back (issue 13, finding 2: slow posts held
/// every slot for 30 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyPace {
    pub whole: Duration,
    /// Bytes per second; 0 switches the rate off.
    pub min_rate: u64,
    pub grace: Duration,
}

impl Default for BodyPace {
    fn default() -> Self {
        BodyPace {
            whole: Duration::from_secs(crate::config::DEFAULT_BODY_TIMEOUT_SECS),
            min_rate: crate::config::DEFAULT_MIN_BODY_BYTES_PER_SEC,
            grace: crate::config::BODY_RATE_GRACE,
        }
    }
}

impl BodyPace {
    /// How long after the start `received` bytes keep a body within its pace: the next byte
    /// must come by then.
    fn allowed(&self, received: usize) -> Duration {
        if self.min_rate == 0 {
            return self.whole;
        }
        let millis = u64::try_from(received)
            .unwrap_or(u64::MAX)
            .saturating_mul(1000)
            .checked_div(self.min_rate)
            .unwrap_or(u64::MAX);
        self.grace
            .saturating_add(Duration::from_millis(millis))
            .min(self.whole)
    }
}

pub async fn post_report(
    State(state): State<AppState>,
    peer: Option<Extension<PeerIdentity>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    // Admission first, before a byte of the body is read. A request that finds every slot taken
    // waits its turn briefly (first come, first served): the connection is already handshaken,
    // and refusing it would waste that handshake and bring the client back for another. Past
    // the wait, a saturated ingest answers 503 and costs the client one round trip. The wait is
    // bounded, and so are the waiters (`max_connections`).
    // One appliance's share comes before the fleet's: a certificate holding many slow posts
    // open is refused (429) without taking a slot its neighbours need.
    let serial = peer
        .as_ref()
        .and_then(|Extension(p)| p.0.as_ref().ok())
        .map(|id| id.serial.to_string());
    let _share = match serial {
        Some(serial) => match state.per_appliance.enter(serial) {
            Some(share) => Some(share),
            None => {
                state
                    .metrics
                    .reports
                    .with_label_values(&["over_share"])
                    .inc();
                return Err(ApiError::OverShare(state.per_appliance.limit()));
            }
        },
        None => None,
    };
    // A zero wait still takes a free slot: the timeout polls the acquire once first.
    let permit = tokio::time::timeout(
        state.admission_wait,
        state.admission.clone().acquire_owned(),
    );
    let Ok(Ok(_permit)) = permit.await else {
        state
            .metrics
            .reports
            .with_label_values(&["saturated"])
            .inc();
        return Err(ApiError::Saturated);
    };
    let _in_flight = InFlight::new(&state.metrics.in_flight);
    let result = handle(&state, peer.map(|Extension(p)| p), &headers, body).await;
    let label = match &result {
        Ok((InsertOutcome::Stored, _)) => "stored",
        Ok((InsertOutcome::Duplicate, _)) => "duplicate",
        Err(e) => e.code(),
    };
    state.metrics.reports.with_label_values(&[label]).inc();
    let (outcome, report_id) = result?;
    Ok(match outcome {
        InsertOutcome::Stored => (
            StatusCode::ACCEPTED,
            Json(json!({"status": "stored", "report_id": report_id})),
        ),
        InsertOutcome::Duplicate => (
            StatusCode::OK,
            Json(json!({"status": "duplicate", "report_id": report_id})),
        ),
    })
}

/// Counts a request in `phonehome_reports_in_flight` for as long as it lives, however the
/// request ends (a dropped connection cancels the handler mid-way).
struct InFlight<'a>(&'a prometheus::IntGauge);

impl<'a> InFlight<'a> {
    fn new(gauge: &'a prometheus::IntGauge) -> Self {
        gauge.inc();
        InFlight(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn handle(
    state: &AppState,
    peer: Option<PeerIdentity>,
    headers: &HeaderMap,
    body: Body,
) -> Result<(InsertOutcome, uuid::Uuid), ApiError> {
    let identity = match peer.map(|p| p.0) {
        Some(Ok(id)) => id,
        Some(Err(e)) => {
            state
                .metrics
                .identity_failures
                .with_label_values(&[e.reason()])
                .inc();
            return Err(ApiError::Forbidden(e.to_string()));
        }
        // Only the mTLS listener inserts the identity; anything else has no appliance behind it.
        None => return Err(ApiError::Forbidden("no client certificate".into())),
    };
    let span = tracing::info_span!("report", route = "/v1/reports", serial = %identity.serial);
    store(state, identity, headers, body).instrument(span).await
}

async fn store(
    state: &AppState,
    identity: ApplianceIdentity,
    headers: &HeaderMap,
    body: Body,
) -> Result<(InsertOutcome, uuid::Uuid), ApiError> {
    // No Content-Type check: the body is proved to be JSON below, and `curl -d` (what an
    // operator types by hand) sends application/x-www-form-urlencoded.
    let encoding = Encoding::from_headers(headers)?;
    let limit = state.max_body_bytes;
    let raw = read_limited(body, limit, state.body_pace).await?;
    state.metrics.report_bytes.inc_by(raw.len() as u64);
    let json = encoding.decode(&raw, limit)?;

    let now = Utc::now();
    let text = body_text(&json)?;
    let report = parse_report_text(text, now)?;
    let retention = state.storage.settings().retention_days;
    if now.signed_duration_since(report.collected_at) > chrono::Duration::days(i64::from(retention))
    {
        // Its month may already be dropped; storing it would only have it dropped again.
        return Err(ApiError::Contract {
            field: "collected_at".into(),
            message: format!(
                "collected_at {} is older than this ingest keeps history (retention_days = {retention})",
                report.collected_at.to_rfc3339()
            ),
        });
    }
    if report.identity.serial != identity.serial {
        state
            .metrics
            .identity_failures
            .with_label_values(&["serial_mismatch"])
            .inc();
        return Err(ApiError::Forbidden(format!(
            "report is for serial {:?} but the client certificate is for serial {:?}",
            report.identity.serial.as_str(),
            identity.serial.as_str()
        )));
    }
    let started = Instant::now();
    let outcome = state
        .storage
        .insert_report_sent(&report, &identity, text, sent_at(headers))
        .await?;
    state
        .metrics
        .db_seconds
        .observe(started.elapsed().as_secs_f64());
    if outcome == InsertOutcome::Duplicate {
        duplicate_differs(state, &report, text).await;
    }
    tracing::info!(report_id = %report.report_id, ?outcome, "report committed");
    Ok((outcome, report.report_id))
}

/// A retry carries the same body as its original; one that does not (a collector bug, or
/// report ids reused by a cloned spool) is counted and logged. The first one stays.
async fn duplicate_differs(state: &AppState, report: &phonehome_schema::Report, text: &str) {
    match state
        .storage
        .report_json(report.identity.serial.as_str(), report.report_id)
        .await
    {
        Ok(Some(kept)) if kept != text => {
            state.metrics.duplicate_body_differs.inc();
            tracing::warn!(
                report_id = %report.report_id,
                kept_bytes = kept.len(),
                sent_bytes = text.len(),
                "a report id delivered again with a different body; the first one is kept"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "cannot compare a duplicate with the kept report"),
    }
}

/// When the collector sent the request, by its own clock (HTTP `Date`, which the collector
/// sets); `None` when absent or unreadable, which is not an error: it only tells the skew.
fn sent_at(headers: &HeaderMap) -> Option<chrono::DateTime<Utc>> {
    let value = headers.get(axum::http::header::DATE)?.to_str().ok()?;
    chrono::DateTime::parse_from_rfc2822(value)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Parses and checks a report, naming the offending field on failure.
///
/// The whole document is checked first, unknown fields included: serde skips those without
/// looking at them, and a body kept as evidence must read back as the JSON it claims to be (no
/// lone surrogates, no numbers out of range, no U+0000, which PostgreSQL's text and jsonb
/// refuse). Bad input must be a 4xx here, not a 500 later. That check builds nothing; the typed
/// parse then reads the bytes again, which costs less than building a `serde_json::Value` and
/// converting it (a fifth of the keep-alive path's JSON time went to the tree's maps).
pub fn parse_report(json: &[u8], now: DateTime<Utc>) -> Result<Report, ApiError> {
    parse_report_text(body_text(json)?, now)
}

/// The body as text: checked as UTF-8 once, as a whole, so that the two parses below read it
/// as a `str` and do not check each string again (`core::str::from_utf8` was 1.3 % of the
/// machine in a fleet-wide reconnect, docs/benchmarks.md item 3, fourth pass).
fn body_text(json: &[u8]) -> Result<&str, ApiError> {
    std::str::from_utf8(json)
        .map_err(|e| ApiError::MalformedJson(format!("malformed JSON: the body is not UTF-8: {e}")))
}

/// [`parse_report`] of a body already known to be UTF-8.
pub fn parse_report_text(json: &str, now: DateTime<Utc>) -> Result<Report, ApiError> {
    serde_json::from_str::<Checked>(json).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::Contract {
            field: String::new(),
            message: e.to_string(),
        },
        _ => ApiError::MalformedJson(format!("malformed JSON: {e}")),
    })?;
    // JSON can only carry U+0000 as the escape `\u0000` (`\U` is no escape, and the body has
    // parsed): build a tree to find its path (a path per node) only when the body has one.
    if json.contains("\\u0000") {
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| ApiError::MalformedJson(format!("malformed JSON: {e}")))?;
        if let Some(path) = find_nul(&value, String::new()) {
            return Err(ApiError::Contract {
                message: format!("{path}: strings must not contain U+0000"),
                field: path,
            });
        }
    }
    // Tracking the path of every field costs a third of the typed parse (profile of the
    // keep-alive path): only a body that fails is read again to name its field.
    let report: Report = match serde_json::from_str(json) {
        Ok(report) => report,
        Err(_) => {
            let mut de = serde_json::Deserializer::from_str(json);
            let e = match serde_path_to_error::deserialize::<_, Report>(&mut de) {
                Err(e) => e,
                Ok(_) => {
                    return Err(ApiError::MalformedJson(
                        "the report parsed only on the second reading".into(),
                    ));
                }
            };
            let path = e.path().to_string();
            let inner = e.into_inner();
            let field = field_name(&path, &inner.to_string());
            return Err(ApiError::Contract {
                message: format!("{field}: {inner}"),
                field,
            });
        }
    };
    report.check(now).map_err(|v| ApiError::Contract {
        message: v.to_string(),
        field: v.field,
    })?;
    Ok(report)
}

/// Any JSON value, read the way a typed parse reads it (every string decoded and checked, every
/// number converted, nesting limited) without keeping any of it.
struct Checked;

impl<'de> serde::Deserialize<'de> for Checked {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Checked)
    }
}

impl<'de> serde::de::Visitor<'de> for Checked {
    type Value = Checked;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_key::<Checked>()?.is_some() {
            map.next_value::<Checked>()?;
        }
        Ok(Checked)
    }
}

/// The path of the first string or key holding U+0000.
fn find_nul(value: &serde_json::Value, path: String) -> Option<String> {
    use serde_json::Value;
    match value {
        Value::String(s) => s.contains('\0').then_some(path),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| find_nul(v, format!("{path}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let child = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            if k.contains('\0') {
                Some(child)
            } else {
                find_nul(v, child)
            }
        }),
        _ => None,
    }
}

/// The JSON path of the offending field; for a missing or repeated field, the path of the field
/// itself (serde reports the enclosing object).
fn field_name(path: &str, message: &str) -> String {
    let parent = if path == "." { "" } else { path };
    let named = ["missing field `", "duplicate field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name);
    match named {
        Some(name) if parent.is_empty() => name.to_owned(),
        Some(name) => format!("{parent}.{name}"),
        None => parent.to_owned(),
    }
}

/// The body, at most `limit` bytes, arriving at `pace`.
async fn read_limited<B>(body: B, limit: usize, pace: BodyPace) -> Result<Vec<u8>, ApiError>
where
    B: axum::body::HttpBody<Data = axum::body::Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let start = tokio::time::Instant::now();
    let limited = http_body_util::Limited::new(body, limit);
    tokio::pin!(limited);
    let mut raw = Vec::new();
    loop {
        // The deadline moves with every frame: each byte buys 1/min_rate s more, up to the
        // whole-body deadline. A client that sends nothing is let go at the grace.
        let deadline = start
            .checked_add(pace.allowed(raw.len()))
            .unwrap_or_else(|| start.checked_add(pace.whole).unwrap_or(start));
        let frame = match tokio::time::timeout_at(deadline, limited.as_mut().frame()).await {
            Err(_) => {
                tracing::debug!(
                    received = raw.len(),
                    after_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
                    "report body too slow"
                );
                return Err(ApiError::Timeout);
            }
            Ok(None) => return Ok(raw),
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(e))) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(ApiError::TooLarge { limit, after: "" });
            }
            Ok(Some(Err(e))) => {
                return Err(ApiError::BadEncoding(format!(
                    "reading the body failed: {e}"
                )));
            }
        };
        // Trailers carry nothing a report needs.
        if let Ok(data) = frame.into_data() {
            raw.extend_from_slice(&data);
        }
    }
}

/// The `Content-Encoding`s a collector may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

impl Encoding {
    fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        let Some(value) = headers.get(header::CONTENT_ENCODING) else {
            return Ok(Encoding::Identity);
        };
        match value
            .to_str()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
            .as_str()
        {
            "" | "identity" => Ok(Encoding::Identity),
            "gzip" | "x-gzip" => Ok(Encoding::Gzip),
            "zstd" => Ok(Encoding::Zstd),
            other => Err(ApiError::UnsupportedMediaType(format!(
                "Content-Encoding {other:?} is not supported; use gzip, zstd or none"
            ))),
        }
    }

    /// Decompresses at most `limit` bytes: a zip bomb stops at the limit, it never inflates.
    fn decode(self, raw: &[u8], limit: usize) -> Result<Vec<u8>, ApiError> {
        // The body is already in memory: the decoders read it in place (`bufread`,
        // `with_buffer`) instead of copying it through a 32 KiB buffer of their own each.
        let reader: Box<dyn Read + '_> = match self {
            Encoding::Identity => return Ok(raw.to_vec()),
            Encoding::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(raw)),
            Encoding::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(raw)
                    .map_err(|e| ApiError::BadEncoding(format!("zstd: {e}")))?,
            ),
        };
        // A report's JSON is 2–4 times its gzip; starting there saves most regrowth.
        let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(limit));
        reader
            .take((limit as u64).saturating_add(1))
            .read_to_end(&mut out)
            .map_err(|e| ApiError::BadEncoding(format!("cannot decompress the body: {e}")))?;
        if out.len() > limit {
            return Err(ApiError::TooLarge {
                limit,
                after: " after decompression",
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A body fed by the test, chunk by chunk, as a slow client would send it.
    struct Fed(tokio::sync::mpsc::Receiver<&'static [u8]>);

    impl axum::body::HttpBody for Fed {
        type Data = axum::body::Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
            self.0.poll_recv(cx).map(|chunk| {
                chunk.map(|c| Ok(hyper::body::Frame::data(axum::body::Bytes::from_static(c))))
            })
        }
    }

    /// Feeds `chunks` one every `every`, then ends the body; what `read_limited` made of it,
    /// and how long it took.
    async fn paced(
        pace: BodyPace,
        chunks: usize,
        every: Duration,
    ) -> (Result<Vec<u8>, ApiError>, Duration) {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            for _ in 0..chunks {
                tokio::time::sleep(every).await;
                if tx.send(&b"0123456789"[..]).await.is_err() {
                    return;
                }
            }
        });
        let started = Instant::now();
        let result = read_limited(Fed(rx), 1 << 20, pace).await;
        (result, started.elapsed())
    }

    #[tokio::test]
    async fn a_body_must_arrive_whole_in_time_and_keep_its_pace() {
        let pace = BodyPace {
            whole: Duration::from_millis(1500),
            min_rate: 100, // 10 bytes buy 100 ms
            grace: Duration::from_millis(300),
        };
        // Steady and quick enough: all of it.
        let (body, _) = paced(pace, 5, Duration::from_millis(50)).await;
        assert_eq!(body.expect("in pace").len(), 50);
        // Nothing after the headers (the sender lives on, sending nothing: a stalled client):
        // let go at the grace, not at the whole deadline.
        let (tx, rx) = tokio::sync::mpsc::channel::<&'static [u8]>(1);
        let started = Instant::now();
        let stalled = read_limited(Fed(rx), 1 << 20, pace).await;
        drop(tx);
        assert!(matches!(stalled, Err(ApiError::Timeout)), "{stalled:?}");
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "a stalled body held on past its grace: {:?}",
            started.elapsed()
        );
        // Trickling below the rate: 10 bytes every 250 ms is 40 bytes/s, under 100.
        let (body, took) = paced(pace, 20, Duration::from_millis(250)).await;
        assert!(matches!(body, Err(ApiError::Timeout)), "{body:?}");
        assert!(took < Duration::from_millis(1400), "{took:?}");
        // Within the rate but past the whole deadline: 10 bytes every 90 ms for 2.7 s.
        let (body, took) = paced(pace, 30, Duration::from_millis(90)).await;
        assert!(matches!(body, Err(ApiError::Timeout)), "{body:?}");
        assert!(
            took >= Duration::from_millis(1400) && took < Duration::from_millis(2000),
            "{took:?}"
        );
        // No rate: only the whole deadline.
        let slow = BodyPace {
            min_rate: 0,
            ..pace
        };
        let (body, _) = paced(slow, 4, Duration::from_millis(250)).await;
        assert_eq!(body.expect("no rate, in time").len(), 40);
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_limit() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![b' '; 50 * 1024 * 1024]).unwrap();
        let bomb = enc.finish().unwrap();
        assert!(
            bomb.len() < 100 * 1024,
            "bomb is small on the wire: {}",
            bomb.len()
        );
        let err = Encoding::Gzip.decode(&bomb, 1024 * 1024).unwrap_err();
        assert!(matches!(err, ApiError::TooLarge { .. }), "{err:?}");
    }

    #[test]
    fn zstd_and_gzip_round_trip_and_garbage_is_a_bad_encoding() {
        let data = br#"{"a":1}"#;
        let z = zstd::encode_all(&data[..], 3).unwrap();
        assert_eq!(Encoding::Zstd.decode(&z, 1024).unwrap(), data);
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        assert_eq!(
            Encoding::Gzip.decode(&enc.finish().unwrap(), 1024).unwrap(),
            data
        );
        assert!(matches!(
            Encoding::Gzip.decode(b"nope", 1024),
            Err(ApiError::BadEncoding(_))
        ));
    }

    #[test]
    fn parse_errors_name_the_field() {
        let cases: &[(&str, &str, &str)] = &[
            ("{", "malformed_json", ""),
            ("[1,2]", "contract_violation", "[0]"),
            (r#"{"report_id": 5}"#, "contract_violation", "report_id"),
            (
                r#"{"schema_version": 1}"#,
                "contract_violation",
                "report_id",
            ),
            (
                r#"{"x": {"y": ["a\u0000"]}}"#,
                "contract_violation",
                "x.y[0]",
            ),
            (r#"{"x": "\ud800"}"#, "malformed_json", ""),
            (r#"{"x": 1e999999}"#, "malformed_json", ""),
            (r#"{"x": {"\udfff": 1}}"#, "malformed_json", ""),
            (
                r#"{"report_id": "7f1c0a52-9d1e-4a44-8f0e-0c3b8d5e2a10", "report_id": "7f1c0a52-9d1e-4a44-8f0e-0c3b8d5e2a11"}"#,
                "contract_violation",
                "report_id",
            ),
        ];
        for (input, code, field) in cases {
            let err = parse_report(input.as_bytes(), Utc::now()).unwrap_err();
            assert_eq!(err.code(), *code, "{input}: {err}");
            if let ApiError::Contract { field: f, .. } = &err {
                assert_eq!(f, field, "{input}");
            }
        }
        // Invalid UTF-8 in a field the report does not know: only the check pass reads it.
        let err = parse_report(b"{\"x\": [1, 2, \"\xff\"]}", Utc::now()).unwrap_err();
        assert_eq!(err.code(), "malformed_json", "{err}");
        let deep = "[".repeat(100_000);
        let err = parse_report(deep.as_bytes(), Utc::now()).unwrap_err();
        assert_eq!(err.code(), "malformed_json", "{err}");

        let mut example: serde_json::Value =
            serde_json::from_str(include_str!("../../schema/examples/report.json")).unwrap();
        example["identity"]["serial"] = "bad\nserial".into();
        let err = parse_report(example.to_string().as_bytes(), Utc::now()).unwrap_err();
        match err {
            ApiError::Contract { field, message } => {
                assert_eq!(field, "identity.serial");
                assert!(message.contains("printable ASCII"), "{message}");
            }
            other => panic!("expected a contract violation, got {other:?}"),
        }
    }
}

/// Reports in flight per appliance (by certificate serial), bounded by
/// `max_in_flight_per_appliance`: a collector sends one report at a time, so a handful is
/// generous, and more is an appliance taking its neighbours' share.
#[derive(Debug)]
pub struct PerAppliance {
    limit: usize,
    in_flight: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

impl PerAppliance {
    pub fn new(limit: usize) -> Self {
        PerAppliance {
            limit: limit.max(1),
            in_flight: std::sync::Mutex::default(),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A place for one more of `serial`'s reports, or `None` when it has its share; the place
    /// is given back when the returned guard is dropped, however the request ends.
    pub fn enter(self: &std::sync::Arc<Self>, serial: String) -> Option<ShareGuard> {
        // A poisoned lock (a panic elsewhere while holding it) still holds valid counts: the
        // map is only ever changed by whole increments and decrements.
        let mut map = self
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = map.entry(serial.clone()).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n = n.saturating_add(1);
        Some(ShareGuard {
            owner: self.clone(),
            serial,
        })
    }
}

/// One report's place in its appliance's share.
#[derive(Debug)]
pub struct ShareGuard {
    owner: std::sync::Arc<PerAppliance>,
    serial: String,
}

impl Drop for ShareGuard {
    fn drop(&mut self) {
        let mut map = self
            .owner
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.serial) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.serial);
            }
        }
    }
}
