//! On-disk encoding of the WAL: segment header, batch header and records.
//!
//! Byte diagrams, alignment rules and crash cases are in `docs/wal.md`; this file is the
//! code that reads and writes exactly those bytes. Everything here is pure (no I/O), so
//! decoding is safe to run over any bytes a disk or an attacker hands us: every length is
//! checked before it is used and nothing panics on bad input.

use std::fmt;
use std::num::NonZeroU8;

/// Logical sequence number of a record: 1 for the first record of a new WAL, +1 per record,
/// continuing across segments.
pub type Lsn = u64;

/// Alignment of every write: the segment header and every batch start at a multiple of
/// this. 4096 is the physical sector of 512e drives and the ext4/xfs block, so a torn
/// write of one batch can never damage the sector of an earlier, acknowledged one.
pub const BLOCK_BYTES: u64 = 4096;
/// The segment header occupies the first block of every segment file.
pub const SEGMENT_HEADER_BYTES: u64 = BLOCK_BYTES;
/// Largest segment file accepted (in options and in headers read from disk).
pub const SEGMENT_BYTES_MAX: u64 = 1 << 40;
/// Size of a batch header; records follow it directly.
pub const BATCH_HEADER_BYTES: usize = 32;
/// Size of a record header; the payload follows it directly (8-byte aligned).
pub const RECORD_HEADER_BYTES: usize = 16;
/// Records are padded to this so every header and payload starts 8-byte aligned.
pub const RECORD_ALIGN_BYTES: usize = 8;

/// Current (and only) format version.
pub const FORMAT_VERSION: u32 = 1;
const SEGMENT_MAGIC: [u8; 8] = *b"CAIRNWAL";
/// `b"WBAT"` read as a little-endian u32. Nonzero, so a zeroed block never looks like a batch.
const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"WBAT");
/// Bytes of the segment header that carry data (the rest of the block is zero).
const SEGMENT_HEADER_USED_BYTES: usize = 64;

/// The type of a record. The WAL treats it as an opaque nonzero byte chosen by the layer
/// above; 0 is reserved so that zeroed bytes never decode as a record.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordType(NonZeroU8);

impl RecordType {
    /// A Raft log entry.
    pub const ENTRY: RecordType = RecordType::from_const(1);
    /// A Raft hard state (term, vote, commit).
    pub const HARD_STATE: RecordType = RecordType::from_const(2);
    /// A snapshot marker (index and term of a snapshot the log continues from).
    pub const SNAPSHOT: RecordType = RecordType::from_const(3);
    /// Metadata of the layer above (node and cluster identity, CRC seeds).
    pub const METADATA: RecordType = RecordType::from_const(4);

    const fn from_const(value: u8) -> RecordType {
        match NonZeroU8::new(value) {
            Some(v) => RecordType(v),
            None => panic!("record type 0 is reserved"),
        }
    }

    /// The type with this byte value, or `None` for the reserved value 0.
    pub const fn new(value: u8) -> Option<RecordType> {
        match NonZeroU8::new(value) {
            Some(v) => Some(RecordType(v)),
            None => None,
        }
    }

    /// The byte stored on disk.
    pub const fn get(self) -> u8 {
        self.0.get()
    }
}

impl fmt::Debug for RecordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RecordType::ENTRY => f.write_str("ENTRY"),
            RecordType::HARD_STATE => f.write_str("HARD_STATE"),
            RecordType::SNAPSHOT => f.write_str("SNAPSHOT"),
            RecordType::METADATA => f.write_str("METADATA"),
            other => write!(f, "RecordType({})", other.get()),
        }
    }
}

pub(crate) const fn align_up(value: u64, align: u64) -> u64 {
    value.div_ceil(align) * align
}

/// Bytes one record occupies inside a batch: header, payload, zero padding to 8.
pub(crate) const fn record_bytes(payload_len: usize) -> usize {
    RECORD_HEADER_BYTES + payload_len.next_multiple_of(RECORD_ALIGN_BYTES)
}

/// Bytes a batch with `records_bytes` of records occupies on disk, padding included.
pub(crate) const fn batch_disk_bytes(records_bytes: usize) -> u64 {
    align_up((BATCH_HEADER_BYTES + records_bytes) as u64, BLOCK_BYTES)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut le = [0u8; 4];
    le.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(le)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut le = [0u8; 8];
    le.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(le)
}

/// The fields of a segment header. `first_lsn == 0` marks a blank segment: preallocated,
/// never written to. The first batch written into a segment stamps the real values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub seq: u64,
    pub segment_bytes: u64,
    pub first_lsn: Lsn,
    /// The chained CRC value before the segment's first record.
    pub crc_seed: u32,
}

