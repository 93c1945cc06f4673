//! Drive, filesystem and NIC readings read back from kept report bodies. Since migration 17 the
//! body is the only time series: a report's zstd body (a few hundred bytes with the fleet's
//! dictionary) already holds every value, and a row per drive, filesystem and NIC cost more in
//! headers and index entries than the values themselves. Charts, the API, the drive page and
//! the rules' history decode bodies here, with the conversion the write path uses (`rows.rs`),
//! so a reading means the same whichever side made it.
//!
//! Reads are bounded in bodies, not rows: a window of N days decodes at most
//! N × [`BODIES_PER_DAY`] bodies however often the appliance reported ([`window`]).

// Numbers from reports meet arithmetic here: every sum, difference and product must say
// what happens at the edge (checked, saturating), never panic or wrap.
#![warn(clippy::arithmetic_side_effects)]

use chrono::{DateTime, Duration, Utc};
use phonehome_schema::Report;
use tokio_postgres::Row;

use super::evidence::Codec;
use super::rows;
use super::{Conn, Storage, StorageError};
use crate::alerts::AlertsConfig;
use crate::model::{DriveSample, FilesystemRow, NicRow};

/// Bodies a window decodes per day of its span, at most. Appliances report daily; one that
/// reports more often (a collector run by hand, or a hostile appliance as often as it likes) is
/// thinned to the newest report of each quarter of a day, so that the longest chart (400 days)
/// decodes at most 1,600 bodies.
pub(crate) const BODIES_PER_DAY: i64 = 4;

/// The columns of `reports` that [`StoredBody::from_row`] reads, in its order.
pub(crate) const BODY_COLUMNS: &str = "collected_at, received_at, body, body_dictionary";

/// How far past now a kept report's `collected_at` can lie: the contract refuses a clock more
/// than `MAX_CLOCK_AHEAD_HOURS` ahead at arrival, and an hour covers the trip.
pub(crate) fn ahead() -> Duration {
    Duration::try_hours(phonehome_schema::MAX_CLOCK_AHEAD_HOURS.saturating_add(1))
        .unwrap_or_else(|| Duration::days(2))
}

/// A kept report as the readers fetch it.
#[derive(Debug, Clone)]
pub(crate) struct StoredBody {
    pub collected_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub body: Vec<u8>,
    pub dictionary: Option<i16>,
}

impl StoredBody {
    /// Reads [`BODY_COLUMNS`] starting at column `at`.
    pub(crate) fn from_row(row: &Row, at: usize) -> Self {
        StoredBody {
            collected_at: row.get(at),
            received_at: row.get(at.saturating_add(1)),
            body: row.get(at.saturating_add(2)),
            dictionary: row.get(at.saturating_add(3)),
        }
    }

    /// When the report counts as taken: `min(collected_at, received_at)`, the time state was
    /// ordered by and the sample tables were keyed by, so a clock running ahead cannot place a
    /// reading in the future.
    pub(crate) fn at(&self) -> DateTime<Utc> {
        self.collected_at.min(self.received_at)
    }
}

/// What one report said about its drives, filesystems and NICs.
#[derive(Debug, Clone)]
pub(crate) struct Readings {
    /// See [`StoredBody::at`].
    pub at: DateTime<Utc>,
    /// By drive key (`rows::drive_key`), one per drive; a device without an identity (in
    /// standby, unreadable) gives none, as it gave no sample row.
    pub drives: Vec<(String, DriveSample)>,
    pub filesystems: Vec<FilesystemRow>,
    pub nics: Vec<NicRow>,
}

impl Readings {
    /// `report`'s readings as the write path derives them. `failing` is the drive's verdict
    /// under the alert configuration in force now (the sample tables kept the one of the day the
    /// report arrived; the two differ only after the thresholds were changed).
    pub(crate) fn of(report: &Report, at: DateTime<Utc>, alerts: &AlertsConfig) -> Self {
        let mut drives: Vec<(String, DriveSample)> = Vec::new();
        for d in &report.smart.devices {
            let Some(key) = rows::drive_key(d) else {
                continue;
            };
            // One drive seen through two paths is one drive; the first path wins, as on write.
            if drives.iter().any(|(k, _)| *k == key) {
                continue;
            }
            let verdict = crate::verdict::drive(d, &alerts.disk_wearout);
            let mut sample = rows::drive_sample(d, &verdict);
            // A digest for the write path's evidence decision; nothing reads it back.
            sample.facts = None;
            drives.push((key, sample));
        }
        Readings {
            at,
            drives,
            filesystems: rows::filesystem_rows(report),
            nics: rows::nic_rows(report),
        }
    }

