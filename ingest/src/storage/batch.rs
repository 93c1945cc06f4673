//! One transaction for a batch of reports: the reports (whose bodies are the time series), the
//! appliances' current state, drive membership, version changes and identity events commit
//! together or not at all. Rows go in as arrays (`unnest`), so a batch of 50 reports costs about
//! as many round trips as one.
//!
//! Appliance rows are locked in serial order first: two batches (or two replicas) that touch the
//! same appliances queue behind each other instead of deadlocking, and what this batch derives
//! from an appliance's previous state (events, membership, versions) cannot race another batch.

// Numbers from reports meet arithmetic here: every sum, difference and product must say
// what happens at the edge (checked, saturating), never panic or wrap.
#![warn(clippy::arithmetic_side_effects)]

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use uuid::Uuid;

use super::evidence::Codec;
use super::rows::{CurrentState, DriveRow, PreparedReport};
use super::{InsertOutcome, StorageError};
use crate::alerts::AlertsConfig;
use crate::engine::{
    self, ApplianceUpdate, Before, Changes, Component, LatestMembership, Loaded, Member, RuleState,
};

/// Writes `batch` in one transaction and says, per report (in the batch's order), whether it
/// was stored or a duplicate.
pub(super) async fn write(
    tx: &Transaction<'_>,
    batch: &[&PreparedReport],
    config: &AlertsConfig,
    codec: &Codec,
) -> Result<Vec<InsertOutcome>, StorageError> {
    let mut outcomes = vec![InsertOutcome::Duplicate; batch.len()];
    // A report twice in one batch (a retry racing its original) is stored once.
    let mut seen = HashSet::new();
    let unique: Vec<usize> = (0..batch.len())
        .filter(|&i| {
            let r = batch[i];
            seen.insert((r.serial.as_str(), r.report_id, r.collected_at))
        })
        .collect();

    let before = lock_appliances(tx, batch, &unique).await?;
    let cert_ids = certificate_ids(tx, batch, &unique, &before).await?;
    let candidates: Vec<&PreparedReport> = unique.iter().map(|&i| batch[i]).collect();
    let bodies: Vec<(&[u8], Option<i16>)> = candidates
        .iter()
        .zip(engine::keep_evidence(&candidates, &before))
        .map(|(r, keep)| match &r.body_without_evidence {
            Some((lean, dict)) if !keep => (lean.as_slice(), *dict),
            _ => (r.body.as_slice(), r.body_dictionary),
        })
        .collect();

    // The reports themselves; ON CONFLICT says which are new.
    let stmt = tx
        .prepare_cached(
            "INSERT INTO reports (collected_at, received_at, appliance_id, body_dictionary,
                 report_id, cert_id, app_status, app_version, body)
             SELECT * FROM unnest($1::timestamptz[], $2::timestamptz[], $3::int[],
                 $4::smallint[], $5::uuid[], $6::int[], $7::text[], $8::text[], $9::bytea[])
             ON CONFLICT DO NOTHING
             RETURNING appliance_id, report_id",
        )
        .await?;
    let rows = tx
        .query(
            &stmt,
            &[
                &unique
                    .iter()
                    .map(|&i| batch[i].collected_at)
                    .collect::<Vec<_>>(),
                &unique
                    .iter()
                    .map(|&i| batch[i].received_at)
                    .collect::<Vec<_>>(),
                &unique
                    .iter()
                    .map(|&i| before[&batch[i].serial].id)
                    .collect::<Vec<_>>(),
                &bodies.iter().map(|b| b.1).collect::<Vec<_>>(),
                &unique
                    .iter()
                    .map(|&i| batch[i].report_id)
                    .collect::<Vec<_>>(),
                &unique
                    .iter()
                    .map(|&i| cert_ids.get(batch[i].cert_sha256.as_slice()).copied())
                    .collect::<Vec<_>>(),
                &unique
                    .iter()
                    .map(|&i| batch[i].state.app_status)
                    .collect::<Vec<_>>(),
                &unique
                    .iter()
                    .map(|&i| batch[i].state.app_version.as_deref())
                    .collect::<Vec<_>>(),
                &bodies.iter().map(|b| b.0).collect::<Vec<_>>(),
            ],
        )
        .await?;
    let inserted: HashSet<(i32, Uuid)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut stored: Vec<usize> = unique
        .iter()
        .copied()
        .filter(|&i| inserted.contains(&(before[&batch[i].serial].id, batch[i].report_id)))
        .collect();
    if stored.is_empty() {
        return Ok(outcomes);
    }
    for &i in &stored {
        outcomes[i] = InsertOutcome::Stored;
    }
    // Oldest first per appliance: state, membership and versions move forward in time.
    stored.sort_by(|&a, &b| {
        (batch[a].serial.as_str(), batch[a].at).cmp(&(batch[b].serial.as_str(), batch[b].at))
    });

    let drive_ids = drive_ids(tx, batch, &stored, &before).await?;
    let appliance_ids: Vec<i32> = before.values().map(|b| b.id).collect();
    // Appliances that need their previous report read back from history: no kept state, and
    // a report here that moves them forward (late reports judge nothing).
    let without_state: Vec<(i32, DateTime<Utc>)> = before
        .iter()
        .filter(|(serial, b)| {
            !b.fresh
                && b.rule_state.is_none()
                && stored
                    .iter()
                    .any(|&i| batch[i].serial == **serial && batch[i].at >= b.last_collected_at)
        })
        .map(|(_, b)| (b.id, b.last_collected_at))
        .collect();
    let earliest = stored
        .iter()
        .map(|&i| batch[i].at)
        .min()
        .unwrap_or_else(Utc::now);
    // This batch's reports are in `reports` already; the history read back must not see them.
    let batch_ids: Vec<Uuid> = unique.iter().map(|&i| batch[i].report_id).collect();
    let (members, shared, book, history) = tokio::try_join!(
        open_memberships(tx, &appliance_ids),
        appliances_sharing_identity(tx, batch, &stored),
        super::alerts::load(tx, &appliance_ids),
        super::previous::load_history(tx, codec, earliest, &without_state, &batch_ids, config),
    )?;
    // Where else a drive was last seen matters only for one not already in its appliance,
    // which in steady state is none: no query then.
    let ids = &drive_ids;
    let arriving: Vec<i32> = stored
        .iter()
        .flat_map(|&i| {
            let r = batch[i];
            let open = members.get(&before[&r.serial].id);
            r.drives.iter().filter_map(move |d| {
                let id = *ids.get(&d.key)?;
                let here = open.is_some_and(|m| m.iter().any(|m| m.drive_id == id));
                (!here).then_some(id)
            })
        })
        .collect::<HashSet<i32>>()
        .into_iter()
        .collect();
    // A drive that disappears is named by its key: the kept states know the keys of every
    // drive the previous reports showed; others (a database from before the state) are read.
    let named_already: HashSet<i32> = drive_ids.values().copied().collect();
    let unnamed: Vec<i32> = members
        .values()
        .flatten()
        .map(|m| m.drive_id)
        .filter(|id| !named_already.contains(id))
        .collect::<HashSet<i32>>()
        .into_iter()
        .collect();
    let (latest_elsewhere, drive_keys) =
        tokio::try_join!(latest_memberships(tx, &arriving), drive_keys(tx, &unnamed))?;

    let loaded = Loaded {
        before,
        drive_ids,
        drive_keys,
        members,
        latest_elsewhere,
        shared,
        history,
    };
    let reports: Vec<&PreparedReport> = stored.iter().map(|&i| batch[i]).collect();
    let decision = engine::decide(&loaded, book, &reports, config);

    let serials: HashMap<i32, &str> = loaded
        .before
        .iter()
        .map(|(s, b)| (b.id, s.as_str()))
        .collect();
    // No sample rows: a report's drive, filesystem and NIC values are read back from its
    // body (`readings.rs`), which holds them all in a few hundred bytes.
    tokio::try_join!(
        write_events(tx, &decision.changes),
        update_appliances(tx, &decision.appliances, &cert_ids),
        super::alerts::write(tx, &decision.alerts, &serials, config),
    )?;
    Ok(outcomes)
}

