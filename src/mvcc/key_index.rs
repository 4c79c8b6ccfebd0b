//! The in-memory key index: user key -> every stored revision of that key (etcd's `treeIndex`).
//!
//! The primary tree is ordered by revision, so finding "key K at revision R" needs this index.
//! It is sized for millions of keys: a [`CompactKey`] keeps keys of up to 23 bytes inline (no
//! heap allocation) in 24 bytes, and a [`KeyEntry`] keeps the newest revision inline and older
//! ones (rare once the store is compacted) behind one pointer, 40 bytes in all. With the
//! `BTreeMap`'s nodes that measures 67.6 bytes per key when built in bulk on open, and about
//! 100 when grown by random puts, which leave nodes partly empty (`tests/memory.rs`).
//!
//! etcd splits a key's revisions into generations ended by tombstones; here they are one
//! ascending list where a tombstone flag ends a generation. The rules are the same:
//! - the key is visible at revision R iff its newest revision with `main <= R` is not a
//!   tombstone (revisions of one transaction share `main`; the higher `sub` wins);
//! - compacting at C keeps, per key, the newest revision with `main <= C` and everything after
//!   it, except that a tombstone older than C is dropped with everything before it (a
//!   tombstone exactly at C is kept, as etcd 3.4.34+ does, so watchers can still see it).

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::{Bound, ControlFlow};

use super::error::MvccError;
use super::revision::Revision;

/// Longest key stored inline.
const INLINE_KEY_BYTES_MAX: usize = 23;

/// The length of an inline key. An enum rather than a `u8` so that its unused values give the
/// compiler a niche to tell inline and heap keys apart without a separate tag byte.
#[rustfmt::skip]
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum InlineLen {
    L0, L1, L2, L3, L4, L5, L6, L7, L8, L9, L10, L11,
    L12, L13, L14, L15, L16, L17, L18, L19, L20, L21, L22, L23,
}

#[rustfmt::skip]
const INLINE_LENS: [InlineLen; INLINE_KEY_BYTES_MAX + 1] = {
    use InlineLen::*;
    [L0, L1, L2, L3, L4, L5, L6, L7, L8, L9, L10, L11,
     L12, L13, L14, L15, L16, L17, L18, L19, L20, L21, L22, L23]
};

#[derive(Clone)]
enum KeyRepr {
    Inline {
        len: InlineLen,
        bytes: [u8; INLINE_KEY_BYTES_MAX],
    },
    Heap(Box<[u8]>),
}

/// A user key in 24 bytes: inline up to 23 bytes, boxed beyond. Ordered by its bytes.
#[derive(Clone)]
pub(crate) struct CompactKey(KeyRepr);

impl CompactKey {
    pub fn new(key: &[u8]) -> CompactKey {
        match INLINE_LENS.get(key.len()) {
            Some(&len) => {
                let mut bytes = [0u8; INLINE_KEY_BYTES_MAX];
                bytes[..key.len()].copy_from_slice(key);
                CompactKey(KeyRepr::Inline { len, bytes })
            }
            None => CompactKey(KeyRepr::Heap(key.into())),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            KeyRepr::Inline { len, bytes } => &bytes[..*len as usize],
            KeyRepr::Heap(bytes) => bytes,
        }
    }
}

impl PartialEq for CompactKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for CompactKey {}

impl PartialOrd for CompactKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for CompactKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

// Sound because Eq and Ord above are exactly those of the borrowed bytes.
impl Borrow<[u8]> for CompactKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl fmt::Debug for CompactKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// A revision in the index; flattened (not a `Revision` plus a flag) to stay 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexRev {
    pub main: i64,
    pub sub: u32,
    pub tombstone: bool,
}

impl IndexRev {
    pub fn new(rev: Revision, tombstone: bool) -> IndexRev {
        IndexRev {
            main: rev.main,
            sub: rev.sub,
            tombstone,
        }
    }

    pub fn revision(self) -> Revision {
        Revision::new(self.main, self.sub)
    }
}

/// Every stored revision of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyEntry {
    latest: IndexRev,
    /// Revisions before `latest`, ascending; `None` when there are none, which is the common
    /// case after a compaction, so most keys cost no allocation here. A boxed `Vec` is a thin
    /// pointer: 8 bytes in the entry where a `Box<[_]>` or a `Vec` would take 16 or 24.
    #[allow(clippy::box_collection)]
    older: Option<Box<Vec<IndexRev>>>,
    /// create_revision and version of the live generation, kept so a put needs no tree read;
    /// both 0 when `latest` is a tombstone.
    created: i64,
    version: i64,
}

impl KeyEntry {
    fn new(rev: IndexRev, created: i64, version: i64) -> KeyEntry {
        KeyEntry {
            latest: rev,
            older: None,
            created,
            version,
        }
    }

