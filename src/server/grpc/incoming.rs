//! The connections of a `--listen-client-urls` listener, before the gRPC server sees them. etcd
//! serves gRPC and HTTP (`/metrics`, `/health`, `/version`...) on its client port, so each
//! connection is told apart by its first bytes, peeked and left unread: an HTTP/2
//! connection begins with the client preface (RFC 9113 §3.4) and goes to the gRPC server, anything
//! else goes to the HTTP/1 server's [`Handoff`] (which answers 400 to what is not HTTP).
//!
//! Bounds: at most [`CONNECTIONS_MAX`] connections of a listener at once, whether being
//! told apart or served by the gRPC server; one more is closed as soon as it is accepted (the
//! native protocol's shards do the same), so that a flood of connections costs descriptors
//! and memory up to a known amount. A connection must show its protocol within
//! [`SNIFF_TIMEOUT`], or it is closed. What a gRPC client sends passes through
//! [`headers::Rewriter`](super::headers) on its way to the gRPC server; the frames each
//! way go to [`keepalive`](super::keepalive), which closes a connection whose client pings
//! too often.

use super::headers::Rewriter;
use super::keepalive::{FrameScanner, PingPolicy};
use crate::server::http::Handoff;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Connections one client URL's listener holds at once (gRPC ones, and those whose
/// protocol is not known yet; HTTP/1 ones count against the HTTP server's own bound).
pub const CONNECTIONS_MAX: usize = 1024;
/// How long a connection may take to send the bytes that tell its protocol.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a connection that sent part of the preface is looked at again.
const SNIFF_POLL: Duration = Duration::from_millis(10);
/// Told-apart gRPC connections waiting for the gRPC server to take them.
const HANDED_QUEUE_MAX: usize = 64;
/// How long the acceptor waits after a failed accept (out of descriptors, say): the
/// connection waits in the backlog meanwhile.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);
/// Bytes read from a gRPC connection at once.
const READ_BYTES: usize = 16 << 10;
/// The HTTP/2 client connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection's first bytes say it speaks.
#[derive(Debug, PartialEq, Eq)]
enum Protocol {
    Http2,
    Http1,
}

/// The protocol of a connection whose first bytes are `first`; `None` while they are a
/// proper prefix of the HTTP/2 preface (more must be read to tell).
fn classify(first: &[u8]) -> Option<Protocol> {
    let n = first.len().min(PREFACE.len());
    if first[..n] != PREFACE[..n] {
        Some(Protocol::Http1)
    } else if n == PREFACE.len() {
        Some(Protocol::Http2)
    } else {
        None
    }
}

/// Counts the reads that brought a connection's client's bytes: the server pings a
/// connection whose count stays put for its keepalive interval (`super::conn`).
#[derive(Clone, Default)]
pub(super) struct Activity(Arc<AtomicU64>);

impl Activity {
    pub(super) fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn note(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// An accepted gRPC connection; it holds its place among the listener's
/// [`CONNECTIONS_MAX`] until the gRPC server drops it.
pub(super) struct Conn {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    rewriter: Rewriter,
    /// Bytes read from the client, not yet rewritten.
    read: Box<[u8]>,
    /// Rewritten bytes, not yet taken by the gRPC server, from `taken` on.
    rewritten: Vec<u8>,
    taken: usize,
    /// etcd's keepalive enforcement: the frames written to the client (the rewriter reports
    /// the client's), and the client's pings.
    to_client: FrameScanner,
    pings: PingPolicy,
    activity: Activity,
}

/// The gRPC connections of `listener`, as the gRPC server takes them: the acceptor stops
/// once the server drops the stream (the member stops). A client pinging more often than
/// `ping_min_time` is sent GOAWAY and closed (`keepalive`).
pub(super) fn incoming(
    listener: TcpListener,
    http: Handoff,
    ping_min_time: Duration,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(HANDED_QUEUE_MAX);
    tokio::spawn(accept(listener, tx, http, ping_min_time));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

async fn accept(
    listener: TcpListener,
    tx: mpsc::Sender<std::io::Result<Conn>>,
    http: Handoff,
    ping_min_time: Duration,
) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let accepted = tokio::select! {
            _ = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "accepting a client connection failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(
                limit = CONNECTIONS_MAX,
                "client connection refused: too many connections"
            );
            drop(stream);
            continue;
        };
        // Replies are small and written as they are ready: no Nagle delay on them.
        let _ = stream.set_nodelay(true);
        tokio::spawn(sort(stream, slot, tx.clone(), http.clone(), ping_min_time));
    }
}

