//! Frame headers: encoding, and splitting a byte stream into frames under a size limit.
//! Layout: `docs/protocol.md`.

use super::ProtocolError;

/// Bytes of a frame header; also the payload's alignment within a frame, so a payload read
/// into a 16-byte-aligned buffer right after its header can be accessed in place.
pub const HEADER_BYTES: usize = 16;
/// First byte of every frame header.
pub const MAGIC: u8 = 0xCA;
/// Protocol version carried in every header.
pub const VERSION: u8 = 1;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// A client request: an archived [`super::ClientRequest`].
    Request = 1,
    /// The reply to the request with the same id: an archived [`super::ClientResponse`].
    Response = 2,
    /// The request with this id (or, with id 0, the connection) failed: an archived
    /// [`super::ErrorReply`].
    Error = 3,
}

impl FrameKind {
    fn from_u8(b: u8) -> Option<FrameKind> {
        match b {
            1 => Some(FrameKind::Request),
            2 => Some(FrameKind::Response),
            3 => Some(FrameKind::Error),
            _ => None,
        }
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    /// Chosen by the client, echoed in the reply; replies may come in any order.
    pub request_id: u64,
    /// Payload bytes following the header.
    pub payload_bytes: u32,
}

impl FrameHeader {
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut h = [0u8; HEADER_BYTES];
        h[0] = MAGIC;
        h[1] = VERSION;
        h[2] = self.kind as u8;
        h[4..8].copy_from_slice(&self.payload_bytes.to_le_bytes());
        h[8..16].copy_from_slice(&self.request_id.to_le_bytes());
        h
    }

    /// Decodes a header, checking magic, version, kind and the payload size limit.
    pub fn decode(
        h: &[u8; HEADER_BYTES],
        payload_bytes_max: u32,
    ) -> Result<FrameHeader, ProtocolError> {
        if h[0] != MAGIC {
            return Err(ProtocolError::BadMagic(h[0]));
        }
        if h[1] != VERSION {
            return Err(ProtocolError::BadVersion(h[1]));
        }
        let kind = FrameKind::from_u8(h[2]).ok_or(ProtocolError::UnknownKind(h[2]))?;
        if h[3] != 0 {
            return Err(ProtocolError::ReservedBits);
        }
        let payload_bytes = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        if payload_bytes > payload_bytes_max {
            return Err(ProtocolError::TooLarge {
                bytes: payload_bytes,
                limit: payload_bytes_max,
            });
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&h[8..16]);
        Ok(FrameHeader {
            kind,
            request_id: u64::from_le_bytes(id),
            payload_bytes,
        })
    }
}

/// Finds the first whole frame at the start of `buf`: its header and total length, `None`
/// if more bytes are needed, or an error for a header that can never become valid (the
/// connection is then answered with an error frame and closed).
pub fn split_frame(
    buf: &[u8],
    payload_bytes_max: u32,
) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
    let Some(head) = buf.first_chunk::<HEADER_BYTES>() else {
        return Ok(None);
    };
    let header = FrameHeader::decode(head, payload_bytes_max)?;
    let total = HEADER_BYTES + header.payload_bytes as usize;
    Ok((buf.len() >= total).then_some((header, total)))
}