    fn push(&mut self, rev: IndexRev, created: i64, version: i64) {
        assert!(
            (rev.main, rev.sub) > (self.latest.main, self.latest.sub),
            "revisions of a key must grow"
        );
        let previous = std::mem::replace(&mut self.latest, rev);
        self.older
            .get_or_insert_with(Default::default)
            .push(previous);
        self.created = created;
        self.version = version;
    }

    /// The newest revision with `main <= at`.
    fn at(&self, at: i64) -> Option<IndexRev> {
        if self.latest.main <= at {
            return Some(self.latest);
        }
        let older = self.older.as_deref()?;
        let n = older.partition_point(|r| r.main <= at);
        n.checked_sub(1).map(|i| older[i])
    }

    /// The revision holding the key's value at `at`, if the key exists then.
    pub fn live_at(&self, at: i64) -> Option<Revision> {
        self.at(at).filter(|r| !r.tombstone).map(IndexRev::revision)
    }

    /// Applies compaction at `at`, appending the revisions it drops to `dropped`. Returns
    /// whether anything of the key is left.
    fn compact(&mut self, at: i64, dropped: &mut Vec<Revision>) -> bool {
        let older = self.older.as_deref().map_or(&[][..], Vec::as_slice);
        // Position, in `older` then `latest`, of the newest revision at or before `at`.
        let newest_le = if self.latest.main <= at {
            older.len()
        } else {
            match older.partition_point(|r| r.main <= at) {
                0 => return true,
                n => n - 1,
            }
        };
        let pivot = older.get(newest_le).copied().unwrap_or(self.latest);
        let first_kept = newest_le + usize::from(pivot.tombstone && pivot.main < at);
        let all = older.iter().chain([&self.latest]);
        dropped.extend(all.take(first_kept).map(|r| r.revision()));
        if first_kept > older.len() {
            // Even `latest`, an old tombstone, went: nothing is left of the key.
            return false;
        }
        let kept = &older[first_kept..];
        self.older = (!kept.is_empty()).then(|| Box::new(kept.to_vec()));
        true
    }
}

type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// Which keys a request covers, decoded from etcd's `(key, range_end)` convention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyRange<'a> {
    /// `range_end` empty: just `key`.
    Single(&'a [u8]),
    /// `range_end == [0]`: every key `>= key` (etcd's `mkGteRange`).
    FromKey(&'a [u8]),
    /// `[key, range_end)`; empty when `range_end <= key`.
    Between(&'a [u8], &'a [u8]),
}

impl<'a> KeyRange<'a> {
    pub fn new(key: &'a [u8], range_end: &'a [u8]) -> KeyRange<'a> {
        match range_end {
            [] => KeyRange::Single(key),
            [0] => KeyRange::FromKey(key),
            end => KeyRange::Between(key, end),
        }
    }

    /// Bounds for `BTreeMap::range`, or `None` for an empty range (which `range` would reject).
    fn bounds(self) -> Option<KeyBounds<'a>> {
        match self {
            KeyRange::Single(k) => Some((Bound::Included(k), Bound::Included(k))),
            KeyRange::FromKey(k) => Some((Bound::Included(k), Bound::Unbounded)),
            KeyRange::Between(k, end) if k < end => {
                Some((Bound::Included(k), Bound::Excluded(end)))
            }
            KeyRange::Between(..) => None,
        }
    }

    /// Bounds of the keys of this range that sort after `after` (all of them if `None`), or
    /// `None` if there are none. `after` may lie anywhere, in the range or not.
    fn bounds_after(self, after: Option<&'a [u8]>) -> Option<KeyBounds<'a>> {
        let (start, end) = self.bounds()?;
        let Some(after) = after else {
            return Some((start, end));
        };
        // Checked here because `BTreeMap::range` panics on a start past the end.
        let past_end = match end {
            Bound::Included(e) | Bound::Excluded(e) => after >= e,
            Bound::Unbounded => false,
        };
        if past_end {
            return None;
        }
        let start = match start {
            Bound::Included(s) if s > after => start,
            _ => Bound::Excluded(after),
        };
        Some((start, end))
    }
}

/// The key index plus the compaction revision it reflects. Both live under one lock so a
/// reader checks compaction and reads the index atomically.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct KeyIndex {
    keys: BTreeMap<CompactKey, KeyEntry>,
    compact_revision: i64,
}

