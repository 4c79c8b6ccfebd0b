//! A request message over the size limit is ResourceExhausted with etcd (grpc-go's
//! "received message larger than max"); tonic says OutOfRange. This gives such
//! answers etcd's code, so that clients treat them as etcd's (every response passes through
//! [`resource_exhausted`]).

use tonic::codegen::http;

/// tonic's words for a message over `max_decoding_message_size`.
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large";

/// Rewrites a trailers-only answer "OutOfRange: message too large" as etcd's.
pub(super) fn resource_exhausted(headers: &mut http::HeaderMap) {
    let out_of_range = (tonic::Code::OutOfRange as i32).to_string();
    let too_large = headers
        .get("grpc-status")
        .is_some_and(|s| s.as_bytes() == out_of_range.as_bytes())
        && headers
            .get("grpc-message")
            .and_then(|m| percent_decoded(m.as_bytes()))
            .is_some_and(|m| m.starts_with(TONIC_TOO_LARGE));
    if too_large {
        let code = (tonic::Code::ResourceExhausted as i32).to_string();
        if let Ok(v) = http::HeaderValue::from_str(&code) {
            headers.insert("grpc-status", v);
        }
    }
}

/// A `grpc-message` value, percent-decoded (gRPC encodes spaces and more that way).
fn percent_decoded(bytes: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tonics_size_refusal_becomes_resource_exhausted() {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", http::HeaderValue::from_static("11"));
        h.insert(
            "grpc-message",
            http::HeaderValue::from_static(
                "Error,%20decoded%20message%20length%20too%20large: found 9 bytes",
            ),
        );
        resource_exhausted(&mut h);
        assert_eq!(h["grpc-status"], "8");
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", http::HeaderValue::from_static("11"));
        h.insert(
            "grpc-message",
            http::HeaderValue::from_static(
                "etcdserver: mvcc: required revision is a future revision",
            ),
        );
        resource_exhausted(&mut h);
        assert_eq!(h["grpc-status"], "11");
    }
}
