//! The operations listener's authentication, the audit log and the appliance lifecycle
//! (issue 14, items 5 and 7), through the real ingest binary and its command line against real
//! PostgreSQL: what an operator (or an attacker without a token) sees.

use std::process::Command;
use std::time::{Duration, Instant};

use chrono::Utc;
use phonehome_ingest::auth::{CACHE_TTL, Role};
use phonehome_ingest::storage::Storage;
use phonehome_tests::bins::{IngestProcess, bin, create_token};
use phonehome_tests::client::{Response, get, request};
use phonehome_tests::pki::TestPki;
use phonehome_tests::{TestDb, example_report, store_report};

fn basic(user: &str, token: &str) -> String {
    use std::io::Write;
    // A tiny base64 encoder would be one more thing to trust; the test crate has none, so
    // the ingest's own decoder is checked against what `curl -u` would send, computed here.
    let mut raw = Vec::new();
    write!(raw, "{user}:{token}").expect("write");
    format!("Basic {}", b64(&raw))
}

fn b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `phonehome-ingest ARGS` against `db`, as an operator on the operations host runs it.
fn cli(db: &TestDb, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin("phonehome-ingest"))
        .args(args)
        .env("PHONEHOME_DATABASE_URL", db.url())
        .env("USER", "alice")
        .output()
        .expect("run phonehome-ingest");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn put_lifecycle(
    ingest: &IngestProcess,
    serial: &str,
    auth: Option<&str>,
    body: &str,
) -> Response {
    let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
    let mut headers = headers;
    headers.push(("Content-Type", "application/json"));
    request(
        ingest.ops_addr,
        "PUT",
        &format!("/api/v1/appliances/{serial}/lifecycle"),
        &headers,
        body.as_bytes(),
    )
    .await
    .expect("PUT lifecycle")
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    db.client()
        .await
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

async fn firing(db: &TestDb, serial: &str) -> Vec<String> {
    db.client()
        .await
        .query(
            "SELECT a.rule FROM alerts a JOIN appliances p ON p.id = a.appliance_id
             WHERE p.serial = $1 AND a.state = 'firing' ORDER BY a.rule",
            &[&serial],
        )
        .await
        .expect("alerts")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_need_an_admin_token_are_audited_and_a_revoked_token_stops_working() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ingest = IngestProcess::start(&db, &pki).await;
    let body = r#"{"state": "retired", "note": "RMA 4711"}"#;
    let lifecycle_audits = "SELECT count(*) FROM audit_log WHERE action = 'appliance.lifecycle'";

    // No token: 401 with a Bearer challenge, nothing changed, nothing logged.
    let r = put_lifecycle(&ingest, "SN-AUTH", None, body).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"phonehome\"")
    );
    let r = put_lifecycle(&ingest, "SN-AUTH", Some("Bearer phk_not-a-token"), body).await;
    assert_eq!(r.status, 401, "{}", r.body);
    // A read token: 403, nothing changed, nothing logged.
    let read = format!("Bearer {}", ingest.read_token);
    let r = put_lifecycle(&ingest, "SN-AUTH", Some(&read), body).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        count(&db, "SELECT count(*) FROM appliance_lifecycle").await,
        0
    );
    assert_eq!(count(&db, "SELECT count(*) FROM revoked_serials").await, 0);
    assert_eq!(count(&db, lifecycle_audits).await, 0);
    // The same read token reads.
    let r = get(ingest.ops_addr, "/api/v1/appliances/SN-AUTH/lifecycle")
        .await
        .expect("GET");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["state"], "active");

    // An admin token from the command line: printed once, listed without its secret.
    let (ok, secret, err) = cli(
        &db,
        &["token", "create", "--name", "ops-bob", "--role", "admin"],
    );
    assert!(ok, "{err}");
    let secret = secret.trim().to_owned();
    assert!(secret.starts_with("phk_") && secret.len() > 40, "{secret}");
    let (ok, listing, err) = cli(&db, &["token", "list"]);
    assert!(ok, "{err}");
    assert!(
        listing.contains("ops-bob") && listing.contains("admin"),
        "{listing}"
    );
    assert!(
        !listing.contains(&secret),
        "the secret is never shown again"
    );
    let stored: Vec<u8> = db
        .client()
        .await
        .query_one(
            "SELECT token_sha256 FROM api_tokens WHERE name = 'ops-bob'",
            &[],
        )
        .await
        .expect("token row")
        .get(0);
    assert_eq!(stored, phonehome_ingest::auth::digest(&secret).to_vec());
    assert!(
        !stored
            .windows(8)
            .any(|w| secret.as_bytes().windows(8).any(|s| s == w))
    );

    let admin = format!("Bearer {secret}");
    let r = put_lifecycle(&ingest, "SN-AUTH", Some(&admin), body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["state"], "retired");
    let row = db
        .client()
        .await
        .query_one(
            "SELECT actor, target, detail->>'state', detail->>'note' FROM audit_log
             WHERE action = 'appliance.lifecycle'",
            &[],
        )
        .await
        .expect("exactly one audit row");
    assert_eq!(row.get::<_, String>(0), "token:ops-bob");
    assert_eq!(row.get::<_, String>(1), "SN-AUTH");
    assert_eq!(row.get::<_, String>(2), "retired");
    assert_eq!(row.get::<_, String>(3), "RMA 4711");
    // The audit log through the API, newest first, the token's creation in it too.
    let r = get(ingest.ops_addr, "/api/v1/audit").await.expect("audit");
    assert_eq!(r.status, 200, "{}", r.body);
    let items = r.json()["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items[0]["action"], "appliance.lifecycle");
    assert!(items.iter().any(|i| i["action"] == "token.create"
        && i["target"] == "token:ops-bob"
        && i["actor"] == "cli:alice"));

    // Revoked from the command line: refused within the cache time, though it was just used
    // (and so is cached).
    let (ok, _, err) = cli(&db, &["token", "revoke", "--name", "ops-bob"]);
    assert!(ok, "{err}");
    let revoked_at = Instant::now();
    let refused_after = loop {
        let r = put_lifecycle(&ingest, "SN-AUTH", Some(&admin), r#"{"state": "active"}"#).await;
        if r.status == 401 {
            break revoked_at.elapsed();
        }
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            revoked_at.elapsed() < CACHE_TTL + Duration::from_secs(2),
            "a revoked token still works after {:?}",
            revoked_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(refused_after <= CACHE_TTL + Duration::from_secs(2));
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM audit_log WHERE action = 'token.revoke'"
        )
        .await,
        1
    );
    // Refusals are counted by reason.
    assert!(
        ingest
            .metric("phonehome_ops_auth_failures_total{reason=\"missing\"}")
            .await
            >= Some(1.0)
    );
    assert!(
        ingest
            .metric("phonehome_ops_auth_failures_total{reason=\"forbidden\"}")
            .await
            >= Some(1.0)
    );
    assert!(
        ingest
            .metric("phonehome_ops_auth_failures_total{reason=\"unknown\"}")
            .await
            >= Some(1.0)
    );
    assert!(
        ingest
            .metric("phonehome_ops_auth_failures_total{reason=\"revoked\"}")
            .await
            >= Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_takes_basic_auth_and_probes_stay_open() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ingest = IngestProcess::start(&db, &pki).await;
    store_report(
        &Storage::connect(db.url(), 1).expect("storage"),
        &example_report("SN-BASIC"),
    )
    .await;
    for path in ["/", "/appliances", "/appliances/SN-BASIC", "/audit"] {
        let r = request(ingest.ops_addr, "GET", path, &[], b"")
            .await
            .expect("GET");
        assert_eq!(r.status, 401, "{path} without a token");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Basic realm=\"phonehome\", charset=\"UTF-8\""),
            "{path}: a browser asks for the token"
        );
        assert!(
            !r.body.contains("SN-BASIC"),
            "{path} shows nothing of the fleet"
        );
        let auth = basic("anyone", &ingest.read_token);
        let r = request(
            ingest.ops_addr,
            "GET",
            path,
            &[("Authorization", &auth)],
            b"",
        )
        .await
        .expect("GET");
        assert_eq!(r.status, 200, "{path} with Basic: {}", r.body);
    }
    let r = request(
        ingest.ops_addr,
        "GET",
        "/",
        &[("Authorization", &basic("x", "phk_wrong"))],
        b"",
    )
    .await
    .expect("GET");
    assert_eq!(r.status, 401);
    // Prometheus and scripts get a Bearer challenge.
    for path in ["/metrics", "/api/v1/summary"] {
        let r = request(ingest.ops_addr, "GET", path, &[], b"")
            .await
            .expect("GET");
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"phonehome\"")
        );
    }
    // Load balancers probe without credentials.
    for path in ["/healthz", "/readyz"] {
        let r = request(ingest.ops_addr, "GET", path, &[], b"")
            .await
            .expect("GET");
        assert_eq!(r.status, 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_open_by_configuration_writes_still_need_admin() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ingest =
        IngestProcess::start_with(&db, &pki, &[("PHONEHOME_OPS_READS_REQUIRE_TOKEN", "false")])
            .await;
    for path in ["/", "/metrics", "/api/v1/summary"] {
        let r = request(ingest.ops_addr, "GET", path, &[], b"")
            .await
            .expect("GET");
        assert_eq!(r.status, 200, "{path}");
    }
    let r = put_lifecycle(&ingest, "SN-OPEN", None, r#"{"state": "retired"}"#).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        count(&db, "SELECT count(*) FROM appliance_lifecycle").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_quiets_silence_until_its_date_and_retirement_resolves_and_revokes() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let storage = Storage::connect(db.url(), 2).expect("storage");
    let serials = ["SN-LC-OFF", "SN-LC-RET", "SN-LC-CTRL"];
    for s in serials {
        store_report(&storage, &example_report(s)).await;
    }
    // Three days quiet, as a real fleet's clock would make them, and the periodic check.
    db.client()
        .await
        .execute(
            "UPDATE appliances SET last_report_at = now() - interval '3 days'",
            &[],
        )
        .await
        .expect("age");
    assert_eq!(
        storage.evaluate_silence(36).await.expect("silence"),
        Some(3)
    );
    for s in serials {
        assert!(
            firing(&db, s)
                .await
                .contains(&"appliance_silent".to_owned()),
            "{s}"
        );
    }
    // Fresh fleet counts for every view: the test checks them right after each change.
    let ingest = IngestProcess::start_with(
        &db,
        &pki,
        &[("PHONEHOME_DASHBOARD_COUNTS_MAX_AGE_SECS", "0")],
    )
    .await;
    let admin = format!(
        "Bearer {}",
        create_token(db.url(), "ops-carol", Role::Admin).await
    );

    // Expected offline (API): its silence alert resolves and does not come back until the date.
    let until = (Utc::now() + chrono::Duration::days(2)).to_rfc3339();
    let r = put_lifecycle(
        &ingest,
        "SN-LC-OFF",
        Some(&admin),
        &format!(r#"{{"state": "expected_offline", "until": "{until}", "note": "shipped"}}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["resolved_alerts"], 1);
    assert!(
        !firing(&db, "SN-LC-OFF")
            .await
            .contains(&"appliance_silent".to_owned())
    );

    // Retired (command line): every alert resolves, the serial is revoked, history stays.
    let reports_before = count(&db, "SELECT count(*) FROM reports").await;
    let (ok, out, err) = cli(
        &db,
        &[
            "appliance",
            "set-state",
            "--serial",
            "SN-LC-RET",
            "--state",
            "retired",
            "--note",
            "RMA",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("retired"), "{out}");
    assert_eq!(firing(&db, "SN-LC-RET").await, Vec::<String>::new());
    let revoked = db
        .client()
        .await
        .query_one(
            "SELECT revoked_by, revoked_at <= now() FROM revoked_serials WHERE serial = 'SN-LC-RET'",
            &[],
        )
        .await
        .expect("the retired serial is revoked");
    assert_eq!(revoked.get::<_, String>(0), "cli:alice");
    assert!(revoked.get::<_, bool>(1));
    assert_eq!(
        count(&db, "SELECT count(*) FROM reports").await,
        reports_before
    );

    // The next silence checks leave both alone; the control appliance still fires.
    storage.evaluate_silence(36).await.expect("silence");
    assert!(
        !firing(&db, "SN-LC-OFF")
            .await
            .contains(&"appliance_silent".to_owned())
    );
    assert_eq!(firing(&db, "SN-LC-RET").await, Vec::<String>::new());
    assert!(
        firing(&db, "SN-LC-CTRL")
            .await
            .contains(&"appliance_silent".to_owned())
    );

    // Shown to operators: the appliance's page and the list by state.
    let page = get(ingest.ops_addr, "/appliances/SN-LC-RET")
        .await
        .expect("page");
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("data-lifecycle=\"retired\""),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("RMA") && page.body.contains("cli:alice"),
        "audit rows on the page"
    );
    let page = get(ingest.ops_addr, "/appliances/SN-LC-OFF")
        .await
        .expect("page");
    assert!(
        page.body.contains("data-lifecycle=\"expected_offline\""),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("token:ops-carol"),
        "audit rows on the page"
    );
    let list = get(ingest.ops_addr, "/api/v1/appliances?state=retired")
        .await
        .expect("list");
    assert_eq!(list.status, 200, "{}", list.body);
    let listed: Vec<String> = list.json()["appliances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["serial"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(listed, vec!["SN-LC-RET".to_owned()]);
    let audit = get(ingest.ops_addr, "/audit?target=SN-LC-RET")
        .await
        .expect("audit page");
    assert_eq!(audit.status, 200);
    assert!(audit.body.contains("cli:alice") && !audit.body.contains("token:ops-carol"));

    // Counted on the summary (each count links to its list) and in /metrics.
    let summary = get(ingest.ops_addr, "/api/v1/summary")
        .await
        .expect("summary");
    assert_eq!(summary.json()["expected_offline"], 1, "{}", summary.body);
    assert_eq!(summary.json()["retired"], 1);
    let page = get(ingest.ops_addr, "/").await.expect("summary page");
    assert!(
        page.body.contains("href=\"/appliances?state=retired\""),
        "{}",
        page.body
    );
    assert!(page.body.contains("href=\"/audit\""));
    assert_eq!(
        ingest
            .metric("phonehome_appliances_by_lifecycle{state=\"retired\"}")
            .await,
        Some(1.0)
    );

    // The date passes: back to normal, silence fires again.
    db.client()
        .await
        .execute(
            "UPDATE appliance_lifecycle SET until = now() - interval '1 minute'
             WHERE serial = 'SN-LC-OFF'",
            &[],
        )
        .await
        .expect("the date passes");
    storage.evaluate_silence(36).await.expect("silence");
    assert!(
        firing(&db, "SN-LC-OFF")
            .await
            .contains(&"appliance_silent".to_owned())
    );

    // Back to active (API): the row goes, the revocation stays (a refurbished appliance enrols
    // again with a new certificate); each change has its audit row with who.
    let r = put_lifecycle(&ingest, "SN-LC-RET", Some(&admin), r#"{"state": "active"}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["previous_state"], "retired");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM appliance_lifecycle WHERE serial = 'SN-LC-RET'"
        )
        .await,
        0
    );
    assert_eq!(count(&db, "SELECT count(*) FROM revoked_serials").await, 1);
    let actors: Vec<String> = db
        .client()
        .await
        .query(
            "SELECT actor || ' ' || target || ' ' || (detail->>'state') FROM audit_log
             WHERE action = 'appliance.lifecycle' ORDER BY id",
            &[],
        )
        .await
        .expect("audit")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        actors,
        vec![
            "token:ops-carol SN-LC-OFF expected_offline".to_owned(),
            "cli:alice SN-LC-RET retired".to_owned(),
            "token:ops-carol SN-LC-RET active".to_owned(),
        ]
    );
    // A bad request changes nothing.
    let r = put_lifecycle(
        &ingest,
        "SN-LC-CTRL",
        Some(&admin),
        r#"{"state": "retired", "until": "2020-01-01T00:00:00Z"}"#,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = put_lifecycle(&ingest, "SN-LC-CTRL", Some(&admin), r#"{"state": "gone"}"#).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM audit_log WHERE target = 'SN-LC-CTRL'"
        )
        .await,
        0
    );
}
