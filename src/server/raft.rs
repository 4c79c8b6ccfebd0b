//! The raft role: the shell around the consensus [`Driver`]. It owns the WAL and the
//! clock: it feeds the driver proposals, reads and ticks, writes the records of its rounds
//! (group commit: the next batch fills while one is written), reports how far the WAL is
//! durable, hands committed entries to the apply role, and writes the log compactions the
//! store's checkpoints allow (releasing WAL segments behind them).

use super::cluster::{Identity, Metadata, PeerInfo};
use super::peer::{Me, Peers};
use super::{
    wait_until, Input, MemberReply, Phase, Reply, ServerError, Shared, ToApply, POLL_BRIEF,
};
use crate::node::conf_change;
use crate::node::{command, Driver, DriverConfig, MonotonicClock, Node, NodeError, SplitMix64};
use crate::protocol::{ErrorCode, Member, MemberRequest, MemberResponse};
use crate::raftlog::{MemberInfo, Membership, RaftLog};
use crate::wal::{Lsn, RecordType, Wal, WalOptions};
use raft::eraftpb::{ConfChangeType, ConfChangeV2};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
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
    let measured = shared.clone();
    wal.on_batch_written(move |b| {
        let m = &measured.metrics;
        m.wal_fsync.observe_duration(b.duration);
        m.wal_batch_records.observe(u64::from(b.records));
        m.wal_batch_bytes.observe(b.bytes);
    });
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
        leaving: None,
        joint_waiters: Vec::new(),
        heard: Vec::new(),
        publish: Publish::default(),
        learner: false,
        shared: shared.clone(),
        election_timeout_ms: shared.config.election_timeout_ms,
        data_dir: shared.config.data_dir.clone(),
        releasing: None,
        role,
        lease_term: None,
        last_leader: raft::INVALID_ID,
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

/// What waits for a proposal's outcome.
enum Waiter {
    /// A client's write: answered by the apply role once applied to the store.
    Kv(Reply),
    /// A membership change: answered here once applied to the membership; with the id of
    /// the member it adds.
    Member(MemberReply, Option<u64>),
    /// This member publishing its name and client URLs.
    Publish,
}

/// Proposals wait with their [`Waiter`]; reads with the signal that releases them.
type RaftDriver = Driver<Waiter, flume::Sender<()>>;

/// This member's name and client URLs, published to the membership once per start (as
/// etcd's members publish their attributes).
#[derive(Default)]
struct Publish {
    /// The membership has them (as last looked; looked again when it changes).
    done: bool,
    in_flight: bool,
    /// Not before this (after a failed attempt).
    next_try: Option<Instant>,
}

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
    /// The cluster removed this member: it stops once the others go on without it.
    leaving: Option<Leaving>,
    /// Member changes applied, waiting for their joint configuration to be left: (reply,
    /// the member added, deadline).
    joint_waiters: Vec<(MemberReply, Option<u64>, Instant)>,
    /// When each peer was last heard from (at most [`HEARD_MAX`]).
    heard: Vec<(u64, Instant)>,
    publish: Publish,
    /// This member is a learner (as the membership last applied says).
    learner: bool,
    shared: Arc<Shared>,
    election_timeout_ms: u64,
    data_dir: std::path::PathBuf,
    role: RaftRole,
    /// WAL segments being deleted behind the last compaction.
    releasing: Option<glommio::Task<Result<usize, crate::wal::WalError>>>,
    /// What the apply role's lease clock was last told: this member leads in this term.
    lease_term: Option<u64>,
    /// The leader as last published, or none (for counting leader changes).
    last_leader: u64,
}

