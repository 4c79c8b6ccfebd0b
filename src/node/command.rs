//! The internal log command: what a Raft entry's data holds (etcd's `InternalRaftRequest`).
//!
//! The wire request is not the log format: the log also carries what no client sends
//! (lease revokes and checkpoints, compaction steps, alarms, member changes), and its
//! format must be readable by every later version. An entry's data is a 16-byte header and
//! a body:
//!
//! ```text
//! byte 0      format version (1)
//! byte 1      kind (1 = client request, 2 = member attributes, 3 = lease operation)
//! bytes 2..16 zero (reserved)
//! bytes 16..  body: for a client request, the archived `ClientRequest` exactly as it came
//!             off the socket; for member attributes, `fields u8` (1 peer URLs, 2 name
//!             and client URLs, or both) then the member's attributes
//!             (`crate::raftlog::MemberInfo::encode`), applied by the consensus core;
//!             for a lease operation (integers little-endian):
//!               op u8 = 1 grant:      id i64 | ttl i64 (seconds)
//!               op u8 = 2 revoke:     id i64
//!               op u8 = 3 checkpoint: count u32 (at most 1000) | (id i64 | remaining i64)*
//! ```
//!
//! Lease operations are not the client's request as it came: a grant's id (when the client
//! asks for none) and its TTL (raised to the minimum) are settled before proposing, so that
//! every member applies the same grant; revokes of expired leases and checkpoints of
//! remaining TTLs are proposed by the leader alone. A client's grant and revoke are
//! lease commands too, built by the net shard that took them.
//!
//! The body starts 16 bytes in, so an entry buffer aligned for rkyv keeps the archive
//! aligned: a put's key and value are archived once, by the client, and read in place at
//! apply. A committed entry that does not decode stops the member ([`decode`] fails and
//! the apply role reports it): skipping it on one member and not on another would make
//! the replicas diverge.

use crate::lease::{LeaseOp, CHECKPOINT_BATCH_MAX};
use crate::protocol::{access_request, ArchivedClientRequest};

/// Bytes before the body.
pub const HEADER_BYTES: usize = 16;
/// The format written by this version.
pub const VERSION: u8 = 1;

/// What a command's body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A client's write (`ClientRequest::Kv`), validated by the net shard that took it.
    Client = 1,
    /// New attributes for a member: a member publishing its name and client URLs at
    /// start, or `member update` setting its peer URLs.
    Member = 2,
    /// A lease grant, revoke or checkpoint ([`LeaseOp`]).
    Lease = 3,
}

const LEASE_GRANT: u8 = 1;
const LEASE_REVOKE: u8 = 2;
const LEASE_CHECKPOINT: u8 = 3;

/// Which of a member's attributes a member command sets.
pub const SET_PEER_URLS: u8 = 1;
pub const SET_NAME_AND_CLIENT_URLS: u8 = 2;

/// A decoded command, borrowing the entry's bytes.
pub enum Command<'a> {
    Client(&'a ArchivedClientRequest),
    /// `fields` and the encoded attributes: the consensus core applies it to the
    /// membership; the store has nothing to do.
    Member(u8, &'a [u8]),
    Lease(LeaseOp),
}

/// Why an entry's data is not a command this version can apply.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    #[error("{0} bytes is shorter than the command header")]
    Short(usize),
    #[error("command format version {0} is not known to this version of cairn")]
    Version(u8),
    #[error("command kind {0} is not known to this version of cairn")]
    Kind(u8),
    #[error("the command header's reserved bytes are not zero")]
    Reserved,
    #[error("the body is not 16-byte aligned in memory")]
    Unaligned,
    #[error("the body does not decode: {0}")]
    Body(String),
}

/// A client request as a command: the header, then the validated archived request bytes
/// (one copy, the one every proposal makes from the receive buffer).
pub fn client(archived_request: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + archived_request.len());
    out.extend_from_slice(&header(Kind::Client));
    out.extend_from_slice(archived_request);
    out
}

