//! [`SnapshotDownload`]: a member's snapshot as it streams it, chunk by chunk, on a
//! connection of its own (blocking). Memory is one frame: the member sends the next chunks
//! only as fast as they are read (TCP's window and its reply backlog bound the rest).

use super::ClientError;
use crate::backup::SnapshotPoint;
use crate::protocol::{encode_request, ClientRequest, ClientResponse, SnapshotChunk};
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

pub struct SnapshotDownload {
    endpoint: String,
    stream: TcpStream,
    buf: Vec<u8>,
    /// Bounds the wait for each chunk (the first waits for the member's checkpoint).
    timeout: Duration,
    done: bool,
}

/// The request id of the stream on its connection.
const REQUEST_ID: u64 = 1;

impl SnapshotDownload {
    /// Asks the first endpoint that answers for a snapshot: all of it, or since `base` (the
    /// end of an earlier snapshot of the same member).
    pub fn start(
        endpoints: &[String],
        timeout: Duration,
        base: Option<SnapshotPoint>,
    ) -> Result<SnapshotDownload, ClientError> {
        let (i, mut stream) = super::dial(endpoints, 0, timeout)?;
        let endpoint = endpoints[i].clone();
        let request = ClientRequest::Snapshot(base.map(Into::into));
        let frame = encode_request(REQUEST_ID, &request).map_err(|e| ClientError::Protocol {
            endpoint: endpoint.clone(),
            reason: e.to_string(),
        })?;
        let sent = stream
            .set_write_timeout(Some(timeout))
            .and_then(|()| stream.write_all(&frame));
        sent.map_err(|source| ClientError::Io {
            endpoint: endpoint.clone(),
            source,
        })?;
        Ok(SnapshotDownload {
            endpoint,
            stream,
            buf: Vec::new(),
            timeout,
            done: false,
        })
    }

    /// The endpoint the snapshot comes from.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The next chunk; `None` after the last one (whose `remaining_bytes` is 0).
    pub fn next_chunk(&mut self) -> Result<Option<SnapshotChunk>, ClientError> {
        if self.done {
            return Ok(None);
        }
        let deadline = Instant::now() + self.timeout;
        let (id, response) = super::read_response(
            &mut self.stream,
            &mut self.buf,
            &self.endpoint,
            deadline,
            self.timeout,
        )
        .map_err(|(e, _)| e)?;
        match response {
            ClientResponse::Snapshot(chunk) if id == REQUEST_ID => {
                self.done = chunk.remaining_bytes == 0;
                Ok(Some(chunk))
            }
            other => Err(ClientError::Protocol {
                endpoint: self.endpoint.clone(),
                reason: format!("a snapshot chunk was expected, not {other:?}"),
            }),
        }
    }
}
