//! etcd's keepalive enforcement on gRPC connections: a client that pings more often than
//! `--grpc-keepalive-min-time` (5 s) is sent GOAWAY ENHANCE_YOUR_CALM "too_many_pings" and
//! its connection closed, as grpc-go's server does for etcd. Sans-IO: `super::incoming`
//! feeds it the frames each way (the client's as `headers::Rewriter` parses them, the
//! server's through [`FrameScanner`]) and writes the GOAWAY it returns.
//!
//! grpc-go's rule, kept here: a client PING that comes sooner than the minimum time after
//! the previous one is a strike (or, on a connection with no call open, sooner than 2
//! hours: keepalive without calls is not permitted); the third strike past two closes the
//! connection. A PING right after the server sent headers or data is never a strike and
//! clears the strikes: clients measure bandwidth with pings when data arrives (BDP
//! estimation), which the rule must not punish.

use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Strikes a connection may have; one more closes it (grpc-go's `maxPingStrikes`).
const STRIKES_MAX: u32 = 2;
/// With no call open, a ping sooner than this after the last one is a strike (grpc-go's
/// `defaultPingTimeout`, as etcd does not permit keepalive without calls).
const IDLE_PING_INTERVAL_MIN: Duration = Duration::from_secs(2 * 60 * 60);
/// Open calls tracked per connection; a client past it (the server refuses more than
/// `STREAMS_PER_CONNECTION_MAX` anyway) is taken to have calls open.
const OPEN_TRACKED_MAX: usize = 4096;

const HEADER_BYTES: usize = 9;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_STREAM: u8 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const TOO_MANY_PINGS: &[u8] = b"too_many_pings";

/// An HTTP/2 frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
}

impl Frame {
    /// The header at the start of `h` (at least [`HEADER_BYTES`] long).
    pub(super) fn of(h: &[u8]) -> Frame {
        Frame {
            kind: h[3],
            flags: h[4],
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
        }
    }
}

/// Finds the frame headers in what the server writes, fed its bytes in pieces of any
/// size. (What the client sends is parsed by `headers::Rewriter`, which reports them.)
pub(super) struct FrameScanner {
    header: [u8; HEADER_BYTES],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    payload_left: usize,
}

impl FrameScanner {
    pub(super) fn new() -> FrameScanner {
        FrameScanner {
            header: [0; HEADER_BYTES],
            have: 0,
            payload_left: 0,
        }
    }

    /// Whether the bytes so far end on a frame's end (a frame may be written next).
    pub(super) fn at_boundary(&self) -> bool {
        self.have == 0 && self.payload_left == 0
    }

    /// Passes `bytes`, calling `seen` with each frame header completed in them.
    pub(super) fn scan(&mut self, mut bytes: &[u8], mut seen: impl FnMut(Frame)) {
        while !bytes.is_empty() {
            let n = if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                n
            } else {
                let n = (HEADER_BYTES - self.have).min(bytes.len());
                self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                self.have += n;
                if self.have == HEADER_BYTES {
                    let h = self.header;
                    self.have = 0;
                    self.payload_left = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                    seen(Frame::of(&h));
                }
                n
            };
            bytes = &bytes[n..];
        }
    }
}

/// One connection's pings and calls, as grpc-go's server counts them.
pub(super) struct PingPolicy {
    min_time: Duration,
    last_ping: Option<Instant>,
    strikes: u32,
    /// The server sent headers or data since the last ping.
    reset: bool,
    /// Calls the client opened that the server has not ended.
    open: HashSet<u32>,
    /// The highest call the client opened (GOAWAY's last stream).
    last_stream: u32,
}

impl PingPolicy {
    pub(super) fn new(min_time: Duration) -> PingPolicy {
        PingPolicy {
            min_time,
            last_ping: None,
            strikes: 0,
            reset: false,
            open: HashSet::new(),
            last_stream: 0,
        }
    }

    /// A frame from the client at `now`. False once the client has pinged too often: the
    /// connection is to be sent [`PingPolicy::goaway`] and closed.
    pub(super) fn client_sent(&mut self, frame: Frame, now: Instant) -> bool {
        match frame.kind {
            HEADERS if frame.stream > self.last_stream => {
                self.last_stream = frame.stream;
                if self.open.len() < OPEN_TRACKED_MAX {
                    self.open.insert(frame.stream);
                }
            }
            RST_STREAM => {
                self.open.remove(&frame.stream);
            }
            PING if frame.flags & FLAG_ACK == 0 => return self.ping(now),
            _ => {}
        }
        true
    }

    /// A frame the server sent.
    pub(super) fn server_sent(&mut self, frame: Frame) {
        match frame.kind {
            DATA | HEADERS => {
                self.reset = true;
                if frame.flags & FLAG_END_STREAM != 0 {
                    self.open.remove(&frame.stream);
                }
            }
            RST_STREAM => {
                self.open.remove(&frame.stream);
            }
            _ => {}
        }
    }

    fn ping(&mut self, now: Instant) -> bool {
        let last = self.last_ping.replace(now);
        if std::mem::take(&mut self.reset) {
            self.strikes = 0;
            return true;
        }
        let min = if !self.open.is_empty() {
            self.min_time
        } else {
            IDLE_PING_INTERVAL_MIN
        };
        if last.is_some_and(|last| now < last + min) {
            self.strikes += 1;
        }
        self.strikes <= STRIKES_MAX
    }

