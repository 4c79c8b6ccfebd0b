//! Backups: the snapshot file, incremental snapshots, `cairn snapshot status` and
//! `cairn snapshot restore`. Format and commands: `docs/backup.md`.
//!
//! - `stream`: [`SnapshotStream`], a snapshot as bounded chunks for a front end to send:
//!   the tree file up to one commit, then the SHA-256 of those bytes (etcd's
//!   `Maintenance.Snapshot` stream ends the same way, so `etcdctl snapshot save` writes a
//!   file `restore` takes); or, since an earlier snapshot ([`SnapshotPoint`]), only the
//!   bytes appended after it, behind a header naming it.
//! - `file`: reading snapshot files: which kind, the trailer checked; [`combine`] makes one
//!   full snapshot of a full one and the increments after it.
//! - `status`: [`status`], etcdctl's `snapshot status` (hash, revision, keys, size).
//! - `restore`: [`restore`], a new member's data directory of a new cluster from a
//!   snapshot, as `etcdctl snapshot restore` makes one.
//! - `save`: [`save`], `cairn snapshot save`: a running member's snapshot (full, or since
//!   an earlier one) received over the native protocol into a file.
//! - `cli`: the `cairn snapshot` command's arguments and output.

pub mod cli;
mod file;
mod restore;
mod save;
mod status;
mod stream;

pub use file::{combine, Combined, FileKind, INCREMENT_HEADER_BYTES, INCREMENT_MAGIC};
pub use restore::{restore, RestoreConfig, Restored};
pub use save::{save, Saved};
pub use status::{status, Status};
pub use stream::{SnapshotPoint, SnapshotStream};

use std::path::{Path, PathBuf};

/// Bytes of each chunk a snapshot stream yields, at most (the trailer and an increment's
/// header are chunks of their own).
pub const CHUNK_BYTES: usize = 1 << 20;

/// Bytes of the SHA-256 trailer.
pub const HASH_BYTES: usize = 32;

/// Bytes at the end of a snapshot whose CRC32C identifies where it ends: the newest
/// commit record (both copies).
pub const TAIL_BYTES: u64 = crate::btree::COMMIT_COPIES * crate::btree::PAGE_SIZE as u64;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A snapshot file that is damaged, cut short, or not what it must be.
    #[error("{}: {reason}", path.display())]
    BadFile { path: PathBuf, reason: String },
    /// Arguments that cannot be followed (a name missing from the cluster, a data
    /// directory in use).
    #[error("{0}")]
    Invalid(String),
    /// The member a snapshot was asked of failed, or could not be reached.
    #[error("{0}")]
    Remote(String),
    #[error(transparent)]
    Btree(#[from] crate::btree::BtreeError),
    #[error(transparent)]
    Mvcc(#[from] crate::mvcc::MvccError),
    #[error(transparent)]
    Wal(#[from] crate::wal::WalError),
}

pub type Result<T, E = BackupError> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn bad_file(path: &Path, reason: impl Into<String>) -> BackupError {
    BackupError::BadFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Makes the directory holding `path` durable (a file created or renamed in it).
fn sync_parent(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