impl SegmentHeader {
    pub fn blank(seq: u64, segment_bytes: u64) -> SegmentHeader {
        SegmentHeader {
            seq,
            segment_bytes,
            first_lsn: 0,
            crc_seed: 0,
        }
    }

    pub fn is_blank(&self) -> bool {
        self.first_lsn == 0
    }

    /// Writes the header into the first block of `out` (zeroing the rest of the block).
    pub fn encode(&self, out: &mut [u8]) {
        let block = &mut out[..SEGMENT_HEADER_BYTES as usize];
        block.fill(0);
        block[0..8].copy_from_slice(&SEGMENT_MAGIC);
        block[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        block[16..24].copy_from_slice(&self.seq.to_le_bytes());
        block[24..32].copy_from_slice(&self.segment_bytes.to_le_bytes());
        block[32..40].copy_from_slice(&self.first_lsn.to_le_bytes());
        block[40..44].copy_from_slice(&self.crc_seed.to_le_bytes());
        let crc = crc32c::crc32c(&block[..SEGMENT_HEADER_USED_BYTES - 4]);
        block[SEGMENT_HEADER_USED_BYTES - 4..SEGMENT_HEADER_USED_BYTES]
            .copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes the first block of a segment file. `block` may be short (a cut file); the
    /// missing bytes read as zero.
    pub fn decode(block: &[u8]) -> HeaderDecode {
        let mut used = [0u8; SEGMENT_HEADER_USED_BYTES];
        let n = block.len().min(SEGMENT_HEADER_USED_BYTES);
        used[..n].copy_from_slice(&block[..n]);
        if used.iter().all(|&b| b == 0) {
            return HeaderDecode::Zero;
        }
        if used[0..8] != SEGMENT_MAGIC {
            return HeaderDecode::BadMagic(u64_at(&used, 0));
        }
        let version = u32_at(&used, 8);
        if version != FORMAT_VERSION {
            return HeaderDecode::BadVersion(version);
        }
        let crc = u32_at(&used, SEGMENT_HEADER_USED_BYTES - 4);
        if crc != crc32c::crc32c(&used[..SEGMENT_HEADER_USED_BYTES - 4]) {
            return HeaderDecode::Invalid("segment header checksum mismatch");
        }
        let header = SegmentHeader {
            seq: u64_at(&used, 16),
            segment_bytes: u64_at(&used, 24),
            first_lsn: u64_at(&used, 32),
            crc_seed: u32_at(&used, 40),
        };
        let size = header.segment_bytes;
        if !size.is_multiple_of(BLOCK_BYTES)
            || !(2 * BLOCK_BYTES..=SEGMENT_BYTES_MAX).contains(&size)
        {
            return HeaderDecode::Invalid("segment size in header out of range");
        }
        HeaderDecode::Valid(header)
    }
}

/// What the first block of a segment file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderDecode {
    Valid(SegmentHeader),
    /// All zero: the file was cut or zeroed (our files never have a zero header).
    Zero,
    BadMagic(u64),
    BadVersion(u32),
    Invalid(&'static str),
}

/// The fields of a batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchHeader {
    pub first_lsn: Lsn,
    pub record_count: u32,
    /// Bytes of records after the header, excluding the padding to the block.
    pub records_bytes: u32,
    /// The segment this batch was written to (guards against a block copied elsewhere).
    pub segment_seq: u64,
}

impl BatchHeader {
    pub fn encode(&self, out: &mut [u8]) {
        let h = &mut out[..BATCH_HEADER_BYTES];
        h[0..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
        h[4..8].copy_from_slice(&self.record_count.to_le_bytes());
        h[8..16].copy_from_slice(&self.first_lsn.to_le_bytes());
        h[16..24].copy_from_slice(&self.segment_seq.to_le_bytes());
        h[24..28].copy_from_slice(&self.records_bytes.to_le_bytes());
        let crc = crc32c::crc32c(&h[..28]);
        h[28..32].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes the 32 bytes at a batch position; `bytes` may be short (past the end of a
    /// cut file), the missing bytes read as zero.
    pub fn decode(bytes: &[u8]) -> BatchDecode {
        let mut h = [0u8; BATCH_HEADER_BYTES];
        let n = bytes.len().min(BATCH_HEADER_BYTES);
        h[..n].copy_from_slice(&bytes[..n]);
        if h.iter().all(|&b| b == 0) {
            return BatchDecode::Zero;
        }
        if u32_at(&h, 0) != BATCH_MAGIC {
            return BatchDecode::Invalid("bad batch magic");
        }
        if u32_at(&h, 28) != crc32c::crc32c(&h[..28]) {
            return BatchDecode::Invalid("batch header checksum mismatch");
        }
        BatchDecode::Valid(BatchHeader {
            record_count: u32_at(&h, 4),
            first_lsn: u64_at(&h, 8),
            segment_seq: u64_at(&h, 16),
            records_bytes: u32_at(&h, 24),
        })
    }

    pub fn last_lsn(&self) -> Lsn {
        self.first_lsn + u64::from(self.record_count) - 1
    }
}

/// What the bytes at a batch position hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BatchDecode {
    Valid(BatchHeader),
    /// All zero: nothing was ever written here.
    Zero,
    Invalid(&'static str),
}

/// Appends one record to `out` and returns the chained CRC after it.
pub(crate) fn encode_record(out: &mut Vec<u8>, rtype: RecordType, payload: &[u8], crc: u32) -> u32 {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    assert_eq!(
        len as usize,
        payload.len(),
        "record length checked by the caller"
    );
    let mut header = [0u8; RECORD_HEADER_BYTES];
    header[0..4].copy_from_slice(&len.to_le_bytes());
    header[4] = rtype.get();
    let crc = crc32c::crc32c_append(crc32c::crc32c_append(crc, &header[..12]), payload);
    header[12..16].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    let padding = payload.len().next_multiple_of(RECORD_ALIGN_BYTES) - payload.len();
    out.extend_from_slice(&[0u8; RECORD_ALIGN_BYTES][..padding]);
    crc
}

/// Why a batch failed verification, and where (offset from the start of the batch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Damage {
    pub offset: u64,
    pub kind: DamageKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DamageKind {
    /// A record claims more bytes than a segment can hold.
    RecordTooLong {
        len: u64,
    },
    Other(String),
}

impl fmt::Display for DamageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DamageKind::RecordTooLong { len } => write!(f, "record of {len} bytes"),
            DamageKind::Other(reason) => f.write_str(reason),
        }
    }
}

fn damage(offset: usize, reason: impl Into<String>) -> Damage {
    Damage {
        offset: offset as u64,
        kind: DamageKind::Other(reason.into()),
    }
}

/// One decoded record, borrowing its payload from the batch bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record<'a> {
    pub lsn: Lsn,
    pub rtype: RecordType,
    pub payload: &'a [u8],
}

