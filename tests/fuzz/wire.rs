//! Bytes from clients and peers: native-protocol frames and their archived payloads, and
//! the Raft log's WAL record payloads (entries, hard state, markers, member identity).

use std::time::Duration;

use cairn::lease::{
    LeaseGrantRequest, LeaseOp, LeaseRequest, LeaseResponse, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};
use cairn::mvcc::{
    CompactionRequest, CompactionResponse, Compare, CompareResult, CompareTarget,
    DeleteRangeRequest, DeleteRangeResponse, KeyValue, PutRequest, PutResponse, RangeRequest,
    RangeResponse, Request, RequestOp, Response, ResponseHeader, ResponseOp, SortOrder, SortTarget,
    TargetUnion, TxnRequest, TxnResponse,
};
use cairn::node::{command, ProposalId};
use cairn::protocol::{
    access_request, decode_error, decode_request, decode_response, encode_error, encode_request,
    encode_response, split_frame, AlarmAction, AlarmMember, AlarmRequest, AlarmResponse, AlarmType,
    ClientRequest, ClientResponse, ErrorCode, ErrorReply, StatusResponse, HEADER_BYTES,
    PAYLOAD_BYTES_MAX_DEFAULT,
};
use cairn::raftlog::{encode_entry, encode_hard_state, encode_marker, RaftLog};
use cairn::server::Identity;
use cairn::wal::RecordType;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState};
use raft::{GetEntriesContext, Storage};
use rand::Rng;
use rkyv::util::AlignedVec;

use crate::harness::{Bound, Fuzz, Input};
use crate::mutate::{mutate, Field};

/// A decoded payload is the input's bytes in native form: rkyv's archived forms are at
/// most a few times smaller than the native ones (a 24-byte `Vec` header for an 8-byte
/// archived one), so 8x the input in one allocation, 16x live, plus 64 KiB for the
/// decoder's own state, is generous for an honest decoder and far below what a length
/// field believed without a check would ask for.
const DECODE_BOUND: Bound = Bound {
    single_per_input: 8,
    peak_per_input: Some(16),
    fixed_bytes: 64 << 10,
};

fn kv(i: usize) -> KeyValue {
    KeyValue {
        key: format!("key/{i}").into_bytes(),
        create_revision: i as i64,
        mod_revision: i as i64 + 3,
        version: 2,
        value: vec![i as u8; i * 7 % 300],
        lease: (i % 3) as i64,
    }
}

fn txn(depth: usize) -> TxnRequest {
    let mut success = vec![
        RequestOp::Put(PutRequest {
            key: b"a".to_vec(),
            value: b"va".to_vec(),
            prev_kv: true,
            ..Default::default()
        }),
        RequestOp::Range(RangeRequest {
            key: b"a".to_vec(),
            range_end: b"z".to_vec(),
            ..Default::default()
        }),
    ];
    if depth > 0 {
        success.push(RequestOp::Txn(txn(depth - 1)));
    }
    TxnRequest {
        compare: vec![
            Compare {
                result: CompareResult::Greater,
                target: CompareTarget::Value,
                key: b"k".to_vec(),
                target_union: Some(TargetUnion::Value(b"v".to_vec())),
                range_end: Vec::new(),
            },
            Compare {
                target_union: Some(TargetUnion::ModRevision(4)),
                key: b"m".to_vec(),
                ..Default::default()
            },
        ],
        success,
        failure: vec![RequestOp::DeleteRange(DeleteRangeRequest {
            key: b"d".to_vec(),
            range_end: vec![0],
            prev_kv: true,
        })],
    }
}

/// A transaction with compares and nested transactions.
pub fn requests_txn() -> TxnRequest {
    txn(2)
}

