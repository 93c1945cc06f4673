//! Everything before the first report: the database check, the throwaway PKI with one
//! certificate per simulated appliance, the TLS client configurations, and the in-process ingest.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use phonehome_ingest::config::{DEFAULT_MAX_BODY_BYTES, TlsConfig};
use phonehome_ingest::storage::Storage;
use phonehome_ingest::tls::{ApplianceIdentity, appliance_identity};
use phonehome_ingest::{AppState, pki, tls};
use phonehome_schema::Serial;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpListener;

use crate::fleet::Fleet;

/// Certificates live two days: long enough for any run, useless if the directory leaks.
const CERT_DAYS: i64 = 2;

/// One simulated appliance: its serial and the TLS configuration that presents its certificate.
#[derive(Debug)]
pub struct Appliance {
    pub serial: Serial,
    pub tls: Arc<rustls::ClientConfig>,
    /// What the ingest derives from the certificate; the ceiling stores the same.
    pub identity: ApplianceIdentity,
}

/// Where reports go.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub server_name: ServerName<'static>,
    /// The Host header.
    pub host: String,
}

/// The database URL without its password, for messages.
pub fn describe_db(url: &str) -> String {
    let Ok(cfg) = url.parse::<tokio_postgres::Config>() else {
        return "the database in --database-url".into();
    };
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{host}:{port}/{}",
        cfg.get_dbname().or(cfg.get_user()).unwrap_or("?")
    )
}

/// Checks that PostgreSQL answers and applies the migrations, with an error that says which
/// database could not be reached.
pub async fn prepare_database(url: &str) -> anyhow::Result<()> {
    let where_ = describe_db(url);
    let _: tokio_postgres::Config = url
        .parse()
        .with_context(|| "--database-url is not a valid PostgreSQL URL".to_string())?;
    let (client, conn) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_postgres::connect(url, tokio_postgres::NoTls),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no answer within 10 s"))
    .and_then(|r| r.map_err(anyhow::Error::from))
    .with_context(|| {
        format!(
            "cannot connect to PostgreSQL at {where_} (is it running, and does the database exist?)"
        )
    })?;
    tokio::spawn(conn);
    client
        .simple_query("SELECT 1")
        .await
        .with_context(|| format!("PostgreSQL at {where_} does not answer queries"))?;
    let storage = Storage::connect(url, 1)?;
    storage
        .migrate()
        .await
        .with_context(|| format!("apply migrations to {where_}"))?;
    Ok(())
}

/// The PKI of a run: the CA the appliances' certificates come from and, for an in-process
/// ingest, its server certificate.
#[derive(Debug)]
pub struct Pki {
    pub server: Option<TlsConfig>,
    pub appliances: Vec<Appliance>,
}

/// Creates (or, with `external_ca`, uses) a CA and issues one certificate per appliance into
/// `dir`. Issuing is spread over several threads: each certificate is two fsynced files.
pub fn build_pki(
    dir: &Path,
    external_ca: Option<&Path>,
    fleet: &Fleet,
    count: u64,
) -> anyhow::Result<Pki> {
    let (ca_dir, server) = match external_ca {
        Some(ca) => (ca.to_path_buf(), None),
        None => {
            let ca = dir.join("ca");
            pki::init_ca(&ca, "phonehome loadgen CA", CERT_DAYS).context("create the test CA")?;
            let srv = pki::issue_server(
                &ca,
                &["127.0.0.1".into(), "localhost".into()],
                "server",
                CERT_DAYS,
            )
            .context("issue the ingest's server certificate")?;
            let server = TlsConfig {
                ca_cert: ca.join(pki::CA_CERT_FILE),
                server_cert: srv.cert,
                server_key: srv.key,
            };
            (ca, Some(server))
        }
    };
    let ca_cert = ca_dir.join(pki::CA_CERT_FILE);
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&ca_cert)
        .with_context(|| format!("read {}", ca_cert.display()))?
    {
        let cert = cert.with_context(|| format!("{}: bad PEM", ca_cert.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("{}: not a usable CA certificate", ca_cert.display()))?;
    }
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let out_dir = dir.join("appliances");
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let slots: Vec<Mutex<Option<Appliance>>> = (0..count).map(|_| Mutex::new(None)).collect();
    let started = Instant::now();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get() * 4)
        .unwrap_or(8)
        .min(count as usize)
        .max(1);
    let step = (count / 10).max(1);
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count {
                            return Ok(());
                        }
                        let serial = fleet.serial(i)?;
                        let files = pki::issue_appliance(&ca_dir, &out_dir, &serial, CERT_DAYS)
                            .with_context(|| format!("issue the certificate of {serial}"))?;
                        let appliance =
                            client_for(serial, &files.cert, &files.key, &roots, &provider)?;
                        if let Ok(mut slot) = slots[i as usize].lock() {
                            *slot = Some(appliance);
                        }
                        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                        if count >= 100 && (n % step == 0) {
                            eprintln!(
                                "phonehome-loadgen: certificates: {n}/{count} ({:.1} s)",
                                started.elapsed().as_secs_f64()
                            );
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            match w.join() {
                Ok(r) => r?,
                Err(_) => bail!("a certificate thread panicked"),
            }
        }
        Ok(())
    })?;
    let appliances = slots
        .into_iter()
        .map(|m| m.into_inner().ok().flatten())
        .collect::<Option<Vec<_>>>()
        .context("a certificate was not issued")?;
    Ok(Pki { server, appliances })
}

