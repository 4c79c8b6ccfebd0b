//! Snapshot files on disk: telling a full snapshot from an increment and a bare database
//! file, checking trailers, and combining a full snapshot with its increments.

use super::stream::{tail_crc, SnapshotPoint};
use super::TAIL_BYTES;
use super::{bad_file, hex, io_err, sync_parent, BackupError, Result, CHUNK_BYTES, HASH_BYTES};
use crate::btree::{Snapshot, PAGE_SIZE};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The first bytes of an incremental snapshot file.
pub const INCREMENT_MAGIC: &[u8; 8] = b"CAIRNINC";
/// Bytes of an incremental snapshot's header.
pub const INCREMENT_HEADER_BYTES: usize = 64;
const INCREMENT_VERSION: u32 = 1;

/// What an incremental snapshot's header says of the snapshot it follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IncrementHeader {
    pub base: SnapshotPoint,
}

/// What a file given as a snapshot is, by its first bytes and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// The tree file's bytes, then their SHA-256.
    Full { tree_bytes: u64 },
    /// Whole pages and no trailer: a copy of a member's tree file (`db/cairn.db`), or a
    /// snapshot cut short at a page boundary.
    Database { tree_bytes: u64 },
    /// A header, the tree file's bytes after `header.base.end`, then the SHA-256 of both.
    Increment {
        header: IncrementHeader,
        payload_bytes: u64,
    },
}

impl FileKind {
    /// Reads the kind of the open file at `path`, `len` bytes long.
    pub fn of(file: &File, path: &Path, len: u64) -> Result<FileKind> {
        let mut magic = [0u8; 8];
        if len >= INCREMENT_MAGIC.len() as u64 {
            file.read_exact_at(&mut magic, 0).map_err(io_err(path))?;
        }
        let page = PAGE_SIZE as u64;
        let hash = HASH_BYTES as u64;
        if &magic == INCREMENT_MAGIC {
            let fixed = INCREMENT_HEADER_BYTES as u64 + hash;
            if len < fixed || !(len - fixed).is_multiple_of(page) {
                return Err(bad_file(
                    path,
                    format!(
                        "an incremental snapshot of {len} bytes: not a header, whole pages and a \
                         32-byte SHA-256 trailer (cut short or damaged)"
                    ),
                ));
            }
            let mut bytes = [0u8; INCREMENT_HEADER_BYTES];
            file.read_exact_at(&mut bytes, 0).map_err(io_err(path))?;
            let header = parse_increment_header(&bytes, path)?;
            return Ok(FileKind::Increment {
                header,
                payload_bytes: len - fixed,
            });
        }
        // etcd's rule for a trailer (`size % 512 == 32`), on whole pages here.
        if len % 512 == hash && len > hash && (len - hash).is_multiple_of(page) {
            return Ok(FileKind::Full {
                tree_bytes: len - hash,
            });
        }
        if len >= page && len.is_multiple_of(page) {
            return Ok(FileKind::Database { tree_bytes: len });
        }
        Err(bad_file(
            path,
            format!(
                "{len} bytes: neither whole pages of a database file followed by a 32-byte \
                 SHA-256 trailer (a snapshot) nor whole pages (a database file): cut short or \
                 damaged"
            ),
        ))
    }
}

/// An increment's header: magic, version, where its base ends (bytes of the tree file,
/// the CRC32C of its last commit record) and its base's SHA-256 trailer.
pub(super) fn increment_header(base: &SnapshotPoint) -> Vec<u8> {
    let mut h = vec![0u8; INCREMENT_HEADER_BYTES];
    h[0..8].copy_from_slice(INCREMENT_MAGIC);
    h[8..12].copy_from_slice(&INCREMENT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&base.end.to_le_bytes());
    h[24..28].copy_from_slice(&base.tail_crc.to_le_bytes());
    h[32..64].copy_from_slice(&base.sha256);
    h
}

fn parse_increment_header(
    h: &[u8; INCREMENT_HEADER_BYTES],
    path: &Path,
) -> Result<IncrementHeader> {
    let u32_at = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    let version = u32_at(8);
    if version != INCREMENT_VERSION {
        return Err(bad_file(
            path,
            format!("incremental snapshot format {version}; this build reads {INCREMENT_VERSION}"),
        ));
    }
    let mut end = [0u8; 8];
    end.copy_from_slice(&h[16..24]);
    let mut sha256 = [0u8; HASH_BYTES];
    sha256.copy_from_slice(&h[32..64]);
    let end = u64::from_le_bytes(end);
    if end < PAGE_SIZE as u64 || !end.is_multiple_of(PAGE_SIZE as u64) {
        return Err(bad_file(
            path,
            format!("the incremental snapshot's base ends at byte {end}, not after a whole page"),
        ));
    }
    Ok(IncrementHeader {
        base: SnapshotPoint {
            end,
            tail_crc: u32_at(24),
            sha256,
        },
    })
}