/// Locks (creating where needed) the batch's appliances in serial order and reads what the
/// batch derives events from.
async fn lock_appliances(
    tx: &Transaction<'_>,
    batch: &[&PreparedReport],
    unique: &[usize],
) -> Result<HashMap<String, Before>, StorageError> {
    let mut first: BTreeMap<&str, &PreparedReport> = BTreeMap::new();
    for &i in unique {
        first.entry(batch[i].serial.as_str()).or_insert(batch[i]);
    }
    let serials: Vec<&str> = first.keys().copied().collect();
    // Create missing rows first and only then lock everything in serial order: locking existing
    // rows before inserting new ones lets two batches each hold a row the other waits for. The
    // unlocked look-up keeps inserts (and identity values) to appliances really missing.
    let exists = tx
        .prepare_cached("SELECT serial FROM appliances WHERE serial = ANY($1)")
        .await?;
    let existing: HashSet<String> = tx
        .query(&exists, &[&serials])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let missing: Vec<&PreparedReport> = first
        .iter()
        .filter(|(s, _)| !existing.contains(**s))
        .map(|(_, r)| *r)
        .collect();
    if !missing.is_empty() {
        // New appliances get a row that says "nothing kept yet" (report_count 0); the state is
        // filled in at the end of the batch like everyone else's. The indexed columns
        // (hostname, identity, versions) go in now, as the first report has them: the update at
        // the end then changes no indexed column and can be a HOT update on the same page
        // (when the page has room), instead of a second row version with an entry in each of
        // the table's seven indexes.
        let insert = tx
            .prepare_cached(
                "INSERT INTO appliances (serial, first_seen_at, last_report_at, last_collected_at,
                     last_report_id, app_status, collector_version, report_count, hostname,
                     system_uuid, machine_id, app_version, os_pretty_name, kernel)
                 SELECT s, r, r, c, id, st, v, 0, h, u, m, av, os, k
                 FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::uuid[],
                             $5::text[], $6::text[], $7::text[], $8::uuid[], $9::text[],
                             $10::text[], $11::text[], $12::text[])
                     AS t(s, r, c, id, st, v, h, u, m, av, os, k)
                 ORDER BY s
                 ON CONFLICT (serial) DO NOTHING",
            )
            .await?;
        tx.execute(
            &insert,
            &[
                &missing
                    .iter()
                    .map(|r| r.serial.as_str())
                    .collect::<Vec<_>>(),
                &missing.iter().map(|r| r.received_at).collect::<Vec<_>>(),
                &missing.iter().map(|r| r.at).collect::<Vec<_>>(),
                &missing.iter().map(|r| r.report_id).collect::<Vec<_>>(),
                &missing
                    .iter()
                    .map(|r| r.state.app_status)
                    .collect::<Vec<_>>(),
                &missing
                    .iter()
                    .map(|r| r.state.collector_version.as_str())
                    .collect::<Vec<_>>(),
                &missing
                    .iter()
                    .map(|r| r.state.hostname.as_deref())
                    .collect::<Vec<_>>(),
                &missing
                    .iter()
                    .map(|r| r.state.system_uuid)
                    .collect::<Vec<_>>(),
                &missing
                    .iter()
                    .map(|r| r.state.machine_id.as_deref())
                    .collect::<Vec<_>>(),
                &missing
                    .iter()
                    .map(|r| r.state.app_version.as_deref())
                    .collect::<Vec<_>>(),
                &missing
                    .iter()
                    .map(|r| r.state.os.as_deref())
                    .collect::<Vec<_>>(),
                &missing
                    .iter()
                    .map(|r| r.state.kernel.as_deref())
                    .collect::<Vec<_>>(),
            ],
        )
        .await?;
    }
    let select = tx
        .prepare_cached(
            "SELECT a.id, a.serial, a.report_count = 0, a.last_collected_at,
                    a.system_uuid::text, a.machine_id, a.app_version, a.os_pretty_name, a.kernel,
                    a.collector_version, a.boot_id, a.rule_state,
                    (SELECT c.sha256 FROM certificates c WHERE c.id = a.last_cert_id),
                    a.last_cert_id
             FROM appliances a WHERE a.serial = ANY($1) ORDER BY a.serial FOR UPDATE",
        )
        .await?;
    let mut before = HashMap::new();
    for row in tx.query(&select, &[&serials]).await? {
        let versions = HashMap::from([
            (Component::App, row.get::<_, Option<String>>(6)),
            (Component::Os, row.get(7)),
            (Component::Kernel, row.get(8)),
            (Component::Collector, Some(row.get::<_, String>(9))),
        ]);
        let serial: String = row.get(1);
        let last_collected_at: DateTime<Utc> = row.get(3);
        let rule_state = row
            .get::<_, Option<&[u8]>>(11)
            .and_then(|v| match RuleState::decode(v) {
                // Written with the newest report, or left behind by an ingest that did not
                // keep it (an older replica during an upgrade): then history is the truth.
                Ok(state) if state.at == last_collected_at.timestamp_micros() => Some(state),
                Ok(_) => None,
                Err(e) => {
                    // Rebuilt from history below: slower, never wrong.
                    tracing::warn!(%serial, error = %e, "unreadable rule_state; reading history instead");
                    None
                }
            });
        before.insert(
            serial,
            Before {
                id: row.get(0),
                fresh: row.get(2),
                last_collected_at,
                system_uuid: row.get(4),
                machine_id: row.get(5),
                versions,
                boot_id: row.get(10),
                rule_state,
                last_cert: row
                    .get::<_, Option<Vec<u8>>>(12)
                    .zip(row.get::<_, Option<i32>>(13)),
            },
        );
    }
    match first.keys().find(|s| !before.contains_key(**s)) {
        Some(s) => Err(StorageError::Unavailable(format!(
            "appliance {s} could not be created or locked; retry"
        ))),
        None => Ok(before),
    }
}

