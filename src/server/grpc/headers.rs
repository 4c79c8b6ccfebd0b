//! etcdctl 3.4 dials an endpoint given with its scheme (`endpoint status --cluster`,
//! `endpoint hashkv --cluster`, any `--endpoints=http://...`) with the whole URL as the
//! HTTP/2 `:authority`, `http://host:port`. etcd's gRPC server ignores the authority; the
//! HTTP/2 server under tonic refuses such a request (RST_STREAM PROTOCOL_ERROR: an
//! authority has no scheme). So the request header blocks a client sends are rewritten
//! on their way in, with `:authority` cut down to its `host:port`.
//!
//! A header block passes as the client encoded it, but for a literal `:authority` with a
//! scheme, which is written again with the same representation (RFC 7541 §6.2: with
//! incremental indexing, without, never indexed) and the value cut. The server's decoder
//! so keeps the client's dynamic table, except that an `:authority` entry holds the cut
//! value: an entry no larger than the client's, so the server's table holds every entry the
//! client's does, at the same index, and the client's later references to it (HPACK's
//! indexed fields) pass unchanged and name the cut value. To know which fields are
//! `:authority`, the rewriter keeps the table as the client's encoder keeps it; values
//! neither indexed nor `:authority` are skipped, not decoded. Every other frame, and the
//! connection preface, pass unchanged.
//!
//! Bounds: a frame of a header block at most [`FRAME_BYTES_MAX`] (the HTTP/2 default
//! that the server announces), a block at most [`BLOCK_BYTES_MAX`], the table at most
//! [`TABLE_BYTES_MAX`] (the default the server's SETTINGS leave in place), a block's
//! fields at most [`FIELDS_BYTES_MAX`] decoded (a few bytes can name large table entries
//! again and again; a value skipped counts as the most its Huffman code can decode to). A client that exceeds them, or sends a block that does not decode,
//! has its connection closed.

use super::keepalive::Frame;
use std::collections::VecDeque;

/// The client connection preface, passed through before the frames.
const PREFACE_BYTES: usize = 24;
/// The largest frame payload the server accepts: SETTINGS_MAX_FRAME_SIZE's default,
/// which tonic leaves in place.
const FRAME_BYTES_MAX: usize = 16_384;
/// A header block, encoded, at most.
const BLOCK_BYTES_MAX: usize = 64 << 10;
/// The HPACK dynamic table's size, at most: SETTINGS_HEADER_TABLE_SIZE's default.
const TABLE_BYTES_MAX: usize = 4096;
/// A block's fields, decoded and counted as HTTP/2 counts a header list (each field's
/// name and value and 32 bytes), at most.
const FIELDS_BYTES_MAX: usize = 1 << 20;
const FRAME_HEADER_BYTES: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// A header field: its name and value.
type Field = (Vec<u8>, Vec<u8>);

/// Why a client's frames could not be rewritten: its connection is closed.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Malformed(&'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP/2 request headers: {}", self.0)
    }
}

/// A HEADERS frame whose block is being collected (from it and CONTINUATION frames).
struct Open {
    stream_id: [u8; 4],
    end_stream: bool,
    priority: Option<[u8; 5]>,
}

/// Rewrites the bytes a client sends, as they arrive.
pub(super) struct Rewriter {
    preface_left: usize,
    /// Bytes of a frame's payload still to pass through unchanged.
    passing: usize,
    /// Bytes received and not yet rewritten: a frame header, or a header block's frame.
    pending: Vec<u8>,
    open: Option<Open>,
    block: Vec<u8>,
    table: Table,
}

impl Rewriter {
    pub fn new() -> Rewriter {
        Rewriter {
            preface_left: PREFACE_BYTES,
            passing: 0,
            pending: Vec::new(),
            open: None,
            block: Vec::new(),
            table: Table::new(),
        }
    }

