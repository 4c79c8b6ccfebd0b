//! The raft role: the shell around the consensus [`Driver`]. It owns the WAL and the
//! clock: it feeds the driver proposals, reads and ticks, writes the records of its rounds
//! (group commit: the next batch fills while one is written), reports how far the WAL is
//! durable, hands committed entries to the apply role, and writes the log compactions the
//! store's checkpoints allow (releasing WAL segments behind them).

use super::cluster::{Identity, Metadata, PeerInfo};
use super::peer::{Me, Peers};
use super::{wait_until, Input, Phase, Reply, ServerError, Shared, ToApply, POLL_BRIEF};
use crate::node::{Driver, DriverConfig, MonotonicClock, Node, NodeError, SplitMix64};
use crate::raftlog::RaftLog;
use crate::wal::{Lsn, RecordType, Wal, WalOptions};
use raft::eraftpb::ConfState;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) struct RaftRole {
    /// Bound `--listen-peer-urls`, for the peer transport.
    pub peer_listeners: Vec<std::net::TcpListener>,
    pub inputs: flume::Receiver<Input>,
    pub to_apply: flume::Sender<ToApply>,
    /// Tells the apply role the WAL (and its directory lock) is held: it may open the store.
    /// Dropped unsent if the start fails before.
    pub wal_opened: Option<flume::Sender<()>>,
    /// The store's applied index once open, or why it could not open.
    pub store_opened: flume::Receiver<Result<u64, ServerError>>,
}