/// (appliance, first seen, end) of a certificate seen for the first time.
type NewCertificate = (i32, DateTime<Utc>, Option<DateTime<Utc>>);

/// `certificates.id` of every certificate that delivered a report of the batch. An appliance
/// presents the same certificate report after report, and the locked row names its id, so in
/// steady state this asks PostgreSQL nothing.
async fn certificate_ids<'a>(
    tx: &Transaction<'_>,
    batch: &[&'a PreparedReport],
    unique: &[usize],
    before: &HashMap<String, Before>,
) -> Result<HashMap<&'a [u8], i32>, StorageError> {
    let mut ids: HashMap<&'a [u8], i32> = HashMap::new();
    // Certificates not known yet, by digest.
    let mut new: BTreeMap<&'a [u8], NewCertificate> = BTreeMap::new();
    for &i in unique {
        let r = batch[i];
        let b = &before[&r.serial];
        match &b.last_cert {
            Some((sha, id)) if *sha == r.cert_sha256 => {
                ids.insert(r.cert_sha256.as_slice(), *id);
            }
            _ => {
                new.entry(r.cert_sha256.as_slice()).or_insert((
                    b.id,
                    r.received_at,
                    r.cert_not_after,
                ));
            }
        }
    }
    new.retain(|sha, _| !ids.contains_key(sha));
    if new.is_empty() {
        return Ok(ids);
    }
    let shas: Vec<&[u8]> = new.keys().copied().collect();
    let insert = tx
        .prepare_cached(
            "INSERT INTO certificates (sha256, appliance_id, first_seen_at, not_after)
             SELECT * FROM unnest($1::bytea[], $2::int[], $3::timestamptz[], $4::timestamptz[])
             ON CONFLICT (sha256) DO UPDATE SET not_after = EXCLUDED.not_after
             WHERE certificates.not_after IS NULL",
        )
        .await?;
    tx.execute(
        &insert,
        &[
            &shas,
            &new.values().map(|v| v.0).collect::<Vec<_>>(),
            &new.values().map(|v| v.1).collect::<Vec<_>>(),
            &new.values().map(|v| v.2).collect::<Vec<_>>(),
        ],
    )
    .await?;
    let select = tx
        .prepare_cached("SELECT sha256, id FROM certificates WHERE sha256 = ANY($1)")
        .await?;
    for row in tx.query(&select, &[&shas]).await? {
        let sha: Vec<u8> = row.get(0);
        if let Some(key) = shas.iter().find(|s| **s == sha.as_slice()) {
            ids.insert(key, row.get(1));
        }
    }
    Ok(ids)
}

