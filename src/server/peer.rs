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
//! answer (listener → dialer): status u8 (0 accepted, 1 refused, 2 refused: the dialer
//!                             was removed from the cluster) | reason len u16 | reason
//! frame  (dialer → listener): bytes u32 | crc32c u32 | messages
//! messages: count u32, then per message: len u32 | a raft Message in protobuf
//! ```
//!
//! Many messages go in one frame (one write). Each peer has a bounded queue: when it is
//! full (the peer is slow or gone) messages are dropped, and raft sends again what still
//! matters. A lost connection is dialed again with a backoff; a dialed connection is
//! watched while nothing is sent on it (the listener never writes after its answer), so
//! that a peer that stopped or restarted is dialed again before the next message.
//!
//! A member joining a running cluster (`--initial-cluster-state existing`) first asks one
//! of the members it was given for the membership, under a third magic (cluster, from and
//! to are 0): the answer is followed by `len u32 | cluster u64 | membership` (the layout
//! of a start marker, `crate::raftlog::encode_marker`, at index 0). It finds itself in it
//! by its peer URLs, as etcd does.
//!
//! The members dialed follow the membership: a member added is dialed from the round that
//! applies its addition, one removed is no longer; a member the cluster removed is refused
//! with status 2, on which it stops.
//!
//! A snapshot (raft's `MsgSnapshot`) goes on a connection of its own, opened with the
//! same hello under another magic, beside the tree file it stands for:
//!
//! ```text
//! offer  (dialer):   index u64 | term u64 | bytes u64 | source u64 | msg len u32 | msg
//! have   (listener): bytes u64 it holds of `source` (an interrupted transfer)
//!                    | crc32c of their first 64 KiB u32 | crc32c of their last 1 MiB u32
//! start  (dialer):   offset u64: the bytes held if the checksums match its file, else 0
//! chunks (dialer):   len u32 | crc32c u32 | bytes ..., then len 0
//! done   (listener): status u8 (0 installed-ready) | reason len u16 | reason
//! ```
//!
//! Each member also measures the round trip to every peer (for
//! `etcd_network_peer_round_trip_time_seconds`, as etcd's prober does) on a third connection
//! of its own to each, opened with the same hello under a fourth magic: every
//! [`PROBE_INTERVAL`] the dialer writes a sequence number (u64) and the listener writes it
//! back at once; the time from the write to the echo is the round trip.
//!
//! `source` names the leader's tree file: snapshots of one source are prefixes of one
//! append-only file, so a transfer cut short resumes where it stopped. The follower keeps
//! the bytes in `snap/<source>.part`, checks every chunk, then the whole file (its newest
//! commit must be the snapshot's index), makes it durable as `snap/<index>.db`, and only
//! then hands the raft message to its raft role, which has the apply role install it.

