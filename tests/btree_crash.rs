//! Crash and corruption tests for the B+tree file: cut the file at every page boundary and
//! at random byte offsets, and damage random bytes. Reopening must yield exactly the newest
//! commit that is wholly in the file, or a typed error; never a panic, never wrong data.
//!
//! The tests named `twin_*` run the tree on its in-memory twin ([`MemDisk`]): the power
//! fails after a random number of disk operations (in the middle of a commit, a background
//! commit, a switch to a reclaimed file, or opening), unsynced writes then reach the disk
//! sector by sector or not, and bits flip. Each prints its seed when it fails.

use cairn::btree::{BtreeError, CommitMeta, CrashLoss, Db, DbOptions, MemDisk, PAGE_SIZE};
use cairn::node::{Random, SplitMix64};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

type State = Vec<BTreeMap<Vec<u8>, Vec<u8>>>;

struct History {
    bytes: Vec<u8>,
    /// (file length after the commit, applied index, state).
    commits: Vec<(u64, u64, State)>,
}

/// Builds a file with many commits of puts, overwrites, deletes and large values.
fn build(dir: &Path) -> History {
    let path = dir.join("src.db");
    let commits = write_history(&path, DbOptions::default());
    History {
        bytes: std::fs::read(&path).unwrap(),
        commits,
    }
}

