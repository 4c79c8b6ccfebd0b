//! HTTP/1.1 on `--listen-metrics-urls`, as etcd serves it there: `/metrics` (Prometheus
//! text), `/health` (etcd 3.5's JSON), `/livez` and `/readyz` (etcd 3.6's probes) and
//! `/version`. The same answers on `--listen-client-urls`, as etcd gives them there too
//! (`etcdctl check datascale` reads `/metrics` from a client endpoint): the gRPC listener
//! tells HTTP/1 connections from HTTP/2 ones and hands the former over ([`Handoff`]).
//!
//! A small server on threads of its own, away from the executors: an acceptor thread per
//! URL, and a thread per connection, at most [`CONNECTIONS_MAX`] of them over the metrics
//! and the client URLs (one more is answered 503 and closed). A request's line and headers are at most [`HEAD_BYTES_MAX`]
//! bytes (431 beyond) and must arrive within [`HEAD_TIMEOUT`] of their first byte (408
//! beyond: a client that trickles them in does not hold its thread longer); an idle
//! keep-alive connection is closed after [`IDLE_TIMEOUT`]. Only GET and HEAD are served
//! (405 otherwise); a request with a body is answered and its connection closed, the body
//! unread. Anything that is not HTTP/1.x gets 400 and the connection is closed.

use super::{Input, Phase, ServerError, Shared};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Connections served at once, over every URL.
pub const CONNECTIONS_MAX: usize = 64;
/// A request line and its headers, at most.
pub const HEAD_BYTES_MAX: usize = 8 << 10;
/// A request's line and headers must arrive within this of their first byte.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// A keep-alive connection with no request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A response must be taken by the client within this.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests on one connection, at most; then it is closed.
const REQUESTS_PER_CONNECTION_MAX: usize = 10_000;
/// How long `/health` and `/readyz` wait for a linearizable read.
const READ_CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// How often an acceptor looks whether the server stops.
const ACCEPT_POLL_MS: i32 = 100;
/// Stack of a connection thread: it parses a few KiB and renders into the heap.
const THREAD_STACK_BYTES: usize = 256 << 10;

/// The versions `/version` reports: the etcd API cairn serves.
pub const ETCD_SERVER_VERSION: &str = "3.4.0";
pub const ETCD_CLUSTER_VERSION: &str = "3.4.0";

/// Binds every `--listen-metrics-urls` URL (`http://host:port`).
pub(crate) fn bind(urls: &[String]) -> Result<Vec<(String, TcpListener)>, ServerError> {
    urls.iter()
        .map(|url| {
            if url.starts_with("https://") {
                return Err(ServerError::Config(format!(
                    "--listen-metrics-urls: {url}: https needs TLS, which cairn does not have yet"
                )));
            }
            super::cluster::parse_peer_url(url, "--listen-metrics-urls")
                .map_err(ServerError::Config)?;
            let addr = super::cluster::listen_addr(url);
            let listener = super::retry_bind(|| TcpListener::bind(&addr)).map_err(|source| {
                ServerError::Listen {
                    addr: format!("{url} (--listen-metrics-urls)"),
                    source,
                }
            })?;
            Ok((url.clone(), listener))
        })
        .collect()
}

/// The running server; dropping it stops the acceptors, and connection threads close
/// their connections after the request they are answering (idle ones within a second).
pub(crate) struct HttpServer {
    stop: Arc<AtomicBool>,
    acceptors: Vec<std::thread::JoinHandle<()>>,
    handoff: Handoff,
}

/// Serves HTTP/1 connections accepted by another listener (the client URLs'), counted
/// with the metrics URLs' connections and stopped with them: one bound for every HTTP
/// thread, wherever its connection came from.
#[derive(Clone)]
pub(crate) struct Handoff {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    open: Arc<AtomicUsize>,
}

impl Handoff {
    /// Serves `stream` on a thread of its own, or answers 503 and closes it when
    /// [`CONNECTIONS_MAX`] are served already.
    pub fn serve(&self, stream: TcpStream) {
        take(stream, &self.shared, &self.stop, &self.open);
    }
}

