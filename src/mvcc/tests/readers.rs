//! Readers on other threads query published views while the writer applies and compacts,
//! also between the chunks of one read.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::{Rng, SeedableRng};

use super::harness::{compact, del, get, put, Harness};
use crate::mvcc::{KeyValue, MvccError, RangeRequest, ReadView, Request, SortOrder, SortTarget};

const KEYS: i64 = 10;
const ENTRIES: i64 = 400;

/// The writer puts `k{i % 10}` = revision of entry i, so entry i is revision i + 2 (the
/// compactions in between do not take revisions) and the state at any revision is known.
fn expected_at(rev: i64) -> Vec<KeyValue> {
    (0..KEYS)
        .filter_map(|j| {
            let last = (0..=rev - 2).rev().find(|i| i % KEYS == j)?;
            Some(KeyValue {
                key: format!("k{j}").into_bytes(),
                create_revision: j + 2,
                mod_revision: last + 2,
                version: last / KEYS + 1,
                value: (last + 2).to_string().into_bytes(),
                lease: 0,
            })
        })
        .collect()
}

#[test]
fn read_view_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync::<ReadView>();
}

#[test]
fn readers_see_exact_past_states_while_the_writer_runs() {
    let mut h = Harness::new();
    let published: Mutex<ReadView> = Mutex::new(h.store.read_view());
    let done = AtomicBool::new(false);
    let reads = AtomicUsize::new(0);
    let matched = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for seed in 0..2 {
            let (published, done, reads, matched) = (&published, &done, &reads, &matched);
            s.spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                while !done.load(Ordering::Acquire) {
                    let view = published.lock().clone();
                    let rev = view.revision() - rng.gen_range(0..30i64);
                    if rev < 1 {
                        continue;
                    }
                    let all = RangeRequest {
                        revision: rev,
                        ..get("k", "l")
                    };
                    // Half the reads walk the index a few keys per chunk, letting the
                    // writer in between.
                    let read = if rng.gen_bool(0.5) {
                        view.range(&all)
                    } else {
                        view.range_in_chunks(&all, rng.gen_range(1..=3), std::thread::yield_now)
                    };
                    match read {
                        Ok(r) => {
                            assert_eq!(
                                r.kvs,
                                expected_at(rev),
                                "at {rev} (view {})",
                                view.revision()
                            );
                            assert_eq!(r.header.revision, view.revision());
                            matched.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(MvccError::Compacted) => {}
                        Err(e) => panic!("at {rev}: {e}"),
                    }
                    reads.fetch_add(1, Ordering::Release);
                }
            });
        }
        for i in 0..ENTRIES {
            h.ok(Request::Put(put(
                &format!("k{}", i % KEYS),
                &(i + 2).to_string(),
            )));
            if i % 50 == 49 {
                h.ok(compact(h.store.current_revision() - 20));
            }
            *published.lock() = h.store.read_view();
            // Interleave for real: on a busy machine the writer could otherwise finish
            // before a reader is scheduled. Bounded, so a stuck reader fails the test.
            let seen = reads.load(Ordering::Acquire);
            let deadline = Instant::now() + Duration::from_secs(10);
            while reads.load(Ordering::Acquire) == seen && Instant::now() < deadline {
                std::thread::yield_now();
            }
        }
        done.store(true, Ordering::Release);
    });
    assert!(
        matched.load(Ordering::Relaxed) > ENTRIES as usize / 2,
        "most reads are not compacted"
    );
    let last = h.store.range(&get("k", "l")).unwrap();
    assert_eq!(last.kvs, expected_at(ENTRIES + 1));
}

#[test]
fn old_view_reads_its_revision_after_later_writes_and_compaction() {
    let mut h = Harness::new();
    for i in 0..25 {
        h.ok(Request::Put(put(
            &format!("k{}", i % KEYS),
            &(i + 2).to_string(),
        )));
    }
    let view = h.store.read_view();
    let hash = view.hash_kv(0).unwrap();
    for i in 25..60 {
        h.ok(Request::Put(put(
            &format!("k{}", i % KEYS),
            &(i + 2).to_string(),
        )));
    }
    h.ok(compact(20));
    let at = |rev| RangeRequest {
        revision: rev,
        ..get("k", "l")
    };
    assert_eq!(view.range(&at(0)).unwrap().kvs, expected_at(26));
    assert_eq!(view.range(&at(21)).unwrap().kvs, expected_at(21));
    assert!(
        matches!(view.range(&at(19)), Err(MvccError::Compacted)),
        "compaction since the view counts"
    );
    assert!(matches!(view.range(&at(27)), Err(MvccError::FutureRev)));
    assert_eq!(
        view.hash_kv(0).unwrap(),
        hash,
        "the view's tree is a snapshot"
    );
}

