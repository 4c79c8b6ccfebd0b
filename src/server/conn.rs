//! The net role: one shard per executor, each with its own SO_REUSEPORT listener. Native
//! protocol connections: frames in, requests answered out of order, bounded in flight;
//! serializable reads from the shard's copy of the latest published view.

use super::{wait_until, Input, Phase, Proposal, Shared, POLL_BRIEF, POLL_IDLE};
use crate::mvcc::{validate, ReadView, Request};
use crate::node::NodeError;
use crate::protocol::{
    self, encode_error, encode_response, ClientRequest, ClientResponse, ErrorCode, ErrorReply,
    FrameKind, HEADER_BYTES,
};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use rkyv::util::AlignedVec;
use std::cell::{Cell, RefCell};
use std::os::unix::io::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Replies gathered into one socket write at most, in bytes.
const WRITE_BATCH_BYTES_MAX: usize = 1 << 20;

/// Connections one net shard serves at once; more are closed as they arrive.
const CONNECTIONS_PER_SHARD_MAX: usize = 10_000;

/// How long a stopping shard waits for the replies it owes to be written.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// One net shard's state, on its executor.
pub(crate) struct Shard {
    shared: Arc<Shared>,
    /// The published view last seen, by generation.
    view: RefCell<(u64, Option<ReadView>)>,
    /// Requests being answered plus replies not yet written, on every connection.
    busy: Rc<Cell<usize>>,
}

impl Shard {
    fn view(&self) -> Option<ReadView> {
        let generation = self.shared.view_generation();
        let mut cache = self.view.borrow_mut();
        if cache.0 != generation || cache.1.is_none() {
            *cache = (generation, self.shared.view());
        }
        cache.1.clone()
    }

    fn config(&self) -> &super::ServeConfig {
        &self.shared.config
    }
}

/// Runs a net shard: accepts once the member serves, stops accepting when it stops, and
/// returns once the replies it owes are written.
pub(crate) async fn shard(listener: std::net::TcpListener, shared: Arc<Shared>) {
    let shard = Rc::new(Shard {
        shared: shared.clone(),
        view: RefCell::new((u64::MAX, None)),
        busy: Rc::new(Cell::new(0)),
    });
    wait_until(POLL_BRIEF, || shared.phase() != Phase::Starting).await;
    if shared.phase() == Phase::Serving {
        // SAFETY: the descriptor is a bound, listening TCP socket whose ownership moves here.
        let listener = unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) };
        let accept = glommio::spawn_local(accept_loop(listener, shard.clone()));
        wait_until(POLL_IDLE, || shared.phase() >= Phase::Stopping).await;
        drop(accept);
    }
    wait_until(POLL_BRIEF, || shared.phase() >= Phase::Stopped).await;
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    wait_until(POLL_BRIEF, || {
        // Work queued after the raft role's last look is refused here ("stopping").
        super::refuse_queued(&shared.queued);
        shard.busy.get() == 0 || Instant::now() >= deadline
    })
    .await;
}

