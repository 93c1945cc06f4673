//! The dashboard's reads: fleet lists that start from an index and stop after a page (keyset
//! paging, never OFFSET), one drive with its evidence, and the fleet-wide counts, which scan the
//! appliances once and are therefore cached by the caller (`crate::dashboard`), not run per view.
//! Rows become the dashboard's view types here; the words people read are the dashboard's.

use std::collections::HashMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use phonehome_dashboard as d;
use phonehome_dashboard::query::{
    AlertQuery, AlertStateFilter, ApplianceQuery, ApplianceSort, DriveQuery,
};
use phonehome_dashboard::{AlertCursor, ApplianceCursor, Health, Page, Severity};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::fleet::reported_minute;
use super::read::{DriveReading, drive_point};
use super::readings::{self, BODY_COLUMNS, StoredBody};
use super::{Storage, StorageError};
use crate::lifecycle::{
    Lifecycle, State as LifecycleState, effective_state, serials_in, silence_exempt_serials,
};

/// A statement built from optional filters, with its parameters numbered as they are added.
#[derive(Default)]
struct Sql {
    conditions: Vec<String>,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Sql {
    /// Adds `value` as the next parameter and returns its placeholder.
    fn bind(&mut self, value: impl ToSql + Sync + Send + 'static) -> String {
        self.params.push(Box::new(value));
        format!("${}", self.params.len())
    }

    fn and(&mut self, condition: String) {
        self.conditions.push(condition);
    }

    fn filter(&self) -> String {
        if self.conditions.is_empty() {
            "true".to_owned()
        } else {
            self.conditions.join(" AND ")
        }
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

/// `q` as a LIKE prefix pattern: its own wildcards are matched literally.
fn prefix_pattern(q: &str) -> String {
    let mut p = String::with_capacity(q.len() + 1);
    for c in q.to_lowercase().chars() {
        if matches!(c, '\\' | '%' | '_') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

fn severity(s: &str) -> Severity {
    // The table's CHECK allows only these three; anything else would be shown as the worst.
    Severity::parse(s).unwrap_or(Severity::Critical)
}

/// Keeps `limit` rows and says whether there were more (one more than asked was fetched).
fn page<T>(mut items: Vec<T>, limit: i64, cursor: impl Fn(&T) -> String) -> Page<T> {
    let limit = usize::try_from(limit.max(1)).unwrap_or(1);
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(cursor)
    } else {
        None
    };
    Page { items, next }
}

const APPLIANCE_COLUMNS: &str = "a.serial, a.hostname, a.last_report_at, a.health,
    (SELECT count(*) FROM alerts al WHERE al.appliance_id = a.id AND al.state = 'firing'),
    a.failing_drive_count, a.app_status, a.app_version, a.os_pretty_name, a.report_count,
    l.state, l.until";

/// The lifecycle beside each listed appliance (a primary-key lookup per row of the page).
const APPLIANCE_LIFECYCLE: &str = "LEFT JOIN appliance_lifecycle l ON l.serial = a.serial";

fn appliance_row(r: &Row, silent_before: DateTime<Utc>, now: DateTime<Utc>) -> d::ApplianceRow {
    let last_report_at: DateTime<Utc> = r.get(2);
    let state = r
        .get::<_, Option<&str>>(10)
        .and_then(LifecycleState::parse)
        .unwrap_or(LifecycleState::Active);
    let lifecycle = effective_state(state, r.get(11), now);
    d::ApplianceRow {
        serial: r.get(0),
        hostname: r.get(1),
        last_report_at,
        // An appliance expected offline or retired is not silent: nobody is waiting for it.
        silent: last_report_at < silent_before && lifecycle == LifecycleState::Active,
        lifecycle: lifecycle.as_str().to_owned(),
        health: Health::from_rank(r.get(3)),
        firing_alerts: r.get(4),
        failing_drives: r.get(5),
        app_status: r.get(6),
        app_version: r.get(7),
        os: r.get(8),
        report_count: r.get(9),
    }
}

const ALERT_COLUMNS: &str = "al.id, al.rule, a.serial, al.subject, al.severity, al.state,
    al.started_at, al.resolved_at, al.value, al.summary, al.reopened";

fn alert_row(r: &Row) -> d::AlertRow {
    d::AlertRow {
        id: r.get(0),
        rule: r.get(1),
        serial: r.get(2),
        subject: r.get(3),
        severity: severity(r.get::<_, &str>(4)),
        state: super::read::alert_state(r.get(5)),
        started_at: r.get(6),
        resolved_at: r.get(7),
        value: r.get(8),
        summary: r.get(9),
        reopened: r.get(10),
    }
}

/// Where a page of alerts starts.
#[derive(Debug, Clone, Copy)]
enum Keyset {
    None,
    Firing(Severity, DateTime<Utc>, i64),
    Below(i64),
}

/// The firing alerts' order: most severe first (the expression `alerts_firing_order` indexes),
/// then longest firing.
const FIRING_ORDER: &str = "3 - phonehome_severity_rank(al.severity), al.started_at, al.id";

const DRIVE_COLUMNS: &str = "dr.drive_key, dr.model, dr.serial, dr.firmware, dr.protocol,
    dr.capacity_bytes, dr.health, dr.first_seen_at,
    coalesce((SELECT array_agg(DISTINCT al.rule ORDER BY al.rule) FROM alerts al
              WHERE al.subject = dr.drive_key AND al.state = 'firing'
                AND al.rule LIKE 'disk\\_%'), '{}'),
    now_in.serial, now_in.device_name, dr.id, dr.wwn, now_in.appliance_id";

/// Where a drive is now (the newest open membership), for `DRIVE_COLUMNS`.
const DRIVE_NOW_IN: &str = "LEFT JOIN LATERAL (
        SELECT p.serial, m.device_name, m.appliance_id FROM drive_membership m
        JOIN appliances p ON p.id = m.appliance_id
        WHERE m.drive_id = dr.id AND m.until_at IS NULL
        ORDER BY m.from_at DESC LIMIT 1) now_in ON true";

fn drive_row(r: &Row) -> d::DriveRow {
    d::DriveRow {
        key: r.get(0),
        model: r.get(1),
        serial: r.get(2),
        firmware: r.get(3),
        protocol: r.get(4),
        capacity_bytes: r.get(5),
        health: Health::from_rank(r.get(6)),
        first_seen_at: r.get(7),
        firing: r.get(8),
        appliance: r.get(9),
        device_name: r.get(10),
    }
}

/// (version, appliances, of which with a warning or critical alert firing)
pub type VersionUse = (String, i64, i64);

/// The fleet-wide numbers behind the summary, `/versions` and `/metrics`: one scan of the
/// appliances and one of the firing alerts.
#[derive(Debug, Clone, Default)]
pub struct FleetCounts {
    pub at: DateTime<Utc>,
    pub appliances: i64,
    pub by_health: Vec<(Health, i64)>,
    pub silent: i64,
    /// Appliances expected offline now (date ahead), and retired.
    pub expected_offline: i64,
    pub retired: i64,
    pub by_status: Vec<(String, i64)>,
    /// Per component (`app`, `os`, `kernel`, `collector`): (version, appliances, with alerts),
    /// most used first.
    pub versions: Vec<(&'static str, Vec<VersionUse>)>,
    /// (rule, severity, firing alerts, distinct subjects)
    pub alerts: Vec<(String, Severity, i64, i64)>,
    /// Drives named by a firing `disk_failing` alert, by the collector-independent verdict.
    pub failing_drives: i64,
    /// Drives in the appliances' newest reports by verdict (ok, warning, critical).
    pub drives: Vec<(crate::verdict::Level, i64)>,
    /// Appliances by how soon the certificate of their latest report ends (see
    /// [`CERTIFICATE_BUCKETS`]).
    pub certificates: Vec<(&'static str, i64)>,
}

/// The days-to-expiry buckets of `phonehome_appliance_certificates`, each "ends within" the
/// named time and not within the one before; `unknown` for certificates seen before the
/// ingest kept their end.
pub const CERTIFICATE_BUCKETS: [&str; 7] =
    ["expired", "7d", "30d", "90d", "365d", "later", "unknown"];

/// Longest version string kept in the counts: enough for any real version, and a hostile
/// one cannot make a page or a metric label large.
const VERSION_CHARS: i32 = 128;

impl Storage {
    /// Appliances matching `q`, one page in its order.
    /// `below_minimum` is the app versions below the configured minimum when the query asks for
    /// those appliances (the caller knows the versions in use).
    pub async fn dashboard_appliances(
        &self,
        q: &ApplianceQuery,
        silent_before: DateTime<Utc>,
        below_minimum: Option<&[String]>,
        lifecycles: &[Lifecycle],
    ) -> Result<Page<d::ApplianceRow>, StorageError> {
        let now = Utc::now();
        let mut sql = Sql::default();
        if let Some(state) = q.state.as_deref().and_then(LifecycleState::parse) {
            // Judged in Rust by the lifecycle rules; the set is what operators set by hand.
            if state == LifecycleState::Active {
                let p = sql.bind(
                    lifecycles
                        .iter()
                        .filter(|l| l.effective(now) != LifecycleState::Active)
                        .map(|l| l.serial.clone())
                        .collect::<Vec<_>>(),
                );
                sql.and(format!("a.serial <> ALL({p})"));
            } else {
                let p = sql.bind(serials_in(lifecycles, state, now));
                sql.and(format!("a.serial = ANY({p})"));
            }
        }
        if let Some(text) = &q.q {
            let p = sql.bind(prefix_pattern(text));
            // On the narrow appliance_seen rows (migration 8): a prefix whose matches sit far
            // along the serial order costs a walk over a few megabytes, not over every wide
            // appliance row.
            sql.and(format!(
                "(lower(s.serial) LIKE {p} OR lower(s.hostname) LIKE {p})"
            ));
        }
        if let Some(h) = q.health {
            let p = sql.bind(h.rank());
            sql.and(format!("a.health = {p}"));
        }
        if let Some(silent) = q.silent {
            let p = sql.bind(silent_before);
            let e = sql.bind(silence_exempt_serials(lifecycles, now));
            sql.and(if silent {
                format!("(s.reported_minute < {p} AND a.serial <> ALL({e}))")
            } else {
                format!("(s.reported_minute >= {p} OR a.serial = ANY({e}))")
            });
        }
        if let Some(versions) = below_minimum {
            let p = sql.bind(versions.to_vec());
            sql.and(format!("a.app_version = ANY({p})"));
        }
        if let Some(rule) = &q.rule {
            let p = sql.bind(rule.clone());
            sql.and(format!(
                "a.id IN (SELECT appliance_id FROM alerts WHERE state = 'firing' AND rule = {p})"
            ));
        }
        if let Some(v) = &q.app_version {
            let p = sql.bind(v.clone());
            sql.and(format!("a.app_version = {p}"));
        }
        if let Some(v) = &q.os {
            let p = sql.bind(v.clone());
            sql.and(format!("a.os_pretty_name = {p}"));
        }
        if let Some(v) = &q.status {
            let p = sql.bind(v.clone());
            sql.and(format!("a.app_status = {p}"));
        }
        if let Some((name, value)) = &q.label {
            let n = sql.bind(name.clone());
            let v = sql.bind(value.clone());
            sql.and(format!(
                "a.serial IN (SELECT serial FROM appliance_labels WHERE name = {n} AND value = {v})"
            ));
        }
        if let Some(model) = &q.drive_model {
            let p = sql.bind(model.clone());
            sql.and(format!(
                "a.id IN (SELECT m.appliance_id FROM drive_membership m
                          JOIN drives dr ON dr.id = m.drive_id
                          WHERE m.until_at IS NULL AND dr.model = {p})"
            ));
        }
        // A search sorts by the narrow table's copy of the serial, so that it walks that.
        let by_serial = if q.q.is_some() {
            "s.serial"
        } else {
            "a.serial"
        };
        let order = match q.sort {
            ApplianceSort::Serial => by_serial,
            // By minute (what appliance_seen keeps, migration 18), then serial.
            ApplianceSort::LastReport => "s.reported_minute DESC, s.serial DESC",
            ApplianceSort::Oldest => "s.reported_minute, s.serial",
            ApplianceSort::Health => "3 - a.health, a.serial",
        };
        match &q.after {
            None => {}
            Some(ApplianceCursor::Serial(s)) => {
                let p = sql.bind(s.clone());
                sql.and(format!("{by_serial} > {p}"));
            }
            Some(ApplianceCursor::Time(t, s)) => {
                let (pt, ps) = (sql.bind(*t), sql.bind(s.clone()));
                let op = if q.sort == ApplianceSort::LastReport {
                    "<"
                } else {
                    ">"
                };
                sql.and(format!("(s.reported_minute, s.serial) {op} ({pt}, {ps})"));
            }
            Some(ApplianceCursor::Health(h, s)) => {
                let (ph, ps) = (sql.bind(3 - i32::from(h.rank())), sql.bind(s.clone()));
                sql.and(format!("(3 - a.health, a.serial) > ({ph}::int, {ps})"));
            }
        }
        let limit = sql.bind(q.limit.saturating_add(1));
        let text = format!(
            "SELECT {APPLIANCE_COLUMNS} FROM appliances a
             JOIN appliance_seen s ON s.appliance_id = a.id
             {APPLIANCE_LIFECYCLE}
             WHERE {} ORDER BY {order} LIMIT {limit}",
            sql.filter()
        );
        let client = self.pool().get().await?;
        let rows = client.query(&text, &sql.params()).await?;
        let items: Vec<d::ApplianceRow> = rows
            .iter()
            .map(|r| appliance_row(r, silent_before, now))
            .collect();
        let sort = q.sort;
        Ok(page(items, q.limit, |a| {
            match sort {
                ApplianceSort::Serial => ApplianceCursor::Serial(a.serial.clone()),
                ApplianceSort::LastReport | ApplianceSort::Oldest => {
                    ApplianceCursor::Time(reported_minute(a.last_report_at), a.serial.clone())
                }
                ApplianceSort::Health => ApplianceCursor::Health(a.health, a.serial.clone()),
            }
            .encode()
        }))
    }

    /// Alerts matching `q`, one page in its order. `all` is firing ones newest first, then
    /// resolved ones newest first: two ranged reads, each from its own index, rather than one
    /// sort of the whole history.
    pub async fn dashboard_alerts(
        &self,
        q: &AlertQuery,
    ) -> Result<Page<d::AlertRow>, StorageError> {
        let fetch = q.limit.saturating_add(1);
        let items = match (q.state, &q.after) {
            (AlertStateFilter::Firing, after) => {
                let after = match after {
                    Some(AlertCursor::Firing(s, t, id)) => Keyset::Firing(*s, *t, *id),
                    _ => Keyset::None,
                };
                self.alert_rows(q, "firing", after, fetch).await?
            }
            (AlertStateFilter::Resolved, after) => {
                let after = match after {
                    Some(AlertCursor::Id(id)) => Keyset::Below(*id),
                    _ => Keyset::None,
                };
                self.alert_rows(q, "resolved", after, fetch).await?
            }
            (AlertStateFilter::All, Some(AlertCursor::All(true, id))) => {
                self.alert_rows(q, "resolved", Keyset::Below(*id), fetch)
                    .await?
            }
            (AlertStateFilter::All, after) => {
                let after = match after {
                    Some(AlertCursor::All(false, id)) => Keyset::Below(*id),
                    _ => Keyset::None,
                };
                let mut rows = self.alert_rows(q, "firing", after, fetch).await?;
                let short = fetch.saturating_sub(i64::try_from(rows.len()).unwrap_or(i64::MAX));
                if short > 0 {
                    rows.extend(self.alert_rows(q, "resolved", Keyset::None, short).await?);
                }
                rows
            }
        };
        let state = q.state;
        Ok(page(items, q.limit, |a| {
            match state {
                AlertStateFilter::Firing => AlertCursor::Firing(a.severity, a.started_at, a.id),
                AlertStateFilter::Resolved => AlertCursor::Id(a.id),
                AlertStateFilter::All => AlertCursor::All(a.state != d::AlertState::Firing, a.id),
            }
            .encode()
        }))
    }

    /// Up to `fetch` alerts in `state` matching `q`'s filters after `after`: firing ones in the
    /// severity order when the keyset says so (or with no keyset in the firing list), else by
    /// id, newest first.
    async fn alert_rows(
        &self,
        q: &AlertQuery,
        state: &'static str,
        after: Keyset,
        fetch: i64,
    ) -> Result<Vec<d::AlertRow>, StorageError> {
        let mut sql = Sql::default();
        let p = sql.bind(state);
        sql.and(format!("al.state = {p}"));
        if let Some(rule) = &q.rule {
            let p = sql.bind(rule.clone());
            sql.and(format!("al.rule = {p}"));
        }
        if let Some(s) = q.severity {
            let p = sql.bind(s.as_str());
            sql.and(format!("al.severity = {p}"));
        }
        if let Some(serial) = &q.serial {
            let p = sql.bind(serial.clone());
            sql.and(format!("a.serial = {p}"));
        }
        let by_severity = q.state == AlertStateFilter::Firing;
        match after {
            Keyset::None => {}
            Keyset::Firing(s, t, id) => {
                let (ps, pt, pi) = (sql.bind(i32::from(s.order())), sql.bind(t), sql.bind(id));
                sql.and(format!(
                    "({FIRING_ORDER}) > ({ps}::int, {pt}::timestamptz, {pi}::bigint)"
                ));
            }
            Keyset::Below(id) => {
                let p = sql.bind(id);
                sql.and(format!("al.id < {p}"));
            }
        }
        let order = if by_severity {
            FIRING_ORDER
        } else {
            "al.id DESC"
        };
        let limit = sql.bind(fetch);
        let text = format!(
            "SELECT {ALERT_COLUMNS} FROM alerts al JOIN appliances a ON a.id = al.appliance_id
             WHERE {} ORDER BY {order} LIMIT {limit}",
            sql.filter()
        );
        let client = self.pool().get().await?;
        let rows = client.query(&text, &sql.params()).await?;
        Ok(rows.iter().map(alert_row).collect())
    }

    /// Drives matching `q`, worst first, then by key.
    pub async fn dashboard_drives(
        &self,
        q: &DriveQuery,
    ) -> Result<Page<d::DriveRow>, StorageError> {
        let mut sql = Sql::default();
        for (column, value) in [
            ("dr.model", &q.model),
            ("dr.firmware", &q.firmware),
            ("dr.protocol", &q.protocol),
        ] {
            if let Some(v) = value {
                let p = sql.bind(v.clone());
                sql.and(format!("{column} = {p}"));
            }
        }
        if let Some(h) = q.health {
            let p = sql.bind(h.rank());
            sql.and(format!("dr.health = {p}"));
        }
        if let Some((h, key)) = &q.after {
            let (ph, pk) = (sql.bind(3 - i32::from(h.rank())), sql.bind(key.clone()));
            sql.and(format!("(3 - dr.health, dr.drive_key) > ({ph}::int, {pk})"));
        }
        let limit = sql.bind(q.limit.saturating_add(1));
        let text = format!(
            "SELECT {DRIVE_COLUMNS} FROM drives dr {DRIVE_NOW_IN}
             WHERE {} ORDER BY 3 - dr.health, dr.drive_key LIMIT {limit}",
            sql.filter()
        );
        let client = self.pool().get().await?;
        let rows = client.query(&text, &sql.params()).await?;
        let items: Vec<d::DriveRow> = rows.iter().map(drive_row).collect();
        Ok(page(items, q.limit, |d| {
            DriveQuery::cursor(d.health, &d.key)
        }))
    }

    /// One drive by key with `days` of samples; `None` when no report named it.
    pub async fn dashboard_drive(
        &self,
        key: &str,
        days: u32,
    ) -> Result<Option<d::DriveDetail>, StorageError> {
        let client = self.pool().get().await?;
        let Some(row) = client
            .query_opt(
                &format!(
                    "SELECT {DRIVE_COLUMNS} FROM drives dr {DRIVE_NOW_IN} WHERE dr.drive_key = $1"
                ),
                &[&key],
            )
            .await?
        else {
            return Ok(None);
        };
        let drive_id: i32 = row.get(11);
        let wwn: Option<String> = row.get(12);
        let now_in: Option<i32> = row.get(13);
        let drive = drive_row(&row);
        let placements = client
            .query(
                "SELECT p.serial, m.device_name, m.from_at, m.until_at, m.appliance_id
                 FROM drive_membership m JOIN appliances p ON p.id = m.appliance_id
                 WHERE m.drive_id = $1 ORDER BY m.from_at DESC, m.id DESC LIMIT 100",
                &[&drive_id],
            )
            .await?;
        let appliance_ids: Vec<i32> = placements.iter().map(|r| r.get(4)).collect();
        let now = Utc::now();
        let since = now - Duration::days(i64::from(days));
        let alerts_sql = format!(
            "(SELECT {ALERT_COLUMNS} FROM alerts al JOIN appliances a ON a.id = al.appliance_id
              WHERE al.subject = $1 AND al.state = 'firing' AND al.rule LIKE 'disk\\_%')
             UNION ALL
             (SELECT {ALERT_COLUMNS} FROM alerts al JOIN appliances a ON a.id = al.appliance_id
              WHERE al.appliance_id = ANY($2) AND al.subject = $1 AND al.state = 'resolved'
              ORDER BY al.id DESC LIMIT 50)"
        );
        let alerts_params: [&(dyn ToSql + Sync); 2] = [&key, &appliance_ids];
        // The drive's readings are in the bodies of the appliances it sat in, while it sat
        // there: each placement in the window reads its own span, at most BODIES_PER_DAY a day
        // of it (so at most (days + 1 + placements) × BODIES_PER_DAY bodies, placements ≤ 100).
        let conn = &client;
        let bodies = async {
            let mut bodies: Vec<StoredBody> = Vec::new();
            for p in placements.iter().rev() {
                let from: DateTime<Utc> = p.get(2);
                let until: Option<DateTime<Utc>> = p.get(3);
                let from = from.max(since);
                let to = until.unwrap_or(now + readings::ahead());
                if to <= from {
                    continue;
                }
                let appliance_id: i32 = p.get(4);
                let cap = readings::cap_for(from, to);
                bodies.extend(readings::window(conn, appliance_id, from, to, cap).await?);
            }
            Ok::<_, tokio_postgres::Error>(bodies)
        };
        let (alerts, bodies) = tokio::try_join!(client.query(&alerts_sql, &alerts_params), bodies)?;
        drop(client);
        let mut samples: Vec<DriveReading> = self
            .readings(bodies)
            .await?
            .iter()
            .filter_map(|r| r.drive(key).map(|s| DriveReading::new(r.at, s)))
            .collect();
        samples.sort_by_key(|r| r.collected_at);
        let smart = match now_in {
            Some(appliance_id) => self.newest_smart(appliance_id, key).await?,
            None => None,
        };
        let mut alerts: Vec<d::AlertRow> = alerts.iter().map(alert_row).collect();
        alerts.sort_by_key(|a| {
            (
                a.state != d::AlertState::Firing,
                a.severity.order(),
                a.started_at,
            )
        });
        Ok(Some(d::DriveDetail {
            row: drive,
            wwn,
            placements: placements
                .iter()
                .map(|r| d::Placement {
                    serial: r.get(0),
                    device_name: r.get(1),
                    from: r.get(2),
                    until: r.get(3),
                })
                .collect(),
            alerts,
            smart,
            days,
            samples: samples.iter().map(drive_point).collect(),
        }))
    }

    /// What the appliance's newest report said about drive `key`, from the kept body, with what
    /// rose since the report before it.
    async fn newest_smart(
        &self,
        appliance_id: i32,
        key: &str,
    ) -> Result<Option<d::SmartSnapshot>, StorageError> {
        let client = self.pool().get().await?;
        // The newest report and the one before it, the previous report the rules judged the
        // newest against.
        let rows = client
            .query(
                &format!(
                    "(SELECT {BODY_COLUMNS}, true FROM reports r
                      WHERE r.appliance_id = $1 AND r.report_id =
                            (SELECT last_report_id FROM appliances WHERE id = $1)
                        -- State is ordered by the receive time when the appliance's clock ran
                        -- ahead (at most a day, or the report was refused): its own time is
                        -- later.
                        AND r.collected_at BETWEEN
                            (SELECT last_collected_at FROM appliances WHERE id = $1)
                            AND (SELECT last_collected_at FROM appliances WHERE id = $1)
                                + interval '25 hours'
                      LIMIT 1)
                     UNION ALL
                     (SELECT {BODY_COLUMNS}, false FROM reports r
                      WHERE r.appliance_id = $1 AND r.collected_at <
                            (SELECT last_collected_at FROM appliances WHERE id = $1)
                      ORDER BY r.collected_at DESC LIMIT 1)"
                ),
                &[&appliance_id],
            )
            .await?;
        drop(client);
        let Some(newest) = rows.iter().find(|r| r.get::<_, bool>(4)) else {
            return Ok(None);
        };
        let newest = StoredBody::from_row(newest, 0);
        let previous = rows
            .iter()
            .find(|r| !r.get::<_, bool>(4))
            .map(|r| StoredBody::from_row(r, 0));
        self.know_dictionaries(std::slice::from_ref(&newest))
            .await?;
        let Ok(json) = self.codec().decompress(&newest.body, newest.dictionary) else {
            return Ok(None);
        };
        // The body passed the contract when it was stored; one that no longer parses (an older
        // contract) shows no SMART table rather than an error page.
        let Ok(report) = serde_json::from_str::<phonehome_schema::Report>(&json) else {
            return Ok(None);
        };
        let collected_at = report.collected_at;
        let readings_now = readings::Readings::of(&report, newest.at(), &self.settings.alerts);
        let Some(dev) = report
            .smart
            .devices
            .into_iter()
            .find(|dev| super::rows::drive_key(dev).as_deref() == Some(key))
        else {
            return Ok(None);
        };
        // What rose between the previous report and the newest: the history half of the
        // verdict, as `disk_degrading` judged it when the newest arrived (against the previous
        // report only, as the rules' kept state holds it).
        let rises = match (&previous, readings_now.drive(key)) {
            (Some(previous), Some(current)) => match self.reading(previous).await? {
                Some(before) => before
                    .drive(key)
                    .map(|p| crate::verdict::rises(p, current))
                    .unwrap_or_default(),
                None => Vec::new(),
            },
            _ => Vec::new(),
        };
        Ok(Some(smart_snapshot(
            dev,
            collected_at,
            &self.settings.alerts.disk_wearout,
            rises,
        )))
    }

    /// The fleet-wide counts (see [`FleetCounts`]); `silent_before` is the silence threshold.
    pub async fn fleet_counts(
        &self,
        silent_before: DateTime<Utc>,
    ) -> Result<FleetCounts, StorageError> {
        let now = Utc::now();
        let lifecycles = self.lifecycles().await?;
        let exempt = silence_exempt_serials(&lifecycles, now);
        let client = self.pool().get().await?;
        let appliance_params: [&(dyn ToSql + Sync); 3] = [&silent_before, &VERSION_CHARS, &exempt];
        let now_param: [&(dyn ToSql + Sync); 1] = [&now];
        let (groups, alerts, certificates, drives) = tokio::try_join!(
            client.query(
                "SELECT GROUPING(app_version, os, kernel, collector, health, silent, app_status),
                        app_version, os, kernel, collector, health, silent, app_status,
                        count(*), count(*) FILTER (WHERE health >= 2)
                 FROM (SELECT left(coalesce(app_version, ''), $2) AS app_version,
                              left(coalesce(os_pretty_name, ''), $2) AS os,
                              left(coalesce(kernel, ''), $2) AS kernel,
                              left(collector_version, $2) AS collector,
                              health,
                              last_report_at < $1 AND serial <> ALL($3::text[]) AS silent,
                              left(app_status, $2) AS app_status
                       FROM appliances) a
                 GROUP BY GROUPING SETS ((app_version), (os), (kernel), (collector), (health),
                                         (silent), (app_status))",
                &appliance_params,
            ),
            client.query(
                // A drive without a key is named by its device ("dev:/dev/sda"), the same in
                // every appliance: drives are counted per appliance.
                "SELECT rule, severity, count(*), count(DISTINCT (appliance_id, subject))
                 FROM alerts WHERE state = 'firing' GROUP BY 1, 2 ORDER BY 1, 2",
                &[],
            ),
            client.query(
                "SELECT CASE WHEN c.not_after IS NULL THEN 'unknown'
                             WHEN c.not_after <= $1 THEN 'expired'
                             WHEN c.not_after <= $1 + interval '7 days' THEN '7d'
                             WHEN c.not_after <= $1 + interval '30 days' THEN '30d'
                             WHEN c.not_after <= $1 + interval '90 days' THEN '90d'
                             WHEN c.not_after <= $1 + interval '365 days' THEN '365d'
                             ELSE 'later' END,
                        count(*)
                 FROM appliances a JOIN certificates c ON c.id = a.last_cert_id
                 GROUP BY 1",
                &now_param,
            ),
            client.query_one(
                "SELECT coalesce(sum(drive_count), 0)::bigint,
                        coalesce(sum(warning_drive_count), 0)::bigint,
                        coalesce(sum(failing_drive_count), 0)::bigint
                 FROM appliances",
                &[],
            ),
        )?;
        let mut counts = FleetCounts {
            at: Utc::now(),
            // Set by hand, so counted whether or not the appliance ever reported.
            expected_offline: i64::try_from(
                serials_in(&lifecycles, LifecycleState::ExpectedOffline, now).len(),
            )
            .unwrap_or(i64::MAX),
            retired: i64::try_from(serials_in(&lifecycles, LifecycleState::Retired, now).len())
                .unwrap_or(i64::MAX),
            ..FleetCounts::default()
        };
        let mut versions: HashMap<&'static str, Vec<VersionUse>> = HashMap::new();
        for r in &groups {
            // GROUPING() has a bit set for every column not grouped in this row's set; the
            // one column that is grouped is the one whose bit is clear.
            let grouping: i32 = r.get(0);
            let n: i64 = r.get(8);
            let alerted: i64 = r.get(9);
            let bit = |i: u32| grouping & (1 << (6 - i)) == 0;
            for (i, component) in ["app", "os", "kernel", "collector"].into_iter().enumerate() {
                if bit(i as u32) {
                    let v: String = r.get(i + 1);
                    versions.entry(component).or_default().push((v, n, alerted));
                }
            }
            if bit(4) {
                let h = Health::from_rank(r.get(5));
                counts.appliances = counts.appliances.saturating_add(n);
                counts.by_health.push((h, n));
            }
            if bit(5) && r.get::<_, bool>(6) {
                counts.silent = n;
            }
            if bit(6) {
                counts.by_status.push((r.get(7), n));
            }
        }
        counts.by_health.sort_by_key(|(h, _)| std::cmp::Reverse(*h));
        counts.by_status.sort();
        for component in ["app", "os", "kernel", "collector"] {
            let mut list = versions.remove(component).unwrap_or_default();
            list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            counts.versions.push((component, list));
        }
        for r in &alerts {
            let rule: String = r.get(0);
            let n: i64 = r.get(2);
            let subjects: i64 = r.get(3);
            if rule == "disk_failing" {
                counts.failing_drives = counts.failing_drives.saturating_add(subjects);
            }
            counts
                .alerts
                .push((rule, severity(r.get::<_, &str>(1)), n, subjects));
        }
        let (all, warning, critical): (i64, i64, i64) =
            (drives.get(0), drives.get(1), drives.get(2));
        counts.drives = vec![
            (
                crate::verdict::Level::Ok,
                all.saturating_sub(warning).saturating_sub(critical).max(0),
            ),
            (crate::verdict::Level::Warning, warning),
            (crate::verdict::Level::Critical, critical),
        ];
        for bucket in CERTIFICATE_BUCKETS {
            let n = certificates
                .iter()
                .find(|r| r.get::<_, &str>(0) == bucket)
                .map_or(0, |r| r.get::<_, i64>(1));
            counts.certificates.push((bucket, n));
        }
        Ok(counts)
    }

    /// Appliances per version per day since `since`, for the adoption charts.
    pub async fn version_adoption(
        &self,
        since: NaiveDate,
    ) -> Result<Vec<(&'static str, d::AdoptionPoint)>, StorageError> {
        let client = self.pool().get().await?;
        // Bounded: a fleet with thousands of distinct versions still answers one page.
        let rows = client
            .query(
                "SELECT day, component, left(version, 128), appliances FROM version_counts_daily
                 WHERE day >= $1 ORDER BY day DESC, component, appliances DESC LIMIT 50000",
                &[&since],
            )
            .await?;
        // Newest first above, so a bound cuts the oldest days; oldest first for the charts.
        Ok(rows
            .iter()
            .rev()
            .filter_map(|r| {
                let component = match r.get::<_, &str>(1) {
                    "app" => "app",
                    "os" => "os",
                    "kernel" => "kernel",
                    "collector" => "collector",
                    _ => return None,
                };
                Some((
                    component,
                    d::AdoptionPoint {
                        day: r.get(0),
                        version: r.get(2),
                        appliances: i64::from(r.get::<_, i32>(3)),
                    },
                ))
            })
            .collect())
    }
}

/// The drive page's SMART tables from one device of a report.
fn smart_snapshot(
    dev: phonehome_schema::SmartDevice,
    at: DateTime<Utc>,
    wear: &crate::alerts::Wearout,
    rises: Vec<crate::verdict::Reason>,
) -> d::SmartSnapshot {
    let verdict = crate::verdict::drive(&dev, wear).with(rises);
    let mut reasons = verdict.reasons;
    reasons.sort_by_key(|r| std::cmp::Reverse(r.level));
    let mut nvme = Vec::new();
    if let Some(n) = &dev.nvme {
        let mut field = |name: &str, v: Option<String>| {
            if let Some(v) = v {
                nvme.push((name.to_owned(), v));
            }
        };
        field(
            "critical warning",
            n.critical_warning.map(|w| {
                if n.critical_warnings.is_empty() {
                    format!("0x{w:02x}")
                } else {
                    let bits: Vec<String> = n
                        .critical_warnings
                        .iter()
                        .map(|b| format!("{b:?}"))
                        .collect();
                    format!("0x{w:02x} ({})", bits.join(", "))
                }
            }),
        );
        field(
            "available spare",
            n.available_spare_percent.map(|v| format!("{v} %")),
        );
        field(
            "available spare threshold",
            n.available_spare_threshold_percent
                .map(|v| format!("{v} %")),
        );
        field(
            "percentage used",
            n.percentage_used.map(|v| format!("{v} %")),
        );
        field("media errors", n.media_errors.map(|v| v.to_string()));
        field(
            "error log entries",
            n.error_log_entries.map(|v| v.to_string()),
        );
        field(
            "unsafe shutdowns",
            n.unsafe_shutdowns.map(|v| v.to_string()),
        );
        field("data units read", n.data_units_read.map(|v| v.to_string()));
        field(
            "data units written",
            n.data_units_written.map(|v| v.to_string()),
        );
        field(
            "minutes above warning temperature",
            n.warning_temperature_minutes.map(|v| v.to_string()),
        );
        field(
            "minutes above critical temperature",
            n.critical_temperature_minutes.map(|v| v.to_string()),
        );
    }
    let self_tests = dev.self_test_log.as_ref().map(|l| d::LogSummary {
        count: l.count.unwrap_or(0),
        newest: l
            .latest
            .iter()
            .map(|t| {
                format!(
                    "{}: {}{}",
                    t.kind.as_deref().unwrap_or("self-test"),
                    t.status.as_deref().unwrap_or("no status"),
                    t.lifetime_hours
                        .map(|h| format!(" at {h} power-on hours"))
                        .unwrap_or_default()
                )
            })
            .chain(
                l.error_count
                    .filter(|n| *n > 0)
                    .map(|n| format!("{n} failed self-tests in the log")),
            )
            .collect(),
    });
    let error_log = dev.error_log.as_ref().map(|l| d::LogSummary {
        count: l.count.unwrap_or(0),
        newest: l
            .latest_lifetime_hours
            .map(|h| format!("newest error at {h} power-on hours"))
            .into_iter()
            .collect(),
    });
    d::SmartSnapshot {
        collected_at: Some(at),
        verdict: verdict.level.as_str().to_owned(),
        reasons: reasons
            .into_iter()
            .map(|r| (r.level.as_str().to_owned(), r.text))
            .collect(),
        health_passed: dev.health_passed,
        temperature_celsius: dev.temperature_celsius,
        power_on_hours: dev.power_on_hours,
        attributes: dev
            .attributes
            .into_iter()
            .map(|a| d::Attribute {
                id: a.id,
                name: a.name,
                value: a.value.map(u16::from),
                worst: a.worst.map(u16::from),
                threshold: a.thresh.map(u16::from),
                raw: a.raw_string.or_else(|| a.raw.map(|r| r.to_string())),
                when_failed: a.when_failed,
            })
            .collect(),
        nvme,
        self_tests,
        error_log,
    }
}
