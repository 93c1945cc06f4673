//! Everything the ingest keeps in PostgreSQL: the connection pool, migrations, and the queries.
//! Rows become domain types here and nowhere else; handlers never see SQL.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use phonehome_dashboard::{ApplianceRow, FleetSource};
use phonehome_schema::{Report, migrations};
use tokio_postgres::NoTls;

use crate::tls::ApplianceIdentity;

/// Storage failures, split by what the client should be told.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// PostgreSQL cannot be reached or gave no connection in time: worth a retry.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {}", describe_pg(.0))]
    Query(#[from] tokio_postgres::Error),
    #[error("invalid database configuration: {0}")]
    Config(String),
}

impl From<deadpool_postgres::PoolError> for StorageError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        // The pool's own message ("error connecting to server") hides the cause ("Connection
        // refused"); operators need the whole chain.
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = cause.source();
        }
        StorageError::Unavailable(message)
    }
}

/// The ingest's handle on PostgreSQL; cheap to clone.
#[derive(Clone)]
pub struct Storage {
    pool: Pool,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("pool", &self.pool.status())
            .finish()
    }
}

/// What happened to a posted report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Newly committed.
    Stored,
    /// This appliance already delivered a report with this id; nothing was written.
    Duplicate,
}

impl Storage {
    /// Builds the pool; connections are opened lazily, so this does not need the server up.
    pub fn connect(database_url: &str, pool_size: usize) -> Result<Self, StorageError> {
        let mut pg: tokio_postgres::Config = database_url
            .parse()
            .map_err(|e: tokio_postgres::Error| StorageError::Config(e.to_string()))?;
        pg.application_name("phonehome-ingest");
        pg.connect_timeout(Duration::from_secs(5));
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| StorageError::Config(e.to_string()))?;
        Ok(Storage { pool })
    }

    /// Applies every migration not yet applied. Safe to run from several ingests at once: an
    /// advisory lock serialises them and each migration commits with its version row.
    pub async fn migrate(&self) -> Result<Vec<i32>, StorageError> {
        let mut client = self.pool.get().await?;
        client
            .batch_execute("SELECT pg_advisory_lock(8424200001)")
            .await?;
        let result = async {
            client
                .batch_execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (
                        version    integer PRIMARY KEY,
                        name       text NOT NULL,
                        applied_at timestamptz NOT NULL DEFAULT now())",
                )
                .await?;
            let applied: Vec<i32> = client
                .query("SELECT version FROM schema_migrations", &[])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let mut done = Vec::new();
            for m in migrations::ALL
                .iter()
                .filter(|m| !applied.contains(&m.version))
            {
                let tx = client.transaction().await?;
                tx.batch_execute(m.sql).await?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    &[&m.version, &m.name],
                )
                .await?;
                tx.commit().await?;
                tracing::info!(version = m.version, name = m.name, "applied migration");
                done.push(m.version);
            }
            Ok::<_, StorageError>(done)
        }
        .await;
        client
            .batch_execute("SELECT pg_advisory_unlock(8424200001)")
            .await?;
        result
    }

    /// Stores a report and updates the appliance's current state in one statement, so the
    /// report and its effects commit together or not at all. `body` is the report's JSON text
    /// exactly as received (after decompression), kept as evidence.
    pub async fn insert_report(
        &self,
        report: &Report,
        identity: &ApplianceIdentity,
        body: &str,
    ) -> Result<InsertOutcome, StorageError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "WITH prev AS (
                    SELECT system_uuid::text AS system_uuid, machine_id, last_collected_at
                    FROM appliances WHERE serial = $1
                 ), ins AS (
                    INSERT INTO reports (serial, report_id, collected_at, cert_sha256, body)
                    VALUES ($1, $2, $3, $4, $5::text::jsonb)
                    ON CONFLICT (serial, report_id) DO NOTHING
                    RETURNING received_at
                 ), upsert AS (
                    INSERT INTO appliances AS a (serial, hostname, system_uuid, machine_id,
                        first_seen_at, last_report_at, last_collected_at, last_report_id,
                        app_version, app_status, os_pretty_name, kernel, collector_version)
                    SELECT $1, $6, $7, $8, ins.received_at, ins.received_at, $3, $2,
                           $9, $10, $11, $12, $13
                    FROM ins
                    ON CONFLICT (serial) DO UPDATE SET
                        report_count   = a.report_count + 1,
                        last_report_at = EXCLUDED.last_report_at,
                        -- A late, older report (delivered from a spool) must not overwrite
                        -- newer current state.
                        hostname          = CASE WHEN EXCLUDED.last_collected_at >= a.last_collected_at THEN EXCLUDED.hostname ELSE a.hostname END,
                        system_uuid       = CASE WHEN EXCLUDED.last_collected_at >= a.last_collected_at THEN EXCLUDED.system_uuid ELSE a.system_uuid END,
                        machine_id        = CASE WHEN EXCLUDED.last_collected_at >= a.last_collected_at THEN EXCLUDED.machine_id ELSE a.machine_id END,
                        last_report_id    = CASE WHEN EXCLUDED.last_collected_at >= a.last_collected_at THEN EXCLUDED.last_report_id ELSE a.last_report_id END,
                        app_version       = CASE WHEN EXCLUDED.last_collected_at >= a.last_collected_at THEN EXCLUDED.app_version ELSE a.app_version END,
                        app_status        = CASE WHEN EXCLUDED.last_collected_at >= a.last_collected_at THEN EXCLUDED.app_status ELSE a.app_status END,
                        os_pretty_name    = CASE WHEN EXCLUDED.last_collected_at >= a.last_collected_at THEN EXCLUDED.os_pretty_name ELSE a.os_pretty_name END,
                        kernel            = CASE WHEN EXCLUDED.last_collected_at >= a.last_collected_at THEN EXCLUDED.kernel ELSE a.kernel END,
                        collector_version = CASE WHEN EXCLUDED.last_collected_at >= a.last_collected_at THEN EXCLUDED.collector_version ELSE a.collector_version END,
                        last_collected_at = GREATEST(a.last_collected_at, EXCLUDED.last_collected_at)
                 ), changed AS (
                    -- Judged only by a report newer than what we know: a late report from a
                    -- spool describes the past, not a swap.
                    INSERT INTO identity_events (serial, kind, old_value, new_value, report_id)
                    SELECT $1, k.kind, k.old, k.new, $2
                    FROM ins, prev, LATERAL (VALUES
                        ('system_uuid_changed', prev.system_uuid, $7::text),
                        ('machine_id_changed', prev.machine_id, $8::text)) AS k(kind, old, new)
                    WHERE $3 >= prev.last_collected_at AND k.old IS NOT NULL
                      AND k.new IS NOT NULL AND k.old <> k.new
                    ON CONFLICT DO NOTHING
                    RETURNING 1
                 ), shared AS (
                    INSERT INTO identity_events (serial, kind, new_value, other_serial, report_id)
                    SELECT $1, 'machine_id_shared', $8::text, a.serial, $2
                    FROM ins, appliances a
                    WHERE $8::text IS NOT NULL AND a.machine_id = $8::text AND a.serial <> $1
                    UNION ALL
                    SELECT $1, 'system_uuid_shared', $7::text, a.serial, $2
                    FROM ins, appliances a
                    WHERE $7::uuid IS NOT NULL AND a.system_uuid = $7::uuid AND a.serial <> $1
                    ON CONFLICT DO NOTHING
                    RETURNING 1
                 )
                 SELECT (SELECT count(*) FROM ins),
                        (SELECT count(*) FROM changed) + (SELECT count(*) FROM shared)",
            )
            .await?;
        let id = &report.identity;
        let row = client
            .query_one(
                &stmt,
                &[
                    &identity.serial.as_str(),
                    &report.report_id,
                    &report.collected_at,
                    &identity.cert_sha256.as_slice(),
                    &body,
                    &id.hostname,
                    &id.system_uuid,
                    &id.machine_id,
                    &report.app.version,
                    &report.app.status.as_str(),
                    &report
                        .system
                        .os
                        .as_ref()
                        .and_then(|o| o.pretty_name.clone()),
                    &report.system.kernel,
                    &report.collector.version,
                ],
            )
            .await?;
        let inserted: i64 = row.get(0);
        let events: i64 = row.get(1);
        if events > 0 {
            // Chassis swaps and cloned images are what operators must hear about (issue 5
            // turns these into alerts); the rows are in identity_events.
            tracing::warn!(
                serial = %identity.serial,
                report_id = %report.report_id,
                events,
                "identity events recorded (system UUID or machine-id changed or shared)"
            );
        }
        Ok(if inserted == 1 {
            InsertOutcome::Stored
        } else {
            InsertOutcome::Duplicate
        })
    }

    /// Every appliance's current state, most recently heard from first.
    pub async fn appliances(&self, limit: i64) -> Result<Vec<ApplianceRow>, StorageError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT serial, hostname, last_report_at, app_version, app_status,
                        os_pretty_name, report_count
                 FROM appliances ORDER BY last_report_at DESC, serial LIMIT $1",
                &[&limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ApplianceRow {
                serial: r.get(0),
                hostname: r.get(1),
                last_report_at: r.get(2),
                app_version: r.get(3),
                app_status: r.get(4),
                os: r.get(5),
                report_count: r.get(6),
            })
            .collect())
    }

    /// Number of appliances that have ever reported.
    pub async fn appliance_count(&self) -> Result<i64, StorageError> {
        let client = self.pool.get().await?;
        Ok(client
            .query_one("SELECT count(*) FROM appliances", &[])
            .await?
            .get(0))
    }

    /// Succeeds when PostgreSQL answers a query.
    pub async fn ping(&self) -> Result<(), StorageError> {
        let client = self.pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }
}

