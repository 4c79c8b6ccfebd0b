//! The write-ahead log: fixed-size preallocated segments written with O_DIRECT through
//! io_uring (glommio DMA files), records chained by a rolling CRC32C, and group commit
//! (one O_DSYNC write per batch of concurrent appends).
//!
//! The byte layout, alignment rules and crash cases are documented in `docs/wal.md`.
//!
//! - `format`: encoding and decoding of segment headers, batches and records (pure).
//! - `segment`: segment file naming, listing, preallocation and removal.
//! - `reader`: open: verify, replay, repair a torn tail; [`inspect`]: the same, read-only.
//! - `writer`: [`Wal`], the group-commit writer and its background tasks.
//! - `mem`: [`MemWal`], the in-memory twin with a disk's faults (lost and torn unsynced
//!   writes, flipped bits) for simulations and crash tests.
//!
//! ```no_run
//! use cairn::wal::{RecordType, Wal, WalOptions};
//!
//! glommio::LocalExecutor::default().run(async {
//!     let wal = Wal::open("data/wal", WalOptions::default(), 1, |lsn, rtype, payload| {
//!         println!("replay {lsn} {rtype:?} {} bytes", payload.len());
//!         Ok(())
//!     })
//!     .await?;
//!     let lsn = wal.append(RecordType::ENTRY, b"hello").await?;
//!     wal.release_below(lsn).await?;
//!     wal.close().await
//! })
//! .unwrap();
//! ```

mod error;
mod format;
mod mem;
mod options;
mod reader;
mod segment;
mod writer;

#[cfg(test)]
mod tests;

pub use error::{is_no_space, Result, WalError};
pub use format::{Lsn, RecordType};
pub use mem::{MemDamage, MemReplay, MemWal, WriteToken, SECTOR_BYTES};
pub use options::{Prealloc, WalOptions};
pub use reader::{inspect, lock_shared, Inspection, Leftover, ReplayError, SharedLock, TornTail};
pub use writer::{Append, BatchWritten, CreationStopper, WaitDurable, Wal, WalMetrics};

/// How often [`keep_reactor_awake`] wakes its executor.
pub const REACTOR_TICK: std::time::Duration = std::time::Duration::from_millis(20);

/// Keeps a timer armed on the current glommio executor for as long as it runs.
///
/// glommio 0.9's reactor can go to sleep past a completion it has not reaped: a test that
/// opens a WAL over and over stalled in `Wal::open` about once in ten runs under load, until
/// something interrupted the process. With a timer armed it wakes when the timer fires, so a
/// stall lasts one tick at most. Executors that do WAL I/O with nothing else keeping a timer
/// armed (`cairn check`, `cairn repair`, tests, benchmarks) call this once; the server's roles
/// poll with timers of their own.
pub fn keep_reactor_awake() {
    glommio::spawn_local(async {
        loop {
            glommio::timer::sleep(REACTOR_TICK).await;
        }
    })
    .detach();
}
