//! Lease requests and responses, one to one with etcd v3's `etcdserverpb` Lease messages
//! (`rpc.proto` of etcd 3.4), so that a gRPC front end maps onto them field by field.

use crate::mvcc::ResponseHeader;
use rkyv::{Archive, Deserialize, Serialize};

/// `etcdserverpb.LeaseGrantRequest`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaseGrantRequest {
    /// Seconds; raised to the cluster's minimum TTL, refused above [`super::MAX_LEASE_TTL_S`].
    pub ttl: i64,
    /// 0: the server chooses one.
    pub id: i64,
}

/// `etcdserverpb.LeaseGrantResponse`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaseGrantResponse {
    pub header: ResponseHeader,
    pub id: i64,
    /// Seconds, as granted (after raising it to the minimum).
    pub ttl: i64,
}

/// `etcdserverpb.LeaseRevokeRequest`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaseRevokeRequest {
    pub id: i64,
}

/// `etcdserverpb.LeaseRevokeResponse`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaseRevokeResponse {
    pub header: ResponseHeader,
}

/// `etcdserverpb.LeaseKeepAliveRequest`: one renewal (the stream is the client's loop).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaseKeepAliveRequest {
    pub id: i64,
}

/// `etcdserverpb.LeaseKeepAliveResponse`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaseKeepAliveResponse {
    pub header: ResponseHeader,
    pub id: i64,
    /// The TTL the lease was renewed with, in seconds.
    pub ttl: i64,
}

/// `etcdserverpb.LeaseTimeToLiveRequest`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaseTimeToLiveRequest {
    pub id: i64,
    /// List the keys attached to the lease.
    pub keys: bool,
}

/// `etcdserverpb.LeaseTimeToLiveResponse`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseTimeToLiveResponse {
    pub header: ResponseHeader,
    pub id: i64,
    /// Seconds left, -1 if the lease does not exist (expired or revoked), as etcd answers.
    pub ttl: i64,
    /// Seconds, as granted.
    pub granted_ttl: i64,
    pub keys: Vec<Vec<u8>>,
}

/// `etcdserverpb.LeaseStatus`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaseStatus {
    pub id: i64,
}

/// `etcdserverpb.LeaseLeasesResponse`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseLeasesResponse {
    pub header: ResponseHeader,
    pub leases: Vec<LeaseStatus>,
}

/// etcd's Lease service requests.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseRequest {
    Grant(LeaseGrantRequest),
    Revoke(LeaseRevokeRequest),
    KeepAlive(LeaseKeepAliveRequest),
    TimeToLive(LeaseTimeToLiveRequest),
    /// `etcdserverpb.LeaseLeasesRequest` (no fields).
    Leases,
}

/// etcd's Lease service responses, one per [`LeaseRequest`] variant.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum LeaseResponse {
    Grant(LeaseGrantResponse),
    Revoke(LeaseRevokeResponse),
    KeepAlive(LeaseKeepAliveResponse),
    TimeToLive(LeaseTimeToLiveResponse),
    Leases(LeaseLeasesResponse),
}
