use super::*;
use crate::mvcc::{PutRequest, PutResponse, RangeRequest, ResponseHeader};
use rand::{rngs::StdRng, Rng, SeedableRng};

const LIMIT: u32 = PAYLOAD_BYTES_MAX_DEFAULT;

fn put(key: &[u8], value: Vec<u8>) -> ClientRequest {
    ClientRequest::Kv(Request::Put(PutRequest {
        key: key.to_vec(),
        value,
        ..Default::default()
    }))
}

/// Splits one frame off `buf` and returns its header and payload copied to an aligned buffer.
fn one_frame(buf: &[u8]) -> (FrameHeader, AlignedVec, usize) {
    let (header, total) = split_frame(buf, LIMIT).unwrap().expect("a whole frame");
    let mut payload = AlignedVec::<16>::new();
    payload.extend_from_slice(&buf[HEADER_BYTES..total]);
    (header, payload, total)
}

#[test]
fn request_round_trip_and_in_place_access() {
    let req = put(b"k", vec![9; 1 << 20]);
    let bytes = encode_request(77, &req).unwrap();
    // The payload inside the encoded frame is itself aligned: readable in place.
    let archived = access_request(&bytes[HEADER_BYTES..]).unwrap();
    match archived {
        ArchivedClientRequest::Kv(crate::mvcc::ArchivedRequest::Put(p)) => {
            assert_eq!(p.key.as_slice(), b"k");
            assert_eq!(p.value.len(), 1 << 20);
        }
        _ => panic!("not a put"),
    }
    let (header, payload, total) = one_frame(&bytes);
    assert_eq!(
        (header.kind, header.request_id, total),
        (FrameKind::Request, 77, bytes.len())
    );
    assert_eq!(decode_request(&payload).unwrap(), req);
}

#[test]
fn response_and_error_round_trip() {
    let resp = ClientResponse::Kv(Response::Put(PutResponse {
        header: ResponseHeader { revision: 5 },
        prev_kv: None,
    }));
    let (h, payload, _) = one_frame(&encode_response(3, &resp).unwrap());
    assert_eq!((h.kind, h.request_id), (FrameKind::Response, 3));
    assert_eq!(decode_response(&payload).unwrap(), resp);
    let err = ErrorReply {
        code: ErrorCode::InvalidRequest,
        message: "etcdserver: key is not provided".into(),
    };
    let (h, payload, _) = one_frame(&encode_error(4, &err).unwrap());
    assert_eq!(h.kind, FrameKind::Error);
    assert_eq!(decode_error(&payload).unwrap(), err);
}

#[test]
fn frames_split_at_every_byte_and_back_to_back() {
    let a = encode_request(1, &ClientRequest::Status).unwrap();
    let b = encode_request(
        2,
        &ClientRequest::Kv(Request::Range(RangeRequest {
            key: b"x".to_vec(),
            ..Default::default()
        })),
    )
    .unwrap();
    let mut stream = a.to_vec();
    stream.extend_from_slice(&b);
    for cut in 0..a.len() {
        assert_eq!(
            split_frame(&stream[..cut], LIMIT).unwrap(),
            None,
            "cut at {cut}"
        );
    }
    let (h1, total1) = split_frame(&stream, LIMIT).unwrap().unwrap();
    let (h2, total2) = split_frame(&stream[total1..], LIMIT).unwrap().unwrap();
    assert_eq!(
        (h1.request_id, h2.request_id, total1 + total2),
        (1, 2, stream.len())
    );
}

#[test]
fn bad_headers_are_typed_errors() {
    let good = encode_request(1, &ClientRequest::Status).unwrap().to_vec();
    let with = |at: usize, b: u8| {
        let mut f = good.clone();
        f[at] = b;
        split_frame(&f, LIMIT)
    };
    assert_eq!(with(0, 0x00), Err(ProtocolError::BadMagic(0)));
    assert_eq!(with(1, 9), Err(ProtocolError::BadVersion(9)));
    assert_eq!(with(2, 200), Err(ProtocolError::UnknownKind(200)));
    assert_eq!(with(3, 1), Err(ProtocolError::ReservedBits));
    let mut huge = good.clone();
    huge[4..8].copy_from_slice(&(LIMIT + 1).to_le_bytes());
    assert_eq!(
        split_frame(&huge, LIMIT),
        Err(ProtocolError::TooLarge {
            bytes: LIMIT + 1,
            limit: LIMIT
        })
    );
}

