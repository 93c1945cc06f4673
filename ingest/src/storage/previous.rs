//! Reads back an appliance's previous report from its kept bodies, for the rules judged by
//! change, when its kept rule state is missing or stale (written before it existed, or by an
//! older replica). The engine ([`crate::engine::Previous`]) does the rest.

// Numbers from reports meet arithmetic here: every sum, difference and product must say
// what happens at the edge (checked, saturating), never panic or wrap.
#![warn(clippy::arithmetic_side_effects)]

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use uuid::Uuid;

use super::StorageError;
use super::evidence::Codec;
use super::readings::{self, BODY_COLUMNS, Readings, StoredBody};
use crate::alerts::AlertsConfig;
use crate::engine::{History, trend_points, trend_window};

/// The previous reports of appliances `known` (id, the `at` its state was last moved by), and
/// the filesystem points of its last reports back to the fill trend's window before `earliest`.
/// `batch` are the ids of the reports this batch stores: already inserted, they are not history.
///
/// Bounded: one body per appliance for the previous report, at most the trend's points for the
/// filesystems. Decoded here, in the batch's transaction: it happens once per appliance without
/// a kept state, which keeps one from then on.
pub(super) async fn load_history(
    tx: &Transaction<'_>,
    codec: &Codec,
    earliest: DateTime<Utc>,
    known: &[(i32, DateTime<Utc>)],
    batch: &[Uuid],
    config: &AlertsConfig,
) -> Result<History, StorageError> {
    let mut out = History::default();
    if known.is_empty() {
        return Ok(out);
    }
    let ids: Vec<i32> = known.iter().map(|k| k.0).collect();
    let at: Vec<DateTime<Utc>> = known.iter().map(|k| k.1).collect();
    let ahead_hours = i32::try_from(phonehome_schema::MAX_CLOCK_AHEAD_HOURS.saturating_add(1))
        .unwrap_or(i32::MAX);
    // The report state was last moved by: its `at` (min of collected and received) is the
    // appliance's `last_collected_at`, and its own time is at most a clock's lead later.
    let previous = tx
        .prepare_cached(&format!(
            "SELECT k.a, r.* FROM unnest($1::int[], $2::timestamptz[]) AS k(a, t)
             CROSS JOIN LATERAL (
                 SELECT {BODY_COLUMNS} FROM reports
                 WHERE appliance_id = k.a AND collected_at >= k.t
                   AND collected_at <= k.t + make_interval(hours => $3)
                   AND least(collected_at, received_at) = k.t
                   AND report_id <> ALL($4::uuid[])
                 ORDER BY collected_at LIMIT 1) r"
        ))
        .await?;
    // The fill trend's points: the newest reports in its window, as many as it uses.
    let filesystems = tx
        .prepare_cached(&format!(
            "SELECT k.a, r.* FROM unnest($1::int[], $2::timestamptz[]) AS k(a, t)
             CROSS JOIN LATERAL (
                 SELECT {BODY_COLUMNS} FROM reports
                 WHERE appliance_id = k.a AND collected_at >= $5
                   AND collected_at <= k.t + make_interval(hours => $3)
                   AND report_id <> ALL($4::uuid[])
                 ORDER BY collected_at DESC LIMIT $6) r"
        ))
        .await?;
    let since = earliest
        .checked_sub_signed(trend_window(config))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let points = i64::try_from(trend_points(config)).unwrap_or(i64::MAX);
    let filling = config.filesystem_filling.enabled;
    let previous_params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
        [&ids, &at, &ahead_hours, &batch];
    let (previous, filesystems) = tokio::try_join!(tx.query(&previous, &previous_params), async {
        if filling {
            tx.query(
                &filesystems,
                &[&ids, &at, &ahead_hours, &batch, &since, &points],
            )
            .await
        } else {
            Ok(Vec::new())
        }
    },)?;
    let previous: Vec<(i32, StoredBody)> = previous
        .iter()
        .map(|r| (r.get(0), StoredBody::from_row(r, 1)))
        .collect();
    let filesystems: Vec<(i32, StoredBody)> = filesystems
        .iter()
        .map(|r| (r.get(0), StoredBody::from_row(r, 1)))
        .collect();
    know_dictionaries(
        tx,
        codec,
        previous.iter().chain(&filesystems).map(|(_, b)| b),
    )
    .await?;
    let decode = |bodies: Vec<(i32, StoredBody)>| -> Vec<(i32, Readings)> {
        bodies
            .into_iter()
            .filter_map(|(a, b)| readings::decode(codec, config, &b).map(|r| (a, r)))
            .collect()
    };
    let previous = decode(previous);
    let mut filesystems = decode(filesystems);

    // History is keyed by drive id; the bodies name drives by key.
    let keys: Vec<&str> = previous
        .iter()
        .flat_map(|(_, r)| r.drives.iter().map(|(k, _)| k.as_str()))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let drive_ids: HashMap<String, i32> = if keys.is_empty() {
        HashMap::new()
    } else {
        let stmt = tx
            .prepare_cached("SELECT drive_key, id FROM drives WHERE drive_key = ANY($1)")
            .await?;
        tx.query(&stmt, &[&keys])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    for (appliance, r) in previous {
        for (key, sample) in r.drives {
            if let Some(id) = drive_ids.get(&key) {
                out.drives.push((appliance, *id, sample));
            }
        }
        out.nics
            .extend(r.nics.into_iter().map(|nic| (appliance, nic)));
    }
    // Oldest first, as the engine moves a trend forward.
    filesystems.sort_by_key(|(_, r)| r.at);
    for (appliance, r) in filesystems {
        for f in r.filesystems {
            out.filesystems
                .push((appliance, f.mount_point, r.at, f.bytes_used));
        }
    }
    Ok(out)
}

/// Loads, through the batch's own transaction, the dictionaries `bodies` name that this process
/// has not seen (another replica may have trained them since it started).
async fn know_dictionaries<'a>(
    tx: &Transaction<'_>,
    codec: &Codec,
    bodies: impl Iterator<Item = &'a StoredBody>,
) -> Result<(), StorageError> {
    let unknown: Vec<i16> = bodies
        .filter_map(|b| b.dictionary)
        .filter(|id| !codec.knows(*id))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare_cached("SELECT id, dict FROM body_dictionaries WHERE id = ANY($1)")
        .await?;
    for row in tx.query(&stmt, &[&unknown]).await? {
        let dict: Vec<u8> = row.get(1);
        codec.add(row.get(0), &dict);
    }
    Ok(())
}
