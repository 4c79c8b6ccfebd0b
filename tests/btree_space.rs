//! Tree commits on a file system that fills up: a commit that fails for lack of space is
//! undone (the file cut back to the last durable commit, so no half-written record can be
//! taken for a commit at open), the database goes on, and the same changes commit once there
//! is space. Foreground and background commits alike.
//!
//! The file system is a small tmpfs the test mounts (it needs root); where mounting is not
//! allowed the test says so and passes without running.

mod common;

use common::Tmpfs;

use cairn::btree::{CommitMeta, Db, DbOptions};

fn meta(index: u64) -> CommitMeta {
    CommitMeta {
        applied_index: index,
        applied_term: 1,
        user: Vec::new(),
    }
}

fn key(i: usize) -> Vec<u8> {
    format!("key{i:06}").into_bytes()
}

fn value(i: usize) -> Vec<u8> {
    vec![(i % 251) as u8; 3000]
}

/// Live bytes after the test's two commits, made without any failure.
fn reference_live_bytes() -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(dir.path().join("tree.db"), DbOptions::default()).unwrap();
    for i in 0..100 {
        db.put(0, &key(i), &value(i)).unwrap();
    }
    db.commit(meta(1)).unwrap();
    for i in 100..400 {
        db.put(0, &key(i), &value(i)).unwrap();
    }
    db.commit(meta(2)).unwrap();
    db.stats().live_bytes
}

#[test]
fn a_commit_that_fails_for_space_is_undone_and_succeeds_later() {
    for background in [false, true] {
        let Some(fs) = Tmpfs::mount("2m") else {
            return;
        };
        let ballast = fs.path.join("ballast");
        let path = fs.path.join("tree.db");
        let mut db = Db::open(&path, DbOptions::default()).unwrap();
        for i in 0..100 {
            db.put(0, &key(i), &value(i)).unwrap();
        }
        db.commit(meta(1)).unwrap();
        let durable_len = std::fs::metadata(&path).unwrap().len();
        // Fill the file system, then write more than fits.
        let free = 2 * 1024 * 1024 - durable_len - 64 * 1024;
        std::fs::write(&ballast, vec![1u8; free as usize]).unwrap();
        for i in 100..400 {
            db.put(0, &key(i), &value(i)).unwrap();
        }
        let failed = if background {
            db.commit_background(meta(2)).unwrap();
            db.wait_commit().unwrap_err()
        } else {
            db.commit(meta(2)).unwrap_err()
        };
        assert!(failed.is_no_space(), "{failed}");
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            durable_len,
            "the failed commit's bytes were not cut off"
        );
        assert_eq!(db.last_commit().applied_index, 1);
        // The writer still holds every change, and reads see them.
        assert_eq!(db.get(0, &key(399)).unwrap(), Some(value(399)));
        // Space comes back: the same changes commit.
        std::fs::remove_file(&ballast).unwrap();
        if background {
            db.commit_background(meta(2)).unwrap();
            db.wait_commit().unwrap();
        } else {
            db.commit(meta(2)).unwrap();
        }
        assert_eq!(db.last_commit().applied_index, 2);
        // The space accounting is what the same commits give without the failure.
        assert_eq!(
            db.stats().live_bytes,
            reference_live_bytes(),
            "live bytes drifted (background: {background})"
        );
        drop(db);
        let db = Db::open(&path, DbOptions::default()).unwrap();
        assert_eq!(db.last_commit().applied_index, 2);
        for i in 0..400 {
            assert_eq!(db.get(0, &key(i)).unwrap(), Some(value(i)), "key {i}");
        }
        drop(db);
        drop(fs);
    }
}
