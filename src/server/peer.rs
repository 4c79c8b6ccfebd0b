//! The peer transport: raft messages between members over TCP, on the raft role's executor.
//!
//! Each member dials one connection to every peer and sends its messages for that peer on
//! it; it receives the peers' messages on the connections they dial to its
//! `--listen-peer-urls`. A connection opens with a hello naming the cluster and both
//! members; a peer of another cluster (started with another `--initial-cluster` or
//! `--initial-cluster-token`) is refused with the reason, and both sides log it.
//!
//! Wire format, little-endian:
//!
//! ```text
//! hello  (dialer → listener): magic u64 | version u32 | cluster u64 | from u64 | to u64
//! answer (listener → dialer): status u8 (0 accepted) | reason len u16 | reason
//! frame  (dialer → listener): bytes u32 | crc32c u32 | messages
//! messages: count u32, then per message: len u32 | a raft Message in protobuf
//! ```
//!
//! Many messages go in one frame (one write). Each peer has a bounded queue: when it is
//! full (the peer is slow or gone) messages are dropped, and raft sends again what still
//! matters. A lost connection is dialed again with a backoff; a dialed connection is
//! watched while nothing is sent on it (the listener never writes after its answer), so
//! that a peer that stopped or restarted is dialed again before the next message.

use super::cluster::{listen_addr, PeerInfo};
use super::{wait_until, Input, POLL_IDLE};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use protobuf::Message as _;
use raft::eraftpb::Message;
use std::cell::Cell;
use std::os::unix::io::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const MAGIC: u64 = u64::from_le_bytes(*b"cairnpr\0");
const VERSION: u32 = 1;
const HELLO_BYTES: usize = 36;
/// Messages waiting to be sent to one peer, at most.
pub const QUEUE_MESSAGES_MAX: usize = 4096;
/// Bytes of messages waiting to be sent to one peer, at most.
pub const QUEUE_BYTES_MAX: usize = 64 << 20;
/// A frame, at most: a few appends of raft's largest size.
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// Messages written in one frame, at most.
const FRAME_MESSAGES_MAX: usize = 512;
const DIAL_BACKOFF_MIN: Duration = Duration::from_millis(50);
const DIAL_BACKOFF_MAX: Duration = Duration::from_secs(1);
const DIAL_TIMEOUT: Duration = Duration::from_secs(1);

/// The member's side of the transport, held by the raft role.
pub(crate) struct Peers {
    queues: Vec<(u64, PeerQueue)>,
}

struct PeerQueue {
    tx: flume::Sender<(Message, usize)>,
    bytes: Rc<Cell<usize>>,
    dropped: Rc<Cell<u64>>,
}

/// Who this member is, for the hellos.
#[derive(Clone, Copy)]
pub(crate) struct Me {
    pub cluster_id: u64,
    pub member_id: u64,
}

impl Peers {
    /// Starts a dialer for every other member and an acceptor on every listener.
    pub fn start(
        me: Me,
        members: &[PeerInfo],
        listeners: Vec<std::net::TcpListener>,
        inputs: flume::Sender<Input>,
        stop: Arc<AtomicBool>,
    ) -> Peers {
        for l in listeners {
            glommio::spawn_local(accept(l, me, inputs.clone(), stop.clone())).detach();
        }
        let mut queues = Vec::new();
        for m in members.iter().filter(|m| m.id != me.member_id) {
            let (tx, rx) = flume::bounded(QUEUE_MESSAGES_MAX);
            let bytes = Rc::new(Cell::new(0));
            let dropped = Rc::new(Cell::new(0));
            let addrs: Vec<String> = m.peer_urls.iter().map(|u| listen_addr(u)).collect();
            glommio::spawn_local(dial(me, m.id, addrs, rx, bytes.clone(), stop.clone())).detach();
            queues.push((m.id, PeerQueue { tx, bytes, dropped }));
        }
        Peers { queues }
    }

    /// Queues messages for their peers; drops what a full queue cannot take.
    pub fn send(&self, msgs: Vec<Message>) {
        for m in msgs {
            let Some((_, q)) = self.queues.iter().find(|(id, _)| *id == m.to) else {
                tracing::debug!(to = %format!("{:x}", m.to), "message for an unknown member dropped");
                continue;
            };
            let size = m.compute_size() as usize;
            if q.bytes.get() + size > QUEUE_BYTES_MAX || q.tx.try_send((m, size)).is_err() {
                q.dropped.set(q.dropped.get() + 1);
                continue;
            }
            q.bytes.set(q.bytes.get() + size);
        }
    }
}

