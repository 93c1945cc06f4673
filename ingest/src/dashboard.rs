//! The dashboard's source of truth: the storage behind [`FleetSource`], with the fleet-wide
//! counts (one scan of every appliance) computed at most every `counts_max_age` and shared with
//! `/metrics`, so neither a busy dashboard nor a scraping Prometheus scans the fleet per view.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::Utc;
use phonehome_dashboard as d;
use phonehome_dashboard::query::{AlertQuery, ApplianceQuery, DriveQuery};
use phonehome_dashboard::{FleetSource, Page};

use crate::alerts::{RULES, version_less};
use crate::storage::dashboard::{FleetCounts, VersionUse};
use crate::storage::{Storage, StorageError};

/// How old the fleet-wide counts may be when nothing is configured.
pub const DEFAULT_COUNTS_MAX_AGE: Duration = Duration::from_secs(10);
/// How old counts may be and still be shown (with a refresh under way) rather than waited for.
const STALE_SERVED: Duration = Duration::from_secs(60);
/// Versions listed per component; the rest are summed up in the totals only.
const VERSIONS_SHOWN: usize = 50;
/// Alerts in the summary's "needs attention" list.
const ATTENTION: i64 = 15;

/// The dashboard's [`FleetSource`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct DashboardSource {
    storage: Storage,
    counts: Arc<CountsCache>,
}

#[derive(Debug)]
struct CountsCache {
    max_age: Duration,
    current: RwLock<Option<Arc<FleetCounts>>>,
    /// Held while the counts are being computed: one computation at a time, however many
    /// views (and scrapes) arrive meanwhile.
    computing: Arc<tokio::sync::Mutex<()>>,
}

impl DashboardSource {
    pub fn new(storage: Storage, counts_max_age: Duration) -> Self {
        DashboardSource {
            storage,
            counts: Arc::new(CountsCache {
                max_age: counts_max_age,
                current: RwLock::new(None),
                computing: Arc::new(tokio::sync::Mutex::new(())),
            }),
        }
    }

    fn silent_before(&self) -> chrono::DateTime<Utc> {
        let hours = self.storage.settings().alerts.appliance_silent.hours;
        crate::storage::fleet::silence_threshold(Utc::now(), hours)
    }

    fn cached(&self) -> Option<Arc<FleetCounts>> {
        match self.counts.current.read() {
            Ok(c) => c.clone(),
            // A writer panicked mid-assignment of an Arc: the value is still whole.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn fresh(&self, c: &FleetCounts) -> bool {
        let age = (Utc::now() - c.at).to_std().unwrap_or(Duration::ZERO);
        age < self.counts.max_age
    }

    /// The fleet-wide counts, at most `counts_max_age` old, or a little older while a refresh
    /// runs: a stale value younger than [`STALE_SERVED`] is answered at once and refreshed in
    /// the background (so a scrape or a view never waits for the scan once the counts exist);
    /// an older one, or none, is computed while the caller waits. One computation at a time.
    pub async fn fleet_counts(&self) -> Result<Arc<FleetCounts>, StorageError> {
        let cached = self.cached();
        if let Some(c) = cached.as_ref().filter(|c| self.fresh(c)) {
            return Ok(c.clone());
        }
        if let Some(c) = cached.filter(|c| self.servable(c)) {
            if let Ok(guard) = self.counts.computing.clone().try_lock_owned() {
                let this = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = this.compute().await {
                        // The next view tries again; until then the stale counts stand.
                        tracing::warn!(error = %e, "refreshing the fleet counts failed");
                    }
                    drop(guard);
                });
            }
            return Ok(c);
        }
        let _computing = self.counts.computing.lock().await;
        if let Some(c) = self.cached().filter(|c| self.fresh(c)) {
            return Ok(c);
        }
        self.compute().await
    }

    /// Scans the fleet and keeps the result; the caller holds `computing`.
    async fn compute(&self) -> Result<Arc<FleetCounts>, StorageError> {
        let started = std::time::Instant::now();
        let counts = Arc::new(self.storage.fleet_counts(self.silent_before()).await?);
        tracing::debug!(
            appliances = counts.appliances,
            ms = started.elapsed().as_millis() as u64,
            "fleet counts computed"
        );
        match self.counts.current.write() {
            Ok(mut c) => *c = Some(counts.clone()),
            Err(poisoned) => *poisoned.into_inner() = Some(counts.clone()),
        }
        Ok(counts)
    }

    /// Stale counts that may still be shown while fresh ones are computed.
    fn servable(&self, c: &FleetCounts) -> bool {
        if self.counts.max_age.is_zero() {
            return false;
        }
        let age = (Utc::now() - c.at).to_std().unwrap_or(Duration::ZERO);
        age < STALE_SERVED.max(self.counts.max_age.saturating_mul(6))
    }

    fn minimum_app_version(&self) -> Option<String> {
        self.storage
            .settings()
            .alerts
            .app_outdated
            .minimum_version
            .clone()
    }

    fn version_counts(&self, list: &[VersionUse], app: bool) -> Vec<d::VersionCount> {
        let minimum = self.minimum_app_version();
        list.iter()
            .take(VERSIONS_SHOWN)
            .map(|(version, n, alerted)| d::VersionCount {
                version: version.clone(),
                appliances: *n,
                with_alerts: *alerted,
                below_minimum: app && below(minimum.as_deref(), version),
            })
            .collect()
    }
}

