//! [`MemWal`]: the WAL's in-memory twin for simulations and crash tests, with faults.
//!
//! It writes the real format (`docs/wal.md`: a segment header, block-aligned batches of
//! records chained by CRC32C) into memory and reads it back with the real batch
//! verification. Like the real writer it commits in groups: records are queued
//! ([`MemWal::enqueue`]) into the next batch while one batch write is in flight
//! ([`MemWal::start_write`] .. [`MemWal::write_done`], an O_DSYNC write). What it adds is
//! the disk's misbehaviour, on demand:
//!
//! - [`MemWal::crash`]: queued records are lost; of the write in flight, any of its 512-byte
//!   sectors may have reached the disk, in any order (a torn write);
//! - [`MemWal::flip_bit`]: one bit of what was written changes.
//!
//! [`MemWal::replay`] then does what opening the real WAL does: a damaged or torn last
//! batch is cut (nothing valid follows it), damage anywhere else is an error naming the
//! offset. It holds one segment that grows without bound: it serves runs of minutes, not
//! a member's life.

use super::format::{
    encode_record, records, verify_batch, BatchDecode, BatchHeader, Lsn, RecordType, SegmentHeader,
    BATCH_HEADER_BYTES, BLOCK_BYTES, SEGMENT_HEADER_BYTES,
};
use std::ops::Range;

/// The unit a torn write keeps or loses.
pub const SECTOR_BYTES: usize = 512;

/// The size the one segment declares (it bounds record lengths).
const SEGMENT_BYTES: u64 = 1 << 40;

/// A batch write in flight: what it makes durable once it completes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteToken {
    bytes: Range<usize>,
    last_lsn: Lsn,
}

impl WriteToken {
    /// The last LSN the write holds.
    pub fn last_lsn(&self) -> Lsn {
        self.last_lsn
    }
}

/// What [`MemWal::replay`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemReplay {
    pub records: u64,
    /// A damaged or torn last batch was cut here (byte offset), as opening the WAL does.
    pub cut_at: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "WAL damaged at byte {offset}: {reason} (valid batches follow, so this is not a torn write)"
)]
pub struct MemDamage {
    pub offset: u64,
    pub reason: String,
}

pub struct MemWal {
    /// The disk's bytes, as a read would see them.
    bytes: Vec<u8>,
    /// The batch write in flight.
    writing: Option<WriteToken>,
    /// Records queued for the next batch.
    queued: Vec<(RecordType, Vec<u8>)>,
    durable_lsn: Lsn,
    next_lsn: Lsn,
    crc: u32,
}

impl Default for MemWal {
    fn default() -> Self {
        Self::new()
    }
}

impl MemWal {
    /// An empty WAL: its segment header is durable.
    pub fn new() -> MemWal {
        let mut bytes = vec![0u8; SEGMENT_HEADER_BYTES as usize];
        let header = SegmentHeader {
            seq: 1,
            segment_bytes: SEGMENT_BYTES,
            first_lsn: 1,
            crc_seed: 0,
        };
        header.encode(&mut bytes);
        MemWal {
            bytes,
            writing: None,
            queued: Vec::new(),
            durable_lsn: 0,
            next_lsn: 1,
            crc: 0,
        }
    }

    /// The LSN the next record gets.
    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    /// The last LSN a completed write holds (0 for none).
    pub fn durable_lsn(&self) -> Lsn {
        self.durable_lsn
    }

    /// Bytes written so far (the segment header included).
    pub fn written_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Whether a batch write is in flight.
    pub fn writing(&self) -> bool {
        self.writing.is_some()
    }

    /// Queues records for the next batch; returns their LSNs.
    pub fn enqueue(&mut self, recs: &[(RecordType, &[u8])]) -> Range<Lsn> {
        let first = self.next_lsn;
        self.queued
            .extend(recs.iter().map(|(t, p)| (*t, p.to_vec())));
        self.next_lsn += recs.len() as u64;
        first..self.next_lsn
    }

