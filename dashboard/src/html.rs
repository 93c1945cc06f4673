//! HTML rendering. Every value from an appliance is untrusted and goes through [`escape`].

use std::fmt::Write;

use chrono::{DateTime, Utc};

use crate::{ApplianceRow, ApplianceView, appliance_path};

/// Escapes text for use in HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2rem;color:#1d1d1f}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.4rem .8rem;\
border-bottom:1px solid #ddd}th{background:#f4f4f6}td.num{text-align:right}\
.healthy{color:#137333}.degraded{color:#b06000}.unhealthy{color:#c5221f}.unknown{color:#666}\
.muted{color:#666}";

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{}</title><style>{STYLE}</style></head><body>{body}</body></html>\n",
        escape(title)
    )
}

/// "3 h ago", "2 d ago": how long since an appliance was last heard from.
fn ago(then: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - then).num_seconds().max(0);
    match secs {
        0..60 => format!("{secs} s ago"),
        60..3600 => format!("{} min ago", secs / 60),
        3600..86400 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86400),
    }
}

/// The fleet page: one row per appliance, of `total` that have ever reported.
pub fn fleet_page(rows: &[ApplianceRow], total: i64, now: DateTime<Utc>) -> String {
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>phonehome fleet</h1><p class=\"muted\" id=\"summary\">{total} appliance{}",
        if total == 1 { "" } else { "s" }
    );
    if (rows.len() as i64) < total {
        let _ = write!(
            body,
            "; the {} heard from most recently are listed",
            rows.len()
        );
    }
    body.push_str("</p>");
    if rows.is_empty() {
        body.push_str("<p id=\"empty\">No appliance has reported yet.</p>");
        return page("phonehome fleet", &body);
    }
    body.push_str(
        "<table id=\"appliances\"><thead><tr><th>Serial</th><th>Hostname</th>\
<th>Last report</th><th>App version</th><th>App status</th><th>OS</th><th>Reports</th>\
</tr></thead><tbody>",
    );
    for r in rows {
        let status = status_class(&r.app_status);
        let _ = write!(
            body,
            "<tr><td class=\"serial\"><a href=\"{}\">{}</a></td><td>{}</td>\
<td><time datetime=\"{}\" title=\"{}\">{}</time></td><td class=\"version\">{}</td>\
<td class=\"{status}\">{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
            escape(&appliance_path(&r.serial)),
            escape(&r.serial),
            escape(r.hostname.as_deref().unwrap_or("—")),
            r.last_report_at.to_rfc3339(),
            r.last_report_at.format("%Y-%m-%d %H:%M:%S UTC"),
            ago(r.last_report_at, now),
            escape(r.app_version.as_deref().unwrap_or("—")),
            escape(&r.app_status),
            escape(r.os.as_deref().unwrap_or("—")),
            r.report_count,
        );
    }
    body.push_str("</tbody></table>");
    page("phonehome fleet", &body)
}

/// The style class for an app status; anything unexpected is shown as unknown.
fn status_class(status: &str) -> &'static str {
    match status {
        "healthy" => "healthy",
        "degraded" => "degraded",
        "unhealthy" => "unhealthy",
        _ => "unknown",
    }
}

/// `1.5 TB`: sizes as an operator reads them (powers of 1000, as `df -H` prints them).
fn bytes(n: i64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < units.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// `87 %` of `total`; a dash when there is no total.
fn percent(used: i64, total: i64) -> String {
    if total <= 0 {
        return "—".into();
    }
    format!("{:.0} %", used as f64 * 100.0 / total as f64)
}

fn time(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    format!(
        "<time datetime=\"{}\" title=\"{}\">{}</time>",
        at.to_rfc3339(),
        at.format("%Y-%m-%d %H:%M:%S UTC"),
        ago(at, now)
    )
}

fn opt(v: Option<&str>) -> String {
    escape(v.unwrap_or("—"))
}

fn num(v: Option<i64>) -> String {
    v.map_or_else(|| "—".into(), |n| n.to_string())
}

/// One titled part of the appliance page.
struct Section<'a> {
    title: &'a str,
    /// The id of the table, or of the paragraph that says there is nothing to show.
    id: &'a str,
    row_class: &'a str,
    empty: &'a str,
    headers: &'a [&'a str],
}

/// Writes `s` with its rows (cells already HTML, from [`td`] and [`td_num`]).
fn section(body: &mut String, s: Section<'_>, rows: impl Iterator<Item = Vec<String>>) {
    let _ = write!(body, "<h2>{}</h2>", s.title);
    let mut rows = rows.peekable();
    if rows.peek().is_none() {
        let _ = write!(body, "<p id=\"{}\" class=\"muted\">{}</p>", s.id, s.empty);
        return;
    }
    let _ = write!(body, "<table id=\"{}\"><thead><tr>", s.id);
    for h in s.headers {
        let _ = write!(body, "<th>{h}</th>");
    }
    body.push_str("</tr></thead><tbody>");
    for cells in rows {
        let _ = write!(
            body,
            "<tr class=\"{}\">{}</tr>",
            s.row_class,
            cells.concat()
        );
    }
    body.push_str("</tbody></table>");
}

