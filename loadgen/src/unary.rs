//! Unary gRPC calls on one HTTP/2 connection, the h2 crate's client, for the key-value
//! workloads of `--target etcd`. A call is sent and its response read in the calling task;
//! only the connection's own task sits between it and the socket. tonic's channel costs two
//! more hand-offs between tasks per call (its buffer task, then a task hyper spawns for each
//! request), and the load generator pays them on the cores of the servers it measures, so
//! its cost per call would cap the throughput it can show. The same client measures etcd
//! and cairn.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use http::{HeaderValue, Method, Request, Uri};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A response message, at most: etcd's default for a client (`--max-request-bytes`
/// plus room); larger ones fail the call.
const MESSAGE_BYTES_MAX: usize = 64 << 20;
/// Flow-control windows: large enough that a window update is rarely owed.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;

/// One HTTP/2 connection; clones share it.
#[derive(Clone)]
pub struct Conn {
    send: SendRequest<Bytes>,
    authority: http::uri::Authority,
    /// Set once the connection has ended.
    closed: Arc<AtomicBool>,
}

impl Conn {
    /// Connects to `host:port` (TCP without delay) and runs the connection's task on the
    /// current runtime until every clone is dropped.
    pub async fn connect(authority: &str) -> Result<Conn, String> {
        let authority: http::uri::Authority =
            authority.parse().map_err(|e| format!("{authority}: {e}"))?;
        let fail = |e: &dyn std::fmt::Display| format!("{authority}: {e}");
        let tcp = tokio::net::TcpStream::connect(authority.as_str())
            .await
            .map_err(|e| fail(&e))?;
        tcp.set_nodelay(true).map_err(|e| fail(&e))?;
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake(tcp)
            .await
            .map_err(|e| fail(&e))?;
        let closed = Arc::new(AtomicBool::new(false));
        let ended = closed.clone();
        tokio::spawn(async move {
            let _ = connection.await;
            ended.store(true, Ordering::Relaxed);
        });
        Ok(Conn {
            send,
            authority,
            closed,
        })
    }

    /// Whether the connection has ended (the peer closed it, or it failed).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    pub fn authority(&self) -> &str {
        self.authority.as_str()
    }

    /// The full URI of the method at `path` (`/package.Service/Method`), made once and
    /// cloned for each call.
    pub fn uri(&self, path: &str) -> Result<Uri, String> {
        Uri::builder()
            .scheme("http")
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|e| format!("{path}: {e}"))
    }

    /// Calls the method at `uri` with `request`; its response, or why the call failed
    /// (a gRPC status other than OK included).
    pub async fn call<Q: prost::Message, R: prost::Message + Default>(
        &self,
        uri: &Uri,
        request: &Q,
    ) -> Result<R, String> {
        let mut send = self.send.clone().ready().await.map_err(|e| e.to_string())?;
        let mut head = Request::new(());
        *head.method_mut() = Method::POST;
        *head.uri_mut() = uri.clone();
        let headers = head.headers_mut();
        headers.insert("content-type", HeaderValue::from_static("application/grpc"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        let (response, mut body_out) = send.send_request(head, false).map_err(|e| e.to_string())?;
        let length = request.encoded_len();
        let mut message = BytesMut::with_capacity(5 + length);
        message.put_u8(0);
        message.put_u32(u32::try_from(length).map_err(|_| "request too large".to_string())?);
        request.encode(&mut message).map_err(|e| e.to_string())?;
        body_out
            .send_data(message.freeze(), true)
            .map_err(|e| e.to_string())?;
        let response = response.await.map_err(|e| e.to_string())?;
        if response.status() != http::StatusCode::OK {
            return Err(format!("HTTP status {}", response.status()));
        }
        // A trailers-only response (an error before any message) has its status here.
        status(response.headers())?;
        let mut body = response.into_body();
        let mut received = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            let _ = body.flow_control().release_capacity(chunk.len());
            if received.len() + chunk.len() > 5 + MESSAGE_BYTES_MAX {
                return Err("response too large".into());
            }
            received.extend_from_slice(&chunk);
        }
        match body.trailers().await.map_err(|e| e.to_string())? {
            Some(trailers) => status(&trailers)?,
            None => return Err("the response ended without a gRPC status".into()),
        }
        if received.len() < 5 || received[0] != 0 {
            return Err("the response holds no uncompressed message".into());
        }
        let mut received = received.freeze();
        received.advance(1);
        let length = received.get_u32() as usize;
        if received.len() != length {
            return Err("the response holds other than one message".into());
        }
        R::decode(received).map_err(|e| e.to_string())
    }
}

/// Err with the gRPC status and message in `headers` when they hold a status other
/// than OK.
fn status(headers: &http::HeaderMap) -> Result<(), String> {
    match headers.get("grpc-status").map(HeaderValue::as_bytes) {
        None => Ok(()),
        Some(code) if code == b"0" => Ok(()),
        Some(code) => Err(format!(
            "gRPC status {}: {}",
            String::from_utf8_lossy(code),
            headers
                .get("grpc-message")
                .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
                .unwrap_or_default()
        )),
    }
}
