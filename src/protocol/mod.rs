//! The native protocol: length-prefixed frames on TCP, each carrying a request id, a kind
//! and an rkyv-archived message that is validated (bytecheck) before use. Many requests may
//! be in flight on one connection and are answered in any order. Format: `docs/protocol.md`.
//!
//! A request's payload bytes are what the server proposes to Raft for a write, unchanged:
//! the apply loop reads them in place, so values are never re-encoded.

mod frame;

pub use frame::{split_frame, FrameHeader, FrameKind, HEADER_BYTES, MAGIC, VERSION};

use crate::mvcc::{Request, Response};
use rkyv::api::high::HighSerializer;
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::rancor::Strategy;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::validation::archive::ArchiveValidator;
use rkyv::validation::shared::SharedValidator;
use rkyv::validation::Validator;
use rkyv::{Archive, Deserialize, Portable, Serialize};
use std::num::NonZeroUsize;

/// Default largest payload of one frame, in bytes (etcd's request limit, 1.5 MiB, plus
/// room for the envelope).
pub const PAYLOAD_BYTES_MAX_DEFAULT: u32 = (3 << 19) + 4096;

/// Deepest nesting of archived objects a payload may have (each `Vec`, string or nested
/// transaction is one level). Validation, deserialization and dropping all recurse once per
/// level, and a frame has room for tens of thousands of nested transactions: enough to
/// overflow a thread's stack. A transaction nested deeper than etcd's default limit of 128
/// operations allows is refused by validation anyway.
pub const ARCHIVE_DEPTH_MAX: usize = 256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("not a cairn frame (first byte {0:#04x})")]
    BadMagic(u8),
    #[error("unsupported protocol version {0}")]
    BadVersion(u8),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("reserved header bits are set")]
    ReservedBits,
    #[error("frame payload of {bytes} bytes exceeds the {limit}-byte limit")]
    TooLarge { bytes: u32, limit: u32 },
    #[error("payload is not a valid archived message: {0}")]
    InvalidPayload(String),
    #[error("payload buffer is not aligned to {HEADER_BYTES} bytes")]
    Misaligned,
    #[error("cannot encode message: {0}")]
    Encode(String),
}

/// What a client asks of a server.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ClientRequest {
    /// A key-value request: Range, Put, DeleteRange, Txn or Compaction.
    Kv(Request),
    /// The member's state (etcd's `StatusRequest`).
    Status,
    /// Lists, raises or disarms alarms (etcd's `AlarmRequest`).
    Alarm(AlarmRequest),
    /// The hash of the member's key-value history up to a revision, 0 for the current one
    /// (etcd's `HashKVRequest`).
    HashKv(i64),
    /// Hands leadership to the member with this id (etcd's `MoveLeaderRequest`); only the
    /// leader takes it.
    MoveLeader(u64),
    /// Lists or changes the cluster's members (etcd's `Cluster` service).
    Member(MemberRequest),
    /// Creates or cancels a watcher, or asks for progress (etcd's `Watch` stream). The
    /// responses of a watcher come on the request id of its `Create`, as many frames as
    /// it has responses, until it is canceled; a `Cancel` or `Progress` is answered on its
    /// own request id.
    Watch(crate::watch::WatchRequest),
    /// Lock, election and semaphore requests (etcd's `Lock` and `Election` services).
    /// A `Lock`, `Campaign` or `Acquire` is answered once the caller holds.
    Lock(crate::lock::LockRequest),
    /// etcd's `Lease` service: grants and revokes go through the log; keepalives and
    /// time-to-live are answered by the leader (a follower answers Unavailable, "etcdserver:
    /// not leader: ..."); the list by any member, from its table.
    Lease(crate::lease::LeaseRequest),
    /// etcd's `SnapshotRequest`: the member's tree as of a checkpoint taken now, all of it
    /// or (given the end of an earlier snapshot of this member) only what was appended
    /// since. Answered by [`SnapshotChunk`]s on the request's id, in order, the last one
    /// with `remaining_bytes` 0. Format of what they make up: `docs/backup.md`.
    Snapshot(Option<SnapshotBase>),
    /// etcd's `DefragmentRequest`: reclaims the member's dead space; answered once it
    /// writes to the compacted file.
    Defragment,
}

/// Where an earlier snapshot ended, for an incremental one (`crate::backup::SnapshotPoint`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotBase {
    pub end: u64,
    pub tail_crc: u32,
    pub sha256: [u8; 32],
}

impl From<crate::backup::SnapshotPoint> for SnapshotBase {
    fn from(p: crate::backup::SnapshotPoint) -> SnapshotBase {
        SnapshotBase {
            end: p.end,
            tail_crc: p.tail_crc,
            sha256: p.sha256,
        }
    }
}

