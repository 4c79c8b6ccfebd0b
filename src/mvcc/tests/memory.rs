//! Measurements, not assertions: key-index bytes per key and rebuild time. Run alone, in
//! release mode, with output:
//! `cargo test --release --lib mvcc::tests::memory -- --ignored --nocapture --test-threads=1`

use std::time::Instant;

use crate::btree::{CommitMeta, Db, DbOptions};
use crate::mvcc::key_index::{KeyIndex, KeyIndexBuilder};
use crate::mvcc::range::PRIMARY_TREE;
use crate::mvcc::record::{Record, StoreMeta};
use crate::mvcc::store::index_from_entries;
use crate::mvcc::{Revision, Store};

/// Bytes the allocator has handed out and not taken back (glibc's in-use counters).
fn heap_bytes() -> usize {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let info = unsafe { libc::mallinfo2() };
    info.uordblks + info.hblkhd
}

/// A 16-byte key in random order (splitmix64 of i, as hex).
fn key(i: u64) -> [u8; 16] {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let mut out = [0u8; 16];
    out.copy_from_slice(format!("{z:016x}").as_bytes());
    out
}

fn per_key(bytes: usize, keys: u64) -> f64 {
    bytes as f64 / keys as f64
}

#[test]
#[ignore = "measurement; run alone in release mode (see module doc)"]
fn key_index_bytes_per_key_for_1m_keys() {
    const N: u64 = 1_000_000;
    let before = heap_bytes();
    let mut builder = KeyIndexBuilder::new();
    for i in 0..N {
        let main = i as i64 + 2;
        builder
            .push(&key(i), Revision::new(main, 0), false, main, 1)
            .unwrap();
    }
    let bulk = builder.finish(-1);
    let bulk_bytes = heap_bytes() - before;
    drop(bulk);
    let before = heap_bytes();
    let mut incremental = KeyIndex::new(-1);
    for i in 0..N {
        let main = i as i64 + 2;
        incremental.put(&key(i), Revision::new(main, 0), main, 1);
    }
    let incremental_bytes = heap_bytes() - before;
    println!("key index, {N} keys of 16 bytes, one revision each:");
    println!(
        "  bulk-built (as on open): {:.1} bytes/key",
        per_key(bulk_bytes, N)
    );
    println!(
        "  built by puts:           {:.1} bytes/key",
        per_key(incremental_bytes, N)
    );
}

#[test]
#[ignore = "measurement; run alone in release mode (see module doc)"]
fn open_rebuilds_2m_keys() {
    const N: u64 = 2_000_000;
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(dir.path().join("db"), DbOptions::default()).unwrap();
    let value = [b'v'; 256];
    for i in 0..N {
        let main = i as i64 + 2;
        let record = Record::put(&key(i), main, 1, 0, &value).encode();
        db.put(PRIMARY_TREE, &Revision::new(main, 0).to_key(), &record)
            .unwrap();
    }
    let meta = StoreMeta {
        current_revision: N as i64 + 1,
        compact_revision: -1,
    };
    db.commit(CommitMeta {
        applied_index: 1,
        applied_term: 1,
        user: meta.encode(),
    })
    .unwrap();

    // The store's share of a rebuild: decode, sort and bulk-build, from entries in memory.
    let entries: Vec<_> = db
        .range(
            PRIMARY_TREE,
            std::ops::Bound::Unbounded,
            std::ops::Bound::Unbounded,
            false,
        )
        .collect();
    let started = Instant::now();
    let (index, _) = index_from_entries(entries, -1).unwrap();
    let took = started.elapsed();
    let with_index = heap_bytes();
    drop(index);
    let index_bytes = with_index - heap_bytes();
    println!("rebuild of {N} keys (16-byte keys, 256-byte values):");
    let per_key = per_key(index_bytes, N);
    println!("  index build from scanned entries: {took:?}, index {per_key:.1} bytes/key");

    // End to end: the scan of the tree, the rebuild, and the store's own checks.
    let started = Instant::now();
    let store = Store::from_db(db).unwrap();
    println!("  Store::from_db end to end: {:?}", started.elapsed());
    assert_eq!(store.current_revision(), N as i64 + 1);
}
