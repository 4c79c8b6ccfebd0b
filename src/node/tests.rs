use super::*;
use crate::btree::DbOptions;
use crate::mvcc::{PutRequest, RangeRequest, Request, Response, Store};
use crate::protocol::{encode_request, ClientRequest, HEADER_BYTES};
use raft::eraftpb::ConfState;
use std::path::Path;

fn payload(key: &str, value: &str) -> Vec<u8> {
    let req = ClientRequest::Kv(Request::Put(PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }));
    command::client(&encode_request(0, &req).unwrap()[HEADER_BYTES..])
}

fn id(seq: u64) -> ProposalId {
    ProposalId {
        member: 1,
        epoch: 1,
        seq,
    }
}

/// A member: the consensus core and the store it applies to.
struct Member {
    node: Node,
    store: Store,
}

impl Member {
    fn propose(&mut self, seq: u64, payload: Vec<u8>) -> Result<(), NodeError> {
        self.node.propose(id(seq), payload)
    }

    fn campaign(&mut self) -> Result<(), NodeError> {
        self.node.campaign()
    }

    fn is_leader(&self) -> bool {
        self.node.is_leader()
    }

    fn store(&self) -> &Store {
        &self.store
    }

    fn store_mut(&mut self) -> &mut Store {
        &mut self.store
    }
}

/// Runs rounds until raft is idle, "persisting" each round's records into `wal` at once
/// and applying what commits.
fn run(
    m: &mut Member,
    wal: &mut Vec<(RecordType, Vec<u8>)>,
) -> Vec<(u64, Result<Response, NodeError>)> {
    let mut results = Vec::new();
    for _ in 0..100 {
        let Some(work) = m.node.next_ready().unwrap() else {
            break;
        };
        assert!(work.messages.is_empty(), "a single member sends nothing");
        assert!(work.persisted_messages.is_empty());
        results.extend(apply(m, &work.committed));
        wal.extend(work.records.iter().cloned());
        m.node.on_persisted(work.number);
    }
    results
}

/// Results by proposal sequence.
fn apply(m: &mut Member, committed: &[Entry]) -> Vec<(u64, Result<Response, NodeError>)> {
    let applied = apply_committed(&mut m.store, committed).unwrap();
    if let Some(last) = applied.last_index {
        assert_eq!(
            last,
            m.node.applied_index(),
            "everything committed is applied"
        );
    }
    applied
        .results
        .into_iter()
        .map(|(id, r)| (id.seq, r))
        .collect()
}

fn open(dir: &Path, wal: &[(RecordType, Vec<u8>)]) -> Member {
    let store = Store::open(dir.join("db"), DbOptions::default()).unwrap();
    let log = RaftLog::new(ConfState {
        voters: vec![1],
        ..Default::default()
    });
    for (t, p) in wal {
        log.replay(*t, p).unwrap();
    }
    let node = Node::open(1, 10, store.applied().index, log, &raft::default_logger()).unwrap();
    Member { node, store }
}

fn value(node: &Member, key: &str) -> Option<(Vec<u8>, i64)> {
    let r = node
        .store()
        .range(&RangeRequest {
            key: key.into(),
            ..Default::default()
        })
        .unwrap();
    r.kvs.first().map(|kv| (kv.value.clone(), kv.mod_revision))
}

#[test]
fn a_single_member_applies_proposals_and_answers_by_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Vec::new();
    let mut node = open(dir.path(), &wal);
    assert!(matches!(
        node.propose(1, payload("a", "1")),
        Err(NodeError::NotLeader)
    ));
    node.campaign().unwrap();
    run(&mut node, &mut wal);
    assert!(node.is_leader());
    node.propose(7, payload("a", "1")).unwrap();
    node.propose(8, payload("b", "2")).unwrap();
    let results = run(&mut node, &mut wal);
    let tokens: Vec<u64> = results.iter().map(|(t, _)| *t).collect();
    assert_eq!(tokens, vec![7, 8]);
    let Ok(Response::Put(p)) = &results[1].1 else {
        panic!("{:?}", results[1].1)
    };
    assert_eq!(p.header.revision, 3);
    assert_eq!(value(&node, "b"), Some((b"2".to_vec(), 3)));
}

