//! The driver: one member's consensus bookkeeping around [`Node`], sans-IO.
//!
//! It owns what a shell would otherwise keep next to its sockets and timers: the waiters
//! of proposals and linearizable reads (by [`ProposalId`]), their deadlines, read batching,
//! the rounds in flight to the WAL and which of them are durable, and what compacting the
//! log may release of the WAL. The shell (the server's raft role, or the simulator) only
//! moves bytes:
//!
//! 1. feed it proposals ([`Driver::propose`]), reads ([`Driver::read`]), peer messages
//!    ([`Driver::step`]) and ticks ([`Driver::tick`]);
//! 2. take [`Round`]s ([`Driver::ready`]): send their messages, queue their records in the
//!    WAL and report where they went ([`Driver::queued`]), hand their committed entries
//!    (with the waiters owed an answer) to the apply loop, release their reads once the
//!    store has applied their index;
//! 3. report how far the WAL is durable ([`Driver::durable`]), then send the rounds'
//!    persisted messages;
//! 4. answer the waiters in [`Driver::take_failed`] and [`Driver::take_failed_reads`];
//! 5. after a store checkpoint, compact the log ([`Driver::compact`]).
//!
//! Every waiter gets one definite answer: its result once applied, or an error saying
//! whether the proposal is certainly not applied ([`NodeError::NotLeader`],
//! [`NodeError::Dropped`]) or its outcome is unknown ([`NodeError::LeaderChanged`],
//! [`NodeError::Timeout`]).

use super::env::{Clock, Random};
use super::proposal::{IdSource, ProposalId};
use super::{Node, NodeError, Work};
use crate::wal::{Lsn, RecordType};
use raft::eraftpb::{Entry, Message};
use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;

/// What a driver is told at start.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub member: u64,
    /// This start's epoch: raised at every start and kept in the WAL before any proposal.
    pub epoch: u64,
    /// Election timeout in ticks; each term draws one in `election_tick..2 * election_tick`.
    pub election_tick: usize,
    /// A proposal or read not answered within this is answered [`NodeError::Timeout`].
    pub request_timeout_ms: u64,
    /// Proposals waiting for their entry, and reads waiting for a read index, at most
    /// (each).
    pub max_pending: usize,
    /// Entries kept in the log behind a compaction point, for followers that lag a little
    /// (etcd keeps 5,000); 0 for a member without peers.
    pub retain_entries: u64,
}

/// One ready round: what to send, persist and apply.
pub struct Round<P, Q> {
    /// Give to [`Driver::queued`] with where the records went.
    pub number: u64,
    /// Send now (a leader sends its appends before its own WAL write completes).
    pub messages: Vec<Message>,
    /// Append to the WAL.
    pub records: Vec<(RecordType, Vec<u8>)>,
    /// Send once `records` are durable (see [`Driver::take_persisted_messages`]).
    pub persisted_messages: Vec<Message>,
    /// Committed entries, in log order: apply them all before reading the store at their
    /// indexes.
    pub committed: Vec<Entry>,
    /// A snapshot from the leader (index, term): install its store (its tree file arrived
    /// beside the raft message) before queuing `records`, which make it the log's start.
    pub snapshot: Option<(u64, u64)>,
    /// Entries the snapshot replaced (to free where it does not hold up the shell).
    pub dropped: VecDeque<Entry>,
    /// Waiters owed the result of a proposal among `committed`, in log order.
    pub waiters: Vec<(ProposalId, P)>,
    /// Reads to release once the store has applied this index.
    pub reads: Vec<(u64, Vec<Q>)>,
    /// Outcomes of the membership changes among `committed`, by proposal id (the waiters
    /// of this member's are in `waiters`).
    pub changes: Vec<(ProposalId, Result<(), String>)>,
    /// Whether this round changed the membership: act on it once `records` are durable.
    pub membership_changed: bool,
    span: Option<(u64, u64)>,
}

impl<P, Q> Round<P, Q> {
    /// First and last index of the entries this round appends, if any.
    pub fn entries_span(&self) -> Option<(u64, u64)> {
        self.span
    }
}

/// A log compaction to write: the records go to the WAL (after the member's metadata), then
/// [`Driver::compacted`] says which WAL position must be kept.
pub struct Compaction {
    pub to: u64,
    pub records: Vec<(RecordType, Vec<u8>)>,
    /// The entries compacted away (freeing a long run takes a while: the caller chooses
    /// where).
    pub gone: VecDeque<Entry>,
}

struct Pending<P> {
    waiter: P,
    deadline_ms: u64,
    /// Where its entry is in this member's log, once seen there.
    index: Option<u64>,
}

