//! Property test of the smartctl parser: whatever the bytes (random, JSON-shaped noise, real
//! outputs with flipped bytes, truncated, spliced, with extreme numbers and huge strings, or with
//! values of the wrong type), parsing returns a result and never panics. A deterministic
//! xorshift generator makes every run the same, so a failure names a case that can be replayed.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use phonehome_collector::smart::parse::{parse_device, parse_scan};
use serde_json::Value;

/// xorshift64*: small, fast, and good enough to spread mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn fixtures() -> Vec<(String, Vec<u8>)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "json") {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smartctl");
    let mut paths = Vec::new();
    walk(&root, &mut paths);
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.display().to_string(), bytes)
        })
        .collect()
}

/// Feeds `input` to both parsers (and the failure summary); a panic fails the test naming the
/// case, with the input saved for replay.
fn check(case: &str, input: &[u8]) {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        for status in [None, Some(0), Some(2), Some(255)] {
            if let Ok(out) = parse_device(input, status) {
                let _ = out.failure();
                if let Some(device) = &out.device {
                    // What the parser produced must serialise into the report.
                    serde_json::to_vec(device).unwrap_or_else(|e| panic!("serialise: {e}"));
                }
            }
        }
        let _ = parse_scan(input);
    }));
    if outcome.is_err() {
        let saved = std::env::temp_dir().join("phonehome-smart-fuzz-failure.bin");
        let _ = std::fs::write(&saved, input);
        panic!(
            "parser panicked on {case}; input saved to {}",
            saved.display()
        );
    }
}

const EXTREME_NUMBERS: &[&str] = &[
    "18446744073709551615",
    "18446744073709551616",
    "340282366920938463463374607431768211455",
    "9007199254740993",
    "-1",
    "-9223372036854775809",
    "1e400",
    "-1e400",
    "1e-400",
    "0.5",
    "-0",
    "255",
    "256",
    "4294967296",
];

const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "null",
    "true",
    "false",
    "0",
    "-1",
    "1e400",
    "18446744073709551616",
    "\"device\"",
    "\"smartctl\"",
    "\"exit_status\"",
    "\"messages\"",
    "\"string\"",
    "\"severity\"",
    "\"ata_smart_attributes\"",
    "\"table\"",
    "\"raw\"",
    "\"value\"",
    "\"id\"",
    "\"nvme_smart_health_information_log\"",
    "\"critical_warning\"",
    "\"smart_status\"",
    "\"nvme\"",
    "\"passed\"",
    "\"temperature\"",
    "\"current\"",
    "\"power_on_time\"",
    "\"hours\"",
    "\"scsi_error_counter_log\"",
    "\"read\"",
    "\"scsi_grown_defect_list\"",
    "\"wwn\"",
    "\"naa\"",
    "\"devices\"",
    "\"name\"",
    "\"open_error\"",
    "\"Device is in STANDBY mode\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"é\"",
    " ",
    "\n",
];

/// A byte-level mutation of `input`.
fn mutate_bytes(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    match rng.below(6) {
        // Flip a few bytes.
        0 => {
            for _ in 0..=rng.below(8) {
                if !out.is_empty() {
                    let i = rng.below(out.len());
                    out[i] = rng.next() as u8;
                }
            }
        }
        // Truncate.
        1 => out.truncate(rng.below(out.len() + 1)),
        // Splice in a piece of another output.
        2 => {
            let from = rng.below(other.len() + 1);
            let to = from + rng.below(other.len() - from + 1);
            let at = rng.below(out.len() + 1);
            out.splice(at..at, other[from..to].iter().copied());
        }
        // Replace a number with an extreme one.
        3 => {
            let digits: Vec<usize> = (0..out.len())
                .filter(|&i| out[i].is_ascii_digit())
                .collect();
            if !digits.is_empty() {
                let start = *rng.pick(&digits);
                let end = (start..out.len())
                    .find(|&i| !out[i].is_ascii_digit())
                    .unwrap_or(out.len());
                let number = rng.pick(EXTREME_NUMBERS).as_bytes().to_vec();
                out.splice(start..end, number);
            }
        }
        // Blow up a string.
        4 => {
            let quotes: Vec<usize> = (0..out.len()).filter(|&i| out[i] == b'"').collect();
            if !quotes.is_empty() {
                let at = *rng.pick(&quotes) + 1;
                let filler = ["x", "é", "\\u00e9", "\\\\"][rng.below(4)];
                let huge = filler.repeat(1 + rng.below(200_000));
                out.splice(at..at, huge.into_bytes());
            }
        }
        // Delete a range.
        _ => {
            let from = rng.below(out.len() + 1);
            let to = from + rng.below((out.len() - from).min(512) + 1);
            out.drain(from..to);
        }
    }
    out
}

