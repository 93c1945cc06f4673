//! HTML rendering. Every value from an appliance is untrusted and goes through [`escape`].

use std::fmt::Write;

use chrono::{DateTime, Utc};

use crate::ApplianceRow;

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
        let status = match r.app_status.as_str() {
            s @ ("healthy" | "degraded" | "unhealthy") => s,
            _ => "unknown",
        };
        let _ = write!(
            body,
            "<tr><td class=\"serial\">{}</td><td>{}</td>\
<td><time datetime=\"{}\" title=\"{}\">{}</time></td><td class=\"version\">{}</td>\
<td class=\"{status}\">{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
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
}
