//! Everything before the first report: the database check, the throwaway PKI with one
//! certificate per simulated appliance, the TLS client configurations, and the in-process ingest.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use phonehome_ingest::config::{DEFAULT_MAX_BODY_BYTES, TlsConfig};
use phonehome_ingest::storage::Storage;
use phonehome_ingest::tls::{ApplianceIdentity, appliance_identity};
use phonehome_ingest::{AppState, tls};
use phonehome_pki::ca::{self, Authority};
use phonehome_schema::Serial;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::fleet::Fleet;

/// Certificates (and the throwaway CA) live 60 days: longer than `certificate_expiring`'s
/// default 30, so a simulated fleet does not raise an alert per appliance; the CA is made
/// fresh for each run and trusted nowhere else.
const CERT_DAYS: i64 = 60;

/// One simulated appliance: its serial and the TLS configuration that presents its certificate.
#[derive(Debug)]
pub struct Appliance {
    pub serial: Serial,
    pub tls: Arc<rustls::ClientConfig>,
    /// What the ingest derives from the certificate; the ceiling stores the same.
    pub identity: ApplianceIdentity,
}

/// A storage handle with the ingest's default settings but `pool_size` connections and
/// `writers` batch writers (at most one per connection).
pub fn storage(database_url: &str, pool_size: usize, writers: usize) -> anyhow::Result<Storage> {
    let settings = phonehome_ingest::storage::StorageSettings {
        pool_size,
        writers: writers.clamp(1, pool_size.max(1)),
        ..Default::default()
    };
    Ok(Storage::connect_with(database_url, settings)?)
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
    /// Threads that issued the appliance certificates.
    pub threads: usize,
}

/// Creates (or, with `external_ca`, uses) a CA and issues one certificate per appliance.
///
/// The CA and the ingest's server certificate are files in `dir` (the ingest loads them from
/// there); the appliance certificates are issued in memory, one thread per core, because
/// `pki::issue_appliance` writes two fsynced files per certificate: on the 2-core benchmark
/// machine that took about 0.6 ms per certificate to write and, its ext4 being mounted with
/// `discard`, 3 ms per file to delete, a minute and then ten more for 100,000 appliances. Each
/// appliance still gets its own key pair and a certificate whose CN and URI SAN carry its
/// serial, with the profile of `pki::issue_appliance` (a test compares the two), read back
/// through the ingest's own `appliance_identity` before use.
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
            ca::init_ca(&ca, "phonehome loadgen CA", CERT_DAYS, CERT_DAYS)
                .context("create the test CA")?;
            let srv = ca::issue_server(
                &ca,
                &["127.0.0.1".into(), "localhost".into()],
                "server",
                CERT_DAYS,
            )
            .context("issue the ingest's server certificate")?;
            let server = TlsConfig {
                ca_cert: ca.join(ca::CA_CERT_FILE),
                server_cert: srv.cert,
                server_key: srv.key,
            };
            (ca, Some(server))
        }
    };
    let ca_cert = ca_dir.join(ca::CA_CERT_FILE);
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&ca_cert)
        .with_context(|| format!("read {}", ca_cert.display()))?
    {
        let cert = cert.with_context(|| format!("{}: bad PEM", ca_cert.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("{}: not a usable CA certificate", ca_cert.display()))?;
    }
    let provider = phonehome_ingest::tls::provider();
    let verifier: Arc<dyn ServerCertVerifier> = Arc::new(OnceVerified::new(
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .context("the ingest's certificate verifier")?,
    ));
    let issuer = Authority::load(&ca_dir)
        .with_context(|| format!("{}: the CA to issue with", ca_dir.display()))?;
    let profile = Profile::new(CERT_DAYS, &issuer)?;

    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let started = Instant::now();
    // Issuing is pure CPU now: one thread per core.
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(count as usize)
        .max(1);
    let step = (count / 10).max(1);
    let mut issued: Vec<(u64, Appliance)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> anyhow::Result<Vec<(u64, Appliance)>> {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count {
                            return Ok(mine);
                        }
                        let serial = fleet.serial(i)?;
                        let appliance = profile
                            .issue(&issuer, serial, &verifier, &provider)
                            .with_context(|| format!("issue the certificate of appliance {i}"))?;
                        mine.push((i, appliance));
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
        let mut all = Vec::with_capacity(count as usize);
        for w in workers {
            match w.join() {
                Ok(r) => all.extend(r?),
                Err(_) => bail!("a certificate thread panicked"),
            }
        }
        Ok(all)
    })?;
    issued.sort_unstable_by_key(|(i, _)| *i);
    anyhow::ensure!(
        issued.len() as u64 == count,
        "{} certificates issued, {count} wanted",
        issued.len()
    );
    Ok(Pki {
        server,
        appliances: issued.into_iter().map(|(_, a)| a).collect(),
        threads,
    })
}