/// A version below the minimum; an unknown version (empty) is not judged.
fn below(minimum: Option<&str>, version: &str) -> bool {
    minimum.is_some_and(|m| !version.is_empty() && version_less(version, m))
}

impl FleetSource for DashboardSource {
    type Error = StorageError;

    fn rules(&self) -> &'static [&'static str] {
        &RULES
    }

    async fn summary(&self) -> Result<d::Summary, StorageError> {
        let counts = self.fleet_counts().await?;
        let attention = self
            .storage
            .dashboard_alerts(&AlertQuery {
                limit: ATTENTION,
                ..AlertQuery::default()
            })
            .await?;
        let by_health = d::Health::ALL
            .into_iter()
            .map(|h| {
                let n = counts
                    .by_health
                    .iter()
                    .filter(|(x, _)| *x == h)
                    .map(|(_, n)| *n)
                    .sum();
                (h, n)
            })
            .collect();
        let alerts_by_severity = d::Severity::ALL
            .into_iter()
            .map(|s| {
                let n = counts
                    .alerts
                    .iter()
                    .filter(|a| a.1 == s)
                    .fold(0i64, |sum, a| sum.saturating_add(a.2));
                (s, n)
            })
            .collect();
        let mut alerts_by_rule: Vec<d::RuleCount> = counts
            .alerts
            .iter()
            .map(|(rule, severity, n, _)| d::RuleCount {
                rule: rule.clone(),
                severity: *severity,
                firing: *n,
            })
            .collect();
        alerts_by_rule.sort_by_key(|r| (r.severity.order(), std::cmp::Reverse(r.firing)));
        let degrading_drives = counts
            .alerts
            .iter()
            .filter(|a| a.0 == "disk_degrading")
            .fold(0i64, |sum, a| sum.saturating_add(a.3));
        let minimum = self.minimum_app_version();
        let app = counts
            .versions
            .iter()
            .find(|(c, _)| *c == "app")
            .map(|(_, l)| l.as_slice())
            .unwrap_or_default();
        let below_minimum = app
            .iter()
            .filter(|(v, _, _)| below(minimum.as_deref(), v))
            .fold(0i64, |sum, (_, n, _)| sum.saturating_add(*n));
        Ok(d::Summary {
            as_of: counts.at,
            appliances: counts.appliances,
            by_health,
            silent: counts.silent,
            silent_hours: self.storage.settings().alerts.appliance_silent.hours,
            expected_offline: counts.expected_offline,
            retired: counts.retired,
            alerts_by_severity,
            alerts_by_rule,
            failing_drives: counts.failing_drives,
            degrading_drives,
            minimum_app_version: minimum,
            below_minimum,
            app_versions: self.version_counts(app, true),
            attention: attention.items,
        })
    }

    async fn appliances(&self, q: &ApplianceQuery) -> Result<Page<d::ApplianceRow>, StorageError> {
        let below: Option<Vec<String>> = if q.below_minimum {
            let minimum = self.minimum_app_version();
            let counts = self.fleet_counts().await?;
            Some(
                counts
                    .versions
                    .iter()
                    .filter(|(c, _)| *c == "app")
                    .flat_map(|(_, l)| l.iter())
                    .filter(|(v, _, _)| below(minimum.as_deref(), v))
                    .map(|(v, _, _)| v.clone())
                    .collect(),
            )
        } else {
            None
        };
        let lifecycles = self.storage.lifecycles().await?;
        self.storage
            .dashboard_appliances(q, self.silent_before(), below.as_deref(), &lifecycles)
            .await
    }

    async fn audit(&self, q: &d::AuditQuery) -> Result<Page<d::AuditRow>, StorageError> {
        // A target PostgreSQL could not hold (a NUL) matches nothing.
        if q.target.as_deref().is_some_and(|t| t.contains('\0')) {
            return Ok(Page {
                items: Vec::new(),
                next: None,
            });
        }
        let limit = crate::storage::admin::AUDIT_PAGE;
        let rows = self
            .storage
            .audit_log(q.target.as_deref(), q.before, limit.saturating_add(1))
            .await?;
        let mut items = rows;
        let next = if items.len() > usize::try_from(limit).unwrap_or(usize::MAX) {
            items.truncate(usize::try_from(limit).unwrap_or(0));
            items.last().map(|r| r.id.to_string())
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn alerts(&self, q: &AlertQuery) -> Result<Page<d::AlertRow>, StorageError> {
        self.storage.dashboard_alerts(q).await
    }

    async fn drives(&self, q: &DriveQuery) -> Result<Page<d::DriveRow>, StorageError> {
        self.storage.dashboard_drives(q).await
    }

    async fn drive(&self, key: &str, days: u32) -> Result<Option<d::DriveDetail>, StorageError> {
        // A key PostgreSQL could not hold (a NUL) names no drive.
        if key.contains('\0') {
            return Ok(None);
        }
        self.storage.dashboard_drive(key, days).await
    }

    async fn reliability(
        &self,
    ) -> Result<Option<phonehome_dashboard::reliability::Reliability>, StorageError> {
        self.storage.reliability().await
    }

    async fn versions(&self, days: u32) -> Result<d::Versions, StorageError> {
        let counts = self.fleet_counts().await?;
        let since = (Utc::now() - chrono::Duration::days(i64::from(days))).date_naive();
        let adoption = self.storage.version_adoption(since).await?;
        let components = counts
            .versions
            .iter()
            .map(|(component, list)| {
                let versions = self.version_counts(list, *component == "app");
                // The chart follows the versions listed; the long tail would be noise.
                let charted: Vec<&str> = versions
                    .iter()
                    .take(8)
                    .map(|v| v.version.as_str())
                    .collect();
                d::ComponentVersions {
                    component: (*component).to_owned(),
                    adoption: adoption
                        .iter()
                        .filter(|(c, p)| c == component && charted.contains(&p.version.as_str()))
                        .map(|(_, p)| p.clone())
                        .collect(),
                    versions,
                }
            })
            .collect();
        Ok(d::Versions {
            as_of: counts.at,
            minimum_app_version: self.minimum_app_version(),
            components,
        })
    }

    async fn appliance(
        &self,
        serial: &str,
        days: u32,
    ) -> Result<Option<d::ApplianceView>, StorageError> {
        // A path segment that is no serial (a NUL, a control character) names no appliance:
        // a 404, not a query PostgreSQL would refuse.
        if phonehome_schema::Serial::parse(serial).is_err() {
            return Ok(None);
        }
        let Some(detail) = self.storage.appliance_detail(serial, days).await? else {
            return Ok(None);
        };
        let mut view = detail.into_view();
        let (lifecycle, audit, certificate, labels, (acks, mutes)) = tokio::try_join!(
            self.storage.lifecycle(serial),
            self.storage
                .audit_log(Some(serial), None, APPLIANCE_AUDIT_ROWS),
            self.storage.appliance_certificate(serial),
            self.storage.labels(serial),
            self.storage.acks_and_mutes(serial),
        )?;
        view.acks = acks;
        view.mutes = mutes;
        view.certificate = certificate;
        view.labels = labels;
        if let Some(l) = lifecycle {
            let state = l.effective(Utc::now());
            view.row.lifecycle = state.as_str().to_owned();
            // Nobody waits for an appliance expected offline or retired.
            view.row.silent &= state == crate::lifecycle::State::Active;
            view.lifecycle_detail = Some(d::LifecycleView {
                state: l.state.as_str().to_owned(),
                until: l.until,
                note: l.note,
                changed_at: l.changed_at,
                changed_by: l.changed_by,
            });
        }
        view.audit = audit;
        Ok(Some(view))
    }
}

/// Audit rows on an appliance's page; the rest are on `/audit?target=`.
const APPLIANCE_AUDIT_ROWS: i64 = 20;
