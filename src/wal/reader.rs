//! Opening a WAL: verify every segment, replay its records in order, and repair a torn
//! tail.
//!
//! Rules (see `docs/wal.md`, "Crash cases"): only the last segment holding data can end in
//! a torn batch. A batch that fails verification there is torn if no valid batch header
//! with an LSN at or above it exists at any later block of that segment; the torn bytes are
//! then zeroed (so they cannot reappear) and reported. Any other damage is a typed error
//! naming the file and byte offset.

use std::error::Error;
use std::path::{Path, PathBuf};

use glommio::io::{Directory, DmaFile, ReadResult};

use super::error::{IoContext, Result, WalError};
use super::format::{
    align_up, batch_disk_bytes, records, verify_batch, BatchDecode, BatchHeader, DamageKind,
    HeaderDecode, Lsn, RecordType, SegmentHeader, BATCH_HEADER_BYTES, BLOCK_BYTES,
    SEGMENT_HEADER_BYTES,
};
use super::options::WalOptions;
use super::segment::{self, SegmentFile};

/// Segment files are read in chunks of this size (larger when one batch is larger).
const READ_CHUNK_BYTES: u64 = 1 << 20;

/// The error a replay callback returns to stop opening.
pub type ReplayError = Box<dyn Error + Send + Sync>;

/// A torn tail found and truncated when the WAL was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment file.
    pub path: PathBuf,
    /// Byte offset of the first torn byte (the start of the torn batch).
    pub offset: u64,
    /// How many bytes were zeroed.
    pub bytes: u64,
    /// What failed verification.
    pub reason: String,
}

/// A segment holding data: its path and the LSN of its first record.
#[derive(Debug, Clone)]
pub(crate) struct SegmentMeta {
    pub first_lsn: Lsn,
    pub path: PathBuf,
}

/// The segment appends continue in, and where.
pub(crate) struct Tail {
    pub segment: SegmentFile,
    pub write_offset: u64,
}

/// Everything the writer needs to continue after a successful open.
pub(crate) struct Recovered {
    /// Segments holding data, in order; the last one is the tail's.
    pub segments: Vec<SegmentMeta>,
    pub tail: Option<Tail>,
    pub next_lsn: Lsn,
    pub chain_crc: u32,
    pub next_seq: u64,
    pub torn: Option<TornTail>,
}

/// A window of a segment file held in memory, so a scan reads each byte once in large
/// aligned chunks. Bytes past the end of the file read as absent (callers treat them as
/// zero).
struct Window {
    file: DmaFile,
    path: PathBuf,
    file_len: u64,
    start: u64,
    data: Option<ReadResult>,
}

impl Window {
    async fn new(file: DmaFile, path: PathBuf) -> Result<Window> {
        let file_len = file.file_size().await.at(&path)?;
        Ok(Window {
            file,
            path,
            file_len,
            start: 0,
            data: None,
        })
    }

    async fn close(self) -> Result<()> {
        drop(self.data);
        self.file.close().await.at(&self.path)
    }

    /// Bytes `[off, off + len)`, shorter if the file ends first.
    async fn get(&mut self, off: u64, len: u64) -> Result<&[u8]> {
        let end = (off + len).min(self.file_len);
        if off >= end {
            return Ok(&[]);
        }
        let cached = self
            .data
            .as_ref()
            .is_some_and(|d| self.start <= off && end <= self.start + d.len() as u64);
        if !cached {
            let start = off - off % BLOCK_BYTES;
            let stop = align_up(end.max(start + READ_CHUNK_BYTES), BLOCK_BYTES)
                .min(align_up(self.file_len, BLOCK_BYTES));
            self.data = None;
            let read = self
                .file
                .read_at_aligned(start, (stop - start) as usize)
                .await;
            self.data = Some(read.at(&self.path)?);
            self.start = start;
        }
        match &self.data {
            Some(d) => {
                let lo = ((off - self.start) as usize).min(d.len());
                let hi = ((end - self.start) as usize).min(d.len());
                Ok(&d[lo..hi])
            }
            None => Ok(&[]),
        }
    }
}