struct Reads<Q> {
    waiters: Vec<Q>,
    deadline_ms: u64,
    /// Ticks since the read index was asked for.
    ticks: u32,
}

/// Ticks after which a read index request with no answer is asked again: raft drops one
/// that reaches a leader which has not yet committed an entry of its term (just elected),
/// without a word.
const READ_RETRY_TICKS: u32 = 3;

pub struct Driver<P, Q> {
    node: Node,
    config: DriverConfig,
    ids: IdSource,
    clock: Box<dyn Clock>,
    random: Box<dyn Random>,
    /// Proposals made here and not answered, by sequence (deadlines grow with it).
    proposals: BTreeMap<u64, Pending<P>>,
    /// Log index → the sequence of the proposal of ours expected to commit there.
    expected: BTreeMap<u64, u64>,
    /// Reads waiting for the next read index request.
    read_batch: Vec<Q>,
    /// Read index requests in flight, by sequence.
    reads: BTreeMap<u64, Reads<Q>>,
    reads_waiting: usize,
    failed: Vec<(P, NodeError)>,
    failed_reads: Vec<(Q, NodeError)>,
    /// (first entry index, last entry index, LSN of the first record) of each WAL batch
    /// holding entries after the last compaction: what releasing segments must keep.
    batches: VecDeque<(u64, u64, Lsn)>,
    /// Rounds queued but not yet durable, oldest first: (number, the LSN through which
    /// the WAL must be durable for it).
    inflight: VecDeque<(u64, Lsn)>,
    /// Messages of rounds waiting to be durable, by round number.
    persisted_messages: VecDeque<(u64, Vec<Message>)>,
    compacted: u64,
    /// Whether an election timeout was drawn yet.
    drawn: bool,
    /// (term, leader, role) when last looked: raft draws a new election timeout whenever
    /// one of them changes (and only then).
    seen: (u64, u64, raft::StateRole),
}

