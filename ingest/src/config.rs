//! Ingest configuration: defaults, then a TOML file, then `PHONEHOME_*` environment variables,
//! layered by `figment`. Each key is declared once, as a field of a settings struct (with its
//! default in that struct's `Default`); the file's form is the struct's, and the environment
//! variable of `[section] key` is `PHONEHOME_SECTION_KEY`, found by walking the defaults.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};
use serde::{Deserialize, Serialize};

/// A value that must never reach a log: `Debug` prints `[redacted]`.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Paths of the PEM files the report listener needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The fleet CA: appliance certificates must chain to it.
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// Everything `phonehome-ingest serve` needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// libpq-style URL or key=value string; it may carry a password, hence `Secret`.
    pub database_url: Secret,
    /// A streaming replica of `database_url` (same forms) that the dashboard, the JSON API and
    /// `/metrics`' fleet counts read from; reports, alert evaluation, tokens, writes and
    /// `/healthz` stay on the primary. Unset (or empty): everything on the primary.
    pub read_database_url: Option<Secret>,
    /// The database URLs lead to a transaction-pooling proxy that keeps no prepared statement
    /// from one transaction to the next (PgBouncer before 1.21, or without
    /// `max_prepared_statements`, in `pool_mode = transaction`): each statement outside an
    /// explicit transaction then runs in one of its own, and the batch writer's statements are
    /// prepared per batch.
    pub db_transaction_pooler: bool,
    pub report_listen: SocketAddr,
    pub ops_listen: SocketAddr,
    pub tls: TlsConfig,
    /// Largest accepted report after decompression.
    pub max_body_bytes: usize,
    pub db_pool_size: usize,
    /// Reports received or stored at once before the ingest answers 503 with `Retry-After`.
    pub max_in_flight: usize,
    /// Connections the report listener holds open at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Reports one appliance (one certificate serial) may have in flight at once; more get 429
    /// with Retry-After, so one appliance cannot take its neighbours' slots.
    pub max_in_flight_per_appliance: usize,
    /// Connections the operations listener holds open at once; more wait in the kernel's
    /// backlog.
    pub ops_max_connections: usize,
    /// Host names (with or without a port) the operations listener answers for, beside
    /// `localhost`, IP addresses and the host of `[alertmanager] dashboard_url`: a request for
    /// any other name (a DNS-rebinding page in an operator's browser) gets 421.
    pub ops_allowed_hosts: Vec<String>,
    /// Whether reads on the operations listener (dashboard pages, the read API, `/metrics`)
    /// need an API token. Off only behind an authenticating proxy or on a trusted network;
    /// writes always need an admin token, `/healthz` and `/readyz` never need one.
    pub ops_reads_require_token: bool,
    // Issue 13 (listener bounds): how long a body and an operations request may take.
    /// Seconds a report's whole body may take once its headers are in (408 after): room for a
    /// 1 MiB report on a slow link, while a stalled post gives its slot back.
    pub body_timeout_secs: u64,
    /// Slowest body accepted after the first [`BODY_RATE_GRACE`]: a post that falls below this
    /// average (bytes per second) gets 408 before `body_timeout_secs`. 0 switches it off.
    pub min_body_bytes_per_sec: u64,
    /// Seconds the operations listener waits for a request's headers, which is also how long
    /// it keeps an idle keep-alive connection.
    pub ops_header_timeout_secs: u64,
    /// Seconds after which an operations connection is closed, whatever it is doing.
    pub ops_connection_lifetime_secs: u64,
    /// How long a request that finds every in-flight slot taken waits for one before its 503.
    pub admission_wait_ms: u64,
    /// How old the dashboard's and `/metrics`' fleet-wide counts may be (they scan every
    /// appliance once, so they are shared and reused rather than computed per view).
    pub dashboard_counts_max_age_secs: u64,
    /// Concurrent batch writers (each holds one database connection while it commits).
    pub db_writers: usize,
    /// Most reports committed in one transaction.
    pub db_batch_max: usize,
    /// History older than this is dropped (whole months); older reports are refused.
    pub retention_days: u32,
    /// How often maintenance runs (partitions ahead, retention, dictionary, version counts,
    /// statistics); once per interval for all replicas together. In the first hour after a
    /// replica starts it also looks every 5 s at what a young deployment cannot wait an
    /// interval for: statistics of growing tables, a first dictionary and its replacement.
    pub maintenance_interval_seconds: u64,
    /// Name of this replica in logs and `maintenance_runs` (default: hostname:pid).
    pub replica_name: Option<String>,
    /// `[alerts]`: the rules' switches and thresholds.
    pub alerts: crate::alerts::AlertsConfig,
    /// Where alerts are posted; the notifier is off while `url` is unset.
    pub alertmanager: AlertmanagerConfig,
    /// `[pki]`: enrolment, renewal and revocation.
    pub pki: PkiConfig,
}

