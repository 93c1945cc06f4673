//! Housekeeping that must run once for the whole fleet, whichever replica does it: monthly
//! partitions created ahead, retention by dropping whole months, the report-body dictionary,
//! and the per-day version counts. Every replica runs the loop; an advisory lock (held by a
//! transaction of its own, [`super::Lock`]) and the time of the last logged run make sure one
//! run happens per interval.

use std::time::Duration;

use super::evidence;
use super::{Conn, Storage, StorageError};
use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};

/// Tables partitioned by month of `collected_at`: the reports, whose bodies are the only time
/// series since migration 17 dropped the sample tables.
pub const PARTITIONED: [&str; 1] = ["reports"];

/// Tables every write batch looks rows up in by key (see [`analyze_current_state`]).
const CURRENT_STATE: [&str; 5] = [
    "appliances",
    "drives",
    "drive_membership",
    "alerts",
    "certificates",
];

/// Held by the replica running maintenance.
const MAINTENANCE_LOCK: i64 = 8_424_200_002;
/// Serialises partition DDL (CREATE TABLE … PARTITION OF races on the catalog otherwise).
const PARTITION_LOCK: i64 = 8_424_200_003;

/// Months ahead of the current one that always have partitions.
const MONTHS_AHEAD: u32 = 2;
/// Reports needed before a first dictionary is trained. Measured on the load generator's
/// bodies (python-zstandard, level 3; plain zstd 1,811 bytes a body): dictionaries trained on
/// 100, 200 and 2,000 of them give 356, 332 and 323 bytes, and every body stored before the
/// first dictionary costs about 1,450 bytes more than one after it. A first dictionary from few
/// reports is soon replaced (see [`DICTIONARY_SAMPLES`]).
const DICTIONARY_MIN_REPORTS: i64 = 100;
/// Samples a dictionary is trained on. A dictionary trained on fewer than half as many (a
/// young deployment's first) is replaced once this many reports exist: the few bytes a body
/// it saves are paid once, the dictionary, and then by every report for a month.
const DICTIONARY_SAMPLES: i64 = 2_000;
/// A dictionary older than this is replaced, so that it follows what the fleet now sends.
const DICTIONARY_MAX_AGE_DAYS: i64 = 30;

/// A calendar month (UTC), the unit of partitioning and retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Month {
    pub year: i32,
    pub month: u32,
}

impl Month {
    pub fn of(t: DateTime<Utc>) -> Self {
        Month {
            year: t.year(),
            month: t.month(),
        }
    }

    pub fn next(self) -> Self {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    pub fn start(self) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(self.year, self.month, 1, 0, 0, 0)
            .single()
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    /// `reports_y2026m11` for `reports`.
    pub fn partition(self, table: &str) -> String {
        format!("{table}_y{:04}m{:02}", self.year, self.month)
    }

    /// The month a partition name stands for, if it is one of ours.
    pub fn from_partition(table: &str, name: &str) -> Option<Self> {
        let rest = name.strip_prefix(table)?.strip_prefix("_y")?;
        let (y, m) = rest.split_once('m')?;
        if y.len() != 4 || m.len() != 2 {
            return None;
        }
        let month = Month {
            year: y.parse().ok()?,
            month: m.parse().ok()?,
        };
        (1..=12).contains(&month.month).then_some(month)
    }
}

/// Creates `month`'s partition of every partitioned table that lacks one; returns how many
/// were created. Idempotent, and safe against other replicas doing the same.
pub(crate) async fn ensure_month(client: &Conn, month: Month) -> Result<u32, StorageError> {
    let names: Vec<String> = PARTITIONED.iter().map(|t| month.partition(t)).collect();
    let absent: Vec<String> = client
        .query(
            "SELECT n FROM unnest($1::text[]) AS n WHERE to_regclass(n) IS NULL",
            &[&names],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let missing: Vec<&str> = PARTITIONED
        .into_iter()
        .filter(|t| absent.contains(&month.partition(t)))
        .collect();
    if missing.is_empty() {
        return Ok(0);
    }
    let from = month.start().format("%Y-%m-%d %H:%M:%S+00");
    let to = month.next().start().format("%Y-%m-%d %H:%M:%S+00");
    let mut sql = format!("SELECT pg_advisory_xact_lock({PARTITION_LOCK});");
    for table in &missing {
        sql.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table} \
             FOR VALUES FROM ('{from}') TO ('{to}');",
            name = month.partition(table)
        ));
    }
    // One implicit transaction: the lock is held until every CREATE is done.
    client.batch_execute(&format!("BEGIN;{sql}COMMIT;")).await?;
    tracing::info!(
        month = %format!("{:04}-{:02}", month.year, month.month),
        tables = ?missing,
        "created partitions"
    );
    Ok(u32::try_from(missing.len()).unwrap_or(u32::MAX))
}