/// Keys walked per chunk by the reads below: a few chunks over the fixture's 20 keys.
const SMALL_CHUNK_KEYS: usize = 3;

/// 20 keys with overwrites and deletes, and a view whose revision is past the one the reads
/// below are at; returns the harness, the view and that read revision.
fn chunked_fixture() -> (Harness, ReadView, i64) {
    let mut h = Harness::new();
    for i in 0..20 {
        h.ok(Request::Put(put(&format!("k{i:02}"), &format!("v{i}"))));
    }
    for i in (0..20).step_by(2) {
        h.ok(Request::Put(put(&format!("k{i:02}"), "again")));
    }
    h.ok(Request::DeleteRange(del("k05", "")));
    h.ok(Request::DeleteRange(del("k11", "k13")));
    let read_at = h.store.current_revision();
    h.ok(Request::Put(put("k01", "after the read revision")));
    let view = h.store.read_view();
    (h, view, read_at)
}

/// The reads compared (at the current revision; the tests set theirs): etcd's options that
/// the index walk serves.
fn chunked_reads() -> Vec<RangeRequest> {
    let all = get("k", "l");
    vec![
        all.clone(),
        RangeRequest {
            limit: 4,
            ..all.clone()
        },
        RangeRequest {
            count_only: true,
            ..all.clone()
        },
        RangeRequest {
            keys_only: true,
            sort_order: SortOrder::Descend,
            sort_target: SortTarget::Mod,
            limit: 5,
            ..all.clone()
        },
        RangeRequest {
            min_mod_revision: 15,
            max_create_revision: 18,
            ..all.clone()
        },
        RangeRequest {
            key: b"k1".to_vec(),
            range_end: vec![0],
            limit: 3,
            ..all
        },
    ]
}

/// The writer's work between two chunks, the `n`th time: puts, deletes and compactions up
/// to the read revision `at` (never past it), on keys behind and ahead of the walk.
fn write_between_chunks(h: &mut Harness, n: usize, at: i64) {
    match n {
        0 => {
            h.ok(Request::Put(put("k00", "behind")));
            h.ok(Request::Put(put("k10a", "new")));
            h.ok(compact(at - 5));
        }
        1 => {
            h.ok(Request::DeleteRange(del("k15", "k18")));
            h.ok(Request::Put(put("k1z", "new, ahead")));
        }
        2 => {
            h.ok(compact(at));
        }
        _ => {
            h.ok(Request::Put(put("k19", "again")));
        }
    }
}

#[test]
fn chunked_read_is_the_read_at_its_revision_while_the_writer_works_between_chunks() {
    for r in chunked_reads() {
        let (mut h, view, at) = chunked_fixture();
        let r = RangeRequest { revision: at, ..r };
        let want = view.range(&r).unwrap();
        let mut pauses = 0;
        let got = view
            .range_in_chunks(&r, SMALL_CHUNK_KEYS, || {
                write_between_chunks(&mut h, pauses, at);
                pauses += 1;
            })
            .unwrap();
        assert_eq!(got, want, "{r:?}");
        assert!(pauses >= 3, "the writer worked between chunks of {r:?}");
        assert_eq!(
            h.store.compact_revision(),
            at,
            "compacted up to the read revision"
        );
        assert_eq!(
            view.range(&r).unwrap(),
            want,
            "and a read after it all agrees"
        );
    }
}

#[test]
fn chunked_read_fails_when_compaction_passes_its_revision_midway() {
    for r in chunked_reads() {
        let (mut h, view, at) = chunked_fixture();
        let r = RangeRequest { revision: at, ..r };
        let mut pauses = 0;
        let got = view.range_in_chunks(&r, SMALL_CHUNK_KEYS, || {
            if pauses == 1 {
                h.ok(compact(at + 1));
            }
            pauses += 1;
        });
        assert!(matches!(got, Err(MvccError::Compacted)), "{r:?}: {got:?}");
        assert_eq!(pauses, 2, "the chunk after the compaction failed");
        assert!(matches!(view.range(&r), Err(MvccError::Compacted)));
    }
}