use super::cluster::{listen_addr, PeerInfo};
use super::{wait_until, Input, Shared, POLL_IDLE};
use crate::raftlog::{Membership, RaftLog};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use std::cell::{Cell, RefCell};
use std::os::unix::io::{FromRawFd, IntoRawFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const MAGIC: u64 = u64::from_le_bytes(*b"cairnpr\0");
const SNAPSHOT_MAGIC: u64 = u64::from_le_bytes(*b"cairnsn\0");
const MEMBERS_MAGIC: u64 = u64::from_le_bytes(*b"cairnmq\0");
const PROBE_MAGIC: u64 = u64::from_le_bytes(*b"cairnpg\0");
/// How often a member measures the round trip to each peer.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// A probe not echoed within this ends its connection (a new one is dialed).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// A probe connection with no probe for this long is closed by the listener.
const PROBE_IDLE_MAX: Duration = Duration::from_secs(30);
/// A membership answer, at most.
const MEMBERS_BYTES_MAX: usize = 16 << 20;
/// Answer statuses.
const ACCEPTED: u8 = 0;
const REFUSED: u8 = 1;
const REMOVED: u8 = 2;
/// Bytes of the tree file in one snapshot chunk.
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
const VERSION: u32 = 1;
const HELLO_BYTES: usize = 36;
/// Messages waiting to be sent to one peer, at most.
pub const QUEUE_MESSAGES_MAX: usize = 4096;
/// Bytes of messages waiting to be sent to one peer, at most.
pub const QUEUE_BYTES_MAX: usize = 64 << 20;
/// A frame, at most: a few appends of raft's largest size.
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// Peer connections (messages and snapshots) one listener serves at once; more are closed
/// on arrival.
const PEER_CONNECTIONS_MAX: usize = 256;
/// Messages written in one frame, at most.
const FRAME_MESSAGES_MAX: usize = 512;
const DIAL_BACKOFF_MIN: Duration = Duration::from_millis(50);
const DIAL_BACKOFF_MAX: Duration = Duration::from_secs(1);
const DIAL_TIMEOUT: Duration = Duration::from_secs(1);
/// A connection that says no hello within this is closed.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The member's side of the transport, held by the raft role.
pub(crate) struct Peers {
    me: Me,
    queues: Vec<(u64, PeerQueue)>,
    shared: Arc<Shared>,
    /// The log, for the membership a snapshot carries.
    log: RaftLog,
    /// Peers a snapshot is being sent to (one at a time each).
    sending: Rc<RefCell<Vec<u64>>>,
}

struct PeerQueue {
    tx: flume::Sender<(Message, usize)>,
    bytes: Rc<Cell<usize>>,
    dropped: Rc<Cell<u64>>,
    /// Where the peer listens (`host:port`), as the membership says now.
    addrs: Rc<RefCell<Vec<String>>>,
    /// Set when the peer leaves the membership: its dialer ends.
    gone: Rc<Cell<bool>>,
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
        log: RaftLog,
        shared: Arc<Shared>,
    ) -> Peers {
        for l in listeners {
            glommio::spawn_local(accept(l, me, shared.clone())).detach();
        }
        let mut peers = Peers {
            me,
            queues: Vec::new(),
            shared,
            log,
            sending: Rc::new(RefCell::new(Vec::new())),
        };
        peers.set_members(members);
        peers
    }

    /// Dials the members given (this one aside) and no others: new ones get a dialer, those
    /// gone lose theirs, and changed addresses are used from the next dial on.
    pub fn set_members(&mut self, members: &[PeerInfo]) {
        let me = self.me.member_id;
        self.queues.retain(|(id, q)| {
            let stays = members.iter().any(|m| m.id == *id && m.id != me);
            if !stays {
                q.gone.set(true);
            }
            stays
        });
        for m in members.iter().filter(|m| m.id != me) {
            let addrs: Vec<String> = m.peer_urls.iter().map(|u| listen_addr(u)).collect();
            if let Some((_, q)) = self.queues.iter().find(|(id, _)| *id == m.id) {
                *q.addrs.borrow_mut() = addrs;
                continue;
            }
            let (tx, rx) = flume::bounded(QUEUE_MESSAGES_MAX);
            let q = PeerQueue {
                tx,
                bytes: Rc::new(Cell::new(0)),
                dropped: Rc::new(Cell::new(0)),
                addrs: Rc::new(RefCell::new(addrs)),
                gone: Rc::new(Cell::new(false)),
            };
            let link = Link {
                me: self.me,
                to: m.id,
                addrs: q.addrs.clone(),
                gone: q.gone.clone(),
                stop: self.shared.stop.clone(),
                inputs: self.shared.inputs.clone(),
            };
            glommio::spawn_local(dial(link, rx, q.bytes.clone())).detach();
            let probe_link = Link {
                me: self.me,
                to: m.id,
                addrs: q.addrs.clone(),
                gone: q.gone.clone(),
                stop: self.shared.stop.clone(),
                inputs: self.shared.inputs.clone(),
            };
            glommio::spawn_local(probe(probe_link, self.shared.clone())).detach();
            self.queues.push((m.id, q));
        }
    }

    /// Queues messages for their peers; drops what a full queue cannot take. Snapshots go
    /// on connections of their own, with the tree file.
    pub fn send(&self, msgs: Vec<Message>) {
        for m in msgs {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                self.send_snapshot(m);
                continue;
            }
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

impl Peers {
    /// Streams the newest durable checkpoint of the tree to `m.to`, with `m`; reports the
    /// outcome to the raft role (which reports it to raft).
    fn send_snapshot(&self, mut m: Message) {
        let to = m.to;
        if self.sending.borrow().contains(&to) {
            return; // raft waits for the transfer under way
        }
        let Some(snapshot) = self.shared.snapshot.lock().clone() else {
            let _ = self.shared.inputs.try_send(Input::SnapshotSent(to, false));
            return;
        };
        // The newest checkpoint may be newer than the one raft chose: send what the file
        // holds, under its own index and term.
        let (index, term) = (snapshot.meta().applied_index, snapshot.meta().applied_term);
        if !self
            .log
            .describe_snapshot(m.mut_snapshot(), index, term, to)
        {
            // The newest checkpoint predates the follower's addition (raft would refuse a
            // snapshot whose configuration lacks it), or the log's start (its membership is
            // no longer known): a newer one is asked for, and raft asks again.
            tracing::debug!(peer = %format!("{to:x}"), index, "the newest checkpoint cannot be sent to this member; asking for a newer one");
            let _ = self.shared.inputs.try_send(Input::SnapshotSent(to, false));
            let _ = self.shared.inputs.try_send(Input::CheckpointWanted);
            return;
        }
        let addrs = self
            .queues
            .iter()
            .find(|(id, _)| *id == to)
            .map(|(_, q)| q.addrs.borrow().clone())
            .unwrap_or_default();
        self.sending.borrow_mut().push(to);
        let (me, shared, sending) = (self.me, self.shared.clone(), self.sending.clone());
        glommio::spawn_local(async move {
            let started = std::time::Instant::now();
            let mut result = Err(std::io::Error::other("no address"));
            for addr in &addrs {
                let limit = snapshot_timeout(snapshot.len());
                result = futures_lite::future::or(
                    stream_snapshot(me, to, addr, &snapshot, &m),
                    async {
                        glommio::timer::sleep(limit).await;
                        Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("the transfer took longer than {limit:?}"),
                        ))
                    },
                )
                .await;
                if result.is_ok() {
                    break;
                }
            }
            match &result {
                Ok(sent) => tracing::info!(
                    peer = %format!("{to:x}"),
                    index = snapshot.meta().applied_index,
                    bytes = snapshot.len(),
                    sent,
                    ms = started.elapsed().as_millis() as u64,
                    "sent a snapshot"
                ),
                Err(e) => tracing::warn!(peer = %format!("{to:x}"), error = %e, "sending a snapshot failed"),
            }
            sending.borrow_mut().retain(|&p| p != to);
            let _ = shared
                .inputs
                .send_async(Input::SnapshotSent(to, result.is_ok()))
                .await;
        })
        .detach();
    }
}

