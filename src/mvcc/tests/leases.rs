//! The lease table: keys attached and detached by the writes, revokes deleting every
//! attached key in one revision, etcd's errors, and the table across checkpoints, reopens,
//! crashes and log replay.

use super::harness::{del, get, put, txn, Harness};
use crate::btree::DbOptions;
use crate::lease::{LeaseError, LeaseOp};
use crate::mvcc::{
    ApplyOutcome, EventType, LeaseChange, MvccError, PutRequest, RaftPosition, Request, RequestOp,
    Response, Store,
};

fn leased(key: &str, lease: i64) -> Request {
    Request::Put(PutRequest {
        lease,
        ..put(key, "v")
    })
}

/// The keys the table has attached to `id`.
fn attached(h: &Harness, id: i64) -> Vec<String> {
    h.store
        .leases()
        .get(id)
        .map(|l| {
            l.keys
                .iter()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn revoke(h: &mut Harness, id: i64) -> Result<Response, MvccError> {
    h.lease(LeaseOp::Revoke { id })
}

#[test]
fn puts_attach_overwrites_move_and_deletes_detach() {
    let mut h = Harness::new();
    h.grant(1);
    h.grant(2);
    h.ok(leased("a", 1));
    h.ok(leased("b", 1));
    h.ok(leased("c", 2));
    assert_eq!(attached(&h, 1), ["a", "b"]);
    // An overwrite with another lease moves the key; with none, detaches it.
    h.ok(leased("a", 2));
    h.ok(Request::Put(put("b", "plain")));
    assert_eq!(attached(&h, 1), Vec::<String>::new());
    assert_eq!(attached(&h, 2), ["a", "c"]);
    // ignore_lease keeps the key where it was.
    h.ok(Request::Put(PutRequest {
        ignore_lease: true,
        ..put("a", "again")
    }));
    assert_eq!(attached(&h, 2), ["a", "c"]);
    // Inside a txn, and deleted by a range delete.
    h.ok(Request::Txn(txn(
        vec![],
        vec![RequestOp::Put(PutRequest {
            lease: 1,
            ..put("d", "v")
        })],
        vec![],
    )));
    assert_eq!(attached(&h, 1), ["d"]);
    h.ok(Request::DeleteRange(del("a", "d")));
    assert_eq!(attached(&h, 2), Vec::<String>::new());
    assert_eq!(attached(&h, 1), ["d"]);
}

#[test]
fn a_failed_txn_attaches_nothing() {
    let mut h = Harness::new();
    h.grant(1);
    // The second put names a missing lease: the txn fails whole, the first put with it.
    let t = txn(
        vec![],
        vec![
            RequestOp::Put(PutRequest {
                lease: 1,
                ..put("a", "v")
            }),
            RequestOp::Put(PutRequest {
                lease: 9,
                ..put("b", "v")
            }),
        ],
        vec![],
    );
    assert_eq!(
        h.err(Request::Txn(t)),
        "etcdserver: requested lease not found"
    );
    assert_eq!(attached(&h, 1), Vec::<String>::new());
    assert_eq!(
        h.err(leased("k", 9)),
        "etcdserver: requested lease not found"
    );
}

#[test]
fn a_revoke_deletes_every_attached_key_in_one_revision() {
    let mut h = Harness::new();
    h.grant(1);
    h.grant(2);
    for k in ["a", "b", "c"] {
        h.ok(leased(k, 1));
    }
    h.ok(leased("other", 2));
    h.ok(Request::Put(put("plain", "v")));
    let before = h.store.current_revision();
    h.store.take_events();
    let Response::LeaseRevoke(r) = revoke(&mut h, 1).unwrap() else {
        panic!("not a revoke response")
    };
    assert_eq!(r.header.revision, before + 1);
    assert_eq!(h.store.current_revision(), before + 1);
    let events = h.store.take_events();
    assert_eq!(events.len(), 3);
    assert!(events
        .iter()
        .all(|e| e.kind == EventType::Delete && e.revision() == before + 1));
    let left: Vec<Vec<u8>> = h
        .store
        .range(&get("\0", "\u{ff}"))
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(left, [b"other".to_vec(), b"plain".to_vec()]);
    assert!(h.store.leases().get(1).is_none());
    // Gone: a second revoke (a duplicate expiry) changes nothing.
    assert_eq!(
        revoke(&mut h, 1).unwrap_err().to_string(),
        "etcdserver: requested lease not found"
    );
    assert_eq!(h.store.current_revision(), before + 1);
    // A lease without keys goes without a revision.
    h.grant(3);
    revoke(&mut h, 3).unwrap();
    assert_eq!(h.store.current_revision(), before + 1);
    assert_eq!(
        h.store.take_lease_changes(),
        [
            LeaseChange::Granted { id: 1, ttl: 60 },
            LeaseChange::Granted { id: 2, ttl: 60 },
            LeaseChange::Revoked { id: 1 },
            LeaseChange::Granted { id: 3, ttl: 60 },
            LeaseChange::Revoked { id: 3 },
        ]
    );
}

#[test]
fn grants_refuse_taken_ids_and_ttls_too_large() {
    let mut h = Harness::new();
    h.grant(1);
    let again = h.lease(LeaseOp::Grant { id: 1, ttl: 5 }).unwrap_err();
    assert_eq!(again.to_string(), LeaseError::Exists.to_string());
    assert_eq!(again.to_string(), "etcdserver: lease already exists");
    let big = h.lease(LeaseOp::Grant {
        id: 2,
        ttl: crate::lease::MAX_LEASE_TTL_S + 1,
    });
    assert_eq!(
        big.unwrap_err().to_string(),
        "etcdserver: too large lease TTL"
    );
    assert_eq!(h.store.leases().ids().collect::<Vec<_>>(), [1]);
}

#[test]
fn the_table_and_remaining_ttls_survive_a_checkpoint_and_reopen() {
    let mut h = Harness::new();
    h.grant(1);
    h.grant(2);
    h.ok(leased("a", 1));
    h.ok(leased("b", 2));
    h.ok(leased("c", 2));
    h.ok(Request::DeleteRange(del("c", "")));
    h.lease(LeaseOp::Checkpoint(vec![(1, 17), (2, 0), (9, 5)]))
        .unwrap();
    h.store.checkpoint().unwrap();
    h.reopen(|old, path| {
        drop(old);
        Store::open(path, DbOptions::default())
    })
    .unwrap();
    let l1 = h.store.leases().get(1).unwrap().clone();
    assert_eq!((l1.ttl, l1.remaining_ttl), (60, 17));
    assert_eq!(h.store.leases().get(2).unwrap().remaining_ttl, 0);
    assert!(
        h.store.leases().get(9).is_none(),
        "a checkpoint grants nothing"
    );
    assert_eq!(attached(&h, 1), ["a"]);
    assert_eq!(attached(&h, 2), ["b"]);
    // The reopened table revokes as the old one would have.
    revoke(&mut h, 2).unwrap();
    assert!(h.store.range(&get("b", "")).unwrap().kvs.is_empty());
}

/// What a member does after a crash: reopen at the last checkpoint and replay the log.
#[test]
fn a_crash_loses_nothing_the_log_replays() {
    let mut h = Harness::new();
    let mut log: Vec<(u64, Entry)> = Vec::new();
    let mut run = |h: &mut Harness, e: Entry| {
        let index = h.next_index;
        match &e {
            Entry::Kv(r) => {
                h.apply(r.clone()).unwrap();
            }
            Entry::Lease(op) => {
                h.lease(op.clone()).unwrap();
            }
        }
        log.push((index, e));
    };
    run(&mut h, Entry::Lease(LeaseOp::Grant { id: 1, ttl: 30 }));
    run(&mut h, Entry::Kv(leased("a", 1)));
    h.store.checkpoint().unwrap();
    run(&mut h, Entry::Lease(LeaseOp::Grant { id: 2, ttl: 40 }));
    run(&mut h, Entry::Kv(leased("b", 2)));
    run(&mut h, Entry::Lease(LeaseOp::Checkpoint(vec![(1, 12)])));
    run(&mut h, Entry::Lease(LeaseOp::Revoke { id: 1 }));
    let revision = h.store.current_revision();
    // Crash: no checkpoint; the tree holds the first two entries.
    h.reopen(|old, path| {
        drop(old);
        Store::open(path, DbOptions::default())
    })
    .unwrap();
    assert_eq!(h.store.applied().index, 2);
    assert_eq!(attached(&h, 1), ["a"]);
    for (index, e) in &log {
        let at = RaftPosition {
            index: *index,
            term: 1,
        };
        let outcome = match e {
            Entry::Kv(r) => h.store.apply(at, std::slice::from_ref(r)).unwrap(),
            Entry::Lease(op) => h.store.apply_lease(at, op).unwrap(),
        };
        assert_eq!(matches!(outcome, ApplyOutcome::Skipped), *index <= 2);
    }
    assert_eq!(h.store.current_revision(), revision);
    assert!(h.store.leases().get(1).is_none());
    assert_eq!(attached(&h, 2), ["b"]);
    assert_eq!(h.store.leases().get(2).unwrap().ttl, 40);
    assert!(h.store.range(&get("a", "")).unwrap().kvs.is_empty());
}

#[derive(Clone)]
enum Entry {
    Kv(Request),
    Lease(LeaseOp),
}
