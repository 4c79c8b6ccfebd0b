use super::*;
use crate::btree::DbOptions;
use crate::mvcc::{CompactionRequest, DeleteRangeRequest, PutRequest, RaftPosition, Request};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// A sink with room for `room` leaders; what it took is `(revision, key, value)`.
#[derive(Clone)]
struct Queue {
    taken: Rc<RefCell<Vec<(i64, String, String)>>>,
    room: Rc<Cell<usize>>,
    gone: Rc<Cell<bool>>,
}

impl Queue {
    fn new(room: usize) -> Queue {
        Queue {
            taken: Rc::default(),
            room: Rc::new(Cell::new(room)),
            gone: Rc::default(),
        }
    }

    fn take(&self) -> Vec<(i64, String, String)> {
        std::mem::take(&mut self.taken.borrow_mut())
    }
}

impl LeaderSink for Queue {
    fn offer(&self, revision: i64, kv: &KeyValue) -> bool {
        if self.room.get() == 0 {
            return false;
        }
        self.room.set(self.room.get() - 1);
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        self.taken
            .borrow_mut()
            .push((revision, text(&kv.key), text(&kv.value)));
        true
    }

    fn is_gone(&self) -> bool {
        self.gone.get()
    }
}

struct Fixture {
    store: Store,
    index: u64,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db"), DbOptions::default()).unwrap();
        Fixture {
            store,
            index: 0,
            _dir: dir,
        }
    }

    /// Applies `batch` as one entry; its events.
    fn apply(&mut self, batch: &[Request]) -> Vec<Event> {
        self.index += 1;
        let at = RaftPosition {
            index: self.index,
            term: 1,
        };
        self.store.apply(at, batch).unwrap();
        self.store.take_events()
    }
}

fn put(key: &str, value: &str) -> Request {
    Request::Put(PutRequest {
        key: key.into(),
        value: value.into(),
        ..PutRequest::default()
    })
}

fn del(key: &str) -> Request {
    Request::DeleteRange(DeleteRangeRequest {
        key: key.into(),
        ..DeleteRangeRequest::default()
    })
}

fn told(rev: i64, key: &str, value: &str) -> (i64, String, String) {
    (rev, key.into(), value.into())
}

#[test]
fn an_observer_is_told_each_leader_and_each_proclamation_in_order() {
    let mut f = Fixture::new();
    let mut obs = Observers::default();
    let q = Queue::new(100);
    // No leader yet: nothing is said.
    obs.add(b"e/".to_vec(), q.clone(), &f.store).unwrap();
    assert_eq!(q.take(), vec![]);
    // Rev 2: a; rev 3: b waits behind it; rev 4: a proclaims; rev 5: a resigns, b leads;
    // all in one batch, each revision looked at on its own.
    let events = f.apply(&[
        put("e/a", "one"),
        put("e/b", "two"),
        put("e/a", "one'"),
        del("e/a"),
        put("other/x", "-"),
    ]);
    obs.on_events(&events, &f.store).unwrap();
    assert_eq!(
        q.take(),
        vec![
            told(2, "e/a", "one"),
            told(4, "e/a", "one'"),
            told(5, "e/b", "two"),
        ]
    );
    // A key of another election, or one created after the leader, changes nothing.
    let events = f.apply(&[put("e2/z", "-"), put("e/c", "three"), put("e/c", "3")]);
    obs.on_events(&events, &f.store).unwrap();
    assert_eq!(q.take(), vec![]);
    // The leader goes with nobody created before c: c leads.
    let events = f.apply(&[del("e/b")]);
    obs.on_events(&events, &f.store).unwrap();
    assert_eq!(q.take(), vec![told(10, "e/c", "3")]);
    // The last one goes: nothing is said until a new leader comes.
    let events = f.apply(&[del("e/c")]);
    obs.on_events(&events, &f.store).unwrap();
    assert_eq!(q.take(), vec![]);
    let events = f.apply(&[put("e/c", "again")]);
    obs.on_events(&events, &f.store).unwrap();
    assert_eq!(q.take(), vec![told(12, "e/c", "again")]);
}

