//! The group-commit writer: [`Wal`] and its two background tasks.
//!
//! Appenders encode their records straight into the pending batch (assigning LSNs and
//! extending the CRC chain) and wait. One flusher task takes the whole pending batch, writes
//! it with one O_DIRECT + O_DSYNC write (durable once it completes), then wakes exactly the
//! appenders of that batch; while it is in flight, new appends accumulate in the next batch.
//! Pipelined writers queue records with [`Wal::enqueue`] and wait with [`Wal::wait_durable`].
//! A preallocation task prepares segment N+1 as soon as segment N is first written to.
//!
//! Everything lives on one glommio executor: shared state is an `Rc<RefCell<_>>`, never
//! borrowed across an `await`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use glommio::io::Directory;
use glommio::Task;

use super::error::{IoContext, Result, WalError};
use super::format::{
    batch_disk_bytes, encode_record, record_bytes, BatchHeader, Lsn, RecordType, SegmentHeader,
    BATCH_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use super::options::{Prealloc, WalOptions};
use super::reader::{self, ReplayError, SegmentMeta, TornTail};
use super::segment::{self, SegmentFile};

/// Counters of what the WAL has written since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalMetrics {
    /// Durable writes (O_DSYNC, each one device cache flush) that made batches durable
    /// (segment preallocation not counted).
    pub fsyncs: u64,
    /// Batches written (one write each).
    pub batches: u64,
    /// Records made durable.
    pub records: u64,
    /// Bytes written by batch writes: headers, records, padding and segment header stamps.
    pub bytes_written: u64,
}

/// One batch made durable, as [`Wal::on_batch_written`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchWritten {
    /// How long its O_DSYNC write took (the write and the device flush are one operation).
    pub duration: Duration,
    pub records: u32,
    /// Bytes written: headers, records, padding and a segment header stamp.
    pub bytes: u64,
}

/// Called after each batch write, on the WAL's executor.
type BatchObserver = Box<dyn Fn(BatchWritten)>;

/// A write-ahead log open for appending. Lives on the glommio executor that opened it;
/// share it between tasks with `Rc<Wal>` or by reference.
///
/// Format and crash behaviour: `docs/wal.md`.
pub struct Wal {
    shared: Rc<Shared>,
    flusher: Task<()>,
}

struct Shared {
    dir: PathBuf,
    /// The open directory; holds the WAL's exclusive lock for as long as it lives.
    directory: Rc<Directory>,
    options: WalOptions,
    torn: Option<TornTail>,
    state: RefCell<State>,
    /// A released segment kept (as a `.tmp` file) for the next segment to be created over.
    spare: Rc<RefCell<Option<PathBuf>>>,
    creation: Rc<Creation>,
    observer: RefCell<Option<BatchObserver>>,
    /// Makes the next batch write fail, to test the failed state.
    #[cfg(test)]
    fail_next_write: std::cell::Cell<bool>,
}

struct State {
    next_lsn: Lsn,
    /// The CRC chain after the last record appended (pending ones included).
    chain_crc: u32,
    pending: Pending,
    /// Id and waiters of the batch being written; the waiters are drained on completion.
    inflight_id: u64,
    inflight_waiters: Vec<Waker>,
    /// Every record up to this LSN is durable.
    durable_lsn: Lsn,
    /// Appenders waiting for room in the pending batch, first come first served.
    admission: VecDeque<(u64, Waker)>,
    next_ticket: u64,
    flusher_waker: Option<Waker>,
    /// Why the WAL failed; set once, never cleared.
    failed: Option<String>,
    closing: bool,
    /// Segments whose header stamp is durable, oldest first; the last is being written.
    segments: VecDeque<SegmentMeta>,
    metrics: WalMetrics,
}

/// The batch appenders are adding to.
struct Pending {
    id: u64,
    buf: Vec<u8>,
    first_lsn: Lsn,
    records: u32,
    /// The CRC chain before this batch's first record.
    crc_before: u32,
    waiters: Vec<Waker>,
}