/// Ids of every drive in the stored reports (and of those the appliances' kept states name),
/// creating the drives not seen before. A drive its appliance already reported has its id in
/// the kept state; in steady state one statement compares the drives' firmware, protocol and
/// capacity with what PostgreSQL holds and writes nothing.
async fn drive_ids(
    tx: &Transaction<'_>,
    batch: &[&PreparedReport],
    stored: &[usize],
    before: &HashMap<String, Before>,
) -> Result<HashMap<String, i32>, StorageError> {
    let mut known: HashMap<String, i32> = before
        .values()
        .filter_map(|b| b.rule_state.as_ref())
        .flat_map(RuleState::drive_ids)
        .map(|(k, id)| (k.to_owned(), id))
        .collect();
    // Every drive in the stored reports, as its newest report here describes it.
    let mut newest: BTreeMap<&str, (&DriveRow, DateTime<Utc>)> = BTreeMap::new();
    for &i in stored {
        for d in &batch[i].drives {
            let at = batch[i].at;
            match newest.get(d.key.as_str()) {
                Some((_, seen)) if *seen >= at => {}
                _ => {
                    newest.insert(d.key.as_str(), (d, at));
                }
            }
        }
    }
    let drives: BTreeMap<&str, (&DriveRow, DateTime<Utc>)> = newest
        .iter()
        .filter(|(k, _)| !known.contains_key(**k))
        .map(|(k, v)| (*k, *v))
        .collect();
    if !drives.is_empty() {
        let keys: Vec<&str> = drives.keys().copied().collect();
        let rows: Vec<&DriveRow> = drives.values().map(|(d, _)| *d).collect();
        let insert = tx
            .prepare_cached(
                "INSERT INTO drives (drive_key, model, serial, wwn, first_seen_at, firmware,
                     protocol, capacity_bytes, predictive)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                                      $5::timestamptz[], $6::text[], $7::text[], $8::bigint[],
                                      $9::smallint[])
                 ON CONFLICT (drive_key) DO NOTHING",
            )
            .await?;
        tx.execute(
            &insert,
            &[
                &keys,
                &rows.iter().map(|d| d.model.as_deref()).collect::<Vec<_>>(),
                &rows.iter().map(|d| d.serial.as_deref()).collect::<Vec<_>>(),
                &rows.iter().map(|d| d.wwn.as_deref()).collect::<Vec<_>>(),
                &drives.values().map(|(_, at)| *at).collect::<Vec<_>>(),
                &rows
                    .iter()
                    .map(|d| d.firmware.as_deref())
                    .collect::<Vec<_>>(),
                &rows
                    .iter()
                    .map(|d| d.protocol.as_deref())
                    .collect::<Vec<_>>(),
                &rows.iter().map(|d| d.capacity_bytes).collect::<Vec<_>>(),
                &rows
                    .iter()
                    .map(|d| d.sample.predictive())
                    .collect::<Vec<_>>(),
            ],
        )
        .await?;
        let select = tx
            .prepare_cached("SELECT drive_key, id FROM drives WHERE drive_key = ANY($1)")
            .await?;
        for r in tx.query(&select, &[&keys]).await? {
            known.insert(r.get(0), r.get(1));
        }
    }
    // A firmware update (or a drive first written before these columns existed) is news for the
    // drive list, a predictive attribute turning non-zero (or back) for reliability; a drive
    // that did not change is read and not written.
    let (ids, rows): (Vec<i32>, Vec<&DriveRow>) = newest
        .iter()
        .filter_map(|(k, (d, _))| known.get(*k).map(|id| (*id, *d)))
        .unzip();
    if !ids.is_empty() {
        let update = tx
            .prepare_cached(
                "UPDATE drives d SET firmware = u.firmware, protocol = u.protocol,
                     capacity_bytes = u.capacity, predictive = u.predictive
                 FROM unnest($1::int[], $2::text[], $3::text[], $4::bigint[], $5::smallint[])
                     AS u(id, firmware, protocol, capacity, predictive)
                 WHERE d.id = u.id
                   AND (d.firmware, d.protocol, d.capacity_bytes, d.predictive)
                       IS DISTINCT FROM (u.firmware, u.protocol, u.capacity, u.predictive)",
            )
            .await?;
        tx.execute(
            &update,
            &[
                &ids,
                &rows
                    .iter()
                    .map(|d| d.firmware.as_deref())
                    .collect::<Vec<_>>(),
                &rows
                    .iter()
                    .map(|d| d.protocol.as_deref())
                    .collect::<Vec<_>>(),
                &rows.iter().map(|d| d.capacity_bytes).collect::<Vec<_>>(),
                &rows
                    .iter()
                    .map(|d| d.sample.predictive())
                    .collect::<Vec<_>>(),
            ],
        )
        .await?;
    }
    Ok(known)
}

