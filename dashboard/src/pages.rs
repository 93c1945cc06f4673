//! The pages, as maud templates: every value is escaped unless it is one of our own SVG charts,
//! and every number an operator may want to act on links to the list it counts.

use chrono::{DateTime, Duration, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::chart::{self, Chart, Series};
use crate::format::{self, ago, bytes, count, percent, short, stamp};
use crate::model::*;
use crate::query::{
    self, AlertQuery, AlertStateFilter, ApplianceQuery, ApplianceSort, AuditQuery, DriveQuery, href,
};
use crate::{appliance_path, drive_path};

const STYLE: &str = include_str!("style.css");

/// The one stylesheet: the pages' own rules and the charts'.
pub fn stylesheet() -> String {
    format!("{STYLE}\n{}", chart::CHART_CSS)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Nav {
    Summary,
    Appliances,
    Alerts,
    Drives,
    Versions,
    Reliability,
    Audit,
    None,
}

fn layout(title: &str, nav: Nav, body: Markup) -> String {
    let link = |href: &str, label: &str, this: Nav| {
        html! { a href=(href) aria-current=[(nav == this).then_some("page")] { (label) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · phonehome" }
                link rel="stylesheet" href="/assets/style.css";
                link rel="icon" href="/assets/icon.svg" type="image/svg+xml";
            }
            body {
                header.top {
                    a.brand href="/" { "phonehome" }
                    nav {
                        (link("/", "Summary", Nav::Summary))
                        (link("/appliances", "Appliances", Nav::Appliances))
                        (link("/alerts", "Alerts", Nav::Alerts))
                        (link("/drives", "Drives", Nav::Drives))
                        (link("/versions", "Versions", Nav::Versions))
                        (link("/reliability", "Reliability", Nav::Reliability))
                        (link("/audit", "Audit log", Nav::Audit))
                    }
                    form.search action="/appliances" method="get" role="search" {
                        input type="search" name="q" placeholder="serial or hostname"
                            aria-label="Search appliances by serial or hostname prefix";
                        button type="submit" { "Search" }
                    }
                }
                main { (body) }
            }
        }
    }
    .into_string()
}

/// A page that says what went wrong (400, 404, 503).
pub fn error_page(title: &str, message: &str) -> String {
    layout(
        title,
        Nav::None,
        html! {
            h1 { (title) }
            p #message { (message) }
            p { a href="/" { "Back to the fleet summary" } }
        },
    )
}

fn time(at: DateTime<Utc>, now: DateTime<Utc>) -> Markup {
    html! { time datetime=(at.to_rfc3339()) title=(stamp(at)) { (ago(at, now)) } }
}

/// The certificate the newest report came with: when it ends, how it was issued, revoked?
fn certificate(c: &CertificateView, now: DateTime<Utc>) -> Markup {
    let soon = c.not_after.is_some_and(|t| t - now < Duration::days(30));
    html! {
        @if let Some(r) = &c.revoked {
            strong.critical #revoked { "revoked" } " " (time(r.at, now)) " by " (r.by)
            @if !r.reason.is_empty() { ": " (short(&r.reason, 200)) }
            " · "
        }
        @match c.not_after {
            Some(t) => {
                "ends " span class=(if soon { "warning" } else { "" }) #not-after {
                    (stamp(t)) " (" (format::until(t, now)) ")"
                }
            }
            None => { "end not recorded (first seen before the ingest kept it)" }
        }
        " · "
        @match c.issued_via.as_deref() {
            Some("enrol") => { "issued at enrolment" }
            Some("renew") => { "issued by renewal" }
            _ => { "issued offline" }
        }
        @if let Some(s) = &c.cert_serial { " · serial " code { (s) } }
        @if let Some(i) = &c.issuer_sha256 { " · issuer " code title=(i) { (i.get(..16).unwrap_or(i)) "…" } }
        " · last renewal "
        @match c.last_renewal {
            Some(t) => { (time(t, now)) }
            None => { "never" }
        }
        br;
        small.muted { "SHA-256 " code #cert-sha { (c.sha256) } }
    }
}

/// The stylesheet's class for a verdict level (`ok` is the healthy colour; information is
/// muted).
fn verdict_class(level: &str) -> &'static str {
    match level {
        "critical" => "critical",
        "warning" => "warning",
        _ => "ok",
    }
}

fn health_badge(h: Health) -> Markup {
    html! { span class={ "badge " (h.as_str()) } { (h.as_str()) } }
}

fn severity_badge(s: Severity) -> Markup {
    html! { span class={ "badge " (s.as_str()) } { (s.as_str()) } }
}

fn status_class(status: &str) -> &'static str {
    match status {
        "healthy" => "ok",
        "degraded" => "warning",
        "unhealthy" => "critical",
        _ => "unknown",
    }
}

fn opt(v: Option<&str>) -> &str {
    v.unwrap_or("—")
}

/// A table that scrolls sideways on a narrow screen instead of breaking the page.
fn table(id: &str, headers: &[&str], rows: Markup) -> Markup {
    html! {
        div.scroll {
            table id=(id) {
                thead { tr { @for h in headers { th scope="col" { (h) } } } }
                tbody { (rows) }
            }
        }
    }
}