/// A batch taken by the flusher.
struct Batch {
    buf: Vec<u8>,
    first_lsn: Lsn,
    records: u32,
    crc_before: u32,
}

impl Batch {
    fn last_lsn(&self) -> Lsn {
        self.first_lsn + u64::from(self.records) - 1
    }
}

impl State {
    fn fail_reason(&self) -> Option<WalError> {
        self.failed.as_ref().map(|reason| WalError::Failed {
            reason: reason.clone(),
        })
    }

    fn wake_flusher(&mut self) {
        if let Some(waker) = self.flusher_waker.take() {
            waker.wake();
        }
    }

    fn wake_admission_front(&self) {
        if let Some((_, waker)) = self.admission.front() {
            waker.wake_by_ref();
        }
    }

    /// Encodes records into the pending batch; returns their LSNs.
    fn push(&mut self, records: &[(RecordType, &[u8])]) -> Range<Lsn> {
        if self.pending.records == 0 {
            self.pending.first_lsn = self.next_lsn;
            self.pending.crc_before = self.chain_crc;
        }
        let start = self.next_lsn;
        for (rtype, payload) in records {
            self.chain_crc = encode_record(&mut self.pending.buf, *rtype, payload, self.chain_crc);
        }
        self.next_lsn += records.len() as u64;
        self.pending.records += records.len() as u32;
        start..self.next_lsn
    }

    /// Hands the whole pending batch to the flusher, leaving `spare` as the new buffer.
    fn take_batch(&mut self, spare: Vec<u8>) -> Batch {
        assert!(self.pending.records > 0 && self.inflight_waiters.is_empty());
        let batch = Batch {
            buf: std::mem::replace(&mut self.pending.buf, spare),
            first_lsn: self.pending.first_lsn,
            records: self.pending.records,
            crc_before: self.pending.crc_before,
        };
        std::mem::swap(&mut self.inflight_waiters, &mut self.pending.waiters);
        self.inflight_id = self.pending.id;
        self.pending.id += 1;
        self.pending.records = 0;
        self.wake_admission_front();
        batch
    }

    fn complete(&mut self, batch: &Batch) {
        self.durable_lsn = batch.last_lsn();
        self.metrics.records += u64::from(batch.records);
        for waker in self.inflight_waiters.drain(..) {
            waker.wake();
        }
    }

    /// Ready once every record up to `lsn` is durable (or the WAL has failed); otherwise
    /// leaves `waker` with the batch that holds `lsn`, as (batch id, waiter number) `slot`,
    /// and reuses that place on later polls.
    fn poll_durable(
        &mut self,
        lsn: Lsn,
        slot: &mut Option<(u64, usize)>,
        waker: &Waker,
    ) -> Poll<Result<()>> {
        if self.durable_lsn >= lsn {
            return Poll::Ready(Ok(()));
        }
        if let Some(error) = self.fail_reason() {
            return Poll::Ready(Err(error));
        }
        // Records after the durable ones and before the pending batch are in flight (the
        // pending batch becomes the one in flight with its waiters and id); an LSN not
        // appended yet waits with the pending batch.
        let in_flight =
            lsn < self.next_lsn && (self.pending.records == 0 || lsn < self.pending.first_lsn);
        let (id, waiters) = if in_flight {
            (self.inflight_id, &mut self.inflight_waiters)
        } else {
            (self.pending.id, &mut self.pending.waiters)
        };
        match *slot {
            Some((batch, at)) if batch == id && at < waiters.len() => {
                waiters[at].clone_from(waker);
            }
            _ => {
                *slot = Some((id, waiters.len()));
                waiters.push(waker.clone());
            }
        }
        Poll::Pending
    }

    /// Enters the failed state: every waiter is woken and sees the error.
    fn fail(&mut self, error: &WalError) {
        tracing::error!(%error, "WAL write failed; no further appends are accepted");
        self.failed = Some(error.to_string());
        for waker in self
            .inflight_waiters
            .drain(..)
            .chain(self.pending.waiters.drain(..))
        {
            waker.wake();
        }
        for (_, waker) in self.admission.drain(..) {
            waker.wake();
        }
    }
}

