use std::ops::ControlFlow;

use super::*;

fn rev(main: i64, sub: u32) -> Revision {
    Revision::new(main, sub)
}

/// etcd's `TestKeyIndexCompactAndKeep` fixture for key "foo": puts at 2 and 4, tombstone at 6;
/// puts at 8 and 10, tombstone at 12; puts at 14 and 15.1, tombstone at 16.
fn etcd_fixture() -> KeyIndex {
    let mut index = KeyIndex::new(-1);
    let k = b"foo".as_slice();
    let put = |index: &mut KeyIndex, r: Revision| {
        let (created, version) = index.next_put(k, r.main);
        index.put(k, r, created, version);
    };
    for (puts, tomb) in [([2, 4], 6), ([8, 10], 12)] {
        for p in puts {
            put(&mut index, rev(p, 0));
        }
        index.tombstone(k, rev(tomb, 0));
    }
    put(&mut index, rev(14, 0));
    put(&mut index, rev(15, 1));
    index.tombstone(k, rev(16, 0));
    index
}

fn stored(index: &KeyIndex, key: &[u8]) -> Vec<(i64, u32, bool)> {
    let Some(entry) = index.keys.get(key) else {
        return Vec::new();
    };
    let older = entry.older.as_deref().cloned().unwrap_or_default();
    older
        .iter()
        .chain([&entry.latest])
        .map(|r| (r.main, r.sub, r.tombstone))
        .collect()
}

#[test]
fn entry_sizes_stay_compact() {
    assert_eq!(std::mem::size_of::<CompactKey>(), 24);
    assert_eq!(std::mem::size_of::<IndexRev>(), 16);
    assert_eq!(std::mem::size_of::<KeyEntry>(), 40);
}

#[test]
fn compact_key_orders_like_its_bytes() {
    let keys: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"\0".to_vec(),
        b"a".to_vec(),
        vec![b'a'; 22],
        vec![b'a'; 23],
        vec![b'a'; 24],
        vec![b'a'; 100],
        b"b".to_vec(),
        vec![0xff; 23],
        vec![0xff; 24],
    ];
    for a in &keys {
        let ca = CompactKey::new(a);
        assert_eq!(ca.as_bytes(), a.as_slice());
        for b in &keys {
            assert_eq!(ca.cmp(&CompactKey::new(b)), a.cmp(b), "{a:?} vs {b:?}");
        }
    }
}

#[test]
fn visibility_follows_generations() {
    let index = etcd_fixture();
    let visible = |at| {
        let mut found = None;
        index.visit(KeyRange::Single(b"foo"), at, |_, r| found = Some(r));
        found
    };
    let expected = [
        (1, None),
        (2, Some(rev(2, 0))),
        (3, Some(rev(2, 0))),
        (5, Some(rev(4, 0))),
        (6, None),
        (7, None),
        (8, Some(rev(8, 0))),
        (11, Some(rev(10, 0))),
        (12, None),
        (14, Some(rev(14, 0))),
        (15, Some(rev(15, 1))),
        (16, None),
        (100, None),
    ];
    for (at, want) in expected {
        assert_eq!(visible(at), want, "at {at}");
    }
}

#[test]
fn compaction_matches_etcd_key_index_table() {
    let all = stored(&etcd_fixture(), b"foo");
    // Index into `all` of the first revision kept by compaction at `at` (etcd 3.4.34 rules).
    let first_kept = |at: i64| match at {
        1 => 0,
        2..=3 => 0,
        4..=5 => 1,
        6 => 2,
        7 => 3,
        8..=9 => 3,
        10..=11 => 4,
        12 => 5,
        13 => 6,
        14 => 6,
        15 => 7,
        16 => 8,
        _ => 9,
    };
    for at in 1..=18 {
        let mut index = etcd_fixture();
        let dropped = index.compact(at);
        let keep = first_kept(at);
        assert_eq!(stored(&index, b"foo"), all[keep..].to_vec(), "kept at {at}");
        let want_dropped: Vec<Revision> = all[..keep].iter().map(|r| rev(r.0, r.1)).collect();
        assert_eq!(dropped, want_dropped, "dropped at {at}");
        assert_eq!(index.len(), usize::from(keep < all.len()));
        assert_eq!(index.compact_revision(), at);
    }
}

#[test]
fn put_tracks_create_revision_and_version() {
    let mut index = KeyIndex::new(-1);
    assert_eq!(index.next_put(b"k", 2), (2, 1));
    index.put(b"k", rev(2, 0), 2, 1);
    assert_eq!(index.next_put(b"k", 3), (2, 2));
    index.put(b"k", rev(3, 0), 2, 2);
    index.tombstone(b"k", rev(4, 0));
    assert_eq!(
        index.next_put(b"k", 5),
        (5, 1),
        "delete resets version and creation"
    );
}

#[test]
fn ranges_cover_etcd_key_conventions() {
    let mut index = KeyIndex::new(-1);
    for (i, k) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        index.put(k.as_bytes(), rev(i as i64 + 2, 0), i as i64 + 2, 1);
    }
    let keys = |range: KeyRange<'_>| {
        index
            .live_keys(range, 100)
            .into_iter()
            .map(|k| String::from_utf8(k).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(KeyRange::new(b"b", b"")), ["b"]);
    assert_eq!(keys(KeyRange::new(b"bb", b"")), Vec::<String>::new());
    assert_eq!(keys(KeyRange::new(b"b", b"d")), ["b", "c"]);
    assert_eq!(keys(KeyRange::new(b"c", b"c")), Vec::<String>::new());
    assert_eq!(keys(KeyRange::new(b"d", b"b")), Vec::<String>::new());
    assert_eq!(keys(KeyRange::new(b"c", b"\0")), ["c", "d", "e"]);
    assert_eq!(keys(KeyRange::new(b"\0", b"\0")), ["a", "b", "c", "d", "e"]);
}