fn next_link(path: &str, pairs: Vec<(&'static str, Option<String>)>, next: Option<&str>) -> Markup {
    let first = href(path, &pairs);
    html! {
        nav.pager aria-label="pages" {
            a href=(first) { "First page" }
            @if let Some(n) = next {
                @let with: Vec<_> = pairs.iter().cloned().chain([("after", Some(n.to_owned()))]).collect();
                " · " a #next rel="next" href=(href(path, &with)) { "Next page →" }
            } @else {
                " · " span.muted { "end of the list" }
            }
        }
    }
}

fn alert_subject(a: &AlertRow) -> Markup {
    html! {
        @if let Some(key) = a.drive_key() {
            a href=(drive_path(key)) { (short(&a.subject, 64)) }
        } @else {
            (short(&a.subject, 64))
        }
    }
}

fn alert_rows(alerts: &[AlertRow], now: DateTime<Utc>, with_serial: bool) -> Markup {
    html! {
        @for a in alerts {
            tr.alert {
                td { (severity_badge(a.severity)) }
                td.rule { a href=(href("/alerts", &[("rule", Some(a.rule.clone()))])) { (a.rule) } }
                @if with_serial {
                    td.serial { a href=(appliance_path(&a.serial)) { (short(&a.serial, 64)) } }
                }
                td.subject { (alert_subject(a)) }
                td { (a.state.as_str()) }
                td { (time(a.started_at, now)) }
                td { @if let Some(r) = a.resolved_at { (time(r, now)) } @else { "—" } }
                td.summary { (short(&a.summary, 300))
                    @if a.reopened > 0 { " " span.muted.reopened { "(came back " (a.reopened) "×)" } } }
            }
        }
    }
}

const ALERT_HEADERS: [&str; 8] = [
    "Severity",
    "Rule",
    "Appliance",
    "Subject",
    "State",
    "Since",
    "Resolved",
    "Summary",
];

/// `/`: the fleet at a glance.
pub fn summary(s: &Summary, silent: &[ApplianceRow]) -> String {
    let now = Utc::now();
    let health = |h: Health| s.by_health.iter().find(|(x, _)| *x == h).map_or(0, |c| c.1);
    let firing = |sev: Severity| {
        s.alerts_by_severity
            .iter()
            .find(|(x, _)| *x == sev)
            .map_or(0, |c| c.1)
    };
    let tile = |id: &str, label: &str, n: i64, link: String, class: &str| {
        html! {
            a href=(link) id=(id) class={ "tile " (class) } {
                span.n { (count(n)) } span.label { (label) }
            }
        }
    };
    let outdated_link = if s.minimum_app_version.is_some() {
        href("/appliances", &[("below_minimum", Some("true".into()))])
    } else {
        "/versions".to_owned()
    };
    let body = html! {
        h1 { "Fleet" }
        p.muted #as-of {
            (count(s.appliances)) " appliance" @if s.appliances != 1 { "s" } " · counts as of " (time(s.as_of, now))
        }
        @if s.appliances == 0 {
            p #empty { "No appliance has reported yet. Point a collector at this ingest (see the README) and its first report will show here." }
        }
        section #health aria-label="appliances by health" {
            h2 { "Appliances" }
            div.tiles {
                (tile("count-total", "appliances", s.appliances, "/appliances".into(), ""))
                (tile("count-critical", "critical", health(Health::Critical),
                    href("/appliances", &[("health", Some("critical".into())), ("sort", Some("health".into()))]),
                    if health(Health::Critical) > 0 { "critical" } else { "" }))
                (tile("count-warning", "warning", health(Health::Warning),
                    href("/appliances", &[("health", Some("warning".into()))]),
                    if health(Health::Warning) > 0 { "warning" } else { "" }))
                (tile("count-info", "info", health(Health::Info),
                    href("/appliances", &[("health", Some("info".into()))]), ""))
                (tile("count-ok", "ok", health(Health::Ok),
                    href("/appliances", &[("health", Some("ok".into()))]), "ok"))
                (tile("count-silent", &format!("silent > {} h", s.silent_hours), s.silent,
                    href("/appliances", &[("silent", Some("true".into())), ("sort", Some("oldest".into()))]),
                    if s.silent > 0 { "warning" } else { "" }))
                (tile("count-expected-offline", "expected offline", s.expected_offline,
                    href("/appliances", &[("state", Some("expected_offline".into()))]), ""))
                (tile("count-retired", "retired", s.retired,
                    href("/appliances", &[("state", Some("retired".into()))]), ""))
            }
            p.muted { a href="/audit" { "Audit log: who changed what →" } }
        }
        section #alert-counts aria-label="firing alerts" {
            h2 { "Firing alerts" }
            div.tiles {
                @for sev in Severity::ALL {
                    (tile(&format!("alerts-{}", sev.as_str()), sev.as_str(), firing(sev),
                        href("/alerts", &[("severity", Some(sev.as_str().into()))]),
                        if firing(sev) > 0 { sev.as_str() } else { "" }))
                }
                (tile("drives-failing", "failing drives", s.failing_drives,
                    href("/alerts", &[("rule", Some("disk_failing".into()))]),
                    if s.failing_drives > 0 { "critical" } else { "" }))
                (tile("drives-degrading", "degrading drives", s.degrading_drives,
                    href("/alerts", &[("rule", Some("disk_degrading".into()))]),
                    if s.degrading_drives > 0 { "warning" } else { "" }))
                (tile("below-minimum",
                    &match &s.minimum_app_version {
                        Some(m) => format!("below app {}", short(m, 24)),
                        None => "no minimum app version set".to_owned(),
                    },
                    s.below_minimum, outdated_link,
                    if s.below_minimum > 0 { "warning" } else { "" }))
            }
        }
        section #attention {
            h2 { "Needs attention" }
            @if s.attention.is_empty() {
                p.muted #attention-empty { "Nothing is firing." }
            } @else {
                (table("attention-alerts", &ALERT_HEADERS, alert_rows(&s.attention, now, true)))
                p { a href="/alerts" { "All firing alerts →" } }
            }
            @if !silent.is_empty() {
                h3 { "Silent the longest" }
                (table("silent", &["Serial", "Hostname", "Last report"], html! {
                    @for a in silent {
                        tr.appliance {
                            td.serial { a href=(appliance_path(&a.serial)) { (short(&a.serial, 64)) } }
                            td { (short(opt(a.hostname.as_deref()), 64)) }
                            td { (time(a.last_report_at, now)) }
                        }
                    }
                }))
            }
        }
        section #rules {
            h2 { "Firing by rule" }
            @if s.alerts_by_rule.is_empty() {
                p.muted { "No rule is firing." }
            } @else {
                (table("by-rule", &["Rule", "Severity", "Firing"], html! {
                    @for r in &s.alerts_by_rule {
                        tr {
                            td { a href=(href("/alerts", &[("rule", Some(r.rule.clone()))])) { (r.rule) } }
                            td { (severity_badge(r.severity)) }
                            td.num { a href=(href("/alerts", &[("rule", Some(r.rule.clone())), ("severity", Some(r.severity.as_str().to_owned()))])) { (count(r.firing)) } }
                        }
                    }
                }))
            }
        }
        section #app-versions {
            h2 { "App versions" }
            (version_table("summary-versions", "app_version", &s.app_versions, s.appliances))
            p { a href="/versions" { "Versions and adoption over time →" } }
        }
    };
    layout("Fleet", Nav::Summary, body)
}

