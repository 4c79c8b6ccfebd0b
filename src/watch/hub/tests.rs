use super::*;
use crate::mvcc::KeyValue;
use proptest::prelude::*;
use std::cell::RefCell;
use std::rc::Rc;

/// A connection queue holding at most `room` event responses, or any number when empty
/// (control responses always fit), read by the test.
#[derive(Clone)]
struct TestSink {
    queue: Rc<RefCell<Vec<WatchOut>>>,
    events_queued: Rc<RefCell<usize>>,
    room: usize,
}

impl TestSink {
    fn new(room: usize) -> TestSink {
        TestSink {
            queue: Rc::default(),
            events_queued: Rc::default(),
            room,
        }
    }

    fn drain(&self) -> Vec<WatchOut> {
        *self.events_queued.borrow_mut() = 0;
        std::mem::take(&mut *self.queue.borrow_mut())
    }
}

impl Sink for TestSink {
    fn try_send(&self, outs: Vec<WatchOut>) -> Result<(), Vec<WatchOut>> {
        let mut queued = self.events_queued.borrow_mut();
        // As the server's: what does not fit goes anyway into an empty queue, so a
        // revision larger than the room still gets through.
        if *queued > 0 && *queued + outs.len() > self.room {
            return Err(outs);
        }
        *queued += outs.len();
        self.queue.borrow_mut().extend(outs);
        Ok(())
    }

    fn send_control(&self, out: WatchOut) {
        self.queue.borrow_mut().push(out);
    }

    fn has_room(&self) -> bool {
        *self.events_queued.borrow() < self.room
    }
}

/// Every event so far, as the store's tree would give them back.
#[derive(Default)]
struct TestHistory {
    events: Vec<Event>,
    current: i64,
    compacted: i64,
}

impl History for TestHistory {
    fn events_from(
        &self,
        from: i64,
        max_records: usize,
        _max_bytes: usize,
        with_prev: bool,
    ) -> Result<(Vec<Event>, i64), MvccError> {
        let mut out: Vec<Event> = Vec::new();
        let mut through = self.current;
        for e in self.events.iter().filter(|e| e.revision() >= from) {
            let last = out.last().map(Event::revision);
            if out.len() >= max_records && last != Some(e.revision()) {
                through = last.unwrap_or(through);
                break;
            }
            let mut e = e.clone();
            if !with_prev {
                e.prev_kv = None;
            }
            out.push(e);
        }
        Ok((out, through))
    }
}

fn put(key: &str, rev: i64) -> Event {
    Event {
        kind: EventType::Put,
        kv: KeyValue {
            key: key.into(),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            value: format!("v{rev}").into(),
            lease: 0,
        },
        prev_kv: Some(KeyValue {
            key: key.into(),
            ..KeyValue::default()
        }),
    }
}

fn del(key: &str, rev: i64) -> Event {
    Event {
        kind: EventType::Delete,
        kv: KeyValue {
            key: key.into(),
            mod_revision: rev,
            ..KeyValue::default()
        },
        prev_kv: None,
    }
}

struct Setup {
    hub: WatchHub<TestSink>,
    history: TestHistory,
}

impl Setup {
    fn new(config: HubConfig) -> Setup {
        Setup {
            hub: WatchHub::new(config, 1, -1),
            history: TestHistory {
                current: 1,
                compacted: -1,
                ..TestHistory::default()
            },
        }
    }

    fn open(&mut self, conn: ConnId, room: usize) -> TestSink {
        let sink = TestSink::new(room);
        self.hub.handle(WatchInput::Open {
            conn,
            sink: sink.clone(),
        });
        sink
    }

    fn watch(&mut self, conn: ConnId, request_id: u64, create: WatchCreateRequest) {
        self.hub.handle(WatchInput::Request {
            conn,
            request_id,
            request: WatchRequest::Create(create),
        });
    }

    /// Applies one revision made of `events` (their revisions are set here).
    fn apply(&mut self, mut events: Vec<Event>) {
        let rev = self.history.current + 1;
        for e in &mut events {
            e.kv.mod_revision = rev;
        }
        self.history.current = rev;
        self.history.events.extend(events.iter().cloned());
        self.hub
            .notify(&events, self.history.current, self.history.compacted);
    }