impl Wal {
    /// Opens (or creates) the WAL in `dir`. Every record with LSN >= `replay_from` is passed
    /// to `on_record` in LSN order (whole segments below `replay_from` are skipped unread).
    /// A torn tail is truncated and logged (see [`Wal::torn_tail`]); any other damage is an
    /// error. Must be called inside a glommio executor, which the WAL then lives on.
    ///
    /// If opening fails after some records were replayed, the caller must discard them.
    pub async fn open<F>(
        dir: impl AsRef<Path>,
        options: WalOptions,
        replay_from: Lsn,
        mut on_record: F,
    ) -> Result<Wal>
    where
        F: FnMut(Lsn, RecordType, &[u8]) -> std::result::Result<(), ReplayError>,
    {
        options.validate()?;
        // glommio opens directories relative to no descriptor: paths must be absolute.
        let dir = std::path::absolute(dir.as_ref()).at(dir.as_ref())?;
        create_dir(&dir).await?;
        let directory = Rc::new(Directory::open(&dir).await.at(&dir)?);
        let recovered = match lock(&directory, &dir).await {
            Ok(()) => reader::recover(&dir, &directory, replay_from, &mut on_record).await,
            Err(error) => Err(error),
        };
        let recovered = match recovered {
            Ok(recovered) => recovered,
            Err(error) => {
                // Close now so that the lock is free for the caller's next attempt.
                if let Ok(directory) = Rc::try_unwrap(directory) {
                    let _ = directory.close().await;
                }
                return Err(error);
            }
        };
        let creation = Rc::new(Creation::default());
        let spare = Rc::default();
        let next = spawn_create(
            &directory,
            &dir,
            recovered.next_seq,
            &options,
            &spare,
            &creation,
        );
        let state = State {
            next_lsn: recovered.next_lsn,
            chain_crc: recovered.chain_crc,
            pending: Pending {
                id: 1,
                buf: Vec::new(),
                first_lsn: recovered.next_lsn,
                records: 0,
                crc_before: recovered.chain_crc,
                waiters: Vec::new(),
            },
            inflight_id: 0,
            inflight_waiters: Vec::new(),
            durable_lsn: recovered.next_lsn - 1,
            admission: VecDeque::new(),
            next_ticket: 0,
            flusher_waker: None,
            failed: None,
            closing: false,
            segments: recovered.segments.into(),
            metrics: WalMetrics::default(),
        };
        let shared = Rc::new(Shared {
            dir,
            directory,
            options,
            torn: recovered.torn,
            state: RefCell::new(state),
            spare,
            creation,
            observer: RefCell::new(None),
            #[cfg(test)]
            fail_next_write: std::cell::Cell::new(false),
        });
        let active = recovered.tail.map(|tail| Active {
            segment: tail.segment,
            write_offset: tail.write_offset,
            stamped: true,
        });
        let flusher = glommio::spawn_local(run_flusher(shared.clone(), active, next));
        Ok(Wal { shared, flusher })
    }

    /// Appends one record and waits until it is durable; returns its LSN.
    pub async fn append(&self, rtype: RecordType, payload: &[u8]) -> Result<Lsn> {
        let records = [(rtype, payload)];
        self.append_many(&records).await.map(|lsns| lsns.start)
    }