impl HttpServer {
    pub fn start(
        listeners: Vec<(String, TcpListener)>,
        shared: &Arc<Shared>,
    ) -> Result<HttpServer, ServerError> {
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicUsize::new(0));
        let mut server = HttpServer {
            handoff: Handoff {
                shared: shared.clone(),
                stop: stop.clone(),
                open: open.clone(),
            },
            stop,
            acceptors: Vec::new(),
        };
        for (url, listener) in listeners {
            listener
                .set_nonblocking(true)
                .map_err(|e| ServerError::Executor(e.to_string()))?;
            let (stop, shared, open) = (server.stop.clone(), shared.clone(), open.clone());
            let thread = std::thread::Builder::new()
                .name("cairn-http".into())
                .spawn(move || accept(listener, &shared, &stop, &open))
                .map_err(|e| ServerError::Executor(e.to_string()))?;
            tracing::info!(%url, "serving /metrics, /health, /livez, /readyz and /version");
            server.acceptors.push(thread);
        }
        Ok(server)
    }

    /// Where other listeners hand their HTTP/1 connections.
    pub fn handoff(&self) -> Handoff {
        self.handoff.clone()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.acceptors.drain(..) {
            let _ = t.join();
        }
    }
}

/// Counts a connection while it is served.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn accept(
    listener: TcpListener,
    shared: &Arc<Shared>,
    stop: &Arc<AtomicBool>,
    open: &Arc<AtomicUsize>,
) {
    while !stop.load(Ordering::Relaxed) {
        let mut fds = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the listener's open descriptor.
        let ready = unsafe { libc::poll(&mut fds, 1, ACCEPT_POLL_MS) };
        if ready <= 0 {
            continue;
        }
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                // Out of descriptors, say: the connection waits in the backlog meanwhile.
                tracing::debug!(error = %e, "accepting an HTTP connection failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        take(stream, shared, stop, open);
    }
}

/// Serves an accepted connection on a thread of its own, if one of [`CONNECTIONS_MAX`]
/// is free; refuses it otherwise.
fn take(stream: TcpStream, shared: &Arc<Shared>, stop: &Arc<AtomicBool>, open: &Arc<AtomicUsize>) {
    if open.fetch_add(1, Ordering::Relaxed) >= CONNECTIONS_MAX {
        open.fetch_sub(1, Ordering::Relaxed);
        refuse_busy(stream);
        return;
    }
    let slot = Slot(open.clone());
    let (shared, stopped) = (shared.clone(), stop.clone());
    let spawned = std::thread::Builder::new()
        .name("cairn-http".into())
        .stack_size(THREAD_STACK_BYTES)
        .spawn(move || {
            let _slot = slot;
            serve_connection(stream, &shared, &stopped);
        });
    if let Err(e) = spawned {
        // The closure, the stream and its slot are dropped: the connection closes.
        tracing::debug!(error = %e, "no thread for an HTTP connection");
    }
}

/// Answers 503 to a connection over the limit, without waiting on it, and closes it.
fn refuse_busy(mut stream: TcpStream) {
    let _ = stream.set_nonblocking(true);
    let _ = stream.write_all(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
          Content-Length: 20\r\nConnection: close\r\n\r\ntoo many connections",
    );
}

/// Why a request's head could not be read.
#[derive(Debug, PartialEq, Eq)]
enum HeadError {
    /// The connection ended, failed, or sat idle with no request started: closed quietly.
    Closed,
    TooLarge,
    TimedOut,
}

/// How often an idle connection looks whether the server stops.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Reads until `buf` holds a whole request head (ended by an empty line); its length,
/// terminator included. `buf` may already hold bytes of it (pipelined requests). Waiting
/// for a request to start ends after [`IDLE_TIMEOUT`], or once `stop` is set.
fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    stop: &AtomicBool,
) -> Result<usize, HeadError> {
    let idle_since = Instant::now();
    let mut started = (!buf.is_empty()).then(Instant::now);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = head_end(buf) {
            return Ok(end);
        }
        if buf.len() >= HEAD_BYTES_MAX {
            return Err(HeadError::TooLarge);
        }
        let wait = match started {
            None => match IDLE_TIMEOUT.checked_sub(idle_since.elapsed()) {
                Some(left) if !left.is_zero() && !stop.load(Ordering::Relaxed) => {
                    left.min(IDLE_POLL)
                }
                _ => return Err(HeadError::Closed),
            },
            Some(at) => match HEAD_TIMEOUT.checked_sub(at.elapsed()) {
                Some(left) if !left.is_zero() => left,
                _ => return Err(HeadError::TimedOut),
            },
        };
        if stream.set_read_timeout(Some(wait)).is_err() {
            return Err(HeadError::Closed);
        }
        let room = (HEAD_BYTES_MAX - buf.len()).min(chunk.len());
        match stream.read(&mut chunk[..room]) {
            Ok(0) => return Err(HeadError::Closed),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                started.get_or_insert_with(Instant::now);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                // Idle: looked at again above (the idle time, the stop); started: the head
                // timeout is checked above too.
                continue;
            }
            Err(_) => return Err(HeadError::Closed),
        }
    }
}

