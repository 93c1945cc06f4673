//! The ingest's systemd unit (`ingest/packaging/phonehome-ingest.service`, shipped in its
//! packages): valid for systemd's own checker, hardened as issue 16 asks, with an open-file limit
//! that fits the shipped configuration, and starting the ingest with flags it accepts.

use std::path::{Path, PathBuf};
use std::process::Command;

use phonehome_ingest::config::Config;

const BINARY: &str = "/usr/bin/phonehome-ingest";

fn manifest(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn unit() -> String {
    let path = manifest("packaging/phonehome-ingest.service");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every value of `key=` in the unit, in order.
fn values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
        .collect()
}

fn one(unit: &str, key: &str) -> String {
    let found = values(unit, key);
    assert_eq!(found.len(), 1, "{key}= should be set once: {found:?}");
    found[0].clone()
}

#[test]
fn systemd_analyze_accepts_the_unit() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // systemd checks that ExecStart's program exists: point it at the binary under test.
    let service = unit().replace(BINARY, env!("CARGO_BIN_EXE_phonehome-ingest"));
    let path = dir.path().join("phonehome-ingest.service");
    std::fs::write(&path, service).unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new("systemd-analyze")
        .arg("verify")
        // Documentation= names the man page the packages install, not present here.
        .arg("--man=no")
        .arg(&path)
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
fn the_unit_is_hardened_and_needs_its_configuration() {
    let unit = unit();
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
        ("User", "phonehome"),
        ("StateDirectory", "phonehome-ingest"),
        ("ConditionPathExists", "/etc/phonehome/ingest.toml"),
    ] {
        assert_eq!(one(&unit, key), value, "{key}");
    }
    // The user the unit runs as is the one the packages make.
    let sysusers = std::fs::read_to_string(manifest("packaging/phonehome-ingest.sysusers"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        sysusers.lines().any(|l| l.starts_with("u phonehome ")),
        "{sysusers}"
    );
}

/// What the ingest needs open at once under the shipped configuration (and the environment
/// given) against the unit's `LimitNOFILE`.
fn needed_with(vars: Vec<(String, String)>) -> u64 {
    let config = Config::load_with_env(Some(&manifest("ingest.example.toml")), vars)
        .unwrap_or_else(|e| panic!("ingest.example.toml: {e}"));
    phonehome_ingest::fdlimit::needed(&config)
}

#[test]
fn limit_nofile_fits_max_connections() {
    let limit: u64 = one(&unit(), "LimitNOFILE")
        .parse()
        .unwrap_or_else(|e| panic!("LimitNOFILE is one number: {e}"));
    let shipped = needed_with(Vec::new());
    assert!(
        shipped <= limit,
        "{shipped} descriptors needed, LimitNOFILE={limit}"
    );
    // What the unit's comment promises: max_connections up to 65,000 with the other defaults.
    let large = needed_with(vec![("PHONEHOME_MAX_CONNECTIONS".into(), "65000".into())]);
    assert!(
        large <= limit,
        "{large} descriptors needed, LimitNOFILE={limit}"
    );
}

#[test]
fn exec_start_uses_flags_the_ingest_accepts() {
    let exec = one(&unit(), "ExecStart");
    let mut args: Vec<String> = exec.split_whitespace().map(str::to_owned).collect();
    assert_eq!(args.remove(0), BINARY);
    assert_eq!(args, ["serve", "--config", "/etc/phonehome/ingest.toml"]);
    // Same flags, a configuration that does not exist: a usage error would exit 2 and not name
    // the file; accepted flags get as far as reading it.
    args[2] = "/nonexistent/phonehome/ingest.toml".into();
    let out = Command::new(env!("CARGO_BIN_EXE_phonehome-ingest"))
        .args(&args)
        .env_remove("PHONEHOME_CONFIG")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(2), "{stderr}");
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("/nonexistent/phonehome/ingest.toml"),
        "{stderr}"
    );
}

/// What a maintainer script may ask of systemd: reload its view, stop and disable on removal,
/// restart what was already running. Starting or enabling the ingest would run it before its
/// database and PKI are configured.
fn assert_starts_nothing(name: &str, text: &str) {
    let commands = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    for line in commands {
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
            "{name}: {line:?} may start or enable the ingest"
        );
    }
}

#[test]
fn the_maintainer_scripts_start_and_enable_nothing() {
    for script in [
        "packaging/deb/postinst",
        "packaging/deb/prerm",
        "packaging/deb/postrm",
        "packaging/rpm/phonehome-ingest.spec",
    ] {
        let path = manifest(script);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_starts_nothing(script, &text);
    }
    let caught = std::panic::catch_unwind(|| {
        assert_starts_nothing(
            "example",
            "deb-systemd-invoke start phonehome-ingest.service",
        )
    });
    assert!(caught.is_err());
}

#[test]
fn the_configuration_is_a_group_readable_conffile_in_the_rpm() {
    let path = manifest("packaging/rpm/phonehome-ingest.spec");
    let spec = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        spec.lines().any(|l| l.trim()
            == "%attr(0640,root,phonehome) %config(noreplace) /etc/phonehome/ingest.toml"),
        "{spec}"
    );
}