/// Checks every record of a batch against the chain starting at `crc_in`, and the zero
/// padding up to the block boundary. `batch` is the whole batch as on disk (header,
/// records, padding); `segment_bytes` bounds record lengths. Returns the chain value after
/// the last record.
pub(crate) fn verify_batch(
    batch: &[u8],
    header: &BatchHeader,
    crc_in: u32,
    segment_bytes: u64,
) -> Result<u32, Damage> {
    let records_end = BATCH_HEADER_BYTES + header.records_bytes as usize;
    assert!(
        records_end <= batch.len(),
        "batch length checked by the caller"
    );
    let mut crc = crc_in;
    let mut pos = BATCH_HEADER_BYTES;
    for index in 0..header.record_count {
        if records_end - pos < RECORD_HEADER_BYTES {
            let reason = format!(
                "batch ends inside record {index} of {}",
                header.record_count
            );
            return Err(damage(pos, reason));
        }
        let rec = &batch[pos..pos + RECORD_HEADER_BYTES];
        let len = u64::from(u32_at(rec, 0));
        if len > segment_bytes {
            return Err(Damage {
                offset: pos as u64,
                kind: DamageKind::RecordTooLong { len },
            });
        }
        if rec[4] == 0 {
            return Err(damage(pos, "record type 0"));
        }
        if rec[5..12].iter().any(|&b| b != 0) {
            return Err(damage(pos, "nonzero reserved bytes in record header"));
        }
        let size = record_bytes(len as usize);
        if size > records_end - pos {
            return Err(damage(
                pos,
                format!("record of {len} bytes overruns its batch"),
            ));
        }
        let payload = &batch[pos + RECORD_HEADER_BYTES..pos + RECORD_HEADER_BYTES + len as usize];
        let expected = crc32c::crc32c_append(crc32c::crc32c_append(crc, &rec[..12]), payload);
        if u32_at(rec, 12) != expected {
            return Err(damage(pos, "record checksum mismatch"));
        }
        let padding = &batch[pos + RECORD_HEADER_BYTES + len as usize..pos + size];
        if padding.iter().any(|&b| b != 0) {
            return Err(damage(pos, "nonzero record padding"));
        }
        crc = expected;
        pos += size;
    }
    if pos != records_end {
        return Err(damage(pos, "bytes after the last record of the batch"));
    }
    if let Some(at) = batch[records_end..].iter().position(|&b| b != 0) {
        return Err(damage(records_end + at, "nonzero batch padding"));
    }
    Ok(crc)
}

