//! The fleet-wide dashboard as an operator uses it, over HTTP against a real ingest and a seeded
//! fleet: the summary counts what is wrong and every number links to the list it counts; the
//! lists filter, search, sort and page; the drive and versions pages show their evidence; every
//! page carries the security headers; bad parameters are a 400 naming them; and every string an
//! appliance controls is shown as text on every page.

use std::collections::BTreeSet;

use phonehome_ingest::storage::{InsertOutcome, Storage};
use phonehome_tests::TestDb;
use phonehome_tests::bins::IngestProcess;
use phonehome_tests::client::{Response, get};
use phonehome_tests::fleet::{SeededFleet, seed};
use phonehome_tests::pki::TestPki;

async fn page(ingest: &IngestProcess, path: &str) -> Response {
    let r = get(ingest.ops_addr, path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    for (header, expected) in [
        ("content-security-policy", "default-src 'none'"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("cache-control", ""),
    ] {
        assert!(
            r.header(header).is_some_and(|v| v.contains(expected)),
            "GET {path}: {header} should contain {expected:?}; headers {:?}",
            r.headers
        );
    }
    r
}

async fn html(ingest: &IngestProcess, path: &str) -> String {
    let r = page(ingest, path).await;
    assert_eq!(r.status, 200, "GET {path}:\n{}", r.body);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/html")),
        "GET {path}: {:?}",
        r.headers
    );
    r.body
}

async fn json(ingest: &IngestProcess, path: &str) -> serde_json::Value {
    let r = page(ingest, path).await;
    assert_eq!(r.status, 200, "GET {path}:\n{}", r.body);
    r.json()
}

/// The text of the element that has `id` (up to the end of its tag's first closing), so a
/// check looks in the right part of a page.
fn by_id<'a>(html: &'a str, id: &str, close: &str) -> &'a str {
    let start = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element with id {id:?} in:\n{html}"));
    let rest = &html[start..];
    &rest[..rest.find(close).map_or(rest.len(), |e| e + close.len())]
}

/// The number a summary tile shows.
fn tile(html: &str, id: &str) -> i64 {
    let t = by_id(html, id, "</a>");
    let n = t
        .split("class=\"n\">")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .unwrap_or_else(|| panic!("tile {id} has no number: {t}"));
    n.replace(',', "")
        .parse()
        .unwrap_or_else(|_| panic!("tile {id}: {n:?}"))
}

/// Attribute `attr` of the element whose id is `id`.
fn attr_of(html: &str, id: &str, attr: &str) -> Option<String> {
    let at = html.find(&format!("id=\"{id}\""))?;
    let open = html[..at].rfind('<')?;
    let tag = &html[open..at + html[at..].find('>')?];
    let v = tag.split(&format!(" {attr}=\"")).nth(1)?;
    Some(v[..v.find('"')?].replace("&amp;", "&"))
}

/// The link of a summary tile.
fn tile_link(html: &str, id: &str) -> String {
    attr_of(html, id, "href").unwrap_or_else(|| panic!("tile {id} has no link"))
}

/// The serials in a page's appliance table, in order.
fn serials(html: &str, table: &str) -> Vec<String> {
    let Some(start) = html.find(&format!("id=\"{table}\"")) else {
        return Vec::new();
    };
    let t = &html[start..];
    let t = &t[..t.find("</table>").unwrap_or(t.len())];
    t.split("<td class=\"serial\"><a href=\"")
        .skip(1)
        .filter_map(|r| r.split('>').nth(1)?.split('<').next())
        .map(|s| {
            s.replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&amp;", "&")
        })
        .collect()
}

fn next_link(html: &str) -> Option<String> {
    attr_of(html, "next", "href")
}