/// Hands `stream` to the gRPC server or to the HTTP/1 server, or closes it if it ends or stays
/// silent before it tells its protocol.
async fn sort(
    stream: TcpStream,
    slot: OwnedSemaphorePermit,
    tx: mpsc::Sender<std::io::Result<Conn>>,
    http: Handoff,
    ping_min_time: Duration,
) {
    match tokio::time::timeout(SNIFF_TIMEOUT, protocol(&stream)).await {
        Ok(Some(Protocol::Http2)) => {
            // Fails only when the gRPC server stopped taking connections: this one closes too.
            let _ = tx
                .send(Ok(Conn {
                    stream,
                    _slot: slot,
                    rewriter: Rewriter::new(),
                    read: vec![0; READ_BYTES].into_boxed_slice(),
                    rewritten: Vec::new(),
                    taken: 0,
                    to_client: FrameScanner::new(),
                    pings: PingPolicy::new(ping_min_time),
                    activity: Activity::default(),
                }))
                .await;
        }
        Ok(Some(Protocol::Http1)) => {
            drop(slot);
            match stream.into_std() {
                Ok(stream) => http.serve(stream),
                Err(e) => tracing::debug!(error = %e, "an HTTP connection could not be handed"),
            }
        }
        Ok(None) | Err(_) => {}
    }
}

/// Peeks at `stream` until its first bytes tell its protocol; `None` if it ends or fails
/// first.
async fn protocol(stream: &TcpStream) -> Option<Protocol> {
    let mut first = [0u8; PREFACE.len()];
    loop {
        let n = stream.peek(&mut first).await.ok()?;
        if n == 0 {
            return None;
        }
        if let Some(p) = classify(&first[..n]) {
            return Some(p);
        }
        // Part of the preface: peeking again at once would see the same bytes.
        tokio::time::sleep(SNIFF_POLL).await;
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.taken < this.rewritten.len() {
                let n = (this.rewritten.len() - this.taken).min(buf.remaining());
                buf.put_slice(&this.rewritten[this.taken..this.taken + n]);
                this.taken += n;
                return Poll::Ready(Ok(()));
            }
            this.rewritten.clear();
            this.taken = 0;
            let mut read = ReadBuf::new(&mut this.read);
            std::task::ready!(Pin::new(&mut this.stream).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            this.activity.note();
            let now = std::time::Instant::now();
            let mut calm = true;
            let pings = &mut this.pings;
            this.rewriter
                .feed(read.filled(), &mut this.rewritten, |frame| {
                    calm &= pings.client_sent(frame, now)
                })
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
            if !calm {
                return Poll::Ready(Err(this.too_many_pings()));
            }
        }
    }
}

impl Conn {
    /// The count of this connection's reads.
    pub(super) fn activity(&self) -> Activity {
        self.activity.clone()
    }

    /// Sends the client GOAWAY "too_many_pings" if the server is between frames (else it
    /// only closes), and gives the error that ends the connection.
    fn too_many_pings(&mut self) -> std::io::Error {
        tracing::debug!("a gRPC client pinged too often: closing its connection");
        if self.to_client.at_boundary() {
            let goaway = self.pings.goaway();
            // Best effort: the connection closes whether or not it goes out whole.
            let _ = self.stream.try_write(&goaway);
        }
        std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "too many pings")
    }

    /// Notes the frames in the first `n` bytes of `bufs`, written to the client.
    fn written(&mut self, bufs: &[std::io::IoSlice<'_>], mut n: usize) {
        let pings = &mut self.pings;
        for buf in bufs {
            if n == 0 {
                break;
            }
            let part = &buf[..n.min(buf.len())];
            self.to_client.scan(part, |frame| pings.server_sent(frame));
            n -= part.len();
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let n = std::task::ready!(Pin::new(&mut this.stream).poll_write(cx, buf))?;
        this.written(&[std::io::IoSlice::new(buf)], n);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let n = std::task::ready!(Pin::new(&mut this.stream).poll_write_vectored(cx, bufs))?;
        this.written(bufs, n);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preface_tells_http2_and_anything_else_is_http1() {
        assert_eq!(classify(PREFACE), Some(Protocol::Http2));
        assert_eq!(
            classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04"),
            Some(Protocol::Http2)
        );
        assert_eq!(classify(b"PRI * HTTP/2"), None);
        assert_eq!(classify(b"P"), None);
        assert_eq!(
            classify(b"GET /metrics HTTP/1.1\r\n"),
            Some(Protocol::Http1)
        );
        assert_eq!(classify(b"PRI * HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"\x16\x03\x01"), Some(Protocol::Http1));
    }
}
