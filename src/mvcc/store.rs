//! [`Store`]: the single writer of the MVCC state. Applies Raft-committed batches, checkpoints
//! them into the tree, publishes [`ReadView`]s, and rebuilds its key index on open.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use crate::btree::{BtreeError, CommitMeta, Db, DbOptions};

use super::apply;
use super::error::MvccError;
use super::hash;
use super::index_lock::IndexLock;
use super::key_index::{KeyIndex, KeyIndexBuilder, KeyRange};
use super::lease::{LeaseChange, LeaseTable};
use super::range::{self, PRIMARY_TREE};
use super::read_view::ReadView;
use super::record::{Record, StoreMeta};
use super::revision::Revision;
use super::txn::{self, check_range};
use super::types::{
    Event, HashKvResponse, PutRef, RangeRequest, RangeResponse, Request, Response, ResponseHeader,
};
use super::write::WriteTxn;
use crate::lease::{LeaseGrantResponse, LeaseOp, LeaseRevokeResponse};

/// Memory the writer may hold in changes not yet checkpointed before `maybe_checkpoint`
/// commits them, in bytes.
pub const CHECKPOINT_UNCOMMITTED_BYTES_MAX: u64 = 32 << 20;

/// Keys of the index one compaction step compacts under one hold of the index lock.
const INDEX_COMPACTION_CHUNK_KEYS: usize = 4096;

/// Where a compaction's walk over the index is: the last key compacted.
struct IndexWalk {
    after: Option<Vec<u8>>,
}

/// Records left by compaction that one `maybe_checkpoint` deletes at most.
pub const COMPACTION_STEP_RECORDS: usize = 10_000;

/// Where in the Raft log the store is: the last entry applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RaftPosition {
    pub index: u64,
    pub term: u64,
}

/// The result of [`Store::apply`].
#[derive(Debug)]
pub enum ApplyOutcome {
    /// The entry was at or below the applied index: already applied, nothing done.
    Skipped,
    /// One result per request, in order. An error here is a request error that changed
    /// nothing; the other requests of the batch still applied.
    Applied(Vec<Result<Response, MvccError>>),
}

pub struct Store {
    db: Db,
    index: Arc<IndexLock>,
    current_revision: i64,
    applied: RaftPosition,
    /// Revisions compaction dropped from the index whose records are still in the tree,
    /// ascending; deleted from the end in bounded steps. Not persisted: open recomputes it
    /// by compacting the rebuilt index again.
    compaction_backlog: Vec<Revision>,
    /// A compaction's walk over the index, while keys are left to compact.
    index_compaction: Option<IndexWalk>,
    /// Set by a fatal error: a write may be half done, so nothing more may be applied or made
    /// durable. The remedy is to reopen, which rolls back to the last checkpoint.
    poisoned: bool,
    /// Whether [`Store::maybe_checkpoint`] commits in the background.
    background_checkpoints: bool,
    /// Events of the writes applied since [`Store::take_events`] last took them, in
    /// revision order.
    events: Vec<Event>,
    /// Whether events carry the key as it was before each change.
    capture_prev: bool,
    /// The leases, their TTLs and attached keys: puts are checked against it.
    leases: LeaseTable,
}

impl Store {
    /// Opens the store in the tree file at `path`, at the tree's newest durable commit, and
    /// rebuilds the key index. Replay the Raft log from [`Store::applied`] afterwards.
    pub fn open(path: impl AsRef<Path>, options: DbOptions) -> Result<Store, MvccError> {
        Store::from_db(Db::open(path, options)?)
    }

    /// Opens the store as [`Store::open`] does, read-only (see [`Db::open_read_only`]):
    /// nothing in the file is changed, requests apply in memory, and checkpoints fail.
    pub fn open_read_only(path: impl AsRef<Path>, options: DbOptions) -> Result<Store, MvccError> {
        Store::from_db(Db::open_read_only(path, options)?)
    }

