//! Database files, through `Db::open` (file header, commit records, the newest-commit scan,
//! the data checksum) and then every read and write path over the damaged tree (page
//! decoding, overflow runs, copy-on-write changes, commit, reopen); and MVCC store files
//! through `Store::open` (stored revision records and store metadata) and its requests.

use std::ops::Bound as Range;
use std::path::Path;
use std::time::Duration;

use cairn::btree::{CommitMeta, Db, DbOptions};
use cairn::lease::LeaseOp;
use cairn::mvcc::{
    CompactionRequest, DeleteRangeRequest, PutRequest, RaftPosition, RangeRequest, Request, Store,
};
use rand::rngs::StdRng;
use rand::Rng;

use crate::harness::{Bound, Fuzz, Input};
use crate::mutate::{mutate, Field};

const PAGE: usize = 4096;

/// Opening reads the newest-commit scan in chunks of 1 MiB and a value at most as large as
/// the file; the reads and writes after it copy values and pages, and the store's key index
/// holds every key once: one allocation up to twice the file plus 4 MiB, and 8 times the
/// file plus 16 MiB live.
const TREE_BOUND: Bound = Bound {
    single_per_input: 2,
    peak_per_input: Some(8),
    fixed_bytes: 16 << 20,
};

fn options() -> DbOptions {
    DbOptions {
        branch_cache_pages: 64,
        ..Default::default()
    }
}

fn meta(index: u64) -> CommitMeta {
    CommitMeta {
        applied_index: index,
        applied_term: 1,
        user: Vec::new(),
    }
}

/// Files written by the real `Db`: several trees, overflow values, long keys, deletes
/// between commits (dead pages), a reclaimed file, one small commit, and a new file.
fn tree_corpus(root: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let path = root.join("corpus.db");
    let mut db = Db::open(&path, DbOptions::default()).expect("open");
    for i in 0..400u32 {
        db.put(
            0,
            format!("k{i:05}").as_bytes(),
            &vec![i as u8; (i as usize * 37) % 300],
        )
        .expect("put");
    }
    for i in 0..12u32 {
        db.put(
            1,
            &i.to_be_bytes(),
            &vec![i as u8; 5000 + 1500 * i as usize],
        )
        .expect("put");
    }
    for i in 0..30u32 {
        db.put(
            2,
            &vec![b'a' + (i % 26) as u8; 900 + i as usize],
            b"long key",
        )
        .expect("put");
    }
    db.commit(meta(1)).expect("commit");
    for i in (0..400u32).step_by(3) {
        db.delete(0, format!("k{i:05}").as_bytes()).expect("delete");
    }
    db.delete(1, &3u32.to_be_bytes()).expect("delete");
    db.commit(meta(2)).expect("commit");
    db.put(3, b"x", b"y").expect("put");
    db.commit(meta(3)).expect("commit");
    drop(db);
    out.push(std::fs::read(&path).expect("read"));

    let mut db = Db::open(&path, DbOptions::default()).expect("open");
    db.start_reclaim().expect("reclaim");
    db.wait_reclaim_built();
    db.commit(meta(4)).expect("commit");
    drop(db);
    out.push(std::fs::read(&path).expect("read"));

    let small = root.join("small.db");
    let mut db = Db::open(&small, DbOptions::default()).expect("open");
    for i in 0..10u8 {
        db.put(5, &[i], &[i; 20]).expect("put");
    }
    db.commit(meta(9)).expect("commit");
    drop(db);
    out.push(std::fs::read(&small).expect("read"));

    let fresh = root.join("fresh.db");
    drop(Db::open(&fresh, DbOptions::default()).expect("open"));
    out.push(std::fs::read(&fresh).expect("read"));
    out
}

/// A store written through `Store::apply`: puts (some with overflow values), deletes, a
/// transaction and a compaction, over several checkpoints.
fn store_corpus(root: &Path) -> Vec<Vec<u8>> {
    let path = root.join("store.db");
    let mut store = Store::open(&path, DbOptions::default()).expect("open");
    // The leases the puts name, so that the file holds the lease tree too.
    for id in 1..4 {
        let at = RaftPosition {
            index: id as u64,
            term: 1,
        };
        store
            .apply_lease(at, &LeaseOp::Grant { id, ttl: 60 })
            .expect("grant");
    }
    let mut index = 3;
    let mut apply = |store: &mut Store, request: Request| {
        index += 1;
        store
            .apply(RaftPosition { index, term: 1 }, &[request])
            .expect("apply");
    };
    for i in 0..300usize {
        let put = PutRequest {
            key: format!("key/{:03}", i % 120).into_bytes(),
            value: vec![i as u8; if i % 50 == 7 { 6000 } else { i % 90 }],
            lease: (i % 4) as i64,
            ..Default::default()
        };
        apply(&mut store, Request::Put(put));
        if i % 100 == 99 {
            store.checkpoint().expect("checkpoint");
        }
    }
    apply(
        &mut store,
        Request::DeleteRange(DeleteRangeRequest {
            key: b"key/05".to_vec(),
            range_end: b"key/06".to_vec(),
            prev_kv: false,
        }),
    );
    apply(&mut store, Request::Txn(crate::wire::requests_txn()));
    apply(
        &mut store,
        Request::Compaction(CompactionRequest {
            revision: 150,
            physical: true,
        }),
    );
    while store.compact_step(1000).expect("compact") > 0 {}
    store.checkpoint().expect("checkpoint");
    drop(store);
    vec![std::fs::read(&path).expect("read")]
}