/// The TLS client of one appliance: its own certificate, the fleet CA as the only root, and no
/// session resumption, because a real collector is a fresh process every day and always does
/// a full handshake.
fn client_for(
    serial: Serial,
    cert: &Path,
    key: &Path,
    roots: &Arc<rustls::RootCertStore>,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> anyhow::Result<Appliance> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect())
        .with_context(|| format!("read {}", cert.display()))?;
    let first = chain
        .first()
        .with_context(|| format!("{}: no certificate", cert.display()))?;
    let identity = appliance_identity(first)
        .with_context(|| format!("{}: not an appliance certificate", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("read {}", key.display()))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(chain, key)
        .context("TLS client certificate")?;
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Appliance {
        serial,
        tls: Arc::new(config),
        identity,
    })
}

/// Parses `https://host[:port]` and resolves it.
pub async fn external_target(url: &str) -> anyhow::Result<Target> {
    let rest = url
        .strip_prefix("https://")
        .with_context(|| format!("--target {url:?} must start with https://"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    // `[v6]:port`, `[v6]`, `host:port` or `host`.
    let (bare, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (h, after) = v6
                .split_once(']')
                .with_context(|| format!("--target {url:?}: unclosed ["))?;
            (h, after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    let port = match port {
        None => 443,
        Some(p) => p
            .parse::<u16>()
            .with_context(|| format!("--target {url:?}: bad port {p:?}"))?,
    };
    if bare.is_empty() {
        bail!("--target {url:?} names no host");
    }
    let addr = tokio::net::lookup_host((bare, port))
        .await
        .with_context(|| format!("resolve {bare}"))?
        .next()
        .with_context(|| format!("{bare} resolves to no address"))?;
    let server_name = ServerName::try_from(bare.to_owned())
        .with_context(|| format!("{bare:?} is not a valid TLS server name"))?;
    Ok(Target {
        addr,
        server_name,
        host: authority.to_owned(),
    })
}

/// The ingest running inside this process; stopped with [`LocalIngest::stop`].
#[derive(Debug)]
pub struct LocalIngest {
    pub target: Target,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl LocalIngest {
    /// Starts `phonehome_ingest::serve` on 127.0.0.1:0 (reports) and 127.0.0.1:0 (operations),
    /// exactly as the binary does, with its default body limit and the given pool size.
    pub async fn start(
        database_url: &str,
        files: &TlsConfig,
        pool_size: usize,
    ) -> anyhow::Result<Self> {
        let tls = tls::server_config(files).context("load the ingest's TLS files")?;
        let storage = Storage::connect(database_url, pool_size)?;
        let reports = TcpListener::bind("127.0.0.1:0")
            .await
            .context("listen on 127.0.0.1 for reports")?;
        let ops = TcpListener::bind("127.0.0.1:0")
            .await
            .context("listen on 127.0.0.1 for operations")?;
        let addr = reports.local_addr()?;
        let state = AppState::new(storage, DEFAULT_MAX_BODY_BYTES);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(phonehome_ingest::serve(reports, ops, tls, state, async {
            let _ = stopped.await;
        }));
        Ok(LocalIngest {
            target: Target {
                addr,
                server_name: ServerName::IpAddress(addr.ip().into()),
                host: addr.to_string(),
            },
            stop,
            task,
        })
    }

    /// Stops the ingest and waits for it to drain, so its pool is closed before the ceiling.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        match tokio::time::timeout(Duration::from_secs(40), self.task).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(e).context("the in-process ingest failed"),
            Ok(Err(e)) => Err(e).context("the in-process ingest panicked"),
            Err(_) => bail!("the in-process ingest did not stop within 40 s"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_description_hides_the_password() {
        let d = describe_db("postgres://u:secret@db.example:6543/phone");
        assert_eq!(d, "db.example:6543/phone");
    }

    #[tokio::test]
    async fn target_urls_parse() {
        let t = external_target("https://127.0.0.1:8443/").await.unwrap();
        assert_eq!(t.addr, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(t.host, "127.0.0.1:8443");
        let t = external_target("https://[::1]:9443").await.unwrap();
        assert_eq!(t.addr.port(), 9443);
        assert!(external_target("http://127.0.0.1:8443").await.is_err());
        assert!(external_target("https://127.0.0.1:x").await.is_err());
    }
}
