//! etcd's Lease service. Grants and revokes go through the log; keepalives and
//! time-to-live are answered by the leader, whose clock has the deadlines: a follower hands
//! them to the leader over the native protocol, so a client may use any member.

use super::status::status;
use super::Ctx;
use crate::grpc::pb::etcdserverpb as pb;
use crate::lease::{
    LeaseError, LeaseKeepAliveRequest, LeaseRequest, LeaseResponse, LeaseTimeToLiveRequest,
};
use crate::mvcc::Response as Applied;
use crate::protocol::{ClientRequest, ClientResponse, ErrorCode};
use crate::server::front::{self, Failure};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

type Reply<T> = Result<Response<T>, Status>;

/// Keepalive responses written ahead of a client that does not read them.
const KEEPALIVE_BACKLOG_MAX: usize = 16;

impl Ctx {
    /// A keepalive or time-to-live, from this member if it leads, else from the leader.
    async fn on_leader(&self, req: LeaseRequest) -> Result<LeaseResponse, Failure> {
        match front::lease_query(&self.shared, req).await {
            Err((_, m)) if m.starts_with(&LeaseError::NotLeader.to_string()) => {
                match self.forward(ClientRequest::Lease(req)).await? {
                    ClientResponse::Lease(r) => Ok(r),
                    _ => Err((
                        ErrorCode::Internal,
                        "the leader answered with another kind of reply".into(),
                    )),
                }
            }
            other => other,
        }
    }

    async fn keep_alive(&self, id: i64) -> Result<pb::LeaseKeepAliveResponse, Status> {
        let req = LeaseRequest::KeepAlive(LeaseKeepAliveRequest { id });
        let (id, ttl, revision) = match self.on_leader(req).await {
            Ok(LeaseResponse::KeepAlive(r)) => (r.id, r.ttl, r.header.revision),
            // etcd answers a lease that is gone with a TTL of 0, not an error.
            Err((_, m)) if m == LeaseError::NotFound.to_string() => (id, 0, 0),
            Ok(_) => return Err(Status::internal("a keepalive got another kind of reply")),
            Err(f) => return Err(status(f)),
        };
        let revision = if revision == 0 {
            self.revision_now()
        } else {
            revision
        };
        Ok(pb::LeaseKeepAliveResponse {
            header: self.header(revision),
            id,
            ttl,
        })
    }
}

#[tonic::async_trait]
impl pb::lease_server::Lease for Ctx {
    async fn lease_grant(
        &self,
        req: Request<pb::LeaseGrantRequest>,
    ) -> Reply<pb::LeaseGrantResponse> {
        let req = req.into_inner();
        self.serving()?;
        let grant = LeaseRequest::Grant(crate::lease::LeaseGrantRequest {
            ttl: req.ttl,
            id: req.id,
        });
        let command = match front::lease_command(&self.shared, &grant) {
            Some(c) => c.map_err(status)?,
            None => return Err(Status::internal("a grant is a log command")),
        };
        match self
            .hub
            .propose(&self.shared, command)
            .await
            .map_err(status)?
        {
            Applied::LeaseGrant(g) => Ok(Response::new(pb::LeaseGrantResponse {
                header: self.header(g.header.revision),
                id: g.id,
                ttl: g.ttl,
                error: String::new(),
            })),
            _ => Err(Status::internal("a grant got another kind of reply")),
        }
    }

    async fn lease_revoke(
        &self,
        req: Request<pb::LeaseRevokeRequest>,
    ) -> Reply<pb::LeaseRevokeResponse> {
        self.serving()?;
        let revoke = LeaseRequest::Revoke(crate::lease::LeaseRevokeRequest {
            id: req.into_inner().id,
        });
        let command = match front::lease_command(&self.shared, &revoke) {
            Some(c) => c.map_err(status)?,
            None => return Err(Status::internal("a revoke is a log command")),
        };
        match self
            .hub
            .propose(&self.shared, command)
            .await
            .map_err(status)?
        {
            Applied::LeaseRevoke(r) => Ok(Response::new(pb::LeaseRevokeResponse {
                header: self.header(r.header.revision),
            })),
            _ => Err(Status::internal("a revoke got another kind of reply")),
        }
    }

    type LeaseKeepAliveStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::LeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Reply<Self::LeaseKeepAliveStream> {
        let mut incoming = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(KEEPALIVE_BACKLOG_MAX);
        let ctx = self.clone();
        tokio::spawn(async move {
            // Ends when the client closes its side or leaves, or a renewal fails.
            while let Some(next) = incoming.next().await {
                let reply = match next {
                    Ok(r) => ctx.keep_alive(r.id).await,
                    Err(e) => Err(e),
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Reply<pb::LeaseTimeToLiveResponse> {
        let req = req.into_inner();
        let ask = LeaseRequest::TimeToLive(LeaseTimeToLiveRequest {
            id: req.id,
            keys: req.keys,
        });
        match self.on_leader(ask).await {
            Ok(LeaseResponse::TimeToLive(r)) => {
                let revision = if r.header.revision == 0 {
                    self.revision_now()
                } else {
                    r.header.revision
                };
                Ok(Response::new(pb::LeaseTimeToLiveResponse {
                    header: self.header(revision),
                    id: r.id,
                    ttl: r.ttl,
                    granted_ttl: r.granted_ttl,
                    keys: r.keys,
                }))
            }
            // etcd answers a lease that is gone with a TTL of -1.
            Err((_, m)) if m == LeaseError::NotFound.to_string() => {
                Ok(Response::new(pb::LeaseTimeToLiveResponse {
                    header: self.header_now(),
                    id: req.id,
                    ttl: -1,
                    ..Default::default()
                }))
            }
            Ok(_) => Err(Status::internal("a time-to-live got another kind of reply")),
            Err(f) => Err(status(f)),
        }
    }

    async fn lease_leases(
        &self,
        _: Request<pb::LeaseLeasesRequest>,
    ) -> Reply<pb::LeaseLeasesResponse> {
        match front::lease_query(&self.shared, LeaseRequest::Leases).await {
            Ok(LeaseResponse::Leases(r)) => {
                let revision = if r.header.revision == 0 {
                    self.revision_now()
                } else {
                    r.header.revision
                };
                Ok(Response::new(pb::LeaseLeasesResponse {
                    header: self.header(revision),
                    leases: r
                        .leases
                        .into_iter()
                        .map(|l| pb::LeaseStatus { id: l.id })
                        .collect(),
                }))
            }
            Ok(_) => Err(Status::internal("a lease list got another kind of reply")),
            Err(f) => Err(status(f)),
        }
    }
}
