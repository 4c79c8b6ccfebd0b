//! A connection's replies not yet written, and the task that writes them. The backlog is
//! counted in bytes: a client that sends requests and does not read its replies holds at
//! most [`REPLY_BACKLOG_BYTES_MAX`] of the member's memory, plus the one reply that crossed
//! it (a reply larger than the cap is still sent, alone).

use futures_lite::{AsyncWrite, AsyncWriteExt};
use rkyv::util::AlignedVec;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

/// Reply bytes queued on one connection at or over which the connection's requests are not
/// read and its linearizable reads wait before encoding, until the client reads.
pub(crate) const REPLY_BACKLOG_BYTES_MAX: usize = 4 << 20;

/// Replies gathered into one socket write at most, in bytes; a reply this large or larger
/// is written on its own, from where it was encoded.
const WRITE_BATCH_BYTES_MAX: usize = 1 << 20;

/// Queue slots kept once the queue is empty again; a larger queue is freed.
const QUEUE_IDLE_SLOTS: usize = 16;

pub(super) struct Replies {
    queue: RefCell<VecDeque<AlignedVec>>,
    /// Bytes held by the queued replies and by the replies being written.
    bytes: Cell<usize>,
    /// No more replies come: the writer ends once the queue is empty.
    closing: Cell<bool>,
    /// The socket failed: replies are dropped and nobody waits for room.
    failed: Cell<bool>,
    /// Dropped once the client stopped sending (it closed, or the connection failed):
    /// what it waits for alone (a lock's turn, an election's leaders) is of no use any
    /// more. Tasks wait for that on `leave_rx`, each wait removed when it ends.
    leave_tx: RefCell<Option<flume::Sender<()>>>,
    leave_rx: flume::Receiver<()>,
    writer: RefCell<Option<Waker>>,
    /// Tasks waiting for the backlog to fall under the cap: the connection's reader and
    /// its linearizable reads, so at most `max_inflight_per_conn + 1`.
    waiting: RefCell<Vec<Waker>>,
    /// The shard's requests being answered plus replies not yet written; a queued reply
    /// counts there until it is written or dropped.
    busy: Rc<Cell<usize>>,
}

impl Replies {
    pub(super) fn new(busy: Rc<Cell<usize>>) -> Rc<Replies> {
        let (leave_tx, leave_rx) = flume::bounded(0);
        Rc::new(Replies {
            queue: RefCell::new(VecDeque::new()),
            bytes: Cell::new(0),
            closing: Cell::new(false),
            failed: Cell::new(false),
            leave_tx: RefCell::new(Some(leave_tx)),
            leave_rx,
            writer: RefCell::new(None),
            waiting: RefCell::new(Vec::new()),
            busy,
        })
    }

    /// Queues a reply frame for the writer (dropped if the socket failed).
    pub(super) fn send(&self, frame: AlignedVec) {
        if self.failed.get() {
            return;
        }
        self.busy.set(self.busy.get() + 1);
        self.bytes.set(self.bytes.get() + frame.capacity());
        self.queue.borrow_mut().push_back(frame);
        self.wake_writer();
    }

    /// Ends the connection once the replies queued before are written.
    pub(super) fn close(&self) {
        self.closing.set(true);
        self.wake_writer();
    }

    /// The client left: the tasks waiting in [`Replies::left`] end their waits.
    pub(super) fn client_left(&self) {
        self.leave_tx.take();
    }

    /// Waits until the client leaves.
    pub(super) async fn left(&self) {
        // Nothing is ever sent: this ends when the sender is dropped.
        let _ = self.leave_rx.recv_async().await;
    }

    /// The shard's count of requests being answered plus replies not yet written.
    pub(super) fn busy(&self) -> &Rc<Cell<usize>> {
        &self.busy
    }

    /// Whether the socket failed (replies can no longer be written).
    pub(super) fn failed(&self) -> bool {
        self.failed.get()
    }