/// Valid requests of every kind.
pub fn requests() -> Vec<ClientRequest> {
    vec![
        ClientRequest::Status,
        ClientRequest::Kv(Request::Put(PutRequest {
            key: b"foo".to_vec(),
            value: vec![7; 3000],
            lease: 5,
            ..Default::default()
        })),
        ClientRequest::Kv(Request::Range(RangeRequest {
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
            limit: 10,
            revision: 3,
            sort_order: SortOrder::Descend,
            sort_target: SortTarget::Mod,
            count_only: true,
            max_create_revision: 9,
            ..Default::default()
        })),
        ClientRequest::Kv(Request::DeleteRange(DeleteRangeRequest {
            key: b"x".to_vec(),
            range_end: b"y".to_vec(),
            prev_kv: true,
        })),
        ClientRequest::Kv(Request::Txn(txn(3))),
        ClientRequest::Kv(Request::Compaction(CompactionRequest {
            revision: 12,
            physical: true,
        })),
        ClientRequest::Alarm(AlarmRequest {
            action: AlarmAction::Deactivate,
            member_id: 2,
            alarm: Some(AlarmType::Nospace),
        }),
        ClientRequest::Lease(LeaseRequest::Grant(LeaseGrantRequest { ttl: 60, id: 7 })),
        ClientRequest::Lease(LeaseRequest::TimeToLive(LeaseTimeToLiveRequest {
            id: 7,
            keys: true,
        })),
    ]
}

fn responses() -> Vec<ClientResponse> {
    let header = ResponseHeader { revision: 42 };
    vec![
        ClientResponse::Status(StatusResponse {
            cluster_id: 1,
            member_id: 2,
            leader: 2,
            raft_term: 3,
            raft_index: 99,
            raft_applied_index: 98,
            revision: 41,
            db_size: 1 << 20,
            db_size_in_use: 1 << 19,
            errors: vec!["memberID:2 alarm:NOSPACE".into()],
            is_learner: true,
        }),
        ClientResponse::Alarm(AlarmResponse {
            alarms: vec![AlarmMember {
                member_id: 2,
                alarm: AlarmType::Nospace,
            }],
        }),
        ClientResponse::Kv(Response::Range(RangeResponse {
            header,
            kvs: (0..12).map(kv).collect(),
            more: true,
            count: 40,
        })),
        ClientResponse::Kv(Response::Put(PutResponse {
            header,
            prev_kv: Some(kv(3)),
        })),
        ClientResponse::Kv(Response::DeleteRange(DeleteRangeResponse {
            header,
            deleted: 2,
            prev_kvs: vec![kv(1), kv(2)],
        })),
        ClientResponse::Kv(Response::Txn(TxnResponse {
            header,
            succeeded: true,
            responses: vec![
                ResponseOp::Put(PutResponse::default()),
                ResponseOp::Txn(TxnResponse {
                    header,
                    succeeded: false,
                    responses: vec![ResponseOp::Range(RangeResponse::default())],
                }),
            ],
        })),
        ClientResponse::Kv(Response::Compaction(CompactionResponse { header })),
        ClientResponse::Lease(LeaseResponse::TimeToLive(LeaseTimeToLiveResponse {
            header,
            id: 7,
            ttl: 55,
            granted_ttl: 60,
            keys: vec![b"k1".to_vec(), b"k2".to_vec()],
        })),
    ]
}

/// Valid frames of every kind, each one frame.
fn frames() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for (i, r) in requests().iter().enumerate() {
        out.push(encode_request(i as u64 + 1, r).expect("encode").to_vec());
    }
    for (i, r) in responses().iter().enumerate() {
        out.push(encode_response(i as u64 + 100, r).expect("encode").to_vec());
    }
    for code in [
        ErrorCode::Malformed,
        ErrorCode::NoSpace,
        ErrorCode::Internal,
    ] {
        let reply = ErrorReply {
            code,
            message: "etcdserver: mvcc: database space exceeded".into(),
        };
        out.push(encode_error(7, &reply).expect("encode").to_vec());
    }
    out
}