/// What one maintenance run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub partitions_created: u32,
    pub partitions_dropped: u32,
    pub dictionary_trained: Option<i16>,
    pub version_days: u32,
    /// Appliances and drives whose kept health disagreed with their firing alerts.
    pub health_repaired: u64,
    /// Drives the reliability figures were computed from.
    pub reliability_drives: u64,
}

/// Runs maintenance unless another replica is running it or ran it less than `interval` ago.
/// `None` means this replica had nothing to do.
pub async fn run_once(
    storage: &Storage,
    replica: &str,
    interval: Duration,
) -> Result<Option<RunSummary>, StorageError> {
    let Some(lock) = storage.try_lock(MAINTENANCE_LOCK).await? else {
        return Ok(None);
    };
    let result = async {
        let mut client = storage.pool().get().await?;
        run_locked(storage, &mut client, replica, interval).await
    }
    .await;
    // Released after a failure too.
    let released = lock.release().await;
    let summary = result?;
    released?;
    Ok(summary)
}

async fn run_locked(
    storage: &Storage,
    client: &mut Conn,
    replica: &str,
    interval: Duration,
) -> Result<Option<RunSummary>, StorageError> {
    let interval_ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
    let recent: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM maintenance_runs
                 WHERE started_at > now() - make_interval(secs => $1::float8 / 1000))",
            &[&(interval_ms as f64)],
        )
        .await?
        .get(0);
    if recent {
        return Ok(None);
    }
    let run_id: i64 = client
        .query_one(
            "INSERT INTO maintenance_runs (replica, started_at) VALUES ($1, clock_timestamp())
             RETURNING id",
            &[&replica],
        )
        .await?
        .get(0);
    let work = async {
        let mut summary = RunSummary::default();
        let now = Utc::now();
        let mut month = Month::of(now);
        for _ in 0..=MONTHS_AHEAD {
            summary.partitions_created += ensure_month(client, month).await?;
            month = month.next();
        }
        summary.partitions_dropped =
            drop_expired(client, now, storage.settings().retention_days).await?;
        summary.dictionary_trained = train_dictionary(storage, client).await?.trained();
        summary.version_days = version_counts(&mut *client, now).await?;
        summary.health_repaired = reconcile_health(client).await?;
        summary.reliability_drives = storage.compute_reliability().await?;
        analyze_current_state(client).await?;
        Ok::<_, StorageError>(summary)
    };
    let result = work.await;
    let (summary, error) = match &result {
        Ok(s) => (s.clone(), None),
        Err(e) => (RunSummary::default(), Some(e.to_string())),
    };
    client
        .execute(
            "UPDATE maintenance_runs SET finished_at = clock_timestamp(),
                 partitions_created = $2, partitions_dropped = $3, dictionary_trained = $4,
                 error = $5
             WHERE id = $1",
            &[
                &run_id,
                &i32::try_from(summary.partitions_created).unwrap_or(i32::MAX),
                &i32::try_from(summary.partitions_dropped).unwrap_or(i32::MAX),
                &summary.dictionary_trained,
                &error,
            ],
        )
        .await?;
    result.map(Some)
}

/// Puts right any health a race left stale. The triggers on `alerts` compute an appliance's or
/// a drive's health inside the writing transaction, so two batches that change alerts naming
/// one drive at the same moment (a drive moved between two appliances reporting together) can
/// each miss the other's uncommitted alert. Only rows that differ are written.
async fn reconcile_health(client: &Conn) -> Result<u64, StorageError> {
    let appliances = client
        .execute(
            "UPDATE appliances a SET health = h.rank
             FROM (SELECT x.id, coalesce(max(phonehome_severity_rank(al.severity)), 0) AS rank
                   FROM appliances x
                   LEFT JOIN alerts al ON al.appliance_id = x.id AND al.state = 'firing'
                   GROUP BY x.id) h
             WHERE a.id = h.id AND a.health <> h.rank",
            &[],
        )
        .await?;
    let drives = client
        .execute(
            "UPDATE drives d SET health = h.rank
             FROM (SELECT x.id, coalesce(max(phonehome_severity_rank(al.severity)), 0) AS rank
                   FROM drives x
                   LEFT JOIN alerts al ON al.subject = x.drive_key AND al.state = 'firing'
                        AND al.rule LIKE 'disk\\_%'
                   GROUP BY x.id) h
             WHERE d.id = h.id AND d.health <> h.rank",
            &[],
        )
        .await?;
    if appliances + drives > 0 {
        tracing::warn!(
            appliances,
            drives,
            "maintenance: health disagreed with the firing alerts and was put right"
        );
    }
    Ok(appliances + drives)
}

