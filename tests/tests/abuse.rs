//! One appliance, or one client on the operations network, cannot hurt the rest (issue 13,
//! findings 2 and 4): a certificate holding many slow posts gets 429 beyond its share while its
//! neighbours are served; a body that trickles or stalls gets 408 and gives its slot back; the
//! operations listener caps its connections, closes half-sent requests and idle ones at its
//! header deadline and every one at its lifetime, and answers only for its own host names (DNS
//! rebinding).

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
    assert_eq!(
        ingest
            .metric("phonehome_reports_total{result=\"saturated\"}")
            .await,
        None,
        "nobody was refused for the fleet's capacity"
    );
}

/// Sends `post`'s body a byte every 100 ms (far below any useful rate) until the server ends
/// the request or 25 s pass; the answer, if one could be read, and when the request ended.
async fn trickle(
    mut post: phonehome_tests::client::PartialPost,
    started: Instant,
) -> (Option<u16>, Duration) {
    while started.elapsed() < Duration::from_secs(25) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if post.send(b" ").await.is_err() {
            // Closed by the server; the 408 may have been lost to the reset.
            return (None, started.elapsed());
        }
        // Whitespace keeps the body valid JSON if it were ever finished.
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    let ended = started.elapsed();
    let answer = tokio::time::timeout(Duration::from_secs(5), post.finish(b""))
        .await
        .ok()
        .and_then(Result::ok)
        .map(|r| r.status);
    (answer, ended)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_trickling_past_its_deadline_gets_408_and_its_slot_is_freed() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    // One slot, so a post that kept it would lock everyone out; a 2 s body deadline.
    let ingest = IngestProcess::start_with(
        &db,
        &pki,
        &[
            ("PHONEHOME_MAX_IN_FLIGHT", "1"),
            ("PHONEHOME_ADMISSION_WAIT_MS", "0"),
            ("PHONEHOME_BODY_TIMEOUT_SECS", "2"),
        ],
    )
    .await;
    let slow = TlsClient::new(&pki.ca_cert(), Some(&pki.appliance("SN-TRICKLE")));
    let neighbour = TlsClient::new(&pki.ca_cert(), Some(&pki.appliance("SN-NEIGHBOUR")));
    let post_neighbour = || async {
        neighbour
            .post(
                ingest.report_addr,
                "/v1/reports",
                &[("Content-Type", "application/json")],
                &body("SN-NEIGHBOUR"),
            )
            .await
            .expect("answered")
    };

    // The trickler's body announces far more than it will ever send in time.
    let mut report = body("SN-TRICKLE");
    report.extend(std::iter::repeat_n(b' ', 100_000));
    let started = Instant::now();
    let post = slow
        .start_post(ingest.report_addr, "/v1/reports", &report, 1000)
        .await
        .expect("start");
    let trickling = tokio::spawn(trickle(post, started));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // While it trickles it holds the only slot (so the test means something).
    let held = post_neighbour().await;
    assert_eq!(held.status, 503, "{}", held.body);

    // At the deadline it is answered 408 (or cut), not 30 s later.
    let (answer, ended) = trickling.await.expect("trickler");
    assert!(
        matches!(answer, None | Some(408)),
        "the trickler got {answer:?}"
    );
    assert!(
        ended < Duration::from_secs(5),
        "the trickling post held its slot for {ended:?}"
    );

    // Its slot is free: the neighbour is stored, and the replica is ready.
    let answer = post_neighbour().await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let ready = get(ingest.ops_addr, "/readyz").await.expect("readyz");
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(
        ingest
            .metric("phonehome_reports_total{result=\"timeout\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(db.count("reports").await, 1, "only the neighbour's report");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_body_is_let_go_after_the_grace_not_the_whole_deadline() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    // Defaults: a 60 s deadline, 1 KiB/s after a 10 s grace.
    let ingest = IngestProcess::start(&db, &pki).await;
    let client = TlsClient::new(&pki.ca_cert(), Some(&pki.appliance("SN-STALL")));
    let report = body("SN-STALL");
    let started = Instant::now();
    // Headers and half the body, then nothing: a link that died, or a client keeping a slot.
    let post = client
        .start_post(ingest.report_addr, "/v1/reports", &report, report.len() / 2)
        .await
        .expect("start");
    let answer = tokio::time::timeout(Duration::from_secs(20), post.finish(b""))
        .await
        .expect("the stalled post was still open after 20 s");
    let took = started.elapsed();
    if let Ok(r) = &answer {
        assert_eq!(r.status, 408, "{}", r.body);
    }
    assert!(
        (Duration::from_secs(9)..Duration::from_secs(16)).contains(&took),
        "let go after {took:?}"
    );
    assert_eq!(
        ingest
            .metric("phonehome_reports_total{result=\"timeout\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        ingest.metric("phonehome_reports_in_flight").await,
        Some(0.0)
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
    assert_eq!(
        ingest
            .metric("phonehome_ops_requests_refused_total{reason=\"host\"}")
            .await,
        Some(3.0)
    );
}

/// Reads one response to a keep-alive request on `tcp` (headers and a Content-Length body);
/// its status, or `None` once the server has closed the connection.
async fn read_response(tcp: &mut TcpStream) -> Option<u16> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(buf.get(..n)?);
        let text = String::from_utf8_lossy(&raw);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                return text.split_whitespace().nth(1)?.parse().ok();
            }
        }
    }
}

