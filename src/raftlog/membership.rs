//! The cluster's membership at one log index: raft's configuration (voters, learners, and
//! the outgoing half of a joint configuration) and what the cluster knows of each member
//! (etcd's `Member`: name, peer URLs, client URLs), plus the ids removed for good.
//!
//! It changes only by committed entries, applied in log order on every member alike:
//!
//! - a configuration change (raft's `ConfChangeV2`): adding a member carries its
//!   attributes in the change's context ([`MemberInfo::encode`]); a member leaves the table
//!   once it is in no half of the configuration, and its id is remembered as removed;
//! - a member command ([`crate::node::command`], kind 2): new attributes for a member
//!   (a member publishing its name and client URLs at start, or `member update`).
//!
//! The log keeps the membership as of its start (in its start marker, and in a snapshot's
//! data) and every change after it, so that a marker or a snapshot at any index carries the
//! membership as of that index.

use super::RaftLogError;
use raft::eraftpb::ConfState;

/// Names and URLs, at most this many bytes each.
pub const STRING_BYTES_MAX: usize = 4096;
/// URLs of one kind per member, at most.
pub const URLS_MAX: usize = 64;
/// Removed ids remembered (the oldest are forgotten first).
pub const REMOVED_MAX: usize = 65536;
/// Members, at most.
pub const MEMBERS_MAX: usize = 1024;

/// A member as the cluster knows it (etcd's `Member`, without the learner flag, which is
/// raft's configuration's to say).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemberInfo {
    pub id: u64,
    /// Empty until the member has started and published it.
    pub name: String,
    pub peer_urls: Vec<String>,
    /// Empty until the member has started and published them.
    pub client_urls: Vec<String>,
}

impl MemberInfo {
    /// `id u64 | name | peer urls | client urls`, a string `len u16 | UTF-8`, a list
    /// `count u16 | strings`; little-endian.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.to_le_bytes());
        put_string(out, &self.name);
        for urls in [&self.peer_urls, &self.client_urls] {
            let n = urls.len().min(URLS_MAX);
            out.extend_from_slice(&(n as u16).to_le_bytes());
            for u in &urls[..n] {
                put_string(out, u);
            }
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// One member's attributes, taking exactly the bytes given.
    pub fn from_bytes(mut buf: &[u8]) -> Result<MemberInfo, RaftLogError> {
        let m = Self::decode(&mut buf)?;
        if !buf.is_empty() {
            return Err(RaftLogError::Decode(
                "trailing bytes after member attributes",
            ));
        }
        Ok(m)
    }

    fn decode(buf: &mut &[u8]) -> Result<MemberInfo, RaftLogError> {
        let id = u64::from_le_bytes(take::<8>(buf)?);
        let name = get_string(buf)?;
        let mut lists: [Vec<String>; 2] = Default::default();
        for list in lists.iter_mut() {
            let n = u16::from_le_bytes(take::<2>(buf)?) as usize;
            if n > URLS_MAX {
                return Err(RaftLogError::Decode("too many member URLs"));
            }
            for _ in 0..n {
                list.push(get_string(buf)?);
            }
        }
        let [peer_urls, client_urls] = lists;
        Ok(MemberInfo {
            id,
            name,
            peer_urls,
            client_urls,
        })
    }

    /// Whether the attributes fit what a record holds (checked before proposing).
    pub fn fits(&self) -> bool {
        self.name.len() <= STRING_BYTES_MAX
            && self.peer_urls.len() <= URLS_MAX
            && self.client_urls.len() <= URLS_MAX
            && self
                .peer_urls
                .iter()
                .chain(&self.client_urls)
                .all(|u| u.len() <= STRING_BYTES_MAX)
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    let mut n = s.len().min(STRING_BYTES_MAX);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    out.extend_from_slice(&(n as u16).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..n]);
}

fn take<const N: usize>(buf: &mut &[u8]) -> Result<[u8; N], RaftLogError> {
    if buf.len() < N {
        return Err(RaftLogError::Decode("membership ends early"));
    }
    let mut b = [0u8; N];
    b.copy_from_slice(&buf[..N]);
    *buf = &buf[N..];
    Ok(b)
}

fn get_string(buf: &mut &[u8]) -> Result<String, RaftLogError> {
    let n = u16::from_le_bytes(take::<2>(buf)?) as usize;
    if n > STRING_BYTES_MAX || n > buf.len() {
        return Err(RaftLogError::Decode("membership string out of range"));
    }
    let s = std::str::from_utf8(&buf[..n])
        .map_err(|_| RaftLogError::Decode("membership string is not UTF-8"))?
        .to_string();
    *buf = &buf[n..];
    Ok(s)
}

/// The membership at one index.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Membership {
    pub conf: ConfState,
    /// Sorted by id: every member in some half of `conf` that the cluster has attributes
    /// for.
    pub members: Vec<MemberInfo>,
    /// Ids that were members and are no more, sorted (at most [`REMOVED_MAX`]).
    pub removed: Vec<u64>,
}

