//! `cairn check`: a summary of an intact data directory, a clear error and exit code 1 for a
//! damaged one.

use cairn::btree::DbOptions;
use cairn::mvcc::{AcceptAllLeases, PutRequest, RaftPosition, Request, Store};
use cairn::wal::{RecordType, Wal, WalOptions};
use std::path::Path;
use std::process::Command;

fn cairn_check(dir: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["check", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn build(dir: &Path) {
    std::fs::create_dir_all(dir.join("db")).unwrap();
    let mut store = Store::open(dir.join("db/cairn.db"), DbOptions::default()).unwrap();
    for i in 1..=300u64 {
        let put = PutRequest {
            key: format!("key{i:04}").into_bytes(),
            value: vec![7; 200],
            ..Default::default()
        };
        store
            .apply(
                RaftPosition { index: i, term: 1 },
                &[Request::Put(put)],
                &AcceptAllLeases,
            )
            .unwrap();
    }
    store.checkpoint().unwrap();
    let wal_dir = dir.join("wal");
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .unwrap()
        .run(async move {
            let wal = Wal::open(&wal_dir, WalOptions::default(), 0, |_, _, _| Ok(()))
                .await
                .unwrap();
            for i in 0..5u8 {
                wal.append(RecordType::ENTRY, &[i; 100]).await.unwrap();
            }
            wal.close().await.unwrap();
        });
}

#[test]
fn check_summarizes_an_intact_directory() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let (code, out, err) = cairn_check(dir.path());
    assert_eq!(code, 0, "stderr: {err}");
    for field in [
        "\"wal_records\":5",
        "\"applied_index\":300",
        "\"revision\":301",
        "\"compact_revision\":-1",
    ] {
        assert!(out.contains(field), "{field} missing in {out}");
    }
}

#[test]
fn check_reports_damage_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let db = dir.path().join("db/cairn.db");
    let mut bytes = std::fs::read(&db).unwrap();
    bytes[4096 + 100] ^= 0xff; // the first data page after the header
    std::fs::write(&db, bytes).unwrap();
    let (code, _, err) = cairn_check(dir.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("corrupt") && err.contains("byte offset 4096"),
        "{err}"
    );
}

#[test]
fn check_of_a_missing_directory_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = cairn_check(&dir.path().join("nope"));
    assert_eq!(code, 1);
    assert!(err.contains("is not a directory"), "{err}");
}
