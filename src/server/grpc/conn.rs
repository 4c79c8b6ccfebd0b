//! One gRPC connection, served on the h2 crate directly: the connection's frames and
//! every call open on it are driven by a single task, in which each call is a future
//! polled when something it waits on is ready.
//!
//! This replaces hyper's HTTP/2 server, which spawned a task for each call and piped its
//! answer to the connection's task; at tens of thousands of calls a second that hand-off was
//! a visible part of the gRPC thread's time. The unary KV calls (`super::unary`) go
//! straight from the request's bytes to the handler and back; every other call goes through
//! tonic's generated service, its answer piped as hyper pipes it (data as the client's flow
//! control allows, then trailers).
//!
//! What this keeps of hyper's server: its HTTP/2 settings (windows, frame and header
//! list sizes, send buffer, the bound on calls open at once); a call whose client resets
//! its stream (a cancelled call, a passed deadline) is dropped, as grpc-go's server
//! cancels the call's context; keepalive as etcd's server (`--grpc-keepalive-interval`,
//! `--grpc-keepalive-timeout`): a connection silent for the interval is pinged and closed
//! if the ping is not answered in time; a stopping member tells each connection to finish
//! (GOAWAY: calls in flight get their answers).

use super::incoming::Activity;
use super::router::Services;
use super::{limits, unary};
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use h2::server::SendResponse;
use h2::{Ping, PingPong, Reason, RecvStream, SendStream};
use http_body::{Body, Frame};
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::codegen::http;

/// hyper's HTTP/2 server defaults, which tonic left and clients were served with.
const CONNECTION_WINDOW: u32 = 1024 * 1024;
const STREAM_WINDOW: u32 = 1024 * 1024;
const FRAME_BYTES_MAX: u32 = 16 * 1024;
const SEND_BUFFER_BYTES_MAX: usize = 400 * 1024;
const HEADER_LIST_BYTES_MAX: u32 = 16 * 1024;
const LOCAL_ERROR_RESETS_MAX: usize = 1024;

/// How every connection is served.
#[derive(Clone, Copy)]
pub(super) struct Settings {
    /// A connection silent this long is pinged...
    pub(super) keepalive_interval: Duration,
    /// ...and closed if the ping is not answered within this.
    pub(super) keepalive_timeout: Duration,
    /// Calls open at once on one connection.
    pub(super) streams_max: u32,
}

impl Settings {
    fn builder(&self) -> h2::server::Builder {
        let mut b = h2::server::Builder::new();
        b.initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(FRAME_BYTES_MAX)
            .max_header_list_size(HEADER_LIST_BYTES_MAX)
            .max_local_error_reset_streams(Some(LOCAL_ERROR_RESETS_MAX))
            .max_send_buffer_size(SEND_BUFFER_BYTES_MAX)
            .max_concurrent_streams(self.streams_max);
        b
    }
}