fn version_table(id: &str, filter: &str, versions: &[VersionCount], total: i64) -> Markup {
    html! {
        @if versions.is_empty() {
            p.muted { "No appliance has said." }
        } @else {
            (table(id, &["Version", "Appliances", "Share", "With warnings or worse", ""], html! {
                @for v in versions {
                    tr.version {
                        td.version {
                            @let shown = if v.version.is_empty() { "(none)".to_owned() } else { short(&v.version, 48) };
                            @if v.version.is_empty() || filter.is_empty() {
                                (shown)
                            } @else {
                                a href=(href("/appliances", &[(filter, Some(v.version.clone()))])) { (shown) }
                            }
                        }
                        td.num { (count(v.appliances)) }
                        td.num { (percent(v.appliances, total)) }
                        td.num { (percent(v.with_alerts, v.appliances)) }
                        td { @if v.below_minimum { span.badge.warning { "below minimum" } } }
                    }
                }
            }))
        }
    }
}

/// `/appliances`: every appliance, filtered, sorted and paged.
pub fn appliances(q: &ApplianceQuery, page: &Page<ApplianceRow>, rules: &[&str]) -> String {
    let now = Utc::now();
    let select = |name: &str, options: &[&str], current: Option<&str>| {
        html! {
            select name=(name) id={ "f-" (name) } {
                option value="" selected[current.is_none()] { "any" }
                @for o in options {
                    option value=(o) selected[current == Some(*o)] { (o) }
                }
            }
        }
    };
    let body = html! {
        h1 { "Appliances" }
        form.filters action="/appliances" method="get" {
            label { "Serial or hostname " input type="search" name="q" value=[q.q.as_deref()]; }
            label { "Health " (select("health", &["critical", "warning", "info", "ok"], q.health.map(Health::as_str))) }
            label { "Silent " (select("silent", &["true", "false"], q.silent.map(|s| if s { "true" } else { "false" }))) }
            label { "Firing rule " (select("rule", rules, q.rule.as_deref())) }
            label { "App status " (select("status", &query::APP_STATUSES, q.status.as_deref())) }
            label { "App version " input type="text" name="app_version" value=[q.app_version.as_deref()]; }
            label { "OS " input type="text" name="os" value=[q.os.as_deref()]; }
            label { "Drive model " input type="text" name="drive_model" value=[q.drive_model.as_deref()]; }
            label { "Below minimum app " (select("below_minimum", &["true"], q.below_minimum.then_some("true"))) }
            label { "Lifecycle " (select("state", &query::LIFECYCLE_STATES, q.state.as_deref())) }
            label { "Sort "
                select name="sort" id="f-sort" {
                    @for s in ApplianceSort::ALL {
                        option value=(s.as_str()) selected[q.sort == s] { (match s {
                            ApplianceSort::Serial => "serial",
                            ApplianceSort::LastReport => "newest report first",
                            ApplianceSort::Oldest => "oldest report first",
                            ApplianceSort::Health => "worst health first",
                        }) }
                    }
                }
            }
            button type="submit" { "Apply" }
            @if q.filtered() { " " a href="/appliances" { "Clear" } }
        }
        @if page.items.is_empty() {
            p #empty.muted { @if q.filtered() { "No appliance matches these filters." } @else { "No appliance has reported yet." } }
        } @else {
            (table("appliances", &["Health", "Serial", "Hostname", "Last report", "Alerts", "Failing drives", "App", "App version", "OS"], html! {
                @for a in &page.items {
                    tr.appliance {
                        td { (health_badge(a.health)) }
                        td.serial { a href=(appliance_path(&a.serial)) { (short(&a.serial, 64)) } }
                        td { (short(opt(a.hostname.as_deref()), 64)) }
                        td {
                            (time(a.last_report_at, now))
                            @if a.silent { " " span.badge.warning.silent { "silent" } }
                            @if a.lifecycle != "active" {
                                " " span.badge.lifecycle data-lifecycle=(a.lifecycle) { (lifecycle_label(&a.lifecycle)) }
                            }
                        }
                        td.num {
                            @if a.firing_alerts > 0 {
                                a href=(href("/alerts", &[("serial", Some(a.serial.clone()))])) { (count(a.firing_alerts)) }
                            } @else { "0" }
                        }
                        td class=(if a.failing_drives > 0 { "num critical" } else { "num" }) { (a.failing_drives) }
                        td class=(status_class(&a.app_status)) { (short(&a.app_status, 16)) }
                        td.version { (short(opt(a.app_version.as_deref()), 48)) }
                        td { (short(opt(a.os.as_deref()), 48)) }
                    }
                }
            }))
        }
        (next_link("/appliances", q.pairs(), page.next.as_deref()))
    };
    layout("Appliances", Nav::Appliances, body)
}

fn lifecycle_label(state: &str) -> &str {
    match state {
        "expected_offline" => "expected offline",
        other => other,
    }
}

fn audit_table(rows: &[AuditRow], now: DateTime<Utc>) -> Markup {
    table(
        "audit",
        &["When", "Who", "Action", "Target", "Detail"],
        html! {
            @for e in rows {
                tr.audit {
                    td { (time(e.at, now)) }
                    td.actor { (short(&e.actor, 80)) }
                    td { (short(&e.action, 48)) }
                    td.serial { (short(&e.target, 80)) }
                    // Compact JSON, escaped like any text; notes are bounded when written.
                    td.detail { code { (short(&e.detail.to_string(), 400)) } }
                }
            }
        },
    )
}

/// `/audit`: every operator action, newest first, optionally about one target.
pub fn audit(q: &AuditQuery, page: &Page<AuditRow>) -> String {
    let now = Utc::now();
    let pairs = vec![("target", q.target.clone())];
    let body = html! {
        h1 { "Audit log" }
        form.filters action="/audit" method="get" {
            label { "Target (serial, token:NAME) " input type="search" name="target" value=[q.target.as_deref()]; }
            button type="submit" { "Apply" }
            @if q.target.is_some() { " " a href="/audit" { "Clear" } }
        }
        @if page.items.is_empty() {
            p #empty.muted { "No operator action is recorded" @if q.target.is_some() { " for this target" } "." }
        } @else {
            (audit_table(&page.items, now))
        }
        nav.pager aria-label="pages" {
            a href=(href("/audit", &pairs)) { "Newest" }
            @if let Some(n) = &page.next {
                @let with: Vec<_> = pairs.iter().cloned().chain([("before", Some(n.clone()))]).collect();
                " · " a #next rel="next" href=(href("/audit", &with)) { "Older →" }
            } @else {
                " · " span.muted { "end of the log" }
            }
        }
    };
    layout("Audit log", Nav::Audit, body)
}

