//! The ingest's own Prometheus metrics, registered in one registry that `/metrics` renders.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::storage::dashboard::FleetCounts;

/// App versions exported as their own series; the rest are summed under `version="(other versions)"`,
/// so a fleet with thousands of builds (or hostile version strings) keeps `/metrics` small.
const VERSION_SERIES: usize = 20;

/// Every metric the ingest exports about itself.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Reports by outcome: stored, duplicate, or the rejection reason.
    pub reports: IntCounterVec,
    /// Bytes of report bodies received, before decompression.
    pub report_bytes: IntCounter,
    /// Failed mTLS handshakes (no certificate, unknown CA, timeouts, garbage).
    pub handshake_failures: IntCounter,
    /// Verified certificates that nonetheless name no usable appliance, and serial mismatches.
    pub identity_failures: IntCounterVec,
    /// Time to commit one report.
    pub db_seconds: Histogram,
    /// Reports being processed right now.
    pub in_flight: IntGauge,
    /// Appliances that have ever reported (set at scrape time from the current-state table).
    pub appliances: IntGauge,
    /// The configured `max_in_flight`, so that saturation is a ratio a rule can watch.
    pub max_in_flight: IntGauge,
    /// Fleet gauges, set at scrape time.
    pub appliances_by_status: IntGaugeVec,
    pub appliances_by_app_version: IntGaugeVec,
    pub appliances_silent: IntGauge,
    /// Appliances by lifecycle state an operator set (expected_offline, retired).
    pub appliances_by_lifecycle: IntGaugeVec,
    pub appliance_certificates: IntGaugeVec,
    pub disks_failing: IntGauge,
    pub drives_by_verdict: IntGaugeVec,
    pub alerts_firing: IntGaugeVec,
    /// Appliances by their worst firing severity. Nothing here is per appliance: a fleet of
    /// 100,000 has the same series as a fleet of ten (per-appliance alerts go to Alertmanager).
    pub appliances_by_health: IntGaugeVec,
    pub maintenance_last_success: Gauge,
    /// Reports delivered again under a known id with a different body (the first is kept).
    pub duplicate_body_differs: IntCounter,
    /// Batch commits that panicked (a bug a report triggers); set at scrape time.
    pub batch_panics: IntCounter,
    /// 1 while every write fails for a reason not the report's (see `/readyz`).
    pub writes_failing: IntGauge,
    /// 1 while the database the dashboard reads from (the read database, else the primary)
    /// answers.
    pub read_database_up: IntGauge,
    /// Supervised background tasks: restarts after a panic, and whether each runs now.
    pub task_restarts: IntCounterVec,
    pub task_up: IntGaugeVec,
    /// What the two listeners refuse or close, and how full they are.
    pub listeners: ListenerMetrics,
    /// Enrolments, renewals, revocation refusals and TLS reloads.
    pub identity: IdentityMetrics,
}

/// The listeners' bounds at work (issue 13, findings 2 and 4). A report refused for its pace
/// or its appliance's share is counted in `phonehome_reports_total` (`timeout`, `over_share`).
#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    /// Open connections, by listener (`reports`, `ops`).
    pub open: IntGaugeVec,
    /// Connections left waiting in the kernel's backlog because every slot was taken, by
    /// listener: a count of the times the accept loop found itself at its cap.
    pub at_capacity: IntCounterVec,
    /// Operations requests refused, by reason (`host`: a Host it does not answer for).
    pub ops_refused: IntCounterVec,
    /// Operations connections closed by the server, by reason (`header_timeout`: no complete
    /// request headers in time, idle keep-alive included; `lifetime`).
    pub ops_closed: IntCounterVec,
}

