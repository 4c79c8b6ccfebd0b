//! [`IndexLock`]: the key index shared by the writer and the readers on other threads, with
//! the writer first.
//!
//! A reader walks the index a chunk at a time and ends its chunk as soon as it sees a put
//! waiting (`range.rs`). What is left is the handoff itself. A `parking_lot` writer that finds
//! readers spins for a few microseconds, then sleeps until the last reader wakes it, which
//! costs tens of microseconds on a virtual machine, more than the put itself; a reader that
//! finds the writer in sleeps the same way and the writer's unlock pays for waking it. So a
//! put announces itself and spins while readers leave, and readers spin while a put is
//! waiting or running before they lock again. Both spins are bounded: past them each side
//! blocks on the lock as usual, so a reader descheduled while it holds the lock costs the
//! writer a sleep, not a core.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::key_index::KeyIndex;

/// How long a put spins for readers to leave before it blocks on the lock, in microseconds.
const PUT_SPIN_US: u64 = 50;

/// How long a reader spins for a waiting or running put before it blocks, in microseconds.
const READER_SPIN_US: u64 = 50;

#[derive(Debug)]
pub(crate) struct IndexLock {
    index: RwLock<KeyIndex>,
    /// A put is waiting for the lock; readers end their chunk and let it go first. Only a
    /// hint, so relaxed: the lock itself orders what the index holds.
    put_waiting: AtomicBool,
}

impl IndexLock {
    pub fn new(index: KeyIndex) -> IndexLock {
        IndexLock {
            index: RwLock::new(index),
            put_waiting: AtomicBool::new(false),
        }
    }

    /// The index, for a read that holds it briefly or runs on the writer's own thread.
    pub fn read(&self) -> RwLockReadGuard<'_, KeyIndex> {
        self.index.read()
    }

    /// The index, for the next chunk of a reader's walk: after any put that waits or runs.
    pub fn read_after_puts(&self) -> RwLockReadGuard<'_, KeyIndex> {
        spin_while(READER_SPIN_US, || self.put_first());
        self.index.read()
    }

    /// Whether a put waits for the lock or holds it: a reader's cue to let go.
    pub fn put_first(&self) -> bool {
        self.put_waiting.load(Ordering::Relaxed) || self.index.is_locked_exclusive()
    }

    /// The index, for a change by the writer.
    pub fn write(&self) -> RwLockWriteGuard<'_, KeyIndex> {
        if let Some(index) = self.index.try_write() {
            return index;
        }
        self.put_waiting.store(true, Ordering::Relaxed);
        let mut index = None;
        spin_while(PUT_SPIN_US, || {
            index = self.index.try_write();
            index.is_none()
        });
        let index = index.unwrap_or_else(|| self.index.write());
        self.put_waiting.store(false, Ordering::Relaxed);
        index
    }
}

/// Spins while `busy` says so, for `us` microseconds at most.
fn spin_while(us: u64, mut busy: impl FnMut() -> bool) {
    if !busy() {
        return;
    }
    let deadline = Instant::now() + Duration::from_micros(us);
    while busy() && Instant::now() < deadline {
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    #[test]
    fn a_waiting_put_is_seen_by_the_reader_and_goes_once_it_lets_go() {
        let lock = IndexLock::new(KeyIndex::new(-1));
        let put_done = AtomicBool::new(false);
        std::thread::scope(|s| {
            let chunk = lock.read_after_puts();
            assert!(!lock.put_first());
            let writer = s.spawn(|| {
                drop(lock.write());
                put_done.store(true, Ordering::SeqCst);
            });
            // Bounded, so a lost signal fails the test instead of hanging it.
            let deadline = Instant::now() + Duration::from_secs(10);
            while !lock.put_first() && Instant::now() < deadline {
                std::thread::yield_now();
            }
            assert!(lock.put_first(), "the put announced itself");
            assert!(
                !put_done.load(Ordering::SeqCst),
                "the put waits for the chunk"
            );
            drop(chunk);
            writer.join().unwrap();
            assert!(put_done.load(Ordering::SeqCst));
            assert!(!lock.put_first(), "the put's signal is gone with it");
        });
    }
}
