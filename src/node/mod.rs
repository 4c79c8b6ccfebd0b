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
pub mod command;
mod driver;
mod env;
pub mod proposal;

pub use apply::{apply_committed, Applied};
pub use driver::{Compaction, Driver, DriverConfig, Round};
pub use env::{Clock, MonotonicClock, Random, SplitMix64};
pub use proposal::{IdSource, ProposalId};

use crate::mvcc::MvccError;
use crate::raftlog::{encode_entry, encode_hard_state, MemberInfo, Membership, RaftLog};
use crate::wal::RecordType;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, Message};
use raft::{Config, RawNode, Storage};
use std::collections::VecDeque;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Not applied: no leader is known to this member (or it refused the proposal). Safe
    /// to retry, here or on another member.
    #[error("etcdserver: no leader")]
    NotLeader,
    /// Not applied: another leader's entry took the proposal's place in the log. Safe to
    /// retry.
    #[error("etcdserver: proposal dropped: another leader's entry took its place in the log")]
    Dropped,
    /// The outcome is unknown: leadership changed before the proposal was seen in the log.
    /// Retry only what is safe to apply twice.
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    /// The outcome is unknown: no answer within the request timeout.
    #[error("etcdserver: request timed out")]
    Timeout,
    /// Too many proposals or reads are waiting on this member.
    #[error("etcdserver: too many requests")]
    Overloaded,
    #[error("the member is stopping")]
    Stopping,
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error(transparent)]
    Mvcc(#[from] MvccError),
    #[error(transparent)]
    Log(#[from] crate::raftlog::RaftLogError),
    /// Fatal: a committed entry this member cannot apply. Applying it differently from the
    /// other members (or skipping it) would make the replicas diverge.
    #[error("committed entry {index} does not hold a command this member can apply: {reason}")]
    BadEntry { index: u64, reason: String },
}

/// One membership change as raft takes it: `kind` of member `id`, with `context` (a member
/// added brings its attributes, [`MemberInfo::encode`]). A change of voters goes through a
/// joint configuration (old and new voters must both agree until it is left, which the
/// leader does on its own once the change is applied); a learner's is made at once.
pub fn conf_change(
    kind: raft::eraftpb::ConfChangeType,
    id: u64,
    voters: bool,
    context: Vec<u8>,
) -> ConfChangeV2 {
    let mut single = raft::eraftpb::ConfChangeSingle::default();
    single.set_change_type(kind);
    single.node_id = id;
    let mut cc = ConfChangeV2::default();
    cc.mut_changes().push(single);
    cc.set_transition(if voters {
        raft::eraftpb::ConfChangeTransition::Implicit
    } else {
        raft::eraftpb::ConfChangeTransition::Auto
    });
    cc.context = context.into();
    cc
}

const URLS_TAKEN: &str = "etcdserver: Peer URLs already exists";

/// Another member than `id` has one of `urls`.
fn urls_taken(ms: &Membership, urls: &[String], id: u64) -> bool {
    ms.members
        .iter()
        .any(|m| m.id != id && m.peer_urls.iter().any(|u| urls.contains(u)))
}

/// Appends in flight to one follower before the leader waits for acknowledgements.
pub const MAX_INFLIGHT_MSGS: usize = 256;
/// Bytes of entries in one append message (one larger entry still goes alone).
pub const MAX_SIZE_PER_MSG: u64 = 1 << 20;

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
    /// A snapshot from the leader (index, term): the shell installs its store (received
    /// beside the raft message) before writing `records`, which make it the log's start.
    pub snapshot: Option<(u64, u64)>,
    /// Entries the snapshot replaced.
    pub dropped: VecDeque<Entry>,
    /// Confirmed read indexes: (id given to [`Node::read_index`], index). A read may be
    /// served once the store has applied the index.
    pub reads: Vec<(ProposalId, u64)>,
    /// Entries with a proposal id that this round appends to the log: (index, id).
    pub appended: Vec<(u64, ProposalId)>,
    /// Outcomes of the membership changes among `committed` that carry a proposal id.
    pub changes: Vec<(ProposalId, Result<(), String>)>,
    /// Whether `committed` (or `snapshot`) changed the membership. Act on it (outside raft)
    /// only once `records` are durable: they hold the commit index that covers it.
    pub membership_changed: bool,
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
    /// A snapshot handed out in round `.0`, to count as applied once that round is durable.
    snapshot_applied: Option<(u64, u64)>,
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
        // Raft hands out every committed entry after the log's start again, those the
        // store holds already included (the apply loop skips them): the membership changes
        // among them are applied anew to the configuration the start marker holds.
        let config = Config {
            id,
            applied: log.start_index(),
            election_tick,
            heartbeat_tick: 1,
            pre_vote: true,
            check_quorum: true,
            // Flow control: appends in flight to one follower, and bytes in one append.
            max_inflight_msgs: MAX_INFLIGHT_MSGS,
            max_size_per_msg: MAX_SIZE_PER_MSG,
            ..Default::default()
        };
        let raw = RawNode::new(&config, log.clone(), logger)?;
        Ok(Node {
            raw,
            log,
            snapshot_applied: None,
        })
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

    pub fn role(&self) -> raft::StateRole {
        self.raw.raft.state
    }

    pub fn step(&mut self, m: Message) -> Result<(), NodeError> {
        Ok(self.raw.step(m)?)
    }

    /// Proposes a command ([`command`]) under `id`; on a follower raft forwards it to the
    /// leader. Its result comes back from [`apply_committed`] under `id` once applied, on
    /// this member as on every other.
    pub fn propose(&mut self, id: ProposalId, data: Vec<u8>) -> Result<(), NodeError> {
        if self.leader_id() == raft::INVALID_ID {
            return Err(NodeError::NotLeader);
        }
        match self.raw.propose(id.encode(), data) {
            Err(raft::Error::ProposalDropped) => Err(NodeError::NotLeader),
            other => Ok(other?),
        }
    }

    /// Proposes a membership change under `id`; its outcome comes back in
    /// [`Work::changes`] once committed and applied to the configuration. Only the leader
    /// takes one, and only when no other is in flight ([`Node::conf_change_pending`]):
    /// raft would otherwise turn it into an empty entry without a word.
    pub fn propose_conf_change(
        &mut self,
        id: ProposalId,
        cc: ConfChangeV2,
    ) -> Result<(), NodeError> {
        if !self.is_leader() {
            return Err(NodeError::NotLeader);
        }
        match self.raw.propose_conf_change(id.encode(), cc) {
            Err(raft::Error::ProposalDropped) => Err(NodeError::NotLeader),
            other => Ok(other?),
        }
    }

    /// A membership change is proposed (or a joint configuration is being left) and not yet
    /// applied: the leader takes no other until it is.
    pub fn conf_change_pending(&self) -> bool {
        self.raw.raft.pending_conf_index > self.raw.raft.raft_log.applied
            || self.log.membership().is_joint()
    }

    /// The membership after every change handed out so far.
    pub fn membership(&self) -> Membership {
        self.log.membership()
    }

    /// This member was removed from the cluster.
    pub fn is_removed(&self) -> bool {
        self.log.membership().was_removed(self.raw.raft.id)
    }

    /// On the leader: (member, entries it holds) for each member it replicates to, itself
    /// included.
    pub fn progress(&self) -> Vec<(u64, u64)> {
        self.raw
            .raft
            .prs()
            .iter()
            .map(|(&id, p)| (id, p.matched))
            .collect()
    }

    /// Asks for a read index (etcd's ReadIndex), on the leader or through it: once the
    /// leader has confirmed it still leads (a heartbeat round) it comes back in
    /// [`Work::reads`]. One call serves every linearizable read waiting at that moment.
    pub fn read_index(&mut self, id: ProposalId) -> Result<(), NodeError> {
        if self.leader_id() == raft::INVALID_ID {
            return Err(NodeError::NotLeader);
        }
        self.raw.read_index(id.encode());
        Ok(())
    }

    /// The leader this member knows of, or `raft::INVALID_ID`.
    pub fn leader_id(&self) -> u64 {
        self.raw.raft.leader_id
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// Sets the election timeout drawn for the current term (raft-rs draws it from the
    /// thread's random source; the driver draws it from its own, seeded one).
    pub fn set_election_timeout(&mut self, ticks: usize) {
        self.raw.raft.set_randomized_election_timeout(ticks);
    }

    /// Hands leadership to `to` (etcd's MoveLeader).
    pub fn transfer_leader(&mut self, to: u64) {
        self.raw.transfer_leader(to);
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
            .filter_map(|r| ProposalId::decode(&r.request_ctx).map(|id| (id, r.index)))
            .collect();
        let committed = ready.take_committed_entries();
        // A snapshot from the leader replaces the log (and, once the shell installs its
        // tree file, the store); its records come before any entries that follow it.
        let mut records: Vec<(RecordType, Vec<u8>)> = Vec::new();
        let mut snapshot = None;
        let mut dropped = VecDeque::new();
        if ready.snapshot().get_metadata().index > 0 {
            let meta = ready.snapshot().get_metadata();
            snapshot = Some((meta.index, meta.term));
            let (recs, gone) = self.log.apply_snapshot(ready.snapshot());
            records.extend(recs);
            dropped = gone;
        }
        let ents = ready.entries();
        let appended = ents
            .iter()
            .filter_map(|e| ProposalId::decode(&e.context).map(|id| (e.index, id)))
            .collect();
        let span = ents
            .first()
            .zip(ents.last())
            .map(|(f, l)| (f.index, l.index));
        records.extend(ents.iter().map(|e| (RecordType::ENTRY, encode_entry(e))));
        self.log.append(ents)?;
        // A commit index that covers a membership change goes to the WAL too, in the round
        // that hands the change out (the shell acts on the change once it is durable): a
        // member must not forget, after a restart, a configuration that others acted on.
        // Raft reports the hard state only in the round it changed, which may be an earlier
        // one than the round that hands the entry out (a leader's own entry is handed out
        // once its own write is durable, which may be after a quorum committed it).
        let changes = committed
            .iter()
            .any(|e| e.get_entry_type() != EntryType::EntryNormal);
        let mut hs_written = false;
        if let Some(hs) = ready.hs() {
            // Term and vote must be durable before anything is sent, and go to the WAL at
            // once. A new commit index alone need not be (raft finds it again after a
            // restart: a leader commits its log anew, a follower learns it from the
            // leader), so it rides along with the next entries instead of costing a write
            // of its own, unless it commits a membership change.
            let old = self.log.hard_state();
            if !records.is_empty() || hs.term != old.term || hs.vote != old.vote || changes {
                records.push((RecordType::HARD_STATE, encode_hard_state(hs)));
                hs_written = true;
            }
            self.log.set_hard_state(hs.clone());
        }
        if changes && !hs_written {
            let hs = self.raw.raft.hard_state();
            records.push((RecordType::HARD_STATE, encode_hard_state(&hs)));
            self.log.set_hard_state(hs);
        }
        let persisted_messages = ready.take_persisted_messages();
        let number = ready.number();
        self.raw.advance_append_async(ready);
        // Membership changes take effect as they are handed out, in log order and before
        // raft counts them applied (which is when a leader leaves a joint configuration).
        let mut changes = Vec::new();
        let mut membership_changed = snapshot.is_some();
        for e in &committed {
            if let Some(outcome) = self.apply_membership(e)? {
                membership_changed = true;
                if let Some(id) = ProposalId::decode(&e.context) {
                    changes.push((id, outcome));
                }
            }
        }
        if let Some(last) = committed.last() {
            self.raw.advance_apply_to(last.index);
        }
        if let Some((index, _)) = snapshot {
            self.snapshot_applied = Some((number, index));
        }
        Ok(Some(Work {
            number,
            messages,
            records,
            persisted_messages,
            committed,
            snapshot,
            dropped,
            reads,
            appended,
            changes,
            membership_changed,
            span,
        }))
    }

    /// This member leads and the configuration just applied has it as no voter (it removed
    /// itself): raft-rs would go on leading without a place in its own progress tracker,
    /// and fail at its next commit. It asks the voter holding the most of its log to
    /// campaign at once (raft's leadership transfer) and steps down, in this term.
    fn step_down_removed(&mut self, ms: &Membership) {
        let me = self.raw.raft.id;
        let best = self
            .raw
            .raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != me && ms.conf.voters.contains(id))
            .max_by_key(|(id, p)| (p.matched, std::cmp::Reverse(**id)))
            .map(|(id, _)| *id);
        if let Some(to) = best {
            self.raw.transfer_leader(to);
        }
        let term = self.raw.raft.term;
        self.raw.raft.become_follower(term, raft::INVALID_ID);
    }

    /// Applies a committed entry's membership change, if it is one: `None` for an entry
    /// that is not, else whether it took effect. The same entries give the same outcome on
    /// every member; a change that does not decode stops the member, as any entry would.
    fn apply_membership(&mut self, e: &Entry) -> Result<Option<Result<(), String>>, NodeError> {
        let bad = |reason: String| NodeError::BadEntry {
            index: e.index,
            reason,
        };
        let cc = match e.get_entry_type() {
            EntryType::EntryNormal => {
                let Some((fields, body)) = command::decode_member(&e.data) else {
                    return Ok(None);
                };
                let m = MemberInfo::from_bytes(body).map_err(|err| bad(err.to_string()))?;
                let mut ms = self.log.membership();
                let Some(old) = ms.member(m.id).cloned() else {
                    return Ok(Some(Err(format!(
                        "etcdserver: member not found: {:x}",
                        m.id
                    ))));
                };
                let mut new = old;
                if fields & command::SET_PEER_URLS != 0 {
                    if urls_taken(&ms, &m.peer_urls, m.id) {
                        return Ok(Some(Err(URLS_TAKEN.into())));
                    }
                    new.peer_urls = m.peer_urls;
                }
                if fields & command::SET_NAME_AND_CLIENT_URLS != 0 {
                    new.name = m.name;
                    new.client_urls = m.client_urls;
                }
                ms.upsert(new);
                self.log.record_membership(e.index, ms);
                return Ok(Some(Ok(())));
            }
            EntryType::EntryConfChange => {
                // raft's first format (one change): taken as the second's single change.
                let v1 =
                    ConfChange::parse_from_bytes(&e.data).map_err(|err| bad(err.to_string()))?;
                let mut single = raft::eraftpb::ConfChangeSingle::default();
                single.set_change_type(v1.get_change_type());
                single.node_id = v1.node_id;
                let mut cc = ConfChangeV2::default();
                cc.mut_changes().push(single);
                cc.context = v1.context;
                cc
            }
            EntryType::EntryConfChangeV2 => {
                ConfChangeV2::parse_from_bytes(&e.data).map_err(|err| bad(err.to_string()))?
            }
        };
        let mut ms = self.log.membership();
        // A member added (not a learner promoted) brings its attributes in the context.
        let mut added = None;
        for c in cc.get_changes() {
            let adding = matches!(
                c.get_change_type(),
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode
            );
            if !adding {
                continue;
            }
            if ms.was_removed(c.node_id) {
                return Ok(Some(Err(format!(
                    "etcdserver: ID removed: {:x} was a member and cannot be added again",
                    c.node_id
                ))));
            }
            if ms.member(c.node_id).is_none() {
                match MemberInfo::from_bytes(&cc.context) {
                    // Checked again here, in log order: two changes proposed at once may
                    // each have passed the leader's check.
                    Ok(m) if m.id == c.node_id && urls_taken(&ms, &m.peer_urls, m.id) => {
                        return Ok(Some(Err(URLS_TAKEN.into())))
                    }
                    Ok(m) if m.id == c.node_id => added = Some(m),
                    _ => {
                        return Ok(Some(Err(format!(
                            "a change adding member {:x} without its attributes",
                            c.node_id
                        ))))
                    }
                }
            }
        }
        match self.raw.apply_conf_change(&cc) {
            Ok(conf) => {
                ms.set_conf(conf, added);
                let me = self.raw.raft.id;
                let votes = ms.conf.voters.contains(&me) || ms.conf.voters_outgoing.contains(&me);
                if self.is_leader() && !votes {
                    self.step_down_removed(&ms);
                }
                self.log.record_membership(e.index, ms);
                Ok(Some(Ok(())))
            }
            Err(err) => Ok(Some(Err(format!(
                "etcdserver: the configuration change was refused: {err}"
            )))),
        }
    }

    /// The records of every round up to `number` are durable.
    pub fn on_persisted(&mut self, number: u64) {
        self.raw.on_persist_ready(number);
        // A snapshot counts as applied once durable (the shell installed its store before
        // writing its records).
        if let Some((n, index)) = self.snapshot_applied {
            if n <= number {
                self.snapshot_applied = None;
                self.raw.advance_apply_to(index);
            }
        }
    }

    /// Raft's snapshot point: the store is durable through `index` of `term`.
    pub fn set_snapshot_point(&mut self, index: u64, term: u64) {
        self.log.set_snapshot_point(index, term);
    }

    /// The outcome of sending a snapshot to `to`.
    pub fn report_snapshot(&mut self, to: u64, ok: bool) {
        let status = if ok {
            raft::SnapshotStatus::Finish
        } else {
            raft::SnapshotStatus::Failure
        };
        self.raw.report_snapshot(to, status);
    }

    /// A peer could not be reached: raft stops streaming appends to it and probes.
    pub fn report_unreachable(&mut self, to: u64) {
        self.raw.report_unreachable(to);
    }

    /// The log, to compact once the store has checkpointed.
    pub fn log(&self) -> &RaftLog {
        &self.log
    }

    /// The commit index: the last entry this member knows a quorum holds.
    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// Index of the last entry handed out as committed (empty entries included).
    pub fn applied_index(&self) -> u64 {
        self.raw.raft.raft_log.applied
    }

    /// This member leads and has handed out an entry of its own term as committed: every
    /// entry of earlier terms is handed out before it (what a new leader must have applied
    /// before its lease clock starts, so that it extends leases as of the latest
    /// checkpoints and keepalives).
    pub fn leads_applied_term(&self) -> bool {
        let applied = self.raw.raft.raft_log.applied;
        self.is_leader() && self.raw.raft.raft_log.term(applied).ok() == Some(self.term())
    }

    /// Term and index of the last log entry.
    pub fn last_log(&self) -> (u64, u64) {
        let last = self.log.last_index().unwrap_or(0);
        (self.raw.raft.term, last)
    }
}

#[cfg(test)]
mod tests;
