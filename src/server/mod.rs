//! `cairn serve`: one member as thread-per-core glommio executors. The shell around the
//! sans-IO [`Node`](crate::node::Node) and [`apply_committed`](crate::node::apply_committed):
//!
//! - `net` shards (`conn.rs`): a SO_REUSEPORT listener each, frames in and out, serializable
//!   reads from the latest published [`ReadView`], proposals and linearizable reads sent to
//!   the raft role; per connection a receive buffer sized to the frame being read
//!   (`read_buf.rs`) and replies bounded in bytes with their writer task (`replies.rs`);
//! - the etcd v3 gRPC API (`grpc/`): tonic on a thread of its own, the same requests as the
//!   native protocol's through `front.rs`, the path both front ends share;
//! - `raft` (`raft.rs`): RawNode, the WAL (group commit), ticks, ReadIndex, log compaction;
//! - `apply` (`apply.rs`): the MVCC store, replies to proposals, view publishing, checkpoints;
//!   on the leader, the lease clock (`lease.rs`): expiry, TTL checkpoints, keepalives; the
//!   maintenance requests that need the store (`maintenance.rs`): a snapshot after a fresh
//!   checkpoint, defragmentation by the tree's online reclamation, the keyspace's hash;
//! - HTTP on `--listen-metrics-urls` (`http.rs`), on threads of its own: `/metrics` from what
//!   the roles measure (`metrics.rs`) and `/proc` (`procfs.rs`), `/health`, `/livez`,
//!   `/readyz`, `/version`.
//!
//! Roles talk through bounded flume channels; `placement.rs` maps them onto executors.
//! Start: the raft role opens the WAL (its lock guards the data directory), then the apply
//! role opens the store, then the log is applied up to its end, and only then do the net
//! shards accept. Stop (SIGTERM, SIGINT): the net shards refuse new work, the raft role
//! finishes what it accepted, the apply role checkpoints, the WAL closes, then replies
//! still in flight are written and the executors exit.

mod alarm;
mod apply;
mod cluster;
mod conn;
mod front;
mod grpc;
mod http;
mod lease;
mod lock;
mod mailbox;
mod maintenance;
mod metrics;
mod peer;
mod placement;
mod procfs;
mod raft;
mod read_buf;
mod replies;
mod watch;

pub(crate) use raft::tree_meets_log;

pub use cluster::{
    cluster_id, member_id, ClusterConfig, ClusterState, Identity, Metadata, PeerInfo,
};
pub use peer::snapshot_file;
pub use placement::{usable_cpus, ExecutorPlan, Placement, PlacementMode};

use crate::mvcc::ReadView;
use crate::node::NodeError;
use crate::protocol::StatusResponse;
use parking_lot::Mutex;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

/// What a native frame may hold beyond `--max-request-bytes` (the envelope around a
/// request's fields).
pub const REQUEST_ENVELOPE_BYTES: u32 = 4096;

/// Everything `cairn serve` is configured with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_native_addr: String,
    /// URLs the etcd v3 gRPC API listens on (`http://host:port`; port 0: any free port).
    /// None: no gRPC API.
    pub listen_client_urls: Vec<String>,
    /// The gRPC URLs the member list gives clients; empty: the listen URLs as bound.
    pub advertise_client_urls: Vec<String>,
    /// Largest request payload, in bytes: `--max-request-bytes` plus
    /// [`REQUEST_ENVELOPE_BYTES`].
    pub max_request_bytes: u32,
    pub max_txn_ops: usize,
    pub heartbeat_interval_ms: u64,
    /// Must be at least 5 heartbeat intervals (etcd's rule).
    pub election_timeout_ms: u64,
    /// Requests in flight on one connection beyond which it gets Overloaded replies.
    pub max_inflight_per_conn: usize,
    /// How long a connection may hold part of a frame without more of it arriving before
    /// it is closed (an idle connection, with nothing of a frame read, stays open).
    pub partial_frame_timeout: std::time::Duration,
    /// Called on a net shard's thread a moment after connections closed (once for a burst
    /// of closes), to give the memory they freed back to the OS: how is the global
    /// allocator's business, so the binary that chose it says. `None`: nothing is called.
    pub release_memory: Option<fn()>,
    /// Proposals waiting for the raft loop, for the whole member.
    pub max_pending_proposals: usize,
    pub placement: Placement,
    /// Applied entries after which the tree is checkpointed (and the log compacted), as
    /// etcd's `--snapshot-count`; the tree's memory budget may checkpoint sooner.
    pub snapshot_count: u64,
    /// Entries a member of a cluster keeps behind a checkpoint for followers that lag a
    /// little (etcd's `SnapshotCatchUpEntries`, 5,000); further behind, they get a snapshot.
    pub snapshot_catch_up_entries: u64,
    /// Size of each new WAL segment file.
    pub wal_segment_bytes: u64,
    /// Writes that add data are refused once the tree's live bytes exceed this (0: no
    /// quota), as etcd's `--quota-backend-bytes`.
    pub quota_backend_bytes: u64,
    /// How often watchers that asked for progress notifications and were sent nothing
    /// get the member's revision (etcd's `--experimental-watch-progress-notify-interval`).
    pub watch_progress_notify_ms: u64,
    /// How often the leader checkpoints the leases' remaining TTLs through the log, so that
    /// a restart does not give them their whole TTL again (etcd's
    /// `--experimental-lease-checkpoint-interval`, 5 minutes).
    pub lease_checkpoint_interval_ms: u64,
    /// `http://host:port` URLs serving `/metrics`, `/health`, `/livez`, `/readyz` and
    /// `/version` (etcd's `--listen-metrics-urls`); none by default.
    pub listen_metrics_urls: Vec<String>,
    /// gRPC keepalive, as etcd's flags set it.
    pub grpc_keepalive: GrpcKeepalive,
    pub cluster: ClusterConfig,
}

