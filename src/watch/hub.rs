//! The watchers of one member and what to send them. The apply role owns the hub: it hands
//! it the events of each applied batch ([`WatchHub::notify`]), lets it catch slow watchers
//! up from the store between batches ([`WatchHub::catch_up`]), and passes on what clients
//! ask ([`WatchHub::handle`]). Responses go to each connection's [`Sink`]; nothing here
//! blocks or does I/O.
//!
//! A watcher is **synced** when it has been sent everything up to the hub's revision: it
//! gets new events as they are applied. One whose connection had no room for them, or that
//! starts from a past revision, is **unsynced**: it is fed from the revision-keyed tree in
//! chunks of whole revisions while its connection has room, and joins the synced group once
//! it reaches the hub's revision. The apply role never waits for a watcher, and a watcher
//! holds no more than its connection's queue.

use super::groups::{Groups, WatchRange};
use super::types::{WatchCreateRequest, WatchFilter, WatchRequest, WatchResponse};
use crate::mvcc::{Event, EventType, MvccError, ResponseHeader};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A client connection, as the shell numbers them.
pub type ConnId = u64;

/// A watcher: its connection and its watch id there.
type WatcherId = (ConnId, i64);

/// A response for a connection, on the request id of the stream it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchOut {
    pub request_id: u64,
    pub response: WatchResponse,
}

impl WatchOut {
    /// About the bytes it takes, queued or encoded.
    pub fn bytes(&self) -> usize {
        64 + self.response.cancel_reason.len() + events_bytes(&self.response.events)
    }
}

/// Where a connection's responses go. Its queue is bounded: `try_send` refuses what does
/// not fit (the watcher falls behind and catches up later) unless the queue is empty (so
/// that a revision larger than the bound still gets through, alone); control responses
/// (created, canceled, progress) always go, being small and one per client request or
/// per interval.
pub trait Sink {
    /// Queues all of `outs` or, if they do not fit, none (given back).
    fn try_send(&self, outs: Vec<WatchOut>) -> Result<(), Vec<WatchOut>>;
    fn send_control(&self, out: WatchOut);
    /// Whether the queue has room for more events.
    fn has_room(&self) -> bool;
}

/// What a connection asks of the hub.
pub enum WatchInput<S> {
    /// The connection's first watch request: where its responses go.
    Open { conn: ConnId, sink: S },
    /// A watch request, on the request id its responses carry.
    Request {
        conn: ConnId,
        request_id: u64,
        request: WatchRequest,
    },
    /// The connection closed: its watchers go.
    Close { conn: ConnId },
}

/// The hub's limits.
#[derive(Debug, Clone, Copy)]
pub struct HubConfig {
    /// Watchers one connection may hold (etcd has no limit; cairn's default is 10,000).
    pub watchers_per_conn_max: usize,
    /// A response's events in bytes beyond which a revision is split into fragments for a
    /// watcher that asked for them, and responses of several revisions are cut (the
    /// member's request size limit, as in etcd).
    pub response_bytes_max: usize,
    /// How often watchers with `progress_notify` that were sent nothing get a progress
    /// response (etcd's default is 10 minutes).
    pub progress_notify_ms: u64,
    /// Records read from the tree per catch-up step, for all unsynced watchers together,
    /// and their bytes at most (beyond one revision).
    pub catch_up_records: usize,
    pub catch_up_bytes: usize,
}

impl Default for HubConfig {
    fn default() -> HubConfig {
        HubConfig {
            watchers_per_conn_max: 10_000,
            response_bytes_max: 1_572_864,
            progress_notify_ms: 600_000,
            catch_up_records: 1_000,
            catch_up_bytes: 2 << 20,
        }
    }
}

struct Watcher {
    request_id: u64,
    range: WatchRange,
    /// The first revision not yet sent. For a synced watcher the hub's revision + 1 is
    /// implied once it is past this (it is only kept for a start in the future).
    next_rev: i64,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    fragment: bool,
    progress_notify: bool,
    /// Something was sent since the last progress interval.
    sent: bool,
    synced: bool,
}

