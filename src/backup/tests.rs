use super::*;
use crate::btree::{DbOptions, Snapshot};
use crate::lease::LeaseOp;
use crate::mvcc::{PutRequest, RaftPosition, Request, Store};
use std::path::Path;
use std::sync::Arc;

fn put(store: &mut Store, index: u64, key: &str, value: &[u8]) {
    let req = Request::Put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.to_vec(),
        ..Default::default()
    });
    store
        .apply(RaftPosition { index, term: 3 }, &[req])
        .expect("apply");
}

/// A store with `n` keys (some values in overflow pages), checkpointed.
fn store_with(path: &Path, n: u64) -> Store {
    let mut store = Store::open(path, DbOptions::default()).expect("open");
    for i in 1..=n {
        let len = if i % 10 == 0 { 9000 } else { 40 };
        put(
            &mut store,
            i,
            &format!("k{:05}", i % 700),
            &vec![i as u8; len],
        );
    }
    store.checkpoint().expect("checkpoint");
    store
}

fn save(mut stream: SnapshotStream, path: &Path) -> Vec<u8> {
    let total = stream.remaining_bytes();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next() {
        let chunk = chunk.expect("chunk");
        assert!(!chunk.is_empty() && chunk.len() <= CHUNK_BYTES);
        bytes.extend_from_slice(&chunk);
        assert_eq!(stream.remaining_bytes(), total - bytes.len() as u64);
    }
    assert_eq!(stream.remaining_bytes(), 0);
    std::fs::write(path, &bytes).expect("write snapshot");
    bytes
}

fn full(db: &Path, out: &Path) -> Vec<u8> {
    let snap = Snapshot::of_file(db).expect("snapshot");
    save(SnapshotStream::full(Arc::new(snap)), out)
}

#[test]
fn a_full_snapshot_is_the_file_up_to_its_commit_then_the_sha256() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cairn.db");
    let mut store = store_with(&db, 3000);
    // Bytes after the commit (a commit being written) are not part of it.
    put(&mut store, 3001, "later", b"x");
    let file = std::fs::read(&db).unwrap();
    let bytes = full(&db, &dir.path().join("s.snap"));
    let tree = &bytes[..bytes.len() - HASH_BYTES];
    assert_eq!(tree, &file[..tree.len()]);
    let sha: [u8; 32] = sha2::Sha256::digest(tree).into();
    assert_eq!(&bytes[tree.len()..], &sha);
    assert!(
        tree.len() > 2 * CHUNK_BYTES,
        "several chunks: {}",
        tree.len()
    );
    let s = status(&dir.path().join("s.snap")).unwrap();
    assert!(s.hash_checked);
    assert_eq!(s.revision, 3001);
    assert_eq!(s.total_size, tree.len() as u64);
    // 700 keys, each revision a record.
    assert_eq!(s.total_keys, 3000);
    drop(store);
}

use sha2::Digest as _;

#[test]
fn a_snapshot_taken_during_writes_restores_to_the_state_at_its_commit() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cairn.db");
    let store = store_with(&db, 10);
    let writer = std::thread::spawn(move || {
        let mut store = store;
        store.set_background_checkpoints(true);
        for i in 11..6000u64 {
            put(&mut store, i, &format!("w{:04}", i % 900), &[i as u8; 300]);
            if i % 250 == 0 {
                store.checkpoint_background().expect("checkpoint");
            }
        }
        store.checkpoint().expect("checkpoint");
        store
    });
    let mut taken = Vec::new();
    while !writer.is_finished() || taken.is_empty() {
        let out = dir.path().join(format!("s{}.snap", taken.len()));
        full(&db, &out);
        taken.push(out);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let live = writer.join().expect("writer");
    assert!(taken.len() >= 2, "snapshots taken while writing");
    for (i, snap) in taken.iter().enumerate() {
        let s = status(snap).unwrap();
        let target = dir.path().join(format!("restored{i}"));
        let restored = restore(&RestoreConfig {
            snapshot: snap.clone(),
            data_dir: target.clone(),
            name: "default".into(),
            initial_cluster: "default=http://localhost:2380".into(),
            initial_cluster_token: "etcd-cluster".into(),
            initial_advertise_peer_urls: vec!["http://localhost:2380".into()],
            skip_hash_check: false,
        })
        .unwrap();
        assert_eq!(restored.revision, s.revision);
        assert_eq!(restored.applied_index, 1);
        let back =
            Store::open_read_only(crate::check::db_path(&target), DbOptions::default()).unwrap();
        assert_eq!(back.current_revision(), s.revision);
        assert_eq!(back.applied().index, 1);
        let want = live.hash_kv(s.revision).unwrap().hash;
        assert_eq!(back.hash_kv(0).unwrap().hash, want, "snapshot {i}");
        let report = crate::check::check(&target).unwrap();
        assert!(report.intact(), "{:?}", report.findings(&target));
    }
}

