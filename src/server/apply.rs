//! The apply role: owns the MVCC store, applies committed entries in log order, answers the
//! proposals among them, publishes the view serializable reads use, releases linearizable
//! reads, and checkpoints the tree (telling the raft role, which then compacts the log).

use super::{Input, Reply, ServerError, Shared, ToApply};
use crate::btree::DbOptions;
use crate::mvcc::{Store, COMPACTION_STEP_RECORDS};
use crate::node::{apply_committed, ProposalId};
use crate::watch::{HubConfig, WatchHub};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Messages from the raft role taken in one go (then the view is published once).
const APPLY_BATCH_MAX: usize = 256;

pub(crate) struct ApplyRole {
    pub from_raft: flume::Receiver<ToApply>,
    /// Watch requests and lock contenders from the net shards' connections.
    pub client_inputs: flume::Receiver<super::watch::ClientInput>,
    pub wal_opened: flume::Receiver<()>,
    /// The store's applied index once open (or why not), then the final checkpoint's result.
    pub store_opened: flume::Sender<Result<u64, ServerError>>,
}

pub(crate) async fn run(role: ApplyRole, shared: Arc<Shared>) -> Result<(), ServerError> {
    // The WAL's lock guards the data directory: never open the tree file without it.
    if role.wal_opened.recv_async().await.is_err() {
        return Ok(()); // the raft role failed to start and reports why
    }
    let path = shared.config.data_dir.join("db").join("cairn.db");
    let mut store = match Store::open(path, DbOptions::default()) {
        Ok(store) => store,
        Err(e) => {
            let _ = role.store_opened.send(Err(e.into()));
            return Ok(());
        }
    };
    let _ = role.store_opened.send(Ok(store.applied().index));
    // What the store holds durably can be sent to a lagging follower at once.
    offer_checkpoint(&store, store.applied(), &shared);
    let mut leases = super::lease::Leases::new(&shared.config);
    let result = apply_loop(&mut store, &mut leases, &role, &shared).await;
    if result.is_err() {
        shared.request_stop();
    }
    // Everything applied becomes durable in the tree too, even after a failure elsewhere.
    // Without the space for it, the WAL still holds every entry applied: the next start
    // replays them.
    let result = result.and_then(|()| match store.checkpoint() {
        Err(e) if e.is_no_space() => {
            tracing::warn!(error = %e, "the final checkpoint failed for lack of space; the next start replays the WAL");
            Ok(())
        }
        other => Ok(other?),
    });
    let _ = role.store_opened.send(
        result
            .as_ref()
            .map(|_| 0)
            .map_err(|e| ServerError::Apply(e.to_string())),
    );
    result
}

