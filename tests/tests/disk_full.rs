//! PostgreSQL out of disk space (issue 13, fault campaign): the test's database lives on a
//! small tmpfs it mounts, which a filler file then fills. Reports get 503 (the collectors keep
//! them), `/readyz` takes the replica out, nothing is half-written, and when space returns the
//! ingest stores again with no restart.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use phonehome_tests::bins::IngestProcess;
use phonehome_tests::client::{TlsClient, get};
use phonehome_tests::pki::TestPki;
use phonehome_tests::{TestDb, example_report};

/// A tmpfs mounted for the test, owned by the PostgreSQL server's user; unmounted on drop.
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    fn mount(megabytes: u32) -> Self {
        let dir =
            std::env::temp_dir().join(format!("phonehome-disk-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("mount point");
        let run = |cmd: &mut Command, what: &str| {
            let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(
                out.status.success(),
                "{what} failed ({}): {}. This test mounts a tmpfs: run it as root on a machine \
                 whose PostgreSQL server runs locally (as in CI).",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(
            Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={megabytes}m,mode=0700"),
                    "tmpfs",
                ])
                .arg(&dir),
            "mount a tmpfs",
        );
        run(
            Command::new("chown").arg("postgres:postgres").arg(&dir),
            "give the tmpfs to the postgres user",
        );
        SmallDisk { dir }
    }

    fn filler(&self) -> PathBuf {
        self.dir.join("filler")
    }

    /// Fills what is left of the disk.
    fn fill(&self) {
        let out = Command::new("dd")
            .args(["if=/dev/zero", "bs=1M"])
            .arg(format!("of={}", self.filler().display()))
            .output()
            .expect("dd");
        // dd ends with "No space left on device": that is the point.
        assert!(
            std::fs::metadata(self.filler())
                .map(|m| m.len())
                .unwrap_or(0)
                > 0,
            "filler not written: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn free(&self) {
        std::fs::remove_file(self.filler()).expect("remove the filler");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

async fn post(client: &TlsClient, ingest: &IngestProcess, serial: &str) -> (u16, String) {
    let body = serde_json::to_vec(&example_report(serial)).expect("json");
    let r = client
        .post(
            ingest.report_addr,
            "/v1/reports",
            &[("Content-Type", "application/json")],
            &body,
        )
        .await
        .expect("answered");
    (r.status, r.body)
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_disk_reports_get_503_nothing_breaks_and_storing_resumes_when_space_returns() {
    let disk = SmallDisk::mount(96);
    let tablespace = format!("phonehome_small_{}", uuid::Uuid::new_v4().simple());
    let pg_dir: &Path = &disk.dir.join("pg");
    std::fs::create_dir_all(pg_dir).expect("tablespace dir");
    let _ = Command::new("chown")
        .arg("postgres:postgres")
        .arg(pg_dir)
        .status();
    TestDb::create_tablespace(&tablespace, pg_dir).await;
    let db = TestDb::new_in_tablespace(&tablespace).await;
    let pki = TestPki::new();
    let ingest = IngestProcess::start(&db, &pki).await;
    let client = TlsClient::new(&pki.ca_cert(), Some(&pki.appliance("SN-DISK")));
    assert_eq!(post(&client, &ingest, "SN-DISK").await.0, 202);

    disk.fill();
    // New rows need new pages: a few reports find the disk full.
    let mut refused = None;
    for _ in 0..200 {
        let (status, body) = post(&client, &ingest, "SN-DISK").await;
        assert!(
            status == 202 || status == 503,
            "a full disk must be a 503, not {status}: {body}\n{}",
            ingest.log()
        );
        if status == 503 {
            refused = Some(body);
            break;
        }
    }
    let refused = refused.expect("the full disk refused a report");
    let stored_while_full = db.count("reports").await;
    let ready = get(ingest.ops_addr, "/readyz").await.expect("readyz");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("cannot store"), "{}", ready.body);
    assert!(
        ingest.log().contains("No space left on device")
            || ingest.log().contains("could not extend"),
        "the 503 ({refused}) was not the full disk:\n{}",
        ingest.log()
    );
    // Refused reports left nothing behind: the count only moves with 202s.
    assert_eq!(post(&client, &ingest, "SN-DISK").await.0, 503);
    assert_eq!(db.count("reports").await, stored_while_full);

    disk.free();
    let mut status = 0;
    for _ in 0..20 {
        status = post(&client, &ingest, "SN-DISK").await.0;
        if status == 202 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        status,
        202,
        "stores again once space returns\n{}",
        ingest.log()
    );
    let ready = get(ingest.ops_addr, "/readyz").await.expect("readyz");
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(db.count("reports").await, stored_while_full + 1);

    drop(ingest);
    drop(db);
    TestDb::drop_tablespace(&tablespace).await;
}