/// How the batches of one segment ended.
enum ScanEnd {
    /// An all-zero batch header at `offset` (or the segment's end).
    Clean { offset: u64 },
    /// The batch at `batch_offset` failed verification at `offset`.
    Damaged {
        batch_offset: u64,
        offset: u64,
        kind: DamageKind,
    },
}

/// What lies after the end of the data in the last segment.
struct TailScan {
    /// Offset of a valid batch header that belongs after the damage (proof of corruption).
    later_batch: Option<u64>,
    /// End of the last block holding any nonzero byte.
    dirty_end: u64,
}

/// Replay state carried from batch to batch and segment to segment.
struct Chain<'f, F> {
    next_lsn: Lsn,
    crc: u32,
    replay_from: Lsn,
    /// Largest batch whose bytes missing at the end of a cut file are filled in with zeros
    /// (the configured `batch_bytes_max`): a damaged header cannot make open allocate more.
    fill_bytes_max: u64,
    on_record: &'f mut F,
}

/// Opens the WAL in `dir`: verifies and replays every record with LSN >= `replay_from`
/// through `on_record`, repairs a torn tail, and removes leftovers of interrupted segment
/// creation.
pub(crate) async fn recover<F>(
    dir: &Path,
    directory: &Directory,
    replay_from: Lsn,
    options: &WalOptions,
    on_record: &mut F,
) -> Result<Recovered>
where
    F: FnMut(Lsn, RecordType, &[u8]) -> std::result::Result<(), ReplayError>,
{
    let listing = segment::list(dir)?;
    segment::remove_all(directory, dir, &listing.temporaries).await?;
    let segments = listing.segments;
    for pair in segments.windows(2) {
        if pair[1].0 != pair[0].0 + 1 {
            return Err(WalError::MissingSegment {
                dir: dir.to_owned(),
                seq: pair[0].0 + 1,
            });
        }
    }
    let mut headers = Vec::with_capacity(segments.len());
    for (seq, path) in &segments {
        headers.push(read_header(*seq, path).await?);
    }
    let last = headers
        .iter()
        .rposition(|h| matches!(h, HeaderDecode::Valid(h) if !h.is_blank()));
    let Some(last) = last else {
        discard_unused(directory, dir, &segments, &headers).await?;
        let next_seq = segments.first().map_or(0, |(seq, _)| *seq);
        let (segments, tail, torn) = (Vec::new(), None, None);
        return Ok(Recovered {
            segments,
            tail,
            next_lsn: 1,
            chain_crc: 0,
            next_seq,
            torn,
        });
    };
    discard_unused(directory, dir, &segments[last + 1..], &headers[last + 1..]).await?;
    let mut data_headers = Vec::with_capacity(last + 1);
    for ((_, path), decoded) in segments[..=last].iter().zip(&headers) {
        data_headers.push(stamped_header(path, decoded)?);
    }
    let first = data_headers[0];
    if first.seq == 0 && (first.first_lsn != 1 || first.crc_seed != 0) {
        let reason = format!("first segment starts at LSN {}, not 1", first.first_lsn);
        return Err(WalError::Corrupt {
            path: segments[0].1.clone(),
            offset: 0,
            reason,
        });
    }
    let mut chain = Chain {
        next_lsn: first.first_lsn,
        crc: first.crc_seed,
        replay_from,
        fill_bytes_max: options.batch_bytes_max as u64,
        on_record,
    };
    let mut metas = Vec::with_capacity(last + 1);
    for (i, header) in data_headers.iter().enumerate() {
        let path = &segments[i].1;
        metas.push(SegmentMeta {
            first_lsn: header.first_lsn,
            path: path.clone(),
        });
        if i == last {
            break;
        }
        let next = &data_headers[i + 1];
        if next.first_lsn <= replay_from {
            // Every record here is below the replay start: trust the next header's seed.
            chain.next_lsn = next.first_lsn;
            chain.crc = next.crc_seed;
            continue;
        }
        let mut window = Window::new(segment::open_read(path).await?, path.clone()).await?;
        let end = scan_batches(&mut window, header, &mut chain).await;
        window.close().await?;
        match end? {
            ScanEnd::Damaged { offset, kind, .. } => return Err(corrupt(path, offset, kind)),
            ScanEnd::Clean { offset } => {
                if next.first_lsn != chain.next_lsn || next.crc_seed != chain.crc {
                    let reason = format!(
                        "data ends before LSN {} but segment {:016x} starts at LSN {}",
                        chain.next_lsn, next.seq, next.first_lsn
                    );
                    return Err(WalError::Corrupt {
                        path: path.clone(),
                        offset,
                        reason,
                    });
                }
            }
        }
    }
    let (tail, torn) = recover_tail(
        &segments[last].1,
        &data_headers[last],
        options.segment_bytes,
        &mut chain,
    )
    .await?;
    Ok(Recovered {
        segments: metas,
        tail: Some(tail),
        next_lsn: chain.next_lsn,
        chain_crc: chain.crc,
        next_seq: data_headers[last].seq + 1,
        torn,
    })
}