    /// The reading of drive `key`, when this report showed it.
    pub(crate) fn drive(&self, key: &str) -> Option<&DriveSample> {
        self.drives
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, sample)| sample)
    }
}

/// Decodes one kept body. `None` (logged) when it cannot be read: a body that no longer
/// decompresses or parses (an older contract) leaves a gap in a chart, not an error page. Its
/// dictionary must be loaded ([`Storage::know_dictionaries`]).
pub(crate) fn decode(
    codec: &Codec,
    alerts: &AlertsConfig,
    stored: &StoredBody,
) -> Option<Readings> {
    let json = match codec.decompress(&stored.body, stored.dictionary) {
        Ok(json) => json,
        Err(e) => {
            tracing::warn!(collected_at = %stored.collected_at, error = %e, "a kept report body cannot be read; its readings are left out");
            return None;
        }
    };
    match serde_json::from_str::<Report>(&json) {
        Ok(report) => Some(Readings::of(&report, stored.at(), alerts)),
        Err(e) => {
            tracing::warn!(collected_at = %stored.collected_at, error = %e, "a kept report body no longer parses as a report; its readings are left out");
            None
        }
    }
}

/// Bodies to decode for a span: [`BODIES_PER_DAY`] for each day or part of one, at least one.
pub(crate) fn cap_for(from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
    let days = to.signed_duration_since(from).num_days().max(0);
    days.saturating_add(1).saturating_mul(BODIES_PER_DAY)
}

/// The bodies of appliance `appliance_id` collected in `[from, to)`, oldest first: every one
/// when there are at most `cap`, else the newest of each of `cap` equal slices of the span. At
/// most `cap` bodies either way, and at most `cap + 1` rows read before the thinning, which
/// then costs `cap` index probes. `to` is cut to what a kept report can carry ([`ahead`]).
pub(crate) async fn window(
    client: &Conn,
    appliance_id: i32,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    cap: i64,
) -> Result<Vec<StoredBody>, tokio_postgres::Error> {
    let cap = cap.max(1);
    let latest = Utc::now()
        .checked_add_signed(ahead())
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    let to = to.min(latest);
    if to <= from {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            &format!(
                "SELECT {BODY_COLUMNS} FROM reports
                 WHERE appliance_id = $1 AND collected_at >= $2 AND collected_at < $3
                 ORDER BY collected_at DESC LIMIT $4"
            ),
            &[&appliance_id, &from, &to, &cap.saturating_add(1)],
        )
        .await?;
    if i64::try_from(rows.len()).unwrap_or(i64::MAX) <= cap {
        return Ok(rows
            .iter()
            .rev()
            .map(|r| StoredBody::from_row(r, 0))
            .collect());
    }
    // More reports than the chart can use: the newest of each slice, one index probe each.
    // The slices span what is there (up to the newest report), not the empty future.
    let to = rows
        .first()
        .map(|r| r.get::<_, DateTime<Utc>>(0))
        .and_then(|newest| newest.checked_add_signed(Duration::microseconds(1)))
        .map_or(to, |end| end.min(to));
    let span_ms = to.signed_duration_since(from).num_milliseconds();
    let slice_secs = span_ms as f64 / 1000.0 / cap as f64;
    let rows = client
        .query(
            &format!(
                "SELECT r.* FROM generate_series(0::bigint, $4::bigint - 1) AS s(i)
                 CROSS JOIN LATERAL (
                     SELECT {BODY_COLUMNS} FROM reports
                     WHERE appliance_id = $1
                       AND collected_at >= $2::timestamptz + make_interval(secs => s.i * $5::float8)
                       AND collected_at < CASE WHEN s.i = $4::bigint - 1 THEN $3::timestamptz
                           ELSE $2::timestamptz + make_interval(secs => (s.i + 1) * $5::float8) END
                     ORDER BY collected_at DESC LIMIT 1) r
                 ORDER BY r.collected_at"
            ),
            &[&appliance_id, &from, &to, &cap, &slice_secs],
        )
        .await?;
    Ok(rows.iter().map(|r| StoredBody::from_row(r, 0)).collect())
}

