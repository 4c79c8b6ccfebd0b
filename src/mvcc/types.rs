//! Requests and responses, one to one with etcd v3's `etcdserverpb` and `mvccpb` messages.
//!
//! They are plain data so the gRPC gateway can map onto them field by field, and they derive
//! rkyv's `Archive`/`Serialize`/`Deserialize` so the native protocol and the Raft log can carry
//! them as archived bytes. Field names and meanings follow `rpc.proto` of etcd 3.4; a proto
//! `oneof` becomes an enum (or an `Option` of one where the proto allows it to be unset).

use rkyv::{Archive, Deserialize, Serialize};

/// `mvccpb.KeyValue`: one key at one revision.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyValue {
    pub key: Vec<u8>,
    /// Revision of the last creation of this key (reset by delete).
    pub create_revision: i64,
    /// Revision of the last modification of this key.
    pub mod_revision: i64,
    /// Number of puts since the key was (re)created.
    pub version: i64,
    pub value: Vec<u8>,
    /// Lease attached to the key, 0 for none.
    pub lease: i64,
}

/// `etcdserverpb.ResponseHeader`. Cluster id, member id and raft term are filled in by the
/// server layer; the store only knows the revision.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResponseHeader {
    pub revision: i64,
}

/// `RangeRequest.SortOrder`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortOrder {
    #[default]
    None,
    Ascend,
    Descend,
}

/// `RangeRequest.SortTarget`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

/// `etcdserverpb.RangeRequest`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeRequest {
    pub key: Vec<u8>,
    /// Empty: only `key`. `[0]`: every key `>= key`. Otherwise the half-open range `[key, range_end)`.
    pub range_end: Vec<u8>,
    /// Maximum number of keys returned; `<= 0` means no limit.
    pub limit: i64,
    /// Revision to read at; `<= 0` means the current revision.
    pub revision: i64,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    /// Served by the local member without going through consensus (handled above the store).
    pub serializable: bool,
    pub keys_only: bool,
    pub count_only: bool,
    /// Filters; 0 means unset.
    pub min_mod_revision: i64,
    pub max_mod_revision: i64,
    pub min_create_revision: i64,
    pub max_create_revision: i64,
}

/// `etcdserverpb.RangeResponse`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeResponse {
    pub header: ResponseHeader,
    pub kvs: Vec<KeyValue>,
    /// More keys were left out because of `limit`.
    pub more: bool,
    /// Number of keys in the range at the read revision (before `limit` and the min/max filters).
    pub count: i64,
}

/// `etcdserverpb.PutRequest`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct PutRequest {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub lease: i64,
    pub prev_kv: bool,
    /// Keep the current value (the key must exist, `value` must be empty).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist, `lease` must be 0).
    pub ignore_lease: bool,
}

/// A put whose key and value are borrowed: from an owned [`PutRequest`], or read in place
/// from an archived request (the apply loop applies a Raft entry's bytes without copying).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutRef<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub lease: i64,
    pub prev_kv: bool,
    pub ignore_value: bool,
    pub ignore_lease: bool,
}

impl PutRequest {
    pub fn as_ref(&self) -> PutRef<'_> {
        PutRef {
            key: &self.key,
            value: &self.value,
            lease: self.lease,
            prev_kv: self.prev_kv,
            ignore_value: self.ignore_value,
            ignore_lease: self.ignore_lease,
        }
    }
}

impl<'a> PutRef<'a> {
    /// The put as it lies in an archived request.
    pub fn archived(p: &'a ArchivedPutRequest) -> PutRef<'a> {
        PutRef {
            key: p.key.as_slice(),
            value: p.value.as_slice(),
            lease: p.lease.to_native(),
            prev_kv: p.prev_kv,
            ignore_value: p.ignore_value,
            ignore_lease: p.ignore_lease,
        }
    }
}

/// `etcdserverpb.PutResponse`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct PutResponse {
    pub header: ResponseHeader,
    pub prev_kv: Option<KeyValue>,
}

/// `etcdserverpb.DeleteRangeRequest`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct DeleteRangeRequest {
    pub key: Vec<u8>,
    /// Same meaning as [`RangeRequest::range_end`].
    pub range_end: Vec<u8>,
    pub prev_kv: bool,
}

/// `etcdserverpb.DeleteRangeResponse`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct DeleteRangeResponse {
    pub header: ResponseHeader,
    pub deleted: i64,
    pub prev_kvs: Vec<KeyValue>,
}

/// `Compare.CompareResult`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompareResult {
    #[default]
    Equal,
    Greater,
    Less,
    NotEqual,
}

