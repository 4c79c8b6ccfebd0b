//! [`LeaseClock`]: the leader's deadlines, sans-IO. Time comes in as milliseconds on a
//! clock that never goes back (the server's monotonic clock, the simulator's, a test's
//! numbers); what to propose goes out as return values.
//!
//! Only the leader keeps deadlines: a follower's clock is empty and expires nothing. The
//! rules that make expiry never early across a leader change:
//!
//! - a lease granted while leading expires `ttl` after its grant was applied here (which is
//!   after the client's request: never before the client could expect it);
//! - a keepalive sets the deadline to now + ttl;
//! - on becoming leader, every lease's deadline is now + (its checkpointed remaining TTL, or
//!   its TTL when it has none) + an election timeout: the old leader may have renewed it up
//!   to the moment it stopped leading, which is before this one started;
//! - an expired lease is handed out once for a revoke proposal, and again only if that
//!   proposal has not applied within the retry interval (a revoke of a lease already gone
//!   changes nothing, so a late duplicate is harmless); at most `revokes_per_s` a second;
//! - a lease whose deadline has passed is not renewed: its revoke may be on its way, and a
//!   keepalive answered now would promise keys that are about to go;
//! - a renewal of a lease this leader has handed out for a checkpoint since its last renewal
//!   asks for the checkpoint to be cleared through the log before it is answered
//!   ([`Renewal::clear`]): the checkpoint, proposed before the renewal, may apply after it,
//!   and a later leader would then extend the lease from the older remaining TTL.

use std::collections::{BTreeSet, HashMap};

use super::LeaseError;

/// What a [`LeaseClock`] is told at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockConfig {
    /// Added to every deadline when this member becomes leader.
    pub election_timeout_ms: u64,
    /// How often remaining TTLs are checkpointed through the log (etcd: 5 minutes).
    pub checkpoint_interval_ms: u64,
    /// Revoke proposals a second, at most (etcd's `leaseRevokeRate`, 1000).
    pub revokes_per_s: u64,
    /// A lease handed out for revoking is handed out again after this if still there.
    pub revoke_retry_ms: u64,
}

/// etcd's default checkpoint interval (`--experimental-lease-checkpoint-interval`).
pub const CHECKPOINT_INTERVAL_MS_DEFAULT: u64 = 5 * 60 * 1000;
/// etcd's `leaseRevokeRate`.
pub const REVOKES_PER_S_DEFAULT: u64 = 1000;

/// One lease's deadline on the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Deadline {
    at_ms: u64,
    ttl_s: i64,
    /// When it is next handed out for revoking: its deadline, then, once handed out, the
    /// moment a retry is due.
    due_ms: u64,
    /// Handed out in a checkpoint since its last renewal.
    checkpointed: bool,
}

/// A keepalive's outcome on the leader's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewal {
    /// The TTL renewed, in seconds.
    pub ttl: i64,
    /// A checkpoint of this lease was handed out since its last renewal: clear it through
    /// the log (a checkpoint of 0) and answer the keepalive once that applied, so that a
    /// later leader does not extend the lease from the older remaining TTL.
    pub clear: bool,
}

/// A lease as the table holds it, for [`LeaseClock::promote`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTimes {
    pub id: i64,
    /// Seconds, as granted.
    pub ttl: i64,
    /// Seconds left at the last checkpoint, 0 for none.
    pub remaining_ttl: i64,
}

pub struct LeaseClock {
    config: ClockConfig,
    leading: bool,
    deadlines: HashMap<i64, Deadline>,
    /// `(due_ms, id)` of every deadline, soonest first.
    by_due: BTreeSet<(u64, i64)>,
    /// Revokes that may be handed out now (a token bucket of one second's worth).
    tokens: u64,
    refilled_ms: u64,
    next_checkpoint_ms: u64,
}

fn seconds_ms(s: i64) -> u64 {
    u64::try_from(s).unwrap_or(0).saturating_mul(1000)
}

impl LeaseClock {
    /// A follower's clock: empty until [`LeaseClock::promote`].
    pub fn new(config: ClockConfig) -> LeaseClock {
        LeaseClock {
            config,
            leading: false,
            deadlines: HashMap::new(),
            by_due: BTreeSet::new(),
            tokens: config.revokes_per_s,
            refilled_ms: 0,
            next_checkpoint_ms: 0,
        }
    }

    pub fn is_leading(&self) -> bool {
        self.leading
    }

    /// This member became leader at `now_ms`; `leases` is every lease of the table as
    /// applied here. Each gets now + (remaining TTL, or TTL) + an election timeout.
    pub fn promote(&mut self, now_ms: u64, leases: impl IntoIterator<Item = LeaseTimes>) {
        self.demote();
        self.leading = true;
        self.refilled_ms = now_ms;
        self.tokens = self.config.revokes_per_s;
        self.next_checkpoint_ms = now_ms.saturating_add(self.config.checkpoint_interval_ms);
        for l in leases {
            let left = if l.remaining_ttl > 0 {
                l.remaining_ttl
            } else {
                l.ttl
            };
            let at_ms = now_ms
                .saturating_add(seconds_ms(left))
                .saturating_add(self.config.election_timeout_ms);
            self.set(l.id, at_ms, l.ttl);
        }
    }