async fn start(db: &TestDb, pki: &TestPki) -> (IngestProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("ingest.toml");
    std::fs::write(
        &config,
        "[alerts.app_outdated]\nminimum_version = \"4.3.0\"\n",
    )
    .expect("write config");
    let config = config.to_string_lossy().into_owned();
    let ingest = IngestProcess::start_with(
        db,
        pki,
        &[
            ("PHONEHOME_CONFIG", config.as_str()),
            ("PHONEHOME_DASHBOARD_COUNTS_MAX_AGE_SECS", "0"),
        ],
    )
    .await;
    // The silence check runs when the ingest starts; wait for its alert.
    for _ in 0..100 {
        let firing = get(ingest.ops_addr, "/api/v1/alerts?rule=appliance_silent")
            .await
            .expect("alerts");
        if firing.json()["alerts"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
        {
            return (ingest, dir);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no appliance_silent alert within 10 s:\n{}", ingest.log());
}

async fn seeded() -> (TestDb, TestPki, SeededFleet) {
    let db = TestDb::new().await;
    // The rules as the ingest under test will judge: app 4.3.0 is the minimum.
    let mut alerts = phonehome_ingest::alerts::AlertsConfig::default();
    alerts.app_outdated.minimum_version = Some("4.3.0".into());
    let settings = phonehome_ingest::storage::StorageSettings {
        pool_size: 4,
        alerts: std::sync::Arc::new(alerts),
        ..Default::default()
    };
    let storage = Storage::connect_with(db.url(), settings).expect("storage");
    let fleet = seed(&db, &storage, "SN-FLEET", 8).await;
    (db, TestPki::new(), fleet)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_summary_counts_what_is_wrong_and_links_the_lists_it_counts() {
    let (db, pki, fleet) = seeded().await;
    let (ingest, _dir) = start(&db, &pki).await;

    let summary = html(&ingest, "/").await;
    assert_eq!(tile(&summary, "count-total"), 12);
    assert_eq!(tile(&summary, "count-critical"), 1, "the failing drive");
    assert_eq!(tile(&summary, "count-silent"), 1);
    assert_eq!(tile(&summary, "drives-failing"), 1);
    assert_eq!(tile(&summary, "drives-degrading"), 1);
    assert_eq!(tile(&summary, "below-minimum"), 1, "app 4.1.0 < 4.3.0");
    assert_eq!(tile(&summary, "alerts-critical"), 1);
    // Warnings: silent, outdated, degrading.
    assert_eq!(tile(&summary, "alerts-warning"), 3);
    assert_eq!(
        tile(&summary, "count-ok")
            + tile(&summary, "count-info")
            + tile(&summary, "count-warning")
            + tile(&summary, "count-critical"),
        12,
        "every appliance has one health"
    );
    // The most severe first in "needs attention", and the silent one is there.
    assert_eq!(
        serials(&summary, "attention-alerts").first(),
        Some(&fleet.critical)
    );
    assert_eq!(serials(&summary, "silent"), vec![fleet.silent.clone()]);

    // Every count links to the list it counts.
    for (id, expected) in [
        ("count-critical", vec![fleet.critical.clone()]),
        ("count-silent", vec![fleet.silent.clone()]),
        ("below-minimum", vec![fleet.outdated.clone()]),
    ] {
        let link = tile_link(&summary, id);
        let list = html(&ingest, &link).await;
        assert_eq!(serials(&list, "appliances"), expected, "{id} → {link}");
    }
    let total = html(&ingest, &tile_link(&summary, "count-total")).await;
    assert!(serials(&total, "appliances").len() >= 12 || next_link(&total).is_some());
    for (id, rule) in [
        ("drives-failing", "disk_failing"),
        ("drives-degrading", "disk_degrading"),
    ] {
        let link = tile_link(&summary, id);
        let alerts = json(&ingest, &format!("/api/v1{link}")).await;
        let rules: BTreeSet<&str> = alerts["alerts"]
            .as_array()
            .expect("alerts")
            .iter()
            .filter_map(|a| a["rule"].as_str())
            .collect();
        assert_eq!(rules, BTreeSet::from([rule]), "{id} → {link}");
    }

    // "Firing by rule" links each count to those alerts.
    let by_rule = by_id(&summary, "by-rule", "</table>");
    assert!(
        by_rule.contains("href=\"/alerts?rule=disk_failing&amp;severity=critical\""),
        "{by_rule}"
    );

    // The JSON says the same.
    let s = json(&ingest, "/api/v1/summary").await;
    assert_eq!(s["appliances"], 12);
    assert_eq!(s["silent"], 1);
    assert_eq!(s["failing_drives"], 1);
    assert_eq!(s["attention"][0]["serial"], fleet.critical.as_str());
    assert_eq!(s["silent_appliances"][0]["serial"], fleet.silent.as_str());

    // /metrics counts the fleet without a series per appliance.
    let metrics = get(ingest.ops_addr, "/metrics").await.expect("metrics");
    assert!(!metrics.body.contains("serial=\""), "{}", metrics.body);
    assert_eq!(
        ingest
            .metric("phonehome_appliances_by_health{health=\"critical\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(ingest.metric("phonehome_disks_failing").await, Some(1.0));
    // The drives by verdict: the one failing drive is the one critical.
    assert_eq!(
        ingest
            .metric("phonehome_drives{verdict=\"critical\"}")
            .await,
        Some(1.0)
    );
    assert!(
        ingest
            .metric("phonehome_drives{verdict=\"ok\"}")
            .await
            .is_some_and(|n| n >= 1.0),
        "{}",
        metrics.body
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lists_filter_search_sort_and_page_and_the_url_carries_it() {
    let (db, pki, fleet) = seeded().await;
    let (ingest, _dir) = start(&db, &pki).await;

    // Pages of five, following "Next page", show every appliance once, in serial order.
    let mut seen = Vec::new();
    let mut path = Some("/appliances?limit=5".to_owned());
    while let Some(p) = path {
        let body = html(&ingest, &p).await;
        let rows = serials(&body, "appliances");
        assert!(rows.len() <= 5, "{p}: {rows:?}");
        seen.extend(rows);
        path = next_link(&body);
        assert!(seen.len() <= 12, "paging does not end: {seen:?}");
    }
    assert_eq!(seen, fleet.all, "every appliance once, by serial");

    // The same through the API, for each order.
    for sort in ["serial", "last_report", "oldest", "health"] {
        let mut got = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let path = match &after {
                Some(a) => format!(
                    "/api/v1/appliances?sort={sort}&limit=4&after={}",
                    phonehome_dashboard::encode(a)
                ),
                None => format!("/api/v1/appliances?sort={sort}&limit=4"),
            };
            let page = json(&ingest, &path).await;
            for a in page["appliances"].as_array().expect("appliances") {
                got.push(a["serial"].as_str().expect("serial").to_owned());
            }
            match page["next"].as_str() {
                Some(n) => after = Some(n.to_owned()),
                None => break,
            }
            assert!(got.len() <= 12, "{sort}: {got:?}");
        }
        let unique: BTreeSet<&String> = got.iter().collect();
        assert_eq!(unique.len(), 12, "{sort}: every appliance once: {got:?}");
        match sort {
            "health" => assert_eq!(got[0], fleet.critical, "worst first"),
            "oldest" => assert_eq!(got[0], fleet.silent, "silent first"),
            _ => {}
        }
    }

    // Search: a serial prefix in any case, a hostname prefix.
    let found = html(&ingest, "/appliances?q=sn-fleet-01").await;
    assert_eq!(
        serials(&found, "appliances"),
        vec!["SN-FLEET-010", "SN-FLEET-011"]
    );
    let found = html(&ingest, "/appliances?q=HOST-003").await;
    assert_eq!(serials(&found, "appliances"), vec![fleet.degrading.clone()]);
    let none = html(&ingest, "/appliances?q=%25").await;
    assert!(
        serials(&none, "appliances").is_empty(),
        "% is matched literally"
    );

    // Filters, as a shared link: the same rows every time, on the page and in the API.
    for (query, expected) in [
        ("health=critical", vec![fleet.critical.clone()]),
        ("silent=true", vec![fleet.silent.clone()]),
        ("rule=app_outdated", vec![fleet.outdated.clone()]),
        ("app_version=4.1.0", vec![fleet.outdated.clone()]),
        ("rule=disk_degrading", vec![fleet.degrading.clone()]),
        ("drive_model=no-such-model", vec![]),
        ("health=critical&silent=true", vec![]),
    ] {
        let body = html(&ingest, &format!("/appliances?{query}")).await;
        assert_eq!(serials(&body, "appliances"), expected, "?{query}");
        let api = json(&ingest, &format!("/api/v1/appliances?{query}")).await;
        let api: Vec<&str> = api["appliances"]
            .as_array()
            .expect("appliances")
            .iter()
            .filter_map(|a| a["serial"].as_str())
            .collect();
        assert_eq!(api, expected, "/api/v1/appliances?{query}");
    }
    let all_models = html(
        &ingest,
        "/appliances?drive_model=ST2000DM006-2DM164&limit=50",
    )
    .await;
    assert_eq!(serials(&all_models, "appliances").len(), 12);
    // A row shows the worst firing severity, not only the app's own status.
    let row = html(&ingest, "/appliances?health=critical").await;
    let table = by_id(&row, "appliances", "</table>");
    assert!(table.contains("badge critical"), "{table}");

    // Alerts: the most severe first, then the longest firing.
    let alerts = json(&ingest, "/api/v1/alerts").await;
    let severities: Vec<&str> = alerts["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .filter_map(|a| a["severity"].as_str())
        .collect();
    assert_eq!(severities.first(), Some(&"critical"), "{alerts}");
    let order = |s: &str| ["critical", "warning", "info"].iter().position(|x| *x == s);
    assert!(
        severities.windows(2).all(|w| order(w[0]) <= order(w[1])),
        "{severities:?}"
    );
    let page_html = html(&ingest, "/alerts").await;
    assert_eq!(
        serials(&page_html, "alerts").first(),
        Some(&fleet.critical),
        "the page in the same order"
    );
    // Every alert once through `state=all`'s pages (firing, then resolved), one at a time.
    let everything = json(&ingest, "/api/v1/alerts?state=all&limit=500").await;
    let total = everything["alerts"].as_array().map_or(0, Vec::len);
    let mut ids = BTreeSet::new();
    let mut path = "/api/v1/alerts?state=all&limit=1".to_owned();
    loop {
        let page = json(&ingest, &path).await;
        for a in page["alerts"].as_array().expect("alerts") {
            assert!(ids.insert(a["id"].as_i64().expect("id")), "{a} twice");
        }
        match page["next"].as_str() {
            Some(n) => {
                path = format!(
                    "/api/v1/alerts?state=all&limit=1&after={}",
                    phonehome_dashboard::encode(n)
                )
            }
            None => break,
        }
        assert!(ids.len() <= total, "paging does not end");
    }
    assert_eq!(ids.len(), total);
    let by_serial = html(&ingest, &format!("/alerts?serial={}", fleet.degrading)).await;
    assert!(
        serials(&by_serial, "alerts")
            .iter()
            .all(|s| *s == fleet.degrading)
    );

    // Drives: the failing one first, and its page has the evidence.
    let drives = html(&ingest, "/drives").await;
    let first = by_id(&drives, "drives", "</tr>\n").to_owned();
    let drives_table = by_id(&drives, "drives", "</table>");
    let first_row = drives_table
        .split("<tr class=\"drive\">")
        .nth(1)
        .unwrap_or(&first);
    assert!(
        first_row.contains("badge critical") && first_row.contains(&fleet.failing_drive),
        "the failing drive first:\n{first_row}"
    );
    // Pages of five drives, following `next`: every drive once, worst first.
    let mut keys = Vec::new();
    let mut healths = Vec::new();
    let mut path = "/api/v1/drives?limit=5".to_owned();
    loop {
        let page = json(&ingest, &path).await;
        for d in page["drives"].as_array().expect("drives") {
            keys.push(d["key"].as_str().expect("key").to_owned());
            healths.push(d["health"].as_str().expect("health").to_owned());
        }
        match page["next"].as_str() {
            Some(n) => {
                path = format!(
                    "/api/v1/drives?limit=5&after={}",
                    phonehome_dashboard::encode(n)
                )
            }
            None => break,
        }
        assert!(keys.len() <= 24, "paging does not end: {keys:?}");
    }
    assert_eq!(
        keys.len(),
        24,
        "two drives with a key in each of 12 appliances"
    );
    assert_eq!(keys.iter().collect::<BTreeSet<_>>().len(), 24, "{keys:?}");
    assert_eq!(keys[0], fleet.failing_drive);
    let rank = |h: &str| {
        ["critical", "warning", "info", "ok"]
            .iter()
            .position(|x| *x == h)
    };
    assert!(
        healths.windows(2).all(|w| rank(&w[0]) <= rank(&w[1])),
        "{healths:?}"
    );
    let nvme = json(&ingest, "/api/v1/drives?protocol=NVMe").await;
    assert_eq!(nvme["drives"].as_array().map(Vec::len), Some(12));
    let drive_path = phonehome_dashboard::drive_path(&fleet.failing_drive);
    let drive = html(&ingest, &format!("{drive_path}?days=7")).await;
    let attributes = by_id(&drive, "attributes", "</table>");
    assert!(
        attributes.matches("<tr class=\"attribute").count() == 4
            && attributes.contains("Reallocated_Sector_Ct"),
        "the SMART attribute table:\n{attributes}"
    );
    assert!(
        drive.contains("data-points=\"3\""),
        "a temperature chart with the three reports' points"
    );
    assert!(by_id(&drive, "placements", "</table>").contains(&fleet.critical));
    assert!(by_id(&drive, "health", "</p>").contains("disk_failing"));
    // The ingest's verdict and its reasons, as the alert has them, on the page and in the API.
    assert!(
        by_id(&drive, "verdict", "</p>").contains("data-verdict=\"critical\""),
        "{drive}"
    );
    assert!(
        by_id(&drive, "reasons", "</ul>").contains("overall health self-assessment failed"),
        "{drive}"
    );
    let api = json(&ingest, &format!("/api/v1{drive_path}")).await;
    assert_eq!(api["smart"]["verdict"], "critical", "{api}");
    assert_eq!(
        api["smart"]["reasons"][0],
        serde_json::json!(["critical", "overall health self-assessment failed"]),
        "{api}"
    );

    // Versions: who runs what, and who is below the minimum.
    let versions = html(&ingest, "/versions").await;
    let app = by_id(&versions, "versions-app", "</table>");
    assert!(app.contains("4.3.0") && app.contains("4.1.0"), "{app}");
    assert!(app.contains("below minimum"), "{app}");
    assert!(by_id(&versions, "below-minimum", "</p>").contains("4.1.0"));
    let v = json(&ingest, "/api/v1/versions").await;
    assert_eq!(v["minimum_app_version"], "4.3.0");

    // The appliance page has its charts, one point per report.
    let appliance = html(
        &ingest,
        &format!(
            "{}?days=7",
            phonehome_dashboard::appliance_path(&fleet.critical)
        ),
    )
    .await;
    for chart in ["chart-temperature", "chart-filesystems", "chart-nics"] {
        assert!(appliance.contains(&format!("id=\"{chart}\"")), "{chart}");
    }
    assert!(appliance.contains("data-points=\"3\""));
    assert!(
        appliance.contains(&drive_path),
        "the drive links to its page"
    );

    // A search pages like any list: one row a page, every match once.
    let mut got = Vec::new();
    let mut path = Some("/api/v1/appliances?q=SN-fleet-0&limit=1".to_owned());
    while let Some(p) = path {
        let page = json(&ingest, &p).await;
        for a in page["appliances"].as_array().expect("appliances") {
            got.push(a["serial"].as_str().expect("serial").to_owned());
        }
        path = page["next"].as_str().map(|n| {
            format!(
                "/api/v1/appliances?q=SN-fleet-0&limit=1&after={}",
                phonehome_dashboard::encode(n)
            )
        });
        assert!(got.len() <= 12, "paging a search does not end: {got:?}");
    }
    let expected: Vec<String> = fleet
        .all
        .iter()
        .filter(|s| s.starts_with("SN-FLEET-0"))
        .cloned()
        .collect();
    assert_eq!(got, expected);

    // A renamed appliance is found by its new hostname, no longer by the old one.
    let storage = Storage::connect(db.url(), 1).expect("storage");
    let mut renamed = phonehome_tests::fleet::report_for(&fleet.critical, 90);
    renamed.identity.hostname = Some("Renamed-Box".into());
    assert_eq!(
        phonehome_tests::store_report(&storage, &renamed).await,
        InsertOutcome::Stored
    );
    let found = html(&ingest, "/appliances?q=renamed-b").await;
    assert_eq!(serials(&found, "appliances"), vec![fleet.critical.clone()]);
    let old_name = json(&ingest, "/api/v1/appliances?q=host-000").await;
    assert!(
        old_name["appliances"]
            .as_array()
            .expect("appliances")
            .iter()
            .all(|a| a["serial"] != fleet.critical.as_str()),
        "{old_name}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_parameters_are_refused_naming_them_and_unknown_paths_are_404_pages() {
    let (db, pki, _fleet) = seeded().await;
    let (ingest, _dir) = start(&db, &pki).await;
    for (path, parameter) in [
        ("/appliances?health=sick", "health"),
        ("/appliances?sort=size", "sort"),
        ("/appliances?limit=0", "limit"),
        ("/appliances?colour=red", "colour"),
        ("/appliances?sort=health&after=nonsense", "after"),
        ("/alerts?state=open", "state"),
        ("/alerts?after=1", "after"),
        ("/alerts?rule=disk_on_fire", "rule"),
        ("/drives?protocol=USB", "protocol"),
        ("/drives?health=fine", "health"),
        ("/versions?days=0", "days"),
        ("/appliances/SN-FLEET-000?days=999", "days"),
        ("/drives/sn:x?days=x", "days"),
        ("/?q=x", "q"),
    ] {
        let r = page(&ingest, path).await;
        assert_eq!(r.status, 400, "GET {path}: {}", r.body);
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("text/html")),
            "{path}"
        );
        assert!(
            r.body.contains(&format!("{parameter}:")),
            "GET {path} names {parameter}:\n{}",
            r.body
        );
        if !path.starts_with("/appliances/") && !path.starts_with("/drives/sn") {
            let api = page(
                &ingest,
                &format!("/api/v1{}", path.replace("/?", "/summary?")),
            )
            .await;
            assert_eq!(api.status, 400, "/api/v1{path}: {}", api.body);
            assert_eq!(api.json()["field"], parameter, "/api/v1{path}");
        }
    }
    for path in [
        "/nothing-here",
        "/appliances/SN-NOBODY",
        "/drives/wwn:0xdead",
    ] {
        let r = page(&ingest, path).await;
        assert_eq!(r.status, 404, "{path}");
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("text/html")),
            "{path}: an HTML 404 page"
        );
    }
    let api = page(&ingest, "/api/v1/drives/wwn:0xdead").await;
    assert_eq!(api.status, 404);
    assert_eq!(api.json()["error"], "not_found");

    let doc = json(&ingest, "/api/v1/openapi.json").await;
    assert_eq!(doc["openapi"], "3.0.3");
    let css = page(&ingest, "/assets/style.css").await;
    assert_eq!(css.status, 200);
    assert!(
        css.header("content-type")
            .is_some_and(|c| c.starts_with("text/css"))
    );
}

/// Markup and script in every string an appliance controls.
const PAYLOAD: &str = "<script>alert(1)</script>";
const ATTRIBUTE: &str = "\"><img src=x onerror=alert(2)>";

#[tokio::test(flavor = "multi_thread")]
async fn appliance_controlled_text_is_shown_as_text_on_every_page() {
    let db = TestDb::new().await;
    let storage = Storage::connect(db.url(), 4).expect("storage");
    let serial = format!("{PAYLOAD}'&");
    let mut r = phonehome_tests::fleet::report_for(&serial, 7);
    r.identity.hostname = Some(format!("{PAYLOAD}{ATTRIBUTE}"));
    r.app.version = Some(format!("{ATTRIBUTE}{PAYLOAD}"));
    if let Some(os) = &mut r.system.os {
        os.pretty_name = Some(PAYLOAD.into());
    }
    r.system.kernel = Some(ATTRIBUTE.into());
    for d in &mut r.smart.devices {
        d.model = Some(format!("{PAYLOAD}{ATTRIBUTE}"));
        d.firmware = Some(PAYLOAD.into());
        if let Some(s) = &mut d.serial {
            *s = format!("{s}{ATTRIBUTE}");
        }
        d.wwn = None;
        for a in &mut d.attributes {
            a.name = PAYLOAD.into();
            a.raw_string = Some(ATTRIBUTE.into());
        }
    }
    r.smart.devices[0].health_passed = Some(false);
    r.filesystems.filesystems[0].mount_point = format!("/{PAYLOAD}");
    r.filesystems.filesystems[0].bytes_available = 1;
    r.nics.nics[0].name = ATTRIBUTE.into();
    assert_eq!(
        phonehome_tests::store_report(&storage, &r).await,
        InsertOutcome::Stored
    );
    let key = phonehome_ingest::storage::rows::drive_key(&r.smart.devices[0]).expect("key");
    let pki = TestPki::new();
    let ingest = IngestProcess::start(&db, &pki).await;
    let enc = phonehome_dashboard::encode;
    for path in [
        "/".to_owned(),
        "/appliances".to_owned(),
        format!("/appliances?q={}", enc("<scr")),
        format!(
            "/appliances?app_version={}",
            enc(r.app.version.as_deref().unwrap_or(""))
        ),
        "/appliances?sort=health".to_owned(),
        "/alerts".to_owned(),
        "/alerts?state=all".to_owned(),
        format!("/alerts?serial={}", enc(&serial)),
        "/drives".to_owned(),
        phonehome_dashboard::drive_path(&key),
        "/versions".to_owned(),
        phonehome_dashboard::appliance_path(&serial),
        format!("/appliances?q={}", enc(PAYLOAD)),
    ] {
        let body = html(&ingest, &path).await;
        for raw in ["<script", "<img"] {
            let at = body.find(raw);
            assert!(
                at.is_none(),
                "{path}: {raw:?} is markup, not text, at {at:?}:\n{body}"
            );
        }
        assert!(
            body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{path}: the payload is shown as text"
        );
    }
}
