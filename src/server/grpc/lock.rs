//! etcd's Lock service (`v3lockpb`), on the lock logic the native protocol serves
//! (`crate::server::lock`): a contender's key `NAME/LEASE` (the lease id in hex) through the
//! log, held until it is unlocked or its lease ends. What it shares with the Election
//! service is here too: how a waiting call learns that its client left, and the lease a
//! call without one gets.

use super::status::{status, too_large};
use super::Ctx;
use crate::grpc::pb::v3lockpb as pb;
use crate::lease::{LeaseGrantRequest, LeaseRequest};
use crate::lock::{LockRequest, LockResponse};
use crate::mvcc::Response as Applied;
use crate::protocol::ErrorCode;
use crate::server::{front, lock};
use prost::Message;
use tonic::{Request, Response, Status};

type Reply<T> = Result<Response<T>, Status>;

/// etcd's Lock and Election servers make their writes through an embedded client, which
/// hands them the KV server's errors as plain errors: gRPC sends those as Unknown, with
/// etcd's message. So do these services, for the messages that are etcd's.
pub(super) fn embedded(s: Status) -> Status {
    if s.message().starts_with("etcdserver: ") {
        Status::unknown(s.message())
    } else {
        s
    }
}

/// The TTL of the lease etcd's servers grant a Lock or Campaign that names none (the
/// `concurrency` package's default session TTL): such a holder is released within a
/// minute unless it unlocks first.
const SESSION_TTL_S: i64 = 60;

impl Ctx {
    /// Answers a request that may wait (Lock, Campaign) on a task of its own. tonic drops
    /// a call's future when its client cancels or disconnects, so nothing after an await
    /// of the call would run to withdraw the contender; the task runs to the end instead,
    /// and learns that the client left when the call's guard (`_present`) is dropped.
    pub(super) async fn waiting(&self, req: LockRequest) -> Result<LockResponse, Status> {
        let (_present, gone) = tokio::sync::oneshot::channel::<()>();
        let shared = self.shared.clone();
        let task = tokio::spawn(async move {
            let left = async {
                // Nothing is ever sent: this ends when the guard is dropped.
                let _ = gone.await;
            };
            lock::handle(req, &shared, left).await
        });
        match task.await {
            Ok(answer) => answer.map_err(|f| embedded(status(f))),
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }

    /// Answers a request that does not wait.
    pub(super) async fn at_once(&self, req: LockRequest) -> Result<LockResponse, Status> {
        lock::handle(req, &self.shared, std::future::pending())
            .await
            .map_err(|f| embedded(status(f)))
    }

    /// The checks a write of `request_bytes` passes before the log, as the KV service's:
    /// the member serves, the request is not too large, the database has room.
    pub(super) fn may_write(&self, request_bytes: usize) -> Result<(), Status> {
        self.serving().map_err(embedded)?;
        if request_bytes > self.max_request_bytes {
            return Err(embedded(too_large()));
        }
        if front::no_space(&self.shared, request_bytes) {
            return Err(embedded(status((
                ErrorCode::NoSpace,
                front::NO_SPACE.into(),
            ))));
        }
        Ok(())
    }

    /// The lease a contender's key is owned by: the one asked for, or, for none (0), a
    /// new lease of `SESSION_TTL_S`, as etcd's servers grant one for the call's session.
    pub(super) async fn session_lease(&self, lease: i64) -> Result<i64, Status> {
        if lease != 0 {
            return Ok(lease);
        }
        let grant = LeaseRequest::Grant(LeaseGrantRequest {
            ttl: SESSION_TTL_S,
            id: 0,
        });
        let command = match front::lease_command(&self.shared, &grant) {
            Some(c) => c.map_err(|f| embedded(status(f)))?,
            None => return Err(Status::internal("a grant is a log command")),
        };
        match front::propose(&self.shared, command)
            .await
            .map_err(|f| embedded(status(f)))?
        {
            Applied::LeaseGrant(g) => Ok(g.id),
            _ => Err(Status::internal("a grant got another kind of reply")),
        }
    }
}

#[tonic::async_trait]
impl pb::lock_server::Lock for Ctx {
    async fn lock(&self, req: Request<pb::LockRequest>) -> Reply<pb::LockResponse> {
        let req = req.into_inner();
        self.may_write(req.encoded_len())?;
        let lease = self.session_lease(req.lease).await?;
        match self
            .waiting(LockRequest::Lock {
                name: req.name,
                lease,
            })
            .await?
        {
            LockResponse::Lock { header, key, .. } => Ok(Response::new(pb::LockResponse {
                header: self.header(header.revision),
                key,
            })),
            _ => Err(Status::internal("a lock got another kind of reply")),
        }
    }

    async fn unlock(&self, req: Request<pb::UnlockRequest>) -> Reply<pb::UnlockResponse> {
        let req = req.into_inner();
        self.serving().map_err(embedded)?;
        if req.encoded_len() > self.max_request_bytes {
            return Err(embedded(too_large()));
        }
        match self.at_once(LockRequest::Unlock { key: req.key }).await? {
            LockResponse::Unlock { header } => Ok(Response::new(pb::UnlockResponse {
                header: self.header(header.revision),
            })),
            _ => Err(Status::internal("an unlock got another kind of reply")),
        }
    }
}