/// The commits of [`build`], made at `path` where `opts` puts files.
fn write_history(path: &Path, opts: DbOptions) -> Vec<(u64, u64, State)> {
    let mut db = Db::open(path, opts).unwrap();
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
    commits
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

/// One commit as the test's model knows it: its applied index and the trees' contents.
#[derive(Clone)]
struct Known {
    index: u64,
    state: State,
}

/// Random puts (some values in overflow runs) and deletes, on the tree and the model.
fn random_changes(rng: &mut SplitMix64, db: &mut Db, state: &mut State) {
    for _ in 0..rng.below(120) + 1 {
        let t = rng.below(2) as usize;
        let k = format!("k{:04}", rng.below(400)).into_bytes();
        if rng.below(5) == 0 {
            let existed = db.delete(t as u8, &k).unwrap();
            assert_eq!(existed, state[t].remove(&k).is_some());
        } else {
            let len = if rng.below(25) == 0 {
                5000 + rng.below(20_000)
            } else {
                rng.below(200)
            };
            let v = vec![rng.below(256) as u8; len as usize];
            db.put(t as u8, &k, &v).unwrap();
            state[t].insert(k, v);
        }
    }
}

/// The metadata commit `index` records (0: none yet, a new file).
fn meta(index: u64) -> CommitMeta {
    if index == 0 {
        return CommitMeta::default();
    }
    CommitMeta {
        applied_index: index,
        applied_term: 1,
        user: index.to_le_bytes().to_vec(),
    }
}

/// Commits the writer's changes as `index`, in one of the ways a commit is made: in the
/// foreground, in the background (with more changes meanwhile), or switching to a file
/// built by space reclamation.
fn commit_somehow(
    rng: &mut SplitMix64,
    db: &mut Db,
    state: &mut State,
    index: u64,
) -> Result<Known, BtreeError> {
    match rng.below(4) {
        0 => {
            db.commit_background(meta(index))?;
            let known = Known {
                index,
                state: state.clone(),
            };
            // The writer goes on while the commit is written; the next commit has these.
            random_changes(rng, db, state);
            db.wait_commit()?;
            Ok(known)
        }
        1 => {
            db.start_reclaim()?;
            db.wait_reclaim_built();
            db.commit(meta(index))?;
            Ok(Known {
                index,
                state: state.clone(),
            })
        }
        _ => {
            db.commit(meta(index))?;
            Ok(Known {
                index,
                state: state.clone(),
            })
        }
    }
}

/// Opens the tree after a crash and checks it holds `durable` (the last commit that
/// completed) or `in_flight` (the one the power failed in, if its record reached the disk
/// whole); returns the writer and the commit found. `None`: the power failed while opening.
fn reopen(
    opts: &DbOptions,
    path: &Path,
    durable: &Known,
    in_flight: Option<&Known>,
    seed: u64,
) -> Option<(Db, Known)> {
    let db = match Db::open(path, opts.clone()) {
        Ok(db) => db,
        Err(BtreeError::Io { .. }) => return None,
        Err(e) => panic!("seed {seed}: opening after a crash: {e}"),
    };
    let index = db.last_commit().applied_index;
    let found = [Some(durable), in_flight]
        .into_iter()
        .flatten()
        .find(|k| k.index == index)
        .unwrap_or_else(|| {
            panic!(
                "seed {seed}: opened at commit {index}; the last durable one is {}, the one \
                 in flight {:?}",
                durable.index,
                in_flight.map(|k| k.index)
            )
        });
    assert_eq!(db.last_commit(), &meta(index), "seed {seed}");
    let state = read_all(&db).unwrap_or_else(|e| panic!("seed {seed}: reading: {e}"));
    assert!(
        state == found.state,
        "seed {seed}: commit {index} holds other data than was committed"
    );
    Some((db, found.clone()))
}

/// How often sectors not covered by a sync reach the disk in one crash, in percent.
fn keep_percent(rng: &mut SplitMix64) -> u64 {
    [0, 50, 90, 100][rng.below(4) as usize]
}

/// One run: a writer on a twin disk, crashed several times at a random operation.
fn twin_crash_run(seed: u64, loss: &mut CrashLoss, recovered_in_flight: &mut u64) {
    let mut rng = SplitMix64::new(seed);
    let disk = Arc::new(MemDisk::new());
    let opts = DbOptions {
        branch_cache_pages: 64,
        mem_disk: Some(disk.clone()),
    };
    // Not a directory of this machine: nothing may reach the real file system.
    let path = PathBuf::from("/cairn-twin/db");
    let mut state: State = vec![BTreeMap::new(); 2];
    let mut durable = Known {
        index: 0,
        state: state.clone(),
    };
    let mut in_flight: Option<Known> = None;
    for _life in 0..5 {
        disk.fail_after(rng.below(50));
        if let Some((mut db, found)) = reopen(&opts, &path, &durable, in_flight.as_ref(), seed) {
            if in_flight.as_ref().is_some_and(|k| k.index == found.index) {
                *recovered_in_flight += 1;
            }
            durable = found;
            in_flight = None;
            state = durable.state.clone();
            assert_eq!(disk.paths(), vec![path.clone()], "seed {seed}: leftovers");
            for _ in 0..rng.below(8) + 1 {
                random_changes(&mut rng, &mut db, &mut state);
                let index = durable.index + 1;
                let attempt = Known {
                    index,
                    state: state.clone(),
                };
                match commit_somehow(&mut rng, &mut db, &mut state, index) {
                    Ok(known) => durable = known,
                    Err(BtreeError::Io { .. }) => {
                        // The power failed in this commit; its record may still have
                        // reached the disk whole.
                        in_flight = Some(attempt);
                        break;
                    }
                    Err(e) => panic!("seed {seed}: commit {index}: {e}"),
                }
            }
        }
        let keep = keep_percent(&mut rng);
        let l = disk.crash(|| rng.below(100) < keep);
        loss.sectors_kept += l.sectors_kept;
        loss.sectors_lost += l.sectors_lost;
        loss.set_lens_lost += l.set_lens_lost;
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The power fails at a random operation, again and again, and each sector not covered by
/// a sync reaches the disk or not. Every reopen finds the last commit that completed, or
/// the one the power failed in if its record reached the disk whole: never a half commit,
/// never other data, never a leftover file. `CAIRN_BTREE_TWIN_SEEDS=<n>` runs more seeds,
/// `CAIRN_BTREE_TWIN_SEED=<seed>` one.
#[test]
fn twin_crashes_recover_the_last_completed_commit_or_a_whole_later_one() {
    let seeds = match env_u64("CAIRN_BTREE_TWIN_SEED") {
        Some(seed) => seed..seed + 1,
        None => 0..env_u64("CAIRN_BTREE_TWIN_SEEDS").unwrap_or(150),
    };
    let mut loss = CrashLoss::default();
    let mut recovered_in_flight = 0;
    for seed in seeds {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            twin_crash_run(seed, &mut loss, &mut recovered_in_flight)
        }));
        if run.is_err() {
            panic!("seed {seed} failed; replay: CAIRN_BTREE_TWIN_SEED={seed} cargo test --test btree_crash twin_crashes");
        }
    }
    println!("{loss:?}, {recovered_in_flight} commits in flight recovered whole");
    assert!(
        loss.sectors_kept > 0 && loss.sectors_lost > 0,
        "crashes tore writes: {loss:?}"
    );
    assert!(
        recovered_in_flight > 0,
        "some commit the power failed in reached the disk whole"
    );
}