impl<P, Q> Driver<P, Q> {
    /// Drives `node`, whose log starts after `compacted` and whose WAL records for the
    /// entries after it begin at the given positions (`batches`, as replayed).
    pub fn new(
        node: Node,
        config: DriverConfig,
        clock: Box<dyn Clock>,
        random: Box<dyn Random>,
        batches: VecDeque<(u64, u64, Lsn)>,
    ) -> Driver<P, Q> {
        let compacted = node.log().start_index();
        let mut d = Driver {
            ids: IdSource::new(config.member, config.epoch),
            node,
            config,
            clock,
            random,
            proposals: BTreeMap::new(),
            expected: BTreeMap::new(),
            read_batch: Vec::new(),
            reads: BTreeMap::new(),
            reads_waiting: 0,
            failed: Vec::new(),
            failed_reads: Vec::new(),
            batches,
            inflight: VecDeque::new(),
            persisted_messages: VecDeque::new(),
            compacted,
            drawn: false,
            seen: (0, 0, raft::StateRole::Follower),
        };
        d.batches.retain(|&(_, last, _)| last > compacted);
        d.observe();
        d
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Entries to keep behind a compaction point from now on (the membership grew or
    /// shrank).
    pub fn set_retain_entries(&mut self, n: u64) {
        self.config.retain_entries = n;
    }

    pub fn is_leader(&self) -> bool {
        self.node.is_leader()
    }

    pub fn leader_id(&self) -> u64 {
        self.node.leader_id()
    }

    /// Proposals proposed and not yet committed or failed.
    pub fn proposals_pending(&self) -> usize {
        self.proposals.len()
    }

    /// Proposals and reads waiting for an answer.
    pub fn waiting(&self) -> usize {
        self.proposals.len() + self.reads_waiting
    }

    /// Proposes a command ([`super::command`]); `waiter` is handed back in a [`Round`] with
    /// the entry that carries it, or with an error in [`Driver::take_failed`].
    pub fn propose(&mut self, command: Vec<u8>, waiter: P) -> Result<ProposalId, (P, NodeError)> {
        self.track(waiter, |node, id| node.propose(id, command))
    }

    /// Proposes a membership change; like [`Driver::propose`], its waiter comes back in a
    /// [`Round`] (its outcome in [`Round::changes`]) or with an error.
    pub fn propose_conf_change(
        &mut self,
        cc: raft::eraftpb::ConfChangeV2,
        waiter: P,
    ) -> Result<ProposalId, (P, NodeError)> {
        self.track(waiter, |node, id| node.propose_conf_change(id, cc))
    }

    /// Makes a proposal under a new id and keeps its waiter, with its deadline, until it is
    /// answered.
    fn track(
        &mut self,
        waiter: P,
        propose: impl FnOnce(&mut Node, ProposalId) -> Result<(), NodeError>,
    ) -> Result<ProposalId, (P, NodeError)> {
        if self.proposals.len() >= self.config.max_pending {
            return Err((waiter, NodeError::Overloaded));
        }
        let id = self.ids.next_id();
        let proposed = propose(&mut self.node, id);
        self.observe();
        match proposed {
            Ok(()) => {
                let deadline_ms = self.clock.now_ms() + self.config.request_timeout_ms;
                self.proposals.insert(
                    id.seq,
                    Pending {
                        waiter,
                        deadline_ms,
                        index: None,
                    },
                );
                Ok(id)
            }
            Err(e) => Err((waiter, e)),
        }
    }

    /// Queues a linearizable read: every read queued before the next [`Driver::ready`]
    /// shares one read index request.
    pub fn read(&mut self, waiter: Q) -> Result<(), (Q, NodeError)> {
        if self.reads_waiting >= self.config.max_pending {
            return Err((waiter, NodeError::Overloaded));
        }
        self.reads_waiting += 1;
        self.read_batch.push(waiter);
        Ok(())
    }

    /// A message from a peer. An error is about that message (a stale or unknown
    /// sender), not the member.
    pub fn step(&mut self, m: Message) -> Result<(), NodeError> {
        let r = self.node.step(m);
        self.observe();
        r
    }

    /// One heartbeat interval passed; also answers the waiters past their deadline, and
    /// asks again for read indexes that got no answer.
    pub fn tick(&mut self) {
        self.node.tick();
        self.observe();
        self.expire();
        self.retry_reads();
    }

    /// Read index requests unanswered for [`READ_RETRY_TICKS`] are asked again under a new
    /// id (an answer to the old one is then ignored); their deadline stays.
    fn retry_reads(&mut self) {
        let stale: Vec<u64> = self
            .reads
            .iter_mut()
            .filter_map(|(&seq, r)| {
                r.ticks += 1;
                (r.ticks >= READ_RETRY_TICKS).then_some(seq)
            })
            .collect();
        for seq in stale {
            let Some(r) = self.reads.remove(&seq) else {
                continue;
            };
            let id = self.ids.next_id();
            match self.node.read_index(id) {
                Ok(()) => {
                    self.reads.insert(
                        id.seq,
                        Reads {
                            waiters: r.waiters,
                            deadline_ms: r.deadline_ms,
                            ticks: 0,
                        },
                    );
                }
                Err(e) => self.fail_reads(r.waiters, e),
            }
        }
    }

    /// Starts an election now (a single member's start).
    pub fn campaign(&mut self) -> Result<(), NodeError> {
        let r = self.node.campaign();
        self.observe();
        r
    }

    /// Hands leadership to `to`.
    pub fn transfer_leader(&mut self, to: u64) {
        self.node.transfer_leader(to);
        self.observe();
    }

    /// Proposals answered with an error since the last call.
    pub fn take_failed(&mut self) -> Vec<(P, NodeError)> {
        std::mem::take(&mut self.failed)
    }

    /// Reads answered with an error since the last call.
    pub fn take_failed_reads(&mut self) -> Vec<(Q, NodeError)> {
        std::mem::take(&mut self.failed_reads)
    }

    /// The next round, if there is anything to do.
    pub fn ready(&mut self) -> Result<Option<Round<P, Q>>, NodeError> {
        self.flush_reads();
        let Some(work) = self.node.next_ready()? else {
            return Ok(None);
        };
        self.observe();
        let Work {
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
        } = work;
        if let Some((index, _)) = snapshot {
            self.covered_by_snapshot(index);
        }
        for (index, id) in appended {
            self.seen_in_log(index, id);
        }
        let waiters = self.answer_committed(&committed);
        let reads = reads
            .into_iter()
            .filter(|(id, _)| self.ids.issued(id))
            .filter_map(|(id, index)| {
                let r = self.reads.remove(&id.seq)?;
                self.reads_waiting -= r.waiters.len();
                Some((index, r.waiters))
            })
            .collect();
        Ok(Some(Round {
            number,
            messages,
            records,
            persisted_messages,
            committed,
            snapshot,
            dropped,
            waiters,
            reads,
            changes,
            membership_changed,
            span,
        }))
    }

    /// The records of round `number` were queued in the WAL at `lsns` (an empty range at
    /// the WAL's next position if it had none). Its persisted messages are kept until the
    /// WAL is durable through them.
    pub fn queued(
        &mut self,
        number: u64,
        span: Option<(u64, u64)>,
        lsns: Range<Lsn>,
        persisted_messages: Vec<Message>,
    ) {
        if let Some((first, last)) = span {
            self.batches.push_back((first, last, lsns.start));
        }
        self.inflight
            .push_back((number, lsns.end.saturating_sub(1)));
        if !persisted_messages.is_empty() {
            self.persisted_messages
                .push_back((number, persisted_messages));
        }
    }

    /// The LSN the oldest queued round waits for, if any.
    pub fn awaiting_lsn(&self) -> Option<Lsn> {
        self.inflight.front().map(|&(_, lsn)| lsn)
    }

    /// The WAL is durable through `durable`: rounds up to there count as persisted for
    /// raft. True if any did.
    pub fn durable(&mut self, durable: Lsn) -> bool {
        let mut persisted = None;
        while let Some(&(number, lsn)) = self.inflight.front() {
            if lsn > durable {
                break;
            }
            persisted = Some(number);
            self.inflight.pop_front();
        }
        match persisted {
            Some(number) => {
                self.node.on_persisted(number);
                true
            }
            None => false,
        }
    }

    /// Messages of rounds now durable, to send.
    pub fn take_persisted_messages(&mut self) -> Vec<Message> {
        let done = self.inflight.front().map_or(u64::MAX, |&(n, _)| n);
        let mut out = Vec::new();
        while self
            .persisted_messages
            .front()
            .is_some_and(|&(n, _)| n < done)
        {
            if let Some((_, msgs)) = self.persisted_messages.pop_front() {
                out.extend(msgs);
            }
        }
        out
    }

    /// The store is durable through `checkpointed`: the log up to it may go. `None` when
    /// there is nothing new to drop.
    pub fn compact(&mut self, checkpointed: u64) -> Result<Option<Compaction>, NodeError> {
        let to = checkpointed
            .min(self.node.applied_index())
            .saturating_sub(self.config.retain_entries);
        if to <= self.compacted || to <= self.node.log().start_index() {
            return Ok(None);
        }
        let (records, gone) = self.node.log().compact_detached(to)?;
        Ok(Some(Compaction {
            to,
            records: records.into(),
            gone,
        }))
    }

    /// The compaction to `to` was written to the WAL at `marker`: returns the WAL position
    /// from which everything must be kept (entries after `to` written before the marker
    /// included: replay then starts mid-log, and the marker sets the start).
    pub fn compacted(&mut self, to: u64, marker: Lsn) -> Lsn {
        self.compacted = to;
        while self.batches.front().is_some_and(|&(_, last, _)| last <= to) {
            self.batches.pop_front();
        }
        self.batches
            .front()
            .map_or(marker, |&(_, _, lsn)| lsn.min(marker))
    }

    /// The store is durable through `index` of `term`: snapshots sent to lagging
    /// followers hold this.
    pub fn set_snapshot_point(&mut self, index: u64, term: u64) {
        self.node.set_snapshot_point(index, term);
    }

    /// The snapshot sent to `to` arrived and was installed (or failed).
    pub fn report_snapshot(&mut self, to: u64, ok: bool) {
        self.node.report_snapshot(to, ok);
    }

    /// `to` could not be reached.
    pub fn report_unreachable(&mut self, to: u64) {
        self.node.report_unreachable(to);
    }

    /// Entries up to `index` arrived as a snapshot, not one by one: which of ours were
    /// among them cannot be told.
    fn covered_by_snapshot(&mut self, index: u64) {
        // The log starts after the snapshot now: compactions and segment releases go
        // from there.
        self.compacted = self.compacted.max(index);
        self.batches.retain(|&(_, last, _)| last > index);
        let covered: Vec<u64> = self.expected.range(..=index).map(|(&i, _)| i).collect();
        for i in covered {
            if let Some(seq) = self.expected.remove(&i) {
                if let Some(p) = self.proposals.remove(&seq) {
                    self.failed.push((p.waiter, NodeError::LeaderChanged));
                }
            }
        }
    }

    fn flush_reads(&mut self) {
        if self.read_batch.is_empty() {
            return;
        }
        let waiters = std::mem::take(&mut self.read_batch);
        let id = self.ids.next_id();
        match self.node.read_index(id) {
            Ok(()) => {
                let deadline_ms = self.clock.now_ms() + self.config.request_timeout_ms;
                self.reads.insert(
                    id.seq,
                    Reads {
                        waiters,
                        deadline_ms,
                        ticks: 0,
                    },
                );
            }
            Err(e) => self.fail_reads(waiters, e),
        }
    }

    fn fail_reads(&mut self, waiters: Vec<Q>, e: NodeError) {
        self.reads_waiting -= waiters.len();
        for w in waiters {
            self.failed_reads.push((w, clone_error(&e)));
        }
    }

    /// Our proposal `id` is in this member's log at `index` (a later term may replace it).
    fn seen_in_log(&mut self, index: u64, id: ProposalId) {
        if !self.ids.issued(&id) {
            return;
        }
        let Some(p) = self.proposals.get_mut(&id.seq) else {
            return;
        };
        p.index = Some(index);
        if let Some(other) = self.expected.insert(index, id.seq) {
            // Another proposal of ours was expected there, and a later term put this one
            // in its place: whether the other still commits somewhere cannot be known.
            if other != id.seq {
                if let Some(p) = self.proposals.remove(&other) {
                    self.failed.push((p.waiter, NodeError::LeaderChanged));
                }
            }
        }
    }

    /// The waiters of our proposals among `committed`; proposals whose index another
    /// entry took are answered [`NodeError::Dropped`].
    fn answer_committed(&mut self, committed: &[Entry]) -> Vec<(ProposalId, P)> {
        let mut waiters = Vec::new();
        for e in committed {
            let ours = ProposalId::decode(&e.context).filter(|id| self.ids.issued(id));
            let expected = self.expected.remove(&e.index);
            if let Some(id) = ours {
                if let Some(p) = self.proposals.remove(&id.seq) {
                    waiters.push((id, p.waiter));
                }
            }
            if let Some(seq) = expected.filter(|&seq| Some(seq) != ours.map(|id| id.seq)) {
                if let Some(p) = self.proposals.remove(&seq) {
                    self.failed.push((p.waiter, NodeError::Dropped));
                }
            }
        }
        waiters
    }

    /// Looks at the term and leader after raft ran: a new term draws its election timeout
    /// from the driver's random source, and a change of leader answers the waiters that
    /// can no longer be answered for certain.
    fn observe(&mut self) {
        let now = (self.node.term(), self.node.leader_id(), self.node.role());
        if now == self.seen && self.drawn {
            return;
        }
        // Becoming a pre-candidate keeps the timeout (raft draws none then): a pre-vote
        // that followers ignore, their leader's lease not yet expired, is tried again after
        // this member's own timeout, not a fresh and perhaps longer one.
        let pre_vote = now.2 == raft::StateRole::PreCandidate && now.0 == self.seen.0;
        if !(pre_vote && self.drawn) {
            let base = self.config.election_tick.max(1);
            let ticks = base + self.random.below(base as u64) as usize;
            self.node.set_election_timeout(ticks);
        }
        self.drawn = true;
        let leader_changed = now.0 != self.seen.0 || now.1 != self.seen.1;
        self.seen = now;
        if !leader_changed {
            return;
        }
        // Proposals not yet seen in this member's log may be anywhere, or nowhere.
        let unseen: Vec<u64> = self
            .proposals
            .iter()
            .filter(|(_, p)| p.index.is_none())
            .map(|(&seq, _)| seq)
            .collect();
        for seq in unseen {
            if let Some(p) = self.proposals.remove(&seq) {
                self.failed.push((p.waiter, NodeError::LeaderChanged));
            }
        }
        // Read index requests die with the leadership they were asked of.
        let reads = std::mem::take(&mut self.reads);
        for (_, r) in reads {
            self.fail_reads(r.waiters, NodeError::LeaderChanged);
        }
    }

    fn expire(&mut self) {
        let now = self.clock.now_ms();
        while let Some(entry) = self.proposals.first_entry() {
            if entry.get().deadline_ms > now {
                break;
            }
            let (seq, p) = entry.remove_entry();
            if let Some(index) = p.index {
                if self.expected.get(&index) == Some(&seq) {
                    self.expected.remove(&index);
                }
            }
            self.failed.push((p.waiter, NodeError::Timeout));
        }
        // Read requests are few (one per batch), and one asked again keeps its deadline
        // under a newer id: look at them all.
        let expired: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, r)| r.deadline_ms <= now)
            .map(|(&seq, _)| seq)
            .collect();
        for seq in expired {
            if let Some(r) = self.reads.remove(&seq) {
                self.fail_reads(r.waiters, NodeError::Timeout);
            }
        }
    }
}

/// The waiter-facing errors are plain values; storage errors never reach waiters.
fn clone_error(e: &NodeError) -> NodeError {
    match e {
        NodeError::NotLeader => NodeError::NotLeader,
        NodeError::Dropped => NodeError::Dropped,
        NodeError::LeaderChanged => NodeError::LeaderChanged,
        NodeError::Timeout => NodeError::Timeout,
        NodeError::Overloaded => NodeError::Overloaded,
        _ => NodeError::Stopping,
    }
}