impl KeyIndex {
    #[cfg(test)]
    pub fn new(compact_revision: i64) -> KeyIndex {
        KeyIndex {
            keys: BTreeMap::new(),
            compact_revision,
        }
    }

    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    /// Number of keys with at least one stored revision (live or tombstoned).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// One chunk of a walk over `range`, the unit a caller does under one hold of the lock:
    /// calls `f` with each key that sorts after `after` (from the range's start if `None`),
    /// in key order, with its entry, until `f` breaks or `max_keys` keys were visited.
    /// Returns the last key visited if keys of the range are left after it, to pass as
    /// `after` to the next chunk; `None` once the range is done. Resuming by key rather
    /// than by position stays exact whatever keys were added or removed in between.
    pub fn scan_from(
        &self,
        range: KeyRange<'_>,
        after: Option<&[u8]>,
        max_keys: usize,
        mut f: impl FnMut(&[u8], &KeyEntry) -> ControlFlow<()>,
    ) -> Option<Vec<u8>> {
        assert!(max_keys > 0, "a chunk visits at least one key");
        let bounds = range.bounds_after(after)?;
        let mut keys = self.keys.range::<[u8], _>(bounds);
        let mut visited = 0;
        while let Some((key, entry)) = keys.next() {
            visited += 1;
            if f(key.as_bytes(), entry).is_break() || visited == max_keys {
                return keys.next().is_some().then(|| key.as_bytes().to_vec());
            }
        }
        None
    }

    /// Calls `f` with each key visible at `at` in `range`, in key order, with the revision
    /// holding its value. One walk: for the writer's own thread, which no lock hold delays.
    pub fn visit(&self, range: KeyRange<'_>, at: i64, mut f: impl FnMut(&[u8], Revision)) {
        self.scan_from(range, None, usize::MAX, |key, entry| {
            if let Some(rev) = entry.live_at(at) {
                f(key, rev);
            }
            ControlFlow::Continue(())
        });
    }

    /// The keys visible at `at` in `range`.
    pub fn live_keys(&self, range: KeyRange<'_>, at: i64) -> Vec<Vec<u8>> {
        let mut keys = Vec::new();
        self.visit(range, at, |key, _| keys.push(key.to_vec()));
        keys
    }

    /// (create_revision, version) of the key's live generation, if the key exists now.
    pub fn live_generation(&self, key: &[u8]) -> Option<(i64, i64)> {
        let entry = self.keys.get(key).filter(|e| !e.latest.tombstone)?;
        Some((entry.created, entry.version))
    }

    /// (create_revision, version) that a put of `key` at revision `main` records.
    #[cfg(test)]
    pub fn next_put(&self, key: &[u8], main: i64) -> (i64, i64) {
        next_generation(self.live_generation(key), main)
    }

    /// Records a put through [`KeyIndex::put_with`]; `created` and `version` must be what
    /// [`KeyIndex::next_put`] says.
    #[cfg(test)]
    pub fn put(&mut self, key: &[u8], rev: Revision, created: i64, version: i64) {
        let result = self.put_with(key, rev, |c, v| {
            assert_eq!(
                (c, v),
                (created, version),
                "the generation put_with computes"
            );
            Ok::<(), ()>(())
        });
        assert!(result.is_ok());
    }

    /// A put of `key` at `rev` with one search of the map for a key it holds: `write` gets
    /// the (create_revision, version) the put records and stores the record; only if it
    /// succeeds does the index take the revision. Returns the key's live generation before
    /// the put, for [`KeyIndex::undo`].
    pub fn put_with<E>(
        &mut self,
        key: &[u8],
        rev: Revision,
        write: impl FnOnce(i64, i64) -> Result<(), E>,
    ) -> Result<Option<(i64, i64)>, E> {
        let irev = IndexRev::new(rev, false);
        if let Some(entry) = self.keys.get_mut(key) {
            let before = (!entry.latest.tombstone).then_some((entry.created, entry.version));
            let (created, version) = next_generation(before, rev.main);
            write(created, version)?;
            entry.push(irev, created, version);
            return Ok(before);
        }
        let (created, version) = next_generation(None, rev.main);
        write(created, version)?;
        self.keys
            .insert(CompactKey::new(key), KeyEntry::new(irev, created, version));
        Ok(None)
    }

    /// Records a delete of a key that is live.
    pub fn tombstone(&mut self, key: &[u8], rev: Revision) {
        let entry = self.keys.get_mut(key).filter(|e| !e.latest.tombstone);
        let entry = entry.expect("tombstone of a key that is not live");
        entry.push(IndexRev::new(rev, true), 0, 0);
    }

    /// Reverts the newest change of `key`, which must be `rev`; `before` is what
    /// [`KeyIndex::live_generation`] returned before that change.
    pub fn undo(&mut self, key: &[u8], rev: Revision, before: Option<(i64, i64)>) {
        let entry = self
            .keys
            .get_mut(key)
            .expect("undo of a key the index does not hold");
        assert_eq!(entry.latest.revision(), rev, "undo must go newest first");
        let Some(previous) = entry.older.as_mut().and_then(|older| older.pop()) else {
            self.keys.remove(key);
            return;
        };
        entry.latest = previous;
        if entry.older.as_ref().is_some_and(|older| older.is_empty()) {
            entry.older = None;
        }
        (entry.created, entry.version) = before.unwrap_or((0, 0));
    }