/// Sends one snapshot on a connection of its own; returns the bytes sent (less than the
/// file when the follower held a prefix of it).
async fn stream_snapshot(
    me: Me,
    to: u64,
    addr: &str,
    snapshot: &crate::btree::Snapshot,
    m: &Message,
) -> std::io::Result<u64> {
    let mut stream = connect_kind(me, to, addr, SNAPSHOT_MAGIC).await?;
    let msg = m.write_to_bytes().map_err(std::io::Error::other)?;
    let mut offer = Vec::with_capacity(36 + msg.len());
    offer.extend_from_slice(&snapshot.meta().applied_index.to_le_bytes());
    offer.extend_from_slice(&snapshot.meta().applied_term.to_le_bytes());
    offer.extend_from_slice(&snapshot.len().to_le_bytes());
    offer.extend_from_slice(&(snapshot.file_id() ^ me.member_id).to_le_bytes());
    offer.extend_from_slice(&(msg.len() as u32).to_le_bytes());
    offer.extend_from_slice(&msg);
    stream.write_all(&offer).await?;
    let mut have = [0u8; 16];
    stream.read_exact(&mut have).await?;
    let held = u64::from_le_bytes(have[..8].try_into().unwrap_or([0; 8]));
    let crcs = (
        u32::from_le_bytes(have[8..12].try_into().unwrap_or([0; 4])),
        u32::from_le_bytes(have[12..16].try_into().unwrap_or([0; 4])),
    );
    // Resume only if the bytes held are this file's (an inode number can be reused by a
    // later file, and a follower's unsynced bytes can be lost).
    let mut at = 0;
    if held > 0 && held <= snapshot.len() {
        let ours = prefix_checks(held, |off, buf| {
            snapshot.read_at(off, buf).map_err(std::io::Error::other)
        })?;
        if ours == crcs {
            at = held;
        }
    }
    stream.write_all(&at.to_le_bytes()).await?;
    let from = at;
    let mut chunk = vec![0u8; SNAPSHOT_CHUNK_BYTES + 8];
    while at < snapshot.len() {
        let n = snapshot
            .read_at(at, &mut chunk[8..])
            .map_err(std::io::Error::other)?;
        if n == 0 {
            return Err(std::io::Error::other("the snapshot file ended early"));
        }
        let crc = crc32c::crc32c(&chunk[8..8 + n]);
        chunk[0..4].copy_from_slice(&(n as u32).to_le_bytes());
        chunk[4..8].copy_from_slice(&crc.to_le_bytes());
        stream.write_all(&chunk[..8 + n]).await?;
        at += n as u64;
    }
    stream.write_all(&[0u8; 8]).await?;
    match read_answer(&mut stream).await? {
        None => Ok(at - from),
        Some((_, reason)) => Err(std::io::Error::other(format!(
            "the follower refused the snapshot: {reason}"
        ))),
    }
}

