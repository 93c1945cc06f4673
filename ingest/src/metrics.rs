//! The ingest's own Prometheus metrics, registered in one registry that `/metrics` renders.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

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
        for c in [
            Box::new(reports.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(report_bytes.clone()),
            Box::new(handshake_failures.clone()),
            Box::new(identity_failures.clone()),
            Box::new(db_seconds.clone()),
            Box::new(in_flight.clone()),
            Box::new(appliances.clone()),
        ] {
            registry.register(c).expect("metric names are distinct");
        }
        Metrics {
            registry,
            reports,
            report_bytes,
            handshake_failures,
            identity_failures,
            db_seconds,
            in_flight,
            appliances,
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