#[test]
fn garbage_and_truncated_payloads_are_rejected_without_panics() {
    let mut rng = StdRng::seed_from_u64(5);
    for len in 0..300 {
        let mut payload = AlignedVec::<16>::new();
        payload.extend_from_slice(&(0..len).map(|_| rng.gen()).collect::<Vec<u8>>());
        // Any outcome but a panic is acceptable for random bytes; most are errors.
        let _ = access_request(&payload);
        let _ = decode_response(&payload);
        let _ = decode_error(&payload);
    }
    let valid = encode_request(1, &put(b"key", b"value".to_vec())).unwrap();
    let payload = &valid[HEADER_BYTES..];
    for cut in 0..payload.len() {
        let mut p = AlignedVec::<16>::new();
        p.extend_from_slice(&payload[..cut]);
        let r = access_request(&p).map(|_| ());
        assert!(
            matches!(r, Err(ProtocolError::InvalidPayload(_))),
            "cut at {cut}: {r:?}"
        );
    }
    // Every single flipped byte is either rejected or still a valid request: never a panic.
    for at in 0..payload.len() {
        let mut p = AlignedVec::<16>::new();
        p.extend_from_slice(payload);
        p[at] ^= 0xff;
        if let Ok(req) = decode_request(&p) {
            assert!(matches!(req, ClientRequest::Kv(_) | ClientRequest::Status));
        }
    }
}

#[test]
fn misaligned_payloads_are_refused() {
    let frame = encode_request(1, &put(b"k", b"v".to_vec())).unwrap();
    let mut shifted = AlignedVec::<16>::new();
    shifted.push(0);
    shifted.extend_from_slice(&frame[HEADER_BYTES..]);
    assert!(matches!(
        access_request(&shifted[1..]),
        Err(ProtocolError::Misaligned)
    ));
}

/// A transaction nested `depth` times, archived on a thread with a large stack (archiving
/// and dropping it recurse as deep as it is nested).
fn nested_txn_payload(depth: usize) -> AlignedVec {
    std::thread::Builder::new()
        .stack_size(1 << 30)
        .spawn(move || {
            let mut txn = crate::mvcc::TxnRequest::default();
            for _ in 0..depth {
                txn = crate::mvcc::TxnRequest {
                    success: vec![crate::mvcc::RequestOp::Txn(txn)],
                    ..Default::default()
                };
            }
            let request = ClientRequest::Kv(Request::Txn(txn));
            let frame = encode_request(1, &request).unwrap();
            let mut payload = AlignedVec::<16>::new();
            payload.extend_from_slice(&frame[HEADER_BYTES..]);
            payload
        })
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn deeply_nested_requests_are_refused_without_exhausting_the_stack() {
    // As many levels as fit in a frame (tens of thousands): validating them recursively
    // overflowed the connection thread's stack, and the process aborted. Checked on a
    // thread with a small stack.
    let per_level = (nested_txn_payload(1001).len() - nested_txn_payload(1).len()) / 1000;
    let deep = nested_txn_payload((PAYLOAD_BYTES_MAX_DEFAULT as usize - 4096) / per_level);
    let shallow = nested_txn_payload(ARCHIVE_DEPTH_MAX - 4);
    std::thread::Builder::new()
        .stack_size(512 << 10)
        .spawn(move || {
            assert!(deep.len() < PAYLOAD_BYTES_MAX_DEFAULT as usize);
            assert!(matches!(
                access_request(&deep),
                Err(ProtocolError::InvalidPayload(_))
            ));
            assert!(decode_request(&deep).is_err());
            assert!(access_request(&shallow).is_ok());
        })
        .unwrap()
        .join()
        .unwrap();
}