    fn catch_up_all(&mut self) {
        for _ in 0..10_000 {
            if !self.hub.catch_up(&self.history).unwrap() {
                return;
            }
        }
        panic!("catch-up does not end");
    }
}

fn prefix(p: &str) -> WatchCreateRequest {
    let mut end = p.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    WatchCreateRequest {
        key: p.into(),
        range_end: end,
        ..WatchCreateRequest::default()
    }
}

fn events_of(outs: &[WatchOut]) -> Vec<(i64, String)> {
    outs.iter()
        .flat_map(|o| o.response.events.iter())
        .map(|e| {
            (
                e.revision(),
                String::from_utf8_lossy(&e.kv.key).into_owned(),
            )
        })
        .collect()
}

#[test]
fn a_watcher_gets_its_keys_events_after_the_created_response() {
    let mut s = Setup::new(HubConfig::default());
    let sink = s.open(1, 100);
    s.watch(1, 7, prefix("a/"));
    s.watch(
        1,
        8,
        WatchCreateRequest {
            key: "b".into(),
            filters: vec![WatchFilter::NoDelete],
            prev_kv: true,
            ..WatchCreateRequest::default()
        },
    );
    s.apply(vec![put("a/1", 0), put("b", 0), put("c", 0)]);
    s.apply(vec![del("b", 0), del("a/1", 0)]);
    let outs = sink.drain();
    let created: Vec<(u64, i64)> = outs
        .iter()
        .filter(|o| o.response.created)
        .map(|o| (o.request_id, o.response.watch_id))
        .collect();
    assert_eq!(created, vec![(7, 0), (8, 1)], "ids from 0, as etcd's");
    let on = |id: u64| -> Vec<WatchOut> {
        outs.iter()
            .filter(|o| o.request_id == id && !o.response.created)
            .cloned()
            .collect()
    };
    assert_eq!(
        events_of(&on(7)),
        vec![(2, "a/1".to_string()), (3, "a/1".to_string())]
    );
    assert!(
        on(7)
            .iter()
            .all(|o| o.response.events.iter().all(|e| e.prev_kv.is_none())),
        "no previous key-values unless asked"
    );
    let b = on(8);
    assert_eq!(
        events_of(&b),
        vec![(2, "b".to_string())],
        "the delete is filtered"
    );
    assert!(b[0].response.events[0].prev_kv.is_some());
}

#[test]
fn a_slow_connection_falls_behind_and_catches_up_from_history_in_order() {
    let config = HubConfig {
        catch_up_records: 3,
        ..HubConfig::default()
    };
    let mut s = Setup::new(config);
    let sink = s.open(1, 2);
    s.watch(1, 1, prefix("k"));
    sink.drain();
    for i in 0..20 {
        s.apply(vec![put(&format!("k{}", i % 4), 0)]);
    }
    assert_eq!(
        s.hub.unsynced(),
        1,
        "two responses fit, then it fell behind"
    );
    let mut got = events_of(&sink.drain());
    // Each step sends what fits; the test reads in between, as a client would.
    for _ in 0..100 {
        let more = s.hub.catch_up(&s.history).unwrap();
        got.extend(events_of(&sink.drain()));
        if !more && s.hub.unsynced() == 0 {
            break;
        }
    }
    assert_eq!(s.hub.unsynced(), 0);
    s.apply(vec![put("k9", 0)]);
    got.extend(events_of(&sink.drain()));
    let want: Vec<(i64, String)> = (0..21)
        .map(|i| {
            let key = if i < 20 {
                format!("k{}", i % 4)
            } else {
                "k9".into()
            };
            (i + 2, key)
        })
        .collect();
    assert_eq!(got, want, "every event once, in order, then live again");
}