    /// Takes `input` (bytes from the client) and appends what the server is to read to
    /// `out`, calling `seen` with the header of each frame as the client sent it (for
    /// `keepalive`).
    pub fn feed(
        &mut self,
        mut input: &[u8],
        out: &mut Vec<u8>,
        mut seen: impl FnMut(Frame),
    ) -> Result<(), Malformed> {
        while !input.is_empty() {
            let through = if self.preface_left > 0 {
                &mut self.preface_left
            } else {
                &mut self.passing
            };
            if *through > 0 {
                let n = (*through).min(input.len());
                out.extend_from_slice(&input[..n]);
                *through -= n;
                input = &input[n..];
                continue;
            }
            let wanted = match frame_length(&self.pending) {
                None => FRAME_HEADER_BYTES,
                Some(length) => FRAME_HEADER_BYTES + length,
            };
            let n = wanted.saturating_sub(self.pending.len()).min(input.len());
            self.pending.extend_from_slice(&input[..n]);
            input = &input[n..];
            if self.pending.len() == FRAME_HEADER_BYTES || self.pending.len() == wanted {
                self.frame(out, &mut seen)?;
            }
        }
        Ok(())
    }

    /// Looks at the frame in `pending`: a header that starts another frame, or a whole
    /// frame of a header block.
    fn frame(&mut self, out: &mut Vec<u8>, seen: &mut impl FnMut(Frame)) -> Result<(), Malformed> {
        let length = frame_length(&self.pending).unwrap_or(0);
        let kind = self.pending[3];
        let in_block = kind == HEADERS || kind == CONTINUATION;
        if self.pending.len() == FRAME_HEADER_BYTES && length > 0 {
            if !in_block {
                if self.open.is_some() {
                    return Err(Malformed("a frame inside a header block"));
                }
                seen(Frame::of(&self.pending));
                out.extend_from_slice(&self.pending);
                self.pending.clear();
                self.passing = length;
                return Ok(());
            }
            if length > FRAME_BYTES_MAX {
                return Err(Malformed("a frame over the maximum frame size"));
            }
            // The payload is collected first.
            return Ok(());
        }
        let frame = std::mem::take(&mut self.pending);
        seen(Frame::of(&frame));
        let (flags, stream_id) = (frame[4], [frame[5], frame[6], frame[7], frame[8]]);
        let payload = &frame[FRAME_HEADER_BYTES..];
        match (kind, &self.open) {
            (HEADERS, None) => {
                let (fragment, priority) = headers_fragment(flags, payload)?;
                self.open = Some(Open {
                    stream_id,
                    end_stream: flags & END_STREAM != 0,
                    priority,
                });
                self.block.extend_from_slice(fragment);
            }
            (CONTINUATION, Some(open)) if open.stream_id == stream_id => {
                self.block.extend_from_slice(payload);
            }
            (HEADERS | CONTINUATION, _) => return Err(Malformed("an unexpected header frame")),
            _ => {
                // An empty frame of another kind.
                if self.open.is_some() {
                    return Err(Malformed("a frame inside a header block"));
                }
                out.extend_from_slice(&frame);
                return Ok(());
            }
        }
        if self.block.len() > BLOCK_BYTES_MAX {
            return Err(Malformed("a header block over its maximum size"));
        }
        if flags & END_HEADERS != 0 {
            let rewritten = self.table.rewrite(&self.block, None)?;
            if let Some(open) = self.open.take() {
                write_headers(&open, rewritten.as_deref().unwrap_or(&self.block), out);
            }
            self.block.clear();
        }
        Ok(())
    }
}

/// The payload length a frame header announces, once `buf` holds the header.
fn frame_length(buf: &[u8]) -> Option<usize> {
    (buf.len() >= FRAME_HEADER_BYTES)
        .then(|| (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]))
}

/// A HEADERS payload's block fragment (padding and priority removed), and its priority.
fn headers_fragment(flags: u8, payload: &[u8]) -> Result<(&[u8], Option<[u8; 5]>), Malformed> {
    let mut rest = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        let (&p, after) = rest
            .split_first()
            .ok_or(Malformed("a short HEADERS frame"))?;
        pad = usize::from(p);
        rest = after;
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        let p: [u8; 5] = rest
            .get(..5)
            .and_then(|p| p.try_into().ok())
            .ok_or(Malformed("a short HEADERS frame"))?;
        priority = Some(p);
        rest = &rest[5..];
    }
    let end = rest
        .len()
        .checked_sub(pad)
        .ok_or(Malformed("padding longer than its frame"))?;
    Ok((&rest[..end], priority))
}