impl Membership {
    /// Every id in some half of the configuration.
    pub fn ids(&self) -> Vec<u64> {
        let c = &self.conf;
        let mut ids: Vec<u64> = c
            .voters
            .iter()
            .chain(&c.learners)
            .chain(&c.voters_outgoing)
            .chain(&c.learners_next)
            .copied()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    pub fn contains(&self, id: u64) -> bool {
        self.ids().contains(&id)
    }

    /// A learner now, or one once the joint configuration is left.
    pub fn is_learner(&self, id: u64) -> bool {
        self.conf.learners.contains(&id) || self.conf.learners_next.contains(&id)
    }

    /// In the incoming voters (the ones that count once a joint configuration is left).
    pub fn is_voter(&self, id: u64) -> bool {
        self.conf.voters.contains(&id)
    }

    pub fn is_joint(&self) -> bool {
        !self.conf.voters_outgoing.is_empty()
    }

    pub fn was_removed(&self, id: u64) -> bool {
        self.removed.binary_search(&id).is_ok()
    }

    pub fn member(&self, id: u64) -> Option<&MemberInfo> {
        self.members
            .binary_search_by_key(&id, |m| m.id)
            .ok()
            .map(|i| &self.members[i])
    }

    /// Takes a new raft configuration; `added` are the attributes of a member the change
    /// added. Members in no half of it leave the table and are remembered as removed.
    pub fn set_conf(&mut self, mut conf: ConfState, added: Option<MemberInfo>) {
        // Raft lists ids in its sets' order, which depends on how each member came by
        // them: sorted, equal memberships are equal values (and encode alike).
        for ids in [
            &mut conf.voters,
            &mut conf.learners,
            &mut conf.voters_outgoing,
            &mut conf.learners_next,
        ] {
            ids.sort_unstable();
        }
        self.conf = conf;
        if let Some(m) = added {
            self.upsert(m);
        }
        let ids = self.ids();
        let gone: Vec<u64> = self
            .members
            .iter()
            .map(|m| m.id)
            .filter(|id| !ids.contains(id))
            .collect();
        self.members.retain(|m| ids.contains(&m.id));
        for id in gone {
            if let Err(at) = self.removed.binary_search(&id) {
                self.removed.insert(at, id);
            }
        }
        if self.removed.len() > REMOVED_MAX {
            // Forgetting the smallest ids, not the oldest: order of removal is not kept.
            let extra = self.removed.len() - REMOVED_MAX;
            self.removed.drain(..extra);
        }
    }

    /// Sets a member's attributes (adding it to the table if the configuration has it).
    pub fn upsert(&mut self, m: MemberInfo) {
        match self.members.binary_search_by_key(&m.id, |x| x.id) {
            Ok(i) => self.members[i] = m,
            Err(i) => {
                if self.members.len() < MEMBERS_MAX {
                    self.members.insert(i, m)
                }
            }
        }
    }

    /// Members known from elsewhere (a data directory written before members were kept
    /// in the log), for ids the configuration has and the table lacks.
    pub fn fill_from(&mut self, known: &[MemberInfo]) {
        let ids = self.ids();
        for m in known {
            if ids.contains(&m.id) && self.member(m.id).is_none() {
                self.upsert(m.clone());
            }
        }
    }

    /// The table and the removed ids (the configuration is encoded on its own):
    /// `members u32 | member...` then `removed u32 | id u64...`.
    pub fn encode_members(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.members.len() as u32).to_le_bytes());
        for m in &self.members {
            m.encode(out);
        }
        out.extend_from_slice(&(self.removed.len() as u32).to_le_bytes());
        for id in &self.removed {
            out.extend_from_slice(&id.to_le_bytes());
        }
    }

    pub fn members_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_members(&mut out);
        out
    }

    /// Reads what [`Membership::encode_members`] wrote, taking all of `buf`.
    pub fn decode_members(mut buf: &[u8]) -> Result<(Vec<MemberInfo>, Vec<u64>), RaftLogError> {
        let n = u32::from_le_bytes(take::<4>(&mut buf)?) as usize;
        // A member takes 14 bytes at least (id, and three empty counts).
        if n > MEMBERS_MAX || n > buf.len() / 14 {
            return Err(RaftLogError::Decode("member count out of range"));
        }
        let mut members = Vec::with_capacity(n);
        for _ in 0..n {
            members.push(MemberInfo::decode(&mut buf)?);
        }
        let r = u32::from_le_bytes(take::<4>(&mut buf)?) as usize;
        if r > REMOVED_MAX || r > buf.len() / 8 {
            return Err(RaftLogError::Decode("removed id count out of range"));
        }
        let mut removed = Vec::with_capacity(r);
        for _ in 0..r {
            removed.push(u64::from_le_bytes(take::<8>(&mut buf)?));
        }
        if !buf.is_empty() {
            return Err(RaftLogError::Decode("trailing bytes after the members"));
        }
        members.sort_by_key(|m| m.id);
        members.dedup_by_key(|m| m.id);
        removed.sort_unstable();
        removed.dedup();
        Ok((members, removed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: u64) -> MemberInfo {
        MemberInfo {
            id,
            name: format!("m{id}"),
            peer_urls: vec![format!("http://127.0.0.1:{}", 2380 + id)],
            client_urls: vec![],
        }
    }

    #[test]
    fn attributes_and_tables_read_back_and_damage_is_refused() {
        let m = info(7);
        assert_eq!(MemberInfo::from_bytes(&m.to_bytes()).unwrap(), m);
        let bytes = m.to_bytes();
        for cut in 0..bytes.len() {
            assert!(
                MemberInfo::from_bytes(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut ms = Membership::default();
        ms.set_conf(
            ConfState {
                voters: vec![1, 2],
                ..Default::default()
            },
            Some(info(2)),
        );
        ms.upsert(info(1));
        ms.removed = vec![9];
        let bytes = ms.members_bytes();
        let (members, removed) = Membership::decode_members(&bytes).unwrap();
        assert_eq!((members, removed), (ms.members.clone(), vec![9]));
        for cut in 0..bytes.len() {
            assert!(
                Membership::decode_members(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_member_leaves_the_table_only_when_no_half_of_the_configuration_has_it() {
        let mut ms = Membership::default();
        for id in [1, 2, 3] {
            let mut conf = ms.conf.clone();
            conf.voters.push(id);
            ms.set_conf(conf, Some(info(id)));
        }
        // Joint: 3 leaves the incoming voters but is still an outgoing one.
        ms.set_conf(
            ConfState {
                voters: vec![1, 2],
                voters_outgoing: vec![1, 2, 3],
                auto_leave: true,
                ..Default::default()
            },
            None,
        );
        assert!(ms.member(3).is_some() && !ms.was_removed(3) && ms.is_joint());
        ms.set_conf(
            ConfState {
                voters: vec![1, 2],
                ..Default::default()
            },
            None,
        );
        assert!(ms.member(3).is_none() && ms.was_removed(3) && !ms.contains(3));
        assert_eq!(ms.ids(), vec![1, 2]);
    }
}
