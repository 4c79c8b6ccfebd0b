//! Segment files: naming, listing, creation (preallocation) and removal.
//!
//! A segment is created as `<seq>.wal.tmp`, preallocated, given a blank header, synced,
//! renamed to `<seq>.wal` and the directory synced, so a crash never leaves a half-made
//! segment under a real name. Leftover `.tmp` files are deleted on open.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{Directory, DmaFile, OpenOptions};

use super::error::{IoContext, Result};
use super::format::{SegmentHeader, BLOCK_BYTES};
use super::options::Prealloc;

/// Zeros are written in chunks of this size when a segment is zero-filled.
const ZERO_FILL_CHUNK_BYTES: u64 = 1 << 20;

/// File name of segment `seq`: 16 lowercase hex digits and `.wal`.
pub(crate) fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.wal")
}

/// Parses a segment file name; `None` for anything else.
fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".wal")?;
    if hex.len() != 16 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// The segment files of a WAL directory, in sequence order, and leftover temporaries.
pub(crate) struct Listing {
    pub segments: Vec<(u64, PathBuf)>,
    pub temporaries: Vec<PathBuf>,
}

pub(crate) fn list(dir: &Path) -> Result<Listing> {
    let mut listing = Listing {
        segments: Vec::new(),
        temporaries: Vec::new(),
    };
    for entry in std::fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = parse_segment_name(name) {
            listing.segments.push((seq, entry.path()));
        } else if name
            .strip_suffix(".tmp")
            .and_then(parse_segment_name)
            .is_some()
        {
            listing.temporaries.push(entry.path());
        }
    }
    listing.segments.sort_unstable_by_key(|(seq, _)| *seq);
    Ok(listing)
}

/// An open segment file.
pub(crate) struct SegmentFile {
    pub file: DmaFile,
    pub seq: u64,
    pub path: PathBuf,
    pub segment_bytes: u64,
}

pub(crate) async fn open_read(path: &Path) -> Result<DmaFile> {
    OpenOptions::new().read(true).dma_open(path).await.at(path)
}

pub(crate) async fn open_write(path: &Path) -> Result<DmaFile> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .dma_open(path)
        .await
        .at(path)
}

/// Opens a prepared segment for batch writes: O_DIRECT and O_DSYNC, so that a write
/// completes only once its data is durable (the kernel flushes the device's cache, or
/// writes through with FUA where the device has it). One io_uring operation per batch
/// instead of a write and then an `fdatasync`.
pub(crate) async fn open_durable(path: &Path) -> Result<DmaFile> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DSYNC)
        .dma_open(path)
        .await
        .at(path)
}

/// Writes zeros over `[from, to)` of `file` (both block aligned) with large DMA writes.
pub(crate) async fn zero_range(file: &DmaFile, path: &Path, from: u64, to: u64) -> Result<()> {
    assert!(from.is_multiple_of(BLOCK_BYTES) && to.is_multiple_of(BLOCK_BYTES) && from <= to);
    let chunk = ZERO_FILL_CHUNK_BYTES.min(to - from) as usize;
    if chunk == 0 {
        return Ok(());
    }
    let mut zeros = file.alloc_dma_buffer(chunk);
    zeros.as_bytes_mut().fill(0);
    let zeros = Rc::new(zeros);
    let mut at = from;
    while at < to {
        let len = (to - at).min(chunk as u64) as usize;
        let written = if len == chunk {
            file.write_rc_at(zeros.clone(), at).await.at(path)?
        } else {
            let mut tail = file.alloc_dma_buffer(len);
            tail.as_bytes_mut().fill(0);
            file.write_at(tail, at).await.at(path)?
        };
        if written != len {
            return Err(short_write(path, at, written, len));
        }
        at += len as u64;
    }
    Ok(())
}

pub(crate) fn short_write(path: &Path, at: u64, written: usize, len: usize) -> super::WalError {
    super::WalError::Io {
        path: path.to_owned(),
        source: std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            format!("short write at byte {at}: {written} of {len} bytes"),
        ),
    }
}