#[test]
fn a_start_revision_below_the_compaction_is_canceled_with_the_compact_revision() {
    let mut s = Setup::new(HubConfig::default());
    for _ in 0..5 {
        s.apply(vec![put("a", 0)]);
    }
    s.history.compacted = 4;
    s.hub.notify(&[], s.history.current, 4);
    let sink = s.open(1, 10);
    s.watch(
        1,
        3,
        WatchCreateRequest {
            key: "a".into(),
            start_revision: 3,
            ..WatchCreateRequest::default()
        },
    );
    s.watch(
        1,
        4,
        WatchCreateRequest {
            key: "a".into(),
            start_revision: 4,
            ..WatchCreateRequest::default()
        },
    );
    s.catch_up_all();
    let outs = sink.drain();
    let canceled: Vec<&WatchOut> = outs.iter().filter(|o| o.response.canceled).collect();
    assert_eq!(canceled.len(), 1);
    assert_eq!(canceled[0].request_id, 3);
    assert_eq!(canceled[0].response.compact_revision, 4);
    assert_eq!(
        canceled[0].response.cancel_reason,
        "mvcc: required revision has been compacted"
    );
    assert_eq!(s.hub.len(), 1);
    let from_4: Vec<i64> = events_of(&outs).into_iter().map(|(rev, _)| rev).collect();
    assert_eq!(
        from_4,
        vec![4, 5, 6],
        "the compaction revision itself is readable"
    );
}

#[test]
fn an_oversized_revision_is_fragmented_only_for_watchers_that_ask() {
    let config = HubConfig {
        response_bytes_max: 400,
        ..HubConfig::default()
    };
    let mut s = Setup::new(config);
    let sink = s.open(1, 100);
    s.watch(1, 1, prefix("k"));
    s.watch(
        1,
        2,
        WatchCreateRequest {
            fragment: true,
            ..prefix("k")
        },
    );
    sink.drain();
    s.apply((0..10).map(|i| put(&format!("k{i}"), 0)).collect());
    s.apply(vec![put("k0", 0)]);
    let outs = sink.drain();
    let whole: Vec<(usize, bool)> = outs
        .iter()
        .filter(|o| o.request_id == 1)
        .map(|o| (o.response.events.len(), o.response.fragment))
        .collect();
    assert_eq!(whole, vec![(10, false), (1, false)]);
    let pieces: Vec<(usize, bool)> = outs
        .iter()
        .filter(|o| o.request_id == 2)
        .map(|o| (o.response.events.len(), o.response.fragment))
        .collect();
    assert!(pieces.len() > 2, "{pieces:?}");
    let (last, fragments) = pieces.split_at(pieces.len() - 2);
    assert!(last.iter().all(|(_, fragment)| *fragment));
    assert_eq!(fragments, &[(fragments[0].0, false), (1, false)]);
    assert_eq!(pieces.iter().map(|(n, _)| n).sum::<usize>(), 11);
}

#[test]
fn a_progress_request_is_answered_once_every_watcher_of_the_connection_is_synced() {
    let mut s = Setup::new(HubConfig {
        catch_up_records: 1,
        ..HubConfig::default()
    });
    for _ in 0..4 {
        s.apply(vec![put("a", 0)]);
    }
    let sink = s.open(1, 100);
    s.watch(
        1,
        1,
        WatchCreateRequest {
            key: "a".into(),
            start_revision: 2,
            ..WatchCreateRequest::default()
        },
    );
    s.hub.handle(WatchInput::Request {
        conn: 1,
        request_id: 9,
        request: WatchRequest::Progress,
    });
    assert!(
        !sink.drain().iter().any(|o| o.request_id == 9),
        "not before the watcher caught up"
    );
    s.catch_up_all();
    let outs = sink.drain();
    let progress = outs.iter().position(|o| o.request_id == 9).unwrap();
    assert_eq!(outs[progress].response.watch_id, -1);
    assert_eq!(outs[progress].response.header.revision, 5);
    assert!(outs[progress].response.is_progress_notify());
    assert_eq!(
        events_of(&outs[..progress]).last().map(|e| e.0),
        Some(5),
        "after every event up to its revision"
    );
}