    /// Builds the store over an open tree, as [`Store::open`] does.
    pub(crate) fn from_db(db: Db) -> Result<Store, MvccError> {
        let commit = db.last_commit().clone();
        let meta = StoreMeta::decode(&commit.user)?;
        let mut leases = LeaseTable::load(&db)?;
        let (mut index, last) = rebuild_index(&db, -1, Some(&mut leases))?;
        let meta = match meta {
            Some(meta) => meta,
            None if last.is_none() => StoreMeta::FRESH,
            None => return Err(MvccError::CorruptMeta("records but no store metadata")),
        };
        if last.is_some_and(|rev| rev.main > meta.current_revision) {
            return Err(MvccError::CorruptMeta(
                "records newer than the current revision",
            ));
        }
        // A compaction whose tree deletions were not all checkpointed left records that the
        // compacted index no longer reaches: compacting again finds exactly those.
        let compaction_backlog = if meta.compact_revision > -1 {
            index.compact(meta.compact_revision)
        } else {
            Vec::new()
        };
        Ok(Store {
            db,
            compaction_backlog,
            index_compaction: None,
            index: Arc::new(IndexLock::new(index)),
            current_revision: meta.current_revision,
            applied: RaftPosition {
                index: commit.applied_index,
                term: commit.applied_term,
            },
            poisoned: false,
            background_checkpoints: false,
            events: Vec::new(),
            capture_prev: false,
            leases,
        })
    }

    /// The last Raft entry applied (durable only up to the last checkpoint).
    pub fn applied(&self) -> RaftPosition {
        self.applied
    }

    pub fn current_revision(&self) -> i64 {
        self.current_revision
    }

    /// The revision of the last compaction, -1 if never compacted.
    pub fn compact_revision(&self) -> i64 {
        self.index.read().compact_revision()
    }

    /// Applies the requests of the Raft entry at `at`, each as its own write transaction
    /// (its own revision if it writes anything). Entries at or below the applied index are
    /// skipped, so replaying the log after a restart is harmless. `Err` is fatal (storage or
    /// corruption): the store refuses further work and must be reopened.
    pub fn apply(
        &mut self,
        at: RaftPosition,
        batch: &[Request],
    ) -> Result<ApplyOutcome, MvccError> {
        self.apply_each(at, batch.len(), |store, i| {
            // The operation limit is the proposer's business (see `validate`); the rest is
            // deterministic and keeps malformed requests out of the tree.
            txn::validate(&batch[i], usize::MAX)
                .and_then(|()| store.write(|w, leases| apply::request(w, &batch[i], leases)))
        })
    }

    /// Applies the Raft entry at `at` holding one put, borrowed (read in place from the
    /// entry's archived request). Same rules as [`Store::apply`].
    pub fn apply_put(
        &mut self,
        at: RaftPosition,
        put: PutRef<'_>,
    ) -> Result<ApplyOutcome, MvccError> {
        self.apply_each(at, 1, |store, _| {
            txn::check_put(put)
                .and_then(|()| store.write(|w, leases| apply::put_checked(w, put, leases)))
        })
    }

    /// Applies the Raft entry at `at` holding a lease operation. Same rules as
    /// [`Store::apply`]. A grant or a checkpoint changes no revision; a revoke deletes the
    /// lease's keys in one write transaction (one revision, if it had keys) and then the
    /// lease. Its response: `Response::LeaseGrant`, `LeaseRevoke` or `LeaseCheckpoint`.
    pub fn apply_lease(
        &mut self,
        at: RaftPosition,
        op: &LeaseOp,
    ) -> Result<ApplyOutcome, MvccError> {
        self.apply_each(at, 1, |store, _| store.lease_op(op))
    }

    fn lease_op(&mut self, op: &LeaseOp) -> Result<Response, MvccError> {
        match *op {
            LeaseOp::Grant { id, ttl } => {
                self.leases.grant(&mut self.db, id, ttl)?;
                Ok(Response::LeaseGrant(LeaseGrantResponse {
                    header: self.header(),
                    id,
                    ttl,
                }))
            }
            LeaseOp::Revoke { id } => {
                let keys: Vec<Vec<u8>> = match self.leases.get(id) {
                    Some(l) => l.keys.iter().cloned().collect(),
                    None => return Err(MvccError::LeaseNotFound),
                };
                if !keys.is_empty() {
                    self.write(|w, _| {
                        for key in &keys {
                            w.delete_range(KeyRange::Single(key))?;
                        }
                        Ok(Response::LeaseRevoke(LeaseRevokeResponse::default()))
                    })?;
                }
                self.leases.remove(&mut self.db, id)?;
                Ok(Response::LeaseRevoke(LeaseRevokeResponse {
                    header: self.header(),
                }))
            }
            LeaseOp::Checkpoint(ref remaining) => {
                self.leases.checkpoint(&mut self.db, remaining)?;
                Ok(Response::LeaseCheckpoint(self.header()))
            }
        }
    }