/// gRPC keepalive on the client URLs, as etcd configures its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcKeepalive {
    /// A client that pings more often than this is sent GOAWAY "too_many_pings" and closed
    /// (etcd's `--grpc-keepalive-min-time`).
    pub min_time: std::time::Duration,
    /// A connection silent this long is pinged (`--grpc-keepalive-interval`)...
    pub interval: std::time::Duration,
    /// ...and closed if the ping is not answered within this (`--grpc-keepalive-timeout`).
    pub timeout: std::time::Duration,
}

impl Default for GrpcKeepalive {
    /// etcd's defaults: 5 s, 2 h, 20 s.
    fn default() -> Self {
        GrpcKeepalive {
            min_time: std::time::Duration::from_secs(5),
            interval: std::time::Duration::from_secs(2 * 60 * 60),
            timeout: std::time::Duration::from_secs(20),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Config(String),
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}{}", listen_hint(source))]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error(
        "cannot start the executor: {0} (io_uring needs enough locked memory: raise `ulimit -l`)"
    )]
    Executor(String),
    #[error(transparent)]
    Wal(#[from] crate::wal::WalError),
    #[error(transparent)]
    Mvcc(#[from] crate::mvcc::MvccError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("the log could not be applied at start (this member did not become leader)")]
    CatchUp,
    /// etcd's words for it.
    #[error("the member has been permanently removed from the cluster")]
    Removed,
    #[error("the apply role failed: {0}")]
    Apply(String),
    #[error("the {0} role stopped unexpectedly")]
    RoleLost(&'static str),
}

fn listen_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            " (another process uses the port; choose another with --listen-native-addr or --listen-peer-urls)"
        }
        _ => " (--listen-native-addr takes host:port, such as 127.0.0.1:2378; --listen-peer-urls a URL, such as http://127.0.0.1:2380)",
    }
}

/// Set by SIGTERM/SIGINT. A signal handler can only reach a static; [`serve`] passes it on
/// to its member's own stop flag, so that members run in one process do not share one.
static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::Relaxed);
}

/// How often [`serve`] looks for a signal to pass on.
const SIGNAL_POLL: std::time::Duration = std::time::Duration::from_millis(20);

fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, handler);
        libc::signal(libc::SIGINT, handler);
    }
}

/// A write waiting for the raft role, answered by the apply role.
pub(crate) struct Proposal {
    /// The log command ([`crate::node::command`]).
    pub command: Vec<u8>,
    pub reply: Reply,
}

pub(crate) use mailbox::Reply;