/// Opens `path` for reading, with its length.
pub(super) fn open(path: &Path) -> Result<(File, u64)> {
    let file = File::open(path).map_err(io_err(path))?;
    let meta = file.metadata().map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(bad_file(path, "not a regular file"));
    }
    Ok((file, meta.len()))
}

pub(super) fn read_trailer(file: &File, path: &Path, len: u64) -> Result<[u8; HASH_BYTES]> {
    let mut sha = [0u8; HASH_BYTES];
    file.read_exact_at(&mut sha, len - HASH_BYTES as u64)
        .map_err(io_err(path))?;
    Ok(sha)
}

/// Feeds bytes `from..to` of `file` to `each`, a chunk at a time.
pub(super) fn for_each_chunk(
    file: &File,
    path: &Path,
    from: u64,
    to: u64,
    mut each: impl FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut at = from;
    while at < to {
        let n = (to - at).min(CHUNK_BYTES as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)
            .map_err(io_err(path))?;
        each(&buf[..n])?;
        at += n as u64;
    }
    Ok(())
}

/// Checks that the SHA-256 of bytes `0..len - 32` of `file` is its trailer.
pub(super) fn check_trailer(file: &File, path: &Path, len: u64) -> Result<()> {
    let want = read_trailer(file, path, len)?;
    let mut h = Sha256::new();
    for_each_chunk(file, path, 0, len - HASH_BYTES as u64, |c| {
        h.update(c);
        Ok(())
    })?;
    let got: [u8; HASH_BYTES] = h.finalize().into();
    if got != want {
        return Err(hash_mismatch(path, &want, &got));
    }
    Ok(())
}

fn hash_mismatch(path: &Path, want: &[u8], got: &[u8]) -> BackupError {
    bad_file(
        path,
        format!(
            "SHA-256 mismatch: the trailer says {}, the contents hash to {} (the file is \
             damaged or cut short)",
            hex(want),
            hex(got)
        ),
    )
}

pub(super) fn point_of_file(path: &Path) -> Result<SnapshotPoint> {
    let (file, len) = open(path)?;
    let read_at = |at: u64, buf: &mut [u8]| {
        file.read_exact_at(buf, at).map_err(io_err(path))?;
        Ok(buf.len())
    };
    match FileKind::of(&file, path, len)? {
        FileKind::Full { tree_bytes } => Ok(SnapshotPoint {
            end: tree_bytes,
            tail_crc: tail_crc(tree_bytes, read_at)?,
            sha256: read_trailer(&file, path, len)?,
        }),
        FileKind::Database { .. } => Err(bad_file(
            path,
            "has no SHA-256 trailer: not a snapshot an increment can follow",
        )),
        FileKind::Increment {
            header,
            payload_bytes,
        } => {
            let tail = if payload_bytes == 0 {
                header.base.tail_crc
            } else if payload_bytes < TAIL_BYTES {
                return Err(bad_file(
                    path,
                    "the incremental snapshot's bytes do not end with a commit record",
                ));
            } else {
                let end = INCREMENT_HEADER_BYTES as u64 + payload_bytes;
                tail_crc(end, read_at)?
            };
            Ok(SnapshotPoint {
                end: header.base.end + payload_bytes,
                tail_crc: tail,
                sha256: read_trailer(&file, path, len)?,
            })
        }
    }
}

/// A full snapshot written by [`combine`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Combined {
    /// Bytes of the tree file it holds.
    pub end: u64,
    pub sha256: [u8; HASH_BYTES],
}