    fn header(&self) -> ResponseHeader {
        ResponseHeader {
            revision: self.current_revision,
        }
    }

    /// The leases as applied so far.
    pub fn leases(&self) -> &LeaseTable {
        &self.leases
    }

    /// The grants and revokes applied since the last call, in order (for the leader's
    /// clock).
    pub fn take_lease_changes(&mut self) -> Vec<LeaseChange> {
        self.leases.take_changes()
    }

    /// The rules of applying one entry of `count` requests, each run by `one`: nothing after
    /// a fatal error, entries already applied skipped, the applied position moved last.
    fn apply_each(
        &mut self,
        at: RaftPosition,
        count: usize,
        mut one: impl FnMut(&mut Store, usize) -> Result<Response, MvccError>,
    ) -> Result<ApplyOutcome, MvccError> {
        if self.poisoned {
            return Err(MvccError::Poisoned);
        }
        if at.index <= self.applied.index {
            return Ok(ApplyOutcome::Skipped);
        }
        let mut responses = Vec::with_capacity(count);
        for i in 0..count {
            match one(self, i) {
                Err(e) if e.is_fatal() => {
                    self.poisoned = true;
                    return Err(e);
                }
                result => responses.push(result),
            }
        }
        self.applied = at;
        Ok(ApplyOutcome::Applied(responses))
    }

    /// The events of every write applied since the last call, in revision order (within a
    /// revision, in the order of its changes). Applying an entry yields its response (from
    /// [`Store::apply`]) and these: the caller takes them after each entry or batch, which
    /// bounds what the store holds by what one batch writes.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Whether events carry the previous key-value of each change (etcd's `prev_kv` of a
    /// watch): one more read per change, so only while some watcher asks for it.
    pub fn set_capture_prev(&mut self, on: bool) {
        self.capture_prev = on;
    }

