//! The etcd v3 data model on top of the B+tree: a global revision, per-key create revision,
//! mod revision, version and lease; Range, Put, DeleteRange, Txn, Compact and HashKV with
//! etcd 3.4's semantics and error messages.
//!
//! # Layout
//!
//! - `types`: requests and responses, one to one with etcd's protobuf messages (rkyv-archivable).
//! - `error`: [`MvccError`], displaying etcd's messages.
//! - `revision`: [`Revision`] and its 12-byte big-endian tree key.
//! - `record`: the byte format of a stored revision and of the store metadata.
//! - `key_index`: the compact in-memory index, user key -> revisions (etcd's `treeIndex`).
//! - `index_lock`: the lock the writer and readers share the key index by, puts first.
//! - `write`: one write transaction (etcd's `storeTxnWrite`), with rollback.
//! - `apply`: Put, DeleteRange, Range and Compaction inside a write transaction, the lease check.
//! - `lease`: [`LeaseTable`], the leases (TTLs, checkpointed remaining TTLs, attached keys),
//!   kept in tree 1 of the store's file.
//! - `txn`: request validation, compares, and Txn execution.
//! - `range`: Range reads (index half, tree half, then filter/sort/limit).
//! - `hash`: HashKV.
//! - `store`: [`Store`], the writer: apply, checkpoint, open.
//! - `read_view`: [`ReadView`], the read handle for other threads.
//!
//! # Storage
//!
//! Tree 0 (the primary tree) maps each revision (12-byte key: main u64 BE, sub u32 BE) to the
//! record written at it: `{flags (tombstone), key, create_revision, version, lease, value}`
//! (byte layout in `record.rs`). Keys are monotonic, so every batch appends at the right edge.
//! Deletes write tombstone records; compaction removes superseded revisions. The current and
//! compaction revisions travel in each tree commit's `user` bytes, with the applied Raft index
//! and term in the commit itself: a reopened store knows exactly which log entries to replay.
//! On open the key index is rebuilt by one sequential scan of tree 0, which also attaches
//! each live key to its lease. Tree 1 holds the lease records (`lease.rs`).
//!
//! # Applying
//!
//! [`Store::apply`] takes the requests of one Raft entry. Each request is one write
//! transaction: if it changes anything it gets the next revision (its changes numbered by sub
//! revision), else (a delete that matched nothing, a read-only txn) the revision stays. An
//! entry at or below the applied index is skipped, so replay is idempotent. A request error
//! changes nothing (a txn that fails midway is rolled back); a storage error is fatal and the
//! store refuses further work until reopened. [`Store::checkpoint`] commits the tree.
//!
//! Applying yields, besides each response, the [`Event`]s the writes caused ([`Store::take_events`]):
//! a put with the key as written, a delete with its tombstone, in revision order, the key's
//! previous state included while [`Store::set_capture_prev`] is on. They come from the write
//! transaction as it changes the index, are dropped by its rollback, and are the same on
//! every replay of an entry: watchers, leases and locks consume them, nothing polls the store.
//!
//! # Reads from other threads, and why they are consistent
//!
//! [`Store::read_view`] publishes a [`ReadView`]: the tree's `View` (an immutable snapshot,
//! O(1) to take), the current revision P, the compaction revision then, and the shared key
//! index behind a read-write lock. The writer keeps mutating the index after the view is
//! published, yet a Range at any R <= P through the view returns exactly the state at R:
//!
//! 1. The writer only ever adds revisions above P, or removes revisions by compaction.
//!    Additions are invisible to the view: an index lookup at R takes each key's newest
//!    revision with main <= R, and R <= P.
//! 2. Compaction at C removes, per key, only revisions older than the newest one <= C, so
//!    lookups at R >= C are unchanged. The compaction revision lives inside the locked index,
//!    so a reader sees the check (R >= current compaction, else "compacted") and the index it
//!    reads in one consistent state. This is etcd's rule: reads are checked against the
//!    current compaction, not the one when the read began.
//! 3. A revision the index returns for R has main <= P, so its record was written before the
//!    view was taken. It was still in the index when the reader found it, after the view was
//!    taken, and compaction drops a revision from the index before it deletes its record from
//!    the tree (in later, bounded steps): so the record was in the tree when the view was
//!    taken, and the view holds it; later tree deletes cannot reach an immutable view.
//! 4. Each index update (one put, one tombstone, the start of a compaction, one chunk of a
//!    compaction's walk) happens under the write lock, so a reader never sees a half-updated
//!    entry; tree I/O happens outside the lock. A compaction at C sets the compaction
//!    revision first (reads below C fail from then on), then compacts the keys in chunks of
//!    `INDEX_COMPACTION_CHUNK_KEYS`, one per apply step, readers and writers going on in
//!    between: by 2, a key compacted or not yet gives the same answer at any R >= C.
//! 5. A Range does not hold the read lock for its whole walk of the index: it walks a chunk
//!    of at most [`INDEX_CHUNK_KEYS`] keys per hold of the lock, and ends a chunk at the first
//!    key after a put starts waiting, letting the put go before its next chunk (`index_lock`),
//!    so however many keys it covers it keeps a put waiting for about one key's walk. Each
//!    chunk resumes after the last key the previous one walked, found by key (not by
//!    position, which keys added or removed in between would shift), and checks the
//!    compaction revision again first. Between two chunks the writer may have added
//!    revisions above P or keys holding only such revisions (invisible at R, by 1), compacted
//!    at some C <= R (no key's state at R changes, by 2, in the chunks walked or those to
//!    come), or compacted past R: then the next chunk answers "compacted", as a read starting
//!    then would, and the chunks walked are dropped. So every key of the range is walked
//!    once, in key order, as it is at R, and the chunks together are exactly the one walk a
//!    single hold would have made.
//!
//! A request that fails fatally midway may leave revisions above P in the index; readers
//! ignore them by (1), and the store stops until reopened. A request rolled back removes only
//! revisions above P, which readers ignored too.
//!
//! Reads on the writer's own thread (`Store::range`, the reads inside a write transaction)
//! walk the same way; nothing changes the index between their chunks, as only that thread
//! writes it.

mod apply;
mod error;
mod hash;
mod index_lock;
mod key_index;
mod lease;
mod range;
mod read_view;
mod record;
mod revision;
mod store;
mod txn;
mod types;
mod write;

#[cfg(test)]
mod tests;

pub use error::MvccError;
pub use lease::{Lease, LeaseChange, LeaseTable};
pub use range::INDEX_CHUNK_KEYS;
pub use read_view::ReadView;
pub use record::commit_revisions;
pub use revision::Revision;
pub use store::{
    ApplyOutcome, RaftPosition, Store, CHECKPOINT_UNCOMMITTED_BYTES_MAX, COMPACTION_STEP_RECORDS,
};
pub(crate) use txn::is_read_only;
pub use txn::{validate, MAX_TXN_OPS_DEFAULT};
pub use types::*;
