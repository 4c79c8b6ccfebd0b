//! Applying committed entries to the store: the apply loop's core, sans-IO.

use super::NodeError;
use crate::mvcc::{
    AcceptAllLeases, ApplyOutcome, ArchivedRequest, PutRef, RaftPosition, Request, Response, Store,
};
use crate::protocol::{access_request, ArchivedClientRequest};
use raft::eraftpb::Entry;
use rkyv::util::AlignedVec;

/// What applying a run of committed entries produced.
#[derive(Default)]
pub struct Applied {
    /// Results of proposals made on this member, by the token given to
    /// [`Node::propose`](super::Node::propose).
    pub results: Vec<(u64, Result<Response, NodeError>)>,
    /// Index of the last entry applied (empty entries included), if any.
    pub last_index: Option<u64>,
}

/// Applies committed entries in log order. `Err` is fatal (storage); a bad payload or a
/// failed request is that proposal's result, the same on every member. Entries the store
/// already holds (below its checkpoint, after a restart) are skipped.
pub fn apply_committed(store: &mut Store, entries: &[Entry]) -> Result<Applied, NodeError> {
    let mut out = Applied::default();
    let mut scratch = AlignedVec::<ALIGN>::new();
    for e in entries {
        out.last_index = Some(e.index);
        if e.data.is_empty() {
            continue; // a new leader's empty entry
        }
        let token = <[u8; 8]>::try_from(&e.context[..])
            .ok()
            .map(u64::from_le_bytes);
        let result = apply_entry(store, e, &mut scratch)?;
        if let Some(token) = token {
            out.results.push((token, result));
        }
    }
    Ok(out)
}

fn apply_entry(
    store: &mut Store,
    e: &Entry,
    scratch: &mut AlignedVec,
) -> Result<Result<Response, NodeError>, NodeError> {
    let bad = |reason: String| {
        Ok(Err(NodeError::BadEntry {
            index: e.index,
            reason,
        }))
    };
    // The archived request is read where it lies when the entry's bytes are aligned for it
    // (they are as the net shard proposed them); otherwise from one aligned copy.
    let payload: &[u8] = if (e.data.as_ptr() as usize).is_multiple_of(ALIGN) {
        &e.data
    } else {
        scratch.clear();
        scratch.extend_from_slice(&e.data);
        scratch
    };
    let archived = match access_request(payload) {
        Ok(a) => a,
        Err(err) => return bad(err.to_string()),
    };
    let at = RaftPosition {
        index: e.index,
        term: e.term,
    };
    let outcome = match archived {
        ArchivedClientRequest::Kv(ArchivedRequest::Put(p)) => {
            // The hot path: key and value go from the log entry to the tree, uncopied.
            store.apply_put(at, PutRef::archived(p), &AcceptAllLeases)?
        }
        ArchivedClientRequest::Kv(request) => {
            let request = match rkyv::deserialize::<Request, rkyv::rancor::Error>(request) {
                Ok(r) => r,
                Err(err) => return bad(err.to_string()),
            };
            store.apply(at, std::slice::from_ref(&request), &AcceptAllLeases)?
        }
        ArchivedClientRequest::Status | ArchivedClientRequest::Alarm(_) => {
            return bad("not a log entry".into())
        }
    };
    match outcome {
        ApplyOutcome::Skipped => bad("already applied".into()),
        ApplyOutcome::Applied(mut rs) => match rs.pop() {
            Some(r) => Ok(r.map_err(NodeError::from)),
            None => bad("no response".into()),
        },
    }
}

/// Alignment archived requests need (that of [`AlignedVec`]).
const ALIGN: usize = 16;