#[test]
fn progress_notify_reaches_idle_watchers_that_asked_each_interval() {
    let mut s = Setup::new(HubConfig {
        progress_notify_ms: 1000,
        ..HubConfig::default()
    });
    let sink = s.open(1, 100);
    s.watch(
        1,
        1,
        WatchCreateRequest {
            progress_notify: true,
            ..prefix("a")
        },
    );
    s.watch(
        1,
        2,
        WatchCreateRequest {
            progress_notify: true,
            ..prefix("b")
        },
    );
    s.watch(1, 3, prefix("c"));
    sink.drain();
    s.hub.tick(1000);
    s.apply(vec![put("a", 0)]);
    s.hub.tick(1500);
    assert_eq!(events_of(&sink.drain()).len(), 1, "not before the interval");
    s.hub.tick(2000);
    let notified: Vec<u64> = sink.drain().iter().map(|o| o.request_id).collect();
    assert_eq!(
        notified,
        vec![2],
        "the watcher sent an event and the one that did not ask are skipped"
    );
}

#[test]
fn cancel_duplicate_ids_and_the_watcher_limit() {
    let mut s = Setup::new(HubConfig {
        watchers_per_conn_max: 2,
        ..HubConfig::default()
    });
    let sink = s.open(1, 100);
    s.watch(
        1,
        1,
        WatchCreateRequest {
            watch_id: 5,
            ..prefix("a")
        },
    );
    s.watch(
        1,
        2,
        WatchCreateRequest {
            watch_id: 5,
            ..prefix("a")
        },
    );
    s.watch(1, 3, prefix("a"));
    s.watch(1, 4, prefix("a"));
    let outs = sink.drain();
    let summary: Vec<(u64, i64, bool)> = outs
        .iter()
        .map(|o| (o.request_id, o.response.watch_id, o.response.canceled))
        .collect();
    assert_eq!(
        summary,
        vec![(1, 5, false), (2, 5, true), (3, 0, false), (4, 0, true)]
    );
    assert!(outs[3].response.cancel_reason.contains("too many watchers"));
    s.hub.handle(WatchInput::Request {
        conn: 1,
        request_id: 5,
        request: WatchRequest::Cancel { watch_id: 5 },
    });
    s.apply(vec![put("a", 0)]);
    let outs = sink.drain();
    assert!(outs[0].response.canceled);
    assert_eq!(events_of(&outs), vec![(2, "a".to_string())]);
    assert_eq!(
        outs[1].request_id, 3,
        "only the watcher left gets the event"
    );
    s.hub.handle(WatchInput::Close { conn: 1 });
    assert!(s.hub.is_empty());
}

#[derive(Debug, Clone)]
enum Step {
    /// One revision: puts and deletes of these keys.
    Apply(Vec<(bool, u8)>),
    /// A watcher on connection `conn % 3`: key, prefix or all, from a revision back.
    Watch {
        conn: u8,
        kind: u8,
        key: u8,
        back: u8,
        fragment: bool,
    },
    /// The client of a connection reads what is queued.
    Read(u8),
    CatchUp,
    /// The store was replaced by a snapshot: events not applied here.
    Resync(Vec<(bool, u8)>),
}

fn step() -> impl Strategy<Value = Step> {
    let changes = proptest::collection::vec((any::<bool>(), 0u8..6), 1..5);
    prop_oneof![
        4 => changes.clone().prop_map(Step::Apply),
        2 => (0u8..3, 0u8..3, 0u8..6, 0u8..8, any::<bool>()).prop_map(|(conn, kind, key, back, fragment)| Step::Watch { conn, kind, key, back, fragment }),
        2 => (0u8..3).prop_map(Step::Read),
        2 => Just(Step::CatchUp),
        1 => changes.prop_map(Step::Resync),
    ]
}