/// [`analyze_current_state`] for a writer that grows a database quickly (a bulk fill): plans
/// the batch statements made on empty tables are sequential scans until the statistics change.
pub async fn refresh_statistics(storage: &Storage) -> Result<(), StorageError> {
    let client = storage.pool().get().await?;
    analyze_current_state(&client).await
}

/// Refreshes the statistics of the current-state tables once they have doubled since the last.
/// A young database
/// grows these tables from nothing, and each writer connection keeps the plan it made while
/// they were small (a sequential scan: 3,097 of them over `drive_membership`, reading 5.5
/// million rows, in one 30,000-report keep-alive run) until new statistics invalidate it. Growth, not
/// changes: every report updates its appliance's row, and analysing that table for it would
/// throw away every writer's plans several times a second; autovacuum covers the rest.
/// Doubling, not autovacuum's tenth: a plan only needs the size's order of magnitude (an
/// index lookup chosen at N rows is still right at 2N), and each ANALYZE of `appliances`
/// costs about half a second of PostgreSQL's time (its wide rows; 3.9 s of the 41.7 s of
/// statement time in one minute of a 100,000-appliance first contact, looked at every 5 s with
/// the tenth).
async fn analyze_current_state(client: &Conn) -> Result<(), StorageError> {
    let stale = client
        .query(
            "SELECT s.relname::text FROM pg_stat_user_tables s
             JOIN pg_class c ON c.oid = s.relid
             WHERE s.relname = ANY($1) AND s.schemaname = current_schema()
               AND s.n_live_tup > 50 + greatest(c.reltuples, 0) * 2",
            &[&CURRENT_STATE.as_slice()],
        )
        .await?;
    for row in stale {
        let table: String = row.get(0);
        // Names come from CURRENT_STATE, never from outside.
        client.batch_execute(&format!("ANALYZE {table}")).await?;
        tracing::debug!(table, "statistics refreshed");
    }
    Ok(())
}

/// Drops every month of history that ended more than `retention_days` ago.
async fn drop_expired(
    client: &Conn,
    now: DateTime<Utc>,
    retention_days: u32,
) -> Result<u32, StorageError> {
    let cutoff = now - chrono::Duration::days(i64::from(retention_days));
    let rows = client
        .query(
            "SELECT p.relname, c.relname FROM pg_inherits i
             JOIN pg_class c ON c.oid = i.inhrelid
             JOIN pg_class p ON p.oid = i.inhparent
             WHERE p.relname = ANY($1)",
            &[&PARTITIONED.as_slice()],
        )
        .await?;
    let mut dropped = 0;
    for row in rows {
        let table: String = row.get(0);
        let name: String = row.get(1);
        let Some(month) = Month::from_partition(&table, &name) else {
            continue;
        };
        if month.next().start() <= cutoff {
            client
                .batch_execute(&format!(
                    "BEGIN; SELECT pg_advisory_xact_lock({PARTITION_LOCK}); \
                     DROP TABLE IF EXISTS {name}; COMMIT;"
                ))
                .await?;
            tracing::info!(partition = %name, retention_days, "dropped expired history");
            dropped += 1;
        }
    }
    Ok(dropped)
}

/// What a look at the report-body dictionary found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DictionaryLook {
    /// The newest dictionary is recent and was trained on a full sample.
    Settled,
    /// None, or a young or old one, and too few reports (or nothing to learn) to train another.
    Waiting,
    Trained(i16),
}

impl DictionaryLook {
    fn trained(self) -> Option<i16> {
        match self {
            Self::Trained(id) => Some(id),
            Self::Settled | Self::Waiting => None,
        }
    }
}

