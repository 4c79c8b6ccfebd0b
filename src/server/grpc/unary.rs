//! The unary KV calls (Range, Put, DeleteRange, Txn), the bulk of what etcd's clients send,
//! served from the request's bytes without tonic's per-call machinery: the request body
//! is gathered (bounded), its one gRPC message decoded, the KV handler called, and the
//! answer encoded as one message. What a client sees is what tonic's generated service
//! answers, refusals included:
//! - a message over the size limit is ResourceExhausted (etcd's code; `super::limits`),
//!   refused from its length prefix, before its bytes are read;
//! - a message that does not decode, a compressed flag without `grpc-encoding`, a body
//!   that ends inside a message or holds none, are Internal with tonic's words.
//!
//! A call that asks for compression (`grpc-encoding`) goes to tonic's service instead
//! (which refuses it, as etcd's server is not asked to compress).

use super::Ctx;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::RecvStream;
use prost::Message;
use tonic::codegen::http;
use tonic::Status;

/// A gRPC message's prefix: the compressed flag and the length.
const PREFIX_BYTES: usize = 5;

/// The calls served here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Method {
    Range,
    Put,
    DeleteRange,
    Txn,
}

/// The messages a call may take and send.
#[derive(Clone, Copy)]
pub(super) struct Bounds {
    pub(super) recv_max: usize,
    pub(super) send_max: usize,
}

/// The call `parts` asks for, if it is one served here.
pub(super) fn method(parts: &http::request::Parts) -> Option<Method> {
    let m = match parts.uri.path() {
        "/etcdserverpb.KV/Range" => Method::Range,
        "/etcdserverpb.KV/Put" => Method::Put,
        "/etcdserverpb.KV/DeleteRange" => Method::DeleteRange,
        "/etcdserverpb.KV/Txn" => Method::Txn,
        _ => return None,
    };
    let plain = parts
        .headers
        .get("grpc-encoding")
        .is_none_or(|e| e.as_bytes() == b"identity");
    (parts.method == http::Method::POST && plain).then_some(m)
}

/// Serves one call: its answer's message, prefixed, or the status it fails with.
pub(super) async fn serve(
    method: Method,
    recv: RecvStream,
    ctx: &Ctx,
    bounds: Bounds,
) -> Result<Bytes, Status> {
    let body = gather(recv, bounds.recv_max).await?;
    match method {
        Method::Range => encode(ctx.range_call(decode(body)?).await?, bounds),
        Method::Put => encode(ctx.put_call(decode(body)?).await?, bounds),
        Method::DeleteRange => encode(ctx.delete_range_call(decode(body)?).await?, bounds),
        Method::Txn => encode(ctx.txn_call(decode(body)?).await?, bounds),
    }
}

fn too_large(found: usize, limit: usize) -> Status {
    Status::resource_exhausted(format!(
        "Error, decoded message length too large: found {found} bytes, the limit is: {limit} bytes"
    ))
}

/// The whole request body. A message declared over `limit` bytes is refused as soon as
/// its prefix is read, and a body that grows past one message of `limit` bytes (and two
/// prefixes) is refused there: no more than that is ever held.
async fn gather(mut recv: RecvStream, limit: usize) -> Result<Bytes, Status> {
    let mut first: Option<Bytes> = None;
    let mut more = BytesMut::new();
    while let Some(data) = recv.data().await {
        let data = data.map_err(Status::from)?;
        let _ = recv.flow_control().release_capacity(data.len());
        match &first {
            // The usual case: the whole message in the body's first data frame.
            None => first = Some(data),
            Some(f) => {
                if more.is_empty() {
                    more.extend_from_slice(f);
                }
                more.extend_from_slice(&data);
            }
        }
        let have: &[u8] = if more.is_empty() {
            first.as_deref().unwrap_or_default()
        } else {
            &more
        };
        if have.len() >= PREFIX_BYTES {
            let declared = u32::from_be_bytes([have[1], have[2], have[3], have[4]]) as usize;
            if declared > limit {
                return Err(too_large(declared, limit));
            }
        }
        if have.len() > limit + 2 * PREFIX_BYTES {
            return Err(too_large(have.len() - PREFIX_BYTES, limit));
        }
    }
    Ok(if more.is_empty() {
        first.unwrap_or_default()
    } else {
        more.freeze()
    })
}

