//! `cairn snapshot save`: a running member's snapshot over the network into a file, as
//! `etcdctl snapshot save` writes one: into `FILE.part`, synced, then renamed to `FILE` (and
//! the directory synced), so `FILE` is either absent or whole. The SHA-256 trailer is
//! checked against the bytes before it as they arrive: a file saved is a file `restore`
//! takes.

use super::{io_err, sync_parent, BackupError, Result, SnapshotPoint, HASH_BYTES};
use crate::client::SnapshotDownload;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A snapshot saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// The endpoint it came from.
    pub endpoint: String,
    /// Bytes of the file.
    pub bytes: u64,
}

/// Saves a snapshot of the first of `endpoints` that answers into `file`: the whole tree,
/// or with `since` (an earlier snapshot of the same member, full or incremental) only what
/// the member appended after it. `timeout` bounds each chunk's wait.
pub fn save(
    endpoints: &[String],
    timeout: Duration,
    file: &Path,
    since: Option<&Path>,
) -> Result<Saved> {
    let base = since.map(SnapshotPoint::of_file).transpose()?;
    let remote = |e: crate::client::ClientError| BackupError::Remote(e.to_string());
    let mut download = SnapshotDownload::start(endpoints, timeout, base).map_err(remote)?;
    let part = part_path(file);
    let written = write_part(&mut download, &part);
    let bytes = match written {
        Ok(bytes) => bytes,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
    };
    std::fs::rename(&part, file).map_err(io_err(file))?;
    sync_parent(file)?;
    Ok(Saved {
        endpoint: download.endpoint().to_string(),
        bytes,
    })
}

/// `FILE.part`, where the snapshot is written until it is whole and durable.
fn part_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_os_string();
    name.push(".part");
    PathBuf::from(name)
}

/// Writes the chunks into `part` and syncs it; the bytes written.
fn write_part(download: &mut SnapshotDownload, part: &Path) -> Result<u64> {
    // Readable by its owner only, as etcdctl's: it holds every key and value.
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(part)
        .map_err(io_err(part))?;
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let mut trailer_checked = false;
    while let Some(chunk) = download
        .next_chunk()
        .map_err(|e| BackupError::Remote(e.to_string()))?
    {
        if chunk.remaining_bytes == 0 {
            // The stream's last chunk is the trailer alone.
            let digest = hasher.clone().finalize();
            if chunk.blob.len() != HASH_BYTES || chunk.blob[..] != digest[..] {
                return Err(super::bad_file(
                    part,
                    "the snapshot received does not match its SHA-256 trailer",
                ));
            }
            trailer_checked = true;
        } else {
            hasher.update(&chunk.blob);
        }
        out.write_all(&chunk.blob).map_err(io_err(part))?;
        bytes += chunk.blob.len() as u64;
    }
    if !trailer_checked {
        return Err(BackupError::Remote(
            "the snapshot stream ended without its trailer".into(),
        ));
    }
    out.sync_all().map_err(io_err(part))?;
    Ok(bytes)
}
