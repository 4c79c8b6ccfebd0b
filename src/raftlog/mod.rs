//! The Raft log as raft-rs sees it (`raft::Storage`), rebuilt from WAL records on start.
//!
//! Sans-IO: [`RaftLog`] holds the log in memory and says what to write; the raft loop writes
//! the records with the WAL and feeds them back through [`RaftLog::replay`] after a restart.
//! Records (payload layouts in `codec.rs`):
//!
//! - `ENTRY`: one entry, its data verbatim (a client's archived request).
//! - `HARD_STATE`: term, vote, commit.
//! - `SNAPSHOT`: a marker: the log starts after (index, term), with this membership (raft's
//!   configuration and the member table, [`Membership`]).
//!
//! A new leader may overwrite uncommitted entries: the WAL is append-only, so the new entry
//! comes later in the WAL with the same index, and replay drops everything from that index
//! on before taking it, exactly as [`RaftLog::append`] did.

mod codec;
mod membership;

pub use codec::{
    decode_entry, decode_hard_state, decode_marker, encode_entry, encode_hard_state, encode_marker,
};
pub use membership::{MemberInfo, Membership, MEMBERS_MAX};

use crate::wal::RecordType;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, EntryType, HardState, Snapshot,
};
use raft::{GetEntriesContext, RaftState, StorageError};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RaftLogError {
    #[error("raft log record is malformed: {0}")]
    Decode(&'static str),
    #[error("raft log has a gap: entry {got} follows entry {last}")]
    Gap { last: u64, got: u64 },
    #[error("entry {index} is at or before the log's start {start}")]
    BeforeStart { index: u64, start: u64 },
    #[error("cannot compact to {to}: the log holds {first}..={last}")]
    BadCompaction { to: u64, first: u64, last: u64 },
    #[error("the WAL's first entry is {first}, but no compaction marker says the log starts there (segments are missing)")]
    MissingStart { first: u64 },
    #[error("unexpected WAL record type {0} in the raft log")]
    UnknownRecord(u8),
}

#[derive(Debug, Default, Clone, PartialEq)]
struct LogCore {
    hard_state: HardState,
    /// The membership as of `start_index`.
    membership: Membership,
    /// Membership changes applied after `start_index`: (index of the entry, membership
    /// from it on). Only committed entries change it, so it is never cut from the end.
    changes: Vec<(u64, Membership)>,
    /// The log starts after this entry (a snapshot or compaction point).
    start_index: u64,
    start_term: u64,
    /// Entries `start_index + 1 ..= last_index`.
    entries: VecDeque<Entry>,
    /// Replay began mid-log (the WAL's older segments were released after a compaction):
    /// the start is provisional until the compaction's marker, later in the WAL, sets it.
    provisional_start: bool,
    /// The newest durable store checkpoint (index, term): what a snapshot sent to a
    /// lagging follower holds.
    snapshot_point: Option<(u64, u64)>,
}

impl LogCore {
    fn last_index(&self) -> u64 {
        self.start_index + self.entries.len() as u64
    }

    fn append(&mut self, ents: &[Entry]) -> Result<(), RaftLogError> {
        let Some(first) = ents.first() else {
            return Ok(());
        };
        if first.index <= self.start_index {
            return Err(RaftLogError::BeforeStart {
                index: first.index,
                start: self.start_index,
            });
        }
        if first.index > self.last_index() + 1 {
            return Err(RaftLogError::Gap {
                last: self.last_index(),
                got: first.index,
            });
        }
        for pair in ents.windows(2) {
            if pair[1].index != pair[0].index + 1 {
                return Err(RaftLogError::Gap {
                    last: pair[0].index,
                    got: pair[1].index,
                });
            }
        }
        // A conflicting suffix (from an older leader) goes first.
        self.entries
            .truncate((first.index - self.start_index - 1) as usize);
        self.entries.extend(ents.iter().cloned());
        Ok(())
    }

    /// Moves the log's start to (index, term): entries up to `index` go, and are returned
    /// (freeing a long log takes a while: the caller chooses where); if the log did not reach
    /// `index` (a snapshot from ahead), nothing of it is left.
    fn set_start(&mut self, index: u64, term: u64, ms: Membership) -> VecDeque<Entry> {
        let gone = if index >= self.last_index() {
            std::mem::take(&mut self.entries)
        } else if index > self.start_index {
            // Only what stays is moved.
            let kept = self.entries.split_off((index - self.start_index) as usize);
            std::mem::replace(&mut self.entries, kept)
        } else {
            VecDeque::new()
        };
        self.start_index = index;
        self.start_term = term;
        self.membership = ms;
        self.changes.retain(|(at, _)| *at > index);
        self.provisional_start = false;
        gone
    }

    /// The membership as of `index` (at or after the log's start).
    fn membership_at(&self, index: u64) -> &Membership {
        self.changes
            .iter()
            .rev()
            .find(|(at, _)| *at <= index)
            .map_or(&self.membership, |(_, ms)| ms)
    }

    /// Sets `snap`'s index, term, configuration and member table (its data) to those of
    /// the store checkpoint at (index, term). False, leaving it as it is, when the log no
    /// longer knows the membership there (before its start), or when `to` is given and
    /// that configuration lacks it (raft would refuse the snapshot).
    fn describe_snapshot(
        &self,
        snap: &mut Snapshot,
        index: u64,
        term: u64,
        to: Option<u64>,
    ) -> bool {
        if index < self.start_index {
            return false;
        }
        let ms = self.membership_at(index);
        if to.is_some_and(|to| !ms.contains(to)) {
            return false;
        }
        snap.data = ms.members_bytes().into();
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(ms.conf.clone());
        true
    }

    fn current_membership(&self) -> &Membership {
        self.changes.last().map_or(&self.membership, |(_, ms)| ms)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.start_index {
            return Ok(self.start_term);
        }
        if idx < self.start_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match self.entries.get((idx - self.start_index - 1) as usize) {
            Some(e) => Ok(e.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }
}

/// The WAL records that set a compacted log's start: its marker and the hard state.
pub type StartRecords = [(RecordType, Vec<u8>); 2];

/// The Raft log of one member; cheap to clone (shared within one executor).
#[derive(Clone, Default)]
pub struct RaftLog {
    core: Rc<RefCell<LogCore>>,
}

impl RaftLog {
    /// An empty log whose configuration is `conf_state`, with no member attributes (for
    /// tests that need no bootstrap entries).
    pub fn new(conf_state: raft::eraftpb::ConfState) -> RaftLog {
        let log = RaftLog::default();
        log.core.borrow_mut().membership.conf = conf_state;
        log
    }

    /// The start marker record for the log as it is (what a test writes at its start).
    pub fn marker_record(&self) -> (RecordType, Vec<u8>) {
        let core = self.core.borrow();
        (
            RecordType::SNAPSHOT,
            codec::encode_marker(core.start_index, core.start_term, &core.membership),
        )
    }

    /// A new cluster's first log, the same on every member: one configuration change per
    /// member (sorted by id) adding it as a voter with its attributes, all committed at
    /// term 1, as etcd bootstraps. Returns the records to write to the WAL and replay into
    /// an empty log. Nothing is applied yet: the changes come out as committed entries like
    /// any others.
    pub fn bootstrap(members: &[MemberInfo]) -> Vec<(RecordType, Vec<u8>)> {
        let mut sorted = members.to_vec();
        sorted.sort_by_key(|m| m.id);
        let entries: Vec<Entry> = sorted
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let mut cc = ConfChangeV2::default();
                let mut single = ConfChangeSingle::default();
                single.set_change_type(ConfChangeType::AddNode);
                single.node_id = m.id;
                cc.mut_changes().push(single);
                cc.context = m.to_bytes().into();
                let mut e = Entry::default();
                e.set_entry_type(EntryType::EntryConfChangeV2);
                e.index = i as u64 + 1;
                e.term = 1;
                e.data = protobuf::Message::write_to_bytes(&cc)
                    .unwrap_or_default()
                    .into();
                e
            })
            .collect();
        let hs = HardState {
            term: 1,
            vote: 0,
            commit: entries.len() as u64,
            ..Default::default()
        };
        let mut records: Vec<(RecordType, Vec<u8>)> = entries
            .iter()
            .map(|e| (RecordType::ENTRY, codec::encode_entry(e)))
            .collect();
        records.push((RecordType::HARD_STATE, codec::encode_hard_state(&hs)));
        records
    }

    /// Applies one WAL record read back on start.
    pub fn replay(&self, rtype: RecordType, payload: &[u8]) -> Result<(), RaftLogError> {
        let mut core = self.core.borrow_mut();
        match rtype {
            RecordType::ENTRY => {
                let e = codec::decode_entry(payload)?;
                if core.entries.is_empty() && e.index > core.start_index + 1 {
                    // The first segments were released after a compaction: the entries
                    // kept begin mid-log, and the marker written after them says where
                    // the log starts. `finish_replay` checks that it came.
                    core.start_index = e.index - 1;
                    core.start_term = 0;
                    core.provisional_start = true;
                }
                // Entries at or before the start were compacted after they were written.
                if e.index > core.start_index {
                    core.append(std::slice::from_ref(&e))?;
                }
            }
            RecordType::HARD_STATE => core.hard_state = codec::decode_hard_state(payload)?,
            RecordType::SNAPSHOT => {
                let (index, term, cs) = codec::decode_marker(payload)?;
                // Markers only move forward; an older one is superseded by what followed it.
                if index >= core.start_index {
                    core.set_start(index, term, cs);
                }
            }
            other => return Err(RaftLogError::UnknownRecord(other.get())),
        }
        Ok(())
    }

    /// Checks, once every record is replayed, that the log is whole: a replay that began
    /// mid-log must have met the marker that moved the start there.
    pub fn finish_replay(&self) -> Result<(), RaftLogError> {
        let core = self.core.borrow();
        if core.provisional_start {
            return Err(RaftLogError::MissingStart {
                first: core.start_index + 1,
            });
        }
        Ok(())
    }

    /// Index of the last entry held.
    pub fn last_index_held(&self) -> u64 {
        self.core.borrow().last_index()
    }

    /// Index of the entry the log starts after.
    pub fn start_index(&self) -> u64 {
        self.core.borrow().start_index
    }

    /// Appends entries from a Ready (replacing any conflicting suffix); write them to the
    /// WAL with [`encode_entry`] as well.
    pub fn append(&self, ents: &[Entry]) -> Result<(), RaftLogError> {
        self.core.borrow_mut().append(ents)
    }

    pub fn set_hard_state(&self, hs: HardState) {
        self.core.borrow_mut().hard_state = hs;
    }

    pub fn hard_state(&self) -> HardState {
        self.core.borrow().hard_state.clone()
    }

    /// The membership after every change applied so far.
    pub fn membership(&self) -> Membership {
        self.core.borrow().current_membership().clone()
    }

    /// The entry at `index` (applied now, in log order) changed the membership to `ms`.
    pub fn record_membership(&self, index: u64, ms: Membership) {
        let mut core = self.core.borrow_mut();
        if index <= core.start_index {
            return; // the start's membership has it already (a snapshot moved the start)
        }
        core.changes.retain(|(at, _)| *at < index);
        core.changes.push((index, ms));
    }

    /// Describes, in a snapshot message for member `to`, the store checkpoint at (index,
    /// term) that is sent beside it: its index, term, and the membership as of it. False
    /// (the message unchanged) when that membership is not known any more (the checkpoint
    /// predates the log's start) or lacks `to` (the checkpoint predates its addition):
    /// a newer checkpoint is needed.
    pub fn describe_snapshot(&self, snap: &mut Snapshot, index: u64, term: u64, to: u64) -> bool {
        self.core
            .borrow()
            .describe_snapshot(snap, index, term, Some(to))
    }

    /// Members known from elsewhere, for a data directory written before member tables
    /// were kept in the log (see [`Membership::fill_from`]).
    pub fn fill_members(&self, known: &[MemberInfo]) {
        let mut core = self.core.borrow_mut();
        core.membership.fill_from(known);
        for (_, ms) in core.changes.iter_mut() {
            ms.fill_from(known);
        }
    }

    /// Drops entries up to and including `to` (applied and checkpointed). Returns the
    /// records to append to the WAL before releasing older segments: the new start marker
    /// and the hard state, so that what replay needs never lives only in a released segment.
    pub fn compact(&self, to: u64) -> Result<StartRecords, RaftLogError> {
        self.compact_detached(to).map(|(records, _)| records)
    }

    /// As [`RaftLog::compact`], and hands back the entries compacted away, for the caller
    /// to free where it does not hold up the log (100,000 entries take about 20 ms).
    pub fn compact_detached(
        &self,
        to: u64,
    ) -> Result<(StartRecords, VecDeque<Entry>), RaftLogError> {
        let mut core = self.core.borrow_mut();
        if to < core.start_index || to > core.last_index() {
            return Err(RaftLogError::BadCompaction {
                to,
                first: core.start_index + 1,
                last: core.last_index(),
            });
        }
        let term = core
            .term(to)
            .map_err(|_| RaftLogError::Decode("term of a held entry"))?;
        let ms = core.membership_at(to).clone();
        let gone = core.set_start(to, term, ms);
        let records = [
            (
                RecordType::SNAPSHOT,
                codec::encode_marker(to, term, &core.membership),
            ),
            (
                RecordType::HARD_STATE,
                codec::encode_hard_state(&core.hard_state),
            ),
        ];
        Ok((records, gone))
    }

    /// The store is durable up to `index` (of `term`): a lagging follower can be sent a
    /// snapshot of it.
    pub fn set_snapshot_point(&self, index: u64, term: u64) {
        self.core.borrow_mut().snapshot_point = Some((index, term));
    }

    /// Takes a snapshot received from the leader: the log now starts after it, with its
    /// configuration, and holds nothing before. Returns the records that make it durable
    /// (write them once the snapshot's store is installed) and the entries dropped.
    pub fn apply_snapshot(&self, snap: &Snapshot) -> (StartRecords, VecDeque<Entry>) {
        let mut core = self.core.borrow_mut();
        let meta = snap.get_metadata();
        let (index, term) = (meta.index, meta.term);
        // Entries after the snapshot that agree with it could be kept; raft sends a
        // snapshot only to a follower missing entries, so nothing is worth keeping.
        let gone = std::mem::take(&mut core.entries);
        // The member table travels in the snapshot's data (the tree file goes beside it);
        // a table that does not decode leaves the members' attributes unknown, not the
        // configuration, which raft checked.
        let (members, removed) = Membership::decode_members(&snap.data).unwrap_or_default();
        let mut ms = Membership {
            members,
            removed,
            ..Default::default()
        };
        ms.set_conf(meta.get_conf_state().clone(), None);
        ms.fill_from(&core.current_membership().members.clone());
        core.changes.clear();
        core.set_start(index, term, ms);
        if core.hard_state.commit < index {
            core.hard_state.commit = index;
        }
        if core.hard_state.term < term {
            core.hard_state.term = term;
        }
        core.snapshot_point = Some((index, term));
        let records = [
            (
                RecordType::SNAPSHOT,
                codec::encode_marker(index, term, &core.membership),
            ),
            (
                RecordType::HARD_STATE,
                codec::encode_hard_state(&core.hard_state),
            ),
        ];
        (records, gone)
    }
}

impl raft::Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let core = self.core.borrow();
        Ok(RaftState {
            hard_state: core.hard_state.clone(),
            conf_state: core.membership.conf.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let core = self.core.borrow();
        if low <= core.start_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > core.last_index() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let lo = (low - core.start_index - 1) as usize;
        let hi = (high - core.start_index - 1) as usize;
        let mut ents: Vec<Entry> = core.entries.range(lo..hi).cloned().collect();
        raft::util::limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.core.borrow().term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.core.borrow().start_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.core.borrow().last_index())
    }

    /// The newest durable store checkpoint, as a snapshot whose data is empty: the shell
    /// streams the tree file itself beside the raft message.
    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let core = self.core.borrow();
        let mut snap = Snapshot::default();
        match core.snapshot_point {
            Some((index, term)) if core.describe_snapshot(&mut snap, index, term, None) => Ok(snap),
            _ => Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            )),
        }
    }
}

#[cfg(test)]
mod tests;
