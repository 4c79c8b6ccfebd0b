//! etcd's Cluster service. Changes are taken by the leader: a follower hands them to the
//! leader over the native protocol, so a client may ask any member, as with etcd.

use super::status::status;
use super::Ctx;
use crate::grpc::pb::etcdserverpb as pb;
use crate::protocol::{ClientRequest, ClientResponse, MemberRequest, MemberResponse};
use crate::server::front;
use tonic::{Request, Response, Status};

type Reply<T> = Result<Response<T>, Status>;

impl Ctx {
    async fn members(&self, req: MemberRequest) -> Result<MemberResponse, Status> {
        let local = match front::member(&self.shared, req.clone()).await {
            Err((_, m)) if m.starts_with("etcdserver: not leader") => None,
            other => Some(other.map_err(status)?),
        };
        let r = match local {
            Some(r) => front::member_urls(r, false),
            None => match self
                .forward(ClientRequest::Member(req))
                .await
                .map_err(status)?
            {
                ClientResponse::Member(r) => self.local_client_urls(r),
                _ => {
                    return Err(Status::internal(
                        "the leader answered with another kind of reply",
                    ))
                }
            },
        };
        Ok(r)
    }

    /// The leader's native front end lists native addresses: each member's gRPC client
    /// URLs are taken from this member's membership instead.
    fn local_client_urls(&self, mut r: MemberResponse) -> MemberResponse {
        let ms = self.shared.membership.lock();
        let grpc_urls = |id: u64| {
            ms.member(id).map_or_else(Vec::new, |m| {
                m.client_urls
                    .iter()
                    .filter(|u| !u.starts_with(front::NATIVE_SCHEME))
                    .cloned()
                    .collect()
            })
        };
        for m in r.members.iter_mut().chain(r.member.as_mut()) {
            m.client_urls = grpc_urls(m.id);
        }
        r
    }

    fn member_list(&self, r: MemberResponse) -> Vec<pb::Member> {
        r.members.into_iter().map(super::convert::member).collect()
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for Ctx {
    async fn member_add(&self, req: Request<pb::MemberAddRequest>) -> Reply<pb::MemberAddResponse> {
        let req = req.into_inner();
        self.serving()?;
        let r = self
            .members(MemberRequest::Add {
                peer_urls: req.peer_ur_ls,
                is_learner: req.is_learner,
            })
            .await?;
        let member = r.member.clone().map(super::convert::member);
        Ok(Response::new(pb::MemberAddResponse {
            header: self.header_now(),
            member,
            members: self.member_list(r),
        }))
    }

    async fn member_remove(
        &self,
        req: Request<pb::MemberRemoveRequest>,
    ) -> Reply<pb::MemberRemoveResponse> {
        self.serving()?;
        let id = req.into_inner().id;
        let r = self.members(MemberRequest::Remove { id }).await?;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: self.header_now(),
            members: self.member_list(r),
        }))
    }

    async fn member_update(
        &self,
        req: Request<pb::MemberUpdateRequest>,
    ) -> Reply<pb::MemberUpdateResponse> {
        self.serving()?;
        let req = req.into_inner();
        let r = self
            .members(MemberRequest::Update {
                id: req.id,
                peer_urls: req.peer_ur_ls,
            })
            .await?;
        Ok(Response::new(pb::MemberUpdateResponse {
            header: self.header_now(),
            members: self.member_list(r),
        }))
    }

    async fn member_list(
        &self,
        req: Request<pb::MemberListRequest>,
    ) -> Reply<pb::MemberListResponse> {
        // Linearizable unless asked otherwise (etcd 3.5's field): confirm the membership
        // is the one committed.
        if req.into_inner().linearizable {
            self.reads.read_index().await.map_err(status)?;
        }
        let r = self.members(MemberRequest::List).await?;
        Ok(Response::new(pb::MemberListResponse {
            header: self.header_now(),
            members: self.member_list(r),
        }))
    }

    async fn member_promote(
        &self,
        req: Request<pb::MemberPromoteRequest>,
    ) -> Reply<pb::MemberPromoteResponse> {
        self.serving()?;
        let id = req.into_inner().id;
        let r = self.members(MemberRequest::Promote { id }).await?;
        Ok(Response::new(pb::MemberPromoteResponse {
            header: self.header_now(),
            members: self.member_list(r),
        }))
    }
}
