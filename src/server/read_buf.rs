//! A connection's receive buffer: small while the connection is idle, grown to the frame
//! being read (at most the largest request), given back once the connection goes idle.
//! Bytes are read straight into it and payloads are decoded in place when aligned.

use crate::protocol::HEADER_BYTES;
use rkyv::util::AlignedVec;

/// Capacity of an idle connection's buffer: one small request fits in one read.
pub(super) const READ_IDLE_BYTES: usize = 1 << 10;

/// Capacity while a client sends faster than one read takes (many small frames per read).
pub(super) const READ_BURST_BYTES: usize = 64 << 10;

pub(super) struct ReadBuf {
    /// Zero-filled up to its capacity: `bytes.len()` is the room there is.
    bytes: AlignedVec<16>,
    /// First byte not yet handled.
    start: usize,
    /// End of the bytes read.
    end: usize,
}

impl ReadBuf {
    pub(super) fn new() -> ReadBuf {
        ReadBuf {
            bytes: zeroed(READ_IDLE_BYTES),
            start: 0,
            end: 0,
        }
    }

    /// The bytes read and not yet handled.
    pub(super) fn pending(&self) -> &[u8] {
        &self.bytes[self.start..self.end]
    }

    /// Whether the pending bytes start at a 16-byte boundary, so that a frame's payload
    /// there is aligned for access in place.
    pub(super) fn pending_aligned(&self) -> bool {
        self.start.is_multiple_of(HEADER_BYTES)
    }

    /// Marks `n` pending bytes as handled.
    pub(super) fn consume(&mut self, n: usize) {
        assert!(n <= self.end - self.start);
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    pub(super) fn capacity(&self) -> usize {
        self.bytes.len()
    }

    /// Room to read into, with space for at least `want` bytes counted from the first
    /// pending byte (the whole frame being read, or the buffer's present capacity).
    /// Pending bytes move to the front when that makes the room.
    pub(super) fn spare(&mut self, want: usize) -> &mut [u8] {
        assert!(want > self.end - self.start, "no room asked for");
        if self.start + want > self.bytes.len() {
            let len = self.end - self.start;
            if want <= self.bytes.len() {
                self.bytes.copy_within(self.start..self.end, 0);
            } else {
                let mut bigger = zeroed(want);
                bigger[..len].copy_from_slice(self.pending());
                self.bytes = bigger;
            }
            self.start = 0;
            self.end = len;
        }
        &mut self.bytes[self.end..]
    }

    /// Counts `n` bytes read into the room [`spare`](Self::spare) gave.
    pub(super) fn filled(&mut self, n: usize) {
        assert!(self.end + n <= self.bytes.len());
        self.end += n;
    }

    /// Gives memory back: with nothing pending, the buffer returns to its idle size.
    pub(super) fn shrink_if_idle(&mut self) {
        if self.start == self.end && self.bytes.len() > READ_IDLE_BYTES {
            self.bytes = zeroed(READ_IDLE_BYTES);
            self.start = 0;
            self.end = 0;
        }
    }
}

fn zeroed(bytes: usize) -> AlignedVec<16> {
    let mut v = AlignedVec::with_capacity(bytes);
    v.resize(bytes, 0);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_a_frame_keeps_pending_bytes_and_shrinks_when_idle() {
        let mut b = ReadBuf::new();
        let room = b.spare(READ_IDLE_BYTES);
        assert_eq!(room.len(), READ_IDLE_BYTES);
        room[..20].copy_from_slice(&[7; 20]);
        b.filled(20);
        b.consume(3);
        assert!(!b.pending_aligned());
        // A 100 KiB frame: the 17 pending bytes move into a buffer that holds it whole.
        let room = b.spare(100 << 10);
        assert_eq!(room.len(), (100 << 10) - 17);
        assert_eq!(b.pending(), &[7; 17]);
        assert!(b.pending_aligned());
        b.shrink_if_idle();
        assert_eq!(b.capacity(), 100 << 10, "bytes pending: kept");
        b.consume(17);
        b.shrink_if_idle();
        assert_eq!(b.capacity(), READ_IDLE_BYTES);
        assert!(b.pending().is_empty());
    }

    #[test]
    fn room_at_the_end_is_made_by_moving_pending_bytes_to_the_front() {
        let mut b = ReadBuf::new();
        b.spare(READ_IDLE_BYTES);
        b.filled(READ_IDLE_BYTES);
        b.consume(READ_IDLE_BYTES - 4);
        assert_eq!(b.spare(READ_IDLE_BYTES).len(), READ_IDLE_BYTES - 4);
        assert_eq!(b.capacity(), READ_IDLE_BYTES);
    }
}
