//! The net role: one shard per executor, each with its own SO_REUSEPORT listener. Native
//! protocol connections: frames in, requests answered out of order, bounded in flight and
//! in unwritten reply bytes; a partial frame that stalls closes the connection;
//! serializable reads from the shard's copy of the latest published view.

use super::read_buf::{ReadBuf, READ_BURST_BYTES, READ_IDLE_BYTES};
use super::replies::{write_replies, Replies};
use super::watch::ConnWatch;
use super::{front, wait_until, Phase, Shared, POLL_BRIEF, POLL_IDLE};
use crate::lease::{LeaseRequest, LeaseResponse};
use crate::mvcc::{validate, ReadView, Request};
use crate::node::NodeError;
use crate::protocol::{
    self, encode_error, encode_response, ClientRequest, ClientResponse, ErrorCode, ErrorReply,
    FrameHeader, FrameKind, HEADER_BYTES,
};
use futures_lite::{AsyncRead, AsyncReadExt};
use glommio::net::{TcpListener, TcpStream};
use rkyv::util::AlignedVec;
use std::cell::{Cell, RefCell};
use std::os::unix::io::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Connections one net shard serves at once; more are closed as they arrive.
const CONNECTIONS_PER_SHARD_MAX: usize = 10_000;

/// How long after a connection closes its shard gives freed memory back: once for all the
/// connections closing meanwhile, so that a churn of connections costs one collection
/// every so often, not one per close.
const RELEASE_MEMORY_DELAY: Duration = Duration::from_secs(2);

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
    let releasing = Rc::new(Cell::new(false));
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
                let (shard, open, releasing) = (shard.clone(), open.clone(), releasing.clone());
                glommio::spawn_local(async move {
                    connection(stream, shard.clone()).await;
                    open.set(open.get() - 1);
                    if let Some(release) = shard.config().release_memory {
                        if !releasing.replace(true) {
                            glommio::timer::sleep(RELEASE_MEMORY_DELAY).await;
                            release();
                            releasing.set(false);
                        }
                    }
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

async fn connection(stream: TcpStream, shard: Rc<Shard>) {
    let (mut reader, writer) = futures_lite::io::split(stream);
    let replies = Replies::new(shard.busy.clone());
    let writer_task = glommio::spawn_local(write_replies(replies.clone(), writer));
    let inflight = Rc::new(Cell::new(0usize));
    let watch = RefCell::new(None);
    read_requests(&mut reader, &shard, &replies, &inflight, &watch).await;
    replies.client_left();
    if let Some(watch) = watch.into_inner() {
        watch.close().await;
    }
    // Let requests in flight finish, then stop the writer.
    while inflight.get() > 0 {
        glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
    }
    replies.close();
    writer_task.await;
}

/// Reads and handles request frames until the client closes, sends something that is not
/// a request frame, stalls in the middle of a frame, or the socket fails. Requests are not
/// read while the replies not yet written are over their cap.
async fn read_requests(
    reader: &mut (impl AsyncRead + Unpin),
    shard: &Rc<Shard>,
    replies: &Rc<Replies>,
    inflight: &Rc<Cell<usize>>,
    watch: &RefCell<Option<ConnWatch>>,
) {
    let limit = shard.config().max_request_bytes;
    let mut buf = ReadBuf::new();
    // Whether the last read filled the room it had: the client sends faster than we read.
    let mut bursting = false;
    while handle_frames(&mut buf, shard, replies, inflight, watch).await {
        // The room for a large frame grows with the bytes that arrived (at most doubling
        // per read), so a header alone cannot make the member allocate a whole frame.
        let frame = partial_frame_bytes(buf.pending(), limit)
            .min((2 * buf.pending().len()).max(READ_BURST_BYTES));
        let want = frame.max(if bursting {
            READ_BURST_BYTES
        } else {
            buf.capacity()
        });
        let read = if buf.pending().is_empty() {
            read_idle(reader, &mut buf, want).await
        } else {
            let stall_timeout = shard.config().partial_frame_timeout;
            match read_partial(reader, &mut buf, want, stall_timeout).await {
                Some(read) => read,
                None => {
                    tracing::debug!(
                        timeout = ?stall_timeout,
                        "a partial frame stalled; closing the connection"
                    );
                    return;
                }
            }
        };
        match read {
            Ok((0, _)) => return,
            Err(e) => {
                tracing::debug!(error = %e, "read failed; closing the connection");
                return;
            }
            Ok((n, filled)) => {
                buf.filled(n);
                bursting = filled;
            }
        }
    }
}

/// Handles every whole frame buffered, each once the replies not yet written are under
/// their cap; false when the connection must be closed.
async fn handle_frames(
    buf: &mut ReadBuf,
    shard: &Rc<Shard>,
    replies: &Rc<Replies>,
    inflight: &Rc<Cell<usize>>,
    watch: &RefCell<Option<ConnWatch>>,
) -> bool {
    loop {
        match protocol::split_frame(buf.pending(), shard.config().max_request_bytes) {
            Ok(None) => return true,
            Err(e) => {
                tracing::debug!(error = %e, "malformed frame header; closing the connection");
                replies.send(error_frame(0, ErrorCode::Malformed, e.to_string()));
                return false;
            }
            Ok(Some((header, total))) => {
                replies.room().await;
                if replies.failed() {
                    return false;
                }
                let frame = &buf.pending()[..total];
                let aligned = buf.pending_aligned();
                if !handle_frame(header, frame, aligned, shard, replies, inflight, watch) {
                    return false;
                }
                buf.consume(total);
            }
        }
    }
}

/// A read with nothing pending: into the buffer as it is if bytes are waiting, else, once
/// the connection is idle, into the idle-sized buffer (the larger one given back). The
/// bytes read and whether they filled the room there was.
async fn read_idle(
    reader: &mut (impl AsyncRead + Unpin),
    buf: &mut ReadBuf,
    want: usize,
) -> std::io::Result<(usize, bool)> {
    let room = buf.spare(want);
    let room_bytes = room.len();
    let first = futures_lite::future::poll_once(reader.read(room)).await;
    if let Some(read) = first {
        return read.map(|n| (n, n == room_bytes));
    }
    buf.shrink_if_idle();
    let room = buf.spare(READ_IDLE_BYTES);
    let room_bytes = room.len();
    reader.read(room).await.map(|n| (n, n == room_bytes))
}

/// A read of more of a partial frame, or `None` if nothing came for `stall_timeout`.
async fn read_partial(
    reader: &mut (impl AsyncRead + Unpin),
    buf: &mut ReadBuf,
    want: usize,
    stall_timeout: Duration,
) -> Option<std::io::Result<(usize, bool)>> {
    let room = buf.spare(want);
    let room_bytes = room.len();
    let read = async { Some(reader.read(room).await.map(|n| (n, n == room_bytes))) };
    let stalled = async {
        glommio::timer::sleep(stall_timeout).await;
        None
    };
    futures_lite::future::or(read, stalled).await
}

/// Bytes of the frame starting at `pending`, whole: its header's total once the header is
/// read (and valid), or the header's size before.
fn partial_frame_bytes(pending: &[u8], limit: u32) -> usize {
    pending
        .first_chunk::<HEADER_BYTES>()
        .and_then(|h| FrameHeader::decode(h, limit).ok())
        .map_or(HEADER_BYTES, |h| HEADER_BYTES + h.payload_bytes as usize)
}

/// Handles one whole frame; false when the connection must be closed. The payload is read
/// in place when `aligned` (the frame starts at a 16-byte boundary), else copied.
fn handle_frame(
    header: FrameHeader,
    frame: &[u8],
    aligned: bool,
    shard: &Rc<Shard>,
    replies: &Rc<Replies>,
    inflight: &Rc<Cell<usize>>,
    watch: &RefCell<Option<ConnWatch>>,
) -> bool {
    if header.kind != FrameKind::Request {
        let msg = "clients send request frames only".to_string();
        replies.send(error_frame(header.request_id, ErrorCode::Malformed, msg));
        return false;
    }
    let payload = &frame[HEADER_BYTES..];
    let copy: AlignedVec;
    let payload = if aligned {
        payload
    } else {
        copy = {
            let mut v = AlignedVec::with_capacity(payload.len());
            v.extend_from_slice(payload);
            v
        };
        &copy
    };
    dispatch(header.request_id, payload, shard, replies, inflight, watch)
}

/// Handles one request; false when the connection must be closed.
fn dispatch(
    id: u64,
    payload: &[u8],
    shard: &Rc<Shard>,
    out: &Rc<Replies>,
    inflight: &Rc<Cell<usize>>,
    watch: &RefCell<Option<ConnWatch>>,
) -> bool {
    let config = shard.config();
    let request = match protocol::decode_request(payload) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(id, error = %e, "malformed request; closing the connection");
            out.send(error_frame(id, ErrorCode::Malformed, e.to_string()));
            return false;
        }
    };
    if inflight.get() >= config.max_inflight_per_conn {
        let msg = "too many requests in flight on this connection".to_string();
        out.send(error_frame(id, ErrorCode::Overloaded, msg));
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
        ClientRequest::HashKv(revision) => match shard.view() {
            None => error_frame(id, ErrorCode::Unavailable, STOPPING.into()),
            Some(view) => match view.hash_kv(revision) {
                Ok(h) => or_internal(id, encode_response(id, &ClientResponse::HashKv(h))),
                Err(e) if !e.is_fatal() => {
                    error_frame(id, ErrorCode::InvalidRequest, e.to_string())
                }
                Err(e) => error_frame(id, ErrorCode::Internal, e.to_string()),
            },
        },
        ClientRequest::MoveLeader(to) => {
            let shared = shard.shared.clone();
            spawn_reply(out, inflight, async move {
                match front::move_leader(&shared, to).await {
                    Ok(()) => or_internal(id, encode_response(id, &ClientResponse::MoveLeader)),
                    Err((code, e)) => error_frame(id, code, e),
                }
            });
            return true;
        }
        ClientRequest::Member(req) => {
            let shared = shard.shared.clone();
            spawn_reply(out, inflight, async move {
                match front::member(&shared, req).await {
                    Ok(r) => {
                        let r = front::member_urls(r, true);
                        or_internal(id, encode_response(id, &ClientResponse::Member(r)))
                    }
                    Err((code, e)) => error_frame(id, code, e),
                }
            });
            return true;
        }
        ClientRequest::Lock(crate::lock::LockRequest::Observe { name }) => {
            let (shared, replies) = (shard.shared.clone(), out.clone());
            spawn_reply(out, inflight, observe(id, name, shared, replies));
            return true;
        }
        ClientRequest::Lock(req) => {
            let (shared, replies) = (shard.shared.clone(), out.clone());
            spawn_reply(out, inflight, async move {
                let reply = super::lock::handle(req, &shared, replies.left()).await;
                match reply {
                    Ok(r) => or_internal(id, encode_response(id, &ClientResponse::Lock(r))),
                    Err((code, message)) => error_frame(id, code, message),
                }
            });
            return true;
        }
        ClientRequest::Snapshot(_) | ClientRequest::Defragment if stopping => {
            error_frame(id, ErrorCode::Unavailable, STOPPING.into())
        }
        ClientRequest::Snapshot(base) => {
            let (shared, replies) = (shard.shared.clone(), out.clone());
            let base = base.map(Into::into);
            spawn_reply(out, inflight, send_snapshot(id, base, shared, replies));
            return true;
        }
        ClientRequest::Defragment => {
            let shared = shard.shared.clone();
            spawn_reply(out, inflight, async move {
                match super::maintenance::defragment(&shared).await {
                    Ok(()) => or_internal(id, encode_response(id, &ClientResponse::Defragment)),
                    Err((code, e)) => error_frame(id, code, e),
                }
            });
            return true;
        }
        ClientRequest::Watch(req) => match watch_request(id, req, shard, out, watch) {
            Ok(()) => return true,
            Err(frame) => frame,
        },
        ClientRequest::Lease(req) => {
            if stopping {
                error_frame(id, ErrorCode::Unavailable, STOPPING.into())
            } else {
                lease_request(id, req, shard, out, inflight);
                return true;
            }
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
            } else if front::adds_data(&req) && front::no_space(&shard.shared, payload.len()) {
                error_frame(id, ErrorCode::NoSpace, front::NO_SPACE.into())
            } else if let Request::Range(r) = req {
                spawn_linearizable_read(id, r, shard, out, inflight);
                return true;
            } else {
                spawn_proposal(
                    id,
                    crate::node::command::client(payload),
                    shard,
                    out,
                    inflight,
                );
                return true;
            }
        }
    };
    out.send(reply);
    true
}

