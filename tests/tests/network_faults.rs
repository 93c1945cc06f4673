//! Network faults between the collector and the ingest (issue 13, fault campaign), through a
//! fault-injecting TCP proxy the test owns: latency, a slow link, the connection reset part-way
//! through the request (handshake, headers or body) or the response (before or after the
//! ingest committed), and a black hole. Whatever happens to one run, the next clean run
//! delivers what was kept, and every report the collector made is stored exactly once.

use std::time::Duration;

use phonehome_tests::TestDb;
use phonehome_tests::bins::{IngestProcess, collector};
use phonehome_tests::pki::TestPki;
use phonehome_tests::proxy::{FaultProxy, Toxic};

const SERIAL: &str = "SN-NETFAULT";

#[tokio::test(flavor = "multi_thread")]
async fn through_every_network_fault_nothing_is_lost_and_nothing_stored_twice() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ingest = IngestProcess::start(&db, &pki).await;
    let proxy = FaultProxy::start(ingest.report_addr).await;
    let id = pki.appliance(SERIAL);
    let config = pki.dir().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "serial = {SERIAL:?}\nca_cert = {:?}\nclient_cert = {:?}\nclient_key = {:?}\n\
             timeout_seconds = 4\n\n[smart]\nscan = false\n\n[spool]\ndir = {:?}\n\
             retry_budget_seconds = 0\n",
            pki.ca_cert(),
            id.cert,
            id.key,
            pki.dir().join("spool")
        ),
    )
    .expect("config");
    let config = config.to_string_lossy().into_owned();
    let url = format!("https://{}", proxy.addr);
    let run = |url: String, config: String| async move {
        tokio::task::spawn_blocking(move || {
            collector(
                &["run", "--config", &config],
                &[("PHONEHOME_COLLECTOR_SERVER", &url)],
            )
        })
        .await
        .expect("collector thread")
    };

    // A clean run first, to learn how many bytes an exchange takes each way.
    let first = run(url.clone(), config.clone()).await;
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (up, down) = proxy
        .last_exchange()
        .expect("the clean run went through the proxy");
    assert!(up > 1_000 && down > 500, "({up}, {down})");
    let toxics = [
        Toxic::Latency(Duration::from_millis(300)),
        Toxic::SlowLink {
            bytes_per_second: 16_000,
        },
        // In the TLS handshake, then in the last of the body.
        Toxic::CutRequestAfter(up / 4),
        Toxic::CutRequestAfter(up - 40),
        // In the server's handshake, then in the last record of the 202 (before the closing alert): the report is committed and
        // its acknowledgement lost.
        Toxic::CutResponseAfter(50),
        Toxic::CutResponseAfter(down - 60),
        Toxic::BlackHole,
    ];
    let mut runs = 1i64;
    let mut kept = Vec::new();
    for toxic in toxics {
        proxy.set(toxic);
        let faulty = run(url.clone(), config.clone()).await;
        runs += 1;
        assert!(
            matches!(faulty.code, Some(0) | Some(75)),
            "{toxic:?}: {:?} {}",
            faulty.code,
            faulty.stderr
        );
        if faulty.code == Some(75) {
            kept.push(toxic);
        }
        proxy.set(Toxic::None);
        let clean = run(url.clone(), config.clone()).await;
        runs += 1;
        assert_eq!(
            clean.code,
            Some(0),
            "after {toxic:?}, a clean run delivers: {}\n{}",
            clean.stderr,
            ingest.log()
        );
        let row = db
            .client()
            .await
            .query_one(
                "SELECT count(*), count(DISTINCT report_id) FROM reports",
                &[],
            )
            .await
            .expect("count");
        let (n, distinct): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!(
            (n, distinct),
            (runs, runs),
            "after {toxic:?}: every report once"
        );
    }
    let duplicates = ingest
        .metric("phonehome_reports_total{result=\"duplicate\"}")
        .await
        .unwrap_or(0.0);
    eprintln!("runs that kept their report: {kept:?}; redeliveries answered 200: {duplicates}");
    // The faults did bite: the cuts and the black hole made runs keep their report.
    assert!(kept.contains(&Toxic::BlackHole), "{kept:?}");
    assert!(
        kept.iter().any(|t| matches!(t, Toxic::CutRequestAfter(_))),
        "{kept:?}"
    );
    assert!(
        kept.contains(&Toxic::CutResponseAfter(down - 60)),
        "{kept:?}"
    );
    assert!(
        duplicates >= 1.0,
        "the report whose 202 was cut was delivered again and answered 200"
    );
}