/// `/alerts`: firing alerts by severity, then age; resolved history.
pub fn alerts(q: &AlertQuery, page: &Page<AlertRow>, rules: &[&str]) -> String {
    let now = Utc::now();
    let tab = |state: AlertStateFilter, label: &str| {
        let mut with = q.pairs();
        with.retain(|(k, _)| *k != "state");
        if state != AlertStateFilter::Firing {
            with.push(("state", Some(state.as_str().to_owned())));
        }
        html! { a href=(href("/alerts", &with)) aria-current=[(q.state == state).then_some("page")] { (label) } }
    };
    let body = html! {
        h1 { "Alerts" }
        nav.tabs aria-label="alert state" {
            (tab(AlertStateFilter::Firing, "Firing")) (tab(AlertStateFilter::Resolved, "Resolved")) (tab(AlertStateFilter::All, "All"))
        }
        form.filters action="/alerts" method="get" {
            @if q.state != AlertStateFilter::Firing { input type="hidden" name="state" value=(q.state.as_str()); }
            label { "Rule "
                select name="rule" id="f-rule" {
                    option value="" selected[q.rule.is_none()] { "any" }
                    @for r in rules { option value=(r) selected[q.rule.as_deref() == Some(*r)] { (r) } }
                }
            }
            label { "Severity "
                select name="severity" id="f-severity" {
                    option value="" selected[q.severity.is_none()] { "any" }
                    @for s in Severity::ALL { option value=(s.as_str()) selected[q.severity == Some(s)] { (s.as_str()) } }
                }
            }
            label { "Serial " input type="text" name="serial" value=[q.serial.as_deref()]; }
            button type="submit" { "Apply" }
        }
        @if page.items.is_empty() {
            p #empty.muted { (match q.state { AlertStateFilter::Firing => "Nothing matching is firing.", _ => "No alert matches." }) }
        } @else {
            (table("alerts", &ALERT_HEADERS, alert_rows(&page.items, now, true)))
        }
        (next_link("/alerts", q.pairs(), page.next.as_deref()))
    };
    layout("Alerts", Nav::Alerts, body)
}

fn drive_firing(d: &DriveRow) -> Markup {
    html! {
        @for (i, r) in d.firing.iter().enumerate() {
            @if i > 0 { ", " }
            span.rule { (r) }
        }
    }
}

/// `/drives`: every drive in the fleet, worst first.
pub fn drives(q: &DriveQuery, page: &Page<DriveRow>) -> String {
    let body = html! {
        h1 { "Drives" }
        form.filters action="/drives" method="get" {
            label { "Model " input type="text" name="model" value=[q.model.as_deref()]; }
            label { "Firmware " input type="text" name="firmware" value=[q.firmware.as_deref()]; }
            label { "Protocol "
                select name="protocol" id="f-protocol" {
                    option value="" selected[q.protocol.is_none()] { "any" }
                    @for p in query::PROTOCOLS { option value=(p) selected[q.protocol.as_deref() == Some(p)] { (p) } }
                }
            }
            label { "Health "
                select name="health" id="f-health" {
                    option value="" selected[q.health.is_none()] { "any" }
                    @for h in Health::ALL { option value=(h.as_str()) selected[q.health == Some(h)] { (h.as_str()) } }
                }
            }
            button type="submit" { "Apply" }
        }
        @if page.items.is_empty() {
            p #empty.muted { "No drive matches." }
        } @else {
            (table("drives", &["Health", "Drive", "Model", "Firmware", "Protocol", "Capacity", "Appliance", "Device", "Firing"], html! {
                @for d in &page.items {
                    tr.drive {
                        td { (health_badge(d.health)) }
                        td.key { a href=(drive_path(&d.key)) { (short(&d.key, 64)) } }
                        td { (short(opt(d.model.as_deref()), 48)) }
                        td { (short(opt(d.firmware.as_deref()), 24)) }
                        td { (opt(d.protocol.as_deref())) }
                        td.num { @if let Some(c) = d.capacity_bytes { (bytes(c)) } @else { "—" } }
                        td.serial {
                            @if let Some(s) = &d.appliance { a href=(appliance_path(s)) { (short(s, 64)) } } @else { span.muted { "not in an appliance" } }
                        }
                        td { (short(opt(d.device_name.as_deref()), 32)) }
                        td { (drive_firing(d)) }
                    }
                }
            }))
        }
        (next_link("/drives", q.pairs(), page.next.as_deref()))
    };
    layout("Drives", Nav::Drives, body)
}

fn periods(path: &str, days: u32) -> Markup {
    html! {
        nav.tabs #period aria-label="period" {
            @for d in query::PERIODS {
                a href=(href(path, &[("days", Some(d.to_string()))])) aria-current=[(d == days).then_some("page")] { (d) " days" }
            }
        }
    }
}

fn svg(c: &Chart<'_>) -> Markup {
    html! { figure.chart { (PreEscaped(chart::line_chart(c))) } }
}

fn span(days: u32, now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    (now - Duration::days(i64::from(days)), now)
}

/// Temperature and every error counter that is not zero throughout, one series per
/// (`label`, counter).
fn drive_series(drives: &[(String, &[DrivePoint])]) -> (Vec<Series>, Vec<Series>) {
    let mut temperature = Vec::new();
    let mut counters = Vec::new();
    for (label, points) in drives {
        let t: Vec<(DateTime<Utc>, f64)> = points
            .iter()
            .filter_map(|p| p.temperature_celsius.map(|c| (p.at, c as f64)))
            .collect();
        if !t.is_empty() {
            temperature.push(Series {
                name: label.clone(),
                points: t,
                dashed: false,
            });
        }
        for name in DRIVE_COUNTERS {
            let v: Vec<(DateTime<Utc>, f64)> = points
                .iter()
                .filter_map(|p| {
                    p.counters
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map(|(_, v)| (p.at, *v as f64))
                })
                .collect();
            if v.iter().any(|(_, x)| *x != 0.0) {
                counters.push(Series {
                    name: if drives.len() > 1 {
                        format!("{label}: {name}")
                    } else {
                        name.to_owned()
                    },
                    points: v,
                    dashed: false,
                });
            }
        }
    }
    (temperature, counters)
}