pub use crate::alertmanager::{
    AlertmanagerConfig, DEFAULT_ALERTMANAGER_MAX_NEW_PER_MINUTE,
    DEFAULT_ALERTMANAGER_RESEND_SECONDS, MAX_ALERTMANAGER_RESEND_SECONDS,
};
pub use crate::certs::PkiConfig;

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/phonehome";
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Enough to keep PostgreSQL busy with a queue per connection, small enough to bound memory
/// (at most this many bodies of `max_body_bytes` at once).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;
/// A full maintenance run (partitions, retention, dictionary, rollups, reliability) every hour.
pub const DEFAULT_MAINTENANCE_INTERVAL_SECONDS: u64 = 3600;

/// Twice as many connections as reports may be in flight (and twice `max_in_flight` when only
/// that is set). A request that finds every in-flight slot taken waits up to a second
/// (`admission_wait_ms`) for one before it is refused with a 503, so the extra connections queue behind the busy ones rather
/// than each costing a TLS handshake (the expensive part of a report) and a refusal; the rest
/// of a fleet calling at once waits in the kernel's accept backlog, which costs nothing
/// (docs/benchmarks.md, outage drain). 512 slots of a connection lasting 300 ms over a slow WAN
/// still admit 1,700 connections/s, 140 times a million-appliance fleet's daily average.
pub const DEFAULT_MAX_CONNECTIONS: usize = 2 * DEFAULT_MAX_IN_FLIGHT;
/// A collector sends one report at a time; two leave room for a retry racing its original.
pub const DEFAULT_MAX_IN_FLIGHT_PER_APPLIANCE: usize = 2;
/// Operators' browsers and a Prometheus or two: far fewer than the report listener's.
pub const DEFAULT_OPS_MAX_CONNECTIONS: usize = 256;
/// A 1 MiB report (before compression; collectors send it compressed) at 20 KiB/s, about a
/// 160 kbit/s link. The collector's own request timeout is 30 s by default: raise both
/// together for links slower than that.
pub const DEFAULT_BODY_TIMEOUT_SECS: u64 = 60;
/// 1 KiB/s after [`BODY_RATE_GRACE`]: an honest link is far faster, and a post that sends
/// nothing (a dead link, or a client holding its slot) is let go after the grace, not after
/// `body_timeout_secs`.
pub const DEFAULT_MIN_BODY_BYTES_PER_SEC: u64 = 1024;
/// How long a body may take to start flowing before `min_body_bytes_per_sec` applies: a
/// retransmission or two on a lossy link.
pub const BODY_RATE_GRACE: std::time::Duration = std::time::Duration::from_secs(10);
/// The longest body deadline accepted: a slot held longer is a slot its neighbours miss.
pub const MAX_BODY_TIMEOUT_SECS: u64 = 600;
/// Browsers and Prometheus send their headers at once; anything slower is not an operator.
pub const DEFAULT_OPS_HEADER_TIMEOUT_SECS: u64 = 10;
/// Longer than any page or scrape takes; browsers and Prometheus reconnect.
pub const DEFAULT_OPS_CONNECTION_LIFETIME_SECS: u64 = 120;
/// A handshaken connection is worth a short wait: refusing it wastes the handshake and brings
/// the client back for another (docs/benchmarks.md, outage drain).
pub const DEFAULT_ADMISSION_WAIT_MS: u64 = 1000;
/// A cap that keeps a waiting request well inside the collector's 30 s timeout, so a client hears
/// "come back later" rather than nothing.
pub const MAX_ADMISSION_WAIT_MS: u64 = 10_000;
/// The contract refuses reports older than this anyway (`MAX_REPORT_AGE_DAYS`), so a longer
/// retention would keep nothing more.
pub const DEFAULT_RETENTION_DAYS: u32 = 400;

