//! [`ObserveStream`]: an election's leader now and at each change, blocking. When the
//! connection fails, it observes again through the next endpoint; the leader it was last
//! given is not given twice. It gives up once no endpoint has taken the stream for
//! [`RECONNECT_MAX`].

use super::ClientError;
use crate::lock::{LockRequest, LockResponse};
use crate::mvcc::KeyValue;
use crate::protocol::{encode_request, ClientRequest, ClientResponse, ErrorCode};
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// How long a stream may go without an endpoint to observe through before
/// [`ObserveStream::next`] fails: long enough for a cluster to elect a new leader and for
/// a client to reach another member after one stops.
pub const RECONNECT_MAX: Duration = Duration::from_secs(10);

pub struct ObserveStream {
    endpoints: Vec<String>,
    timeout: Duration,
    name: Vec<u8>,
    conn: Option<(usize, TcpStream)>,
    buf: Vec<u8>,
    /// The leader last returned: its key and mod revision.
    last: Option<(Vec<u8>, i64)>,
    /// Since when the stream has had no working connection.
    broken_since: Option<Instant>,
}

impl ObserveStream {
    /// Observes the election `name` through the first endpoint that answers; `timeout`
    /// bounds connecting.
    pub fn connect(
        endpoints: Vec<String>,
        timeout: Duration,
        name: &[u8],
    ) -> Result<ObserveStream, ClientError> {
        let mut s = ObserveStream {
            endpoints,
            timeout,
            name: name.to_vec(),
            conn: None,
            buf: Vec::new(),
            last: None,
            broken_since: None,
        };
        s.observe_from(0)?;
        Ok(s)
    }

    /// The endpoint observing through.
    pub fn endpoint(&self) -> Option<&str> {
        self.conn.as_ref().map(|(i, _)| self.endpoints[*i].as_str())
    }

    fn observe_from(&mut self, first: usize) -> Result<(), ClientError> {
        let (i, mut stream) = super::dial(&self.endpoints, first, self.timeout)?;
        self.buf.clear();
        let request = ClientRequest::Lock(LockRequest::Observe {
            name: self.name.clone(),
        });
        let frame = encode_request(1, &request).map_err(|e| ClientError::Protocol {
            endpoint: self.endpoints[i].clone(),
            reason: e.to_string(),
        })?;
        stream.write_all(&frame).map_err(|source| ClientError::Io {
            endpoint: self.endpoints[i].clone(),
            source,
        })?;
        self.conn = Some((i, stream));
        Ok(())
    }

    /// The next leader (its key-value: the key, its create revision, the proclaimed
    /// value), waiting at most `wait`; `None` if none came. A failed connection is
    /// replaced meanwhile (`None` if the wait ends first: the next call goes on); the
    /// stream fails once no endpoint has taken it for [`RECONNECT_MAX`].
    pub fn next(&mut self, wait: Duration) -> Result<Option<KeyValue>, ClientError> {
        let deadline = Instant::now() + wait;
        loop {
            let failed = match self.read_one(deadline) {
                Ok(kv) => {
                    self.broken_since = None;
                    let id = (kv.key.clone(), kv.mod_revision);
                    if self.last.as_ref() == Some(&id) {
                        continue; // given already, before a reconnect
                    }
                    self.last = Some(id);
                    return Ok(Some(kv));
                }
                Err(ClientError::Timeout { .. }) => {
                    self.broken_since = None;
                    return Ok(None);
                }
                // Refused, not failed: another member would refuse it too.
                Err(e @ ClientError::Server { code, .. }) if code != ErrorCode::Unavailable => {
                    return Err(e)
                }
                Err(e) => e,
            };
            let now = Instant::now();
            let broken_since = *self.broken_since.get_or_insert(now);
            if now.duration_since(broken_since) >= RECONNECT_MAX {
                return Err(failed);
            }
            if now >= deadline {
                return Ok(None);
            }
            let next = self.conn.take().map_or(0, |(i, _)| i + 1);
            if self.observe_from(next).is_err() {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    fn read_one(&mut self, deadline: Instant) -> Result<KeyValue, ClientError> {
        let Some((i, stream)) = self.conn.as_mut() else {
            return Err(ClientError::Unreachable {
                endpoints: self.endpoints.clone(),
                last: "not connected".into(),
            });
        };
        let endpoint = &self.endpoints[*i];
        match super::read_response(stream, &mut self.buf, endpoint, deadline, self.timeout) {
            Ok((_, ClientResponse::Lock(LockResponse::Leader { kv, .. }))) => Ok(kv),
            Ok((_, other)) => {
                self.conn = None;
                Err(ClientError::Protocol {
                    endpoint: endpoint.clone(),
                    reason: format!("not an election leader: {other:?}"),
                })
            }
            Err((e, broken)) => {
                // A member that stops ends the stream with an error: observe elsewhere.
                if broken || matches!(e, ClientError::Server { .. }) {
                    self.conn = None;
                }
                Err(e)
            }
        }
    }
}
