//! etcd's Election service (`v3electionpb`), on the election logic the native protocol
//! serves (`crate::server::lock`): a campaign is a contender's key `NAME/LEASE` holding the
//! candidate's value, the leader is the key created first under `NAME/`, and a leader key
//! (`name`, `key`, `rev`, `lease`) identifies one leadership: a proclaim or resign that
//! names another no longer applies.

use super::convert::key_value;
use super::lock::embedded;
use super::status::status;
use super::Ctx;
use crate::grpc::pb::v3electionpb as pb;
use crate::lock::{LeaderKey, LockRequest, LockResponse};
use crate::server::lock;
use prost::Message;
use tonic::{Request, Response, Status};

type Reply<T> = Result<Response<T>, Status>;

/// Leaders converted ahead of an observer that does not read them. Behind that, the
/// member's own queue keeps the newest leader for it (`lock::Observers`).
const OBSERVE_BACKLOG_MAX: usize = 16;

/// etcd's answer to a Proclaim or Resign without a leader key.
fn missing_leader() -> Status {
    Status::unknown("\"leader\" field must be provided")
}

fn leader_key(k: pb::LeaderKey) -> LeaderKey {
    LeaderKey {
        name: k.name,
        key: k.key,
        rev: k.rev,
        lease: k.lease,
    }
}

impl Ctx {
    fn leader_response(&self, revision: i64, kv: crate::mvcc::KeyValue) -> pb::LeaderResponse {
        pb::LeaderResponse {
            header: self.header(revision),
            kv: Some(key_value(kv)),
        }
    }
}

#[tonic::async_trait]
impl pb::election_server::Election for Ctx {
    async fn campaign(&self, req: Request<pb::CampaignRequest>) -> Reply<pb::CampaignResponse> {
        let req = req.into_inner();
        self.may_write(req.encoded_len())?;
        let lease = self.session_lease(req.lease).await?;
        let campaign = LockRequest::Campaign {
            name: req.name,
            lease,
            value: req.value,
        };
        match self.waiting(campaign).await? {
            LockResponse::Campaign { header, leader } => Ok(Response::new(pb::CampaignResponse {
                header: self.header(header.revision),
                leader: Some(pb::LeaderKey {
                    name: leader.name,
                    key: leader.key,
                    rev: leader.rev,
                    lease: leader.lease,
                }),
            })),
            _ => Err(Status::internal("a campaign got another kind of reply")),
        }
    }

    async fn proclaim(&self, req: Request<pb::ProclaimRequest>) -> Reply<pb::ProclaimResponse> {
        let req = req.into_inner();
        self.may_write(req.encoded_len())?;
        let mut leader = leader_key(req.leader.ok_or_else(missing_leader)?);
        // etcd's server puts the value with its session's lease: a new one for none.
        leader.lease = self.session_lease(leader.lease).await?;
        let proclaim = LockRequest::Proclaim {
            leader,
            value: req.value,
        };
        match self.at_once(proclaim).await? {
            LockResponse::Proclaim { header } => Ok(Response::new(pb::ProclaimResponse {
                header: self.header(header.revision),
            })),
            _ => Err(Status::internal("a proclaim got another kind of reply")),
        }
    }

    async fn leader(&self, req: Request<pb::LeaderRequest>) -> Reply<pb::LeaderResponse> {
        self.serving().map_err(embedded)?;
        let name = req.into_inner().name;
        match self.at_once(LockRequest::Leader { name }).await? {
            LockResponse::Leader { header, kv } => {
                Ok(Response::new(self.leader_response(header.revision, kv)))
            }
            _ => Err(Status::internal(
                "a leader request got another kind of reply",
            )),
        }
    }

    type ObserveStream = tokio_stream::wrappers::ReceiverStream<Result<pb::LeaderResponse, Status>>;

    /// The leader now (if any), then each new leader and each proclamation, until the
    /// client goes away (the stream's receiver is dropped, and with it the member's queue).
    async fn observe(&self, req: Request<pb::LeaderRequest>) -> Reply<Self::ObserveStream> {
        self.serving().map_err(embedded)?;
        let leaders = lock::observe(&self.shared, &req.into_inner().name)
            .await
            .map_err(|f| embedded(status(f)))?;
        let (tx, rx) = tokio::sync::mpsc::channel(OBSERVE_BACKLOG_MAX);
        let ctx = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    next = leaders.recv_async() => {
                        let Ok((revision, kv)) = next else {
                            // The member stops.
                            let _ = tx.send(Err(embedded(status((
                                crate::protocol::ErrorCode::Unavailable,
                                crate::server::front::STOPPING.into(),
                            ))))).await;
                            break;
                        };
                        if tx.send(Ok(ctx.leader_response(revision, kv))).await.is_err() {
                            break;
                        }
                    }
                    () = tx.closed() => break,
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn resign(&self, req: Request<pb::ResignRequest>) -> Reply<pb::ResignResponse> {
        self.serving().map_err(embedded)?;
        let leader = leader_key(req.into_inner().leader.ok_or_else(missing_leader)?);
        match self.at_once(LockRequest::Resign { leader }).await? {
            LockResponse::Resign { header } => Ok(Response::new(pb::ResignResponse {
                header: self.header(header.revision),
            })),
            _ => Err(Status::internal("a resign got another kind of reply")),
        }
    }
}