async fn apply_loop(
    store: &mut Store,
    leases: &mut super::lease::Leases,
    role: &ApplyRole,
    shared: &Shared,
) -> Result<(), ServerError> {
    let mut applied = store.applied().index;
    let mut checkpointed = applied;
    // Entry bytes since the last checkpoint: the raft log holds them in memory until then.
    let mut log_bytes = 0u64;
    let mut reads: Vec<(u64, Vec<flume::Sender<()>>)> = Vec::new();
    let mut stop = false;
    let mut space = CheckpointSpace::new();
    // A compaction finished deleting since the last checkpoint.
    let mut compacted = false;
    // A follower needs a snapshot of what is applied now.
    let mut wanted = false;
    publish(store, applied, shared);
    // Checkpoints write their pages here and sync them on another thread.
    store.set_background_checkpoints(true);
    let mut hub = Hub::new(store, shared);
    while !stop {
        // With compaction deletions or watchers to feed, work on them between messages
        // instead of waiting; wake up to report a checkpoint once durable, or to try a
        // failed one again, even with nothing to apply.
        let wait = if store.compaction_backlog() > 0 || hub.catching_up {
            Some(std::time::Duration::ZERO)
        } else if store.checkpoint_pending() || hub.maintenance.pending() {
            Some(CHECKPOINT_POLL)
        } else if space.owed {
            Some(space.until_retry())
        } else {
            None
        };
        let first = match next_message(role, hub.wait(wait)).await {
            Next::Gone => break, // the raft role is gone
            Next::Raft(msg) => Some(msg),
            Next::Client(input) => {
                hub.handle(input, store)?;
                None
            }
            Next::Idle => None,
        };
        for input in role.client_inputs.try_iter().take(WATCH_BATCH_MAX) {
            hub.handle(input, store)?;
        }
        // Before applying: whether events must carry previous key-values.
        store.set_capture_prev(hub.hub.wants_prev());
        let more = role.from_raft.try_iter().take(APPLY_BATCH_MAX);
        let mut answers = Vec::new();
        let mut processed = false;
        let mut events = Vec::new();
        let mut batch_entries = 0u64;
        for msg in first.into_iter().chain(more) {
            processed = true;
            match msg {
                ToApply::Entries(entries, replies) => {
                    batch_entries += entries.len() as u64;
                    log_bytes += entries.iter().map(|e| e.data.len() as u64).sum::<u64>();
                    let out = apply_committed(store, &entries)?;
                    if let Some(last) = out.last_index {
                        applied = last;
                    }
                    events.extend(out.events);
                    leases.applied(&out.leases);
                    answers.push((out.results, replies));
                }
                ToApply::Reads(index, waiters) => reads.push((index, waiters)),
                ToApply::Install(file, index, done) => {
                    // The events applied before go out first; those the snapshot holds
                    // are read from its tree by the watchers, which all catch up.
                    hub.notify(store, &std::mem::take(&mut events))?;
                    let installed = install(store, &file, index, shared);
                    hub.resync(store)?;
                    if let Err(e) = &installed {
                        tracing::error!(error = %e, "installing a snapshot failed");
                    } else {
                        applied = index;
                        checkpointed = index;
                        log_bytes = 0;
                    }
                    let failed = installed.is_err();
                    let _ = done.send(installed);
                    if failed {
                        return Err(ServerError::Apply(
                            "a snapshot from the leader could not be installed".into(),
                        ));
                    }
                }
                ToApply::Checkpoint => wanted = true,
                ToApply::Stop => stop = true,
                ToApply::Leader(leading) => leases.leader(leading, store),
                ToApply::LeaseTick => leases.tick(shared),
                ToApply::Lease(req, reply) => leases.request(req, reply, store, shared),
            }
        }
        if batch_entries > 0 {
            shared.metrics.apply_batch_entries.observe(batch_entries);
        }
        if processed {
            publish(store, applied, shared);
            // Once the view holds them: a watcher that sees an event can read it.
            hub.notify(store, &events)?;
        }
        hub.step(store)?;
        shared
            .metrics
            .watchers
            .store(hub.hub.len() as u64, Ordering::Relaxed);
        // Replies only once the view holds the writes: a client that reads what it wrote,
        // even serializably from any shard, sees it.
        for (results, replies) in answers {
            answer(results, replies);
        }
        // Only now does the published view hold what the confirmed reads must see.
        reads.retain(|(index, waiters)| {
            if *index > applied {
                return true;
            }
            for w in waiters {
                let _ = w.send(());
            }
            false
        });
        if stop {
            break;
        }
        let compacting = store.compaction_backlog() > 0;
        let started = std::time::Instant::now();
        // One step of compaction deletions, and a checkpoint if one is due: by the memory
        // budget, the entry count, the log's bytes, or a compaction that finished deleting
        // (so that the space it freed counts, against the quota too, without waiting for
        // more writes). Compaction deletions copy pages into memory: not while checkpoints
        // fail for space (nothing would give that memory back).
        if !space.owed {
            store.compact_step(COMPACTION_STEP_RECORDS)?;
        }
        compacted |= compacting && store.compaction_backlog() == 0;
        let due = store.over_memory_budget()
            || applied.saturating_sub(checkpointed) >= shared.config.snapshot_count
            || log_bytes >= LOG_BYTES_PER_CHECKPOINT_MAX
            || compacted
            || (wanted && applied > checkpointed)
            || hub.maintenance.checkpoint_due(store)
            || space.owed;
        let mut written = false;
        // A checkpoint still being written is waited for by the next one: report it first
        // (below) rather than block this executor on it.
        if due && space.may_try() && !store.checkpoint_pending() {
            match store.checkpoint_background() {
                Ok(()) => written = true,
                Err(e) if e.is_no_space() => space.failed(&e, shared),
                Err(e) => return Err(e.into()),
            }
        }
        if written {
            tracing::debug!(
                applied,
                ms = started.elapsed().as_secs_f64() * 1e3,
                "tree checkpoint written; syncing in the background"
            );
            checkpointed = applied;
            log_bytes = 0;
            compacted = false;
            wanted = false;
            publish(store, applied, shared); // the new sizes
        }
        match report_durable(store, shared) {
            Ok(true) => space.succeeded(),
            Ok(false) => {}
            Err(ServerError::Mvcc(e)) if e.is_no_space() => space.failed(&e, shared),
            Err(e) => return Err(e),
        }
        if let Some(took) = store.take_checkpoint_duration() {
            shared.metrics.backend_commit.observe_duration(took);
        }
        // After the checkpoint: a snapshot request may be answered by it, a defragment
        // request by the switch it made.
        hub.maintenance.step(store);
    }
    Ok(())
}

