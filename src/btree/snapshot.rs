//! Durable snapshots as byte streams. The file is append-only, so "the file up to commit C"
//! never changes once C is written: streaming it needs no pause, and the bytes form a valid
//! database file whose newest commit is C. A space reclamation that switches files keeps the
//! old file open for as long as a snapshot of it is alive.

use super::backing::Backing;
use super::db::{end_pages, find_state};
use super::file::{io_err, FileShared};
use super::page::PAGE_SIZE;
use super::{CommitMeta, Result};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

pub struct Snapshot {
    file: Arc<FileShared>,
    len: u64,
    pos: u64,
    meta: CommitMeta,
}

impl Snapshot {
    pub(crate) fn new(file: Arc<FileShared>, len: u64, meta: CommitMeta) -> Snapshot {
        Snapshot {
            file,
            len,
            pos: 0,
            meta,
        }
    }

    /// The newest complete commit of the database file at `path`, as a snapshot: what
    /// [`Db::open`](super::Db::open) would find there (the header checked, the newest valid
    /// commit record, the pages of that commit verified), read-only. Another process may be
    /// writing the file meanwhile: its bytes up to that commit never change, and the file
    /// stays open here, so even a switch to a reclaimed file leaves the snapshot whole.
    /// Bytes after the commit (one being written, or a snapshot file's trailer) are ignored.
    pub fn of_file(path: impl AsRef<Path>) -> Result<Snapshot> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
        let shared = FileShared::open(Backing::Disk(file), path.to_path_buf(), 0)?;
        let (last, _, _) = find_state(&shared)?;
        let len = end_pages(&last) * PAGE_SIZE as u64;
        let meta = CommitMeta {
            applied_index: last.applied_index,
            applied_term: last.applied_term,
            user: last.user,
        };
        Ok(Snapshot::new(Arc::new(shared), len, meta))
    }

    /// Total bytes of the stream.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Identifies the file the snapshot reads (its inode): snapshots with the same id are
    /// prefixes of one append-only file, so bytes received of one are bytes of the other.
    pub fn file_id(&self) -> u64 {
        self.file.file.file_id()
    }

    /// The commit this snapshot ends with.
    pub fn meta(&self) -> &CommitMeta {
        &self.meta
    }

    /// Reads up to `buf.len()` bytes at `offset` (for resumable, chunked transfers).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let n = buf.len().min((self.len - offset) as usize);
        self.file
            .file
            .read_exact_at(&mut buf[..n], offset)
            .map_err(|e| io_err(&self.file.path, e))?;
        Ok(n)
    }
}

impl Read for Snapshot {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.read_at(self.pos, buf).map_err(std::io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}
