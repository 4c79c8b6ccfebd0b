//! The lock, election and semaphore services, for the net shards and the gRPC front end
//! alike (runtime-agnostic): each request becomes proposals through the log (the
//! contender's key, a deletion, a proclamation) and, for those that wait, a contender
//! handed to the apply role, which answers once it holds.

use super::watch::{ClientInput, ObserveSink};
use super::Shared;
use crate::lock::{self, LeaderKey, LockRequest, LockResponse, LockWait};
use crate::mvcc::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, KeyValue, PutRequest, RangeRequest,
    Request, RequestOp, Response, ResponseHeader, ResponseOp, SortOrder, SortTarget, TargetUnion,
    TxnRequest, TxnResponse,
};
use crate::protocol::{encode_request, ClientRequest, ErrorCode, HEADER_BYTES};
use std::future::Future;

type Failure = (ErrorCode, String);

/// Answers a request. A contender that waits stops waiting when `left` ends (its client
/// went away), and its key is deleted, as etcd's services do: otherwise it would hold
/// with nobody to release until its lease expired. `Observe` is [`observe`]'s.
pub(crate) async fn handle(
    req: LockRequest,
    shared: &Shared,
    left: impl Future<Output = ()>,
) -> Result<LockResponse, Failure> {
    Ok(match req {
        LockRequest::Lock { name, lease } => {
            let (key, revision, header, _) =
                acquire(shared, &name, lease, Vec::new(), 1, left).await?;
            LockResponse::Lock {
                header,
                key,
                revision,
            }
        }
        LockRequest::Acquire { name, lease, limit } => {
            if limit == 0 {
                return Err((
                    ErrorCode::InvalidRequest,
                    "a semaphore's limit must be at least 1".into(),
                ));
            }
            let (key, revision, header, _) =
                acquire(shared, &name, lease, Vec::new(), limit, left).await?;
            LockResponse::Acquire {
                header,
                key,
                revision,
            }
        }
        LockRequest::Campaign { name, lease, value } => {
            // etcd's election answers with the header of the campaign's first write (its
            // key's creation, or the read of the key it already had), not of its turn.
            let (key, rev, _, header) = acquire(shared, &name, lease, value, 1, left).await?;
            LockResponse::Campaign {
                header,
                leader: LeaderKey {
                    name,
                    key,
                    rev,
                    lease,
                },
            }
        }
        LockRequest::Unlock { key } => LockResponse::Unlock {
            header: delete(shared, key).await?,
        },
        LockRequest::Release { key } => LockResponse::Release {
            header: delete(shared, key).await?,
        },
        LockRequest::Proclaim { leader, value } => {
            let put = RequestOp::Put(PutRequest {
                key: leader.key.clone(),
                value,
                lease: leader.lease,
                ..PutRequest::default()
            });
            let t = run_txn(shared, if_leader(&leader, put)).await?;
            if !t.succeeded {
                return Err((ErrorCode::InvalidRequest, lock::NOT_LEADER.into()));
            }
            LockResponse::Proclaim { header: t.header }
        }
        LockRequest::Resign { leader } => {
            let delete = RequestOp::DeleteRange(DeleteRangeRequest {
                key: leader.key.clone(),
                ..DeleteRangeRequest::default()
            });
            let t = run_txn(shared, if_leader(&leader, delete)).await?;
            LockResponse::Resign { header: t.header }
        }
        LockRequest::Leader { name } => {
            let first = first_created(&lock::prefix(&name));
            let Response::Range(mut r) = propose(shared, Request::Range(first)).await? else {
                return Err(unexpected());
            };
            let Some(kv) = r.kvs.pop() else {
                return Err((ErrorCode::InvalidRequest, lock::NO_LEADER.into()));
            };
            LockResponse::Leader {
                header: r.header,
                kv,
            }
        }
        LockRequest::Observe { .. } => {
            return Err((
                ErrorCode::InvalidRequest,
                "observe is a stream, not a request with one answer".into(),
            ))
        }
    })
}

/// Room for leaders not yet sent to an observer; one that falls behind is told the leader
/// of the moment once it has room (see `lock::Observers`).
const OBSERVE_QUEUE_MAX: usize = 64;

impl crate::lock::LeaderSink for ObserveSink {
    fn offer(&self, revision: i64, kv: &KeyValue) -> bool {
        match self.try_send((revision, kv.clone())) {
            Ok(()) => true,
            Err(flume::TrySendError::Full(_)) => false,
            // Gone: forgotten at the next sweep.
            Err(flume::TrySendError::Disconnected(_)) => true,
        }
    }

    fn is_gone(&self) -> bool {
        self.is_disconnected()
    }
}

/// Starts observing the election `name`: the leaders as they come, `(revision, leader's
/// key-value)`, until the receiver is dropped; the stream ends if the member stops.
pub(crate) async fn observe(
    shared: &Shared,
    name: &[u8],
) -> Result<flume::Receiver<(i64, KeyValue)>, Failure> {
    let (tx, rx) = flume::bounded(OBSERVE_QUEUE_MAX);
    shared
        .client_inputs
        .send_async(ClientInput::Observe(lock::prefix(name), tx))
        .await
        .map_err(|_| (ErrorCode::Unavailable, STOPPING.to_string()))?;
    Ok(rx)
}

const STOPPING: &str = "the member is stopping";

fn unexpected() -> Failure {
    (
        ErrorCode::Internal,
        "an unexpected response from the store".into(),
    )
}

