//! The `lock` and `lease` workloads, on threads with blocking clients (one request in
//! flight per client, as a lock user or a lease holder has):
//!
//! - `lock`: each client holds a session lease (kept alive by a thread) and, in a loop,
//!   acquires one of `--locks` locks (chosen at random) and releases it; the latency is
//!   that of the acquire plus the release, and each acquisition is a hand-off.
//! - `lease`: each client holds one lease and renews it back to back through the leader;
//!   the latency is that of one keepalive.

use crate::{Args, Progress, Workload};
use cairn::client::{keep_alive_loop, Client, LeaderClient};
use cairn::lock::{LockRequest, LockResponse};
use cairn::protocol::{ClientRequest, ClientResponse};
use hdrhistogram::Histogram;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the workload on `--clients` threads until the deadline; their latencies merged.
pub fn run(
    args: &Args,
    deadline: Instant,
    progress: &Arc<Progress>,
) -> Result<Histogram<u64>, String> {
    let threads: Vec<_> = (0..args.clients)
        .map(|c| {
            let (args, progress) = (args.clone(), progress.clone());
            std::thread::spawn(move || match args.workload {
                Workload::Lock => lock_client(&args, c, deadline, &progress),
                _ => lease_client(&args, c, deadline, &progress),
            })
        })
        .collect();
    let mut hist = crate::conn::new_hist();
    for t in threads {
        let h = t
            .join()
            .map_err(|_| "a client thread panicked".to_string())??;
        hist.add(h).map_err(|e| e.to_string())?;
    }
    progress.finished.fetch_add(1, Ordering::Relaxed);
    Ok(hist)
}

fn endpoints_for(args: &Args, c: usize) -> Vec<String> {
    let mut ends = args.endpoints.clone();
    let first = c % ends.len().max(1);
    ends.rotate_left(first);
    ends
}

fn grant(client: &mut Client, ttl: i64) -> Result<i64, String> {
    client
        .lease_grant(ttl, 0)
        .map(|g| g.id)
        .map_err(|e| format!("lease grant: {e}"))
}

fn lock_client(
    args: &Args,
    c: usize,
    deadline: Instant,
    progress: &Progress,
) -> Result<Histogram<u64>, String> {
    let ends = endpoints_for(args, c);
    let mut client = Client::new(ends.clone(), TIMEOUT);
    let lease = grant(&mut client, 10)?;
    let stop = Arc::new(AtomicBool::new(false));
    let keeper = {
        let (stop, ends) = (stop.clone(), ends.clone());
        std::thread::spawn(move || keep_alive_loop(ends, TIMEOUT, lease, &stop, |_| {}))
    };
    let mut rng = StdRng::seed_from_u64(c as u64);
    let mut hist = crate::conn::new_hist();
    let locks = args.locks.max(1);
    while Instant::now() < deadline {
        let name = format!("lock-{}", rng.gen_range(0..locks)).into_bytes();
        let began = Instant::now();
        let held = match client.request_within(
            &ClientRequest::Lock(LockRequest::Lock { name, lease }),
            TIMEOUT,
        ) {
            Ok(ClientResponse::Lock(LockResponse::Lock { key, .. })) => key,
            _ => {
                progress.errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        match client.request(&ClientRequest::Lock(LockRequest::Unlock { key: held })) {
            Ok(ClientResponse::Lock(LockResponse::Unlock { .. })) => {
                let _ = hist.record(began.elapsed().as_nanos().max(1_000) as u64);
                progress.ops.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                progress.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = keeper.join();
    let _ = client.lease_revoke(lease);
    Ok(hist)
}

fn lease_client(
    args: &Args,
    c: usize,
    deadline: Instant,
    progress: &Progress,
) -> Result<Histogram<u64>, String> {
    let ends = endpoints_for(args, c);
    let mut client = Client::new(ends.clone(), TIMEOUT);
    let lease = grant(&mut client, 60)?;
    let mut leader = LeaderClient::new(ends, TIMEOUT);
    let mut hist = crate::conn::new_hist();
    while Instant::now() < deadline {
        let began = Instant::now();
        match leader.keep_alive_once(lease) {
            Ok(_) => {
                let _ = hist.record(began.elapsed().as_nanos().max(1_000) as u64);
                progress.ops.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                progress.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let _ = client.lease_revoke(lease);
    Ok(hist)
}