impl Watcher {
    /// The events it is sent, as it asked for them.
    fn select(&self, events: Vec<&Event>) -> Vec<Event> {
        events
            .into_iter()
            .filter(|e| self.wants(e))
            .map(|e| Event {
                kind: e.kind,
                kv: e.kv.clone(),
                prev_kv: e.prev_kv.clone().filter(|_| self.prev_kv),
            })
            .collect()
    }

    fn wants(&self, e: &Event) -> bool {
        e.revision() >= self.next_rev
            && match e.kind {
                EventType::Put => !self.no_put,
                EventType::Delete => !self.no_delete,
            }
    }
}

struct Conn<S> {
    sink: S,
    watchers: BTreeSet<i64>,
    /// Watchers of this connection in the unsynced group.
    unsynced: usize,
    /// Progress requests waiting for every watcher here to be synced.
    progress: Vec<u64>,
}

pub struct WatchHub<S> {
    config: HubConfig,
    conns: HashMap<ConnId, Conn<S>>,
    watchers: HashMap<WatcherId, Watcher>,
    synced: Groups<WatcherId>,
    /// Ordered, so catch-up is the same on every run.
    unsynced: BTreeSet<WatcherId>,
    /// Events up to this revision have been handed to the hub.
    current: i64,
    compacted: i64,
    /// Watchers asking for previous key-values.
    prev_wanted: usize,
    last_progress_ms: u64,
}

impl<S: Sink> WatchHub<S> {
    /// A hub for a store at revision `current`, compacted at `compacted` (-1 for never).
    pub fn new(config: HubConfig, current: i64, compacted: i64) -> WatchHub<S> {
        WatchHub {
            config,
            conns: HashMap::new(),
            watchers: HashMap::new(),
            synced: Groups::new(),
            unsynced: BTreeSet::new(),
            current,
            compacted,
            prev_wanted: 0,
            last_progress_ms: 0,
        }
    }

    /// Watchers held, synced and not.
    pub fn len(&self) -> usize {
        self.watchers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.watchers.is_empty()
    }

    /// Watchers behind the hub's revision.
    pub fn unsynced(&self) -> usize {
        self.unsynced.len()
    }

    /// Whether applying must capture previous key-values in events (some watcher wants
    /// them).
    pub fn wants_prev(&self) -> bool {
        self.prev_wanted > 0
    }

