//! Range reads, as etcd 3.4 does them: `storeTxnRead.rangeKeys` (which keys, at which
//! revision, how many) split into an index half ([`select`]) and a tree half ([`fetch`]) so a
//! reader on another thread holds the index lock only for the first, and that a chunk of keys
//! at a time; and `applierV3backend.Range` ([`range`]: filters, sort, limit, `more`,
//! keys_only) on top.

use std::ops::{Bound, ControlFlow};

use crate::btree::{Db, RangeIter, TreeId, View};

use super::error::MvccError;
use super::index_lock::IndexLock;
use super::key_index::{KeyIndex, KeyRange};
use super::record::Record;
use super::revision::Revision;
use super::types::{KeyValue, RangeRequest, RangeResponse, ResponseHeader, SortOrder, SortTarget};

/// The tree holding every revision's record, keyed by revision.
pub(crate) const PRIMARY_TREE: TreeId = 0;

/// Read access to the primary tree: the writer's `Db` (its own uncommitted writes included)
/// or a reader's `View`.
pub(crate) trait PrimaryTree {
    fn record_bytes(&self, rev: Revision) -> Result<Option<Vec<u8>>, MvccError>;
    /// Every entry with a tree key below `hi`, in revision order (or reverse order).
    fn scan_below(&self, hi: &[u8], reverse: bool) -> RangeIter;
}

impl PrimaryTree for Db {
    fn record_bytes(&self, rev: Revision) -> Result<Option<Vec<u8>>, MvccError> {
        Ok(self.get(PRIMARY_TREE, &rev.to_key())?)
    }

    fn scan_below(&self, hi: &[u8], reverse: bool) -> RangeIter {
        self.range(PRIMARY_TREE, Bound::Unbounded, Bound::Excluded(hi), reverse)
    }
}

impl PrimaryTree for View {
    fn record_bytes(&self, rev: Revision) -> Result<Option<Vec<u8>>, MvccError> {
        Ok(self.get(PRIMARY_TREE, &rev.to_key())?)
    }

    fn scan_below(&self, hi: &[u8], reverse: bool) -> RangeIter {
        self.range(PRIMARY_TREE, Bound::Unbounded, Bound::Excluded(hi), reverse)
    }
}

/// etcd's `mvcc.RangeOptions`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RangeOptions {
    /// Keys to return at most; `<= 0` for all.
    pub limit: i64,
    /// Revision to read at; `<= 0` for the current one.
    pub rev: i64,
    /// Count only, fetch nothing.
    pub count: bool,
}

/// etcd's `mvcc.RangeResult`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// Keys in the range at the read revision, before `limit`.
    pub count: i64,
    /// The current revision of the reader (not the read revision), for the response header.
    pub rev: i64,
}

/// Keys one chunk of an index walk visits at most: the longest a Range holds the index's
/// read lock at once, 0.15 to 0.3 ms at the 35 to 67 ns a key measured over 2,000,000 keys
/// (tuning.md). A chunk also ends at the first key walked after a put starts waiting, so a
/// put waits for about one key's walk, not a chunk's.
pub const INDEX_CHUNK_KEYS: usize = 4096;

/// The index half of a range: which revisions to fetch.
#[derive(Default)]
pub(crate) struct Selection {
    revs: Vec<Revision>,
    count: i64,
    current: i64,
}

/// Picks the revisions for a range at `ro.rev` by a reader whose current revision is
/// `current`, walking the index in chunks of [`INDEX_CHUNK_KEYS`], each under its own hold
/// of the read lock and ended early for a waiting put (why the chunks add up to one
/// consistent read: the module doc of [`crate::mvcc`]). A count keeps no revisions, so its
/// memory does not grow with the range.
pub(crate) fn select(
    index: &IndexLock,
    range: KeyRange<'_>,
    current: i64,
    ro: RangeOptions,
) -> Result<Selection, MvccError> {
    select_in_chunks(index, range, current, ro, INDEX_CHUNK_KEYS, || {})
}