fn u16_at(b: &[u8], at: usize) -> usize {
    u16::from_le_bytes([b[at], b[at + 1]]) as usize
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Page header, slot, entry and commit record fields of every page, and the fields of
/// revision records stored inline.
fn tree_fields(bytes: &[u8]) -> Vec<Field> {
    let mut fields = vec![Field::new(40, 4), Field::new(44, 4)];
    for b in (0..bytes.len() / PAGE).map(|p| p * PAGE) {
        let page = &bytes[b..b + PAGE];
        for (at, w) in [(0, 4), (4, 1), (5, 1), (6, 2), (8, 8), (16, 8), (24, 4)] {
            fields.push(Field::new(b + at, w));
        }
        match page[4] {
            1 | 2 => {
                let count = u16_at(page, 6).min((PAGE - 32) / 2);
                for i in 0..count {
                    fields.push(Field::new(b + 32 + 2 * i, 2));
                    let off = u16_at(page, 32 + 2 * i);
                    if off + 16 > PAGE {
                        continue;
                    }
                    if page[4] == 2 {
                        fields.push(Field::new(b + off, 8));
                        fields.push(Field::new(b + off + 8, 2));
                        continue;
                    }
                    fields.extend(
                        [(0, 2), (2, 1), (4, 4)].map(|(at, w)| Field::new(b + off + at, w)),
                    );
                    let v = off + 8 + u16_at(page, off);
                    if v + 8 <= PAGE {
                        fields.push(Field::new(b + v, 8));
                    }
                    // A revision record: format, flags, key length.
                    if v + 6 <= PAGE {
                        fields.extend(
                            [(0, 1), (1, 1), (2, 4)].map(|(at, w)| Field::new(b + v + at, w)),
                        );
                    }
                }
            }
            // An overflow run: a revision record's format, flags and key length.
            3 => fields.extend([(32, 1), (33, 1), (34, 4)].map(|(at, w)| Field::new(b + at, w))),
            4 => {
                for at in [40, 44, 76] {
                    fields.push(Field::new(b + at, 4));
                }
                for at in (48..168).step_by(8).filter(|&at| at != 72 && at != 76) {
                    fields.push(Field::new(b + at, 8));
                }
                fields.push(Field::new(b + 72, 4));
                // The store metadata in the user bytes.
                fields.extend([(168, 1), (169, 8), (177, 8)].map(|(at, w)| Field::new(b + at, w)));
            }
            _ => {}
        }
    }
    fields
}

/// Recomputes every checksum a mutation broke: each page's (an overflow run's over the
/// run), then each commit record's data checksum and its own (seeded with the file's salt
/// as its header gives it, for format 2), in file order, so that damage behind the
/// checksums reaches the decoders.
pub fn reseal(bytes: &mut [u8]) {
    let pages = bytes.len() / PAGE;
    let salt = (pages > 0 && u32_at(bytes, 40) == 2).then(|| u64_at(bytes, 48));
    let mut p = 0;
    while p < pages {
        let b = p * PAGE;
        let mut run = 1;
        match bytes[b + 4] {
            3 => run = (32 + u32_at(bytes, b + 24) as usize).div_ceil(PAGE).max(1),
            4 => {
                let copy = u64_at(bytes, b + 96);
                let start = u64_at(bytes, b + 64) as usize;
                if let Some(record) = (p as u64).checked_sub(copy) {
                    let record = record as usize;
                    if start <= record && record <= pages {
                        let crc = crc32c::crc32c(&bytes[start * PAGE..record * PAGE]);
                        bytes[b + 72..b + 76].copy_from_slice(&crc.to_le_bytes());
                    }
                }
            }
            _ => {}
        }
        if p + run > pages {
            run = 1;
        }
        let crc = match (bytes[b + 4], salt) {
            (4, Some(salt)) => {
                crc32c::crc32c_append(crc32c::crc32c(&salt.to_le_bytes()), &bytes[b + 4..b + PAGE])
            }
            _ => crc32c::crc32c(&bytes[b + 4..b + run * PAGE]),
        };
        bytes[b..b + 4].copy_from_slice(&crc.to_le_bytes());
        p += run;
    }
}

/// Whole-page damage: a page copied over another, two pages swapped, a cut at a page.
fn mutate_pages(rng: &mut StdRng, bytes: &mut Vec<u8>) {
    let pages = bytes.len() / PAGE;
    if pages < 2 {
        return;
    }
    let (a, b) = (
        rng.gen_range(0..pages) * PAGE,
        rng.gen_range(0..pages) * PAGE,
    );
    match rng.gen_range(0..3) {
        0 => {
            let page = bytes[a..a + PAGE].to_vec();
            bytes[b..b + PAGE].copy_from_slice(&page);
        }
        1 => {
            let page = bytes[a..a + PAGE].to_vec();
            bytes.copy_within(b..b + PAGE, a);
            bytes[b..b + PAGE].copy_from_slice(&page);
        }
        _ => bytes.truncate(a.max(PAGE)),
    }
}

fn read_all(db: &Db, keys: &mut Vec<(u8, Vec<u8>)>) {
    for tree in 0..8u8 {
        for reverse in [false, true] {
            for (n, item) in db
                .range(tree, Range::Unbounded, Range::Unbounded, reverse)
                .enumerate()
            {
                let Ok((key, _)) = item else { break };
                if n % 7 == 0 && keys.len() < 64 {
                    keys.push((tree, key));
                }
            }
        }
        let lo = Range::Included(&b"k001"[..]);
        let _ = db
            .range(tree, lo, Range::Excluded(&b"k1"[..]), false)
            .count();
    }
    for (tree, key) in keys.iter() {
        let _ = db.get(*tree, key);
    }
}

/// Opens a damaged tree file, reads everything, changes some of it, commits, reopens.
fn tree_case(path: &Path, bytes: &[u8], rng: &mut StdRng) {
    std::fs::write(path, bytes).expect("write case file");
    let Ok(mut db) = Db::open(path, options()) else {
        return;
    };
    let mut keys = Vec::new();
    read_all(&db, &mut keys);
    for (tree, key) in keys.iter().filter(|_| rng.gen_bool(0.3)) {
        if db.delete(*tree, key).is_err() {
            return;
        }
    }
    for i in 0..rng.gen_range(0..6u8) {
        let tree = rng.gen_range(0..8);
        let value = vec![i; [0, 10, 900, 6000][rng.gen_range(0..4)]];
        let key = match keys.get(rng.gen_range(0..keys.len().max(1))) {
            Some((_, key)) if rng.gen_bool(0.5) => key.clone(),
            _ => vec![b'k', i],
        };
        if db.put(tree, &key, &value).is_err() {
            return;
        }
    }
    let index = db.last_commit().applied_index.wrapping_add(1);
    if rng.gen_bool(0.1) && db.start_reclaim().is_ok() {
        db.wait_reclaim_built();
    }
    if db.commit(meta(index)).is_err() {
        return;
    }
    drop(db);
    if let Ok(db) = Db::open(path, options()) {
        read_all(&db, &mut Vec::new());
    }
}

/// Opens a damaged store file and serves requests from it.
fn store_case(path: &Path, bytes: &[u8], rng: &mut StdRng) {
    std::fs::write(path, bytes).expect("write case file");
    let Ok(mut store) = Store::open(path, options()) else {
        return;
    };
    let all = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    };
    let _ = store.range(&all);
    let _ = store.hash_kv(0);
    let at = store.applied();
    let requests = [
        Request::Put(PutRequest {
            key: format!("key/{:03}", rng.gen_range(0..130)).into_bytes(),
            value: vec![1; 6000],
            prev_kv: true,
            ..Default::default()
        }),
        Request::DeleteRange(DeleteRangeRequest {
            key: b"key/0".to_vec(),
            range_end: b"key/1".to_vec(),
            prev_kv: true,
        }),
        Request::Compaction(CompactionRequest {
            revision: store.current_revision(),
            physical: false,
        }),
    ];
    let position = RaftPosition {
        index: at.index.saturating_add(1),
        term: at.term,
    };
    if store.apply(position, &requests).is_err() {
        return;
    }
    let _ = store.compact_step(100);
    let _ = store.range(&all);
    let _ = store.checkpoint();
}

