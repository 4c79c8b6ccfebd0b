//! One executor's connections: requests kept in flight, replies matched by id, latency
//! recorded from each request's scheduled time.

use crate::{Args, Progress, Workload};
use cairn::mvcc::{
    Compare, CompareResult, CompareTarget, PutRequest, RangeRequest, Request, RequestOp,
    TargetUnion, TxnRequest,
};
use cairn::protocol::{encode_request, split_frame, ClientRequest, FrameKind, HEADER_BYTES};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use hdrhistogram::Histogram;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Clients per connection are addressed by the low 16 bits of a request id.
const SLOT_BITS: u32 = 16;

/// Why a connection stopped before its run was over.
#[derive(Debug)]
pub enum ConnError {
    /// The target could not be reached, closed the connection or stopped answering: the
    /// requests in flight were counted as errors.
    Unreachable(String),
    /// Anything else (a bad reply, a bad configuration).
    Failed(String),
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnError::Unreachable(m) | ConnError::Failed(m) => f.write_str(m),
        }
    }
}

/// One executor's connections; returns the latencies of the requests that completed (a
/// failed connection keeps those it had) and why connections failed.
pub async fn run_core(
    args: Args,
    conns: Vec<usize>,
    deadline: Instant,
    progress: Arc<Progress>,
) -> (Histogram<u64>, Vec<ConnError>) {
    let args = Rc::new(args);
    let tasks: Vec<_> = conns
        .iter()
        .map(|&c| {
            // Clients dealt out over connections as evenly as possible.
            let clients = args.clients / args.conns + usize::from(c < args.clients % args.conns);
            glommio::spawn_local(run_conn(
                args.clone(),
                c,
                clients,
                deadline,
                progress.clone(),
            ))
        })
        .collect();
    let mut hist = new_hist();
    let mut errors = Vec::new();
    for t in tasks {
        let (h, result) = t.await;
        if let Err(e) = hist.add(h) {
            errors.push(ConnError::Failed(e.to_string()));
        }
        errors.extend(result.err());
    }
    progress.finished.fetch_add(1, Ordering::Relaxed);
    (hist, errors)
}

/// Latencies in nanoseconds, from 1 µs to 10 minutes.
pub fn new_hist() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1_000, 600_000_000_000, 3).expect("constant, valid bounds")
}

struct Gen {
    rng: StdRng,
    args: Rc<Args>,
    value: Vec<u8>,
    progress: Arc<Progress>,
}

/// Key number `n` as the workloads write it: decimal, zero-padded to `size` bytes.
pub fn key_bytes(n: u64, size: usize) -> Vec<u8> {
    let mut k = format!("{n:0size$}").into_bytes();
    k.truncate(size.max(1));
    k
}

impl Gen {
    fn key(&self, n: u64) -> Vec<u8> {
        key_bytes(n, self.args.key_size)
    }

    /// The next request, or None once `fill` has put every key (or the watch workload's
    /// bookkeeping is full); with the watch workload, also the put's number.
    fn request(&mut self) -> Option<(ClientRequest, Option<u64>)> {
        let space = self.args.key_space.max(1);
        let n = if self.args.workload == Workload::Fill {
            let n = self.progress.next_key.fetch_add(1, Ordering::Relaxed);
            if n >= space {
                return None;
            }
            n
        } else {
            self.rng.gen_range(0..space)
        };
        let key = self.key(n);
        if self.args.workload == Workload::Watch {
            let shared = self.progress.watch.as_ref()?;
            let number = shared.next_put(n)?;
            let put = PutRequest {
                key,
                value: crate::watch::value(number, self.args.value_size),
                ..Default::default()
            };
            return Some((ClientRequest::Kv(Request::Put(put)), Some(number)));
        }
        let put = || PutRequest {
            key: key.clone(),
            value: self.value.clone(),
            ..Default::default()
        };
        let range = || RangeRequest {
            key: key.clone(),
            serializable: self.args.consistency == "s",
            ..Default::default()
        };
        let request = ClientRequest::Kv(match self.args.workload {
            // (The lock and lease workloads run on their own threads, never here.)
            Workload::Put | Workload::Fill | Workload::Watch | Workload::Lock | Workload::Lease => {
                Request::Put(put())
            }
            Workload::Range => Request::Range(range()),
            Workload::Mixed if self.rng.gen_range(0..10) == 0 => Request::Put(put()),
            Workload::Mixed => Request::Range(range()),
            Workload::Txn => Request::Txn(TxnRequest {
                compare: vec![Compare {
                    result: CompareResult::Greater,
                    target: CompareTarget::Mod,
                    key: key.clone(),
                    target_union: Some(TargetUnion::ModRevision(0)),
                    range_end: vec![],
                }],
                success: vec![RequestOp::Put(put())],
                failure: vec![RequestOp::Put(put())],
            }),
        });
        Some((request, None))
    }
}

/// One connection's run; returns the latencies of the requests that completed, also when
/// it fails.
async fn run_conn(
    args: Rc<Args>,
    index: usize,
    clients: usize,
    deadline: Instant,
    progress: Arc<Progress>,
) -> (Histogram<u64>, Result<(), ConnError>) {
    let mut hist = new_hist();
    let result = drive_conn(&args, index, clients, deadline, &progress, &mut hist).await;
    (hist, result)
}