/// Dials `to` and sends it what its queue holds, until the member stops.
async fn dial(
    me: Me,
    to: u64,
    addrs: Vec<String>,
    rx: flume::Receiver<(Message, usize)>,
    bytes: Rc<Cell<usize>>,
    stop: Arc<AtomicBool>,
) {
    let mut backoff = DIAL_BACKOFF_MIN;
    let mut logged = None::<String>;
    let mut at = 0;
    while !stop.load(Ordering::Relaxed) {
        let addr = &addrs[at % addrs.len().max(1)];
        at += 1;
        match connect(me, to, addr).await {
            Ok(stream) => {
                if logged.take().is_some() {
                    tracing::info!(peer = %format!("{to:x}"), addr, "peer connected");
                }
                backoff = DIAL_BACKOFF_MIN;
                if let Err(e) = pump(stream, &rx, &bytes, &stop).await {
                    tracing::debug!(peer = %format!("{to:x}"), error = %e, "peer connection lost");
                }
            }
            Err(e) => {
                // Said once per kind of failure, not on every retry.
                let text = e.to_string();
                if logged.as_deref() != Some(text.as_str()) {
                    if e.kind() == std::io::ErrorKind::PermissionDenied {
                        tracing::error!(peer = %format!("{to:x}"), addr, "{text}");
                    } else {
                        tracing::debug!(peer = %format!("{to:x}"), addr, error = %text, "cannot reach peer");
                    }
                    logged = Some(text);
                }
                // What waited for a peer that cannot be reached is dropped: raft resends.
                for (_, size) in rx.try_iter() {
                    bytes.set(bytes.get().saturating_sub(size));
                }
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(DIAL_BACKOFF_MAX);
            }
        }
    }
}

/// Opens a connection and says hello; the peer's refusal comes back as the error.
async fn connect(me: Me, to: u64, addr: &str) -> std::io::Result<TcpStream> {
    let connecting = async {
        TcpStream::connect(addr)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
    };
    let stream = futures_lite::future::or(connecting, async {
        glommio::timer::sleep(DIAL_TIMEOUT).await;
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        ))
    })
    .await?;
    let _ = stream.set_nodelay(true);
    let mut stream = stream;
    let mut hello = Vec::with_capacity(HELLO_BYTES);
    hello.extend_from_slice(&MAGIC.to_le_bytes());
    hello.extend_from_slice(&VERSION.to_le_bytes());
    hello.extend_from_slice(&me.cluster_id.to_le_bytes());
    hello.extend_from_slice(&me.member_id.to_le_bytes());
    hello.extend_from_slice(&to.to_le_bytes());
    stream.write_all(&hello).await?;
    let mut status = [0u8; 3];
    stream.read_exact(&mut status).await?;
    if status[0] == 0 {
        return Ok(stream);
    }
    let len = u16::from_le_bytes([status[1], status[2]]) as usize;
    let mut reason = vec![0u8; len];
    stream.read_exact(&mut reason).await?;
    Err(std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        format!(
            "refusing to join: member {to:x} at {addr} refused this member: {}",
            String::from_utf8_lossy(&reason)
        ),
    ))
}

/// Writes queued messages in frames until the connection fails or the member stops.
async fn pump(
    mut stream: TcpStream,
    rx: &flume::Receiver<(Message, usize)>,
    bytes: &Cell<usize>,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let mut frame = Vec::new();
    loop {
        let first = futures_lite::future::or(async { Ok(rx.recv_async().await.ok()) }, async {
            futures_lite::future::or(
                async {
                    wait_until(POLL_IDLE, || stop.load(Ordering::Relaxed)).await;
                    Ok(None)
                },
                async { Err(closed(&stream).await) },
            )
            .await
        })
        .await?;
        let Some(first) = first else {
            return Ok(());
        };
        frame.clear();
        frame.extend_from_slice(&[0u8; 12]);
        let mut count = 0u32;
        for (m, size) in std::iter::once(first).chain(rx.try_iter().take(FRAME_MESSAGES_MAX - 1)) {
            bytes.set(bytes.get().saturating_sub(size));
            let at = frame.len();
            frame.extend_from_slice(&[0u8; 4]);
            m.write_to_vec(&mut frame).map_err(std::io::Error::other)?;
            let len = (frame.len() - at - 4) as u32;
            frame[at..at + 4].copy_from_slice(&len.to_le_bytes());
            count += 1;
            if frame.len() >= FRAME_BYTES_MAX / 2 {
                break;
            }
        }
        frame[8..12].copy_from_slice(&count.to_le_bytes());
        let body = (frame.len() - 8) as u32;
        let crc = crc32c::crc32c(&frame[8..]);
        frame[0..4].copy_from_slice(&body.to_le_bytes());
        frame[4..8].copy_from_slice(&crc.to_le_bytes());
        stream.write_all(&frame).await?;
    }
}