    /// Compacts every key at `at` (see the module doc) and returns the revisions to delete
    /// from the tree, ascending.
    pub fn compact(&mut self, at: i64) -> Vec<Revision> {
        self.begin_compact(at);
        let mut dropped = Vec::new();
        let mut after = None;
        loop {
            after = self.compact_chunk(after.as_deref(), usize::MAX, &mut dropped);
            if after.is_none() {
                break;
            }
        }
        dropped.sort_unstable();
        dropped
    }

    /// Starts a compaction at `at` done in chunks ([`KeyIndex::compact_chunk`]): reads below
    /// `at` fail from now on, and reads at or above it find the same whether a key is
    /// compacted yet or not (compaction only drops what no such read reaches).
    pub fn begin_compact(&mut self, at: i64) {
        assert!(at > self.compact_revision, "compaction must move forward");
        self.compact_revision = at;
    }

    /// Compacts, at the compaction revision, up to `max_keys` keys after `after` (from the
    /// first key if `None`), in key order; adds the revisions dropped to `dropped`. Returns
    /// the last key compacted if keys are left after it, to pass as `after` next; `None`
    /// once every key is. Keys put in between are compacted when the walk reaches them;
    /// compacting a key twice at one revision changes nothing.
    pub fn compact_chunk(
        &mut self,
        after: Option<&[u8]>,
        max_keys: usize,
        dropped: &mut Vec<Revision>,
    ) -> Option<Vec<u8>> {
        assert!(max_keys > 0, "a chunk compacts at least one key");
        let at = self.compact_revision;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut keys = self.keys.range_mut::<[u8], _>((start, Bound::Unbounded));
        let mut emptied = Vec::new();
        let mut resume = None;
        let mut visited = 0;
        while let Some((key, entry)) = keys.next() {
            if !entry.compact(at, dropped) {
                emptied.push(key.as_bytes().to_vec());
            }
            visited += 1;
            if visited == max_keys {
                if keys.next().is_some() {
                    resume = Some(key.as_bytes().to_vec());
                }
                break;
            }
        }
        for key in emptied {
            self.keys.remove(key.as_slice());
        }
        resume
    }
}

/// (create_revision, version) of a put at revision `main` of a key whose live generation,
/// if any, is `live` (as [`KeyIndex::live_generation`] returns it).
pub(crate) fn next_generation(live: Option<(i64, i64)>, main: i64) -> (i64, i64) {
    match live {
        Some((created, version)) => (created, version + 1),
        None => (main, 1),
    }
}

/// Builds a [`KeyIndex`] from the primary tree scanned in revision order: collect, sort by
/// key and revision, merge each key's revisions, then bulk-build the map, which fills its
/// nodes completely (inserting one by one would leave them about half full).
pub(crate) struct KeyIndexBuilder {
    entries: Vec<(CompactKey, KeyEntry)>,
    last: Option<Revision>,
}

impl KeyIndexBuilder {
    pub fn new() -> KeyIndexBuilder {
        KeyIndexBuilder {
            entries: Vec::new(),
            last: None,
        }
    }

    /// Adds the record stored at `rev`; revisions must come in increasing order.
    pub fn push(
        &mut self,
        key: &[u8],
        rev: Revision,
        tombstone: bool,
        created: i64,
        version: i64,
    ) -> Result<(), MvccError> {
        if self.last.is_some_and(|last| last >= rev) {
            return Err(MvccError::CorruptRecord {
                rev,
                reason: "tree keys out of order",
            });
        }
        self.last = Some(rev);
        let entry = KeyEntry::new(IndexRev::new(rev, tombstone), created, version);
        self.entries.push((CompactKey::new(key), entry));
        Ok(())
    }

    /// The newest revision pushed.
    pub fn last_revision(&self) -> Option<Revision> {
        self.last
    }

    pub fn finish(mut self, compact_revision: i64) -> KeyIndex {
        // By key, then revision: unstable sort is faster and needs no scratch buffer.
        let rev = |e: &KeyEntry| (e.latest.main, e.latest.sub);
        self.entries
            .sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| rev(&a.1).cmp(&rev(&b.1))));
        // dedup_by hands (later, earlier); fold each later revision into the earlier entry.
        self.entries.dedup_by(|(later_key, later), (key, entry)| {
            if later_key != key {
                return false;
            }
            entry.push(later.latest, later.created, later.version);
            true
        });
        KeyIndex {
            keys: self.entries.into_iter().collect(),
            compact_revision,
        }
    }
}

#[cfg(test)]
mod tests;
