//! One test per bug the fuzz targets found, each with the smallest damage that showed it.

use std::ops::Bound as Range;
use std::path::Path;

use cairn::btree::{CommitMeta, Db, DbOptions};
use cairn::raftlog::{encode_entry, encode_marker, RaftLog};
use cairn::wal::{RecordType, Wal, WalError};
use raft::eraftpb::{ConfState, Entry};
use raft::Storage;

use crate::harness::{meter_start, meter_stop};
use crate::tree::reseal;
use crate::wal::{options as wal_options, reseal as wal_reseal};

const PAGE: usize = 4096;

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn set_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A file whose tree 0 holds `count` keys of `key_bytes` bytes (values of `value_bytes`),
/// committed once; returns the path and the page of tree 0's root.
fn build(
    dir: &Path,
    count: usize,
    key_bytes: usize,
    value_bytes: usize,
) -> (std::path::PathBuf, usize) {
    let path = dir.join("db");
    let mut db = Db::open(&path, DbOptions::default()).expect("open");
    for i in 0..count {
        let mut key = format!("{i:05}").into_bytes();
        key.resize(key_bytes, b'.');
        db.put(0, &key, &vec![7; value_bytes]).expect("put");
    }
    db.commit(CommitMeta::default()).expect("commit");
    drop(db);
    let bytes = std::fs::read(&path).expect("read");
    let record = bytes.len() - 2 * PAGE;
    (path, u64_at(&bytes, record + 104) as usize)
}

/// Slot `i`'s entry offset in the page at `page`.
fn entry(bytes: &[u8], page: usize, i: usize) -> usize {
    let slot = page * PAGE + 32 + 2 * i;
    page * PAGE + u16::from_le_bytes([bytes[slot], bytes[slot + 1]]) as usize
}

fn damage(path: &Path, change: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).expect("read");
    change(&mut bytes);
    reseal(&mut bytes);
    std::fs::write(path, bytes).expect("write");
}

fn read_everything(db: &Db) -> Result<usize, cairn::btree::BtreeError> {
    db.range(0, Range::Unbounded, Range::Unbounded, false)
        .chain(db.range(0, Range::Unbounded, Range::Unbounded, true))
        .try_fold(0, |n, kv| kv.map(|_| n + 1))
}

/// A branch whose child is itself: reads looped forever (and pushed onto the iterator's
/// stack without end).
#[test]
fn a_branch_pointing_at_itself_is_corrupt_not_a_hang() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, root) = build(dir.path(), 200, 40, 40);
    damage(&path, |b| {
        let at = entry(b, root, 0);
        set_u64(b, at, root as u64);
    });
    let db = Db::open(&path, DbOptions::default()).expect("open");
    assert!(read_everything(&db).is_err());
    assert!(db.get(0, b"00000").is_err());
}

/// An overflow reference claiming 4 GiB (and one at a page id near `u64::MAX`): the read
/// allocated the whole length before finding the file too short, and the offset
/// arithmetic overflowed.
#[test]
fn overflow_references_out_of_range_are_corrupt() {
    for (page, len) in [(1u64, u32::MAX), (u64::MAX - 2, 5000)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, root) = build(dir.path(), 1, 8, 5000);
        damage(&path, |b| {
            let at = entry(b, root, 0);
            b[at + 4..at + 8].copy_from_slice(&len.to_le_bytes());
            set_u64(b, at + 16, page);
        });
        let db = Db::open(&path, DbOptions::default()).expect("open");
        meter_start(0);
        let read = read_everything(&db);
        let allocated = meter_stop();
        assert!(read.is_err(), "page {page} len {len}");
        assert!(allocated.largest < 1 << 20, "{allocated:?}");
    }
}

/// A commit record naming a root beyond the file: `page * 4096` overflowed.
#[test]
fn a_root_beyond_the_file_does_not_overflow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, _) = build(dir.path(), 20, 8, 8);
    damage(&path, |b| {
        let n = b.len();
        for record in [n - 2 * PAGE, n - PAGE] {
            set_u64(b, record + 104, u64::MAX - 1);
        }
    });
    if let Ok(db) = Db::open(&path, DbOptions::default()) {
        let _ = read_everything(&db);
    }
}

/// A commit record with live bytes 0 (or `u64::MAX`): the next commit's accounting
/// underflowed (overflowed).
#[test]
fn damaged_live_bytes_do_not_break_the_next_commit() {
    for live in [0, u64::MAX] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, _) = build(dir.path(), 20, 8, 8);
        damage(&path, |b| {
            let n = b.len();
            for record in [n - 2 * PAGE, n - PAGE] {
                set_u64(b, record + 88, live);
                set_u64(b, record + 16, u64::MAX);
            }
        });
        let mut db = Db::open(&path, DbOptions::default()).expect("open");
        db.put(0, b"k", b"v").expect("put");
        db.commit(CommitMeta::default()).expect("commit");
    }
}