/// Fields of a stream of frames: every header field, and every 4-byte word of the
/// payloads (rkyv's relative pointers and lengths are 32-bit words).
fn frame_fields(stream: &[u8]) -> Vec<Field> {
    let mut fields = Vec::new();
    let mut at = 0;
    while let Ok(Some((_, total))) = split_frame(&stream[at..], u32::MAX) {
        for (off, width) in [(0, 1), (1, 1), (2, 1), (3, 1), (4, 4), (8, 8)] {
            fields.push(Field::new(at + off, width));
        }
        fields.extend(
            (at + HEADER_BYTES..at + total - 3)
                .step_by(4)
                .map(|w| Field::new(w, 4)),
        );
        at += total;
    }
    fields
}

/// Reads a stream of frames as a connection does (the payload copied into an aligned
/// buffer) and hands every payload to every payload decoder, whatever its frame kind says:
/// a peer may send anything.
fn decode_stream(stream: &[u8]) {
    let mut at = 0;
    while let Ok(Some((_, total))) = split_frame(&stream[at..], PAYLOAD_BYTES_MAX_DEFAULT) {
        let mut payload = AlignedVec::<16>::new();
        payload.extend_from_slice(&stream[at + HEADER_BYTES..at + total]);
        let _ = access_request(&payload);
        let _ = decode_request(&payload);
        let _ = decode_response(&payload);
        let _ = decode_error(&payload);
        at += total;
    }
}

#[test]
fn fuzz_frames() {
    let mut fuzz = Fuzz::new("frames", Duration::from_secs(5), false);
    let corpus = frames();
    let donors: Vec<&[u8]> = corpus.iter().map(Vec::as_slice).collect();
    while let Some((case, mut rng)) = fuzz.next_case() {
        let mut stream = Vec::new();
        for _ in 0..rng.gen_range(1..=3) {
            stream.extend_from_slice(&corpus[rng.gen_range(0..corpus.len())]);
        }
        let fields = frame_fields(&stream);
        mutate(&mut rng, &mut stream, &fields, &donors);
        let input: Input = vec![("input.bin".into(), stream)];
        fuzz.run(case, &input, DECODE_BOUND, |input| {
            decode_stream(&input[0].1)
        });
    }
    println!("frames: {} cases", fuzz.cases());
}

/// WAL records of a Raft log as the raft role writes them.
pub fn raft_records() -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let voters = ConfState {
        voters: vec![1, 2, 3],
        learners: vec![4],
        ..Default::default()
    };
    out.push((
        RecordType::METADATA.get(),
        Identity {
            member_id: 0xabc,
            cluster_id: 0xdef,
        }
        .encode(
            3,
            &[cairn::server::PeerInfo {
                id: 0xabc,
                name: "a".into(),
                peer_urls: vec!["http://127.0.0.1:2380".into()],
            }],
        ),
    ));
    out.push((
        RecordType::SNAPSHOT.get(),
        encode_marker(0, 0, &membership(&voters)),
    ));
    for (i, request) in requests().iter().enumerate() {
        let data = rkyv::to_bytes::<rkyv::rancor::Error>(request).expect("archive");
        let id = ProposalId {
            member: 0xabc,
            epoch: 3,
            seq: i as u64,
        };
        // Some entries hold lease commands (a checkpoint of the leader's) instead.
        let data = match request {
            ClientRequest::Lease(_) => command::lease(&LeaseOp::Checkpoint(vec![(7, 30), (8, 0)])),
            _ => command::client(&data),
        };
        let mut e = Entry {
            index: i as u64 + 1,
            term: 1 + i as u64 / 3,
            data: data.into(),
            context: id.encode().into(),
            ..Default::default()
        };
        if i == 2 {
            e.set_entry_type(EntryType::EntryConfChange);
            e.context = b"ctx".to_vec().into();
        }
        out.push((RecordType::ENTRY.get(), encode_entry(&e)));
        let hs = HardState {
            term: e.term,
            vote: 1,
            commit: i as u64,
            ..Default::default()
        };
        out.push((RecordType::HARD_STATE.get(), encode_hard_state(&hs)));
    }
    out.push((
        RecordType::SNAPSHOT.get(),
        encode_marker(3, 1, &membership(&voters)),
    ));
    out
}

