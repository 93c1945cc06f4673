//! The real `phonehome-collector` binary, as cron and an operator run it: its output, exit codes
//! and messages. No network is used.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use phonehome_collector::Config;
use phonehome_schema::{Report, SerialSource};

fn collector(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_phonehome-collector"))
        .args(args)
        .env_remove("PHONEHOME_COLLECTOR_SERVER")
        .output()
        .unwrap_or_else(|e| panic!("cannot start the collector: {e}"))
}

fn manifest_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn collect_prints_a_contract_report_for_a_recorded_machine() {
    let root = manifest_path("tests/fixtures/sysfs/node_exporter");
    for compact in [false, true] {
        let mut args = vec!["collect", "--root", root.to_str().unwrap_or_default()];
        if compact {
            args.push("--compact");
        }
        let out = collector(&args);
        assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert_eq!(stdout.trim_end().lines().count() == 1, compact, "{stdout}");
        let report: Report =
            serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not a Report: {e}\n{stdout}"));
        assert_eq!(report.identity.serial.as_str(), "7N62AI2");
        assert_eq!(report.identity.serial_source, SerialSource::DmiProduct);
        assert_eq!(report.check(report.collected_at), Ok(()));
        assert_eq!(report.collector.version, env!("CARGO_PKG_VERSION"));
    }
}

#[test]
fn every_collection_gets_a_new_report_id() {
    let root = manifest_path("tests/fixtures/sysfs/procfs");
    let ids: Vec<String> = (0..2)
        .map(|_| {
            let out = collector(&[
                "collect",
                "--compact",
                "--root",
                root.to_str().unwrap_or_default(),
            ]);
            let report: Report = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("{e}: {}", text(&out.stderr)));
            report.report_id.to_string()
        })
        .collect();
    assert_ne!(ids[0], ids[1]);
}

#[test]
fn a_machine_without_any_serial_exits_78_and_says_why() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir_all(dir.path().join("proc/sys/kernel")).unwrap_or_else(|e| panic!("{e}"));
    let out = collector(&["collect", "--root", dir.path().to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        out.stdout.is_empty(),
        "no report may be printed: {}",
        text(&out.stdout)
    );
    let stderr = text(&out.stderr);
    assert!(stderr.contains("machine-id"), "{stderr}");
    assert!(stderr.contains("serial"), "{stderr}");
}

#[test]
fn collect_uses_the_configured_serial_and_app_version() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("VERSION"), "7.3.0\n").unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        "serial = \"IMAGED-0001\"\n[app]\nversion_file = \"VERSION\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let root = manifest_path("tests/fixtures/sysfs/procfs");
    let out = collector(&[
        "collect",
        "--config",
        config.to_str().unwrap_or_default(),
        "--root",
        root.to_str().unwrap_or_default(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report: Report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.identity.serial.as_str(), "IMAGED-0001");
    assert_eq!(report.identity.serial_source, SerialSource::Config);
    assert_eq!(report.app.version.as_deref(), Some("7.3.0"));
}

#[test]
fn configuration_mistakes_exit_78_naming_the_file() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let typo = dir.path().join("typo.toml");
    std::fs::write(
        &typo,
        "server = \"https://127.0.0.1:8443\"\nca_certificate = \"ca.crt\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let no_ca = dir.path().join("no-ca.toml");
    std::fs::write(
        &no_ca,
        "server = \"https://127.0.0.1:8443\"\nca_cert = \"ca.crt\"\n\
         client_cert = \"appliance.crt\"\nclient_key = \"appliance.key\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let missing = dir.path().join("missing.toml");
    let path = |p: &Path| p.to_str().unwrap_or_default().to_owned();

    let cases: Vec<(Vec<String>, String, &str)> = vec![
        (
            vec!["run".into(), "--config".into(), path(&missing)],
            path(&missing),
            "cannot read",
        ),
        (
            vec!["run".into(), "--config".into(), path(&typo)],
            path(&typo),
            "unknown field `ca_certificate`",
        ),
        (
            vec!["collect".into(), "--config".into(), path(&typo)],
            path(&typo),
            "unknown field",
        ),
        // The CA is looked for next to the configuration file, and its absence named.
        (
            vec!["run".into(), "--config".into(), path(&no_ca)],
            path(&dir.path().join("ca.crt")),
            "cannot read",
        ),
    ];
    for (args, file, problem) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = collector(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&file),
            "{args:?} should name {file}: {stderr}"
        );
        assert!(
            stderr.contains(problem),
            "{args:?} should say {problem:?}: {stderr}"
        );
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    }
}

#[test]
fn help_documents_the_exit_codes() {
    let out = collector(&["run", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    for needle in [
        "--config",
        "--root",
        "75",
        "78",
        "65",
        "PHONEHOME_COLLECTOR_SERVER",
    ] {
        assert!(help.contains(needle), "help lacks {needle:?}:\n{help}");
    }
}

#[test]
fn the_example_configuration_is_valid() {
    let path = manifest_path("packaging/collector.example.toml");
    let config = Config::parse(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}")),
        &path,
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let delivery = config.delivery().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(delivery.server, "https://127.0.0.1:8443");
    assert_eq!(delivery.ca_cert, Path::new("/etc/phonehome/ca.crt"));
    assert_eq!(delivery.timeout.as_secs(), 30);
    assert_eq!(config.serial, None);
    assert_eq!(config.app.version_file, None);
}

#[test]
fn every_commented_example_in_the_example_configuration_is_valid_too() {
    // Operators uncomment these lines; each must parse as shown.
    let path = manifest_path("packaging/collector.example.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
    let uncommented: String = text
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest)
                if rest.split_once(" = ").is_some_and(|(key, _)| {
                    key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                }) =>
            {
                rest.to_owned()
            }
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let config =
        Config::parse(&uncommented, &path, None).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
    assert_eq!(config.serial.as_ref().map(|s| s.as_str()), Some("ABC123"));
    assert_eq!(
        config.app.systemd_units,
        ["app.service", "app-worker.service"]
    );
    assert_eq!(
        config.app.health_command.as_deref(),
        Some(&["/opt/app/bin/healthcheck".to_owned(), "--json".to_owned()][..])
    );
    assert_eq!(config.app.check_timeout.as_secs(), 10);
    assert_eq!(
        config.skip_fs_types,
        ["proc", "sysfs", "tmpfs", "devtmpfs", "squashfs"]
    );
}