impl From<SnapshotBase> for crate::backup::SnapshotPoint {
    fn from(b: SnapshotBase) -> crate::backup::SnapshotPoint {
        crate::backup::SnapshotPoint {
            end: b.end,
            tail_crc: b.tail_crc,
            sha256: b.sha256,
        }
    }
}

/// One piece of a snapshot (etcd's `SnapshotResponse`): the bytes, and how many follow.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SnapshotChunk {
    pub remaining_bytes: u64,
    pub blob: Vec<u8>,
}

/// etcd's `Cluster` service requests. Changes are taken by the leader only (a follower
/// answers Unavailable, naming the leader), one at a time.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum MemberRequest {
    /// etcd's `MemberListRequest`: this member's view of the membership.
    List,
    /// etcd's `MemberAddRequest`: a new member (voter, or learner) with these peer URLs;
    /// the leader chooses its id.
    Add {
        peer_urls: Vec<String>,
        is_learner: bool,
    },
    /// etcd's `MemberRemoveRequest`.
    Remove { id: u64 },
    /// etcd's `MemberUpdateRequest`: new peer URLs for a member.
    Update { id: u64, peer_urls: Vec<String> },
    /// etcd's `MemberPromoteRequest`: a learner in sync with the leader becomes a voter.
    Promote { id: u64 },
}

/// etcd's `Member`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Member {
    pub id: u64,
    /// Empty until the member has started.
    pub name: String,
    pub peer_urls: Vec<String>,
    /// Empty until the member has started.
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// The answer to every [`MemberRequest`] (etcd's `Member*Response`): the member added (for
/// `Add`), and the members after the request took effect.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct MemberResponse {
    pub cluster_id: u64,
    /// The member that answered.
    pub member_id: u64,
    pub member: Option<Member>,
    pub members: Vec<Member>,
}

/// etcd's `AlarmType` (without `NONE`, which is `None` where a type is optional).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlarmType {
    /// Space ran out: the database quota, or the file system under the data directory.
    /// Writes that add data are refused until the alarm is disarmed.
    Nospace,
    /// The data was found corrupt.
    Corrupt,
}

impl AlarmType {
    /// etcd's name of the alarm, as `etcdctl alarm list` prints it.
    pub fn name(self) -> &'static str {
        match self {
            AlarmType::Nospace => "NOSPACE",
            AlarmType::Corrupt => "CORRUPT",
        }
    }
}

/// etcd's `AlarmMember`: an alarm raised on a member.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlarmMember {
    pub member_id: u64,
    pub alarm: AlarmType,
}

impl std::fmt::Display for AlarmMember {
    /// As etcd prints one: `memberID:10276657743932975437 alarm:NOSPACE`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "memberID:{} alarm:{}", self.member_id, self.alarm.name())
    }
}

/// etcd's `AlarmRequest.AlarmAction`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlarmAction {
    Get,
    Activate,
    Deactivate,
}

/// etcd's `AlarmRequest`. `member_id` 0 and `alarm` `None` match every member and type
/// (for `Get`); `Activate` and `Deactivate` name one alarm.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AlarmRequest {
    pub action: AlarmAction,
    pub member_id: u64,
    pub alarm: Option<AlarmType>,
}

/// etcd's `AlarmResponse`: the alarms listed, raised or disarmed.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct AlarmResponse {
    pub alarms: Vec<AlarmMember>,
}

/// etcd's `StatusResponse`, as far as cairn has its fields.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct StatusResponse {
    pub cluster_id: u64,
    pub member_id: u64,
    pub leader: u64,
    pub raft_term: u64,
    pub raft_index: u64,
    pub raft_applied_index: u64,
    pub revision: i64,
    pub db_size: u64,
    pub db_size_in_use: u64,
    /// The member's raised alarms, as etcd lists them (`memberID:... alarm:NOSPACE`).
    pub errors: Vec<String>,
    /// The member is a learner (etcd's `isLearner`).
    pub is_learner: bool,
}

/// A successful reply.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ClientResponse {
    Kv(Response),
    Status(StatusResponse),
    Alarm(AlarmResponse),
    HashKv(crate::mvcc::HashKvResponse),
    /// Leadership moved to the member asked for.
    MoveLeader,
    Member(MemberResponse),
    Watch(crate::watch::WatchResponse),
    Lock(crate::lock::LockResponse),
    Lease(crate::lease::LeaseResponse),
    Snapshot(SnapshotChunk),
    /// The member writes to its compacted file now.
    Defragment,
}

/// Why a request (or, with request id 0, the connection) failed.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    pub code: ErrorCode,
    /// For request errors, etcd's message (e.g. "etcdserver: key is not provided").
    pub message: String,
}