/// Writes an answer: accepted (`None`), or refused and why.
async fn write_answer(stream: &mut TcpStream, refusal: Option<&str>) -> std::io::Result<()> {
    write_status(
        stream,
        if refusal.is_some() { REFUSED } else { ACCEPTED },
        refusal,
    )
    .await
}

async fn write_status(
    stream: &mut TcpStream,
    status: u8,
    refusal: Option<&str>,
) -> std::io::Result<()> {
    let Some(reason) = refusal else {
        return stream.write_all(&[status, 0, 0]).await;
    };
    let b = &reason.as_bytes()[..reason.len().min(u16::MAX as usize)];
    let mut answer = vec![status];
    answer.extend_from_slice(&(b.len() as u16).to_le_bytes());
    answer.extend_from_slice(b);
    stream.write_all(&answer).await
}

/// Reads an answer: `None` when accepted, else the status and the reason given.
async fn read_answer(stream: &mut TcpStream) -> std::io::Result<Option<(u8, String)>> {
    let mut status = [0u8; 3];
    stream.read_exact(&mut status).await?;
    if status[0] == ACCEPTED {
        return Ok(None);
    }
    let len = u16::from_le_bytes([status[1], status[2]]) as usize;
    let mut reason = vec![0u8; len];
    stream.read_exact(&mut reason).await?;
    Ok(Some((
        status[0],
        String::from_utf8_lossy(&reason).into_owned(),
    )))
}

/// CRC32C of the first 64 KiB and of the last 1 MiB of a file's first `len` bytes: what a
/// follower and the leader compare before a transfer resumes.
fn prefix_checks(
    len: u64,
    mut read_at: impl FnMut(u64, &mut [u8]) -> std::io::Result<usize>,
) -> std::io::Result<(u32, u32)> {
    let mut crc = |from: u64, n: u64| -> std::io::Result<u32> {
        let mut buf = vec![0u8; n as usize];
        let got = read_at(from, &mut buf)?;
        if got != buf.len() {
            return Err(std::io::Error::other("the file ended early"));
        }
        Ok(crc32c::crc32c(&buf))
    };
    let head = crc(0, len.min(64 << 10))?;
    let tail_len = len.min(SNAPSHOT_CHUNK_BYTES as u64);
    let tail = crc(len - tail_len, tail_len)?;
    Ok((head, tail))
}

/// How long one snapshot transfer may take: a base, plus the file at 8 MiB/s.
fn snapshot_timeout(bytes: u64) -> Duration {
    Duration::from_secs(30) + Duration::from_secs(bytes / (8 << 20))
}

/// Where a received snapshot's tree file waits to be installed.
pub fn snapshot_file(data_dir: &Path, index: u64) -> PathBuf {
    data_dir.join("snap").join(format!("{index:016x}.db"))
}