/// Streams an election's leaders to the client, each frame with the request's id, until
/// the client leaves; the frame that ends it says why (the member is stopping).
async fn observe(id: u64, name: Vec<u8>, shared: Arc<Shared>, out: Rc<Replies>) -> AlignedVec {
    let leaders = match super::lock::observe(&shared, &name).await {
        Ok(rx) => rx,
        Err((code, message)) => return error_frame(id, code, message),
    };
    loop {
        let next = async { leaders.recv_async().await.ok() };
        let left = async {
            out.left().await;
            None
        };
        let Some((revision, kv)) = futures_lite::future::or(left, next).await else {
            // The client left (the frame goes nowhere), or the member stops.
            return error_frame(id, ErrorCode::Unavailable, STOPPING.into());
        };
        out.room().await;
        let leader = crate::lock::LockResponse::Leader {
            header: crate::mvcc::ResponseHeader { revision },
            kv,
        };
        out.send(or_internal(
            id,
            encode_response(id, &ClientResponse::Lock(leader)),
        ));
    }
}

/// Streams a fresh snapshot to the client, each chunk a frame on the request's id sent once
/// the connection's replies have room (so a slow client holds the reply backlog plus the
/// chunks read ahead); the last chunk, or an error, is the frame that ends it. When the
/// client leaves, the chunks' receiver is dropped and their reader stops.
async fn send_snapshot(
    id: u64,
    base: Option<crate::backup::SnapshotPoint>,
    shared: Arc<Shared>,
    out: Rc<Replies>,
) -> AlignedVec {
    let chunks = match super::maintenance::snapshot_chunks(&shared, base).await {
        Ok(rx) => rx,
        Err((code, message)) => return error_frame(id, code, message),
    };
    let gone = || error_frame(id, ErrorCode::Unavailable, "the client left".into());
    loop {
        let next = async { Some(chunks.recv_async().await) };
        let left = async {
            out.left().await;
            None
        };
        let Some(next) = futures_lite::future::or(left, next).await else {
            return gone();
        };
        let chunk = match next {
            Ok(Ok(chunk)) => chunk,
            Ok(Err(e)) => return error_frame(id, ErrorCode::Internal, e),
            Err(_) => {
                let msg = "the snapshot's reader stopped".to_string();
                return error_frame(id, ErrorCode::Internal, msg);
            }
        };
        let last = chunk.remaining_bytes == 0;
        let room = async {
            out.room().await;
            true
        };
        let left = async {
            out.left().await;
            false
        };
        if !futures_lite::future::or(left, room).await {
            return gone();
        }
        let response = ClientResponse::Snapshot(protocol::SnapshotChunk {
            remaining_bytes: chunk.remaining_bytes,
            blob: chunk.blob,
        });
        let frame = or_internal(id, encode_response(id, &response));
        if last {
            return frame;
        }
        out.send(frame);
    }
}

