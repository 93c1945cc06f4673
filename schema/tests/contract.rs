//! The committed JSON Schema matches the Rust types, and reports the types produce validate.

use std::path::PathBuf;

use phonehome_schema::*;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("report.schema.json")
}

fn generated() -> String {
    let mut s = serde_json::to_string_pretty(&Report::json_schema()).expect("schema serialises");
    s.push('\n');
    s
}

/// Formats (uuid, date-time) are assertions in our contract, not mere annotations.
fn validator(schema: &serde_json::Value) -> jsonschema::Validator {
    jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .expect("schema compiles")
}

fn sample() -> Report {
    let fixture = include_str!("../examples/report.json");
    serde_json::from_str(fixture).expect("examples/report.json is a valid report")
}

#[test]
fn committed_schema_equals_generated() {
    let generated = generated();
    if std::env::var_os("PHONEHOME_BLESS").is_some() {
        // Atomically: other tests in this binary read the file concurrently.
        let tmp = committed_path().with_extension("json.tmp");
        std::fs::write(&tmp, &generated).expect("write report.schema.json");
        std::fs::rename(&tmp, committed_path()).expect("replace report.schema.json");
    }
    let committed = std::fs::read_to_string(committed_path()).unwrap_or_default();
    assert!(
        committed == generated,
        "schema/report.schema.json is out of date with the Rust types; regenerate it with \
         `PHONEHOME_BLESS=1 cargo test -p phonehome-schema --test contract` and commit it"
    );
}

#[test]
fn reports_the_types_produce_validate_against_the_committed_schema() {
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(committed_path()).expect("read schema"))
            .expect("schema is JSON");
    let validator = validator(&schema);

    let report = sample();
    report
        .check(report.collected_at)
        .expect("sample passes the contract checks");
    let value = serde_json::to_value(&report).expect("serialise");
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");

    // A minimal report (every optional field absent, every list empty) is valid too.
    let mut minimal = report.clone();
    minimal.identity = Identity {
        serial: Serial::parse("MIN-1").unwrap(),
        serial_source: SerialSource::MachineId,
        system_uuid: None,
        machine_id: None,
        hostname: None,
        boot_id: None,
        errors: vec![],
    };
    minimal.system = SystemSection::default();
    minimal.smart = SmartSection::default();
    minimal.filesystems = FilesystemsSection::default();
    minimal.nics = NicsSection::default();
    minimal.app = AppSection::default();
    let value = serde_json::to_value(&minimal).expect("serialise");
    assert!(validator.is_valid(&value));

    // Round trip: what the types write, they read back unchanged.
    let back: Report = serde_json::from_value(value).expect("round trip");
    assert_eq!(back, minimal);
}

#[test]
fn the_schema_refuses_what_the_types_refuse() {
    let schema = Report::json_schema();
    let validator = validator(&schema);
    let good = serde_json::to_value(sample()).expect("serialise");

    type Mutation = fn(&mut serde_json::Value);
    let mutations: &[(&str, Mutation)] = &[
        ("serial with a newline", |v| {
            v["identity"]["serial"] = "A\nB".into()
        }),
        ("missing report_id", |v| {
            v.as_object_mut().unwrap().remove("report_id");
        }),
        ("report_id not a uuid", |v| v["report_id"] = "nope".into()),
        ("negative byte count", |v| {
            v["filesystems"]["filesystems"][0]["bytes_total"] = (-1).into()
        }),
        ("unknown serial source", |v| {
            v["identity"]["serial_source"] = "guess".into()
        }),
        ("schema_version 2", |v| v["schema_version"] = 2.into()),
        ("machine_id not hex", |v| {
            v["identity"]["machine_id"] = "XYZ".into()
        }),
        ("counter as string", |v| {
            v["nics"]["nics"][0]["counters"]["rx_errors"] = "3".into()
        }),
    ];
    for (what, mutate) in mutations {
        let mut bad = good.clone();
        mutate(&mut bad);
        assert!(
            !validator.is_valid(&bad),
            "schema accepted a report with {what}"
        );
        let typed = serde_json::from_value::<Report>(bad).map_err(|e| e.to_string());
        let checked = typed.and_then(|r| r.check(r.collected_at).map_err(|e| e.to_string()));
        assert!(checked.is_err(), "types accepted a report with {what}");
    }
}

#[test]
fn check_refuses_other_schema_versions() {
    let mut r = sample();
    r.schema_version = 2;
    let err = r.check(r.collected_at).unwrap_err();
    assert_eq!(err.field, "schema_version");
}

#[test]
fn check_refuses_implausible_collection_times() {
    let r = sample();
    let at = r.collected_at;
    let cases = [
        (at, true),
        (at + chrono::Duration::days(7), true),
        (at - chrono::Duration::hours(23), true),
        (at - chrono::Duration::hours(25), false),
        (at + chrono::Duration::days(MAX_REPORT_AGE_DAYS + 1), false),
    ];
    for (now, ok) in cases {
        let result = r.check(now);
        assert_eq!(result.is_ok(), ok, "now = {now}: {result:?}");
        if let Err(e) = result {
            assert_eq!(e.field, "collected_at");
        }
    }
}
