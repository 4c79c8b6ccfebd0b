//! The `watch` workload: W watchers, each on one key of the key space (watcher j on key
//! j mod key_space), spread over `--watch-conns` connections of their own (a thread each),
//! while the put workload writes those keys. Each put's value carries its sequence number;
//! the put's acknowledgement time is kept by number, and each event's delivery time is
//! taken when the watcher reads it, so the report gives the delivery latency from the
//! put's acknowledgement to the event (0 when the event came first), and the events
//! expected but never delivered.

use crate::Args;
use cairn::client::WatchStream;
use cairn::watch::WatchCreateRequest;
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The clock every time stamp of the run is taken on.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// What the putting and the watching sides share.
pub struct Shared {
    /// Acknowledgement time of put number n (nanoseconds since the epoch), 0 until then.
    acks: Vec<AtomicU64>,
    /// The key put number n wrote.
    keys: Vec<AtomicU64>,
    next: AtomicU64,
}

impl Shared {
    pub fn new(puts_max: usize) -> Shared {
        Shared {
            acks: (0..puts_max).map(|_| AtomicU64::new(0)).collect(),
            keys: (0..puts_max).map(|_| AtomicU64::new(0)).collect(),
            next: AtomicU64::new(0),
        }
    }

    /// A number for the next put, of key `key`, if any is left.
    pub fn next_put(&self, key: u64) -> Option<u64> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = self.keys.get(n as usize)?;
        slot.store(key, Ordering::Relaxed);
        Some(n)
    }

    pub fn acked(&self, n: u64) {
        if let Some(a) = self.acks.get(n as usize) {
            a.store(now_ns(), Ordering::Relaxed);
        }
    }
}

/// The value of put number `n`: the number, then padding to `size`.
pub fn value(n: u64, size: usize) -> Vec<u8> {
    let mut v = n.to_le_bytes().to_vec();
    v.resize(size.max(8), b'v');
    v
}

/// A watcher thread: (put number, delivery time) of each event it saw, or why it failed.
pub type WatcherThread = std::thread::JoinHandle<Result<Vec<(u64, u64)>, String>>;

/// The watching side's results.
pub struct Report {
    pub watchers: usize,
    pub delivered: u64,
    pub missing: u64,
    pub latency: Histogram<u64>,
    pub created_s: f64,
}

/// Starts the watcher threads; they create their watchers, raise `ready` (one count per
/// thread) and record deliveries until `stop`.
pub fn start(
    args: &Args,
    key_of: impl Fn(u64) -> Vec<u8> + Clone + Send + 'static,
    ready: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Vec<WatcherThread> {
    let conns = args.watch_conns.max(1);
    (0..conns)
        .map(|c| {
            let endpoint = args.endpoints[c % args.endpoints.len()].clone();
            let mine: Vec<u64> = (0..args.watchers as u64)
                .filter(|j| *j as usize % conns == c)
                .map(|j| j % args.key_space.max(1))
                .collect();
            let (key_of, ready, stop) = (key_of.clone(), ready.clone(), stop.clone());
            std::thread::spawn(move || {
                let timeout = Duration::from_secs(10);
                let mut stream =
                    WatchStream::connect(vec![endpoint], timeout).map_err(|e| e.to_string())?;
                for k in &mine {
                    let created = stream
                        .create(WatchCreateRequest {
                            key: key_of(*k),
                            ..WatchCreateRequest::default()
                        })
                        .map_err(|e| e.to_string())?;
                    if created.canceled {
                        return Err(format!("watch refused: {}", created.cancel_reason));
                    }
                }
                ready.fetch_add(1, Ordering::Relaxed);
                // (put number, delivery time) of each event.
                let mut deliveries = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match stream.next(Duration::from_millis(50)) {
                        Ok(Some(r)) => {
                            let at = now_ns();
                            for e in &r.events {
                                if let Some(n) = e.kv.value.first_chunk::<8>() {
                                    deliveries.push((u64::from_le_bytes(*n), at));
                                }
                            }
                        }
                        Ok(None) => {}
                        Err(e) => return Err(e.to_string()),
                    }
                }
                Ok(deliveries)
            })
        })
        .collect()
}

/// Matches deliveries with acknowledgements: latencies, and events owed but not delivered
/// for the puts acknowledged before `owed_before` (nanoseconds since the epoch).
pub fn report(
    args: &Args,
    shared: &Shared,
    deliveries: Vec<(u64, u64)>,
    owed_before: u64,
    created_s: f64,
) -> Report {
    let mut latency = crate::conn::new_hist();
    let space = args.key_space.max(1);
    // Watchers per key.
    let per_key = |k: u64| -> u64 {
        let w = args.watchers as u64;
        w / space + u64::from(k < w % space)
    };
    let mut got = vec![0u64; shared.acks.len()];
    for &(n, at) in &deliveries {
        let Some(ack) = shared
            .acks
            .get(n as usize)
            .map(|a| a.load(Ordering::Relaxed))
        else {
            continue;
        };
        if ack == 0 {
            continue; // never acknowledged (the run ended first)
        }
        got[n as usize] += 1;
        let _ = latency.record(at.saturating_sub(ack).max(1_000));
    }
    let mut missing = 0;
    for (n, ack) in shared.acks.iter().enumerate() {
        let ack = ack.load(Ordering::Relaxed);
        if ack != 0 && ack < owed_before {
            let key = shared.keys[n].load(Ordering::Relaxed);
            missing += per_key(key).saturating_sub(got[n]);
        }
    }
    Report {
        watchers: args.watchers,
        delivered: deliveries.len() as u64,
        missing,
        latency,
        created_s,
    }
}