/// Hands a watch request to the hub, registering the connection with it first; its
/// responses come from the hub. The error frame if the hub cannot take it.
fn watch_request(
    id: u64,
    req: crate::watch::WatchRequest,
    shard: &Shard,
    out: &Rc<Replies>,
    watch: &RefCell<Option<ConnWatch>>,
) -> Result<(), AlignedVec> {
    let mut watch = watch.borrow_mut();
    if watch.is_none() {
        *watch = ConnWatch::open(&shard.shared, out);
    }
    let Some(watch) = watch.as_ref() else {
        let msg = "too many watch requests pending".to_string();
        return Err(error_frame(id, ErrorCode::Overloaded, msg));
    };
    watch
        .request(id, req)
        .map_err(|(code, msg)| error_frame(id, code, msg))
}

const STOPPING: &str = front::STOPPING;

/// A lease request: a grant or revoke goes through the log as a lease command (a grant's id
/// and TTL settled first, so that every member applies the same grant); keepalives,
/// time-to-live and the list are answered by the apply role, which has the table and, on
/// the leader, the lease clock.
fn lease_request(
    id: u64,
    req: LeaseRequest,
    shard: &Rc<Shard>,
    out: &Rc<Replies>,
    inflight: &Rc<Cell<usize>>,
) {
    match front::lease_command(&shard.shared, &req) {
        Some(Ok(command)) => spawn_proposal(id, command, shard, out, inflight),
        Some(Err((code, e))) => out.send(error_frame(id, code, e)),
        None => {
            let shared = shard.shared.clone();
            spawn_reply(out, inflight, async move {
                match front::lease_query(&shared, req).await {
                    Ok(r) => or_internal(id, encode_response(id, &ClientResponse::Lease(r))),
                    Err((code, e)) => error_frame(id, code, e),
                }
            });
        }
    }
}

