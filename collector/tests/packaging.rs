//! The shipped systemd units and cron file: valid for systemd's own checker, scheduled as the
//! issue asks, and invoking the collector with flags it accepts.

use std::path::{Path, PathBuf};
use std::process::Command;

fn packaging(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packaging")
        .join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(packaging(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The collector arguments of an `ExecStart=` or cron line (everything after the binary).
fn collector_args(line: &str) -> Vec<String> {
    let command = line.split(" 2>&1").next().unwrap_or(line);
    let mut words = command
        .split_whitespace()
        .skip_while(|w| !w.ends_with("/phonehome-collector"));
    words
        .next()
        .expect("the line runs /usr/local/bin/phonehome-collector");
    words.map(str::to_owned).collect()
}

#[test]
fn systemd_analyze_accepts_the_units() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let binary = env!("CARGO_BIN_EXE_phonehome-collector");
    // systemd checks that ExecStart's program exists: point it at the binary under test.
    let service =
        read("phonehome-collector.service").replace("/usr/local/bin/phonehome-collector", binary);
    std::fs::write(dir.path().join("phonehome-collector.service"), service)
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        dir.path().join("phonehome-collector.timer"),
        read("phonehome-collector.timer"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("phonehome-collector.service"))
        .arg(dir.path().join("phonehome-collector.timer"))
        .output()
        .unwrap_or_else(|e| {
            panic!("systemd-analyze is needed for this test (apt-get install -y systemd): {e}")
        });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("phonehome")).collect();
    assert!(ours.is_empty(), "systemd-analyze complains: {ours:#?}");
}

#[test]
fn the_timer_runs_daily_spread_out_and_catches_up() {
    let timer = read("phonehome-collector.timer");
    for line in [
        "OnCalendar=daily",
        "Persistent=true",
        "WantedBy=timers.target",
    ] {
        assert!(
            timer.lines().any(|l| l.trim() == line),
            "timer lacks {line}"
        );
    }
    assert!(
        timer.lines().any(|l| l.starts_with("RandomizedDelaySec=")),
        "timer lacks RandomizedDelaySec"
    );
}

#[test]
fn the_service_and_cron_lines_use_flags_the_collector_accepts() {
    let service = read("phonehome-collector.service");
    let exec = service
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart line");
    let cron = read("phonehome-collector.cron");
    let cron_line = cron
        .lines()
        .find(|l| l.contains("phonehome-collector run"))
        .expect("cron line");
    assert!(
        cron_line.split_whitespace().nth(5) == Some("root"),
        "cron.d lines name the user"
    );
    for line in [exec, cron_line] {
        let mut args = collector_args(line);
        // Same flags, but a configuration that does not exist: a usage error would exit 2, a
        // flag set the collector accepts gets as far as reading the configuration (78).
        let config = args.iter().position(|a| a == "--config").expect("--config") + 1;
        args[config] = "/nonexistent/phonehome/collector.toml".into();
        let out = Command::new(env!("CARGO_BIN_EXE_phonehome-collector"))
            .args(&args)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{line}: {stderr}");
        assert!(
            stderr.contains("/nonexistent/phonehome/collector.toml"),
            "{stderr}"
        );
    }
}

/// The commands of a shell script or of an rpm spec's scriptlets, without comments and blank
/// lines (a spec's preamble and `%files` are not commands, but hold no `systemctl` either).
fn commands(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// What a maintainer script may ask of systemd: reload its view, stop and disable on removal,
/// restart what was already running. Starting or enabling a unit would run the collector before
/// the appliance has its certificate.
fn assert_starts_nothing(name: &str, text: &str) {
    for line in commands(text) {
        let words: Vec<&str> = line.split_whitespace().collect();
        // The tool run, not looked up (`command -v deb-systemd-helper`).
        let Some(at) = (0..words.len()).find(|&i| {
            matches!(
                words[i],
                "systemctl" | "deb-systemd-invoke" | "deb-systemd-helper"
            ) && (i == 0 || words[i - 1] != "-v")
        }) else {
            continue;
        };
        let verb = words[at + 1..]
            .iter()
            .find(|w| !w.starts_with("--"))
            .unwrap_or_else(|| panic!("{name}: no verb in {line:?}"));
        assert!(
            matches!(
                *verb,
                "daemon-reload"
                    | "stop"
                    | "disable"
                    | "try-restart"
                    | "is-active"
                    | "is-enabled"
                    // deb-systemd-helper: record the unit's state, forget it on purge.
                    | "update-state"
                    | "purge"
            ),
            "{name}: {line:?} may start or enable a unit"
        );
    }
}

#[test]
fn the_maintainer_scripts_start_and_enable_nothing() {
    for script in ["deb/postinst", "deb/prerm", "deb/postrm"] {
        assert_starts_nothing(script, &read(script));
    }
    assert_starts_nothing(
        "rpm/phonehome-collector.spec",
        &read("rpm/phonehome-collector.spec"),
    );
    // The checker itself: it would catch what it is for.
    let caught = std::panic::catch_unwind(|| {
        assert_starts_nothing(
            "example",
            "systemctl --now enable phonehome-collector.timer",
        )
    });
    assert!(caught.is_err());
}

#[test]
fn the_packages_mark_the_configuration_as_such() {
    // dpkg: package.sh lists every file under /etc in conffiles. rpm: the spec says so.
    let spec = read("rpm/phonehome-collector.spec");
    for file in [
        "/etc/phonehome/collector.toml",
        "/etc/cron.d/phonehome-collector",
    ] {
        assert!(
            spec.lines()
                .any(|l| l.trim() == format!("%config(noreplace) {file}")),
            "{file} is not %config(noreplace) in the spec"
        );
    }
}
