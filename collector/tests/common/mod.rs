//! Helpers shared by the collector's integration tests: paths to the fixtures, the test PKI's
//! appliance and a configuration file for it, and an address where nothing listens.
//!
//! Each test binary compiles this module separately and uses only part of it, hence the
//! `dead_code` allowance.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};

/// The serial of the appliance certificate in `fixtures/pki`.
pub const SERIAL: &str = "SPOOL-TEST-1";

/// A path below the collector crate's directory.
pub fn manifest_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A path below `collector/tests/fixtures`.
pub fn fixture(rel: &str) -> PathBuf {
    manifest_path("tests/fixtures").join(rel)
}

/// Process output as text, for assertions and messages.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `https://127.0.0.1:PORT` where nothing listens (connection refused at once).
pub fn unreachable() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(1);
    drop(listener);
    format!("https://127.0.0.1:{port}")
}

/// A `run` configuration for the test PKI's appliance. SMART discovery is off: these tests are
/// about delivery and spooling and must not run the machine's own smartctl.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    /// The serial the report claims (the certificate is always `SERIAL`'s).
    pub serial: String,
    pub ca_cert: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub timeout_seconds: u64,
    /// `[spool] dir`, relative to the configuration file or absolute.
    pub spool_dir: String,
    /// More lines for the `[spool]` table.
    pub spool: String,
}

impl CollectorConfig {
    /// The test appliance, its spool in `spool` next to the configuration file, with extra
    /// `[spool]` lines.
    pub fn new(spool: &str) -> CollectorConfig {
        let pki = fixture("pki");
        CollectorConfig {
            serial: SERIAL.to_owned(),
            ca_cert: pki.join("ca.crt"),
            client_cert: pki.join(format!("appliance-{SERIAL}.crt")),
            client_key: pki.join(format!("appliance-{SERIAL}.key")),
            timeout_seconds: 5,
            spool_dir: "spool".to_owned(),
            spool: spool.to_owned(),
        }
    }

    /// The configuration file's text. `server` is a dead address: tests set the real one
    /// through `PHONEHOME_COLLECTOR_SERVER`.
    pub fn text(&self) -> String {
        format!(
            "server = \"https://127.0.0.1:1\"\nca_cert = {:?}\nclient_cert = {:?}\n\
             client_key = {:?}\nserial = {:?}\ntimeout_seconds = {}\n\
             [smart]\nscan = false\n[spool]\ndir = {:?}\n{}\n",
            self.ca_cert,
            self.client_cert,
            self.client_key,
            self.serial,
            self.timeout_seconds,
            self.spool_dir,
            self.spool,
        )
    }

    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.text())
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}
