//! etcd's Maintenance requests that need the store itself, for both front ends: a fresh
//! snapshot (a checkpoint of everything applied so far, then the tree file up to it),
//! defragmentation (the tree's online space reclamation, answered once the member switched
//! to the compacted file) and the hash of the whole keyspace. The apply role owns the store:
//! a front end hands it a [`MaintenanceInput`] and awaits the answer; [`Waiting`] is the
//! apply role's side, answering each request once the checkpoint or the switch it waits for
//! has happened, while writes go on.

use super::front::{Failure, STOPPING};
use super::watch::ClientInput;
use super::Shared;
use crate::backup::{SnapshotPoint, SnapshotStream};
use crate::btree::Snapshot;
use crate::mvcc::{ReadView, Store};
use crate::protocol::ErrorCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Where the apply role answers a snapshot request.
pub(crate) type SnapshotReply = flume::Sender<Result<Arc<Snapshot>, String>>;

/// What a front end asks the apply role for.
pub(crate) enum MaintenanceInput {
    /// The tree as of a durable checkpoint holding everything applied when this came.
    Snapshot(SnapshotReply),
    /// Answered once a space reclamation started after this came has switched files.
    Defragment(flume::Sender<Result<(), String>>),
    /// The state to hash, taken at one point of the log.
    Hash(flume::Sender<HashBasis>),
}

/// Snapshot or defragment requests the apply role holds at once; more are refused (each
/// holds a client waiting, and a checkpoint or a reclamation answers them all alike).
const WAITERS_MAX: usize = 64;

/// Chunks a snapshot stream's reader thread reads ahead of the front end sending them: the
/// bound on a stream's memory beside the connection's own reply backlog.
const READ_AHEAD_CHUNKS: usize = 2;

/// Snapshot streams being read at once in this process (each has a thread).
const STREAMS_MAX: usize = 8;

static STREAMS: AtomicUsize = AtomicUsize::new(0);

/// Hands `input` to the apply role and waits for its answer.
async fn ask<T>(
    shared: &Shared,
    input: impl FnOnce(flume::Sender<T>) -> MaintenanceInput,
) -> Result<T, Failure> {
    let (tx, rx) = flume::bounded(1);
    shared
        .client_inputs
        .try_send(ClientInput::Maintenance(input(tx)))
        .map_err(|e| match e {
            flume::TrySendError::Full(_) => {
                (ErrorCode::Overloaded, "too many requests pending".into())
            }
            flume::TrySendError::Disconnected(_) => (ErrorCode::Unavailable, STOPPING.into()),
        })?;
    rx.recv_async()
        .await
        .map_err(|_| (ErrorCode::Unavailable, STOPPING.to_string()))
}

/// A snapshot holding everything this member applied before the call: the apply role
/// checkpoints (in the background, as it does anyway) and answers once that is durable.
pub(crate) async fn snapshot(shared: &Shared) -> Result<Arc<Snapshot>, Failure> {
    ask(shared, MaintenanceInput::Snapshot)
        .await?
        .map_err(|e| (ErrorCode::Internal, e))
}

/// Reclaims the tree file's dead space (etcd's defragmentation): answered once the member
/// writes to the compacted file. Reads and writes go on meanwhile.
pub(crate) async fn defragment(shared: &Shared) -> Result<(), Failure> {
    ask(shared, MaintenanceInput::Defragment)
        .await?
        .map_err(|e| (ErrorCode::Internal, e))
}

/// What the keyspace's hash is computed from (off the apply role: it reads all history).
pub(crate) async fn hash_basis(shared: &Shared) -> Result<HashBasis, Failure> {
    ask(shared, MaintenanceInput::Hash).await
}

/// The store's key-value history and its leases at one point of the log.
pub(crate) struct HashBasis {
    view: ReadView,
    /// Each lease's id and granted TTL, by id.
    leases: Vec<(i64, i64)>,
}

impl HashBasis {
    /// etcd's Maintenance.Hash, "the hash of the whole backend keyspace": CRC32C over the
    /// HashKV of the whole history (which covers every kept revision, so every key and
    /// value), the compaction revision, and each lease's id and granted TTL. Everything in
    /// it is decided by applying the log, so members that applied the same entries agree
    /// (the time a lease has left is not in it: only the leader's clock keeps that).
    /// Returns the hash and the revision it is at. Reads all history: call it off the
    /// executors.
    pub(crate) fn hash(&self) -> Result<(u32, i64), Failure> {
        let kv = self
            .view
            .hash_kv(0)
            .map_err(|e| super::front::error_of(e.into()))?;
        let mut hash = crc32c::crc32c(&kv.hash.to_le_bytes());
        hash = crc32c::crc32c_append(hash, &kv.compact_revision.to_le_bytes());
        for (id, ttl) in &self.leases {
            hash = crc32c::crc32c_append(hash, &id.to_be_bytes());
            hash = crc32c::crc32c_append(hash, &ttl.to_be_bytes());
        }
        Ok((hash, kv.header.revision))
    }
}

