//! [`WatchStream`]: many watchers on one connection, blocking. Fragments of a revision are
//! put back together before they are returned; when the connection fails, the stream
//! connects to the next endpoint and creates its watchers again from the revision after
//! the last one each saw, under the same ids, so a caller sees every event once, in order,
//! across member failures (etcd's clientv3 does the same).

use super::ClientError;
use crate::protocol::{encode_request, ClientRequest, ClientResponse};
use crate::watch::{WatchCreateRequest, WatchRequest, WatchResponse};
use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

struct Watch {
    request: WatchCreateRequest,
    /// The first revision not yet returned whole.
    next_rev: i64,
    /// Fragments of a revision received so far.
    partial: Option<WatchResponse>,
    /// Created again after a reconnect: its `created` response is not the caller's.
    resumed: bool,
}

pub struct WatchStream {
    endpoints: Vec<String>,
    timeout: Duration,
    conn: Option<(usize, TcpStream)>,
    buf: Vec<u8>,
    next_id: u64,
    watches: BTreeMap<i64, Watch>,
    /// Responses read while waiting for a create or cancel; `next` reads the socket only
    /// once they are taken, so the member holds the rest (its watchers fall behind and
    /// catch up once this client reads again).
    ready: VecDeque<WatchResponse>,
}

impl WatchStream {
    /// A stream on the first endpoint that answers; `timeout` bounds connecting and each
    /// create or cancel.
    pub fn connect(endpoints: Vec<String>, timeout: Duration) -> Result<WatchStream, ClientError> {
        let mut s = WatchStream {
            endpoints,
            timeout,
            conn: None,
            buf: Vec::new(),
            next_id: 1,
            watches: BTreeMap::new(),
            ready: VecDeque::new(),
        };
        s.reconnect(0)?;
        Ok(s)
    }

    /// The endpoint connected to.
    pub fn endpoint(&self) -> Option<&str> {
        self.conn.as_ref().map(|(i, _)| self.endpoints[*i].as_str())
    }

    fn reconnect(&mut self, first: usize) -> Result<(), ClientError> {
        let (i, s) = super::dial(&self.endpoints, first, self.timeout)?;
        self.conn = Some((i, s));
        self.buf.clear();
        Ok(())
    }