/// A member command setting `fields` ([`SET_PEER_URLS`], [`SET_NAME_AND_CLIENT_URLS`])
/// of `member` to the values given.
pub fn member(fields: u8, member: &crate::raftlog::MemberInfo) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + 64);
    out.extend_from_slice(&header(Kind::Member));
    out.push(fields);
    member.encode(&mut out);
    out
}

/// A lease operation as a command.
pub fn lease(op: &LeaseOp) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + 1 + 16);
    out.extend_from_slice(&header(Kind::Lease));
    match op {
        LeaseOp::Grant { id, ttl } => {
            out.push(LEASE_GRANT);
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&ttl.to_le_bytes());
        }
        LeaseOp::Revoke { id } => {
            out.push(LEASE_REVOKE);
            out.extend_from_slice(&id.to_le_bytes());
        }
        LeaseOp::Checkpoint(list) => {
            out.push(LEASE_CHECKPOINT);
            out.extend_from_slice(&(list.len() as u32).to_le_bytes());
            for (id, remaining) in list {
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&remaining.to_le_bytes());
            }
        }
    }
    out
}

/// Reads a lease command's body (after the header).
fn decode_lease(body: &[u8]) -> Result<LeaseOp, CommandError> {
    let bad = |why: &str| CommandError::Body(format!("a lease command {why}"));
    let int = |at: usize| -> Result<i64, CommandError> {
        body.get(at..at + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(i64::from_le_bytes)
            .ok_or_else(|| bad("is cut short"))
    };
    let exact = |len: usize, op: LeaseOp| {
        if body.len() == len {
            Ok(op)
        } else {
            Err(bad("has trailing bytes"))
        }
    };
    match body.first() {
        Some(&LEASE_GRANT) => exact(
            17,
            LeaseOp::Grant {
                id: int(1)?,
                ttl: int(9)?,
            },
        ),
        Some(&LEASE_REVOKE) => exact(9, LeaseOp::Revoke { id: int(1)? }),
        Some(&LEASE_CHECKPOINT) => {
            let count = body
                .get(1..5)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_le_bytes)
                .ok_or_else(|| bad("is cut short"))? as usize;
            if count > CHECKPOINT_BATCH_MAX {
                return Err(bad("holds too many checkpoints"));
            }
            let list = (0..count)
                .map(|i| Ok((int(5 + 16 * i)?, int(13 + 16 * i)?)))
                .collect::<Result<Vec<_>, CommandError>>()?;
            exact(5 + 16 * count, LeaseOp::Checkpoint(list))
        }
        Some(other) => Err(bad(&format!("has unknown operation {other}"))),
        None => Err(bad("is empty")),
    }
}

/// Reads a member command without the alignment [`decode`] asks for (its body is not an
/// archive); `None` if `data` is not one.
pub fn decode_member(data: &[u8]) -> Option<(u8, &[u8])> {
    if data.len() > HEADER_BYTES
        && data[0] == VERSION
        && data[1] == Kind::Member as u8
        && data[2..HEADER_BYTES].iter().all(|&b| b == 0)
    {
        Some((data[HEADER_BYTES], &data[HEADER_BYTES + 1..]))
    } else {
        None
    }
}

fn header(kind: Kind) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[0] = VERSION;
    h[1] = kind as u8;
    h
}

/// Reads a command in place. `data` must be 16-byte aligned ([`ALIGN`]): the caller copies
/// it into an aligned buffer when the entry's own bytes are not.
pub fn decode(data: &[u8]) -> Result<Command<'_>, CommandError> {
    if data.len() < HEADER_BYTES {
        return Err(CommandError::Short(data.len()));
    }
    if data[0] != VERSION {
        return Err(CommandError::Version(data[0]));
    }
    if data[2..HEADER_BYTES].iter().any(|&b| b != 0) {
        return Err(CommandError::Reserved);
    }
    if data[1] == Kind::Member as u8 {
        return match decode_member(data) {
            Some((fields, body)) => Ok(Command::Member(fields, body)),
            None => Err(CommandError::Body(
                "a member command without its fields".into(),
            )),
        };
    }
    let body = &data[HEADER_BYTES..];
    if data[1] == Kind::Lease as u8 {
        return decode_lease(body).map(Command::Lease);
    }
    if !(body.as_ptr() as usize).is_multiple_of(ALIGN) {
        return Err(CommandError::Unaligned);
    }
    match data[1] {
        k if k == Kind::Client as u8 => {
            let request = access_request(body).map_err(|e| CommandError::Body(e.to_string()))?;
            match request {
                ArchivedClientRequest::Kv(_) => Ok(Command::Client(request)),
                _ => Err(CommandError::Body(
                    "a client command holds a request that is never logged".into(),
                )),
            }
        }
        other => Err(CommandError::Kind(other)),
    }
}

