//! Opening a WAL: verify every segment, replay its records in order, and repair a torn
//! tail; or, with [`inspect`], the same verification and replay without changing a byte,
//! reporting what opening would repair.
//!
//! Rules (see `docs/wal.md`, "Crash cases" and "Damage"): only the last segment holding data
//! can end in a torn batch. A batch that fails verification there is torn if no valid batch
//! header with an LSN at or above it exists at any later block of that segment; the torn
//! bytes are then zeroed (so they cannot reappear) and reported. A data segment shorter than
//! its segment size, and any other damage, is a typed error naming the file and byte offset.

use std::error::Error;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use glommio::io::{Directory, DmaFile, ReadResult};

use super::error::{IoContext, Result, WalError};
use super::format::{
    align_up, batch_disk_bytes, records, verify_batch, BatchDecode, BatchHeader, DamageKind,
    HeaderDecode, Lsn, RecordType, SegmentHeader, BATCH_HEADER_BYTES, BLOCK_BYTES,
    SEGMENT_HEADER_BYTES,
};
use super::segment::{self, SegmentFile};

/// Segment files are read in chunks of this size (larger when one batch is larger).
const READ_CHUNK_BYTES: u64 = 1 << 20;

/// The error a replay callback returns to stop opening.
pub type ReplayError = Box<dyn Error + Send + Sync>;

/// A torn tail found and truncated when the WAL was opened (or, by [`inspect`], found and
/// left as it is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment file.
    pub path: PathBuf,
    /// Byte offset of the first torn byte (the start of the torn batch).
    pub offset: u64,
    /// How many bytes were zeroed (by [`inspect`]: would be).
    pub bytes: u64,
    /// Records the torn batch holds, when its header is readable.
    pub records: Option<u32>,
    /// What failed verification.
    pub reason: String,
}

/// A file opening deletes because it never held acknowledged data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub path: PathBuf,
    /// The file's size.
    pub bytes: u64,
    /// Why it holds nothing acknowledged.
    pub reason: &'static str,
}

/// What [`inspect`] found: the records it replayed, and what opening would repair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// LSN of the first record held (the next LSN if there is none).
    pub first_lsn: Lsn,
    /// LSN the next append would get.
    pub next_lsn: Lsn,
    /// The size recorded in the last data segment's header (`None`: no data segment).
    pub segment_bytes: Option<u64>,
    /// The torn tail opening would cut.
    pub torn: Option<TornTail>,
    /// The files opening would delete, in the order it would.
    pub leftovers: Vec<Leftover>,
}

/// Why a `.tmp` file holds nothing acknowledged.
const TEMPORARY: &str = "a segment being created, or a released one kept for reuse";
/// Why a blank segment does.
const BLANK: &str = "a blank segment after the last one holding data";

/// Whether opening may change the directory.
#[derive(Clone, Copy)]
enum Access<'d> {
    /// [`Wal::open`](super::Wal::open): deletes leftovers, zeroes a torn tail, and opens the
    /// tail for appends.
    Repair(&'d Directory),
    /// [`inspect`]: reads only, and reports what `Repair` would do.
    ReadOnly,
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
    /// The files deleted (read-only: to be deleted).
    pub leftovers: Vec<Leftover>,
    /// The last data segment's size, from its header.
    pub segment_bytes: Option<u64>,
}

/// A window of a segment file held in memory, so a scan reads each byte once in large
/// aligned chunks. Bytes past the end of the file read as absent.
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
    on_record: &'f mut F,
}

/// Opens the WAL in `dir`: verifies and replays every record with LSN >= `replay_from`
/// through `on_record`, repairs a torn tail, and removes leftovers of interrupted segment
/// creation.
pub(crate) async fn recover<F>(
    dir: &Path,
    directory: &Directory,
    replay_from: Lsn,
    on_record: &mut F,
) -> Result<Recovered>
where
    F: FnMut(Lsn, RecordType, &[u8]) -> std::result::Result<(), ReplayError>,
{
    recover_with(dir, Access::Repair(directory), replay_from, on_record).await
}

/// Verifies and replays the WAL in `dir` as [`Wal::open`](super::Wal::open) does, without
/// changing anything: no file is created, written, cut or deleted, and every file is opened
/// read-only. The torn tail opening would cut and the leftovers it would delete are
/// reported instead. Takes a shared lock on the directory, so it fails with
/// [`WalError::Locked`] while a `Wal` has it open. Must be called inside a glommio executor.
pub async fn inspect<F>(
    dir: impl AsRef<Path>,
    replay_from: Lsn,
    mut on_record: F,
) -> Result<Inspection>
where
    F: FnMut(Lsn, RecordType, &[u8]) -> std::result::Result<(), ReplayError>,
{
    let dir = dir.as_ref();
    let _lock = lock_shared(dir).await?;
    let recovered = recover_with(dir, Access::ReadOnly, replay_from, &mut on_record).await?;
    Ok(Inspection {
        first_lsn: recovered
            .segments
            .first()
            .map_or(recovered.next_lsn, |s| s.first_lsn),
        next_lsn: recovered.next_lsn,
        segment_bytes: recovered.segment_bytes,
        torn: recovered.torn,
        leftovers: recovered.leftovers,
    })
}