/// Iterates the records of a batch that `verify_batch` accepted.
pub(crate) fn records<'a>(
    batch: &'a [u8],
    header: &BatchHeader,
) -> impl Iterator<Item = Record<'a>> + 'a {
    let mut pos = BATCH_HEADER_BYTES;
    let first_lsn = header.first_lsn;
    (0..u64::from(header.record_count)).map_while(move |i| {
        let rec = batch.get(pos..pos + RECORD_HEADER_BYTES)?;
        let len = u32_at(rec, 0) as usize;
        let rtype = RecordType::new(rec[4])?;
        let payload = batch.get(pos + RECORD_HEADER_BYTES..pos + RECORD_HEADER_BYTES + len)?;
        pos += record_bytes(len);
        Some(Record {
            lsn: first_lsn + i,
            rtype,
            payload,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch_of(payloads: &[&[u8]], first_lsn: Lsn, crc: u32) -> (Vec<u8>, BatchHeader, u32) {
        let mut records_buf = Vec::new();
        let mut chain = crc;
        for p in payloads {
            chain = encode_record(&mut records_buf, RecordType::ENTRY, p, chain);
        }
        let header = BatchHeader {
            first_lsn,
            record_count: payloads.len() as u32,
            records_bytes: records_buf.len() as u32,
            segment_seq: 7,
        };
        let mut batch = vec![0u8; batch_disk_bytes(records_buf.len()) as usize];
        header.encode(&mut batch);
        batch[BATCH_HEADER_BYTES..BATCH_HEADER_BYTES + records_buf.len()]
            .copy_from_slice(&records_buf);
        (batch, header, chain)
    }

    #[test]
    fn segment_header_round_trip() {
        let h = SegmentHeader {
            seq: 3,
            segment_bytes: 1 << 20,
            first_lsn: 99,
            crc_seed: 0xdead,
        };
        let mut block = vec![0xffu8; BLOCK_BYTES as usize];
        h.encode(&mut block);
        assert_eq!(SegmentHeader::decode(&block), HeaderDecode::Valid(h));
        assert_eq!(
            SegmentHeader::decode(&block[..8]),
            HeaderDecode::BadVersion(0)
        );
        assert_eq!(SegmentHeader::decode(&[0u8; 4096]), HeaderDecode::Zero);
        assert_eq!(SegmentHeader::decode(&[]), HeaderDecode::Zero);
        block[33] ^= 1;
        assert!(matches!(
            SegmentHeader::decode(&block),
            HeaderDecode::Invalid(_)
        ));
        block[0] ^= 1;
        assert!(matches!(
            SegmentHeader::decode(&block),
            HeaderDecode::BadMagic(_)
        ));
    }

    #[test]
    fn batch_round_trip_and_chain() {
        let payloads: [&[u8]; 4] = [b"", b"a", b"hello world", &[7u8; 5000]];
        let (batch, header, chain) = batch_of(&payloads, 10, 0x1234);
        assert_eq!(batch.len() as u64 % BLOCK_BYTES, 0);
        assert_eq!(BatchHeader::decode(&batch), BatchDecode::Valid(header));
        assert_eq!(verify_batch(&batch, &header, 0x1234, 1 << 20), Ok(chain));
        let got: Vec<_> = records(&batch, &header).collect();
        assert_eq!(got.len(), 4);
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.lsn, 10 + i as u64);
            assert_eq!(r.rtype, RecordType::ENTRY);
            assert_eq!(r.payload, payloads[i]);
            assert_eq!(
                r.payload.as_ptr() as usize % RECORD_ALIGN_BYTES,
                batch.as_ptr() as usize % RECORD_ALIGN_BYTES
            );
        }
        // A wrong seed breaks the chain at the first record.
        let err = verify_batch(&batch, &header, 0x1235, 1 << 20).unwrap_err();
        assert_eq!(err.offset, BATCH_HEADER_BYTES as u64);
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let payloads: [&[u8]; 3] = [b"abc", &[1u8; 300], b"z"];
        let (batch, header, _) = batch_of(&payloads, 1, 0);
        for i in BATCH_HEADER_BYTES..batch.len() {
            let mut bad = batch.clone();
            bad[i] ^= 0x40;
            assert!(
                verify_batch(&bad, &header, 0, 1 << 20).is_err(),
                "flip at {i} undetected"
            );
        }
        for i in 0..BATCH_HEADER_BYTES {
            let mut bad = batch.clone();
            bad[i] ^= 0x40;
            assert!(matches!(BatchHeader::decode(&bad), BatchDecode::Invalid(_)));
        }
    }

    #[test]
    fn record_length_is_bounded() {
        let (mut batch, header, _) = batch_of(&[b"abc"], 1, 0);
        let at = BATCH_HEADER_BYTES;
        batch[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = verify_batch(&batch, &header, 0, 1 << 20).unwrap_err();
        assert_eq!(
            err.kind,
            DamageKind::RecordTooLong {
                len: u64::from(u32::MAX)
            }
        );
    }
}