    /// Appends several records into one batch (so a torn write loses all or none of them)
    /// and waits until they are durable; returns their LSNs. Their encoded size (16 bytes
    /// plus the payload padded to 8, each) must fit in `batch_bytes_max`.
    ///
    /// Dropping the future before it completes does not withdraw records already queued.
    pub fn append_many<'a>(&'a self, records: &'a [(RecordType, &'a [u8])]) -> Append<'a> {
        self.append_with(records, true)
    }

    /// Like [`Wal::append_many`], but completes as soon as the records are queued in a
    /// batch (after waiting for room in it), not once they are durable: a pipelined caller
    /// goes on preparing the next batch while this one is written, and learns of its
    /// durability from [`Wal::wait_durable`] or [`Wal::durable_lsn`].
    pub fn enqueue<'a>(&'a self, records: &'a [(RecordType, &'a [u8])]) -> Append<'a> {
        self.append_with(records, false)
    }

    fn append_with<'a>(
        &'a self,
        records: &'a [(RecordType, &'a [u8])],
        durable: bool,
    ) -> Append<'a> {
        let bytes = records.iter().fold(0usize, |sum, (_, payload)| {
            sum.saturating_add(record_bytes(payload.len()))
        });
        Append {
            shared: &self.shared,
            records,
            bytes,
            durable,
            stage: Stage::Admit { ticket: None },
        }
    }

    /// Waits until every record up to `lsn` (which must have been appended or queued) is
    /// durable, or the WAL has failed.
    pub fn wait_durable(&self, lsn: Lsn) -> WaitDurable<'_> {
        WaitDurable {
            shared: &self.shared,
            lsn,
            slot: None,
        }
    }

    /// Deletes every segment whose records all have LSN < `lsn`, never the one being
    /// written. Returns how many segments were deleted. Which segments go is decided at the
    /// call; the returned future, which borrows nothing, deletes them (a deletion can take
    /// tens of milliseconds: the caller may run it as its own task, and must let it finish
    /// before [`Wal::close`] for the directory to be closed there).
    pub fn release_below(&self, lsn: Lsn) -> impl Future<Output = Result<usize>> + 'static {
        let doomed: Vec<PathBuf> = {
            let mut st = self.shared.state.borrow_mut();
            let mut doomed = Vec::new();
            while st.segments.len() >= 2 && st.segments[1].first_lsn <= lsn {
                if let Some(meta) = st.segments.pop_front() {
                    doomed.push(meta.path);
                }
            }
            doomed
        };
        let (directory, dir) = (self.shared.directory.clone(), self.shared.dir.clone());
        let spare = self.shared.spare.clone();
        let recycle = self.shared.options.prealloc == Prealloc::ZeroFill;
        let segment_bytes = self.shared.options.segment_bytes;
        async move {
            segment::release(&directory, &dir, &doomed, &spare, recycle, segment_bytes).await?;
            Ok(doomed.len())
        }
    }

    /// Waits for every record appended so far to become durable, stops the background
    /// tasks and closes the files.
    pub async fn close(self) -> Result<()> {
        let Wal { shared, flusher } = self;
        {
            let mut st = shared.state.borrow_mut();
            st.closing = true;
            st.wake_flusher();
        }
        shared.creation.closing.set(true);
        flusher.await;
        let failed = shared.state.borrow().fail_reason();
        // Close the directory now (a dropped descriptor is closed on a later reactor turn,
        // or never if the executor stops first), releasing the lock.
        if let Ok(Shared { dir, directory, .. }) = Rc::try_unwrap(shared) {
            if let Ok(directory) = Rc::try_unwrap(directory) {
                directory.close().await.at(&dir)?;
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// The LSN the next appended record will get.
    pub fn next_lsn(&self) -> Lsn {
        self.shared.state.borrow().next_lsn
    }

    /// Every record up to this LSN is durable.
    pub fn durable_lsn(&self) -> Lsn {
        self.shared.state.borrow().durable_lsn
    }

    /// The lowest LSN still held (after [`Wal::release_below`]); `next_lsn()` if empty.
    pub fn first_lsn(&self) -> Lsn {
        let st = self.shared.state.borrow();
        st.segments.front().map_or(st.next_lsn, |s| s.first_lsn)
    }

    /// Why the next segment cannot be created, while the file system is full: appends go
    /// on in the current segment's preallocated room, and creation is tried again until it
    /// succeeds (then this is `None` again). A caller that sees it should stop taking writes
    /// that add data (the server raises its NOSPACE alarm).
    pub fn no_space(&self) -> Option<String> {
        self.shared.creation.no_space.borrow().clone()
    }

    /// A handle that makes segment creation give up on a full file system: once stopped, an
    /// attempt that fails for space fails for good, and so do the appends waiting for that
    /// segment (none of them was acknowledged), instead of waiting for space that may never
    /// come. For a member that is stopping: [`Wal::close`] does the same, but an owner
    /// waiting for appends to become durable would never reach it.
    pub fn creation_stopper(&self) -> CreationStopper {
        CreationStopper(self.shared.creation.clone())
    }

    /// The torn tail truncated when this WAL was opened, if any.
    pub fn torn_tail(&self) -> Option<&TornTail> {
        self.shared.torn.as_ref()
    }

    /// Has `observe` called after each batch write that succeeds (replacing an observer set
    /// before): for latency and batch size histograms. It runs on the flusher's path, so it
    /// must be quick, and must not call into the WAL.
    pub fn on_batch_written(&self, observe: impl Fn(BatchWritten) + 'static) {
        *self.shared.observer.borrow_mut() = Some(Box::new(observe));
    }

    /// Counters since open.
    pub fn metrics(&self) -> WalMetrics {
        self.shared.state.borrow().metrics
    }

    /// The WAL's directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    #[cfg(test)]
    pub(crate) fn fail_next_write(&self) {
        self.shared.fail_next_write.set(true);
    }
}

/// Takes the directory's exclusive `flock`: two open WALs on one directory would
/// interleave segments. Released when the directory's descriptor closes. A process killed a
/// moment ago may still hold it, so a held lock is tried again for a while.
async fn lock(directory: &Directory, dir: &Path) -> Result<()> {
    reader::flock_dir(directory.as_raw_fd(), libc::LOCK_EX, dir).await
}

async fn create_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).at(dir)?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        Directory::open(parent)
            .await
            .at(parent)?
            .sync()
            .await
            .at(parent)?;
    }
    Ok(())
}

