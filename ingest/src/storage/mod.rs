//! Everything the ingest keeps in PostgreSQL: the connection pool, migrations, and the queries.
//! Rows become domain types here and nowhere else; handlers never see SQL.

pub mod admin;
mod alerts;
mod batch;
mod bulk;
pub mod dashboard;
pub mod evidence;
pub mod fleet;
pub mod identity;
mod legacy;
pub mod maintenance;
pub mod notify;
mod previous;
pub mod read;
mod readings;
pub mod reliability;
pub mod rows;
pub mod writer;

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use phonehome_schema::{Report, migrations};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row, SimpleQueryMessage};

use crate::alerts::AlertsConfig;
use crate::tls::ApplianceIdentity;
use evidence::Codec;
use maintenance::Month;
use rows::PreparedReport;
use writer::Writer;

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
    /// Processing this report panicked (a bug the report triggers); it alone is refused, the
    /// writer goes on.
    #[error("the ingest could not process this report (an internal error, logged): {0}")]
    Poison(String),
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

/// How the storage layer writes and keeps history.
#[derive(Debug, Clone)]
pub struct StorageSettings {
    /// Connections in the pool (writers, dashboard and metrics queries share it).
    pub pool_size: usize,
    /// Concurrent batch writers, each holding one connection while it commits.
    pub writers: usize,
    /// Most reports committed in one transaction.
    pub batch_max: usize,
    /// Reports collected longer ago than this are refused, and whole months of history older
    /// than this are dropped.
    pub retention_days: u32,
    /// The alert rules, evaluated in every batch.
    pub alerts: Arc<AlertsConfig>,
    /// PostgreSQL is reached through a transaction pooler that keeps no prepared statement
    /// from one transaction to the next (PgBouncer before 1.21 in `pool_mode = transaction`,
    /// `db_transaction_pooler`): see [`Conn`].
    pub transaction_pooler: bool,
    /// A streaming replica the dashboard, the JSON API and `/metrics`' fleet counts read from
    /// (`read_database_url`); `None` reads from the primary. See [`Storage::reads`].
    pub read_database_url: Option<crate::config::Secret>,
    /// Fault injection for tests: a batch holding a report from this serial panics, as a bug
    /// a report triggers would. Never set by configuration.
    #[doc(hidden)]
    pub panic_on_serial: Option<String>,
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings {
            pool_size: 16,
            writers: 4,
            batch_max: 64,
            retention_days: 400,
            alerts: Arc::default(),
            transaction_pooler: false,
            read_database_url: None,
            panic_on_serial: None,
        }
    }
}

/// What the batch writer tasks share with the handle: everything but the writer itself, so
/// the tasks end when the last handle is dropped.
#[derive(Clone)]
pub(crate) struct Core {
    pool: Db,
    /// The read database's pool, when `read_database_url` is set.
    reads: Option<Db>,
    /// Connections that hold advisory locks in an open transaction ([`Lock`]); a pool of their
    /// own, so a holder never waits for (or starves) the connections doing the work.
    locks: Pool,
    codec: Arc<Codec>,
    /// Months whose partitions are known to exist.
    partitions: Arc<std::sync::Mutex<HashSet<Month>>>,
    alerts: Arc<AlertsConfig>,
    panic_on_serial: Option<Arc<str>>,
    /// How writing has gone lately, for `/readyz` and `/metrics`.
    health: Arc<writer::WriteHealth>,
}

/// The ingest's handle on PostgreSQL; cheap to clone.
#[derive(Clone)]
pub struct Storage {
    core: Core,
    writer: Arc<OnceLock<Writer>>,
    settings: StorageSettings,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("pool", &self.core.pool.pool.status())
            .field("reads", &self.core.reads.as_ref().map(|r| r.pool.status()))
            .field("codec", &self.core.codec)
            .field("settings", &self.settings)
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
    /// Builds the pool with default settings and `pool_size` connections; connections are
    /// opened lazily, so this does not need the server up.
    pub fn connect(database_url: &str, pool_size: usize) -> Result<Self, StorageError> {
        Self::connect_with(
            database_url,
            StorageSettings {
                pool_size,
                writers: StorageSettings::default().writers.min(pool_size.max(1)),
                ..StorageSettings::default()
            },
        )
    }