    /// Bytes held by replies not yet written.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.bytes.get()
    }

    fn has_room(&self) -> bool {
        self.failed.get() || self.bytes.get() < REPLY_BACKLOG_BYTES_MAX
    }

    /// Waits until the replies not yet written are under the cap (or the socket failed).
    /// Whoever then encodes a reply does so before yielding, so the next waiter sees it.
    pub(super) async fn room(&self) {
        poll_fn(|cx| {
            if self.has_room() {
                Poll::Ready(())
            } else {
                // Woken all at once below, which empties the list; a task is in it again
                // only if something else woke it meanwhile (a socket readiness it stopped
                // waiting for), so the list stays about the number of waiting tasks.
                self.waiting.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// The next reply to write, or `None` once closing and all are written.
    async fn next(&self) -> Option<AlignedVec> {
        poll_fn(|cx| {
            if let Some(frame) = self.queue.borrow_mut().pop_front() {
                Poll::Ready(Some(frame))
            } else if self.closing.get() {
                Poll::Ready(None)
            } else {
                *self.writer.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// The next queued reply if it fits in a batch of `batched` bytes so far.
    fn next_for_batch(&self, batched: usize) -> Option<AlignedVec> {
        let mut queue = self.queue.borrow_mut();
        let fits = queue
            .front()
            .is_some_and(|f| batched + f.len() <= WRITE_BATCH_BYTES_MAX);
        if fits {
            queue.pop_front()
        } else {
            None
        }
    }

    fn wake_writer(&self) {
        if let Some(w) = self.writer.borrow_mut().take() {
            w.wake();
        }
    }

    /// Counts `frames` replies of `bytes` written (or lost with the socket).
    fn written(&self, frames: usize, bytes: usize) {
        assert!(frames <= self.busy.get() && bytes <= self.bytes.get());
        self.busy.set(self.busy.get() - frames);
        self.bytes.set(self.bytes.get() - bytes);
        let mut queue = self.queue.borrow_mut();
        if queue.is_empty() && queue.capacity() > QUEUE_IDLE_SLOTS {
            *queue = VecDeque::new();
        }
        drop(queue);
        if self.has_room() {
            for w in self.waiting.take() {
                w.wake();
            }
        }
    }

    /// The socket failed: what is queued will never be written.
    fn fail(&self) {
        self.failed.set(true);
        let lost = std::mem::take(&mut *self.queue.borrow_mut());
        let bytes = lost.iter().map(AlignedVec::capacity).sum();
        self.written(lost.len(), bytes);
    }
}

/// Writes a connection's replies in the order they are ready: a reply alone straight from
/// its frame, several ready at once gathered into one write (one syscall for many).
pub(super) async fn write_replies(replies: Rc<Replies>, mut writer: impl AsyncWrite + Unpin) {
    let mut batch: Vec<u8> = Vec::new();
    while let Some(first) = replies.next().await {
        let mut frames = 1;
        let mut bytes = first.capacity();
        let result = match replies.next_for_batch(first.len()) {
            None => writer.write_all(&first).await,
            Some(second) => {
                batch.extend_from_slice(&first);
                drop(first);
                let mut more = Some(second);
                while let Some(frame) = more {
                    batch.extend_from_slice(&frame);
                    frames += 1;
                    bytes += frame.capacity();
                    more = replies.next_for_batch(batch.len());
                }
                let result = writer.write_all(&batch).await;
                batch.clear();
                result
            }
        };
        replies.written(frames, bytes);
        if result.is_err() {
            replies.fail();
            return;
        }
        if replies.queue.borrow().is_empty() {
            batch = Vec::new();
        }
    }
    let _ = writer.flush().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::Context;

    /// A socket that takes bytes only once opened.
    #[derive(Default, Clone)]
    struct Pipe {
        open: Rc<Cell<bool>>,
        waker: Rc<RefCell<Option<Waker>>>,
        written: Rc<RefCell<Vec<u8>>>,
    }

    impl Pipe {
        fn open(&self) {
            self.open.set(true);
            if let Some(w) = self.waker.take() {
                w.wake();
            }
        }
    }

    impl AsyncWrite for Pipe {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            if self.open.get() {
                self.written.borrow_mut().extend_from_slice(buf);
                Poll::Ready(Ok(buf.len()))
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn frame(byte: u8, len: usize) -> AlignedVec {
        let mut f = AlignedVec::with_capacity(len);
        f.resize(len, byte);
        f
    }

    #[test]
    fn the_backlog_is_bounded_in_bytes_and_drains_in_order() {
        glommio::LocalExecutor::default().run(async {
            let busy = Rc::new(Cell::new(0));
            let replies = Replies::new(busy.clone());
            let pipe = Pipe::default();
            let writer = glommio::spawn_local(write_replies(replies.clone(), pipe.clone()));
            let chunk = REPLY_BACKLOG_BYTES_MAX / 4;
            let mut sent = 0;
            while replies.has_room() {
                replies.send(frame(sent as u8, chunk));
                sent += 1;
            }
            assert_eq!(sent, 4);
            assert_eq!(busy.get(), 4);
            let waiter = glommio::spawn_local({
                let replies = replies.clone();
                async move { replies.room().await }
            });
            glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
            assert!(
                replies.bytes() >= REPLY_BACKLOG_BYTES_MAX,
                "nothing written yet"
            );
            pipe.open();
            waiter.await;
            replies.close();
            writer.await;
            assert_eq!((busy.get(), replies.bytes()), (0, 0));
            let written = pipe.written.borrow();
            assert_eq!(written.len(), 4 * chunk);
            assert!((0..4).all(|i| written[i * chunk] == i as u8));
        });
    }

    #[test]
    fn a_failed_socket_drops_what_is_queued_and_frees_the_waiters() {
        struct Broken;
        impl AsyncWrite for Broken {
            fn poll_write(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                _: &[u8],
            ) -> Poll<std::io::Result<usize>> {
                Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        glommio::LocalExecutor::default().run(async {
            let busy = Rc::new(Cell::new(0));
            let replies = Replies::new(busy.clone());
            for i in 0..3 {
                replies.send(frame(i, REPLY_BACKLOG_BYTES_MAX / 2));
            }
            assert!(!replies.has_room());
            write_replies(replies.clone(), Broken).await;
            replies.room().await;
            assert!(replies.failed());
            replies.send(frame(9, 10));
            assert_eq!((busy.get(), replies.bytes()), (0, 0));
        });
    }
}
