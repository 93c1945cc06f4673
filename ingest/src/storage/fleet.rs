//! The maintenance timestamp for `/metrics` (the fleet-wide counts are `dashboard::FleetCounts`),
//! and the periodic `appliance_silent` evaluation, which cannot wait for a report.

// Numbers from reports meet arithmetic here: every sum, difference and product must say
// what happens at the edge (checked, saturating), never panic or wrap.
#![warn(clippy::arithmetic_side_effects)]

use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};

use super::{Storage, StorageError};

/// The silence threshold `hours` before `now`: an appliance whose last report is older is
/// silent. Whole minutes (rounded down), because `appliance_seen` keeps the minute of the last
/// report (migration 18): against a whole minute, the instant and its minute always give the
/// same verdict, so the alert, the list's filter, its badge and the fleet counts agree.
pub fn silence_threshold(now: DateTime<Utc>, hours: u32) -> DateTime<Utc> {
    let exact = now
        .checked_sub_signed(TimeDelta::hours(i64::from(hours)))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    exact.duration_trunc(TimeDelta::minutes(1)).unwrap_or(exact)
}

/// The minute `appliance_seen` keeps for a last report at `at` (`date_trunc('minute', at,
/// 'UTC')`): the appliance list's cursor.
pub fn reported_minute(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(TimeDelta::minutes(1)).unwrap_or(at)
}

/// Serialises the silence check across replicas.
const SILENCE_LOCK: i64 = 8_424_200_005;

impl Storage {
    /// Unix time of the newest successful maintenance run, for `/metrics`.
    pub async fn maintenance_last_success(&self) -> Result<Option<f64>, StorageError> {
        let client = self.pool().get().await?;
        Ok(client
            .query_one(
                "SELECT extract(epoch FROM max(finished_at))::float8 FROM maintenance_runs
                 WHERE error IS NULL AND finished_at IS NOT NULL",
                &[],
            )
            .await?
            .get(0))
    }

    /// Opens an `appliance_silent` alert for every appliance quiet for longer than `hours`,
    /// except those whose lifecycle exempts them (expected offline until a date ahead,
    /// retired: `lifecycle::Lifecycle::silence_exempt`)
    /// (one per appliance: the partial unique index on firing fingerprints makes a second
    /// evaluation write nothing). A report resolves it, in the report's own batch. Returns how
    /// many were opened; `None` when another replica holds the check.
    pub async fn evaluate_silence(&self, hours: u32) -> Result<Option<u64>, StorageError> {
        let Some(lock) = self.try_lock(SILENCE_LOCK).await? else {
            return Ok(None);
        };
        let result = self.open_silence_alerts(hours).await;
        let released = lock.release().await;
        let opened = result?;
        released?;
        Ok(Some(opened))
    }

    /// [`Storage::evaluate_silence`]'s work, under its lock.
    async fn open_silence_alerts(&self, hours: u32) -> Result<u64, StorageError> {
        // Judged in Rust by the lifecycle's own rules; the table holds what operators set by
        // hand, small next to the fleet.
        let exempt =
            crate::lifecycle::silence_exempt_serials(&self.lifecycles().await?, chrono::Utc::now());
        let client = self.pool().get().await?;
        Ok(client
            .execute(
                // The alert's trigger sets the appliance's health, so the quiet appliances are
                // locked first, in serial order as report batches lock them: the two queue
                // instead of deadlocking. Those already marked silent are not locked again.
                "WITH quiet AS (
                     SELECT a.id, a.serial, a.last_report_at FROM appliance_seen s
                     JOIN appliances a ON a.id = s.appliance_id
                     WHERE s.reported_minute < $3
                       AND a.serial <> ALL($2::text[])
                       AND NOT EXISTS (
                           SELECT 1 FROM alerts al
                           WHERE al.appliance_id = a.id AND al.state = 'firing'
                             AND al.rule = 'appliance_silent')
                       -- Muted, or its silence acknowledged (until it reports again).
                       AND NOT EXISTS (
                           SELECT 1 FROM alert_mutes m
                           WHERE m.serial = a.serial AND m.until > now()
                             AND (m.rule IS NULL OR m.rule = 'appliance_silent'))
                       AND NOT EXISTS (
                           SELECT 1 FROM alert_acks k
                           WHERE k.appliance_id = a.id AND k.rule = 'appliance_silent')
                     ORDER BY a.serial
                     FOR UPDATE OF a)
                 INSERT INTO alerts (fingerprint, rule, appliance_id, subject, severity, state,
                     started_at, value, summary, changed_at)
                 SELECT 'appliance_silent/' || a.serial || '/', 'appliance_silent', a.id, '',
                        'warning', 'firing', now(),
                        'last report ' || to_char(a.last_report_at AT TIME ZONE 'UTC',
                                                  'YYYY-MM-DD HH24:MI') || ' UTC',
                        a.serial || ' has sent no report for '
                            || floor(extract(epoch FROM now() - a.last_report_at) / 3600)::bigint
                            || ' hours (threshold ' || $1::int || ' h)',
                        now()
                 FROM quiet a
                 ON CONFLICT (fingerprint) WHERE state = 'firing' DO NOTHING",
                &[
                    &i32::try_from(hours).unwrap_or(i32::MAX),
                    &exempt,
                    &silence_threshold(chrono::Utc::now(), hours),
                ],
            )
            .await?)
    }
}

/// Checks for silent appliances every `every` until the process ends.
pub fn spawn_silence_watch(
    storage: Storage,
    hours: u32,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(silence_watch(storage, hours, every))
}

/// The loop [`spawn_silence_watch`] runs, for a supervisor to run and restart.
pub async fn silence_watch(storage: Storage, hours: u32, every: Duration) {
    {
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
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeDelta, TimeZone, Utc};

    use super::{reported_minute, silence_threshold};

    #[test]
    fn the_instant_and_its_minute_agree_on_silence() {
        let now = Utc
            .with_ymd_and_hms(2026, 12, 7, 15, 30, 42)
            .single()
            .expect("a valid time")
            + TimeDelta::microseconds(123_456);
        let threshold = silence_threshold(now, 24);
        assert_eq!(
            threshold,
            Utc.with_ymd_and_hms(2026, 12, 6, 15, 30, 0)
                .single()
                .expect("a valid time")
        );
        for us in [
            -61_000_000,
            -60_000_001,
            -60_000_000,
            -1,
            0,
            1,
            59_999_999,
            60_000_000,
        ] {
            let at = threshold + TimeDelta::microseconds(us);
            assert_eq!(at < threshold, reported_minute(at) < threshold, "{at}");
        }
        // No panic at the edges of time.
        let _ = silence_threshold(chrono::DateTime::<Utc>::MIN_UTC, u32::MAX);
    }
}
