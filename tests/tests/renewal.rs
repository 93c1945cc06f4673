//! Certificates that live as long as the appliance: an enrolled collector renews by itself past
//! about two thirds of its certificate's lifetime (shortened to seconds here) and reports with
//! the new one; the old key dies with its certificate; an expired certificate renews within the
//! grace but not when revoked or past it; and a collector killed at any step of a renewal still
//! has a pair that delivers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use phonehome_tests::TestDb;
use phonehome_tests::bins::{IngestProcess, Run, bin, collector};
use phonehome_tests::pki::TestPki;

fn ingest_cli(db: &TestDb, args: &[&str]) -> String {
    let out = Command::new(bin("phonehome-ingest"))
        .args(args)
        .env("PHONEHOME_DATABASE_URL", db.url())
        .env("USER", "carol")
        .output()
        .expect("run phonehome-ingest");
    assert!(
        out.status.success(),
        "phonehome-ingest {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// An appliance directory: its collector config, key, certificate, CA and spool.
struct Appliance {
    dir: tempfile::TempDir,
    serial: String,
}

impl Appliance {
    /// Enrols `serial` with a fresh token; the enrolment must succeed.
    fn enrol(db: &TestDb, ingest: &IngestProcess, pki: &TestPki, serial: &str) -> Appliance {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::copy(pki.ca_cert(), dir.path().join("ca.crt")).expect("copy the CA");
        let a = Appliance {
            dir,
            serial: serial.to_owned(),
        };
        a.write_config(ingest, "appliance");
        let token = ingest_cli(db, &["ca", "issue-token", "--serial", serial]);
        let run = collector(
            &["enroll", "--config", &a.config()],
            &[("PHONEHOME_ENROL_TOKEN", token.as_str())],
        );
        assert_eq!(run.code, Some(0), "enrol {serial}: {}", run.stderr);
        a
    }

    /// Points the config at `ingest` and at the pair named `pair` (.crt/.key) in the directory.
    fn write_config(&self, ingest: &IngestProcess, pair: &str) {
        std::fs::write(
            self.dir.path().join("collector.toml"),
            format!(
                "server = {:?}\nca_cert = \"ca.crt\"\nclient_cert = \"{pair}.crt\"\n\
                 client_key = \"{pair}.key\"\nserial = {:?}\ntimeout_seconds = 10\n\n\
                 [spool]\ndir = \"spool\"\n",
                ingest.report_url(),
                self.serial,
            ),
        )
        .expect("write the config");
    }

    fn config(&self) -> String {
        self.dir.path().join("collector.toml").display().to_string()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn run(&self, env: &[(&str, &str)]) -> Run {
        collector(&["run", "--config", &self.config()], env)
    }

    fn renew(&self, env: &[(&str, &str)]) -> Run {
        collector(&["renew", "--config", &self.config()], env)
    }

    /// SHA-256 (hex) of the certificate in `appliance.crt`.
    fn cert_sha(&self) -> String {
        let pem = std::fs::read_to_string(self.path("appliance.crt")).expect("certificate");
        let der = phonehome_pki::certificates_from_pem(&pem).expect("PEM");
        let info = phonehome_pki::inspect_der(der.first().expect("a certificate")).expect("read");
        assert!(
            phonehome_pki::key_matches(
                &std::fs::read_to_string(self.path("appliance.key")).expect("key"),
                &info
            ),
            "appliance.key and appliance.crt are a pair"
        );
        info.sha256_hex()
    }

    /// Copies the current pair to `old.crt`/`old.key`.
    fn keep_old_pair(&self) {
        for ext in ["crt", "key"] {
            std::fs::copy(
                self.path(&format!("appliance.{ext}")),
                self.path(&format!("old.{ext}")),
            )
            .expect("copy the pair");
        }
    }
}

/// The certificate (hex SHA-256) the appliance's latest stored report came with, and the
/// report's `collector.certificate` as the API serves it.
async fn latest_report(
    db: &TestDb,
    ingest: &IngestProcess,
    serial: &str,
) -> (String, serde_json::Value) {
    let row = db
        .client()
        .await
        .query_one(
            "SELECT encode(c.sha256, 'hex'), r.report_id::text
             FROM reports r JOIN appliances a ON a.id = r.appliance_id
             JOIN certificates c ON c.id = r.cert_id
             WHERE a.serial = $1 ORDER BY r.received_at DESC LIMIT 1",
            &[&serial],
        )
        .await
        .expect("a stored report");
    let report_id: String = row.get(1);
    let r = phonehome_tests::client::get(
        ingest.ops_addr,
        &format!("/api/v1/appliances/{serial}/reports/{report_id}"),
    )
    .await
    .expect("GET the report");
    assert_eq!(r.status, 200, "{}", r.body);
    let body: serde_json::Value = serde_json::from_str(&r.body).expect("JSON");
    (row.get(0), body["collector"]["certificate"].clone())
}

fn sleep_until(t: Instant) {
    if let Some(d) = t.checked_duration_since(Instant::now()) {
        std::thread::sleep(d);
    }
}

fn enrolling_ingest_env(ca_dir: &Path, lifetime_secs: &str) -> Vec<(String, String)> {
    vec![
        ("PHONEHOME_PKI_CA_DIR".into(), ca_dir.display().to_string()),
        (
            "PHONEHOME_PKI_APPLIANCE_CERT_SECONDS".into(),
            lifetime_secs.into(),
        ),
    ]
}

async fn start(db: &TestDb, pki: &TestPki, env: &[(String, String)]) -> IngestProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    IngestProcess::start_with(db, pki, &env).await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_appliance_renews_past_two_thirds_and_its_old_key_dies_with_its_certificate() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ingest = start(
        &db,
        &pki,
        &enrolling_ingest_env(&pki.dir().join("fleet"), "20"),
    )
    .await;
    let enrolled_at = Instant::now();
    let a = Appliance::enrol(&db, &ingest, &pki, "SN-RENEW");
    let first = a.cert_sha();

    // Fresh: no renewal, the report comes with the enrolled certificate.
    let run = a.run(&[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(!run.stderr.contains("renew"), "{}", run.stderr);
    let (sha, state) = latest_report(&db, &ingest, "SN-RENEW").await;
    assert_eq!(sha, first);
    assert!(state["not_after"].is_string(), "{state}");
    assert!(state.get("renewed_at").is_none(), "{state}");
    // A 20-second certificate is far inside `certificate_expiring`'s 7 critical days.
    let alert = db
        .client()
        .await
        .query_one(
            "SELECT severity, summary FROM alerts
             WHERE rule = 'certificate_expiring' AND state = 'firing'",
            &[],
        )
        .await
        .expect("a certificate_expiring alert fires");
    assert_eq!(alert.get::<_, String>(0), "critical");
    let summary: String = alert.get(1);
    assert!(summary.contains("has not renewed"), "{summary}");
    a.keep_old_pair();

    // Past 2/3 + the largest jitter (0.73 of 20 s): the run renews, then reports with the new
    // certificate and says when it renewed.
    sleep_until(enrolled_at + Duration::from_secs(15));
    let run = a.run(&[]);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stderr, ingest.log());
    assert!(
        run.stderr.contains("renewed the certificate"),
        "{}",
        run.stderr
    );
    let second = a.cert_sha();
    assert_ne!(second, first, "a new certificate");
    let (sha, state) = latest_report(&db, &ingest, "SN-RENEW").await;
    assert_eq!(sha, second, "the report came with the new certificate");
    assert!(state["renewed_at"].is_string(), "{state}");
    assert!(state.get("renewal_error").is_none(), "{state}");
    let renewed_from: String = db
        .client()
        .await
        .query_one(
            "SELECT encode(renewed_from, 'hex') FROM issued_certificates
             WHERE serial = 'SN-RENEW' AND via = 'renew'",
            &[],
        )
        .await
        .expect("the renewal is recorded")
        .get(0);
    assert_eq!(renewed_from, first);
    // The appliance page says which certificate and how it came; /metrics counts it as ending
    // within 7 days.
    let page = phonehome_tests::client::get(ingest.ops_addr, "/appliances/SN-RENEW")
        .await
        .expect("appliance page");
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("issued by renewal") && page.body.contains(&second),
        "{}",
        page.body
    );
    assert!(!page.body.contains("id=\"revoked\""), "{}", page.body);
    assert_eq!(
        ingest
            .metric("phonehome_appliance_certificates{expires_within=\"7d\"}")
            .await,
        Some(1.0)
    );

    // Once the old certificate has expired its key is worth nothing: no report, no renewal.
    sleep_until(enrolled_at + Duration::from_secs(22));
    a.write_config(&ingest, "old");
    let run = a.run(&[]);
    assert_eq!(run.code, Some(78), "{}", run.stderr);
    assert!(run.stderr.contains("expired"), "{}", run.stderr);
    assert!(
        run.stderr.contains("certificate renewal failed") && run.stderr.contains("already renewed"),
        "{}",
        run.stderr
    );
    assert_eq!(
        ingest
            .metric("phonehome_renewals_total{outcome=\"superseded\"}")
            .await,
        Some(1.0)
    );
    let (sha, _) = latest_report(&db, &ingest, "SN-RENEW").await;
    assert_eq!(sha, second, "nothing stored from the old pair");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_certificate_renews_within_the_grace_but_not_revoked_or_past_it() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ca_dir = pki.dir().join("fleet");
    let ingest = start(&db, &pki, &enrolling_ingest_env(&ca_dir, "3")).await;
    let shelved = Appliance::enrol(&db, &ingest, &pki, "SN-SHELF");
    let stolen = Appliance::enrol(&db, &ingest, &pki, "SN-STOLEN");
    let forgotten = Appliance::enrol(&db, &ingest, &pki, "SN-FORGOTTEN");
    ingest_cli(
        &db,
        &[
            "ca",
            "revoke",
            "--dir",
            &ca_dir.display().to_string(),
            "--serial",
            "SN-STOLEN",
        ],
    );
    std::thread::sleep(Duration::from_secs(4));

    // Back from the shelf, expired: renews with the expired pair, then delivers.
    let before = shelved.cert_sha();
    let run = shelved.run(&[]);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stderr, ingest.log());
    assert!(
        run.stderr.contains("renewed the certificate"),
        "{}",
        run.stderr
    );
    assert_ne!(shelved.cert_sha(), before);

    // Revoked: cannot renew, cannot report; the pair on disk is untouched.
    let before = stolen.cert_sha();
    let run = stolen.run(&[]);
    assert_eq!(run.code, Some(78), "{}", run.stderr);
    assert!(
        run.stderr.contains("certificate renewal failed") && run.stderr.contains("revoked"),
        "{}",
        run.stderr
    );
    assert_eq!(stolen.cert_sha(), before);
    assert!(!stolen.path("appliance.key.next").exists());

    // Past the grace (an ingest that allows none): the handshake refuses the expired pair.
    let strict = start(
        &db,
        &pki,
        &[
            ("PHONEHOME_PKI_CA_DIR".into(), ca_dir.display().to_string()),
            ("PHONEHOME_PKI_RENEW_GRACE_DAYS".into(), "0".into()),
        ],
    )
    .await;
    forgotten.write_config(&strict, "appliance");
    let before = forgotten.cert_sha();
    let run = forgotten.run(&[]);
    assert_eq!(run.code, Some(78), "{}", run.stderr);
    assert!(
        run.stderr.contains("certificate renewal failed"),
        "{}",
        run.stderr
    );
    assert_eq!(forgotten.cert_sha(), before);
    let renewed: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM issued_certificates WHERE via = 'renew'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(renewed, 1, "only the shelved appliance got a certificate");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collector_killed_at_any_step_of_a_renewal_still_delivers() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ingest = start(
        &db,
        &pki,
        &enrolling_ingest_env(&pki.dir().join("fleet"), "86400"),
    )
    .await;
    let a = Appliance::enrol(&db, &ingest, &pki, "SN-KILLED");
    for step in 1..=5 {
        let before = a.cert_sha();
        let failpoint = format!("renew-{step}");
        let killed = a.renew(&[("PHONEHOME_COLLECTOR_FAILPOINT", failpoint.as_str())]);
        assert_eq!(
            killed.code, None,
            "step {step}: killed by a signal: {}",
            killed.stderr
        );
        let run = a.run(&[]);
        assert_eq!(
            run.code,
            Some(0),
            "step {step}: {}\n{}",
            run.stderr,
            ingest.log()
        );
        let after = a.cert_sha();
        // Until the new certificate is on disk the old pair stays; from then on the new one
        // is put in place.
        assert_eq!(after != before, step >= 3, "step {step}: {}", run.stderr);
        if step == 3 || step == 4 {
            assert!(
                run.stderr.contains("finished an interrupted renewal"),
                "{}",
                run.stderr
            );
        }
        if step <= 2 {
            assert!(
                run.stderr.contains("discarded an interrupted renewal"),
                "{}",
                run.stderr
            );
        }
        let (sha, _) = latest_report(&db, &ingest, "SN-KILLED").await;
        assert_eq!(sha, after, "step {step}: delivered with the pair on disk");
    }
}
