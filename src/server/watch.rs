//! The shell around the watch hub: each connection's queue of watch responses (a
//! [`Sink`] bounded in bytes, drained by a task of the connection that encodes them as
//! frames), and the connection's side of registering with the hub on the apply role.

use super::replies::Replies;
use super::Shared;
use crate::protocol::{encode_response, ClientResponse, ErrorCode};
use crate::watch::{ConnId, Sink, WatchInput, WatchOut, WatchRequest};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Watch response bytes queued for one connection beyond which its watchers get no more
/// events (they fall behind, and catch up from the tree once the client reads).
pub(crate) const WATCH_QUEUE_BYTES_MAX: usize = 8 << 20;

/// Watch requests and connection closes waiting for the apply role, for the whole member.
pub(crate) const WATCH_INPUTS_MAX: usize = 65_536;

/// What the apply role's hub is handed.
pub(crate) type HubInput = WatchInput<ConnSink>;

/// What a lock contender waiting on the apply role is told.
pub(crate) type LockReply = flume::Sender<crate::lock::Outcome>;

/// Where an election's observer is told its leaders: `(revision, leader's key-value)`.
pub(crate) type ObserveSink = flume::Sender<(i64, crate::mvcc::KeyValue)>;

/// What the front ends hand the apply role for their clients: watch requests, lock
/// contenders to wait for their turn, observers of an election (`NAME/`), and maintenance
/// requests that need the store (snapshot, defragment, hash).
pub(crate) enum ClientInput {
    Watch(HubInput),
    Lock(crate::lock::LockWait, LockReply),
    Observe(Vec<u8>, ObserveSink),
    Maintenance(super::maintenance::MaintenanceInput),
}

/// A connection's queue of watch responses, on the hub's side.
pub(crate) struct ConnSink {
    tx: flume::Sender<WatchOut>,
    queued_bytes: Arc<AtomicUsize>,
}

impl Sink for ConnSink {
    fn try_send(&self, outs: Vec<WatchOut>) -> Result<(), Vec<WatchOut>> {
        let bytes: usize = outs.iter().map(WatchOut::bytes).sum();
        let queued = self.queued_bytes.load(Ordering::Acquire);
        if queued > 0 && queued + bytes > WATCH_QUEUE_BYTES_MAX {
            return Err(outs);
        }
        self.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
        for out in outs {
            // A closed connection: its close reaches the hub next.
            let _ = self.tx.send(out);
        }
        Ok(())
    }

    fn send_control(&self, out: WatchOut) {
        self.queued_bytes.fetch_add(out.bytes(), Ordering::AcqRel);
        let _ = self.tx.send(out);
    }

    /// Room for a catch-up chunk: under half the bound queued.
    fn has_room(&self) -> bool {
        self.queued_bytes.load(Ordering::Acquire) < WATCH_QUEUE_BYTES_MAX / 2
    }
}

impl ConnSink {
    /// A sink, the queue it fills, and the bytes queued (the reader takes off what it
    /// has sent on).
    pub(crate) fn channel() -> (ConnSink, flume::Receiver<WatchOut>, Arc<AtomicUsize>) {
        let (tx, rx) = flume::unbounded();
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let sink = ConnSink {
            tx,
            queued_bytes: queued_bytes.clone(),
        };
        (sink, rx, queued_bytes)
    }
}

/// A new connection id for the hub, unique in the process.
pub(crate) fn next_conn() -> ConnId {
    NEXT_CONN.fetch_add(1, Ordering::Relaxed)
}

/// A connection's watch side, once it sent its first watch request.
pub(crate) struct ConnWatch {
    conn: ConnId,
    inputs: flume::Sender<ClientInput>,
    /// Encodes the queued responses as frames while the connection has room for them.
    _writer: glommio::Task<()>,
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

impl ConnWatch {
    /// Registers the connection with the hub; `None` if the hub's queue is full or gone.
    pub(crate) fn open(shared: &Shared, replies: &Rc<Replies>) -> Option<ConnWatch> {
        let conn = next_conn();
        let (sink, rx, queued_bytes) = ConnSink::channel();
        let inputs = shared.client_inputs.clone();
        inputs
            .try_send(ClientInput::Watch(WatchInput::Open { conn, sink }))
            .ok()?;
        let writer = glommio::spawn_local(write_responses(rx, queued_bytes, replies.clone()));
        Some(ConnWatch {
            conn,
            inputs,
            _writer: writer,
        })
    }

    /// Passes a watch request to the hub; the error frame's code and message if its queue
    /// is full.
    pub(crate) fn request(
        &self,
        request_id: u64,
        request: WatchRequest,
    ) -> Result<(), (ErrorCode, String)> {
        let input = WatchInput::Request {
            conn: self.conn,
            request_id,
            request,
        };
        self.inputs
            .try_send(ClientInput::Watch(input))
            .map_err(|e| match e {
                flume::TrySendError::Full(_) => (
                    ErrorCode::Overloaded,
                    "too many watch requests pending".to_string(),
                ),
                flume::TrySendError::Disconnected(_) => {
                    (ErrorCode::Unavailable, "the member is stopping".to_string())
                }
            })
    }

    /// The connection closed: its watchers go (waiting for room in the hub's queue, so
    /// that the close is never lost).
    pub(crate) async fn close(self) {
        let _ = self
            .inputs
            .send_async(ClientInput::Watch(WatchInput::Close { conn: self.conn }))
            .await;
    }
}

/// Encodes each queued response as a frame once the connection's replies have room, so a
/// client that does not read holds at most the reply backlog plus its watch queue.
async fn write_responses(
    rx: flume::Receiver<WatchOut>,
    queued_bytes: Arc<AtomicUsize>,
    replies: Rc<Replies>,
) {
    while let Ok(out) = rx.recv_async().await {
        replies.room().await;
        let bytes = out.bytes();
        let frame = encode_response(out.request_id, &ClientResponse::Watch(out.response));
        match frame {
            Ok(frame) => replies.send(frame),
            Err(e) => tracing::warn!(error = %e, "a watch response could not be encoded"),
        }
        queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }
}
