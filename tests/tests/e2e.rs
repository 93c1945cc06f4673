//! End to end: the real collector and ingest binaries, real mutual TLS, real PostgreSQL.

use std::io::Write;
use std::path::Path;

use phonehome_schema::Report;
use phonehome_tests::TestDb;
use phonehome_tests::bins::{IngestProcess, collector};
use phonehome_tests::client::TlsClient;
use phonehome_tests::pki::{CertPair, TestPki};

const JSON: (&str, &str) = ("Content-Type", "application/json");

use phonehome_tests::example_report as report_for;

/// The appliance's current-state row: report count, last report time, hostname, last report id.
async fn appliance_state(db: &TestDb, serial: &str) -> (i64, String, Option<String>, String) {
    let row = db
        .client()
        .await
        .query_one(
            "SELECT report_count, last_report_at::text, hostname, last_report_id::text
             FROM appliances WHERE serial = $1",
            &[&serial],
        )
        .await
        .expect("appliance row");
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

fn body(r: &Report) -> Vec<u8> {
    serde_json::to_vec(r).expect("serialise")
}

fn collector_config(dir: &Path, ingest: &IngestProcess, pki: &TestPki, id: &CertPair) -> String {
    let path = dir.join("collector.toml");
    std::fs::write(
        &path,
        format!(
            "server = {:?}\nca_cert = {:?}\nclient_cert = {:?}\nclient_key = {:?}\ntimeout_seconds = 10\n\n\
             [spool]\ndir = {:?}\n",
            ingest.report_url(),
            pki.ca_cert(),
            id.cert,
            id.key,
            dir.join("spool"),
        ),
    )
    .expect("write collector config");
    path.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_collector_delivers_this_machines_report_into_postgres() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let mut ingest = IngestProcess::start(&db, &pki).await;

    // What this machine says about itself decides which certificate it needs.
    let collected = collector(&["collect"], &[]);
    assert_eq!(
        collected.code,
        Some(0),
        "collect failed: {}",
        collected.stderr
    );
    let report: Report = serde_json::from_str(&collected.stdout).expect("collect prints a report");
    let serial = report.identity.serial.as_str().to_owned();
    let id = pki.appliance(&serial);
    let config = collector_config(pki.dir(), &ingest, &pki, &id);

    let run = collector(&["run", "--config", &config], &[]);
    assert_eq!(
        run.code,
        Some(0),
        "run failed: {}\ningest log:\n{}",
        run.stderr,
        ingest.log()
    );
    assert!(run.stderr.contains("202"), "summary line: {}", run.stderr);
    assert_eq!(
        run.stderr.trim().lines().count(),
        1,
        "one summary line: {}",
        run.stderr
    );

    let client = db.client().await;
    let rows = client
        .query(
            "SELECT a.serial, r.report_id, c.sha256 FROM reports r
             JOIN appliances a ON a.id = r.appliance_id
             JOIN certificates c ON c.id = r.cert_id AND c.appliance_id = a.id",
            &[],
        )
        .await
        .expect("query reports");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(0), serial);
    assert_eq!(
        rows[0].get::<_, Vec<u8>>(2).len(),
        32,
        "certificate fingerprint stored"
    );
    // The evidence reads back as the JSON the collector sent.
    let storage = phonehome_ingest::storage::Storage::connect(db.url(), 1).expect("storage");
    let json = storage
        .report_json(&serial, rows[0].get(1))
        .await
        .expect("read the stored body")
        .expect("the report is there");
    let body: serde_json::Value = serde_json::from_str(&json).expect("stored body is JSON");
    assert_eq!(body["identity"]["serial"], serial.as_str());
    let fs_count = body["filesystems"]["filesystems"]
        .as_array()
        .map_or(0, Vec::len);
    assert!(
        fs_count >= 1,
        "this machine's filesystems are in the stored report"
    );
    // The readings are read back from that body: one filesystem per mount point.
    let detail = storage
        .appliance_detail(&serial, 1)
        .await
        .expect("read the appliance")
        .expect("the appliance is there");
    assert_eq!(
        detail.filesystems.len(),
        fs_count,
        "one filesystem reading per mount point of the report: {:?}",
        detail.filesystems
    );
    assert_eq!(
        detail.history.filesystems.len(),
        fs_count,
        "one filesystem series per mount point of the report"
    );

    // A second daily run is a second report; the appliance's current state follows it.
    let run = collector(&["run", "--config", &config], &[]);
    assert_eq!(run.code, Some(0), "second run: {}", run.stderr);
    assert_eq!(db.count("reports").await, 2);
    let count: i64 = client
        .query_one(
            "SELECT report_count FROM appliances WHERE serial = $1",
            &[&serial],
        )
        .await
        .expect("appliance row")
        .get(0);
    assert_eq!(count, 2);

    // The operator sees it on the dashboard and in the metrics.
    let page = phonehome_tests::client::get(
        ingest.ops_addr,
        &format!("/appliances?q={}", phonehome_dashboard::encode(&serial)),
    )
    .await
    .expect("GET /appliances");
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains(&serial),
        "dashboard lists the serial:\n{}",
        page.body
    );
    if let Some(host) = &report.identity.hostname {
        assert!(
            page.body.contains(host.as_str()),
            "dashboard lists the hostname"
        );
    }
    assert_eq!(
        ingest
            .metric("phonehome_reports_total{result=\"stored\"}")
            .await,
        Some(2.0)
    );
    assert_eq!(ingest.metric("phonehome_appliances").await, Some(1.0));

    let status = ingest.stop();
    assert!(
        status.success(),
        "ingest exits cleanly on SIGTERM: {status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_report_is_stored_once_whatever_its_encoding() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ingest = IngestProcess::start(&db, &pki).await;
    let client = TlsClient::new(&pki.ca_cert(), Some(&pki.appliance("SN-RETRY")));

    let report = report_for("SN-RETRY");
    let first = client
        .post(ingest.report_addr, "/v1/reports", &[JSON], &body(&report))
        .await;
    let first = first.expect("response");
    assert_eq!(first.status, 202, "{}", first.body);
    assert_eq!(first.json()["status"], "stored");

    let before = appliance_state(&db, "SN-RETRY").await;

    // The same report again, compressed this time and with a different hostname: acknowledged,
    // not stored again, and the appliance's current state is untouched.
    let mut altered = report.clone();
    altered.identity.hostname = Some("someone-else".into());
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&body(&altered)).expect("gzip");
        e.finish().expect("gzip")
    };
    let again = client
        .post(
            ingest.report_addr,
            "/v1/reports",
            &[JSON, ("Content-Encoding", "gzip")],
            &gz,
        )
        .await
        .expect("response");
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["status"], "duplicate");
    assert_eq!(db.count("reports").await, 1);
    assert_eq!(
        appliance_state(&db, "SN-RETRY").await,
        before,
        "a duplicate changed the appliance's state"
    );
    // Its body differs from the kept one: counted (issue 13). An identical retry is not.
    assert_eq!(
        ingest
            .metric("phonehome_duplicate_body_differs_total")
            .await,
        Some(1.0)
    );
    let same = client
        .post(ingest.report_addr, "/v1/reports", &[JSON], &body(&report))
        .await
        .expect("response");
    assert_eq!(same.status, 200, "{}", same.body);
    assert_eq!(
        ingest
            .metric("phonehome_duplicate_body_differs_total")
            .await,
        Some(1.0),
        "an identical retry is an ordinary duplicate"
    );

    // A new report in zstd is a new row.
    let other = report_for("SN-RETRY");
    let zst = zstd::encode_all(&body(&other)[..], 3).expect("zstd");
    let r = client
        .post(
            ingest.report_addr,
            "/v1/reports",
            &[JSON, ("Content-Encoding", "zstd")],
            &zst,
        )
        .await
        .expect("response");
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(db.count("reports").await, 2);
    assert_eq!(
        ingest
            .metric("phonehome_reports_total{result=\"duplicate\"}")
            .await,
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_from_another_ca_and_no_certificate_get_no_http_response() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ingest = IngestProcess::start(&db, &pki).await;
    let report = body(&report_for("SN-FOREIGN"));

    let foreign = TlsClient::new(&pki.ca_cert(), Some(&pki.foreign_appliance("SN-FOREIGN")));
    let err = foreign
        .post(ingest.report_addr, "/v1/reports", &[JSON], &report)
        .await
        .expect_err("a foreign certificate must not get an HTTP response");
    assert!(
        err.contains("alert") || err.contains("handshake") || err.contains("reset"),
        "refused in the TLS layer: {err}"
    );

    let anonymous = TlsClient::new(&pki.ca_cert(), None);
    let err = anonymous
        .post(ingest.report_addr, "/v1/reports", &[JSON], &report)
        .await
        .expect_err("no client certificate must not get an HTTP response");
    assert!(
        err.contains("alert") || err.contains("handshake") || err.contains("reset"),
        "refused in the TLS layer: {err}"
    );

    assert_eq!(db.count("reports").await, 0);
    assert_eq!(
        ingest
            .metric("phonehome_tls_handshake_failures_total")
            .await,
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_appliance_cannot_speak_for_another_serial() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ingest = IngestProcess::start(&db, &pki).await;
    let client = TlsClient::new(&pki.ca_cert(), Some(&pki.appliance("SN-A")));

    let r = client
        .post(
            ingest.report_addr,
            "/v1/reports",
            &[JSON],
            &body(&report_for("SN-B")),
        )
        .await
        .expect("response");
    assert_eq!(r.status, 403, "{}", r.body);
    let j = r.json();
    assert_eq!(j["error"], "forbidden");
    assert!(j["message"].as_str().unwrap_or("").contains("SN-A"), "{j}");
    assert_eq!(db.count("reports").await, 0);
    assert_eq!(db.count("appliances").await, 0);
    assert_eq!(
        ingest
            .metric("phonehome_identity_failures_total{reason=\"serial_mismatch\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_appliance_whose_key_is_p256_is_accepted_beside_ed25519_ones() {
    // Keys a TPM holds are NIST P-256; the fleet's default is Ed25519. Both must deliver.
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ingest = IngestProcess::start(&db, &pki).await;
    for (serial, key_type) in [
        ("SN-P256", phonehome_pki::KeyType::P256),
        ("SN-ED25519", phonehome_pki::KeyType::Ed25519),
    ] {
        let client = TlsClient::new(&pki.ca_cert(), Some(&pki.appliance_with(serial, key_type)));
        let r = client
            .post(
                ingest.report_addr,
                "/v1/reports",
                &[JSON],
                &body(&report_for(serial)),
            )
            .await
            .expect("response");
        assert_eq!(r.status, 202, "{serial}: {}", r.body);
    }
    assert_eq!(db.count("reports").await, 2);
    assert_eq!(db.count("certificates").await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_bodies_get_their_codes_and_store_nothing() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ingest = IngestProcess::start(&db, &pki).await;
    let client = TlsClient::new(&pki.ca_cert(), Some(&pki.appliance("SN-BAD")));

    let good = serde_json::to_value(report_for("SN-BAD")).expect("json");
    let without = |field: &str| {
        let mut v = good.clone();
        v.as_object_mut().expect("object").remove(field);
        serde_json::to_vec(&v).expect("json")
    };
    let with = |pointer: &str, value: serde_json::Value| {
        let mut v = good.clone();
        *v.pointer_mut(pointer).expect("pointer") = value;
        serde_json::to_vec(&v).expect("json")
    };
    let gzip = |data: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).expect("gzip");
        e.finish().expect("gzip")
    };
    // Over the 1 MiB default once decompressed, small on the wire: zip bombs.
    let bomb = gzip(&vec![b' '; 8 * 1024 * 1024]);
    let zstd_bomb = zstd::encode_all(&vec![b' '; 8 * 1024 * 1024][..], 19).expect("zstd");
    let in_two_days = (chrono::Utc::now() + chrono::Duration::days(2)).to_rfc3339();
    let mut padded = good.clone();
    padded["padding"] = "x".repeat(1024 * 1024 + 10).into();
    let oversized = serde_json::to_vec(&padded).expect("json");

    struct Case {
        what: &'static str,
        encoding: Option<&'static str>,
        body: Vec<u8>,
        status: u16,
        error: &'static str,
        field: Option<&'static str>,
    }
    let cases = vec![
        Case {
            what: "truncated JSON",
            encoding: None,
            body: b"{\"report_id\":".to_vec(),
            status: 400,
            error: "malformed_json",
            field: None,
        },
        Case {
            what: "not JSON at all",
            encoding: None,
            body: b"hello".to_vec(),
            status: 400,
            error: "malformed_json",
            field: None,
        },
        Case {
            what: "missing report_id",
            encoding: None,
            body: without("report_id"),
            status: 422,
            error: "contract_violation",
            field: Some("report_id"),
        },
        Case {
            what: "report_id not a UUID",
            encoding: None,
            body: with("/report_id", "abc".into()),
            status: 422,
            error: "contract_violation",
            field: Some("report_id"),
        },
        Case {
            what: "future schema_version",
            encoding: None,
            body: with("/schema_version", 2.into()),
            status: 422,
            error: "contract_violation",
            field: Some("schema_version"),
        },
        Case {
            what: "negative byte count",
            encoding: None,
            body: with("/filesystems/filesystems/0/bytes_total", (-5).into()),
            status: 422,
            error: "contract_violation",
            field: Some("filesystems.filesystems[0].bytes_total"),
        },
        Case {
            what: "oversized body",
            encoding: None,
            body: oversized,
            status: 413,
            error: "too_large",
            field: None,
        },
        Case {
            what: "zstd bomb",
            encoding: Some("zstd"),
            body: zstd_bomb,
            status: 413,
            error: "too_large",
            field: None,
        },
        Case {
            what: "U+0000 in a string",
            encoding: None,
            body: with("/identity/hostname", "a\u{0}b".into()),
            status: 422,
            error: "contract_violation",
            field: Some("identity.hostname"),
        },
        Case {
            what: "lone surrogate in an unknown field",
            encoding: None,
            body: br#"{"x":"\ud800"}"#.to_vec(),
            status: 400,
            error: "malformed_json",
            field: None,
        },
        Case {
            what: "number out of range",
            encoding: None,
            body: br#"{"x":1e999999}"#.to_vec(),
            status: 400,
            error: "malformed_json",
            field: None,
        },
        Case {
            what: "nesting 100,000 deep",
            encoding: None,
            body: "[".repeat(100_000).into_bytes(),
            status: 400,
            error: "malformed_json",
            field: None,
        },
        Case {
            what: "collected two days in the future",
            encoding: None,
            body: with("/collected_at", in_two_days.into()),
            status: 422,
            error: "contract_violation",
            field: Some("collected_at"),
        },
        Case {
            what: "gzip bomb",
            encoding: Some("gzip"),
            body: bomb,
            status: 413,
            error: "too_large",
            field: None,
        },
        Case {
            what: "corrupt gzip",
            encoding: Some("gzip"),
            body: b"not gzip".to_vec(),
            status: 400,
            error: "bad_encoding",
            field: None,
        },
        Case {
            what: "unknown encoding",
            encoding: Some("br"),
            body: b"{}".to_vec(),
            status: 415,
            error: "unsupported_media_type",
            field: None,
        },
    ];
    for case in cases {
        let mut headers = vec![JSON];
        if let Some(enc) = case.encoding {
            headers.push(("Content-Encoding", enc));
        }
        let r = client
            .post(ingest.report_addr, "/v1/reports", &headers, &case.body)
            .await
            .unwrap_or_else(|e| panic!("{}: no response: {e}", case.what));
        assert_eq!(r.status, case.status, "{}: {}", case.what, r.body);
        let j = r.json();
        assert_eq!(j["error"], case.error, "{}: {j}", case.what);
        assert!(
            !j["message"].as_str().unwrap_or("").is_empty(),
            "{}: message names the problem",
            case.what
        );
        if let Some(field) = case.field {
            assert_eq!(j["field"], field, "{}: {j}", case.what);
        }
    }
    assert_eq!(db.count("reports").await, 0);
    assert_eq!(db.count("appliances").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_as_in_the_readme_gets_202_then_200() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ingest = IngestProcess::start(&db, &pki).await;
    let id = pki.appliance("SN-CURL");
    let report_path = pki.dir().join("report.json");
    std::fs::write(&report_path, body(&report_for("SN-CURL"))).expect("write report");

    let curl = |path: &Path| {
        let out = std::process::Command::new("curl")
            .args([
                "--silent",
                "--show-error",
                "--output",
                "/dev/null",
                "--write-out",
                "%{http_code}",
            ])
            .arg("--cert")
            .arg(&id.cert)
            .arg("--key")
            .arg(&id.key)
            .arg("--cacert")
            .arg(pki.ca_cert())
            // Exactly the issue's command: `-d @file` and no Content-Type of our own (curl then
            // sends application/x-www-form-urlencoded).
            .arg(format!("{}/v1/reports", ingest.report_url()))
            .arg("-d")
            .arg(format!("@{}", path.display()))
            .output()
            .unwrap_or_else(|e| {
                panic!("curl is needed for this test (apt-get install -y curl): {e}")
            });
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl(&report_path), "202");
    assert_eq!(curl(&report_path), "200");
    assert_eq!(db.count("reports").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn while_postgres_refuses_connections_reports_get_503_and_the_ingest_recovers() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ingest = IngestProcess::start(&db, &pki).await;
    let client = TlsClient::new(&pki.ca_cert(), Some(&pki.appliance("SN-DOWN")));
    let post = |r: Report| {
        let client = client.clone();
        let addr = ingest.report_addr;
        async move {
            client
                .post(addr, "/v1/reports", &[JSON], &body(&r))
                .await
                .expect("response")
        }
    };

    // Take the database away from the ingest: no new connections, existing ones killed.
    let admin = db.admin_client().await;
    let dbname = db.name().to_owned();
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {dbname} WITH ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{dbname}';"
        ))
        .await
        .expect("make the database unavailable");
    // pg_terminate_backend only signals: wait until the ingest's sessions are really gone, or
    // a report may still be stored through one that has not ended yet.
    for _ in 0..200 {
        let left: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                &[&dbname],
            )
            .await
            .expect("count sessions")
            .get(0);
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }

    let r = post(report_for("SN-DOWN")).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"], "unavailable");
    let retry_after: u64 = r
        .header("Retry-After")
        .and_then(|v| v.parse().ok())
        .expect("503 carries Retry-After in seconds");
    assert!(retry_after > 0);
    let health = phonehome_tests::client::get(ingest.ops_addr, "/healthz")
        .await
        .expect("healthz");
    assert_eq!(health.status, 503);

    // Back again: the same ingest, never restarted, stores reports.
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {dbname} WITH ALLOW_CONNECTIONS true"
        ))
        .await
        .expect("make the database available");
    let r = post(report_for("SN-DOWN")).await;
    assert_eq!(r.status, 202, "{}\n{}", r.body, ingest.log());
    assert_eq!(db.count("reports").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_paths_get_a_json_404() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ingest = IngestProcess::start(&db, &pki).await;
    let client = TlsClient::new(&pki.ca_cert(), Some(&pki.appliance("SN-404")));
    let r = client
        .post(ingest.report_addr, "/v1/report", &[JSON], b"{}")
        .await
        .expect("response");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "not_found");
}

#[test]
fn reports_the_real_collector_makes_validate_against_the_committed_schema() {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../schema/report.schema.json"))
            .expect("schema is JSON");
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("schema compiles");
    let fixtures = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../collector/tests/fixtures/sysfs"
    );
    let roots = [
        "/".to_owned(),
        format!("{fixtures}/node_exporter"),
        format!("{fixtures}/procfs"),
    ];
    for root in roots {
        let run = collector(&["collect", "--root", &root], &[]);
        assert_eq!(run.code, Some(0), "{root}: {}", run.stderr);
        let value: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{root}: {errors:#?}");
    }
}