async fn drive_conn(
    args: &Rc<Args>,
    index: usize,
    clients: usize,
    deadline: Instant,
    progress: &Arc<Progress>,
    hist: &mut Histogram<u64>,
) -> Result<(), ConnError> {
    if clients == 0 {
        return Ok(());
    }
    if clients >= 1 << SLOT_BITS {
        return Err(ConnError::Failed(format!(
            "at most {} clients per connection",
            (1 << SLOT_BITS) - 1
        )));
    }
    let endpoint = &args.endpoints[index % args.endpoints.len()];
    let stream = glommio::net::TcpStream::connect(endpoint.as_str())
        .await
        .map_err(|e| ConnError::Unreachable(format!("cannot connect to {endpoint}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = futures_lite::io::split(stream);
    let mut gen = Gen {
        rng: StdRng::seed_from_u64(index as u64),
        args: Rc::clone(args),
        value: vec![b'v'; args.value_size],
        progress: progress.clone(),
    };
    let mut exhausted = false;
    // Open loop: each client sends every `interval`, staggered.
    let interval =
        (args.rate > 0.0).then(|| Duration::from_secs_f64(args.clients as f64 / args.rate));
    let now = Instant::now();
    let mut intended: Vec<Instant> = (0..clients)
        .map(|c| now + interval.map_or(Duration::ZERO, |i| i.mul_f64(c as f64 / clients as f64)))
        .collect();
    let mut waiting: Vec<bool> = vec![false; clients];
    // The watch workload's number of each client's put in flight.
    let mut numbers: Vec<Option<u64>> = vec![None; clients];
    let mut seq = 0u64;
    let mut out: Vec<u8> = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let mut outstanding = 0usize;
    // The connection is gone or the target stopped answering: what was in flight failed.
    let lost = |outstanding: usize, why: String| {
        progress
            .errors
            .fetch_add(outstanding as u64, Ordering::Relaxed);
        ConnError::Unreachable(format!("{endpoint}: {why}"))
    };
    loop {
        let now = Instant::now();
        let sending = now < deadline && !exhausted;
        // Send every client whose time has come.
        for c in 0..clients {
            if sending && !waiting[c] && intended[c] <= now {
                let Some((request, number)) = gen.request() else {
                    exhausted = true;
                    break;
                };
                numbers[c] = number;
                seq += 1;
                let id = (seq << SLOT_BITS) | c as u64;
                let frame =
                    encode_request(id, &request).map_err(|e| ConnError::Failed(e.to_string()))?;
                out.extend_from_slice(&frame);
                waiting[c] = true;
                outstanding += 1;
            }
        }
        if !out.is_empty() {
            if let Err(e) = wr.write_all(&out).await {
                return Err(lost(outstanding, e.to_string()));
            }
            out.clear();
        }
        let sending = sending && !exhausted;
        if outstanding == 0 && !sending {
            return Ok(());
        }
        // Wait for replies, or until the next scheduled send, or the end.
        let next_send = (0..clients)
            .filter(|&c| !waiting[c])
            .map(|c| intended[c])
            .min();
        let until = match (sending, next_send) {
            (true, Some(t)) => t.min(deadline),
            (true, None) => deadline,
            (false, _) => deadline + Duration::from_secs(5),
        };
        if !sending && Instant::now() >= until {
            return Err(lost(
                outstanding,
                format!("{outstanding} requests unanswered at the end"),
            ));
        }
        let wait = until.saturating_duration_since(Instant::now());
        let read = futures_lite::future::or(async { Some(rd.read(&mut chunk).await) }, async {
            glommio::timer::sleep(wait).await;
            None
        })
        .await;
        match read {
            None => continue,
            Some(Ok(0)) => return Err(lost(outstanding, "closed the connection".into())),
            Some(Err(e)) => return Err(lost(outstanding, e.to_string())),
            Some(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
        let mut at = 0;
        while let Some((h, total)) =
            split_frame(&buf[at..], u32::MAX).map_err(|e| ConnError::Failed(e.to_string()))?
        {
            at += total;
            let c = (h.request_id & ((1 << SLOT_BITS) - 1)) as usize;
            if c >= clients || !waiting[c] {
                return Err(ConnError::Failed(format!(
                    "{endpoint}: reply to an unknown request {}",
                    h.request_id
                )));
            }
            let done = Instant::now();
            // Latencies are those of completed requests; an error reply is an error.
            if h.kind == FrameKind::Response {
                if let (Some(n), Some(w)) = (numbers[c], &progress.watch) {
                    w.acked(n);
                }
                let _ = hist.record((done - intended[c]).as_nanos().max(1_000) as u64);
                progress.ops.fetch_add(1, Ordering::Relaxed);
            } else {
                progress.errors.fetch_add(1, Ordering::Relaxed);
            }
            waiting[c] = false;
            outstanding -= 1;
            intended[c] = match interval {
                Some(i) => intended[c] + i,
                None => done,
            };
            debug_assert!(total >= HEADER_BYTES);
        }
        buf.drain(..at);
    }
}