const KEEP_ALIVE_GET: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

#[tokio::test(flavor = "multi_thread")]
async fn half_sent_requests_cannot_hold_the_operations_listener_or_stop_intake() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ingest = IngestProcess::start_with(
        &db,
        &pki,
        &[
            ("PHONEHOME_OPS_MAX_CONNECTIONS", "3"),
            ("PHONEHOME_OPS_HEADER_TIMEOUT_SECS", "2"),
        ],
    )
    .await;
    // Three clients take every slot: one never finishes its request headers, one sends
    // nothing at all, one keeps its connection alive after a request and then idles.
    let started = Instant::now();
    let mut idle = Vec::new();
    let mut half = TcpStream::connect(ingest.ops_addr).await.expect("connect");
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0")
        .await
        .expect("write");
    idle.push(half);
    idle.push(TcpStream::connect(ingest.ops_addr).await.expect("connect"));
    let mut kept = TcpStream::connect(ingest.ops_addr).await.expect("connect");
    kept.write_all(KEEP_ALIVE_GET).await.expect("write");
    assert_eq!(read_response(&mut kept).await, Some(200));
    idle.push(kept);

    // Five more wait in the kernel's backlog: no answer while the three hold their slots.
    let waiting: Vec<_> = (0..5)
        .map(|_| tokio::spawn(get(ingest.ops_addr, "/healthz")))
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        waiting.iter().all(|w| !w.is_finished()),
        "the cap let a fourth connection in"
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

    // The three are closed at the header deadline, and the waiting ones are answered.
    for w in waiting {
        let answer = tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .expect("answered once the idle connections were closed")
            .expect("task")
            .expect("healthz");
        assert_eq!(answer.status, 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    for mut tcp in idle {
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut rest)).await;
        assert!(
            closed.is_ok(),
            "an idle or half-sent connection was left open"
        );
    }
    assert_eq!(
        ingest
            .metric("phonehome_ops_connections_closed_total{reason=\"header_timeout\"}")
            .await,
        Some(3.0)
    );
    let at_capacity = ingest
        .metric("phonehome_listener_at_capacity_total{listener=\"ops\"}")
        .await
        .unwrap_or(0.0);
    assert!(at_capacity >= 1.0, "{at_capacity}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operations_connection_is_closed_at_its_lifetime_however_busy() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ingest = IngestProcess::start_with(
        &db,
        &pki,
        &[
            ("PHONEHOME_OPS_HEADER_TIMEOUT_SECS", "2"),
            ("PHONEHOME_OPS_CONNECTION_LIFETIME_SECS", "3"),
        ],
    )
    .await;
    // A client that never lets its connection idle long enough for the header deadline.
    let mut tcp = TcpStream::connect(ingest.ops_addr).await.expect("connect");
    let started = Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_secs(15) {
        if tcp.write_all(KEEP_ALIVE_GET).await.is_err() {
            break;
        }
        match read_response(&mut tcp).await {
            Some(200) => answered += 1,
            Some(other) => panic!("status {other}"),
            None => break,
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let lived = started.elapsed();
    assert!(answered >= 3, "{answered} requests answered");
    assert!(
        (Duration::from_millis(2500)..Duration::from_secs(6)).contains(&lived),
        "the connection lived {lived:?}"
    );
    assert_eq!(
        ingest
            .metric("phonehome_ops_connections_closed_total{reason=\"lifetime\"}")
            .await,
        Some(1.0)
    );
}