async fn drive_keys(
    tx: &Transaction<'_>,
    ids: &[i32],
) -> Result<HashMap<i32, String>, StorageError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let stmt = tx
        .prepare_cached("SELECT id, drive_key FROM drives WHERE id = ANY($1)")
        .await?;
    Ok(tx
        .query(&stmt, &[&ids])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

async fn open_memberships(
    tx: &Transaction<'_>,
    appliance_ids: &[i32],
) -> Result<HashMap<i32, Vec<Member>>, StorageError> {
    let stmt = tx
        .prepare_cached(
            "SELECT appliance_id, id, drive_id, device_name FROM drive_membership
             WHERE appliance_id = ANY($1) AND until_at IS NULL",
        )
        .await?;
    let mut out: HashMap<i32, Vec<Member>> = HashMap::new();
    for r in tx.query(&stmt, &[&appliance_ids]).await? {
        out.entry(r.get(0)).or_default().push(Member {
            id: r.get(1),
            drive_id: r.get(2),
            device_name: r.get(3),
        });
    }
    Ok(out)
}

/// For each drive, its most recent membership anywhere: (membership id, appliance, still open).
async fn latest_memberships(
    tx: &Transaction<'_>,
    drive_ids: &[i32],
) -> Result<HashMap<i32, LatestMembership>, StorageError> {
    if drive_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let stmt = tx
        .prepare_cached(
            "SELECT DISTINCT ON (drive_id) drive_id, id, appliance_id, until_at IS NULL
             FROM drive_membership WHERE drive_id = ANY($1)
             ORDER BY drive_id, from_at DESC, id DESC",
        )
        .await?;
    Ok(tx
        .query(&stmt, &[&drive_ids])
        .await?
        .iter()
        .map(|r| {
            let latest = LatestMembership {
                id: r.get(1),
                appliance_id: r.get(2),
                open: r.get(3),
            };
            (r.get(0), latest)
        })
        .collect())
}

/// Other appliances that report a machine-id or system UUID of this batch: (serial,
/// machine_id, system_uuid).
async fn appliances_sharing_identity(
    tx: &Transaction<'_>,
    batch: &[&PreparedReport],
    stored: &[usize],
) -> Result<Vec<(String, Option<String>, Option<String>)>, StorageError> {
    let machine_ids: Vec<&str> = stored
        .iter()
        .filter_map(|&i| batch[i].state.machine_id.as_deref())
        .collect();
    let uuids: Vec<Uuid> = stored
        .iter()
        .filter_map(|&i| batch[i].state.system_uuid)
        .collect();
    if machine_ids.is_empty() && uuids.is_empty() {
        return Ok(Vec::new());
    }
    let stmt = tx
        .prepare_cached(
            "SELECT serial, machine_id, system_uuid::text FROM appliances
             WHERE machine_id = ANY($1) OR system_uuid = ANY($2)",
        )
        .await?;
    Ok(tx
        .query(&stmt, &[&machine_ids, &uuids])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// Identity events, version changes, membership and drive events.
async fn write_events(tx: &Transaction<'_>, w: &Changes) -> Result<(), StorageError> {
    let identity = async {
        if w.identity_events.is_empty() {
            return Ok(0);
        }
        let e = &w.identity_events;
        let stmt = tx
            .prepare_cached(
                "INSERT INTO identity_events (serial, kind, old_value, new_value, other_serial,
                     report_id)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                     $5::text[], $6::uuid[])
                 ON CONFLICT DO NOTHING",
            )
            .await?;
        let n = tx
            .execute(
                &stmt,
                &[
                    &e.iter().map(|x| x.serial.as_str()).collect::<Vec<_>>(),
                    &e.iter().map(|x| x.kind.as_str()).collect::<Vec<_>>(),
                    &e.iter().map(|x| x.old_value.as_deref()).collect::<Vec<_>>(),
                    &e.iter().map(|x| x.new_value.as_str()).collect::<Vec<_>>(),
                    &e.iter()
                        .map(|x| x.other_serial.as_deref())
                        .collect::<Vec<_>>(),
                    &e.iter().map(|x| x.report_id).collect::<Vec<_>>(),
                ],
            )
            .await?;
        if n > 0 {
            // Chassis swaps and cloned images are what operators must hear about; the rows
            // are in identity_events.
            tracing::warn!(
                events = n,
                serials = ?e.iter().map(|x| x.serial.as_str()).collect::<HashSet<_>>(),
                "identity events recorded (system UUID or machine-id changed or shared)"
            );
        }
        Ok::<_, StorageError>(n)
    };
    let versions = async {
        if w.version_changes.is_empty() {
            return Ok(0);
        }
        let v = &w.version_changes;
        let stmt = tx
            .prepare_cached(
                "INSERT INTO version_changes (appliance_id, component, old_version, new_version,
                     changed_at, report_id)
                 SELECT * FROM unnest($1::int[], $2::text[], $3::text[], $4::text[],
                     $5::timestamptz[], $6::uuid[])",
            )
            .await?;
        Ok(tx
            .execute(
                &stmt,
                &[
                    &v.iter().map(|x| x.appliance_id).collect::<Vec<_>>(),
                    &v.iter().map(|x| x.component.as_str()).collect::<Vec<_>>(),
                    &v.iter()
                        .map(|x| x.old_version.as_deref())
                        .collect::<Vec<_>>(),
                    &v.iter()
                        .map(|x| x.new_version.as_deref())
                        .collect::<Vec<_>>(),
                    &v.iter().map(|x| x.changed_at).collect::<Vec<_>>(),
                    &v.iter().map(|x| x.report_id).collect::<Vec<_>>(),
                ],
            )
            .await?)
    };
    let membership = async {
        if w.closed.is_empty() && w.opened.is_empty() {
            return Ok(0);
        }
        // Closing first: a drive that moved in this batch must leave before it arrives.
        let close = tx
            .prepare_cached(
                "UPDATE drive_membership m SET until_at = c.at
                 FROM unnest($1::bigint[], $2::timestamptz[]) AS c(id, at)
                 WHERE m.id = c.id AND m.until_at IS NULL",
            )
            .await?;
        let open = tx
            .prepare_cached(
                "INSERT INTO drive_membership (appliance_id, drive_id, device_name, from_at)
                 SELECT * FROM unnest($1::int[], $2::int[], $3::text[], $4::timestamptz[])
                 ON CONFLICT DO NOTHING",
            )
            .await?;
        let c = &w.closed;
        let mut n = tx
            .execute(
                &close,
                &[
                    &c.iter().map(|x| x.0).collect::<Vec<_>>(),
                    &c.iter().map(|x| x.1).collect::<Vec<_>>(),
                ],
            )
            .await?;
        let o = &w.opened;
        let opened = tx
            .execute(
                &open,
                &[
                    &o.iter().map(|x| x.appliance_id).collect::<Vec<_>>(),
                    &o.iter().map(|x| x.drive_id).collect::<Vec<_>>(),
                    &o.iter().map(|x| x.device_name.as_str()).collect::<Vec<_>>(),
                    &o.iter().map(|x| x.from).collect::<Vec<_>>(),
                ],
            )
            .await?;
        n = n.saturating_add(opened);
        Ok(n)
    };
    let drive_events = async {
        if w.drive_events.is_empty() {
            return Ok(0);
        }
        let e = &w.drive_events;
        let stmt = tx
            .prepare_cached(
                "INSERT INTO drive_events (drive_id, appliance_id, kind, from_appliance_id,
                     device_name, at, report_id)
                 SELECT * FROM unnest($1::int[], $2::int[], $3::text[], $4::int[], $5::text[],
                     $6::timestamptz[], $7::uuid[])",
            )
            .await?;
        Ok(tx
            .execute(
                &stmt,
                &[
                    &e.iter().map(|x| x.drive_id).collect::<Vec<_>>(),
                    &e.iter().map(|x| x.appliance_id).collect::<Vec<_>>(),
                    &e.iter().map(|x| x.kind.as_str()).collect::<Vec<_>>(),
                    &e.iter().map(|x| x.from_appliance_id).collect::<Vec<_>>(),
                    &e.iter().map(|x| x.device_name.as_str()).collect::<Vec<_>>(),
                    &e.iter().map(|x| x.at).collect::<Vec<_>>(),
                    &e.iter().map(|x| x.report_id).collect::<Vec<_>>(),
                ],
            )
            .await?)
    };
    tokio::try_join!(identity, versions, membership, drive_events)?;
    Ok(())
}