/// Runs the raft role until the member stops; on the way out it stops the apply role,
/// waits for its checkpoint and closes the WAL.
pub(crate) async fn run(role: RaftRole, shared: Arc<Shared>) -> Result<(), ServerError> {
    let mut replayed = 0u64;
    let log = RaftLog::default();
    let replay_log = log.clone();
    let mut batches = VecDeque::new();
    let mut identity: Option<Result<Metadata, String>> = None;
    let opened = Wal::open(
        shared.config.data_dir.join("wal"),
        WalOptions {
            segment_bytes: shared.config.wal_segment_bytes,
            ..WalOptions::default()
        },
        0,
        |lsn, t, p| {
            replayed += 1;
            if t == RecordType::METADATA {
                identity = Some(Identity::decode(p));
                return Ok(());
            }
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
    // On a full disk whose current segment is full too, appends wait for space: a stop
    // gives up on it (failing those appends; none was acknowledged) rather than hang.
    let stopper = wal.creation_stopper();
    let watched = shared.clone();
    glommio::spawn_local(async move {
        wait_until(super::POLL_IDLE, || watched.stopping()).await;
        stopper.stop();
    })
    .detach();
    let mut raft = Raft {
        wal,
        identity: Identity {
            member_id: 0,
            cluster_id: 0,
        },
        epoch: 0,
        members: Vec::new(),
        peers: None,
        moving: Vec::new(),
        election_timeout_ms: shared.config.election_timeout_ms,
        data_dir: shared.config.data_dir.clone(),
        releasing: None,
        role,
    };
    let result = raft.start(&log, replayed, identity, batches, &shared).await;
    let result = match result {
        Ok(mut driver) => raft.serve(&mut driver, &shared).await,
        Err(e) => Err(e),
    };
    if let Err(e) = &result {
        tracing::error!(error = %e, "stopping: the raft role failed");
    }
    shared.request_stop();
    shared.set_phase(Phase::Stopping);
    super::refuse_queued(&raft.role.inputs);
    // If the start failed before the store was opened, the apply role stops now.
    drop(raft.role.wal_opened.take());
    // Everything proposed so far has been handed to apply; let it finish and checkpoint.
    let _ = raft.role.to_apply.send_async(ToApply::Stop).await;
    let checkpointed = raft.wait_for_apply().await;
    let released = match raft.releasing.take() {
        Some(task) => task.await.map(|_| ()),
        None => Ok(()),
    };
    let closed = raft.wal.close().await;
    shared.set_phase(Phase::Stopped);
    // Net shards that saw the member serving just before it stopped may have queued more.
    super::refuse_queued(&raft.role.inputs);
    result?;
    checkpointed?;
    released?;
    closed?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// A start whose log begins after what the tree holds: a snapshot from the leader was made
/// the log's start, and the member stopped before its tree file (kept in `snap/`) became
/// the store. It becomes the store now; without it, the tree does not meet the log.
fn recover_snapshot(
    data_dir: &std::path::Path,
    start: u64,
    db: &std::path::Path,
) -> Result<(), ServerError> {
    let file = super::peer::snapshot_file(data_dir, start);
    if !file.exists() {
        return Ok(());
    }
    tracing::info!(index = start, file = %file.display(), "installing the snapshot received before the last stop");
    super::rename_durably(&file, db).map_err(|source| ServerError::DataDir {
        path: db.to_path_buf(),
        source,
    })
}

/// Received snapshots that never became the log's start (raft found it did not need them,
/// or the member stopped first) are of no further use: raft sends a new one if needed.
/// Interrupted transfers (`.part`) stay, to be resumed.
fn remove_stale_snapshots(data_dir: &std::path::Path) {
    let Ok(dir) = std::fs::read_dir(data_dir.join("snap")) else {
        return;
    };
    for e in dir.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "db") {
            tracing::debug!(file = %p.display(), "removing a snapshot that was not installed");
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// The tree and the log must meet: the tree holds everything up to `applied`, the log
/// everything after its start. Anything else is a damaged data directory (a tree file, a
/// tree commit or WAL segments lost), and starting would serve less than was acknowledged.
pub(crate) fn tree_meets_log(
    applied: u64,
    log: &RaftLog,
    tree: &std::path::Path,
) -> Result<(), ServerError> {
    let (start, last) = (log.start_index(), log.last_index_held());
    if applied < start || applied > last {
        return Err(ServerError::Config(format!(
            "the data directory is damaged: the tree file {} holds entries up to {applied} \
             but the WAL holds {}..={last} (was db/ or wal/ cut, removed or replaced?)",
            tree.display(),
            start + 1
        )));
    }
    Ok(())
}

/// Answers a leadership transfer.
type MoveReply = flume::Sender<Result<(), String>>;

/// Proposals wait with the reply their net shard awaits; reads with the signal that
/// releases them.
type RaftDriver = Driver<Reply, flume::Sender<()>>;

struct Raft {
    wal: Wal,
    identity: Identity,
    /// This start's epoch (in proposal ids).
    epoch: u64,
    /// The cluster's members as bootstrapped.
    members: Vec<PeerInfo>,
    /// The transport to the other members, once started.
    peers: Option<Peers>,
    /// Leadership transfers waiting to be answered: (transferee, deadline, reply).
    moving: Vec<(u64, Instant, MoveReply)>,
    election_timeout_ms: u64,
    data_dir: std::path::PathBuf,
    role: RaftRole,
    /// WAL segments being deleted behind the last compaction.
    releasing: Option<glommio::Task<Result<usize, crate::wal::WalError>>>,
}

impl Raft {
    /// Opens the driver over the replayed log once the store is open, becomes leader and
    /// applies the whole log before the net shards accept anything.
    async fn start(
        &mut self,
        log: &RaftLog,
        replayed: u64,
        identity: Option<Result<Metadata, String>>,
        batches: VecDeque<(u64, u64, Lsn)>,
        shared: &Arc<Shared>,
    ) -> Result<RaftDriver, ServerError> {
        log.finish_replay().map_err(NodeError::from)?;
        let config = &shared.config;
        let meta =
            match identity {
                Some(meta) => meta.map_err(ServerError::Config)?,
                None if replayed == 0 => {
                    // A new data directory: the member's identity and the cluster's members
                    // come from the flags, once.
                    let (identity, members) = config
                        .cluster
                        .bootstrap(&config.name)
                        .map_err(ServerError::Config)?;
                    log.set_conf_state(ConfState {
                        voters: members.iter().map(|m| m.id).collect(),
                        ..Default::default()
                    });
                    let (t, p) = log.marker_record();
                    self.wal.append_many(&[(t, &p)]).await?;
                    Metadata {
                        identity,
                        epoch: 0,
                        members,
                    }
                }
                None => return Err(ServerError::Config(
                    "the WAL holds no member metadata record (was it written by another program?)"
                        .into(),
                )),
            };
        self.identity = meta.identity;
        self.members = meta.members;
        // A new epoch for this start, durable before any proposal carries it.
        self.epoch = meta.epoch + 1;
        let record = self.identity.encode(self.epoch, &self.members);
        self.wal
            .append_many(&[(RecordType::METADATA, &record)])
            .await?;
        self.peers = Some(Peers::start(
            Me {
                cluster_id: self.identity.cluster_id,
                member_id: self.identity.member_id,
            },
            &self.members,
            std::mem::take(&mut self.role.peer_listeners),
            shared.clone(),
        ));
        // Only now, with the WAL's directory lock held, may the tree file be opened. Its
        // newest commit is read first: opening cuts the file after it, which must not
        // happen before the tree is known to meet the log (a newer commit whose record was
        // damaged would be cut away while the log no longer holds its entries).
        let db = config.data_dir.join("db").join("cairn.db");
        let mut tree = crate::btree::Db::inspect(&db).map_err(crate::mvcc::MvccError::from)?;
        if tree.commit.applied_index < log.start_index() {
            recover_snapshot(&config.data_dir, log.start_index(), &db)?;
            tree = crate::btree::Db::inspect(&db).map_err(crate::mvcc::MvccError::from)?;
        }
        remove_stale_snapshots(&config.data_dir);
        tree_meets_log(tree.commit.applied_index, log, &db)?;
        if let Some(opened) = self.role.wal_opened.take() {
            let _ = opened.send_async(()).await;
        }
        let applied = match self.role.store_opened.recv_async().await {
            Ok(r) => r?,
            Err(_) => return Err(ServerError::RoleLost("apply")),
        };
        tree_meets_log(applied, log, &db)?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let election_tick = (config.election_timeout_ms / config.heartbeat_interval_ms) as usize;
        let member = self.identity.member_id;
        let node = Node::open(member, election_tick, applied, log.clone(), &logger)?;
        let mut driver = Driver::new(
            node,
            DriverConfig {
                member,
                epoch: self.epoch,
                election_tick,
                request_timeout_ms: REQUEST_TIMEOUT_MS,
                max_pending: config.max_pending_proposals,
                retain_entries: if self.members.len() > 1 {
                    config.snapshot_catch_up_entries
                } else {
                    0
                },
            },
            Box::new(MonotonicClock::new()),
            Box::new(SplitMix64::from_entropy()),
            batches,
        );
        // Alone, a member leads at once; in a cluster, the members elect one.
        let alone = self.members.len() <= 1;
        if alone {
            driver.campaign()?;
        }
        // Apply what this member knows to be committed (alone: its whole log) before
        // serving, so that no read sees less than it saw before a restart.
        let known = if alone {
            driver.node().last_log().1
        } else {
            log.hard_state().commit
        };
        for _ in 0..1000 {
            self.settle(&mut driver).await?;
            if driver.node().applied_index() >= known {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        let last = driver.node().applied_index();
        if last < known {
            return Err(ServerError::CatchUp);
        }
        // Serve only once the store has applied the whole log, so that no read (a
        // serializable one included) sees less than was acknowledged before a restart.
        wait_until(POLL_BRIEF, || {
            shared.status.lock().raft_applied_index >= last || shared.stopping()
        })
        .await;
        self.publish(&driver, shared);
        if shared.stopping() {
            return Ok(driver); // stopped while starting: `serve` returns at once
        }
        tracing::info!(
            name = %config.name,
            member_id = %format!("{member:x}"),
            cluster_id = %format!("{:x}", self.identity.cluster_id),
            addr = %config.listen_native_addr,
            applied = last,
            wal_records = replayed,
            epoch = self.epoch,
            "serving"
        );
        shared.set_phase(Phase::Serving);
        Ok(driver)
    }

    async fn serve(&mut self, driver: &mut RaftDriver, shared: &Shared) -> Result<(), ServerError> {
        let tick = Duration::from_millis(shared.config.heartbeat_interval_ms.max(1));
        let mut next_tick = Instant::now() + tick;
        let max_batch = shared.config.max_pending_proposals;
        while !shared.stopping() {
            let wait = next_tick
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50));
            let inputs = &self.role.inputs;
            let awaiting = driver.awaiting_lsn();
            // Wake for an input, the tick, or the oldest round in flight becoming durable.
            let woken =
                futures_lite::future::or(async { Ok(inputs.recv_async().await.ok()) }, async {
                    match awaiting {
                        Some(lsn) => {
                            futures_lite::future::or(
                                async { self.wal.wait_durable(lsn).await.map(|()| None) },
                                async {
                                    glommio::timer::sleep(wait).await;
                                    Ok(None)
                                },
                            )
                            .await
                        }
                        None => {
                            glommio::timer::sleep(wait).await;
                            Ok(None)
                        }
                    }
                })
                .await;
            let first = woken?;
            if !shared.alarms.nospace() {
                if let Some(cause) = self.wal.no_space() {
                    shared
                        .alarms
                        .raise(crate::protocol::AlarmType::Nospace, || {
                            format!("the WAL cannot create its next segment: {cause}")
                        });
                }
            }
            let mut checkpointed = None;
            let inputs: Vec<Input> = first
                .into_iter()
                .chain(self.role.inputs.try_iter().take(max_batch))
                .collect();
            for input in inputs {
                match input {
                    Input::Read(waiter) => {
                        // Refused: the waiter is dropped and the read answered Unavailable.
                        let _ = driver.read(waiter);
                    }
                    Input::Checkpointed(index, term) => {
                        driver.set_snapshot_point(index, term);
                        checkpointed = Some(index);
                    }
                    Input::SnapshotSent(to, ok) => driver.report_snapshot(to, ok),
                    Input::MoveLeader(to, reply) => self.move_leader(driver, to, reply),
                    Input::Peer(msgs) => {
                        for m in msgs {
                            if let Err(e) = driver.step(m) {
                                tracing::debug!(error = %e, "peer message refused");
                            }
                        }
                    }
                    Input::Propose(p) => {
                        if let Err((reply, e)) = driver.propose(p.command, p.reply) {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
            }
            if Instant::now() >= next_tick {
                driver.tick();
                next_tick = Instant::now() + tick;
            }
            self.rounds(driver).await?;
            self.publish(driver, shared);
            self.answer_move_leader(driver);
            if let Some(index) = checkpointed {
                self.compact(driver, index).await?;
            }
        }
        // Everything proposed gets committed and handed to apply before the member stops.
        self.settle(driver).await
    }

    /// Runs ready rounds until raft is idle, without waiting for the WAL: each round's
    /// records are queued (group commit: the batch being written and the next one fill at
    /// once), its committed entries (with the waiters owed their results) and confirmed
    /// reads go to the apply role, and rounds whose records are durable are reported to
    /// the driver, which may make more rounds.
    async fn rounds(&mut self, driver: &mut RaftDriver) -> Result<(), ServerError> {
        loop {
            while let Some(round) = driver.ready()? {
                let span = round.entries_span();
                if let Some(peers) = &self.peers {
                    peers.send(round.messages);
                }
                let lsns = if round.records.is_empty() {
                    let next = self.wal.next_lsn();
                    next..next
                } else {
                    let records: Vec<(RecordType, &[u8])> = round
                        .records
                        .iter()
                        .map(|(t, p)| (*t, p.as_slice()))
                        .collect();
                    self.wal.enqueue(&records).await?
                };
                if let Some((index, _)) = round.snapshot {
                    // The log starts after the snapshot once its records are durable; only
                    // then does its tree file (durable in snap/ already) become the store,
                    // before anything after it is applied. A crash in between leaves the
                    // file in snap/, where the next start finds it (`recover_snapshot`).
                    self.wal.wait_durable(lsns.end - 1).await?;
                    self.install(index).await?;
                    free_elsewhere(round.dropped);
                }
                if !round.committed.is_empty() {
                    self.send(ToApply::Entries(round.committed, round.waiters))
                        .await?;
                }
                for (index, waiters) in round.reads {
                    self.send(ToApply::Reads(index, waiters)).await?;
                }
                driver.queued(round.number, span, lsns, round.persisted_messages);
            }
            for (reply, e) in driver.take_failed() {
                let _ = reply.send(Err(e));
            }
            // A refused read's waiter is dropped: the read is answered Unavailable.
            drop(driver.take_failed_reads());
            if !driver.durable(self.wal.durable_lsn()) {
                return Ok(());
            }
            let msgs = driver.take_persisted_messages();
            if let Some(peers) = &self.peers {
                peers.send(msgs);
            }
        }
    }

    /// Runs rounds until none is in flight: everything proposed so far is durable and
    /// handed to the apply role.
    async fn settle(&mut self, driver: &mut RaftDriver) -> Result<(), ServerError> {
        loop {
            self.rounds(driver).await?;
            match driver.awaiting_lsn() {
                Some(lsn) => self.wal.wait_durable(lsn).await?,
                None => return Ok(()),
            }
        }
    }

    /// Has the apply role install the snapshot received for `index` as the store.
    async fn install(&self, index: u64) -> Result<(), ServerError> {
        let file = super::peer::snapshot_file(&self.data_dir, index);
        let (tx, rx) = flume::bounded(1);
        self.send(ToApply::Install(file, index, tx)).await?;
        match rx.recv_async().await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ServerError::Apply(e)),
            Err(_) => Err(ServerError::RoleLost("apply")),
        }
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
    async fn compact(&mut self, driver: &mut RaftDriver, index: u64) -> Result<(), ServerError> {
        let Some(compaction) = driver.compact(index)? else {
            return Ok(());
        };
        free_elsewhere(compaction.gone);
        // The identity again, so that it never lives only in a released segment.
        let meta = self.identity.encode(self.epoch, &self.members);
        let mut refs: Vec<(RecordType, &[u8])> = vec![(RecordType::METADATA, &meta)];
        refs.extend(compaction.records.iter().map(|(t, p)| (*t, p.as_slice())));
        let marker = self.wal.append_many(&refs).await?.start;
        let keep_from = driver.compacted(compaction.to, marker);
        // Deleting a segment takes tens of milliseconds here: it runs as its own task, one
        // at a time (while one runs, the segments wait for the next checkpoint).
        if let Some(task) = &mut self.releasing {
            match futures_lite::future::poll_once(task).await {
                None => return Ok(()),
                Some(done) => {
                    self.releasing = None;
                    done?;
                }
            }
        }
        let to = compaction.to;
        let release = self.wal.release_below(keep_from);
        self.releasing = Some(glommio::spawn_local(async move {
            let released = release.await?;
            if released > 0 {
                tracing::debug!(compacted = to, released, "released WAL segments");
            }
            Ok(released)
        }));
        Ok(())
    }

    /// Starts handing leadership to `to` (etcd's MoveLeader); answered once `to` leads, or
    /// after an election timeout.
    fn move_leader(&mut self, driver: &mut RaftDriver, to: u64, reply: MoveReply) {
        let me = self.identity.member_id;
        let refusal = if !driver.is_leader() {
            Some(format!(
                "etcdserver: not leader: member {me:x} cannot move leadership; ask the leader ({:x})",
                driver.leader_id()
            ))
        } else if !self.members.iter().any(|m| m.id == to) {
            Some(format!(
                "etcdserver: bad leader transferee: {to:x} is not a member"
            ))
        } else {
            None
        };
        if let Some(e) = refusal {
            let _ = reply.send(Err(e));
            return;
        }
        if to == me {
            let _ = reply.send(Ok(()));
            return;
        }
        driver.transfer_leader(to);
        let timeout = Duration::from_millis(self.election_timeout_ms * 2);
        self.moving.push((to, Instant::now() + timeout, reply));
    }

    fn answer_move_leader(&mut self, driver: &RaftDriver) {
        let leader = driver.leader_id();
        let now = Instant::now();
        self.moving.retain(|(to, deadline, reply)| {
            if leader == *to {
                let _ = reply.send(Ok(()));
                false
            } else if now >= *deadline {
                let _ = reply.send(Err(format!(
                    "etcdserver: request timed out, leader transfer took too long ({to:x} does not lead)"
                )));
                false
            } else {
                true
            }
        });
    }

    /// Waits for the apply role's final checkpoint (or its failure), which it reports on
    /// the channel that said the store was open.
    async fn wait_for_apply(&mut self) -> Result<(), ServerError> {
        match self.role.store_opened.recv_async().await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(ServerError::RoleLost("apply")),
        }
    }

    fn publish(&self, driver: &RaftDriver, shared: &Shared) {
        let (term, index) = driver.node().last_log();
        let mut status = shared.status.lock();
        let member = self.identity.member_id;
        status.cluster_id = self.identity.cluster_id;
        status.member_id = member;
        status.leader = driver.leader_id();
        status.raft_term = term;
        status.raft_index = index;
    }
}

/// A proposal or read not answered within this gets etcd's "request timed out".
const REQUEST_TIMEOUT_MS: u64 = 7_000;

/// Frees entries compacted out of the log on a thread of their own: 100,000 of them take
/// about 20 ms to free, which the raft role would otherwise spend not taking proposals.
fn free_elsewhere(entries: VecDeque<raft::eraftpb::Entry>) {
    if entries.len() < 1024 {
        return;
    }
    // If no thread can be started, the closure (and the entries) are dropped right here.
    let _ = std::thread::Builder::new()
        .name("cairn-free".into())
        .spawn(move || drop(entries));
}