/// The future of [`Wal::append_many`].
#[must_use = "an append does nothing until awaited"]
pub struct Append<'a> {
    shared: &'a Shared,
    records: &'a [(RecordType, &'a [u8])],
    bytes: usize,
    /// Complete once durable (else once queued).
    durable: bool,
    stage: Stage,
}

enum Stage {
    /// Waiting for room in the pending batch (with a place in the queue once it waited).
    Admit {
        ticket: Option<u64>,
    },
    /// Queued; waiting as (batch id, waiter number) `slot` for the records to be durable.
    Durable {
        lsns: Range<Lsn>,
        slot: Option<(u64, usize)>,
    },
    Done,
}

impl Future for Append<'_> {
    type Output = Result<Range<Lsn>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut st = this.shared.state.borrow_mut();
        match &mut this.stage {
            Stage::Admit { ticket } => {
                let limit = this.shared.options.batch_bytes_max;
                if this.bytes > limit {
                    this.stage = Stage::Done;
                    return Poll::Ready(Err(WalError::RecordTooLarge {
                        bytes: this.bytes,
                        limit,
                    }));
                }
                if let Some(error) = st.fail_reason() {
                    this.stage = Stage::Done;
                    return Poll::Ready(Err(error));
                }
                if this.records.is_empty() {
                    this.stage = Stage::Done;
                    return Poll::Ready(Ok(st.next_lsn..st.next_lsn));
                }
                if st.next_lsn.checked_add(this.records.len() as u64).is_none() {
                    this.stage = Stage::Done;
                    return Poll::Ready(Err(WalError::Failed {
                        reason: format!("LSN {} leaves no room for more records", st.next_lsn),
                    }));
                }
                let first_in_line = match *ticket {
                    None => st.admission.is_empty(),
                    Some(t) => st.admission.front().is_some_and(|(front, _)| *front == t),
                };
                let fits = st.pending.buf.is_empty() || st.pending.buf.len() + this.bytes <= limit;
                if !(first_in_line && fits) {
                    queue_for_admission(&mut st, ticket, cx.waker());
                    return Poll::Pending;
                }
                if ticket.is_some() {
                    st.admission.pop_front();
                    st.wake_admission_front();
                }
                let lsns = st.push(this.records);
                if !this.durable {
                    st.wake_flusher();
                    this.stage = Stage::Done;
                    return Poll::Ready(Ok(lsns));
                }
                st.wake_flusher();
                let mut slot = None;
                // Not durable yet: this registers the waker with the pending batch.
                let _ = st.poll_durable(lsns.end - 1, &mut slot, cx.waker());
                this.stage = Stage::Durable { lsns, slot };
                Poll::Pending
            }
            Stage::Durable { lsns, slot } => {
                match st.poll_durable(lsns.end - 1, slot, cx.waker()) {
                    Poll::Ready(result) => {
                        let lsns = lsns.clone();
                        this.stage = Stage::Done;
                        Poll::Ready(result.map(|()| lsns))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
            Stage::Done => Poll::Pending,
        }
    }
}

/// The future of [`Wal::wait_durable`].
#[must_use = "futures do nothing unless awaited"]
pub struct WaitDurable<'a> {
    shared: &'a Shared,
    lsn: Lsn,
    /// (batch id, waiter slot) once registered.
    slot: Option<(u64, usize)>,
}