/// [`select`] with chunks of `chunk_keys`, calling `between` after every chunk but the last,
/// with the lock released: where tests let the writer work in the middle of a read.
pub(crate) fn select_in_chunks(
    index: &IndexLock,
    range: KeyRange<'_>,
    current: i64,
    ro: RangeOptions,
    chunk_keys: usize,
    mut between: impl FnMut(),
) -> Result<Selection, MvccError> {
    let mut walk = IndexWalk::new(range, current, ro)?;
    loop {
        let held = index.read_after_puts();
        let selection = walk.step(&held, chunk_keys, || index.put_first())?;
        drop(held);
        match selection {
            Some(selection) => return Ok(selection),
            None => between(),
        }
    }
}

/// A range's walk over the index, a chunk at a time: where it is and what it has selected.
struct IndexWalk<'a> {
    range: KeyRange<'a>,
    /// The read revision.
    at: i64,
    ro: RangeOptions,
    /// The last key walked; `None` before the first chunk.
    after: Option<Vec<u8>>,
    selection: Selection,
}

impl<'a> IndexWalk<'a> {
    fn new(
        range: KeyRange<'a>,
        current: i64,
        ro: RangeOptions,
    ) -> Result<IndexWalk<'a>, MvccError> {
        if ro.rev > current {
            return Err(MvccError::FutureRev);
        }
        let at = if ro.rev <= 0 { current } else { ro.rev };
        Ok(IndexWalk {
            range,
            at,
            ro,
            after: None,
            selection: Selection {
                current,
                ..Selection::default()
            },
        })
    }

    /// Walks the next chunk of at most `chunk_keys` keys, ending it after the first key at
    /// which `put_first` says so; returns the selection once the range is done.
    fn step(
        &mut self,
        index: &KeyIndex,
        chunk_keys: usize,
        put_first: impl Fn() -> bool,
    ) -> Result<Option<Selection>, MvccError> {
        // Checked at every chunk, as a read starting now would be. Equal to the compaction
        // revision is still readable: compaction keeps what `at` needs.
        if self.at < index.compact_revision() {
            return Err(MvccError::Compacted);
        }
        let (at, ro) = (self.at, self.ro);
        let Selection { revs, count, .. } = &mut self.selection;
        let last = index.scan_from(self.range, self.after.as_deref(), chunk_keys, |_, entry| {
            if let Some(rev) = entry.live_at(at) {
                // etcd's `treeIndex.Revisions`: the first `limit` (all if `<= 0`) revisions,
                // none for a count; `count` counts every visible key.
                if !ro.count && (ro.limit <= 0 || (revs.len() as i64) < ro.limit) {
                    revs.push(rev);
                }
                *count += 1;
            }
            // Two relaxed loads, of lines written only when a put comes: cheap next to the walk.
            if put_first() {
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        });
        debug_assert!(
            last.is_none() || last > self.after,
            "each chunk moves forward"
        );
        self.after = last;
        Ok(self
            .after
            .is_none()
            .then(|| std::mem::take(&mut self.selection)))
    }
}

/// The tree half of a range: reads the selected records.
pub(crate) fn fetch(
    tree: &impl PrimaryTree,
    selection: Selection,
) -> Result<RangeResult, MvccError> {
    let mut kvs = Vec::with_capacity(selection.revs.len());
    for rev in selection.revs {
        let bytes = tree
            .record_bytes(rev)?
            .ok_or(MvccError::MissingRevision(rev))?;
        let record = Record::decode(&bytes, rev)?;
        if record.tombstone {
            return Err(MvccError::CorruptRecord {
                rev,
                reason: "index points at a tombstone",
            });
        }
        kvs.push(record.to_key_value(rev.main));
    }
    Ok(RangeResult {
        kvs,
        count: selection.count,
        rev: selection.current,
    })
}