    /// Builds the pool; connections are opened lazily, so this does not need the server up.
    pub fn connect_with(
        database_url: &str,
        settings: StorageSettings,
    ) -> Result<Self, StorageError> {
        let pg: tokio_postgres::Config = database_url
            .parse()
            .map_err(|e: tokio_postgres::Error| StorageError::Config(e.to_string()))?;
        let pool = Db {
            pool: build_pool(pg.clone(), settings.pool_size)?,
            pooler: settings.transaction_pooler,
            name: None,
        };
        let reads = match &settings.read_database_url {
            None => None,
            Some(url) => {
                let pg: tokio_postgres::Config =
                    url.expose().parse().map_err(|e: tokio_postgres::Error| {
                        StorageError::Config(format!("read_database_url: {e}"))
                    })?;
                Some(Db {
                    pool: build_pool(pg, settings.pool_size)?,
                    pooler: settings.transaction_pooler,
                    name: Some(READ_DATABASE),
                })
            }
        };
        Ok(Storage {
            core: Core {
                pool,
                reads,
                locks: build_pool(pg, LOCK_CONNECTIONS)?,
                codec: Arc::new(Codec::default()),
                partitions: Arc::default(),
                alerts: settings.alerts.clone(),
                panic_on_serial: settings.panic_on_serial.as_deref().map(Arc::from),
                health: Arc::default(),
            },
            writer: Arc::new(OnceLock::new()),
            settings,
        })
    }

    /// The handle the dashboard, the JSON API and `/metrics`' fleet counts read through: one on
    /// the read database (`read_database_url`, a streaming replica of this one) when it is set,
    /// else this one. It shares this handle's settings and report-body dictionaries; nothing
    /// writes through it (a replica refuses writes).
    pub fn reads(&self) -> Storage {
        match &self.core.reads {
            None => self.clone(),
            Some(reads) => Storage {
                core: Core {
                    pool: reads.clone(),
                    reads: None,
                    ..self.core.clone()
                },
                writer: Arc::new(OnceLock::new()),
                settings: self.settings.clone(),
            },
        }
    }

    /// Whether reads go to a database of their own (`read_database_url`).
    pub fn has_read_database(&self) -> bool {
        self.core.reads.is_some()
    }

    /// How writing has gone lately: batches that panicked, and whether writes are failing
    /// now (PostgreSQL answers but cannot store: out of disk, read-only).
    pub fn write_health(&self) -> writer::WriteStatus {
        self.core.health.status()
    }

    pub fn settings(&self) -> &StorageSettings {
        &self.settings
    }

    pub(crate) fn pool(&self) -> &Db {
        &self.core.pool
    }

    pub(crate) fn codec(&self) -> &Codec {
        &self.core.codec
    }

    /// Applies every migration not yet applied, then moves reports kept by an older schema
    /// into the current one. Safe to run from several ingests at once: an advisory lock
    /// serialises them and each migration commits with its version row. The lock is a
    /// transaction's, on a connection of its own ([`Lock`]), so it holds through a
    /// transaction pooler too.
    pub async fn migrate(&self) -> Result<Vec<i32>, StorageError> {
        let lock = self.lock(MIGRATION_LOCK).await?;
        let result = self.migrate_locked().await;
        let released = lock.release().await;
        let done = result?;
        released?;
        Ok(done)
    }

    async fn migrate_locked(&self) -> Result<Vec<i32>, StorageError> {
        let mut client = self.core.pool.get().await?;
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
        legacy::convert(self, &client).await?;
        Ok(done)
    }

