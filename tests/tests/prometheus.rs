//! Prometheus' own tools against phonehome: the shipped rules (`ops/prometheus/`) pass
//! `promtool check rules` and their unit tests, `/metrics` passes `promtool check metrics`, and a
//! real Prometheus server scrapes the operations listener and evaluates the rules.
//!
//! The tools come from Debian's `prometheus` package (`scripts/deps.sh` installs it). A missing
//! tool fails the test with how to install it: skipping would let the rules rot unnoticed.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use phonehome_tests::bins::IngestProcess;
use phonehome_tests::client::{self, TlsClient};
use phonehome_tests::pki::TestPki;
use phonehome_tests::{TestDb, example_report};

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// How long Prometheus gets to come up, scrape and evaluate; it needs a few seconds at most.
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(30);

/// The rule groups `phonehome-rules.yml` defines.
const RULE_GROUPS: [&str; 2] = ["phonehome-ingest", "phonehome-fleet"];

fn ops_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../ops/prometheus")
        .canonicalize()
        .expect("ops/prometheus exists in the workspace")
}

/// A Prometheus program from Debian's `prometheus` package: on PATH, else in /usr/bin.
fn tool(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    let fallback = Path::new("/usr/bin").join(name);
    match on_path {
        Some(p) => p,
        None if fallback.is_file() => fallback,
        None => panic!(
            "{name} is not installed; it comes with Prometheus: `apt-get install -y prometheus` \
             (or run scripts/deps.sh)"
        ),
    }
}

