//! What both client front ends (the native protocol on the net shards, and the etcd v3 gRPC
//! API on its tokio thread) do with a request, runtime-agnostic: the raft role's inputs are
//! flume channels, which any executor can await. A failure is an [`ErrorCode`] and a
//! message (etcd's where etcd has one); each front end puts it in its own reply.

use super::{Input, Proposal, Shared};
use crate::lease::{LeaseOp, LeaseRequest, LeaseResponse};
use crate::mvcc::{Request, Response};
use crate::node::NodeError;
use crate::protocol::{ErrorCode, MemberRequest, MemberResponse};

/// Why a request failed: a class and a message.
pub(crate) type Failure = (ErrorCode, String);

pub(crate) const STOPPING: &str = "the member is stopping";
pub(crate) const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";
pub(crate) const OUTCOME_UNKNOWN: &str =
    "the member failed before this write's outcome was known: it may or may not have been applied";
pub(crate) const NO_LEADER_FOR_READ: &str = "no leader to confirm the read";
/// What a lease grant is taken to add to the database, for the quota: its record.
pub(crate) const LEASE_GRANT_COST_BYTES: usize = 64;

/// Hands a request to the raft role, or why it cannot be.
pub(crate) fn submit(shared: &Shared, input: Input) -> Result<(), Failure> {
    let what = match &input {
        Input::Propose(_) => "proposals",
        _ => "requests",
    };
    shared.inputs.try_send(input).map_err(|e| match e {
        flume::TrySendError::Full(_) => (ErrorCode::Overloaded, format!("too many {what} pending")),
        flume::TrySendError::Disconnected(_) => (ErrorCode::Unavailable, STOPPING.into()),
    })
}

/// Sends a log command through Raft and waits for its applied result.
pub(crate) async fn propose(shared: &Shared, command: Vec<u8>) -> Result<Response, Failure> {
    let (tx, rx) = flume::bounded(1);
    submit(
        shared,
        Input::Propose(Proposal {
            command,
            reply: super::Reply::Own(tx),
        }),
    )?;
    match rx.recv_async().await {
        Ok(result) => result.map_err(error_of),
        // Proposed, but its answer was lost with a failing role: it may have been applied,
        // so this is not "try again" (a retried txn could apply twice).
        Err(_) => Err((ErrorCode::Internal, OUTCOME_UNKNOWN.into())),
    }
}

/// Waits until the published view holds everything committed before this call (ReadIndex,
/// batched with every read waiting at the same moment).
pub(crate) async fn read_index(shared: &Shared) -> Result<(), Failure> {
    let (tx, rx) = flume::bounded(1);
    submit(shared, Input::Read(tx))?;
    rx.recv_async()
        .await
        .map_err(|_| (ErrorCode::Unavailable, NO_LEADER_FOR_READ.into()))
}

/// Hands leadership to member `to`; answered once it leads.
pub(crate) async fn move_leader(shared: &Shared, to: u64) -> Result<(), Failure> {
    let (tx, rx) = flume::bounded(1);
    submit(shared, Input::MoveLeader(to, tx))?;
    match rx.recv_async().await {
        Ok(r) => r.map_err(|e| (ErrorCode::Unavailable, e)),
        Err(_) => Err((ErrorCode::Unavailable, STOPPING.into())),
    }
}

/// Lists or changes the members.
pub(crate) async fn member(shared: &Shared, req: MemberRequest) -> Result<MemberResponse, Failure> {
    let (tx, rx) = flume::bounded(1);
    submit(shared, Input::Member(req, tx))?;
    rx.recv_async()
        .await
        .unwrap_or_else(|_| Err((ErrorCode::Unavailable, STOPPING.into())))
}

/// A lease keepalive, time-to-live or list, answered by the apply role (keepalives and
/// time-to-live by the leader's only).
pub(crate) async fn lease_query(
    shared: &Shared,
    req: LeaseRequest,
) -> Result<LeaseResponse, Failure> {
    let (tx, rx) = flume::bounded(1);
    submit(shared, Input::Lease(req, tx))?;
    rx.recv_async()
        .await
        .unwrap_or_else(|_| Err((ErrorCode::Unavailable, STOPPING.into())))
}

