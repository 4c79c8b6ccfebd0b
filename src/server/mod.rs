//! `cairn serve`: one member on a glommio executor. The shell around [`Node`]: the WAL (group
//! commit), the raft loop (ticks, proposals, ready rounds), the native protocol listener,
//! serializable reads from the latest published [`ReadView`], and clean shutdown.

mod conn;

use crate::btree::DbOptions;
use crate::mvcc::{ReadView, Response, Store};
use crate::node::{Node, NodeError};
use crate::raftlog::RaftLog;
use crate::wal::{RecordType, Wal, WalOptions};
use raft::eraftpb::ConfState;
use std::cell::RefCell;
use std::collections::HashMap;
use std::os::unix::io::{FromRawFd, IntoRawFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Everything `cairn serve` is configured with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_native_addr: String,
    /// Largest request payload, in bytes.
    pub max_request_bytes: u32,
    pub max_txn_ops: usize,
    pub heartbeat_interval_ms: u64,
    /// Must be at least 5 heartbeat intervals (etcd's rule).
    pub election_timeout_ms: u64,
    /// Requests in flight on one connection beyond which it gets Overloaded replies.
    pub max_inflight_per_conn: usize,
    /// Proposals waiting for the raft loop, for the whole member.
    pub max_pending_proposals: usize,
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
}

fn listen_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            " (another process uses the port; choose another with --listen-native-addr)"
        }
        _ => " (--listen-native-addr takes host:port, such as 127.0.0.1:2378)",
    }
}

/// Set by SIGTERM/SIGINT: the raft loop finishes its round, syncs and exits.
pub static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, handler);
        libc::signal(libc::SIGINT, handler);
    }
}

/// A write waiting for the raft loop.
pub(crate) struct Proposal {
    pub payload: Vec<u8>,
    pub reply: flume::Sender<Result<Response, NodeError>>,
}

/// What connections hand to the raft loop.
pub(crate) enum Input {
    Propose(Proposal),
    /// A linearizable read: signalled once the published view holds everything committed
    /// before the read arrived (ReadIndex, one per batch of waiting reads).
    Read(flume::Sender<()>),
}

type Replies = HashMap<u64, flume::Sender<Result<Response, NodeError>>>;

/// Requests the raft loop owes an answer.
#[derive(Default)]
struct Pending {
    writes: Replies,
    /// Read batches waiting for their read index, by token.
    reads: HashMap<u64, Vec<flume::Sender<()>>>,
    /// Read batches with a confirmed index, waiting for apply to reach it.
    confirmed: Vec<(u64, Vec<flume::Sender<()>>)>,
}

/// What connections share with the raft loop.
pub(crate) struct Shared {
    pub config: ServeConfig,
    pub view: RefCell<ReadView>,
    pub proposals: flume::Sender<Input>,
    pub status: RefCell<crate::protocol::StatusResponse>,
}

/// Runs a member until SIGTERM or SIGINT.
pub fn serve(config: ServeConfig) -> Result<(), ServerError> {
    if config.heartbeat_interval_ms == 0
        || config.election_timeout_ms < 5 * config.heartbeat_interval_ms
    {
        return Err(ServerError::Config(format!(
            "--election-timeout[{}ms] should be at least as 5 times as --heartbeat-interval[{}ms]",
            config.election_timeout_ms, config.heartbeat_interval_ms
        )));
    }
    install_signal_handlers();
    let dir_err = |path: &PathBuf| {
        let path = path.clone();
        move |source| ServerError::DataDir { path, source }
    };
    let db_dir = config.data_dir.join("db");
    std::fs::create_dir_all(&db_dir).map_err(dir_err(&db_dir))?;
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("cairn")
        .make()
        .map_err(|e| ServerError::Executor(e.to_string()))?;
    executor.run(run(config))
}