impl Future for WaitDurable<'_> {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut st = this.shared.state.borrow_mut();
        st.poll_durable(this.lsn, &mut this.slot, cx.waker())
    }
}

fn queue_for_admission(st: &mut State, ticket: &mut Option<u64>, waker: &Waker) {
    match *ticket {
        None => {
            let t = st.next_ticket;
            st.next_ticket += 1;
            st.admission.push_back((t, waker.clone()));
            *ticket = Some(t);
        }
        Some(t) => {
            if let Some((_, queued)) = st.admission.iter_mut().find(|(x, _)| *x == t) {
                queued.clone_from(waker);
            }
        }
    }
}

impl Drop for Append<'_> {
    fn drop(&mut self) {
        let Stage::Admit { ticket: Some(t) } = self.stage else {
            return;
        };
        let Ok(mut st) = self.shared.state.try_borrow_mut() else {
            return;
        };
        if let Some(pos) = st.admission.iter().position(|(x, _)| *x == t) {
            st.admission.remove(pos);
            if pos == 0 {
                st.wake_admission_front();
            }
        }
    }
}

/// The segment batches are being written to.
struct Active {
    segment: SegmentFile,
    write_offset: u64,
    /// Whether the header with first LSN and CRC seed is on disk (else the next write
    /// carries it).
    stamped: bool,
}

type Creating = Task<Result<SegmentFile>>;

/// See [`Wal::creation_stopper`].
#[derive(Clone)]
pub struct CreationStopper(Rc<Creation>);

impl CreationStopper {
    pub fn stop(&self) {
        self.0.closing.set(true);
    }
}

/// What segment creation tells the rest of the WAL, and is told by it.
#[derive(Default)]
struct Creation {
    /// Why the last attempt failed for lack of space; `None` once one succeeds.
    no_space: RefCell<Option<String>>,
    /// Set by `close`: an attempt that failed for lack of space is not tried again.
    closing: Cell<bool>,
}

/// First and last pause between attempts to create a segment on a full file system.
const CREATE_RETRY_MIN: Duration = Duration::from_millis(100);
const CREATE_RETRY_MAX: Duration = Duration::from_secs(2);

