//! Clients of the native protocol, with timeouts on every operation and failover across
//! endpoints: [`Client`] blocks (the CLI, tests, plain threads); [`AsyncClient`] runs on a
//! glommio executor with many requests in flight on one connection. [`LeaderClient`] finds
//! the leader for what only it answers (lease keepalives and time-to-live), and
//! [`keep_alive_loop`] keeps a lease alive. [`SnapshotDownload`] receives a member's
//! snapshot.

mod lease;
mod local;
mod observe;
mod snapshot;
mod watch;

pub use lease::{
    is_lease_not_found, keep_alive_loop, leader_endpoint, KeepAliveEvent, LeaderClient,
};
pub use local::{AsyncClient, DEFAULT_MAX_INFLIGHT, REPLY_FRAME_BYTES_MAX};
pub use observe::ObserveStream;
pub use snapshot::SnapshotDownload;
pub use watch::WatchStream;

use crate::protocol::{
    decode_error, decode_response, encode_request, split_frame, ClientRequest, ClientResponse,
    ErrorCode, FrameKind, HEADER_BYTES,
};
use rkyv::util::AlignedVec;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach any endpoint of {endpoints:?}: {last}")]
    Unreachable {
        endpoints: Vec<String>,
        last: String,
    },
    #[error("connection to {endpoint} failed: {source}")]
    Io {
        endpoint: String,
        source: std::io::Error,
    },
    #[error("{message}")]
    Server { code: ErrorCode, message: String },
    #[error("bad reply from {endpoint}: {reason}")]
    Protocol { endpoint: String, reason: String },
    /// No reply within the request's timeout (etcdctl's words first: scripts look for them).
    #[error("context deadline exceeded (no reply from {endpoint} within {after:?})")]
    Timeout { endpoint: String, after: Duration },
}

/// A connection (no delay) to the first endpoint that answers, trying them in order from
/// `first`: its index and the stream.
pub(crate) fn dial(
    endpoints: &[String],
    first: usize,
    timeout: Duration,
) -> Result<(usize, TcpStream), ClientError> {
    let mut last = String::from("no endpoints given");
    for k in 0..endpoints.len() {
        let i = (first + k) % endpoints.len();
        let endpoint = &endpoints[i];
        let addrs = match endpoint.to_socket_addrs() {
            Ok(a) => a,
            Err(e) => {
                last = format!("{endpoint}: {e}");
                continue;
            }
        };
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok((i, s));
                }
                Err(e) => last = format!("{endpoint}: {e}"),
            }
        }
    }
    Err(ClientError::Unreachable {
        endpoints: endpoints.to_vec(),
        last,
    })
}

pub struct Client {
    endpoints: Vec<String>,
    timeout: Duration,
    conn: Option<(usize, TcpStream)>,
    buf: Vec<u8>,
    next_id: u64,
}

impl Client {
    /// A client that connects lazily to the first endpoint that answers.
    pub fn new(endpoints: Vec<String>, timeout: Duration) -> Client {
        Client {
            endpoints,
            timeout,
            conn: None,
            buf: Vec::new(),
            next_id: 1,
        }
    }

    fn connect(&mut self) -> Result<(), ClientError> {
        let start = self.conn.as_ref().map_or(0, |(i, _)| i + 1);
        let (i, s) = dial(&self.endpoints, start, self.timeout)?;
        s.set_read_timeout(Some(self.timeout))
            .map_err(|e| self.io(i, e))?;
        s.set_write_timeout(Some(self.timeout))
            .map_err(|e| self.io(i, e))?;
        self.conn = Some((i, s));
        self.buf.clear();
        Ok(())
    }

    fn io(&self, i: usize, source: std::io::Error) -> ClientError {
        ClientError::Io {
            endpoint: self.endpoints[i].clone(),
            source,
        }
    }