/// One chunk of a snapshot stream and the bytes after it (etcd's `remaining_bytes`: 0 with
/// the last chunk, the SHA-256 trailer).
pub(crate) struct Chunk {
    pub remaining_bytes: u64,
    pub blob: Vec<u8>,
}

/// A fresh snapshot's chunks (all of it, or those since `base`), read on a thread of their
/// own into a channel of [`READ_AHEAD_CHUNKS`]: the front end's executor never waits for
/// the disk, and when the receiver is dropped (the client went away) the thread stops at
/// its next chunk. An error is the last item.
pub(crate) async fn snapshot_chunks(
    shared: &Shared,
    base: Option<SnapshotPoint>,
) -> Result<flume::Receiver<Result<Chunk, String>>, Failure> {
    if STREAMS.load(Ordering::Acquire) >= STREAMS_MAX {
        return Err(too_many_streams());
    }
    let snapshot = snapshot(shared).await?;
    let stream = match base {
        None => SnapshotStream::full(snapshot),
        Some(base) => SnapshotStream::since(snapshot, &base)
            .map_err(|e| (ErrorCode::InvalidRequest, e.to_string()))?,
    };
    let slot = StreamSlot::take().ok_or_else(too_many_streams)?;
    let (tx, rx) = flume::bounded(READ_AHEAD_CHUNKS);
    std::thread::Builder::new()
        .name("cairn-snapshot-read".into())
        .spawn(move || {
            let _slot = slot;
            let mut stream = stream;
            while let Some(chunk) = stream.next() {
                let item = chunk
                    .map(|blob| Chunk {
                        remaining_bytes: stream.remaining_bytes(),
                        blob,
                    })
                    .map_err(|e| e.to_string());
                if tx.send(item).is_err() {
                    return; // the client went away
                }
            }
        })
        .map_err(|e| (ErrorCode::Internal, format!("cannot start a reader: {e}")))?;
    Ok(rx)
}

fn too_many_streams() -> Failure {
    (
        ErrorCode::Overloaded,
        format!("{STREAMS_MAX} snapshots are being sent already"),
    )
}

/// One of the [`STREAMS_MAX`] snapshot streams, given back when dropped.
struct StreamSlot;

impl StreamSlot {
    fn take() -> Option<StreamSlot> {
        STREAMS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < STREAMS_MAX).then_some(n + 1)
            })
            .ok()
            .map(|_| StreamSlot)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        STREAMS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A defragment request on the apply role.
struct Defrag {
    /// The count of switched reclamations ([`Store::reclaims_done`]) that answers it: set
    /// when a reclamation starts after the request came (one running before it does not
    /// hold what was deleted since).
    target: Option<u64>,
    reply: flume::Sender<Result<(), String>>,
}

/// The apply role's maintenance requests waiting for a checkpoint or a file switch.
#[derive(Default)]
pub(crate) struct Waiting {
    /// Snapshot requests with the store's applied index when each came: the first durable
    /// checkpoint at or after it answers them.
    snapshots: Vec<(u64, SnapshotReply)>,
    defrags: Vec<Defrag>,
}

impl Waiting {
    /// Takes a request; a hash is answered at once.
    pub(crate) fn request(&mut self, input: MaintenanceInput, store: &Store) {
        let full = self.snapshots.len() + self.defrags.len() >= WAITERS_MAX;
        let busy = || format!("{WAITERS_MAX} snapshot and defragment requests are waiting");
        match input {
            MaintenanceInput::Snapshot(reply) if full => {
                let _ = reply.send(Err(busy()));
            }
            MaintenanceInput::Snapshot(reply) => {
                self.snapshots.push((store.applied().index, reply));
            }
            MaintenanceInput::Defragment(reply) if full => {
                let _ = reply.send(Err(busy()));
            }
            MaintenanceInput::Defragment(reply) => {
                self.defrags.push(Defrag {
                    target: None,
                    reply,
                });
            }
            MaintenanceInput::Hash(reply) => {
                let table = store.leases();
                let leases = table
                    .ids()
                    .map(|id| (id, table.get(id).map_or(0, |l| l.ttl)))
                    .collect();
                let _ = reply.send(HashBasis {
                    view: store.read_view(),
                    leases,
                });
            }
        }
    }