#[test]
fn pipelined_rounds_commit_only_what_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Vec::new();
    let mut node = open(dir.path(), &wal);
    node.campaign().unwrap();
    run(&mut node, &mut wal);
    // Two rounds, neither durable yet: nothing commits.
    node.propose(1, payload("a", "1")).unwrap();
    let first = node.node.next_ready().unwrap().unwrap();
    assert_eq!(first.entries_span().map(|(f, l)| l - f), Some(0));
    node.propose(2, payload("b", "2")).unwrap();
    let second = node.node.next_ready().unwrap().unwrap();
    assert!(first.committed.is_empty() && second.committed.is_empty());
    assert!(node.node.next_ready().unwrap().is_none());
    // The first becomes durable: only its entry commits.
    wal.extend(first.records.iter().cloned());
    node.node.on_persisted(first.number);
    let next = node.node.next_ready().unwrap().unwrap();
    let results = apply(&mut node, &next.committed);
    assert_eq!(results.iter().map(|(t, _)| *t).collect::<Vec<_>>(), vec![1]);
    assert_eq!(value(&node, "b"), None);
    // Then the second.
    wal.extend(second.records.iter().cloned());
    wal.extend(next.records.iter().cloned());
    node.node.on_persisted(next.number);
    let results = run(&mut node, &mut wal);
    assert_eq!(results.iter().map(|(t, _)| *t).collect::<Vec<_>>(), vec![2]);
    assert_eq!(value(&node, "b"), Some((b"2".to_vec(), 3)));
    // What the WAL holds replays to the same store.
    drop(node);
    let fresh = tempfile::tempdir().unwrap();
    let mut node = open(fresh.path(), &wal);
    node.campaign().unwrap();
    run(&mut node, &mut wal);
    assert_eq!(value(&node, "a"), Some((b"1".to_vec(), 2)));
    assert_eq!(value(&node, "b"), Some((b"2".to_vec(), 3)));
}

#[test]
fn a_restart_replays_what_the_checkpoint_does_not_hold() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Vec::new();
    let mut node = open(dir.path(), &wal);
    node.campaign().unwrap();
    run(&mut node, &mut wal);
    for i in 0..5 {
        node.propose(i, payload(&format!("k{i}"), &i.to_string()))
            .unwrap();
        run(&mut node, &mut wal);
        if i == 1 {
            node.store_mut().checkpoint().unwrap();
        }
    }
    let before: Vec<_> = (0..5).map(|i| value(&node, &format!("k{i}"))).collect();
    drop(node); // a crash: nothing after the checkpoint reached the tree file
    let mut node = open(dir.path(), &wal);
    assert!(
        node.store().current_revision() < 6,
        "the checkpoint is older than the log"
    );
    node.campaign().unwrap();
    run(&mut node, &mut wal);
    let after: Vec<_> = (0..5).map(|i| value(&node, &format!("k{i}"))).collect();
    assert_eq!(after, before, "same values at the same revisions");
    assert_eq!(node.store().current_revision(), 6);
    // And it goes on: the next proposal gets the next revision.
    node.propose(9, payload("z", "9")).unwrap();
    let r = run(&mut node, &mut wal);
    assert!(matches!(&r[0].1, Ok(Response::Put(p)) if p.header.revision == 7));
}

#[test]
fn a_committed_entry_that_is_not_a_command_stops_the_member() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Vec::new();
    let mut node = open(dir.path(), &wal);
    node.campaign().unwrap();
    run(&mut node, &mut wal);
    node.propose(1, payload("k", "v")).unwrap();
    node.propose(2, b"not a command, but long enough".to_vec())
        .unwrap();
    node.propose(3, payload("after", "v")).unwrap();
    let mut committed = Vec::new();
    while let Some(work) = node.node.next_ready().unwrap() {
        committed.extend(work.committed);
        node.node.on_persisted(work.number);
    }
    let err = apply_committed(&mut node.store, &committed)
        .err()
        .expect("the bad entry is fatal");
    assert!(
        matches!(&err, NodeError::BadEntry { index, reason } if *index == committed[1].index && reason.contains("version")),
        "{err}"
    );
    // Nothing after it was applied.
    assert_eq!(value(&node, "k").map(|(_, rev)| rev), Some(2));
    assert_eq!(value(&node, "after"), None);
}