/// Serves `conn` until it closes, or until `closing` says to finish (then the calls in
/// flight are answered first).
pub(super) async fn serve(
    conn: super::incoming::Conn,
    services: Arc<Services>,
    settings: Settings,
    mut closing: tokio::sync::watch::Receiver<bool>,
) -> Result<(), h2::Error> {
    let activity = conn.activity();
    let mut h2 = settings.builder().handshake::<_, Bytes>(conn).await?;
    let mut keepalive = h2.ping_pong().map(|pings| Keepalive {
        pings,
        activity,
        interval: settings.keepalive_interval,
        timeout: settings.keepalive_timeout,
        seen: 0,
        pinged: false,
        timer: Box::pin(tokio::time::sleep(settings.keepalive_interval)),
    });
    let mut calls = FuturesUnordered::new();
    let mut finish = pin!(async move {
        // Told to finish, or the server is gone: either way, finish.
        let _ = closing.wait_for(|c| *c).await;
    });
    let mut finishing = false;
    let mut unanswered = pin!(async move {
        match keepalive.as_mut() {
            Some(k) => k.unanswered().await,
            None => std::future::pending().await,
        }
    });
    let mut pinging = true;
    // One pass moves every call that can move before the connection is polled, so that
    // the answers of a batch of calls go out in one write.
    poll_fn(|cx| loop {
        if !finishing && finish.as_mut().poll(cx).is_ready() {
            finishing = true;
            h2.graceful_shutdown();
        }
        if pinging && unanswered.as_mut().poll(cx).is_ready() {
            pinging = false;
            tracing::debug!(
                "a gRPC client did not answer a keepalive ping: closing its connection"
            );
            h2.abrupt_shutdown(Reason::NO_ERROR);
        }
        while let Poll::Ready(Some(())) = calls.poll_next_unpin(cx) {}
        match h2.poll_accept(cx) {
            Poll::Ready(Some(Ok((req, respond)))) => {
                calls.push(call(req, respond, services.clone()));
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
            Poll::Ready(None) => return Poll::Ready(Ok(())),
            Poll::Pending => return Poll::Pending,
        }
    })
    .await
}

/// The server's keepalive pings on one connection.
struct Keepalive {
    pings: PingPong,
    /// Counts the reads from the client: a connection is silent while it stays put.
    activity: Activity,
    interval: Duration,
    timeout: Duration,
    /// The count when last looked at.
    seen: u64,
    /// A ping is out, not answered yet.
    pinged: bool,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl Keepalive {
    /// Resolves once a ping has gone unanswered for the timeout. Its state lives in `self`,
    /// so the future may be dropped and made again at any await.
    async fn unanswered(&mut self) {
        loop {
            if self.pinged {
                let answered = {
                    let pings = &mut self.pings;
                    let pong = poll_fn(|cx| pings.poll_pong(cx));
                    tokio::select! {
                        answered = pong => answered.is_ok(),
                        () = self.timer.as_mut() => return,
                    }
                };
                if !answered {
                    // The connection is failing already; it ends without our help.
                    return std::future::pending().await;
                }
                self.pinged = false;
                self.seen = self.activity.count();
                self.rearm(self.interval);
            } else {
                self.timer.as_mut().await;
                let now = self.activity.count();
                if now != self.seen {
                    self.seen = now;
                    self.rearm(self.interval);
                } else if self.pings.send_ping(Ping::opaque()).is_ok() {
                    self.pinged = true;
                    self.rearm(self.timeout);
                } else {
                    return std::future::pending().await;
                }
            }
        }
    }

    fn rearm(&mut self, after: Duration) {
        let at = tokio::time::Instant::now() + after;
        self.timer.as_mut().reset(at);
    }
}

/// One call, from its request's headers to its answer's end. A call whose client resets
/// its stream is dropped where it waits.
async fn call(
    req: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    services: Arc<Services>,
) {
    let (parts, recv) = req.into_parts();
    let answer = async {
        if let Some(at_once) = services.refusal(&parts) {
            return Answer::Http(at_once);
        }
        if let Some(method) = unary::method(&parts) {
            return Answer::Unary(
                unary::serve(method, recv, services.ctx(), services.bounds()).await,
            );
        }
        let req = http::Request::from_parts(parts, RecvBody { recv, done: false });
        let Ok(mut answer) = services.route(req).await;
        limits::resource_exhausted(answer.headers_mut());
        Answer::Http(answer)
    };
    let answer = tokio::select! {
        biased;
        answer = answer => answer,
        _ = poll_fn(|cx| respond.poll_reset(cx)) => return,
    };
    let sent = match answer {
        Answer::Unary(Ok(message)) => send_message(&mut respond, message),
        // Trailers-only: the status in the headers, which end the stream.
        Answer::Unary(Err(status)) => respond
            .send_response(status.into_http::<()>(), true)
            .map(|_| ()),
        Answer::Http(answer) => {
            let (head, body) = answer.into_parts();
            let end = body.is_end_stream();
            match respond.send_response(http::Response::from_parts(head, ()), end) {
                Ok(tx) if !end => pipe(body, tx).await,
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            }
        }
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "a gRPC answer could not be sent");
    }
}

enum Answer {
    Unary(Result<Bytes, tonic::Status>),
    Http(http::Response<tonic::body::Body>),
}

/// Sends a unary call's answer: the headers, its one message, `grpc-status: 0`.
fn send_message(respond: &mut SendResponse<Bytes>, message: Bytes) -> Result<(), h2::Error> {
    let mut head = http::Response::new(());
    head.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    let mut tx = respond.send_response(head, false)?;
    // The message is in memory already: h2 holds it until the client's window takes it,
    // and sends the trailers after it.
    tx.send_data(message, false)?;
    let mut trailers = http::HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    tx.send_trailers(trailers)
}

/// Sends `body` on `tx`: each data frame once the client's flow control lets it go (so
/// a stream to a slow client is held back in the answer's producer, not buffered here),
/// then the trailers. A reset by the client ends it.
async fn pipe(mut body: tonic::body::Body, mut tx: SendStream<Bytes>) -> Result<(), h2::Error> {
    loop {
        let frame = tokio::select! {
            biased;
            reset = poll_fn(|cx| tx.poll_reset(cx)) => return Err(reset?.into()),
            frame = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)) => frame,
        };
        let frame = match frame {
            None => return tx.send_data(Bytes::new(), true),
            Some(Err(status)) => {
                tracing::debug!(%status, "a gRPC answer's body failed");
                tx.send_reset(Reason::INTERNAL_ERROR);
                return Ok(());
            }
            Some(Ok(frame)) => frame,
        };
        match frame.into_data() {
            Ok(data) => {
                if !data.is_empty() {
                    // A claim on the window, not the chunk's length: see hyper #4003.
                    tx.reserve_capacity(1);
                    while tx.capacity() == 0 {
                        let capacity = poll_fn(|cx| match tx.poll_reset(cx) {
                            Poll::Ready(reset) => Poll::Ready(Err(reset)),
                            Poll::Pending => tx.poll_capacity(cx).map(Ok),
                        })
                        .await;
                        match capacity {
                            Err(reset) => return Err(reset?.into()),
                            Ok(Some(Ok(_))) => {}
                            Ok(Some(Err(e))) => return Err(e),
                            Ok(None) => return Err(Reason::STREAM_CLOSED.into()),
                        }
                    }
                }
                let end = body.is_end_stream();
                tx.send_data(data, end)?;
                if end {
                    return Ok(());
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    tx.reserve_capacity(0);
                    return tx.send_trailers(trailers);
                }
            }
        }
    }
}

/// A request's body, as tonic's services take it; the window a data frame used is given
/// back to the client as the frame is taken.
pub(super) struct RecvBody {
    recv: RecvStream,
    done: bool,
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if !this.done {
            match std::task::ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.done = true,
            }
        }
        match std::task::ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}