    pub fn handle(&mut self, input: WatchInput<S>) {
        match input {
            WatchInput::Open { conn, sink } => {
                self.conns.entry(conn).or_insert(Conn {
                    sink,
                    watchers: BTreeSet::new(),
                    unsynced: 0,
                    progress: Vec::new(),
                });
            }
            WatchInput::Close { conn } => self.close(conn),
            WatchInput::Request {
                conn,
                request_id,
                request,
            } => match request {
                WatchRequest::Create(create) => self.create(conn, request_id, create),
                WatchRequest::Cancel { watch_id } => self.cancel(conn, request_id, watch_id),
                WatchRequest::Progress => {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.progress.push(request_id);
                    }
                    self.answer_progress(conn);
                }
            },
        }
    }

    fn control(&self, conn: ConnId, request_id: u64, response: WatchResponse) {
        if let Some(c) = self.conns.get(&conn) {
            c.sink.send_control(WatchOut {
                request_id,
                response,
            });
        }
    }

    fn header(&self) -> ResponseHeader {
        ResponseHeader {
            revision: self.current,
        }
    }

    fn create(&mut self, conn: ConnId, request_id: u64, req: WatchCreateRequest) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let refused = |watch_id: i64, reason: String| WatchResponse {
            watch_id,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..WatchResponse::default()
        };
        if c.watchers.len() >= self.config.watchers_per_conn_max {
            let reason = format!(
                "too many watchers on this connection (the limit is {})",
                self.config.watchers_per_conn_max
            );
            return self.control(conn, request_id, refused(req.watch_id, reason));
        }
        let watch_id = if req.watch_id != 0 {
            req.watch_id
        } else {
            // etcd's automatic ids: the lowest unused from 0.
            (0..).find(|id| !c.watchers.contains(id)).unwrap_or(0)
        };
        if req.watch_id != 0 && c.watchers.contains(&watch_id) {
            let reason = "mvcc: duplicate watch ID provided on the WatchStream".to_string();
            return self.control(conn, request_id, refused(watch_id, reason));
        }
        c.watchers.insert(watch_id);
        let next_rev = if req.start_revision > 0 {
            req.start_revision
        } else {
            self.current + 1
        };
        let w = Watcher {
            request_id,
            range: WatchRange::new(&req.key, &req.range_end),
            next_rev,
            no_put: req.filters.contains(&WatchFilter::NoPut),
            no_delete: req.filters.contains(&WatchFilter::NoDelete),
            prev_kv: req.prev_kv,
            fragment: req.fragment,
            progress_notify: req.progress_notify,
            sent: false,
            synced: false,
        };
        self.prev_wanted += usize::from(w.prev_kv);
        let created = WatchResponse {
            header: self.header(),
            watch_id,
            created: true,
            ..WatchResponse::default()
        };
        self.control(conn, request_id, created);
        let id = (conn, watch_id);
        let behind = next_rev <= self.current;
        self.watchers.insert(id, w);
        if behind {
            self.make_unsynced(id);
        } else {
            self.make_synced(id);
        }
    }

    fn cancel(&mut self, conn: ConnId, request_id: u64, watch_id: i64) {
        self.remove((conn, watch_id));
        // Answered whether or not the watcher was there: a cancel is idempotent.
        let canceled = WatchResponse {
            header: self.header(),
            watch_id,
            canceled: true,
            ..WatchResponse::default()
        };
        self.control(conn, request_id, canceled);
        self.answer_progress(conn);
    }

    fn close(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let ids: Vec<i64> = c.watchers.iter().copied().collect();
        for watch_id in ids {
            self.remove((conn, watch_id));
        }
        self.conns.remove(&conn);
    }

    fn remove(&mut self, id: WatcherId) {
        let Some(w) = self.watchers.remove(&id) else {
            return;
        };
        self.prev_wanted -= usize::from(w.prev_kv);
        if w.synced {
            self.synced.remove(&w.range, id);
        } else if self.unsynced.remove(&id) {
            if let Some(c) = self.conns.get_mut(&id.0) {
                c.unsynced -= 1;
            }
        }
        if let Some(c) = self.conns.get_mut(&id.0) {
            c.watchers.remove(&id.1);
        }
    }

    fn make_synced(&mut self, id: WatcherId) {
        let Some(w) = self.watchers.get_mut(&id) else {
            return;
        };
        if self.unsynced.remove(&id) {
            if let Some(c) = self.conns.get_mut(&id.0) {
                c.unsynced -= 1;
            }
        }
        w.synced = true;
        self.synced.insert(&w.range, id);
    }

    /// Moves a watcher to the unsynced group; `next_rev` is the first revision it still
    /// needs.
    fn make_unsynced(&mut self, id: WatcherId) {
        let Some(w) = self.watchers.get_mut(&id) else {
            return;
        };
        if w.synced {
            self.synced.remove(&w.range, id);
            w.synced = false;
        }
        if self.unsynced.insert(id) {
            if let Some(c) = self.conns.get_mut(&id.0) {
                c.unsynced += 1;
            }
        }
    }

    /// The events of a batch just applied (every event with a revision above the hub's,
    /// up to `current`), and the store's revisions after it.
    pub fn notify(&mut self, events: &[Event], current: i64, compacted: i64) {
        let before = self.current;
        self.current = current;
        self.compacted = compacted;
        if !events.is_empty() && !self.synced.is_empty() {
            let mut matched: BTreeMap<WatcherId, Vec<&Event>> = BTreeMap::new();
            for e in events {
                self.synced
                    .matching(&e.kv.key, |id| matched.entry(id).or_default().push(e));
            }
            for (id, events) in matched {
                self.deliver_live(id, before, events);
            }
        }
        self.answer_all_progress();
    }

    fn deliver_live(&mut self, id: WatcherId, before: i64, events: Vec<&Event>) {
        let Some(w) = self.watchers.get_mut(&id) else {
            return;
        };
        // A synced watcher has everything up to the hub's revision before this batch.
        w.next_rev = w.next_rev.max(before + 1);
        let conn = self.conns.get(&id.0);
        match offer(
            w,
            id.1,
            self.current,
            self.config.response_bytes_max,
            conn,
            events,
        ) {
            Offer::Nothing => {}
            Offer::Sent => w.next_rev = self.current + 1,
            Offer::Full => self.make_unsynced(id),
        }
    }

    /// After the store was replaced (a snapshot installed): the events between the old
    /// and the new revision were never applied here, so every watcher catches up from the
    /// new store's tree.
    pub fn resync(&mut self, current: i64, compacted: i64) {
        let synced: Vec<WatcherId> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.synced)
            .map(|(id, _)| *id)
            .collect();
        for id in synced {
            if let Some(w) = self.watchers.get_mut(&id) {
                w.next_rev = w.next_rev.max(self.current + 1);
            }
            self.make_unsynced(id);
        }
        self.current = current;
        self.compacted = compacted;
    }

    /// One step of feeding unsynced watchers from `history` (whole revisions, about
    /// [`HubConfig::catch_up_records`] records); true while some are still behind and
    /// could be fed now (call again after other work).
    pub fn catch_up(&mut self, history: &dyn History) -> Result<bool, MvccError> {
        self.cancel_compacted();
        let ready: Vec<WatcherId> = self
            .unsynced
            .iter()
            .filter(|id| self.conns.get(&id.0).is_some_and(|c| c.sink.has_room()))
            .copied()
            .collect();
        let Some(from) = ready
            .iter()
            .filter_map(|id| self.watchers.get(id))
            .map(|w| w.next_rev)
            .min()
        else {
            return Ok(false);
        };
        let (events, through) = if from > self.current {
            (Vec::new(), self.current)
        } else {
            let with_prev = ready
                .iter()
                .any(|id| self.watchers.get(id).is_some_and(|w| w.prev_kv));
            let (records, bytes) = (self.config.catch_up_records, self.config.catch_up_bytes);
            history.events_from(from, records, bytes, with_prev)?
        };
        let mut groups = Groups::new();
        for id in &ready {
            if let Some(w) = self.watchers.get(id) {
                groups.insert(&w.range, *id);
            }
        }
        let mut matched: BTreeMap<WatcherId, Vec<&Event>> = BTreeMap::new();
        for e in &events {
            groups.matching(&e.kv.key, |id| matched.entry(id).or_default().push(e));
        }
        let mut advanced = false;
        for id in ready {
            let events = matched.remove(&id).unwrap_or_default();
            advanced |= self.deliver_history(id, events, through);
        }
        self.answer_all_progress();
        // Without progress (the connections had no room for what was read), wait rather
        // than read the same again at once.
        Ok(advanced
            && self.unsynced.iter().any(|id| {
                self.conns.get(&id.0).is_some_and(|c| c.sink.has_room())
                    && self
                        .watchers
                        .get(id)
                        .is_some_and(|w| w.next_rev <= self.current)
            }))
    }

    /// Feeds one watcher a chunk of history; true if it moved on.
    fn deliver_history(&mut self, id: WatcherId, events: Vec<&Event>, through: i64) -> bool {
        let Some(w) = self.watchers.get_mut(&id) else {
            return false;
        };
        if w.next_rev > through {
            // Ahead of this chunk: waits for the hub's revision (or a later chunk).
            if w.next_rev > self.current {
                self.make_synced(id);
                return true;
            }
            return false;
        }
        let conn = self.conns.get(&id.0);
        let offered = offer(
            w,
            id.1,
            self.current,
            self.config.response_bytes_max,
            conn,
            events,
        );
        if offered == Offer::Full {
            return false; // tried again once there is room
        }
        w.next_rev = through + 1;
        if w.next_rev > self.current {
            self.make_synced(id);
        }
        true
    }

    /// etcd's rule: a watcher that needs a revision below the compaction revision is
    /// canceled, telling the compaction revision.
    fn cancel_compacted(&mut self) {
        let compacted: Vec<(WatcherId, u64)> = self
            .unsynced
            .iter()
            .filter_map(|id| {
                let w = self.watchers.get(id)?;
                (w.next_rev < self.compacted).then_some((*id, w.request_id))
            })
            .collect();
        for (id, request_id) in compacted {
            self.remove(id);
            let response = WatchResponse {
                header: self.header(),
                watch_id: id.1,
                canceled: true,
                compact_revision: self.compacted,
                cancel_reason: MvccError::Compacted.to_string(),
                ..WatchResponse::default()
            };
            self.control(id.0, request_id, response);
            self.answer_progress(id.0);
        }
    }

    fn answer_all_progress(&mut self) {
        let waiting: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.progress.is_empty() && c.unsynced == 0)
            .map(|(id, _)| *id)
            .collect();
        for conn in waiting {
            self.answer_progress(conn);
        }
    }

    /// Answers the connection's progress requests once all its watchers are synced: every
    /// event up to the hub's revision has been queued for them, before this response.
    fn answer_progress(&mut self, conn: ConnId) {
        let header = self.header();
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.unsynced > 0 {
            return;
        }
        for request_id in std::mem::take(&mut c.progress) {
            let response = WatchResponse {
                header,
                watch_id: -1,
                ..WatchResponse::default()
            };
            c.sink.send_control(WatchOut {
                request_id,
                response,
            });
        }
    }

    /// Progress notifications: every `progress_notify_ms`, each synced watcher that asked
    /// for them and was sent nothing since the last time gets the hub's revision.
    pub fn tick(&mut self, now_ms: u64) {
        if now_ms.saturating_sub(self.last_progress_ms) < self.config.progress_notify_ms {
            return;
        }
        self.last_progress_ms = now_ms;
        let header = self.header();
        let mut due: Vec<(WatcherId, u64)> = Vec::new();
        for (id, w) in self.watchers.iter_mut() {
            if w.progress_notify && w.synced && !w.sent {
                due.push((*id, w.request_id));
            }
            w.sent = false;
        }
        due.sort_unstable();
        for ((conn, watch_id), request_id) in due {
            let response = WatchResponse {
                header,
                watch_id,
                ..WatchResponse::default()
            };
            self.control(conn, request_id, response);
        }
    }
}