#[test]
fn entries_apply_the_same_read_in_place_or_from_an_aligned_copy() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path().join("db"), DbOptions::default()).unwrap();
    let entry = |index: u64, data: bytes::Bytes| Entry {
        index,
        term: 1,
        data,
        context: id(index).encode().into(),
        ..Default::default()
    };
    let aligned = bytes::Bytes::from(payload("a", "1"));
    // The same bytes one past an aligned start: rkyv cannot read them in place.
    let mut shifted = vec![0u8];
    shifted.extend_from_slice(&payload("b", "2"));
    let misaligned = bytes::Bytes::from(shifted).slice(1..);
    assert_ne!(
        aligned.as_ptr() as usize % 16,
        misaligned.as_ptr() as usize % 16
    );
    let txn = ClientRequest::Kv(Request::Txn(crate::mvcc::TxnRequest {
        success: vec![crate::mvcc::RequestOp::Put(PutRequest {
            key: b"c".to_vec(),
            value: b"3".to_vec(),
            ..Default::default()
        })],
        ..Default::default()
    }));
    let txn = bytes::Bytes::from(command::client(
        &encode_request(0, &txn).unwrap()[HEADER_BYTES..],
    ));
    let empty_key = bytes::Bytes::from(payload("", "x"));
    let out = apply_committed(
        &mut store,
        &[
            entry(1, aligned),
            entry(2, misaligned),
            entry(3, txn),
            entry(4, empty_key),
        ],
    )
    .unwrap();
    let revs: Vec<_> = out
        .results
        .iter()
        .map(|(t, r)| match r {
            Ok(Response::Put(p)) => (t.seq, p.header.revision),
            Ok(Response::Txn(t2)) => (t.seq, t2.header.revision),
            Ok(_) => panic!("unexpected response"),
            Err(_) => (t.seq, -1),
        })
        .collect();
    assert_eq!(revs, vec![(1, 2), (2, 3), (3, 4), (4, -1)]);
    assert_eq!(out.last_index, Some(4));
    for (key, value, rev) in [("a", "1", 2), ("b", "2", 3), ("c", "3", 4)] {
        let r = store
            .range(&RangeRequest {
                key: key.into(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(r.kvs[0].value, value.as_bytes());
        assert_eq!(r.kvs[0].mod_revision, rev);
    }
}

/// Runs rounds until raft is idle (messages to other members are dropped), persisting
/// each round's records into `wal` at once; the outcomes of membership changes.
fn run_changes(
    m: &mut Member,
    wal: &mut Vec<(RecordType, Vec<u8>)>,
) -> Vec<(u64, Result<(), String>)> {
    let mut changes = Vec::new();
    for _ in 0..100 {
        let Some(work) = m.node.next_ready().unwrap() else {
            break;
        };
        apply(m, &work.committed);
        // A round that hands out a membership change writes a commit index covering it.
        if let Some(last) = work
            .committed
            .iter()
            .filter(|e| e.get_entry_type() != EntryType::EntryNormal)
            .map(|e| e.index)
            .max()
        {
            let covered = work.records.iter().any(|(t, p)| {
                *t == RecordType::HARD_STATE
                    && crate::raftlog::decode_hard_state(p).is_ok_and(|hs| hs.commit >= last)
            });
            assert!(
                covered,
                "no durable commit index covers the change at {last}"
            );
        }
        changes.extend(work.changes.into_iter().map(|(id, r)| (id.seq, r)));
        wal.extend(work.records.iter().cloned());
        m.node.on_persisted(work.number);
    }
    changes
}

fn member_info(id: u64) -> MemberInfo {
    MemberInfo {
        id,
        name: String::new(),
        peer_urls: vec![format!("http://127.0.0.1:{}", 2380 + id)],
        client_urls: vec![],
    }
}

fn change(kind: raft::eraftpb::ConfChangeType, id: u64, context: Vec<u8>) -> ConfChangeV2 {
    let mut single = raft::eraftpb::ConfChangeSingle::default();
    single.set_change_type(kind);
    single.node_id = id;
    let mut cc = ConfChangeV2::default();
    cc.mut_changes().push(single);
    cc.context = context.into();
    cc
}

/// Opens member 1 over records written so far (none: a new cluster of member 1).
fn open_bootstrapped(dir: &Path, wal: &mut Vec<(RecordType, Vec<u8>)>) -> Member {
    if wal.is_empty() {
        wal.extend(RaftLog::bootstrap(&[member_info(1)]));
    }
    let store = Store::open(dir.join("db"), DbOptions::default()).unwrap();
    let log = RaftLog::default();
    for (t, p) in wal.iter() {
        log.replay(*t, p).unwrap();
    }
    let node = Node::open(1, 10, store.applied().index, log, &raft::default_logger()).unwrap();
    Member { node, store }
}

#[test]
fn membership_changes_apply_in_log_order_and_survive_compaction_and_restart() {
    use raft::eraftpb::ConfChangeType::*;
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Vec::new();
    let mut m = open_bootstrapped(dir.path(), &mut wal);
    // The bootstrap entries come out committed: member 1 is the one voter.
    run_changes(&mut m, &mut wal);
    assert_eq!(m.node.membership().conf.voters, vec![1]);
    assert_eq!(m.node.membership().member(1), Some(&member_info(1)));
    m.campaign().unwrap();
    run_changes(&mut m, &mut wal);
    assert!(m.is_leader());

    // A learner joins with its attributes; then publishes its name.
    m.node
        .propose_conf_change(id(1), change(AddLearnerNode, 2, member_info(2).to_bytes()))
        .unwrap();
    assert_eq!(run_changes(&mut m, &mut wal), vec![(1, Ok(()))]);
    assert!(m.node.conf_change_pending() || m.node.membership().is_learner(2));
    let named = MemberInfo {
        name: "two".into(),
        client_urls: vec!["http://127.0.0.1:2379".into()],
        ..member_info(2)
    };
    m.propose(
        2,
        command::member(command::SET_NAME_AND_CLIENT_URLS, &named),
    )
    .unwrap();
    assert_eq!(run_changes(&mut m, &mut wal), vec![(2, Ok(()))]);
    assert_eq!(m.node.membership().member(2), Some(&named));
    // A change without the attributes of the member it adds is refused, alike everywhere.
    m.node
        .propose_conf_change(id(3), change(AddLearnerNode, 3, Vec::new()))
        .unwrap();
    let refused = run_changes(&mut m, &mut wal);
    assert!(refused[0]
        .1
        .as_ref()
        .unwrap_err()
        .contains("without its attributes"));
    assert!(!m.node.membership().contains(3));

    // The log is compacted past the changes: the start marker carries the membership.
    let applied = m.node.applied_index();
    m.store_mut().checkpoint().unwrap();
    let records = m.node.log().compact(applied).unwrap();
    wal.extend(records.iter().cloned());
    let before = m.node.membership();
    drop(m);
    let mut m = open_bootstrapped(dir.path(), &mut wal);
    run_changes(&mut m, &mut wal);
    assert_eq!(m.node.membership(), before);

    // Removed, then added again: refused (ids are not reused).
    m.campaign().unwrap();
    run_changes(&mut m, &mut wal);
    m.node
        .propose_conf_change(id(4), change(RemoveNode, 2, Vec::new()))
        .unwrap();
    assert_eq!(run_changes(&mut m, &mut wal), vec![(4, Ok(()))]);
    assert!(m.node.membership().was_removed(2) && m.node.membership().member(2).is_none());
    m.node
        .propose_conf_change(id(5), change(AddLearnerNode, 2, member_info(2).to_bytes()))
        .unwrap();
    let again = run_changes(&mut m, &mut wal);
    assert!(again[0].1.as_ref().unwrap_err().contains("ID removed"));

    // Replayed from the start (no compaction since), the same membership (once the
    // member, alone, has committed its log again).
    let after = m.node.membership();
    drop(m);
    let mut m = open_bootstrapped(dir.path(), &mut wal);
    run_changes(&mut m, &mut wal);
    m.campaign().unwrap();
    run_changes(&mut m, &mut wal);
    assert_eq!(m.node.membership(), after);
    assert!(!m.node.is_removed());
}

#[test]
fn a_committed_membership_change_that_does_not_decode_stops_the_member() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = RaftLog::bootstrap(&[member_info(1)]);
    // The second bootstrap entry's data is not a configuration change.
    let bad = Entry {
        entry_type: EntryType::EntryConfChangeV2,
        index: 2,
        term: 1,
        data: vec![0xff; 7].into(),
        ..Default::default()
    };
    wal.insert(1, (RecordType::ENTRY, encode_entry(&bad)));
    let hs = raft::eraftpb::HardState {
        term: 1,
        commit: 2,
        ..Default::default()
    };
    wal.push((RecordType::HARD_STATE, encode_hard_state(&hs)));
    let mut m = open_bootstrapped(dir.path(), &mut wal);
    let err = m.node.next_ready().err().expect("a fatal error");
    assert!(matches!(err, NodeError::BadEntry { index: 2, .. }), "{err}");
}