/// Trains a report-body dictionary when there is none yet (and enough reports to learn from),
/// when the newest was trained on a young deployment's few reports and there are now enough
/// for a full sample, or when the newest is older than a month.
async fn train_dictionary(
    storage: &Storage,
    client: &Conn,
) -> Result<DictionaryLook, StorageError> {
    let newest = client
        .query_opt(
            "SELECT created_at, samples FROM body_dictionaries ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await?
        .map(|row| {
            (
                row.get::<_, DateTime<Utc>>(0),
                i64::from(row.get::<_, i32>(1)),
            )
        })
        .filter(|(at, _)| Utc::now() - *at < chrono::Duration::days(DICTIONARY_MAX_AGE_DAYS));
    let needed = match newest {
        Some((_, samples)) if samples * 2 >= DICTIONARY_SAMPLES => {
            return Ok(DictionaryLook::Settled);
        }
        Some(_) => DICTIONARY_SAMPLES,
        None => DICTIONARY_MIN_REPORTS,
    };
    let recent: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT 1 FROM reports
                 WHERE collected_at > now() - interval '31 days' LIMIT $1) s",
            &[&needed],
        )
        .await?
        .get(0);
    if recent < needed {
        return Ok(DictionaryLook::Waiting);
    }
    storage.load_dictionaries().await?;
    let rows = client
        .query(
            "SELECT body, body_dictionary FROM reports
             WHERE collected_at > now() - interval '31 days' LIMIT $1",
            &[&DICTIONARY_SAMPLES],
        )
        .await?;
    let mut samples = Vec::with_capacity(rows.len());
    for row in rows {
        let body: Vec<u8> = row.get(0);
        let dictionary: Option<i16> = row.get(1);
        match storage.codec().decompress(&body, dictionary) {
            Ok(json) => samples.push(json.into_bytes()),
            Err(e) => tracing::warn!(error = %e, "dictionary training: skipped a body"),
        }
    }
    let count = samples.len();
    let Some(dict) = tokio::task::spawn_blocking(move || evidence::train(&samples))
        .await
        .ok()
        .flatten()
    else {
        tracing::warn!(
            samples = count,
            "dictionary training found nothing to learn"
        );
        return Ok(DictionaryLook::Waiting);
    };
    let id: i16 = client
        .query_one(
            "INSERT INTO body_dictionaries (id, samples, dict)
             SELECT coalesce(max(id), 0) + 1, $1, $2 FROM body_dictionaries
             RETURNING id",
            &[&i32::try_from(count).unwrap_or(i32::MAX), &dict],
        )
        .await?
        .get(0);
    storage.codec().add(id, &dict);
    tracing::info!(
        dictionary = id,
        samples = count,
        bytes = dict.len(),
        "trained a report-body dictionary; new reports are compressed with it"
    );
    Ok(DictionaryLook::Trained(id))
}

/// Recomputes how many appliances ran which version at the end of each day, for the days
/// not computed yet and the last three (late reports can still change those).
async fn version_counts(client: &mut Conn, now: DateTime<Utc>) -> Result<u32, StorageError> {
    let today = now.date_naive();
    let row = client
        .query_one(
            "SELECT (SELECT max(day) FROM version_counts_daily),
                    (SELECT min(changed_at) FROM version_changes)",
            &[],
        )
        .await?;
    let computed: Option<NaiveDate> = row.get(0);
    let first_change: Option<DateTime<Utc>> = row.get(1);
    let Some(first_change) = first_change else {
        return Ok(0);
    };
    let from = match computed {
        Some(day) => day - chrono::Duration::days(2),
        None => first_change.date_naive(),
    }
    .max(first_change.date_naive())
    .min(today);
    let days = u32::try_from((today - from).num_days() + 1).unwrap_or(0);
    let tx = client.transaction().await?;
    tx.execute(
        "DELETE FROM version_counts_daily WHERE day BETWEEN $1 AND $2",
        &[&from, &today],
    )
    .await?;
    tx.execute(
        "INSERT INTO version_counts_daily (day, component, version, appliances)
         SELECT d.day::date, v.component, coalesce(v.new_version, ''), count(*)
         FROM generate_series($1::date, $2::date, interval '1 day') AS d(day)
         CROSS JOIN LATERAL (
             SELECT DISTINCT ON (appliance_id, component) component, new_version
             FROM version_changes
             WHERE changed_at < d.day + interval '1 day'
             ORDER BY appliance_id, component, changed_at DESC, id DESC
         ) v
         GROUP BY 1, 2, 3",
        &[&from, &today],
    )
    .await?;
    tx.commit().await?;
    Ok(days)
}

/// Runs maintenance every `interval` until the process ends; every replica runs this loop.
/// In its first hour it also looks every [`YOUNG_EVERY`] at what a young deployment needs sooner
/// than an interval: statistics for the current-state tables as they grow from nothing, and a
/// report-body dictionary, so bodies shrink within seconds of the 100th report and again of the
/// 2,000th.
pub fn spawn(storage: Storage, replica: String, interval: Duration) -> tokio::task::JoinHandle<()> {
    spawn_paced(storage, replica, interval, YOUNG_EVERY, YOUNG_FOR)
}