impl Default for Config {
    fn default() -> Self {
        Config {
            database_url: Secret::new(DEFAULT_DATABASE_URL),
            read_database_url: None,
            db_transaction_pooler: false,
            report_listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            ops_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: TlsConfig {
                ca_cert: PathBuf::from("/etc/phonehome/pki/ca.crt"),
                server_cert: PathBuf::from("/etc/phonehome/pki/server.crt"),
                server_key: PathBuf::from("/etc/phonehome/pki/server.key"),
            },
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            db_pool_size: 16,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_in_flight_per_appliance: DEFAULT_MAX_IN_FLIGHT_PER_APPLIANCE,
            ops_max_connections: DEFAULT_OPS_MAX_CONNECTIONS,
            ops_allowed_hosts: Vec::new(),
            ops_reads_require_token: true,
            body_timeout_secs: DEFAULT_BODY_TIMEOUT_SECS,
            min_body_bytes_per_sec: DEFAULT_MIN_BODY_BYTES_PER_SEC,
            ops_header_timeout_secs: DEFAULT_OPS_HEADER_TIMEOUT_SECS,
            ops_connection_lifetime_secs: DEFAULT_OPS_CONNECTION_LIFETIME_SECS,
            admission_wait_ms: DEFAULT_ADMISSION_WAIT_MS,
            dashboard_counts_max_age_secs: crate::dashboard::DEFAULT_COUNTS_MAX_AGE.as_secs(),
            db_writers: 4,
            db_batch_max: 64,
            retention_days: DEFAULT_RETENTION_DAYS,
            maintenance_interval_seconds: DEFAULT_MAINTENANCE_INTERVAL_SECONDS,
            replica_name: None,
            alerts: crate::alerts::AlertsConfig::default(),
            alertmanager: AlertmanagerConfig::default(),
            pki: PkiConfig::default(),
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value of the wrong type or an unknown key, named by where it came from (the file and
    /// key, or the environment variable).
    #[error("{0}")]
    Layer(String),
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Host names the operations listener answers for beside localhost and IP addresses:
    /// `ops_allowed_hosts`, and the host of `[alertmanager] dashboard_url`, which operators use.
    pub fn ops_hosts(&self) -> Vec<String> {
        let mut hosts = self.ops_allowed_hosts.clone();
        if let Some(url) = &self.alertmanager.dashboard_url {
            let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
            let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let host = match host.rsplit_once(':') {
                Some((h, port)) if !h.contains(']') || h.ends_with(']') => {
                    if port.bytes().all(|b| b.is_ascii_digit()) {
                        h
                    } else {
                        host
                    }
                }
                _ => host,
            };
            if !host.is_empty() {
                hosts.push(host.trim_matches(['[', ']']).to_ascii_lowercase());
            }
        }
        hosts
    }

    /// The storage layer's part of the configuration.
    pub fn storage_settings(&self) -> crate::storage::StorageSettings {
        crate::storage::StorageSettings {
            pool_size: self.db_pool_size,
            writers: self.db_writers,
            batch_max: self.db_batch_max,
            retention_days: self.retention_days,
            alerts: std::sync::Arc::new(self.alerts.clone()),
            transaction_pooler: self.db_transaction_pooler,
            read_database_url: self.read_database_url.clone(),
            ..crate::storage::StorageSettings::default()
        }
    }

    /// The storage layer's settings for a one-shot command (`migrate`, `token`, `appliance`,
    /// `ca`): one connection, through the pooler as `serve` goes.
    pub fn command_storage_settings(&self) -> crate::storage::StorageSettings {
        crate::storage::StorageSettings {
            pool_size: 1,
            writers: 1,
            transaction_pooler: self.db_transaction_pooler,
            ..crate::storage::StorageSettings::default()
        }
    }

    /// Loads defaults, then `path` (if given), then the process environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// As [`Config::load`], with the environment supplied by the caller (tests use this).
    pub fn load_with_env(
        path: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let defaults = figment::providers::Serialized::defaults(Config::default());
        let default_dict = defaults
            .data()
            .map_err(|e| ConfigError::Invalid(format!("the defaults: {e}")))?
            .remove(&Profile::Default)
            .unwrap_or_default();
        let mut figment = Figment::from(defaults);
        let mut connections_given = false;
        if let Some(path) = path {
            let file = TomlFile::read(path)?;
            connections_given |= file.table.contains_key("max_connections");
            figment = figment.merge(file);
        }
        let env = EnvVars::new(vars, &default_dict);
        connections_given |= env.dict.contains_key("max_connections");
        let figment = figment.merge(env);
        // Lossy: a variable is text, and `PHONEHOME_MAX_IN_FLIGHT=512` means the number.
        let mut config: Config = figment
            .extract_lossy()
            .map_err(|e| ConfigError::Layer(describe(&e)))?;
        // Relative paths in a config file mean "next to the config file", not "wherever the
        // service happened to be started"; from the environment they are the process's.
        for (key, path) in [
            ("tls.ca_cert", Some(&mut config.tls.ca_cert)),
            ("tls.server_cert", Some(&mut config.tls.server_cert)),
            ("tls.server_key", Some(&mut config.tls.server_key)),
            ("pki.ca_dir", config.pki.ca_dir.as_mut()),
        ] {
            if let (Some(path), Some(Source::File(file))) = (
                path,
                figment.find_metadata(key).and_then(|m| m.source.as_ref()),
            ) {
                *path = file.parent().unwrap_or(Path::new(".")).join(&*path);
            }
        }
        // An empty value switches off what a layer below set.
        config.alertmanager.url = config.alertmanager.url.filter(|v| !v.is_empty());
        config.alertmanager.dashboard_url =
            config.alertmanager.dashboard_url.filter(|v| !v.is_empty());
        config.pki.ca_dir = config.pki.ca_dir.filter(|p| !p.as_os_str().is_empty());
        config.read_database_url = config
            .read_database_url
            .filter(|url| !url.expose().trim().is_empty());
        if !connections_given {
            // Follows max_in_flight unless set: see DEFAULT_MAX_CONNECTIONS.
            config.max_connections = config.max_in_flight.saturating_mul(2);
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_body_bytes < 1024 {
            return Err(ConfigError::Invalid(format!(
                "max_body_bytes = {} is too small; a report needs at least 1024 bytes",
                self.max_body_bytes
            )));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "max_connections must be at least 1".into(),
            ));
        }
        if self.max_in_flight_per_appliance == 0 || self.ops_max_connections == 0 {
            return Err(ConfigError::Invalid(
                "max_in_flight_per_appliance and ops_max_connections must be at least 1".into(),
            ));
        }
        if self.max_in_flight == 0 {
            return Err(ConfigError::Invalid(
                "max_in_flight must be at least 1".into(),
            ));
        }
        if !(1..=MAX_BODY_TIMEOUT_SECS).contains(&self.body_timeout_secs) {
            return Err(ConfigError::Invalid(format!(
                "body_timeout_secs = {} must be between 1 and {MAX_BODY_TIMEOUT_SECS} (a post \
                 holds an in-flight slot while its body arrives)",
                self.body_timeout_secs
            )));
        }
        if self.ops_header_timeout_secs == 0
            || self.ops_connection_lifetime_secs < self.ops_header_timeout_secs
        {
            return Err(ConfigError::Invalid(format!(
                "ops_header_timeout_secs = {} must be at least 1, and \
                 ops_connection_lifetime_secs = {} at least as long",
                self.ops_header_timeout_secs, self.ops_connection_lifetime_secs
            )));
        }
        if self.admission_wait_ms > MAX_ADMISSION_WAIT_MS {
            return Err(ConfigError::Invalid(format!(
                "admission_wait_ms = {} is too long: at most {MAX_ADMISSION_WAIT_MS} (a waiting \
                 request holds its connection; 0 refuses at once)",
                self.admission_wait_ms
            )));
        }
        if self.db_writers == 0 || self.db_writers > self.db_pool_size {
            return Err(ConfigError::Invalid(format!(
                "db_writers = {} must be between 1 and db_pool_size ({}): each writer holds a \
                 connection while it commits",
                self.db_writers, self.db_pool_size
            )));
        }
        if self.alerts.max_open_per_appliance == 0 {
            return Err(ConfigError::Invalid(
                "[alerts] max_open_per_appliance must be at least 1".into(),
            ));
        }
        let full = &self.alerts.filesystem_full;
        for (name, t) in std::iter::once(("", &full.thresholds))
            .chain(full.mount_points.iter().map(|(m, t)| (m.as_str(), t)))
        {
            if !(0.0..=100.0).contains(&t.warn_percent)
                || !(0.0..=100.0).contains(&t.critical_percent)
                || t.warn_percent > t.critical_percent
            {
                return Err(ConfigError::Invalid(format!(
                    "alerts.filesystem_full{}: warn_percent ({}) and critical_percent ({}) must be \
                     percentages with warn ≤ critical",
                    if name.is_empty() {
                        String::new()
                    } else {
                        format!(".mount_points.{name:?}")
                    },
                    t.warn_percent,
                    t.critical_percent
                )));
            }
        }
        if self.alerts.filesystem_filling.reports < 3 {
            return Err(ConfigError::Invalid(
                "alerts.filesystem_filling.reports must be at least 3 (a trend needs points)"
                    .into(),
            ));
        }
        if self.alerts.appliance_silent.hours == 0 {
            return Err(ConfigError::Invalid(
                "alerts.appliance_silent.hours must be at least 1".into(),
            ));
        }
        if self.db_batch_max == 0 {
            return Err(ConfigError::Invalid(
                "db_batch_max must be at least 1".into(),
            ));
        }
        if self.retention_days == 0 {
            return Err(ConfigError::Invalid(
                "retention_days must be at least 1".into(),
            ));
        }
        if self.maintenance_interval_seconds == 0 {
            return Err(ConfigError::Invalid(
                "maintenance_interval_seconds must be at least 1".into(),
            ));
        }
        if self.db_pool_size == 0 {
            return Err(ConfigError::Invalid(
                "db_pool_size must be at least 1".into(),
            ));
        }
        self.database_url
            .expose()
            .parse::<tokio_postgres::Config>()
            .map_err(|e| ConfigError::Invalid(format!("database_url is not usable: {e}")))?;
        if let Some(url) = &self.read_database_url {
            url.expose()
                .parse::<tokio_postgres::Config>()
                .map_err(|e| {
                    ConfigError::Invalid(format!("read_database_url is not usable: {e}"))
                })?;
        }
        self.alertmanager.validate()?;
        self.pki.validate()?;
        Ok(())
    }
}

/// The TOML file as a figment layer: parsed by the workspace's `toml`, named by its path so
/// errors and relative paths know where a value came from.
struct TomlFile {
    path: PathBuf,
    table: toml::Table,
}

impl TomlFile {
    fn read(path: &Path) -> Result<TomlFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(TomlFile {
            path: path.to_path_buf(),
            table,
        })
    }
}

impl Provider for TomlFile {
    fn metadata(&self) -> Metadata {
        Metadata::from("config file", self.path.as_path())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        figment::providers::Serialized::defaults(&self.table).data()
    }
}

/// The `PHONEHOME_*` environment variables that name a configuration key, as a figment layer.
/// `PHONEHOME_OPS_LISTEN` is `ops_listen`, `PHONEHOME_TLS_CA_CERT` is `[tls] ca_cert`,
/// `PHONEHOME_ALERTS_CLOCK_SKEW_MINUTES` is `[alerts.clock_skew] minutes`: the name is matched
/// against the keys of the defaults, longest first. Other `PHONEHOME_*` variables (the log
/// filter, a collector's) are not configuration and are left alone.
struct EnvVars {
    dict: Dict,
}

/// The prefix of every configuration variable.
const ENV_PREFIX: &str = "PHONEHOME_";

impl EnvVars {
    fn new(vars: impl IntoIterator<Item = (String, String)>, defaults: &Dict) -> EnvVars {
        let mut dict = Dict::new();
        for (name, value) in vars {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let Some((path, default)) = key_path(&rest.to_ascii_lowercase(), defaults) else {
                continue;
            };
            insert(&mut dict, &path, typed(&value, default));
        }
        EnvVars { dict }
    }
}

impl Provider for EnvVars {
    fn metadata(&self) -> Metadata {
        Metadata::named("environment variable")
            .interpolater(|_, keys| format!("{ENV_PREFIX}{}", keys.join("_").to_ascii_uppercase()))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// The key path `name` (lower case, `_`-joined) stands for in `dict`, and the default there.
fn key_path<'a>(name: &str, dict: &'a Dict) -> Option<(Vec<String>, &'a Value)> {
    let mut keys: Vec<&String> = dict.keys().collect();
    keys.sort_by_key(|k| std::cmp::Reverse(k.len()));
    for key in keys {
        let value = &dict[key];
        if name == key.as_str() {
            return Some((vec![key.clone()], value));
        }
        let Some(rest) = name
            .strip_prefix(key.as_str())
            .and_then(|r| r.strip_prefix('_'))
        else {
            continue;
        };
        if let Value::Dict(_, inner) = value {
            if let Some((mut path, v)) = key_path(rest, inner) {
                path.insert(0, key.clone());
                return Some((path, v));
            }
        }
    }
    None
}

/// The variable's text: a list from commas where the key is a list, else text, which the
/// lossy extraction reads as the key's type (`512`, `true`/`yes`/`on`/`1`); a value that does
/// not read gets an error naming the variable.
fn typed(text: &str, default: &Value) -> Value {
    match default {
        Value::Array(..) => Value::from(
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::from(s.to_owned()))
                .collect::<Vec<_>>(),
        ),
        // Typed here too: a flattened struct (`[alerts.filesystem_full]`'s thresholds) is
        // buffered by serde, past the lossy reading.
        Value::Num(..) => {
            let t = text.trim();
            if let Ok(n) = t.parse::<u64>() {
                Value::from(n)
            } else if let Ok(n) = t.parse::<i64>() {
                Value::from(n)
            } else if let Ok(n) = t.parse::<f64>() {
                Value::from(n)
            } else {
                Value::from(text.to_owned())
            }
        }
        _ => Value::from(text.to_owned()),
    }
}

fn insert(dict: &mut Dict, path: &[String], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}

/// A figment error as one line per problem, each naming its file and key or its variable.
fn describe(e: &figment::Error) -> String {
    e.clone()
        .into_iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn example() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ingest.example.toml")
    }