    /// Takes the advisory lock `key` unless another session holds it (`None`). It is held by
    /// an open transaction on a connection of its own until [`Lock::release`]; the work it
    /// guards runs on other connections.
    pub(crate) async fn try_lock(&self, key: i64) -> Result<Option<Lock>, StorageError> {
        Lock::take(&self.core.locks, key, false).await
    }

    /// Waits for the advisory lock `key` (see [`Storage::try_lock`]).
    pub(crate) async fn lock(&self, key: i64) -> Result<Lock, StorageError> {
        Lock::take(&self.core.locks, key, true)
            .await?
            .ok_or_else(|| StorageError::Unavailable(format!("advisory lock {key} not taken")))
    }

    /// Stores a report with everything derived from it: time series, current state, drive
    /// membership, versions and identity events commit together or not at all. `body` is the
    /// report's JSON text exactly as received (after decompression), kept as evidence.
    pub async fn insert_report(
        &self,
        report: &Report,
        identity: &ApplianceIdentity,
        body: &str,
    ) -> Result<InsertOutcome, StorageError> {
        self.insert_report_sent(report, identity, body, None).await
    }

    /// [`Storage::insert_report`] for a request the collector dated `sent_at` (its HTTP
    /// `Date`), which tells the appliance's clock skew.
    pub async fn insert_report_sent(
        &self,
        report: &Report,
        identity: &ApplianceIdentity,
        body: &str,
        sent_at: Option<DateTime<Utc>>,
    ) -> Result<InsertOutcome, StorageError> {
        let compressed = self
            .core
            .codec
            .compress(body.as_bytes())
            .map_err(|e| StorageError::Config(format!("zstd: {e}")))?;
        let mut prepared = rows::prepare(
            report,
            &identity.cert_sha256,
            Utc::now(),
            compressed,
            &self.settings.alerts,
        );
        if let Some(sent_at) = sent_at {
            prepared.note_sent_at(sent_at, &self.settings.alerts);
        }
        // Only reports that carry smartctl's output (a failing drive) pay for a second body.
        if prepared.drives.iter().any(|d| d.evidence) {
            if let Some(json) = rows::without_evidence(body) {
                prepared.body_without_evidence = Some(
                    self.core
                        .codec
                        .compress(json.as_bytes())
                        .map_err(|e| StorageError::Config(format!("zstd: {e}")))?,
                );
            }
        }
        prepared.note_certificate(
            identity.not_after,
            report
                .collector
                .certificate
                .as_ref()
                .and_then(|c| c.renewal_error.as_deref()),
            &self.settings.alerts,
        );
        let writer = self.writer.get_or_init(|| {
            Writer::start(
                self.core.clone(),
                self.settings.writers,
                self.settings.batch_max,
            )
        });
        writer.submit(prepared).await
    }

    /// The JSON of a stored report, as the appliance sent it.
    pub async fn report_json(
        &self,
        serial: &str,
        report_id: uuid::Uuid,
    ) -> Result<Option<String>, StorageError> {
        let client = self.core.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT r.body, r.body_dictionary FROM reports r
                 JOIN appliances a ON a.id = r.appliance_id
                 WHERE a.serial = $1 AND r.report_id = $2
                 ORDER BY r.collected_at LIMIT 1",
                &[&serial, &report_id],
            )
            .await?;
        // The pool may hold a single connection, and loading a dictionary needs one.
        drop(client);
        let Some(row) = row else {
            return Ok(None);
        };
        self.decompress_body(row.get(0), row.get(1))
            .await
            .map_err(|e| StorageError::Config(format!("report {report_id} of {serial}: {e}")))
    }

    /// A kept report body as JSON text, loading its dictionary first if this process has not
    /// seen it (another replica may have trained it).
    pub(crate) async fn decompress_body(
        &self,
        body: Vec<u8>,
        dictionary: Option<i16>,
    ) -> Result<Option<String>, StorageError> {
        if let Some(id) = dictionary {
            if !self.core.codec.knows(id) {
                self.load_dictionaries().await?;
            }
        }
        self.core
            .codec
            .decompress(&body, dictionary)
            .map(Some)
            .map_err(|e| StorageError::Config(e.to_string()))
    }

    /// Loads dictionaries this process has not seen yet (another replica may have trained one).
    pub async fn load_dictionaries(&self) -> Result<(), StorageError> {
        let client = self.core.pool.get().await?;
        let known: Vec<i16> = client
            .query("SELECT id FROM body_dictionaries", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .filter(|id| !self.core.codec.knows(*id))
            .collect();
        for id in known {
            let row = client
                .query_one("SELECT dict FROM body_dictionaries WHERE id = $1", &[&id])
                .await?;
            let dict: Vec<u8> = row.get(0);
            self.core.codec.add(id, &dict);
            tracing::info!(
                dictionary = id,
                bytes = dict.len(),
                "loaded report-body dictionary"
            );
        }
        Ok(())
    }

    /// Succeeds when PostgreSQL answers a query.
    pub async fn ping(&self) -> Result<(), StorageError> {
        let client = self.core.pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }
}

