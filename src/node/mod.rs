//! One member's consensus and apply core, sans-IO: raft-rs's `RawNode` over the [`RaftLog`]
//! ([`Node`]), and applying committed entries to the MVCC [`Store`](crate::mvcc::Store)
//! ([`apply_committed`]).
//! The shell feeds the node ticks, proposals and messages, writes the WAL records it asks
//! for, calls back once they are durable, and hands the committed entries to the apply
//! loop (on another executor, or inline); the same core runs under a simulator in tests.
//!
//! The loop, per round (rounds are pipelined: the next one may start before the records of
//! the previous ones are durable):
//! 1. [`Node::next_ready`] returns [`Work`]: messages to send now, WAL records to append,
//!    messages to send once those are durable, entries now committed (durable and agreed)
//!    and confirmed read indexes.
//! 2. The shell queues the records for the WAL and hands the committed entries to the apply
//!    loop, where [`apply_committed`] applies them in order and returns the results of this
//!    member's proposals by token.
//! 3. Once a round's records, and those of every earlier round, are durable, the shell
//!    calls [`Node::on_persisted`] with its number, which lets raft count them (for a
//!    single member: commit them, so that they come out of a later round).

mod apply;

pub use apply::{apply_committed, Applied};

use crate::mvcc::MvccError;
use crate::raftlog::{encode_entry, encode_hard_state, RaftLog};
use crate::wal::RecordType;
use raft::eraftpb::{Entry, Message};
use raft::{Config, RawNode, Storage};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("this member is not the leader")]
    NotLeader,
    #[error("the member is stopping")]
    Stopping,
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error(transparent)]
    Mvcc(#[from] MvccError),
    #[error(transparent)]
    Log(#[from] crate::raftlog::RaftLogError),
    #[error("committed entry {index} does not hold a valid request: {reason}")]
    BadEntry { index: u64, reason: String },
}

/// What one round asks of the shell.
pub struct Work {
    /// Give to [`Node::on_persisted`] once `records` (and every earlier round's) are durable.
    pub number: u64,
    /// Send now: a leader may send these before its own `fdatasync`.
    pub messages: Vec<Message>,
    /// Append to the WAL.
    pub records: Vec<(RecordType, Vec<u8>)>,
    /// Send only once `records` are durable (votes and appends acknowledged after
    /// persisting).
    pub persisted_messages: Vec<Message>,
    /// Committed entries, in log order, for [`apply_committed`]: they are durable already.
    pub committed: Vec<Entry>,
    /// Confirmed read indexes: (token given to [`Node::read_index`], index). A read may be
    /// served once the store has applied the index.
    pub reads: Vec<(u64, u64)>,
    span: Option<(u64, u64)>,
}

impl Work {
    /// First and last index of the entries this round appends, if any.
    pub fn entries_span(&self) -> Option<(u64, u64)> {
        self.span
    }
}

pub struct Node {
    raw: RawNode<RaftLog>,
    log: RaftLog,
}

impl Node {
    /// Starts a member over a log replayed from the WAL, whose store holds everything up to
    /// `applied` (its checkpoint). Committed entries after `applied` are handed out again.
    ///
    /// `election_tick` is the election timeout in ticks (heartbeats are one tick apart).
    pub fn open(
        id: u64,
        election_tick: usize,
        applied: u64,
        log: RaftLog,
        logger: &slog::Logger,
    ) -> Result<Node, NodeError> {
        // The store only checkpoints what was committed, so its applied index is a lower
        // bound of the commit index even if the newest hard state record said less.
        let mut hs = log.hard_state();
        if hs.commit < applied {
            hs.commit = applied;
            log.set_hard_state(hs);
        }
        let config = Config {
            id,
            applied,
            election_tick,
            heartbeat_tick: 1,
            pre_vote: true,
            check_quorum: true,
            ..Default::default()
        };
        let raw = RawNode::new(&config, log.clone(), logger)?;
        Ok(Node { raw, log })
    }

    pub fn tick(&mut self) -> bool {
        self.raw.tick()
    }

    pub fn campaign(&mut self) -> Result<(), NodeError> {
        Ok(self.raw.campaign()?)
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == raft::StateRole::Leader
    }

    pub fn step(&mut self, m: Message) -> Result<(), NodeError> {
        Ok(self.raw.step(m)?)
    }

    /// Proposes a validated request payload (an archived
    /// [`ClientRequest`](crate::protocol::ClientRequest)); its result comes back from
    /// [`apply_committed`] under `token` once applied.
    pub fn propose(&mut self, token: u64, payload: Vec<u8>) -> Result<(), NodeError> {
        if !self.is_leader() {
            return Err(NodeError::NotLeader);
        }
        match self.raw.propose(token.to_le_bytes().to_vec(), payload) {
            Err(raft::Error::ProposalDropped) => Err(NodeError::NotLeader),
            other => Ok(other?),
        }
    }

    /// Asks for a read index (etcd's ReadIndex): once confirmed (a leader's lease on the
    /// log, through a heartbeat round in a cluster) it comes back in [`Work::reads`]. One
    /// call serves every linearizable read waiting at that moment.
    pub fn read_index(&mut self, token: u64) -> Result<(), NodeError> {
        if !self.is_leader() {
            return Err(NodeError::NotLeader);
        }
        self.raw.read_index(token.to_le_bytes().to_vec());
        Ok(())
    }

    /// The next round of work, if raft has any. The committed entries it hands out count
    /// as applied for raft from here on: the shell must apply them, in order, before
    /// anything reads the store at their index.
    pub fn next_ready(&mut self) -> Result<Option<Work>, NodeError> {
        if !self.raw.has_ready() {
            return Ok(None);
        }
        let mut ready = self.raw.ready();
        let messages = ready.take_messages();
        let reads = ready
            .take_read_states()
            .into_iter()
            .filter_map(|r| {
                <[u8; 8]>::try_from(&r.request_ctx[..])
                    .ok()
                    .map(|t| (u64::from_le_bytes(t), r.index))
            })
            .collect();
        let committed = ready.take_committed_entries();
        let ents = ready.entries();
        let span = ents
            .first()
            .zip(ents.last())
            .map(|(f, l)| (f.index, l.index));
        let mut records: Vec<(RecordType, Vec<u8>)> = ents
            .iter()
            .map(|e| (RecordType::ENTRY, encode_entry(e)))
            .collect();
        self.log.append(ents)?;
        if let Some(hs) = ready.hs() {
            // Term and vote must be durable before anything is sent, and go to the WAL at
            // once. A new commit index alone need not be (raft finds it again after a
            // restart: a leader commits its log anew, a follower learns it from the
            // leader), so it rides along with the next entries instead of costing a write
            // of its own.
            let old = self.log.hard_state();
            if !records.is_empty() || hs.term != old.term || hs.vote != old.vote {
                records.push((RecordType::HARD_STATE, encode_hard_state(hs)));
            }
            self.log.set_hard_state(hs.clone());
        }
        let persisted_messages = ready.take_persisted_messages();
        let number = ready.number();
        self.raw.advance_append_async(ready);
        if let Some(last) = committed.last() {
            self.raw.advance_apply_to(last.index);
        }
        Ok(Some(Work {
            number,
            messages,
            records,
            persisted_messages,
            committed,
            reads,
            span,
        }))
    }

    /// The records of every round up to `number` are durable.
    pub fn on_persisted(&mut self, number: u64) {
        self.raw.on_persist_ready(number);
    }

    /// The log, to compact once the store has checkpointed.
    pub fn log(&self) -> &RaftLog {
        &self.log
    }

    /// Index of the last entry handed out as committed (empty entries included).
    pub fn applied_index(&self) -> u64 {
        self.raw.raft.raft_log.applied
    }

    /// Term and index of the last log entry.
    pub fn last_log(&self) -> (u64, u64) {
        let last = self.log.last_index().unwrap_or(0);
        (self.raw.raft.term, last)
    }
}

#[cfg(test)]
mod tests;