/// How long a held directory lock is tried again before the WAL counts as in use: a
/// process killed a moment ago holds its lock until the kernel has torn down its io_uring
/// instances (a request in flight keeps the directory open until then).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// A shared `flock` on a WAL directory, held until it is dropped: no `Wal` can open the
/// directory meanwhile ([`Wal::open`](super::Wal::open) takes an exclusive one).
pub struct SharedLock {
    _dir: std::fs::File,
}

/// Takes a shared lock on the WAL directory `dir`, so that the directory can be read (with
/// [`inspect`], and the files beside it) while no member writes it; fails with
/// [`WalError::Locked`] while a `Wal` has it open.
pub async fn lock_shared(dir: impl AsRef<Path>) -> Result<SharedLock> {
    let dir = dir.as_ref();
    let file = std::fs::File::open(dir).at(dir)?;
    flock_dir(file.as_raw_fd(), libc::LOCK_SH, dir).await?;
    Ok(SharedLock { _dir: file })
}

/// Takes the `flock` `operation` (`LOCK_SH` or `LOCK_EX`) on the open directory `fd`,
/// trying again for up to [`LOCK_WAIT`] while another holds it; then [`WalError::Locked`].
pub(crate) async fn flock_dir(fd: std::os::fd::RawFd, operation: i32, dir: &Path) -> Result<()> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        // SAFETY: flock takes no pointers; the descriptor is open for the call's duration.
        if unsafe { libc::flock(fd, operation | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(WalError::Io {
                path: dir.to_owned(),
                source: error,
            });
        }
        if std::time::Instant::now() >= deadline {
            return Err(WalError::Locked {
                dir: dir.to_owned(),
            });
        }
        glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn recover_with<F>(
    dir: &Path,
    access: Access<'_>,
    replay_from: Lsn,
    on_record: &mut F,
) -> Result<Recovered>
where
    F: FnMut(Lsn, RecordType, &[u8]) -> std::result::Result<(), ReplayError>,
{
    let listing = segment::list(dir)?;
    let mut leftovers = Vec::new();
    for path in &listing.temporaries {
        let bytes = std::fs::metadata(path).at(path)?.len();
        leftovers.push(Leftover {
            path: path.clone(),
            bytes,
            reason: TEMPORARY,
        });
    }
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
        // Newest first, so that a crash between two deletions leaves no gap.
        leftovers.extend(
            unused_segments(&segments, &headers)
                .await?
                .into_iter()
                .rev(),
        );
        remove(access, dir, &leftovers).await?;
        let next_seq = segments.first().map_or(0, |(seq, _)| *seq);
        let (segments, tail, torn) = (Vec::new(), None, None);
        return Ok(Recovered {
            segments,
            tail,
            next_lsn: 1,
            chain_crc: 0,
            next_seq,
            torn,
            leftovers,
            segment_bytes: None,
        });
    };
    let unused = unused_segments(&segments[last + 1..], &headers[last + 1..]).await?;
    // Newest first, so that a crash between two deletions leaves no gap.
    leftovers.extend(unused.into_iter().rev());
    let mut data_headers = Vec::with_capacity(last + 1);
    for ((_, path), decoded) in segments[..=last].iter().zip(&headers) {
        let header = stamped_header(path, decoded)?;
        check_length(path, &header)?;
        data_headers.push(header);
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
    let header = &data_headers[last];
    let next_seq = header.seq.checked_add(1).ok_or_else(|| WalError::Corrupt {
        path: segments[last].1.clone(),
        offset: 0,
        reason: "the segment has the last sequence number possible; none can follow it".to_owned(),
    })?;
    let (tail, torn) = recover_tail(access, &segments[last].1, header, &mut chain).await?;
    remove(access, dir, &leftovers).await?;
    Ok(Recovered {
        segments: metas,
        tail,
        next_lsn: chain.next_lsn,
        chain_crc: chain.crc,
        next_seq,
        torn,
        leftovers,
        segment_bytes: Some(header.segment_bytes),
    })
}

/// Deletes `leftovers` (with [`Access::Repair`]; read-only, only reports them). Called once
/// everything else is verified, so that an open that fails has deleted nothing.
async fn remove(access: Access<'_>, dir: &Path, leftovers: &[Leftover]) -> Result<()> {
    let Access::Repair(directory) = access else {
        return Ok(());
    };
    for leftover in leftovers {
        let (path, bytes, reason) = (leftover.path.display(), leftover.bytes, leftover.reason);
        if [TEMPORARY, BLANK].contains(&reason) {
            // Every start after a clean stop finds these: the spare and the successor.
            tracing::debug!(%path, bytes, reason, "removing a WAL file that holds nothing acknowledged");
        } else {
            tracing::warn!(%path, bytes, reason, "removing a WAL file that holds nothing acknowledged");
        }
    }
    let paths: Vec<PathBuf> = leftovers.iter().map(|l| l.path.clone()).collect();
    segment::remove_all(directory, dir, &paths).await
}

/// Segments are preallocated to their full size before they are renamed into place, so a
/// data segment shorter than its header says was cut after it was written: its missing
/// bytes may have held acknowledged records.
fn check_length(path: &Path, header: &SegmentHeader) -> Result<()> {
    let len = std::fs::metadata(path).at(path)?.len();
    if len < header.segment_bytes {
        return Err(WalError::Corrupt {
            path: path.to_owned(),
            offset: len,
            reason: format!(
                "the file ends at byte {len}, before its segment size of {} bytes (cut after it was written)",
                header.segment_bytes
            ),
        });
    }
    Ok(())
}

async fn read_header(seq: u64, path: &Path) -> Result<HeaderDecode> {
    let len = std::fs::metadata(path).at(path)?.len();
    if len < BLOCK_BYTES {
        // A segment's header is synced before the file gets its name, so this is a cut,
        // not a crash (and it may have been the last segment holding data). It is never
        // DMA-opened either: see `segment::create` on glommio's polling probe.
        return Err(WalError::Corrupt {
            path: path.to_owned(),
            offset: len,
            reason: "the file ends inside its header block (cut after it was created)".to_owned(),
        });
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

/// The segments after the last one holding data, which opening deletes: preallocated
/// blanks, and segments whose first write (header stamp and first batch) was torn. A
/// segment whose header is damaged but that holds a valid batch is corruption, not a torn
/// creation.
async fn unused_segments(
    segments: &[(u64, PathBuf)],
    headers: &[HeaderDecode],
) -> Result<Vec<Leftover>> {
    let mut doomed = Vec::with_capacity(segments.len());
    for ((seq, path), decoded) in segments.iter().zip(headers) {
        let bytes = std::fs::metadata(path).at(path)?.len();
        let leftover = |reason| Leftover {
            path: path.clone(),
            bytes,
            reason,
        };
        let file = segment::open_read(path).await?;
        let mut window = Window::new(file, path.clone()).await?;
        match decoded {
            HeaderDecode::Valid(_) => {
                // A blank segment; a first batch here means its header stamp was torn.
                let first = window.get(SEGMENT_HEADER_BYTES, BLOCK_BYTES).await?;
                let torn = first.iter().any(|&b| b != 0);
                window.close().await?;
                doomed.push(leftover(if torn {
                    "the unacknowledged first batch of a segment whose header stamp was torn"
                } else {
                    BLANK
                }));
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
                doomed.push(leftover("a segment with a torn header and no data"));
            }
        }
    }
    Ok(doomed)
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
        let bytes = window.get(off, disk_bytes).await?;
        if (bytes.len() as u64) < disk_bytes {
            // `check_length` saw the whole segment: the file was cut since.
            return Ok(damaged(
                off + bytes.len() as u64,
                "the file ends inside the batch",
            ));
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
/// later valid batch proves it was acknowledged. Read-only, the tail is found and reported
/// but not truncated, and no segment is returned to append to.
async fn recover_tail<F>(
    access: Access<'_>,
    path: &Path,
    header: &SegmentHeader,
    chain: &mut Chain<'_, F>,
) -> Result<(Option<Tail>, Option<TornTail>)>
where
    F: FnMut(Lsn, RecordType, &[u8]) -> std::result::Result<(), ReplayError>,
{
    let file = match access {
        Access::Repair(_) => segment::open_write(path).await?,
        Access::ReadOnly => segment::open_read(path).await?,
    };
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
    let mut torn = None;
    if scan.dirty_end > batch_offset {
        let records =
            match BatchHeader::decode(window.get(batch_offset, BATCH_HEADER_BYTES as u64).await?) {
                BatchDecode::Valid(h) => Some(h.record_count),
                _ => None,
            };
        torn = Some(TornTail {
            path: path.to_owned(),
            offset: batch_offset,
            bytes: scan.dirty_end - batch_offset,
            records,
            reason,
        });
    }
    let Window { file, .. } = window;
    let Access::Repair(_) = access else {
        file.close().await.at(path)?;
        return Ok((None, torn));
    };
    if let Some(torn) = &torn {
        segment::zero_range(&file, path, torn.offset, scan.dirty_end).await?;
        file.fdatasync().await.at(path)?;
        tracing::warn!(
            path = %path.display(),
            offset = torn.offset,
            bytes = torn.bytes,
            records = torn.records.map_or_else(|| "unknown".to_owned(), |n| n.to_string()),
            reason = %torn.reason,
            "truncated a torn WAL tail (the last batch of the WAL: a torn write cannot be told from damage to an acknowledged batch)"
        );
    }
    file.close().await.at(path)?;
    let file = segment::open_durable(path).await?;
    let segment = SegmentFile {
        file,
        seq: header.seq,
        path: path.to_owned(),
        segment_bytes: header.segment_bytes,
    };
    let tail = Tail {
        segment,
        write_offset: batch_offset,
    };
    Ok((Some(tail), torn))
}