/// A flipped bit in each page in turn: opening and reading everything yields the newest
/// commit unchanged, or `Corrupt` at the damaged page (for an overflow run, its first page);
/// in the newest commit's pages, which opening verifies, always `Corrupt`.
#[test]
fn twin_flipped_bits_are_reported_at_their_page_never_read_as_data() {
    let disk = Arc::new(MemDisk::new());
    let opts = DbOptions {
        mem_disk: Some(disk.clone()),
        ..DbOptions::default()
    };
    let path = Path::new("/cairn-twin/flip.db");
    let commits = write_history(path, opts.clone());
    let (_, last_index, last_state) = commits.last().unwrap();
    let bytes = disk.file(path).unwrap().contents();
    let page = PAGE_SIZE as u64;
    let pages = bytes.len() as u64 / page;
    // The unit each page is checked in: itself, or the overflow run it belongs to.
    let mut unit = vec![0u64; pages as usize];
    let mut p = 1;
    while p < pages {
        let at = (p * page) as usize;
        let run = if bytes[at + 4] == 3 {
            let len = u32::from_le_bytes(bytes[at + 24..at + 28].try_into().unwrap());
            (32 + len as u64).div_ceil(page)
        } else {
            1
        };
        for q in p..p + run {
            unit[q as usize] = p;
        }
        p += run;
    }
    let record = pages - 2;
    let at = (record * page) as usize;
    assert_eq!(&bytes[at + 32..at + 40], b"CAIRNCMT");
    let data_start = u64::from_le_bytes(bytes[at + 64..at + 72].try_into().unwrap());
    assert!(data_start < record, "the newest commit wrote pages");
    let mut rng = SplitMix64::new(17);
    let (mut exact, mut corrupt) = (0, 0);
    for p in 0..pages {
        disk.write_file(path, &bytes);
        let offset = p * page + rng.below(page);
        assert!(disk
            .file(path)
            .unwrap()
            .flip_bit(offset, rng.below(8) as u8));
        let outcome = Db::open(path, opts.clone()).and_then(|db| {
            let state = read_all(&db)?;
            Ok((db.last_commit().applied_index, state))
        });
        match outcome {
            Ok((index, state)) => {
                assert!(
                    !(data_start..record).contains(&p),
                    "damage at byte {offset}, in page {p} of the newest commit, went unseen"
                );
                assert_eq!(index, *last_index, "damage at byte {offset}");
                assert!(
                    state == *last_state,
                    "damage at byte {offset} changed the data silently"
                );
                exact += 1;
            }
            Err(BtreeError::Corrupt {
                offset: reported,
                reason,
                ..
            }) => {
                assert_eq!(
                    reported,
                    unit[p as usize] * page,
                    "damage at byte {offset}: {reason}"
                );
                corrupt += 1;
            }
            Err(e) => panic!("damage at byte {offset}: unexpected error {e}"),
        }
    }
    assert!(exact > 0 && corrupt > 0, "{exact} exact, {corrupt} errors");
}

/// On the twin, inspection and a read-only open find the file, report what opening would
/// cut and delete, and change nothing; opening then does it.
#[test]
fn twin_inspection_and_read_only_open_change_nothing_and_open_cleans_up() {
    let disk = Arc::new(MemDisk::new());
    let opts = DbOptions {
        mem_disk: Some(disk.clone()),
        ..DbOptions::default()
    };
    let path = Path::new("/cairn-twin/ro.db");
    let commits = write_history(path, opts.clone());
    let (len, index, state) = commits.last().unwrap();
    let mut bytes = disk.file(path).unwrap().contents();
    bytes.extend_from_slice(&[9u8; 5000]);
    disk.write_file(path, &bytes);
    disk.write_file("/cairn-twin/ro.db.reclaim", b"unfinished");
    disk.write_file("/cairn-twin/ro.db.tmp", b"unfinished");
    // A reclamation's file before its rename to `.reclaim`.
    disk.write_file("/cairn-twin/ro.db.reclaim.new", b"unfinished");
    let before = disk.paths();
    let inspection = Db::inspect_with(path, &opts).unwrap();
    assert_eq!(inspection.commit.applied_index, *index);
    let cut = inspection.cut.unwrap();
    assert_eq!((cut.offset, cut.bytes), (*len, bytes.len() as u64 - len));
    assert_eq!(inspection.leftovers.len(), 3);
    let db = Db::open_read_only(path, opts.clone()).unwrap();
    assert!(read_all(&db).unwrap() == *state);
    drop(db);
    assert_eq!(disk.file(path).unwrap().contents(), bytes);
    assert_eq!(disk.paths(), before);
    let missing = Path::new("/cairn-twin/none.db");
    assert!(Db::inspect_with(missing, &opts).is_ok_and(|i| !i.exists));
    assert!(disk.file(missing).is_none());
    let db = Db::open(path, opts.clone()).unwrap();
    assert!(read_all(&db).unwrap() == *state);
    assert_eq!(disk.paths(), vec![path.to_path_buf()]);
    assert_eq!(disk.file(path).unwrap().len(), *len);
}
