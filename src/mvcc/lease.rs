//! [`LeaseTable`]: the leases the store knows, the same on every member: changed only by
//! applied log entries (grants, revokes, checkpoints) and by the writes that attach keys
//! to leases or detach them. The lease module's clock (`crate::lease::LeaseClock`) keeps
//! the leader's deadlines; this table holds what must survive a restart and a leader change.
//!
//! Storage: tree 1 of the store's file ([`LEASE_TREE`]), one entry per lease, written as the
//! entries apply and made durable by the store's checkpoint, in the same commit as the keys
//! (the commit's applied index covers both):
//!
//! ```text
//! key    id (i64 as 8 bytes big-endian)
//! value  format = 1 (1 byte) | ttl i64 LE (seconds, as granted)
//!        | remaining_ttl i64 LE (seconds left at the last checkpoint; 0 = none)
//! ```
//!
//! Attached keys are not stored: the primary tree's records carry each key's lease, and
//! opening the store (one scan of every record) rebuilds them from the live keys.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

use crate::btree::{Db, TreeId};
use crate::lease::{LeaseError, LeaseTimes};

use super::apply::LeaseCheck;
use super::error::MvccError;
use super::types::{Event, EventType};

/// The tree holding the lease records (the primary tree is 0).
pub(crate) const LEASE_TREE: TreeId = 1;

const RECORD_FORMAT: u8 = 1;
const RECORD_BYTES: usize = 1 + 8 + 8;

/// One lease.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lease {
    /// Seconds, as granted.
    pub ttl: i64,
    /// Seconds left at the last checkpoint; 0 when there is none (or a keepalive cleared it).
    pub remaining_ttl: i64,
    /// The live keys put with this lease.
    pub keys: BTreeSet<Vec<u8>>,
}

/// A change to the table, for the leader's clock (taken after each batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseChange {
    Granted { id: i64, ttl: i64 },
    Revoked { id: i64 },
}

#[derive(Debug, Default)]
pub struct LeaseTable {
    leases: BTreeMap<i64, Lease>,
    /// Each attached key's lease.
    attached: HashMap<Vec<u8>, i64>,
    /// Grants and revokes since [`LeaseTable::take_changes`].
    changes: Vec<LeaseChange>,
}

impl LeaseCheck for LeaseTable {
    fn lease_exists(&self, lease: i64) -> bool {
        self.leases.contains_key(&lease)
    }
}

fn record(l: &Lease) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_BYTES);
    out.push(RECORD_FORMAT);
    out.extend_from_slice(&l.ttl.to_le_bytes());
    out.extend_from_slice(&l.remaining_ttl.to_le_bytes());
    out
}

fn decode(key: &[u8], value: &[u8]) -> Result<(i64, Lease), MvccError> {
    let corrupt = MvccError::CorruptMeta;
    let id = <[u8; 8]>::try_from(key).map_err(|_| corrupt("a lease key is not 8 bytes"))?;
    if value.len() != RECORD_BYTES || value[0] != RECORD_FORMAT {
        return Err(corrupt("a lease record of unknown format"));
    }
    let int = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&value[at..at + 8]);
        i64::from_le_bytes(b)
    };
    let lease = Lease {
        ttl: int(1),
        remaining_ttl: int(9),
        keys: BTreeSet::new(),
    };
    Ok((i64::from_be_bytes(id), lease))
}

fn key(id: i64) -> [u8; 8] {
    id.to_be_bytes()
}

impl LeaseTable {
    /// The table in `db`'s lease tree, with no keys attached yet ([`LeaseTable::attach`]).
    pub(crate) fn load(db: &Db) -> Result<LeaseTable, MvccError> {
        let mut table = LeaseTable::default();
        for entry in db.range(LEASE_TREE, Bound::Unbounded, Bound::Unbounded, false) {
            let (k, v) = entry?;
            let (id, lease) = decode(&k, &v)?;
            table.leases.insert(id, lease);
        }
        Ok(table)
    }

    pub fn get(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Every lease id, ascending.
    pub fn ids(&self) -> impl Iterator<Item = i64> + '_ {
        self.leases.keys().copied()
    }

    /// Every lease's TTLs, for a new leader's clock.
    pub fn times(&self) -> impl Iterator<Item = LeaseTimes> + '_ {
        self.leases.iter().map(|(&id, l)| LeaseTimes {
            id,
            ttl: l.ttl,
            remaining_ttl: l.remaining_ttl,
        })
    }

    /// Grants and revokes applied since the last call, in order.
    pub fn take_changes(&mut self) -> Vec<LeaseChange> {
        std::mem::take(&mut self.changes)
    }

    /// Attaches `key` to `lease` (0: to none), detaching it from the lease it had. A key
    /// naming a lease the table does not hold stays unattached (it cannot happen through
    /// apply, which checks every put's lease).
    pub(crate) fn attach(&mut self, key: &[u8], lease: i64) {
        let old = if lease == 0 {
            self.attached.remove(key)
        } else {
            match self.leases.get_mut(&lease) {
                Some(l) => {
                    l.keys.insert(key.to_vec());
                    self.attached.insert(key.to_vec(), lease)
                }
                None => self.attached.remove(key),
            }
        };
        if let Some(old) = old.filter(|&old| old != lease) {
            if let Some(l) = self.leases.get_mut(&old) {
                l.keys.remove(key);
            }
        }
    }

    /// Follows the writes a transaction made: a put attaches its key to its lease (and
    /// detaches it from the one it had), a delete detaches it.
    pub(crate) fn observe(&mut self, events: &[Event]) {
        for e in events {
            match e.kind {
                EventType::Put => self.attach(&e.kv.key, e.kv.lease),
                EventType::Delete => self.attach(&e.kv.key, 0),
            }
        }
    }

    /// Adds a lease, in the table and its tree.
    pub(crate) fn grant(&mut self, db: &mut Db, id: i64, ttl: i64) -> Result<(), MvccError> {
        if id == 0 {
            return Err(MvccError::Lease(LeaseError::NotFound));
        }
        if ttl > crate::lease::MAX_LEASE_TTL_S {
            return Err(MvccError::Lease(LeaseError::TtlTooLarge));
        }
        if self.leases.contains_key(&id) {
            return Err(MvccError::Lease(LeaseError::Exists));
        }
        let lease = Lease {
            ttl,
            ..Lease::default()
        };
        db.put(LEASE_TREE, &key(id), &record(&lease))?;
        self.leases.insert(id, lease);
        self.changes.push(LeaseChange::Granted { id, ttl });
        Ok(())
    }

    /// Removes a lease (its keys were deleted first), from the table and its tree.
    pub(crate) fn remove(&mut self, db: &mut Db, id: i64) -> Result<(), MvccError> {
        if let Some(l) = self.leases.remove(&id) {
            for k in &l.keys {
                self.attached.remove(k);
            }
            db.delete(LEASE_TREE, &key(id))?;
            self.changes.push(LeaseChange::Revoked { id });
        }
        Ok(())
    }

    /// Records the remaining TTLs of a checkpoint; leases no longer there are skipped.
    pub(crate) fn checkpoint(
        &mut self,
        db: &mut Db,
        remaining: &[(i64, i64)],
    ) -> Result<(), MvccError> {
        for &(id, left) in remaining {
            if let Some(l) = self.leases.get_mut(&id) {
                l.remaining_ttl = left.max(0);
                db.put(LEASE_TREE, &key(id), &record(l))?;
            }
        }
        Ok(())
    }
}