/// A leaf beside a branch under the same parent: deleting until they merged hit
/// `unreachable!`.
#[test]
fn a_leaf_beside_a_branch_is_corrupt_on_merge() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Keys of 300 bytes: 13 to a leaf, 13 children to a branch; 190 keys make 15 leaves
    // under two branches (13 and 2 children) under the root.
    let (path, root) = build(dir.path(), 190, 300, 0);
    let bytes = std::fs::read(&path).expect("read");
    let branch = u64_at(&bytes, entry(&bytes, root, 0)) as usize;
    let leaf = u64_at(&bytes, entry(&bytes, branch, 0));
    assert_eq!(bytes[branch * PAGE + 4], 2, "the root's child is a branch");
    damage(&path, |b| {
        let at = entry(b, root, 0);
        set_u64(b, at, leaf);
    });
    let mut db = Db::open(&path, DbOptions::default()).expect("open");
    let mut failed = false;
    // The first leaf, now the root's first child, becomes under-full and merges with the
    // second branch.
    for i in 0..12 {
        let mut key = format!("{i:05}").into_bytes();
        key.resize(300, b'.');
        failed |= db.delete(0, &key).is_err();
    }
    assert!(failed, "the merge of a leaf with a branch must fail");
}

/// An entry (or marker) at index `u64::MAX`: the log's "last index + 1" overflowed.
#[test]
fn raft_records_at_the_largest_index_are_refused() {
    let log = RaftLog::new(ConfState::default());
    let entry = Entry {
        index: u64::MAX,
        term: 1,
        ..Default::default()
    };
    assert!(log
        .replay(RecordType::ENTRY, &encode_entry(&entry))
        .is_err());
    let marker = encode_marker(u64::MAX, 1, &Default::default());
    assert!(log.replay(RecordType::SNAPSHOT, &marker).is_err());
    let last = Entry {
        index: u64::MAX - 1,
        term: 1,
        ..Default::default()
    };
    log.replay(RecordType::ENTRY, &encode_entry(&last))
        .expect("the largest index");
    let last_index = log.last_index().expect("last index");
    assert_eq!(last_index, u64::MAX - 1);
    assert!(log
        .entries(
            last_index,
            last_index + 1,
            None,
            raft::GetEntriesContext::empty(false)
        )
        .is_ok());
}

/// A segment header claiming 1 TiB and a batch claiming 3 GiB of records, in a file of two
/// blocks: open filled the missing bytes of the batch with 3 GiB of zeros. A segment shorter
/// than its size is damage now, refused before any batch is read.
#[test]
fn a_huge_batch_in_a_cut_segment_is_not_filled_in() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let wal_dir = dir.path().join("wal");
    let allocated = glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            cairn::wal::keep_reactor_awake();
            let wal = Wal::open(&wal_dir, wal_options(), 1, |_, _, _| Ok(()))
                .await
                .expect("open");
            wal.append(RecordType::ENTRY, b"one").await.expect("append");
            wal.close().await.expect("close");
            let name = "0000000000000000.wal".to_owned();
            let mut bytes = std::fs::read(wal_dir.join(&name)).expect("read");
            bytes.truncate(2 * PAGE);
            set_u64(&mut bytes, 24, 1 << 40);
            bytes[PAGE + 24..PAGE + 28].copy_from_slice(&(3u32 << 30).to_le_bytes());
            let mut files = vec![(name, bytes)];
            wal_reseal(&mut files, false);
            for entry in std::fs::read_dir(&wal_dir).expect("list") {
                std::fs::remove_file(entry.expect("entry").path()).expect("remove");
            }
            std::fs::write(wal_dir.join(&files[0].0), &files[0].1).expect("write");
            meter_start(0);
            let opened = Wal::open(&wal_dir, wal_options(), 1, |_, _, _| Ok(())).await;
            let allocated = meter_stop();
            assert!(
                matches!(opened, Err(WalError::Corrupt { .. })),
                "a cut segment is damage: {:?}",
                opened.err()
            );
            allocated
        })
        .expect("executor")
        .join()
        .expect("executor thread");
    assert!(allocated.largest < 16 << 20, "{allocated:?}");
}

/// A chain of 3000 one-child branches above a leaf (every page older than its parent, all
/// checksums right): a put recursed once per level and overflowed the stack.
#[test]
fn a_chain_of_branches_is_corrupt_for_writes_not_a_stack_overflow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, leaf) = build(dir.path(), 1, 8, 8);
    let original = std::fs::read(&path).expect("read");
    let levels = 3000;
    let mut bytes = original[..(leaf + 1) * PAGE].to_vec();
    for p in leaf + 1..=leaf + levels {
        let mut page = vec![0u8; PAGE];
        page[4] = 2;
        page[6..8].copy_from_slice(&1u16.to_le_bytes());
        set_u64(&mut page, 8, p as u64);
        page[32..34].copy_from_slice(&34u16.to_le_bytes());
        set_u64(&mut page, 34, p as u64 - 1);
        bytes.extend_from_slice(&page);
    }
    let record = bytes.len() / PAGE;
    for copy in 0..2 {
        let mut page = original[original.len() - (2 - copy) * PAGE..][..PAGE].to_vec();
        set_u64(&mut page, 8, (record + copy) as u64);
        set_u64(&mut page, 104, (leaf + levels) as u64);
        bytes.extend_from_slice(&page);
    }
    reseal(&mut bytes);
    std::fs::write(&path, bytes).expect("write");
    let put = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(move || {
            let mut db = Db::open(&path, DbOptions::default()).expect("open");
            assert_eq!(
                db.get(0, b"00000...").expect("a read descends"),
                Some(vec![7; 8])
            );
            db.put(0, b"k", b"v").map_err(|e| e.to_string())
        })
        .expect("thread")
        .join()
        .expect("no stack overflow");
    assert!(
        put.as_ref().is_err_and(|e| e.contains("deeper than")),
        "{put:?}"
    );
}