/// Serialises migrations across replicas.
const MIGRATION_LOCK: i64 = 8_424_200_001;
/// Connections for [`Lock`]s: the migration, maintenance, notifier and silence locks may all be
/// held at once.
const LOCK_CONNECTIONS: usize = 4;
/// How the read database is named in its errors.
const READ_DATABASE: &str = "the read database (read_database_url)";

fn build_pool(mut pg: tokio_postgres::Config, size: usize) -> Result<Pool, StorageError> {
    pg.application_name("phonehome-ingest");
    pg.connect_timeout(Duration::from_secs(5));
    let manager = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| StorageError::Config(e.to_string()))
}

/// A pool of PostgreSQL connections handing out [`Conn`]s: the primary's, or the read
/// database's.
#[derive(Clone)]
pub(crate) struct Db {
    pool: Pool,
    /// Reached through a transaction pooler that keeps no prepared statement between
    /// transactions (`db_transaction_pooler`).
    pooler: bool,
    /// How this database is named in errors; `None` for the primary.
    name: Option<&'static str>,
}

impl Db {
    /// A connection from the pool, waiting up to five seconds for one.
    pub(crate) async fn get(&self) -> Result<Conn, NoConnection> {
        match self.pool.get().await {
            Ok(client) => Ok(Conn {
                client: Some(client),
                pooler: self.pooler,
                running: AtomicUsize::new(0),
            }),
            Err(error) => Err(NoConnection {
                error,
                database: self.name,
            }),
        }
    }
}

/// Why [`Db::get`] gave no connection, naming the read database when it was that one.
#[derive(Debug)]
pub(crate) struct NoConnection {
    error: deadpool_postgres::PoolError,
    database: Option<&'static str>,
}

impl From<NoConnection> for StorageError {
    fn from(e: NoConnection) -> Self {
        match (StorageError::from(e.error), e.database) {
            (StorageError::Unavailable(message), Some(name)) => {
                StorageError::Unavailable(format!("{name}: {message}"))
            }
            (e, _) => e,
        }
    }
}

/// A pooled connection. It derefs to the client, except for the four statement methods below,
/// which take SQL text.
///
/// Directly on PostgreSQL these are the client's own. Through a transaction pooler (PgBouncer
/// with `pool_mode = transaction`) a server connection is ours only inside a transaction, and
/// tokio-postgres prepares a statement (Parse, Sync) before it executes it (Bind, Sync): outside
/// a transaction the pooler may hand the two to different server connections, one of which
/// never saw the statement. PgBouncer 1.21 and later can track protocol-level prepared
/// statements (`max_prepared_statements`); the 1.18 Debian bookworm ships cannot. So with
/// `db_transaction_pooler` a statement sent outside an explicit transaction runs in a
/// transaction of its own (statements pipelined together share one), and commits as it would
/// have alone; the batch writer closes its cached statements before it commits
/// ([`Core::write_batch`]). A statement is closed only when the last row it returned is
/// dropped, often after its transaction ended, on whatever server connection the pooler gives
/// then: so every transaction through the pooler starts with `DEALLOCATE ALL`, and a name
/// another process left behind on that server connection cannot collide with ours.
pub(crate) struct Conn {
    /// Taken only when the connection is closed instead of pooled (see `Drop`).
    client: Option<Object>,
    pooler: bool,
    /// Statements under way in the transaction [`Conn::alone`] opened. One left over when the
    /// connection is dropped (a future cancelled mid-statement) means that transaction may
    /// still be open: the connection is then closed rather than handed to someone else.
    running: AtomicUsize,
}