/// What the net shards and the apply role hand to the raft role.
pub(crate) enum Input {
    Propose(Proposal),
    /// A linearizable read: signalled once the published view holds everything committed
    /// before the read arrived (ReadIndex, one per batch of waiting reads).
    Read(flume::Sender<()>),
    /// The store is durable up to this index and term: the log and the WAL before it may
    /// go, and snapshots for lagging followers hold it.
    Checkpointed(u64, u64),
    /// A snapshot sent to this member finished (true) or failed.
    SnapshotSent(u64, bool),
    /// Raft messages from a peer.
    Peer(Vec<::raft::eraftpb::Message>),
    /// Hand leadership to this member; answered once it leads, or why not.
    MoveLeader(u64, flume::Sender<Result<(), String>>),
    /// List or change the members; answered once the change is applied, or why not.
    Member(crate::protocol::MemberRequest, MemberReply),
    /// A peer refused this member's connection because the cluster removed it.
    Removed(String),
    /// A snapshot for a follower needs a newer checkpoint than the store has.
    CheckpointWanted,
    /// A lease keepalive, time-to-live or list, for the apply role (keepalives and
    /// time-to-live are refused at once by a member that does not lead).
    Lease(crate::lease::LeaseRequest, LeaseReply),
    /// A lease command the apply role proposes as leader (an expired lease's revoke, a
    /// checkpoint of remaining TTLs): proposed only if this member still leads, never
    /// forwarded to another leader, whose clock may disagree.
    LeasePropose(Proposal),
}

/// Answers a lease request that does not go through the log.
pub(crate) type LeaseReply =
    flume::Sender<Result<crate::lease::LeaseResponse, (crate::protocol::ErrorCode, String)>>;

/// Answers a member request.
pub(crate) type MemberReply =
    flume::Sender<Result<crate::protocol::MemberResponse, (crate::protocol::ErrorCode, String)>>;

/// What the raft role hands to the apply role, in log order.
pub(crate) enum ToApply {
    /// Committed entries, and the replies owed for the proposals among them, in log order.
    Entries(
        Vec<::raft::eraftpb::Entry>,
        Vec<(crate::node::ProposalId, Reply)>,
    ),
    /// Reads to release once the published view has applied this index.
    Reads(u64, Vec<flume::Sender<()>>),
    /// Replace the store with a snapshot's tree file (received from the leader) that holds
    /// everything through this index; answered once it is installed and durable.
    Install(PathBuf, u64, flume::Sender<Result<(), String>>),
    /// Checkpoint soon, even with nothing new to apply (a follower needs a snapshot of
    /// what is applied now).
    Checkpoint,
    /// Checkpoint and stop.
    Stop,
    /// This member leads, and has applied every entry of earlier terms (true), or no longer
    /// leads (false): the lease clock starts (extending every lease) or forgets its
    /// deadlines.
    Leader(bool),
    /// A heartbeat interval passed on the leader: expire leases, checkpoint TTLs if due.
    LeaseTick,
    /// A lease keepalive, time-to-live or list to answer.
    Lease(crate::lease::LeaseRequest, LeaseReply),
}

/// Where the member is in its life; net shards accept only while serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Phase {
    Starting = 0,
    Serving = 1,
    /// No new work is accepted; what was accepted is being finished.
    Stopping = 2,
    /// The WAL is closed and the store checkpointed: write the last replies and exit.
    Stopped = 3,
}

/// What every executor of the member shares.
pub(crate) struct Shared {
    pub config: ServeConfig,
    pub inputs: flume::Sender<Input>,
    /// The same queue's other end, for refusing what is left in it once the member stops.
    pub queued: flume::Receiver<Input>,
    phase: AtomicU8,
    /// The latest published view, and its generation (net shards cache it per shard).
    view: Mutex<Option<ReadView>>,
    view_generation: AtomicU64,
    pub status: Mutex<StatusResponse>,
    /// What counts against `--quota-backend-bytes`: the tree's live bytes plus the changes
    /// not yet checkpointed.
    pub quota_used: AtomicU64,
    pub alarms: alarm::Alarms,
    /// The tree file up to its last durable checkpoint, for followers that need a snapshot.
    pub snapshot: Mutex<Option<Arc<crate::btree::Snapshot>>>,
    /// The membership as applied (published by the raft role): what a joining member is
    /// told, and who is refused as removed.
    pub membership: Mutex<crate::raftlog::Membership>,
    /// Watch requests, connection closes and lock contenders for the apply role.
    pub client_inputs: flume::Sender<watch::ClientInput>,
    /// Set to stop the member (by its owner, a signal, or a failed role): it drains, syncs
    /// and exits.
    pub stop: Arc<AtomicBool>,
    /// Ids for grants that ask for none; set once the member's id is known.
    pub lease_ids: std::sync::OnceLock<crate::lease::LeaseIds>,
    /// The client URLs this member publishes: its gRPC URLs and its native address.
    pub client_urls: Vec<String>,
    /// What the roles measure, for `/metrics`.
    pub metrics: metrics::Metrics,
}