impl Raft {
    /// Opens the driver over the replayed log once the store is open, becomes leader and
    /// applies the whole log before the net shards accept anything.
    async fn start(
        &mut self,
        log: &RaftLog,
        replayed: u64,
        identity: Option<Result<Metadata, String>>,
        mut batches: VecDeque<(u64, u64, Lsn)>,
        shared: &Arc<Shared>,
    ) -> Result<RaftDriver, ServerError> {
        log.finish_replay().map_err(NodeError::from)?;
        let config = &shared.config;
        let meta =
            match identity {
                Some(meta) => meta.map_err(ServerError::Config)?,
                None if replayed == 0
                    && config.cluster.state == super::cluster::ClusterState::Existing =>
                {
                    self.join(&config.cluster, &config.name).await?
                }
                None if replayed == 0 => {
                    // A new data directory: the member's identity and the cluster's members
                    // come from the flags, once; the members go into the log as its first
                    // entries (the same on every member), applied like any later change.
                    let (identity, members) = config
                        .cluster
                        .bootstrap(&config.name)
                        .map_err(ServerError::Config)?;
                    let infos: Vec<MemberInfo> = members.iter().map(PeerInfo::to_member).collect();
                    let records = RaftLog::bootstrap(&infos);
                    let refs: Vec<(RecordType, &[u8])> =
                        records.iter().map(|(t, p)| (*t, p.as_slice())).collect();
                    let lsns = self.wal.append_many(&refs).await?;
                    for ((t, p), lsn) in records.iter().zip(lsns) {
                        log.replay(*t, p).map_err(NodeError::from)?;
                        if *t == RecordType::ENTRY {
                            let index = log.last_index_held();
                            batches.push_back((index, index, lsn));
                        }
                    }
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
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let _ = shared.lease_ids.set(crate::lease::LeaseIds::new(
            self.identity.member_id,
            unix_ms,
        ));
        // A data directory written before member tables were kept in the log knows the
        // members' attributes from its metadata record only.
        log.fill_members(
            &self
                .members
                .iter()
                .map(PeerInfo::to_member)
                .collect::<Vec<_>>(),
        );
        // A new epoch for this start, durable before any proposal carries it.
        self.epoch = meta.epoch + 1;
        let record = self.identity.encode(self.epoch, &self.members);
        self.wal
            .append_many(&[(RecordType::METADATA, &record)])
            .await?;
        let membership = log.membership();
        *shared.membership.lock() = membership.clone();
        self.learn_members(&membership);
        self.peers = Some(Peers::start(
            Me {
                cluster_id: self.identity.cluster_id,
                member_id: self.identity.member_id,
            },
            &self.peer_list(&membership),
            std::mem::take(&mut self.role.peer_listeners),
            log.clone(),
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
                retain_entries: 0,
            },
            Box::new(MonotonicClock::new()),
            Box::new(SplitMix64::from_entropy()),
            batches,
        );
        // Apply what this member knows to be committed (the membership changes among it
        // included) before serving, so that no read sees less than it saw before a restart.
        self.catch_up(&mut driver, log.hard_state().commit).await?;
        self.membership_changed(&mut driver, shared);
        if driver.node().is_removed() {
            return Err(ServerError::Removed);
        }
        // Alone, a member leads at once, and applies its whole log; in a cluster, the
        // members elect one.
        let ms = driver.node().membership();
        if ms.conf.voters == [member] && ms.conf.voters_outgoing.is_empty() {
            driver.campaign()?;
            let last = driver.node().last_log().1;
            self.catch_up(&mut driver, last).await?;
        }
        let last = driver.node().applied_index();
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

    /// Runs rounds until raft has handed out every entry up to `known`.
    async fn catch_up(&mut self, driver: &mut RaftDriver, known: u64) -> Result<(), ServerError> {
        for _ in 0..1000 {
            self.settle(driver).await?;
            if driver.node().applied_index() >= known {
                return Ok(());
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        Err(ServerError::CatchUp)
    }

    /// A member joining a running cluster (`--initial-cluster-state existing`) with an
    /// empty data directory: asks the members it was given for the membership and finds
    /// itself in it by its peer URLs (it was added with `member add`). Its log comes from
    /// the leader.
    async fn join(
        &mut self,
        cluster: &super::cluster::ClusterConfig,
        name: &str,
    ) -> Result<Metadata, ServerError> {
        let (mut mine, targets) = cluster.join_targets(name).map_err(ServerError::Config)?;
        mine.sort();
        let mut errors = Vec::new();
        for addr in &targets {
            let (cluster_id, membership) = match super::peer::ask_membership(addr).await {
                Ok(answer) => answer,
                Err(e) => {
                    errors.push(format!("{addr}: {e}"));
                    continue;
                }
            };
            let me = membership.members.iter().find(|m| {
                let mut urls = m.peer_urls.clone();
                urls.sort();
                urls == mine
            });
            let Some(me) = me else {
                // That member may lag; another may know of the addition.
                errors.push(format!(
                    "{addr} (cluster {cluster_id:x}) has no member with peer URLs {}",
                    mine.join(",")
                ));
                continue;
            };
            tracing::info!(
                member_id = %format!("{:x}", me.id),
                cluster_id = %format!("{cluster_id:x}"),
                "joining a running cluster"
            );
            return Ok(Metadata {
                identity: Identity {
                    member_id: me.id,
                    cluster_id,
                },
                epoch: 0,
                members: membership
                    .members
                    .iter()
                    .map(PeerInfo::from_member)
                    .collect(),
            });
        }
        Err(ServerError::Config(format!(
            "--initial-cluster-state existing: no member of the cluster knows this one ({}); \
             add it first with `cairn member add {name} --peer-urls={}`",
            errors.join("; "),
            mine.join(",")
        )))
    }

    /// Every other member to dial, with its addresses: every member this one knows of
    /// (those it was told of when it joined or bootstrapped, and every member the
    /// membership has named since), except those removed. A member that joined, or
    /// restarted, replays an older membership first, which may not hold the leader it must
    /// answer; dialing a member not (or not yet) in the configuration costs nothing.
    fn peer_list(&self, ms: &Membership) -> Vec<PeerInfo> {
        self.members
            .iter()
            .filter(|p| !ms.was_removed(p.id))
            .cloned()
            .collect()
    }

    /// Learns the addresses the membership gives, and forgets removed members.
    fn learn_members(&mut self, ms: &Membership) {
        for m in &ms.members {
            match self.members.iter_mut().find(|p| p.id == m.id) {
                Some(p) => *p = PeerInfo::from_member(m),
                None => self.members.push(PeerInfo::from_member(m)),
            }
        }
        self.members.retain(|p| !ms.was_removed(p.id));
        // Bounded like the membership itself.
        if self.members.len() > crate::raftlog::MEMBERS_MAX {
            let ids = ms.ids();
            self.members.retain(|p| ids.contains(&p.id));
        }
    }

    /// The membership changed (or the member started): the peers dialed, what is
    /// published and kept follow it; a member the cluster removed starts leaving.
    fn membership_changed(&mut self, driver: &mut RaftDriver, shared: &Shared) {
        let ms = driver.node().membership();
        // The addresses kept in the metadata record too.
        self.learn_members(&ms);
        let peers = self.peer_list(&ms);
        if let Some(p) = &mut self.peers {
            p.set_members(&peers);
        }
        // Followers that lag a little are sent entries, not a snapshot; alone, nothing is
        // kept behind the checkpoint.
        let retain = if ms.ids().len() > 1 {
            shared.config.snapshot_catch_up_entries
        } else {
            0
        };
        driver.set_retain_entries(retain);
        self.learner = ms.is_learner(self.identity.member_id);
        self.publish.done = false;
        *shared.membership.lock() = ms;
        if driver.node().is_removed() {
            self.leave(driver, "the cluster removed this member");
        }
    }

    /// Answers the member changes waiting for their joint configuration to be left, once
    /// it is (or, the change being applied, once they have waited the request timeout).
    fn answer_joint_waiters(&mut self, driver: &RaftDriver) {
        if self.joint_waiters.is_empty() {
            return;
        }
        let ms = driver.node().membership();
        let now = Instant::now();
        let waiting = std::mem::take(&mut self.joint_waiters);
        for (reply, added, deadline) in waiting {
            if ms.is_joint() && now < deadline {
                self.joint_waiters.push((reply, added, deadline));
            } else {
                let _ = reply.send(Ok(self.member_response(&ms, added)));
            }
        }
    }

    /// A message came from `from`: it counts as active for the strict reconfiguration
    /// check (raft's own activity flags are cleared every election timeout).
    fn heard_from(&mut self, from: u64) {
        let now = Instant::now();
        if let Some((_, at)) = self.heard.iter_mut().find(|(id, _)| *id == from) {
            *at = now;
        } else if self.heard.len() < HEARD_MAX {
            self.heard.push((from, now));
        } else if let Some(oldest) = self.heard.iter_mut().min_by_key(|(_, at)| *at) {
            // Bounded: the one heard from longest ago makes room.
            *oldest = (from, now);
        }
    }

    /// The cluster removed this member: it stops once the others go on without it.
    fn leave(&mut self, driver: &RaftDriver, why: &str) {
        if self.leaving.is_some() {
            return;
        }
        tracing::error!(
            "{why}: the member has been permanently removed from the cluster; stopping"
        );
        let now = Instant::now();
        self.leaving = Some(Leaving {
            soft: now + LEAVING_GRACE,
            // Survivors still in the joint configuration campaign within two election
            // timeouts (the longest drawn), and ask this member's vote.
            hard: now + Duration::from_millis(self.election_timeout_ms * 3),
            term: driver.node().term(),
            seen: None,
        });
    }

    /// Whether a member leaving may stop now: the others go on without it (another member
    /// leads, or an election has begun, whose vote request it may have to answer: a leader
    /// that removed itself has stepped down, and the survivors may still need its vote to
    /// leave the joint configuration), and its last messages have had time to go out.
    fn may_stop(&mut self, driver: &RaftDriver) -> bool {
        let me = self.identity.member_id;
        let Some(l) = &mut self.leaving else {
            return false;
        };
        let now = Instant::now();
        let leader = driver.leader_id();
        let others_go_on =
            (leader != raft::INVALID_ID && leader != me) || driver.node().term() > l.term;
        if others_go_on && l.seen.is_none() {
            l.seen = Some(now);
        }
        let settled = l.seen.is_some_and(|at| now >= at + LEAVING_SEND);
        now >= l.hard || (now >= l.soft && settled)
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
                    Input::Member(req, reply) => self.member_request(driver, req, reply),
                    Input::Removed(why) => self.leave(driver, &why),
                    Input::CheckpointWanted => self.send(ToApply::Checkpoint).await?,
                    Input::Peer(msgs) => {
                        if let Some(m) = msgs.first() {
                            self.heard_from(m.from);
                        }
                        for m in msgs {
                            if let Err(e) = driver.step(m) {
                                tracing::debug!(error = %e, "peer message refused");
                            }
                        }
                    }
                    Input::Propose(p) => {
                        if let Err((waiter, e)) = driver.propose(p.command, Waiter::Kv(p.reply)) {
                            self.fail(waiter, e);
                        }
                    }
                    Input::LeasePropose(p) => {
                        let proposed = if driver.is_leader() {
                            driver.propose(p.command, Waiter::Kv(p.reply))
                        } else {
                            Err((Waiter::Kv(p.reply), NodeError::NotLeader))
                        };
                        if let Err((waiter, e)) = proposed {
                            self.fail(waiter, e);
                        }
                    }
                    Input::Lease(req, reply) => self.lease_request(driver, req, reply).await?,
                }
            }
            let mut ticked = false;
            if Instant::now() >= next_tick {
                driver.tick();
                next_tick = Instant::now() + tick;
                ticked = true;
            }
            self.rounds(driver, shared).await?;
            self.lease_leadership(driver, ticked).await?;
            self.publish(driver, shared);
            self.answer_move_leader(driver);
            self.publish_attributes(driver, shared);
            self.answer_joint_waiters(driver);
            if self.may_stop(driver) {
                return Err(ServerError::Removed);
            }
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
    async fn rounds(
        &mut self,
        driver: &mut RaftDriver,
        shared: &Shared,
    ) -> Result<(), ServerError> {
        loop {
            while let Some(mut round) = driver.ready()? {
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
                if round.membership_changed {
                    // Acted on (peers dialed or refused, a removed member stopping) only once
                    // the commit index that covers the change is durable: a member that
                    // forgot it after a restart would hold a configuration needing a member
                    // that has stopped, and no quorum could form (etcd waits the same way).
                    if !lsns.is_empty() {
                        self.wal.wait_durable(lsns.end - 1).await?;
                    }
                    self.membership_changed(driver, shared);
                }
                let mut kv = Vec::with_capacity(round.waiters.len());
                for (id, waiter) in std::mem::take(&mut round.waiters) {
                    match waiter {
                        Waiter::Kv(reply) => kv.push((id, reply)),
                        other => {
                            let outcome = round.changes.iter().find(|(c, _)| *c == id);
                            self.answer_change(driver, other, outcome.map(|(_, o)| o.clone()));
                        }
                    }
                }
                if !round.committed.is_empty() {
                    self.send(ToApply::Entries(round.committed, kv)).await?;
                }
                for (index, waiters) in round.reads {
                    self.send(ToApply::Reads(index, waiters)).await?;
                }
                driver.queued(round.number, span, lsns, round.persisted_messages);
            }
            for (waiter, e) in driver.take_failed() {
                self.fail(waiter, e);
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
            let shared = self.shared.clone();
            self.rounds(driver, &shared).await?;
            match driver.awaiting_lsn() {
                Some(lsn) => self.wal.wait_durable(lsn).await?,
                None => return Ok(()),
            }
        }
    }

    /// Tells the apply role's lease clock when this member starts or stops leading (it
    /// starts once every entry of earlier terms is applied; a leader of a new term starts
    /// afresh, as another leader may have renewed leases in between), and, while it leads,
    /// that a heartbeat interval passed.
    async fn lease_leadership(
        &mut self,
        driver: &RaftDriver,
        ticked: bool,
    ) -> Result<(), ServerError> {
        let term = driver.node().term();
        let still = self.lease_term == Some(term) && driver.is_leader();
        let leading = still || driver.node().leads_applied_term();
        let lease_term = leading.then_some(term);
        if lease_term != self.lease_term {
            if self.lease_term.is_some() {
                self.send(ToApply::Leader(false)).await?;
            }
            if leading {
                self.send(ToApply::Leader(true)).await?;
            }
            self.lease_term = lease_term;
        }
        if leading && ticked {
            self.send(ToApply::LeaseTick).await?;
        }
        Ok(())
    }

    /// A lease keepalive or time-to-live is answered by the leader's lease clock (a
    /// follower refuses it at once); the list by any member's table.
    async fn lease_request(
        &mut self,
        driver: &RaftDriver,
        req: crate::lease::LeaseRequest,
        reply: super::LeaseReply,
    ) -> Result<(), ServerError> {
        use crate::lease::LeaseRequest;
        let for_leader = matches!(
            req,
            LeaseRequest::KeepAlive(_) | LeaseRequest::TimeToLive(_)
        );
        if for_leader && self.lease_term.is_none() {
            let _ = reply.send(Err((
                ErrorCode::Unavailable,
                format!(
                    "{} ({:x})",
                    crate::lease::LeaseError::NotLeader,
                    driver.leader_id()
                ),
            )));
            return Ok(());
        }
        self.send(ToApply::Lease(req, reply)).await
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
        } else if !driver.node().membership().is_voter(to) {
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

    /// A proposal that will not be applied, or whose outcome is unknown.
    fn fail(&mut self, waiter: Waiter, e: NodeError) {
        self.shared
            .metrics
            .proposals_failed
            .fetch_add(1, Ordering::Relaxed);
        match waiter {
            Waiter::Kv(reply) => reply.send(Err(e)),
            Waiter::Member(reply, _) => {
                let code = match e {
                    NodeError::Overloaded => ErrorCode::Overloaded,
                    _ => ErrorCode::Unavailable,
                };
                let _ = reply.send(Err((code, e.to_string())));
            }
            Waiter::Publish => {
                self.publish.in_flight = false;
                self.publish.next_try = Some(Instant::now() + Duration::from_secs(1));
            }
        }
    }

    /// A membership change of this member's was applied (`Some`: with its outcome) or its
    /// place in the log taken by an entry that is no change (raft refused it).
    fn answer_change(
        &mut self,
        driver: &RaftDriver,
        waiter: Waiter,
        outcome: Option<Result<(), String>>,
    ) {
        let outcome = outcome.unwrap_or_else(|| {
            Err(
                "etcdserver: the membership change was not taken (another was in progress); \
                 try again"
                    .into(),
            )
        });
        match waiter {
            Waiter::Kv(_) => {}
            Waiter::Member(reply, added) => match outcome {
                Ok(()) => {
                    let ms = driver.node().membership();
                    if ms.is_joint() {
                        // A change of voters is answered once its joint configuration is
                        // left (the leader does it on its own), so that the next change can
                        // follow at once.
                        let deadline = Instant::now() + Duration::from_millis(REQUEST_TIMEOUT_MS);
                        self.joint_waiters.push((reply, added, deadline));
                    } else {
                        let _ = reply.send(Ok(self.member_response(&ms, added)));
                    }
                }
                Err(e) => {
                    let _ = reply.send(Err((ErrorCode::InvalidRequest, e)));
                }
            },
            Waiter::Publish => {
                self.publish.in_flight = false;
                if let Err(e) = outcome {
                    tracing::warn!(error = %e, "publishing this member's name and client URLs failed");
                    self.publish.next_try = Some(Instant::now() + Duration::from_secs(1));
                }
            }
        }
    }

    fn member_response(&self, ms: &Membership, added: Option<u64>) -> MemberResponse {
        let member = |id: u64| {
            let info = ms.member(id).cloned().unwrap_or(MemberInfo {
                id,
                ..Default::default()
            });
            Member {
                id,
                name: info.name,
                peer_urls: info.peer_urls,
                client_urls: info.client_urls,
                is_learner: ms.is_learner(id),
            }
        };
        MemberResponse {
            cluster_id: self.identity.cluster_id,
            member_id: self.identity.member_id,
            member: added.map(member),
            members: ms.ids().into_iter().map(member).collect(),
        }
    }

    /// Publishes this member's name and client URLs to the membership once a leader is
    /// known, if the membership does not have them yet.
    fn publish_attributes(&mut self, driver: &mut RaftDriver, shared: &Shared) {
        if self.publish.done
            || self.publish.in_flight
            || self.leaving.is_some()
            || driver.leader_id() == raft::INVALID_ID
            || self.publish.next_try.is_some_and(|t| Instant::now() < t)
        {
            return;
        }
        let me = self.identity.member_id;
        let ms = driver.node().membership();
        let Some(current) = ms.member(me) else {
            return; // not in the membership (yet): a joining member learns it first
        };
        let client_urls = shared.client_urls.clone();
        if current.name == shared.config.name && current.client_urls == client_urls {
            self.publish.done = true;
            return;
        }
        let info = MemberInfo {
            id: me,
            name: shared.config.name.clone(),
            peer_urls: Vec::new(),
            client_urls,
        };
        let cmd = command::member(command::SET_NAME_AND_CLIENT_URLS, &info);
        match driver.propose(cmd, Waiter::Publish) {
            Ok(_) => self.publish.in_flight = true,
            Err((waiter, e)) => self.fail(waiter, e),
        }
    }

    /// A member list or change (etcd's Cluster service). Changes are taken by the leader
    /// only, one at a time, and checked as etcd checks them (with its strict
    /// reconfiguration check: a change must leave a quorum of active voters).
    fn member_request(&mut self, driver: &mut RaftDriver, req: MemberRequest, reply: MemberReply) {
        let ms = driver.node().membership();
        if let MemberRequest::List = req {
            let _ = reply.send(Ok(self.member_response(&ms, None)));
            return;
        }
        match self.member_change(driver, &ms, req) {
            Err((code, e)) => {
                let _ = reply.send(Err((code, e)));
            }
            Ok(Change::Conf(cc, added)) => {
                if let Err((waiter, e)) =
                    driver.propose_conf_change(cc, Waiter::Member(reply, added))
                {
                    self.fail(waiter, e);
                }
            }
            Ok(Change::Attributes(cmd)) => {
                if let Err((waiter, e)) = driver.propose(cmd, Waiter::Member(reply, None)) {
                    self.fail(waiter, e);
                }
            }
        }
    }

    /// Checks a member change against the membership and the leader's view of the others,
    /// and builds the entry that makes it.
    fn member_change(
        &self,
        driver: &RaftDriver,
        ms: &Membership,
        req: MemberRequest,
    ) -> Result<Change, (ErrorCode, String)> {
        let invalid = |e: String| Err((ErrorCode::InvalidRequest, e));
        if self.leaving.is_some() {
            return Err((ErrorCode::Unavailable, ServerError::Removed.to_string()));
        }
        if !driver.is_leader() {
            return Err((
                ErrorCode::Unavailable,
                format!(
                    "etcdserver: not leader: member changes are taken by the leader ({:x})",
                    driver.leader_id()
                ),
            ));
        }
        // How much of the leader's log each member holds (for promoting a learner).
        let progress = driver.node().progress();
        // Voters this member heard from lately (itself included), as etcd counts the
        // members its transport has been connected to.
        let me = self.identity.member_id;
        let recently =
            Instant::now().checked_sub(Duration::from_millis(self.election_timeout_ms * 2));
        let active = |voters: &[u64]| {
            voters
                .iter()
                .filter(|&&v| {
                    v == me
                        || self
                            .heard
                            .iter()
                            .any(|&(id, at)| id == v && recently.is_none_or(|r| at >= r))
                })
                .count()
        };
        let quorum = |n: usize| n / 2 + 1;
        // etcd's FailedPrecondition: not worth retrying until the cluster changes.
        let not_enough = || {
            Err((
                ErrorCode::InvalidRequest,
                "etcdserver: re-configuration failed due to not enough started members".into(),
            ))
        };
        let pending = || {
            Err((
                ErrorCode::Unavailable,
                "etcdserver: another membership change is in progress; try again".into(),
            ))
        };
        let urls_taken = |urls: &[String], except: u64| {
            ms.members
                .iter()
                .filter(|m| m.id != except)
                .any(|m| m.peer_urls.iter().any(|u| urls.contains(u)))
        };
        let check_urls = |urls: &[String]| -> Result<(), (ErrorCode, String)> {
            if urls.is_empty() {
                return Err((
                    ErrorCode::InvalidRequest,
                    "etcdserver: member peer URLs are not provided".into(),
                ));
            }
            for u in urls {
                super::cluster::parse_peer_url(u, "--peer-urls")
                    .map_err(|e| (ErrorCode::InvalidRequest, e))?;
            }
            let info = MemberInfo {
                peer_urls: urls.to_vec(),
                ..Default::default()
            };
            if !info.fits() {
                return Err((
                    ErrorCode::InvalidRequest,
                    "etcdserver: too many or too long peer URLs".into(),
                ));
            }
            Ok(())
        };
        let voters = ms.conf.voters.clone();
        match req {
            MemberRequest::List => invalid("not a change".into()),
            MemberRequest::Add {
                peer_urls,
                is_learner,
            } => {
                let peer_urls = sorted(peer_urls);
                check_urls(&peer_urls)?;
                if urls_taken(&peer_urls, 0) {
                    return invalid("etcdserver: Peer URLs already exists".into());
                }
                if driver.node().conf_change_pending() {
                    return pending();
                }
                let learners = ms.conf.learners.len() + ms.conf.learners_next.len();
                if is_learner && learners >= MAX_LEARNERS {
                    return invalid("etcdserver: too many learner members in cluster".into());
                }
                // etcd's rule, with its exception: a lone voter may add a second one (to
                // restore a cluster from one member's data).
                let lone = voters.len() == 1 && active(&voters) == 1;
                if !is_learner && !lone && active(&voters) < quorum(voters.len() + 1) {
                    return not_enough();
                }
                let id = new_member_id(&peer_urls, self.identity.cluster_id, ms);
                let info = MemberInfo {
                    id,
                    name: String::new(),
                    peer_urls,
                    client_urls: Vec::new(),
                };
                let kind = if is_learner {
                    ConfChangeType::AddLearnerNode
                } else {
                    ConfChangeType::AddNode
                };
                Ok(Change::Conf(
                    conf_change(kind, id, !is_learner, info.to_bytes()),
                    Some(id),
                ))
            }
            MemberRequest::Remove { id } => {
                if !ms.contains(id) {
                    return Err((ErrorCode::InvalidRequest, not_found(ms, id)));
                }
                if driver.node().conf_change_pending() {
                    return pending();
                }
                let voter = ms.is_voter(id);
                if voter {
                    let rest: Vec<u64> = voters.iter().copied().filter(|v| *v != id).collect();
                    if rest.is_empty() {
                        return invalid("etcdserver: cannot remove the last voting member".into());
                    }
                    if active(&rest) < quorum(rest.len()) {
                        return not_enough();
                    }
                }
                Ok(Change::Conf(
                    conf_change(ConfChangeType::RemoveNode, id, voter, Vec::new()),
                    None,
                ))
            }
            MemberRequest::Promote { id } => {
                if !ms.contains(id) {
                    return Err((ErrorCode::InvalidRequest, not_found(ms, id)));
                }
                if !ms.is_learner(id) {
                    return invalid("etcdserver: can only promote a learner member".into());
                }
                if driver.node().conf_change_pending() {
                    return pending();
                }
                let matched = |who: u64| {
                    progress
                        .iter()
                        .find(|(p, _)| *p == who)
                        .map_or(0, |(_, m)| *m)
                };
                // etcd's rule: the learner has 90% of what the leader has.
                if (matched(id) as f64) < matched(driver.leader_id()) as f64 * 0.9 {
                    return invalid(
                        "etcdserver: can only promote a learner member which is in sync with leader"
                            .into(),
                    );
                }
                // The learner counts as started, as etcd counts it (it is in sync).
                if active(&voters) + 1 < quorum(voters.len() + 1) {
                    return not_enough();
                }
                Ok(Change::Conf(
                    conf_change(ConfChangeType::AddNode, id, true, Vec::new()),
                    None,
                ))
            }
            MemberRequest::Update { id, peer_urls } => {
                let peer_urls = sorted(peer_urls);
                let Some(current) = ms.member(id) else {
                    return Err((ErrorCode::InvalidRequest, not_found(ms, id)));
                };
                check_urls(&peer_urls)?;
                if urls_taken(&peer_urls, id) {
                    return invalid("etcdserver: Peer URLs already exists".into());
                }
                let info = MemberInfo {
                    peer_urls,
                    ..current.clone()
                };
                Ok(Change::Attributes(command::member(
                    command::SET_PEER_URLS,
                    &info,
                )))
            }
        }
    }

    /// Waits for the apply role's final checkpoint (or its failure), which it reports on
    /// the channel that said the store was open.
    async fn wait_for_apply(&mut self) -> Result<(), ServerError> {
        match self.role.store_opened.recv_async().await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(ServerError::RoleLost("apply")),
        }
    }

    fn publish(&mut self, driver: &RaftDriver, shared: &Shared) {
        let leader = driver.leader_id();
        let m = &shared.metrics;
        // As etcd counts them: each time a leader is known that was not known the moment
        // before (the first one, another one, or the same one after a time without).
        if leader != raft::INVALID_ID && leader != self.last_leader {
            m.leader_changes.fetch_add(1, Ordering::Relaxed);
        }
        self.last_leader = leader;
        m.committed_index
            .store(driver.node().commit_index(), Ordering::Relaxed);
        m.proposals_pending
            .store(driver.proposals_pending() as u64, Ordering::Relaxed);
        let (term, index) = driver.node().last_log();
        let mut status = shared.status.lock();
        let member = self.identity.member_id;
        status.cluster_id = self.identity.cluster_id;
        status.member_id = member;
        status.leader = driver.leader_id();
        status.raft_term = term;
        status.raft_index = index;
        status.is_learner = self.learner;
    }
}

/// How long a removed member goes on after learning it, at least (its last messages, such
/// as a leader's request that another campaign at once, go out meanwhile).
const LEAVING_GRACE: Duration = Duration::from_millis(300);
/// How long it goes on after seeing the others go on without it (a vote it granted goes
/// out meanwhile).
const LEAVING_SEND: Duration = Duration::from_millis(100);

/// A removed member on its way out.
struct Leaving {
    /// Not before this.
    soft: Instant,
    /// Not after this, whatever happens.
    hard: Instant,
    /// Its term when it learned of its removal.
    term: u64,
    /// When it first saw the others go on without it.
    seen: Option<Instant>,
}

/// Peers whose last message time is kept, at most.
const HEARD_MAX: usize = 1024;

/// Learners at once, at most (etcd's default).
const MAX_LEARNERS: usize = 1;

/// The entry a member change is made with.
enum Change {
    /// A configuration change, and the id of the member it adds.
    Conf(ConfChangeV2, Option<u64>),
    /// A member command (new attributes).
    Attributes(Vec<u8>),
}

/// URLs sorted and without repeats, as etcd keeps them (every member then encodes a member
/// alike).
fn sorted(mut urls: Vec<String>) -> Vec<String> {
    urls.sort();
    urls.dedup();
    urls
}

/// etcd's error for a member id that is not in the cluster: "ID removed" for one that was.
fn not_found(ms: &Membership, id: u64) -> String {
    if ms.was_removed(id) {
        format!("etcdserver: ID removed: {id:x}")
    } else {
        format!("etcdserver: member not found: {id:x}")
    }
}

/// A new member's id, as etcd makes one: from its peer URLs, the cluster and the time, so
/// that a member added again with the same URLs gets another id; never one in use or
/// removed.
fn new_member_id(peer_urls: &[String], cluster_id: u64, ms: &Membership) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut salt = now;
    loop {
        let id = super::cluster::member_id(peer_urls, &format!("{cluster_id:x}-{salt}"));
        if id != 0 && !ms.contains(id) && !ms.was_removed(id) {
            return id;
        }
        salt += 1;
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