/// The least-squares trend of the last points of a filesystem's use, as a dashed line from its
/// newest point to when it would be full (or the chart's edge, if later than a period away).
fn fill_forecast(points: &[Pair], days: u32) -> Option<(Series, f64)> {
    let recent = &points[points.len().saturating_sub(7)..];
    let (last_at, last_used, total) = *recent.last()?;
    if recent.len() < 3 || total <= 0 {
        return None;
    }
    let t0 = recent[0].0;
    let xs: Vec<f64> = recent
        .iter()
        .map(|p| (p.0 - t0).num_seconds() as f64 / 86_400.0)
        .collect();
    let ys: Vec<f64> = recent.iter().map(|p| p.1 as f64).collect();
    let n = xs.len() as f64;
    let mx = xs.iter().sum::<f64>() / n;
    let my = ys.iter().sum::<f64>() / n;
    let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let slope = xs
        .iter()
        .zip(&ys)
        .map(|(x, y)| (x - mx) * (y - my))
        .sum::<f64>()
        / sxx;
    if !slope.is_finite() || slope <= 0.0 {
        return None;
    }
    let days_to_full = (total as f64 - last_used as f64) / slope;
    if !days_to_full.is_finite() || days_to_full < 0.0 {
        return None;
    }
    let shown = days_to_full.min(f64::from(days.max(7)));
    let end = last_at + Duration::seconds((shown * 86_400.0) as i64);
    let pct = |used: f64| used * 100.0 / total as f64;
    let series = Series {
        name: "forecast".into(),
        points: vec![
            (last_at, pct(last_used as f64)),
            (end, pct(last_used as f64 + slope * shown)),
        ],
        dashed: true,
    };
    Some((series, days_to_full))
}

/// Rises of a counter between reports; a counter that went down was reset and counts from 0.
fn rises(points: &[(DateTime<Utc>, i64)]) -> Vec<(DateTime<Utc>, f64)> {
    points
        .windows(2)
        .map(|w| {
            let (prev, now) = (w[0].1, w[1].1);
            let rise = if now >= prev {
                now.saturating_sub(prev)
            } else {
                now
            };
            (w[1].0, rise as f64)
        })
        .collect()
}

