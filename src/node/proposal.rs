//! Proposal ids: who proposed an entry (or asked for a read index), unique across members
//! and restarts, carried in the entry's context.
//!
//! An id is the member id, the member's start epoch (a counter kept in the WAL and raised
//! at every start) and a sequence within that start. Two members never share a member id,
//! and one member never reuses an epoch, so an entry applied on any member names the one
//! waiter it belongs to, or none.

/// Bytes of an encoded id (an entry's or a read request's context).
pub const ENCODED_BYTES: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProposalId {
    pub member: u64,
    pub epoch: u64,
    pub seq: u64,
}

impl ProposalId {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENCODED_BYTES);
        out.extend_from_slice(&self.member.to_le_bytes());
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out
    }

    /// The id in an entry's context, if it holds one (a new leader's empty entry and
    /// membership changes proposed without one do not).
    pub fn decode(context: &[u8]) -> Option<ProposalId> {
        if context.len() != ENCODED_BYTES {
            return None;
        }
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&context[at..at + 8]);
            u64::from_le_bytes(b)
        };
        Some(ProposalId {
            member: word(0),
            epoch: word(8),
            seq: word(16),
        })
    }
}

/// Hands out the ids of one member's start.
#[derive(Debug, Clone)]
pub struct IdSource {
    member: u64,
    epoch: u64,
    seq: u64,
}

impl IdSource {
    pub fn new(member: u64, epoch: u64) -> IdSource {
        IdSource {
            member,
            epoch,
            seq: 0,
        }
    }

    pub fn next_id(&mut self) -> ProposalId {
        self.seq += 1;
        ProposalId {
            member: self.member,
            epoch: self.epoch,
            seq: self.seq,
        }
    }

    /// Whether `id` was handed out by this source (this member, this start).
    pub fn issued(&self, id: &ProposalId) -> bool {
        id.member == self.member && id.epoch == self.epoch && id.seq <= self.seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_differ_across_members_and_starts() {
        let mut a = IdSource::new(1, 1);
        let mut b = IdSource::new(2, 1);
        let mut a_again = IdSource::new(1, 2);
        let ids = [a.next_id(), b.next_id(), a_again.next_id(), a.next_id()];
        for (i, x) in ids.iter().enumerate() {
            assert_eq!(ProposalId::decode(&x.encode()), Some(*x));
            for y in &ids[i + 1..] {
                assert_ne!(x, y);
            }
        }
        assert!(a.issued(&ids[0]) && !a.issued(&ids[1]) && !a.issued(&ids[2]));
        assert_eq!(ProposalId::decode(&[0u8; 8]), None);
    }
}
