//! Watchers in the simulator: clients with a queue of random room that they read at random
//! moments, attached to a member's hub; when the member crashes (or is removed) they resume
//! on another from the revision after the last one they saw, as a client library does.
//! At the end each must have seen exactly the events of its range from its start, in
//! order, and every progress response after all the events up to its revision.

use cairn::mvcc::{Event, Store};
use cairn::node::{Random, SplitMix64};
use cairn::watch::{
    ConnId, HubConfig, Sink, WatchCreateRequest, WatchHub, WatchInput, WatchOut, WatchRequest,
};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

/// A connection's queue: `room` event responses, or any number into an empty queue.
#[derive(Clone)]
pub struct SimSink {
    queue: Rc<RefCell<VecDeque<WatchOut>>>,
    events: Rc<Cell<usize>>,
    room: usize,
}

impl Sink for SimSink {
    fn try_send(&self, outs: Vec<WatchOut>) -> Result<(), Vec<WatchOut>> {
        let queued = self.events.get();
        if queued > 0 && queued + outs.len() > self.room {
            return Err(outs);
        }
        self.events.set(queued + outs.len());
        self.queue.borrow_mut().extend(outs);
        Ok(())
    }

    fn send_control(&self, out: WatchOut) {
        self.queue.borrow_mut().push_back(out);
    }

    fn has_room(&self) -> bool {
        self.events.get() < self.room
    }
}

pub type SimHub = WatchHub<SimSink>;

/// A hub with small chunks and responses, so catch-up and splitting happen often.
pub fn hub(store: &Store) -> SimHub {
    let config = HubConfig {
        catch_up_records: 3,
        catch_up_bytes: 200,
        response_bytes_max: 200,
        ..HubConfig::default()
    };
    WatchHub::new(config, store.current_revision(), store.compact_revision())
}

struct Attached {
    member: usize,
    life: u64,
    conn: ConnId,
    sink: SimSink,
}

pub struct Watcher {
    key: Vec<u8>,
    range_end: Vec<u8>,
    /// The first revision it asked for (0 until its first attach, for "from now").
    start: i64,
    /// The first revision it has not seen.
    next_rev: i64,
    events: Vec<Event>,
    /// (events seen before it, its revision) of each progress response.
    progress: Vec<(usize, i64)>,
    attached: Option<Attached>,
    pub resumes: u64,
}

impl Watcher {
    /// Every key of the simulation from revision 1; one key from when it attaches.
    pub fn all() -> Vec<Watcher> {
        let w = |key: &[u8], range_end: &[u8], start: i64| Watcher {
            key: key.to_vec(),
            range_end: range_end.to_vec(),
            start,
            next_rev: start,
            events: Vec::new(),
            progress: Vec::new(),
            attached: None,
            resumes: 0,
        };
        vec![w(b"k", b"l", 1), w(b"k0", b"", 0), w(b"k", b"l", 0)]
    }

    /// The member it is attached to, if that member is still in the same life.
    pub fn member(&self) -> Option<(usize, u64)> {
        self.attached.as_ref().map(|a| (a.member, a.life))
    }

    /// Its member crashed or left: it resumes elsewhere.
    pub fn detach(&mut self) {
        self.attached = None;
    }

    /// Attaches to `hub` on `member`: a new connection, a watch from where it was.
    pub fn attach(
        &mut self,
        hub: &mut SimHub,
        store: &Store,
        member: usize,
        life: u64,
        conn: ConnId,
        rng: &mut SplitMix64,
    ) {
        if self.start == 0 {
            self.start = store.current_revision() + 1;
            self.next_rev = self.start;
        } else {
            self.resumes += 1;
        }
        let sink = SimSink {
            queue: Rc::default(),
            events: Rc::default(),
            room: 1 + rng.below(4) as usize,
        };
        hub.handle(WatchInput::Open {
            conn,
            sink: sink.clone(),
        });
        let create = WatchCreateRequest {
            key: self.key.clone(),
            range_end: self.range_end.clone(),
            start_revision: self.next_rev,
            ..WatchCreateRequest::default()
        };
        hub.handle(WatchInput::Request {
            conn,
            request_id: 1,
            request: WatchRequest::Create(create),
        });
        self.attached = Some(Attached {
            member,
            life,
            conn,
            sink,
        });
    }

    /// Reads what is queued for it (maybe asking for progress first); an error if a
    /// response breaks the order.
    pub fn read(&mut self, hub: &mut SimHub, ask_progress: bool) -> Result<(), String> {
        let Some(a) = &self.attached else {
            return Ok(());
        };
        if ask_progress {
            hub.handle(WatchInput::Request {
                conn: a.conn,
                request_id: 2,
                request: WatchRequest::Progress,
            });
        }
        let outs: Vec<WatchOut> = a.sink.queue.borrow_mut().drain(..).collect();
        a.sink.events.set(0);
        for out in outs {
            let r = out.response;
            if r.canceled {
                return Err(format!(
                    "watcher {:?} canceled: {}",
                    self.key, r.cancel_reason
                ));
            }
            if r.watch_id == -1 {
                self.progress.push((self.events.len(), r.header.revision));
            }
            for e in r.events {
                if e.kv.mod_revision < self.next_rev {
                    return Err(format!(
                        "watcher {:?}: revision {} after {}",
                        self.key,
                        e.kv.mod_revision,
                        self.next_rev - 1
                    ));
                }
                self.next_rev = e.kv.mod_revision + 1;
                self.events.push(e);
            }
        }
        Ok(())
    }

    pub fn next_rev(&self) -> i64 {
        self.next_rev
    }

    pub fn events_seen(&self) -> u64 {
        self.events.len() as u64
    }

    /// The revision through which it has seen everything: its last event's, or a later
    /// progress response's.
    fn seen_through(&self) -> i64 {
        let progress = self.progress.iter().map(|&(_, r)| r).max().unwrap_or(0);
        (self.next_rev - 1).max(progress)
    }

    /// Whether it has seen everything up to `revision`.
    pub fn reached(&self, revision: i64) -> bool {
        self.seen_through() >= revision
    }

    /// Exactly the events of its range from its start, given every event there was.
    pub fn check(&self, all: &[Event]) -> Result<(), String> {
        let in_range = |e: &&Event| {
            let k = e.kv.key.as_slice();
            if self.range_end.is_empty() {
                k == self.key.as_slice()
            } else {
                k >= self.key.as_slice() && k < self.range_end.as_slice()
            }
        };
        let want: Vec<&Event> = all
            .iter()
            .filter(in_range)
            .filter(|e| (self.start..=self.seen_through()).contains(&e.kv.mod_revision))
            .collect();
        let got: Vec<&Event> = self.events.iter().collect();
        if got != want {
            let first = got.iter().zip(&want).position(|(a, b)| a != b);
            return Err(format!(
                "watcher {:?} from {}: {} events, {} expected; first difference at {first:?}",
                self.key,
                self.start,
                got.len(),
                want.len()
            ));
        }
        for &(seen, revision) in &self.progress {
            let due = want
                .iter()
                .take_while(|e| e.kv.mod_revision <= revision)
                .count();
            // Events past it may have come before: from a member further on, before a
            // resume on one behind.
            if seen < due {
                return Err(format!(
                    "watcher {:?}: progress {revision} after {seen} events, {due} due",
                    self.key
                ));
            }
        }
        Ok(())
    }
}