#[test]
fn a_new_observer_is_told_the_current_leader_at_once() {
    let mut f = Fixture::new();
    f.apply(&[put("e/a", "one"), put("e/b", "two")]);
    let mut obs = Observers::default();
    let q = Queue::new(100);
    obs.add(b"e/".to_vec(), q.clone(), &f.store).unwrap();
    assert_eq!(q.take(), vec![told(3, "e/a", "one")]);
    // The prefix is the election's name and its slash: "e/" is not "ex/".
    let events = f.apply(&[put("ex/a", "-")]);
    obs.on_events(&events, &f.store).unwrap();
    assert_eq!(q.take(), vec![]);
}

#[test]
fn an_observer_without_room_is_told_the_leader_of_the_moment_once_it_has_room() {
    let mut f = Fixture::new();
    let mut obs = Observers::default();
    let q = Queue::new(1);
    obs.add(b"e/".to_vec(), q.clone(), &f.store).unwrap();
    let events = f.apply(&[put("e/a", "1"), put("e/a", "2"), put("e/a", "3")]);
    obs.on_events(&events, &f.store).unwrap();
    assert_eq!(q.take(), vec![told(2, "e/a", "1")]);
    assert!(obs.any_behind());
    // Still no room: nothing, and still behind.
    obs.catch_up(&f.store).unwrap();
    assert!(obs.any_behind());
    q.room.set(10);
    // While behind, events are not sent one by one.
    let events = f.apply(&[put("e/a", "4")]);
    obs.on_events(&events, &f.store).unwrap();
    assert_eq!(q.take(), vec![]);
    obs.catch_up(&f.store).unwrap();
    assert_eq!(q.take(), vec![told(5, "e/a", "4")]);
    assert!(!obs.any_behind());
    // Caught up, it is told the next change as it happens.
    let events = f.apply(&[put("e/a", "5")]);
    obs.on_events(&events, &f.store).unwrap();
    assert_eq!(q.take(), vec![told(6, "e/a", "5")]);
}

#[test]
fn recheck_tells_only_observers_whose_leader_changed_and_gone_ones_are_forgotten() {
    let mut f = Fixture::new();
    f.apply(&[put("e/a", "1"), put("f/a", "1")]);
    let mut obs = Observers::default();
    let (qe, qf) = (Queue::new(100), Queue::new(100));
    obs.add(b"e/".to_vec(), qe.clone(), &f.store).unwrap();
    obs.add(b"f/".to_vec(), qf.clone(), &f.store).unwrap();
    qe.take();
    qf.take();
    // As after a snapshot install: the store changed without events here.
    f.apply(&[put("e/a", "2")]);
    obs.recheck_all(&f.store).unwrap();
    assert_eq!(qe.take(), vec![told(4, "e/a", "2")]);
    assert_eq!(qf.take(), vec![]);
    qe.gone.set(true);
    obs.retain_live();
    assert_eq!(obs.len(), 1);
    let events = f.apply(&[put("e/a", "3"), put("f/a", "3")]);
    obs.on_events(&events, &f.store).unwrap();
    assert_eq!(qe.take(), vec![]);
    assert_eq!(qf.take(), vec![told(6, "f/a", "3")]);
}

#[test]
fn a_revision_compacted_in_the_same_batch_reads_as_the_newest() {
    let mut f = Fixture::new();
    let mut obs = Observers::default();
    let q = Queue::new(100);
    obs.add(b"e/".to_vec(), q.clone(), &f.store).unwrap();
    let events = f.apply(&[
        put("e/a", "1"),
        put("e/a", "2"),
        Request::Compaction(CompactionRequest {
            revision: 3,
            ..CompactionRequest::default()
        }),
    ]);
    obs.on_events(&events, &f.store).unwrap();
    assert_eq!(q.take(), vec![told(3, "e/a", "2")]);
}