    /// This member no longer leads: it forgets every deadline.
    pub fn demote(&mut self) {
        self.leading = false;
        self.deadlines.clear();
        self.by_due.clear();
    }

    fn set(&mut self, id: i64, at_ms: u64, ttl_s: i64) {
        let d = Deadline {
            at_ms,
            ttl_s,
            due_ms: at_ms,
            checkpointed: false,
        };
        if let Some(old) = self.deadlines.insert(id, d) {
            self.by_due.remove(&(old.due_ms, id));
        }
        self.by_due.insert((at_ms, id));
    }

    /// A grant was applied at `now_ms`: on the leader, the lease expires `ttl` seconds on.
    pub fn granted(&mut self, now_ms: u64, id: i64, ttl: i64) {
        if self.leading {
            self.set(id, now_ms.saturating_add(seconds_ms(ttl)), ttl);
        }
    }

    /// A revoke was applied: the lease is gone.
    pub fn revoked(&mut self, id: i64) {
        if let Some(d) = self.deadlines.remove(&id) {
            self.by_due.remove(&(d.due_ms, id));
        }
    }

    /// A keepalive at `now_ms`: the lease expires its TTL from now.
    pub fn renew(&mut self, now_ms: u64, id: i64) -> Result<Renewal, LeaseError> {
        if !self.leading {
            return Err(LeaseError::NotLeader);
        }
        let d = self
            .deadlines
            .get(&id)
            .copied()
            .ok_or(LeaseError::NotFound)?;
        if d.at_ms <= now_ms {
            return Err(LeaseError::NotFound);
        }
        self.set(id, now_ms.saturating_add(seconds_ms(d.ttl_s)), d.ttl_s);
        Ok(Renewal {
            ttl: d.ttl_s,
            clear: d.checkpointed,
        })
    }

    /// Milliseconds left of the lease at `now_ms` (0 once expired), on the leader.
    pub fn remaining_ms(&self, now_ms: u64, id: i64) -> Result<u64, LeaseError> {
        if !self.leading {
            return Err(LeaseError::NotLeader);
        }
        let d = self.deadlines.get(&id).ok_or(LeaseError::NotFound)?;
        Ok(d.at_ms.saturating_sub(now_ms))
    }

    /// Expired leases to propose a revoke for, soonest deadline first: each once (again
    /// after the retry interval if its revoke has not applied), within the revoke rate.
    pub fn expired(&mut self, now_ms: u64) -> Vec<i64> {
        if !self.leading {
            return Vec::new();
        }
        self.refill(now_ms);
        let retry_ms = now_ms.saturating_add(self.config.revoke_retry_ms);
        let out: Vec<i64> = self
            .by_due
            .iter()
            .take_while(|&&(due_ms, _)| due_ms <= now_ms)
            .take(usize::try_from(self.tokens).unwrap_or(usize::MAX))
            .map(|&(_, id)| id)
            .collect();
        for &id in &out {
            if let Some(d) = self.deadlines.get_mut(&id) {
                self.by_due.remove(&(d.due_ms, id));
                d.due_ms = retry_ms;
                self.by_due.insert((retry_ms, id));
            }
        }
        self.tokens -= out.len() as u64;
        out
    }

    fn refill(&mut self, now_ms: u64) {
        let rate = self.config.revokes_per_s;
        let elapsed = now_ms.saturating_sub(self.refilled_ms);
        let earned = elapsed.saturating_mul(rate) / 1000;
        if earned > 0 {
            self.tokens = self.tokens.saturating_add(earned).min(rate);
            self.refilled_ms = now_ms;
        }
    }