/// Receives one snapshot: the tree file, checked, made durable, then the raft message.
async fn receive_snapshot(
    stream: &mut TcpStream,
    from: u64,
    shared: &Shared,
) -> std::io::Result<()> {
    let mut head = [0u8; 36];
    stream.read_exact(&mut head).await?;
    let word = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().unwrap_or([0; 8]));
    let (index, term, total, source) = (word(0), word(8), word(16), word(24));
    let msg_len = u32::from_le_bytes(head[32..36].try_into().unwrap_or([0; 4])) as usize;
    if msg_len > FRAME_BYTES_MAX {
        return Err(invalid(format!("a snapshot message of {msg_len} bytes")));
    }
    let mut msg = vec![0u8; msg_len];
    stream.read_exact(&mut msg).await?;
    let msg = Message::parse_from_bytes(&msg).map_err(|e| invalid(e.to_string()))?;
    if msg.from != from || msg.get_msg_type() != MessageType::MsgSnapshot {
        return Err(invalid(
            "not a snapshot from the member that said hello".into(),
        ));
    }
    let meta = msg.get_snapshot().get_metadata();
    if (meta.index, meta.term) != (index, term) {
        return Err(invalid(format!(
            "the offer names ({index}, {term}), its raft message ({}, {})",
            meta.index, meta.term
        )));
    }
    let dir = shared.config.data_dir.join("snap");
    std::fs::create_dir_all(&dir)?;
    let part = dir.join(format!("{source:016x}.part"));
    // Only the newest source's bytes are worth keeping, and received files raft did not
    // take are of no more use.
    for e in std::fs::read_dir(&dir)?.flatten() {
        let p = e.path();
        let stale_part = p != part && p.extension().is_some_and(|x| x == "part");
        let stale_db = p.extension().is_some_and(|x| x == "db");
        if stale_part || stale_db {
            let _ = std::fs::remove_file(&p);
        }
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&part)?;
    let held = file.metadata()?.len();
    let (head, tail) = if held > 0 && held <= total {
        let reader = std::fs::File::open(&part)?;
        prefix_checks(held, |off, buf| {
            std::os::unix::fs::FileExt::read_exact_at(&reader, buf, off).map(|()| buf.len())
        })?
    } else {
        (0, 0)
    };
    let mut answer = held.min(total).to_le_bytes().to_vec();
    answer.extend_from_slice(&head.to_le_bytes());
    answer.extend_from_slice(&tail.to_le_bytes());
    stream.write_all(&answer).await?;
    // Where the leader starts: what was held, or 0.
    let mut start = [0u8; 8];
    stream.read_exact(&mut start).await?;
    let mut have = u64::from_le_bytes(start);
    if have > held {
        return Err(invalid(format!(
            "the leader resumes at {have}, past the {held} bytes held"
        )));
    }
    file.set_len(have)?;
    let mut buf = vec![0u8; SNAPSHOT_CHUNK_BYTES];
    loop {
        let mut h = [0u8; 8];
        stream.read_exact(&mut h).await?;
        let n = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if n == 0 {
            break;
        }
        if n > SNAPSHOT_CHUNK_BYTES || have + n as u64 > total {
            return Err(invalid(format!("a snapshot chunk of {n} bytes at {have}")));
        }
        stream.read_exact(&mut buf[..n]).await?;
        if crc32c::crc32c(&buf[..n]) != u32::from_le_bytes([h[4], h[5], h[6], h[7]]) {
            return Err(invalid(format!(
                "snapshot chunk checksum mismatch at byte {have}"
            )));
        }
        std::io::Write::write_all(&mut file, &buf[..n])?;
        have += n as u64;
    }
    let verdict = if have != total {
        Err(format!("the snapshot ended at byte {have} of {total}"))
    } else {
        file.sync_all()?;
        drop(file);
        check_snapshot_file(&part, index, term)
    };
    let verdict = verdict.and_then(|()| {
        let ready = snapshot_file(&shared.config.data_dir, index);
        super::rename_durably(&part, &ready).map_err(|e| format!("{}: {e}", ready.display()))
    });
    match verdict {
        Ok(()) => {
            write_answer(stream, None).await?;
            tracing::info!(peer = %format!("{from:x}"), index, bytes = total, "received a snapshot");
            shared
                .inputs
                .send_async(Input::Peer(vec![msg]))
                .await
                .map_err(|_| std::io::Error::other("the raft role stopped"))
        }
        Err(reason) => {
            let _ = std::fs::remove_file(&part);
            tracing::warn!(peer = %format!("{from:x}"), "refused a snapshot: {reason}");
            write_answer(stream, Some(&reason)).await?;
            Err(invalid(reason))
        }
    }
}

/// A received tree file must end with the commit the raft message names.
fn check_snapshot_file(path: &Path, index: u64, term: u64) -> Result<(), String> {
    let inspected = crate::btree::Db::inspect(path).map_err(|e| e.to_string())?;
    let c = &inspected.commit;
    if c.applied_index != index || c.applied_term != term {
        return Err(format!(
            "its newest commit holds ({}, {}), the message says ({index}, {term})",
            c.applied_index, c.applied_term
        ));
    }
    Ok(())
}

/// One peer's dialer: who to dial, where, and when to give up.
struct Link {
    me: Me,
    to: u64,
    addrs: Rc<RefCell<Vec<String>>>,
    /// The peer left the membership.
    gone: Rc<Cell<bool>>,
    stop: Arc<AtomicBool>,
    /// For telling the raft role the cluster removed this member.
    inputs: flume::Sender<Input>,
}

impl Link {
    fn ended(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.gone.get()
    }

    /// The address for the `attempt`th dial: each of the peer's in turn.
    fn addr(&self, attempt: usize) -> String {
        let addrs = self.addrs.borrow();
        match addrs.get(attempt % addrs.len().max(1)) {
            Some(a) => a.clone(),
            None => String::new(),
        }
    }
}