/// What offering a watcher its events came to.
#[derive(Debug, PartialEq, Eq)]
enum Offer {
    /// None of them was for it.
    Nothing,
    Sent,
    /// Its connection had no room (or is gone): nothing was sent.
    Full,
}

/// Sends a watcher the events it wants of `events`, as responses, all or none.
fn offer<S: Sink>(
    w: &mut Watcher,
    watch_id: i64,
    current: i64,
    bytes_max: usize,
    conn: Option<&Conn<S>>,
    events: Vec<&Event>,
) -> Offer {
    let wanted = w.select(events);
    if wanted.is_empty() {
        return Offer::Nothing;
    }
    let outs = responses(w, watch_id, current, wanted, bytes_max);
    match conn.map(|c| c.sink.try_send(outs)) {
        Some(Ok(())) => {
            w.sent = true;
            Offer::Sent
        }
        _ => Offer::Full,
    }
}

/// Where catch-up reads past events: the store's revision-keyed tree.
pub trait History {
    /// Events of whole revisions from `from` on, about `max_records` of them and
    /// `max_bytes`, and the last revision they cover (see [`crate::mvcc::Store::history`]).
    fn events_from(
        &self,
        from: i64,
        max_records: usize,
        max_bytes: usize,
        with_prev: bool,
    ) -> Result<(Vec<Event>, i64), MvccError>;
}

