//! Fleet-wide numbers for `/metrics`, read from the current-state and alert tables (never from
//! history), and the periodic `appliance_silent` evaluation, which cannot wait for a report.

use std::time::Duration;

use super::{Storage, StorageError, session_unlock, try_session_lock};

/// Serialises the silence check across replicas.
const SILENCE_LOCK: i64 = 8_424_200_005;

/// At most this many per-alert series are exported; past it the fleet-level gauges still count
/// everything, and the API lists the rest.
pub const MAX_ALERT_SERIES: i64 = 10_000;

/// What `/metrics` says about the fleet.
#[derive(Debug, Clone, Default)]
pub struct FleetSnapshot {
    pub appliances: i64,
    pub by_status: Vec<(String, i64)>,
    pub by_app_version: Vec<(String, i64)>,
    pub silent: i64,
    pub failing_disks: i64,
    /// (rule, severity, count)
    pub alerts_firing: Vec<(String, String, i64)>,
    /// (rule, serial, subject, severity), one per firing alert.
    pub firing: Vec<(String, String, String, String)>,
    /// Unix time of the newest successful maintenance run.
    pub maintenance_last_success: Option<f64>,
}

impl Storage {
    /// Reads the fleet's numbers; `silent_hours` is the `appliance_silent` threshold.
    pub async fn fleet_snapshot(&self, silent_hours: u32) -> Result<FleetSnapshot, StorageError> {
        let client = self.pool().get().await?;
        let hours = f64::from(silent_hours);
        let hours_param: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&hours];
        let limit_param: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&MAX_ALERT_SERIES];
        let (totals, status, versions, alerts, firing, maintenance) = tokio::try_join!(
            client.query_one(
                "SELECT count(*),
                        count(*) FILTER (WHERE last_report_at < now() - make_interval(secs => $1::float8 * 3600)),
                        coalesce(sum(failing_drive_count), 0)::bigint
                 FROM appliances",
                &hours_param,
            ),
            client.query(
                "SELECT app_status, count(*) FROM appliances GROUP BY 1 ORDER BY 1",
                &[],
            ),
            client.query(
                "SELECT coalesce(app_version, ''), count(*) FROM appliances GROUP BY 1 ORDER BY 1",
                &[],
            ),
            client.query(
                "SELECT rule, severity, count(*) FROM alerts WHERE state = 'firing'
                 GROUP BY 1, 2 ORDER BY 1, 2",
                &[],
            ),
            client.query(
                "SELECT a.rule, p.serial, a.subject, a.severity FROM alerts a
                 JOIN appliances p ON p.id = a.appliance_id
                 WHERE a.state = 'firing' ORDER BY a.id LIMIT $1",
                &limit_param,
            ),
            client.query_one(
                "SELECT extract(epoch FROM max(finished_at))::float8 FROM maintenance_runs
                 WHERE error IS NULL AND finished_at IS NOT NULL",
                &[],
            ),
        )?;
        Ok(FleetSnapshot {
            appliances: totals.get(0),
            silent: totals.get(1),
            failing_disks: totals.get(2),
            by_status: status.iter().map(|r| (r.get(0), r.get(1))).collect(),
            by_app_version: versions.iter().map(|r| (r.get(0), r.get(1))).collect(),
            alerts_firing: alerts
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect(),
            firing: firing
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
                .collect(),
            maintenance_last_success: maintenance.get(0),
        })
    }

    /// Opens an `appliance_silent` alert for every appliance quiet for longer than `hours`
    /// (one per appliance: the partial unique index on firing fingerprints makes a second
    /// evaluation write nothing). A report resolves it, in the report's own batch. Returns how
    /// many were opened; `None` when another replica holds the check.
    pub async fn evaluate_silence(&self, hours: u32) -> Result<Option<u64>, StorageError> {
        let client = self.pool().get().await?;
        if !try_session_lock(&client, SILENCE_LOCK).await? {
            return Ok(None);
        }
        let result = client
            .execute(
                "INSERT INTO alerts (fingerprint, rule, appliance_id, subject, severity, state,
                     started_at, value, summary, changed_at)
                 SELECT 'appliance_silent/' || a.serial || '/', 'appliance_silent', a.id, '',
                        'warning', 'firing', now(),
                        'last report ' || to_char(a.last_report_at AT TIME ZONE 'UTC',
                                                  'YYYY-MM-DD HH24:MI') || ' UTC',
                        a.serial || ' has sent no report for '
                            || floor(extract(epoch FROM now() - a.last_report_at) / 3600)::bigint
                            || ' hours (threshold ' || $1::int || ' h)',
                        now()
                 FROM appliances a
                 WHERE a.last_report_at < now() - make_interval(hours => $1::int)
                 ON CONFLICT (fingerprint) WHERE state = 'firing' DO NOTHING",
                &[&i32::try_from(hours).unwrap_or(i32::MAX)],
            )
            .await;
        session_unlock(&client, SILENCE_LOCK).await?;
        Ok(Some(result?))
    }
}

/// Checks for silent appliances every `every` until the process ends.
pub fn spawn_silence_watch(
    storage: Storage,
    hours: u32,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match storage.evaluate_silence(hours).await {
                Ok(Some(n)) if n > 0 => {
                    tracing::warn!(appliances = n, hours, "appliances went silent")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "silence check failed; next try soon"),
            }
            tokio::time::sleep(every).await;
        }
    })
}