/// What every appliance certificate shares, as `ca::issue_appliance` makes them
/// ([`ca::appliance_params`]), the moment of issue, and the issuing CA to send after it.
struct Profile {
    now: chrono::DateTime<Utc>,
    days: i64,
    intermediate: Option<CertificateDer<'static>>,
}

impl Profile {
    fn new(days: i64, issuer: &Authority) -> anyhow::Result<Self> {
        Ok(Profile {
            now: Utc::now(),
            days,
            intermediate: issuer
                .intermediate_der()
                .context("read the issuing CA")?
                .map(CertificateDer::from),
        })
    }

    /// A new key pair and a certificate for `serial` signed by `issuer`, as the appliance's TLS
    /// client.
    fn issue(
        &self,
        issuer: &Authority,
        serial: Serial,
        verifier: &Arc<dyn ServerCertVerifier>,
        provider: &Arc<rustls::crypto::CryptoProvider>,
    ) -> anyhow::Result<Appliance> {
        let (cert, key) = self.certificate(issuer, &serial)?;
        let mut chain = vec![cert];
        chain.extend(self.intermediate.clone());
        client_for(serial, chain, key, verifier, provider)
    }

    /// A new key pair and a certificate for `serial` signed by `issuer`.
    fn certificate(
        &self,
        issuer: &Authority,
        serial: &Serial,
    ) -> anyhow::Result<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
        let params = ca::appliance_params(serial, self.now, self.days)
            .context("the certificate's profile")?;
        let key = phonehome_pki::KeyType::default()
            .generate()
            .context("generate a key")?;
        let cert = params
            .signed_by(&key, issuer.issuer())
            .context("sign the certificate")?;
        let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        Ok((cert.der().clone(), key))
    }
}

/// The TLS client of one appliance: its own certificate, the fleet CA as the only root (through
/// [`OnceVerified`]), and no session resumption, because a real collector is a fresh process
/// every day and always does a full handshake.
fn client_for(
    serial: Serial,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    verifier: &Arc<dyn ServerCertVerifier>,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> anyhow::Result<Appliance> {
    let first = chain.first().context("no certificate")?;
    let identity = appliance_identity(first).context("not an appliance certificate")?;
    anyhow::ensure!(
        identity.serial == serial,
        "the certificate speaks for {}, not {serial}",
        identity.serial
    );
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
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

/// How long the simulated fleet takes the ingest's verified certificate chain as verified.
const SERVER_CHAIN_VERIFIED_FOR: u64 = 60;

/// The simulated appliances' check of the ingest's certificate: its chain to the fleet CA is
/// verified once a minute for the whole fleet, not by each of a million simulated appliances.
/// A real appliance verifies it on its own CPU; here those verifications (two Ed25519
/// signatures a connection) took 5.7 % of the process that runs the ingest under test beside
/// them (docs/benchmarks.md, item 3, fourth pass). The ingest sees the same handshake either way,
/// and every handshake still verifies the ingest's signature over it (`verify_tls13_signature`),
/// which proves it holds the certificate's key. A certificate that expires during a run is
/// taken for up to a minute longer: acceptable in a load generator, not in a collector.
#[derive(Debug)]
struct OnceVerified {
    inner: Arc<dyn ServerCertVerifier>,
    verified: std::sync::Mutex<Option<Verified>>,
}

/// The chain and name last verified, and until when (Unix seconds).
type Verified = (Vec<Vec<u8>>, String, u64);

impl OnceVerified {
    fn new(inner: Arc<dyn ServerCertVerifier>) -> Self {
        OnceVerified {
            inner,
            verified: std::sync::Mutex::new(None),
        }
    }
}

impl ServerCertVerifier for OnceVerified {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = || {
            std::iter::once(end_entity)
                .chain(intermediates)
                .map(|c| c.as_ref())
        };
        let name = server_name.to_str();
        {
            let verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((der, n, until)) = verified.as_ref()
                && now.as_secs() < *until
                && *n == name
                && der.iter().map(Vec::as_slice).eq(presented())
            {
                return Ok(ServerCertVerified::assertion());
            }
        }
        let ok = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        *self.verified.lock().unwrap_or_else(|p| p.into_inner()) = Some((
            presented().map(<[u8]>::to_vec).collect(),
            name.into_owned(),
            now.as_secs().saturating_add(SERVER_CHAIN_VERIFIED_FOR),
        ));
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
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

/// Opens a TCP connection to `target` and does the TLS handshake with `a`'s certificate. The
/// error says which step failed.
pub async fn connect(target: &Target, a: &Appliance) -> Result<TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(target.addr)
        .await
        .map_err(|e| format!("connect to {}: {e}", target.addr))?;
    // Small request, small answer: Nagle would only add delay.
    let _ = tcp.set_nodelay(true);
    TlsConnector::from(a.tls.clone())
        .connect(target.server_name.clone(), tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))
}

/// The in-process ingest's admission limits (`max_in_flight`, `max_connections`).
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    pub max_in_flight: usize,
    pub max_connections: usize,
    /// How long a request waits for an in-flight slot before its 503.
    pub wait_ms: u64,
    /// Reports one appliance may have in flight. A real appliance sends its spool one report
    /// at a time; the load generator hands any simulated appliance's next day to whichever
    /// sender is free, so with fewer appliances than senders one appliance can have several
    /// reports in flight, which the ingest's default of 2 would refuse with 429.
    pub per_appliance: usize,
}