    /// GOAWAY ENHANCE_YOUR_CALM "too_many_pings", the frame grpc-go sends such a client.
    pub(super) fn goaway(&self) -> Vec<u8> {
        let payload = 8 + TOO_MANY_PINGS.len();
        let mut frame = Vec::with_capacity(HEADER_BYTES + payload);
        frame.extend_from_slice(&(payload as u32).to_be_bytes()[1..]);
        frame.extend_from_slice(&[GOAWAY, 0, 0, 0, 0, 0]);
        frame.extend_from_slice(&self.last_stream.to_be_bytes());
        frame.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        frame.extend_from_slice(TOO_MANY_PINGS);
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_bytes(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        b.extend_from_slice(&[kind, flags]);
        b.extend_from_slice(&stream.to_be_bytes());
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn frames_are_found_whatever_the_pieces() {
        let mut stream = frame_bytes(HEADERS, 0x4, 1, &[7; 20]);
        stream.extend(frame_bytes(PING, 0, 0, &[0; 8]));
        stream.extend(frame_bytes(DATA, 0x1, 1, &[]));
        let want = vec![
            Frame {
                kind: HEADERS,
                flags: 0x4,
                stream: 1,
            },
            Frame {
                kind: PING,
                flags: 0,
                stream: 0,
            },
            Frame {
                kind: DATA,
                flags: 0x1,
                stream: 1,
            },
        ];
        for piece in [1, 2, 5, 9, 10, 64] {
            let mut scanner = FrameScanner::new();
            let mut got = Vec::new();
            for chunk in stream.chunks(piece) {
                scanner.scan(chunk, |f| got.push(f));
            }
            assert_eq!(got, want, "pieces of {piece}");
            assert!(scanner.at_boundary());
        }
        let mut scanner = FrameScanner::new();
        scanner.scan(&frame_bytes(DATA, 0, 1, &[1; 4])[..11], |_| {});
        assert!(!scanner.at_boundary());
    }

    fn ping() -> Frame {
        Frame {
            kind: PING,
            flags: 0,
            stream: 0,
        }
    }

    fn open(p: &mut PingPolicy, stream: u32, now: Instant) {
        let headers = Frame {
            kind: HEADERS,
            flags: 0x4,
            stream,
        };
        assert!(p.client_sent(headers, now));
    }

    #[test]
    fn the_third_early_ping_past_two_strikes_closes_the_connection() {
        let t = Instant::now();
        let mut p = PingPolicy::new(Duration::from_secs(5));
        open(&mut p, 1, t);
        assert!(p.client_sent(ping(), t));
        assert!(p.client_sent(ping(), t + Duration::from_secs(1)));
        assert!(p.client_sent(ping(), t + Duration::from_secs(2)));
        assert!(!p.client_sent(ping(), t + Duration::from_secs(3)));
        let g = p.goaway();
        assert_eq!(&g[3..5], &[GOAWAY, 0]);
        assert_eq!(&g[9..13], &1u32.to_be_bytes());
        assert_eq!(&g[13..17], &ENHANCE_YOUR_CALM.to_be_bytes());
        assert_eq!(&g[17..], TOO_MANY_PINGS);
        assert_eq!(
            g.len(),
            HEADER_BYTES + u32::from_be_bytes([0, g[0], g[1], g[2]]) as usize
        );
    }

    #[test]
    fn pings_the_minimum_time_apart_and_acks_are_never_strikes() {
        let t = Instant::now();
        let mut p = PingPolicy::new(Duration::from_secs(5));
        open(&mut p, 1, t);
        for i in 0..10 {
            assert!(p.client_sent(ping(), t + Duration::from_secs(5 * i)));
        }
        let ack = Frame {
            kind: PING,
            flags: FLAG_ACK,
            stream: 0,
        };
        for _ in 0..10 {
            assert!(p.client_sent(ack, t + Duration::from_secs(50)));
        }
    }

    #[test]
    fn server_data_clears_the_strikes_for_bandwidth_pings() {
        let t = Instant::now();
        let mut p = PingPolicy::new(Duration::from_secs(5));
        open(&mut p, 1, t);
        let data = Frame {
            kind: DATA,
            flags: 0,
            stream: 1,
        };
        for i in 0..20 {
            p.server_sent(data);
            assert!(p.client_sent(ping(), t + Duration::from_millis(i)));
        }
    }

    #[test]
    fn without_calls_open_pings_must_be_hours_apart() {
        let t = Instant::now();
        let mut p = PingPolicy::new(Duration::from_secs(5));
        open(&mut p, 1, t);
        // The server ends the call: none open.
        p.server_sent(Frame {
            kind: HEADERS,
            flags: FLAG_END_STREAM | 0x4,
            stream: 1,
        });
        assert!(p.client_sent(ping(), t)); // right after the headers: cleared
        assert!(p.client_sent(ping(), t + Duration::from_secs(60)));
        assert!(p.client_sent(ping(), t + Duration::from_secs(120)));
        assert!(!p.client_sent(ping(), t + Duration::from_secs(180)));
    }
}