    #[test]
    fn example_config_loads_and_resolves_paths_next_to_it() {
        let c = Config::load_with_env(Some(&example()), env(&[])).expect("example loads");
        assert_eq!(c.report_listen, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(c.ops_listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.max_body_bytes, 1024 * 1024);
        assert!(c.tls.ca_cert.is_absolute(), "{:?}", c.tls.ca_cert);
        // The example's [alerts] tables spell out the defaults.
        assert_eq!(c.alerts, crate::alerts::AlertsConfig::default());
    }

    #[test]
    fn environment_overrides_file_and_bad_values_are_named() {
        let c = Config::load_with_env(
            Some(&example()),
            env(&[
                ("PHONEHOME_OPS_LISTEN", "127.0.0.1:9999"),
                ("PHONEHOME_DATABASE_URL", "postgres://u:hunter2@db/x"),
                ("PHONEHOME_LOG", "debug"),
            ]),
        )
        .unwrap();
        assert_eq!(c.ops_listen.port(), 9999);
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("hunter2"),
            "secret leaked into Debug: {debug}"
        );

        let err =
            Config::load_with_env(None, env(&[("PHONEHOME_REPORT_LISTEN", "not-an-address")]))
                .unwrap_err();
        assert!(err.to_string().contains("PHONEHOME_REPORT_LISTEN"), "{err}");
    }

