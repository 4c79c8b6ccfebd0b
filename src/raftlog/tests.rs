use super::*;
use raft::eraftpb::ConfState;
use raft::{Config, RawNode, Storage};

fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
    Entry {
        index,
        term,
        data: data.to_vec().into(),
        ..Default::default()
    }
}

fn voters(ids: &[u64]) -> ConfState {
    ConfState {
        voters: ids.to_vec(),
        ..Default::default()
    }
}

fn ctx() -> GetEntriesContext {
    GetEntriesContext::empty(false)
}

/// The records a raft loop writes, in order, so replay can be checked against them.
#[derive(Default)]
struct Wal(Vec<(RecordType, Vec<u8>)>);

impl Wal {
    fn entries(&mut self, log: &RaftLog, ents: &[Entry]) {
        log.append(ents).unwrap();
        self.0
            .extend(ents.iter().map(|e| (RecordType::ENTRY, encode_entry(e))));
    }
    fn hard_state(&mut self, log: &RaftLog, hs: HardState) {
        self.0
            .push((RecordType::HARD_STATE, encode_hard_state(&hs)));
        log.set_hard_state(hs);
    }
    fn replayed(&self) -> RaftLog {
        let log = RaftLog::default();
        for (t, p) in &self.0 {
            log.replay(*t, p).unwrap();
        }
        log
    }
}

#[test]
fn append_replaces_a_conflicting_suffix_and_replay_does_the_same() {
    let mut wal = Wal::default();
    let log = RaftLog::new(voters(&[1]));
    wal.0.push(log.marker_record());
    wal.entries(
        &log,
        &[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")],
    );
    // A new leader at term 2 overwrites entries 2 and 3 with one entry.
    wal.entries(&log, &[entry(2, 2, b"B")]);
    let hs = HardState {
        term: 2,
        vote: 1,
        commit: 2,
        ..Default::default()
    };
    wal.hard_state(&log, hs.clone());
    assert_eq!(log.last_index().unwrap(), 2);
    assert_eq!(log.term(2).unwrap(), 2);
    let ents = log.entries(1, 3, None, ctx()).unwrap();
    assert_eq!(
        ents.iter().map(|e| e.data.to_vec()).collect::<Vec<_>>(),
        [b"a".to_vec(), b"B".to_vec()]
    );
    let back = wal.replayed();
    assert_eq!(*back.core.borrow(), *log.core.borrow());
    assert_eq!(back.initial_state().unwrap().hard_state, hs);
    assert_eq!(back.initial_state().unwrap().conf_state.voters, vec![1]);
}

#[test]
fn gaps_and_entries_before_the_start_are_refused() {
    let log = RaftLog::new(voters(&[1]));
    assert_eq!(
        log.append(&[entry(2, 1, b"x")]),
        Err(RaftLogError::Gap { last: 0, got: 2 })
    );
    log.append(&[entry(1, 1, b"x")]).unwrap();
    assert_eq!(
        log.append(&[entry(2, 1, b""), entry(4, 1, b"")]),
        Err(RaftLogError::Gap { last: 2, got: 4 })
    );
    log.append(&[entry(2, 1, b"y")]).unwrap();
    log.compact(1).unwrap();
    assert_eq!(
        log.append(&[entry(1, 1, b"z")]),
        Err(RaftLogError::BeforeStart { index: 1, start: 1 })
    );
}

#[test]
fn compaction_moves_the_start_and_survives_replay() {
    let mut wal = Wal::default();
    let log = RaftLog::new(voters(&[1, 2, 3]));
    wal.0.push(log.marker_record());
    let ents: Vec<Entry> = (1..=10).map(|i| entry(i, 1 + i / 5, &[i as u8])).collect();
    wal.entries(&log, &ents);
    let hs = HardState {
        term: 3,
        commit: 10,
        ..Default::default()
    };
    wal.hard_state(&log, hs);
    assert!(log.compact(11).is_err());
    let (records, gone) = log.compact_detached(6).unwrap();
    // The entries compacted away are handed back, in order, for the caller to free.
    assert_eq!(
        gone.iter().map(|e| e.index).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6]
    );
    assert_eq!(log.first_index().unwrap(), 7);
    assert_eq!(log.last_index().unwrap(), 10);
    assert_eq!(log.entries(7, 11, None, ctx()).unwrap(), ents[6..].to_vec());
    assert_eq!(log.term(6).unwrap(), 2);
    assert!(matches!(
        log.term(5),
        Err(raft::Error::Store(StorageError::Compacted))
    ));
    assert!(matches!(
        log.entries(6, 8, None, ctx()),
        Err(raft::Error::Store(StorageError::Compacted))
    ));
    // The WAL keeps only what follows the compaction records (older segments released).
    let kept = Wal(records.to_vec());
    let mut full = Wal(kept.0.clone());
    full.0.extend(
        ents[6..]
            .iter()
            .map(|e| (RecordType::ENTRY, encode_entry(e))),
    );
    let back = full.replayed();
    assert_eq!(*back.core.borrow(), *log.core.borrow());
    // Replaying everything, old records included, gives the same log.
    let mut all = Wal(wal.0.clone());
    all.0.extend(kept.0);
    assert_eq!(*all.replayed().core.borrow(), *log.core.borrow());
}