fn key_name(k: u8) -> String {
    format!("k{}", k % 3) + &"x".repeat(usize::from(k / 3))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Whatever the connections' room and reading pace, resyncs and fragments: each
    /// watcher gets exactly the events of its range from its start revision, in order,
    /// each once, a revision never split but into fragments.
    #[test]
    fn every_watcher_gets_exactly_its_events_in_order(steps in proptest::collection::vec(step(), 1..60)) {
        let mut s = Setup::new(HubConfig { catch_up_records: 2, response_bytes_max: 300, ..HubConfig::default() });
        let sinks: Vec<TestSink> = (0..3).map(|c| s.open(c, 1 + c as usize)).collect();
        let mut received: Vec<Vec<WatchOut>> = vec![Vec::new(); 3];
        // (conn, request id) -> (range, start revision)
        let mut watchers: Vec<(u8, u64, WatchRange, i64)> = Vec::new();
        let mut next_request = 1u64;
        for st in steps {
            match st {
                Step::Apply(changes) => {
                    let events = changes.iter().map(|(is_put, k)| if *is_put { put(&key_name(*k), 0) } else { del(&key_name(*k), 0) });
                    let mut seen = std::collections::HashSet::new();
                    let events: Vec<Event> = events.filter(|e| seen.insert(e.kv.key.clone())).collect();
                    s.apply(events);
                }
                Step::Resync(changes) => {
                    let rev = s.history.current + 1;
                    let mut seen = std::collections::HashSet::new();
                    for (is_put, k) in changes {
                        if seen.insert(k % 6) {
                            let mut e = if is_put { put(&key_name(k), rev) } else { del(&key_name(k), rev) };
                            e.kv.mod_revision = rev;
                            s.history.events.push(e);
                        }
                    }
                    s.history.current = rev;
                    s.hub.resync(rev, -1);
                }
                Step::Watch { conn, kind, key, back, fragment } => {
                    let key = key_name(key);
                    let create = match kind {
                        0 => WatchCreateRequest { key: key.clone().into(), ..WatchCreateRequest::default() },
                        1 => prefix("k"),
                        _ => WatchCreateRequest { key: vec![0], range_end: vec![0], ..WatchCreateRequest::default() },
                    };
                    let start = (s.history.current + 1 - i64::from(back)).max(1);
                    let create = WatchCreateRequest { start_revision: start, fragment, ..create };
                    watchers.push((conn, next_request, WatchRange::new(&create.key, &create.range_end), start));
                    s.watch(u64::from(conn), next_request, create);
                    next_request += 1;
                }
                Step::Read(conn) => received[usize::from(conn)].extend(sinks[usize::from(conn)].drain()),
                Step::CatchUp => { s.hub.catch_up(&s.history).unwrap(); }
            }
        }
        // Read and catch up until nothing is behind.
        for _ in 0..10_000 {
            for c in 0..3 {
                received[c].extend(sinks[c].drain());
            }
            let more = s.hub.catch_up(&s.history).unwrap();
            if !more && s.hub.unsynced() == 0 {
                break;
            }
        }
        for c in 0..3 {
            received[c].extend(sinks[c].drain());
        }
        prop_assert_eq!(s.hub.unsynced(), 0);
        for (conn, request_id, range, start) in watchers {
            let outs: Vec<&WatchOut> = received[usize::from(conn)].iter().filter(|o| o.request_id == request_id).collect();
            prop_assert!(outs[0].response.created);
            let got: Vec<(i64, Vec<u8>)> = outs.iter().flat_map(|o| o.response.events.iter()).map(|e| (e.revision(), e.kv.key.clone())).collect();
            let want: Vec<(i64, Vec<u8>)> = s.history.events.iter().filter(|e| e.revision() >= start && range.contains(&e.kv.key)).map(|e| (e.revision(), e.kv.key.clone())).collect();
            prop_assert_eq!(got, want);
            // Atomic: a response that is not a fragment ends its revision.
            let event_outs: Vec<&&WatchOut> = outs.iter().filter(|o| !o.response.events.is_empty()).collect();
            for pair in event_outs.windows(2) {
                let (a, b) = (&pair[0].response, &pair[1].response);
                let last_a = a.events.last().map(Event::revision);
                let first_b = b.events.first().map(Event::revision);
                prop_assert!(a.fragment == (last_a == first_b), "split revision {:?} fragment {}", last_a, a.fragment);
            }
        }
    }
}
