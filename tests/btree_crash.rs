//! Crash and corruption tests for the B+tree file: cut the file at every page boundary and
//! at random byte offsets, and damage random bytes. Reopening must yield exactly the newest
//! commit that is wholly in the file, or a typed error; never a panic, never wrong data.

use cairn::btree::{BtreeError, CommitMeta, Db, DbOptions, PAGE_SIZE};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;

type State = Vec<BTreeMap<Vec<u8>, Vec<u8>>>;

struct History {
    bytes: Vec<u8>,
    /// (file length after the commit, applied index, state).
    commits: Vec<(u64, u64, State)>,
}

/// Builds a file with many commits of puts, overwrites, deletes and large values.
fn build(dir: &Path) -> History {
    let path = dir.join("src.db");
    let mut db = Db::open(&path, DbOptions::default()).unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let mut state: State = vec![BTreeMap::new(); 2];
    let mut commits = vec![(PAGE_SIZE as u64, 0, state.clone())];
    for c in 1..=12u64 {
        for _ in 0..150 {
            let t = rng.gen_range(0..2usize);
            let k = format!("k{:05}", rng.gen_range(0..600)).into_bytes();
            if rng.gen_bool(0.2) {
                db.delete(t as u8, &k).unwrap();
                state[t].remove(&k);
            } else {
                let len = if rng.gen_bool(0.05) {
                    5000
                } else {
                    rng.gen_range(0..200)
                };
                let v: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                db.put(t as u8, &k, &v).unwrap();
                state[t].insert(k, v);
            }
        }
        let meta = CommitMeta {
            applied_index: c,
            applied_term: 1,
            user: vec![c as u8; 3],
        };
        // Every other commit is synced in the background (the next commit waits for it):
        // the bytes on disk are the same, so every cut below covers both ways.
        if c % 2 == 0 {
            db.commit_background(meta).unwrap();
            // The file's length after this commit is known once it is written.
            db.wait_commit().unwrap();
        } else {
            db.commit(meta).unwrap();
        }
        commits.push((db.stats().file_bytes, c, state.clone()));
    }
    drop(db);
    History {
        bytes: std::fs::read(&path).unwrap(),
        commits,
    }
}

/// Reads every entry of every tree; corruption found on the way is a typed error.
fn read_all(db: &Db) -> Result<State, BtreeError> {
    let mut out: State = vec![BTreeMap::new(); 2];
    for (t, m) in out.iter_mut().enumerate() {
        for kv in db.range(t as u8, Bound::Unbounded, Bound::Unbounded, false) {
            let (k, v) = kv?;
            m.insert(k, v);
        }
    }
    Ok(out)
}

fn open_copy(dir: &Path, bytes: &[u8]) -> Result<Db, BtreeError> {
    let path = dir.join("copy.db");
    std::fs::write(&path, bytes).unwrap();
    Db::open(&path, DbOptions::default())
}

/// The newest commit whose record has at least one whole copy in the first `len` bytes
/// (the record is written twice, in its commit's last two pages).
fn expected(h: &History, len: u64) -> Option<&(u64, u64, State)> {
    let page = PAGE_SIZE as u64;
    h.commits
        .iter()
        .rev()
        .find(|(end, _, _)| *end == page && len >= page || *end - page <= len)
}

fn check_cut(dir: &Path, h: &History, len: u64) {
    match open_copy(dir, &h.bytes[..len as usize]) {
        Err(BtreeError::Corrupt { .. }) => {
            assert!(
                len < PAGE_SIZE as u64,
                "cut at {len}: only a missing header may fail"
            );
        }
        Err(e) => panic!("cut at {len}: unexpected error {e}"),
        Ok(db) => {
            let (_, index, state) = expected(h, len).expect("a header implies the empty commit");
            assert_eq!(db.last_commit().applied_index, *index, "cut at {len}");
            assert!(
                read_all(&db).unwrap() == *state,
                "cut at {len}: contents differ"
            );
            // The reopened file accepts new commits.
            let mut db = db;
            db.put(0, b"after-crash", b"x").unwrap();
            db.commit(CommitMeta {
                applied_index: 99,
                ..Default::default()
            })
            .unwrap();
        }
    }
}

