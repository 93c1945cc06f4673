//! Fuzzing the ingest's report decoder and rule engine on stable Rust (issue 13): real reports
//! (the contract's example with the SMART devices of every real smartctl capture in
//! `collector/tests/fixtures/smartctl`, parsed as the collector parses them) are mutated byte by
//! byte and token by token (flips, splices, truncations, extreme numbers, huge strings) and fed
//! to `parse_report`; whatever parses goes through `rows::prepare` (every rule judged on the
//! report alone) and the rules judged by change against the unmutated report. Nothing may
//! panic. The generator is seeded, so every run is the same and a failure names its case; a
//! failing input is saved under `target/fuzz-failures/` and belongs, once fixed, in
//! `tests/fuzz-regressions/` (replayed first on every run).
//!
//! `PHONEHOME_FUZZ_SECONDS` bounds the run (default 20); `PHONEHOME_FUZZ_SEED` moves the seed.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::Utc;
use phonehome_ingest::alerts::{self, AlertsConfig};
use phonehome_ingest::reports::parse_report;
use phonehome_ingest::storage::rows::{self, PreparedReport};
use phonehome_schema::Report;

/// xorshift64*: reproducible choices without a random crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(json_files(&path));
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The seed reports: the contract's example, and the example carrying each real capture's
/// device (with the example's NVMe drive beside it, so reports have two).
fn corpus() -> Vec<(String, Vec<u8>)> {
    let example = phonehome_tests::example_report("FUZZ-0001");
    let mut out = vec![(
        "schema/examples/report.json".to_owned(),
        serde_json::to_vec(&example).expect("json"),
    )];
    let captures =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../collector/tests/fixtures/smartctl");
    let files = json_files(&captures);
    assert!(
        files.len() > 10,
        "the real smartctl captures are missing from {}",
        captures.display()
    );
    for path in files {
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let Ok(parsed) = phonehome_collector::smart::parse::parse_device(&bytes, None) else {
            continue;
        };
        let Some(device) = parsed.device else {
            continue;
        };
        let mut r = example.clone();
        r.smart.devices[0] = device;
        out.push((
            path.display().to_string(),
            serde_json::to_vec(&r).expect("json"),
        ));
    }
    out
}

const EXTREME_NUMBERS: &[&str] = &[
    "0",
    "-1",
    "255",
    "256",
    "65535",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "-9223372036854775809",
    "1e400",
    "0.5",
    "-300",
    "100000",
];

/// One mutation of `input`.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    match rng.below(7) {
        // Replace a number with an extreme one.
        0 | 1 => {
            let starts: Vec<usize> = (0..out.len())
                .filter(|&i| {
                    out[i].is_ascii_digit() && (i == 0 || !out[i - 1].is_ascii_alphanumeric())
                })
                .collect();
            if let Some(&at) = starts.get(rng.below(starts.len())) {
                let mut end = at;
                while end < out.len() && (out[end].is_ascii_digit() || out[end] == b'.') {
                    end += 1;
                }
                let number = rng.pick(EXTREME_NUMBERS).as_bytes();
                out.splice(at..end, number.iter().copied());
            }
        }
        // Flip a byte.
        2 => {
            if !out.is_empty() {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
        }
        // Truncate.
        3 => {
            let at = rng.below(out.len());
            out.truncate(at);
        }
        // Duplicate a slice somewhere (repeated keys, nested copies).
        4 => {
            let a = rng.below(out.len());
            let b = (a + rng.below(400)).min(out.len());
            let piece: Vec<u8> = out[a..b].to_vec();
            let at = rng.below(out.len());
            out.splice(at..at, piece);
        }
        // A string grows huge.
        5 => {
            let quotes: Vec<usize> = (0..out.len()).filter(|&i| out[i] == b'"').collect();
            if let Some(&at) = quotes.get(rng.below(quotes.len())) {
                let filler = vec![b'x'; *rng.pick(&[300usize, 70_000])];
                out.splice(at + 1..at + 1, filler);
            }
        }
        // A value becomes another type.
        _ => {
            let colons: Vec<usize> = (0..out.len()).filter(|&i| out[i] == b':').collect();
            if let Some(&at) = colons.get(rng.below(colons.len())) {
                let token = *rng.pick(&["null", "true", "[]", "{}", "\"\"", "\"-1\"", "[1,2]"]);
                out.splice(
                    at + 1..at + 1,
                    token.bytes().chain(b",\"fuzz\":".iter().copied()),
                );
            }
        }
    }
    out
}