/// Up to `limit` bodies of appliance `appliance_id` collected in `[from, to)`, newest first:
/// for walking back to a reading the newest reports lack.
pub(crate) async fn newest(
    client: &Conn,
    appliance_id: i32,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<StoredBody>, tokio_postgres::Error> {
    if to <= from || limit <= 0 {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            &format!(
                "SELECT {BODY_COLUMNS} FROM reports
                 WHERE appliance_id = $1 AND collected_at >= $2 AND collected_at < $3
                 ORDER BY collected_at DESC LIMIT $4"
            ),
            &[&appliance_id, &from, &to, &limit],
        )
        .await?;
    Ok(rows.iter().map(|r| StoredBody::from_row(r, 0)).collect())
}

impl Storage {
    /// Loads the dictionaries `bodies` name that this process has not seen (another replica
    /// may have trained them). Takes a connection of its own: call it holding none, the pool
    /// may have one.
    pub(crate) async fn know_dictionaries(
        &self,
        bodies: &[StoredBody],
    ) -> Result<(), StorageError> {
        if bodies
            .iter()
            .filter_map(|b| b.dictionary)
            .any(|id| !self.codec().knows(id))
        {
            self.load_dictionaries().await?;
        }
        Ok(())
    }

    /// The readings of `bodies`, in their order, leaving out those that cannot be read.
    /// Decoding is CPU work (zstd and JSON, tens of microseconds a body): it runs on the
    /// blocking pool, not on the task serving other requests. Call it holding no connection.
    pub(crate) async fn readings(
        &self,
        bodies: Vec<StoredBody>,
    ) -> Result<Vec<Readings>, StorageError> {
        if bodies.is_empty() {
            return Ok(Vec::new());
        }
        self.know_dictionaries(&bodies).await?;
        let codec = self.core.codec.clone();
        let alerts = self.settings.alerts.clone();
        tokio::task::spawn_blocking(move || {
            bodies
                .iter()
                .filter_map(|b| decode(&codec, &alerts, b))
                .collect()
        })
        .await
        .map_err(|e| StorageError::Config(format!("decoding report bodies: {e}")))
    }

    /// One body's readings, on this task (for a few bodies, walked one at a time).
    pub(crate) async fn reading(
        &self,
        body: &StoredBody,
    ) -> Result<Option<Readings>, StorageError> {
        self.know_dictionaries(std::slice::from_ref(body)).await?;
        Ok(decode(self.codec(), &self.settings.alerts, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../schema/examples/report.json");

    #[test]
    fn a_body_reads_back_as_the_rows_the_write_path_made_of_it() {
        let report: Report = serde_json::from_str(EXAMPLE).expect("the example");
        let alerts = AlertsConfig::default();
        let prepared = rows::prepare(&report, &[0; 32], Utc::now(), (vec![], None), &alerts);
        let codec = Codec::default();
        let (body, dictionary) = codec.compress(EXAMPLE.as_bytes()).expect("zstd");
        let stored = StoredBody {
            collected_at: report.collected_at,
            received_at: Utc::now(),
            body,
            dictionary,
        };
        let r = decode(&codec, &alerts, &stored).expect("readable");
        assert_eq!(r.at, report.collected_at);
        let written: Vec<(String, DriveSample)> = prepared
            .drives
            .iter()
            .map(|d| {
                let mut sample = d.sample.clone();
                sample.facts = None;
                (d.key.clone(), sample)
            })
            .collect();
        assert_eq!(r.drives, written);
        assert!(!r.drives.is_empty());
        assert_eq!(r.filesystems, prepared.filesystems);
        assert_eq!(r.nics, prepared.nics);
        // A clock running ahead: the reading is dated when it arrived.
        let early = StoredBody {
            received_at: report
                .collected_at
                .checked_sub_signed(Duration::hours(3))
                .expect("a time"),
            ..stored.clone()
        };
        assert_eq!(
            decode(&codec, &alerts, &early).map(|r| r.at),
            Some(early.received_at)
        );
        // What cannot be read is left out, not an error.
        let broken = StoredBody {
            body: vec![0],
            ..stored
        };
        assert!(decode(&codec, &alerts, &broken).is_none());
    }

    #[test]
    fn a_window_decodes_four_bodies_a_day_of_its_span() {
        let t = Utc::now();
        let back = |days| t.checked_sub_signed(Duration::days(days)).expect("a time");
        assert_eq!(cap_for(t, t), BODIES_PER_DAY);
        assert_eq!(cap_for(t, back(3)), BODIES_PER_DAY);
        assert_eq!(cap_for(back(365), t), BODIES_PER_DAY.saturating_mul(366));
    }
}
