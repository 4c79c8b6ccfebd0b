//! The B+tree against a `BTreeMap` model: random puts, deletes, ranges (forward and reverse,
//! every bound kind), commits, reopens (uncommitted writes vanish), views held across later
//! writes, and online space reclamation.

use cairn::btree::{CommitMeta, Db, DbOptions, View};
use proptest::prelude::*;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;

type Model = Vec<BTreeMap<Vec<u8>, Vec<u8>>>;
const TREES: u8 = 3;

fn open(path: &Path) -> Db {
    Db::open(
        path,
        DbOptions {
            branch_cache_pages: 64,
            ..Default::default()
        },
    )
    .expect("open")
}

fn key(n: u32) -> Vec<u8> {
    format!("key{:08}", n).into_bytes()
}

fn value(rng: &mut StdRng) -> Vec<u8> {
    let len = match rng.gen_range(0..20) {
        0 => rng.gen_range(1000..9000),
        1 => 0,
        _ => rng.gen_range(1..300),
    };
    (0..len).map(|_| rng.gen()).collect()
}

fn bound(rng: &mut StdRng, space: u32) -> Bound<Vec<u8>> {
    match rng.gen_range(0..3) {
        0 => Bound::Unbounded,
        1 => Bound::Included(key(rng.gen_range(0..space))),
        _ => Bound::Excluded(key(rng.gen_range(0..space))),
    }
}

fn as_ref(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    b.as_ref().map(Vec::as_slice)
}

