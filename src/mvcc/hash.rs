//! HashKV: a checksum of the key-value history at a revision, compared across members to
//! detect divergence (etcd's `store.HashByRev`).
//!
//! The hash is CRC32C over every revision `<= rev` that compaction keeps, in revision order,
//! each fed as its 12-byte tree key followed by its record bytes. Compaction runs inside apply
//! at the same log position on every member, so members at the same applied index keep the
//! same revisions and agree, however far each has got with deleting compacted records; members with different compaction revisions may not, which is why the response
//! carries the compaction revision (etcd's corruption check compares only equal ones).
//!
//! The bytes differ from etcd's (its records are protobufs), so the values are comparable only
//! between cairn members. For the same reason the hash covers every kept revision, including
//! a tombstone at exactly the compaction revision, which etcd leaves out only so that its
//! releases from before and after keeping that tombstone agree.

use std::collections::HashSet;

use super::error::MvccError;
use super::range::PrimaryTree;
use super::record::Record;
use super::revision::Revision;
use super::types::{HashKvResponse, ResponseHeader};

/// Hashes `tree` at `rev` (0 for `current`); `current` and `compact` are the revisions of the
/// store the tree belongs to.
pub(crate) fn hash_kv(
    tree: &impl PrimaryTree,
    rev: i64,
    current: i64,
    compact: i64,
) -> Result<HashKvResponse, MvccError> {
    if rev > 0 && rev < compact {
        return Err(MvccError::Compacted);
    }
    if rev > current {
        return Err(MvccError::FutureRev);
    }
    let rev = if rev == 0 { current } else { rev };
    let mut hash = 0u32;
    // A negative revision hashes nothing, as etcd's (which then covers only its bucket name).
    if rev >= 0 {
        let kept = kept_by_compaction(tree, compact.min(rev))?;
        let below = Revision::new(rev + 1, 0).to_key();
        for entry in tree.scan_below(&below, false) {
            let (key, value) = entry?;
            let r = Revision::from_key(&key)?;
            if r.main <= compact && kept.binary_search(&r).is_err() {
                continue;
            }
            hash = crc32c::crc32c_append(hash, &key);
            hash = crc32c::crc32c_append(hash, &value);
        }
    }
    Ok(HashKvResponse {
        header: ResponseHeader { revision: current },
        hash,
        compact_revision: compact,
    })
}

/// The revisions at or below `compact` that compaction keeps (ascending): per key the
/// newest one, unless it is a tombstone older than `compact`. Records the store has yet to
/// delete after a compaction (its backlog) are not among them, so the hash does not depend
/// on how far those deletions have got.
fn kept_by_compaction(tree: &impl PrimaryTree, compact: i64) -> Result<Vec<Revision>, MvccError> {
    let mut kept = Vec::new();
    if compact < 0 {
        return Ok(kept);
    }
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let below = Revision::new(compact + 1, 0).to_key();
    for entry in tree.scan_below(&below, true) {
        let (key, value) = entry?;
        let rev = Revision::from_key(&key)?;
        let record = Record::decode(&value, rev)?;
        if seen.insert(record.key.to_vec()) && !(record.tombstone && rev.main < compact) {
            kept.push(rev);
        }
    }
    kept.reverse();
    Ok(kept)
}
