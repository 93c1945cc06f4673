//! The appliance's own application: its version (from a file or a command) and its health (from
//! systemd units and/or a health command), each check under a deadline.

use std::time::{Duration, Instant};

use phonehome_schema::{AppCheck, AppCheckKind, AppSection, AppStatus, CollectionError, ErrorKind};

use crate::command::{self, Finished};
use crate::config::AppConfig;
use crate::machine::{ATTRIBUTE_LIMIT, invalid, io_error, read_bounded};

/// A version line or a unit's state is short; a health command's JSON is kept up to this size.
const OUTPUT_LIMIT: usize = 64 * 1024;

/// `version_file` and commands are used as configured (not below `--root`): they belong to the
/// application, not to the kernel.
pub fn collect(config: &AppConfig) -> AppSection {
    let mut section = AppSection::default();
    section.version = version(config, &mut section.errors);
    for unit in &config.systemd_units {
        section
            .checks
            .push(systemd_unit(config, unit, &mut section.errors));
    }
    if let Some(argv) = &config.health_command {
        section
            .checks
            .push(health_command(config, argv, &mut section.errors));
    }
    section.status = section
        .checks
        .iter()
        .map(|c| c.status)
        .max_by_key(|s| s.severity())
        .unwrap_or(AppStatus::Unknown);
    section
}

fn version(config: &AppConfig, errors: &mut Vec<CollectionError>) -> Option<String> {
    if let Some(path) = &config.version_file {
        let item = path.display().to_string();
        return match read_bounded(path, ATTRIBUTE_LIMIT) {
            Ok(bytes) => first_line(&bytes).or_else(|| {
                errors.push(invalid(&item, "first line is empty"));
                None
            }),
            Err(e) => {
                errors.push(io_error(&item, &e));
                None
            }
        };
    }
    let argv = config.version_command.as_ref()?;
    let item = argv.join(" ");
    let finished = run(argv, config.check_timeout, &item, errors)?;
    match finished.code() {
        Some(0) => first_line(&finished.stdout).or_else(|| {
            errors.push(invalid(&item, "printed no version"));
            None
        }),
        _ => {
            errors.push(failed(
                &item,
                &describe_exit(&finished, config.check_timeout),
            ));
            None
        }
    }
}

/// A unit's health from systemd's view of it: active is healthy, on its way up or reloading is
/// degraded, anything else (failed, inactive, dead) is unhealthy.
fn systemd_unit(config: &AppConfig, unit: &str, errors: &mut Vec<CollectionError>) -> AppCheck {
    let started = Instant::now();
    let mut check = AppCheck {
        name: unit.to_owned(),
        kind: AppCheckKind::SystemdUnit,
        status: AppStatus::Unknown,
        detail: None,
        output: None,
        duration_ms: None,
    };
    let args = [
        "show",
        "--property=LoadState,ActiveState,SubState",
        "--",
        unit,
    ];
    let item = format!("systemctl show {unit}");
    let finished = match command::run(&config.systemctl, &args, config.check_timeout, OUTPUT_LIMIT)
    {
        Ok(f) => f,
        Err(e) => {
            errors.push(io_error(&config.systemctl.display().to_string(), &e));
            check.detail = Some(format!("cannot run systemctl: {e}"));
            return check;
        }
    };
    check.duration_ms = Some(millis(started));
    if finished.code() != Some(0) {
        let why = describe_exit(&finished, config.check_timeout);
        errors.push(failed(&item, &why));
        check.detail = Some(why);
        return check;
    }
    let text = String::from_utf8_lossy(&finished.stdout);
    let property = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
            .map(str::trim)
            .unwrap_or("")
            .to_owned()
    };
    let (load, active, sub) = (
        property("LoadState"),
        property("ActiveState"),
        property("SubState"),
    );
    check.status = match (load.as_str(), active.as_str()) {
        ("not-found", _) => AppStatus::Unknown,
        (_, "active") => AppStatus::Healthy,
        (_, "activating" | "reloading") => AppStatus::Degraded,
        (_, "failed" | "inactive" | "deactivating") => AppStatus::Unhealthy,
        _ => AppStatus::Unknown,
    };
    check.detail = Some(if load == "not-found" {
        "unit not found".to_owned()
    } else {
        format!("ActiveState={active} SubState={sub}")
    });
    check
}