/// Everything the ingest does with a report before the database: must not panic.
fn exercise(input: &[u8], previous: &PreparedReport, config: &AlertsConfig) {
    let now = Utc::now();
    let Ok(report) = parse_report(input, now) else {
        return;
    };
    let prepared = rows::prepare(&report, &[0; 32], now, (Vec::new(), None), config);
    // The rules judged by change, against the unmutated report.
    for d in &prepared.drives {
        if let Some(p) = previous.drives.iter().find(|p| p.key == d.key) {
            let _ = alerts::degrading(d, &p.sample);
        }
        let _ = alerts::degrading(d, &d.sample);
    }
    for n in &prepared.nics {
        for p in &previous.nics {
            let _ = alerts::nic_errors(config, n, p, false);
            let _ = alerts::nic_errors(config, p, n, true);
        }
    }
    let _ = alerts::clock_skew(config, prepared.clock_skew_seconds);
    // What is kept must serialise back.
    serde_json::to_vec(&report).expect("a parsed report serialises");
}

fn check(case: &str, input: &[u8], previous: &PreparedReport, config: &AlertsConfig) {
    let outcome = catch_unwind(AssertUnwindSafe(|| exercise(input, previous, config)));
    if outcome.is_err() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-failures");
        let _ = std::fs::create_dir_all(&dir);
        let saved = dir.join(format!("{}.json", case.replace(['/', ' ', ':'], "_")));
        let _ = std::fs::write(&saved, input);
        panic!(
            "the ingest panicked on {case}; the input is saved to {}: fix it and move the file \
             into tests/fuzz-regressions/",
            saved.display()
        );
    }
}

fn prepared(bytes: &[u8], config: &AlertsConfig) -> PreparedReport {
    let report: Report = serde_json::from_slice(bytes).expect("a seed report parses");
    rows::prepare(&report, &[0; 32], Utc::now(), (Vec::new(), None), config)
}

#[test]
fn mutated_real_reports_never_panic_the_decoder_or_the_rules() {
    let config = AlertsConfig::default();
    let seeds = corpus();
    let previous: Vec<PreparedReport> = seeds.iter().map(|(_, b)| prepared(b, &config)).collect();

    // Inputs that once broke something, first.
    let regressions = json_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-regressions"));
    for path in &regressions {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for p in &previous {
            check(&path.display().to_string(), &bytes, p, &config);
        }
    }

    let budget = Duration::from_secs(
        std::env::var("PHONEHOME_FUZZ_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20),
    );
    let seed: u64 = std::env::var("PHONEHOME_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x0f0f_1234);
    let started = Instant::now();
    let mut cases = 0u64;
    let mut parsed = 0u64;
    while started.elapsed() < budget {
        let mut rng = Rng(seed ^ cases.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let which = rng.below(seeds.len());
        let (name, base) = &seeds[which];
        let mut input = base.clone();
        let rounds = 1 + rng.below(3);
        for _ in 0..rounds {
            input = mutate(&mut rng, &input);
        }
        if parse_report(&input, Utc::now()).is_ok() {
            parsed += 1;
        }
        check(
            &format!("case {cases} (seed {seed:#x}) of {name}"),
            &input,
            &previous[which],
            &config,
        );
        cases += 1;
    }
    eprintln!(
        "{cases} mutated reports from {} seeds and {} regressions in {:?}; {parsed} parsed",
        seeds.len(),
        regressions.len(),
        started.elapsed()
    );
    assert!(cases > 1000, "too few cases to mean anything: {cases}");
    assert!(
        parsed > 0,
        "no mutation parsed: the rules were never reached"
    );
}