/// Checkpoints failing for lack of space: the NOSPACE alarm is raised, and the checkpoint
/// is tried again after a pause (growing while it keeps failing), not given up: the WAL
/// holds everything applied meanwhile, and writes that add data are refused.
struct CheckpointSpace {
    /// A checkpoint failed for space and is owed, whatever else says it is due.
    owed: bool,
    retry_at: std::time::Instant,
    pause: std::time::Duration,
}

const CHECKPOINT_RETRY_MIN: std::time::Duration = std::time::Duration::from_millis(100);
const CHECKPOINT_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(2);

impl CheckpointSpace {
    fn new() -> CheckpointSpace {
        CheckpointSpace {
            owed: false,
            retry_at: std::time::Instant::now(),
            pause: CHECKPOINT_RETRY_MIN,
        }
    }

    fn may_try(&self) -> bool {
        !self.owed || std::time::Instant::now() >= self.retry_at
    }

    fn until_retry(&self) -> std::time::Duration {
        self.retry_at
            .saturating_duration_since(std::time::Instant::now())
            .max(CHECKPOINT_POLL)
    }

    fn failed(&mut self, e: &crate::mvcc::MvccError, shared: &Shared) {
        shared
            .alarms
            .raise(crate::protocol::AlarmType::Nospace, || {
                format!("a tree checkpoint failed: {e}")
            });
        self.owed = true;
        self.retry_at = std::time::Instant::now() + self.pause;
        self.pause = (self.pause * 2).min(CHECKPOINT_RETRY_MAX);
    }

    fn succeeded(&mut self) {
        if self.owed {
            tracing::info!("a tree checkpoint succeeded: space is available again");
        }
        *self = CheckpointSpace::new();
    }
}

/// Watch requests taken in one go.
const WATCH_BATCH_MAX: usize = 1024;

/// What woke the apply role.
enum Next {
    Raft(ToApply),
    Client(super::watch::ClientInput),
    /// Nothing within the wait.
    Idle,
    /// The raft role is gone.
    Gone,
}

/// The next message from the raft role or a connection, waiting at most `wait` (none:
/// until one comes; zero: only a yield to the executor's other tasks).
async fn next_message(role: &ApplyRole, wait: Option<std::time::Duration>) -> Next {
    if let Ok(input) = role.client_inputs.try_recv() {
        return Next::Client(input);
    }
    match role.from_raft.try_recv() {
        Ok(msg) => return Next::Raft(msg),
        Err(flume::TryRecvError::Disconnected) => return Next::Gone,
        Err(flume::TryRecvError::Empty) => {}
    }
    if wait.is_some_and(|w| w.is_zero()) {
        futures_lite::future::yield_now().await;
        return Next::Idle;
    }
    let raft = async {
        match role.from_raft.recv_async().await {
            Ok(msg) => Next::Raft(msg),
            Err(_) => Next::Gone,
        }
    };
    let watch = async {
        match role.client_inputs.recv_async().await {
            Ok(input) => Next::Client(input),
            // Shared holds a sender as long as the member runs.
            Err(_) => std::future::pending().await,
        }
    };
    let timer = async {
        match wait {
            Some(wait) => {
                glommio::timer::sleep(wait).await;
                Next::Idle
            }
            None => std::future::pending().await,
        }
    };
    futures_lite::future::or(raft, futures_lite::future::or(watch, timer)).await
}