/// `/appliances/{serial}`: one appliance, what is wrong with it, and its history in charts.
pub fn appliance(a: &ApplianceView) -> String {
    let now = Utc::now();
    let r = &a.row;
    let path = appliance_path(&r.serial);
    let (from, to) = span(a.days, now);
    let labelled: Vec<(String, &[DrivePoint])> = a
        .history
        .drives
        .iter()
        .map(|(key, points)| {
            let label = a
                .drives
                .iter()
                .find(|d| &d.key == key)
                .map_or_else(|| key.clone(), |d| d.device_name.clone());
            (label, points.as_slice())
        })
        .collect();
    let (temperature, counters) = drive_series(&labelled);
    let mut fs_series = Vec::new();
    let mut forecasts = Vec::new();
    for (mount, points) in &a.history.filesystems {
        fs_series.push(Series {
            name: mount.clone(),
            points: points
                .iter()
                .filter(|p| p.2 > 0)
                .map(|p| (p.0, p.1 as f64 * 100.0 / p.2 as f64))
                .collect(),
            dashed: false,
        });
        if let Some((mut f, days_left)) = fill_forecast(points, a.days) {
            f.name = format!("{mount} forecast");
            forecasts.push((mount.clone(), days_left));
            fs_series.push(f);
        }
    }
    let fs_to = fs_series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .max()
        .map_or(to, |t| t.max(to));
    let mut nic_series = Vec::new();
    for (name, points) in &a.history.nics {
        let errors: Vec<(DateTime<Utc>, i64)> = points.iter().map(|p| (p.0, p.1)).collect();
        let drops: Vec<(DateTime<Utc>, i64)> = points.iter().map(|p| (p.0, p.2)).collect();
        nic_series.push(Series {
            name: format!("{name} errors"),
            points: rises(&errors),
            dashed: false,
        });
        nic_series.push(Series {
            name: format!("{name} drops"),
            points: rises(&drops),
            dashed: false,
        });
    }
    let body = html! {
        p { a href="/appliances" { "← appliances" } }
        h1.serial { (r.serial) }
        p #health { (health_badge(r.health))
            @if r.silent { " " strong.critical #silent { "silent: overdue" } }
            " " span.badge.lifecycle #lifecycle data-lifecycle=(r.lifecycle) { (lifecycle_label(&r.lifecycle)) }
        }
        @if let Some(l) = &a.lifecycle_detail {
            p #lifecycle-detail {
                "Set to " strong { (lifecycle_label(&l.state)) }
                @if let Some(until) = l.until { " until " (stamp(until)) }
                " by " (l.changed_by) " " (time(l.changed_at, now))
                @if !l.note.is_empty() { ": " (short(&l.note, 200)) }
            }
        }
        div.scroll { table #state { tbody {
            tr { th { "Hostname" } td { (opt(r.hostname.as_deref())) } }
            tr { th { "Last report" } td { (time(r.last_report_at, now)) " (" (stamp(r.last_report_at)) ")" } }
            tr { th { "App" } td { span class=(status_class(&r.app_status)) { (r.app_status) } " · version " (opt(r.app_version.as_deref())) } }
            tr { th { "OS" } td { (opt(r.os.as_deref())) " · kernel " (opt(a.kernel.as_deref())) } }
            tr { th { "Collector" } td { (a.collector_version)
                @if a.collection_errors > 0 {
                    " · " span.warning { (a.collection_errors) " collection error" @if a.collection_errors != 1 { "s" } " in the last report" }
                } } }
            tr { th { "Reports" } td { (count(r.report_count)) } }
            @if !a.labels.is_empty() {
                tr #labels { th { "Labels" } td {
                    @for (i, (name, value)) in a.labels.iter().enumerate() {
                        @if i > 0 { " · " }
                        a href=(href("/appliances", &[("label", Some(format!("{name}:{value}")))])) { code { (name) "=" (value) } }
                    }
                } }
            }
            @if let Some(c) = &a.certificate {
                tr #certificate { th { "Certificate" } td { (certificate(c, now)) } }
            }
            tr { th { "JSON" } td { a href={ "/api/v1" (path) "?days=" (a.days) } { "this appliance's state and history" } } }
        } } }
        h2 { "Alerts" }
        @for m in &a.mutes {
            p.muted.mute #mute { "Muted: "
                @match &m.rule { Some(r) => { code { (r) } }, None => { "every rule" } }
                " until " (stamp(m.until)) " by " (m.by)
                @if !m.note.is_empty() { ": " (short(&m.note, 200)) }
            }
        }
        @if !a.acks.is_empty() {
            div.scroll { table #acks {
                caption { "Acknowledged (quiet until worse)" }
                thead { tr { th { "Rule" } th { "Subject" } th { "As acknowledged" } th { "By" } th { "When" } th { "Note" } } }
                tbody { @for k in &a.acks {
                    tr { td { (k.rule) } td { (k.subject) } td { span class=(verdict_class(&k.severity)) { (k.severity) } " " (short(&k.value, 200)) }
                         td { (k.by) } td { (time(k.at, now)) } td { (short(&k.note, 200)) } }
                } }
            } }
        }
        @if a.alerts.is_empty() {
            p #alerts.muted { "No alerts." }
        } @else {
            (table("alerts", &["Severity", "Rule", "Subject", "State", "Since", "Resolved", "Summary"], alert_rows(&a.alerts, now, false)))
        }
        h2 { "Operator actions" }
        @if a.audit.is_empty() {
            p #audit.muted { "No operator has changed this appliance." }
        } @else {
            (audit_table(&a.audit, now))
            p { a href=(href("/audit", &[("target", Some(r.serial.clone()))])) { "All of this appliance's audit rows →" } }
        }
        h2 { "History" }
        (periods(&path, a.days))
        section #charts {
            h3 { "Drive temperature" }
            (svg(&Chart { id: "temperature", title: "Drive temperature", unit: "°C", series: temperature, from, to, y_from_zero: false }))
            h3 { "Drive error counters" }
            @if counters.is_empty() {
                p.muted #chart-counters-none { "Every error counter stayed at zero in this period." }
            } @else {
                (svg(&Chart { id: "counters", title: "Drive error counters", unit: "", series: counters, from, to, y_from_zero: true }))
            }
            h3 { "Filesystem use" }
            (svg(&Chart { id: "filesystems", title: "Filesystem use", unit: "%", series: fs_series, from, to: fs_to, y_from_zero: true }))
            @for (mount, days_left) in &forecasts {
                p.forecast { (mount) ": full in about " (format!("{days_left:.0}")) " days at the recent rate" }
            }
            h3 { "NIC errors and drops per report" }
            (svg(&Chart { id: "nics", title: "NIC errors and drops per report", unit: "", series: nic_series, from, to, y_from_zero: true }))
        }
        h2 { "Drives" }
        @if a.drives.is_empty() {
            p #drives.muted { "No drives reported." }
        } @else {
            (table("drives", &["Device", "Drive", "Model", "Serial", "Health", "Temperature", "Power-on hours", "Error counters", "Since"], html! {
                @for d in &a.drives {
                    tr.drive {
                        td { (d.device_name) }
                        td.key { a href=(drive_path(&d.key)) { (short(&d.key, 64)) } }
                        td { (opt(d.model.as_deref())) }
                        td { (opt(d.serial.as_deref())) }
                        td { @match (d.failing, d.health_passed) {
                            (true, _) => span.critical { "failing" },
                            (false, Some(false)) => span.critical { "SMART failed" },
                            (false, Some(true)) => span.ok { "passed" },
                            (false, None) => span.unknown { "unknown" },
                        } }
                        td.num { @if let Some(t) = d.temperature_celsius { (t) " °C" } @else { "—" } }
                        td.num { @if let Some(h) = d.power_on_hours { (count(h)) } @else { "—" } }
                        td { @if d.counters.is_empty() { "—" } @else {
                            @for (i, (n, v)) in d.counters.iter().enumerate() { @if i > 0 { ", " } (n) " " (count(*v)) }
                        } }
                        td { (time(d.since, now)) }
                    }
                }
            }))
        }
        h2 { "Filesystems" }
        @if a.filesystems.is_empty() {
            p #filesystems.muted { "No filesystems reported." }
        } @else {
            (table("filesystems", &["Mount point", "Size", "Used", "Inodes used"], html! {
                @for f in &a.filesystems {
                    tr.filesystem {
                        td { (f.mount_point) }
                        td.num { (bytes(f.bytes_total)) }
                        td.num { (percent(f.bytes_used, f.bytes_total)) }
                        td.num { (percent(f.inodes_used, f.inodes_total)) }
                    }
                }
            }))
        }
        h2 { "Network interfaces" }
        @if a.nics.is_empty() {
            p #nics.muted { "No network interfaces reported." }
        } @else {
            (table("nics", &["Interface", "RX errors", "TX errors", "RX dropped", "TX dropped"], html! {
                @for n in &a.nics {
                    tr.nic {
                        td { (n.name) }
                        @for v in [n.rx_errors, n.tx_errors, n.rx_dropped, n.tx_dropped] {
                            td.num { @if let Some(v) = v { (count(v)) } @else { "—" } }
                        }
                    }
                }
            }))
        }
        h2 { "Changes" }
        @if a.events.is_empty() {
            p #events.muted { "No changes recorded." }
        } @else {
            (table("events", &["When", "What", "Detail"], html! {
                @for e in &a.events {
                    tr.event {
                        td { (time(e.at, now)) }
                        td { (event_kind(&e.kind)) }
                        td { (event_detail(e)) }
                    }
                }
            }))
        }
    };
    layout(&r.serial, Nav::Appliances, body)
}

fn event_kind(k: &EventKind) -> String {
    match k {
        EventKind::Version(component) => format!("{component} version"),
        EventKind::Drive(kind) => format!("drive {kind}"),
        EventKind::Identity(kind) => match kind.as_str() {
            "system_uuid_changed" => "system UUID changed".into(),
            "machine_id_changed" => "machine-id changed".into(),
            "system_uuid_shared" => "system UUID shared".into(),
            "machine_id_shared" => "machine-id shared".into(),
            other => other.replace('_', " "),
        },
    }
}

fn event_detail(e: &EventView) -> Markup {
    let none = || "none".to_owned();
    html! {
        @match &e.kind {
            EventKind::Version(_) => {
                (e.old.clone().unwrap_or_else(none)) " → " (e.new.clone().unwrap_or_else(none))
            }
            EventKind::Drive(_) => {
                @if let Some(key) = &e.other { a href=(drive_path(key)) { (short(key, 64)) } }
                @if let Some(dev) = &e.new { " (" (dev) ")" }
                @if let Some(from) = &e.old { " from appliance " a href=(appliance_path(from)) { (short(from, 64)) } }
            }
            EventKind::Identity(_) => {
                @match (&e.old, &e.other) {
                    (Some(old), _) => { (old) " → " (e.new.clone().unwrap_or_else(none)) }
                    (None, Some(other)) => {
                        (e.new.clone().unwrap_or_else(none)) " also reported by "
                        a href=(appliance_path(other)) { (short(other, 64)) }
                    }
                    (None, None) => { (e.new.clone().unwrap_or_else(none)) }
                }
            }
        }
    }
}