#[test]
fn replay_may_begin_mid_log_when_a_marker_follows() {
    // The raft loop appends the compaction records, then releases the segments below the
    // first entry after the compaction point: the WAL kept begins with entries the marker
    // (written later) places before the log's new start.
    let log = RaftLog::new(voters(&[1]));
    let ents: Vec<Entry> = (1..=10).map(|i| entry(i, 1, &[i as u8])).collect();
    log.append(&ents).unwrap();
    log.set_hard_state(HardState {
        term: 1,
        commit: 10,
        ..Default::default()
    });
    let records = log.compact(6).unwrap();
    let mut kept = Wal(ents[3..]
        .iter()
        .map(|e| (RecordType::ENTRY, encode_entry(e)))
        .collect());
    kept.0.extend(records.iter().cloned());
    let back = kept.replayed();
    back.finish_replay().unwrap();
    assert_eq!(*back.core.borrow(), *log.core.borrow());
    assert_eq!(back.first_index().unwrap(), 7);
    assert_eq!(back.last_index().unwrap(), 10);

    // Entries 7 and 8 gone with a released segment: the marker cannot close the gap.
    let mut broken = Wal(ents[8..]
        .iter()
        .map(|e| (RecordType::ENTRY, encode_entry(e)))
        .collect());
    broken.0.extend(records.iter().cloned());
    assert_eq!(
        broken.replayed().finish_replay(),
        Err(RaftLogError::MissingStart { first: 9 })
    );
    // And without any marker after them, a mid-log start is refused too.
    let alone = Wal(ents[5..]
        .iter()
        .map(|e| (RecordType::ENTRY, encode_entry(e)))
        .collect());
    assert_eq!(
        alone.replayed().finish_replay(),
        Err(RaftLogError::MissingStart { first: 6 })
    );
}

#[test]
fn entries_respect_the_size_limit_and_bounds() {
    let log = RaftLog::new(voters(&[1]));
    log.append(&(1..=5).map(|i| entry(i, 1, &[0; 100])).collect::<Vec<_>>())
        .unwrap();
    assert_eq!(log.entries(1, 6, 250, ctx()).unwrap().len(), 2);
    assert_eq!(
        log.entries(1, 6, 0, ctx()).unwrap().len(),
        1,
        "at least one entry"
    );
    assert!(log.entries(1, 7, None, ctx()).is_err());
}

#[test]
fn every_truncated_record_is_a_typed_error() {
    let mut e = entry(7, 3, b"payload");
    e.context = b"ctx".to_vec().into();
    let rec = encode_entry(&e);
    assert_eq!(decode_entry(&rec).unwrap(), e);
    for cut in 0..21 + 3 {
        assert!(decode_entry(&rec[..cut]).is_err(), "entry cut at {cut}");
    }
    let hs = HardState {
        term: 9,
        ..Default::default()
    };
    let rec = encode_hard_state(&hs);
    for cut in 0..rec.len() {
        let log = RaftLog::default();
        assert!(log.replay(RecordType::HARD_STATE, &rec[..cut]).is_err());
    }
    let ms = Membership {
        conf: voters(&[1, 2]),
        members: vec![MemberInfo {
            id: 1,
            name: "a".into(),
            peer_urls: vec!["http://127.0.0.1:2380".into()],
            client_urls: vec![],
        }],
        removed: vec![3],
    };
    let rec = encode_marker(4, 2, &ms);
    let log = RaftLog::default();
    log.replay(RecordType::SNAPSHOT, &rec).unwrap();
    assert_eq!(log.membership(), ms);
    // A marker written before member tables were kept ends after the configuration.
    let legacy = 8 + 8 + 1 + 4 * 4 + 2 * 8;
    for cut in (0..rec.len()).filter(|&cut| cut != legacy) {
        let log = RaftLog::default();
        assert!(
            log.replay(RecordType::SNAPSHOT, &rec[..cut]).is_err(),
            "marker cut at {cut}"
        );
    }
    let log = RaftLog::default();
    let meta = RecordType::new(4).unwrap();
    assert_eq!(log.replay(meta, b""), Err(RaftLogError::UnknownRecord(4)));
}

/// A single voter driven through raft-rs's Ready loop: it elects itself, and a proposal
/// comes back committed with its bytes unchanged, also after a restart from the records.
#[test]
fn a_single_voter_commits_proposals_through_this_log() {
    let logger = raft::default_logger();
    let log = RaftLog::new(voters(&[1]));
    let mut wal = Wal::default();
    wal.0.push(log.marker_record());
    let config = Config {
        id: 1,
        ..Default::default()
    };
    let mut node = RawNode::new(&config, log.clone(), &logger).unwrap();
    node.campaign().unwrap();
    let mut committed = Vec::new();
    let mut proposed = false;
    for _ in 0..10 {
        if !node.has_ready() {
            if !proposed && node.raft.state == raft::StateRole::Leader {
                node.propose(vec![], b"put k v".to_vec()).unwrap();
                proposed = true;
                continue;
            }
            break;
        }
        let mut ready = node.ready();
        wal.entries(&log, ready.entries());
        if let Some(hs) = ready.hs() {
            wal.hard_state(&log, hs.clone());
        }
        committed.extend(ready.take_committed_entries());
        let mut light = node.advance(ready);
        if let Some(c) = light.commit_index() {
            let mut hs = log.hard_state();
            hs.commit = c;
            wal.hard_state(&log, hs);
        }
        committed.extend(light.take_committed_entries());
        node.advance_apply();
    }
    let data: Vec<_> = committed
        .iter()
        .filter(|e| !e.data.is_empty())
        .map(|e| e.data.to_vec())
        .collect();
    assert_eq!(data, vec![b"put k v".to_vec()]);
    let back = wal.replayed();
    assert_eq!(*back.core.borrow(), *log.core.borrow());
    let restarted = RawNode::new(&config, back, &logger).unwrap();
    assert_eq!(restarted.raft.raft_log.committed, log.hard_state().commit);
}
