//! An async client for code running on a glommio executor: one connection at a time with
//! many requests in flight on it (pipelined, answered out of order, all requests from the
//! executor's tasks sharing it), a timeout on every request, and failover across endpoints.
//!
//! ```no_run
//! use cairn::client::AsyncClient;
//! use cairn::mvcc::{PutRequest, Request};
//! use cairn::protocol::ClientRequest;
//! use std::time::Duration;
//!
//! glommio::LocalExecutor::default().run(async {
//!     let client = AsyncClient::new(vec!["127.0.0.1:2378".into()], Duration::from_secs(5));
//!     let put = Request::Put(PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() });
//!     client.request(&ClientRequest::Kv(put)).await
//! })
//! .unwrap();
//! ```

use super::ClientError;
use crate::protocol::{
    decode_error, decode_response, encode_request, split_frame, ClientRequest, ClientResponse,
    FrameKind, HEADER_BYTES,
};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::sync::Semaphore;
use rkyv::util::AlignedVec;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Requests in flight on one client by default; more wait for a slot.
pub const DEFAULT_MAX_INFLIGHT: usize = 1024;

/// Largest reply frame accepted (a member sends at most 64 MiB); a bigger one is a broken
/// or hostile peer, and the connection is dropped rather than buffered.
pub const REPLY_FRAME_BYTES_MAX: u32 = (64 << 20) + 4096;

/// Requests gathered into one socket write at most, in bytes.
const WRITE_BATCH_BYTES_MAX: usize = 1 << 20;

type Waiter = flume::Sender<Result<ClientResponse, ClientError>>;

/// Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct AsyncClient {
    inner: Rc<Inner>,
}

struct Inner {
    endpoints: Vec<String>,
    timeout: Duration,
    slots: Semaphore,
    max_inflight: usize,
    conn: RefCell<Option<Rc<Conn>>>,
    /// The endpoint to try first on the next connect.
    next_endpoint: Cell<usize>,
    next_id: Cell<u64>,
    /// Serializes connecting, so that concurrent requests share one new connection.
    connecting: Semaphore,
}

struct Conn {
    endpoint: String,
    index: usize,
    out: flume::Sender<AlignedVec>,
    pending: RefCell<HashMap<u64, Waiter>>,
    dead: Cell<bool>,
    /// Takes no new requests (its member answered a read Unavailable); those in flight on
    /// it finish, and it closes with the last of them.
    retired: Cell<bool>,
    tasks: RefCell<Vec<glommio::task::JoinHandle<()>>>,
}

impl Conn {
    /// Marks the connection dead and fails every request waiting on it.
    fn fail(&self, reason: &str) {
        self.dead.set(true);
        for (_, w) in self.pending.borrow_mut().drain() {
            let _ = w.send(Err(ClientError::Protocol {
                endpoint: self.endpoint.clone(),
                reason: reason.to_string(),
            }));
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        for t in self.tasks.borrow_mut().drain(..) {
            t.cancel();
        }
    }
}

impl AsyncClient {
    /// A client that connects lazily to the first endpoint that answers.
    pub fn new(endpoints: Vec<String>, timeout: Duration) -> AsyncClient {
        AsyncClient::with_max_inflight(endpoints, timeout, DEFAULT_MAX_INFLIGHT)
    }

    pub fn with_max_inflight(
        endpoints: Vec<String>,
        timeout: Duration,
        max_inflight: usize,
    ) -> AsyncClient {
        AsyncClient {
            inner: Rc::new(Inner {
                endpoints,
                timeout,
                slots: Semaphore::new(max_inflight.max(1) as u64),
                max_inflight: max_inflight.max(1),
                conn: RefCell::new(None),
                next_endpoint: Cell::new(0),
                next_id: Cell::new(1),
                connecting: Semaphore::new(1),
            }),
        }
    }

    /// The endpoint currently connected to.
    pub fn endpoint(&self) -> Option<String> {
        self.live().map(|c| c.endpoint.clone())
    }

    /// The connection, unless there is none or it failed.
    fn live(&self) -> Option<Rc<Conn>> {
        self.inner
            .conn
            .borrow()
            .as_ref()
            .filter(|c| !c.dead.get() && !c.retired.get())
            .cloned()
    }