/// `/drives/{key}`: one drive's evidence, where it sat, and its history.
pub fn drive(d: &DriveDetail) -> String {
    let now = Utc::now();
    let r = &d.row;
    let path = drive_path(&r.key);
    let (from, to) = span(d.days, now);
    let (temperature, counters) = drive_series(&[(short(&r.key, 48), d.samples.as_slice())]);
    let body = html! {
        p { a href="/drives" { "← drives" } }
        h1.key { (r.key) }
        p #health { (health_badge(r.health)) " " (drive_firing(r)) }
        div.scroll { table #facts { tbody {
            tr { th { "Model" } td { (opt(r.model.as_deref())) } }
            tr { th { "Serial" } td { (opt(r.serial.as_deref())) } }
            tr { th { "WWN" } td { (opt(d.wwn.as_deref())) } }
            tr { th { "Firmware" } td { (opt(r.firmware.as_deref())) } }
            tr { th { "Protocol" } td { (opt(r.protocol.as_deref())) } }
            tr { th { "Capacity" } td { @if let Some(c) = r.capacity_bytes { (bytes(c)) } @else { "—" } } }
            tr { th { "First seen" } td { (time(r.first_seen_at, now)) } }
            tr { th { "Now in" } td {
                @if let Some(s) = &r.appliance { a href=(appliance_path(s)) { (s) } " as " (opt(r.device_name.as_deref())) } @else { "no appliance" }
            } }
            tr { th { "JSON" } td { a href={ "/api/v1" (path) "?days=" (d.days) } { "this drive" } } }
        } } }
        h2 { "Alerts" }
        @if d.alerts.is_empty() {
            p #alerts.muted { "No alerts." }
        } @else {
            (table("alerts", &ALERT_HEADERS, alert_rows(&d.alerts, now, true)))
        }
        h2 { "History" }
        (periods(&path, d.days))
        section #charts {
            h3 { "Temperature" }
            (svg(&Chart { id: "temperature", title: "Temperature", unit: "°C", series: temperature, from, to, y_from_zero: false }))
            h3 { "Error counters" }
            @if counters.is_empty() {
                p.muted #chart-counters-none { "Every error counter stayed at zero in this period." }
            } @else {
                (svg(&Chart { id: "counters", title: "Error counters", unit: "", series: counters, from, to, y_from_zero: true }))
            }
        }
        h2 { "SMART" }
        @if let Some(s) = &d.smart {
            p.muted { "From the report of "
                @if let Some(at) = s.collected_at { (time(at, now)) } @else { "an unknown time" }
                " · overall health "
                @match s.health_passed { Some(true) => span.ok { "passed" }, Some(false) => span.critical { "FAILED" }, None => span.unknown { "not given" } }
                @if let Some(t) = s.temperature_celsius { " · " (t) " °C" }
                @if let Some(h) = s.power_on_hours { " · " (h) " power-on hours" }
            }
            p #verdict { "Verdict: " span class={ "badge " (verdict_class(&s.verdict)) } data-verdict=(s.verdict) { (s.verdict) } }
            @if !s.reasons.is_empty() {
                ul #reasons {
                    @for (level, text) in &s.reasons {
                        li class=(verdict_class(level)) data-level=(level) { (text) }
                    }
                }
            }
            @if !s.attributes.is_empty() {
                (table("attributes", &["ID", "Attribute", "Value", "Worst", "Threshold", "Raw", "Failed"], html! {
                    @for at in &s.attributes {
                        tr class=(if at.when_failed.as_deref().is_some_and(|w| !w.is_empty()) { "attribute failing" } else { "attribute" }) {
                            td.num { (at.id) }
                            td { (at.name) }
                            td.num { (num(at.value)) }
                            td.num { (num(at.worst)) }
                            td.num { (num(at.threshold)) }
                            td.num { (opt(at.raw.as_deref())) }
                            td { (opt(at.when_failed.as_deref().filter(|w| !w.is_empty()))) }
                        }
                    }
                }))
            }
            @if !s.nvme.is_empty() {
                h3 { "NVMe health log" }
                (table("nvme", &["Field", "Value"], html! {
                    @for (k, v) in &s.nvme { tr { td { (k) } td { (v) } } }
                }))
            }
            @if let Some(l) = &s.self_tests {
                h3 { "Self-tests" }
                p #self-tests { (l.count) " in the log" }
                @if !l.newest.is_empty() { ul { @for e in &l.newest { li { (e) } } } }
            }
            @if let Some(l) = &s.error_log {
                h3 { "Error log" }
                p #error-log { (l.count) " errors logged" }
                @if !l.newest.is_empty() { ul { @for e in &l.newest { li { (e) } } } }
            }
        } @else {
            p.muted #smart-none { "The newest report holding this drive is not kept, or said nothing about SMART." }
        }
        h2 { "Where it sat" }
        (table("placements", &["Appliance", "Device", "From", "Until"], html! {
            @for p in &d.placements {
                tr.placement {
                    td.serial { a href=(appliance_path(&p.serial)) { (short(&p.serial, 64)) } }
                    td { (p.device_name) }
                    td { (stamp(p.from)) }
                    td { @if let Some(u) = p.until { (stamp(u)) } @else { "now" } }
                }
            }
        }))
    };
    layout(&r.key, Nav::Drives, body)
}

fn num(v: Option<u16>) -> String {
    v.map_or_else(|| "—".into(), |n| n.to_string())
}

/// `/versions`: who runs what, adoption over time, and whether a new release is worse.
fn afr_cell(a: Option<crate::reliability::Afr>) -> Markup {
    html! {
        @match a {
            Some(a) => { (format!("{:.2} %", a.percent)) " " small.muted { (format!("({:.2}–{:.2})", a.low, a.high)) } }
            None => { span.muted { "too few drive-days" } }
        }
    }
}