/// A leaf whose slots all point at one entry, grown to cover its neighbours: each entry fit
/// the page, all of them together did not, and the commit after a change wrote the copied
/// node with an `assert!` ("page overflow").
#[test]
fn overlapping_entries_that_hold_more_than_a_page_are_corrupt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, leaf) = build(dir.path(), 13, 300, 0);
    damage(&path, |b| {
        let first = entry(b, leaf, 0);
        b[first..first + 2].copy_from_slice(&1000u16.to_le_bytes());
        let slot = (first - leaf * PAGE) as u16;
        for i in 0..13 {
            let at = leaf * PAGE + 32 + 2 * i;
            b[at..at + 2].copy_from_slice(&slot.to_le_bytes());
        }
    });
    let mut db = Db::open(&path, DbOptions::default()).expect("open");
    let changed = db
        .put(0, b"zzz", b"v")
        .and_then(|()| db.commit(CommitMeta::default()));
    assert!(changed.is_err());
}

/// A WAL holding one record, damaged by `change` (header and batch checksums then made
/// right again) and opened afresh, expecting its log to start at `first_lsn`; returns what open said and, if it opened, what one more
/// append said.
fn reopen_damaged_wal(
    first_lsn: u64,
    change: impl FnOnce(&mut (String, Vec<u8>)) + Send + 'static,
) -> (Result<(), String>, Option<Result<(), String>>) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let wal_dir = dir.path().join("wal");
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            cairn::wal::keep_reactor_awake();
            let wal = Wal::open(&wal_dir, wal_options(), 1, |_, _, _| Ok(()))
                .await
                .expect("open");
            wal.append(RecordType::ENTRY, b"one").await.expect("append");
            wal.close().await.expect("close");
            let name = "0000000000000000.wal".to_owned();
            let bytes = std::fs::read(wal_dir.join(&name)).expect("read");
            let mut files = vec![(name, bytes)];
            change(&mut files[0]);
            wal_reseal(&mut files, false);
            for entry in std::fs::read_dir(&wal_dir).expect("list") {
                std::fs::remove_file(entry.expect("entry").path()).expect("remove");
            }
            std::fs::write(wal_dir.join(&files[0].0), &files[0].1).expect("write");
            match Wal::open(&wal_dir, wal_options(), first_lsn, |_, _, _| Ok(())).await {
                Err(e) => (Err(e.to_string()), None),
                Ok(wal) => {
                    let appended = wal.append(RecordType::ENTRY, b"two").await;
                    let _ = wal.close().await;
                    (
                        Ok(()),
                        Some(appended.map(|_| ()).map_err(|e| e.to_string())),
                    )
                }
            }
        })
        .expect("executor")
        .join()
        .expect("executor thread")
}

/// A lone segment named and stamped with the last sequence number: the writer added one to
/// it for the segment to preallocate next, and overflowed. No segment can follow it, so
/// open refuses it as damage.
#[test]
fn a_segment_with_the_last_sequence_number_is_corrupt_not_an_overflow() {
    let (opened, _) = reopen_damaged_wal(1, |(name, bytes)| {
        *name = format!("{:016x}.wal", u64::MAX);
        set_u64(bytes, 16, u64::MAX);
        set_u64(bytes, PAGE + 16, u64::MAX);
    });
    let error = opened.expect_err("opened");
    assert!(error.contains("last sequence number"), "{error}");
}

/// A record at the next-to-last LSN: the next append would need LSNs past the last one.
/// It fails with an error instead of overflowing.
#[test]
fn appending_past_the_last_lsn_is_an_error_not_an_overflow() {
    let (opened, appended) = reopen_damaged_wal(u64::MAX - 1, |(name, bytes)| {
        // Segment 1, as if segment 0 had been deleted after a log compaction: only segment
        // 0 must start at LSN 1.
        *name = format!("{:016x}.wal", 1);
        set_u64(bytes, 16, 1);
        set_u64(bytes, PAGE + 16, 1);
        set_u64(bytes, 32, u64::MAX - 1);
        set_u64(bytes, PAGE + 8, u64::MAX - 1);
    });
    assert_eq!(opened, Ok(()));
    let error = appended
        .expect("appended")
        .expect_err("appended past the last LSN");
    assert!(error.contains("no room for more records"), "{error}");
}