async fn read_header(seq: u64, path: &Path) -> Result<HeaderDecode> {
    if std::fs::metadata(path).at(path)?.len() == 0 {
        // Never DMA-open an empty file: see `segment::create` on glommio's polling probe.
        return Ok(HeaderDecode::Zero);
    }
    let file = segment::open_read(path).await?;
    let block = file
        .read_at_aligned(0, BLOCK_BYTES as usize)
        .await
        .at(path)?;
    let decoded = SegmentHeader::decode(&block);
    drop(block);
    file.close().await.at(path)?;
    Ok(match decoded {
        HeaderDecode::Valid(h) if h.seq != seq => {
            HeaderDecode::Invalid("segment header names another sequence number")
        }
        other => other,
    })
}

/// The header of a segment that must hold data, or the error its damage deserves.
fn stamped_header(path: &Path, decoded: &HeaderDecode) -> Result<SegmentHeader> {
    let path = path.to_owned();
    match *decoded {
        HeaderDecode::Valid(h) if !h.is_blank() => Ok(h),
        HeaderDecode::Valid(_) => {
            let reason = "blank segment header, but later segments hold data".to_owned();
            Err(WalError::Corrupt {
                path,
                offset: 0,
                reason,
            })
        }
        HeaderDecode::Zero => {
            let reason = "zeroed segment header, but later segments hold data".to_owned();
            Err(WalError::Corrupt {
                path,
                offset: 0,
                reason,
            })
        }
        HeaderDecode::BadMagic(found) => Err(WalError::BadMagic { path, found }),
        HeaderDecode::BadVersion(version) => Err(WalError::UnsupportedVersion { path, version }),
        HeaderDecode::Invalid(reason) => Err(WalError::Corrupt {
            path,
            offset: 0,
            reason: reason.to_owned(),
        }),
    }
}

fn corrupt(path: &Path, offset: u64, kind: DamageKind) -> WalError {
    let path = path.to_owned();
    match kind {
        DamageKind::RecordTooLong { len } => WalError::RecordTooLong { path, offset, len },
        DamageKind::Other(reason) => WalError::Corrupt {
            path,
            offset,
            reason,
        },
    }
}

