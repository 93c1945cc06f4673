//! A fresh, migrated PostgreSQL database for every test, dropped afterwards.
//!
//! Where the server comes from, in order: `PHONEHOME_TEST_DATABASE_URL` (an admin URL; each test
//! creates its own database through it), else the server at 127.0.0.1:5432 as user `postgres`,
//! else a private throwaway cluster started from the system's PostgreSQL binaries.

use std::sync::OnceLock;

use phonehome_ingest::pgcluster::PrivateCluster;
use phonehome_ingest::storage::Storage;
use tokio_postgres::NoTls;

const LOCAL_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The admin URL every test database is created through; resolved once per test process.
fn admin_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("PHONEHOME_TEST_DATABASE_URL") {
            return url;
        }
        if reachable(LOCAL_ADMIN_URL) {
            return LOCAL_ADMIN_URL.to_owned();
        }
        match private_cluster() {
            Ok(url) => url,
            Err(e) => panic!(
                "no PostgreSQL for the tests: PHONEHOME_TEST_DATABASE_URL is not set, nothing \
                 answers at 127.0.0.1:5432 as user postgres, and a private cluster could not be \
                 started ({e}). Install PostgreSQL with `apt-get install -y postgresql`, or point \
                 PHONEHOME_TEST_DATABASE_URL at a server where you may create databases."
            ),
        }
    })
}

fn reachable(url: &str) -> bool {
    let url = url.to_owned();
    // A throwaway runtime on its own thread: this runs inside tests that are already async.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async {
            let connect = tokio_postgres::connect(&url, NoTls);
            let (client, conn) = tokio::time::timeout(std::time::Duration::from_secs(3), connect)
                .await
                .ok()?
                .ok()?;
            tokio::spawn(conn);
            client.simple_query("SELECT 1").await.ok()
        })
    })
    .join()
    .ok()
    .flatten()
    .is_some()
}

fn private_cluster() -> Result<String, String> {
    static CLUSTER: OnceLock<PrivateCluster> = OnceLock::new();
    let cluster = PrivateCluster::start(None, false).map_err(|e| e.to_string())?;
    // Statics are never dropped: a watchdog stops the cluster when this test process ends.
    let dir = cluster.data_dir().parent().map(|p| p.to_path_buf());
    cluster
        .stop_when_process_exits(std::process::id(), dir.as_deref())
        .map_err(|e| e.to_string())?;
    let url = cluster.url("postgres");
    let _ = CLUSTER.set(cluster);
    Ok(url)
}

/// One test's database. Dropping it drops the database.
#[derive(Debug)]
pub struct TestDb {
    name: String,
    url: String,
}

impl TestDb {
    /// Creates a uniquely named database and applies every migration to it.
    pub async fn new() -> Self {
        Self::create(None).await
    }

    /// [`TestDb::new`], with the database's files in `tablespace` (tests that fill a disk).
    pub async fn new_in_tablespace(tablespace: &str) -> Self {
        Self::create(Some(tablespace)).await
    }

    /// Creates a tablespace at `dir` (which the server's user must own) through the admin
    /// connection.
    pub async fn create_tablespace(name: &str, dir: &std::path::Path) {
        let (client, conn) = tokio_postgres::connect(admin_url(), NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to the test PostgreSQL: {e}"));
        tokio::spawn(conn);
        client
            .batch_execute(&format!(
                "CREATE TABLESPACE {name} LOCATION '{}'",
                dir.display()
            ))
            .await
            .unwrap_or_else(|e| panic!("create tablespace {name} at {}: {e:?}", dir.display()));
    }

    /// Drops tablespace `name` (after the databases in it).
    pub async fn drop_tablespace(name: &str) {
        if let Ok((client, conn)) = tokio_postgres::connect(admin_url(), NoTls).await {
            tokio::spawn(conn);
            let _ = client
                .batch_execute(&format!("DROP TABLESPACE IF EXISTS {name}"))
                .await;
        }
    }

    async fn create(tablespace: Option<&str>) -> Self {
        let admin = admin_url().to_owned();
        let name = format!("phonehome_test_{}", uuid::Uuid::new_v4().simple());
        let (client, conn) = tokio_postgres::connect(&admin, NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to the test PostgreSQL at {admin}: {e}"));
        tokio::spawn(conn);
        client
            .batch_execute(&match tablespace {
                Some(t) => format!("CREATE DATABASE {name} TABLESPACE {t}"),
                None => format!("CREATE DATABASE {name}"),
            })
            .await
            .unwrap_or_else(|e| panic!("create test database {name}: {e}"));
        let url = with_database(&admin, &name);
        let storage = Storage::connect(&url, 1).expect("test database URL is valid");
        storage
            .migrate()
            .await
            .expect("migrations apply to a fresh database");
        TestDb { name, url }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A client connected to the server's admin database (not this test's), for tests that
    /// must act on the database from outside.
    pub async fn admin_client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(admin_url(), NoTls)
            .await
            .expect("connect to the admin database");
        tokio::spawn(conn);
        client
    }

    /// The URL the ingest under test should use.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A plain client for assertions.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .expect("connect to the test database");
        tokio::spawn(conn);
        client
    }

    /// How many copies of report `report_id` from appliance `serial` are stored; see
    /// [`report_copies`].
    pub async fn report_copies(&self, serial: &str, report_id: uuid::Uuid) -> i64 {
        report_copies(&self.client().await, serial, report_id).await
    }

    /// `SELECT count(*)` of a table.
    pub async fn count(&self, table: &str) -> i64 {
        self.client()
            .await
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .expect("count rows")
            .get(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = admin_url().to_owned();
        let name = self.name.clone();
        // Drop runs inside a test's runtime; a separate thread with its own runtime can block.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(&admin, NoTls).await.ok()?;
                tokio::spawn(conn);
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .ok()
            })
        })
        .join();
    }
}

/// How many copies of report `report_id` from appliance `serial` the database behind `client`
/// holds: 1 is right, 0 is a lost report, more is a duplicate.
///
/// The one place tests ask this, so the one place to change when the `reports` table changes
/// how it names the appliance (it holds `appliance_id`, referencing `appliances.id`).
pub async fn report_copies(
    client: &tokio_postgres::Client,
    serial: &str,
    report_id: uuid::Uuid,
) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM reports r JOIN appliances a ON a.id = r.appliance_id
             WHERE a.serial = $1 AND r.report_id = $2",
            &[&serial, &report_id],
        )
        .await
        // Debug: tokio-postgres' Display says only "db error", not what the server said.
        .unwrap_or_else(|e| panic!("count copies of report {serial}/{report_id}: {e:?}"))
        .get(0)
}

/// Replaces the database name in a postgres:// URL.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            with_database("postgres://u@h:1/postgres", "x"),
            "postgres://u@h:1/x"
        );
        assert_eq!(with_database("postgres://u@h:1", "x"), "postgres://u@h:1/x");
        assert_eq!(
            with_database("postgres://u@h/postgres?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }
}
