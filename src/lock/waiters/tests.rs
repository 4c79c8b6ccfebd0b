use super::*;
use crate::btree::DbOptions;
use crate::mvcc::{DeleteRangeRequest, PutRequest, RaftPosition, Request};

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

    fn apply(&mut self, r: Request) -> Vec<Event> {
        self.index += 1;
        let at = RaftPosition {
            index: self.index,
            term: 1,
        };
        self.store.apply(at, &[r]).unwrap();
        self.store.take_events()
    }

    /// Puts a contender's key; its create revision.
    fn contend(&mut self, key: &str) -> i64 {
        self.apply(Request::Put(PutRequest {
            key: key.into(),
            ..PutRequest::default()
        }));
        self.store.current_revision()
    }

    fn delete(&mut self, key: &str) -> Vec<Event> {
        self.apply(Request::DeleteRange(DeleteRangeRequest {
            key: key.into(),
            ..DeleteRangeRequest::default()
        }))
    }
}

fn wait(key: &str, rev: i64, limit: u32) -> LockWait {
    LockWait {
        prefix: b"L/".to_vec(),
        key: key.into(),
        rev,
        limit,
    }
}

#[test]
fn a_lock_passes_to_the_next_contender_in_create_order_only() {
    let mut f = Fixture::new();
    let mut w = Waiters::default();
    let a = f.contend("L/a");
    let c = f.contend("L/c");
    let b = f.contend("L/b");
    f.contend("M/x"); // another lock
    assert_eq!(
        w.add(wait("L/a", a, 1), 'a', &f.store)
            .unwrap()
            .map(|(r, o)| (r, o.is_ok())),
        Some(('a', true)),
        "the first contender holds at once"
    );
    assert!(w.add(wait("L/c", c, 1), 'c', &f.store).unwrap().is_none());
    assert!(w.add(wait("L/b", b, 1), 'b', &f.store).unwrap().is_none());
    // Deleting another lock's key or the last contender's wakes nobody who may hold.
    let events = f.delete("M/x");
    assert!(w.on_events(&events, &f.store).unwrap().is_empty());
    // The holder releases: only the next one (c, created second) holds.
    let events = f.delete("L/a");
    let woken: Vec<char> = w
        .on_events(&events, &f.store)
        .unwrap()
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    assert_eq!(woken, vec!['c']);
    assert_eq!(w.len(), 1);
    let events = f.delete("L/c");
    let woken: Vec<char> = w
        .on_events(&events, &f.store)
        .unwrap()
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    assert_eq!(woken, vec!['b']);
    assert!(w.is_empty());
}

#[test]
fn a_waiter_whose_predecessor_leaves_early_waits_on_the_one_before_it() {
    let mut f = Fixture::new();
    let mut w = Waiters::default();
    let _a = f.contend("L/a");
    let _b = f.contend("L/b");
    let c = f.contend("L/c");
    assert!(w.add(wait("L/c", c, 1), 'c', &f.store).unwrap().is_none());
    // b gives up while a still holds: c now waits on a.
    let events = f.delete("L/b");
    assert!(w.on_events(&events, &f.store).unwrap().is_empty());
    assert_eq!(w.len(), 1);
    let events = f.delete("L/a");
    assert_eq!(w.on_events(&events, &f.store).unwrap().len(), 1);
}

#[test]
fn a_semaphore_admits_limit_holders_and_a_deleted_waiter_is_told() {
    let mut f = Fixture::new();
    let mut w = Waiters::default();
    let revs: Vec<i64> = ["L/1", "L/2", "L/3", "L/4"]
        .iter()
        .map(|k| f.contend(k))
        .collect();
    let held: Vec<bool> = ["L/1", "L/2", "L/3", "L/4"]
        .iter()
        .zip(&revs)
        .enumerate()
        .map(|(i, (k, r))| w.add(wait(k, *r, 2), i, &f.store).unwrap().is_some())
        .collect();
    assert_eq!(held, vec![true, true, false, false]);
    // The fourth's key goes (its lease expired): it is told it never will hold.
    let events = f.delete("L/4");
    let told = w.on_events(&events, &f.store).unwrap();
    assert_eq!(told.len(), 1);
    assert_eq!(told[0].0, 3);
    assert_eq!(told[0].1, Err(KEY_GONE.to_string()));
    // A holder leaves: the third holds.
    let events = f.delete("L/1");
    let told = w.on_events(&events, &f.store).unwrap();
    assert_eq!(told.iter().map(|t| t.0).collect::<Vec<_>>(), vec![2]);
    assert!(told[0].1.is_ok());
}