fn td(html: &str) -> String {
    format!("<td>{html}</td>")
}

fn td_num(html: &str) -> String {
    format!("<td class=\"num\">{html}</td>")
}

/// One appliance's page. Sections carry ids (`state`, `alerts`, `drives`, `filesystems`,
/// `nics`, `events`) so that scripts and tests can find them.
pub fn appliance_page(a: &ApplianceView, now: DateTime<Utc>) -> String {
    let r = &a.row;
    let title = format!("{} · phonehome", r.serial);
    let mut body = String::new();
    let _ = write!(
        body,
        "<p><a href=\"/\">← fleet</a></p><h1 class=\"serial\">{}</h1>",
        escape(&r.serial)
    );
    let status = status_class(&r.app_status);
    let _ = write!(
        body,
        "<table id=\"state\"><tbody>\
<tr><th>Hostname</th><td>{}</td></tr>\
<tr><th>Last report</th><td>{}{}</td></tr>\
<tr><th>App</th><td><span class=\"{status}\">{}</span> · version {}</td></tr>\
<tr><th>OS</th><td>{} · kernel {}</td></tr>\
<tr><th>Collector</th><td>{}{}</td></tr>\
<tr><th>Reports</th><td>{}</td></tr></tbody></table>",
        opt(r.hostname.as_deref()),
        time(r.last_report_at, now),
        if a.silent {
            " <strong class=\"unhealthy\" id=\"silent\">silent: overdue</strong>"
        } else {
            ""
        },
        escape(&r.app_status),
        opt(r.app_version.as_deref()),
        opt(r.os.as_deref()),
        opt(a.kernel.as_deref()),
        escape(&a.collector_version),
        match a.collection_errors {
            0 => String::new(),
            n => format!(
                " · <span class=\"degraded\">{n} collection error{} in the last report</span>",
                if n == 1 { "" } else { "s" }
            ),
        },
        r.report_count,
    );

    let alerts = a.alerts.iter().map(|al| {
        let state = if al.state == "firing" {
            "<span class=\"unhealthy\">firing</span>".to_owned()
        } else {
            let resolved = al
                .resolved_at
                .map(|t| format!(" {}", time(t, now)))
                .unwrap_or_default();
            format!(
                "<span class=\"muted\">{}{resolved}</span>",
                escape(&al.state)
            )
        };
        vec![
            td(&state),
            td(&escape(&al.severity)),
            format!("<td class=\"rule\">{}</td>", escape(&al.rule)),
            td(&escape(&al.subject)),
            td(&time(al.started_at, now)),
            td(&escape(&al.summary)),
        ]
    });
    section(
        &mut body,
        Section {
            title: "Alerts",
            id: "alerts",
            row_class: "alert",
            empty: "No alerts.",
            headers: &["State", "Severity", "Rule", "Subject", "Since", "Summary"],
        },
        alerts,
    );

    let drives = a.drives.iter().map(|d| {
        let health = match (d.failing, d.health_passed) {
            (true, _) => "<span class=\"unhealthy\">failing</span>",
            (false, Some(false)) => "<span class=\"unhealthy\">SMART failed</span>",
            (false, Some(true)) => "<span class=\"healthy\">passed</span>",
            (false, None) => "<span class=\"unknown\">unknown</span>",
        };
        let counters = if d.counters.is_empty() {
            "—".to_owned()
        } else {
            d.counters
                .iter()
                .map(|(name, n)| format!("{} {n}", escape(name)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        vec![
            td(&escape(&d.device_name)),
            td(&opt(d.model.as_deref())),
            format!(
                "<td class=\"drive-serial\">{}</td>",
                opt(d.serial.as_deref())
            ),
            td(health),
            td_num(
                &d.temperature_celsius
                    .map_or_else(|| "—".into(), |t| format!("{t} °C")),
            ),
            td_num(&num(d.power_on_hours)),
            td(&counters),
            td(&time(d.since, now)),
        ]
    });
    section(
        &mut body,
        Section {
            title: "Drives",
            id: "drives",
            row_class: "drive",
            empty: "No drives reported.",
            headers: &[
                "Device",
                "Model",
                "Serial",
                "Health",
                "Temperature",
                "Power-on hours",
                "Error counters",
                "In this appliance since",
            ],
        },
        drives,
    );

    let filesystems = a.filesystems.iter().map(|f| {
        vec![
            td(&escape(&f.mount_point)),
            td_num(&bytes(f.bytes_used)),
            td_num(&bytes(f.bytes_total)),
            td_num(&percent(f.bytes_used, f.bytes_total)),
            td_num(&percent(f.inodes_used, f.inodes_total)),
        ]
    });
    section(
        &mut body,
        Section {
            title: "Filesystems",
            id: "filesystems",
            row_class: "filesystem",
            empty: "No filesystems reported.",
            headers: &["Mount point", "Used", "Size", "Use", "Inodes use"],
        },
        filesystems,
    );

    let nics = a.nics.iter().map(|n| {
        vec![
            td(&escape(&n.name)),
            td_num(&num(n.rx_errors)),
            td_num(&num(n.tx_errors)),
            td_num(&num(n.rx_dropped)),
            td_num(&num(n.tx_dropped)),
        ]
    });
    section(
        &mut body,
        Section {
            title: "Network interfaces",
            id: "nics",
            row_class: "nic",
            empty: "No network interfaces reported.",
            headers: &[
                "Interface",
                "Receive errors",
                "Transmit errors",
                "Receive drops",
                "Transmit drops",
            ],
        },
        nics,
    );

    let events = a.events.iter().map(|e| {
        vec![
            td(&time(e.at, now)),
            td(&escape(&e.kind)),
            td(&escape(&e.detail)),
        ]
    });
    section(
        &mut body,
        Section {
            title: "Changes",
            id: "events",
            row_class: "event",
            empty: "No changes recorded.",
            headers: &["When", "What", "Detail"],
        },
        events,
    );
    page(&title, &body)
}

/// Shown for a serial that has never reported.
pub fn unknown_appliance_page(serial: &str) -> String {
    page(
        "phonehome: unknown appliance",
        &format!(
            "<p><a href=\"/\">← fleet</a></p><h1>Unknown appliance</h1>\
<p id=\"unknown\">No appliance with serial <code>{}</code> has reported to this ingest.</p>",
            escape(serial)
        ),
    )
}

/// Shown when the fleet cannot be read; says nothing about why (that is in the log).
pub fn unavailable_page() -> String {
    page(
        "phonehome fleet: unavailable",
        "<h1>phonehome fleet</h1><p>The fleet database is unavailable right now. \
The ingest log says why; this page recovers by itself.</p>",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(serial: &str, host: &str) -> ApplianceRow {
        ApplianceRow {
            serial: serial.into(),
            hostname: Some(host.into()),
            last_report_at: DateTime::parse_from_rfc3339("2026-11-21T03:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
            app_version: Some("4.2.1".into()),
            app_status: "healthy".into(),
            os: None,
            report_count: 3,
        }
    }

    #[test]
    fn appliance_strings_are_escaped() {
        let now = DateTime::parse_from_rfc3339("2026-11-21T06:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let html = fleet_page(&[row("SN<1>", "<script>alert(1)</script>")], 1, now);
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("SN&lt;1&gt;"));
        assert!(html.contains("3 h ago"));
        assert!(html.contains(">1 appliance</p>"), "{html}");
    }

    #[test]
    fn empty_fleet_says_so() {
        let html = fleet_page(&[], 0, Utc::now());
        assert!(html.contains("No appliance has reported yet"));
    }

    #[test]
    fn a_truncated_list_says_how_many_there_are() {
        let rows = vec![row("A", "a"), row("B", "b")];
        let html = fleet_page(&rows, 5000, Utc::now());
        assert!(
            html.contains("5000 appliances; the 2 heard from most recently are listed"),
            "{html}"
        );
    }

    #[test]
    fn the_appliance_page_escapes_what_the_appliance_sent_and_shows_problems() {
        let now = DateTime::parse_from_rfc3339("2026-11-21T06:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let evil = "<img src=x onerror=alert(1)>";
        let view = ApplianceView {
            row: row("SN/1", evil),
            kernel: Some(evil.into()),
            collector_version: evil.into(),
            silent: true,
            collection_errors: 2,
            alerts: vec![crate::AlertView {
                rule: "disk_failing".into(),
                subject: evil.into(),
                severity: "critical".into(),
                state: "firing".into(),
                started_at: now,
                resolved_at: None,
                summary: evil.into(),
            }],
            drives: vec![crate::DriveView {
                device_name: evil.into(),
                model: Some(evil.into()),
                serial: None,
                since: now,
                health_passed: Some(true),
                failing: true,
                temperature_celsius: Some(41),
                power_on_hours: None,
                counters: vec![("pending sectors".into(), 8)],
            }],
            filesystems: vec![crate::FilesystemView {
                mount_point: evil.into(),
                bytes_used: 870_000_000_000,
                bytes_total: 1_000_000_000_000,
                inodes_used: 1,
                inodes_total: 0,
            }],
            nics: vec![],
            events: vec![crate::EventView {
                at: now,
                kind: "app version".into(),
                detail: evil.into(),
            }],
        };
        let html = appliance_page(&view, now);
        assert!(!html.contains("<img"), "{html}");
        assert_eq!(
            html.matches("&lt;img src=x onerror=alert(1)&gt;").count(),
            9,
            "{html}"
        );
        for shown in [
            "id=\"silent\"",
            "2 collection errors in the last report",
            "<span class=\"unhealthy\">failing</span>",
            "pending sectors 8",
            "41 °C",
            "870.0 GB",
            "1.0 TB",
            "87 %",
            "No network interfaces reported.",
        ] {
            assert!(html.contains(shown), "{shown:?} in {html}");
        }
        assert!(unknown_appliance_page("<x>").contains("<code>&lt;x&gt;</code>"));
    }
}
