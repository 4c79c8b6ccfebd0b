//! Applying committed entries to the store: the apply loop's core, sans-IO.

use super::command::{self, Command, ALIGN};
use super::NodeError;
use super::ProposalId;
use crate::mvcc::{ApplyOutcome, ArchivedRequest, PutRef, RaftPosition, Request, Response, Store};
use crate::protocol::ArchivedClientRequest;
use protobuf::Message as _;
use raft::eraftpb::{Entry, EntryType};
use rkyv::util::AlignedVec;

/// What applying a run of committed entries produced.
#[derive(Default)]
pub struct Applied {
    /// Results of the commands applied, by proposal id (every member has them; the member
    /// that took the proposal answers its client).
    pub results: Vec<(ProposalId, Result<Response, NodeError>)>,
    /// Index of the last entry applied (empty entries included), if any.
    pub last_index: Option<u64>,
    /// The events the writes among them caused, in revision order: every member has the
    /// same (watchers on any member are fed from them).
    pub events: Vec<crate::mvcc::Event>,
    /// The grants and revokes among them, in order (the leader's lease clock follows them).
    pub leases: Vec<crate::mvcc::LeaseChange>,
}

/// Applies committed entries in log order. `Err` is fatal: storage failed, or an entry is
/// not a command this member can apply ([`NodeError::BadEntry`]). A request that fails
/// (a compacted revision, say) is its proposal's result, the same on every member.
pub fn apply_committed(store: &mut Store, entries: &[Entry]) -> Result<Applied, NodeError> {
    let mut out = Applied::default();
    let mut scratch = AlignedVec::<ALIGN>::new();
    for e in entries {
        out.last_index = Some(e.index);
        if e.get_entry_type() != EntryType::EntryNormal {
            // Applied to the membership by the consensus core (which stops the member on
            // one that does not decode); checked here too, for `cairn check`.
            let parsed = match e.get_entry_type() {
                EntryType::EntryConfChange => {
                    raft::eraftpb::ConfChange::parse_from_bytes(&e.data).map(drop)
                }
                _ => raft::eraftpb::ConfChangeV2::parse_from_bytes(&e.data).map(drop),
            };
            parsed.map_err(|err| NodeError::BadEntry {
                index: e.index,
                reason: format!("a membership change that does not decode: {err}"),
            })?;
        }
        if e.data.is_empty() || e.get_entry_type() != EntryType::EntryNormal {
            // A new leader's empty entry, or a membership change (applied by the consensus
            // core): the store only records that it is applied, so that its checkpoints
            // (and the snapshots made of them) are at the index of the membership they go
            // with.
            store.apply(position(e), &[])?;
            continue;
        }
        let result = apply_entry(store, e, &mut scratch)?;
        if let Some((id, result)) = ProposalId::decode(&e.context).zip(result) {
            out.results.push((id, result));
        }
    }
    out.events = store.take_events();
    out.leases = store.take_lease_changes();
    Ok(out)
}

fn apply_entry(
    store: &mut Store,
    e: &Entry,
    scratch: &mut AlignedVec,
) -> Result<Option<Result<Response, NodeError>>, NodeError> {
    let bad = |reason: String| NodeError::BadEntry {
        index: e.index,
        reason,
    };
    // The command is read where it lies when the entry's bytes are aligned for it (they
    // are as the net shard proposed them); otherwise from one aligned copy.
    let data: &[u8] = if (e.data.as_ptr() as usize).is_multiple_of(ALIGN) {
        &e.data
    } else {
        scratch.clear();
        scratch.extend_from_slice(&e.data);
        scratch
    };
    let request = match command::decode(data).map_err(|err| bad(err.to_string()))? {
        Command::Client(request) => request,
        // Applied to the membership by the consensus core when handed out.
        Command::Member(_, body) => {
            crate::raftlog::MemberInfo::from_bytes(body).map_err(|err| bad(err.to_string()))?;
            store.apply(position(e), &[])?;
            return Ok(None);
        }
        Command::Lease(op) => return single(store.apply_lease(position(e), &op)?, bad),
    };
    let at = position(e);
    let outcome = match request {
        ArchivedClientRequest::Kv(ArchivedRequest::Put(p)) => {
            // The hot path: key and value go from the log entry to the tree, uncopied.
            store.apply_put(at, PutRef::archived(p))?
        }
        ArchivedClientRequest::Kv(request) => {
            let request = rkyv::deserialize::<Request, rkyv::rancor::Error>(request)
                .map_err(|err| bad(err.to_string()))?;
            store.apply(at, std::slice::from_ref(&request))?
        }
        ArchivedClientRequest::Status
        | ArchivedClientRequest::Alarm(_)
        | ArchivedClientRequest::HashKv(_)
        | ArchivedClientRequest::MoveLeader(_)
        | ArchivedClientRequest::Member(_)
        | ArchivedClientRequest::Watch(_)
        | ArchivedClientRequest::Lock(_)
        | ArchivedClientRequest::Lease(_)
        | ArchivedClientRequest::Snapshot(_)
        | ArchivedClientRequest::Defragment => {
            return Err(bad("a request that is never logged".into()))
        }
    };
    single(outcome, bad)
}

/// The one response of an entry that held one request.
fn single(
    outcome: ApplyOutcome,
    bad: impl Fn(String) -> NodeError,
) -> Result<Option<Result<Response, NodeError>>, NodeError> {
    match outcome {
        // Below the store's checkpoint (replayed after a restart): applied before, and
        // its client was answered then.
        ApplyOutcome::Skipped => Ok(None),
        ApplyOutcome::Applied(mut rs) => match rs.pop() {
            Some(r) => Ok(Some(r.map_err(NodeError::from))),
            None => Err(bad("the store returned no response".into())),
        },
    }
}

fn position(e: &Entry) -> RaftPosition {
    RaftPosition {
        index: e.index,
        term: e.term,
    }
}
