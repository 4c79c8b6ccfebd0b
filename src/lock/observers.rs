//! Observers of elections, on the apply role: each is told the election's leader (the key
//! created first under `NAME/`) when it observes, then each time the leader changes: a new
//! leader, or the leader's proclamation (a put to its key). Etcd's `Observe` does the
//! same with a range read and a watch of the leader's key.
//!
//! The leader is looked at again for each revision whose events touch the prefix, at that
//! revision, so no leader that held for a revision is skipped. An observer whose queue is
//! full misses the changes in between and is told the leader of the moment once it has
//! room again ([`Observers::catch_up`]): what it is owed is a state, not a history, so its
//! memory stays bounded.

use crate::mvcc::{Event, KeyValue, MvccError, RangeRequest, SortOrder, SortTarget, Store};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Where an observer's leaders go.
pub trait LeaderSink {
    /// Queues the leader's key-value as of `revision`; false if the queue is full.
    fn offer(&self, revision: i64, kv: &KeyValue) -> bool;
    /// The observer went away.
    fn is_gone(&self) -> bool;
}

struct Observer<S> {
    /// `NAME/`.
    prefix: Vec<u8>,
    sink: S,
    /// The leader last sent: its key and mod revision.
    last: Option<(Vec<u8>, i64)>,
    /// A leader could not be sent: the next [`Observers::catch_up`] sends the current one.
    behind: bool,
}

/// The observers, by the prefix they observe.
pub struct Observers<S> {
    observers: BTreeMap<u64, Observer<S>>,
    by_prefix: HashMap<Vec<u8>, BTreeSet<u64>>,
    next: u64,
    /// Observers behind.
    behind: usize,
}

impl<S> Default for Observers<S> {
    fn default() -> Self {
        Observers {
            observers: BTreeMap::new(),
            by_prefix: HashMap::new(),
            next: 0,
            behind: 0,
        }
    }
}

impl<S: LeaderSink> Observers<S> {
    pub fn len(&self) -> usize {
        self.observers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.observers.is_empty()
    }

    /// Whether an observer waits for room to be told the current leader.
    pub fn any_behind(&self) -> bool {
        self.behind > 0
    }

    /// A new observer of `prefix`: told the current leader at once, if there is one.
    pub fn add(&mut self, prefix: Vec<u8>, sink: S, store: &Store) -> Result<(), MvccError> {
        let id = self.next;
        self.next += 1;
        self.by_prefix.entry(prefix.clone()).or_default().insert(id);
        let mut o = Observer {
            prefix,
            sink,
            last: None,
            behind: false,
        };
        let leader = leader_at(&o.prefix, store, store.current_revision())?;
        o.tell(leader, store.current_revision());
        self.behind += usize::from(o.behind);
        self.observers.insert(id, o);
        Ok(())
    }

    /// The events of a batch just applied, in revision order: each revision that touched an
    /// observed prefix has its leader looked at, at that revision.
    pub fn on_events(&mut self, events: &[Event], store: &Store) -> Result<(), MvccError> {
        if self.observers.is_empty() {
            return Ok(());
        }
        let mut at = 0;
        while at < events.len() {
            let rev = events[at].kv.mod_revision;
            let end = at
                + events[at..]
                    .iter()
                    .take_while(|e| e.kv.mod_revision == rev)
                    .count();
            let mut touched: BTreeSet<&[u8]> = BTreeSet::new();
            for e in &events[at..end] {
                for (i, b) in e.kv.key.iter().enumerate() {
                    let p = &e.kv.key[..=i];
                    if *b == b'/' && self.by_prefix.contains_key(p) {
                        touched.insert(p);
                    }
                }
            }
            // A revision compacted in the same batch reads as the newest.
            let read_at = if rev <= store.compact_revision() {
                store.current_revision()
            } else {
                rev
            };
            for prefix in touched {
                let leader = leader_at(prefix, store, read_at)?;
                for id in &self.by_prefix[prefix] {
                    if let Some(o) = self.observers.get_mut(id) {
                        if !o.behind {
                            o.tell(leader.clone(), read_at);
                            self.behind += usize::from(o.behind);
                        }
                    }
                }
            }
            at = end;
        }
        Ok(())
    }

    /// Observers that were behind are told the current leader, if it is not the one they
    /// were last told and they have room now.
    pub fn catch_up(&mut self, store: &Store) -> Result<(), MvccError> {
        self.refresh(store, |o| o.behind)
    }

    /// Every observer looks again (after the store was replaced by a snapshot, whose
    /// events were never applied here).
    pub fn recheck_all(&mut self, store: &Store) -> Result<(), MvccError> {
        self.refresh(store, |_| true)
    }

    fn refresh(
        &mut self,
        store: &Store,
        which: impl Fn(&Observer<S>) -> bool,
    ) -> Result<(), MvccError> {
        let rev = store.current_revision();
        let mut leaders: HashMap<Vec<u8>, Option<KeyValue>> = HashMap::new();
        for o in self.observers.values_mut().filter(|o| which(o)) {
            let leader = match leaders.get(&o.prefix) {
                Some(l) => l.clone(),
                None => {
                    let l = leader_at(&o.prefix, store, rev)?;
                    leaders.insert(o.prefix.clone(), l.clone());
                    l
                }
            };
            self.behind -= usize::from(o.behind);
            o.behind = false;
            o.tell(leader, rev);
            self.behind += usize::from(o.behind);
        }
        Ok(())
    }

    /// Forgets the observers that went away.
    pub fn retain_live(&mut self) {
        let gone: Vec<u64> = self
            .observers
            .iter()
            .filter(|(_, o)| o.sink.is_gone())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            let Some(o) = self.observers.remove(&id) else {
                continue;
            };
            self.behind -= usize::from(o.behind);
            if let Some(ids) = self.by_prefix.get_mut(&o.prefix) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.by_prefix.remove(&o.prefix);
                }
            }
        }
    }
}

impl<S: LeaderSink> Observer<S> {
    /// Sends `leader` (as of `revision`) unless it is the one last sent; none is not sent.
    fn tell(&mut self, leader: Option<KeyValue>, revision: i64) {
        let Some(kv) = leader else {
            self.last = None;
            return;
        };
        let id = (kv.key.clone(), kv.mod_revision);
        if self.last.as_ref() == Some(&id) {
            return;
        }
        if self.sink.offer(revision, &kv) {
            self.last = Some(id);
        } else {
            self.behind = true;
        }
    }
}

/// The key created first under `prefix`, at `revision`.
fn leader_at(prefix: &[u8], store: &Store, revision: i64) -> Result<Option<KeyValue>, MvccError> {
    let r = store.range(&RangeRequest {
        key: prefix.to_vec(),
        range_end: crate::cli::prefix_range_end(prefix),
        limit: 1,
        sort_order: SortOrder::Ascend,
        sort_target: SortTarget::Create,
        revision,
        ..RangeRequest::default()
    })?;
    Ok(r.kvs.into_iter().next())
}

#[cfg(test)]
mod tests;
