//! The codec of the generated servers and clients: prost's encoding, with smaller buffers.
//!
//! tonic's default codec allocates 8 KiB for every call's request and another 8 KiB for its
//! response before it knows their sizes. A put or a point read is a few hundred bytes, so at
//! tens of thousands of calls a second that is hundreds of megabytes a second of memory
//! touched for nothing (and page faults when the allocator hands fresh pages back to it).
//! These buffers start at 512 bytes; a bigger message grows its buffer as it needs (tonic
//! reserves a request's whole length once its frame header is read, and the response
//! buffer grows as prost writes), so no message size is refused that tonic would take.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// A call's first buffer, request or response.
const BUFFER_SIZE: usize = 512;

/// A streaming response's encoded messages are handed to the connection once they reach
/// this size (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

/// prost's codec with [`BUFFER_SIZE`] buffers: `T` is what this side encodes, `U` what it
/// decodes.
#[derive(Debug, Clone)]
pub struct SmallBufferCodec<T, U> {
    _messages: PhantomData<(T, U)>,
}

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        SmallBufferCodec {
            _messages: PhantomData,
        }
    }
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = SizedEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        SizedEncoder(ProstEncoder::new(settings()))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}

/// prost's encoder, reserving a message's whole encoded length before writing it, so a
/// large response grows its buffer once instead of doubling it from [`BUFFER_SIZE`].
#[derive(Debug, Clone)]
pub struct SizedEncoder<T>(ProstEncoder<T>);

impl<T: prost::Message> Encoder for SizedEncoder<T> {
    type Item = T;
    type Error = tonic::Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        buf.reserve(item.encoded_len());
        self.0.encode(item, buf)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