/// Alignment the archived bodies need (that of rkyv's `AlignedVec`).
pub const ALIGN: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::{PutRequest, Request};
    use crate::protocol::{encode_request, ClientRequest, HEADER_BYTES as FRAME_HEADER};
    use rkyv::util::AlignedVec;

    fn aligned(bytes: &[u8]) -> AlignedVec<ALIGN> {
        let mut v = AlignedVec::<ALIGN>::new();
        v.extend_from_slice(bytes);
        v
    }

    fn put_command() -> Vec<u8> {
        let req = ClientRequest::Kv(Request::Put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        }));
        client(&encode_request(0, &req).unwrap()[FRAME_HEADER..])
    }

    #[test]
    fn a_client_command_reads_back_in_place() {
        let bytes = aligned(&put_command());
        let Ok(Command::Client(ArchivedClientRequest::Kv(crate::mvcc::ArchivedRequest::Put(p)))) =
            decode(&bytes)
        else {
            panic!("not a put");
        };
        assert_eq!(&p.key[..], b"k");
        // The value is read where it lies in the entry's bytes.
        let at = p.value.as_ptr() as usize - bytes.as_ptr() as usize;
        assert_eq!(&bytes[at..at + 1], b"v");
    }

    #[test]
    fn lease_commands_read_back_and_damaged_ones_are_refused() {
        let ops = [
            LeaseOp::Grant { id: 7, ttl: 60 },
            LeaseOp::Revoke { id: -3 },
            LeaseOp::Checkpoint(vec![(1, 5), (2, 0)]),
            LeaseOp::Checkpoint(vec![]),
        ];
        for op in ops {
            let bytes = lease(&op);
            let Ok(Command::Lease(back)) = decode(&bytes) else {
                panic!("not a lease command: {op:?}");
            };
            assert_eq!(back, op);
            for cut in HEADER_BYTES..bytes.len() {
                assert!(decode(&bytes[..cut]).is_err(), "{op:?} cut at {cut}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(decode(&longer).is_err());
        }
        let mut unknown = lease(&LeaseOp::Revoke { id: 1 });
        unknown[HEADER_BYTES] = 9;
        assert!(matches!(decode(&unknown), Err(CommandError::Body(_))));
        let mut many = lease(&LeaseOp::Checkpoint(vec![]));
        many[HEADER_BYTES + 1..HEADER_BYTES + 5].copy_from_slice(&1001u32.to_le_bytes());
        assert!(matches!(decode(&many), Err(CommandError::Body(_))));
    }

    #[test]
    fn damaged_headers_and_bodies_are_refused_with_the_reason() {
        let good = put_command();
        let mut v = good.clone();
        v[0] = 2;
        assert_eq!(decode(&aligned(&v)).err(), Some(CommandError::Version(2)));
        let mut v = good.clone();
        v[1] = 9;
        assert_eq!(decode(&aligned(&v)).err(), Some(CommandError::Kind(9)));
        let mut v = good.clone();
        v[7] = 1;
        assert_eq!(decode(&aligned(&v)).err(), Some(CommandError::Reserved));
        assert_eq!(
            decode(&aligned(&good[..5])).err(),
            Some(CommandError::Short(5))
        );
        let mut v = good.clone();
        let n = v.len();
        v.truncate(n - 3);
        assert!(matches!(decode(&aligned(&v)), Err(CommandError::Body(_))));
        // A status request is valid on the wire but never a log entry.
        let status = encode_request(0, &ClientRequest::Status).unwrap();
        assert!(matches!(
            decode(&aligned(&client(&status[FRAME_HEADER..]))),
            Err(CommandError::Body(_))
        ));
    }
}
