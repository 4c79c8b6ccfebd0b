//! [`ReadView`]: a read handle other threads use to serve Range and HashKV without the writer.
//! Why its answers are consistent is argued in the module doc of [`crate::mvcc`].

use std::sync::Arc;

use crate::btree::View;

use super::error::MvccError;
use super::hash;
use super::index_lock::IndexLock;
use super::key_index::KeyRange;
use super::range::{self, RangeOptions, RangeResult};
use super::txn::check_range;
use super::types::{HashKvResponse, RangeRequest, RangeResponse};

/// The store as published at one revision: `Send + Sync + Clone`, cheap to create and to hold.
#[derive(Clone)]
pub struct ReadView {
    view: View,
    revision: i64,
    compact_revision: i64,
    index: Arc<IndexLock>,
}

impl ReadView {
    pub(crate) fn new(
        view: View,
        revision: i64,
        compact_revision: i64,
        index: Arc<IndexLock>,
    ) -> ReadView {
        ReadView {
            view,
            revision,
            compact_revision,
            index,
        }
    }

    /// The revision this view was published at; reads see exactly the writes up to it.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// A Range at any revision up to [`ReadView::revision`] (0 for that one). Fails with
    /// "compacted" if the store has been compacted past the requested revision since, even
    /// after this view was published, as etcd checks against the current compaction.
    pub fn range(&self, r: &RangeRequest) -> Result<RangeResponse, MvccError> {
        check_range(r)?;
        range::range(r, |keys, ro| self.range_keys(keys, ro))
    }

    fn range_keys(&self, keys: KeyRange<'_>, ro: RangeOptions) -> Result<RangeResult, MvccError> {
        // The lock is held for the index walk only, a chunk at a time; records come from the
        // immutable view.
        let selection = range::select(&self.index, keys, self.revision, ro)?;
        range::fetch(&self.view, selection)
    }

    /// [`ReadView::range`] walking the index `chunk_keys` keys at a time, calling `between`
    /// between chunks with the lock released.
    #[cfg(test)]
    pub(crate) fn range_in_chunks(
        &self,
        r: &RangeRequest,
        chunk_keys: usize,
        mut between: impl FnMut(),
    ) -> Result<RangeResponse, MvccError> {
        check_range(r)?;
        range::range(r, |keys, ro| {
            let selection = range::select_in_chunks(
                &self.index,
                keys,
                self.revision,
                ro,
                chunk_keys,
                &mut between,
            )?;
            range::fetch(&self.view, selection)
        })
    }

    /// HashKV at `rev` (0 for [`ReadView::revision`]) over this view's tree, with the
    /// compaction revision the view was published with.
    pub fn hash_kv(&self, rev: i64) -> Result<HashKvResponse, MvccError> {
        hash::hash_kv(&self.view, rev, self.revision, self.compact_revision)
    }
}