/// What the fleet's own drives say: failure rates per model and firmware, the predictive
/// attributes, and the drives to replace first.
pub fn reliability(r: Option<&crate::reliability::Reliability>) -> String {
    let now = Utc::now();
    let body = html! {
        h1 { "Drive reliability" }
        @match r {
            None => {
                p #not-yet.muted { "Not computed yet: maintenance computes it from the fleet's drives every run (hourly by default)." }
            }
            Some(r) => {
                p.muted #as-of { "Computed " (time(r.computed_at, now)) " from "
                    (count(r.fleet.drives)) " drives, " (format!("{:.0}", r.fleet.drive_days)) " drive-days, "
                    (count(r.fleet.failures)) " failed (a disk_failing alert, or removed within a day of a warning). "
                    "Annualised failure rate = failures / drive-days × 365, with its 95 % interval; models under "
                    (format!("{:.0}", crate::reliability::MIN_DRIVE_DAYS)) " drive-days get none." }
                p #fleet-afr { "Fleet: " (afr_cell(r.fleet_afr)) }
                h2 { "Replace soon" }
                @if r.replace_soon.is_empty() {
                    p.muted #replace-soon { "No drive in service shows a predictive attribute." }
                } @else {
                    (table("replace-soon", &["Drive", "Model", "Appliance", "Non-zero", "Risk / year"], html! {
                        @for d in &r.replace_soon {
                            tr {
                                td { a href=(crate::drive_path(&d.drive.drive_key)) { (d.drive.serial.as_deref().unwrap_or(&d.drive.drive_key)) } }
                                td { (d.drive.model) }
                                td { a href=(crate::appliance_path(&d.drive.appliance)) { (d.drive.appliance) } }
                                td { (d.drive.nonzero.join(", ")) }
                                td.num { (format!("{:.1} %", d.risk_percent)) }
                            }
                        }
                    }))
                }
                h2 { "By model and firmware" }
                (table("models", &["Model", "Firmware", "Drives", "Drive-days", "Failed", "AFR (95 %)"], html! {
                    @for m in &r.models {
                        tr class=(if m.counts.firmware.is_none() { "model" } else { "firmware" }) {
                            td { (m.counts.model) }
                            td { (m.counts.firmware.as_deref().unwrap_or("all")) }
                            td.num { (count(m.counts.drives)) }
                            td.num { (format!("{:.0}", m.counts.drive_days)) }
                            td.num { (count(m.counts.failures)) }
                            td { (afr_cell(m.afr)) }
                        }
                    }
                }))
                h2 { "Predictive attributes" }
                p.muted { "Drives whose latest value was non-zero against those at zero (Backblaze found these predict failure)." }
                (table("attributes", &["Attribute", "Non-zero: drives", "AFR", "Zero: drives", "AFR", "Ratio"], html! {
                    @for a in &r.attributes {
                        tr {
                            td { (a.attribute) }
                            td.num { (count(a.nonzero.drives)) }
                            td { (afr_cell(a.nonzero_afr)) }
                            td.num { (count(a.zero.drives)) }
                            td { (afr_cell(a.zero_afr)) }
                            td.num { @match a.ratio { Some(x) => { (format!("{x:.1}×")) }, None => { "—" } } }
                        }
                    }
                }))
            }
        }
    };
    layout("Drive reliability", Nav::Reliability, body)
}

pub fn versions(v: &Versions) -> String {
    let now = Utc::now();
    let body = html! {
        h1 { "Versions" }
        p.muted #as-of { "Counts as of " (time(v.as_of, now))
            @if let Some(m) = &v.minimum_app_version { " · minimum app version " strong #minimum { (m) } }
        }
        @for c in &v.components {
            @let total: i64 = c.versions.iter().map(|x| x.appliances).sum();
            @let filter = match c.component.as_str() { "app" => "app_version", "os" => "os", _ => "" };
            section id={ "component-" (c.component) } {
                h2 { (match c.component.as_str() { "app" => "Application", "os" => "Operating system", "kernel" => "Kernel", "collector" => "Collector", other => other }) }
                (version_table(&format!("versions-{}", c.component), filter, &c.versions, total))
                @let below: Vec<&VersionCount> = c.versions.iter().filter(|x| x.below_minimum).collect();
                @if !below.is_empty() {
                    p.warning #below-minimum { (count(below.iter().map(|x| x.appliances).sum())) " appliances run a version below the minimum: "
                        @for (i, b) in below.iter().enumerate() {
                            @if i > 0 { ", " }
                            a href=(href("/appliances", &[("app_version", Some(b.version.clone()))])) { (short(&b.version, 48)) }
                        }
                    }
                }
                @if !c.adoption.is_empty() {
                    @let first = c.adoption.iter().map(|p| p.day).min();
                    @let series = adoption_series(&c.adoption);
                    (svg(&Chart {
                        id: &format!("adoption-{}", c.component),
                        title: "Appliances per version",
                        unit: "",
                        series,
                        from: first.and_then(|d| d.and_hms_opt(0, 0, 0)).map_or(now, |d| d.and_utc()),
                        to: now,
                        y_from_zero: true,
                    }))
                }
            }
        }
    };
    layout("Versions", Nav::Versions, body)
}

fn adoption_series(points: &[AdoptionPoint]) -> Vec<Series> {
    let mut out: Vec<Series> = Vec::new();
    for p in points {
        let at = p
            .day
            .and_hms_opt(12, 0, 0)
            .map_or_else(Utc::now, |d| d.and_utc());
        let name = if p.version.is_empty() {
            "(none)".to_owned()
        } else {
            short(&p.version, 48)
        };
        match out.iter_mut().find(|s| s.name == name) {
            Some(s) => s.points.push((at, p.appliances as f64)),
            None => out.push(Series {
                name,
                points: vec![(at, p.appliances as f64)],
                dashed: false,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filesystem_growing_a_percent_a_day_is_forecast_full() {
        let now = Utc::now();
        let points: Vec<Pair> = (0..7)
            .map(|d| (now - Duration::days(6 - d), 80 + d, 100))
            .collect();
        let (series, days) = fill_forecast(&points, 30).expect("a forecast");
        assert!((days - 14.0).abs() < 0.01, "{days}");
        assert!(series.dashed);
        assert_eq!(series.points.len(), 2);
        assert!((series.points[1].1 - 100.0).abs() < 0.01);
        let flat: Vec<_> = points.iter().map(|p| (p.0, 50, 100)).collect();
        assert!(fill_forecast(&flat, 30).is_none(), "no growth, no forecast");
    }

    #[test]
    fn a_counter_reset_is_a_rise_from_zero() {
        let now = Utc::now();
        let r = rises(&[(now, 10), (now, 25), (now, 3), (now, i64::MAX), (now, 0)]);
        let v: Vec<f64> = r.iter().map(|p| p.1).collect();
        assert_eq!(v, vec![15.0, 3.0, (i64::MAX - 3) as f64, 0.0]);
    }
}