fn output_text(out: &Output) -> String {
    format!(
        "exit status: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs promtool in `ops/prometheus` (the rule and test files name each other relatively).
fn promtool(args: &[&str]) -> Output {
    Command::new(tool("promtool"))
        .args(args)
        .current_dir(ops_dir())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run promtool {}: {e}", args.join(" ")))
}

/// `- alert: Name` lines of the rules file, in order, without repeats.
fn alert_names(rules: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for line in rules.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert:") {
            let name = name.trim().to_owned();
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// Alert names that some `alert_rule_test` of the unit tests expects to be firing (an
/// `alertname:` followed by a non-empty `exp_alerts:`).
fn alerts_tested_firing(tests: &str) -> Vec<String> {
    let mut fired = Vec::new();
    let mut current: Option<String> = None;
    for line in tests.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("alertname:") {
            current = Some(name.trim().to_owned());
        } else if let Some(rest) = line.strip_prefix("exp_alerts:") {
            if rest.trim() != "[]" {
                if let Some(name) = current.take() {
                    fired.push(name);
                }
            }
            current = None;
        }
    }
    fired
}

#[test]
fn the_shipped_rules_are_valid_and_their_unit_tests_pass() {
    let check = promtool(&["check", "rules", "phonehome-rules.yml"]);
    assert!(
        check.status.success(),
        "promtool check rules phonehome-rules.yml failed:\n{}",
        output_text(&check)
    );
    let unit = promtool(&["test", "rules", "phonehome-rules.test.yml"]);
    assert!(
        unit.status.success(),
        "promtool test rules phonehome-rules.test.yml failed:\n{}",
        output_text(&unit)
    );
    assert!(
        String::from_utf8_lossy(&unit.stdout).contains("SUCCESS"),
        "promtool test rules did not report SUCCESS:\n{}",
        output_text(&unit)
    );
    // The operators' example must load as it is, rules included.
    let config = promtool(&["check", "config", "prometheus.example.yml"]);
    assert!(
        config.status.success(),
        "promtool check config prometheus.example.yml failed:\n{}",
        output_text(&config)
    );

    // Every alert has a unit test that sees it fire: an alert only tested for silence could
    // never fire and nobody would know.
    let dir = ops_dir();
    let rules = std::fs::read_to_string(dir.join("phonehome-rules.yml")).expect("read rules");
    let tests = std::fs::read_to_string(dir.join("phonehome-rules.test.yml")).expect("read tests");
    let alerts = alert_names(&rules);
    assert!(alerts.len() >= 10, "alerts found in the rules: {alerts:?}");
    let fired = alerts_tested_firing(&tests);
    let untested: Vec<_> = alerts.iter().filter(|a| !fired.contains(a)).collect();
    assert!(
        untested.is_empty(),
        "alerts no unit test sees firing: {untested:?}"
    );
}

/// Posts the contract's example report for `serial` with that appliance's certificate; asserts
/// it is stored (202). Returns the client and the body, for a retry.
async fn post_report(ingest: &IngestProcess, pki: &TestPki, serial: &str) -> (TlsClient, Vec<u8>) {
    let client = TlsClient::new(&pki.ca_cert(), Some(&pki.appliance(serial)));
    let body = serde_json::to_vec(&example_report(serial)).expect("serialise report");
    let r = client
        .post(ingest.report_addr, "/v1/reports", &[JSON], &body)
        .await
        .unwrap_or_else(|e| panic!("post report: {e}\ningest log:\n{}", ingest.log()));
    assert_eq!(r.status, 202, "{}\ningest log:\n{}", r.body, ingest.log());
    (client, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_pass_promtool_check_metrics() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ingest = IngestProcess::start(&db, &pki).await;
    // A stored report and a refused one, so the labelled series are exposed too.
    post_report(&ingest, &pki, "PROM-001").await;
    let refused = TlsClient::new(&pki.ca_cert(), Some(&pki.appliance("PROM-002")))
        .post(ingest.report_addr, "/v1/reports", &[JSON], b"{not json")
        .await
        .expect("an answer to a malformed report");
    assert_eq!(refused.status, 400, "{}", refused.body);

    let metrics = client::get(ingest.ops_addr, "/metrics")
        .await
        .expect("GET /metrics");
    assert_eq!(metrics.status, 200, "{}", metrics.body);
    assert!(
        metrics
            .body
            .contains("phonehome_reports_total{result=\"stored\"} 1"),
        "the stored report is counted:\n{}",
        metrics.body
    );

    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool check metrics");
    child
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(metrics.body.as_bytes())
        .expect("write /metrics to promtool");
    let out = child.wait_with_output().expect("promtool check metrics");
    // Strict: promtool prints naming and help-text problems (exit 3) as well as parse errors;
    // any of them is a failure.
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics complains about /metrics:\n{}\n/metrics was:\n{}",
        output_text(&out),
        metrics.body
    );
}

/// A Prometheus server with its own port, configuration and storage; killed on drop.
struct PrometheusServer {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl PrometheusServer {
    /// Scrapes `target`'s /metrics every second as job "phonehome" with the API token `token`
    /// (as an operator configures it: `authorization: credentials:`), and evaluates the
    /// shipped rules every second.
    fn start(target: SocketAddr, token: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let rules = ops_dir().join("phonehome-rules.yml");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules:?}\n\
                 scrape_configs:\n  - job_name: phonehome\n    authorization:\n      credentials: {token:?}\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .expect("write prometheus.yml");
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let log = dir.path().join("prometheus.log");
        let logfile = std::fs::File::create(&log).expect("log file");
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logfile)
            .spawn()
            .expect("spawn prometheus");
        PrometheusServer {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET `path` from the HTTP API: the `data` of a successful answer, `Err` with what went
    /// wrong otherwise (not up yet, an error status).
    async fn api(&self, path: &str) -> Result<serde_json::Value, String> {
        let r = client::get(self.addr, path).await?;
        if r.status != 200 {
            return Err(format!("{path}: HTTP {}: {}", r.status, r.body));
        }
        let v: serde_json::Value =
            serde_json::from_str(&r.body).map_err(|e| format!("{path}: not JSON ({e})"))?;
        if v["status"] != "success" {
            return Err(format!("{path}: {v}"));
        }
        Ok(v["data"].clone())
    }

    /// The value of the one sample an instant query returns, `None` when there is none.
    async fn query(&self, promql: &str) -> Result<Option<f64>, String> {
        let data = self
            .api(&format!("/api/v1/query?query={}", percent_encode(promql)))
            .await?;
        let result = data["result"]
            .as_array()
            .ok_or_else(|| format!("query {promql}: no result in {data}"))?;
        match result.as_slice() {
            [] => Ok(None),
            [one] => one["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .map(Some)
                .ok_or_else(|| format!("query {promql}: unexpected sample {one}")),
            many => Err(format!("query {promql}: {} samples: {data}", many.len())),
        }
    }

    /// Fails the test if Prometheus has exited.
    fn assert_running(&mut self, context: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "prometheus exited ({status}) {context}; its log:\n{}",
                self.log()
            );
        }
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fails the test with both servers' logs.
fn fail(prom: &PrometheusServer, ingest: &IngestProcess, what: &str, last: &str) -> ! {
    panic!(
        "{what} within {PROMETHEUS_TIMEOUT:?}; last answer: {last}\n\
         prometheus log:\n{}\ningest log:\n{}",
        prom.log(),
        ingest.log()
    )
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_scrapes_the_ingest_and_evaluates_the_rules() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ingest = IngestProcess::start(&db, &pki).await;
    // One stored report and its retry (a duplicate): values Prometheus must then see.
    let (client, body) = post_report(&ingest, &pki, "PROM-003").await;
    let retry = client
        .post(ingest.report_addr, "/v1/reports", &[JSON], &body)
        .await
        .expect("an answer to the retry");
    assert_eq!(retry.status, 200, "{}", retry.body);

    let mut prom = PrometheusServer::start(ingest.ops_addr, &ingest.read_token);

    // Prometheus scrapes the operations listener and sees what the ingest counted.
    let expected = [
        (r#"up{job="phonehome"}"#, 1.0),
        (
            r#"phonehome_reports_total{job="phonehome",result="stored"}"#,
            1.0,
        ),
        (
            r#"phonehome_reports_total{job="phonehome",result="duplicate"}"#,
            1.0,
        ),
    ];
    let deadline = Instant::now() + PROMETHEUS_TIMEOUT;
    for (promql, want) in expected {
        loop {
            prom.assert_running("while waiting for its first scrapes");
            let last = match prom.query(promql).await {
                Ok(Some(v)) if v == want => break,
                Ok(v) => format!("{promql} = {v:?}"),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                fail(
                    &prom,
                    &ingest,
                    &format!("Prometheus did not see {promql} = {want}"),
                    &last,
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    // The shipped rules load, and every rule has been evaluated without error since Prometheus
    // holds those samples (an evaluation before the first scrape sees no target at all).
    let scraped_at = chrono::Utc::now();
    let evaluated_since_scrape = |rule: &serde_json::Value| {
        rule["lastEvaluation"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .is_some_and(|t| t > scraped_at)
    };
    let deadline = Instant::now() + PROMETHEUS_TIMEOUT;
    let groups = loop {
        prom.assert_running("while evaluating the rules");
        let last = match prom.api("/api/v1/rules").await {
            Ok(data) => {
                let groups = data["groups"].as_array().cloned().unwrap_or_default();
                // A rule that fails to evaluate fails the test at once, with the error.
                for g in &groups {
                    for r in g["rules"].as_array().into_iter().flatten() {
                        if r["health"] == "err" {
                            panic!(
                                "rule {} in group {} fails in Prometheus: {}\nprometheus log:\n{}",
                                r["name"],
                                g["name"],
                                r["lastError"],
                                prom.log()
                            );
                        }
                    }
                }
                let all_ok = RULE_GROUPS.iter().all(|name| {
                    groups.iter().any(|g| {
                        g["name"] == *name
                            && g["rules"].as_array().is_some_and(|rules| {
                                !rules.is_empty()
                                    && rules
                                        .iter()
                                        .all(|r| r["health"] == "ok" && evaluated_since_scrape(r))
                            })
                    })
                });
                if all_ok {
                    break groups;
                }
                serde_json::Value::Array(groups).to_string()
            }
            Err(e) => e,
        };
        if Instant::now() > deadline {
            fail(
                &prom,
                &ingest,
                &format!(
                    "the rule groups {RULE_GROUPS:?} were not all evaluated, with health ok, \
                     after the first scrapes"
                ),
                &last,
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let rules = std::fs::read_to_string(ops_dir().join("phonehome-rules.yml")).expect("rules");
    let loaded: Vec<String> = groups
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter(|r| r["type"] == "alerting")
        .filter_map(|r| r["name"].as_str().map(str::to_owned))
        .collect();
    for alert in alert_names(&rules) {
        assert!(
            loaded.contains(&alert),
            "alert {alert} is not among those Prometheus loaded: {loaded:?}"
        );
    }

    // A healthy ingest that has just stored a report raises nothing, not even a pending alert.
    let alerts = prom
        .api("/api/v1/alerts")
        .await
        .unwrap_or_else(|e| fail(&prom, &ingest, "/api/v1/alerts did not answer", &e));
    assert_eq!(
        alerts["alerts"].as_array().map(Vec::len),
        Some(0),
        "alerts against a healthy ingest: {alerts}\n/metrics:\n{}",
        client::get(ingest.ops_addr, "/metrics")
            .await
            .map(|r| r.body)
            .unwrap_or_default()
    );
}
