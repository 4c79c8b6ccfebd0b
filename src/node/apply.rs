//! Applying committed entries to the store: the apply loop's core, sans-IO.

use super::NodeError;
use crate::mvcc::{AcceptAllLeases, ApplyOutcome, RaftPosition, Response, Store};
use crate::protocol::{decode_request, ClientRequest};
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
    let mut payload = AlignedVec::<16>::new();
    for e in entries {
        out.last_index = Some(e.index);
        if e.data.is_empty() {
            continue; // a new leader's empty entry
        }
        let token = <[u8; 8]>::try_from(&e.context[..])
            .ok()
            .map(u64::from_le_bytes);
        let result = apply_entry(store, e, &mut payload)?;
        if let Some(token) = token {
            out.results.push((token, result));
        }
    }
    Ok(out)
}

fn apply_entry(
    store: &mut Store,
    e: &Entry,
    payload: &mut AlignedVec,
) -> Result<Result<Response, NodeError>, NodeError> {
    let bad = |reason: String| {
        Ok(Err(NodeError::BadEntry {
            index: e.index,
            reason,
        }))
    };
    payload.clear();
    payload.extend_from_slice(&e.data);
    let request = match decode_request(payload) {
        Ok(ClientRequest::Kv(r)) => r,
        Ok(ClientRequest::Status) => return bad("status is not a log entry".into()),
        Err(err) => return bad(err.to_string()),
    };
    let at = RaftPosition {
        index: e.index,
        term: e.term,
    };
    match store.apply(at, std::slice::from_ref(&request), &AcceptAllLeases)? {
        ApplyOutcome::Skipped => bad("already applied".into()),
        ApplyOutcome::Applied(mut rs) => match rs.pop() {
            Some(r) => Ok(r.map_err(NodeError::from)),
            None => bad("no response".into()),
        },
    }
}