impl ListenerMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let open = IntGaugeVec::new(
            Opts::new(
                "phonehome_connections_open",
                "Connections open now, by listener (reports, ops).",
            ),
            &["listener"],
        )?;
        let at_capacity = IntCounterVec::new(
            Opts::new(
                "phonehome_listener_at_capacity_total",
                "Times a listener had every connection slot taken (max_connections, \
                 ops_max_connections), so new connections waited in the kernel's backlog.",
            ),
            &["listener"],
        )?;
        let ops_refused = IntCounterVec::new(
            Opts::new(
                "phonehome_ops_requests_refused_total",
                "Requests the operations listener refused, by reason (host: 421 for a Host \
                 it does not answer for).",
            ),
            &["reason"],
        )?;
        let ops_closed = IntCounterVec::new(
            Opts::new(
                "phonehome_ops_connections_closed_total",
                "Operations connections the server closed, by reason (header_timeout: no \
                 complete request headers in ops_header_timeout_secs, idle ones included; \
                 lifetime: open for ops_connection_lifetime_secs).",
            ),
            &["reason"],
        )?;
        // Every label value is known: the series exist from the start, at 0.
        for listener in ["reports", "ops"] {
            open.with_label_values(&[listener]).set(0);
            at_capacity.with_label_values(&[listener]).reset();
        }
        ops_refused.with_label_values(&["host"]).reset();
        for reason in ["header_timeout", "lifetime"] {
            ops_closed.with_label_values(&[reason]).reset();
        }
        registry.register(Box::new(open.clone()))?;
        registry.register(Box::new(at_capacity.clone()))?;
        registry.register(Box::new(ops_refused.clone()))?;
        registry.register(Box::new(ops_closed.clone()))?;
        Ok(ListenerMetrics {
            open,
            at_capacity,
            ops_refused,
            ops_closed,
        })
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let reports = IntCounterVec::new(
            Opts::new("phonehome_reports_total", "Reports received, by result."),
            &["result"],
        )
        .expect("static metric definition");
        let report_bytes = IntCounter::new(
            "phonehome_report_received_bytes_total",
            "Bytes of report bodies received, as sent (before decompression).",
        )
        .expect("static metric definition");
        let handshake_failures = IntCounter::new(
            "phonehome_tls_handshake_failures_total",
            "TLS handshakes on the report listener that failed.",
        )
        .expect("static metric definition");
        let identity_failures = IntCounterVec::new(
            Opts::new(
                "phonehome_identity_failures_total",
                "Requests refused because the client certificate does not identify the appliance the report speaks for, by reason.",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        let db_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "phonehome_db_insert_duration_seconds",
                "Time to commit one report to PostgreSQL.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )
        .expect("static metric definition");
        let in_flight = IntGauge::new(
            "phonehome_reports_in_flight",
            "Reports being received or stored right now.",
        )
        .expect("static metric definition");
        let appliances = IntGauge::new(
            "phonehome_appliances",
            "Appliances that have ever delivered a report.",
        )
        .expect("static metric definition");
        let gauge =
            |name: &str, help: &str| IntGauge::new(name, help).expect("static metric definition");
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition")
        };
        let max_in_flight = gauge(
            "phonehome_max_in_flight",
            "Reports that may be received or stored at once (max_in_flight); past it, 503.",
        );
        let appliances_by_status = gauge_vec(
            "phonehome_appliances_by_status",
            "Appliances by the application status of their newest report.",
            &["status"],
        );
        let appliances_by_app_version = gauge_vec(
            "phonehome_appliances_by_app_version",
            "Appliances by the application version of their newest report ('' when unknown).",
            &["version"],
        );
        let appliances_silent = gauge(
            "phonehome_appliances_silent",
            "Appliances with no report for longer than the appliance_silent threshold.",
        );
        let appliances_by_lifecycle = gauge_vec(
            "phonehome_appliances_by_lifecycle",
            "Appliances an operator set expected_offline (date ahead) or retired.",
            &["state"],
        );
        let appliance_certificates = gauge_vec(
            "phonehome_appliance_certificates",
            "Appliances by when the certificate of their newest report ends: expired, within 7d, \
             30d, 90d, 365d (each not within the one before), later, or unknown (seen before the \
             ingest kept certificate ends).",
            &["expires_within"],
        );
        let disks_failing = gauge(
            "phonehome_disks_failing",
            "Drives named by a firing disk_failing alert (the ingest's verdict).",
        );
        let drives_by_verdict = gauge_vec(
            "phonehome_drives",
            "Drives in the appliances' newest reports by the ingest's verdict: ok, warning \
             (wearing out, a count that rose since the previous report, a failed self-test), \
             critical (failing).",
            &["verdict"],
        );
        let alerts_firing = gauge_vec(
            "phonehome_alerts_firing",
            "Firing alerts by rule and severity.",
            &["rule", "severity"],
        );
        let appliances_by_health = gauge_vec(
            "phonehome_appliances_by_health",
            "Appliances by the worst severity among their firing alerts (ok: none).",
            &["health"],
        );
        let maintenance_last_success = Gauge::new(
            "phonehome_maintenance_last_success_timestamp_seconds",
            "Unix time of the newest successful maintenance run, on any replica.",
        )
        .expect("static metric definition");
        let duplicate_body_differs = IntCounter::new(
            "phonehome_duplicate_body_differs_total",
            "Reports delivered again under a report_id already stored, with a different body; \
             the first one is kept.",
        )
        .expect("static metric definition");
        let batch_panics = IntCounter::new(
            "phonehome_batch_panics_total",
            "Batch commits that panicked; their reports were retried one by one and the one that \
             panicked again refused with 422.",
        )
        .expect("static metric definition");
        let writes_failing = IntGauge::new(
            "phonehome_writes_failing",
            "1 while every recent write failed for a reason other than the report (database \
             out of space, read-only, unreachable).",
        )
        .expect("static metric definition");
        let read_database_up = IntGauge::new(
            "phonehome_read_database_up",
            "1 while the database the dashboard, the read API and the fleet gauges read from \
             answers (read_database_url, else the primary); 0 while they answer 503.",
        )
        .expect("static metric definition");
        let task_restarts = IntCounterVec::new(
            Opts::new(
                "phonehome_task_restarts_total",
                "Background tasks restarted after a panic, by task.",
            ),
            &["task"],
        )
        .expect("static metric definition");
        let task_up = IntGaugeVec::new(
            Opts::new(
                "phonehome_task_up",
                "1 while a supervised background task runs, by task.",
            ),
            &["task"],
        )
        .expect("static metric definition");
        for c in [
            Box::new(duplicate_body_differs.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(batch_panics.clone()),
            Box::new(writes_failing.clone()),
            Box::new(read_database_up.clone()),
            Box::new(task_restarts.clone()),
            Box::new(task_up.clone()),
            Box::new(max_in_flight.clone()),
            Box::new(appliances_by_status.clone()),
            Box::new(appliances_by_app_version.clone()),
            Box::new(appliances_silent.clone()),
            Box::new(appliances_by_lifecycle.clone()),
            Box::new(appliance_certificates.clone()),
            Box::new(disks_failing.clone()),
            Box::new(drives_by_verdict.clone()),
            Box::new(alerts_firing.clone()),
            Box::new(appliances_by_health.clone()),
            Box::new(maintenance_last_success.clone()),
            Box::new(reports.clone()),
            Box::new(report_bytes.clone()),
            Box::new(handshake_failures.clone()),
            Box::new(identity_failures.clone()),
            Box::new(db_seconds.clone()),
            Box::new(in_flight.clone()),
            Box::new(appliances.clone()),
        ] {
            registry.register(c).expect("metric names are distinct");
        }
        crate::alertmanager::register(&registry).expect("metric names are distinct");
        let listeners = ListenerMetrics::new(&registry).expect("metric names are distinct");
        let identity = IdentityMetrics::new(&registry).expect("metric names are distinct");
        Metrics {
            registry,
            reports,
            report_bytes,
            handshake_failures,
            identity_failures,
            db_seconds,
            in_flight,
            appliances,
            max_in_flight,
            appliances_by_status,
            appliances_by_app_version,
            appliances_silent,
            appliances_by_lifecycle,
            appliance_certificates,
            disks_failing,
            drives_by_verdict,
            alerts_firing,
            appliances_by_health,
            maintenance_last_success,
            duplicate_body_differs,
            batch_panics,
            writes_failing,
            read_database_up,
            task_restarts,
            task_up,
            listeners,
            identity,
        }
    }

    /// Brings the health series up to date: counters only ever move forward.
    pub fn set_health(
        &self,
        write: &crate::storage::writer::WriteStatus,
        tasks: &std::collections::BTreeMap<&'static str, crate::tasks::TaskRecord>,
    ) {
        self.batch_panics
            .inc_by(write.panics.saturating_sub(self.batch_panics.get()));
        self.writes_failing.set(i64::from(write.failing.is_some()));
        for (name, r) in tasks {
            let restarts = self.task_restarts.with_label_values(&[name]);
            restarts.inc_by(r.restarts.saturating_sub(restarts.get()));
            self.task_up.with_label_values(&[name]).set(i64::from(r.up));
        }
    }

    /// The registry, for modules that keep their own metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Replaces the fleet gauges with `c`; label sets that vanished (a version no longer run)
    /// vanish from the output too.
    pub fn set_fleet(&self, c: &FleetCounts, maintenance_last_success: Option<f64>) {
        self.appliances.set(c.appliances);
        self.appliances_silent.set(c.silent);
        self.appliances_by_lifecycle
            .with_label_values(&["expected_offline"])
            .set(c.expected_offline);
        self.appliances_by_lifecycle
            .with_label_values(&["retired"])
            .set(c.retired);
        for (bucket, n) in &c.certificates {
            self.appliance_certificates
                .with_label_values(&[bucket])
                .set(*n);
        }
        self.disks_failing.set(c.failing_drives);
        for (verdict, n) in &c.drives {
            self.drives_by_verdict
                .with_label_values(&[verdict.as_str()])
                .set(*n);
        }
        self.appliances_by_status.reset();
        for status in ["healthy", "degraded", "unhealthy", "unknown"] {
            self.appliances_by_status
                .with_label_values(&[status])
                .set(0);
        }
        for (status, n) in &c.by_status {
            self.appliances_by_status
                .with_label_values(&[status])
                .set(*n);
        }
        self.appliances_by_app_version.reset();
        if let Some((_, versions)) = c.versions.iter().find(|(comp, _)| *comp == "app") {
            for (version, n, _) in versions.iter().take(VERSION_SERIES) {
                self.appliances_by_app_version
                    .with_label_values(&[version])
                    .set(*n);
            }
            let other = versions
                .iter()
                .skip(VERSION_SERIES)
                .fold(0i64, |sum, v| sum.saturating_add(v.1));
            if other > 0 {
                self.appliances_by_app_version
                    .with_label_values(&["(other versions)"])
                    .set(other);
            }
        }
        self.appliances_by_health.reset();
        for h in phonehome_dashboard::Health::ALL {
            let n = c
                .by_health
                .iter()
                .filter(|(x, _)| *x == h)
                .fold(0i64, |sum, (_, n)| sum.saturating_add(*n));
            self.appliances_by_health
                .with_label_values(&[h.as_str()])
                .set(n);
        }
        self.alerts_firing.reset();
        for rule in crate::alerts::RULES {
            for severity in ["critical", "warning"] {
                self.alerts_firing
                    .with_label_values(&[rule, severity])
                    .set(0);
            }
        }
        for (rule, severity, n, _) in &c.alerts {
            self.alerts_firing
                .with_label_values(&[rule, severity.as_str()])
                .set(*n);
        }
        if let Some(t) = maintenance_last_success {
            self.maintenance_last_success.set(t);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The fleet identity's counters: what enrolment and renewal answered, what the revocation list
/// refused, and whether the report listener's certificates reloaded.
#[derive(Debug, Clone)]
pub struct IdentityMetrics {
    /// `POST /v1/enroll` by outcome (`issued` or the refusal's reason).
    pub enrolments: IntCounterVec,
    /// `POST /v1/renew` by outcome.
    pub renewals: IntCounterVec,
    /// Requests refused by the revocation list, by reason.
    pub revocation_refusals: IntCounterVec,
    /// Requests with an expired certificate anywhere but `/v1/renew`.
    pub expired_refusals: prometheus::IntCounter,
    /// Seconds since the revocation list was loaded (set at scrape time; -1 before the first).
    pub revocations_age: Gauge,
    /// Reloads of the report listener's certificate and trusted CAs, by outcome.
    pub tls_reloads: IntCounterVec,
}

impl IdentityMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let enrolments = IntCounterVec::new(
            Opts::new(
                "phonehome_enrolments_total",
                "Enrolments (POST /v1/enroll) by outcome: issued, or why the token or request was refused.",
            ),
            &["outcome"],
        )?;
        let renewals = IntCounterVec::new(
            Opts::new(
                "phonehome_renewals_total",
                "Certificate renewals (POST /v1/renew) by outcome: issued, or why refused.",
            ),
            &["outcome"],
        )?;
        let revocation_refusals = IntCounterVec::new(
            Opts::new(
                "phonehome_revocation_refusals_total",
                "Requests on the report listener refused because the certificate or its serial is revoked (or the list is not loaded yet).",
            ),
            &["reason"],
        )?;
        let expired_refusals = prometheus::IntCounter::new(
            "phonehome_expired_certificate_refusals_total",
            "Requests with an expired certificate (within renew_grace_days) refused because they were not a renewal.",
        )?;
        let revocations_age = Gauge::new(
            "phonehome_revocation_list_age_seconds",
            "Seconds since this replica loaded the revocation list (-1: never).",
        )?;
        let tls_reloads = IntCounterVec::new(
            Opts::new(
                "phonehome_tls_reloads_total",
                "Reloads of the report listener's server certificate and trusted CAs (SIGHUP or the files changed), by outcome.",
            ),
            &["outcome"],
        )?;
        for outcome in [
            "issued",
            "unknown_token",
            "token_used",
            "token_expired",
            "other_serial",
            "retired",
            "revoked",
            "bad_request",
            "error",
        ] {
            enrolments.with_label_values(&[outcome]).reset();
        }
        for outcome in ["issued", "revoked", "retired", "bad_request", "error"] {
            renewals.with_label_values(&[outcome]).reset();
        }
        for reason in ["certificate_revoked", "serial_revoked", "not_loaded"] {
            revocation_refusals.with_label_values(&[reason]).reset();
        }
        for outcome in ["ok", "error"] {
            tls_reloads.with_label_values(&[outcome]).reset();
        }
        revocations_age.set(-1.0);
        registry.register(Box::new(enrolments.clone()))?;
        registry.register(Box::new(renewals.clone()))?;
        registry.register(Box::new(revocation_refusals.clone()))?;
        registry.register(Box::new(expired_refusals.clone()))?;
        registry.register(Box::new(revocations_age.clone()))?;
        registry.register(Box::new(tls_reloads.clone()))?;
        Ok(IdentityMetrics {
            enrolments,
            renewals,
            revocation_refusals,
            expired_refusals,
            revocations_age,
            tls_reloads,
        })
    }
}
