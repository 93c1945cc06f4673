//! Revocation that takes effect: `phonehome-ingest ca revoke` on the operations host, and the
//! running ingest refuses the appliance's certificate within its refresh interval, without a
//! restart, on a connection that was already open too; an enrolment token is printed once and
//! stored only as its digest; the CRL is published and signed by the issuing CA.

use std::process::Command;
use std::time::Duration;

use phonehome_tests::TestDb;
use phonehome_tests::bins::{IngestProcess, bin};
use phonehome_tests::client::TlsClient;
use phonehome_tests::pki::TestPki;

const JSON: (&str, &str) = ("Content-Type", "application/json");

fn cli(db: &TestDb, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin("phonehome-ingest"))
        .args(args)
        .env("PHONEHOME_DATABASE_URL", db.url())
        .env("USER", "carol")
        .output()
        .expect("run phonehome-ingest");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn body(serial: &str) -> Vec<u8> {
    serde_json::to_vec(&phonehome_tests::example_report(serial)).expect("json")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_serial_is_refused_within_the_refresh_interval_and_others_are_not() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ca_dir = pki.dir().join("fleet");
    let ca_dir_text = ca_dir.display().to_string();
    let ingest = IngestProcess::start_with(
        &db,
        &pki,
        &[
            ("PHONEHOME_PKI_REVOCATION_REFRESH_SECS", "1"),
            ("PHONEHOME_PKI_CA_DIR", ca_dir_text.as_str()),
        ],
    )
    .await;
    let stolen = TlsClient::new(&pki.ca_cert(), Some(&pki.appliance("SN-STOLEN")));
    let honest = TlsClient::new(&pki.ca_cert(), Some(&pki.appliance("SN-HONEST")));
    for (client, serial) in [(&stolen, "SN-STOLEN"), (&honest, "SN-HONEST")] {
        let r = client
            .post(ingest.report_addr, "/v1/reports", &[JSON], &body(serial))
            .await
            .expect("response");
        assert_eq!(r.status, 202, "before the revocation: {}", r.body);
    }

    let (ok, out, err) = cli(
        &db,
        &[
            "ca",
            "revoke",
            "--dir",
            &ca_dir_text,
            "--serial",
            "SN-STOLEN",
            "--reason",
            "stolen from the rack",
        ],
    );
    assert!(ok, "revoke failed: {out}{err}");
    assert!(out.contains("certificate(s) known"), "{out}");
    assert!(ca_dir.join("crl.pem").exists(), "the CRL file is written");
    // The advertised delay is the refresh interval (1 s here); a second of margin.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let reports_before = db.count("reports").await;
    let r = stolen
        .post(
            ingest.report_addr,
            "/v1/reports",
            &[JSON],
            &body("SN-STOLEN"),
        )
        .await
        .expect("response");
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("revoked"), "{}", r.body);
    assert_eq!(
        db.count("reports").await,
        reports_before,
        "nothing stored from the revoked certificate"
    );
    let r = honest
        .post(
            ingest.report_addr,
            "/v1/reports",
            &[JSON],
            &body("SN-HONEST"),
        )
        .await
        .expect("response");
    assert_eq!(r.status, 202, "other appliances carry on: {}", r.body);
    assert_eq!(
        ingest
            .metric("phonehome_revocation_refusals_total{reason=\"certificate_revoked\"}")
            .await,
        Some(1.0),
        "the certificate had delivered a report, so it is on the list by fingerprint too"
    );

    // The audit log says who revoked what and why.
    let row = db
        .client()
        .await
        .query_one(
            "SELECT actor, action, target, detail->>'reason' FROM audit_log WHERE action = 'revoke'",
            &[],
        )
        .await
        .expect("one audit row");
    let row: (String, String, String, String) = (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(
        row,
        (
            "cli:carol".into(),
            "revoke".into(),
            "SN-STOLEN".into(),
            "stolen from the rack".into()
        )
    );
    // The appliance page says so, with who and why.
    let page = phonehome_tests::client::get(ingest.ops_addr, "/appliances/SN-STOLEN")
        .await
        .expect("appliance page");
    assert!(page.body.contains("id=\"revoked\""), "{}", page.body);
    assert!(page.body.contains("stolen from the rack"), "{}", page.body);
    assert!(page.body.contains("issued offline"), "{}", page.body);

    // The CRL is served too, signed by the issuing CA: openssl verifies it.
    let crl = stolen
        .get(ingest.report_addr, "/v1/crl")
        .await
        .expect("response");
    assert_eq!(
        crl.status, 403,
        "a revoked certificate gets nothing, the CRL included"
    );
    let crl = honest
        .get(ingest.report_addr, "/v1/crl")
        .await
        .expect("response");
    assert_eq!(crl.status, 200, "{}", crl.body);
    assert!(
        crl.body.starts_with("-----BEGIN X509 CRL-----"),
        "{}",
        crl.body
    );
    let out = Command::new("openssl")
        .args(["crl", "-noout", "-text", "-in"])
        .arg(ca_dir.join("crl.pem"))
        .arg("-CAfile")
        .arg(ca_dir.join("issuing.crt"))
        .output()
        .expect("openssl is installed (apt-get install openssl)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("verify OK"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_enrolment_token_is_shown_once_and_stored_only_as_its_digest() {
    let db = TestDb::new().await;
    let (ok, out, err) = cli(
        &db,
        &["ca", "issue-token", "--serial", "SN-NEW", "--ttl", "2h"],
    );
    assert!(ok, "{out}{err}");
    let token = out.trim();
    assert!(token.starts_with("phe_") && token.len() > 40, "{out}");
    assert!(
        err.contains("SN-NEW") && err.contains("single use"),
        "{err}"
    );
    let row = db
        .client()
        .await
        .query_one(
            "SELECT serial, token_sha256, expires_at - created_at FROM enrolment_tokens",
            &[],
        )
        .await
        .expect("one token row");
    let serial: String = row.get(0);
    let digest: Vec<u8> = row.get(1);
    assert_eq!(serial, "SN-NEW");
    assert_eq!(
        digest,
        ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref()
    );
    let (ok, _, err) = cli(
        &db,
        &["ca", "issue-token", "--serial", "SN-NEW", "--ttl", "3w"],
    );
    assert!(!ok && err.contains("unit"), "a bad --ttl is refused: {err}");
}

/// A collector config for `serial` whose key and certificate go in `dir` (not there yet).
fn collector_config(
    dir: &std::path::Path,
    ingest: &IngestProcess,
    ca: &std::path::Path,
    serial: &str,
) -> std::path::PathBuf {
    let cfg = dir.join("collector.toml");
    std::fs::copy(ca, dir.join("ca.crt")).expect("copy the CA");
    std::fs::write(
        &cfg,
        format!(
            "server = {:?}\nca_cert = \"ca.crt\"\nclient_cert = \"appliance.crt\"\nclient_key = \"appliance.key\"\nserial = {serial:?}\ntimeout_seconds = 10\n",
            ingest.report_url(),
        ),
    )
    .expect("write the config");
    cfg
}

#[tokio::test(flavor = "multi_thread")]
async fn an_appliance_enrols_with_a_token_once_and_reports_with_its_own_key() {
    use std::os::unix::fs::PermissionsExt;
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ca_dir = pki.dir().join("fleet");
    let ca_dir_text = ca_dir.display().to_string();
    let ingest =
        IngestProcess::start_with(&db, &pki, &[("PHONEHOME_PKI_CA_DIR", ca_dir_text.as_str())])
            .await;
    let (ok, out, err) = cli(
        &db,
        &["ca", "issue-token", "--serial", "SN-ENROL", "--ttl", "1h"],
    );
    assert!(ok, "{out}{err}");
    let token = out.trim().to_owned();

    let appliance = tempfile::tempdir().expect("dir");
    let cfg = collector_config(appliance.path(), &ingest, &pki.ca_cert(), "SN-ENROL");
    let cfg_text = cfg.display().to_string();
    let run = phonehome_tests::bins::collector(
        &["enroll", "--config", &cfg_text],
        &[("PHONEHOME_ENROL_TOKEN", token.as_str())],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr.contains("enrolled as SN-ENROL"),
        "{}",
        run.stderr
    );
    let key = appliance.path().join("appliance.key");
    let mode = std::fs::metadata(&key)
        .expect("key written")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the key is the appliance's alone");

    // The enrolled pair delivers a report.
    let pair = phonehome_tests::pki::CertPair {
        cert: appliance.path().join("appliance.crt"),
        key,
    };
    let client = TlsClient::new(&pki.ca_cert(), Some(&pair));
    let r = client
        .post(
            ingest.report_addr,
            "/v1/reports",
            &[JSON],
            &body("SN-ENROL"),
        )
        .await
        .expect("response");
    assert_eq!(r.status, 202, "{}", r.body);
    let issued: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM issued_certificates WHERE serial = 'SN-ENROL' AND via = 'enrol'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(issued, 1);

    // The same token again, from another appliance: refused, nothing written or issued.
    let again = tempfile::tempdir().expect("dir");
    let cfg2 = collector_config(again.path(), &ingest, &pki.ca_cert(), "SN-ENROL");
    let cfg2_text = cfg2.display().to_string();
    let run = phonehome_tests::bins::collector(
        &["enroll", "--config", &cfg2_text],
        &[("PHONEHOME_ENROL_TOKEN", token.as_str())],
    );
    assert_eq!(run.code, Some(78), "{}", run.stderr);
    assert!(run.stderr.contains("already used"), "{}", run.stderr);
    assert!(!again.path().join("appliance.crt").exists());
    // A token for another serial, and one that was never issued: refused as well.
    let (ok, out, _) = cli(&db, &["ca", "issue-token", "--serial", "SN-OTHER"]);
    assert!(ok);
    let run = phonehome_tests::bins::collector(
        &["enroll", "--config", &cfg2_text],
        &[("PHONEHOME_ENROL_TOKEN", out.trim())],
    );
    assert_eq!(run.code, Some(78), "{}", run.stderr);
    assert!(run.stderr.contains("another serial"), "{}", run.stderr);
    let run = phonehome_tests::bins::collector(
        &["enroll", "--config", &cfg2_text],
        &[("PHONEHOME_ENROL_TOKEN", "phe_made_up")],
    );
    assert_eq!(run.code, Some(78), "{}", run.stderr);
    assert!(
        run.stderr.contains("unknown enrolment token"),
        "{}",
        run.stderr
    );
    assert_eq!(
        ingest
            .metric("phonehome_enrolments_total{outcome=\"token_used\"}")
            .await,
        Some(1.0)
    );
    // An expired token, and a token for an appliance retired since: refused, counted.
    let (ok, out, _) = cli(
        &db,
        &["ca", "issue-token", "--serial", "SN-ENROL", "--ttl", "1h"],
    );
    assert!(ok);
    db.client()
        .await
        .execute(
            "UPDATE enrolment_tokens SET expires_at = now() - interval '1 minute'
             WHERE used_at IS NULL",
            &[],
        )
        .await
        .expect("age the token");
    let run = phonehome_tests::bins::collector(
        &["enroll", "--config", &cfg2_text],
        &[("PHONEHOME_ENROL_TOKEN", out.trim())],
    );
    assert_eq!(run.code, Some(78), "{}", run.stderr);
    assert!(run.stderr.contains("expired"), "{}", run.stderr);
    let (ok, out, _) = cli(&db, &["ca", "issue-token", "--serial", "SN-ENROL"]);
    assert!(ok);
    let (ok, _, err) = cli(
        &db,
        &[
            "appliance",
            "set-state",
            "--serial",
            "SN-ENROL",
            "--state",
            "retired",
        ],
    );
    assert!(ok, "{err}");
    let run = phonehome_tests::bins::collector(
        &["enroll", "--config", &cfg2_text],
        &[("PHONEHOME_ENROL_TOKEN", out.trim())],
    );
    assert_eq!(run.code, Some(78), "{}", run.stderr);
    assert!(run.stderr.contains("retired"), "{}", run.stderr);
    assert!(!again.path().join("appliance.crt").exists());
    for outcome in ["token_expired", "retired", "other_serial", "unknown_token"] {
        assert_eq!(
            ingest
                .metric(&format!(
                    "phonehome_enrolments_total{{outcome=\"{outcome}\"}}"
                ))
                .await,
            Some(1.0),
            "{outcome}"
        );
    }
    assert_eq!(
        ingest
            .metric("phonehome_enrolments_total{outcome=\"issued\"}")
            .await,
        Some(1.0),
        "nothing more was issued"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_through_the_api_needs_an_admin_token_is_audited_and_takes_effect() {
    use phonehome_ingest::auth::Role;
    use phonehome_tests::client::request;
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ingest =
        IngestProcess::start_with(&db, &pki, &[("PHONEHOME_PKI_REVOCATION_REFRESH_SECS", "1")])
            .await;
    let pair = pki.appliance("SN-API");
    let appliance = TlsClient::new(&pki.ca_cert(), Some(&pair));
    let r = appliance
        .post(ingest.report_addr, "/v1/reports", &[JSON], &body("SN-API"))
        .await
        .expect("response");
    assert_eq!(r.status, 202, "{}", r.body);

    let revoke = |auth: Option<String>, body: &'static str| {
        let ops = ingest.ops_addr;
        async move {
            let mut headers = vec![("Content-Type", "application/json".to_owned())];
            if let Some(a) = auth {
                headers.push(("Authorization", a));
            }
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            request(
                ops,
                "POST",
                "/api/v1/revocations",
                &headers,
                body.as_bytes(),
            )
            .await
            .expect("POST /api/v1/revocations")
        }
    };
    let nothing_changed = || async {
        let c = db.client().await;
        let revoked: i64 = c
            .query_one("SELECT count(*) FROM revoked_serials", &[])
            .await
            .expect("count")
            .get(0);
        let audited: i64 = c
            .query_one(
                "SELECT count(*) FROM audit_log WHERE action = 'revoke'",
                &[],
            )
            .await
            .expect("count")
            .get(0);
        (revoked, audited) == (0, 0)
    };
    let by_serial = r#"{"serial": "SN-API", "reason": "returned (RMA 4711)"}"#;
    let r = revoke(None, by_serial).await;
    assert_eq!(r.status, 401, "{}", r.body);
    let r = revoke(Some(format!("Bearer {}", ingest.read_token)), by_serial).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(nothing_changed().await, "refused writes change nothing");

    let admin = format!(
        "Bearer {}",
        phonehome_tests::bins::create_token(db.url(), "ops-dave", Role::Admin).await
    );
    let r = revoke(
        Some(admin.clone()),
        r#"{"serial": "SN-API", "certificate": "00"}"#,
    )
    .await;
    assert_eq!(r.status, 400, "both targets at once: {}", r.body);
    let r = revoke(Some(admin.clone()), r#"{"certificate": "12:34"}"#).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("certificate"), "{}", r.body);
    assert!(nothing_changed().await, "bad requests change nothing");

    let r = revoke(Some(admin), by_serial).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let answer: serde_json::Value = serde_json::from_str(&r.body).expect("JSON");
    assert_eq!(answer["known_certificates"], 1, "{answer}");
    assert_eq!(answer["refused_within_seconds"], 1.0, "{answer}");
    let row = db
        .client()
        .await
        .query_one(
            "SELECT actor, target, detail->>'reason' FROM audit_log WHERE action = 'revoke'",
            &[],
        )
        .await
        .expect("one audit row");
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2)
        ),
        (
            "token:ops-dave".to_owned(),
            "SN-API".to_owned(),
            "returned (RMA 4711)".to_owned()
        )
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = appliance
        .post(ingest.report_addr, "/v1/reports", &[JSON], &body("SN-API"))
        .await
        .expect("response");
    assert_eq!(
        r.status, 403,
        "refused within the advertised delay: {}",
        r.body
    );
}

/// Two replicas on one database, both taking reports from the appliance being revoked and from
/// another one, fresh connections back to back: after the revocation commits plus the refresh
/// interval, neither stores anything from the revoked appliance, and the other one carries on.
#[tokio::test(flavor = "multi_thread")]
async fn revocation_under_load_reaches_both_replicas_within_the_refresh_interval() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let env = [("PHONEHOME_PKI_REVOCATION_REFRESH_SECS", "1")];
    let replicas = [
        IngestProcess::start_with(&db, &pki, &env).await,
        IngestProcess::start_with(&db, &pki, &env).await,
    ];
    let stop = Arc::new(AtomicBool::new(false));
    // (serial, replica, HTTP status) of every answer.
    let answers = Arc::new(std::sync::Mutex::new(Vec::<(String, usize, u16)>::new()));
    let mut senders = Vec::new();
    for serial in ["SN-VICTIM", "SN-BYSTANDER"] {
        let pair = pki.appliance(serial);
        for (n, replica) in replicas.iter().enumerate() {
            let client = TlsClient::new(&pki.ca_cert(), Some(&pair));
            let (stop, answers, addr) = (stop.clone(), answers.clone(), replica.report_addr);
            senders.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let status = client
                        .post(addr, "/v1/reports", &[JSON], &body(serial))
                        .await
                        .map_or(0, |r| r.status);
                    answers
                        .lock()
                        .expect("lock")
                        .push((serial.to_owned(), n, status));
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (ok, out, err) = cli(
        &db,
        &[
            "ca",
            "revoke",
            "--serial",
            "SN-VICTIM",
            "--reason",
            "stolen",
        ],
    );
    assert!(ok, "{out}{err}");
    let revoked_at = answers.lock().expect("lock").len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.await.expect("sender");
    }

    // Stored after the commit plus the advertised second (and a quarter second for a request
    // that passed the check just before the reload): nothing.
    let late: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM reports r JOIN appliances a ON a.id = r.appliance_id
             WHERE a.serial = 'SN-VICTIM' AND r.received_at >
                   (SELECT revoked_at FROM revoked_serials WHERE serial = 'SN-VICTIM')
                   + interval '1.25 seconds'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(
        late, 0,
        "reports stored from the revoked appliance after the delay"
    );
    let answers = answers.lock().expect("lock").clone();
    for n in 0..2 {
        let after = |serial: &str, status: u16| {
            answers[revoked_at..]
                .iter()
                .filter(|a| a.0 == serial && a.1 == n && a.2 == status)
                .count()
        };
        assert!(
            after("SN-VICTIM", 403) > 0,
            "replica {n} refuses the revoked appliance"
        );
        assert!(
            after("SN-BYSTANDER", 202) > 0,
            "replica {n} still takes the others"
        );
        let bystander_failed = answers
            .iter()
            .filter(|a| a.0 == "SN-BYSTANDER" && a.1 == n && a.2 != 202)
            .count();
        assert_eq!(
            bystander_failed, 0,
            "replica {n}: the bystander never failed"
        );
    }
}