/// Deletes the segments after the last one holding data: preallocated blanks, and
/// segments whose first write (header stamp and first batch) was torn. A segment whose
/// header is damaged but that holds a valid batch is corruption, not a torn creation.
async fn discard_unused(
    directory: &Directory,
    dir: &Path,
    segments: &[(u64, PathBuf)],
    headers: &[HeaderDecode],
) -> Result<()> {
    let mut doomed = Vec::with_capacity(segments.len());
    for ((seq, path), decoded) in segments.iter().zip(headers) {
        doomed.push(path.clone());
        if std::fs::metadata(path).at(path)?.len() == 0 {
            tracing::warn!(path = %path.display(), "removing an empty segment file");
            continue;
        }
        let file = segment::open_read(path).await?;
        let mut window = Window::new(file, path.clone()).await?;
        match decoded {
            HeaderDecode::Valid(_) => {
                // A blank segment; a first batch here means its header stamp was torn.
                let first = window.get(SEGMENT_HEADER_BYTES, BLOCK_BYTES).await?;
                if first.iter().any(|&b| b != 0) {
                    tracing::warn!(
                        path = %path.display(),
                        "discarding the unacknowledged first batch of a segment whose header stamp was torn"
                    );
                }
                window.close().await?;
            }
            damaged => {
                let scan = scan_tail(&mut window, 0, u64::MAX, *seq, 0).await;
                window.close().await?;
                let scan = scan?;
                if let Some(offset) = scan.later_batch {
                    return Err(match stamped_header(path, damaged) {
                        Err(
                            e @ (WalError::BadMagic { .. } | WalError::UnsupportedVersion { .. }),
                        ) => e,
                        _ => WalError::Corrupt {
                            path: path.clone(),
                            offset: 0,
                            reason: format!("damaged segment header, but a batch at byte {offset}"),
                        },
                    });
                }
                tracing::warn!(
                    path = %path.display(),
                    "removing a segment with a torn header and no data"
                );
            }
        }
    }
    segment::remove_all(directory, dir, &doomed).await
}

/// Reads the batches of one segment from its first batch until an all-zero batch header,
/// the end of the segment, or damage; verified records are passed to the callback.
async fn scan_batches<F>(
    window: &mut Window,
    header: &SegmentHeader,
    chain: &mut Chain<'_, F>,
) -> Result<ScanEnd>
where
    F: FnMut(Lsn, RecordType, &[u8]) -> std::result::Result<(), ReplayError>,
{
    let end = header.segment_bytes;
    let mut off = SEGMENT_HEADER_BYTES;
    while off + BATCH_HEADER_BYTES as u64 <= end {
        let damaged = |offset, reason: &str| ScanEnd::Damaged {
            batch_offset: off,
            offset,
            kind: DamageKind::Other(reason.to_owned()),
        };
        let batch = match BatchHeader::decode(window.get(off, BATCH_HEADER_BYTES as u64).await?) {
            BatchDecode::Zero => return Ok(ScanEnd::Clean { offset: off }),
            BatchDecode::Invalid(reason) => return Ok(damaged(off, reason)),
            BatchDecode::Valid(batch) => batch,
        };
        if batch.segment_seq != header.seq {
            return Ok(damaged(off, "batch belongs to another segment"));
        }
        let lsn_end = batch.first_lsn.checked_add(u64::from(batch.record_count));
        if batch.first_lsn != chain.next_lsn || batch.record_count == 0 || lsn_end.is_none() {
            return Ok(damaged(off, "batch does not continue the LSN sequence"));
        }
        let disk_bytes = batch_disk_bytes(batch.records_bytes as usize);
        if off + disk_bytes > end {
            return Ok(damaged(off, "batch overruns its segment"));
        }
        let mut bytes = window.get(off, disk_bytes).await?;
        let padded;
        let records_end = BATCH_HEADER_BYTES as u64 + u64::from(batch.records_bytes);
        if (bytes.len() as u64) < records_end
            && u64::from(batch.records_bytes) > chain.fill_bytes_max
        {
            let end = off + bytes.len() as u64;
            return Ok(damaged(
                end,
                "batch larger than the batch limit runs past the end of the file",
            ));
        }
        if (bytes.len() as u64) < disk_bytes {
            // A cut file: the missing bytes read as zero, as in a preallocated segment.
            padded = [bytes, &vec![0; disk_bytes as usize - bytes.len()]].concat();
            bytes = &padded;
        }
        let crc = match verify_batch(bytes, &batch, chain.crc, end) {
            Ok(crc) => crc,
            Err(d) => {
                let (offset, kind) = (off + d.offset, d.kind);
                return Ok(ScanEnd::Damaged {
                    batch_offset: off,
                    offset,
                    kind,
                });
            }
        };
        for record in records(bytes, &batch).filter(|r| r.lsn >= chain.replay_from) {
            (chain.on_record)(record.lsn, record.rtype, record.payload).map_err(|source| {
                WalError::Replay {
                    lsn: record.lsn,
                    source,
                }
            })?;
        }
        chain.next_lsn = batch.last_lsn() + 1;
        chain.crc = crc;
        off += disk_bytes;
    }
    Ok(ScanEnd::Clean { offset: off })
}