/// Writes `block` as a HEADERS frame and as many CONTINUATION frames as it takes.
fn write_headers(open: &Open, block: &[u8], out: &mut Vec<u8>) {
    let priority: &[u8] = open.priority.as_ref().map_or(&[], |p| &p[..]);
    let first = block.len().min(FRAME_BYTES_MAX - priority.len());
    let (head, mut rest) = block.split_at(first);
    let mut flags = if open.end_stream { END_STREAM } else { 0 };
    if open.priority.is_some() {
        flags |= PRIORITY;
    }
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    frame_header(
        priority.len() + head.len(),
        HEADERS,
        flags,
        open.stream_id,
        out,
    );
    out.extend_from_slice(priority);
    out.extend_from_slice(head);
    while !rest.is_empty() {
        let (chunk, after) = rest.split_at(rest.len().min(FRAME_BYTES_MAX));
        let flags = if after.is_empty() { END_HEADERS } else { 0 };
        frame_header(chunk.len(), CONTINUATION, flags, open.stream_id, out);
        out.extend_from_slice(chunk);
        rest = after;
    }
}

fn frame_header(length: usize, kind: u8, flags: u8, stream_id: [u8; 4], out: &mut Vec<u8>) {
    debug_assert!(length <= FRAME_BYTES_MAX);
    out.extend_from_slice(&[
        (length >> 16) as u8,
        (length >> 8) as u8,
        length as u8,
        kind,
        flags,
    ]);
    out.extend_from_slice(&stream_id);
}

/// `value` as an authority: what follows a scheme's `://`, up to a path.
fn authority(value: &[u8]) -> &[u8] {
    let after_scheme = value
        .windows(3)
        .position(|w| w == b"://")
        .map_or(value, |at| &value[at + 3..]);
    let end = after_scheme
        .iter()
        .position(|&b| b == b'/')
        .unwrap_or(after_scheme.len());
    &after_scheme[..end]
}

/// An HPACK integer with an `n`-bit prefix, after `high` bits (RFC 7541 §5.1).
fn integer(mut v: usize, n: u32, high: u8, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(high | v as u8);
        return;
    }
    out.push(high | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// Reads HPACK's integers and strings from a block.
struct Reader<'a> {
    block: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn byte(&self) -> Result<u8, Malformed> {
        self.block
            .get(self.at)
            .copied()
            .ok_or(Malformed("a block that ends early"))
    }

    fn integer(&mut self, n: u32) -> Result<usize, Malformed> {
        let max = (1usize << n) - 1;
        let mut v = usize::from(self.byte()?) & max;
        self.at += 1;
        if v < max {
            return Ok(v);
        }
        // Four more bytes hold 28 bits: more than any length here can be.
        for shift in [0, 7, 14, 21] {
            let b = self.byte()?;
            self.at += 1;
            v += usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Malformed("an integer too large"))
    }

    /// A string's bytes as encoded, and whether they are Huffman-coded.
    fn raw_string(&mut self) -> Result<(&[u8], bool), Malformed> {
        let huffman = self.byte()? & 0x80 != 0;
        let length = self.integer(7)?;
        let end = self
            .at
            .checked_add(length)
            .filter(|&end| end <= self.block.len())
            .ok_or(Malformed("a string longer than its block"))?;
        let raw = &self.block[self.at..end];
        self.at = end;
        Ok((raw, huffman))
    }

    fn string(&mut self) -> Result<Vec<u8>, Malformed> {
        match self.raw_string()? {
            (raw, true) => huffman_decode(raw),
            (raw, false) => Ok(raw.to_vec()),
        }
    }

    /// Passes a string: the most bytes it can decode to (Huffman's shortest code is 5 bits).
    fn skip_string(&mut self) -> Result<usize, Malformed> {
        match self.raw_string()? {
            (raw, true) => Ok(raw.len() * 8 / 5),
            (raw, false) => Ok(raw.len()),
        }
    }
}