    #[test]
    fn alert_thresholds_are_checked_and_unknown_rules_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "[alerts.filesystem_full]\nwarn_percent = 97.0\ncritical_percent = 95.0\n",
        )
        .unwrap();
        let err = Config::load_with_env(Some(&p), env(&[])).unwrap_err();
        assert!(err.to_string().contains("alerts.filesystem_full"), "{err}");
        std::fs::write(&p, "[alerts.disk_explodes]\nenabled = true\n").unwrap();
        let err = Config::load_with_env(Some(&p), env(&[])).unwrap_err();
        assert!(err.to_string().contains("disk_explodes"), "{err}");
    }

    #[test]
    fn alertmanager_is_off_by_default_and_configured_by_file_or_environment() {
        let c = Config::load_with_env(Some(&example()), env(&[])).expect("example loads");
        assert_eq!(
            c.alertmanager.url, None,
            "the example must not post anywhere"
        );
        assert_eq!(c.alertmanager.resend_seconds, 60);

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "[alertmanager]\nurl = \"http://am.internal:9093\"\nresend_seconds = 30\n\
             dashboard_url = \"http://ops.example:8080\"\n",
        )
        .unwrap();
        let c = Config::load_with_env(Some(&p), env(&[])).unwrap();
        assert_eq!(
            c.alertmanager,
            AlertmanagerConfig {
                url: Some("http://am.internal:9093".into()),
                resend_seconds: 30,
                dashboard_url: Some("http://ops.example:8080".into()),
                max_new_per_minute: DEFAULT_ALERTMANAGER_MAX_NEW_PER_MINUTE,
            }
        );

        let c = Config::load_with_env(
            Some(&p),
            env(&[
                ("PHONEHOME_ALERTMANAGER_URL", "http://127.0.0.1:1/am"),
                ("PHONEHOME_ALERTMANAGER_RESEND_SECONDS", "5"),
                ("PHONEHOME_ALERTMANAGER_DASHBOARD_URL", ""),
            ]),
        )
        .unwrap();
        assert_eq!(c.alertmanager.url.as_deref(), Some("http://127.0.0.1:1/am"));
        assert_eq!(c.alertmanager.resend_seconds, 5);
        assert_eq!(c.alertmanager.dashboard_url, None);
    }

    #[test]
    fn bad_alertmanager_settings_are_refused_by_name() {
        let refused = |name: &'static str, value: &'static str| {
            Config::load_with_env(None, env(&[(name, value)]))
                .unwrap_err()
                .to_string()
        };
        let e = refused("PHONEHOME_ALERTMANAGER_URL", "https://am:9093");
        assert!(e.contains("alertmanager.url") && e.contains("https"), "{e}");
        let e = refused("PHONEHOME_ALERTMANAGER_URL", "am:9093");
        assert!(e.contains("http://"), "{e}");
        let e = refused("PHONEHOME_ALERTMANAGER_URL", "http://user:pw@am:9093");
        assert!(e.contains("credentials") && !e.contains("pw@"), "{e}");
        let e = refused("PHONEHOME_ALERTMANAGER_RESEND_SECONDS", "0");
        assert!(e.contains("resend_seconds"), "{e}");
        let e = refused("PHONEHOME_ALERTMANAGER_RESEND_SECONDS", "soon");
        assert!(e.contains("PHONEHOME_ALERTMANAGER_RESEND_SECONDS"), "{e}");
        let e = refused("PHONEHOME_ALERTMANAGER_DASHBOARD_URL", "ops.example");
        assert!(e.contains("dashboard_url"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[alertmanager]\nresend = 5\n").unwrap();
        let err = Config::load_with_env(Some(&p), env(&[])).unwrap_err();
        assert!(err.to_string().contains("resend"), "{err}");
    }

    #[test]
    fn max_connections_follows_max_in_flight_unless_set() {
        let only_in_flight =
            Config::load_with_env(None, env(&[("PHONEHOME_MAX_IN_FLIGHT", "512")])).expect("loads");
        assert_eq!(
            (only_in_flight.max_in_flight, only_in_flight.max_connections),
            (512, 1024)
        );
        let both = Config::load_with_env(
            None,
            env(&[
                ("PHONEHOME_MAX_IN_FLIGHT", "512"),
                ("PHONEHOME_MAX_CONNECTIONS", "2048"),
            ]),
        )
        .expect("loads");
        assert_eq!((both.max_in_flight, both.max_connections), (512, 2048));
        let defaults = Config::load_with_env(None, env(&[])).expect("loads");
        assert_eq!(
            (defaults.max_in_flight, defaults.max_connections),
            (DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_CONNECTIONS)
        );
    }

    #[test]
    fn reads_need_a_token_unless_switched_off() {
        let defaults = Config::load_with_env(None, env(&[])).expect("loads");
        assert!(defaults.ops_reads_require_token);
        let example = Config::load_with_env(Some(&example()), env(&[])).expect("example loads");
        assert!(example.ops_reads_require_token);
        let open =
            Config::load_with_env(None, env(&[("PHONEHOME_OPS_READS_REQUIRE_TOKEN", "false")]))
                .expect("loads");
        assert!(!open.ops_reads_require_token);
        let e = Config::load_with_env(None, env(&[("PHONEHOME_OPS_READS_REQUIRE_TOKEN", "maybe")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("PHONEHOME_OPS_READS_REQUIRE_TOKEN"), "{e}");
    }

    #[test]
    fn the_admission_wait_is_bounded() {
        let with = |v: &'static str| {
            Config::load_with_env(None, env(&[("PHONEHOME_ADMISSION_WAIT_MS", v)]))
        };
        assert_eq!(with("0").expect("0 refuses at once").admission_wait_ms, 0);
        assert_eq!(
            with("10000").expect("the maximum").admission_wait_ms,
            10_000
        );
        let e = with("10001").unwrap_err().to_string();
        assert!(
            e.contains("admission_wait_ms") && e.contains("10000"),
            "{e}"
        );
        let e = with("-1").unwrap_err().to_string();
        assert!(e.contains("PHONEHOME_ADMISSION_WAIT_MS"), "{e}");
        let defaults = Config::load_with_env(None, env(&[])).expect("loads");
        assert_eq!(defaults.admission_wait_ms, DEFAULT_ADMISSION_WAIT_MS);
    }

    #[test]
    fn listener_bounds_come_from_file_or_environment_and_are_checked() {
        // The example spells out the defaults.
        let c = Config::load_with_env(Some(&example()), env(&[])).expect("example loads");
        let bounds = |c: &Config| {
            (
                c.max_in_flight_per_appliance,
                c.ops_max_connections,
                c.body_timeout_secs,
                c.min_body_bytes_per_sec,
                c.ops_header_timeout_secs,
                c.ops_connection_lifetime_secs,
            )
        };
        let defaults = Config::default();
        assert_eq!(bounds(&c), bounds(&defaults));
        assert_eq!(
            bounds(&defaults),
            (2, 256, 60, 1024, 10, 120),
            "README and the example say these"
        );

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "body_timeout_secs = 90\nmin_body_bytes_per_sec = 0\nops_header_timeout_secs = 5\n\
             ops_connection_lifetime_secs = 30\n",
        )
        .unwrap();
        let c = Config::load_with_env(Some(&p), env(&[("PHONEHOME_OPS_HEADER_TIMEOUT_SECS", "2")]))
            .unwrap();
        assert_eq!(
            (
                c.body_timeout_secs,
                c.min_body_bytes_per_sec,
                c.ops_header_timeout_secs,
                c.ops_connection_lifetime_secs
            ),
            (90, 0, 2, 30)
        );

        let refused = |name: &'static str, value: &'static str| {
            Config::load_with_env(None, env(&[(name, value)]))
                .unwrap_err()
                .to_string()
        };
        let e = refused("PHONEHOME_BODY_TIMEOUT_SECS", "0");
        assert!(e.contains("body_timeout_secs"), "{e}");
        let e = refused("PHONEHOME_BODY_TIMEOUT_SECS", "601");
        assert!(e.contains("body_timeout_secs") && e.contains("600"), "{e}");
        let e = refused("PHONEHOME_MIN_BODY_BYTES_PER_SEC", "fast");
        assert!(e.contains("PHONEHOME_MIN_BODY_BYTES_PER_SEC"), "{e}");
        let e = refused("PHONEHOME_OPS_HEADER_TIMEOUT_SECS", "0");
        assert!(e.contains("ops_header_timeout_secs"), "{e}");
        let e = refused("PHONEHOME_OPS_CONNECTION_LIFETIME_SECS", "5");
        assert!(e.contains("ops_connection_lifetime_secs"), "{e}");
        let e = refused("PHONEHOME_OPS_MAX_CONNECTIONS", "0");
        assert!(e.contains("ops_max_connections"), "{e}");
        let e = refused("PHONEHOME_MAX_IN_FLIGHT_PER_APPLIANCE", "0");
        assert!(e.contains("max_in_flight_per_appliance"), "{e}");
    }

    #[test]
    fn the_read_database_and_the_pooler_come_from_file_or_environment() {
        let example = Config::load_with_env(Some(&example()), env(&[])).expect("example loads");
        assert_eq!(
            example.read_database_url, None,
            "reads go to the primary by default"
        );
        assert!(!example.db_transaction_pooler);
        assert!(!example.storage_settings().transaction_pooler);
        assert!(!example.command_storage_settings().transaction_pooler);

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "read_database_url = \"postgres://reader:s3cret@replica:5432/phonehome\"\n\
             db_transaction_pooler = true\n",
        )
        .unwrap();
        let c = Config::load_with_env(Some(&p), env(&[])).unwrap();
        assert_eq!(
            c.read_database_url.as_ref().map(Secret::expose),
            Some("postgres://reader:s3cret@replica:5432/phonehome")
        );
        assert!(c.db_transaction_pooler);
        let settings = c.storage_settings();
        assert!(settings.transaction_pooler);
        assert!(
            c.command_storage_settings().transaction_pooler,
            "the CLI's commands go through the pooler too"
        );
        assert!(settings.read_database_url.is_some());
        for debug in [format!("{c:?}"), format!("{settings:?}")] {
            assert!(
                !debug.contains("s3cret"),
                "secret leaked into Debug: {debug}"
            );
        }

        // The environment wins, and an empty value sends reads back to the primary.
        let c = Config::load_with_env(
            Some(&p),
            env(&[
                (
                    "PHONEHOME_READ_DATABASE_URL",
                    "host=/run/replica dbname=phonehome",
                ),
                ("PHONEHOME_DB_TRANSACTION_POOLER", "false"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.read_database_url.as_ref().map(Secret::expose),
            Some("host=/run/replica dbname=phonehome")
        );
        assert!(!c.db_transaction_pooler);
        let c =
            Config::load_with_env(Some(&p), env(&[("PHONEHOME_READ_DATABASE_URL", "")])).unwrap();
        assert_eq!(c.read_database_url, None);

        let e = Config::load_with_env(
            None,
            env(&[(
                "PHONEHOME_READ_DATABASE_URL",
                "postgres://replica:notaport/x",
            )]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("read_database_url"), "{e}");
        let e = Config::load_with_env(None, env(&[("PHONEHOME_DB_TRANSACTION_POOLER", "maybe")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("PHONEHOME_DB_TRANSACTION_POOLER"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "max_body_byte = 5\n").unwrap();
        let err = Config::load_with_env(Some(&p), env(&[])).unwrap_err();
        assert!(err.to_string().contains("max_body_byte"), "{err}");
    }

    #[test]
    fn every_key_has_its_variable_and_file_paths_are_relative_to_the_file() {
        let c = Config::load_with_env(
            None,
            env(&[
                ("PHONEHOME_ALERTS_CLOCK_SKEW_MINUTES", "30"),
                ("PHONEHOME_ALERTS_FILESYSTEM_FULL_WARN_PERCENT", "80"),
                ("PHONEHOME_PKI_CA_DIR", "/srv/ca"),
                ("PHONEHOME_PKI_APPLIANCE_CERT_SECONDS", "20"),
                ("PHONEHOME_OPS_ALLOWED_HOSTS", "ops.example, ops2.example"),
                ("PHONEHOME_REPLICA_NAME", "5"),
                ("PHONEHOME_COLLECTOR_SERVER", "not ours"),
            ]),
        )
        .expect("loads");
        assert_eq!(c.alerts.clock_skew.minutes, 30);
        assert_eq!(c.alerts.filesystem_full.thresholds.warn_percent, 80.0);
        assert_eq!(c.pki.ca_dir.as_deref(), Some(Path::new("/srv/ca")));
        assert_eq!(c.pki.appliance_cert_seconds, Some(20));
        assert_eq!(c.ops_allowed_hosts, ["ops.example", "ops2.example"]);
        assert_eq!(c.replica_name.as_deref(), Some("5"));

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "[pki]\nca_dir = \"ca\"\n[tls]\nca_cert = \"fleet.crt\"\n",
        )
        .unwrap();
        let c = Config::load_with_env(Some(&p), env(&[])).unwrap();
        assert_eq!(c.pki.ca_dir, Some(dir.path().join("ca")));
        assert_eq!(c.tls.ca_cert, dir.path().join("fleet.crt"));
        assert_eq!(
            c.tls.server_cert,
            Config::default().tls.server_cert,
            "keys the file does not set keep their defaults"
        );

        std::fs::write(&p, "[alerts.clock_skew]\nminutes = \"ten\"\n").unwrap();
        let e = Config::load_with_env(Some(&p), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("minutes") && e.contains("c.toml"), "{e}");
        let e = Config::load_with_env(None, env(&[("PHONEHOME_ALERTS_CLOCK_SKEW_MINUTES", "ten")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("PHONEHOME_ALERTS_CLOCK_SKEW_MINUTES"), "{e}");
    }
}