/// Waits until the connection cannot be sent on. The listener sends nothing after its
/// answer, so anything to read (its end, an error, or stray bytes) means the peer closed
/// it or broke the protocol. Watched while the queue is empty: a link that is quiet for
/// long (between two followers, until an election) would otherwise learn of its peer's
/// restart only by writing into the dead connection, and the first two frames written
/// after it (one taken by the kernel, one failing) would be lost.
async fn closed(stream: &TcpStream) -> std::io::Error {
    let mut byte = [0u8; 1];
    match stream.peek(&mut byte).await {
        Ok(0) => std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "the peer closed the connection",
        ),
        Ok(_) => invalid("the peer sent bytes after its answer".into()),
        Err(e) => e.into(),
    }
}

/// Accepts peers' connections on a `--listen-peer-urls` listener until the member stops.
async fn accept(
    listener: std::net::TcpListener,
    me: Me,
    inputs: flume::Sender<Input>,
    stop: Arc<AtomicBool>,
) {
    // SAFETY: the descriptor is a bound, listening TCP socket whose ownership moves here.
    let listener = unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) };
    loop {
        let stopped = async {
            wait_until(POLL_IDLE, || stop.load(Ordering::Relaxed)).await;
            None
        };
        let accepted = async { Some(listener.accept().await) };
        match futures_lite::future::or(accepted, stopped).await {
            None => return,
            Some(Ok(stream)) => {
                glommio::spawn_local(receive(stream, me, inputs.clone(), stop.clone())).detach();
            }
            Some(Err(_)) => glommio::timer::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Reads one peer's frames and hands their messages to the raft role.
async fn receive(
    mut stream: TcpStream,
    me: Me,
    inputs: flume::Sender<Input>,
    stop: Arc<AtomicBool>,
) {
    let peer = stream.peer_addr().ok();
    let read = async {
        let from = hello(&mut stream, me).await?;
        let mut frame = Vec::new();
        loop {
            let mut head = [0u8; 8];
            stream.read_exact(&mut head).await?;
            let body = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
            let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
            if !(4..=FRAME_BYTES_MAX).contains(&body) {
                return Err(invalid(format!("a frame of {body} bytes")));
            }
            frame.resize(body, 0);
            stream.read_exact(&mut frame).await?;
            if crc32c::crc32c(&frame) != crc {
                return Err(invalid("frame checksum mismatch".into()));
            }
            let msgs = decode_messages(&frame, from)?;
            if inputs.send_async(Input::Peer(msgs)).await.is_err() {
                return Ok(());
            }
        }
    };
    let stopped = async {
        wait_until(POLL_IDLE, || stop.load(Ordering::Relaxed)).await;
        Ok(())
    };
    let result: std::io::Result<()> = futures_lite::future::or(read, stopped).await;
    if let Err(e) = result {
        if e.kind() != std::io::ErrorKind::UnexpectedEof {
            tracing::debug!(?peer, error = %e, "peer connection closed");
        }
    }
}

/// Reads a dialer's hello and answers it: the peer's member id, or why it was refused.
async fn hello(stream: &mut TcpStream, me: Me) -> std::io::Result<u64> {
    let mut h = [0u8; HELLO_BYTES];
    stream.read_exact(&mut h).await?;
    let word = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().unwrap_or([0; 8]));
    let version = u32::from_le_bytes(h[8..12].try_into().unwrap_or([0; 4]));
    let (cluster, from, to) = (word(12), word(20), word(28));
    let refusal = if word(0) != MAGIC {
        Some("not a cairn peer connection".to_string())
    } else if version != VERSION {
        Some(format!(
            "peer protocol version {version}, this member speaks {VERSION}"
        ))
    } else if cluster != me.cluster_id {
        Some(format!(
            "member {from:x} belongs to cluster {cluster:x}, this member {:x} to cluster {:x} \
             (was it started with another --initial-cluster or --initial-cluster-token?)",
            me.member_id, me.cluster_id
        ))
    } else if to != me.member_id {
        Some(format!(
            "member {from:x} dialed member {to:x}, but this is member {:x}",
            me.member_id
        ))
    } else {
        None
    };
    match refusal {
        None => {
            stream.write_all(&[0, 0, 0]).await?;
            Ok(from)
        }
        Some(reason) => {
            tracing::error!(peer = %format!("{from:x}"), "refused a peer: {reason}");
            let b = &reason.as_bytes()[..reason.len().min(u16::MAX as usize)];
            let mut answer = vec![1u8];
            answer.extend_from_slice(&(b.len() as u16).to_le_bytes());
            answer.extend_from_slice(b);
            stream.write_all(&answer).await?;
            Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                reason,
            ))
        }
    }
}