#[test]
fn an_increment_chain_combines_into_the_full_snapshot_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cairn.db");
    let mut store = store_with(&db, 500);
    let p = |n: &str| dir.path().join(n);
    full(&db, &p("full"));
    let mut index = 500;
    let mut chain = Vec::new();
    let mut prev = p("full");
    for round in 0..3 {
        // An increment with nothing new is allowed too (round 1).
        if round != 1 {
            for _ in 0..300 {
                index += 1;
                put(&mut store, index, &format!("n{index}"), &[7; 100]);
            }
            store.checkpoint().unwrap();
        }
        let base = SnapshotPoint::of_file(&prev).unwrap();
        let snap = Arc::new(Snapshot::of_file(&db).unwrap());
        let inc = p(&format!("inc{round}"));
        let bytes = save(SnapshotStream::since(snap.clone(), &base).unwrap(), &inc);
        assert_eq!(&bytes[..8], INCREMENT_MAGIC);
        assert_eq!(
            bytes.len() as u64,
            (INCREMENT_HEADER_BYTES + HASH_BYTES) as u64 + snap.len() - base.end
        );
        chain.push(inc.clone());
        prev = inc;
        let combined = combine(&p("full"), &chain, &p("combined")).unwrap();
        let whole = save(SnapshotStream::full(snap.clone()), &p("direct"));
        assert_eq!(
            std::fs::read(p("combined")).unwrap(),
            whole,
            "round {round}"
        );
        assert_eq!(combined.end, snap.len());
    }
    // Out of order, or with one missing, the chain is refused and nothing is written.
    let _ = std::fs::remove_file(p("combined"));
    for bad in [
        vec![chain[1].clone(), chain[0].clone()],
        vec![chain[0].clone(), chain[2].clone()],
        vec![p("full")],
    ] {
        assert!(combine(&p("full"), &bad, &p("combined")).is_err());
        assert!(!p("combined").exists() && !p("combined.part").exists());
    }
    // A damaged byte in an increment's payload fails its hash.
    let mut damaged = std::fs::read(&chain[0]).unwrap();
    damaged[INCREMENT_HEADER_BYTES + 100] ^= 1;
    std::fs::write(p("damaged"), damaged).unwrap();
    let err = combine(&p("full"), &[p("damaged")], &p("combined")).unwrap_err();
    assert!(err.to_string().contains("SHA-256 mismatch"), "{err}");
    // An increment is not a database on its own.
    assert!(status(&chain[0])
        .unwrap_err()
        .to_string()
        .contains("incremental"));
}

#[test]
fn an_increment_since_a_snapshot_of_another_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let store_a = store_with(&a, 200);
    let mut store_b = store_with(&b, 300);
    full(&a, &dir.path().join("a.snap"));
    let base = SnapshotPoint::of_file(&dir.path().join("a.snap")).unwrap();
    let err = SnapshotStream::since(Arc::new(Snapshot::of_file(&b).unwrap()), &base)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("take a full snapshot"), "{err}");
    // The same after the file's space is reclaimed (a new file under the same name).
    full(&b, &dir.path().join("b.snap"));
    let base = SnapshotPoint::of_file(&dir.path().join("b.snap")).unwrap();
    store_b.reclaim_space().unwrap();
    assert!(SnapshotStream::since(Arc::new(Snapshot::of_file(&b).unwrap()), &base).is_err());
    drop(store_a);
}