/// A replacement value of any type, extremes included.
fn any_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth > 3 { 7 } else { 9 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.below(2) == 0),
        2 => Value::from(u64::MAX - rng.below(3) as u64),
        3 => Value::from(-(rng.below(1000) as i64) - 1),
        4 => Value::from(rng.next() as f64 / 7.0),
        5 => Value::from("x".repeat(rng.below(2000))),
        6 => Value::from(rng.pick(TOKENS).to_string()),
        7 => Value::Array(
            (0..rng.below(4))
                .map(|_| any_value(rng, depth + 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.below(4))
                .map(|_| {
                    let key = rng.pick(TOKENS).trim_matches('"').to_owned();
                    (key, any_value(rng, depth + 1))
                })
                .collect(),
        ),
    }
}

/// Replaces a few values anywhere in the document with values of other types.
fn mutate_value(rng: &mut Rng, v: &mut Value, depth: usize) {
    match v {
        Value::Object(map) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                if let Some(child) = map.get_mut(&key) {
                    if rng.below(12) == 0 {
                        *child = any_value(rng, depth);
                    } else {
                        mutate_value(rng, child, depth + 1);
                    }
                }
            }
        }
        Value::Array(items) => {
            for item in items.iter_mut() {
                if rng.below(12) == 0 {
                    *item = any_value(rng, depth);
                } else {
                    mutate_value(rng, item, depth + 1);
                }
            }
        }
        _ => {}
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x5eed_0001);
    for case in 0..3000 {
        let len = rng.below(2048);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        check(&format!("random bytes #{case}"), &bytes);
    }
}

#[test]
fn json_shaped_noise_never_panics() {
    let mut rng = Rng(0x5eed_0002);
    for case in 0..3000 {
        let mut text = String::from("{");
        for _ in 0..rng.below(120) {
            text.push_str(rng.pick::<&str>(TOKENS));
        }
        check(&format!("token soup #{case}"), text.as_bytes());
    }
}

#[test]
fn mutated_real_outputs_never_panic() {
    let files = fixtures();
    assert!(files.len() >= 150);
    let mut rng = Rng(0x5eed_0003);
    for (i, (name, bytes)) in files.iter().enumerate() {
        check(name, bytes);
        for round in 0..12 {
            let other = &files[(i + 1 + rng.below(files.len() - 1)) % files.len()].1;
            let mut input = bytes.clone();
            for _ in 0..=rng.below(3) {
                input = mutate_bytes(&mut rng, &input, other);
            }
            check(&format!("{name}, byte mutation round {round}"), &input);
        }
    }
}

#[test]
fn real_outputs_with_values_of_the_wrong_type_never_panic() {
    let files = fixtures();
    let mut rng = Rng(0x5eed_0004);
    for (name, bytes) in &files {
        let original: Value =
            serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        for round in 0..12 {
            let mut doc = original.clone();
            mutate_value(&mut rng, &mut doc, 0);
            let input = serde_json::to_vec(&doc).unwrap_or_else(|e| panic!("{e}"));
            check(&format!("{name}, value mutation round {round}"), &input);
        }
    }
}