/// A lease grant or revoke as the log command every member applies alike: a grant's id
/// and TTL settled here. `None` for the requests that do not go through the log.
pub(crate) fn lease_command(
    shared: &Shared,
    req: &LeaseRequest,
) -> Option<Result<Vec<u8>, Failure>> {
    let op = match *req {
        LeaseRequest::Grant(g) => {
            // A grant adds a lease record: refused under the NOSPACE alarm, as etcd's quota
            // refuses it.
            if no_space(shared, LEASE_GRANT_COST_BYTES) {
                return Some(Err((ErrorCode::NoSpace, NO_SPACE.into())));
            }
            let Some(ids) = shared.lease_ids.get() else {
                return Some(Err((
                    ErrorCode::Unavailable,
                    "the member is starting".into(),
                )));
            };
            match crate::lease::prepare_grant(g, shared.min_lease_ttl_s(), ids) {
                Ok(op) => op,
                Err(e) => return Some(Err((ErrorCode::InvalidRequest, e.to_string()))),
            }
        }
        LeaseRequest::Revoke(r) => LeaseOp::Revoke { id: r.id },
        _ => return None,
    };
    Some(Ok(crate::node::command::lease(&op)))
}

/// Whether a request may grow the database (etcd's quota applies to puts, also in txns).
pub(crate) fn adds_data(req: &Request) -> bool {
    fn txn_puts(t: &crate::mvcc::TxnRequest) -> bool {
        t.success.iter().chain(&t.failure).any(|op| match op {
            crate::mvcc::RequestOp::Put(_) => true,
            crate::mvcc::RequestOp::Txn(t) => txn_puts(t),
            _ => false,
        })
    }
    match req {
        Request::Put(_) => true,
        Request::Txn(t) => txn_puts(t),
        _ => false,
    }
}

/// Whether a write that adds `cost` bytes is refused for space: the NOSPACE alarm is raised,
/// or this write would take the tree's live bytes past the quota (which raises it, as etcd
/// does: it stays raised until disarmed, whatever is freed meanwhile).
pub(crate) fn no_space(shared: &Shared, cost: usize) -> bool {
    if shared.alarms.nospace() {
        return true;
    }
    let quota = shared.config.quota_backend_bytes;
    let used = shared.quota_used.load(std::sync::atomic::Ordering::Relaxed);
    if quota > 0 && used.saturating_add(cost as u64) > quota {
        shared
            .alarms
            .raise(crate::protocol::AlarmType::Nospace, || {
                format!("the database holds {used} bytes; --quota-backend-bytes is {quota}")
            });
        return true;
    }
    false
}

/// The error code a client gets for a proposal's failure, and the message.
pub(crate) fn error_of(e: NodeError) -> Failure {
    match e {
        // Not applied, or of unknown outcome but worth a retry by a client that knows
        // its request is safe to apply twice (etcd answers these Unavailable too).
        e @ (NodeError::NotLeader
        | NodeError::Stopping
        | NodeError::Dropped
        | NodeError::LeaderChanged
        | NodeError::Timeout) => (ErrorCode::Unavailable, e.to_string()),
        e @ NodeError::Overloaded => (ErrorCode::Overloaded, e.to_string()),
        NodeError::Mvcc(e) if !e.is_fatal() => (ErrorCode::InvalidRequest, e.to_string()),
        e => (ErrorCode::Internal, e.to_string()),
    }
}

/// What a client is told when a range has no published view to read.
pub(crate) fn not_open() -> Failure {
    (ErrorCode::Unavailable, "the store is not open yet".into())
}

/// How a member publishes its native protocol's address among its client URLs, beside its
/// gRPC client URLs (`--advertise-client-urls`): each front end lists the URLs its own
/// clients dial.
pub(crate) const NATIVE_SCHEME: &str = "cairn+native://";

/// A member's client URLs as published: the gRPC ones, then the native address.
pub(crate) fn published_client_urls(config: &super::ServeConfig, grpc: &[String]) -> Vec<String> {
    let mut urls = grpc.to_vec();
    urls.push(format!("{NATIVE_SCHEME}{}", config.listen_native_addr));
    urls
}

/// The members with the client URLs a front end's clients dial: the native addresses as
/// `http://host:port` (`native`), or the gRPC URLs. A member that published no native
/// address (an older version) keeps its URLs in the native list.
pub(crate) fn member_urls(mut r: MemberResponse, native: bool) -> MemberResponse {
    let fix = |m: &mut crate::protocol::Member| {
        let is_native = |u: &String| u.starts_with(NATIVE_SCHEME);
        if !native {
            m.client_urls.retain(|u| !is_native(u));
        } else if m.client_urls.iter().any(is_native) {
            m.client_urls = m
                .client_urls
                .iter()
                .filter_map(|u| u.strip_prefix(NATIVE_SCHEME))
                .map(|a| format!("http://{a}"))
                .collect();
        }
    };
    r.members.iter_mut().for_each(fix);
    if let Some(m) = r.member.as_mut() {
        fix(m)
    }
    r
}