impl FleetSource for Storage {
    type Error = StorageError;

    async fn appliances(&self, limit: i64) -> Result<Vec<ApplianceRow>, StorageError> {
        Storage::appliances(self, limit).await
    }

    async fn fleet_size(&self) -> Result<i64, StorageError> {
        self.appliance_count().await
    }
}

/// What went wrong, in the server's own words where there are some: tokio-postgres' `Display`
/// says only "db error".
fn describe_pg(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} ({}): {}", db.severity(), db.code().code(), db.message());
            if let Some(detail) = db.detail() {
                s.push_str(&format!("; {detail}"));
            }
            s
        }
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// How a failure should be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The database is away or overloaded: retry later (503).
    Transient,
    /// The database refused a value in the request (SQLSTATE class 22, data exception): no retry
    /// will help (422).
    BadData,
    /// A bug or misconfiguration (500).
    Internal,
}

impl StorageError {
    pub fn kind(&self) -> FailureKind {
        match self {
            StorageError::Unavailable(_) => FailureKind::Transient,
            StorageError::Config(_) => FailureKind::Internal,
            StorageError::Query(e) => match e.as_db_error().map(|db| db.code().code()) {
                // 08 connection, 40 rollback (serialization, deadlock), 53 resources,
                // 57 operator intervention (shutdown, read-only after failover), 58 system.
                Some(code)
                    if ["08", "40", "53", "57", "58"]
                        .iter()
                        .any(|c| code.starts_with(c)) =>
                {
                    FailureKind::Transient
                }
                Some(code) if code.starts_with("22") || code == "54001" => FailureKind::BadData,
                Some(_) => FailureKind::Internal,
                // No server error: the connection broke (I/O) or a value failed to convert.
                None if e.is_closed() => FailureKind::Transient,
                None => match std::error::Error::source(e) {
                    Some(cause) if cause.is::<std::io::Error>() => FailureKind::Transient,
                    _ => FailureKind::Internal,
                },
            },
        }
    }
}

/// Creates database `name` through `admin_url` unless it exists (the demo's private cluster
/// starts with none).
pub async fn create_database(admin_url: &str, name: &str) -> Result<(), StorageError> {
    let (client, conn) = tokio_postgres::connect(admin_url, NoTls).await?;
    tokio::spawn(conn);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        let quoted = name.replace('"', "\"\"");
        client
            .batch_execute(&format!("CREATE DATABASE \"{quoted}\""))
            .await?;
    }
    Ok(())
}