/// How often a young deployment is looked at between full runs ... Writer connections keep the
/// plans they made on nearly empty tables until statistics change, and a fleet calling at once
/// grows those tables by thousands of rows a second: looked at every minute, a 100,000-appliance
/// first contact fell from 1,690 to 816 reports/s over its first minute and then ran at
/// 2,371–2,583/s. A look
/// with nothing to do is one query on pg_stat_user_tables (and, until the dictionary settles, a
/// count capped at 2,000).
pub const YOUNG_EVERY: Duration = Duration::from_secs(5);
/// ... and for how long after the ingest starts.
pub const YOUNG_FOR: Duration = Duration::from_secs(3600);

/// [`spawn`], looking at the young deployment every `young_every` for its first `young_for`.
pub fn spawn_paced(
    storage: Storage,
    replica: String,
    interval: Duration,
    young_every: Duration,
    young_for: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run_paced(
        storage,
        replica,
        interval,
        young_every,
        young_for,
    ))
}

/// The loop [`spawn_paced`] runs, for a supervisor to run and restart.
pub async fn run_paced(
    storage: Storage,
    replica: String,
    interval: Duration,
    young_every: Duration,
    young_for: Duration,
) {
    {
        let young_until = tokio::time::Instant::now() + young_for;
        let mut settled = false;
        let mut next_run = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= next_run {
                match run_once(&storage, &replica, interval).await {
                    Ok(Some(summary)) => tracing::info!(?summary, "maintenance run finished"),
                    Ok(None) => tracing::debug!("maintenance: another replica ran it recently"),
                    Err(e) => tracing::warn!(
                        error = %e,
                        "maintenance run failed; next try in one interval"
                    ),
                }
                next_run = tokio::time::Instant::now() + interval;
            } else if tokio::time::Instant::now() < young_until {
                match young_look(&storage, settled).await {
                    Ok(DictionaryLook::Trained(id)) => {
                        tracing::info!(dictionary = id, "young deployment's dictionary trained");
                    }
                    Ok(DictionaryLook::Settled) => settled = true,
                    Ok(DictionaryLook::Waiting) => {}
                    Err(e) => tracing::debug!(error = %e, "cannot train a dictionary yet"),
                }
            }
            // A dictionary trained by another replica is picked up within one interval.
            if let Err(e) = storage.load_dictionaries().await {
                tracing::debug!(error = %e, "cannot refresh report-body dictionaries");
            }
            let mut wake = next_run;
            if tokio::time::Instant::now() < young_until {
                wake = wake.min(tokio::time::Instant::now() + young_every);
            }
            tokio::time::sleep_until(wake).await;
        }
    }
}

/// Between full runs of a young deployment: fresh statistics for the tables that grow from
/// nothing, and, until one trained on a full sample exists, a dictionary once there are enough
/// reports. Cheap when there is nothing to do (a look at pg_stat_user_tables and a count
/// capped at 2,000); skipped while another replica holds the maintenance lock.
async fn young_look(storage: &Storage, settled: bool) -> Result<DictionaryLook, StorageError> {
    let Some(lock) = storage.try_lock(MAINTENANCE_LOCK).await? else {
        return Ok(DictionaryLook::Waiting);
    };
    let result = async {
        let client = storage.pool().get().await?;
        analyze_current_state(&client).await?;
        if settled {
            return Ok(DictionaryLook::Settled);
        }
        train_dictionary(storage, &client).await
    }
    .await;
    let released = lock.release().await;
    let look = result?;
    released?;
    Ok(look)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_round_trip_and_months_roll_over() {
        let m = Month {
            year: 2026,
            month: 12,
        };
        assert_eq!(m.partition("reports"), "reports_y2026m12");
        assert_eq!(
            Month::from_partition("reports", "reports_y2026m12"),
            Some(m)
        );
        assert_eq!(
            m.next(),
            Month {
                year: 2027,
                month: 1
            }
        );
        assert_eq!(m.next().start().to_rfc3339(), "2027-01-01T00:00:00+00:00");
        // Another table's partitions, or someone else's tables, are not ours to drop.
        assert_eq!(
            Month::from_partition("reports", "drive_samples_y2026m12"),
            None
        );
        assert_eq!(Month::from_partition("reports", "reports_y2026m13"), None);
        assert_eq!(Month::from_partition("reports", "reports_legacy"), None);
    }
}