/// Measures the round trip to the link's peer every [`PROBE_INTERVAL`], on a connection of
/// its own, until the member stops or the peer leaves the membership.
async fn probe(link: Link, shared: Arc<Shared>) {
    let Some(rtt) = shared.metrics.peer_rtt(link.to) else {
        return;
    };
    let mut attempt = 0;
    let mut seq = 0u64;
    while !link.ended() {
        let addr = link.addr(attempt);
        attempt += 1;
        // Bounded: a peer that never answers the hello (stopped, or a network that drops
        // everything) would otherwise hold the probe past the peer's removal.
        let connecting = connect_kind(link.me, link.to, &addr, PROBE_MAGIC);
        match with_timeout(PROBE_TIMEOUT, connecting).await {
            Ok(mut stream) => {
                while !link.ended() {
                    seq = seq.wrapping_add(1);
                    let started = std::time::Instant::now();
                    match with_timeout(PROBE_TIMEOUT, ping(&mut stream, seq)).await {
                        Ok(()) => rtt.observe_duration(started.elapsed()),
                        Err(e) => {
                            tracing::debug!(peer = %format!("{:x}", link.to), error = %e, "peer probe failed");
                            break;
                        }
                    }
                    glommio::timer::sleep(PROBE_INTERVAL).await;
                }
            }
            Err(e) => {
                tracing::debug!(peer = %format!("{:x}", link.to), addr, error = %e, "cannot probe peer");
                glommio::timer::sleep(PROBE_INTERVAL).await;
            }
        }
    }
    shared.metrics.forget_peer(link.to);
}

/// One probe: `seq` written, and read back.
async fn ping(stream: &mut TcpStream, seq: u64) -> std::io::Result<()> {
    stream.write_all(&seq.to_le_bytes()).await?;
    let mut back = [0u8; 8];
    stream.read_exact(&mut back).await?;
    if u64::from_le_bytes(back) != seq {
        return Err(invalid("the probe came back changed".into()));
    }
    Ok(())
}

/// Writes back every probe read, until the dialer closes or sends none for
/// [`PROBE_IDLE_MAX`].
async fn echo(stream: &mut TcpStream) -> std::io::Result<()> {
    loop {
        let mut probe = [0u8; 8];
        with_timeout(PROBE_IDLE_MAX, stream.read_exact(&mut probe)).await?;
        stream.write_all(&probe).await?;
    }
}

/// `io`, or a TimedOut error once `limit` has passed.
async fn with_timeout<T>(
    limit: Duration,
    io: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    futures_lite::future::or(io, async {
        glommio::timer::sleep(limit).await;
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "timed out",
        ))
    })
    .await
}

/// Dials the peer and sends it what its queue holds, until the member stops or the peer
/// leaves the membership.
async fn dial(link: Link, rx: flume::Receiver<(Message, usize)>, bytes: Rc<Cell<usize>>) {
    let (me, to) = (link.me, link.to);
    let mut backoff = DIAL_BACKOFF_MIN;
    let mut logged = None::<String>;
    let mut at = 0;
    while !link.ended() {
        let addr = link.addr(at);
        at += 1;
        let addr = &addr;
        match connect(me, to, addr).await {
            Ok(stream) => {
                if logged.take().is_some() {
                    tracing::info!(peer = %format!("{to:x}"), addr, "peer connected");
                }
                backoff = DIAL_BACKOFF_MIN;
                if let Err(e) = pump(stream, &rx, &bytes, &link).await {
                    tracing::debug!(peer = %format!("{to:x}"), error = %e, "peer connection lost");
                }
            }
            Err(e) => {
                if e.kind() == std::io::ErrorKind::NotConnected {
                    // The cluster removed this member: it stops.
                    let _ = link.inputs.try_send(Input::Removed(e.to_string()));
                }
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

/// Opens a message connection and says hello; the peer's refusal comes back as the error.
async fn connect(me: Me, to: u64, addr: &str) -> std::io::Result<TcpStream> {
    connect_kind(me, to, addr, MAGIC).await
}

async fn connect_kind(me: Me, to: u64, addr: &str, magic: u64) -> std::io::Result<TcpStream> {
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
    hello.extend_from_slice(&magic.to_le_bytes());
    hello.extend_from_slice(&VERSION.to_le_bytes());
    hello.extend_from_slice(&me.cluster_id.to_le_bytes());
    hello.extend_from_slice(&me.member_id.to_le_bytes());
    hello.extend_from_slice(&to.to_le_bytes());
    stream.write_all(&hello).await?;
    match read_answer(&mut stream).await? {
        None => Ok(stream),
        Some((REMOVED, reason)) => Err(std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            format!("member {to:x} at {addr} says: {reason}"),
        )),
        Some((_, reason)) => Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("refusing to join: member {to:x} at {addr} refused this member: {reason}"),
        )),
    }
}

/// Asks a member at `addr` for the cluster's id and membership (a member joining a running
/// cluster, before it has a log).
pub(crate) async fn ask_membership(addr: &str) -> std::io::Result<(u64, Membership)> {
    let asking = async {
        let none = Me {
            cluster_id: 0,
            member_id: 0,
        };
        let mut stream = connect_kind(none, 0, addr, MEMBERS_MAGIC).await?;
        let mut head = [0u8; 4];
        stream.read_exact(&mut head).await?;
        let len = u32::from_le_bytes(head) as usize;
        if !(8..=MEMBERS_BYTES_MAX).contains(&len) {
            return Err(invalid(format!("a membership answer of {len} bytes")));
        }
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).await?;
        let cluster = u64::from_le_bytes(body[..8].try_into().unwrap_or([0; 8]));
        let (_, _, membership) = crate::raftlog::decode_marker(&body[8..])
            .map_err(|e| invalid(format!("the membership does not decode: {e}")))?;
        Ok((cluster, membership))
    };
    futures_lite::future::or(asking, async {
        glommio::timer::sleep(HELLO_TIMEOUT).await;
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no answer within the timeout",
        ))
    })
    .await
}