/// The HPACK dynamic table, as the client's encoder keeps it.
struct Table {
    /// Newest first.
    entries: VecDeque<Field>,
    bytes: usize,
    max_bytes: usize,
}

/// An entry's size as HPACK counts it (RFC 7541 §4.1).
fn entry_bytes(name: usize, value: usize) -> usize {
    name + value + 32
}

impl Table {
    fn new() -> Table {
        Table {
            entries: VecDeque::new(),
            bytes: 0,
            max_bytes: TABLE_BYTES_MAX,
        }
    }

    /// Field `index` (1-based, the static table first): its name and value.
    fn get(&self, index: usize) -> Result<(&[u8], &[u8]), Malformed> {
        let found = match index.checked_sub(1) {
            Some(i) if i < STATIC.len() => {
                let (name, value) = STATIC[i];
                Some((name.as_bytes(), value.as_bytes()))
            }
            Some(i) => self
                .entries
                .get(i - STATIC.len())
                .map(|(n, v)| (&n[..], &v[..])),
            None => None,
        };
        found.ok_or(Malformed("an index beyond the tables"))
    }

    fn evict_to(&mut self, max_bytes: usize) {
        while self.bytes > max_bytes {
            match self.entries.pop_back() {
                Some((n, v)) => self.bytes -= entry_bytes(n.len(), v.len()),
                None => break,
            }
        }
    }

    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        let size = entry_bytes(name.len(), value.len());
        if size > self.max_bytes {
            self.entries.clear();
            self.bytes = 0;
            return;
        }
        self.evict_to(self.max_bytes - size);
        self.bytes += size;
        self.entries.push_front((name, value));
    }

    /// Reads `block` (RFC 7541 §6), keeping the table as the client's encoder keeps it, and
    /// gives the block to pass on when it differs from `block`: each literal `:authority`
    /// with a scheme written again, with its representation and its name as the client
    /// wrote them and its value cut to the authority, unencoded. With `fields`, each field
    /// is also given decoded, as a server's decoder reads it.
    fn rewrite(
        &mut self,
        block: &[u8],
        mut fields: Option<&mut Vec<Field>>,
    ) -> Result<Option<Vec<u8>>, Malformed> {
        let mut r = Reader { block, at: 0 };
        let mut out: Option<Vec<u8>> = None;
        // `block` up to here is in `out`, once there is one.
        let mut copied = 0;
        let mut list_bytes = 0;
        while r.at < block.len() {
            let start = r.at;
            let first = r.byte()?;
            if first & 0x80 != 0 {
                let (name, value) = self.get(r.integer(7)?)?;
                list_bytes += entry_bytes(name.len(), value.len());
                if let Some(fields) = fields.as_deref_mut() {
                    fields.push((name.to_vec(), value.to_vec()));
                }
            } else if first & 0xe0 == 0x20 {
                let size = r.integer(5)?;
                if size > TABLE_BYTES_MAX {
                    return Err(Malformed("a table size over the maximum"));
                }
                self.max_bytes = size;
                self.evict_to(size);
                continue;
            } else {
                // With incremental indexing (01), without (0000) or never indexed (0001).
                let indexed = first & 0xc0 == 0x40;
                let prefix = if indexed { 6 } else { 4 };
                let index = r.integer(prefix)?;
                let literal_name = if index == 0 { Some(r.string()?) } else { None };
                let name: &[u8] = match &literal_name {
                    Some(name) => name,
                    None => self.get(index)?.0,
                };
                let (name_len, authority_name) = (name.len(), name == b":authority");
                let value = if indexed || authority_name || fields.is_some() {
                    Some(r.string()?)
                } else {
                    None
                };
                let value_len = match &value {
                    Some(v) => v.len(),
                    None => r.skip_string()?,
                };
                list_bytes += entry_bytes(name_len, value_len);
                let cut = value
                    .as_deref()
                    .filter(|_| authority_name)
                    .map(authority)
                    .filter(|cut| cut.len() != value_len);
                if let Some(cut) = cut {
                    let o = out.get_or_insert_with(|| Vec::with_capacity(block.len()));
                    o.extend_from_slice(&block[copied..start]);
                    integer(index, prefix, first & !((1 << prefix) - 1), o);
                    if let Some(name) = &literal_name {
                        integer(name.len(), 7, 0, o);
                        o.extend_from_slice(name);
                    }
                    integer(cut.len(), 7, 0, o);
                    o.extend_from_slice(cut);
                    copied = r.at;
                }
                if indexed || fields.is_some() {
                    let name = match literal_name {
                        Some(name) => name,
                        None => self.get(index)?.0.to_vec(),
                    };
                    let value = value.unwrap_or_default();
                    if let Some(fields) = fields.as_deref_mut() {
                        fields.push((name.clone(), value.clone()));
                    }
                    if indexed {
                        self.insert(name, value);
                    }
                }
            }
            if list_bytes > FIELDS_BYTES_MAX {
                return Err(Malformed("a header list over its maximum size"));
            }
        }
        Ok(out.map(|mut o| {
            o.extend_from_slice(&block[copied..]);
            o
        }))
    }
}

