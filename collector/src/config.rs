//! The collector's configuration file (TOML): where to deliver, with which certificates, and
//! the few facts about the appliance that the machine itself cannot tell.

use std::path::{Path, PathBuf};
use std::time::Duration;

use phonehome_schema::Serial;
use serde::Deserialize;

use crate::machine::read_bounded;

/// Overrides `server` from the file; lets tests and one-off runs aim at another ingest.
pub const SERVER_ENV: &str = "PHONEHOME_COLLECTOR_SERVER";

const DEFAULT_TIMEOUT_SECONDS: u64 = 30;
/// A configuration file is a few hundred bytes; this only stops a wrong path from being slurped.
const CONFIG_LIMIT: u64 = 1024 * 1024;

/// A configuration problem, naming the file it is about. Leads to exit code 78 (EX_CONFIG).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct ConfigError {
    /// The file that is missing, unreadable or wrong (the configuration, or a file it names).
    pub path: PathBuf,
    pub problem: String,
}

impl ConfigError {
    pub fn new(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            problem: problem.into(),
        }
    }
}

/// The configuration as the collector uses it: relative paths already resolved against the
/// file's directory, the server URL checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file this configuration was read from.
    pub path: PathBuf,
    /// Base URL of the ingest's report listener, without a trailing slash.
    pub server: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Serial written at imaging time; overrides DMI.
    pub serial: Option<Serial>,
    pub timeout: Duration,
    pub app: AppConfig,
    /// `[filesystems] skip_types`: filesystem types left out of the report.
    pub skip_fs_types: Vec<String>,
    /// `[spool]`: where undelivered reports wait, their bounds, and the retry budget.
    pub spool: crate::spool::SpoolSettings,
    /// `[smart]`: which smartctl, which devices beyond those it finds, its per-run timeout and
    /// the time budget for all runs together.
    pub smart: crate::smart::SmartOptions,
    /// Largest report, as compact JSON: keep it under the ingest's `max_body_bytes`.
    pub max_report_bytes: usize,
}

/// The `[app]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppConfig {
    /// File whose first line is the application's version.
    pub version_file: Option<PathBuf>,
    /// Program and arguments whose first output line is the version (when there is no file).
    pub version_command: Option<Vec<String>>,
    /// systemd units whose state is the application's health.
    pub systemd_units: Vec<String>,
    /// Program and arguments of a health check: exit 0 healthy, 1 degraded, 2 unhealthy, 3 unknown
    /// (the monitoring-plugin convention); a JSON object on stdout is kept, and its `status`
    /// counts too.
    pub health_command: Option<Vec<String>>,
    /// Deadline for each check and for the version command.
    pub check_timeout: Duration,
    /// The systemctl to ask (tests point this at a stand-in).
    pub systemctl: PathBuf,
}

/// Per-check deadline when `[app] check_timeout_seconds` is not set.
pub const DEFAULT_CHECK_TIMEOUT_SECONDS: u64 = 10;

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            version_file: None,
            version_command: None,
            systemd_units: Vec::new(),
            health_command: None,
            check_timeout: Duration::from_secs(DEFAULT_CHECK_TIMEOUT_SECONDS),
            systemctl: PathBuf::from("systemctl"),
        }
    }
}

/// Everything `run` needs to deliver a report; all of it must be configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverySettings {
    pub server: String,
    pub ca_cert: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub timeout: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: Option<String>,
    ca_cert: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    serial: Option<String>,
    timeout_seconds: Option<u64>,
    max_report_bytes: Option<usize>,
    #[serde(default)]
    app: RawApp,
    #[serde(default)]
    filesystems: RawFilesystems,
    #[serde(default)]
    spool: crate::spool::RawSpool,
    #[serde(default)]
    smart: crate::smart::RawSmart,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilesystems {
    /// Replaces the built-in list of pseudo filesystem types.
    skip_types: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    version_file: Option<PathBuf>,
    version_command: Option<Vec<String>>,
    #[serde(default)]
    systemd_units: Vec<String>,
    health_command: Option<Vec<String>>,
    check_timeout_seconds: Option<u64>,
    systemctl: Option<PathBuf>,
}