    /// Starts writing the queued records as one batch, unless a write is in flight or
    /// nothing is queued. The bytes are on the disk but not durable until
    /// [`MemWal::write_done`].
    pub fn start_write(&mut self) -> Option<WriteToken> {
        if self.writing.is_some() || self.queued.is_empty() {
            return None;
        }
        let recs = std::mem::take(&mut self.queued);
        let first = self.next_lsn - recs.len() as u64;
        let mut body = Vec::new();
        for (t, p) in &recs {
            self.crc = encode_record(&mut body, *t, p, self.crc);
        }
        let header = BatchHeader {
            first_lsn: first,
            record_count: recs.len() as u32,
            records_bytes: body.len() as u32,
            segment_seq: 1,
        };
        let start = self.bytes.len();
        let total = (BATCH_HEADER_BYTES + body.len()).next_multiple_of(BLOCK_BYTES as usize);
        self.bytes.resize(start + total, 0);
        header.encode(&mut self.bytes[start..]);
        self.bytes[start + BATCH_HEADER_BYTES..start + BATCH_HEADER_BYTES + body.len()]
            .copy_from_slice(&body);
        let token = WriteToken {
            bytes: start..start + total,
            last_lsn: self.next_lsn - 1,
        };
        self.writing = Some(token.clone());
        Some(token)
    }

    /// The write in flight completed: its records are durable.
    pub fn write_done(&mut self, token: &WriteToken) {
        if self.writing.as_ref() == Some(token) {
            self.writing = None;
            self.durable_lsn = token.last_lsn;
        }
    }

    /// Writes everything queued and completes it.
    pub fn flush(&mut self) {
        if let Some(t) = self.writing.clone() {
            self.write_done(&t);
        }
        if let Some(t) = self.start_write() {
            self.write_done(&t);
        }
    }