fn check_range(
    view: &View,
    t: u8,
    model: &BTreeMap<Vec<u8>, Vec<u8>>,
    lo: &Bound<Vec<u8>>,
    hi: &Bound<Vec<u8>>,
) {
    let empty = match (lo, hi) {
        (Bound::Included(a), Bound::Included(b)) => a > b,
        (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) => {
            a >= b
        }
        _ => false,
    };
    let mut want: Vec<_> = if empty {
        Vec::new()
    } else {
        model
            .range((lo.clone(), hi.clone()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    same(
        &collect_view(view, t, as_ref(lo), as_ref(hi), false),
        &want,
        "forward",
    );
    want.reverse();
    same(
        &collect_view(view, t, as_ref(lo), as_ref(hi), true),
        &want,
        "reverse",
    );
}

/// Compares entry lists, reporting the first difference compactly.
fn same(got: &[(Vec<u8>, Vec<u8>)], want: &[(Vec<u8>, Vec<u8>)], what: &str) {
    let show = |e: Option<&(Vec<u8>, Vec<u8>)>| {
        e.map(|(k, v)| format!("{}={}B", String::from_utf8_lossy(k), v.len()))
    };
    if let Some(i) = (0..got.len().max(want.len())).find(|&i| got.get(i) != want.get(i)) {
        panic!(
            "{what}: {} entries vs {} expected; first difference at {i}: got {:?}, want {:?}",
            got.len(),
            want.len(),
            show(got.get(i)),
            show(want.get(i))
        );
    }
}

fn collect_view(
    v: &View,
    t: u8,
    lo: Bound<&[u8]>,
    hi: Bound<&[u8]>,
    rev: bool,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    v.range(t, lo, hi, rev).map(|r| r.expect("read")).collect()
}

fn check_all(db: &Db, model: &Model) {
    for t in 0..TREES {
        let got: Vec<_> = db
            .range(t, Bound::Unbounded, Bound::Unbounded, false)
            .map(|r| r.expect("read"))
            .collect();
        let want: Vec<_> = model[t as usize]
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        same(&got, &want, &format!("tree {t}"));
    }
}

/// One randomized run of `steps` operations over a key space of `space` keys.
fn run(seed: u64, steps: usize, space: u32) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut db = open(&path);
    let mut model: Model = vec![BTreeMap::new(); TREES as usize];
    let mut durable = model.clone();
    let mut views: Vec<(View, Model)> = Vec::new();
    let mut index = 0u64;
    for _ in 0..steps {
        let t = rng.gen_range(0..TREES);
        match rng.gen_range(0..1000) {
            0..=549 => {
                let (k, v) = (key(rng.gen_range(0..space)), value(&mut rng));
                db.put(t, &k, &v).unwrap();
                model[t as usize].insert(k, v);
            }
            550..=849 => {
                let k = key(rng.gen_range(0..space));
                let existed = db.delete(t, &k).unwrap();
                assert_eq!(existed, model[t as usize].remove(&k).is_some());
            }
            850..=929 => {
                let k = key(rng.gen_range(0..space));
                assert_eq!(db.get(t, &k).unwrap(), model[t as usize].get(&k).cloned());
            }
            930..=969 => {
                let (lo, hi) = (bound(&mut rng, space), bound(&mut rng, space));
                check_range(&db.view(), t, &model[t as usize], &lo, &hi);
            }
            970..=984 => {
                index += 1;
                let meta = CommitMeta {
                    applied_index: index,
                    applied_term: 1,
                    user: index.to_le_bytes().to_vec(),
                };
                // Half in the background: the operations after it run while it is written,
                // and a reopen (the drop) waits for it.
                if rng.gen_bool(0.5) {
                    db.commit_background(meta).unwrap();
                } else {
                    db.commit(meta).unwrap();
                }
                durable = model.clone();
            }
            985..=989 => views.push((db.view(), model.clone())),
            990..=994 => db.start_reclaim().unwrap(),
            _ => {
                drop(db);
                db = open(&path);
                model = durable.clone();
                assert_eq!(db.last_commit().applied_index, index);
                check_all(&db, &model);
            }
        }
        if views.len() > 4 {
            let (v, m) = views.remove(0);
            for tt in 0..TREES {
                check_range(
                    &v,
                    tt,
                    &m[tt as usize],
                    &Bound::Unbounded,
                    &Bound::Unbounded,
                );
            }
        }
    }
    check_all(&db, &model);
    index += 1;
    db.commit(CommitMeta {
        applied_index: index,
        ..Default::default()
    })
    .unwrap();
    drop(db);
    let db = open(&path);
    check_all(&db, &model);
}

#[test]
fn random_operations_match_model_small_key_space() {
    for seed in 0..6 {
        run(seed, 4000, 300);
    }
}

#[test]
fn random_operations_match_model_deep_trees() {
    run(100, 40_000, 20_000);
}

#[test]
fn sequential_appends_fill_pages_and_reclaim_packs_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut db = open(&path);
    let val = vec![7u8; 256];
    for i in 0..50_000u64 {
        db.put(0, &i.to_be_bytes(), &val).unwrap();
        if i % 1000 == 999 {
            db.commit(CommitMeta {
                applied_index: i,
                ..Default::default()
            })
            .unwrap();
        }
    }
    let live_kv = 50_000 * (8 + 256) as u64;
    let s = db.stats();
    assert!(
        s.live_bytes < live_kv * 12 / 10,
        "appends should fill leaves: {s:?}"
    );
    // Delete every other entry: leaves go half empty and neighbours merge.
    for i in (0..50_000u64).step_by(2) {
        assert!(db.delete(0, &i.to_be_bytes()).unwrap());
    }
    db.commit(CommitMeta {
        applied_index: 60_000,
        ..Default::default()
    })
    .unwrap();
    let before = db.stats();
    assert!(
        before.file_bytes > 2 * before.live_bytes,
        "history makes the file large: {before:?}"
    );
    db.start_reclaim().unwrap();
    // Writes go on while the copy runs; they must survive the switch.
    for i in 50_000..51_000u64 {
        db.put(0, &i.to_be_bytes(), &val).unwrap();
    }
    assert!(db.delete(0, &1u64.to_be_bytes()).unwrap());
    db.wait_reclaim_built();
    db.commit(CommitMeta {
        applied_index: 60_001,
        ..Default::default()
    })
    .unwrap();
    let after = db.stats();
    assert!(!db.reclaim_pending());
    assert!(
        after.file_bytes < before.file_bytes / 3,
        "reclaim shrinks: {before:?} -> {after:?}"
    );
    assert!(
        after.file_bytes <= after.live_bytes * 11 / 10 + 8192,
        "packed: {after:?}"
    );
    drop(db);
    let db = open(&path);
    assert_eq!(db.last_commit().applied_index, 60_001);
    let keys: Vec<u64> = db
        .range(0, Bound::Unbounded, Bound::Unbounded, false)
        .map(|r| u64::from_be_bytes(r.unwrap().0.try_into().unwrap()))
        .collect();
    let want: Vec<u64> = (0..50_000u64)
        .filter(|i| i % 2 == 1 && *i != 1)
        .chain(50_000..51_000)
        .collect();
    assert_eq!(keys, want);
}

#[test]
fn views_are_readable_from_other_threads_while_the_writer_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = open(&dir.path().join("db"));
    for i in 0..5000u32 {
        db.put(0, &key(i), b"before").unwrap();
    }
    db.commit(CommitMeta::default()).unwrap();
    let view = db.view();
    let reader = std::thread::spawn(move || {
        let mut n = 0;
        for _ in 0..20 {
            n = 0;
            for kv in view.range(0, Bound::Unbounded, Bound::Unbounded, true) {
                assert_eq!(kv.unwrap().1, b"before");
                n += 1;
            }
        }
        n
    });
    for i in 0..5000u32 {
        db.put(0, &key(i), b"after").unwrap();
        if i % 500 == 0 {
            db.commit(CommitMeta::default()).unwrap();
        }
    }
    assert_eq!(reader.join().unwrap(), 5000);
}

#[test]
fn snapshot_stream_is_a_valid_database_at_its_commit() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let mut db = open(&dir.path().join("db"));
    for i in 0..3000u32 {
        db.put(1, &key(i), &vec![1u8; 100 + (i % 3000) as usize])
            .unwrap();
    }
    db.commit(CommitMeta {
        applied_index: 5,
        ..Default::default()
    })
    .unwrap();
    let mut snap = db.snapshot();
    for i in 0..3000u32 {
        db.put(1, &key(i), b"later").unwrap();
    }
    db.commit(CommitMeta {
        applied_index: 6,
        ..Default::default()
    })
    .unwrap();
    let mut bytes = Vec::new();
    snap.read_to_end(&mut bytes).unwrap();
    assert_eq!(bytes.len() as u64, snap.len());
    let copy = dir.path().join("copy");
    std::fs::write(&copy, &bytes).unwrap();
    let restored = open(&copy);
    assert_eq!(restored.last_commit().applied_index, 5);
    for i in (0..3000u32).step_by(97) {
        assert_eq!(
            restored.get(1, &key(i)).unwrap().unwrap().len(),
            100 + i as usize
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn prop_random_runs(seed in any::<u64>(), space in 10u32..3000) {
        run(seed, 1500, space);
    }
}