/// Creates segment `seq`: a `.tmp` file preallocated to `segment_bytes` with a blank
/// header, synced, then renamed into place with the directory synced. With `spare` (a
/// released segment set aside by [`release`], only ever with [`Prealloc::ZeroFill`]), that
/// file is reused: renamed to the `.tmp` name and written over, every byte of it, instead of
/// allocating a new file (and freeing the old one, which this disk discards slowly).
pub(crate) async fn create(
    dir: Rc<Directory>,
    dir_path: PathBuf,
    seq: u64,
    segment_bytes: u64,
    prealloc: Prealloc,
    spare: Option<PathBuf>,
) -> Result<SegmentFile> {
    let path = dir_path.join(segment_name(seq));
    let tmp = dir_path.join(format!("{}.tmp", segment_name(seq)));
    let reuse = match spare {
        Some(spare) if prealloc == Prealloc::ZeroFill => {
            match glommio::io::rename(&spare, &tmp).await {
                Ok(()) => true,
                Err(error) => {
                    // A fresh file will do.
                    tracing::warn!(%error, path = %spare.display(), "reusing a released WAL segment failed");
                    false
                }
            }
        }
        _ => false,
    };
    // The blank header goes through the page cache before the first DMA open: glommio
    // probes io_uring polling support with a read of the first block of the first DMA file
    // an executor opens, and a read of an empty file "succeeds" and wrongly enables polling
    // (every later DMA read then fails with EOPNOTSUPP on devices without poll queues).
    let mut header = vec![0u8; BLOCK_BYTES as usize];
    SegmentHeader::blank(seq, segment_bytes).encode(&mut header);
    let buffered = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(!reuse)
        .buffered_open(&tmp)
        .await
        .at(&tmp)?;
    let written = buffered.write_at(header, 0).await.at(&tmp)?;
    buffered.close().await.at(&tmp)?;
    if written != BLOCK_BYTES as usize {
        return Err(short_write(&tmp, 0, written, BLOCK_BYTES as usize));
    }
    let file = open_write(&tmp).await?;
    file.pre_allocate(segment_bytes, false).await.at(&tmp)?;
    if prealloc == Prealloc::ZeroFill {
        zero_range(&file, &tmp, BLOCK_BYTES, segment_bytes).await?;
    }
    file.fdatasync().await.at(&tmp)?;
    file.rename(&path).await.at(&path)?;
    dir.sync().await.at(&dir_path)?;
    file.close().await.at(&path)?;
    let file = open_durable(&path).await?;
    tracing::debug!(path = %path.display(), "preallocated WAL segment");
    Ok(SegmentFile {
        file,
        seq,
        path,
        segment_bytes,
    })
}

/// Deletes the given files in order, syncing the directory after each, so a crash leaves
/// a suffix of the list (segments are deleted oldest first: never a hole in the sequence).
pub(crate) async fn remove_all(dir: &Directory, dir_path: &Path, paths: &[PathBuf]) -> Result<()> {
    for path in paths {
        glommio::io::remove(path).await.at(path)?;
        dir.sync().await.at(dir_path)?;
    }
    Ok(())
}

/// Deletes the given segments in order, syncing the directory after each, so a crash
/// leaves a suffix of the list (segments are deleted oldest first: never a hole in the
/// sequence). If `spare` is empty and `recycle` is set, the first one is not deleted but
/// renamed to its `.tmp` name and kept there for the next segment to be created over
/// (see [`create`]); a `.tmp` file is never read, and is deleted on open if still there.
pub(crate) async fn release(
    dir: &Directory,
    dir_path: &Path,
    paths: &[PathBuf],
    spare: &RefCell<Option<PathBuf>>,
    recycle: bool,
    segment_bytes: u64,
) -> Result<()> {
    for path in paths {
        // Only a file of exactly the size new segments get (the size may have been another
        // when it was created) is written over whole by `create`.
        let keep = recycle
            && spare.borrow().is_none()
            && std::fs::metadata(path).is_ok_and(|m| m.len() == segment_bytes);
        if keep {
            let mut name = path.clone().into_os_string();
            name.push(".tmp");
            let tmp = PathBuf::from(name);
            glommio::io::rename(path, &tmp).await.at(path)?;
            dir.sync().await.at(dir_path)?;
            *spare.borrow_mut() = Some(tmp);
        } else {
            glommio::io::remove(path).await.at(path)?;
            dir.sync().await.at(dir_path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_name(0x2a), "000000000000002a.wal");
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_segment_name("000000000000002A.wal"), None);
        assert_eq!(parse_segment_name("2a.wal"), None);
        assert_eq!(parse_segment_name("000000000000002a.wal.tmp"), None);
    }
}
