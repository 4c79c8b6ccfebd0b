//! Durable snapshots as byte streams. The file is append-only, so "the file up to commit C"
//! never changes once C is written: streaming it needs no pause, and the bytes form a valid
//! database file whose newest commit is C. A space reclamation that switches files keeps the
//! old file open for as long as a snapshot of it is alive.

use super::file::{io_err, FileShared};
use super::{CommitMeta, Result};
use std::io::Read;
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
