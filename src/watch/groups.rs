//! Which watchers an event's key matches. Watchers of the same key or range share one
//! group, so the matching work is done once per event and group, not per watcher: single
//! keys are found by a hash lookup; ranges by a stabbing query over the groups' ranges
//! sorted by start, with each position's largest end so far to stop the scan early.

use std::collections::HashMap;

/// A watched range: `end` is exclusive, `None` for every key `>= start`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct WatchRange {
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
    /// A single key (`end` is then `None` and unused).
    pub single: bool,
}

impl WatchRange {
    /// etcd's `key` and `range_end`: empty `range_end` for the key alone, `[0]` for every
    /// key from `key` on.
    pub fn new(key: &[u8], range_end: &[u8]) -> WatchRange {
        match range_end {
            [] => WatchRange {
                start: key.to_vec(),
                end: None,
                single: true,
            },
            [0] => WatchRange {
                start: key.to_vec(),
                end: None,
                single: false,
            },
            end => WatchRange {
                start: key.to_vec(),
                end: Some(end.to_vec()),
                single: false,
            },
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        if self.single {
            return key == self.start.as_slice();
        }
        key >= self.start.as_slice() && self.end.as_deref().is_none_or(|end| key < end)
    }
}

/// Groups of members `M` by the range they watch.
pub(crate) struct Groups<M> {
    single: HashMap<Vec<u8>, Vec<M>>,
    ranges: HashMap<WatchRange, Vec<M>>,
    /// The ranges sorted by start, and the largest end among each prefix (`None` is
    /// unbounded); rebuilt when the set of ranges changed.
    sorted: Vec<(WatchRange, Option<Vec<u8>>)>,
    dirty: bool,
}

impl<M: PartialEq + Copy> Groups<M> {
    pub fn new() -> Groups<M> {
        Groups {
            single: HashMap::new(),
            ranges: HashMap::new(),
            sorted: Vec::new(),
            dirty: false,
        }
    }

    pub fn insert(&mut self, range: &WatchRange, member: M) {
        if range.single {
            self.single
                .entry(range.start.clone())
                .or_default()
                .push(member);
            return;
        }
        let group = self.ranges.entry(range.clone()).or_default();
        if group.is_empty() {
            self.dirty = true;
        }
        group.push(member);
    }

    pub fn remove(&mut self, range: &WatchRange, member: M) {
        if range.single {
            remove_from(&mut self.single, &range.start, member);
        } else if remove_from(&mut self.ranges, range, member) {
            self.dirty = true;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.single.is_empty() && self.ranges.is_empty()
    }

    /// Calls `f` with every member whose range holds `key`.
    pub fn matching(&mut self, key: &[u8], mut f: impl FnMut(M)) {
        if let Some(group) = self.single.get(key) {
            group.iter().for_each(|m| f(*m));
        }
        if self.ranges.is_empty() {
            return;
        }
        if self.dirty {
            self.rebuild();
        }
        // The last range starting at or before the key, then back while some range
        // before might still reach past it.
        let upto = self
            .sorted
            .partition_point(|(r, _)| r.start.as_slice() <= key);
        for (range, reach) in self.sorted[..upto].iter().rev() {
            if reach.as_deref().is_some_and(|reach| reach <= key) {
                break;
            }
            if range.contains(key) {
                if let Some(group) = self.ranges.get(range) {
                    group.iter().for_each(|m| f(*m));
                }
            }
        }
    }

    fn rebuild(&mut self) {
        let mut ranges: Vec<WatchRange> = self.ranges.keys().cloned().collect();
        ranges.sort();
        let mut reach: Option<Option<Vec<u8>>> = None;
        self.sorted = ranges
            .into_iter()
            .map(|r| {
                let end = r.end.clone();
                reach = Some(match (reach.take(), end) {
                    (None, end) => end,
                    (Some(None), _) | (Some(_), None) => None,
                    (Some(Some(a)), Some(b)) => Some(a.max(b)),
                });
                (r, reach.clone().flatten())
            })
            .collect();
        self.dirty = false;
    }
}

/// Removes `member` from its group; true if that emptied (and removed) the group.
fn remove_from<K: std::hash::Hash + Eq, M: PartialEq>(
    groups: &mut HashMap<K, Vec<M>>,
    key: &K,
    member: M,
) -> bool {
    let Some(group) = groups.get_mut(key) else {
        return false;
    };
    group.retain(|m| *m != member);
    if group.is_empty() {
        groups.remove(key);
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(0u8..4, 0..3)
    }

    proptest! {
        /// Every member is found for exactly the keys its range holds, across inserts and
        /// removals.
        #[test]
        fn matching_finds_exactly_the_ranges_holding_the_key(
            ranges in proptest::collection::vec((key(), prop_oneof![Just(vec![]), Just(vec![0]), key()]), 1..20),
            removed in proptest::collection::vec(any::<bool>(), 20),
            probes in proptest::collection::vec(key(), 1..20),
        ) {
            let mut groups = Groups::new();
            let ranges: Vec<WatchRange> = ranges.iter().map(|(k, e)| WatchRange::new(k, e)).collect();
            for (i, r) in ranges.iter().enumerate() {
                groups.insert(r, i);
            }
            for (i, r) in ranges.iter().enumerate() {
                if removed[i] {
                    groups.remove(r, i);
                }
            }
            for probe in &probes {
                let mut found = Vec::new();
                groups.matching(probe, |m| found.push(m));
                found.sort_unstable();
                let want: Vec<usize> = (0..ranges.len())
                    .filter(|&i| !removed[i] && ranges[i].contains(probe))
                    .collect();
                prop_assert_eq!(found, want);
            }
        }
    }
}