    /// Remaining TTLs to checkpoint through the log, once every checkpoint interval: each
    /// lease that has used part of its TTL, with its seconds left (rounded up, as etcd
    /// does). Empty when none is due, or on a follower.
    pub fn checkpoint(&mut self, now_ms: u64) -> Vec<(i64, i64)> {
        if !self.leading || now_ms < self.next_checkpoint_ms {
            return Vec::new();
        }
        self.next_checkpoint_ms = now_ms.saturating_add(self.config.checkpoint_interval_ms);
        let mut out: Vec<(i64, i64)> = Vec::new();
        for (&id, d) in self.deadlines.iter_mut() {
            let left = d.at_ms.saturating_sub(now_ms).div_ceil(1000) as i64;
            if d.at_ms > now_ms && left < d.ttl_s {
                d.checkpointed = true;
                out.push((id, left));
            }
        }
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ET: u64 = 1000;

    fn clock() -> LeaseClock {
        LeaseClock::new(ClockConfig {
            election_timeout_ms: ET,
            checkpoint_interval_ms: 10_000,
            revokes_per_s: 1000,
            revoke_retry_ms: 3000,
        })
    }

    fn lease(id: i64, ttl: i64, remaining_ttl: i64) -> LeaseTimes {
        LeaseTimes {
            id,
            ttl,
            remaining_ttl,
        }
    }

    /// The first moment `id` is handed out for revoking, stepping by 1 ms from `from`.
    fn first_expiry(c: &mut LeaseClock, from: u64, to: u64) -> Option<u64> {
        (from..to).find(|&t| c.expired(t).contains(&7))
    }

    #[test]
    fn a_grant_expires_its_ttl_after_it_applied_and_never_before() {
        let mut c = clock();
        c.promote(0, []);
        c.granted(500, 7, 10);
        assert_eq!(first_expiry(&mut c, 500, 20_000), Some(10_500));
    }

    #[test]
    fn a_new_leader_adds_an_election_timeout_to_the_ttl_or_the_checkpointed_remainder() {
        let mut c = clock();
        c.promote(5_000, [lease(7, 10, 0), lease(8, 10, 3)]);
        assert_eq!(c.remaining_ms(5_000, 7), Ok(10_000 + ET));
        assert_eq!(c.remaining_ms(5_000, 8), Ok(3_000 + ET));
        assert_eq!(
            first_expiry(&mut c, 5_000, 30_000),
            Some(5_000 + 10_000 + ET)
        );
    }

    #[test]
    fn a_follower_keeps_no_deadlines_and_expires_nothing() {
        let mut c = clock();
        c.granted(0, 7, 1);
        assert!(c.expired(1_000_000).is_empty());
        assert_eq!(c.renew(10, 7), Err(LeaseError::NotLeader));
        assert!(c.checkpoint(1_000_000).is_empty());
        // Leading, then not: everything is forgotten.
        c.promote(0, [lease(7, 1, 0)]);
        c.demote();
        assert!(c.expired(1_000_000).is_empty());
        assert_eq!(c.remaining_ms(0, 7), Err(LeaseError::NotLeader));
    }

    #[test]
    fn each_expiry_is_handed_out_once_until_the_retry_interval() {
        let mut c = clock();
        c.promote(0, []);
        c.granted(0, 7, 1);
        assert_eq!(c.expired(1_000), vec![7]);
        assert!(c.expired(1_001).is_empty());
        assert!(c.expired(3_999).is_empty());
        // Its revoke did not apply (a lost proposal): handed out again.
        assert_eq!(c.expired(4_000), vec![7]);
        c.revoked(7);
        assert!(c.expired(100_000).is_empty());
    }

    #[test]
    fn keepalives_push_the_deadline_but_not_once_it_passed() {
        let mut c = clock();
        c.promote(0, []);
        c.granted(0, 7, 10);
        assert_eq!(c.renew(9_000, 7).map(|r| r.ttl), Ok(10));
        assert!(c.expired(18_999).is_empty());
        assert_eq!(c.expired(19_000), vec![7]);
        assert_eq!(c.renew(19_000, 7), Err(LeaseError::NotFound));
        assert_eq!(c.renew(19_000, 8), Err(LeaseError::NotFound));
    }

    #[test]
    fn revokes_are_rate_limited() {
        let mut c = clock();
        c.promote(0, (1..=2500).map(|id| lease(id, 1, 0)));
        let first = c.expired(2_000 + ET);
        assert_eq!(first.len(), 1000);
        assert!(c.expired(2_000 + ET).is_empty());
        let second = c.expired(2_500 + ET);
        assert_eq!(second.len(), 500);
        let all: BTreeSet<i64> = first
            .into_iter()
            .chain(second)
            .chain(c.expired(10_000))
            .collect();
        // Retries wait their turn behind leases not yet handed out: every lease is.
        assert_eq!(all.len(), 2500);
    }

    #[test]
    fn checkpoints_come_every_interval_with_what_is_left() {
        let mut c = clock();
        c.promote(0, []);
        c.granted(0, 7, 60);
        c.granted(9_500, 8, 60);
        assert!(c.checkpoint(9_999).is_empty());
        // Lease 8 has used less than a second: nothing to save for it.
        assert_eq!(c.checkpoint(10_000), vec![(7, 50)]);
        assert!(c.checkpoint(15_000).is_empty());
        assert_eq!(c.checkpoint(20_000), vec![(7, 40), (8, 50)]);
    }

    #[test]
    fn a_renewal_after_a_checkpoint_asks_for_it_to_be_cleared_once() {
        let mut c = clock();
        c.promote(0, []);
        c.granted(0, 7, 60);
        c.granted(0, 8, 60);
        assert_eq!(c.renew(1_000, 8).map(|r| r.clear), Ok(false));
        assert_eq!(c.checkpoint(10_000), vec![(7, 50), (8, 51)]);
        // The checkpoint may apply after this renewal: it must be cleared behind it.
        assert_eq!(
            c.renew(10_001, 7),
            Ok(Renewal {
                ttl: 60,
                clear: true
            })
        );
        assert_eq!(c.renew(10_002, 7).map(|r| r.clear), Ok(false));
        assert_eq!(c.renew(10_003, 8).map(|r| r.clear), Ok(true));
    }
}