/// How loaded the in-process ingest is, read from its own admission semaphores.
#[derive(Debug, Clone)]
pub struct IngestGauge {
    pub admission: Admission,
    in_flight: Arc<tokio::sync::Semaphore>,
    connections: Arc<tokio::sync::Semaphore>,
}

impl IngestGauge {
    /// Reports being handled and connections held open by the ingest right now.
    pub fn load(&self) -> (usize, usize) {
        let used =
            |s: &tokio::sync::Semaphore, max: usize| max.saturating_sub(s.available_permits());
        (
            used(&self.in_flight, self.admission.max_in_flight),
            used(&self.connections, self.admission.max_connections),
        )
    }
}

/// How often the in-process ingest runs its maintenance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Faster than shipped, for runs that pass simulated days in seconds.
    Compressed,
    /// The ingest's shipped defaults, for runs in real time (the outage drain).
    Shipped,
}

/// The ingest running inside this process; stopped with [`LocalIngest::stop`].
#[derive(Debug)]
pub struct LocalIngest {
    pub target: Target,
    pub gauge: IngestGauge,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    maintenance: tokio::task::JoinHandle<()>,
}

impl LocalIngest {
    /// Starts `phonehome_ingest::serve` on 127.0.0.1:0 (reports) and 127.0.0.1:0 (operations),
    /// exactly as the binary does, with its default body limit and the given pool size and
    /// admission limits.
    pub async fn start(
        database_url: &str,
        files: &TlsConfig,
        pool_size: usize,
        writers: usize,
        admission: Admission,
        pace: Pace,
    ) -> anyhow::Result<Self> {
        let tls = tls::ServerTls::load(files, tls::DEFAULT_RENEW_GRACE)
            .context("load the ingest's TLS files")?;
        let storage = storage(database_url, pool_size, writers)?;
        storage
            .load_dictionaries()
            .await
            .context("load the report-body dictionaries")?;
        // As `phonehome-ingest serve` does: maintenance trains the report-body dictionary once
        // there are enough reports, which is most of what a report costs on disk.
        let maintenance = match pace {
            // A throughput run squeezes a month into seconds (a simulated day passes in well
            // under a second), so it looks at the young deployment (dictionary, statistics of
            // the growing tables) every 100 ms for a minute (the ingest looks every 5 s for
            // an hour, a smaller share of a day than 100 ms is of this run's), and runs in full
            // every 30 s.
            Pace::Compressed => phonehome_ingest::storage::maintenance::spawn_paced(
                storage.clone(),
                "loadgen".into(),
                std::time::Duration::from_secs(30),
                std::time::Duration::from_millis(100),
                std::time::Duration::from_secs(60),
            ),
            // A drain runs in real time: the shipped pacing, a full run at start and then
            // hourly, a look every 5 s in the first hour. (Every 30 s, the full run's reliability
            // rollup over a million appliances' drives halved the drain's rate while it ran.)
            Pace::Shipped => phonehome_ingest::storage::maintenance::spawn(
                storage.clone(),
                "loadgen".into(),
                std::time::Duration::from_secs(
                    phonehome_ingest::config::DEFAULT_MAINTENANCE_INTERVAL_SECONDS,
                ),
            ),
        };
        let reports = phonehome_ingest::server::listen_reports(([127, 0, 0, 1], 0).into())
            .context("listen on 127.0.0.1 for reports")?;
        let ops = TcpListener::bind("127.0.0.1:0")
            .await
            .context("listen on 127.0.0.1 for operations")?;
        let addr = reports.local_addr()?;
        let state = AppState::new(storage, DEFAULT_MAX_BODY_BYTES)
            .with_max_in_flight(admission.max_in_flight)
            .with_max_connections(admission.max_connections)
            .with_max_in_flight_per_appliance(admission.per_appliance)
            .with_admission_wait(std::time::Duration::from_millis(admission.wait_ms));
        let (in_flight, connections) = (state.admission.clone(), state.connections.clone());
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
            gauge: IngestGauge {
                admission,
                in_flight,
                connections,
            },
            stop,
            task,
            maintenance,
        })
    }

    /// Stops the ingest and waits for it to drain, so its pool is closed before the ceiling.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.maintenance.abort();
        let _ = self.stop.send(());
        match tokio::time::timeout(Duration::from_secs(40), self.task).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(e).context("the in-process ingest failed"),
            Ok(Err(e)) => Err(e).context("the in-process ingest panicked"),
            Err(_) => bail!("the in-process ingest did not stop within 40 s"),
        }
    }
}