/// A health command, judged by the monitoring-plugin convention (exit 0 OK, 1 warning, 2
/// critical, 3 unknown) and, if it prints a JSON object with a `status`, by that too; the worse
/// of the two wins.
fn health_command(
    config: &AppConfig,
    argv: &[String],
    errors: &mut Vec<CollectionError>,
) -> AppCheck {
    let started = Instant::now();
    let name = argv.first().cloned().unwrap_or_default();
    let mut check = AppCheck {
        name: name.clone(),
        kind: AppCheckKind::Command,
        status: AppStatus::Unknown,
        detail: None,
        output: None,
        duration_ms: None,
    };
    let Some(finished) = run(argv, config.check_timeout, &name, errors) else {
        check.detail = Some("could not be started".into());
        return check;
    };
    check.duration_ms = Some(millis(started));
    let by_code = match finished.code() {
        Some(0) => AppStatus::Healthy,
        Some(1) => AppStatus::Degraded,
        Some(3) => AppStatus::Unknown,
        // 2, other codes, a signal or the deadline: the check itself says the app is not fine.
        _ => AppStatus::Unhealthy,
    };
    let output = serde_json::from_slice::<serde_json::Value>(&finished.stdout)
        .ok()
        .filter(serde_json::Value::is_object);
    let by_json = output
        .as_ref()
        .and_then(|o| o.get("status"))
        .and_then(|s| serde_json::from_value::<AppStatus>(s.clone()).ok());
    check.status = match by_json {
        Some(s) if s.severity() > by_code.severity() => s,
        _ => by_code,
    };
    check.detail = Some(describe_exit(&finished, config.check_timeout));
    check.output = output;
    check
}

fn run(
    argv: &[String],
    timeout: Duration,
    item: &str,
    errors: &mut Vec<CollectionError>,
) -> Option<Finished> {
    let (program, args) = argv.split_first()?;
    match command::run(program, args, timeout, OUTPUT_LIMIT) {
        Ok(f) => Some(f),
        Err(e) => {
            errors.push(io_error(item, &e));
            None
        }
    }
}

fn describe_exit(f: &Finished, timeout: Duration) -> String {
    match f.code() {
        _ if f.timed_out() => format!("timed out after {} s", timeout.as_secs()),
        Some(code) => {
            let stderr = String::from_utf8_lossy(&f.stderr);
            match stderr.lines().map(str::trim).find(|l| !l.is_empty()) {
                Some(line) => format!("exit code {code}: {}", shorten(line)),
                None => format!("exit code {code}"),
            }
        }
        None => "killed by a signal".to_owned(),
    }
}

fn failed(item: &str, message: &str) -> CollectionError {
    CollectionError {
        item: item.to_owned(),
        kind: if message.starts_with("timed out") {
            ErrorKind::Timeout
        } else {
            ErrorKind::Failed
        },
        message: message.to_owned(),
    }
}

fn first_line(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| shorten(l).to_owned())
}

