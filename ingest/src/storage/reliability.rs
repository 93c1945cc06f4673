//! Loads what `phonehome_dashboard::reliability` judges: each drive's life in the fleet, whether
//! it failed, and its latest predictive counters; stores the result for the page and the API.
//! Run by maintenance (hourly, one replica), never on a request: it reads every drive. The
//! counters are those the drive's row keeps (`drives.predictive`, set by the write path from
//! each report): no history is read, neither sample rows (gone since migration 17) nor the
//! 100,000 newest bodies a fleet's latest readings would otherwise take.

use std::collections::BTreeMap;

use chrono::Utc;
use phonehome_dashboard::reliability::{
    self as r, AttributeSplit, Counts, InService, ModelRate, Reliability,
};

use super::{Storage, StorageError};

/// Drives on the "replace soon" list.
const REPLACE_SOON: usize = 100;
/// A drive's kept counters count if it was last seen this recently: one removed (or whose
/// appliance went silent) before then counts with its attributes unknown (as zero).
const LATEST_DAYS: i32 = 35;

/// The predictive attributes, named as the page shows them, in the order of the bits of
/// `drives.predictive`.
const ATTRIBUTES: [&str; 7] = crate::model::PREDICTIVE;

/// One drive as the query returns it.
struct DriveLife {
    key: String,
    model: String,
    firmware: Option<String>,
    serial: Option<String>,
    days: f64,
    failed: bool,
    in_service: Option<String>,
    nonzero: [bool; 7],
}

fn add(c: &mut Counts, d: &DriveLife) {
    c.drives = c.drives.saturating_add(1);
    c.drive_days += d.days;
    if d.failed {
        c.failures = c.failures.saturating_add(1);
    }
}

fn counts(model: &str, firmware: Option<&str>) -> Counts {
    Counts {
        model: model.to_owned(),
        firmware: firmware.map(str::to_owned),
        drives: 0,
        drive_days: 0.0,
        failures: 0,
    }
}