/// `type u8 | length u32 | payload` per record: the container the raft target mutates.
fn pack(records: &[(u8, Vec<u8>)]) -> (Vec<u8>, Vec<Field>) {
    let (mut out, mut fields) = (Vec::new(), Vec::new());
    for (rtype, payload) in records {
        fields.push(Field::new(out.len(), 1));
        fields.push(Field::new(out.len() + 1, 4));
        out.push(*rtype);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        // Entry and marker fields: index, term, type, lengths and counts.
        let p = out.len();
        for (off, width) in [(0, 8), (8, 8), (16, 1), (17, 4), (21, 4), (29, 4)] {
            if off + width <= payload.len() {
                fields.push(Field::new(p + off, width));
            }
        }
        out.extend_from_slice(payload);
    }
    (out, fields)
}

fn unpack(mut bytes: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while bytes.len() >= 5 {
        let len = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        let rtype = bytes[0];
        let rest = &bytes[5..];
        let payload = &rest[..len.min(rest.len())];
        out.push((rtype, payload));
        bytes = &rest[payload.len()..];
    }
    out
}

/// Replays records as the raft role does on start (decode errors are skipped, so one bad
/// record does not hide the rest), then asks the log what raft-rs asks it.
pub fn replay_raft(records: &[(u8, &[u8])]) {
    let log = RaftLog::new(ConfState::default());
    for &(rtype, payload) in records {
        let Some(rtype) = RecordType::new(rtype) else {
            continue;
        };
        replay_one(&log, rtype, payload);
    }
    query_log(&log);
}

/// One WAL record as the server reads it back: identity, or a raft record (an entry's data
/// is a log command, read in place by the apply loop; its context a proposal id).
pub fn replay_one(log: &RaftLog, rtype: RecordType, payload: &[u8]) {
    if rtype == RecordType::METADATA {
        let _ = Identity::decode(payload);
        return;
    }
    if rtype == RecordType::ENTRY {
        if let Ok(e) = cairn::raftlog::decode_entry(payload) {
            let mut data = AlignedVec::<16>::new();
            data.extend_from_slice(&e.data);
            let _ = command::decode(&data);
            let _ = ProposalId::decode(&e.context);
        }
    }
    let _ = log.replay(rtype, payload);
}

pub fn query_log(log: &RaftLog) {
    let _ = log.finish_replay();
    let _ = log.initial_state();
    let (Ok(first), Ok(last)) = (log.first_index(), log.last_index()) else {
        return;
    };
    for idx in [first.wrapping_sub(1), first, last, last.wrapping_add(1)] {
        let _ = log.term(idx);
    }
    let high = last.saturating_add(1).min(first.saturating_add(16));
    let _ = log.entries(first, high, Some(1 << 20), GetEntriesContext::empty(false));
    let _ = log.compact(first);
}

#[test]
fn fuzz_raft_records() {
    let mut fuzz = Fuzz::new("raft_records", Duration::from_secs(5), false);
    let corpus = raft_records();
    let (packed, _) = pack(&corpus);
    let donors: Vec<&[u8]> = corpus.iter().map(|(_, p)| p.as_slice()).collect();
    while let Some((case, mut rng)) = fuzz.next_case() {
        let mut records = corpus.clone();
        if rng.gen_bool(0.3) {
            records.truncate(rng.gen_range(0..=records.len()));
        }
        if rng.gen_bool(0.2) {
            let i = rng.gen_range(0..corpus.len());
            records.push(corpus[i].clone());
        }
        let (mut bytes, fields) = pack(&records);
        mutate(&mut rng, &mut bytes, &fields, &donors);
        let input: Input = vec![("input.bin".into(), bytes)];
        fuzz.run(case, &input, DECODE_BOUND, |input| {
            replay_raft(&unpack(&input[0].1))
        });
    }
    assert!(!packed.is_empty());
    println!("raft_records: {} cases", fuzz.cases());
}

/// A membership of these voters, with no member attributes (as a test's start marker).
fn membership(conf: &ConfState) -> cairn::raftlog::Membership {
    cairn::raftlog::Membership {
        conf: conf.clone(),
        ..Default::default()
    }
}