    /// Sends one request and waits for its reply (or the timeout). A request that could not
    /// be handed to a connection is tried on the next endpoint; one that was is not
    /// repeated (it may have been applied). A read answered Unavailable (no leader,
    /// stopping) is asked again on the next endpoint, at most once for each other endpoint,
    /// as [`super::Client::request`] does:
    /// the connection to the member that answered takes no new requests (those in flight
    /// on it finish there), and the next ones go to the next endpoint.
    pub async fn request(&self, request: &ClientRequest) -> Result<ClientResponse, ClientError> {
        let inner = &self.inner;
        let _slot = inner.slots.acquire_permit(1).await.map_err(local_err)?;
        let id = inner.next_id.get();
        inner.next_id.set(id + 1);
        let frame = encode_request(id, request).map_err(local_err)?;
        let deadline = Instant::now().checked_add(inner.timeout);
        let mut unavailable = None;
        let mut asked = 0;
        loop {
            asked += 1;
            // Asked again but not sent: the member's answer is the error.
            let (conn, reply) = match self.ask(id, &frame, deadline).await {
                Ok(asked) => asked,
                Err(e) => return Err(unavailable.unwrap_or(e)),
            };
            match reply {
                Err(e) if super::asks_again(&e, request, asked, inner.endpoints.len()) => {
                    conn.retired.set(true);
                    unavailable = Some(e);
                }
                reply => return reply,
            }
        }
    }

    /// Sends a request frame on the live connection (connecting if needed) and waits for
    /// its reply until `deadline` (none: no limit): the connection, and the reply.
    async fn ask(
        &self,
        id: u64,
        frame: &AlignedVec,
        deadline: Option<Instant>,
    ) -> Result<(Rc<Conn>, Result<ClientResponse, ClientError>), ClientError> {
        let inner = &self.inner;
        let (tx, rx) = flume::bounded(1);
        let mut attempts = 0;
        let conn = loop {
            let conn = self.connection().await?;
            conn.pending.borrow_mut().insert(id, tx.clone());
            // Room is certain (one slot per request in flight): this fails only when the
            // writer is gone.
            if conn.out.send_async(frame.clone()).await.is_ok() {
                break conn;
            }
            // The writer is gone: not sent, so try elsewhere.
            conn.pending.borrow_mut().remove(&id);
            conn.fail("the connection failed");
            attempts += 1;
            if attempts >= inner.endpoints.len() {
                return Err(ClientError::Io {
                    endpoint: conn.endpoint.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::BrokenPipe,
                        "the connection failed before the request was sent",
                    ),
                });
            }
        };
        drop(tx);
        let reply = futures_lite::future::or(async { Some(rx.recv_async().await) }, async {
            match deadline {
                Some(d) => glommio::timer::sleep(d.saturating_duration_since(Instant::now())).await,
                None => futures_lite::future::pending().await,
            }
            None
        })
        .await;
        let reply = match reply {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(ClientError::Protocol {
                endpoint: conn.endpoint.clone(),
                reason: "connection closed before the reply".into(),
            }),
            None => {
                conn.pending.borrow_mut().remove(&id);
                Err(ClientError::Timeout {
                    endpoint: conn.endpoint.clone(),
                    after: inner.timeout,
                })
            }
        };
        Ok((conn, reply))
    }

    /// The live connection, connecting (to the next endpoint after a failed one) if needed.
    async fn connection(&self) -> Result<Rc<Conn>, ClientError> {
        let inner = &self.inner;
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let _one = inner
            .connecting
            .acquire_permit(1)
            .await
            .map_err(local_err)?;
        // Another request may have connected while this one waited.
        if let Some(c) = self.live() {
            return Ok(c);
        }
        if let Some(dead) = inner.conn.borrow_mut().take() {
            inner
                .next_endpoint
                .set((dead.index + 1) % inner.endpoints.len().max(1));
        }
        let mut last = String::from("no endpoints given");
        let start = inner.next_endpoint.get();
        for k in 0..inner.endpoints.len() {
            let i = (start + k) % inner.endpoints.len();
            let endpoint = &inner.endpoints[i];
            let timeout = inner.timeout;
            let connect = futures_lite::future::or(
                async { Some(TcpStream::connect(endpoint.as_str()).await) },
                async {
                    glommio::timer::sleep(timeout).await;
                    None
                },
            );
            match connect.await {
                Some(Ok(stream)) => {
                    let conn = start_conn(stream, endpoint.clone(), i, inner.max_inflight);
                    inner.next_endpoint.set(i);
                    *inner.conn.borrow_mut() = Some(conn.clone());
                    return Ok(conn);
                }
                Some(Err(e)) => last = format!("{endpoint}: {e}"),
                None => last = format!("{endpoint}: no connection after {timeout:?}"),
            }
        }
        Err(ClientError::Unreachable {
            endpoints: inner.endpoints.clone(),
            last,
        })
    }
}

