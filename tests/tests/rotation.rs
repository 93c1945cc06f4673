//! The ingest's own certificate rotates without a restart: replaced on disk while appliances
//! report, new handshakes present the new one and no report fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use phonehome_pki::ca;
use phonehome_tests::TestDb;
use phonehome_tests::bins::IngestProcess;
use phonehome_tests::client::TlsClient;
use phonehome_tests::pki::TestPki;

const SENDERS: usize = 4;

#[tokio::test(flavor = "multi_thread")]
async fn the_server_certificate_replaced_under_load_is_used_and_no_report_fails() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ingest = IngestProcess::start(&db, &pki).await;
    let probe = TlsClient::new(&pki.ca_cert(), Some(&pki.appliance("SN-PROBE")));
    let old = probe
        .server_certificate(ingest.report_addr)
        .await
        .expect("handshake");

    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        let serial = format!("SN-LOAD-{i}");
        let client = TlsClient::new(&pki.ca_cert(), Some(&pki.appliance(&serial)));
        let (stop, delivered, failures) = (stop.clone(), delivered.clone(), failures.clone());
        let addr = ingest.report_addr;
        senders.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let body =
                    serde_json::to_vec(&phonehome_tests::example_report(&serial)).expect("json");
                // A fresh connection (and handshake) per report, as collectors make.
                match client
                    .post(
                        addr,
                        "/v1/reports",
                        &[("Content-Type", "application/json")],
                        &body,
                    )
                    .await
                {
                    Ok(r) if r.status == 202 => {
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures
                        .lock()
                        .expect("lock")
                        .push(format!("HTTP {}: {}", r.status, r.body)),
                    Err(e) => failures.lock().expect("lock").push(e),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A new server certificate from the same CA, moved over the old files (key first, as an
    // operator's deployment tool would: each rename is atomic, the pair is briefly mismatched).
    let fleet = pki.dir().join("fleet");
    let new = ca::issue_server(
        &fleet,
        &["127.0.0.1".to_owned(), "localhost".to_owned()],
        "server-next",
        30,
    )
    .expect("issue the next server certificate");
    std::fs::rename(&new.key, fleet.join("server.key")).expect("replace the key");
    std::fs::rename(&new.cert, fleet.join("server.crt")).expect("replace the certificate");
    let new_der = phonehome_pki::certificates_from_pem(
        &std::fs::read_to_string(fleet.join("server.crt")).expect("read"),
    )
    .expect("PEM")
    .remove(0)
    .to_vec();

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now_served = probe
            .server_certificate(ingest.report_addr)
            .await
            .expect("handshake during the rotation");
        if now_served == new_der {
            break;
        }
        assert_eq!(
            now_served, old,
            "only the old or the new certificate is ever served"
        );
        assert!(
            Instant::now() < deadline,
            "the new certificate was not picked up within 10 s:\n{}",
            ingest.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let at_switch = delivered.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.await.expect("sender");
    }
    let failures = failures.lock().expect("lock").clone();
    assert!(
        failures.is_empty(),
        "{} failed reports: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let total = delivered.load(Ordering::Relaxed);
    assert!(
        total > at_switch,
        "reports kept flowing after the switch ({at_switch} → {total})"
    );
    assert!(at_switch > 0, "reports flowed before the switch");
    assert_eq!(
        ingest
            .metric("phonehome_tls_reloads_total{outcome=\"ok\"}")
            .await,
        Some(1.0),
        "{}",
        ingest.log()
    );
    let stored: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM reports", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(
        u64::try_from(stored).expect("count"),
        total,
        "every 202 is stored"
    );
}