/// The watch hub and the lock contenders waiting, as the apply role runs them.
struct Hub {
    hub: WatchHub<super::watch::ConnSink>,
    locks: crate::lock::Waiters<super::watch::LockReply>,
    observers: crate::lock::Observers<super::watch::ObserveSink>,
    observers_swept: std::time::Instant,
    /// Unsynced watchers could be fed now: step again soon.
    catching_up: bool,
    /// Snapshot and defragment requests waiting for a checkpoint or a file switch.
    maintenance: super::maintenance::Waiting,
    started: std::time::Instant,
    progress_notify_ms: u64,
}

/// How often the observers of elections whose clients went away are forgotten.
const OBSERVERS_SWEEP: std::time::Duration = std::time::Duration::from_secs(1);

/// How often unsynced watchers whose connections had no room are looked at again.
const WATCH_RETRY: std::time::Duration = std::time::Duration::from_millis(10);

impl Hub {
    fn new(store: &Store, shared: &Shared) -> Hub {
        let config = HubConfig {
            response_bytes_max: shared.config.max_request_bytes as usize,
            progress_notify_ms: shared.config.watch_progress_notify_ms,
            ..HubConfig::default()
        };
        Hub {
            hub: WatchHub::new(config, store.current_revision(), store.compact_revision()),
            locks: crate::lock::Waiters::default(),
            observers: crate::lock::Observers::default(),
            observers_swept: std::time::Instant::now(),
            catching_up: false,
            maintenance: super::maintenance::Waiting::default(),
            started: std::time::Instant::now(),
            progress_notify_ms: shared.config.watch_progress_notify_ms,
        }
    }

    fn handle(
        &mut self,
        input: super::watch::ClientInput,
        store: &Store,
    ) -> Result<(), ServerError> {
        match input {
            super::watch::ClientInput::Watch(input) => {
                self.hub.handle(input);
                // A watcher from a past revision is fed at the next step.
                self.catching_up |= self.hub.unsynced() > 0;
            }
            super::watch::ClientInput::Lock(wait, reply) => {
                if let Some((reply, outcome)) = self.locks.add(wait, reply, store)? {
                    let _ = reply.send(outcome);
                }
            }
            super::watch::ClientInput::Observe(prefix, sink) => {
                self.observers.add(prefix, sink, store)?;
            }
            super::watch::ClientInput::Maintenance(input) => {
                self.maintenance.request(input, store);
            }
        }
        Ok(())
    }

    fn notify(&mut self, store: &Store, events: &[crate::mvcc::Event]) -> Result<(), ServerError> {
        self.hub
            .notify(events, store.current_revision(), store.compact_revision());
        if !self.locks.is_empty() {
            for (reply, outcome) in self.locks.on_events(events, store)? {
                let _ = reply.send(outcome);
            }
            // Contenders whose clients went away are forgotten.
            self.locks.retain(|reply| !reply.is_disconnected());
        }
        self.observers.on_events(events, store)?;
        Ok(())
    }

    fn resync(&mut self, store: &Store) -> Result<(), ServerError> {
        self.hub
            .resync(store.current_revision(), store.compact_revision());
        self.catching_up = self.hub.unsynced() > 0;
        for (reply, outcome) in self.locks.recheck_all(store)? {
            let _ = reply.send(outcome);
        }
        self.observers.recheck_all(store)?;
        Ok(())
    }

    /// One catch-up step (of watchers, and of observers that had no room) and the
    /// progress notifications due.
    fn step(&mut self, store: &Store) -> Result<(), ServerError> {
        self.catching_up = self.hub.unsynced() > 0 && self.hub.catch_up(store)?;
        self.hub.tick(self.started.elapsed().as_millis() as u64);
        if self.observers.any_behind() {
            self.observers.catch_up(store)?;
        }
        // Observers whose clients went away cost only a send that goes nowhere until then.
        if self.observers_swept.elapsed() >= OBSERVERS_SWEEP {
            self.observers.retain_live();
            self.observers_swept = std::time::Instant::now();
        }
        Ok(())
    }