/// A listener that does the ingest's TLS and HTTP for reports and answers 202 without parsing
/// or storing anything (`server::serve_reports_with`): the bare cost of a connection, for the
/// connection ceiling.
pub struct NullIngest {
    pub target: Target,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl NullIngest {
    /// Starts on 127.0.0.1:0 with the ingest's TLS files and connection limit. The state's
    /// storage is never used (its pool connects lazily).
    pub async fn start(
        database_url: &str,
        files: &TlsConfig,
        max_connections: usize,
    ) -> anyhow::Result<Self> {
        let tls = tls::ServerTls::load(files, tls::DEFAULT_RENEW_GRACE)
            .context("load the ingest's TLS files")?;
        let storage = Storage::connect(database_url, 1)?;
        let listener = phonehome_ingest::server::listen_reports(([127, 0, 0, 1], 0).into())
            .context("listen on 127.0.0.1 for the connection ceiling")?;
        let addr = listener.local_addr()?;
        let state =
            AppState::new(storage, DEFAULT_MAX_BODY_BYTES).with_max_connections(max_connections);
        // The body is read to its end, as the ingest reads it, then dropped.
        let app = axum::Router::new().route(
            "/v1/reports",
            axum::routing::post(|body: axum::body::Bytes| async move {
                let _ = body.len();
                (
                    axum::http::StatusCode::ACCEPTED,
                    [("content-type", "application/json")],
                    r#"{"status":"discarded"}"#,
                )
            }),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(phonehome_ingest::server::serve_reports_with(
            listener,
            tls,
            state,
            app.layer(axum::extract::DefaultBodyLimit::max(DEFAULT_MAX_BODY_BYTES)),
            async {
                let _ = stopped.await;
            },
        ));
        Ok(NullIngest {
            target: Target {
                addr,
                server_name: ServerName::IpAddress(addr.ip().into()),
                host: addr.to_string(),
            },
            stop,
            task,
        })
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        match tokio::time::timeout(Duration::from_secs(40), self.task).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(e).context("the connection-ceiling listener failed"),
            Ok(Err(e)) => Err(e).context("the connection-ceiling listener panicked"),
            Err(_) => bail!("the connection-ceiling listener did not stop within 40 s"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ingest_chain_is_taken_as_verified_only_byte_for_byte_and_for_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let chain_of = |ca: &Path| -> Vec<CertificateDer<'static>> {
            let files = ca::issue_server(ca, &["127.0.0.1".into()], "server", 2).unwrap();
            CertificateDer::pem_file_iter(&files.cert)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        let ours = dir.path().join("ours");
        let theirs = dir.path().join("theirs");
        ca::init_ca(&ours, "ours", 2, 2).unwrap();
        ca::init_ca(&theirs, "theirs", 2, 2).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ours.join(ca::CA_CERT_FILE)).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let counting = Arc::new(Counting {
            inner: rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                phonehome_ingest::tls::provider(),
            )
            .build()
            .unwrap(),
            calls: Default::default(),
        });
        let full = || counting.calls.load(std::sync::atomic::Ordering::SeqCst);
        let verifier = OnceVerified::new(counting.clone());
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let now = rustls::pki_types::UnixTime::now();
        let verify = |chain: &[CertificateDer<'static>],
                      name: &ServerName<'_>,
                      at: rustls::pki_types::UnixTime| {
            verifier.verify_server_cert(&chain[0], &chain[1..], name, &[], at)
        };
        let good = chain_of(&ours);
        let foreign = chain_of(&theirs);
        assert!(verify(&good, &name, now).is_ok());
        assert!(verify(&good, &name, now).is_ok(), "again, from the memo");
        assert_eq!(full(), 1);
        assert!(
            verify(&foreign, &name, now).is_err(),
            "another CA's certificate, right after a good one"
        );
        assert!(
            verify(&good, &ServerName::try_from("ingest.example").unwrap(), now).is_err(),
            "the good chain for a name it does not carry"
        );
        let mut other_issuing = good.clone();
        other_issuing[1] = foreign[1].clone();
        assert!(
            verify(&other_issuing, &name, now).is_err(),
            "the same certificate behind another issuing CA"
        );
        assert!(
            verify(&good[..1], &name, now).is_err(),
            "without its issuing CA"
        );
        assert_eq!(full(), 5, "each of those verified in full");
        assert!(verify(&good, &name, now).is_ok());
        assert_eq!(full(), 5);
        let later = rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            now.as_secs() + SERVER_CHAIN_VERIFIED_FOR,
        ));
        assert!(verify(&good, &name, later).is_ok());
        assert_eq!(full(), 6, "verified in full again after a minute");
    }

