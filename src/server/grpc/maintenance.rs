//! etcd's Maintenance service: Status, Alarm, Hash, HashKV, Snapshot, Defragment and
//! MoveLeader. Downgrade is answered Unimplemented.

use super::status::status;
use super::Ctx;
use crate::grpc::pb::etcdserverpb as pb;
use crate::server::{front, maintenance};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

type Reply<T> = Result<Response<T>, Status>;

/// The chunks of a snapshot as tonic sends them.
pub(crate) type SnapshotChunks = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>,
>;

/// The etcd API version cairn speaks, as Status reports it (clients compare it with
/// the versions they know).
pub(crate) const ETCD_API_VERSION: &str = "3.4.0";

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not served by cairn's gRPC API yet"))
}

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for Ctx {
    async fn alarm(&self, req: Request<pb::AlarmRequest>) -> Reply<pb::AlarmResponse> {
        let req = super::convert::alarm_request(req.into_inner())?;
        let member_id = self.shared.status.lock().member_id;
        let alarms = self.shared.alarms.request(member_id, &req);
        Ok(Response::new(pb::AlarmResponse {
            header: self.header_now(),
            alarms: alarms
                .alarms
                .into_iter()
                .map(super::convert::alarm_member)
                .collect(),
        }))
    }

    async fn status(&self, _: Request<pb::StatusRequest>) -> Reply<pb::StatusResponse> {
        let s = self.shared.status();
        Ok(Response::new(pb::StatusResponse {
            header: self.header(s.revision),
            version: ETCD_API_VERSION.into(),
            db_size: s.db_size as i64,
            leader: s.leader,
            raft_index: s.raft_index,
            raft_term: s.raft_term,
            raft_applied_index: s.raft_applied_index,
            errors: s.errors,
            db_size_in_use: s.db_size_in_use as i64,
            is_learner: s.is_learner,
            db_size_quota: self.shared.config.quota_backend_bytes as i64,
            ..Default::default()
        }))
    }

    /// Answered once the member writes to the compacted file; writes go on meanwhile.
    async fn defragment(&self, _: Request<pb::DefragmentRequest>) -> Reply<pb::DefragmentResponse> {
        self.serving()?;
        maintenance::defragment(&self.shared)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DefragmentResponse {
            header: self.header_now(),
        }))
    }

    async fn hash(&self, _: Request<pb::HashRequest>) -> Reply<pb::HashResponse> {
        self.serving()?;
        let basis = maintenance::hash_basis(&self.shared)
            .await
            .map_err(status)?;
        // It reads all history: not on the runtime's thread.
        let (hash, revision) = tokio::task::spawn_blocking(move || basis.hash())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(status)?;
        Ok(Response::new(pb::HashResponse {
            header: self.header(revision),
            hash,
        }))
    }

    async fn hash_kv(&self, req: Request<pb::HashKvRequest>) -> Reply<pb::HashKvResponse> {
        let view = self
            .shared
            .view()
            .ok_or_else(|| status(front::not_open()))?;
        let h = view
            .hash_kv(req.into_inner().revision)
            .map_err(|e| status(front::error_of(e.into())))?;
        Ok(Response::new(pb::HashKvResponse {
            header: self.header(h.header.revision),
            hash: h.hash,
            compact_revision: h.compact_revision,
            hash_revision: h.header.revision,
        }))
    }

    type SnapshotStream = SnapshotChunks;

    /// The member's tree as of a checkpoint taken now, in chunks of at most 1 MiB, the
    /// SHA-256 trailer last (what `etcdctl snapshot save` writes and `restore` checks). The
    /// chunks are read on a thread of their own, a few ahead of the sending; when the
    /// client goes away tonic drops the stream, and the reading stops.
    async fn snapshot(&self, _: Request<pb::SnapshotRequest>) -> Reply<Self::SnapshotStream> {
        self.serving()?;
        let chunks = maintenance::snapshot_chunks(&self.shared, None)
            .await
            .map_err(status)?;
        let header = self.header_now();
        let stream = chunks.into_stream().map(move |chunk| match chunk {
            Ok(c) => Ok(pb::SnapshotResponse {
                header,
                remaining_bytes: c.remaining_bytes,
                blob: c.blob,
                version: ETCD_API_VERSION.into(),
            }),
            Err(e) => Err(Status::internal(e)),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn move_leader(
        &self,
        req: Request<pb::MoveLeaderRequest>,
    ) -> Reply<pb::MoveLeaderResponse> {
        self.serving()?;
        front::move_leader(&self.shared, req.into_inner().target_id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::MoveLeaderResponse {
            header: self.header_now(),
        }))
    }

    async fn downgrade(&self, _: Request<pb::DowngradeRequest>) -> Reply<pb::DowngradeResponse> {
        Err(not_yet("Downgrade"))
    }
}