    /// How long the apply role may wait for a message: `wait`, shortened while watchers
    /// or observers are behind (their connections may have room again) or watchers may be
    /// owed a progress notification.
    fn wait(&self, wait: Option<std::time::Duration>) -> Option<std::time::Duration> {
        let mut bound = None;
        if self.hub.unsynced() > 0 || self.observers.any_behind() {
            bound = Some(WATCH_RETRY);
        } else if !self.hub.is_empty() {
            let progress =
                std::time::Duration::from_millis(self.progress_notify_ms.clamp(10, 1000));
            bound = Some(progress);
        }
        match (wait, bound) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Entry bytes applied after which the tree is checkpointed (and so the log compacted),
/// whatever `--snapshot-count` says: the bound on the raft log's memory.
const LOG_BYTES_PER_CHECKPOINT_MAX: u64 = 64 << 20;

/// How often an idle apply role checks whether a background checkpoint is durable.
const CHECKPOINT_POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// Tells the raft role once a background checkpoint is durable: the log and the WAL up to
/// it may go. The position is what the tree holds: the last entry with a request (a new
/// leader's trailing empty entry is not recorded, so the log keeps it). Best effort: with a
/// full queue, the next checkpoint says it again.
fn report_durable(store: &mut Store, shared: &Shared) -> Result<bool, ServerError> {
    let Some(durable) = store.poll_checkpoint()? else {
        return Ok(false);
    };
    tracing::debug!(applied = durable.index, "tree checkpoint durable");
    offer_checkpoint(store, durable, shared);
    Ok(true)
}

/// The store is durable at `at`: snapshots for lagging followers hold it from now on, and
/// the raft role may compact the log behind it. Best effort: with a full queue, the next
/// checkpoint says it again.
fn offer_checkpoint(store: &Store, at: crate::mvcc::RaftPosition, shared: &Shared) {
    *shared.snapshot.lock() = Some(Arc::new(store.snapshot()));
    let _ = shared
        .inputs
        .try_send(Input::Checkpointed(at.index, at.term));
}

/// Replaces the store with a snapshot's tree file: the old file is replaced by a rename (as
/// readers of the old views still hold it open, they go on reading it), and the store is
/// opened over the new one (rebuilding its key index).
fn install(
    store: &mut Store,
    file: &std::path::Path,
    index: u64,
    shared: &Shared,
) -> Result<(), String> {
    let path = shared.config.data_dir.join("db").join("cairn.db");
    // Its newest commit only: the store is opened (its key index rebuilt) once, in place.
    let held = crate::btree::Db::inspect(file)
        .map_err(|e| e.to_string())?
        .commit
        .applied_index;
    if held != index {
        return Err(format!(
            "the snapshot's tree holds entries up to {held}, its raft message says {index}"
        ));
    }
    super::rename_durably(file, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut fresh = Store::open(&path, DbOptions::default()).map_err(|e| e.to_string())?;
    fresh.set_background_checkpoints(true);
    *store = fresh;
    publish(store, index, shared);
    *shared.snapshot.lock() = Some(Arc::new(store.snapshot()));
    tracing::info!(index, "installed a snapshot from the leader");
    Ok(())
}

/// Sends each proposal's result to whoever waits for it. Both lists are in log order, and
/// the replies are for a subset of the results' proposal ids.
fn answer(
    results: Vec<(
        ProposalId,
        Result<crate::mvcc::Response, crate::node::NodeError>,
    )>,
    replies: Vec<(ProposalId, Reply)>,
) {
    let mut replies = replies.into_iter().peekable();
    let mut deliveries = super::mailbox::Deliveries::default();
    for (id, result) in results {
        if let Some((_, reply)) = replies.next_if(|(r, _)| *r == id) {
            deliveries.add(reply, result);
        }
    }
    deliveries.send();
}

fn publish(store: &Store, applied: u64, shared: &Shared) {
    shared.publish_view(store.read_view());
    let stats = store.stats();
    let used = stats.live_bytes.saturating_add(store.uncommitted_bytes());
    shared.quota_used.store(used, Ordering::Relaxed);
    let mut status = shared.status.lock();
    status.raft_applied_index = applied;
    status.revision = store.current_revision();
    status.db_size = stats.file_bytes;
    status.db_size_in_use = stats.live_bytes;
}