#[test]
fn damaged_and_cut_snapshots_are_refused_by_status_and_restore() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cairn.db");
    let mut store = store_with(&db, 400);
    store
        .apply_lease(
            RaftPosition {
                index: 401,
                term: 3,
            },
            &LeaseOp::Grant { id: 77, ttl: 60 },
        )
        .unwrap();
    store.checkpoint().unwrap();
    let good = full(&db, &dir.path().join("good"));
    let cfg = |file: &str, target: &str| RestoreConfig {
        snapshot: dir.path().join(file),
        data_dir: dir.path().join(target),
        name: "default".into(),
        initial_cluster: "default=http://localhost:2380".into(),
        initial_cluster_token: "etcd-cluster".into(),
        initial_advertise_peer_urls: vec!["http://localhost:2380".into()],
        skip_hash_check: false,
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("flipped", flip(&good, good.len() / 2), "SHA-256 mismatch"),
        ("cut", good[..good.len() - 1000].to_vec(), "cut short"),
        (
            "cut-at-page",
            good[..good.len() - 32 - 8192].to_vec(),
            "no SHA-256 trailer",
        ),
        (
            "trailer-flipped",
            flip(&good, good.len() - 1),
            "SHA-256 mismatch",
        ),
        ("empty", Vec::new(), "cut short"),
    ];
    for (name, bytes, why) in &cases {
        std::fs::write(dir.path().join(name), bytes).unwrap();
        let target = format!("{name}.dir");
        let err = restore(&cfg(name, &target)).unwrap_err().to_string();
        assert!(
            err.contains(why) || err.contains("missing hash"),
            "{name}: {err}"
        );
        assert!(!dir.path().join(&target).exists(), "{name}: nothing left");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".restore."))
            .collect();
        assert!(leftovers.is_empty(), "{name}: {leftovers:?}");
        if *name != "cut-at-page" {
            assert!(status(&dir.path().join(name)).is_err(), "{name}");
        }
    }
    // A missing file, a name not in the cluster, a data directory in use.
    assert!(restore(&cfg("absent", "x")).is_err());
    let mut other = cfg("good", "x");
    other.name = "other".into();
    let err = restore(&other).unwrap_err().to_string();
    assert!(err.contains("couldn't find local name"), "{err}");
    std::fs::create_dir(dir.path().join("used")).unwrap();
    std::fs::write(dir.path().join("used/file"), b"x").unwrap();
    let err = restore(&cfg("good", "used")).unwrap_err().to_string();
    assert!(err.contains("not empty"), "{err}");
    // An empty directory may be restored into; the lease is kept.
    std::fs::create_dir(dir.path().join("empty-dir")).unwrap();
    restore(&cfg("good", "empty-dir")).unwrap();
    let back = Store::open_read_only(
        crate::check::db_path(&dir.path().join("empty-dir")),
        DbOptions::default(),
    )
    .unwrap();
    assert!(back.leases().get(77).is_some());
    // A copy of the database file itself: only with --skip-hash-check.
    std::fs::copy(&db, dir.path().join("copy.db")).unwrap();
    assert!(restore(&cfg("copy.db", "c1")).is_err());
    let mut skip = cfg("copy.db", "c2");
    skip.skip_hash_check = true;
    restore(&skip).unwrap();
    assert!(!status(&dir.path().join("copy.db")).unwrap().hash_checked);
}

#[test]
fn damaged_pages_under_a_matching_trailer_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cairn.db");
    let store = store_with(&db, 300);
    drop(store);
    let good = full(&db, &dir.path().join("good"));
    let tree_len = good.len() - HASH_BYTES;
    let page = crate::btree::PAGE_SIZE;
    // The header page, a data page of the newest commit, a record copy each, and bytes all
    // over the file: every damage that is not to a dead page is found, with its offset.
    let mut offsets = vec![10, tree_len - 3 * page + 100, tree_len - 2 * page + 50];
    offsets.extend((1..40).map(|i| i * tree_len / 40));
    for (n, at) in offsets.into_iter().enumerate() {
        let mut bytes = flip(&good[..tree_len], at);
        let sha: [u8; 32] = sha2::Sha256::digest(&bytes).into();
        bytes.extend_from_slice(&sha);
        let file = dir.path().join(format!("d{n}"));
        std::fs::write(&file, &bytes).unwrap();
        // Either the damage is found, or it lies in pages nothing reads any more (and then
        // status reports what the good file does).
        let found = match status(&file) {
            Err(e) => {
                assert!(e.to_string().contains("corrupt"), "byte {at}: {e}");
                true
            }
            Ok(s) => {
                assert_eq!(s.hash, status(&dir.path().join("good")).unwrap().hash);
                false
            }
        };
        let target = dir.path().join(format!("d{n}.data"));
        let restored = restore(&RestoreConfig {
            snapshot: file,
            data_dir: target.clone(),
            name: "default".into(),
            initial_cluster: "default=http://localhost:2380".into(),
            initial_cluster_token: "etcd-cluster".into(),
            initial_advertise_peer_urls: vec!["http://localhost:2380".into()],
            skip_hash_check: false,
        });
        // Restore reads what status reads: it refuses the same files, leaving nothing.
        assert_eq!(restored.is_err(), found, "byte {at}");
        assert_eq!(target.exists(), !found, "byte {at}");
    }
    // The header and the newest commit's data are always read.
    assert!(status(&dir.path().join("d0")).is_err());
    assert!(status(&dir.path().join("d1")).is_err());
}

fn flip(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[at] ^= 0x40;
    b
}

#[test]
fn status_prints_as_etcdctl() {
    let s = Status {
        hash: 0xfe01cf57,
        revision: 10,
        total_keys: 7,
        total_size: 2_101_248,
        hash_checked: true,
    };
    use cli::{status_output, Format};
    assert_eq!(
        status_output(&s, Format::Simple),
        "fe01cf57, 10, 7, 2.1 MB\n"
    );
    assert_eq!(
        status_output(&s, Format::Json),
        "{\"hash\":4261531479,\"revision\":10,\"totalKey\":7,\"totalSize\":2101248}\n"
    );
    assert_eq!(
        status_output(&s, Format::Table),
        "+----------+----------+------------+------------+\n\
         |   HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |\n\
         +----------+----------+------------+------------+\n\
         | fe01cf57 |       10 |          7 |     2.1 MB |\n\
         +----------+----------+------------+------------+\n"
    );
}