/// HPACK's static table (RFC 7541 Appendix A).
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// The length in bits of each symbol's Huffman code (RFC 7541 Appendix B; symbol 256 is
/// EOS). The code is canonical: the lengths alone give the codes.
const HUFFMAN_BITS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

/// The canonical code's tables: per length, its first code, how many codes, and where
/// its symbols start in `symbols` (ordered by length, then symbol).
struct Canonical {
    first: [u32; 31],
    count: [u32; 31],
    offset: [usize; 31],
    symbols: [u16; 257],
}

fn canonical() -> &'static Canonical {
    static TABLES: std::sync::OnceLock<Canonical> = std::sync::OnceLock::new();
    TABLES.get_or_init(|| {
        let mut c = Canonical {
            first: [0; 31],
            count: [0; 31],
            offset: [0; 31],
            symbols: [0; 257],
        };
        let mut order: Vec<u16> = (0..257).collect();
        order.sort_by_key(|&s| (HUFFMAN_BITS[usize::from(s)], s));
        for &s in &order {
            c.count[usize::from(HUFFMAN_BITS[usize::from(s)])] += 1;
        }
        let (mut code, mut at) = (0u32, 0usize);
        for bits in 1..31 {
            c.first[bits] = code;
            c.offset[bits] = at;
            code = (code + c.count[bits]) << 1;
            at += c.count[bits] as usize;
        }
        for (i, &s) in order.iter().enumerate() {
            c.symbols[i] = s;
        }
        c
    })
}

