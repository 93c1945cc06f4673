//! The dashboard in a real browser (headless Chromium through chromedriver), walked as an
//! operator would: the fleet page, a click on an appliance, its page; with nothing in the
//! browser console and nothing loaded from anywhere but the operations listener. And a check
//! that the harness would notice if there were.

use std::time::{Duration, Instant};

use phonehome_ingest::storage::{InsertOutcome, Storage};
use phonehome_tests::TestDb;
use phonehome_tests::bins::IngestProcess;
use phonehome_tests::browser::{Browser, WINDOW, screenshot_dir};
use phonehome_tests::fleet::seed;
use phonehome_tests::pki::TestPki;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Waits until the browser's URL is `url` (a click's navigation may still be under way).
async fn wait_for_url(browser: &Browser, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = browser.current_url().await.expect("current URL");
        if now == url {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "expected to be at {url}, at {now}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fails unless every URL the page loaded is on `origin`: the dashboard must work on an
/// operations network with no way out (no CDN, no web fonts).
async fn assert_all_from(browser: &Browser, origin: &str) {
    let urls = browser.resource_urls().await.expect("resource URLs");
    assert!(!urls.is_empty(), "the page loaded nothing at all?");
    let outside: Vec<&String> = urls.iter().filter(|u| !u.starts_with(origin)).collect();
    assert!(
        outside.is_empty(),
        "loaded from outside {origin}: {outside:?} (all: {urls:?})"
    );
}

/// Fails on anything the page wrote to the console and on anything loaded from elsewhere.
async fn clean(browser: &Browser, origin: &str, page: &str) {
    assert_all_from(browser, origin).await;
    let errors = browser.console_errors().await.expect("console errors");
    assert!(errors.is_empty(), "console errors on {page}: {errors:?}");
}

async fn shot(browser: &Browser, name: &str) {
    let path = screenshot_dir().join("browser").join(format!("{name}.png"));
    browser
        .screenshot(&path)
        .await
        .unwrap_or_else(|e| panic!("screenshot {name}: {e}"));
}

/// The serials in the table with `id`, as the browser shows them.
async fn serials(browser: &Browser, table: &str) -> Vec<String> {
    let mut out = Vec::new();
    for cell in browser
        .find_all(&format!("#{table} td.serial"))
        .await
        .expect("serial cells")
    {
        out.push(cell.text().await.expect("cell text"));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_walks_from_the_summary_to_a_failing_drives_chart() {
    // The walk's future is large (every page's state): on the heap, not the test thread's
    // stack, which it overflowed in debug builds once the sign-in step was added.
    Box::pin(walk_from_the_summary_to_a_failing_drives_chart()).await;
}

async fn walk_from_the_summary_to_a_failing_drives_chart() {
    let db = TestDb::new().await;
    let storage = Storage::connect(db.url(), 4).expect("storage");
    let fleet = seed(&db, &storage, "SN-WALK", 6).await;
    // A serial that must survive percent-encoding in a real browser's URL bar.
    let odd = phonehome_tests::fleet::report_for("SN 7/B", 99);
    assert_eq!(
        phonehome_tests::store_report(&storage, &odd).await,
        InsertOutcome::Stored
    );
    let pki = TestPki::new();
    let ingest = IngestProcess::start_with(
        &db,
        &pki,
        &[("PHONEHOME_DASHBOARD_COUNTS_MAX_AGE_SECS", "0")],
    )
    .await;
    let origin = format!("http://{}/", ingest.ops_addr);
    let browser = Browser::start().await;
    // Reads need a token (the default): the operator signs in once with HTTP Basic, the token
    // as password, and the browser sends it with every page after.
    browser
        .goto(&format!(
            "http://operator:{}@{}/",
            ingest.read_token, ingest.ops_addr
        ))
        .await
        .expect("sign in");

    // The summary: the silent appliance is there without a click.
    browser.goto(&origin).await.expect("open the summary");
    shot(&browser, "summary").await;
    clean(&browser, &origin, "the summary").await;
    assert_eq!(
        serials(&browser, "silent").await,
        vec![fleet.silent.clone()]
    );

    // Click the critical count: the list holds the appliance with the failing drive.
    let critical = browser
        .find("#count-critical")
        .await
        .expect("critical tile");
    assert_eq!(
        critical
            .find(".n")
            .await
            .expect("number")
            .text()
            .await
            .expect("text"),
        "1"
    );
    critical.click().await.expect("click critical");
    browser
        .wait_for("#appliances", Duration::from_secs(10))
        .await
        .expect("the appliance list");
    shot(&browser, "appliances-critical").await;
    clean(&browser, &origin, "the critical list").await;
    assert_eq!(
        serials(&browser, "appliances").await,
        vec![fleet.critical.clone()]
    );
    // The filter is in the URL: opening that link again shows the same rows.
    let shared = browser.current_url().await.expect("URL");
    assert!(shared.contains("health=critical"), "{shared}");
    browser.goto(&shared).await.expect("open the shared link");
    assert_eq!(
        serials(&browser, "appliances").await,
        vec![fleet.critical.clone()]
    );

    // The appliance, then its failing drive.
    browser
        .find("#appliances td.serial a")
        .await
        .expect("the appliance link")
        .click()
        .await
        .expect("click the appliance");
    let appliance = format!(
        "http://{}{}",
        ingest.ops_addr,
        phonehome_dashboard::appliance_path(&fleet.critical)
    );
    wait_for_url(&browser, &appliance).await;
    let h1 = browser
        .wait_for("h1", Duration::from_secs(10))
        .await
        .expect("h1");
    assert_eq!(h1.text().await.expect("h1"), fleet.critical);
    shot(&browser, "appliance").await;
    clean(&browser, &origin, "the appliance page").await;
    let drive_path = phonehome_dashboard::drive_path(&fleet.failing_drive);
    browser
        .find(&format!("#alerts a[href=\"{drive_path}\"]"))
        .await
        .expect("the disk_failing alert links its drive")
        .click()
        .await
        .expect("click the drive");
    wait_for_url(&browser, &format!("http://{}{drive_path}", ingest.ops_addr)).await;
    browser
        .wait_for("#chart-temperature", Duration::from_secs(10))
        .await
        .expect("the temperature chart");
    shot(&browser, "drive").await;
    clean(&browser, &origin, "the drive page").await;
    // Three reports in the default 30 days: three points, drawn.
    let series = browser
        .find("#chart-temperature path.series")
        .await
        .expect("a temperature series");
    assert_eq!(
        series.attr("data-points").await.expect("attr").as_deref(),
        Some("3")
    );
    let drawn: f64 = browser
        .execute(
            "return document.querySelector('#chart-temperature path.series').getTotalLength();",
            vec![],
        )
        .await
        .expect("length")
        .as_f64()
        .unwrap_or(0.0);
    assert!(drawn > 10.0, "the line is drawn ({drawn} px)");
    assert!(
        browser
            .find("#attributes")
            .await
            .expect("SMART attributes")
            .text()
            .await
            .expect("text")
            .contains("Reallocated_Sector_Ct")
    );

    // Search from the header finds a serial with a space and a slash.
    browser.goto(&origin).await.expect("summary");
    browser
        .find("form.search input[name=q]")
        .await
        .expect("the search box in the header");
    browser
        .execute(
            "const f = document.querySelector('form.search'); \
             f.querySelector('input[name=q]').value = 'sn 7'; f.submit();",
            vec![],
        )
        .await
        .expect("search");
    browser
        .wait_for("#appliances", Duration::from_secs(10))
        .await
        .expect("search results");
    assert_eq!(
        serials(&browser, "appliances").await,
        vec!["SN 7/B".to_owned()]
    );
    clean(&browser, &origin, "the search results").await;

    // Every other page, for a person to look at; each clean.
    for (name, path) in [
        ("alerts", "/alerts"),
        ("drives", "/drives"),
        ("versions", "/versions"),
        ("appliances", "/appliances?sort=health"),
    ] {
        browser
            .goto(&format!("http://{}{path}", ingest.ops_addr))
            .await
            .expect(path);
        browser
            .wait_for("main h1", Duration::from_secs(10))
            .await
            .expect(path);
        shot(&browser, name).await;
        clean(&browser, &origin, path).await;
    }

    // On a phone, pages do not grow sideways: wide tables scroll inside their box.
    browser
        .set_window_size(420, 900)
        .await
        .expect("phone width");
    for path in [
        "/",
        "/appliances",
        "/alerts",
        &phonehome_dashboard::appliance_path(&fleet.critical),
    ] {
        browser
            .goto(&format!("http://{}{path}", ingest.ops_addr))
            .await
            .expect(path);
        let overflow = browser
            .execute(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
                vec![],
            )
            .await
            .expect("widths")
            .as_f64()
            .unwrap_or(f64::MAX);
        assert!(
            overflow <= 1.0,
            "{path} is {overflow} px wider than a 420 px screen"
        );
    }
    shot(&browser, "appliance-phone").await;
}

/// A page that logs an error and loads an image from another address, served to the browser
/// by a bare TCP listener (one response per connection).
async fn serve_bad_page() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a port for the test page");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                // Another origin that can reach no real network: 127.0.0.2 is this machine,
                // and Chromium refuses port 9 outright (ERR_UNSAFE_PORT), still a failed load.
                let (status, body) = if request.starts_with("GET / ") {
                    (
                        "200 OK",
                        "<!doctype html><html><head><title>bad page</title>\
                         <link rel=\"icon\" href=\"data:,\"></head><body>\
                         <h1 id=\"h\" data-x=\"42\">bad</h1>\
                         <script>console.error(\"boom\")</script>\
                         <img src=\"http://127.0.0.2:9/x.png\"></body></html>",
                    )
                } else {
                    ("404 Not Found", "")
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

/// The PNG's width and height, from its IHDR chunk.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&png[16..20]), be(&png[20..24]))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_harness_sees_console_errors_and_outside_resources() {
    let addr = serve_bad_page().await;
    let url = format!("http://{addr}/");
    let browser = Browser::start().await;
    browser.goto(&url).await.expect("open the test page");
    assert_eq!(browser.current_url().await.expect("URL"), url);
    assert_eq!(browser.title().await.expect("title"), "bad page");

    let errors = browser.console_errors().await.expect("console errors");
    assert!(
        errors.iter().any(|e| e.contains("\"boom\"")),
        "console.error(\"boom\") is reported: {errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("http://127.0.0.2:9/x.png")),
        "the image that failed to load is reported: {errors:?}"
    );
    // Read once, gone: the next page's check sees only its own errors.
    let again = browser.console_errors().await.expect("console errors");
    assert!(again.is_empty(), "{again:?}");

    let urls = browser.resource_urls().await.expect("resource URLs");
    assert_eq!(
        urls.first(),
        Some(&url),
        "the document comes first: {urls:?}"
    );
    assert!(
        urls.iter().any(|u| u == "http://127.0.0.2:9/x.png"),
        "the outside image is among the loaded URLs: {urls:?}"
    );

    // The rest of the API, on a page whose content the test controls.
    let h1 = browser.find("h1").await.expect("h1");
    assert_eq!(h1.text().await.expect("text"), "bad");
    assert_eq!(h1.attr("data-x").await.expect("attr"), Some("42".into()));
    assert_eq!(h1.attr("data-none").await.expect("attr"), None);
    let body = browser.find("body").await.expect("body");
    let img = browser.find_in(&body, "img").await.expect("img in body");
    assert_eq!(
        img.attr("src").await.expect("src"),
        Some("http://127.0.0.2:9/x.png".into())
    );
    assert_eq!(browser.find_all("p").await.expect("no p").len(), 0);
    let sum = browser
        .execute(
            "return arguments[0] + arguments[1];",
            vec![2.into(), 3.into()],
        )
        .await
        .expect("script");
    assert_eq!(sum, serde_json::json!(5));

    // Errors carry what WebDriver said.
    let missing = browser.find("table").await.expect_err("no table here");
    assert!(missing.is_no_such_element(), "{missing}");
    let bad = browser.execute("throw new Error('x1')", vec![]).await;
    let bad = bad.expect_err("a throwing script");
    assert!(
        bad.to_string().contains("javascript error") && bad.to_string().contains("x1"),
        "{bad}"
    );
    let started = Instant::now();
    let waited = browser
        .wait_for("table", Duration::from_millis(300))
        .await
        .expect_err("no table ever");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(waited.to_string().contains("no such element"), "{waited}");

    // A script adds the element later: wait_for finds it.
    browser
        .execute(
            "setTimeout(() => document.body.append(document.createElement('table')), 200);",
            vec![],
        )
        .await
        .expect("script");
    browser
        .wait_for("table", Duration::from_secs(5))
        .await
        .expect("the table appears");

    // Screenshots are PNGs of the viewport: the window's width, its height less the browser's
    // own bars (headless Chromium keeps them); the window can be resized.
    let shots = screenshot_dir().join("browser");
    let shot = shots.join("harness.png");
    browser.screenshot(&shot).await.expect("screenshot");
    let png = std::fs::read(&shot).expect("read the screenshot");
    let (width, height) = png_size(&png);
    assert_eq!(width, WINDOW.0);
    assert!(height > WINDOW.1 / 2 && height <= WINDOW.1, "{height}");
    browser.set_window_size(600, 800).await.expect("resize");
    let narrow = shots.join("harness-narrow.png");
    browser.screenshot(&narrow).await.expect("screenshot");
    let png = std::fs::read(&narrow).expect("read the screenshot");
    assert_eq!(png_size(&png).0, 600);

    // Dropping the browser ends chromedriver and every Chromium process (a zombie waiting for
    // init to reap it has ended).
    let group = browser.process_group();
    assert!(
        !running_in_group(group).is_empty(),
        "the browser's processes are visible"
    );
    drop(browser);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = running_in_group(group);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still running after drop: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The processes in process group `group` that have not exited, as `pid name`.
fn running_in_group(group: u32) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (name) state ppid pgrp ...": the name may hold spaces and parentheses.
        let Some((head, tail)) = stat.rsplit_once(") ") else {
            continue;
        };
        let fields: Vec<&str> = tail.split_whitespace().collect();
        if fields.get(2) == Some(&group.to_string().as_str()) && fields.first() != Some(&"Z") {
            found.push(head.replacen(" (", " ", 1));
        }
    }
    found
}