async fn accept_loop(listener: TcpListener, shard: Rc<Shard>) {
    let open = Rc::new(Cell::new(0usize));
    loop {
        match listener.accept().await {
            Ok(stream) if open.get() >= CONNECTIONS_PER_SHARD_MAX => {
                tracing::warn!(
                    limit = CONNECTIONS_PER_SHARD_MAX,
                    "connection refused: too many connections on this shard"
                );
                drop(stream);
            }
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                open.set(open.get() + 1);
                let (shard, open) = (shard.clone(), open.clone());
                glommio::spawn_local(async move {
                    connection(stream, shard).await;
                    open.set(open.get() - 1);
                })
                .detach();
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// Largest reply frame; a bigger range gets an error asking for `limit` (etcd clients hit
/// their own 2 GiB gRPC bound far later; this keeps a member's memory in check).
pub(crate) const REPLY_BYTES_MAX: usize = 64 << 20;

fn error_frame(id: u64, code: ErrorCode, message: String) -> AlignedVec {
    // Encoding a short error cannot fail in practice; if it did, nothing is written and the
    // client's request times out.
    encode_error(id, &ErrorReply { code, message }).unwrap_or_default()
}

/// An encoded reply, or an Internal error if it could not be encoded or is too large.
fn or_internal(id: u64, frame: Result<AlignedVec, protocol::ProtocolError>) -> AlignedVec {
    match frame {
        Ok(f) if f.len() <= REPLY_BYTES_MAX + HEADER_BYTES => f,
        Ok(f) => error_frame(
            id,
            ErrorCode::InvalidRequest,
            format!(
                "the response of {} bytes exceeds the {REPLY_BYTES_MAX}-byte limit; ask for less with limit",
                f.len()
            ),
        ),
        Err(e) => error_frame(id, ErrorCode::Internal, format!("the reply could not be encoded: {e}")),
    }
}

/// Where a connection's replies go: its writer task, counting what is not yet written.
#[derive(Clone)]
struct Out {
    /// Frames for the writer; `None` ends the connection.
    tx: flume::Sender<Option<AlignedVec>>,
    busy: Rc<Cell<usize>>,
}

impl Out {
    /// Queues a reply frame (or the end of the connection) for the writer.
    async fn send(&self, frame: AlignedVec) {
        self.busy.set(self.busy.get() + 1);
        if self.tx.send_async(Some(frame)).await.is_err() {
            self.busy.set(self.busy.get() - 1); // the writer is gone: the client is
        }
    }

    /// Ends the connection once the frames queued before are written.
    async fn close(&self) {
        let _ = self.tx.send_async(None).await;
    }
}

async fn connection(stream: TcpStream, shard: Rc<Shard>) {
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let max = shard.config().max_inflight_per_conn;
    let (out_tx, out_rx) = flume::bounded::<Option<AlignedVec>>(max + 1);
    let busy = shard.busy.clone();
    let out = Out {
        tx: out_tx,
        busy: busy.clone(),
    };
    // One writer per connection: replies leave in the order they are ready, every reply
    // ready at that moment in one write (one syscall for many replies).
    let writer_task = glommio::spawn_local(async move {
        let mut batch: Vec<u8> = Vec::with_capacity(64 << 10);
        let mut open = true;
        let mut frames = 0;
        while open {
            match out_rx.recv_async().await {
                Ok(Some(frame)) => batch.extend_from_slice(&frame),
                _ => break,
            }
            frames += 1;
            while batch.len() < WRITE_BATCH_BYTES_MAX {
                match out_rx.try_recv() {
                    Ok(Some(frame)) => {
                        batch.extend_from_slice(&frame);
                        frames += 1;
                    }
                    Ok(None) => {
                        open = false;
                        break;
                    }
                    Err(_) => break,
                }
            }
            let written = writer.write_all(&batch).await;
            busy.set(busy.get() - frames);
            frames = 0;
            if written.is_err() {
                // Replies still queued will never be written.
                busy.set(busy.get() - out_rx.drain().filter(Option::is_some).count());
                return;
            }
            batch.clear();
        }
        let _ = writer.flush().await;
    });
    let out_tx = out;
    let inflight = Rc::new(Cell::new(0usize));
    let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut chunk = vec![0u8; 64 << 10];
    'read: loop {
        loop {
            match protocol::split_frame(&buf, shard.config().max_request_bytes) {
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "malformed frame header; closing the connection");
                    out_tx
                        .send(error_frame(0, ErrorCode::Malformed, e.to_string()))
                        .await;
                    break 'read;
                }
                Ok(Some((header, total))) => {
                    let mut payload = AlignedVec::<16>::with_capacity(total - HEADER_BYTES);
                    payload.extend_from_slice(&buf[HEADER_BYTES..total]);
                    buf.drain(..total);
                    if header.kind != FrameKind::Request {
                        let msg = "clients send request frames only".to_string();
                        out_tx
                            .send(error_frame(header.request_id, ErrorCode::Malformed, msg))
                            .await;
                        break 'read;
                    }
                    if !dispatch(header.request_id, payload, &shard, &out_tx, &inflight).await {
                        break 'read;
                    }
                }
            }
        }
        match reader.read(&mut chunk).await {
            Ok(0) => break,
            Err(e) => {
                tracing::debug!(error = %e, "read failed; closing the connection");
                break;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    // Let requests in flight finish, then stop the writer.
    while inflight.get() > 0 {
        glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
    }
    out_tx.close().await;
    writer_task.await;
}

/// Handles one request frame; false when the connection must be closed.
async fn dispatch(
    id: u64,
    payload: AlignedVec,
    shard: &Rc<Shard>,
    out: &Out,
    inflight: &Rc<Cell<usize>>,
) -> bool {
    let config = shard.config();
    let request = match protocol::decode_request(&payload) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(id, error = %e, "malformed request; closing the connection");
            out.send(error_frame(id, ErrorCode::Malformed, e.to_string()))
                .await;
            return false;
        }
    };
    if inflight.get() >= config.max_inflight_per_conn {
        let msg = "too many requests in flight on this connection".to_string();
        out.send(error_frame(id, ErrorCode::Overloaded, msg)).await;
        return true;
    }
    let stopping = shard.shared.phase() >= Phase::Stopping;
    let reply = match request {
        ClientRequest::Status => {
            let status = shard.shared.status();
            or_internal(id, encode_response(id, &ClientResponse::Status(status)))
        }
        ClientRequest::Alarm(req) => {
            let shared = &shard.shared;
            let member_id = shared.status.lock().member_id;
            let alarms = shared.alarms.request(member_id, &req);
            or_internal(id, encode_response(id, &ClientResponse::Alarm(alarms)))
        }
        ClientRequest::Kv(req) => {
            if let Err(e) = validate(&req, config.max_txn_ops) {
                error_frame(id, ErrorCode::InvalidRequest, e.to_string())
            } else if matches!(&req, Request::Range(r) if r.serializable) {
                let Request::Range(r) = &req else {
                    unreachable!("matched above")
                };
                serve_range(id, r, shard)
            } else if stopping {
                error_frame(id, ErrorCode::Unavailable, STOPPING.into())
            } else if adds_data(&req) && no_space(&shard.shared, payload.len()) {
                error_frame(id, ErrorCode::NoSpace, NO_SPACE.into())
            } else if let Request::Range(r) = req {
                spawn_linearizable_read(id, r, shard, out, inflight);
                return true;
            } else {
                spawn_proposal(id, payload, shard, out, inflight);
                return true;
            }
        }
    };
    out.send(reply).await;
    true
}

const STOPPING: &str = "the member is stopping";
const OUTCOME_UNKNOWN: &str =
    "the member failed before this write's outcome was known: it may or may not have been applied";
const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";

/// Whether a request may grow the database (etcd's quota applies to puts, also in txns).
fn adds_data(req: &Request) -> bool {
    fn txn_puts(t: &crate::mvcc::TxnRequest) -> bool {
        t.success.iter().chain(&t.failure).any(|op| match op {
            crate::mvcc::RequestOp::Put(_) => true,
            crate::mvcc::RequestOp::Txn(t) => txn_puts(t),
            _ => false,
        })
    }
    match req {
        Request::Put(_) => true,
        Request::Txn(t) => txn_puts(t),
        _ => false,
    }
}

/// Whether a write that adds `cost` bytes is refused for space: the NOSPACE alarm is raised,
/// or this write would take the tree's live bytes past the quota (which raises it, as etcd
/// does: it stays raised until disarmed, whatever is freed meanwhile).
fn no_space(shared: &Shared, cost: usize) -> bool {
    if shared.alarms.nospace() {
        return true;
    }
    let quota = shared.config.quota_backend_bytes;
    let used = shared.quota_used.load(std::sync::atomic::Ordering::Relaxed);
    if quota > 0 && used.saturating_add(cost as u64) > quota {
        shared
            .alarms
            .raise(crate::protocol::AlarmType::Nospace, || {
                format!("the database holds {used} bytes; --quota-backend-bytes is {quota}")
            });
        return true;
    }
    false
}

/// A range from the latest published view.
fn serve_range(id: u64, r: &crate::mvcc::RangeRequest, shard: &Shard) -> AlignedVec {
    let Some(view) = shard.view() else {
        return error_frame(
            id,
            ErrorCode::Unavailable,
            "the store is not open yet".into(),
        );
    };
    reply_frame(
        id,
        view.range(r)
            .map(crate::mvcc::Response::Range)
            .map_err(NodeError::from),
    )
}

/// A linearizable range: waits for a confirmed read index (batched with every read waiting
/// at the same moment), then reads the view published once apply reached it. Nothing is
/// written to the log.
fn spawn_linearizable_read(
    id: u64,
    r: crate::mvcc::RangeRequest,
    shard: &Rc<Shard>,
    out: &Out,
    inflight: &Rc<Cell<usize>>,
) {
    let shard = shard.clone();
    spawn_reply(out, inflight, async move {
        let (tx, rx) = flume::bounded(1);
        match enqueue(&shard.shared.inputs, Input::Read(tx), id) {
            Err(refused) => refused,
            Ok(()) => match rx.recv_async().await {
                Ok(()) => serve_range(id, &r, &shard),
                Err(_) => error_frame(
                    id,
                    ErrorCode::Unavailable,
                    "no leader to confirm the read".into(),
                ),
            },
        }
    });
}

/// Hands a request to the raft role, or the error frame saying why it cannot be.
fn enqueue(inputs: &flume::Sender<Input>, input: Input, id: u64) -> Result<(), AlignedVec> {
    let what = match &input {
        Input::Propose(_) => "proposals",
        _ => "requests",
    };
    inputs.try_send(input).map_err(|e| match e {
        flume::TrySendError::Full(_) => error_frame(
            id,
            ErrorCode::Overloaded,
            format!("too many {what} pending"),
        ),
        flume::TrySendError::Disconnected(_) => {
            error_frame(id, ErrorCode::Unavailable, STOPPING.into())
        }
    })
}

fn reply_frame(id: u64, result: Result<crate::mvcc::Response, NodeError>) -> AlignedVec {
    match result {
        Ok(r) => or_internal(id, encode_response(id, &ClientResponse::Kv(r))),
        Err(e @ (NodeError::NotLeader | NodeError::Stopping)) => {
            error_frame(id, ErrorCode::Unavailable, e.to_string())
        }
        Err(NodeError::Mvcc(e)) if !e.is_fatal() => {
            error_frame(id, ErrorCode::InvalidRequest, e.to_string())
        }
        Err(e) => error_frame(id, ErrorCode::Internal, e.to_string()),
    }
}

/// Sends a write through the log; its bytes are the entry as they came off the socket.
fn spawn_proposal(
    id: u64,
    payload: AlignedVec,
    shard: &Rc<Shard>,
    out: &Out,
    inflight: &Rc<Cell<usize>>,
) {
    let proposals = shard.shared.inputs.clone();
    spawn_reply(out, inflight, async move {
        let (tx, rx) = flume::bounded(1);
        let proposal = Proposal {
            payload: payload.to_vec(),
            reply: tx,
        };
        match enqueue(&proposals, Input::Propose(proposal), id) {
            Err(refused) => refused,
            Ok(()) => match rx.recv_async().await {
                Ok(result) => reply_frame(id, result),
                // Proposed, but its answer was lost with a failing role: it may have been
                // applied, so this is not "try again" (a retried txn could apply twice).
                Err(_) => error_frame(id, ErrorCode::Internal, OUTCOME_UNKNOWN.into()),
            },
        }
    });
}

/// Answers a request from its own task, counted in the connection's requests in flight.
fn spawn_reply(
    out: &Out,
    inflight: &Rc<Cell<usize>>,
    reply: impl std::future::Future<Output = AlignedVec> + 'static,
) {
    inflight.set(inflight.get() + 1);
    out.busy.set(out.busy.get() + 1);
    let out = out.clone();
    let inflight = inflight.clone();
    glommio::spawn_local(async move {
        let frame = reply.await;
        out.send(frame).await;
        inflight.set(inflight.get() - 1);
        out.busy.set(out.busy.get() - 1);
    })
    .detach();
}