    /// Whether requests wait (the apply role then wakes up to look at them).
    pub(crate) fn pending(&self) -> bool {
        !self.snapshots.is_empty() || !self.defrags.is_empty()
    }

    /// Whether a checkpoint is owed to them: snapshot requests wait for one, or a
    /// reclamation is built and the checkpoint switches files.
    pub(crate) fn checkpoint_due(&self, store: &Store) -> bool {
        let snapshot = self
            .snapshots
            .iter()
            .any(|(at, _)| *at > store.snapshot().meta().applied_index);
        snapshot || (!self.defrags.is_empty() && store.reclaim_built())
    }

    /// Answers what can be answered now and starts the reclamation defragment requests
    /// wait for. A reclamation waits for a compaction's deletions to be done (their space
    /// is what a defragmentation after a compaction is for).
    pub(crate) fn step(&mut self, store: &mut Store) {
        if !self.snapshots.is_empty() && !store.checkpoint_pending() {
            let snapshot = Arc::new(store.snapshot());
            let at = snapshot.meta().applied_index;
            self.snapshots.retain(|(wanted, reply)| {
                if at < *wanted {
                    return true;
                }
                let _ = reply.send(Ok(snapshot.clone()));
                false
            });
        }
        if self.defrags.is_empty() {
            return;
        }
        let done = store.reclaims_done();
        self.defrags.retain(|d| match d.target {
            Some(t) if done >= t => {
                let _ = d.reply.send(Ok(()));
                false
            }
            _ => true,
        });
        if store.reclaim_pending() {
            return;
        }
        // A reclamation started for them ended without switching.
        self.defrags.retain(|d| {
            if d.target.is_none() {
                return true;
            }
            let why = "the space reclamation was abandoned (too many writes while it ran, \
                       or it failed: see the member's log); try again";
            let _ = d.reply.send(Err(why.into()));
            false
        });
        if self.defrags.is_empty() || store.compaction_backlog() > 0 {
            return;
        }
        match store.start_reclaim() {
            Ok(()) => {
                for d in &mut self.defrags {
                    d.target = Some(done + 1);
                }
            }
            Err(e) => {
                for d in self.defrags.drain(..) {
                    let _ = d.reply.send(Err(e.to_string()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btree::DbOptions;
    use crate::mvcc::{PutRequest, RaftPosition, Request};

    fn store_with(dir: &std::path::Path, puts: u64) -> Store {
        let mut store = Store::open(dir.join("cairn.db"), DbOptions::default()).expect("store");
        for i in 1..=puts {
            let put = Request::Put(PutRequest {
                key: format!("k{i}").into_bytes(),
                value: vec![b'v'; 100],
                ..Default::default()
            });
            store
                .apply(RaftPosition { index: i, term: 1 }, &[put])
                .expect("apply");
        }
        store
    }

    #[test]
    fn a_snapshot_waits_for_a_checkpoint_holding_what_was_applied() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = store_with(dir.path(), 10);
        let mut waiting = Waiting::default();
        let (tx, rx) = flume::bounded(1);
        waiting.request(MaintenanceInput::Snapshot(tx), &store);
        waiting.step(&mut store);
        assert!(rx.try_recv().is_err(), "answered before a checkpoint");
        assert!(waiting.checkpoint_due(&store));
        store.checkpoint().expect("checkpoint");
        assert!(!waiting.checkpoint_due(&store));
        waiting.step(&mut store);
        let snapshot = rx.try_recv().expect("answered").expect("a snapshot");
        assert_eq!(snapshot.meta().applied_index, 10);
        assert!(!waiting.pending());
    }

    #[test]
    fn a_defragment_is_answered_once_the_checkpoint_switched_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = store_with(dir.path(), 200);
        store.checkpoint().expect("checkpoint");
        let mut waiting = Waiting::default();
        let (tx, rx) = flume::bounded(1);
        waiting.request(MaintenanceInput::Defragment(tx), &store);
        waiting.step(&mut store);
        assert!(store.reclaim_pending(), "the reclamation started");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !store.reclaim_built() {
            assert!(std::time::Instant::now() < deadline, "never built");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        waiting.step(&mut store);
        assert!(rx.try_recv().is_err(), "answered before the switch");
        assert!(waiting.checkpoint_due(&store));
        store.checkpoint().expect("the checkpoint that switches");
        waiting.step(&mut store);
        assert_eq!(rx.try_recv().expect("answered"), Ok(()));
        assert_eq!(store.reclaims_done(), 1);
        assert!(!waiting.pending() && !store.reclaim_pending());
    }
}