/// Error classes a client can act on.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The frame could not be read; the server closes the connection after this reply.
    Malformed,
    /// The request is well formed but invalid (etcd's InvalidArgument and similar).
    InvalidRequest,
    /// Too many requests in flight on this connection; retry later.
    Overloaded,
    /// The server cannot serve now (no leader, shutting down); retry elsewhere or later.
    Unavailable,
    /// The request failed on the server; the message says how.
    Internal,
    /// The NOSPACE alarm is raised (the database went over its quota,
    /// `--quota-backend-bytes`, or the file system is full): writes that add data are
    /// refused until space is freed and the alarm disarmed; reads, deletes and compaction
    /// go on.
    NoSpace,
}

fn frame(kind: FrameKind, request_id: u64, payload: &[u8]) -> Result<AlignedVec, ProtocolError> {
    let payload_bytes = u32::try_from(payload.len())
        .map_err(|_| ProtocolError::Encode(format!("payload of {} bytes", payload.len())))?;
    let mut out = AlignedVec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(
        &FrameHeader {
            kind,
            request_id,
            payload_bytes,
        }
        .encode(),
    );
    out.extend_from_slice(payload);
    Ok(out)
}

fn archive<T>(value: &T) -> Result<AlignedVec, ProtocolError>
where
    T: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
{
    rkyv::to_bytes::<rancor::Error>(value).map_err(|e| ProtocolError::Encode(e.to_string()))
}

/// A whole request frame.
pub fn encode_request(
    request_id: u64,
    request: &ClientRequest,
) -> Result<AlignedVec, ProtocolError> {
    frame(FrameKind::Request, request_id, &archive(request)?)
}

/// A request archived as the native protocol carries it, without the frame header: the
/// body of the log command a write becomes (`crate::node::command::client`).
pub fn archive_request(request: &ClientRequest) -> Result<AlignedVec, ProtocolError> {
    archive(request)
}

/// A whole response frame.
pub fn encode_response(
    request_id: u64,
    response: &ClientResponse,
) -> Result<AlignedVec, ProtocolError> {
    frame(FrameKind::Response, request_id, &archive(response)?)
}

/// A whole error frame.
pub fn encode_error(request_id: u64, error: &ErrorReply) -> Result<AlignedVec, ProtocolError> {
    frame(FrameKind::Error, request_id, &archive(error)?)
}

fn check_aligned(payload: &[u8]) -> Result<(), ProtocolError> {
    if !payload.is_empty() && !(payload.as_ptr() as usize).is_multiple_of(HEADER_BYTES) {
        return Err(ProtocolError::Misaligned);
    }
    Ok(())
}

fn invalid(e: rancor::Error) -> ProtocolError {
    ProtocolError::InvalidPayload(e.to_string())
}

type DepthValidator<'a> = Validator<ArchiveValidator<'a>, SharedValidator>;

/// Validates an archived `T` in place, nested at most [`ARCHIVE_DEPTH_MAX`] levels deep.
fn access<'a, T>(payload: &'a [u8]) -> Result<&'a T, ProtocolError>
where
    T: Portable + for<'v> CheckBytes<Strategy<DepthValidator<'v>, rancor::Error>>,
{
    check_aligned(payload)?;
    let mut validator = Validator::new(
        ArchiveValidator::with_max_depth(payload, NonZeroUsize::new(ARCHIVE_DEPTH_MAX)),
        SharedValidator::new(),
    );
    rkyv::api::access_with_context::<T, _, rancor::Error>(payload, &mut validator).map_err(invalid)
}

/// Validates a request payload and gives access to it in place. The payload must start at
/// a 16-byte-aligned address (read frames into an [`AlignedVec`]).
pub fn access_request(payload: &[u8]) -> Result<&ArchivedClientRequest, ProtocolError> {
    access::<ArchivedClientRequest>(payload)
}

/// Validates and copies out a response payload (client side).
pub fn decode_response(payload: &[u8]) -> Result<ClientResponse, ProtocolError> {
    let archived = access::<ArchivedClientResponse>(payload)?;
    rkyv::deserialize::<ClientResponse, rancor::Error>(archived).map_err(invalid)
}

/// Validates and copies out a request payload.
pub fn decode_request(payload: &[u8]) -> Result<ClientRequest, ProtocolError> {
    rkyv::deserialize::<ClientRequest, rancor::Error>(access_request(payload)?).map_err(invalid)
}

/// Validates and copies out an error payload (client side).
pub fn decode_error(payload: &[u8]) -> Result<ErrorReply, ProtocolError> {
    let archived = access::<ArchivedErrorReply>(payload)?;
    rkyv::deserialize::<ErrorReply, rancor::Error>(archived).map_err(invalid)
}

#[cfg(test)]
mod tests;
