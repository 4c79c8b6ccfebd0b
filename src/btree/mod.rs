//! TEMPORARY in-memory stand-in for the B+tree, with the exact public API of the real
//! `btree` module (being written in parallel). Code against this API only; this file is
//! replaced by the real implementation when branches merge. Do not commit changes to it.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Identifies one of the trees inside a database file (0..MAX_TREES).
pub type TreeId = u8;
/// How many trees one file holds.
pub const MAX_TREES: usize = 8;
/// Largest tree key, in bytes.
pub const KEY_BYTES_MAX: usize = 1024;
/// Largest opaque user metadata stored in a commit record, in bytes.
pub const COMMIT_USER_BYTES_MAX: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum BtreeError {
    #[error("io error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("corrupt page in {path} at byte offset {offset}: {reason}")]
    Corrupt { path: PathBuf, offset: u64, reason: String },
    #[error("key of {0} bytes exceeds the {KEY_BYTES_MAX}-byte limit")]
    KeyTooLarge(usize),
    #[error("tree id {0} out of range")]
    BadTree(TreeId),
    #[error("commit metadata of {0} bytes exceeds the limit")]
    MetaTooLarge(usize),
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

#[derive(Debug, Clone, Default)]
pub struct DbOptions {
    /// Branch pages cached in memory, shared by all readers.
    pub branch_cache_pages: usize,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    pub file_bytes: u64,
    pub live_bytes: u64,
}

type Trees = Arc<Vec<BTreeMap<Vec<u8>, Vec<u8>>>>;

/// The single writer of one database file.
pub struct Db {
    trees: Trees,
    durable: Trees,
    meta: CommitMeta,
}

/// An immutable read view of every tree at one point; `Send + Sync + Clone`, readable from any thread.
#[derive(Clone)]
pub struct View {
    trees: Trees,
}

/// Owned iterator over a key range of one tree (holds its own snapshot).
pub struct RangeIter {
    items: std::vec::IntoIter<(Vec<u8>, Vec<u8>)>,
}

impl Iterator for RangeIter {
    type Item = Result<(Vec<u8>, Vec<u8>)>;
    fn next(&mut self) -> Option<Self::Item> {
        self.items.next().map(Ok)
    }
}

fn range_of(trees: &Trees, tree: TreeId, lo: Bound<&[u8]>, hi: Bound<&[u8]>, reverse: bool) -> RangeIter {
    let t = &trees[tree as usize];
    let lo = lo.map(|b| b.to_vec());
    let hi = hi.map(|b| b.to_vec());
    let mut v: Vec<_> = match (&lo, &hi) {
        (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) if a > b => Vec::new(),
        _ => t.range((lo, hi)).map(|(k, v)| (k.clone(), v.clone())).collect(),
    };
    if reverse {
        v.reverse();
    }
    RangeIter { items: v.into_iter() }
}

impl Db {
    /// Opens (or creates) the database file at `path`, at its newest valid commit.
    pub fn open(_path: impl AsRef<Path>, _opts: DbOptions) -> Result<Db> {
        let t: Trees = Arc::new(vec![BTreeMap::new(); MAX_TREES]);
        Ok(Db { trees: t.clone(), durable: t, meta: CommitMeta::default() })
    }
    /// Metadata of the last durable commit (zeroes for a new file).
    pub fn last_commit(&self) -> &CommitMeta {
        &self.meta
    }
    /// Reads the writer's current state (uncommitted writes included).
    pub fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.trees[tree as usize].get(key).cloned())
    }
    pub fn put(&mut self, tree: TreeId, key: &[u8], value: &[u8]) -> Result<()> {
        if key.len() > KEY_BYTES_MAX {
            return Err(BtreeError::KeyTooLarge(key.len()));
        }
        Arc::make_mut(&mut self.trees)[tree as usize].insert(key.to_vec(), value.to_vec());
        Ok(())
    }
    /// Returns whether the key existed.
    pub fn delete(&mut self, tree: TreeId, key: &[u8]) -> Result<bool> {
        Ok(Arc::make_mut(&mut self.trees)[tree as usize].remove(key).is_some())
    }
    /// Range over the writer's current state; the iterator is a snapshot.
    pub fn range(&self, tree: TreeId, lo: Bound<&[u8]>, hi: Bound<&[u8]>, reverse: bool) -> RangeIter {
        range_of(&self.trees, tree, lo, hi, reverse)
    }
    /// Publishes a cheap immutable view of everything written so far.
    pub fn view(&self) -> View {
        View { trees: self.trees.clone() }
    }
    /// Makes everything written so far durable, recording `meta` (fsync before return).
    pub fn commit(&mut self, meta: CommitMeta) -> Result<()> {
        if meta.user.len() > COMMIT_USER_BYTES_MAX {
            return Err(BtreeError::MetaTooLarge(meta.user.len()));
        }
        self.durable = self.trees.clone();
        self.meta = meta;
        Ok(())
    }
    pub fn stats(&self) -> Stats {
        Stats::default()
    }
}

impl View {
    pub fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.trees[tree as usize].get(key).cloned())
    }
    pub fn range(&self, tree: TreeId, lo: Bound<&[u8]>, hi: Bound<&[u8]>, reverse: bool) -> RangeIter {
        range_of(&self.trees, tree, lo, hi, reverse)
    }
}