    /// Counts the verifications the memo leaves to the full verifier.
    #[derive(Debug)]
    struct Counting {
        inner: Arc<rustls::client::WebPkiServerVerifier>,
        calls: std::sync::atomic::AtomicUsize,
    }

    impl ServerCertVerifier for Counting {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp_response: &[u8],
            now: rustls::pki_types::UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            )
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    }

    #[test]
    fn database_description_hides_the_password() {
        let d = describe_db("postgres://u:secret@db.example:6543/phone");
        assert_eq!(d, "db.example:6543/phone");
    }

    #[test]
    fn in_memory_certificates_have_the_profile_of_pki_issue_appliance() {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        ca::init_ca(&ca, "test CA", 2, 2).unwrap();
        let serial = Serial::parse("SN 42/x").unwrap();
        let files = ca::issue_appliance(
            &ca,
            dir.path(),
            &serial,
            CERT_DAYS,
            phonehome_pki::KeyType::default(),
        )
        .unwrap();
        let from_pki = CertificateDer::from_pem_file(&files.cert).unwrap();
        let issuer = Authority::load(&ca).unwrap();
        let (in_memory, _) = Profile::new(CERT_DAYS, &issuer)
            .unwrap()
            .certificate(&issuer, &serial)
            .unwrap();

        let (_, a) = X509Certificate::from_der(&from_pki).unwrap();
        let (_, b) = X509Certificate::from_der(&in_memory).unwrap();
        assert_eq!(a.subject().to_string(), b.subject().to_string());
        assert_eq!(a.issuer().to_string(), b.issuer().to_string());
        // Issued a moment apart: the same validity to within the test's own run time.
        let secs = |t: x509_parser::time::ASN1Time| t.timestamp();
        assert!((secs(a.validity().not_before) - secs(b.validity().not_before)).abs() <= 5);
        assert!((secs(a.validity().not_after) - secs(b.validity().not_after)).abs() <= 5);
        assert_eq!(a.signature_algorithm, b.signature_algorithm);
        assert_eq!(a.public_key().algorithm, b.public_key().algorithm);
        assert_ne!(
            a.public_key().raw,
            b.public_key().raw,
            "a key pair of its own"
        );
        let extensions = |c: &X509Certificate<'_>| {
            let mut e: Vec<_> = c
                .extensions()
                .iter()
                .map(|e| {
                    (
                        e.oid.to_id_string(),
                        e.critical,
                        e.parsed_extension().clone(),
                    )
                })
                .filter(|(oid, ..)| {
                    // The key identifiers differ with the key; their presence must not.
                    !matches!(oid.as_str(), "2.5.29.14")
                })
                .collect();
            e.sort_by(|x, y| x.0.cmp(&y.0));
            format!("{e:?}")
        };
        assert_eq!(extensions(&a), extensions(&b));
        assert_eq!(
            appliance_identity(&from_pki).unwrap().serial,
            appliance_identity(&in_memory).unwrap().serial
        );
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
