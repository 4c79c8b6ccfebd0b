//! etcd's KV service: ranges from the published view (after a ReadIndex unless
//! serializable), writes through the log as the native protocol's are.

use super::convert;
use super::status::{status, too_large};
use super::Ctx;
use crate::grpc::pb::etcdserverpb as pb;
use crate::mvcc::{Request, Response};
use crate::server::front;
use prost::Message;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

type Reply<T> = Result<GrpcResponse<T>, Status>;

fn unexpected() -> Status {
    Status::internal("the write was answered with another kind of response")
}

#[tonic::async_trait]
impl pb::kv_server::Kv for Ctx {
    async fn range(&self, req: GrpcRequest<pb::RangeRequest>) -> Reply<pb::RangeResponse> {
        self.range_call(req.into_inner())
            .await
            .map(GrpcResponse::new)
    }

    type RangeStreamStream = tokio_stream::Empty<Result<pb::RangeStreamResponse, Status>>;

    async fn range_stream(
        &self,
        _: GrpcRequest<pb::RangeRequest>,
    ) -> Reply<Self::RangeStreamStream> {
        Err(Status::unimplemented(
            "RangeStream is not part of etcd 3.4's API",
        ))
    }

    async fn put(&self, req: GrpcRequest<pb::PutRequest>) -> Reply<pb::PutResponse> {
        self.put_call(req.into_inner()).await.map(GrpcResponse::new)
    }

    async fn delete_range(
        &self,
        req: GrpcRequest<pb::DeleteRangeRequest>,
    ) -> Reply<pb::DeleteRangeResponse> {
        self.delete_range_call(req.into_inner())
            .await
            .map(GrpcResponse::new)
    }

    async fn txn(&self, req: GrpcRequest<pb::TxnRequest>) -> Reply<pb::TxnResponse> {
        self.txn_call(req.into_inner()).await.map(GrpcResponse::new)
    }

    async fn compact(
        &self,
        req: GrpcRequest<pb::CompactionRequest>,
    ) -> Reply<pb::CompactionResponse> {
        let req = req.into_inner();
        let c = crate::mvcc::CompactionRequest {
            revision: req.revision,
            physical: req.physical,
        };
        match self
            .write(
                Request::Compaction(c),
                self.raft_request_bytes(RAFT_COMPACTION, req.encoded_len()),
            )
            .await?
        {
            Response::Compaction(r) => Ok(GrpcResponse::new(pb::CompactionResponse {
                header: self.header(r.header.revision),
            })),
            _ => Err(unexpected()),
        }
    }
}

/// The unary calls, as tonic's service and `super::unary` both serve them.
impl Ctx {
    pub(super) async fn range_call(
        &self,
        req: pb::RangeRequest,
    ) -> Result<pb::RangeResponse, Status> {
        let req = Request::Range(convert::range_request(req)?);
        self.validate(&req)?;
        let Request::Range(r) = req else {
            return Err(unexpected());
        };
        if !r.serializable {
            self.serving()?;
            self.reads.read_index().await.map_err(status)?;
        }
        let view = self
            .shared
            .view()
            .ok_or_else(|| status(front::not_open()))?;
        let resp = view
            .range(&r)
            .map_err(|e| status(front::error_of(e.into())))?;
        let header = self.header(resp.header.revision);
        Ok(convert::range_response(resp, header))
    }

    pub(super) async fn put_call(&self, req: pb::PutRequest) -> Result<pb::PutResponse, Status> {
        let len = self.raft_request_bytes(RAFT_PUT, req.encoded_len());
        match self
            .write(Request::Put(convert::put_request(req)), len)
            .await?
        {
            Response::Put(r) => {
                let header = self.header(r.header.revision);
                Ok(convert::put_response(r, header))
            }
            _ => Err(unexpected()),
        }
    }

    pub(super) async fn delete_range_call(
        &self,
        req: pb::DeleteRangeRequest,
    ) -> Result<pb::DeleteRangeResponse, Status> {
        let len = self.raft_request_bytes(RAFT_DELETE_RANGE, req.encoded_len());
        match self
            .write(Request::DeleteRange(convert::delete_request(req)), len)
            .await?
        {
            Response::DeleteRange(r) => {
                let header = self.header(r.header.revision);
                Ok(convert::delete_response(r, header))
            }
            _ => Err(unexpected()),
        }
    }

    pub(super) async fn txn_call(&self, req: pb::TxnRequest) -> Result<pb::TxnResponse, Status> {
        let len = self.raft_request_bytes(RAFT_TXN, req.encoded_len());
        match self
            .write(Request::Txn(convert::txn_request(req)?), len)
            .await?
        {
            Response::Txn(t) => {
                let header = self.header(t.header.revision);
                Ok(convert::txn_response(t, header))
            }
            _ => Err(unexpected()),
        }
    }
}

/// The field numbers of the requests in etcd's `InternalRaftRequest`.
const RAFT_PUT: u32 = 4;
const RAFT_DELETE_RANGE: u32 = 5;
const RAFT_TXN: u32 = 6;
const RAFT_COMPACTION: u32 = 7;
/// And of its request header, and of the id in that header.
const RAFT_HEADER: u32 = 100;
const RAFT_HEADER_ID: u32 = 1;

impl Ctx {
    /// What etcd measures against `--max-request-bytes`: not the gRPC message, of
    /// `message_bytes`, but the raft request it becomes (`InternalRaftRequest`), that
    /// message as its field `field` beside a header holding the request's id. etcd makes the
    /// ids of a member with that member's id in their top 16 bits, above a time in
    /// milliseconds: as a varint, 9 or 10 bytes depending on the member.
    fn raft_request_bytes(&self, field: u32, message_bytes: usize) -> usize {
        use prost::encoding::{encoded_len_varint, key_len};
        let member = self.shared.status.lock().member_id;
        let id = ((member & 0xffff) << 48) | (1 << 47);
        let header = key_len(RAFT_HEADER_ID) + encoded_len_varint(id);
        key_len(RAFT_HEADER)
            + encoded_len_varint(header as u64)
            + header
            + key_len(field)
            + encoded_len_varint(message_bytes as u64)
            + message_bytes
    }

    fn validate(&self, req: &Request) -> Result<(), Status> {
        crate::mvcc::validate(req, self.shared.config.max_txn_ops)
            .map_err(|e| status((crate::protocol::ErrorCode::InvalidRequest, e.to_string())))
    }

    /// A write through the log: the request archived as a native client would send it,
    /// so that the log command is the same whichever front end took it.
    async fn write(&self, req: Request, request_bytes: usize) -> Result<Response, Status> {
        if request_bytes > self.max_request_bytes {
            return Err(too_large());
        }
        self.validate(&req)?;
        self.serving()?;
        let adds_data = front::adds_data(&req);
        let archived = crate::protocol::archive_request(&crate::protocol::ClientRequest::Kv(req))
            .map_err(|e| Status::internal(e.to_string()))?;
        if adds_data && front::no_space(&self.shared, archived.len()) {
            return Err(status((
                crate::protocol::ErrorCode::NoSpace,
                front::NO_SPACE.into(),
            )));
        }
        let command = crate::node::command::client(&archived);
        self.hub
            .propose(&self.shared, command)
            .await
            .map_err(status)
    }
}
