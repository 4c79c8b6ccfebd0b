//! Leases, as in etcd v3: a lease has an id and a TTL; keys put with it are deleted when it
//! is revoked or expires. Rules and formats: `docs/leases.md`.
//!
//! # Layout
//!
//! - `types`: the Lease service's requests and responses, one to one with etcd's messages.
//! - [`LeaseOp`]: what the log carries for leases (grants, revokes, TTL checkpoints);
//!   encoded by [`crate::node::command`].
//! - `clock`: [`LeaseClock`], the leader's deadlines, sans-IO: keepalives, expiry (revokes
//!   to propose), checkpoints of remaining TTLs, the extension on becoming leader.
//! - `id`: [`LeaseIds`], the ids a member chooses for grants that ask for none.
//!
//! The table of leases (ids, TTLs, checkpointed remaining TTLs, attached keys) is the MVCC
//! store's: it lives in the store's tree file, changes only by applied log entries, the same
//! on every member (`crate::mvcc::LeaseTable`).

mod clock;
mod id;
mod types;

pub use clock::{
    ClockConfig, LeaseClock, LeaseTimes, Renewal, CHECKPOINT_INTERVAL_MS_DEFAULT,
    REVOKES_PER_S_DEFAULT,
};
pub use id::LeaseIds;
pub use types::*;

/// The longest TTL a lease may be granted, in seconds (etcd's `MaxLeaseTTL`).
pub const MAX_LEASE_TTL_S: i64 = 9_000_000_000;

/// Lease checkpoints in one log entry, at most (etcd's `maxLeaseCheckpointBatchSize`).
pub const CHECKPOINT_BATCH_MAX: usize = 1000;

/// The shortest TTL a lease gets, in seconds: a lease must outlive an election, or a leader
/// change would expire it (etcd's `minTTL`: 1.5 election timeouts, rounded up).
pub fn min_ttl_s(election_timeout_ms: u64, heartbeat_interval_ms: u64) -> i64 {
    let heartbeat = heartbeat_interval_ms.max(1);
    let election_ticks = election_timeout_ms / heartbeat;
    let min_ms = (3 * election_ticks / 2) * heartbeat;
    min_ms.div_ceil(1000).max(1) as i64
}

/// What the log carries for leases: what clients ask (grant, revoke), and what the leader
/// alone proposes (revokes of expired leases, checkpoints of remaining TTLs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOp {
    /// A lease with this id (chosen before proposing) and TTL in seconds.
    Grant { id: i64, ttl: i64 },
    /// Deletes the lease and, in one revision, every key attached to it.
    Revoke { id: i64 },
    /// Remaining TTLs in seconds (0: none, the lease's TTL counts), at most
    /// [`CHECKPOINT_BATCH_MAX`].
    Checkpoint(Vec<(i64, i64)>),
}

/// Lease request errors, with etcd's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("etcdserver: requested lease not found")]
    NotFound,
    #[error("etcdserver: lease already exists")]
    Exists,
    #[error("etcdserver: too large lease TTL")]
    TtlTooLarge,
    /// Keepalives and time-to-live are answered by the leader, whose clock has the
    /// deadlines.
    #[error(
        "etcdserver: not leader: lease keep-alive and time-to-live are answered by the leader"
    )]
    NotLeader,
}

/// A grant as the server proposes it: the TTL checked and raised to the minimum, the id
/// chosen (from `ids`) when the client left it 0.
pub fn prepare_grant(
    r: LeaseGrantRequest,
    min_ttl_s: i64,
    ids: &LeaseIds,
) -> Result<LeaseOp, LeaseError> {
    if r.ttl > MAX_LEASE_TTL_S {
        return Err(LeaseError::TtlTooLarge);
    }
    let id = if r.id == 0 { ids.next() } else { r.id };
    Ok(LeaseOp::Grant {
        id,
        ttl: r.ttl.max(min_ttl_s),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minimum_ttl_is_etcds() {
        // etcd's defaults: 1 s election timeout, 100 ms heartbeats: 1.5 s, rounded up.
        assert_eq!(min_ttl_s(1000, 100), 2);
        assert_eq!(min_ttl_s(5000, 500), 8);
        assert_eq!(min_ttl_s(500, 50), 1);
    }

    #[test]
    fn grants_are_checked_raised_and_given_ids() {
        let ids = LeaseIds::new(1, 1000);
        let too_large = LeaseGrantRequest {
            ttl: MAX_LEASE_TTL_S + 1,
            id: 5,
        };
        assert_eq!(
            prepare_grant(too_large, 2, &ids),
            Err(LeaseError::TtlTooLarge)
        );
        let short = LeaseGrantRequest { ttl: 1, id: 5 };
        assert_eq!(
            prepare_grant(short, 2, &ids),
            Ok(LeaseOp::Grant { id: 5, ttl: 2 })
        );
        let Ok(LeaseOp::Grant { id, ttl: 60 }) =
            prepare_grant(LeaseGrantRequest { ttl: 60, id: 0 }, 2, &ids)
        else {
            panic!("not a grant");
        };
        assert!(id > 0);
    }
}
