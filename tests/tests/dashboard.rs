//! The operations dashboard as an operator uses it: the fleet page links each appliance to its
//! own page, and the link an alert carries (to Alertmanager, on Slack) opens that page, which
//! shows what the stored reports say: the alert, the drives with their counters, filesystems,
//! NICs and the changes over the days. A serial that never reported gets a 404 page.

use chrono::{Duration, SubsecRound, Utc};
use phonehome_ingest::alertmanager::appliance_link;
use phonehome_ingest::storage::{InsertOutcome, Storage};
use phonehome_tests::TestDb;
use phonehome_tests::bins::IngestProcess;
use phonehome_tests::client::{Response, get};
use phonehome_tests::pki::TestPki;

/// A serial with a space and a slash: its page's path must survive percent-encoding.
const SERIAL: &str = "SN 7/B";

async fn page(ingest: &IngestProcess, path: &str) -> Response {
    get(ingest.ops_addr, path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// The text of the element with `id` (up to its closing tag), so a check looks in the right
/// section of the page.
fn section<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element with id {id:?} in:\n{html}"));
    let rest = &html[start..];
    let end = ["</table>", "</p>"]
        .iter()
        .filter_map(|close| rest.find(close))
        .min()
        .unwrap_or(rest.len());
    &rest[..end]
}

#[tokio::test(flavor = "multi_thread")]
async fn an_alerts_link_opens_the_appliances_page_with_what_its_reports_said() {
    let db = TestDb::new().await;
    let storage = Storage::connect(db.url(), 4).expect("storage");
    // Three days: the NVMe drive is fitted on the second, the ATA drive's reallocated count
    // rises on the third (an alert), and the app is upgraded on the third.
    let example = phonehome_tests::example_report(SERIAL);
    let ata_serial = example.smart.devices[0].serial.clone().expect("ATA serial");
    let nvme_model = example.smart.devices[1].model.clone().expect("NVMe model");
    for (days_ago, reallocated) in [(2i64, 0u64), (1, 0), (0, 16)] {
        let mut r = example.clone();
        r.report_id = uuid::Uuid::new_v4();
        r.collected_at =
            (Utc::now() - Duration::days(days_ago) - Duration::hours(1)).trunc_subsecs(0);
        r.smart.errors.clear();
        r.smart.devices[0].reallocated_sectors = Some(reallocated);
        if days_ago == 2 {
            r.smart.devices.remove(1);
        }
        if days_ago == 0 {
            r.app.version = Some("4.3.0".into());
        }
        assert_eq!(
            phonehome_tests::store_report(&storage, &r).await,
            InsertOutcome::Stored
        );
    }

    let pki = TestPki::new();
    let ingest = IngestProcess::start(&db, &pki).await;

    // The fleet page links the appliance to its page.
    let fleet = page(&ingest, "/").await;
    assert_eq!(fleet.status, 200, "{}", fleet.body);
    let link = appliance_link("", SERIAL);
    assert_eq!(link, "/appliances/SN%207%2FB");
    assert!(
        fleet.body.contains(&format!("href=\"{link}\"")),
        "the fleet page links {SERIAL:?} to {link}:\n{}",
        fleet.body
    );

    // The link an alert carries is the same page.
    let alert_link = appliance_link("http://ops.example:8080/", SERIAL);
    assert_eq!(alert_link, format!("http://ops.example:8080{link}"));

    let r = page(&ingest, &link).await;
    assert_eq!(r.status, 200, "GET {link}: {}", r.body);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/html")),
        "{:?}",
        r.headers
    );
    let html = &r.body;
    assert!(html.contains("<h1 class=\"serial\">SN 7/B</h1>"), "{html}");

    let state = section(html, "state");
    for expected in ["4.3.0", "healthy"] {
        assert!(
            state.contains(expected),
            "state shows {expected:?}:\n{state}"
        );
    }
    let hostname = example.identity.hostname.clone().expect("hostname");
    assert!(
        state.contains(&hostname),
        "state shows the hostname:\n{state}"
    );

    let alerts = section(html, "alerts");
    assert!(
        alerts.contains("disk_degrading") && alerts.contains("firing"),
        "the firing disk alert:\n{alerts}"
    );

    let drives = section(html, "drives");
    assert_eq!(
        drives.matches("<tr class=\"drive\">").count(),
        2,
        "{drives}"
    );
    assert!(
        drives.contains(&ata_serial),
        "the ATA drive's serial:\n{drives}"
    );
    assert!(
        drives.contains(&nvme_model),
        "the NVMe drive's model:\n{drives}"
    );
    assert!(
        drives.contains("reallocated sectors 16"),
        "the counter that raised the alert:\n{drives}"
    );

    let filesystems = section(html, "filesystems");
    for fs in &example.filesystems.filesystems {
        assert!(
            filesystems.contains(&format!("<td>{}</td>", fs.mount_point)),
            "filesystem {}:\n{filesystems}",
            fs.mount_point
        );
    }
    let nics = section(html, "nics");
    for nic in &example.nics.nics {
        assert!(nics.contains(&nic.name), "NIC {}:\n{nics}", nic.name);
    }

    let events = section(html, "events");
    assert!(
        events.contains("app version") && events.contains("4.3.0"),
        "the upgrade:\n{events}"
    );
    assert!(
        events.contains("drive appeared"),
        "the NVMe drive fitted:\n{events}"
    );

    // A path that is no serial at all (a NUL) is no appliance either, not a database error.
    let nul = page(&ingest, "/appliances/SN%00").await;
    assert_eq!(nul.status, 404, "{}", nul.body);

    // A serial that never reported: a 404 page that says so, not an empty page.
    let missing = page(&ingest, &appliance_link("", "SN <none>")).await;
    assert_eq!(missing.status, 404, "{}", missing.body);
    assert!(
        missing
            .body
            .contains("No appliance with serial &quot;SN &lt;none&gt;&quot; has reported"),
        "{}",
        missing.body
    );
}