/// A range from the latest published view.
fn serve_range(id: u64, r: &crate::mvcc::RangeRequest, shard: &Shard) -> AlignedVec {
    let Some(view) = shard.view() else {
        let (code, e) = front::not_open();
        return error_frame(id, code, e);
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
    out: &Rc<Replies>,
    inflight: &Rc<Cell<usize>>,
) {
    let shard = shard.clone();
    let replies = out.clone();
    spawn_reply(out, inflight, async move {
        match front::read_index(&shard.shared).await {
            Err((code, e)) => error_frame(id, code, e),
            Ok(()) => {
                // A pipelined burst of reads must not pile up replies the client has not
                // read: encode only once there is room (a later view is as good).
                replies.room().await;
                serve_range(id, &r, &shard)
            }
        }
    });
}

/// What a client is answered for an applied command: lease commands answer with the Lease
/// service's responses.
fn client_response(r: crate::mvcc::Response) -> ClientResponse {
    use crate::mvcc::Response;
    match r {
        Response::LeaseGrant(g) => ClientResponse::Lease(LeaseResponse::Grant(g)),
        Response::LeaseRevoke(r) => ClientResponse::Lease(LeaseResponse::Revoke(r)),
        other => ClientResponse::Kv(other),
    }
}

fn reply_frame(id: u64, result: Result<crate::mvcc::Response, NodeError>) -> AlignedVec {
    match result {
        Ok(r) => or_internal(id, encode_response(id, &client_response(r))),
        Err(e) => {
            let (code, message) = front::error_of(e);
            error_frame(id, code, message)
        }
    }
}

/// Sends a write through the log: its command holds the request's bytes as they came off
/// the socket.
fn spawn_proposal(
    id: u64,
    command: Vec<u8>,
    shard: &Rc<Shard>,
    out: &Rc<Replies>,
    inflight: &Rc<Cell<usize>>,
) {
    let shared = shard.shared.clone();
    spawn_reply(out, inflight, async move {
        match front::propose(&shared, command).await {
            Ok(r) => or_internal(id, encode_response(id, &client_response(r))),
            Err((code, e)) => error_frame(id, code, e),
        }
    });
}

/// Answers a request from its own task, counted in the connection's requests in flight.
fn spawn_reply(
    out: &Rc<Replies>,
    inflight: &Rc<Cell<usize>>,
    reply: impl std::future::Future<Output = AlignedVec> + 'static,
) {
    inflight.set(inflight.get() + 1);
    let busy = out.busy().clone();
    busy.set(busy.get() + 1);
    let out = out.clone();
    let inflight = inflight.clone();
    glommio::spawn_local(async move {
        let frame = reply.await;
        out.send(frame);
        inflight.set(inflight.get() - 1);
        busy.set(busy.get() - 1);
    })
    .detach();
}