    fn send(&mut self, request: WatchRequest) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let frame = encode_request(id, &ClientRequest::Watch(request)).map_err(|e| {
            ClientError::Protocol {
                endpoint: String::new(),
                reason: e.to_string(),
            }
        })?;
        let Some((i, stream)) = self.conn.as_mut() else {
            return Err(self.unreachable("not connected"));
        };
        let i = *i;
        stream.write_all(&frame).map_err(|source| ClientError::Io {
            endpoint: self.endpoints[i].clone(),
            source,
        })?;
        Ok(id)
    }

    fn unreachable(&self, why: &str) -> ClientError {
        ClientError::Unreachable {
            endpoints: self.endpoints.clone(),
            last: why.to_string(),
        }
    }

    /// Creates a watcher; returns its `created` response (canceled, with the reason, if
    /// the member refused it). Events that arrive meanwhile for other watchers are kept
    /// for [`WatchStream::next`].
    pub fn create(&mut self, request: WatchCreateRequest) -> Result<WatchResponse, ClientError> {
        let id = self.send(WatchRequest::Create(request.clone()))?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let (request_id, response) = self.read_one(deadline)?;
            if request_id == id && response.created {
                if !response.canceled {
                    let next_rev = if request.start_revision > 0 {
                        request.start_revision
                    } else {
                        response.header.revision + 1
                    };
                    self.watches.insert(
                        response.watch_id,
                        Watch {
                            request,
                            next_rev,
                            partial: None,
                            resumed: false,
                        },
                    );
                }
                return Ok(response);
            }
            self.take(response);
        }
    }

    /// Cancels a watcher; events for it that arrived before are still returned.
    pub fn cancel(&mut self, watch_id: i64) -> Result<(), ClientError> {
        self.watches.remove(&watch_id);
        let id = self.send(WatchRequest::Cancel { watch_id })?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let (request_id, response) = self.read_one(deadline)?;
            if request_id == id {
                return Ok(());
            }
            self.take(response);
        }
    }

    /// Asks for a progress response (watch id -1): it comes through [`WatchStream::next`]
    /// once every watcher here has been sent everything up to its revision.
    pub fn request_progress(&mut self) -> Result<(), ClientError> {
        self.send(WatchRequest::Progress).map(drop)
    }

    /// The next response for the caller, waiting at most `wait` (`None` when it passed).
    /// A failed connection is replaced and the watchers resumed, within `wait`.
    pub fn next(&mut self, wait: Duration) -> Result<Option<WatchResponse>, ClientError> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Ok(Some(r));
            }
            match self.read_one(deadline) {
                Ok((_, response)) => self.take(response),
                Err(ClientError::Timeout { .. }) => return Ok(None),
                Err(e) if self.watches.is_empty() => return Err(e),
                Err(e) => {
                    if Instant::now() >= deadline {
                        return Err(e);
                    }
                    self.resume();
                }
            }
        }
    }

    /// Connects to the next endpoint and creates every watcher again from where it was.
    fn resume(&mut self) {
        let first = self.conn.take().map_or(0, |(i, _)| i + 1);
        if self.reconnect(first).is_err() {
            std::thread::sleep(Duration::from_millis(100));
            return;
        }
        let again: Vec<(i64, WatchCreateRequest)> = self
            .watches
            .iter_mut()
            .map(|(id, w)| {
                w.partial = None;
                w.resumed = true;
                let request = WatchCreateRequest {
                    start_revision: w.next_rev,
                    watch_id: *id,
                    ..w.request.clone()
                };
                (*id, request)
            })
            .collect();
        for (_, request) in again {
            if self.send(WatchRequest::Create(request)).is_err() {
                self.conn = None;
                return;
            }
        }
    }

    /// Files a response: fragments are joined, resumed watchers' `created` dropped, and
    /// each watcher's next revision kept for a resume.
    fn take(&mut self, mut response: WatchResponse) {
        let Some(w) = self.watches.get_mut(&response.watch_id) else {
            self.push(response);
            return;
        };
        if response.created && std::mem::take(&mut w.resumed) {
            if response.canceled {
                self.watches.remove(&response.watch_id);
                self.push(response);
            }
            return;
        }
        if let Some(mut partial) = w.partial.take() {
            partial.events.append(&mut response.events);
            partial.fragment = response.fragment;
            partial.header = response.header;
            response = partial;
        }
        if response.fragment {
            w.partial = Some(response);
            return;
        }
        if let Some(last) = response.events.last() {
            w.next_rev = last.kv.mod_revision + 1;
        }
        if response.canceled {
            self.watches.remove(&response.watch_id);
        }
        self.push(response);
    }

    fn push(&mut self, response: WatchResponse) {
        self.ready.push_back(response);
    }

    /// Reads one watch response frame: its request id and the response.
    fn read_one(&mut self, deadline: Instant) -> Result<(u64, WatchResponse), ClientError> {
        let Some((i, stream)) = self.conn.as_mut() else {
            return Err(self.unreachable("not connected"));
        };
        let endpoint = &self.endpoints[*i];
        match super::read_response(stream, &mut self.buf, endpoint, deadline, self.timeout) {
            Ok((id, ClientResponse::Watch(r))) => Ok((id, r)),
            Ok((_, other)) => Err(ClientError::Protocol {
                endpoint: endpoint.clone(),
                reason: format!("not a watch response: {other:?}"),
            }),
            Err((e, broken)) => {
                if broken {
                    self.conn = None;
                }
                Err(e)
            }
        }
    }
}