impl Conn {
    fn object(&self) -> &Object {
        match &self.client {
            Some(client) => client,
            None => unreachable!("a connection's client is taken only while it is dropped"),
        }
    }

    pub(crate) async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        self.alone(self.object().query(sql, params)).await
    }

    pub(crate) async fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, tokio_postgres::Error> {
        self.alone(self.object().query_one(sql, params)).await
    }

    pub(crate) async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        self.alone(self.object().query_opt(sql, params)).await
    }

    pub(crate) async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        self.alone(self.object().execute(sql, params)).await
    }

    /// An explicit transaction, which a pooler keeps on one server connection; through one it
    /// starts by dropping what earlier clients left prepared there (see [`Conn`]).
    pub(crate) async fn transaction(
        &mut self,
    ) -> Result<deadpool_postgres::Transaction<'_>, tokio_postgres::Error> {
        let pooler = self.pooler;
        let tx = match &mut self.client {
            Some(client) => client.transaction().await?,
            None => unreachable!("a connection's client is taken only while it is dropped"),
        };
        if pooler {
            tx.batch_execute("DEALLOCATE ALL").await?;
        }
        Ok(tx)
    }

    /// The connection's cache of prepared statements (`prepare_cached` in a transaction).
    pub(crate) fn statement_cache(&self) -> Arc<deadpool_postgres::StatementCache> {
        self.object().statement_cache.clone()
    }

    /// Runs `statement` as it is directly; through a transaction pooler inside a transaction,
    /// which the first of the statements under way opens and the last one commits.
    async fn alone<R>(
        &self,
        statement: impl Future<Output = Result<R, tokio_postgres::Error>>,
    ) -> Result<R, tokio_postgres::Error> {
        if !self.pooler {
            return statement.await;
        }
        // BEGIN goes out on the first poll, ahead of any statement pipelined with this one.
        if self.running.fetch_add(1, Ordering::SeqCst) == 0 {
            // On failure `running` stays above zero: the connection is closed, not pooled.
            self.object().batch_execute("BEGIN; DEALLOCATE ALL").await?;
        }
        let result = statement.await;
        if self.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            // After a failed statement COMMIT rolls back, without an error of its own.
            self.object().batch_execute("COMMIT").await?;
        }
        result
    }
}

impl std::ops::Deref for Conn {
    type Target = tokio_postgres::Client;

    fn deref(&self) -> &tokio_postgres::Client {
        self.object()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.running.load(Ordering::SeqCst) != 0 {
            if let Some(client) = self.client.take() {
                drop(Object::take(client));
            }
        }
    }
}

/// A transaction-level advisory lock, held by an open transaction on a connection of its own
/// until [`Lock::release`]; the work it guards runs on other connections. Right directly on
/// PostgreSQL and through a transaction pooler alike, which keeps the server connection for an
/// open transaction; a session-level lock would stay behind on a server connection the pooler
/// then hands to other clients, and its unlock could reach another one. Dropped without
/// `release` (a cancelled task), its connection is closed, which ends the transaction and so
/// the lock.
#[derive(Debug)]
pub(crate) struct Lock {
    client: Option<Object>,
}