/// Decodes an HPACK Huffman string (RFC 7541 §5.2).
fn huffman_decode(src: &[u8]) -> Result<Vec<u8>, Malformed> {
    let c = canonical();
    let mut out = Vec::with_capacity(src.len() * 8 / 5);
    let (mut code, mut bits) = (0u32, 0usize);
    for byte in src {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            bits += 1;
            if bits > 30 {
                return Err(Malformed("a Huffman code too long"));
            }
            let rank = code.wrapping_sub(c.first[bits]);
            if code >= c.first[bits] && rank < c.count[bits] {
                let symbol = c.symbols[c.offset[bits] + rank as usize];
                let byte = u8::try_from(symbol).map_err(|_| Malformed("EOS in a string"))?;
                out.push(byte);
                (code, bits) = (0, 0);
            }
        }
    }
    // Padding: at most 7 bits, all ones (the start of EOS).
    if bits > 7 || code != (1u32 << bits) - 1 {
        return Err(Malformed("bad Huffman padding"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn text(fields: &[Field]) -> Vec<(String, String)> {
        fields
            .iter()
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect()
    }

    /// A block's fields, as a server's decoder with table `t` reads them.
    fn decode(t: &mut Table, block: &[u8]) -> Result<Vec<Field>, Malformed> {
        let mut fields = Vec::new();
        t.rewrite(block, Some(&mut fields))?;
        Ok(fields)
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn huffman_strings_decode_as_rfc_7541_shows() {
        assert_eq!(
            huffman_decode(&hex("f1e3 c2e5 f23a 6ba0 ab90 f4ff")).as_deref(),
            Ok(&b"www.example.com"[..])
        );
        assert_eq!(
            huffman_decode(&hex("a8eb 1064 9cbf")).as_deref(),
            Ok(&b"no-cache"[..])
        );
        // Padding that is not all ones, and EOS itself, are refused.
        assert!(huffman_decode(&hex("f1e3 c2e5 f23a 6ba0 ab90 f4fe")).is_err());
        assert!(huffman_decode(&hex("ffff fffc")).is_err());
    }

    /// RFC 7541 C.4: three requests, each referring to the table the previous ones left.
    #[test]
    fn blocks_decode_with_the_dynamic_table_as_rfc_7541_shows() {
        let mut t = Table::new();
        let first =
            decode(&mut t, &hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff")).expect("C.4.1");
        assert_eq!(
            text(&first),
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ])
        );
        let second = decode(&mut t, &hex("8286 84be 5886 a8eb 1064 9cbf")).expect("C.4.2");
        assert_eq!(
            text(&second)[3],
            pairs(&[(":authority", "www.example.com")])[0]
        );
        assert_eq!(text(&second)[4], pairs(&[("cache-control", "no-cache")])[0]);
        let third = decode(
            &mut t,
            &hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"),
        )
        .expect("C.4.3");
        assert_eq!(
            text(&third),
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value")
            ])
        );
        assert_eq!(t.bytes, 164);
        assert!(decode(&mut t, &hex("c2")).is_err(), "index past the table");
        // Nothing to rewrite (no scheme): the block passes as it is.
        let mut t = Table::new();
        let block = hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff");
        assert_eq!(t.rewrite(&block, None), Ok(None));
        // An entry of 4 KiB named again and again: refused once the list passes 1 MiB.
        let mut t = Table::new();
        let mut big = vec![0x40, 1, b'x'];
        integer(4000, 7, 0, &mut big);
        big.extend(std::iter::repeat_n(b'v', 4000));
        assert_eq!(decode(&mut t, &big).map(|f| f.len()), Ok(1));
        assert!(t.rewrite(&[0xbe; 200], None).is_ok());
        assert!(t.rewrite(&[0xbe; 300], None).is_err());
        // A value skipped counts as the most it can decode to: 1 MiB of Huffman-coded
        // bytes without indexing is over the bound, however short it decodes.
        let mut skipped = Vec::new();
        for _ in 0..100 {
            skipped.extend_from_slice(&[0x00, 1, b'x', 0xff, 0xc1, 0x3d]);
            skipped.extend(std::iter::repeat_n(0xff, 8000));
        }
        assert!(Table::new().rewrite(&skipped, None).is_err());
    }

    fn frame(kind: u8, flags: u8, stream: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame_header(payload.len(), kind, flags, [0, 0, 0, stream], &mut out);
        out.extend_from_slice(payload);
        out
    }

    /// Rewrites `input` fed a few bytes at a time; the frames the server reads, and the
    /// header blocks among them decoded.
    fn rewrite(input: &[u8], step: usize) -> (Vec<u8>, Vec<Vec<(String, String)>>) {
        let mut r = Rewriter::new();
        let mut out = Vec::new();
        for chunk in input.chunks(step) {
            r.feed(chunk, &mut out, |_| {}).expect("rewrites");
        }
        let mut blocks = Vec::new();
        let mut server = Table::new();
        let mut at = PREFACE_BYTES;
        let mut block = Vec::new();
        while at < out.len() {
            let length = frame_length(&out[at..]).expect("frame header");
            let (kind, flags) = (out[at + 3], out[at + 4]);
            let payload = &out[at + FRAME_HEADER_BYTES..at + FRAME_HEADER_BYTES + length];
            if kind == HEADERS || kind == CONTINUATION {
                let (fragment, _) = if kind == HEADERS {
                    headers_fragment(flags, payload).expect("HEADERS")
                } else {
                    (payload, None)
                };
                block.extend_from_slice(fragment);
                if flags & END_HEADERS != 0 {
                    blocks.push(text(&decode(&mut server, &block).expect("decodes")));
                    block.clear();
                }
            }
            at += FRAME_HEADER_BYTES + length;
        }
        // The server's table is the client's, with the authority cut.
        let entries: Vec<Field> = server.entries.iter().cloned().collect();
        assert_eq!(text(&entries), pairs(&[(":authority", "127.0.0.1:2379")]));
        (out, blocks)
    }

    #[test]
    fn authorities_with_a_scheme_lose_it_and_other_frames_pass_unchanged() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let settings = frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
        // :method POST, :scheme http, :path /etcdserverpb.Maintenance/Status, then
        // :authority http://127.0.0.1:2379 indexed (so that the next block refers to it).
        let mut block = hex("8386");
        block.push(0x04);
        let path = b"/etcdserverpb.Maintenance/Status";
        block.push(path.len() as u8);
        block.extend_from_slice(path);
        block.push(0x41);
        let url = b"http://127.0.0.1:2379";
        block.push(url.len() as u8);
        block.extend_from_slice(url);
        let data = frame(0x0, END_STREAM, 1, b"\x00\x00\x00\x00\x00");
        // Padded, with a priority, split over a CONTINUATION frame.
        let mut padded = vec![2];
        padded.extend_from_slice(&[0, 0, 0, 0, 16]);
        padded.extend_from_slice(&block[..10]);
        padded.extend_from_slice(&[0, 0]);
        let mut input = preface.to_vec();
        input.extend(&settings);
        input.extend(frame(HEADERS, PADDED | PRIORITY, 1, &padded));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, &block[10..]));
        input.extend(&data);
        // The next request: :authority by its index in the dynamic table (62).
        input.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            3,
            &hex("8386 84be"),
        ));
        for step in [1, 7, input.len()] {
            let (out, blocks) = rewrite(&input, step);
            assert_eq!(
                &out[..PREFACE_BYTES + settings.len()],
                &input[..PREFACE_BYTES + settings.len()]
            );
            assert_eq!(blocks.len(), 2);
            assert_eq!(
                blocks[0],
                pairs(&[
                    (":method", "POST"),
                    (":scheme", "http"),
                    (":path", "/etcdserverpb.Maintenance/Status"),
                    (":authority", "127.0.0.1:2379")
                ])
            );
            assert_eq!(blocks[1][3], pairs(&[(":authority", "127.0.0.1:2379")])[0]);
            let at = out.windows(data.len()).position(|w| w == data.as_slice());
            assert!(at.is_some(), "the DATA frame passes unchanged");
            // A block with nothing to rewrite passes as the client encoded it.
            let second = frame(HEADERS, END_HEADERS | END_STREAM, 3, &hex("8386 84be"));
            assert!(out.ends_with(&second), "the second block passes unchanged");
        }
    }

    #[test]
    fn frames_out_of_order_or_too_large_are_refused() {
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        input.extend(frame(HEADERS, 0, 1, &hex("82")));
        input.extend(frame(0x0, 0, 1, b"x"));
        let mut out = Vec::new();
        assert!(Rewriter::new().feed(&input, &mut out, |_| {}).is_err());
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        input.extend(&[0x01, 0x00, 0x00, HEADERS, END_HEADERS, 0, 0, 0, 1]);
        assert!(Rewriter::new().feed(&input, &mut out, |_| {}).is_err());
        assert_eq!(authority(b"https://a:1/x"), b"a:1");
        assert_eq!(authority(b"a:1"), b"a:1");
    }
}
