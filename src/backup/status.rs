//! `cairn snapshot status`: what etcdctl's `snapshot status` reports of a file (a hash of
//! its contents, the revision, the number of keys, the size), after checking the file.

use super::file::{check_trailer, open, FileKind};
use super::{bad_file, Result};
use crate::btree::{Db, DbOptions, Snapshot, MAX_TREES};
use std::ops::Bound;
use std::path::Path;

/// A snapshot file's status, as etcdctl's `snapshot.Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// CRC32C (Castagnoli, as etcd's) over every tree in order: the tree's id (one byte)
    /// before its first entry, then each entry's key and value.
    pub hash: u32,
    /// The store's revision at the snapshot's commit (what a restored member serves).
    pub revision: i64,
    /// Entries in all the trees (revisions of keys, leases), as etcd counts the keys of
    /// all its buckets.
    pub total_keys: u64,
    /// Bytes of the database the file holds (its trailer not counted).
    pub total_size: u64,
    /// Whether the file had a SHA-256 trailer, which was checked (a bare database file has
    /// none).
    pub hash_checked: bool,
}

/// Checks the snapshot file at `path` (its trailer, its newest commit's pages, and every
/// page of every tree as it is read) and reports on it. An incremental snapshot is refused:
/// it is not a database on its own. Memory is bounded: the trees are walked, not loaded.
pub fn status(path: &Path) -> Result<Status> {
    let (file, len) = open(path)?;
    let (tree_bytes, hash_checked) = match FileKind::of(&file, path, len)? {
        FileKind::Full { tree_bytes } => {
            check_trailer(&file, path, len)?;
            (tree_bytes, true)
        }
        FileKind::Database { tree_bytes } => (tree_bytes, false),
        FileKind::Increment { .. } => {
            return Err(bad_file(
                path,
                "is an incremental snapshot, not a database on its own: combine it with the \
                 snapshots before it first (cairn snapshot combine)",
            ))
        }
    };
    drop(file);
    let snapshot = Snapshot::of_file(path)?;
    if hash_checked && snapshot.len() != tree_bytes {
        return Err(bad_file(
            path,
            format!(
                "its database ends at byte {tree_bytes} but its newest whole commit at byte {} \
                 (not a snapshot cairn wrote)",
                snapshot.len()
            ),
        ));
    }
    let (revision, _) = crate::mvcc::commit_revisions(&snapshot.meta().user)?;
    drop(snapshot);
    let db = Db::open_read_only(path, DbOptions::default())?;
    let mut crc = 0u32;
    let mut total_keys = 0u64;
    for tree in 0..MAX_TREES as u8 {
        let mut first = true;
        for entry in db.range(tree, Bound::Unbounded, Bound::Unbounded, false) {
            let (key, value) = entry?;
            if first {
                crc = crc32c::crc32c_append(crc, &[tree]);
                first = false;
            }
            crc = crc32c::crc32c_append(crc, &key);
            crc = crc32c::crc32c_append(crc, &value);
            total_keys += 1;
        }
    }
    Ok(Status {
        hash: crc,
        revision,
        total_keys,
        total_size: tree_bytes,
        hash_checked,
    })
}
