//! The contenders waiting to hold, on the apply role: each waits for the deletion of the
//! keys just before its own; when one is deleted, it looks again (in the store, at the
//! revision just applied) and either holds or waits for the keys now before it.

use super::KEY_GONE;
use crate::mvcc::{Event, EventType, MvccError, RangeRequest, SortOrder, SortTarget, Store};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A contender that has put its key and waits to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockWait {
    /// `NAME/`.
    pub prefix: Vec<u8>,
    /// Its own key.
    pub key: Vec<u8>,
    /// Its key's create revision.
    pub rev: i64,
    /// Holders at once: 1 for a lock or an election.
    pub limit: u32,
}

struct Waiting<R> {
    wait: LockWait,
    reply: R,
    /// The keys before its own it waits on.
    blockers: Vec<Vec<u8>>,
}

/// Contenders waiting, by the keys whose deletion they wait for. `R` answers one.
pub struct Waiters<R> {
    waiting: BTreeMap<u64, Waiting<R>>,
    by_key: HashMap<Vec<u8>, BTreeSet<u64>>,
    next: u64,
}

/// What a contender is told: it holds (with the store's revision then), or why it never
/// will.
pub type Outcome = Result<i64, String>;

impl<R> Default for Waiters<R> {
    fn default() -> Self {
        Waiters {
            waiting: BTreeMap::new(),
            by_key: HashMap::new(),
            next: 0,
        }
    }
}

impl<R> Waiters<R> {
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// A new contender: answered at once if it holds (or its key is gone), else kept.
    pub fn add(
        &mut self,
        wait: LockWait,
        reply: R,
        store: &Store,
    ) -> Result<Option<(R, Outcome)>, MvccError> {
        match blockers(&wait, store)? {
            Look::Holds => Ok(Some((reply, Ok(store.current_revision())))),
            Look::Gone => Ok(Some((reply, Err(KEY_GONE.to_string())))),
            Look::Blocked(keys) => {
                self.park(wait, reply, keys);
                Ok(None)
            }
        }
    }

    fn park(&mut self, wait: LockWait, reply: R, blockers: Vec<Vec<u8>>) {
        let id = self.next;
        self.next += 1;
        for k in &blockers {
            self.by_key.entry(k.clone()).or_default().insert(id);
        }
        // Its own key's deletion ends its wait too.
        self.by_key.entry(wait.key.clone()).or_default().insert(id);
        self.waiting.insert(
            id,
            Waiting {
                wait,
                reply,
                blockers,
            },
        );
    }

    /// The events of a batch just applied: contenders whose blockers (or own keys) were
    /// deleted look again; those that hold now, or never will, are answered.
    pub fn on_events(
        &mut self,
        events: &[Event],
        store: &Store,
    ) -> Result<Vec<(R, Outcome)>, MvccError> {
        let mut woken = BTreeSet::new();
        for e in events {
            if e.kind == EventType::Delete {
                if let Some(ids) = self.by_key.remove(&e.kv.key) {
                    woken.extend(ids);
                }
            }
        }
        let mut answers = Vec::new();
        for id in woken {
            let Some(w) = self.unpark(id) else {
                continue;
            };
            match blockers(&w.wait, store)? {
                Look::Holds => answers.push((w.reply, Ok(store.current_revision()))),
                Look::Gone => answers.push((w.reply, Err(KEY_GONE.to_string()))),
                Look::Blocked(keys) => self.park(w.wait, w.reply, keys),
            }
        }
        Ok(answers)
    }

    /// Every contender looks again (after the store was replaced by a snapshot, whose
    /// deletions were never applied here).
    pub fn recheck_all(&mut self, store: &Store) -> Result<Vec<(R, Outcome)>, MvccError> {
        let all = std::mem::take(&mut self.waiting);
        self.by_key.clear();
        let mut answers = Vec::new();
        for (_, w) in all {
            answers.extend(self.add(w.wait, w.reply, store)?);
        }
        Ok(answers)
    }

    /// Forgets contenders whose callers are gone (`live` says which are not).
    pub fn retain(&mut self, mut live: impl FnMut(&R) -> bool) {
        let dead: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, w)| !live(&w.reply))
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.unpark(id);
        }
    }

    /// Takes a contender out, and out of the keys it waited on.
    fn unpark(&mut self, id: u64) -> Option<Waiting<R>> {
        let w = self.waiting.remove(&id)?;
        for k in w.blockers.iter().chain(std::iter::once(&w.wait.key)) {
            if let Some(ids) = self.by_key.get_mut(k) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.by_key.remove(k);
                }
            }
        }
        Some(w)
    }
}

enum Look {
    Holds,
    Gone,
    Blocked(Vec<Vec<u8>>),
}

/// Where a contender stands now: its key gone, holding (fewer than `limit` keys created
/// before its own), or blocked by the `limit` keys just before its own.
fn blockers(wait: &LockWait, store: &Store) -> Result<Look, MvccError> {
    let own = store.range(&RangeRequest {
        key: wait.key.clone(),
        ..RangeRequest::default()
    })?;
    if own.kvs.first().map(|kv| kv.create_revision) != Some(wait.rev) {
        return Ok(Look::Gone);
    }
    let before = store.range(&RangeRequest {
        key: wait.prefix.clone(),
        range_end: crate::cli::prefix_range_end(&wait.prefix),
        limit: i64::from(wait.limit.max(1)),
        sort_order: SortOrder::Descend,
        sort_target: SortTarget::Create,
        max_create_revision: wait.rev - 1,
        keys_only: true,
        ..RangeRequest::default()
    })?;
    if before.kvs.len() < wait.limit.max(1) as usize {
        return Ok(Look::Holds);
    }
    Ok(Look::Blocked(
        before.kvs.into_iter().map(|kv| kv.key).collect(),
    ))
}

#[cfg(test)]
mod tests;