/// Walks `range` in chunks of `max_keys`, breaking after each key in `breaks`; returns the
/// keys visited and the number of chunks.
fn walk_in_chunks(
    index: &KeyIndex,
    range: KeyRange<'_>,
    max_keys: usize,
    breaks: &[&str],
) -> (Vec<String>, usize) {
    let mut seen = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    for chunks in 1..=100 {
        after = index.scan_from(range, after.as_deref(), max_keys, |key, _| {
            let key = String::from_utf8(key.to_vec()).unwrap();
            let stop = breaks.contains(&key.as_str());
            seen.push(key);
            if stop {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        if after.is_none() {
            return (seen, chunks);
        }
    }
    panic!("a walk of {max_keys}-key chunks did not end");
}

#[test]
fn chunked_walks_visit_every_key_once_in_order() {
    let mut index = KeyIndex::new(-1);
    let all = ["a", "b", "c", "d", "e", "f", "g"];
    for (i, k) in all.iter().enumerate() {
        index.put(k.as_bytes(), rev(i as i64 + 2, 0), i as i64 + 2, 1);
    }
    for range in [
        KeyRange::new(b"a", b"\0"),
        KeyRange::new(b"b", b"f"),
        KeyRange::new(b"\0", b"z"),
        KeyRange::new(b"c", b""),
        KeyRange::new(b"cc", b""),
        KeyRange::new(b"f", b"b"),
    ] {
        let (whole, chunks) = walk_in_chunks(&index, range, usize::MAX, &[]);
        assert_eq!(chunks, 1);
        for max_keys in 1..=8 {
            let (seen, chunks) = walk_in_chunks(&index, range, max_keys, &[]);
            assert_eq!(seen, whole, "{range:?} in chunks of {max_keys}");
            // No empty last chunk: the walk knows when the range is done.
            assert_eq!(chunks, whole.len().div_ceil(max_keys).max(1), "{range:?}");
            let (seen, _) = walk_in_chunks(&index, range, max_keys, &["b", "c", "e"]);
            assert_eq!(seen, whole, "{range:?} in chunks of {max_keys}, breaking");
        }
    }
    let (seen, chunks) = walk_in_chunks(&index, KeyRange::new(b"a", b"\0"), 100, &["c"]);
    assert_eq!((seen.len(), chunks), (all.len(), 2), "a break ends a chunk");
}

#[test]
fn chunked_walks_resume_after_keys_that_changed() {
    let mut index = KeyIndex::new(-1);
    for (i, k) in ["a", "b", "d", "e"].iter().enumerate() {
        index.put(k.as_bytes(), rev(i as i64 + 2, 0), i as i64 + 2, 1);
    }
    let range = KeyRange::new(b"a", b"e");
    let keys_after = |index: &KeyIndex, after: &[u8]| {
        let mut seen = Vec::new();
        let last = index.scan_from(range, Some(after), 10, |key, _| {
            seen.push(key.to_vec());
            ControlFlow::Continue(())
        });
        assert_eq!(last, None);
        seen
    };
    // Resuming after a key that compaction removed, or one that never existed.
    assert_eq!(keys_after(&index, b"c"), [b"d".to_vec()]);
    assert_eq!(keys_after(&index, b"b"), [b"d".to_vec()]);
    // Before the range's start, and at or past its end.
    assert_eq!(keys_after(&index, b"\0").len(), 3);
    assert!(keys_after(&index, b"e").is_empty());
    assert!(keys_after(&index, b"zz").is_empty());
    let single = index.scan_from(KeyRange::Single(b"b"), Some(b"b"), 1, |_, _| {
        panic!("nothing is after the only key")
    });
    assert_eq!(single, None);
    // A key added behind the walk is not visited; one ahead of it is.
    index.put(b"aa", rev(10, 0), 10, 1);
    index.put(b"c", rev(11, 0), 11, 1);
    assert_eq!(keys_after(&index, b"b"), [b"c".to_vec(), b"d".to_vec()]);
}

#[test]
fn builder_matches_incremental_index() {
    // A put and a delete of the same key inside one transaction share `main`.
    let mut live = KeyIndex::new(-1);
    let mut builder = KeyIndexBuilder::new();
    let ops: &[(&[u8], i64, u32, bool)] = &[
        (b"x", 2, 0, false),
        (b"a-key-longer-than-23-bytes!", 2, 1, false),
        (b"x", 3, 0, false),
        (b"y", 4, 0, false),
        (b"y", 4, 1, true),
        (b"x", 5, 0, true),
        (b"x", 6, 0, false),
    ];
    for &(key, main, sub, tombstone) in ops {
        let r = rev(main, sub);
        if tombstone {
            live.tombstone(key, r);
            builder.push(key, r, true, 0, 0).unwrap();
        } else {
            let (created, version) = live.next_put(key, main);
            live.put(key, r, created, version);
            builder.push(key, r, false, created, version).unwrap();
        }
    }
    assert_eq!(builder.last_revision(), Some(rev(6, 0)));
    assert_eq!(builder.finish(-1), live);
}

#[test]
fn builder_rejects_unordered_revisions() {
    let mut builder = KeyIndexBuilder::new();
    builder.push(b"a", rev(3, 0), false, 3, 1).unwrap();
    assert!(matches!(
        builder.push(b"b", rev(3, 0), false, 3, 1),
        Err(MvccError::CorruptRecord { .. })
    ));
}
