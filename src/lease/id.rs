//! Lease ids chosen by the server, as etcd's `idutil.Generator` makes request and lease ids:
//! the member's low 16 bits, then the start time in milliseconds (40 bits) and a counter
//! (8 bits) that together only grow, so that ids do not repeat across members or restarts.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bits of the id taken by the time and counter.
const SUFFIX_BITS: u32 = 48;
/// Bits of the suffix taken by the counter.
const COUNTER_BITS: u32 = 8;

/// Makes lease ids; shared by every net shard of a member.
#[derive(Debug)]
pub struct LeaseIds {
    prefix: u64,
    suffix: AtomicU64,
}

impl LeaseIds {
    /// Ids of member `member`, started at `now_ms` (Unix time, milliseconds).
    pub fn new(member: u64, now_ms: u64) -> LeaseIds {
        let suffix_mask = (1u64 << SUFFIX_BITS) - 1;
        LeaseIds {
            prefix: (member & 0xffff) << SUFFIX_BITS,
            suffix: AtomicU64::new((now_ms << COUNTER_BITS) & suffix_mask),
        }
    }

    /// The next id: positive as an `i64` (etcd clears the top bit), never 0.
    pub fn next(&self) -> i64 {
        loop {
            let suffix = self.suffix.fetch_add(1, Ordering::Relaxed) + 1;
            let id = (self.prefix | (suffix & ((1u64 << SUFFIX_BITS) - 1))) & (i64::MAX as u64);
            if id != 0 {
                return id as i64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_positive_distinct_and_carry_the_member() {
        let ids = LeaseIds::new(0xabcd_1234_5678_9abc, 1_700_000_000_000);
        let a: Vec<i64> = (0..1000).map(|_| ids.next()).collect();
        assert!(a.iter().all(|&id| id > 0));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), a.len());
        assert!(a
            .iter()
            .all(|&id| (id as u64 >> SUFFIX_BITS) & 0x7fff == 0x1abc & 0x7fff));
        // Another member at the same moment makes other ids.
        let other = LeaseIds::new(0x9abd, 1_700_000_000_000);
        assert_ne!(other.next(), ids.next());
        // A later start of the same member does not repeat the earlier ids.
        let later = LeaseIds::new(0xabcd_1234_5678_9abc, 1_700_000_001_000);
        assert!(later.next() > *a.last().unwrap());
    }
}
