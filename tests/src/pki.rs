//! A throwaway fleet PKI per test: CA, server certificate for 127.0.0.1, appliance certificates,
//! and a second, foreign CA whose certificates the ingest must refuse.

use std::path::{Path, PathBuf};

use phonehome_ingest::config::TlsConfig;
use phonehome_pki::{self as pki, ca};
use phonehome_schema::Serial;

/// A certificate and its key on disk.
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The files of one test's PKI; removed with the directory.
#[derive(Debug)]
pub struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    pub fn new() -> Self {
        Self::with_server_names(&[])
    }

    /// As [`TestPki::new`], with the server certificate also valid for `extra` names or
    /// addresses (the address a virtual machine reaches the ingest at, say).
    pub fn with_server_names(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        ca::init_ca(&dir.path().join("fleet"), "test fleet CA", 10, 10).expect("init CA");
        let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        names.extend(extra.iter().map(|n| (*n).to_owned()));
        ca::issue_server(&dir.path().join("fleet"), &names, "server", 10)
            .expect("issue server certificate");
        TestPki { dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("fleet").join(ca::CA_CERT_FILE)
    }

    pub fn server_tls(&self) -> TlsConfig {
        let fleet = self.dir.path().join("fleet");
        TlsConfig {
            ca_cert: fleet.join(ca::CA_CERT_FILE),
            server_cert: fleet.join("server.crt"),
            server_key: fleet.join("server.key"),
        }
    }

    /// A client certificate for `serial` from the fleet CA, for an Ed25519 key (the default).
    pub fn appliance(&self, serial: &str) -> CertPair {
        self.appliance_with(serial, pki::KeyType::default())
    }

    /// A client certificate for `serial` from the fleet CA, for a `key_type` key.
    pub fn appliance_with(&self, serial: &str, key_type: pki::KeyType) -> CertPair {
        let serial = Serial::parse(serial).expect("test serial is valid");
        let f = ca::issue_appliance(
            &self.dir.path().join("fleet"),
            &self.dir.path().join("appliances"),
            &serial,
            phonehome_pki::DEFAULT_APPLIANCE_DAYS,
            key_type,
        )
        .expect("issue appliance certificate");
        CertPair {
            cert: f.cert,
            key: f.key,
        }
    }

    /// A client certificate for `serial` from a CA the ingest does not trust.
    pub fn foreign_appliance(&self, serial: &str) -> CertPair {
        let foreign = self.dir.path().join("foreign");
        if !foreign.join(ca::CA_CERT_FILE).exists() {
            ca::init_ca(&foreign, "someone else's CA", 10, 10).expect("init foreign CA");
        }
        let serial = Serial::parse(serial).expect("test serial is valid");
        let f = ca::issue_appliance(&foreign, &foreign, &serial, 10, pki::KeyType::default())
            .expect("issue foreign certificate");
        CertPair {
            cert: f.cert,
            key: f.key,
        }
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}