#[test]
fn cut_at_every_page_boundary_yields_the_newest_whole_commit() {
    let dir = tempfile::tempdir().unwrap();
    let h = build(dir.path());
    let pages = h.bytes.len() / PAGE_SIZE;
    assert!(pages > 100, "history spans many pages");
    for p in 0..=pages {
        check_cut(dir.path(), &h, (p * PAGE_SIZE) as u64);
    }
}

#[test]
fn cut_at_random_byte_offsets_yields_the_newest_whole_commit() {
    let dir = tempfile::tempdir().unwrap();
    let h = build(dir.path());
    let mut rng = StdRng::seed_from_u64(11);
    for _ in 0..300 {
        check_cut(dir.path(), &h, rng.gen_range(0..h.bytes.len() as u64));
    }
}

#[test]
fn damaged_bytes_yield_the_last_commit_or_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let h = build(dir.path());
    let (_, last_index, last_state) = h.commits.last().unwrap();
    let mut rng = StdRng::seed_from_u64(13);
    let (mut exact, mut errors) = (0, 0);
    for i in 0..400 {
        let mut bytes = h.bytes.clone();
        // Every page of the newest commit record gets damaged at least once.
        let at = if i < 16 {
            bytes.len() - 1 - i * 512
        } else {
            rng.gen_range(0..bytes.len())
        };
        bytes[at] ^= 1 << rng.gen_range(0..8);
        let outcome = open_copy(dir.path(), &bytes).and_then(|db| {
            let state = read_all(&db)?;
            Ok((db.last_commit().applied_index, state))
        });
        match outcome {
            Ok((index, state)) => {
                assert_eq!(index, *last_index, "damage at {at} lost the last commit");
                assert!(
                    state == *last_state,
                    "damage at {at} changed the data silently"
                );
                exact += 1;
            }
            Err(BtreeError::Corrupt { offset, .. }) => {
                assert!(offset < bytes.len() as u64);
                errors += 1;
            }
            Err(e) => panic!("damage at {at}: unexpected error {e}"),
        }
    }
    assert!(
        exact > 0 && errors > 0,
        "both outcomes occur: {exact} exact, {errors} errors"
    );
}