impl Storage {
    /// Computes the fleet's reliability and keeps it; returns the drives it looked at.
    pub async fn compute_reliability(&self) -> Result<u64, StorageError> {
        let client = self.pool().get().await?;
        let rows = client
            .query(
                "WITH life AS (
                     SELECT m.drive_id,
                            sum(extract(epoch FROM coalesce(m.until_at, now()) - m.from_at))
                                / 86400.0 AS days,
                            (array_agg(a.serial) FILTER (WHERE m.until_at IS NULL))[1]
                                AS in_service,
                            -- When the drive was last seen: its appliance's newest report while
                            -- it sits in one, else the first report that no longer showed it.
                            max(coalesce(m.until_at, a.last_collected_at)) AS seen_at
                     FROM drive_membership m JOIN appliances a ON a.id = m.appliance_id
                     GROUP BY m.drive_id),
                 failed AS (
                     SELECT DISTINCT subject AS drive_key FROM alerts WHERE rule = 'disk_failing'
                     UNION
                     -- Removed while (or within a day of) a warning about it: replaced.
                     SELECT d.drive_key FROM drive_events e JOIN drives d ON d.id = e.drive_id
                     WHERE e.kind = 'disappeared' AND EXISTS (
                         SELECT 1 FROM alerts al
                         WHERE al.subject = d.drive_key AND al.rule LIKE 'disk\\_%'
                           AND al.rule <> 'disk_missing'
                           AND al.severity IN ('warning', 'critical')
                           AND al.started_at <= e.at
                           AND coalesce(al.resolved_at, 'infinity') >= e.at - interval '1 day'))
                 SELECT d.drive_key, coalesce(d.model, '(unknown model)'), d.firmware, d.serial,
                        l.days::float8, f.drive_key IS NOT NULL, l.in_service,
                        CASE WHEN l.seen_at > now() - make_interval(days => $1)
                             THEN coalesce(d.predictive, 0) ELSE 0 END::int
                 FROM drives d JOIN life l ON l.drive_id = d.id
                 LEFT JOIN failed f ON f.drive_key = d.drive_key",
                &[&LATEST_DAYS],
            )
            .await?;
        let drives: Vec<DriveLife> = rows
            .iter()
            .map(|row| DriveLife {
                key: row.get(0),
                model: row.get(1),
                firmware: row.get(2),
                serial: row.get(3),
                days: row.get::<_, f64>(4).max(0.0),
                failed: row.get(5),
                in_service: row.get(6),
                nonzero: {
                    let bits: i32 = row.get(7);
                    std::array::from_fn(|i| bits & (1 << i) != 0)
                },
            })
            .collect();
        let mut fleet = counts("(fleet)", None);
        let mut per_model: BTreeMap<(String, Option<String>), Counts> = BTreeMap::new();
        let mut splits: Vec<(Counts, Counts)> = ATTRIBUTES
            .iter()
            .map(|a| (counts(a, None), counts(a, None)))
            .collect();
        for d in &drives {
            add(&mut fleet, d);
            add(
                per_model
                    .entry((d.model.clone(), None))
                    .or_insert_with(|| counts(&d.model, None)),
                d,
            );
            if let Some(fw) = &d.firmware {
                add(
                    per_model
                        .entry((d.model.clone(), Some(fw.clone())))
                        .or_insert_with(|| counts(&d.model, Some(fw))),
                    d,
                );
            }
            for (i, (nonzero, zero)) in splits.iter_mut().enumerate() {
                add(if d.nonzero[i] { nonzero } else { zero }, d);
            }
        }
        let mut models: Vec<ModelRate> = per_model
            .into_values()
            .map(|c| ModelRate {
                afr: r::afr(c.failures, c.drive_days),
                counts: c,
            })
            .collect();
        models.sort_by(|a, b| b.counts.drive_days.total_cmp(&a.counts.drive_days));
        let attributes: Vec<AttributeSplit> = ATTRIBUTES
            .iter()
            .zip(splits)
            .map(|(name, (nonzero, zero))| AttributeSplit::new(name, nonzero, zero))
            .collect();
        let fleet_afr = r::afr(fleet.failures, fleet.drive_days);
        let in_service: Vec<InService> = drives
            .iter()
            .filter(|d| !d.failed)
            .filter_map(|d| {
                Some(InService {
                    drive_key: d.key.clone(),
                    model: d.model.clone(),
                    serial: d.serial.clone(),
                    appliance: d.in_service.clone()?,
                    nonzero: ATTRIBUTES
                        .iter()
                        .zip(d.nonzero)
                        .filter(|(_, nz)| *nz)
                        .map(|(a, _)| (*a).to_owned())
                        .collect(),
                })
            })
            .collect();
        let replace_soon =
            r::replace_soon(in_service, &models, &attributes, fleet_afr, REPLACE_SOON);
        let result = Reliability {
            computed_at: Utc::now(),
            fleet,
            fleet_afr,
            models,
            attributes,
            replace_soon,
        };
        let body = serde_json::to_value(&result)
            .map_err(|e| StorageError::Config(format!("reliability: {e}")))?;
        client
            .execute(
                "INSERT INTO reliability (id, computed_at, body) VALUES (1, $1, $2)
                 ON CONFLICT (id) DO UPDATE SET computed_at = EXCLUDED.computed_at,
                     body = EXCLUDED.body",
                &[&result.computed_at, &body],
            )
            .await?;
        Ok(u64::try_from(drives.len()).unwrap_or(u64::MAX))
    }

    /// The newest reliability maintenance computed; `None` before the first run.
    pub async fn reliability(&self) -> Result<Option<Reliability>, StorageError> {
        let client = self.pool().get().await?;
        let row = client
            .query_opt("SELECT body FROM reliability WHERE id = 1", &[])
            .await?;
        Ok(row.and_then(|r| serde_json::from_value(r.get::<_, serde_json::Value>(0)).ok()))
    }
}
