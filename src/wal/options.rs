//! Every bound and tunable of the WAL, with its default.

use super::error::{Result, WalError};
use super::format::{
    batch_disk_bytes, BLOCK_BYTES, RECORD_HEADER_BYTES, SEGMENT_BYTES_MAX, SEGMENT_HEADER_BYTES,
};

/// How a new segment file is preallocated before its first use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prealloc {
    /// `fallocate`, then write zeros over the whole file. Appends then overwrite blocks
    /// that are already written, so their `fdatasync` has no extent conversion to log.
    ZeroFill,
    /// `fallocate` only (unwritten extents). Cheaper to create, slower to append to.
    Fallocate,
}

/// Options of [`Wal::open`](super::Wal::open).
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// Size of each new segment file, a multiple of 4096. Default 64 MiB.
    pub segment_bytes: u64,
    /// Most bytes of encoded records (16-byte header + payload padded to 8, per record) in
    /// one group-commit batch. Appenders wait while the pending batch is full; a single
    /// append larger than this fails. Default 4 MiB.
    pub batch_bytes_max: usize,
    /// How new segments are preallocated. Default [`Prealloc::ZeroFill`].
    pub prealloc: Prealloc,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 64 << 20,
            batch_bytes_max: 4 << 20,
            prealloc: Prealloc::ZeroFill,
        }
    }
}

impl WalOptions {
    pub(crate) fn validate(&self) -> Result<()> {
        let fail = |m: String| Err(WalError::InvalidOptions(m));
        if !self.segment_bytes.is_multiple_of(BLOCK_BYTES) || self.segment_bytes > SEGMENT_BYTES_MAX
        {
            return fail(format!(
                "segment_bytes {} is not a multiple of 4096 up to 1 TiB",
                self.segment_bytes
            ));
        }
        if self.batch_bytes_max < RECORD_HEADER_BYTES || self.batch_bytes_max > u32::MAX as usize {
            return fail(format!(
                "batch_bytes_max {} out of range",
                self.batch_bytes_max
            ));
        }
        let largest_batch = batch_disk_bytes(self.batch_bytes_max);
        if largest_batch > self.segment_bytes.saturating_sub(SEGMENT_HEADER_BYTES) {
            return fail(format!(
                "a full batch ({largest_batch} bytes on disk) does not fit in a segment of {} bytes",
                self.segment_bytes
            ));
        }
        Ok(())
    }

    /// Largest payload a single [`Wal::append`](super::Wal::append) accepts.
    pub fn payload_bytes_max(&self) -> usize {
        (self.batch_bytes_max - RECORD_HEADER_BYTES) & !7
    }
}