    /// A socket operation that ran out of time is the request's timeout, not a broken
    /// connection (the kernel reports it as `WouldBlock`, "os error 11").
    fn failed(&self, i: usize, source: std::io::Error) -> ClientError {
        match source.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ClientError::Timeout {
                endpoint: self.endpoints[i].clone(),
                after: self.timeout,
            },
            _ => self.io(i, source),
        }
    }

    /// Sends one request and waits for its reply, all within the client's timeout once
    /// connected. A request that could not be sent is tried on the next endpoint; one that
    /// was sent, or timed out while being sent, is not repeated (it may have been applied).
    /// A read that a member answers Unavailable (no leader, stopping, not serving yet) is
    /// asked again on the next endpoint that takes a connection, at most once for each
    /// other endpoint, as etcd's client retries its repeatable requests; a write so answered
    /// is not (the error is returned).
    pub fn request(&mut self, request: &ClientRequest) -> Result<ClientResponse, ClientError> {
        self.request_within(request, self.timeout)
    }

    /// As [`Client::request`], waiting up to `timeout` for the reply (a lock waits for its
    /// turn, which may take long).
    pub fn request_within(
        &mut self,
        request: &ClientRequest,
        timeout: Duration,
    ) -> Result<ClientResponse, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let frame = encode_request(id, request).map_err(|e| ClientError::Protocol {
            endpoint: String::new(),
            reason: e.to_string(),
        })?;
        let mut deadline = None;
        let mut unavailable = None;
        let mut asked = 0;
        loop {
            if let Err(e) = self.send(&frame) {
                // Not sent: after a member's Unavailable answer, that answer is the error.
                return Err(unavailable.unwrap_or(e));
            }
            // A timeout too large for a deadline (`--command-timeout` is the user's) is none.
            let deadline = *deadline.get_or_insert_with(|| {
                let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
                Instant::now().checked_add(timeout).unwrap_or(far)
            });
            asked += 1;
            match self.read_reply(id, deadline) {
                Err(e) if asks_again(&e, request, asked, self.endpoints.len()) => {
                    // Connecting from the current endpoint goes on to the next one; if none
                    // answers, the member's answer is the error.
                    if self.connect().is_err() {
                        return Err(e);
                    }
                    unavailable = Some(e);
                }
                reply => return reply,
            }
        }
    }

    /// Writes a request frame, on the next endpoint if the connection fails (the request
    /// was not sent, so nothing was applied).
    fn send(&mut self, frame: &[u8]) -> Result<(), ClientError> {
        let mut attempts = 0;
        loop {
            if self.conn.is_none() {
                self.connect()?;
            }
            let Some((i, stream)) = self.conn.as_mut() else {
                continue;
            };
            let i = *i;
            match stream.write_all(frame) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    attempts += 1;
                    self.conn = None;
                    let e = self.failed(i, e);
                    if matches!(e, ClientError::Timeout { .. }) || attempts >= self.endpoints.len()
                    {
                        return Err(e);
                    }
                }
            }
        }
    }

    fn read_reply(&mut self, id: u64, deadline: Instant) -> Result<ClientResponse, ClientError> {
        let Some((i, stream)) = self.conn.as_mut() else {
            return Err(ClientError::Unreachable {
                endpoints: self.endpoints.clone(),
                last: "not connected".into(),
            });
        };
        let endpoint = self.endpoints[*i].clone();
        let bad = |reason: String| ClientError::Protocol {
            endpoint: endpoint.clone(),
            reason,
        };
        loop {
            match split_frame(&self.buf, REPLY_FRAME_BYTES_MAX).map_err(|e| bad(e.to_string()))? {
                Some((h, total)) => {
                    let mut payload = AlignedVec::<16>::with_capacity(total - HEADER_BYTES);
                    payload.extend_from_slice(&self.buf[HEADER_BYTES..total]);
                    self.buf.drain(..total);
                    if h.request_id != id && h.request_id != 0 {
                        continue; // a late reply to an earlier, abandoned request
                    }
                    return match h.kind {
                        FrameKind::Response => {
                            decode_response(&payload).map_err(|e| bad(e.to_string()))
                        }
                        FrameKind::Error => {
                            let e = decode_error(&payload).map_err(|e| bad(e.to_string()))?;
                            Err(ClientError::Server {
                                code: e.code,
                                message: e.message,
                            })
                        }
                        FrameKind::Request => Err(bad("the server sent a request frame".into())),
                    };
                }
                None => {
                    // The reply may come in pieces: the timeout bounds them all together.
                    let left = deadline.saturating_duration_since(Instant::now());
                    let mut chunk = [0u8; 16 << 10];
                    let read = if left.is_zero() {
                        Err(std::io::ErrorKind::TimedOut.into())
                    } else {
                        stream
                            .set_read_timeout(Some(left))
                            .and_then(|()| stream.read(&mut chunk))
                    };
                    match read {
                        Ok(0) => {
                            self.conn = None;
                            return Err(bad("connection closed before the reply".into()));
                        }
                        Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                        Err(e) => {
                            let i = *i;
                            self.conn = None;
                            return Err(self.failed(i, e));
                        }
                    }
                }
            }
        }
    }

    /// The endpoint currently connected to.
    pub fn endpoint(&self) -> Option<&str> {
        self.conn.as_ref().map(|(i, _)| self.endpoints[*i].as_str())
    }
}