fn shorten(s: &str) -> &str {
    match s.char_indices().nth(200) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn millis(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn config() -> AppConfig {
        AppConfig {
            check_timeout: Duration::from_secs(5),
            ..AppConfig::default()
        }
    }

    #[test]
    fn version_is_the_first_line_of_the_file_or_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("VERSION");
        std::fs::write(&file, "  4.2.1-rc3 \nbuilt by ci\n").unwrap();
        let app = collect(&AppConfig {
            version_file: Some(file.clone()),
            ..config()
        });
        assert_eq!(app.version.as_deref(), Some("4.2.1-rc3"));
        assert_eq!(app.status, AppStatus::Unknown, "no check configured");
        assert!(app.errors.is_empty());

        std::fs::write(&file, "\n").unwrap();
        let empty = collect(&AppConfig {
            version_file: Some(file),
            ..config()
        });
        assert_eq!(empty.errors[0].kind, ErrorKind::Invalid);
        let missing = collect(&AppConfig {
            version_file: Some(dir.path().join("nope")),
            ..config()
        });
        assert_eq!(missing.version, None);
        assert_eq!(missing.errors[0].kind, ErrorKind::NotFound);

        let cmd = script(dir.path(), "app", "echo 'myapp 7.1.0'");
        let app = collect(&AppConfig {
            version_command: Some(vec![cmd.display().to_string(), "--version".into()]),
            ..config()
        });
        assert_eq!(app.version.as_deref(), Some("myapp 7.1.0"));
    }

    #[test]
    fn health_command_exit_codes_and_json_decide_the_status() {
        let dir = tempfile::tempdir().unwrap();
        let cases: &[(&str, &str, AppStatus)] = &[
            ("ok", "exit 0", AppStatus::Healthy),
            ("warn", "exit 1", AppStatus::Degraded),
            ("crit", "echo 'db down' >&2; exit 2", AppStatus::Unhealthy),
            ("unknown", "exit 3", AppStatus::Unknown),
            (
                "json",
                r#"echo '{"status":"degraded","queue":12}'; exit 0"#,
                AppStatus::Degraded,
            ),
            (
                "json-better",
                r#"echo '{"status":"healthy"}'; exit 2"#,
                AppStatus::Unhealthy,
            ),
            ("hung", "sleep 30", AppStatus::Unhealthy),
        ];
        for (name, body, expected) in cases {
            let cmd = script(dir.path(), name, body);
            let app = collect(&AppConfig {
                health_command: Some(vec![cmd.display().to_string()]),
                check_timeout: Duration::from_secs(1),
                ..config()
            });
            assert_eq!(app.status, *expected, "{name}: {:?}", app.checks);
            assert_eq!(app.checks.len(), 1);
            assert_eq!(app.checks[0].kind, AppCheckKind::Command);
        }
        let crit = script(dir.path(), "crit2", "echo 'db down' >&2; exit 2");
        let app = collect(&AppConfig {
            health_command: Some(vec![crit.display().to_string()]),
            ..config()
        });
        assert_eq!(
            app.checks[0].detail.as_deref(),
            Some("exit code 2: db down")
        );
        let json = script(
            dir.path(),
            "json2",
            r#"echo '{"status":"healthy","queue":3}'"#,
        );
        let app = collect(&AppConfig {
            health_command: Some(vec![json.display().to_string()]),
            ..config()
        });
        assert_eq!(
            app.checks[0].output,
            Some(serde_json::json!({"status":"healthy","queue":3}))
        );

        let app = collect(&AppConfig {
            health_command: Some(vec!["/nonexistent/health".into()]),
            ..config()
        });
        assert_eq!(app.status, AppStatus::Unknown);
        assert_eq!(app.errors[0].kind, ErrorKind::NotFound);
    }

    #[test]
    fn systemd_units_map_to_statuses_and_the_worst_wins() {
        let dir = tempfile::tempdir().unwrap();
        // A stand-in systemctl answering `show` for a few units the way systemd does.
        let systemctl = script(
            dir.path(),
            "systemctl",
            r#"case "$4" in
  app.service) printf 'LoadState=loaded\nActiveState=active\nSubState=running\n';;
  worker.service) printf 'LoadState=loaded\nActiveState=failed\nSubState=failed\n';;
  starting.service) printf 'LoadState=loaded\nActiveState=activating\nSubState=start\n';;
  *) printf 'LoadState=not-found\nActiveState=inactive\nSubState=dead\n';;
esac"#,
        );
        let run = |units: &[&str]| {
            collect(&AppConfig {
                systemd_units: units.iter().map(|u| u.to_string()).collect(),
                systemctl: systemctl.clone(),
                ..config()
            })
        };
        assert_eq!(run(&["app.service"]).status, AppStatus::Healthy);
        assert_eq!(
            run(&["app.service", "starting.service"]).status,
            AppStatus::Degraded
        );
        let both = run(&["app.service", "worker.service"]);
        assert_eq!(both.status, AppStatus::Unhealthy);
        assert_eq!(
            both.checks[1].detail.as_deref(),
            Some("ActiveState=failed SubState=failed")
        );
        let missing = run(&["nope.service"]);
        assert_eq!(missing.status, AppStatus::Unknown);
        assert_eq!(missing.checks[0].detail.as_deref(), Some("unit not found"));

        let no_systemctl = collect(&AppConfig {
            systemd_units: vec!["app.service".into()],
            systemctl: dir.path().join("missing-systemctl"),
            ..config()
        });
        assert_eq!(no_systemctl.status, AppStatus::Unknown);
        assert_eq!(no_systemctl.errors[0].kind, ErrorKind::NotFound);
    }
}
