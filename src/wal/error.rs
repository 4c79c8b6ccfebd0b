//! The WAL's error type.

use std::io;
use std::path::PathBuf;

use super::format::Lsn;

/// Everything the WAL can fail with. Errors found while reading name the file and the byte
/// offset of the damage.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// Damaged data that cannot be a torn write (it precedes acknowledged data).
    #[error("corrupt WAL segment {path} at byte {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("WAL segment {seq:016x} is missing from {dir}")]
    MissingSegment { dir: PathBuf, seq: u64 },
    #[error("{path} is not a WAL segment (bad magic {found:#018x})")]
    BadMagic { path: PathBuf, found: u64 },
    #[error("{path} has unsupported WAL format version {version}")]
    UnsupportedVersion { path: PathBuf, version: u32 },
    /// A record header claims more bytes than its segment can hold.
    #[error("record at byte {offset} of {path} claims {len} bytes, more than its segment holds")]
    RecordTooLong {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
    /// An append larger than one batch (`batch_bytes_max`) can hold.
    #[error("append of {bytes} encoded bytes exceeds the {limit}-byte batch limit")]
    RecordTooLarge { bytes: usize, limit: usize },
    #[error("invalid WAL options: {0}")]
    InvalidOptions(String),
    /// A write or fdatasync failed earlier; the WAL acknowledges nothing after that.
    #[error("WAL failed and accepts no more appends: {reason}")]
    Failed { reason: String },
    /// Another open WAL holds the directory's lock.
    #[error("WAL directory {dir} is in use by another open WAL")]
    Locked { dir: PathBuf },
    /// The replay callback returned an error.
    #[error("replay stopped at LSN {lsn}: {source}")]
    Replay {
        lsn: Lsn,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl WalError {
    /// Whether this is the file system running out of space (or of quota): a condition that
    /// freeing space ends, unlike damage or a failed device.
    pub fn is_no_space(&self) -> bool {
        match self {
            WalError::Io { source, .. } => is_no_space(source),
            _ => false,
        }
    }
}

/// Whether an I/O error says the file system is full (ENOSPC) or the quota is used (EDQUOT).
pub fn is_no_space(e: &io::Error) -> bool {
    // glommio keeps the kind of the errors it wraps, not the raw code.
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
        || matches!(
            e.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        )
}

/// Result with [`WalError`].
pub type Result<T, E = WalError> = std::result::Result<T, E>;

/// Attaches a path to the I/O errors of glommio and std.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T, E: Into<io::Error>> IoContext<T> for std::result::Result<T, E> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| WalError::Io {
            path: path.into(),
            source: e.into(),
        })
    }
}
