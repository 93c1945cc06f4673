//! Extreme values through the real HTTP endpoint (issue 13): reports built from the contract's
//! example with numbers at the edges (0, i64::MAX, i64::MAX + 1, u64::MAX, u64::MAX + 1,
//! negative), lists at and past their bounds, long and strange strings, and times far in the
//! future and past, posted to a debug build of the ingest (where overflow panics). Every answer
//! must be a 2xx that stores the report exactly once, a 4xx that stores nothing, or a 503; never
//! a 500; the same appliances keep reporting so the rules that judge by change meet extreme
//! previous values too; and a normal report is taken at the end.
//!
//! The cases come from a fixed seed, so a failure is reproducible: its seed and the mutations
//! applied are in the failure message. `PHONEHOME_EXTREME_CASES` sets how many (default 160).

use chrono::{Duration, Utc};
use phonehome_tests::bins::IngestProcess;
use phonehome_tests::client::{TlsClient, get};
use phonehome_tests::pki::TestPki;
use phonehome_tests::{TestDb, example_report};
use serde_json::{Value, json};

/// splitmix64: a reproducible stream of choices without a random crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Numbers at the edges, as JSON (some beyond what the field's type holds).
fn extreme_number(rng: &mut Rng) -> Value {
    let big: Value = serde_json::from_str("18446744073709551616").expect("u64::MAX + 1");
    rng.pick(&[
        json!(0),
        json!(1),
        json!(-1),
        json!(255),
        json!(65_535),
        json!(i32::MAX),
        json!(i64::MAX),
        json!((i64::MAX as u64) + 1),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(-300),
        json!(100_000),
        json!(1.5),
        big,
    ])
    .clone()
}

/// The numeric fields a report carries, by JSON pointer (the example's layout).
const NUMBERS: &[&str] = &[
    "/smart/devices/0/power_on_hours",
    "/smart/devices/0/power_cycles",
    "/smart/devices/0/temperature_celsius",
    "/smart/devices/0/reallocated_sectors",
    "/smart/devices/0/pending_sectors",
    "/smart/devices/0/uncorrectable_errors",
    "/smart/devices/0/crc_errors",
    "/smart/devices/0/capacity_bytes",
    "/smart/devices/0/attributes/0/raw",
    "/smart/devices/0/attributes/0/value",
    "/smart/devices/0/attributes/1/raw",
    "/smart/devices/1/temperature_celsius",
    "/smart/devices/1/nvme/media_errors",
    "/smart/devices/1/nvme/percentage_used",
    "/smart/devices/1/nvme/available_spare_percent",
    "/smart/devices/1/nvme/critical_warning",
    "/smart/devices/1/nvme/data_units_written",
    "/smart/devices/1/nvme/temperature_sensors_celsius/0",
    "/filesystems/filesystems/0/bytes_total",
    "/filesystems/filesystems/0/bytes_used",
    "/filesystems/filesystems/0/bytes_available",
    "/filesystems/filesystems/0/inodes_total",
    "/filesystems/filesystems/0/inodes_used",
    "/nics/nics/0/counters/rx_errors",
    "/nics/nics/0/counters/tx_dropped",
    "/nics/nics/0/counters/rx_bytes",
    "/nics/nics/0/speed_mbps",
    "/system/uptime_seconds",
    "/collector/dropped_reports",
    "/schema_version",
];

/// Strings the appliance controls, by JSON pointer.
const STRINGS: &[&str] = &[
    "/identity/hostname",
    "/app/version",
    "/system/kernel",
    "/system/os/pretty_name",
    "/smart/devices/0/model",
    "/smart/devices/0/serial",
    "/smart/devices/0/name",
    "/filesystems/filesystems/0/mount_point",
    "/nics/nics/0/name",
    "/collector/version",
];

fn set(report: &mut Value, pointer: &str, value: Value) {
    if let Some(slot) = report.pointer_mut(pointer) {
        *slot = value;
    } else if let Some((parent, key)) = pointer.rsplit_once('/') {
        if let Some(Value::Object(map)) = report.pointer_mut(parent) {
            map.insert(key.to_owned(), value);
        }
    }
}