/// The messages in a frame's body; each must come from the member that said hello.
fn decode_messages(frame: &[u8], from: u64) -> std::io::Result<Vec<Message>> {
    let count = u32::from_le_bytes(
        frame[0..4]
            .try_into()
            .map_err(|_| invalid("short frame".into()))?,
    );
    let mut msgs = Vec::with_capacity((count as usize).min(FRAME_MESSAGES_MAX));
    let mut at = 4;
    for _ in 0..count {
        let len = frame
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| invalid("frame ends inside a message length".into()))?;
        let body = frame
            .get(at + 4..at + 4 + len)
            .ok_or_else(|| invalid("frame ends inside a message".into()))?;
        let m = Message::parse_from_bytes(body).map_err(|e| invalid(e.to_string()))?;
        if m.from != from {
            return Err(invalid(format!(
                "a message from {:x} on {from:x}'s connection",
                m.from
            )));
        }
        msgs.push(m);
        at += 4 + len;
    }
    if at != frame.len() {
        return Err(invalid("bytes after the last message".into()));
    }
    Ok(msgs)
}

fn invalid(reason: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::mpsc;

    /// What the fake peer saw: a connection accepted, or a message's index on it.
    #[derive(Debug, PartialEq)]
    enum Seen {
        Accepted(usize),
        Message(usize, u64),
    }

    /// A peer on a plain listener that answers hellos and reports what comes: it reads
    /// one frame on its first connection and closes it (a member that stopped, as far as
    /// the dialer can tell), then one frame on its second.
    fn fake_peer(listener: std::net::TcpListener, seen: mpsc::Sender<Seen>) -> std::net::TcpStream {
        let mut kept = None;
        for n in 0..2 {
            let (mut s, _) = listener.accept().unwrap();
            seen.send(Seen::Accepted(n)).unwrap();
            let mut hello = [0u8; HELLO_BYTES];
            s.read_exact(&mut hello).unwrap();
            s.write_all(&[0, 0, 0]).unwrap();
            let mut head = [0u8; 8];
            s.read_exact(&mut head).unwrap();
            let mut frame = vec![0u8; u32::from_le_bytes(head[..4].try_into().unwrap()) as usize];
            s.read_exact(&mut frame).unwrap();
            for m in decode_messages(&frame, 1).unwrap() {
                seen.send(Seen::Message(n, m.index)).unwrap();
            }
            if n == 1 {
                kept = Some(s);
            }
        }
        kept.unwrap()
    }

    /// The next thing the fake peer saw, within 5 s.
    async fn next(seen: &mpsc::Receiver<Seen>) -> Option<Seen> {
        for _ in 0..500 {
            if let Ok(s) = seen.try_recv() {
                return Some(s);
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    #[test]
    fn a_connection_the_peer_closed_while_idle_is_dialed_again_before_the_next_message() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, seen) = mpsc::channel();
        let peer = std::thread::spawn(move || fake_peer(listener, tx));
        glommio::LocalExecutor::default().run(async move {
            let stop = Arc::new(AtomicBool::new(false));
            let (inputs, _inputs) = flume::unbounded();
            let me = Me {
                cluster_id: 7,
                member_id: 1,
            };
            let members = [
                PeerInfo {
                    id: 1,
                    name: "a".into(),
                    peer_urls: vec![],
                },
                PeerInfo {
                    id: 2,
                    name: "b".into(),
                    peer_urls: vec![url],
                },
            ];
            let peers = Peers::start(me, &members, Vec::new(), inputs, stop.clone());
            let message = |index| Message {
                from: 1,
                to: 2,
                index,
                ..Default::default()
            };
            peers.send(vec![message(1)]);
            assert_eq!(next(&seen).await, Some(Seen::Accepted(0)));
            assert_eq!(next(&seen).await, Some(Seen::Message(0, 1)));
            // The peer closed that connection while nothing was to be sent: the member
            // dials again at once, rather than write its next message (a vote request
            // after a quiet spell, say) into the dead connection, where it would be lost.
            assert_eq!(next(&seen).await, Some(Seen::Accepted(1)));
            peers.send(vec![message(2)]);
            assert_eq!(next(&seen).await, Some(Seen::Message(1, 2)));
            stop.store(true, Ordering::Relaxed);
        });
        drop(peer.join().unwrap());
    }
}