impl History for crate::mvcc::Store {
    fn events_from(
        &self,
        from: i64,
        max_records: usize,
        max_bytes: usize,
        with_prev: bool,
    ) -> Result<(Vec<Event>, i64), MvccError> {
        self.history(from, max_records, max_bytes, with_prev)
    }
}

fn events_bytes(events: &[Event]) -> usize {
    events
        .iter()
        .map(|e| {
            let kv = |kv: &crate::mvcc::KeyValue| 48 + kv.key.len() + kv.value.len();
            16 + kv(&e.kv) + e.prev_kv.as_ref().map_or(0, kv)
        })
        .sum()
}

/// A watcher's events as responses: several revisions per response up to `bytes_max`,
/// never splitting a revision, except into `fragment`s for a watcher that asked for them.
fn responses(
    w: &Watcher,
    watch_id: i64,
    current: i64,
    events: Vec<Event>,
    bytes_max: usize,
) -> Vec<WatchOut> {
    let header = ResponseHeader { revision: current };
    let out = |events: Vec<Event>, fragment: bool| WatchOut {
        request_id: w.request_id,
        response: WatchResponse {
            header,
            watch_id,
            fragment,
            events,
            ..WatchResponse::default()
        },
    };
    let mut outs = Vec::new();
    let mut pending: Vec<Event> = Vec::new();
    let mut pending_bytes = 0;
    for revision in split_revisions(events) {
        let bytes = events_bytes(&revision);
        if !pending.is_empty() && (pending_bytes + bytes > bytes_max || bytes > bytes_max) {
            outs.push(out(std::mem::take(&mut pending), false));
            pending_bytes = 0;
        }
        if bytes > bytes_max && w.fragment {
            let pieces = fragments(revision, bytes_max);
            let last = pieces.len() - 1;
            for (i, piece) in pieces.into_iter().enumerate() {
                outs.push(out(piece, i < last));
            }
            continue;
        }
        pending.extend(revision);
        pending_bytes += bytes;
    }
    if !pending.is_empty() {
        outs.push(out(pending, false));
    }
    outs
}

/// One revision's events cut into pieces of at most `bytes_max` (an event larger than
/// that is a piece of its own).
fn fragments(revision: Vec<Event>, bytes_max: usize) -> Vec<Vec<Event>> {
    let mut pieces = Vec::new();
    let mut piece: Vec<Event> = Vec::new();
    let mut piece_bytes = 0;
    for e in revision {
        let one = events_bytes(std::slice::from_ref(&e));
        if !piece.is_empty() && piece_bytes + one > bytes_max {
            pieces.push(std::mem::take(&mut piece));
            piece_bytes = 0;
        }
        piece.push(e);
        piece_bytes += one;
    }
    pieces.push(piece);
    pieces
}

/// Events (in revision order) cut into one run per revision.
fn split_revisions(events: Vec<Event>) -> Vec<Vec<Event>> {
    let mut runs: Vec<Vec<Event>> = Vec::new();
    for e in events {
        match runs.last_mut() {
            Some(run) if run[0].revision() == e.revision() => run.push(e),
            _ => runs.push(vec![e]),
        }
    }
    runs
}

#[cfg(test)]
mod tests;