/// Creates segment `seq` in the background. On a full file system the attempt is undone
/// (its `.tmp` file removed, giving back what it took) and tried again, with a growing
/// pause, until it succeeds or the WAL closes: a full disk is a condition to report and
/// outlast, not a failure of the log.
fn spawn_create(
    directory: &Rc<Directory>,
    dir: &Path,
    seq: u64,
    options: &WalOptions,
    spare: &Rc<RefCell<Option<PathBuf>>>,
    creation: &Rc<Creation>,
) -> Creating {
    let (directory, dir, creation) = (directory.clone(), dir.to_owned(), creation.clone());
    let (segment_bytes, prealloc) = (options.segment_bytes, options.prealloc);
    let spare = spare.clone();
    glommio::spawn_local(async move {
        let mut pause = CREATE_RETRY_MIN;
        loop {
            // A spare released meanwhile takes no new space: each attempt looks for one.
            let reuse = spare.borrow_mut().take();
            let attempt = segment::create(
                directory.clone(),
                dir.clone(),
                seq,
                segment_bytes,
                prealloc,
                reuse,
            )
            .await;
            let error = match attempt {
                Ok(segment) => {
                    if creation.no_space.borrow_mut().take().is_some() {
                        tracing::info!(
                            seq,
                            "created the next WAL segment: space is available again"
                        );
                    }
                    return Ok(segment);
                }
                Err(error) if error.is_no_space() => error,
                Err(error) => return Err(error),
            };
            let tmp = dir.join(format!("{}.tmp", segment::segment_name(seq)));
            if let Err(e) = glommio::io::remove(&tmp).await {
                tracing::debug!(error = %e, path = %tmp.display(), "removing a failed segment");
            }
            if creation.no_space.borrow().is_none() {
                tracing::error!(
                    %error,
                    seq,
                    "cannot create the next WAL segment: the file system is full; appends go on \
                     in the current segment, and creation is tried again"
                );
            }
            *creation.no_space.borrow_mut() = Some(error.to_string());
            let resume = std::time::Instant::now() + pause;
            while std::time::Instant::now() < resume {
                if creation.closing.get() {
                    return Err(error);
                }
                glommio::timer::sleep(CREATE_RETRY_MIN.min(pause)).await;
            }
            pause = (pause * 2).min(CREATE_RETRY_MAX);
        }
    })
}

async fn run_flusher(shared: Rc<Shared>, mut active: Option<Active>, next: Creating) {
    let mut next = Some(next);
    let mut spare = Vec::new();
    while let Some(batch) = next_batch(&shared, std::mem::take(&mut spare)).await {
        let written = write_batch(&shared, &mut active, &mut next, &batch).await;
        {
            let mut st = shared.state.borrow_mut();
            match written {
                Ok(()) => st.complete(&batch),
                Err(error) => {
                    // Nothing more is written; the next segment's creation is still waited
                    // for below, so that no file operation outlives the WAL.
                    st.fail(&error);
                    break;
                }
            }
        }
        spare = batch.buf;
        spare.clear();
        // Appenders woken by this completion are runnable now; letting them run first puts
        // their next records into the batch taken next, instead of the one after.
        YieldNow(false).await;
    }
    if let Some(task) = next {
        match task.await {
            Ok(segment) => close_segment(segment).await,
            Err(error) => tracing::warn!(%error, "preallocating the next WAL segment failed"),
        }
    }
    if let Some(active) = active {
        close_segment(active.segment).await;
    }
}

/// Closes a segment file whose writes are all synced (so a failure loses nothing).
async fn close_segment(segment: SegmentFile) {
    if let Err(error) = segment.file.close().await {
        tracing::warn!(%error, path = %segment.path.display(), "closing a WAL segment failed");
    }
}

/// Waits for a nonempty pending batch and takes it; `None` once closing with nothing left.
async fn next_batch(shared: &Shared, spare: Vec<u8>) -> Option<Batch> {
    let mut spare = Some(spare);
    std::future::poll_fn(|cx| {
        let mut st = shared.state.borrow_mut();
        if st.pending.records > 0 {
            let buf = spare.take().unwrap_or_default();
            return Poll::Ready(Some(st.take_batch(buf)));
        }
        if st.closing {
            return Poll::Ready(None);
        }
        st.flusher_waker = Some(cx.waker().clone());
        Poll::Pending
    })
    .await
}

