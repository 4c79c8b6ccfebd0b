//! WAL record payloads of the Raft log: entries (their data carried verbatim), hard state,
//! and the snapshot marker (where the log starts, with the configuration at that point).

use super::{Membership, RaftLogError};
use raft::eraftpb::{ConfState, Entry, EntryType, HardState};

fn take<'a>(buf: &mut &'a [u8], n: usize, what: &'static str) -> Result<&'a [u8], RaftLogError> {
    if buf.len() < n {
        return Err(RaftLogError::Decode(what));
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

fn u64_at(buf: &mut &[u8], what: &'static str) -> Result<u64, RaftLogError> {
    let mut b = [0u8; 8];
    b.copy_from_slice(take(buf, 8, what)?);
    Ok(u64::from_le_bytes(b))
}

fn u32_at(buf: &mut &[u8], what: &'static str) -> Result<u32, RaftLogError> {
    let mut b = [0u8; 4];
    b.copy_from_slice(take(buf, 4, what)?);
    Ok(u32::from_le_bytes(b))
}

/// `index u64 | term u64 | type u8 | context length u32 | context | data` (the rest).
pub fn encode_entry(e: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(21 + e.context.len() + e.data.len());
    out.extend_from_slice(&e.index.to_le_bytes());
    out.extend_from_slice(&e.term.to_le_bytes());
    out.push(e.get_entry_type() as u8);
    out.extend_from_slice(&(e.context.len() as u32).to_le_bytes());
    out.extend_from_slice(&e.context);
    out.extend_from_slice(&e.data);
    out
}

/// Largest entry index a record may carry: one below `u64::MAX`, so that "the index after
/// the last" is always a number (a damaged record must not make the log's arithmetic
/// overflow).
const INDEX_MAX: u64 = u64::MAX - 1;

pub fn decode_entry(mut buf: &[u8]) -> Result<Entry, RaftLogError> {
    let mut e = Entry {
        index: u64_at(&mut buf, "entry index")?,
        term: u64_at(&mut buf, "entry term")?,
        ..Default::default()
    };
    if e.index > INDEX_MAX {
        return Err(RaftLogError::Decode("entry index out of range"));
    }
    let kind = take(&mut buf, 1, "entry type")?[0];
    e.set_entry_type(match kind {
        0 => EntryType::EntryNormal,
        1 => EntryType::EntryConfChange,
        2 => EntryType::EntryConfChangeV2,
        _ => return Err(RaftLogError::Decode("unknown entry type")),
    });
    let ctx = u32_at(&mut buf, "entry context length")? as usize;
    e.context = take(&mut buf, ctx, "entry context")?.to_vec().into();
    e.data = buf.to_vec().into();
    Ok(e)
}

/// `term u64 | vote u64 | commit u64`.
pub fn encode_hard_state(hs: &HardState) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    for v in [hs.term, hs.vote, hs.commit] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

pub fn decode_hard_state(mut buf: &[u8]) -> Result<HardState, RaftLogError> {
    let hs = HardState {
        term: u64_at(&mut buf, "hard state term")?,
        vote: u64_at(&mut buf, "hard state vote")?,
        commit: u64_at(&mut buf, "hard state commit")?,
        ..Default::default()
    };
    if !buf.is_empty() {
        return Err(RaftLogError::Decode("trailing bytes after hard state"));
    }
    Ok(hs)
}

/// Where the log starts, and the membership there: `index u64 | term u64 | auto_leave u8 |
/// four id lists` (voters, learners, outgoing voters, next learners), each `count u32 |
/// ids u64...`, then the member table ([`Membership::encode_members`]; absent in markers
/// written before members were kept in the log).
pub fn encode_marker(index: u64, term: u64, ms: &Membership) -> Vec<u8> {
    let cs = &ms.conf;
    let mut out = Vec::new();
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&term.to_le_bytes());
    out.push(u8::from(cs.auto_leave));
    for ids in [
        &cs.voters,
        &cs.learners,
        &cs.voters_outgoing,
        &cs.learners_next,
    ] {
        out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
        for id in ids.iter() {
            out.extend_from_slice(&id.to_le_bytes());
        }
    }
    ms.encode_members(&mut out);
    out
}

pub fn decode_marker(mut buf: &[u8]) -> Result<(u64, u64, Membership), RaftLogError> {
    let index = u64_at(&mut buf, "marker index")?;
    if index > INDEX_MAX {
        return Err(RaftLogError::Decode("marker index out of range"));
    }
    let term = u64_at(&mut buf, "marker term")?;
    let auto_leave = match take(&mut buf, 1, "marker auto_leave")?[0] {
        0 => false,
        1 => true,
        _ => return Err(RaftLogError::Decode("marker auto_leave is not a boolean")),
    };
    let mut lists: [Vec<u64>; 4] = Default::default();
    for list in lists.iter_mut() {
        let n = u32_at(&mut buf, "marker id count")? as usize;
        if n > buf.len() / 8 {
            return Err(RaftLogError::Decode("marker id count exceeds the record"));
        }
        for _ in 0..n {
            list.push(u64_at(&mut buf, "marker id")?);
        }
    }
    let (members, removed) = if buf.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        Membership::decode_members(buf)?
    };
    let [voters, learners, voters_outgoing, learners_next] = lists;
    let cs = ConfState {
        voters,
        learners,
        voters_outgoing,
        learners_next,
        auto_leave,
        ..Default::default()
    };
    let ms = Membership {
        conf: cs,
        members,
        removed,
    };
    Ok((index, term, ms))
}