/// Writes queued messages in frames until the connection fails or the member stops.
async fn pump(
    mut stream: TcpStream,
    rx: &flume::Receiver<(Message, usize)>,
    bytes: &Cell<usize>,
    link: &Link,
) -> std::io::Result<()> {
    let mut frame = Vec::new();
    loop {
        let first = futures_lite::future::or(async { Ok(rx.recv_async().await.ok()) }, async {
            futures_lite::future::or(
                async {
                    wait_until(POLL_IDLE, || link.ended()).await;
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
async fn accept(listener: std::net::TcpListener, me: Me, shared: Arc<Shared>) {
    let refusals = Rc::new(RefusalLog::default());
    let open = Rc::new(Cell::new(0usize));
    let stop = shared.stop.clone();
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
                if open.get() >= PEER_CONNECTIONS_MAX {
                    drop(stream); // bounded: each may hold a frame of FRAME_BYTES_MAX
                    continue;
                }
                open.set(open.get() + 1);
                let (shared, refusals, open) = (shared.clone(), refusals.clone(), open.clone());
                glommio::spawn_local(async move {
                    receive(stream, me, shared, refusals).await;
                    open.set(open.get() - 1);
                })
                .detach();
            }
            Some(Err(_)) => glommio::timer::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Reads one peer's frames and hands their messages to the raft role.
async fn receive(mut stream: TcpStream, me: Me, shared: Arc<Shared>, refusals: Rc<RefusalLog>) {
    let peer = stream.peer_addr().ok();
    let (inputs, stop) = (shared.inputs.clone(), shared.stop.clone());
    // The member on the other end, once it said hello.
    let peer_id = Cell::new(0u64);
    let read = async {
        let greeted = futures_lite::future::or(hello(&mut stream, me, &shared, &refusals), async {
            glommio::timer::sleep(HELLO_TIMEOUT).await;
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no hello within the timeout",
            ))
        })
        .await;
        let (from, kind) = greeted?;
        peer_id.set(from);
        if kind == MEMBERS_MAGIC {
            let membership = shared.membership.lock().clone();
            let mut body = me.cluster_id.to_le_bytes().to_vec();
            body.extend_from_slice(&crate::raftlog::encode_marker(0, 0, &membership));
            let mut answer = (body.len() as u32).to_le_bytes().to_vec();
            answer.extend_from_slice(&body);
            return stream.write_all(&answer).await;
        }
        if kind == PROBE_MAGIC {
            return echo(&mut stream).await;
        }
        if kind == SNAPSHOT_MAGIC {
            // Bounded like the sender's side, for a file of up to 64 GiB.
            let limit = snapshot_timeout(64 << 30);
            return futures_lite::future::or(receive_snapshot(&mut stream, from, &shared), async {
                glommio::timer::sleep(limit).await;
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the snapshot transfer took too long",
                ))
            })
            .await;
        }
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
            // A member removed while its connection was open (it may not know yet: the
            // leader stops sending to it once the removal is applied) is cut off when it
            // next sends; its redial is refused as removed, on which it stops.
            if shared.membership.lock().was_removed(from) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("member {from:x} was removed from the cluster"),
                ));
            }
            let msgs = decode_messages(&frame, from)?;
            if inputs.send_async(Input::Peer(msgs)).await.is_err() {
                return Ok(());
            }
        }
    };
    // A member removed while connected is cut off, even if it sends nothing (a learner
    // that missed its removal): its redial is refused as removed, on which it stops.
    let stopped = async {
        wait_until(POLL_IDLE, || {
            let from = peer_id.get();
            stop.load(Ordering::Relaxed)
                || (from != 0 && shared.membership.lock().was_removed(from))
        })
        .await;
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
/// Refusals are logged once per peer and reason every [`REFUSAL_LOG_EVERY`], not on every
/// redial.
#[derive(Default)]
struct RefusalLog {
    last: RefCell<Vec<(u64, String, std::time::Instant)>>,
}

const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

impl RefusalLog {
    fn log(&self, from: u64, reason: &str) {
        let now = std::time::Instant::now();
        let mut last = self.last.borrow_mut();
        last.retain(|(_, _, at)| now.duration_since(*at) < REFUSAL_LOG_EVERY);
        if last.iter().any(|(f, r, _)| *f == from && r == reason) {
            return;
        }
        if last.len() < 64 {
            last.push((from, reason.to_string(), now));
        }
        tracing::error!(peer = %format!("{from:x}"), "refused a peer: {reason}");
    }
}

async fn hello(
    stream: &mut TcpStream,
    me: Me,
    shared: &Shared,
    refusals: &RefusalLog,
) -> std::io::Result<(u64, u64)> {
    let mut h = [0u8; HELLO_BYTES];
    stream.read_exact(&mut h).await?;
    let word = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().unwrap_or([0; 8]));
    let version = u32::from_le_bytes(h[8..12].try_into().unwrap_or([0; 4]));
    let (cluster, from, to) = (word(12), word(20), word(28));
    let magic = word(0);
    if magic == MEMBERS_MAGIC && version == VERSION {
        // A member joining: it does not know the cluster yet.
        write_answer(stream, None).await?;
        return Ok((from, magic));
    }
    let refusal = if magic != MAGIC && magic != SNAPSHOT_MAGIC && magic != PROBE_MAGIC {
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
    if refusal.is_none() && shared.membership.lock().was_removed(from) {
        // Of this cluster, and removed from it: told so, it stops.
        let reason = format!(
            "member {from:x} was removed from the cluster: the member has been permanently \
             removed from the cluster"
        );
        refusals.log(from, &reason);
        write_status(stream, REMOVED, Some(&reason)).await?;
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            reason,
        ));
    }
    match refusal {
        None => {
            write_answer(stream, None).await?;
            Ok((from, word(0)))
        }
        Some(reason) => {
            refusals.log(from, &reason);
            write_answer(stream, Some(&reason)).await?;
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

    #[test]
    fn a_transfer_resumes_only_over_bytes_of_the_same_file() {
        let file: Vec<u8> = (0..3 << 20).map(|i| (i * 7 % 251) as u8).collect();
        let read = |data: &[u8]| {
            let data = data.to_vec();
            move |off: u64, buf: &mut [u8]| {
                let off = off as usize;
                buf.copy_from_slice(&data[off..off + buf.len()]);
                Ok(buf.len())
            }
        };
        let held = (2 << 20) + 123;
        let leader = prefix_checks(held, read(&file)).unwrap();
        // The same bytes held: resume.
        assert_eq!(
            prefix_checks(held, read(&file[..held as usize])).unwrap(),
            leader
        );
        // Another file under the same name (a reused inode), or bytes lost at the end.
        let mut other = file.clone();
        other[10] ^= 1;
        assert_ne!(prefix_checks(held, read(&other)).unwrap(), leader);
        let mut torn = file.clone();
        torn[held as usize - 5] ^= 0xff;
        assert_ne!(prefix_checks(held, read(&torn)).unwrap(), leader);
    }

    /// A peer's queue, as `Peers::send` fills it.
    struct FakeQueue(flume::Sender<(Message, usize)>);

    impl FakeQueue {
        fn send(&self, msgs: Vec<Message>) {
            for m in msgs {
                let size = m.compute_size() as usize;
                self.0.try_send((m, size)).unwrap();
            }
        }
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
            let me = Me {
                cluster_id: 7,
                member_id: 1,
            };
            // The dialer of peer 2, fed as `Peers::send` feeds it.
            let (tx, rx) = flume::bounded(QUEUE_MESSAGES_MAX);
            let bytes = Rc::new(Cell::new(0));
            let (inputs, _removed) = flume::bounded(1);
            let link = Link {
                me,
                to: 2,
                addrs: Rc::new(RefCell::new(vec![listen_addr(&url)])),
                gone: Rc::new(Cell::new(false)),
                stop: stop.clone(),
                inputs,
            };
            glommio::spawn_local(dial(link, rx, bytes)).detach();
            let peers = FakeQueue(tx);
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