/// Writes one batch with one O_DSYNC write (durable once it completes), switching segments
/// first if it does not fit in the current one.
async fn write_batch(
    shared: &Shared,
    active: &mut Option<Active>,
    next: &mut Option<Creating>,
    batch: &Batch,
) -> Result<()> {
    let disk_bytes = batch_disk_bytes(batch.buf.len());
    let mut seg = match active.take() {
        Some(a) if a.write_offset + disk_bytes <= a.segment.segment_bytes => a,
        old => switch_segment(shared, old, next).await?,
    };
    let (pos, prefix) = if seg.stamped {
        (seg.write_offset, 0)
    } else {
        (0, SEGMENT_HEADER_BYTES)
    };
    assert!(seg.stamped || seg.write_offset == SEGMENT_HEADER_BYTES);
    let len = (prefix + disk_bytes) as usize;
    let file = &seg.segment.file;
    let mut dma = file.alloc_dma_buffer(len);
    let bytes = dma.as_bytes_mut();
    let stamp = SegmentHeader {
        seq: seg.segment.seq,
        segment_bytes: seg.segment.segment_bytes,
        first_lsn: batch.first_lsn,
        crc_seed: batch.crc_before,
    };
    if !seg.stamped {
        stamp.encode(bytes);
    }
    let body = &mut bytes[prefix as usize..];
    let header = BatchHeader {
        first_lsn: batch.first_lsn,
        record_count: batch.records,
        records_bytes: batch.buf.len() as u32,
        segment_seq: seg.segment.seq,
    };
    header.encode(body);
    let records_end = BATCH_HEADER_BYTES + batch.buf.len();
    body[BATCH_HEADER_BYTES..records_end].copy_from_slice(&batch.buf);
    body[records_end..].fill(0);
    let path = &seg.segment.path;
    #[cfg(test)]
    if shared.fail_next_write.take() {
        return Err(WalError::Io {
            path: path.clone(),
            source: std::io::Error::other("injected"),
        });
    }
    let started = std::time::Instant::now();
    let written = file.write_at(dma, pos).await.at(path)?;
    if written != len {
        return Err(segment::short_write(path, pos, written, len));
    }
    if let Some(observe) = shared.observer.borrow().as_ref() {
        observe(BatchWritten {
            duration: started.elapsed(),
            records: batch.records,
            bytes: len as u64,
        });
    }
    let mut st = shared.state.borrow_mut();
    st.metrics.fsyncs += 1;
    st.metrics.batches += 1;
    st.metrics.bytes_written += len as u64;
    if !seg.stamped {
        // Only now is the stamp durable, so only now may release_below count on it.
        let meta = SegmentMeta {
            first_lsn: stamp.first_lsn,
            path: path.clone(),
        };
        st.segments.push_back(meta);
        seg.stamped = true;
    }
    seg.write_offset += disk_bytes;
    *active = Some(seg);
    Ok(())
}

/// Moves to the preallocated next segment (waiting for it if it is not ready yet) and
/// starts preallocating the one after it.
async fn switch_segment(
    shared: &Shared,
    old: Option<Active>,
    next: &mut Option<Creating>,
) -> Result<Active> {
    let ready = match next.take() {
        Some(task) => task,
        None => {
            let seq = match &old {
                None => 0,
                Some(a) => a
                    .segment
                    .seq
                    .checked_add(1)
                    .ok_or_else(|| WalError::Failed {
                        reason: format!(
                            "segment {:016x} is the last sequence number a segment can have",
                            a.segment.seq
                        ),
                    })?,
            };
            spawn_create(
                &shared.directory,
                &shared.dir,
                seq,
                &shared.options,
                &shared.spare,
                &shared.creation,
            )
        }
    };
    let segment = ready.await?;
    // None past the last sequence number: the next switch then fails instead.
    *next = segment.seq.checked_add(1).map(|seq| {
        spawn_create(
            &shared.directory,
            &shared.dir,
            seq,
            &shared.options,
            &shared.spare,
            &shared.creation,
        )
    });
    if let Some(old) = old {
        close_segment(old.segment).await;
    }
    Ok(Active {
        segment,
        write_offset: SEGMENT_HEADER_BYTES,
        stamped: false,
    })
}

/// Yields once to the executor, so tasks already woken run before this one continues.
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