    /// Power loss: queued records are lost, and each sector of the write in flight reached
    /// the disk or not, as `keep` says for it (in any order: a later sector may survive an
    /// earlier one).
    pub fn crash(&mut self, mut keep: impl FnMut() -> bool) {
        self.queued.clear();
        if let Some(w) = self.writing.take() {
            let mut at = w.bytes.start;
            while at < w.bytes.end {
                let end = (at + SECTOR_BYTES).min(w.bytes.end);
                if !keep() {
                    self.bytes[at..end].fill(0);
                }
                at = end;
            }
        }
        // Trailing zeros are blocks never written, as on a preallocated segment.
        let used = self
            .bytes
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |p| (p + 1).next_multiple_of(BLOCK_BYTES as usize));
        self.bytes.truncate(used.max(SEGMENT_HEADER_BYTES as usize));
    }

    /// Flips one bit at `offset` (modulo what was written after the segment header).
    pub fn flip_bit(&mut self, offset: u64, bit: u8) {
        let header = SEGMENT_HEADER_BYTES as usize;
        if self.bytes.len() <= header {
            return;
        }
        let at = header + (offset as usize) % (self.bytes.len() - header);
        self.bytes[at] ^= 1 << (bit % 8);
    }

    /// Reads every record back in order, as opening the WAL does, and leaves the WAL ready
    /// to append after the last one (a torn or damaged last batch is cut first).
    pub fn replay(
        &mut self,
        mut each: impl FnMut(Lsn, RecordType, &[u8]),
    ) -> Result<MemReplay, MemDamage> {
        let mut pos = SEGMENT_HEADER_BYTES as usize;
        let mut crc = 0u32;
        let mut lsn = 1;
        let mut count = 0;
        let block = BLOCK_BYTES as usize;
        let cut_at = loop {
            if pos >= self.bytes.len() {
                break None;
            }
            let damage = match BatchHeader::decode(&self.bytes[pos..]) {
                BatchDecode::Zero => {
                    if self.bytes[pos..].iter().any(|&b| b != 0) {
                        Some("data after an unwritten block".to_string())
                    } else {
                        break None;
                    }
                }
                BatchDecode::Invalid(reason) => Some(reason.to_string()),
                BatchDecode::Valid(h) if h.first_lsn != lsn => Some(format!(
                    "batch starts at LSN {}, expected {lsn}",
                    h.first_lsn
                )),
                BatchDecode::Valid(h) => {
                    let len =
                        (BATCH_HEADER_BYTES + h.records_bytes as usize).next_multiple_of(block);
                    match self.bytes.get(pos..pos + len) {
                        None => Some("batch runs past the end".to_string()),
                        Some(batch) => match verify_batch(batch, &h, crc, SEGMENT_BYTES) {
                            Err(d) => Some(format!("{} at +{}", d.kind, d.offset)),
                            Ok(next_crc) => {
                                for r in records(batch, &h) {
                                    each(r.lsn, r.rtype, r.payload);
                                    count += 1;
                                }
                                crc = next_crc;
                                lsn = h.last_lsn() + 1;
                                pos += len;
                                None
                            }
                        },
                    }
                }
            };
            if let Some(reason) = damage {
                if self.valid_batch_after(pos) {
                    return Err(MemDamage {
                        offset: pos as u64,
                        reason,
                    });
                }
                break Some(pos as u64);
            }
        };
        if let Some(at) = cut_at {
            self.bytes.truncate(at as usize);
        }
        self.writing = None;
        self.queued.clear();
        self.crc = crc;
        self.next_lsn = lsn;
        self.durable_lsn = lsn - 1;
        Ok(MemReplay {
            records: count,
            cut_at,
        })
    }

    fn valid_batch_after(&self, pos: usize) -> bool {
        let block = BLOCK_BYTES as usize;
        (pos / block + 1..self.bytes.len() / block).any(|b| {
            matches!(
                BatchHeader::decode(&self.bytes[b * block..]),
                BatchDecode::Valid(_)
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{Random, SplitMix64};

    type Log = Vec<(Lsn, Vec<u8>)>;

    fn replayed(wal: &mut MemWal) -> Result<(Log, MemReplay), MemDamage> {
        let mut out = Vec::new();
        let r = wal.replay(|lsn, _, p| out.push((lsn, p.to_vec())))?;
        Ok((out, r))
    }

    /// Random batches, syncs and a crash: what replays is a prefix of what was written,
    /// it holds everything a completed sync covered, and appending goes on after it.
    #[test]
    fn a_crash_keeps_every_synced_record_and_a_prefix_of_the_rest() {
        for seed in 0..300 {
            let mut rng = SplitMix64::new(seed);
            let mut wal = MemWal::new();
            let mut written: Log = Vec::new();
            let mut in_flight = None;
            for _ in 0..rng.below(12) + 1 {
                let n = rng.below(4) + 1;
                let payloads: Vec<Vec<u8>> = (0..n)
                    .map(|_| vec![rng.below(250) as u8 + 1; rng.below(3000) as usize])
                    .collect();
                let recs: Vec<(RecordType, &[u8])> = payloads
                    .iter()
                    .map(|p| (RecordType::ENTRY, p.as_slice()))
                    .collect();
                let lsns = wal.enqueue(&recs);
                written.extend(lsns.zip(payloads));
                match rng.below(3) {
                    0 => in_flight = wal.start_write().or(in_flight),
                    1 => {
                        if let Some(t) = in_flight.take() {
                            wal.write_done(&t);
                        }
                    }
                    _ => {}
                }
            }
            let synced = wal.durable_lsn();
            wal.crash(|| rng.below(2) == 0);
            let (got, _) = replayed(&mut wal).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert!(
                got.len() as u64 >= synced,
                "seed {seed}: synced records lost"
            );
            assert_eq!(got[..], written[..got.len()], "seed {seed}: not a prefix");
            // The WAL goes on after what survived.
            let next = wal.enqueue(&[(RecordType::ENTRY, b"after")]);
            assert_eq!(next.start, got.len() as u64 + 1);
            wal.flush();
            let (again, r) = replayed(&mut wal).unwrap();
            assert_eq!(again.len(), got.len() + 1);
            assert_eq!(r.cut_at, None);
        }
    }

    /// A flipped bit is never read as data: the replay fails naming the offset, or (in the
    /// last batch, where damage looks like a torn write) cuts the batch.
    #[test]
    fn a_flipped_bit_is_an_error_or_a_cut_never_a_changed_record() {
        for seed in 0..300 {
            let mut rng = SplitMix64::new(seed);
            let mut wal = MemWal::new();
            let mut written: Log = Vec::new();
            for i in 0..rng.below(6) + 2 {
                let p = vec![i as u8 + 1; rng.below(5000) as usize + 1];
                let lsns = wal.enqueue(&[(RecordType::ENTRY, &p)]);
                written.push((lsns.start, p));
                wal.flush();
            }
            wal.flip_bit(rng.next_u64(), rng.below(8) as u8);
            match replayed(&mut wal) {
                Err(e) => assert!(e.offset >= SEGMENT_HEADER_BYTES, "seed {seed}"),
                Ok((got, r)) => {
                    assert_eq!(got[..], written[..got.len()], "seed {seed}");
                    // A flip in the padding after the last record changes no record, but
                    // the batch no longer verifies: it is cut like a torn write.
                    assert!(r.cut_at.is_some(), "seed {seed}: the damage went unseen");
                    assert!(got.len() < written.len());
                }
            }
        }
    }
}