    /// Runs one write transaction: its own revision if it changes anything; rolled back if
    /// it fails.
    /// `f` is given the lease table to check puts against.
    fn write(
        &mut self,
        f: impl FnOnce(&mut WriteTxn<'_>, &LeaseTable) -> Result<Response, MvccError>,
    ) -> Result<Response, MvccError> {
        let mut w = WriteTxn::new(
            &mut self.db,
            &self.index,
            self.current_revision,
            self.capture_prev,
        );
        let result = f(&mut w, &self.leases);
        if let Err(e) = &result {
            if !e.is_fatal() {
                w.rollback()?;
            }
        }
        if w.changed() {
            self.current_revision += 1;
            let mut events = w.take_events();
            // Puts attach their keys to their leases, deletes detach them.
            self.leases.observe(&events);
            self.events.append(&mut events);
        }
        if w.take_compacted() {
            // From the first key again, at the new revision: keys an earlier walk compacted
            // are compacted once more, at the new revision.
            self.index_compaction = Some(IndexWalk { after: None });
        }
        result
    }

    /// Makes everything applied so far durable in one tree commit that records the applied
    /// Raft position and the store's revisions.
    pub fn checkpoint(&mut self) -> Result<(), MvccError> {
        self.commit(false)
    }

    /// Moves the store onto another Raft log, at `at`, and checkpoints: a snapshot restored
    /// into a new cluster, whose log begins afresh, holds the store's data as of `at` there.
    /// Nothing else changes (revisions, keys, leases).
    pub fn restart_at(&mut self, at: RaftPosition) -> Result<(), MvccError> {
        self.applied = at;
        self.checkpoint()
    }

    /// As [`Store::checkpoint`], but only the tree pages are written before it returns; the
    /// syncs and the commit record follow on a background thread while applies go on.
    /// [`Store::poll_checkpoint`] says when it is durable; until then a crash recovers the
    /// checkpoint before (the WAL still holds everything after it).
    pub fn checkpoint_background(&mut self) -> Result<(), MvccError> {
        self.commit(true)
    }

    /// The position a background checkpoint made durable, once, when it has.
    pub fn poll_checkpoint(&mut self) -> Result<Option<RaftPosition>, MvccError> {
        let done = self
            .db
            .poll_commit()
            .inspect_err(|e| self.poison_unless_no_space(e))?;
        Ok(done.map(|m| RaftPosition {
            index: m.applied_index,
            term: m.applied_term,
        }))
    }

    /// How long the last checkpoint that became durable took to write and sync, once.
    pub fn take_checkpoint_duration(&mut self) -> Option<std::time::Duration> {
        self.db.take_commit_duration()
    }

    /// Whether a background checkpoint is not yet known to be durable.
    pub fn checkpoint_pending(&self) -> bool {
        self.db.commit_pending()
    }

    /// Checkpoints made by [`Store::maybe_checkpoint`] run in the background from now on.
    pub fn set_background_checkpoints(&mut self, on: bool) {
        self.background_checkpoints = on;
    }

    fn commit(&mut self, background: bool) -> Result<(), MvccError> {
        if self.poisoned {
            return Err(MvccError::Poisoned);
        }
        let meta = StoreMeta {
            current_revision: self.current_revision,
            compact_revision: self.compact_revision(),
        };
        let commit = CommitMeta {
            applied_index: self.applied.index,
            applied_term: self.applied.term,
            user: meta.encode(),
        };
        // A failed commit (fsync) leaves the file's state unknown: stop, like a failed apply.
        // One that failed for lack of space was undone and may be tried again.
        let result = if background {
            self.db.commit_background(commit)
        } else {
            self.db.commit(commit)
        };
        result.inspect_err(|e| self.poison_unless_no_space(e))?;
        Ok(())
    }

    fn poison_unless_no_space(&mut self, e: &BtreeError) {
        if !e.is_no_space() {
            self.poisoned = true;
        }
    }

    /// Checkpoints once the changes held in memory since the last checkpoint exceed
    /// [`CHECKPOINT_UNCOMMITTED_BYTES_MAX`]: the bound on the writer's memory.
    /// Also deletes up to [`COMPACTION_STEP_RECORDS`] records left by compaction, so the
    /// tree catches up with the index in bounded steps. True if it checkpointed.
    pub fn maybe_checkpoint(&mut self) -> Result<bool, MvccError> {
        self.compact_step(COMPACTION_STEP_RECORDS)?;
        if self.over_memory_budget() {
            self.commit(self.background_checkpoints)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Whether the changes held in memory since the last checkpoint exceed
    /// [`CHECKPOINT_UNCOMMITTED_BYTES_MAX`]: a checkpoint is due, to give that memory back.
    pub fn over_memory_budget(&self) -> bool {
        self.db.uncommitted_bytes() >= CHECKPOINT_UNCOMMITTED_BYTES_MAX
    }

    /// Rewrites the tree file without its dead pages, online: checkpoints, copies the live
    /// entries into a fresh file on a background thread, and switches at the next checkpoint.
    /// Blocks the caller until the switch (applies may go on from another loop meanwhile in
    /// the server; here the caller waits).
    pub fn reclaim_space(&mut self) -> Result<(), MvccError> {
        self.checkpoint()?;
        self.db.start_reclaim()?;
        self.db.wait_reclaim_built();
        self.checkpoint()
    }

    /// Starts rewriting the tree file without its dead pages on a background thread, from
    /// the state as it is now (changes made meanwhile are carried over); the checkpoint after
    /// it is built switches files ([`Store::reclaim_built`] says when that is due). Does
    /// nothing if one is running.
    pub fn start_reclaim(&mut self) -> Result<(), MvccError> {
        if self.poisoned {
            return Err(MvccError::Poisoned);
        }
        Ok(self.db.start_reclaim()?)
    }

    /// Whether a reclamation is running or built and waiting for a checkpoint to switch.
    pub fn reclaim_pending(&self) -> bool {
        self.db.reclaim_pending()
    }

    /// Whether a running reclamation is built: the next checkpoint switches files.
    pub fn reclaim_built(&self) -> bool {
        self.db.reclaim_built()
    }

    /// Reclamations that switched files since the store was opened.
    pub fn reclaims_done(&self) -> u64 {
        self.db.reclaims_done()
    }

    /// Deletes up to `max` records that compaction made unreachable; returns how many are
    /// left. Reads never reach these records, so when this runs does not change results.
    pub fn compact_step(&mut self, max: usize) -> Result<usize, MvccError> {
        if self.poisoned {
            return Err(MvccError::Poisoned);
        }
        if let Some(walk) = &mut self.index_compaction {
            // One chunk of keys under one hold of the index lock: readers go on between
            // chunks, where one walk of millions of keys held them for seconds.
            let mut dropped = Vec::new();
            let next = self.index.write().compact_chunk(
                walk.after.as_deref(),
                INDEX_COMPACTION_CHUNK_KEYS,
                &mut dropped,
            );
            match next {
                Some(key) => walk.after = Some(key),
                None => self.index_compaction = None,
            }
            // Each revision is dropped once (it leaves the index as it is), so the backlog
            // holds no repeats; sorted, the deletions walk the tree in order.
            dropped.sort_unstable();
            self.compaction_backlog.extend(dropped);
        }
        let keep = self.compaction_backlog.len().saturating_sub(max);
        for rev in self.compaction_backlog.split_off(keep).into_iter().rev() {
            if let Err(e) = self.db.delete(PRIMARY_TREE, &rev.to_key()) {
                self.poisoned = true;
                return Err(e.into());
            }
        }
        Ok(self.compaction_backlog())
    }

    /// Finishes a compaction's tree deletions, checkpointing along the way so memory stays
    /// within [`CHECKPOINT_UNCOMMITTED_BYTES_MAX`].
    pub fn finish_compaction(&mut self) -> Result<(), MvccError> {
        while self.compact_step(COMPACTION_STEP_RECORDS)? > 0 {
            self.maybe_checkpoint()?;
        }
        self.maybe_checkpoint().map(|_| ())
    }

    /// Records still to delete after a compaction, plus one while keys of the index are
    /// still to compact: 0 once a compaction is wholly done.
    pub fn compaction_backlog(&self) -> usize {
        self.compaction_backlog.len() + usize::from(self.index_compaction.is_some())
    }

    /// Bytes of changes held in memory since the last checkpoint.
    pub fn uncommitted_bytes(&self) -> u64 {
        self.db.uncommitted_bytes()
    }

    /// The tree file up to its last durable checkpoint, as a byte stream (a snapshot for a
    /// lagging member): a valid tree file whose newest commit is that checkpoint.
    pub fn snapshot(&self) -> crate::btree::Snapshot {
        self.db.snapshot()
    }

    /// File size and live bytes of the tree file.
    pub fn stats(&self) -> crate::btree::Stats {
        self.db.stats()
    }

    /// Publishes the current state for readers on any thread. O(1).
    pub fn read_view(&self) -> ReadView {
        ReadView::new(
            self.db.view(),
            self.current_revision,
            self.compact_revision(),
            self.index.clone(),
        )
    }

    /// A serializable Range on the writer's thread, at the current revision.
    pub fn range(&self, r: &RangeRequest) -> Result<RangeResponse, MvccError> {
        check_range(r)?;
        range::range(r, |keys, ro| {
            let selection = range::select(&self.index, keys, self.current_revision, ro)?;
            range::fetch(&self.db, selection)
        })
    }

    /// The events of whole revisions from `from` on, read from the revision-keyed tree
    /// (a watcher catching up): at most `max_records` of them and about `max_bytes` of keys
    /// and values, unless one revision holds more, and the last revision they cover
    /// (through which nothing else happened). With
    /// `with_prev`, each event carries the key as it was the revision before, when that is
    /// not compacted. Revisions below the compaction revision may be missing: check it first.
    pub fn history(
        &self,
        from: i64,
        max_records: usize,
        max_bytes: usize,
        with_prev: bool,
    ) -> Result<(Vec<Event>, i64), MvccError> {
        let lo = Revision::new(from.max(0), 0).to_key();
        let mut bytes = 0;
        let mut events: Vec<Event> = Vec::new();
        let mut through = self.current_revision;
        let entries = self.db.range(
            PRIMARY_TREE,
            Bound::Included(&lo[..]),
            Bound::Unbounded,
            false,
        );
        for entry in entries {
            let (key, value) = entry?;
            let rev = Revision::from_key(&key)?;
            let last = events.last().map(Event::revision);
            if rev.main > self.current_revision {
                break;
            }
            if (events.len() >= max_records || bytes >= max_bytes) && last != Some(rev.main) {
                through = last.unwrap_or(through);
                break;
            }
            bytes += key.len() + value.len();
            events.push(Record::decode(&value, rev)?.event(rev.main));
        }
        if with_prev {
            for e in &mut events {
                e.prev_kv = self.key_at(&e.kv.key, e.revision() - 1)?;
            }
        }
        Ok((events, through))
    }

    /// The key as it was at `rev`, `None` if it did not exist or `rev` is compacted.
    fn key_at(&self, key: &[u8], rev: i64) -> Result<Option<crate::mvcc::KeyValue>, MvccError> {
        let r = RangeRequest {
            key: key.to_vec(),
            revision: rev,
            ..RangeRequest::default()
        };
        match self.range(&r) {
            Ok(mut r) => Ok(r.kvs.pop()),
            Err(MvccError::Compacted) | Err(MvccError::FutureRev) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// HashKV at `rev` (0 for the current revision).
    pub fn hash_kv(&self, rev: i64) -> Result<HashKvResponse, MvccError> {
        hash::hash_kv(
            &self.db,
            rev,
            self.current_revision,
            self.compact_revision(),
        )
    }

    #[cfg(test)]
    pub(crate) fn into_db(self) -> Db {
        self.db
    }

    #[cfg(test)]
    pub(crate) fn db_mut(&mut self) -> &mut Db {
        &mut self.db
    }

    /// Rebuilds the index from the tree and compares it with the live one.
    #[cfg(test)]
    pub(crate) fn index_matches_tree(&self) -> Result<bool, MvccError> {
        let (mut rebuilt, _) = rebuild_index(&self.db, -1, None)?;
        let compacted = self.compact_revision();
        let mut live = self.index.read().clone();
        if compacted > -1 {
            rebuilt.compact(compacted);
            // A compaction's walk may be under way: compacting every key again at the same
            // revision changes only the keys it has not reached.
            let mut after = None;
            loop {
                after = live.compact_chunk(after.as_deref(), usize::MAX, &mut Vec::new());
                if after.is_none() {
                    break;
                }
            }
        }
        Ok(rebuilt == live)
    }
}

/// One sequential scan of the primary tree; returns the index and the newest revision seen,
/// and attaches each live key to its lease in `leases`, if given.
fn rebuild_index(
    db: &Db,
    compact_revision: i64,
    leases: Option<&mut LeaseTable>,
) -> Result<(KeyIndex, Option<Revision>), MvccError> {
    let entries = db.range(PRIMARY_TREE, Bound::Unbounded, Bound::Unbounded, false);
    match leases {
        // Records come in revision order: each key's last one is its live state.
        Some(leases) => index_from_entries_with(entries, compact_revision, |key, lease| {
            leases.attach(key, lease)
        }),
        None => index_from_entries(entries, compact_revision),
    }
}

/// Builds the index from primary-tree entries in revision order.
pub(crate) fn index_from_entries(
    entries: impl IntoIterator<Item = Result<(Vec<u8>, Vec<u8>), BtreeError>>,
    compact_revision: i64,
) -> Result<(KeyIndex, Option<Revision>), MvccError> {
    index_from_entries_with(entries, compact_revision, |_, _| {})
}

/// As [`index_from_entries`], calling `lease(key, lease)` for each record (0 for a
/// tombstone), in revision order.
fn index_from_entries_with(
    entries: impl IntoIterator<Item = Result<(Vec<u8>, Vec<u8>), BtreeError>>,
    compact_revision: i64,
    mut lease: impl FnMut(&[u8], i64),
) -> Result<(KeyIndex, Option<Revision>), MvccError> {
    let mut builder = KeyIndexBuilder::new();
    for entry in entries {
        let (key, value) = entry?;
        let rev = Revision::from_key(&key)?;
        let record = Record::decode(&value, rev)?;
        lease(record.key, if record.tombstone { 0 } else { record.lease });
        builder.push(
            record.key,
            rev,
            record.tombstone,
            record.create_revision,
            record.version,
        )?;
    }
    let last = builder.last_revision();
    Ok((builder.finish(compact_revision), last))
}