impl Shared {
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Serving,
            2 => Phase::Stopping,
            _ => Phase::Stopped,
        }
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.fetch_max(phase as u8, Ordering::AcqRel);
    }

    pub fn publish_view(&self, view: ReadView) {
        *self.view.lock() = Some(view);
        self.view_generation.fetch_add(1, Ordering::Release);
    }

    pub fn view_generation(&self) -> u64 {
        self.view_generation.load(Ordering::Acquire)
    }

    pub fn view(&self) -> Option<ReadView> {
        self.view.lock().clone()
    }

    /// The shortest TTL a lease is granted, in seconds (etcd's `minTTL`).
    pub fn min_lease_ttl_s(&self) -> i64 {
        crate::lease::min_ttl_s(
            self.config.election_timeout_ms,
            self.config.heartbeat_interval_ms,
        )
    }

    /// The member's status, with its raised alarms as etcd lists them.
    pub fn status(&self) -> StatusResponse {
        let mut status = self.status.lock().clone();
        let alarms = self.alarms.list(status.member_id);
        status.errors = alarms.iter().map(|a| a.to_string()).collect();
        status
    }
}

/// Renames `from` to `to` and makes the rename durable (syncs `to`'s directory): how a
/// received snapshot's tree file becomes ready, and then the store.
pub(crate) fn rename_durably(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::rename(from, to)?;
    match to.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

/// Answers what waits in the input queue and was never proposed: "stopping".
pub(crate) fn refuse_queued(inputs: &flume::Receiver<Input>) {
    for input in inputs.drain() {
        match input {
            Input::Propose(p) => p.reply.send(Err(NodeError::Stopping)),
            Input::Read(waiter) => drop(waiter), // answered Unavailable
            Input::Checkpointed(..) | Input::Peer(_) | Input::SnapshotSent(..) => {}
            Input::MoveLeader(_, reply) => {
                let _ = reply.send(Err(NodeError::Stopping.to_string()));
            }
            Input::Member(_, reply) => {
                let _ = reply.send(Err((
                    crate::protocol::ErrorCode::Unavailable,
                    NodeError::Stopping.to_string(),
                )));
            }
            Input::Removed(_) | Input::CheckpointWanted => {}
            Input::Lease(_, reply) => {
                let _ = reply.send(Err((
                    crate::protocol::ErrorCode::Unavailable,
                    NodeError::Stopping.to_string(),
                )));
            }
            Input::LeasePropose(p) => p.reply.send(Err(NodeError::Stopping)),
        }
    }
}

/// Waits, polling every `every`, until `done` holds.
pub(crate) async fn wait_until(every: std::time::Duration, mut done: impl FnMut() -> bool) {
    while !done() {
        glommio::timer::sleep(every).await;
    }
}

/// Polling while starting or draining: short, these waits are brief.
pub(crate) const POLL_BRIEF: std::time::Duration = std::time::Duration::from_millis(1);
/// Polling for the member to stop: an idle member must not spin.
pub(crate) const POLL_IDLE: std::time::Duration = std::time::Duration::from_millis(50);

/// Runs a member until SIGTERM or SIGINT.
pub fn serve(config: ServeConfig) -> Result<(), ServerError> {
    // A member started again in the same process starts afresh.
    SIGNALLED.store(false, Ordering::Relaxed);
    install_signal_handlers();
    let stop = Arc::new(AtomicBool::new(false));
    let member_stop = stop.clone();
    let done = Arc::new(AtomicBool::new(false));
    let member_done = done.clone();
    let relay = std::thread::Builder::new()
        .name("cairn-signals".into())
        .spawn(move || {
            while !member_done.load(Ordering::Relaxed) {
                if SIGNALLED.load(Ordering::Relaxed) {
                    member_stop.store(true, Ordering::Relaxed);
                }
                std::thread::sleep(SIGNAL_POLL);
            }
        })
        .map_err(|e| ServerError::Executor(e.to_string()))?;
    let result = serve_until(config, stop);
    done.store(true, Ordering::Relaxed);
    let _ = relay.join();
    result
}

/// Runs a member until `stop` is set (by the caller, or by the member itself when a role
/// fails). Installs no signal handler: many members may run in one process.
pub fn serve_until(config: ServeConfig, stop: Arc<AtomicBool>) -> Result<(), ServerError> {
    if config.heartbeat_interval_ms == 0
        || config.election_timeout_ms < 5 * config.heartbeat_interval_ms
    {
        return Err(ServerError::Config(format!(
            "--election-timeout[{}ms] should be at least as 5 times as --heartbeat-interval[{}ms]",
            config.election_timeout_ms, config.heartbeat_interval_ms
        )));
    }
    let plan = config
        .placement
        .layout(&usable_cpus())
        .map_err(ServerError::Config)?;
    // A new data directory takes its identity from the cluster flags: check them before
    // anything starts (the raft role writes the identity once it holds the WAL's lock).
    let wal_dir = config.data_dir.join("wal");
    let is_new = std::fs::read_dir(&wal_dir).map_or(true, |mut d| d.next().is_none());
    if is_new {
        match config.cluster.state {
            ClusterState::New => config.cluster.bootstrap(&config.name).map(|_| ()),
            ClusterState::Existing => config.cluster.join_targets(&config.name).map(|_| ()),
        }
        .map_err(ServerError::Config)?;
    }
    let dir_err = |path: &PathBuf| {
        let path = path.clone();
        move |source| ServerError::DataDir { path, source }
    };
    // Ports first: a start that cannot listen leaves nothing on disk.
    let mut listeners = bind_listeners(&config.listen_native_addr, plan.len())?.into_iter();
    let peer_listeners = config
        .cluster
        .listen_peer_urls
        .iter()
        .map(|url| {
            let addr = cluster::listen_addr(url);
            retry_bind(|| TcpListener::bind(&addr)).map_err(|source| ServerError::Listen {
                addr: format!("{url} (--listen-peer-urls)"),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (grpc_listeners, grpc_urls) = grpc::bind(&config)?;
    let http_listeners = http::bind(&config.listen_metrics_urls)?;
    let db_dir = config.data_dir.join("db");
    std::fs::create_dir_all(&db_dir).map_err(dir_err(&db_dir))?;

    let (inputs_tx, inputs_rx) = flume::bounded(config.max_pending_proposals);
    let (apply_tx, apply_rx) = flume::bounded(APPLY_QUEUE_MAX);
    let (watch_tx, watch_rx) = flume::bounded(watch::WATCH_INPUTS_MAX);
    let shared = Arc::new(Shared {
        config: config.clone(),
        inputs: inputs_tx,
        queued: inputs_rx.clone(),
        phase: AtomicU8::new(Phase::Starting as u8),
        view: Mutex::new(None),
        view_generation: AtomicU64::new(0),
        status: Mutex::new(StatusResponse::default()),
        quota_used: AtomicU64::new(0),
        alarms: alarm::Alarms::default(),
        snapshot: Mutex::new(None),
        membership: Mutex::new(Default::default()),
        client_inputs: watch_tx,
        stop,
        lease_ids: std::sync::OnceLock::new(),
        client_urls: front::published_client_urls(&config, &grpc_urls),
        metrics: metrics::Metrics::new(plan.clone()),
    });
    // Stops (its acceptors) when dropped, once the executors are gone or failed to start.
    let http_server = http::HttpServer::start(http_listeners, &shared)?;
    let (store_tx, store_rx) = flume::bounded(1);
    let (wal_open_tx, wal_open_rx) = flume::bounded(1);
    let mut raft_role = Some(raft::RaftRole {
        peer_listeners,
        inputs: inputs_rx,
        to_apply: apply_tx,
        wal_opened: Some(wal_open_tx),
        store_opened: store_rx,
    });
    let mut apply_role = Some(apply::ApplyRole {
        from_raft: apply_rx,
        client_inputs: watch_rx,
        wal_opened: wal_open_rx,
        store_opened: store_tx,
    });
    let grpc_thread = if grpc_listeners.is_empty() {
        None
    } else {
        match grpc::start(shared.clone(), grpc_listeners, http_server.handoff()) {
            Ok(t) => Some(t),
            Err(e) => {
                shared.set_phase(Phase::Stopped);
                return Err(e);
            }
        }
    };
    let mut handles = Vec::new();
    for (i, p) in plan.iter().enumerate() {
        let placement = match p.cpu {
            Some(cpu) => glommio::Placement::Fixed(cpu),
            None => glommio::Placement::Unbound,
        };
        let listener = if p.net { listeners.next() } else { None };
        let raft = if p.raft { raft_role.take() } else { None };
        let apply = if p.apply { apply_role.take() } else { None };
        let on_executor = shared.clone();
        let handle = glommio::LocalExecutorBuilder::new(placement)
            .name(&format!("cairn-{i}"))
            .spawn(move || executor(on_executor, listener, raft, apply))
            .map_err(|e| {
                shared.request_stop();
                ServerError::Executor(e.to_string())
            });
        match handle {
            Ok(h) => handles.push(h),
            Err(e) => {
                // Roles not started: the others see their channels close and stop.
                drop(raft_role.take());
                drop(apply_role.take());
                shared.set_phase(Phase::Stopped);
                for h in handles {
                    let _ = h.join();
                }
                if let Some(t) = grpc_thread {
                    let _ = t.join();
                }
                return Err(e);
            }
        }
    }
    let mut result = Ok(());
    for h in handles {
        let r = h
            .join()
            .map_err(|e| ServerError::Executor(e.to_string()))
            .and_then(|r| r);
        if let (Ok(()), Err(e)) = (&result, r) {
            result = Err(e);
        }
    }
    // The executors are done: a gRPC thread still waiting for the member to serve (a start
    // that failed) sees it stopped.
    shared.set_phase(Phase::Stopped);
    drop(shared);
    if let Some(t) = grpc_thread {
        if t.join().is_err() && result.is_ok() {
            result = Err(ServerError::RoleLost("gRPC"));
        }
    }
    result
}

/// Committed batches waiting for the apply role.
const APPLY_QUEUE_MAX: usize = 1024;

/// One executor: its roles, until the member stops.
async fn executor(
    shared: Arc<Shared>,
    listener: Option<TcpListener>,
    raft: Option<raft::RaftRole>,
    apply: Option<apply::ApplyRole>,
) -> Result<(), ServerError> {
    let _guard = PanicGuard(shared.clone());
    let raft = raft.map(|r| glommio::spawn_local(raft::run(r, shared.clone())));
    let apply = apply.map(|a| glommio::spawn_local(apply::run(a, shared.clone())));
    if let Some(l) = listener {
        conn::shard(l, shared.clone()).await;
    }
    let mut result = Ok(());
    if let Some(a) = apply {
        result = a.await;
    }
    if let Some(r) = raft {
        let r = r.await;
        if result.is_ok() {
            result = r;
        }
    }
    result
}

/// Stops the whole member if an executor panics (a bug): the other executors' roles wait for
/// phases that the panicked one would never set.
struct PanicGuard(Arc<Shared>);

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.request_stop();
            self.0.set_phase(Phase::Stopped);
        }
    }
}

/// Binds one SO_REUSEPORT listener per net shard. A plain bind first: SO_REUSEPORT alone
/// would let this member share a port with another process (or with the listener a killed
/// member left behind), which would then take a share of the connections.
fn bind_listeners(addr: &str, shards: usize) -> Result<Vec<TcpListener>, ServerError> {
    let listen_err = |source| ServerError::Listen {
        addr: addr.to_string(),
        source,
    };
    let probe = retry_bind(|| probe_bind(addr)).map_err(listen_err)?;
    let local = probe
        .local_addr()
        .map_err(listen_err)?
        .as_socket()
        .ok_or_else(|| listen_err(std::io::ErrorKind::InvalidInput.into()))?;
    drop(probe);
    (0..shards)
        .map(|_| reuseport_listener(local).map_err(listen_err))
        .collect()
}

/// How long a bind is retried while its port is in use.
const BIND_RETRY: std::time::Duration = std::time::Duration::from_secs(3);

/// Runs `bind` until it succeeds, fails for another reason than the port being in use, or
/// [`BIND_RETRY`] has passed. A member that exited or was killed a moment ago can hold its
/// listening sockets a little longer: the kernel closes them when it tears down the
/// process's io_uring instances, after the process is gone.
fn retry_bind<T>(mut bind: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    let deadline = std::time::Instant::now() + BIND_RETRY;
    loop {
        match bind() {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Binds `addr` without SO_REUSEPORT and without listening: fails if anything holds the
/// port, and no client can connect to it in the moment before the real listeners exist.
fn probe_bind(addr: &str) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Socket, Type};
    use std::net::ToSocketAddrs;
    let mut last = std::io::Error::from(std::io::ErrorKind::InvalidInput);
    for a in addr.to_socket_addrs()? {
        let socket = Socket::new(Domain::for_address(a), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        match socket.bind(&a.into()) {
            Ok(()) => return Ok(socket),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}