async fn run(config: ServeConfig) -> Result<(), ServerError> {
    let log = RaftLog::new(ConfState {
        voters: vec![1],
        ..Default::default()
    });
    let mut replayed = 0u64;
    let replay_log = log.clone();
    let wal = Wal::open(
        config.data_dir.join("wal"),
        WalOptions::default(),
        0,
        |_, t, p| {
            replayed += 1;
            replay_log.replay(t, p).map_err(Into::into)
        },
    )
    .await?;
    if replayed == 0 {
        let (t, p) = log.marker_record();
        wal.append(t, &p).await?;
    }
    // Only after the WAL holds its directory lock: two members must never share a tree file.
    let store = Store::open(
        config.data_dir.join("db").join("cairn.db"),
        DbOptions::default(),
    )?;
    // One plain listener, handed to glommio. glommio's own `bind` sets SO_REUSEPORT (so a
    // second member could bind a port already in use) and panics on an unresolvable address;
    // a plain bind refuses both clearly, and holding it leaves no moment without a listener.
    let std_listener =
        std::net::TcpListener::bind(&config.listen_native_addr).map_err(|source| {
            ServerError::Listen {
                addr: config.listen_native_addr.clone(),
                source,
            }
        })?;
    // SAFETY: the descriptor is a bound, listening TCP socket whose ownership moves here.
    let listener = unsafe { glommio::net::TcpListener::from_raw_fd(std_listener.into_raw_fd()) };
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let election_tick = (config.election_timeout_ms / config.heartbeat_interval_ms.max(1)) as usize;
    let mut node = Node::open(1, election_tick, store, log, &logger)?;
    node.campaign()?;
    catch_up(&mut node, &wal).await?;
    let (tx, rx) = flume::bounded(config.max_pending_proposals);
    let shared = Rc::new(Shared {
        view: RefCell::new(node.store().read_view()),
        proposals: tx,
        status: RefCell::new(Default::default()),
        config: config.clone(),
    });
    tracing::info!(
        name = %config.name,
        addr = %config.listen_native_addr,
        revision = node.store().current_revision(),
        wal_records = replayed,
        "serving"
    );
    let accept = glommio::spawn_local(conn::accept_loop(listener, shared.clone()));
    let result = raft_loop(&mut node, &wal, &rx, &shared).await;
    if let Err(e) = &result {
        tracing::error!(error = %e, "stopping: the raft loop failed");
    }
    drop(accept);
    // Finish what was accepted into the log, then make it all durable in the tree too.
    let checkpoint = node.store_mut().checkpoint();
    wal.close().await?;
    result?;
    checkpoint?;
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn raft_loop(
    node: &mut Node,
    wal: &Wal,
    rx: &flume::Receiver<Input>,
    shared: &Shared,
) -> Result<(), ServerError> {
    let tick = Duration::from_millis(shared.config.heartbeat_interval_ms.max(1));
    let mut next_tick = Instant::now() + tick;
    let mut pending = Pending::default();
    let mut token = 0u64;
    while !STOP.load(Ordering::Relaxed) {
        let wait = next_tick
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(50));
        let first = futures_lite::future::or(async { rx.recv_async().await.ok() }, async {
            glommio::timer::sleep(wait).await;
            None
        })
        .await;
        let mut reads = Vec::new();
        for input in first
            .into_iter()
            .chain(rx.try_iter().take(shared.config.max_pending_proposals))
        {
            match input {
                Input::Read(waiter) => reads.push(waiter),
                Input::Propose(p) => {
                    token += 1;
                    match node.propose(token, p.payload) {
                        Ok(()) => {
                            pending.writes.insert(token, p.reply);
                        }
                        Err(e) => {
                            let _ = p.reply.send(Err(e));
                        }
                    }
                }
            }
        }
        if !reads.is_empty() {
            token += 1;
            // Not the leader: the waiters are dropped and their reads answered Unavailable.
            if node.read_index(token).is_ok() {
                pending.reads.insert(token, reads);
            }
        }
        if Instant::now() >= next_tick {
            node.tick();
            next_tick = Instant::now() + tick;
        }
        round(node, wal, &mut pending).await?;
        node.store_mut().maybe_checkpoint()?;
        publish(node, shared);
        // Only now does the published view hold what the confirmed reads must see.
        let applied = node.applied_index();
        pending.confirmed.retain(|(index, waiters)| {
            if *index > applied {
                return true;
            }
            for w in waiters {
                let _ = w.send(());
            }
            false
        });
    }
    Ok(())
}

/// Applies everything the log holds before the first client is served, so that no read
/// (serializable ones included) sees less than was acknowledged before a restart.
async fn catch_up(node: &mut Node, wal: &Wal) -> Result<(), ServerError> {
    let mut none = Pending::default();
    for _ in 0..1000 {
        round(node, wal, &mut none).await?;
        let (_, last) = node.last_log();
        if node.applied_index() >= last {
            return Ok(());
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    Err(ServerError::CatchUp)
}

/// Runs ready rounds until raft is idle: WAL append (group commit), then apply and reply.
async fn round(node: &mut Node, wal: &Wal, pending: &mut Pending) -> Result<(), ServerError> {
    while let Some(work) = node.next_ready()? {
        let records: Vec<(RecordType, &[u8])> = work
            .records
            .iter()
            .map(|(t, p)| (*t, p.as_slice()))
            .collect();
        if !records.is_empty() {
            wal.append_many(&records).await?;
        }
        let done = node.on_persisted(work)?;
        for (token, result) in done.results {
            if let Some(reply) = pending.writes.remove(&token) {
                let _ = reply.send(result);
            }
        }
        for (token, index) in done.reads {
            if let Some(waiters) = pending.reads.remove(&token) {
                pending.confirmed.push((index, waiters));
            }
        }
    }
    Ok(())
}

fn publish(node: &Node, shared: &Shared) {
    let store = node.store();
    shared.view.replace(store.read_view());
    let (term, index) = node.last_log();
    let stats = store.stats();
    *shared.status.borrow_mut() = crate::protocol::StatusResponse {
        member_id: 1,
        leader: if node.is_leader() { 1 } else { 0 },
        raft_term: term,
        raft_index: index,
        raft_applied_index: store.applied().index,
        revision: store.current_revision(),
        db_size: stats.file_bytes,
        db_size_in_use: stats.live_bytes,
    };
}