/// etcd 3.4's `applierV3backend.Range` over any `rangeKeys`.
pub(crate) fn range(
    r: &RangeRequest,
    range_keys: impl FnOnce(KeyRange<'_>, RangeOptions) -> Result<RangeResult, MvccError>,
) -> Result<RangeResponse, MvccError> {
    let filtered = r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0;
    let mut limit = r.limit;
    if r.sort_order != SortOrder::None || filtered {
        // Sorting and filtering need every key; truncate afterwards.
        limit = 0;
    }
    if limit > 0 {
        // One extra key tells whether there are more.
        limit = limit.saturating_add(1);
    }
    let ro = RangeOptions {
        limit,
        rev: r.revision,
        count: r.count_only,
    };
    let rr = range_keys(KeyRange::new(&r.key, &r.range_end), ro)?;
    let mut kvs = rr.kvs;
    prune(&mut kvs, r);
    sort(&mut kvs, r.sort_order, r.sort_target);
    let more = r.limit > 0 && kvs.len() as i64 > r.limit;
    if more {
        kvs.truncate(r.limit as usize);
    }
    if r.keys_only {
        kvs.iter_mut().for_each(|kv| kv.value = Vec::new());
    }
    Ok(RangeResponse {
        header: ResponseHeader { revision: rr.rev },
        kvs,
        more,
        count: rr.count,
    })
}

/// The min/max revision filters; 0 leaves a bound unset.
fn prune(kvs: &mut Vec<KeyValue>, r: &RangeRequest) {
    let keep = |v: i64, min: i64, max: i64| (max == 0 || v <= max) && (min == 0 || v >= min);
    kvs.retain(|kv| {
        keep(kv.mod_revision, r.min_mod_revision, r.max_mod_revision)
            && keep(
                kv.create_revision,
                r.min_create_revision,
                r.max_create_revision,
            )
    });
}

/// Sorts as etcd does. A target other than KEY with order NONE means ASCEND (results already
/// come in key order). The sort is stable: etcd's `sort.Sort` is not, but for up to 12 keys it
/// is an insertion sort, which keeps ties in key order as this does.
fn sort(kvs: &mut [KeyValue], order: SortOrder, target: SortTarget) {
    let order = match (order, target) {
        (SortOrder::None, SortTarget::Key) => return,
        (SortOrder::None, _) => SortOrder::Ascend,
        (order, _) => order,
    };
    let cmp = |a: &KeyValue, b: &KeyValue| match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    };
    match order {
        SortOrder::Descend => kvs.sort_by(|a, b| cmp(b, a)),
        _ => kvs.sort_by(cmp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys "a".."j", each put once at revisions 2..=11.
    fn ten_keys() -> KeyIndex {
        let mut index = KeyIndex::new(-1);
        for (i, k) in (b'a'..=b'j').enumerate() {
            let main = i as i64 + 2;
            index.put(&[k], Revision::new(main, 0), main, 1);
        }
        index
    }

    fn walk(index: &KeyIndex, ro: RangeOptions, put_first: bool) -> (Selection, usize) {
        let mut walk = IndexWalk::new(KeyRange::FromKey(b"a"), 11, ro).unwrap();
        for chunks in 1..=100 {
            if let Some(selection) = walk.step(index, INDEX_CHUNK_KEYS, || put_first).unwrap() {
                return (selection, chunks);
            }
        }
        panic!("the walk did not end");
    }

    #[test]
    fn a_waiting_put_ends_each_chunk_after_one_key_and_the_result_stays() {
        let index = ten_keys();
        for ro in [
            RangeOptions::default(),
            RangeOptions {
                limit: 3,
                rev: 7,
                count: false,
            },
            RangeOptions {
                count: true,
                ..RangeOptions::default()
            },
        ] {
            let (whole, chunks) = walk(&index, ro, false);
            assert_eq!(chunks, 1);
            let (yielding, chunks) = walk(&index, ro, true);
            assert_eq!(chunks, 10, "one key per chunk while a put waits");
            assert_eq!(yielding.revs, whole.revs, "{ro:?}");
            assert_eq!(yielding.count, whole.count, "{ro:?}");
        }
        let (counted, _) = walk(
            &index,
            RangeOptions {
                count: true,
                ..RangeOptions::default()
            },
            false,
        );
        assert!(counted.revs.is_empty(), "a count keeps no revisions");
        assert_eq!(counted.count, 10);
    }
}
