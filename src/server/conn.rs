//! Native protocol connections: frames in, requests answered out of order, bounded in flight.

use super::{Input, Proposal, Shared};
use crate::mvcc::{validate, Request};
use crate::node::NodeError;
use crate::protocol::{
    self, encode_error, encode_response, ClientRequest, ClientResponse, ErrorCode, ErrorReply,
    FrameKind, HEADER_BYTES,
};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use rkyv::util::AlignedVec;
use std::cell::Cell;
use std::rc::Rc;

/// Replies gathered into one socket write at most, in bytes.
const WRITE_BATCH_BYTES_MAX: usize = 1 << 20;

pub(crate) async fn accept_loop(listener: TcpListener, shared: Rc<Shared>) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                glommio::spawn_local(connection(stream, shared.clone())).detach();
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

fn error_frame(id: u64, code: ErrorCode, message: String) -> Option<AlignedVec> {
    encode_error(id, &ErrorReply { code, message }).ok()
}

async fn connection(stream: TcpStream, shared: Rc<Shared>) {
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let max = shared.config.max_inflight_per_conn;
    let (out_tx, out_rx) = flume::bounded::<Option<AlignedVec>>(max + 1);
    // One writer per connection: replies leave in the order they are ready, every reply
    // ready at that moment in one write (one syscall for many replies).
    let writer_task = glommio::spawn_local(async move {
        let mut batch: Vec<u8> = Vec::with_capacity(64 << 10);
        let mut open = true;
        while open {
            match out_rx.recv_async().await {
                Ok(Some(frame)) => batch.extend_from_slice(&frame),
                _ => break,
            }
            while batch.len() < WRITE_BATCH_BYTES_MAX {
                match out_rx.try_recv() {
                    Ok(Some(frame)) => batch.extend_from_slice(&frame),
                    Ok(None) => {
                        open = false;
                        break;
                    }
                    Err(_) => break,
                }
            }
            if writer.write_all(&batch).await.is_err() {
                return;
            }
            batch.clear();
        }
        let _ = writer.flush().await;
    });
    let inflight = Rc::new(Cell::new(0usize));
    let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut chunk = vec![0u8; 64 << 10];
    'read: loop {
        loop {
            match protocol::split_frame(&buf, shared.config.max_request_bytes) {
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "malformed frame header; closing the connection");
                    let _ = out_tx
                        .send_async(error_frame(0, ErrorCode::Malformed, e.to_string()))
                        .await;
                    break 'read;
                }
                Ok(Some((header, total))) => {
                    let mut payload = AlignedVec::<16>::with_capacity(total - HEADER_BYTES);
                    payload.extend_from_slice(&buf[HEADER_BYTES..total]);
                    buf.drain(..total);
                    if header.kind != FrameKind::Request {
                        let msg = "clients send request frames only".to_string();
                        let _ = out_tx
                            .send_async(error_frame(header.request_id, ErrorCode::Malformed, msg))
                            .await;
                        break 'read;
                    }
                    if !dispatch(header.request_id, payload, &shared, &out_tx, &inflight).await {
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
    let _ = out_tx.send_async(None).await;
    writer_task.await;
}

/// Handles one request frame; false when the connection must be closed.
async fn dispatch(
    id: u64,
    payload: AlignedVec,
    shared: &Rc<Shared>,
    out: &flume::Sender<Option<AlignedVec>>,
    inflight: &Rc<Cell<usize>>,
) -> bool {
    let request = match protocol::decode_request(&payload) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(id, error = %e, "malformed request; closing the connection");
            let _ = out
                .send_async(error_frame(id, ErrorCode::Malformed, e.to_string()))
                .await;
            return false;
        }
    };
    if inflight.get() >= shared.config.max_inflight_per_conn {
        let msg = "too many requests in flight on this connection".to_string();
        let _ = out
            .send_async(error_frame(id, ErrorCode::Overloaded, msg))
            .await;
        return true;
    }
    let reply = match request {
        ClientRequest::Status => {
            encode_response(id, &ClientResponse::Status(*shared.status.borrow())).ok()
        }
        ClientRequest::Kv(req) => {
            if let Err(e) = validate(&req, shared.config.max_txn_ops) {
                error_frame(id, ErrorCode::InvalidRequest, e.to_string())
            } else if let Request::Range(r) = req {
                if r.serializable {
                    serve_range(id, &r, shared)
                } else {
                    spawn_linearizable_read(id, r, shared, out, inflight);
                    return true;
                }
            } else {
                spawn_proposal(id, payload, shared, out, inflight);
                return true;
            }
        }
    };
    let _ = out.send_async(reply).await;
    true
}

/// A range from the latest published view.
fn serve_range(id: u64, r: &crate::mvcc::RangeRequest, shared: &Shared) -> Option<AlignedVec> {
    let view = shared.view.borrow().clone();
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
    shared: &Rc<Shared>,
    out: &flume::Sender<Option<AlignedVec>>,
    inflight: &Rc<Cell<usize>>,
) {
    let shared = shared.clone();
    spawn_reply(out, inflight, async move {
        let (tx, rx) = flume::bounded(1);
        match shared.proposals.try_send(Input::Read(tx)) {
            Err(_) => error_frame(
                id,
                ErrorCode::Overloaded,
                "too many requests pending".into(),
            ),
            Ok(()) => match rx.recv_async().await {
                Ok(()) => serve_range(id, &r, &shared),
                Err(_) => error_frame(
                    id,
                    ErrorCode::Unavailable,
                    "no leader to confirm the read".into(),
                ),
            },
        }
    });
}

fn reply_frame(id: u64, result: Result<crate::mvcc::Response, NodeError>) -> Option<AlignedVec> {
    match result {
        Ok(r) => encode_response(id, &ClientResponse::Kv(r)).ok(),
        Err(NodeError::NotLeader) => {
            error_frame(id, ErrorCode::Unavailable, NodeError::NotLeader.to_string())
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
    shared: &Rc<Shared>,
    out: &flume::Sender<Option<AlignedVec>>,
    inflight: &Rc<Cell<usize>>,
) {
    let proposals = shared.proposals.clone();
    spawn_reply(out, inflight, async move {
        let (tx, rx) = flume::bounded(1);
        let proposal = Proposal {
            payload: payload.to_vec(),
            reply: tx,
        };
        match proposals.try_send(Input::Propose(proposal)) {
            Err(_) => error_frame(
                id,
                ErrorCode::Overloaded,
                "too many proposals pending".into(),
            ),
            Ok(()) => match rx.recv_async().await {
                Ok(result) => reply_frame(id, result),
                Err(_) => error_frame(id, ErrorCode::Unavailable, "the member is stopping".into()),
            },
        }
    });
}

/// Answers a request from its own task, counted in the connection's requests in flight.
fn spawn_reply(
    out: &flume::Sender<Option<AlignedVec>>,
    inflight: &Rc<Cell<usize>>,
    reply: impl std::future::Future<Output = Option<AlignedVec>> + 'static,
) {
    inflight.set(inflight.get() + 1);
    let out = out.clone();
    let inflight = inflight.clone();
    glommio::spawn_local(async move {
        let frame = reply.await;
        let _ = out.send_async(frame).await;
        inflight.set(inflight.get() - 1);
    })
    .detach();
}