#[test]
fn a_background_commit_is_durable_once_reported_and_the_writer_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bg.db");
    let mut db = Db::open(&path, DbOptions::default()).unwrap();
    let meta = |i: u64| CommitMeta {
        applied_index: i,
        applied_term: 1,
        user: vec![],
    };
    for i in 0..20_000u32 {
        db.put(0, format!("a{i:06}").as_bytes(), &[7u8; 100])
            .unwrap();
    }
    db.commit_background(meta(1)).unwrap();
    // The writer goes on while the commit syncs: new writes, and reads of both.
    for i in 0..1_000u32 {
        db.put(0, format!("b{i:06}").as_bytes(), b"later").unwrap();
    }
    assert_eq!(db.get(0, b"a000123").unwrap(), Some(vec![7u8; 100]));
    assert_eq!(db.get(0, b"b000999").unwrap(), Some(b"later".to_vec()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let durable = loop {
        if let Some(m) = db.poll_commit().unwrap() {
            break m;
        }
        assert!(std::time::Instant::now() < deadline, "never durable");
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    assert_eq!(durable.applied_index, 1);
    assert_eq!(db.last_commit().applied_index, 1);
    assert!(!db.commit_pending());
    assert_eq!(db.poll_commit().unwrap(), None, "reported once");
    // Two in a row: the second waits for the first, and the first is still reported.
    db.put(0, b"b", b"2").unwrap();
    db.commit_background(meta(2)).unwrap();
    db.put(0, b"b", b"3").unwrap();
    db.commit_background(meta(3)).unwrap();
    assert_eq!(db.poll_commit().unwrap().map(|m| m.applied_index), Some(2));
    // A last one, then the writer is dropped at once (as on exit): it is still durable,
    // and what came after it is not there.
    db.commit_background(meta(4)).unwrap();
    db.put(0, b"c", b"never committed").unwrap();
    drop(db);
    let db = Db::open(&path, DbOptions::default()).unwrap();
    assert_eq!(db.last_commit().applied_index, 4);
    assert_eq!(db.get(0, b"b").unwrap(), Some(b"3".to_vec()));
    assert_eq!(db.get(0, b"b000999").unwrap(), Some(b"later".to_vec()));
    assert_eq!(db.get(0, b"c").unwrap(), None);
}

/// A damaged page among the newest commit's data pages is reported at that page's offset
/// (an overflow run at its first page), by `Db::open` and `Db::inspect` alike.
#[test]
fn damage_in_the_newest_commit_is_reported_at_the_damaged_page() {
    let dir = tempfile::tempdir().unwrap();
    let h = build(dir.path());
    let page = PAGE_SIZE as u64;
    let record = h.bytes.len() / PAGE_SIZE - 2;
    let at = record * PAGE_SIZE;
    assert_eq!(&h.bytes[at + 32..at + 40], b"CAIRNCMT");
    let data_start = u64::from_le_bytes(h.bytes[at + 64..at + 72].try_into().unwrap());
    let mut checked = 0;
    for p in data_start..record as u64 {
        let start = (p * page) as usize;
        // Leaf, branch and the first page of an overflow run carry their own id.
        let id = u64::from_le_bytes(h.bytes[start + 8..start + 16].try_into().unwrap());
        if id != p || !(1..=3).contains(&h.bytes[start + 4]) {
            continue;
        }
        let mut bytes = h.bytes.clone();
        bytes[start + 100] ^= 0x10;
        let path = dir.path().join("copy.db");
        std::fs::write(&path, &bytes).unwrap();
        for result in [
            Db::inspect(&path).map(|_| ()),
            Db::open(&path, DbOptions::default()).map(|_| ()),
        ] {
            match result {
                Err(BtreeError::Corrupt { offset, reason, .. }) => {
                    assert_eq!(offset, p * page, "page {p}: {reason}");
                }
                other => panic!("page {p}: expected Corrupt, got {other:?}"),
            }
        }
        checked += 1;
    }
    assert!(checked > 0);
}

/// Read-only open and inspection change nothing, report the cut `Db::open` would make, and
/// a read-only writer refuses to commit.
#[test]
fn read_only_open_changes_nothing_and_refuses_commits() {
    let dir = tempfile::tempdir().unwrap();
    let h = build(dir.path());
    let (len, index, state) = h.commits.last().unwrap();
    let mut bytes = h.bytes.clone();
    bytes.extend_from_slice(&[9u8; 5000]);
    let path = dir.path().join("copy.db");
    std::fs::write(&path, &bytes).unwrap();
    let reclaim = dir.path().join("copy.db.reclaim");
    std::fs::write(&reclaim, b"unfinished").unwrap();
    let inspection = Db::inspect(&path).unwrap();
    assert_eq!(inspection.commit.applied_index, *index);
    let cut = inspection.cut.unwrap();
    assert_eq!((cut.offset, cut.bytes), (*len, bytes.len() as u64 - len));
    assert_eq!(inspection.leftovers.len(), 1);
    let mut db = Db::open_read_only(&path, DbOptions::default()).unwrap();
    assert!(read_all(&db).unwrap() == *state);
    db.put(0, b"in memory", b"only").unwrap();
    assert!(matches!(
        db.commit(CommitMeta::default()),
        Err(BtreeError::ReadOnly(_))
    ));
    assert!(matches!(
        db.commit_background(CommitMeta::default()),
        Err(BtreeError::ReadOnly(_))
    ));
    drop(db);
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert!(reclaim.exists());
    assert!(Db::inspect(dir.path().join("none.db")).is_ok_and(|i| !i.exists));
    assert!(!dir.path().join("none.db").exists());
}