impl Lock {
    /// Opens a transaction on a lock connection and takes `key` in it: waiting for it
    /// (`wait`), or only if it is free (`None` otherwise). Simple query protocol: nothing is
    /// prepared.
    async fn take(locks: &Pool, key: i64, wait: bool) -> Result<Option<Lock>, StorageError> {
        let client = locks.get().await?;
        let function = if wait {
            "pg_advisory_xact_lock"
        } else {
            "pg_try_advisory_xact_lock"
        };
        let taken = match client
            .simple_query(&format!("BEGIN; SELECT {function}({key})"))
            .await
        {
            // Text results: the try variant answers 't' or 'f'; the waiting one returns once
            // it holds the lock.
            Ok(messages) => messages.iter().any(|m| match m {
                SimpleQueryMessage::Row(row) => wait || row.get(0) == Some("t"),
                _ => false,
            }),
            Err(e) => {
                drop(Object::take(client));
                return Err(e.into());
            }
        };
        let lock = Lock {
            client: Some(client),
        };
        if taken {
            Ok(Some(lock))
        } else {
            lock.release().await?;
            Ok(None)
        }
    }

    /// Commits the lock's transaction, which releases the lock, and pools its connection.
    pub(crate) async fn release(mut self) -> Result<(), StorageError> {
        let Some(client) = self.client.take() else {
            return Ok(());
        };
        match client.batch_execute("COMMIT").await {
            Ok(()) => Ok(()),
            Err(e) => {
                // The transaction may still be open: close the connection rather than pool it.
                drop(Object::take(client));
                Err(e.into())
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            drop(Object::take(client));
        }
    }
}

impl Core {
    /// Commits one batch (see [`batch`]), creating the months' partitions it needs first.
    pub(crate) async fn write_batch(
        &self,
        reports: &[&PreparedReport],
    ) -> Result<Vec<InsertOutcome>, StorageError> {
        match self.try_write_batch(reports).await {
            // Someone dropped a partition this process believed in (retention on another
            // replica, an operator): forget what we knew and create what is needed.
            Err(StorageError::Query(e))
                if e.code() == Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION)
                    && e.to_string().contains("no partition") =>
            {
                if let Ok(mut p) = self.partitions.lock() {
                    p.clear();
                }
                self.try_write_batch(reports).await
            }
            other => other,
        }
    }

    async fn try_write_batch(
        &self,
        reports: &[&PreparedReport],
    ) -> Result<Vec<InsertOutcome>, StorageError> {
        let mut client = self.pool.get().await?;
        // The report's own time places it (reports are the only partitioned table).
        let months: HashSet<Month> = reports.iter().map(|r| Month::of(r.collected_at)).collect();
        for month in months {
            let known = self
                .partitions
                .lock()
                .map(|p| p.contains(&month))
                .unwrap_or(false);
            if !known {
                maintenance::ensure_month(&client, month).await?;
                if let Ok(mut p) = self.partitions.lock() {
                    p.insert(month);
                }
            }
        }
        if let Some(serial) = &self.panic_on_serial {
            if reports.iter().any(|r| r.serial == **serial) {
                panic!("fault injection: a batch holding a report from {serial}");
            }
        }
        let statements = client.statement_cache();
        let tx = client.transaction().await?;
        let written = batch::write(&tx, reports, &self.alerts, &self.codec).await;
        if self.pool.pooler {
            // Through a transaction pooler the next transaction may run on another server
            // connection, where a cached statement does not exist: close them all here, before
            // the transaction ends, on the server connection that prepared them.
            statements.clear();
        }
        let outcomes = written?;
        tx.commit().await?;
        Ok(outcomes)
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
            // Retrying the same report would panic again: refuse it (422) so the collector
            // stops sending it, and keep the evidence in the log.
            StorageError::Poison(_) => FailureKind::BadData,
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
                // 25006: a read-only transaction, what a failover to a standby looks like.
                Some("25006") => FailureKind::Transient,
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