fn run_target(
    name: &'static str,
    corpus: fn(&Path) -> Vec<Vec<u8>>,
    case: fn(&Path, &[u8], &mut StdRng),
) {
    let mut fuzz = Fuzz::new(name, Duration::from_secs(30), true);
    let root = fuzz.work_dir();
    let images = corpus(&root);
    let donors: Vec<&[u8]> = images.iter().map(Vec::as_slice).collect();
    let path = root.join("case.db");
    while let Some((n, mut rng)) = fuzz.next_case() {
        let mut bytes = images[rng.gen_range(0..images.len())].clone();
        if rng.gen_bool(0.2) {
            mutate_pages(&mut rng, &mut bytes);
        }
        let fields = tree_fields(&bytes);
        mutate(&mut rng, &mut bytes, &fields, &donors);
        if rng.gen_bool(0.7) {
            reseal(&mut bytes);
        }
        let input: Input = vec![("db".into(), bytes)];
        fuzz.run(n, &input, TREE_BOUND, |input| {
            case(&path, &input[0].1, &mut rng)
        });
        for leftover in ["case.db", "case.db.tmp", "case.db.reclaim"] {
            let _ = std::fs::remove_file(root.join(leftover));
        }
    }
    println!("{name}: {} cases", fuzz.cases());
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn fuzz_tree() {
    run_target("tree", tree_corpus, tree_case);
}

#[test]
fn fuzz_store() {
    run_target("store", store_corpus, store_case);
}
