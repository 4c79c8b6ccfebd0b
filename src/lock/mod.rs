//! Locks, elections and semaphores on top of keys, revisions and leases, as etcd's v3lock
//! and v3election services and its `concurrency` recipes define them.
//!
//! A contender puts `NAME/LEASE` (the lease id in hex), owned by its lease, once (a
//! transaction: created only if it does not exist). Its key's create revision orders it:
//! the holders are the keys with the lowest create revisions under `NAME/` (one for a lock
//! or an election, N for a semaphore). A contender that does not hold waits only for the
//! deletion of the keys just before its own (the one before, for a lock), never for all of
//! them, so a release wakes one waiter. A holder's create revision is its fencing token:
//! it increases with every new holder. A holder that dies loses its key when its lease
//! expires, and the next contender holds. A contender whose client goes away while it
//! waits is withdrawn at once (its key deleted, if it is still the key it put), as etcd's
//! services do; like theirs, a client that loses its connection and asks again with the
//! same lease may see its key withdrawn under it, and must treat the lock as lost when a
//! protected write's fence no longer matches.
//!
//! The waiting is done by the apply role ([`Waiters`]), which sees every deletion as it is
//! applied, on every member alike; so is the observing of elections ([`Observers`]). The
//! requests are handled by the net shards and by the gRPC Lock and Election services.

mod observers;
mod types;
mod waiters;

pub use observers::{LeaderSink, Observers};
pub use types::*;
pub use waiters::{LockWait, Outcome, Waiters};

/// The key of a contender: `NAME/` and the lease id in hex, as etcd's v3lock makes it.
pub fn contender_key(name: &[u8], lease: i64) -> Vec<u8> {
    let mut key = prefix(name);
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    key
}

/// `NAME/`: the prefix every contender's key is under.
pub fn prefix(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}