/// Looks at every block of `[from, end)` (and not past the end of the file): is there a
/// valid batch header of this segment with an LSN at or above `lsn_min` after `from`, and
/// where do nonzero bytes end?
async fn scan_tail(
    window: &mut Window,
    from: u64,
    end: u64,
    seq: u64,
    lsn_min: Lsn,
) -> Result<TailScan> {
    let end = end.min(align_up(window.file_len, BLOCK_BYTES));
    let mut scan = TailScan {
        later_batch: None,
        dirty_end: from,
    };
    let mut off = from;
    while off < end {
        let block = window.get(off, BLOCK_BYTES).await?;
        if block.iter().any(|&b| b != 0) {
            scan.dirty_end = off + BLOCK_BYTES;
            if off > from {
                if let BatchDecode::Valid(h) = BatchHeader::decode(block) {
                    if h.segment_seq == seq && h.first_lsn >= lsn_min {
                        scan.later_batch = Some(off);
                        break;
                    }
                }
            }
        }
        off += BLOCK_BYTES;
    }
    Ok(scan)
}

/// Scans the last segment holding data; a failed batch there is torn (truncated) unless a
/// later valid batch proves it was acknowledged. A cut file is extended back to its size,
/// but not past `segment_bytes` (the configured size): a larger size in a damaged header is
/// not allocated on disk in advance (the writes extend the file as they go).
async fn recover_tail<F>(
    path: &Path,
    header: &SegmentHeader,
    segment_bytes: u64,
    chain: &mut Chain<'_, F>,
) -> Result<(Tail, Option<TornTail>)>
where
    F: FnMut(Lsn, RecordType, &[u8]) -> std::result::Result<(), ReplayError>,
{
    let file = segment::open_write(path).await?;
    let mut window = Window::new(file, path.to_owned()).await?;
    let end = scan_batches(&mut window, header, chain).await?;
    let (batch_offset, reason) = match end {
        ScanEnd::Clean { offset } => (offset, "nonzero bytes after the last batch".to_owned()),
        ScanEnd::Damaged {
            batch_offset,
            offset,
            ref kind,
        } => (batch_offset, format!("{kind} at byte {offset}")),
    };
    let (seq, lsn_min) = (header.seq, chain.next_lsn);
    let scan = scan_tail(
        &mut window,
        batch_offset,
        header.segment_bytes,
        seq,
        lsn_min,
    )
    .await?;
    if let Some(later) = scan.later_batch {
        if let ScanEnd::Damaged { offset, kind, .. } = end {
            return Err(corrupt(path, offset, kind));
        }
        let reason = format!("zeroed batch before a valid batch at byte {later}");
        return Err(WalError::Corrupt {
            path: path.to_owned(),
            offset: batch_offset,
            reason,
        });
    }
    let Window { file, file_len, .. } = window;
    let mut torn = None;
    if scan.dirty_end > batch_offset {
        segment::zero_range(&file, path, batch_offset, scan.dirty_end).await?;
        let bytes = scan.dirty_end - batch_offset;
        tracing::warn!(
            path = %path.display(),
            offset = batch_offset,
            bytes,
            reason = %reason,
            "truncated a torn WAL tail"
        );
        torn = Some(TornTail {
            path: path.to_owned(),
            offset: batch_offset,
            bytes,
            reason,
        });
    }
    let extend_to = header.segment_bytes.min(segment_bytes.max(file_len));
    if file_len < extend_to {
        file.pre_allocate(extend_to, false).await.at(path)?;
    }
    if torn.is_some() || file_len < extend_to {
        file.fdatasync().await.at(path)?;
    }
    file.close().await.at(path)?;
    let file = segment::open_durable(path).await?;
    let segment = SegmentFile {
        file,
        seq: header.seq,
        path: path.to_owned(),
        segment_bytes: header.segment_bytes,
    };
    Ok((
        Tail {
            segment,
            write_offset: batch_offset,
        },
        torn,
    ))
}