/// Where the head in `buf` ends (after its empty line: CRLF CRLF, or bare LFs).
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A parsed request head.
#[derive(Debug)]
struct Request<'a> {
    method: &'a str,
    path: &'a str,
    query: &'a str,
    /// The connection stays open after the response.
    keep_alive: bool,
    /// It has a body (which is not read).
    has_body: bool,
}

/// Parses a request head; `None` if it is not HTTP/1.x.
fn parse_head(head: &[u8]) -> Option<Request<'_>> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || method.is_empty() || !method.bytes().all(is_token) {
        return None;
    }
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return None,
    };
    if !target.starts_with('/') || target.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return None;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut keep_alive = http11;
    let mut has_body = false;
    for header in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = header.split_once(':')?;
        if name.is_empty() || !name.bytes().all(is_token) {
            return None;
        }
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.split(',').any(|t| t.trim() == "close") {
                keep_alive = false;
            } else if v.split(',').any(|t| t.trim() == "keep-alive") {
                keep_alive = true;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            has_body = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            let length: u64 = value.parse().ok()?;
            has_body |= length > 0;
        }
    }
    Some(Request {
        method,
        path,
        query,
        keep_alive,
        has_body,
    })
}

/// RFC 9110's `tchar`.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A response to write.
struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
    /// `Allow`, for 405.
    allow: bool,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            allow: false,
        }
    }

    fn json(status: u16, body: String) -> Response {
        Response {
            status,
            content_type: "application/json",
            body,
            allow: false,
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Writes `r` (headers only for HEAD).
fn write_response(
    stream: &mut TcpStream,
    r: &Response,
    head_only: bool,
    keep_alive: bool,
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nServer: cairn/{}\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len(),
        env!("CARGO_PKG_VERSION"),
    );
    if r.allow {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    if !head_only {
        out.push_str(&r.body);
    }
    stream.write_all(out.as_bytes())
}

/// Serves one connection's requests until it closes, fails, breaks the protocol, or the
/// server stops (`stop`: the connection is closed after the request being answered).
fn serve_connection(mut stream: TcpStream, shared: &Shared, stop: &AtomicBool) {
    if stream.set_nonblocking(false).is_err()
        || stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err()
    {
        return;
    }
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(1024);
    for _ in 0..REQUESTS_PER_CONNECTION_MAX {
        let end = match read_head(&mut stream, &mut buf, stop) {
            Ok(end) => end,
            Err(HeadError::Closed) => return,
            Err(e) => {
                let r = match e {
                    HeadError::TooLarge => Response::text(431, "request head too large\n"),
                    _ => Response::text(408, "request head not received in time\n"),
                };
                let _ = write_response(&mut stream, &r, false, false);
                return;
            }
        };
        let Some(req) = parse_head(&buf[..end]) else {
            let r = Response::text(400, "malformed HTTP request\n");
            let _ = write_response(&mut stream, &r, false, false);
            return;
        };
        let keep_alive = req.keep_alive && !req.has_body;
        let response = route(&req, shared);
        let head_only = req.method == "HEAD";
        let keep_alive = keep_alive && !stop.load(Ordering::Relaxed);
        if write_response(&mut stream, &response, head_only, keep_alive).is_err() || !keep_alive {
            return;
        }
        buf.drain(..end);
    }
}

fn route(req: &Request<'_>, shared: &Shared) -> Response {
    let known = matches!(
        req.path,
        "/metrics" | "/health" | "/livez" | "/readyz" | "/version"
    );
    if !known {
        return Response::text(404, "404 page not found\n");
    }
    if req.method != "GET" && req.method != "HEAD" {
        return Response {
            allow: true,
            ..Response::text(405, "Method Not Allowed\n")
        };
    }
    match req.path {
        "/metrics" => Response {
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            ..Response::text(200, super::metrics::render(shared))
        },
        "/health" => health(shared, req.query),
        "/livez" => probe(shared, req.query, "livez", &[Check::SerializableRead]),
        "/readyz" => probe(
            shared,
            req.query,
            "readyz",
            &[
                Check::DataCorruption,
                Check::SerializableRead,
                Check::LinearizableRead,
            ],
        ),
        _ => Response::json(
            200,
            format!(
                "{{\"etcdserver\":\"{ETCD_SERVER_VERSION}\",\"etcdcluster\":\"{ETCD_CLUSTER_VERSION}\"}}"
            ),
        ),
    }
}

/// The values of query parameter `name`.
fn query_values<'a>(query: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    query.split('&').filter_map(move |pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

fn query_has(query: &str, name: &str) -> bool {
    query
        .split('&')
        .any(|pair| pair.split_once('=').map_or(pair, |(k, _)| k) == name)
}

/// etcd 3.5's `/health`: false, with 503, when an alarm is raised (but those named by
/// `exclude`), when the member knows no leader, or when a read does not succeed
/// (linearizable, or with `serializable=true` a local one, which also skips the leader
/// check).
fn health(shared: &Shared, query: &str) -> Response {
    let serializable = query_values(query, "serializable").any(|v| v == "true");
    let excluded: Vec<&str> = query_values(query, "exclude").collect();
    let outcome = (|| {
        for a in shared.alarms.list(0) {
            let name = a.alarm.name();
            if !excluded.contains(&name) {
                return Err(format!("ALARM {name}"));
            }
        }
        if !serializable && !has_leader(shared) {
            return Err("RAFT NO LEADER".to_string());
        }
        let read = if serializable {
            serializable_read(shared)
        } else {
            linearizable_read(shared)
        };
        read.map_err(|e| format!("RANGE ERROR:{e}"))
    })();
    match outcome {
        Ok(()) => Response::json(200, r#"{"health":"true","reason":""}"#.to_string()),
        Err(reason) => Response::json(
            503,
            format!(
                "{{\"health\":\"false\",\"reason\":\"{}\"}}\n",
                json_escape(&reason)
            ),
        ),
    }
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// The checks of etcd 3.6's probes.
#[derive(Clone, Copy)]
enum Check {
    /// No CORRUPT alarm.
    DataCorruption,
    /// The member runs (it is not stopping) and, once serving, reads its store.
    SerializableRead,
    /// A linearizable read succeeds: there is a leader, and this member is caught up.
    LinearizableRead,
}

impl Check {
    fn name(self) -> &'static str {
        match self {
            Check::DataCorruption => "data_corruption",
            Check::SerializableRead => "serializable_read",
            Check::LinearizableRead => "linearizable_read",
        }
    }

    fn run(self, shared: &Shared) -> Result<(), String> {
        match self {
            Check::DataCorruption => {
                let corrupt = shared
                    .alarms
                    .list(0)
                    .iter()
                    .any(|a| a.alarm == crate::protocol::AlarmType::Corrupt);
                if corrupt {
                    Err("the CORRUPT alarm is raised".into())
                } else {
                    Ok(())
                }
            }
            Check::SerializableRead => match shared.phase() {
                // Replaying its log: alive, not ready.
                Phase::Starting => Ok(()),
                Phase::Serving => serializable_read(shared),
                Phase::Stopping | Phase::Stopped => Err("the member is stopping".into()),
            },
            Check::LinearizableRead => linearizable_read(shared),
        }
    }
}

/// etcd 3.6's `/livez` and `/readyz`: `ok`, or 503 listing each check. `verbose` lists
/// the checks when they pass too; `exclude=<check>` skips one.
fn probe(shared: &Shared, query: &str, probe: &str, checks: &[Check]) -> Response {
    let excluded: Vec<&str> = query_values(query, "exclude").collect();
    let mut lines = String::new();
    let mut failed = false;
    for c in checks {
        if excluded.contains(&c.name()) {
            lines.push_str(&format!("[+]{} excluded: ok\n", c.name()));
            continue;
        }
        match c.run(shared) {
            Ok(()) => lines.push_str(&format!("[+]{} ok\n", c.name())),
            Err(e) => {
                failed = true;
                lines.push_str(&format!("[-]{} failed: {e}\n", c.name()));
            }
        }
    }
    if failed {
        Response::text(503, format!("{lines}{probe} check failed\n"))
    } else if query_has(query, "verbose") {
        Response::text(200, format!("{lines}{probe} check passed\n"))
    } else {
        Response::text(200, "ok")
    }
}

fn has_leader(shared: &Shared) -> bool {
    shared.phase() == Phase::Serving && shared.status.lock().leader != raft::INVALID_ID
}

/// A serializable read of the published store view (etcd's health key).
fn serializable_read(shared: &Shared) -> Result<(), String> {
    let view = shared
        .view()
        .ok_or_else(|| "the store is not open yet".to_string())?;
    let request = crate::mvcc::RangeRequest {
        key: b"health".to_vec(),
        limit: 1,
        keys_only: true,
        serializable: true,
        ..Default::default()
    };
    view.range(&request).map(|_| ()).map_err(|e| e.to_string())
}

/// A linearizable read, as a client's: a ReadIndex through the raft role, then the view.
fn linearizable_read(shared: &Shared) -> Result<(), String> {
    if shared.phase() != Phase::Serving {
        return Err("etcdserver: server stopped".into());
    }
    if !has_leader(shared) {
        return Err("etcdserver: no leader".into());
    }
    let (tx, rx) = flume::bounded(1);
    shared
        .inputs
        .try_send(Input::Read(tx))
        .map_err(|_| "etcdserver: too many requests".to_string())?;
    match rx.recv_timeout(READ_CHECK_TIMEOUT) {
        Ok(()) => serializable_read(shared),
        Err(flume::RecvTimeoutError::Timeout) => Err("etcdserver: request timed out".into()),
        Err(flume::RecvTimeoutError::Disconnected) => {
            Err("etcdserver: the read was refused (no leader, or the member is stopping)".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_as_http_1_and_anything_else_is_refused() {
        let r = parse_head(b"GET /health?serializable=true HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("parses");
        assert_eq!(
            (r.method, r.path, r.query),
            ("GET", "/health", "serializable=true")
        );
        assert!(r.keep_alive && !r.has_body);
        let r = parse_head(b"GET / HTTP/1.0\n\n").expect("bare LFs");
        assert!(!r.keep_alive);
        let r =
            parse_head(b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\n")
                .expect("parses");
        assert!(r.has_body && !r.keep_alive);
        for bad in [
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"[..],
            b"GET /metrics\r\n\r\n",
            b"GET /metrics HTTP/2.0\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            b"G(T /metrics HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                parse_head(bad).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_head_ends_at_its_first_empty_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nGET"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nx"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
    }

    #[test]
    fn query_parameters_are_found_by_name() {
        let q = "exclude=NOSPACE&serializable=true&verbose";
        assert_eq!(query_values(q, "exclude").collect::<Vec<_>>(), ["NOSPACE"]);
        assert!(query_has(q, "verbose") && !query_has(q, "verbos"));
        assert_eq!(json_escape("a\"b\\\n"), "a\\\"b\\\\\\u000a");
    }
}