/// Counts for every appliance with a stored report; state (and the rules' kept state) from its
/// newest report when that is newer than what was known. One statement for the usual case.
async fn update_appliances(
    tx: &Transaction<'_>,
    updates: &BTreeMap<&str, ApplianceUpdate<'_>>,
    cert_ids: &HashMap<&[u8], i32>,
) -> Result<(), StorageError> {
    // Appliances whose stored reports were all late: counts only.
    let late: Vec<&ApplianceUpdate<'_>> = updates.values().filter(|u| u.newest.is_none()).collect();
    if !late.is_empty() {
        let counts = tx
            .prepare_cached(
                "UPDATE appliances a SET report_count = a.report_count + u.n,
                     last_report_at = GREATEST(a.last_report_at, u.at)
                 FROM unnest($1::int[], $2::bigint[], $3::timestamptz[]) AS u(id, n, at)
                 WHERE a.id = u.id",
            )
            .await?;
        tx.execute(
            &counts,
            &[
                &late.iter().map(|u| u.id).collect::<Vec<_>>(),
                &late.iter().map(|u| u.stored).collect::<Vec<_>>(),
                &late.iter().map(|u| u.last_received_at).collect::<Vec<_>>(),
            ],
        )
        .await?;
    }
    let moved: Vec<(&ApplianceUpdate<'_>, &engine::Newest<'_>)> = updates
        .values()
        .filter_map(|u| Some((u, u.newest.as_ref()?)))
        .collect();
    let newest: Vec<(i32, &PreparedReport)> = moved.iter().map(|(u, n)| (u.id, n.report)).collect();
    if newest.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare_cached(
            "UPDATE appliances a SET
                 report_count = a.report_count + u.n,
                 last_report_at = GREATEST(a.last_report_at, u.at),
                 hostname = u.hostname, system_uuid = u.system_uuid, machine_id = u.machine_id,
                 last_collected_at = u.collected_at, last_report_id = u.report_id,
                 app_version = u.app_version, app_status = u.app_status,
                 os_pretty_name = u.os, kernel = u.kernel,
                 collector_version = u.collector_version, drive_count = u.drives,
                 failing_drive_count = u.failing, warning_drive_count = u.warning,
                 filesystem_count = u.filesystems,
                 nic_count = u.nics, collection_errors = u.errors,
                 dropped_reports = u.dropped, last_cert_sha256 = u.cert, boot_id = u.boot_id,
                 rule_state = u.rule_state, last_cert_id = u.cert_id
             FROM unnest($1::int[], $2::text[], $3::uuid[], $4::text[], $5::timestamptz[],
                 $6::uuid[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
                 $12::int[], $13::int[], $14::int[], $15::int[], $16::int[], $17::bigint[],
                 $18::bytea[], $19::uuid[], $20::bytea[], $21::bigint[], $22::timestamptz[],
                 $23::int[], $24::int[])
                 AS u(id, hostname, system_uuid, machine_id, collected_at, report_id,
                      app_version, app_status, os, kernel, collector_version, drives, failing,
                      filesystems, nics, errors, dropped, cert, boot_id, rule_state, n, at,
                      cert_id, warning)
             WHERE a.id = u.id",
        )
        .await?;
    let rule_states: Vec<Vec<u8>> = moved.iter().map(|(_, n)| n.rule_state.encode()).collect();
    let st = |f: &dyn Fn(&CurrentState) -> i32| {
        newest.iter().map(|(_, r)| f(&r.state)).collect::<Vec<_>>()
    };
    let text = |f: &dyn Fn(&CurrentState) -> Option<&str>| {
        newest.iter().map(|(_, r)| f(&r.state)).collect::<Vec<_>>()
    };
    tx.execute(
        &stmt,
        &[
            &newest.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            &text(&|s| s.hostname.as_deref()),
            &newest
                .iter()
                .map(|(_, r)| r.state.system_uuid)
                .collect::<Vec<_>>(),
            &text(&|s| s.machine_id.as_deref()),
            &newest.iter().map(|(_, r)| r.at).collect::<Vec<_>>(),
            &newest.iter().map(|(_, r)| r.report_id).collect::<Vec<_>>(),
            &text(&|s| s.app_version.as_deref()),
            &text(&|s| Some(s.app_status)),
            &text(&|s| s.os.as_deref()),
            &text(&|s| s.kernel.as_deref()),
            &text(&|s| Some(s.collector_version.as_str())),
            &st(&|s| s.drive_count),
            &st(&|s| s.failing_drive_count),
            &st(&|s| s.filesystem_count),
            &st(&|s| s.nic_count),
            &st(&|s| s.collection_errors),
            &newest
                .iter()
                .map(|(_, r)| r.state.dropped_reports)
                .collect::<Vec<_>>(),
            &newest
                .iter()
                .map(|(_, r)| r.cert_sha256.as_slice())
                .collect::<Vec<_>>(),
            &newest.iter().map(|(_, r)| r.boot_id).collect::<Vec<_>>(),
            &rule_states,
            &moved.iter().map(|(u, _)| u.stored).collect::<Vec<_>>(),
            &moved
                .iter()
                .map(|(u, _)| u.last_received_at)
                .collect::<Vec<_>>(),
            &newest
                .iter()
                .map(|(_, r)| cert_ids.get(r.cert_sha256.as_slice()).copied())
                .collect::<Vec<_>>(),
            &moved
                .iter()
                .map(|(_, n)| n.warning_drive_count)
                .collect::<Vec<_>>(),
        ],
    )
    .await?;
    Ok(())
}