/// `Compare.CompareTarget`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompareTarget {
    #[default]
    Version,
    Create,
    Mod,
    Value,
    Lease,
}

/// `Compare.target_union`. As in etcd, a variant that does not match `Compare::target`
/// compares against zero (or the empty value).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum TargetUnion {
    Version(i64),
    CreateRevision(i64),
    ModRevision(i64),
    Value(Vec<u8>),
    Lease(i64),
}

/// `etcdserverpb.Compare`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Compare {
    pub result: CompareResult,
    pub target: CompareTarget,
    pub key: Vec<u8>,
    pub target_union: Option<TargetUnion>,
    /// Compare every key in the range; same meaning as [`RangeRequest::range_end`].
    pub range_end: Vec<u8>,
}

/// `etcdserverpb.RequestOp`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum RequestOp {
    Range(RangeRequest),
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
}

/// `etcdserverpb.TxnRequest`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
// The type is recursive through `RequestOp::Txn`; the bounds below replace the derive's
// generated ones, which would otherwise recurse forever.
#[rkyv(serialize_bounds(
    __S: rkyv::ser::Writer + rkyv::ser::Allocator,
    __S::Error: rkyv::rancor::Source,
))]
#[rkyv(deserialize_bounds(__D::Error: rkyv::rancor::Source))]
#[rkyv(bytecheck(bounds(
    __C: rkyv::validation::ArchiveContext,
    __C::Error: rkyv::rancor::Source,
)))]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    #[rkyv(omit_bounds)]
    pub success: Vec<RequestOp>,
    #[rkyv(omit_bounds)]
    pub failure: Vec<RequestOp>,
}

/// `etcdserverpb.ResponseOp`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ResponseOp {
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
}

/// `etcdserverpb.TxnResponse`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(serialize_bounds(
    __S: rkyv::ser::Writer + rkyv::ser::Allocator,
    __S::Error: rkyv::rancor::Source,
))]
#[rkyv(deserialize_bounds(__D::Error: rkyv::rancor::Source))]
#[rkyv(bytecheck(bounds(
    __C: rkyv::validation::ArchiveContext,
    __C::Error: rkyv::rancor::Source,
)))]
pub struct TxnResponse {
    /// The txn's revision if it wrote, else the current revision. Nested txn responses carry
    /// revision 0, as etcd 3.4 fills in only the outermost header.
    pub header: ResponseHeader,
    pub succeeded: bool,
    #[rkyv(omit_bounds)]
    pub responses: Vec<ResponseOp>,
}

/// `etcdserverpb.CompactionRequest`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompactionRequest {
    pub revision: i64,
    /// Wait until the compaction is physically applied. The store compacts synchronously
    /// inside apply, so every compaction is physical when its response is returned.
    pub physical: bool,
}

/// `etcdserverpb.CompactionResponse`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompactionResponse {
    pub header: ResponseHeader,
}

/// `etcdserverpb.HashKVResponse`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HashKvResponse {
    /// `revision` is the current revision of the store the hash was taken from.
    pub header: ResponseHeader,
    pub hash: u32,
    /// The store's compaction revision, -1 if it was never compacted.
    pub compact_revision: i64,
}

/// One entry of a Raft-applied batch: the requests of etcd's `InternalRaftRequest` that the
/// key-value store handles. `Range` is here for linearizable reads served through the log.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Range(RangeRequest),
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    Compaction(CompactionRequest),
}

/// The response to one [`Request`], or to a lease operation of the log
/// ([`crate::lease::LeaseOp`], applied by [`crate::mvcc::Store::apply_lease`]).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse),
    LeaseGrant(crate::lease::LeaseGrantResponse),
    LeaseRevoke(crate::lease::LeaseRevokeResponse),
    /// Remaining TTLs recorded (proposed by the leader; no client waits for it).
    LeaseCheckpoint(ResponseHeader),
}

/// `mvccpb.Event.EventType`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EventType {
    #[default]
    Put,
    Delete,
}

/// `mvccpb.Event`: one change a write made. A put's `kv` is the key as written; a delete's
/// is the tombstone, holding only the key and the deletion's revision in `mod_revision`
/// (etcd's form). `prev_kv` is the key before the change, when the store was asked to
/// capture it ([`crate::mvcc::Store::set_capture_prev`]) and the key existed.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    pub kind: EventType,
    pub kv: KeyValue,
    pub prev_kv: Option<KeyValue>,
}

impl Event {
    /// The revision of the write that caused it.
    pub fn revision(&self) -> i64 {
        self.kv.mod_revision
    }
}
