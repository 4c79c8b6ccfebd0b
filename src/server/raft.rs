//! The raft role: the WAL, RawNode's ready rounds (group commit), ticks, batched ReadIndex,
//! and compacting the log (and releasing WAL segments) behind the store's checkpoints.

use super::{wait_until, Input, Phase, Reply, ServerError, Shared, ToApply, STOP};
use crate::node::{Node, NodeError};
use crate::raftlog::RaftLog;
use crate::wal::{Lsn, RecordType, Wal, WalOptions};
use raft::eraftpb::ConfState;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// This member's raft id until membership comes.
const MEMBER_ID: u64 = 1;

pub(crate) struct RaftRole {
    pub inputs: flume::Receiver<Input>,
    pub to_apply: flume::Sender<ToApply>,
    /// Tells the apply role the WAL (and its directory lock) is held: it may open the store.
    pub wal_opened: flume::Sender<()>,
    /// The store's applied index once open, or why it could not open.
    pub store_opened: flume::Receiver<Result<u64, ServerError>>,
}

/// Runs the raft role until the member stops; on the way out it stops the apply role,
/// waits for its checkpoint and closes the WAL.
pub(crate) async fn run(role: RaftRole, shared: Arc<Shared>) -> Result<(), ServerError> {
    let mut replayed = 0u64;
    let log = RaftLog::new(ConfState {
        voters: vec![MEMBER_ID],
        ..Default::default()
    });
    let replay_log = log.clone();
    let mut batches = VecDeque::new();
    let opened = Wal::open(
        shared.config.data_dir.join("wal"),
        WalOptions {
            segment_bytes: shared.config.wal_segment_bytes,
            ..WalOptions::default()
        },
        0,
        |lsn, t, p| {
            replayed += 1;
            replay_log.replay(t, p)?;
            if t == RecordType::ENTRY {
                let index = replay_log.last_index_held();
                batches.push_back((index, index, lsn));
            }
            Ok(())
        },
    )
    .await;
    let wal = match opened {
        Ok(wal) => wal,
        Err(e) => {
            shared.set_phase(Phase::Stopped);
            return Err(e.into());
        }
    };
    let mut raft = Raft {
        wal,
        pending: HashMap::new(),
        pending_reads: HashMap::new(),
        token: 0,
        batches,
        compacted: 0,
        role,
    };
    let result = raft.start(&log, replayed, &shared).await;
    let result = match result {
        Ok(mut node) => raft.serve(&mut node, &shared).await,
        Err(e) => Err(e),
    };
    if let Err(e) = &result {
        tracing::error!(error = %e, "stopping: the raft role failed");
    }
    STOP.store(true, Ordering::Relaxed);
    shared.set_phase(Phase::Stopping);
    // Everything proposed so far has been handed to apply; let it finish and checkpoint.
    let _ = raft.role.to_apply.send_async(ToApply::Stop).await;
    let checkpointed = raft.wait_for_apply().await;
    let closed = raft.wal.close().await;
    shared.set_phase(Phase::Stopped);
    result?;
    checkpointed?;
    closed?;
    tracing::info!("stopped cleanly");
    Ok(())
}

struct Raft {
    wal: Wal,
    role: RaftRole,
    /// Replies owed for proposals in the log, by token.
    pending: HashMap<u64, Reply>,
    /// Linearizable reads waiting for their read index, by token.
    pending_reads: HashMap<u64, Vec<flume::Sender<()>>>,
    token: u64,
    /// (first entry index, last entry index, LSN of the first record) of each WAL batch
    /// holding entries after the last compaction: what releasing segments must keep.
    batches: VecDeque<(u64, u64, Lsn)>,
    compacted: u64,
}