/// Starts the connection's writer (batching frames into few writes) and reader (matching
/// replies to requests by id).
fn start_conn(stream: TcpStream, endpoint: String, index: usize, slots: usize) -> Rc<Conn> {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let (out, frames) = flume::bounded::<AlignedVec>(slots);
    let conn = Rc::new(Conn {
        endpoint,
        index,
        out,
        pending: RefCell::new(HashMap::new()),
        dead: Cell::new(false),
        retired: Cell::new(false),
        tasks: RefCell::new(Vec::new()),
    });
    let weak = Rc::downgrade(&conn);
    let writer_task = glommio::spawn_local(async move {
        let mut batch = Vec::with_capacity(64 << 10);
        while let Ok(frame) = frames.recv_async().await {
            batch.extend_from_slice(&frame);
            while batch.len() < WRITE_BATCH_BYTES_MAX {
                match frames.try_recv() {
                    Ok(frame) => batch.extend_from_slice(&frame),
                    Err(_) => break,
                }
            }
            if writer.write_all(&batch).await.is_err() {
                if let Some(c) = weak.upgrade() {
                    c.fail("writing to the connection failed");
                }
                return;
            }
            batch.clear();
        }
    })
    .detach();
    let weak = Rc::downgrade(&conn);
    let reader_task = glommio::spawn_local(async move {
        let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
        let mut chunk = vec![0u8; 64 << 10];
        let reason = loop {
            match reader.read(&mut chunk).await {
                Ok(0) => break "the server closed the connection".to_string(),
                Err(e) => break format!("reading failed: {e}"),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            let Some(conn) = weak.upgrade() else { return };
            let mut at = 0;
            loop {
                match split_frame(&buf[at..], REPLY_FRAME_BYTES_MAX) {
                    Ok(None) => break,
                    Err(e) => {
                        conn.fail(&e.to_string());
                        return;
                    }
                    Ok(Some((h, total))) => {
                        let mut payload = AlignedVec::<16>::with_capacity(total - HEADER_BYTES);
                        payload.extend_from_slice(&buf[at + HEADER_BYTES..at + total]);
                        at += total;
                        let reply = decode_reply(h.kind, &payload, &conn.endpoint);
                        if h.request_id == 0 {
                            // An error about the connection itself: it is closing.
                            let reason = match reply {
                                Err(e) => e.to_string(),
                                Ok(_) => "unexpected reply with id 0".into(),
                            };
                            conn.fail(&reason);
                            return;
                        }
                        if let Some(w) = conn.pending.borrow_mut().remove(&h.request_id) {
                            let _ = w.send(reply);
                        }
                    }
                }
            }
            buf.drain(..at);
        };
        if let Some(c) = weak.upgrade() {
            c.fail(&reason);
        }
    })
    .detach();
    conn.tasks.borrow_mut().extend([writer_task, reader_task]);
    conn
}

/// A failure before anything reached an endpoint.
fn local_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Protocol {
        endpoint: String::new(),
        reason: e.to_string(),
    }
}

fn decode_reply(
    kind: FrameKind,
    payload: &[u8],
    endpoint: &str,
) -> Result<ClientResponse, ClientError> {
    let bad = |reason: String| ClientError::Protocol {
        endpoint: endpoint.to_string(),
        reason,
    };
    match kind {
        FrameKind::Response => decode_response(payload).map_err(|e| bad(e.to_string())),
        FrameKind::Error => {
            let e = decode_error(payload).map_err(|e| bad(e.to_string()))?;
            Err(ClientError::Server {
                code: e.code,
                message: e.message,
            })
        }
        FrameKind::Request => Err(bad("the server sent a request frame".into())),
    }
}
