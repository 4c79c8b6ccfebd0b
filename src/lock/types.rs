//! Lock, election and semaphore requests and responses, close to etcd's `v3lockpb` and
//! `v3electionpb` messages (the semaphore is cairn's: a lock with N holders).

use crate::mvcc::{KeyValue, ResponseHeader};
use rkyv::{Archive, Deserialize, Serialize};

/// `v3electionpb.LeaderKey`: a campaign's key, identifying the leader it made.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaderKey {
    pub name: Vec<u8>,
    pub key: Vec<u8>,
    /// The key's create revision.
    pub rev: i64,
    pub lease: i64,
}

/// What a client asks of the lock, election and semaphore services.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum LockRequest {
    /// `v3lockpb.LockRequest`: waits until the caller holds the lock `name`, its key owned
    /// by `lease` (which must exist).
    Lock { name: Vec<u8>, lease: i64 },
    /// `v3lockpb.UnlockRequest`: deletes the key a `Lock` returned.
    Unlock { key: Vec<u8> },
    /// `v3electionpb.CampaignRequest`: waits until the caller leads the election `name`,
    /// with `value` as its proposal.
    Campaign {
        name: Vec<u8>,
        lease: i64,
        value: Vec<u8>,
    },
    /// `v3electionpb.ProclaimRequest`: the leader sets a new value.
    Proclaim { leader: LeaderKey, value: Vec<u8> },
    /// `v3electionpb.LeaderRequest`: the current leader's key and value.
    Leader { name: Vec<u8> },
    /// `v3electionpb.ResignRequest`: the leader gives up (its key is deleted).
    Resign { leader: LeaderKey },
    /// Waits until the caller is one of the first `limit` contenders of the semaphore
    /// `name`.
    Acquire {
        name: Vec<u8>,
        lease: i64,
        limit: u32,
    },
    /// Releases what `Acquire` returned (deletes its key).
    Release { key: Vec<u8> },
    /// `v3electionpb.LeaderRequest` on `Observe`: a stream of `Leader` responses, the
    /// election's leader now (if any) and at each change (a new leader, a proclamation),
    /// until the client closes the connection.
    Observe { name: Vec<u8> },
}

/// The answers, one per request kind.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum LockResponse {
    /// The key held, and its create revision: a fencing token that increases with every
    /// new holder.
    Lock {
        header: ResponseHeader,
        key: Vec<u8>,
        revision: i64,
    },
    Unlock {
        header: ResponseHeader,
    },
    Campaign {
        header: ResponseHeader,
        leader: LeaderKey,
    },
    Proclaim {
        header: ResponseHeader,
    },
    /// The leader's key-value (none without a leader: etcd's "election: no leader" error
    /// is given instead).
    Leader {
        header: ResponseHeader,
        kv: KeyValue,
    },
    Resign {
        header: ResponseHeader,
    },
    Acquire {
        header: ResponseHeader,
        key: Vec<u8>,
        revision: i64,
    },
    Release {
        header: ResponseHeader,
    },
}

/// etcd's error for a proclaim or resign by one that does not lead.
pub const NOT_LEADER: &str = "election: not leader";
/// etcd's error when an election has no leader.
pub const NO_LEADER: &str = "election: no leader";
/// A contender's key was deleted while it waited (its lease expired, or someone deleted
/// it): it will never hold.
pub const KEY_GONE: &str = "the contender's key was deleted while it waited (its lease expired?)";
