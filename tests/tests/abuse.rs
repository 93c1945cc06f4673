//! One appliance, or one client on the operations network, cannot hurt the rest (issue 13,
//! findings 2 and 4): a certificate holding many slow posts gets 429 beyond its share while its
//! neighbours are served; the operations listener caps its connections, closes half-sent
//! requests, and answers only for its own host names (DNS rebinding).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use phonehome_tests::bins::IngestProcess;
use phonehome_tests::client::{TlsClient, get};
use phonehome_tests::pki::TestPki;
use phonehome_tests::{TestDb, example_report};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn body(serial: &str) -> Vec<u8> {
    serde_json::to_vec(&example_report(serial)).expect("json")
}

#[tokio::test(flavor = "multi_thread")]
async fn one_certificate_holding_slow_posts_gets_429_beyond_its_share_and_others_are_served() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ingest = IngestProcess::start_with(&db, &pki, &[("PHONEHOME_MAX_IN_FLIGHT", "4")]).await;
    let hog = TlsClient::new(&pki.ca_cert(), Some(&pki.appliance("SN-HOG")));
    let neighbour = TlsClient::new(&pki.ca_cert(), Some(&pki.appliance("SN-NEIGHBOUR")));

    // The hog opens six posts and trickles none of their bodies.
    let slow = body("SN-HOG");
    let half = slow.len() / 2;
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(
            hog.start_post(ingest.report_addr, "/v1/reports", &slow, half)
                .await
                .expect("start"),
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Its neighbour is served at once, and the replica stays in its balancer.
    let started = Instant::now();
    let answer = neighbour
        .post(
            ingest.report_addr,
            "/v1/reports",
            &[("Content-Type", "application/json")],
            &body("SN-NEIGHBOUR"),
        )
        .await
        .expect("answered");
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let ready = get(ingest.ops_addr, "/readyz").await.expect("readyz");
    assert_eq!(ready.status, 200, "{}", ready.body);

    // Two of the hog's posts hold its share; the other four were refused with 429.
    let mut statuses = Vec::new();
    for post in held {
        let r = post.finish(&slow[half..]).await.expect("answer");
        statuses.push(r.status);
        if r.status == 429 {
            assert!(r.header("retry-after").is_some(), "429 without Retry-After");
        }
    }
    statuses.sort_unstable();
    assert_eq!(statuses, vec![200, 202, 429, 429, 429, 429], "{statuses:?}");
    assert_eq!(
        ingest
            .metric("phonehome_reports_total{result=\"over_share\"}")
            .await,
        Some(4.0)
    );
}

/// A raw HTTP/1.1 GET with the given Host header; the status, or `None` without an answer.
async fn get_with_host(addr: SocketAddr, host: &str) -> Option<u16> {
    let mut tcp = TcpStream::connect(addr).await.ok()?;
    let req = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut raw))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&raw);
    text.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operations_listener_answers_only_for_its_own_host_names() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ingest = IngestProcess::start_with(
        &db,
        &pki,
        &[(
            "PHONEHOME_OPS_ALLOWED_HOSTS",
            "ops.example, Dashboard.Internal",
        )],
    )
    .await;
    let port = ingest.ops_addr.port();
    for (host, expected) in [
        (format!("127.0.0.1:{port}"), 200),
        (format!("localhost:{port}"), 200),
        ("[::1]".to_owned(), 200),
        (format!("ops.example:{port}"), 200),
        ("dashboard.internal".to_owned(), 200),
        (format!("evil.example:{port}"), 421),
        ("127.0.0.1.evil.example".to_owned(), 421),
        ("localhost.evil.example".to_owned(), 421),
    ] {
        assert_eq!(
            get_with_host(ingest.ops_addr, &host).await,
            Some(expected),
            "Host: {host}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn half_sent_requests_cannot_hold_the_operations_listener_or_stop_intake() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ingest =
        IngestProcess::start_with(&db, &pki, &[("PHONEHOME_OPS_MAX_CONNECTIONS", "3")]).await;
    // Three clients that never finish their request headers take every slot.
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut tcp = TcpStream::connect(ingest.ops_addr).await.expect("connect");
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0")
            .await
            .expect("write");
        idle.push(tcp);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A fourth waits in the kernel's backlog: no answer yet.
    let waiting =
        tokio::time::timeout(Duration::from_secs(2), get(ingest.ops_addr, "/healthz")).await;
    assert!(
        waiting.is_err(),
        "the cap let a fourth connection in: {waiting:?}"
    );

    // Report intake does not notice.
    let client = TlsClient::new(&pki.ca_cert(), Some(&pki.appliance("SN-INTAKE")));
    let answer = client
        .post(
            ingest.report_addr,
            "/v1/reports",
            &[("Content-Type", "application/json")],
            &body("SN-INTAKE"),
        )
        .await
        .expect("answered");
    assert_eq!(answer.status, 202, "{}", answer.body);

    // The half-sent requests are closed at the header deadline, and the listener answers again.
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(20), get(ingest.ops_addr, "/healthz"))
        .await
        .expect("answered once the idle connections were closed")
        .expect("healthz");
    assert_eq!(answer.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    for mut tcp in idle {
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "a half-sent request was left open");
    }
}