/// Applies one random mutation and says what it was.
fn mutate(rng: &mut Rng, report: &mut Value) -> String {
    match rng.below(6) {
        0 | 1 => {
            let path = *rng.pick(NUMBERS);
            let v = extreme_number(rng);
            let said = format!("{path} = {v}");
            set(report, path, v);
            said
        }
        2 => {
            let path = *rng.pick(STRINGS);
            let v = rng
                .pick(&[
                    String::new(),
                    "x".repeat(256),
                    "x".repeat(257),
                    "x".repeat(70_000),
                    "<script>alert(1)</script>".to_owned(),
                    "'; DROP TABLE reports; --".to_owned(),
                    "\u{202e}\u{feff}ünïcödé 💾".to_owned(),
                    "tab\tnew\nline".to_owned(),
                    "nul\u{0}byte".to_owned(),
                ])
                .clone();
            let said = format!("{path} = {:?}", v.chars().take(40).collect::<String>());
            set(report, path, json!(v));
            said
        }
        3 => {
            let (path, n) = (
                *rng.pick(&["/filesystems/filesystems", "/smart/devices", "/nics/nics"]),
                *rng.pick(&[0usize, 1, 100, 512, 513]),
            );
            if let Some(Value::Array(items)) = report.pointer_mut(path) {
                if let Some(first) = items.first().cloned() {
                    *items = (0..n)
                        .map(|i| {
                            let mut item = first.clone();
                            // Distinct names, so they are distinct items.
                            for key in ["mount_point", "name"] {
                                if let Some(Value::String(s)) = item.get_mut(key) {
                                    *s = format!("{s}-{i}");
                                }
                            }
                            if let Some(Value::String(s)) = item.get_mut("serial") {
                                *s = format!("{s}-{i}");
                            }
                            if item.get("wwn").is_some() {
                                item["wwn"] = json!(format!("0x5000c500{i:08x}"));
                            }
                            item
                        })
                        .collect();
                }
            }
            format!("{path} has {n} items")
        }
        4 => {
            let now = Utc::now();
            let at = *rng.pick(&[
                now + Duration::hours(23),
                now + Duration::hours(25),
                now - Duration::days(399),
                now - Duration::days(401),
                now - Duration::days(3),
            ]);
            set(report, "/collected_at", json!(at.to_rfc3339()));
            format!("collected_at = {at}")
        }
        _ => {
            let v = rng
                .pick(&[
                    json!(null),
                    json!("degraded"),
                    json!("unhealthy"),
                    json!("exploded"),
                    json!([1, 2, 3]),
                ])
                .clone();
            let said = format!("/app/status = {v}");
            set(report, "/app/status", v);
            said
        }
    }
}

async fn scalar(db: &TestDb, sql: &str, id: &str) -> i64 {
    db.client()
        .await
        .query_one(sql, &[&id])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn extreme_reports_get_a_2xx_stored_once_or_a_4xx_storing_nothing_never_a_500() {
    let db = TestDb::new().await;
    let pki = TestPki::new();
    let ingest = IngestProcess::start(&db, &pki).await;
    let cases: u64 = std::env::var("PHONEHOME_EXTREME_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(160);
    // A few appliances that keep reporting: the rules judged by change meet extreme previous
    // values as well as extreme current ones.
    let serials = ["EXT-0", "EXT-1", "EXT-2", "EXT-3"];
    let clients: Vec<TlsClient> = serials
        .iter()
        .map(|s| TlsClient::new(&pki.ca_cert(), Some(&pki.appliance(s))))
        .collect();
    let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
    for case in 0..cases {
        let seed = 0x5eed_0000 + case;
        let mut rng = Rng(seed);
        let which = rng.below(serials.len());
        let mut report = serde_json::to_value(example_report(serials[which])).expect("json");
        let mutations: Vec<String> = (0..1 + rng.below(4))
            .map(|_| mutate(&mut rng, &mut report))
            .collect();
        let id = report["report_id"].as_str().unwrap_or_default().to_owned();
        let body = serde_json::to_vec(&report).expect("json");
        let before = db.count("reports").await;
        let answer = clients[which]
            .post(
                ingest.report_addr,
                "/v1/reports",
                &[("Content-Type", "application/json")],
                &body,
            )
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "case {case} (seed {seed:#x}: {mutations:?}): no answer: {e}\n{}",
                    ingest.log()
                )
            });
        let status = answer.status;
        *statuses.entry(status).or_default() += 1;
        let what = format!(
            "case {case} (seed {seed:#x}, {}: {mutations:?}) got {status}: {}",
            serials[which], answer.body
        );
        assert!(
            (200..300).contains(&status) || (400..500).contains(&status) || status == 503,
            "{what}\n{}",
            ingest.log()
        );
        let copies = scalar(
            &db,
            "SELECT count(*) FROM reports WHERE report_id = $1::text::uuid",
            &id,
        )
        .await;
        if (200..300).contains(&status) {
            assert_eq!(copies, 1, "{what}: stored {copies} times");
        } else {
            assert_eq!(
                db.count("reports").await,
                before,
                "{what}: a refusal stored something"
            );
        }
    }
    // Both outcomes were exercised, or the cases prove little.
    assert!(statuses.keys().any(|s| *s == 202), "{statuses:?}");
    assert!(statuses.keys().any(|s| *s == 422), "{statuses:?}");

    let healthy = get(ingest.ops_addr, "/healthz").await.expect("healthz");
    assert_eq!(healthy.status, 200);
    let normal = serde_json::to_vec(&example_report("EXT-0")).expect("json");
    let answer = clients[0]
        .post(
            ingest.report_addr,
            "/v1/reports",
            &[("Content-Type", "application/json")],
            &normal,
        )
        .await
        .expect("answered");
    assert_eq!(answer.status, 202, "{}", answer.body);
    // Nothing panicked on the way.
    assert!(!ingest.log().contains("panicked"), "{}", ingest.log());
    eprintln!("statuses over {cases} cases: {statuses:?}");
}