/// The body's first message; any after it must be whole and decode too, as tonic reads a
/// unary request to its end.
fn decode<M: Message + Default>(mut body: Bytes) -> Result<M, Status> {
    let mut first = None;
    while body.has_remaining() {
        if body.len() < PREFIX_BYTES {
            return Err(Status::internal("Unexpected EOF decoding stream."));
        }
        match body[0] {
            0 => {}
            1 => {
                return Err(Status::internal(
                    "protocol error: received message with compressed-flag but no grpc-encoding was specified",
                ))
            }
            f => {
                return Err(Status::internal(format!(
                    "protocol error: received message with invalid compression flag: {f} (valid flags are 0 and 1), while sending request"
                )))
            }
        }
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        body.advance(PREFIX_BYTES);
        if body.len() < len {
            return Err(Status::internal("Unexpected EOF decoding stream."));
        }
        let message = M::decode(body.split_to(len)).map_err(|e| Status::internal(e.to_string()))?;
        first.get_or_insert(message);
    }
    first.ok_or_else(|| Status::internal("Missing request message."))
}

/// `message`, prefixed as one gRPC message.
fn encode<M: Message>(message: M, bounds: Bounds) -> Result<Bytes, Status> {
    let len = message.encoded_len();
    if len > bounds.send_max {
        return Err(Status::out_of_range(format!(
            "Error, encoded message length too large: found {len} bytes, the limit is: {} bytes",
            bounds.send_max
        )));
    }
    let mut buf = BytesMut::with_capacity(PREFIX_BYTES + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    message
        .encode(&mut buf)
        .map_err(|e| Status::internal(e.to_string()))?;
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::pb::etcdserverpb as pb;

    fn framed(flag: u8, message: &[u8]) -> Vec<u8> {
        let mut v = vec![flag];
        v.extend_from_slice(&(message.len() as u32).to_be_bytes());
        v.extend_from_slice(message);
        v
    }

    #[test]
    fn a_body_decodes_to_its_first_message_as_tonic_reads_it() {
        let put = pb::PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        };
        let one = framed(0, &put.encode_to_vec());
        let got: pb::PutRequest = decode(Bytes::from(one.clone())).unwrap();
        assert_eq!(got, put);
        let mut two = one.clone();
        two.extend_from_slice(&framed(0, &pb::PutRequest::default().encode_to_vec()));
        assert_eq!(decode::<pb::PutRequest>(Bytes::from(two)).unwrap(), put);

        let internal = |body: Vec<u8>| decode::<pb::PutRequest>(Bytes::from(body)).unwrap_err();
        let e = internal(Vec::new());
        assert_eq!(
            (e.code(), e.message()),
            (tonic::Code::Internal, "Missing request message.")
        );
        let e = internal(one[..one.len() - 1].to_vec());
        assert_eq!(
            (e.code(), e.message()),
            (tonic::Code::Internal, "Unexpected EOF decoding stream.")
        );
        let e = internal(one[..3].to_vec());
        assert_eq!(e.message(), "Unexpected EOF decoding stream.");
        let e = internal(framed(1, &put.encode_to_vec()));
        assert_eq!(e.code(), tonic::Code::Internal);
        assert!(e.message().contains("compressed-flag"), "{e:?}");
        let e = internal(framed(7, &put.encode_to_vec()));
        assert!(e.message().contains("invalid compression flag: 7"), "{e:?}");
        // Field 1 (key, bytes) with a length past the end.
        let e = internal(framed(0, &[0x0a, 0x05, b'k']));
        assert_eq!(e.code(), tonic::Code::Internal);
        let mut trailing = one;
        trailing.extend_from_slice(&framed(0, &[0x0a, 0x05, b'k']));
        assert_eq!(internal(trailing).code(), tonic::Code::Internal);
    }

    #[test]
    fn an_answer_is_one_prefixed_message_within_the_bound() {
        let resp = pb::PutResponse {
            header: Some(pb::ResponseHeader {
                revision: 7,
                ..Default::default()
            }),
            prev_kv: None,
        };
        let bounds = Bounds {
            recv_max: 100,
            send_max: 100,
        };
        let bytes = encode(resp.clone(), bounds).unwrap();
        assert_eq!(bytes[0], 0);
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        assert_eq!(len, bytes.len() - PREFIX_BYTES);
        assert_eq!(
            pb::PutResponse::decode(&bytes[PREFIX_BYTES..]).unwrap(),
            resp
        );
        let small = Bounds {
            recv_max: 100,
            send_max: 2,
        };
        assert_eq!(
            encode(resp, small).unwrap_err().code(),
            tonic::Code::OutOfRange
        );
    }
}