impl Raft {
    /// Opens the node over the replayed log once the store is open, becomes leader and
    /// applies the whole log before the net shards accept anything.
    async fn start(
        &mut self,
        log: &RaftLog,
        replayed: u64,
        shared: &Shared,
    ) -> Result<Node, ServerError> {
        log.finish_replay().map_err(NodeError::from)?;
        if replayed == 0 {
            let (t, p) = log.marker_record();
            self.wal.append(t, &p).await?;
        }
        self.compacted = log.start_index();
        let compacted = self.compacted;
        while self
            .batches
            .front()
            .is_some_and(|&(_, last, _)| last <= compacted)
        {
            self.batches.pop_front();
        }
        // Only now, with the WAL's directory lock held, may the tree file be opened.
        let _ = self.role.wal_opened.send_async(()).await;
        let applied = match self.role.store_opened.recv_async().await {
            Ok(r) => r?,
            Err(_) => return Err(ServerError::RoleLost("apply")),
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let config = &shared.config;
        let election_tick = (config.election_timeout_ms / config.heartbeat_interval_ms) as usize;
        let mut node = Node::open(MEMBER_ID, election_tick, applied, log.clone(), &logger)?;
        node.campaign()?;
        for _ in 0..1000 {
            self.rounds(&mut node).await?;
            if node.applied_index() >= node.last_log().1 {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        let last = node.last_log().1;
        if node.applied_index() < last {
            return Err(ServerError::CatchUp);
        }
        // Serve only once the store has applied the whole log, so that no read (a
        // serializable one included) sees less than was acknowledged before a restart.
        wait_until(|| {
            shared.status.lock().raft_applied_index >= last || STOP.load(Ordering::Relaxed)
        })
        .await;
        self.publish(&node, shared);
        if STOP.load(Ordering::Relaxed) {
            return Ok(node); // stopped while starting: `serve` returns at once
        }
        tracing::info!(
            name = %config.name,
            addr = %config.listen_native_addr,
            applied = last,
            wal_records = replayed,
            "serving"
        );
        shared.set_phase(Phase::Serving);
        Ok(node)
    }

    async fn serve(&mut self, node: &mut Node, shared: &Shared) -> Result<(), ServerError> {
        let tick = Duration::from_millis(shared.config.heartbeat_interval_ms.max(1));
        let mut next_tick = Instant::now() + tick;
        let max_batch = shared.config.max_pending_proposals;
        while !STOP.load(Ordering::Relaxed) {
            let wait = next_tick
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50));
            let inputs = &self.role.inputs;
            let first = futures_lite::future::or(async { inputs.recv_async().await.ok() }, async {
                glommio::timer::sleep(wait).await;
                None
            })
            .await;
            let mut reads = Vec::new();
            let mut checkpointed = None;
            for input in first
                .into_iter()
                .chain(self.role.inputs.try_iter().take(max_batch))
            {
                match input {
                    Input::Read(waiter) => reads.push(waiter),
                    Input::Checkpointed(index) => checkpointed = Some(index),
                    Input::Propose(p) => {
                        self.token += 1;
                        match node.propose(self.token, p.payload) {
                            Ok(()) => {
                                self.pending.insert(self.token, p.reply);
                            }
                            Err(e) => {
                                let _ = p.reply.send(Err(e));
                            }
                        }
                    }
                }
            }
            if !reads.is_empty() {
                self.token += 1;
                // Not the leader: the waiters are dropped and their reads answered
                // Unavailable.
                if node.read_index(self.token).is_ok() {
                    self.pending_reads.insert(self.token, reads);
                }
            }
            if Instant::now() >= next_tick {
                node.tick();
                next_tick = Instant::now() + tick;
            }
            self.rounds(node).await?;
            self.publish(node, shared);
            if let Some(index) = checkpointed {
                self.compact(node, index).await?;
            }
        }
        Ok(())
    }

    /// Runs ready rounds until raft is idle: WAL append (group commit), then committed
    /// entries (with the replies owed for them) and confirmed reads to the apply role.
    async fn rounds(&mut self, node: &mut Node) -> Result<(), ServerError> {
        while let Some(work) = node.next_ready()? {
            if !work.records.is_empty() {
                let records: Vec<(RecordType, &[u8])> = work
                    .records
                    .iter()
                    .map(|(t, p)| (*t, p.as_slice()))
                    .collect();
                let lsns = self.wal.append_many(&records).await?;
                if let Some((first, last)) = work.entries_span() {
                    self.batches.push_back((first, last, lsns.start));
                }
            }
            let done = node.on_persisted(work)?;
            if !done.committed.is_empty() {
                let replies: Vec<(u64, Reply)> = done
                    .committed
                    .iter()
                    .filter_map(|e| {
                        let token = u64::from_le_bytes(<[u8; 8]>::try_from(&e.context[..]).ok()?);
                        Some((token, self.pending.remove(&token)?))
                    })
                    .collect();
                self.send(ToApply::Entries(done.committed, replies)).await?;
            }
            for (token, index) in done.reads {
                if let Some(waiters) = self.pending_reads.remove(&token) {
                    self.send(ToApply::Reads(index, waiters)).await?;
                }
            }
        }
        Ok(())
    }

    async fn send(&self, msg: ToApply) -> Result<(), ServerError> {
        self.role
            .to_apply
            .send_async(msg)
            .await
            .map_err(|_| ServerError::RoleLost("apply"))
    }

    /// The store is durable up to `index`: drop the log up to it, write the new start marker,
    /// and release the WAL segments nothing after it needs.
    async fn compact(&mut self, node: &Node, index: u64) -> Result<(), ServerError> {
        let to = index.min(node.applied_index());
        if to <= self.compacted {
            return Ok(());
        }
        let records = node.log().compact(to).map_err(NodeError::from)?;
        let refs: Vec<(RecordType, &[u8])> =
            records.iter().map(|(t, p)| (*t, p.as_slice())).collect();
        let marker = self.wal.append_many(&refs).await?.start;
        self.compacted = to;
        while self.batches.front().is_some_and(|&(_, last, _)| last <= to) {
            self.batches.pop_front();
        }
        // Entries after `to` written before the marker must survive: keep from the first
        // batch holding one (replay then starts mid-log, and the marker sets the start).
        let keep_from = self
            .batches
            .front()
            .map_or(marker, |&(_, _, lsn)| lsn.min(marker));
        let released = self.wal.release_below(keep_from).await?;
        if released > 0 {
            tracing::debug!(compacted = to, released, "released WAL segments");
        }
        Ok(())
    }

    /// Waits for the apply role's final checkpoint (or its failure), which it reports on
    /// the channel that said the store was open.
    async fn wait_for_apply(&mut self) -> Result<(), ServerError> {
        match self.role.store_opened.recv_async().await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(ServerError::RoleLost("apply")),
        }
    }

    fn publish(&self, node: &Node, shared: &Shared) {
        let (term, index) = node.last_log();
        let mut status = shared.status.lock();
        status.member_id = MEMBER_ID;
        status.leader = if node.is_leader() { MEMBER_ID } else { 0 };
        status.raft_term = term;
        status.raft_index = index;
    }
}
