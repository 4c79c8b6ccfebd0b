//! A snapshot as a stream of bounded chunks: the tree file's bytes up to one commit (all of
//! them, or those after an earlier snapshot's end), then the SHA-256 of everything before.

use super::file::increment_header;
use super::{bad_file, BackupError, Result, CHUNK_BYTES, HASH_BYTES, TAIL_BYTES};
use crate::btree::{Snapshot, PAGE_SIZE};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;

/// Where a snapshot ends in the tree file it was taken of: what an incremental snapshot
/// taken later starts from, and how it is told that the tree file still holds those bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPoint {
    /// Bytes of the tree file the snapshot holds (it ends with a commit record).
    pub end: u64,
    /// CRC32C of the last [`TAIL_BYTES`] of those (the newest commit record's two copies;
    /// the header page alone in a file with no commit yet).
    pub tail_crc: u32,
    /// The snapshot file's SHA-256 trailer, which names it (an increment on it records it).
    pub sha256: [u8; HASH_BYTES],
}

impl SnapshotPoint {
    /// Where the snapshot file at `path` (full or incremental) ends. Reads its header, its
    /// last commit record and its trailer only; the trailer itself is checked when the
    /// files are combined or restored.
    pub fn of_file(path: &Path) -> Result<SnapshotPoint> {
        super::file::point_of_file(path)
    }
}

/// The chunks of one snapshot, in order, each at most [`CHUNK_BYTES`]: for an incremental
/// snapshot its header first; then the tree file's bytes; last, the 32-byte SHA-256 of every
/// byte before it. Reads the file as it goes (positioned reads; memory is one chunk), and the
/// bytes it reads never change, so writes to the tree go on meanwhile.
pub struct SnapshotStream {
    snapshot: Arc<Snapshot>,
    header: Option<Vec<u8>>,
    pos: u64,
    hasher: Option<Sha256>,
}

// A front end sends the chunks from a thread of its own (the gRPC server's runtime).
const _: () = {
    const fn send<T: Send + 'static>() {}
    send::<SnapshotStream>()
};

impl SnapshotStream {
    /// The whole snapshot: the tree file up to its commit, then the hash.
    pub fn full(snapshot: Arc<Snapshot>) -> SnapshotStream {
        SnapshotStream {
            snapshot,
            header: None,
            pos: 0,
            hasher: Some(Sha256::new()),
        }
    }

    /// The bytes appended since `base` (an earlier snapshot of the same tree file), behind
    /// a header naming `base`. Fails if the tree file does not hold `base`'s bytes where
    /// `base` ended (its space was reclaimed since, or `base` is of another member's file):
    /// a full snapshot is needed then.
    pub fn since(snapshot: Arc<Snapshot>, base: &SnapshotPoint) -> Result<SnapshotStream> {
        check_base(&snapshot, base)?;
        let header = increment_header(base);
        Ok(SnapshotStream {
            snapshot,
            header: Some(header),
            pos: base.end,
            hasher: Some(Sha256::new()),
        })
    }

    /// The tree file's bytes the snapshot holds (its trailer and any header not counted).
    pub fn end(&self) -> u64 {
        self.snapshot.len()
    }

    /// Bytes the stream has yet to yield, the trailer included (what etcd's
    /// `SnapshotResponse.remaining_bytes` counts).
    pub fn remaining_bytes(&self) -> u64 {
        let header = self.header.as_ref().map_or(0, |h| h.len() as u64);
        let trailer = if self.hasher.is_some() {
            HASH_BYTES as u64
        } else {
            0
        };
        header + (self.snapshot.len() - self.pos.min(self.snapshot.len())) + trailer
    }

    /// The commit the snapshot ends with.
    pub fn meta(&self) -> &crate::btree::CommitMeta {
        self.snapshot.meta()
    }

    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        let Some(hasher) = self.hasher.as_mut() else {
            return Ok(None);
        };
        if let Some(header) = self.header.take() {
            hasher.update(&header);
            return Ok(Some(header));
        }
        let end = self.snapshot.len();
        if self.pos < end {
            let n = (end - self.pos).min(CHUNK_BYTES as u64) as usize;
            let mut chunk = vec![0u8; n];
            let read = self.snapshot.read_at(self.pos, &mut chunk)?;
            if read != n {
                return Err(BackupError::Invalid(format!(
                    "the tree file ended at byte {} while a snapshot to byte {end} was read",
                    self.pos + read as u64
                )));
            }
            hasher.update(&chunk);
            self.pos += n as u64;
            return Ok(Some(chunk));
        }
        let digest = self.hasher.take().map(|h| h.finalize().to_vec());
        Ok(digest)
    }
}

impl Iterator for SnapshotStream {
    type Item = Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_chunk() {
            Ok(chunk) => chunk.map(Ok),
            Err(e) => {
                self.hasher = None; // nothing after an error
                Some(Err(e))
            }
        }
    }
}

/// CRC32C of the [`TAIL_BYTES`] (or fewer, at the file's start) before `end`.
pub(super) fn tail_crc(end: u64, read_at: impl Fn(u64, &mut [u8]) -> Result<usize>) -> Result<u32> {
    let n = end.min(TAIL_BYTES) as usize;
    let mut tail = vec![0u8; n];
    let read = read_at(end - n as u64, &mut tail)?;
    if read != n {
        return Err(BackupError::Invalid(format!(
            "{read} bytes where {n} were read before byte {end}"
        )));
    }
    Ok(crc32c::crc32c(&tail))
}

fn check_base(snapshot: &Snapshot, base: &SnapshotPoint) -> Result<()> {
    let path = Path::new("the previous snapshot");
    if base.end < PAGE_SIZE as u64 || !base.end.is_multiple_of(PAGE_SIZE as u64) {
        return Err(bad_file(
            path,
            format!("ends at byte {}, not after a whole page", base.end),
        ));
    }
    let differs = || {
        BackupError::Invalid(format!(
            "the previous snapshot ends at byte {} of a tree file that does not hold its bytes \
             there now (the member's space was reclaimed since, or the snapshot is of another \
             member): take a full snapshot",
            base.end
        ))
    };
    if base.end > snapshot.len() {
        return Err(differs());
    }
    let crc = tail_crc(base.end, |at, buf| Ok(snapshot.read_at(at, buf)?))?;
    if crc != base.tail_crc {
        return Err(differs());
    }
    Ok(())
}
