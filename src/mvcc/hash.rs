//! HashKV: a checksum of the key-value history at a revision, compared across members to
//! detect divergence (etcd's `store.HashByRev`).
//!
//! The hash is CRC32C over every stored revision `<= rev`, in revision order, each fed as its
//! 12-byte tree key followed by its record bytes. Compaction runs inside apply at the same log
//! position on every member, so members at the same applied index store the same revisions
//! and agree; members with different compaction revisions may not, which is why the response
//! carries the compaction revision (etcd's corruption check compares only equal ones).
//!
//! The bytes differ from etcd's (its records are protobufs), so the values are comparable only
//! between cairn members. For the same reason the hash covers every stored revision, including
//! a tombstone at exactly the compaction revision, which etcd leaves out only so that its
//! releases from before and after keeping that tombstone agree.

use super::error::MvccError;
use super::range::PrimaryTree;
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
        let below = Revision::new(rev + 1, 0).to_key();
        for entry in tree.scan_below(&below) {
            let (key, value) = entry?;
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
