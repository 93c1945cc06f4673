#!/usr/bin/env python3
"""Times every dashboard page and API call against a running ingest, as an operator's browser
would ask for them (one at a time, warm), and prints p50/p95/max and the page weight.

Usage: bench_pages.py OPS_URL DATABASE_URL [--requests N] [--explain]

The database URL is used only to pick realistic parameters (a serial halfway through the fleet
for a deep page, the most common model, a drive that is failing); every timed request goes to
the ingest over HTTP. With --explain it also prints PostgreSQL's plans for the list queries.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def sql(db, query):
    out = subprocess.run(
        ["psql", db, "-At", "-c", query], check=True, capture_output=True, text=True
    ).stdout.strip()
    return out.splitlines()[0] if out else ""


def fetch(url):
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            body = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        # A refused page is reported in the table, not a crash of the whole run.
        body, status = e.read(), e.code
    return time.perf_counter() - started, len(body), status


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ops_url")
    parser.add_argument("database_url")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--explain", action="store_true")
    opts = parser.parse_args()
    base, db, n = opts.ops_url.rstrip("/"), opts.database_url, opts.requests
    q = urllib.parse.quote

    mid = sql(db, "SELECT serial FROM appliances ORDER BY serial OFFSET (SELECT count(*) / 2 FROM appliances) LIMIT 1")
    # The list's cursor holds the minute appliance_seen keeps (migration 18).
    mid_time = sql(db, f"SELECT to_char(reported_minute AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM appliance_seen WHERE serial = '{mid}'")
    ok_mid = sql(db, "SELECT serial FROM appliances WHERE health = 0 ORDER BY serial OFFSET (SELECT count(*) / 2 FROM appliances WHERE health = 0) LIMIT 1")
    busiest = sql(db, "SELECT serial FROM appliances ORDER BY report_count DESC, serial LIMIT 1")
    critical = sql(db, "SELECT serial FROM appliances ORDER BY health DESC, serial LIMIT 1") or busiest
    version = sql(db, "SELECT app_version FROM appliances GROUP BY 1 ORDER BY count(*) DESC LIMIT 1")
    old_version = sql(db, "SELECT app_version FROM appliances GROUP BY 1 ORDER BY count(*) LIMIT 1")
    os_name = sql(db, "SELECT os_pretty_name FROM appliances GROUP BY 1 ORDER BY count(*) DESC LIMIT 1")
    model = sql(db, "SELECT model FROM drives GROUP BY 1 ORDER BY count(*) DESC LIMIT 1")
    rare_model = sql(db, "SELECT model FROM drives GROUP BY 1 ORDER BY count(*) LIMIT 1")
    firmware = sql(db, "SELECT firmware FROM drives GROUP BY 1 ORDER BY count(*) DESC LIMIT 1")
    drive = sql(db, "SELECT drive_key FROM drives ORDER BY health DESC, id LIMIT 1")
    mid_drive = sql(db, "SELECT drive_key FROM drives WHERE health = 0 ORDER BY drive_key OFFSET (SELECT count(*) / 2 FROM drives) LIMIT 1")
    alert_id = sql(db, "SELECT id FROM alerts WHERE state = 'resolved' ORDER BY id OFFSET (SELECT count(*) / 2 FROM alerts WHERE state = 'resolved') LIMIT 1") or "1"
    prefix = mid[: max(1, len(mid) - 2)]
    # A prefix whose matches sit at the far end of the serial order: a walk in serial order
    # passes everyone before them.
    last = sql(db, "SELECT max(serial) FROM appliances")
    far_prefix = last[: max(1, len(last) - 4)]

    fleet = [
        ("summary", "/"),
        ("summary JSON", "/api/v1/summary"),
        ("appliances", "/appliances"),
        ("appliances, middle page", f"/appliances?after={q(mid)}"),
        ("appliances sort=health", "/appliances?sort=health"),
        ("appliances sort=health, middle of ok", f"/appliances?sort=health&after=ok~{q(ok_mid)}"),
        ("appliances sort=last_report", "/appliances?sort=last_report"),
        ("appliances sort=oldest, middle", f"/appliances?sort=oldest&after={q(mid_time)}~{q(mid)}"),
        ("appliances health=critical", "/appliances?health=critical"),
        ("appliances health=ok", "/appliances?health=ok"),
        ("appliances silent=true", "/appliances?silent=true"),
        ("appliances rule=disk_failing", "/appliances?rule=disk_failing"),
        ("appliances rule=filesystem_full", "/appliances?rule=filesystem_full"),
        ("appliances app_version (most common)", f"/appliances?app_version={q(version)}"),
        ("appliances app_version (rarest)", f"/appliances?app_version={q(old_version)}"),
        ("appliances os", f"/appliances?os={q(os_name)}"),
        ("appliances drive_model (most common)", f"/appliances?drive_model={q(model)}"),
        ("appliances drive_model (rarest)", f"/appliances?drive_model={q(rare_model)}"),
        ("appliances status=degraded", "/appliances?status=degraded"),
        ("appliances q=prefix", f"/appliances?q={q(prefix)}"),
        ("appliances q=one letter", f"/appliances?q={q(mid[:1])}"),
        ("appliances q=prefix at the far end", f"/appliances?q={q(far_prefix)}"),
        ("appliances q=prefix at the far end, health=ok", f"/appliances?q={q(far_prefix)}&health=ok"),
        ("appliances health=critical sort=oldest", "/appliances?health=critical&sort=oldest"),
        ("appliances JSON limit=500", "/api/v1/appliances?limit=500"),
        ("alerts", "/alerts"),
        ("alerts severity=warning", "/alerts?severity=warning"),
        ("alerts rule=appliance_silent", "/alerts?rule=appliance_silent"),
        ("alerts serial", f"/alerts?serial={q(critical)}&state=all"),
        ("alerts resolved", "/alerts?state=resolved"),
        ("alerts resolved, middle", f"/alerts?state=resolved&after={alert_id}"),
        ("alerts all", "/alerts?state=all"),
        ("alerts JSON", "/api/v1/alerts"),
        ("drives", "/drives"),
        ("drives, middle of ok", f"/drives?after=ok~{q(mid_drive)}"),
        ("drives health=critical", "/drives?health=critical"),
        ("drives model", f"/drives?model={q(model)}"),
        ("drives firmware", f"/drives?firmware={q(firmware)}"),
        ("drives protocol=NVMe", "/drives?protocol=NVMe"),
        ("drives JSON", "/api/v1/drives"),
        ("versions", "/versions"),
        ("versions JSON", "/api/v1/versions"),
        ("metrics", "/metrics"),
    ]
    one = [
        ("appliance page 30 d", f"/appliances/{q(busiest, safe='')}?days=30"),
        ("appliance page 365 d", f"/appliances/{q(busiest, safe='')}?days=365"),
        ("appliance JSON 30 d", f"/api/v1/appliances/{q(busiest, safe='')}?days=30"),
        ("appliance page (critical) 30 d", f"/appliances/{q(critical, safe='')}?days=30"),
        ("drive page 30 d", f"/drives/{q(drive, safe='')}?days=30"),
        ("drive page 365 d", f"/drives/{q(drive, safe='')}?days=365"),
        ("drive JSON 365 d", f"/api/v1/drives/{q(drive, safe='')}?days=365"),
    ]
    appliances = sql(db, "SELECT count(*) FROM appliances")
    reports = sql(db, "SELECT count(*) FROM reports")
    print(f"fleet: {appliances} appliances, {reports} reports; {n} requests per URL, one at a time")
    print(f"{'what':44} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'KB':>7}  status")
    worst = {"fleet": 0.0, "one": 0.0, "kb": 0.0}
    failed = []
    for group, items in (("fleet", fleet), ("one", one)):
        for name, path in items:
            url = base + path
            fetch(url)  # warm: the first view of a cold page is not what operators see all day
            times, size, status = [], 0, 0
            for _ in range(n):
                t, size, status = fetch(url)
                times.append(t * 1000)
            times.sort()
            p95 = times[min(len(times) - 1, int(round(0.95 * len(times))) - 1)]
            worst[group] = max(worst[group], p95)
            if status != 200:
                failed.append(name)
            worst["kb"] = max(worst["kb"], size / 1000)
            print(f"{name:44} {statistics.median(times):8.1f} {p95:8.1f} {times[-1]:8.1f} {size / 1000:7.1f}  {status}")
    if failed:
        print(f"NOT 200: {', '.join(failed)}")
    print(f"worst p95: fleet-wide {worst['fleet']:.1f} ms (target 100), one appliance or drive {worst['one']:.1f} ms (target 50); heaviest page {worst['kb']:.1f} KB (target 200)")

    if opts.explain:
        # The statements of ingest/src/storage/dashboard.rs, with the page's parameters inlined
        # and only the ordering columns selected (the row's other columns are per-row lookups).
        seen = "FROM appliances a JOIN appliance_seen s ON s.appliance_id = a.id"
        plans = [
            ("appliances, middle page", f"SELECT a.serial {seen} WHERE a.serial > '{mid}' ORDER BY a.serial LIMIT 51"),
            ("appliances sort=health, middle of ok", f"SELECT a.serial {seen} WHERE (3 - a.health, a.serial) > (3, '{ok_mid}') ORDER BY 3 - a.health, a.serial LIMIT 51"),
            ("appliances sort=oldest, middle", f"SELECT a.serial {seen} WHERE (s.reported_minute, s.serial) > ('{mid_time}', '{mid}') ORDER BY s.reported_minute, s.serial LIMIT 51"),
            ("appliances silent=true", f"SELECT a.serial {seen} WHERE s.reported_minute < date_trunc('minute', now() - interval '36 hours', 'UTC') ORDER BY a.serial LIMIT 51"),
            ("appliances rule=disk_failing", f"SELECT a.serial {seen} WHERE a.id IN (SELECT appliance_id FROM alerts WHERE state = 'firing' AND rule = 'disk_failing') ORDER BY a.serial LIMIT 51"),
            ("appliances drive_model (rarest)", f"SELECT a.serial {seen} WHERE a.id IN (SELECT m.appliance_id FROM drive_membership m JOIN drives dr ON dr.id = m.drive_id WHERE m.until_at IS NULL AND dr.model = '{rare_model}') ORDER BY a.serial LIMIT 51"),
            ("appliances q=prefix", f"SELECT a.serial {seen} WHERE (lower(s.serial) LIKE lower('{prefix}') || '%' OR lower(s.hostname) LIKE lower('{prefix}') || '%') ORDER BY s.serial LIMIT 51"),
            ("appliances app_version (rarest)", f"SELECT a.serial {seen} WHERE a.app_version = '{old_version}' ORDER BY a.serial LIMIT 51"),
            ("alerts (firing, by severity then age)", "SELECT al.id FROM alerts al JOIN appliances a ON a.id = al.appliance_id WHERE al.state = 'firing' ORDER BY 3 - phonehome_severity_rank(al.severity), al.started_at, al.id LIMIT 51"),
            ("alerts resolved, middle", f"SELECT al.id FROM alerts al JOIN appliances a ON a.id = al.appliance_id WHERE al.state = 'resolved' AND al.id < {alert_id} ORDER BY al.id DESC LIMIT 51"),
            ("drives, middle of ok", f"SELECT dr.drive_key FROM drives dr WHERE (3 - dr.health, dr.drive_key) > (3, '{mid_drive}') ORDER BY 3 - dr.health, dr.drive_key LIMIT 51"),
            ("drive readings, 365 d (the bodies of the drive's appliances)", f"SELECT r.collected_at FROM drive_membership m JOIN drives d ON d.id = m.drive_id CROSS JOIN LATERAL (SELECT collected_at, received_at, body, body_dictionary FROM reports WHERE appliance_id = m.appliance_id AND collected_at >= greatest(m.from_at, now() - interval '365 days') AND collected_at < coalesce(m.until_at, now() + interval '25 hours') ORDER BY collected_at DESC LIMIT 1465) r WHERE d.drive_key = '{drive}'"),
        ]
        for name, query in plans:
            print(f"\n-- {name}")
            out = subprocess.run(
                ["psql", db, "-At", "-c", "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) " + query],
                check=True, capture_output=True, text=True,
            ).stdout
            print(out.rstrip())


if __name__ == "__main__":
    main()