/// A transaction doing `op` if `leader` still leads (its key has its create revision).
fn if_leader(leader: &LeaderKey, op: RequestOp) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal,
            target: CompareTarget::Create,
            key: leader.key.clone(),
            target_union: Some(TargetUnion::CreateRevision(leader.rev)),
            range_end: Vec::new(),
        }],
        success: vec![op],
        failure: Vec::new(),
    }
}

async fn run_txn(shared: &Shared, t: TxnRequest) -> Result<TxnResponse, Failure> {
    match propose(shared, Request::Txn(t)).await? {
        Response::Txn(t) => Ok(t),
        _ => Err(unexpected()),
    }
}

/// The first key created under `prefix`.
fn first_created(prefix: &[u8]) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: crate::cli::prefix_range_end(prefix),
        limit: 1,
        sort_order: SortOrder::Ascend,
        sort_target: SortTarget::Create,
        ..RangeRequest::default()
    }
}

/// Puts the contender's key (once: kept if it exists) and waits until it is among the
/// first `limit`: its key, the key's create revision, the header of when it held, and the
/// header of its first write (the put of its key, or the read of the key it had).
async fn acquire(
    shared: &Shared,
    name: &[u8],
    lease: i64,
    value: Vec<u8>,
    limit: u32,
    left: impl Future<Output = ()>,
) -> Result<(Vec<u8>, i64, ResponseHeader, ResponseHeader), Failure> {
    let key = lock::contender_key(name, lease);
    let txn = TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal,
            target: CompareTarget::Create,
            key: key.clone(),
            target_union: Some(TargetUnion::CreateRevision(0)),
            range_end: Vec::new(),
        }],
        success: vec![RequestOp::Put(PutRequest {
            key: key.clone(),
            value: value.clone(),
            lease,
            ..PutRequest::default()
        })],
        failure: vec![RequestOp::Range(RangeRequest {
            key: key.clone(),
            ..RangeRequest::default()
        })],
    };
    let t = run_txn(shared, txn).await?;
    let (rev, held_value) = if t.succeeded {
        (t.header.revision, None)
    } else {
        match t.responses.first() {
            Some(ResponseOp::Range(r)) => r
                .kvs
                .first()
                .map_or((0, None), |kv| (kv.create_revision, Some(kv.value.clone()))),
            _ => (0, None),
        }
    };
    if rev == 0 {
        return Err((ErrorCode::Unavailable, lock::KEY_GONE.into()));
    }
    // The same lease campaigning again with another value proclaims it, as etcd's election
    // does (its key, and its place in line, are kept).
    if held_value.is_some_and(|v| v != value) {
        let leader = LeaderKey {
            key: key.clone(),
            rev,
            lease,
            ..LeaderKey::default()
        };
        let put = RequestOp::Put(PutRequest {
            key: key.clone(),
            value,
            lease,
            ..PutRequest::default()
        });
        if !run_txn(shared, if_leader(&leader, put)).await?.succeeded {
            return Err((ErrorCode::Unavailable, lock::KEY_GONE.into()));
        }
    }
    let wait = LockWait {
        prefix: lock::prefix(name),
        key: key.clone(),
        rev,
        limit,
    };
    let (tx, rx) = flume::bounded(1);
    let stopping = || (ErrorCode::Unavailable, STOPPING.to_string());
    shared
        .client_inputs
        .send_async(ClientInput::Lock(wait, tx))
        .await
        .map_err(|_| stopping())?;
    let turn = async { Some(rx.recv_async().await) };
    let gone = async {
        left.await;
        None
    };
    match futures_lite::future::or(turn, gone).await {
        Some(Ok(Ok(revision))) => Ok((key, rev, ResponseHeader { revision }, t.header)),
        Some(Ok(Err(why))) => Err((ErrorCode::Unavailable, why)),
        Some(Err(_)) => Err(stopping()),
        None => {
            // Whether it held by now or not, nobody will use or release it.
            let withdraw = if_leader(
                &LeaderKey {
                    key: key.clone(),
                    rev,
                    ..LeaderKey::default()
                },
                RequestOp::DeleteRange(DeleteRangeRequest {
                    key,
                    ..DeleteRangeRequest::default()
                }),
            );
            if let Err((_, e)) = run_txn(shared, withdraw).await {
                tracing::debug!(error = %e, "a contender whose client left was not withdrawn; its lease will end it");
            }
            Err((ErrorCode::Unavailable, "the client left".into()))
        }
    }
}

async fn delete(shared: &Shared, key: Vec<u8>) -> Result<ResponseHeader, Failure> {
    let del = DeleteRangeRequest {
        key,
        ..DeleteRangeRequest::default()
    };
    match propose(shared, Request::DeleteRange(del)).await? {
        Response::DeleteRange(d) => Ok(d.header),
        _ => Err(unexpected()),
    }
}

/// Sends a request through the log as a client's would go, and waits for its result.
async fn propose(shared: &Shared, request: Request) -> Result<Response, Failure> {
    crate::mvcc::validate(&request, shared.config.max_txn_ops)
        .map_err(|e| (ErrorCode::InvalidRequest, e.to_string()))?;
    let frame = encode_request(0, &ClientRequest::Kv(request))
        .map_err(|e| (ErrorCode::Internal, e.to_string()))?;
    let command = crate::node::command::client(&frame[HEADER_BYTES..]);
    super::front::propose(shared, command).await
}
