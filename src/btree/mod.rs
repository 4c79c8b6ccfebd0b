//! An append-only, copy-on-write B+tree file (the boltdb/LMDB lineage, append-only like
//! CouchDB). Format and crash analysis: `docs/btree.md`.
//!
//! - One file holds up to [`MAX_TREES`] trees of byte keys (memcmp order) and byte values.
//! - The single writer ([`Db`]) changes trees copy-on-write in memory; [`Db::commit`] appends
//!   the changed pages, syncs, appends a commit record, and syncs again. Nothing already in
//!   the file is ever overwritten.
//! - Readers hold a [`View`] (any thread, `Send + Sync`): memory nodes are shared through
//!   `Arc` and disk pages are immutable, so readers never block the writer or each other.
//! - [`Db::snapshot`] streams the file up to the last commit while writes go on.
//! - [`Db::start_reclaim`] rewrites the live entries into a fresh, packed file in the
//!   background; the next commit after it is built switches files.
//! - [`MemDisk`] is the file's in-memory twin for simulations and crash tests: with
//!   [`DbOptions::mem_disk`] set, every file the tree opens, creates, renames or deletes is
//!   one of its [`MemFile`]s, which lose unsynced writes sector by sector on
//!   [`MemDisk::crash`].
//!
//! ```
//! use cairn::btree::{CommitMeta, Db, DbOptions};
//! use std::ops::Bound;
//! let dir = tempfile::tempdir().unwrap();
//! let mut db = Db::open(dir.path().join("db"), DbOptions::default()).unwrap();
//! db.put(0, b"k1", b"v1").unwrap();
//! let view = db.view();
//! db.put(0, b"k2", b"v2").unwrap();
//! db.commit(CommitMeta { applied_index: 7, ..Default::default() }).unwrap();
//! assert_eq!(view.range(0, Bound::Unbounded, Bound::Unbounded, false).count(), 1);
//! drop(db);
//! let db = Db::open(dir.path().join("db"), DbOptions::default()).unwrap();
//! assert_eq!(db.last_commit().applied_index, 7);
//! assert_eq!(db.get(0, b"k2").unwrap().as_deref(), Some(&b"v2"[..]));
//! ```

mod backing;
mod db;
mod file;
mod mem;
mod node;
mod page;
mod reclaim;
mod snapshot;
mod view;
mod write;

pub use db::{Cut, Db, Inspection, Leftover, View};
pub use mem::{CrashLoss, MemDisk, MemFile};
pub use page::{COMMIT_COPIES, COMMIT_USER_BYTES_MAX, PAGE_SIZE};
pub use reclaim::RECLAIM_TOUCHED_KEYS_MAX;
pub use snapshot::Snapshot;
pub use view::RangeIter;

use std::path::PathBuf;
use std::sync::Arc;

/// Identifies one of the trees inside a database file (0..MAX_TREES).
pub type TreeId = u8;
/// How many trees one file holds.
pub const MAX_TREES: usize = 8;
/// Largest tree key, in bytes.
pub const KEY_BYTES_MAX: usize = 1024;
/// Largest value, in bytes (values above a quarter page live in overflow runs).
pub const VALUE_BYTES_MAX: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BtreeError {
    #[error("io error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("corrupt database {path} at byte offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("key of {0} bytes exceeds the {KEY_BYTES_MAX}-byte limit")]
    KeyTooLarge(usize),
    #[error("value of {0} bytes exceeds the {VALUE_BYTES_MAX}-byte limit")]
    ValueTooLarge(usize),
    #[error("tree id {0} out of range")]
    BadTree(TreeId),
    #[error("commit metadata of {0} bytes exceeds the {COMMIT_USER_BYTES_MAX}-byte limit")]
    MetaTooLarge(usize),
    #[error("database {0} refuses writes after a failed write or sync; restart to recover")]
    Poisoned(PathBuf),
    #[error("database {0} is open read-only")]
    ReadOnly(PathBuf),
}

impl BtreeError {
    /// Whether this is the file system running out of space (or quota). A commit that
    /// failed so is undone and may be tried again; see [`Db::commit_background`].
    pub fn is_no_space(&self) -> bool {
        match self {
            BtreeError::Io { source, .. } => crate::wal::is_no_space(source),
            _ => false,
        }
    }
}

pub type Result<T, E = BtreeError> = std::result::Result<T, E>;

/// What a durable commit records besides the tree roots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitMeta {
    pub applied_index: u64,
    pub applied_term: u64,
    /// Opaque bytes for the layer above (MVCC keeps its revisions here).
    pub user: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct DbOptions {
    /// Branch pages cached in memory, shared by all readers.
    pub branch_cache_pages: usize,
    /// Where the files are: `None` (the default) for the file system, or an in-memory
    /// disk, whose files then stand for every path the tree uses (the database, its
    /// temporary and reclamation files).
    pub mem_disk: Option<Arc<MemDisk>>,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            branch_cache_pages: 8192,
            mem_disk: None,
        }
    }
}

/// Space accounting: the file's size, and the bytes a fully packed file would need.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    pub file_bytes: u64,
    pub live_bytes: u64,
}