/// Whether a request that got `error` on its `asked`-th try, of `endpoints`, is asked again
/// on another endpoint: a read answered Unavailable, until each other endpoint had a try.
fn asks_again(
    error: &ClientError,
    request: &ClientRequest,
    asked: usize,
    endpoints: usize,
) -> bool {
    matches!(
        error,
        ClientError::Server {
            code: ErrorCode::Unavailable,
            ..
        }
    ) && asked < endpoints
        && repeatable(request)
}

/// Whether a request only reads, so that asking another member after an Unavailable answer
/// cannot apply anything twice: ranges, read-only txns, status, hashes and the member list
/// (etcd's client retries the same ones).
fn repeatable(request: &ClientRequest) -> bool {
    use crate::mvcc::Request;
    match request {
        ClientRequest::Kv(Request::Range(_)) | ClientRequest::Status | ClientRequest::HashKv(_) => {
            true
        }
        ClientRequest::Kv(Request::Txn(t)) => crate::mvcc::is_read_only(t),
        ClientRequest::Member(crate::protocol::MemberRequest::List) => true,
        _ => false,
    }
}

/// Reads one reply frame from a stream connection, `buf` holding what was read past the
/// last one: its request id and the response; or the error, and whether the connection
/// is broken (closed, failed, or out of step) and must be replaced.
pub(crate) fn read_response(
    stream: &mut std::net::TcpStream,
    buf: &mut Vec<u8>,
    endpoint: &str,
    deadline: std::time::Instant,
    timeout: Duration,
) -> Result<(u64, ClientResponse), (ClientError, bool)> {
    use crate::protocol::{decode_error, decode_response, split_frame, FrameKind, HEADER_BYTES};
    use std::io::Read;
    let bad = |reason: String| {
        let e = ClientError::Protocol {
            endpoint: endpoint.to_string(),
            reason,
        };
        (e, true)
    };
    loop {
        let split = split_frame(buf, REPLY_FRAME_BYTES_MAX);
        if let Some((h, total)) = split.map_err(|e| bad(e.to_string()))? {
            let mut payload = rkyv::util::AlignedVec::<16>::with_capacity(total - HEADER_BYTES);
            payload.extend_from_slice(&buf[HEADER_BYTES..total]);
            buf.drain(..total);
            return match h.kind {
                FrameKind::Response => match decode_response(&payload) {
                    Ok(r) => Ok((h.request_id, r)),
                    Err(e) => Err(bad(e.to_string())),
                },
                FrameKind::Error => {
                    let e = decode_error(&payload).map_err(|e| bad(e.to_string()))?;
                    let e = ClientError::Server {
                        code: e.code,
                        message: e.message,
                    };
                    Err((e, false))
                }
                FrameKind::Request => Err(bad("the server sent a request frame".into())),
            };
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let timed_out = || {
            let e = ClientError::Timeout {
                endpoint: endpoint.to_string(),
                after: timeout,
            };
            (e, false)
        };
        if left.is_zero() {
            return Err(timed_out());
        }
        let mut chunk = [0u8; 64 << 10];
        let read = stream
            .set_read_timeout(Some(left))
            .and_then(|()| stream.read(&mut chunk));
        match read {
            Ok(0) => return Err(bad("the connection closed".into())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(timed_out())
            }
            Err(source) => {
                let e = ClientError::Io {
                    endpoint: endpoint.to_string(),
                    source,
                };
                return Err((e, true));
            }
        }
    }
}