/// Writes to `out` the full snapshot that `full` and the `increments` after it (each
/// following the one before) make together: byte for byte the full snapshot of the same
/// tree file at the last increment's commit. Every file's trailer is checked, and each
/// increment's header against what precedes it; the result ends with a valid commit.
/// Written as `<out>.part`, synced, then renamed; nothing is left at `out` on failure.
pub fn combine(full: &Path, increments: &[PathBuf], out: &Path) -> Result<Combined> {
    let part = with_suffix(out, ".part");
    let result = combine_into(full, increments, &part);
    match result {
        Ok(combined) => {
            std::fs::rename(&part, out).map_err(io_err(out))?;
            sync_parent(out)?;
            Ok(combined)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            Err(e)
        }
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn combine_into(full: &Path, increments: &[PathBuf], part: &Path) -> Result<Combined> {
    let mut out = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(part)
        .map_err(io_err(part))?;
    let mut whole = Sha256::new();
    let (mut end, mut prev_sha) = copy_full(full, &mut out, part, &mut whole)?;
    for inc in increments {
        let tail = tail_crc(end, |at, buf| {
            out.read_exact_at(buf, at).map_err(io_err(part))?;
            Ok(buf.len())
        })?;
        let after = SnapshotPoint {
            end,
            tail_crc: tail,
            sha256: prev_sha,
        };
        (end, prev_sha) = append_increment(inc, &after, &mut out, part, &mut whole)?;
    }
    let sha256: [u8; HASH_BYTES] = whole.finalize().into();
    out.write_all(&sha256).map_err(io_err(part))?;
    out.sync_all().map_err(io_err(part))?;
    drop(out);
    // The bytes must end with a whole commit (its pages verified), as a snapshot does.
    let snapshot = Snapshot::of_file(part)?;
    if snapshot.len() != end {
        return Err(bad_file(
            part,
            format!(
                "the combined bytes end at byte {end} but their newest whole commit at byte {}",
                snapshot.len()
            ),
        ));
    }
    Ok(Combined { end, sha256 })
}

/// Copies the full snapshot's database to `out`, checking its trailer; where it ends, and
/// the trailer.
fn copy_full(
    full: &Path,
    out: &mut File,
    part: &Path,
    whole: &mut Sha256,
) -> Result<(u64, [u8; HASH_BYTES])> {
    let (file, len) = open(full)?;
    let tree_bytes = match FileKind::of(&file, full, len)? {
        FileKind::Full { tree_bytes } => tree_bytes,
        FileKind::Database { .. } => {
            return Err(bad_file(
                full,
                "has no SHA-256 trailer: not a full snapshot",
            ))
        }
        FileKind::Increment { .. } => {
            return Err(bad_file(
                full,
                "is an incremental snapshot; the first file must be a full one",
            ))
        }
    };
    for_each_chunk(&file, full, 0, tree_bytes, |c| {
        whole.update(c);
        out.write_all(c).map_err(io_err(part))
    })?;
    let trailer = read_trailer(&file, full, len)?;
    let got: [u8; HASH_BYTES] = whole.clone().finalize().into();
    if got != trailer {
        return Err(hash_mismatch(full, &trailer, &got));
    }
    Ok((tree_bytes, trailer))
}

/// Appends the increment's bytes to `out`, which holds the snapshot ending at `after`,
/// checking that it follows that snapshot and its own trailer; the new end, and the
/// increment's trailer.
fn append_increment(
    inc: &Path,
    after: &SnapshotPoint,
    out: &mut File,
    part: &Path,
    whole: &mut Sha256,
) -> Result<(u64, [u8; HASH_BYTES])> {
    let (file, len) = open(inc)?;
    let (header, payload_bytes) = match FileKind::of(&file, inc, len)? {
        FileKind::Increment {
            header,
            payload_bytes,
        } => (header, payload_bytes),
        _ => return Err(bad_file(inc, "is not an incremental snapshot")),
    };
    if header.base != *after {
        return Err(bad_file(
            inc,
            format!(
                "does not follow the snapshot before it (it follows one ending at byte {} \
                 with SHA-256 {}; the one before ends at byte {} with SHA-256 {})",
                header.base.end,
                hex(&header.base.sha256),
                after.end,
                hex(&after.sha256)
            ),
        ));
    }
    let mut own = Sha256::new();
    let mut header_bytes = [0u8; INCREMENT_HEADER_BYTES];
    file.read_exact_at(&mut header_bytes, 0)
        .map_err(io_err(inc))?;
    own.update(header_bytes);
    let from = INCREMENT_HEADER_BYTES as u64;
    for_each_chunk(&file, inc, from, from + payload_bytes, |c| {
        own.update(c);
        whole.update(c);
        out.write_all(c).map_err(io_err(part))
    })?;
    let trailer = read_trailer(&file, inc, len)?;
    let got: [u8; HASH_BYTES] = own.finalize().into();
    if got != trailer {
        return Err(hash_mismatch(inc, &trailer, &got));
    }
    Ok((after.end + payload_bytes, trailer))
}