impl Config {
    /// Reads and checks a configuration file; `PHONEHOME_COLLECTOR_SERVER`, when set, replaces
    /// its `server`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let bytes = read_bounded(path, CONFIG_LIMIT)
            .map_err(|e| ConfigError::new(path, format!("cannot read configuration: {e}")))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| ConfigError::new(path, "configuration is not UTF-8 text"))?;
        let server_override = std::env::var(SERVER_ENV)
            .ok()
            .filter(|s| !s.trim().is_empty());
        Config::parse(&text, path, server_override)
    }

    /// Parses configuration text as if read from `path` (which anchors relative paths).
    pub fn parse(
        text: &str,
        path: &Path,
        server_override: Option<String>,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            ConfigError::new(
                path,
                format!("invalid configuration: {}", one_line(&e, text)),
            )
        })?;
        let dir = path.parent().unwrap_or(Path::new(""));
        let resolve = |p: Option<PathBuf>| p.map(|p| if p.is_relative() { dir.join(p) } else { p });

        let server = match server_override {
            Some(s) => Some(
                check_server(&s)
                    .map_err(|e| ConfigError::new(path, format!("{SERVER_ENV}={s:?}: {e}")))?,
            ),
            None => raw
                .server
                .map(|s| {
                    check_server(&s)
                        .map_err(|e| ConfigError::new(path, format!("server = {s:?}: {e}")))
                })
                .transpose()?,
        };
        let serial = raw
            .serial
            .map(|s| {
                Serial::parse(&s)
                    .map_err(|e| ConfigError::new(path, format!("serial = {s:?}: {e}")))
            })
            .transpose()?;
        let timeout_seconds = raw.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS);
        if timeout_seconds == 0 {
            return Err(ConfigError::new(path, "timeout_seconds must be at least 1"));
        }
        let spool = crate::spool::SpoolSettings::from_raw(raw.spool, dir)
            .map_err(|e| ConfigError::new(path, e))?;
        let smart = crate::smart::SmartOptions::from_raw(raw.smart, dir)
            .map_err(|e| ConfigError::new(path, e))?;
        Ok(Config {
            path: path.to_owned(),
            smart,
            spool,
            server,
            ca_cert: resolve(raw.ca_cert),
            client_cert: resolve(raw.client_cert),
            client_key: resolve(raw.client_key),
            serial,
            timeout: Duration::from_secs(timeout_seconds),
            max_report_bytes: match raw.max_report_bytes {
                Some(n) if n < 16 * 1024 => {
                    return Err(ConfigError::new(
                        path,
                        "max_report_bytes must be at least 16384",
                    ));
                }
                Some(n) => n,
                None => crate::fit::DEFAULT_MAX_REPORT_BYTES,
            },
            app: app_config(raw.app, path, &resolve)?,
            skip_fs_types: raw.filesystems.skip_types.unwrap_or_else(|| {
                crate::filesystems::PSEUDO_FS_TYPES
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            }),
        })
    }

    /// The settings for delivering a report, or which required key is missing.
    pub fn delivery(&self) -> Result<DeliverySettings, ConfigError> {
        let missing = |key: &str| {
            let mut problem = format!("`{key}` is not set");
            if key == "server" {
                problem.push_str(&format!(" (nor is {SERVER_ENV})"));
            }
            ConfigError::new(&self.path, problem)
        };
        Ok(DeliverySettings {
            server: self.server.clone().ok_or_else(|| missing("server"))?,
            ca_cert: self.ca_cert.clone().ok_or_else(|| missing("ca_cert"))?,
            client_cert: self
                .client_cert
                .clone()
                .ok_or_else(|| missing("client_cert"))?,
            client_key: self
                .client_key
                .clone()
                .ok_or_else(|| missing("client_key"))?,
            timeout: self.timeout,
        })
    }
}

fn app_config(
    raw: RawApp,
    path: &Path,
    resolve: &dyn Fn(Option<PathBuf>) -> Option<PathBuf>,
) -> Result<AppConfig, ConfigError> {
    for (key, argv) in [
        ("version_command", &raw.version_command),
        ("health_command", &raw.health_command),
    ] {
        if argv
            .as_ref()
            .is_some_and(|a| a.first().is_none_or(|p| p.trim().is_empty()))
        {
            return Err(ConfigError::new(
                path,
                format!("[app] {key} must name a program, e.g. [\"/opt/app/bin/check\"]"),
            ));
        }
    }
    let check_timeout_seconds = raw
        .check_timeout_seconds
        .unwrap_or(DEFAULT_CHECK_TIMEOUT_SECONDS);
    if check_timeout_seconds == 0 {
        return Err(ConfigError::new(
            path,
            "[app] check_timeout_seconds must be at least 1",
        ));
    }
    Ok(AppConfig {
        version_file: resolve(raw.version_file),
        version_command: raw.version_command,
        systemd_units: raw.systemd_units,
        health_command: raw.health_command,
        check_timeout: Duration::from_secs(check_timeout_seconds),
        systemctl: raw.systemctl.unwrap_or_else(|| PathBuf::from("systemctl")),
    })
}

