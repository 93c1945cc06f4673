//! The README's first command: `phonehome-ingest demo` brings the whole system up from nothing
//! (private PostgreSQL, throwaway CA, ingest, one collector run) and the dashboard lists this
//! machine beside a simulated fleet.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use phonehome_schema::Report;
use phonehome_tests::bins::{bin, collector};
use phonehome_tests::client;

#[tokio::test(flavor = "multi_thread")]
async fn demo_brings_the_system_up_and_the_dashboard_lists_this_machine() {
    let collected = collector(&["collect", "--compact"], &[]);
    assert_eq!(collected.code, Some(0), "{}", collected.stderr);
    let me: Report = serde_json::from_str(&collected.stdout).expect("report");

    let mut child = Command::new(bin("phonehome-ingest"))
        .args([
            "demo",
            "--report-listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.1:0",
            "--simulated",
            "40",
        ])
        // The private-cluster path, not a database the caller happens to have configured.
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn phonehome-ingest demo");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel::<String>();
    let tx_err = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx_err.send(format!("[stderr] {line}"));
        }
    });

    let mut seen = Vec::new();
    let mut dashboard = None;
    let mut token = None;
    let mut workdir = None;
    while !seen.last().is_some_and(|l: &String| l.contains("Ctrl-C")) {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(line) => {
                if let Some(url) = line.trim().strip_prefix("dashboard:") {
                    dashboard = Some(url.trim().to_owned());
                }
                if let Some(t) = line.trim().strip_prefix("token:") {
                    token = Some(t.trim().to_owned());
                }
                if let Some(dir) = line.strip_prefix("==> working directory ") {
                    workdir = Some(std::path::PathBuf::from(dir.trim()));
                }
                seen.push(line);
            }
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the demo did not print its dashboard URL:\n{}",
                    seen.join("\n")
                );
            }
        }
    }
    // The collector's summary goes to stderr, read by another thread than stdout's "Ctrl-C":
    // it can arrive after it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !seen.iter().any(|l| l.contains("delivered")) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    let output = seen.join("\n");
    assert!(
        output.contains("delivered"),
        "the collector's run is shown:\n{output}"
    );
    assert!(output.contains("Ctrl-C"), "{output}");

    let url = dashboard.expect("dashboard URL");
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|e| panic!("dashboard URL {url:?}: {e}"));
    // Reads need a token, as in production: the demo printed one, which opens the dashboard.
    let page = client::get(addr, "/").await.expect("GET dashboard");
    assert_eq!(page.status, 401, "no token, no dashboard");
    let token = token.expect("the demo prints a token");
    assert!(token.starts_with("phk_"), "{token}");
    client::set_ops_token(addr, Some(&token));
    let page = client::get(addr, "/").await.expect("GET dashboard");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("id=\"count-total\""), "{}", page.body);
    // The appliance list finds this machine by its serial.
    let page = client::get(
        addr,
        &format!(
            "/appliances?q={}",
            phonehome_dashboard::encode(me.identity.serial.as_str())
        ),
    )
    .await
    .expect("GET /appliances");
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains(me.identity.serial.as_str()),
        "the dashboard lists this machine's serial {}:\n{}",
        me.identity.serial,
        page.body
    );

    // Beside it, the simulated fleet, marked as such.
    assert!(
        output.contains("seeding 40 simulated appliances"),
        "{output}"
    );
    let page = client::get(addr, "/appliances?q=SIM-")
        .await
        .expect("GET SIM-");
    assert_eq!(page.status, 200);
    for serial in ["SIM-0000000", "SIM-0000039"] {
        assert!(
            page.body.contains(serial),
            "{serial} missing:\n{}",
            page.body
        );
    }
    assert!(page.body.contains("simulated-0000000"), "{}", page.body);
    let summary = client::get(addr, "/api/v1/summary").await.expect("summary");
    assert_eq!(summary.status, 200);
    let json = summary.json();
    assert!(
        json["appliances"].as_i64() >= Some(41),
        "this machine and 40 simulated ones: {json}"
    );

    let _ = Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success(), "demo exits cleanly on Ctrl-C: {status}");
    let workdir = workdir.expect("the demo names its working directory");
    assert!(
        !workdir.exists(),
        "the throwaway directory {} is removed",
        workdir.display()
    );
}
