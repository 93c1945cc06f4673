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
            ("PHONEHOME_REVOCATION_REFRESH_SECS", "1"),
            ("PHONEHOME_CA_DIR", ca_dir_text.as_str()),
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