/// A TOML error as `line L, column C: message`: the default rendering spans several lines, and
/// the collector's messages end up in one-line logs.
fn one_line(e: &toml::de::Error, text: &str) -> String {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

/// Accepts `https://host[:port][/]` and returns it without the trailing slash; reports go to
/// `{server}/v1/reports`.
fn check_server(server: &str) -> Result<String, String> {
    let server = server.trim().trim_end_matches('/');
    let uri: ureq::http::Uri = server.parse().map_err(|e| format!("not a URL: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err("must start with https:// (reports only travel over mutual TLS)".into());
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    if uri
        .path_and_query()
        .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
    {
        return Err("must be the listener's base URL, without a path or query".into());
    }
    Ok(server.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/phonehome/collector.toml"), None)
    }

    #[test]
    fn relative_paths_follow_the_config_file() -> Result<(), ConfigError> {
        let config = parse(
            "server = \"https://ingest.example:8443/\"\nca_cert = \"ca.crt\"\n\
             client_cert = \"/abs/appliance.crt\"\nclient_key = \"keys/appliance.key\"\n\
             serial = \"CZJ1234ABC\"\n[app]\nversion_file = \"../app/VERSION\"\n",
        )?;
        let delivery = config.delivery()?;
        assert_eq!(delivery.server, "https://ingest.example:8443");
        assert_eq!(delivery.ca_cert, Path::new("/etc/phonehome/ca.crt"));
        assert_eq!(delivery.client_cert, Path::new("/abs/appliance.crt"));
        assert_eq!(
            delivery.client_key,
            Path::new("/etc/phonehome/keys/appliance.key")
        );
        assert_eq!(delivery.timeout, Duration::from_secs(30));
        assert_eq!(
            config.serial.as_ref().map(Serial::as_str),
            Some("CZJ1234ABC")
        );
        assert_eq!(
            config.app.version_file.as_deref(),
            Some(Path::new("/etc/phonehome/../app/VERSION"))
        );
        Ok(())
    }

    #[test]
    fn mistakes_name_the_file_and_the_problem() {
        let cases = [
            ("servr = \"https://x\"", "unknown field `servr`"),
            ("[app]\nversion = \"1\"", "unknown field `version`"),
            ("server = \"http://x:8443\"", "https://"),
            ("server = \"https://x:8443/v1/reports\"", "without a path"),
            ("serial = \"\"", "serial is empty"),
            ("serial = \"tab\\there\"", "printable ASCII"),
            ("timeout_seconds = 0", "at least 1"),
            ("timeout_seconds = \"ten\"", "invalid type"),
            ("server = ", "invalid configuration: line 1, column 10"),
            (
                "timeout_seconds = 5\n[app]\nversion = \"1\"",
                "line 3, column 1: unknown field `version`",
            ),
        ];
        for (text, expected) in cases {
            match parse(text) {
                Ok(c) => panic!("{text:?} was accepted: {c:?}"),
                Err(e) => {
                    let message = e.to_string();
                    assert!(
                        message.starts_with("/etc/phonehome/collector.toml: "),
                        "{message}"
                    );
                    assert!(message.contains(expected), "{text:?}: {message}");
                }
            }
        }
    }

    #[test]
    fn run_needs_every_delivery_setting() -> Result<(), ConfigError> {
        let config = parse("ca_cert = \"ca.crt\"")?;
        let err = config
            .delivery()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("`server` is not set"), "{err}");
        assert!(err.contains(SERVER_ENV), "{err}");
        let config = parse("server = \"https://x\"\nca_cert = \"ca.crt\"\nclient_cert = \"c\"")?;
        let err = config
            .delivery()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("`client_key` is not set"), "{err}");
        Ok(())
    }

    #[test]
    fn the_environment_overrides_the_server() -> Result<(), ConfigError> {
        let path = Path::new("c.toml");
        let config = Config::parse(
            "server = \"https://a:1\"",
            path,
            Some("https://127.0.0.1:9443".into()),
        )?;
        assert_eq!(config.server.as_deref(), Some("https://127.0.0.1:9443"));
        let err = Config::parse("", path, Some("ftp://x".into()))
            .err()
            .map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains(SERVER_ENV));
        Ok(())
    }
}
