//! `--target etcd`: the same workloads through etcd's v3 gRPC API, to an etcd or to
//! cairn's gRPC port, so both are measured by one client in one run. A thread per core, each
//! with a tokio runtime of its own; `--conns` HTTP/2 connections spread over the endpoints
//! and the threads, `--clients` client tasks spread over the connections, each with one request in flight (gRPC
//! multiplexes them on the connection). Closed loop by default; with `--rate`, open loop,
//! latency measured from each request's scheduled time, as the native target does.

use crate::unary;
use crate::{Args, Progress, Workload};
use cairn::grpc::pb::etcdserverpb::{
    compare, lease_client::LeaseClient, request_op, Compare, LeaseGrantRequest,
    LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RequestOp, TxnRequest, TxnResponse,
};
use cairn::grpc::pb::v3lockpb::{lock_client::LockClient, LockRequest, UnlockRequest};
use hdrhistogram::Histogram;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

/// How long connecting to an endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the run failed: the endpoints could not be reached (exit 2), or anything else.
pub enum Failure {
    Unreachable(String),
    Failed(String),
}

/// Runs the workload (any but watch, which `main` refuses for this target) until the
/// deadline: the latencies of the requests that completed, and why the run failed if it
/// did (the first failure; a lost connection stops its clients, as with the native
/// target, and the others go on).
pub fn run(
    args: &Args,
    cores: usize,
    deadline: Instant,
    progress: &Arc<Progress>,
) -> (Histogram<u64>, Option<Failure>) {
    let args = Arc::new(args.clone());
    // One thread a core, each with a runtime of its own holding its share of the
    // connections and of the clients on them: a reply wakes its client on the thread that
    // reads it, never another (work stealing would move tasks, and wake across threads).
    let threads = cores.clamp(1, args.conns.max(1));
    let mut hist = crate::conn::new_hist();
    let mut failure = None;
    let mut workers = Vec::with_capacity(threads);
    for t in 0..threads {
        let (args, progress) = (args.clone(), progress.clone());
        match std::thread::Builder::new()
            .name(format!("etcd-client-{t}"))
            .spawn(move || worker(&args, t, threads, deadline, &progress))
        {
            Ok(w) => workers.push(w),
            Err(e) => {
                failure = Some(Failure::Failed(format!(
                    "cannot start a client thread: {e}"
                )));
                break;
            }
        }
    }
    for w in workers {
        let (h, failed) = w.join().unwrap_or_else(|_| {
            let panicked = Failure::Failed("a client thread panicked".into());
            (crate::conn::new_hist(), Some(panicked))
        });
        add(&mut hist, h, &mut failure);
        failure = failure.or(failed);
    }
    progress.finished.fetch_add(1, Ordering::Relaxed);
    (hist, failure)
}

/// Adds `h` to `hist`; a failure to, to `failure` if there is none yet.
fn add(hist: &mut Histogram<u64>, h: Histogram<u64>, failure: &mut Option<Failure>) {
    if let Err(e) = hist.add(h) {
        *failure = failure.take().or(Some(Failure::Failed(e.to_string())));
    }
}

/// Thread `t` of `threads`: connections `t`, `t + threads`, ... and the clients on them.
fn worker(
    args: &Arc<Args>,
    t: usize,
    threads: usize,
    deadline: Instant,
    progress: &Arc<Progress>,
) -> (Histogram<u64>, Option<Failure>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let failed = Failure::Failed(format!("cannot start the runtime: {e}"));
            return (crate::conn::new_hist(), Some(failed));
        }
    };
    runtime.block_on(async move {
        let mut hist = crate::conn::new_hist();
        let conns: Vec<usize> = (t..args.conns.max(1)).step_by(threads).collect();
        let mut channels = Vec::with_capacity(conns.len());
        for &c in &conns {
            let endpoint = &args.endpoints[c % args.endpoints.len()];
            match connect(endpoint, args.workload).await {
                Ok(link) => channels.push(link),
                Err(e) => return (hist, Some(e)),
            }
        }
        // Client c is on connection c mod --conns, as with the native target.
        let tasks: Vec<_> = (0..args.clients)
            .filter(|c| c % args.conns.max(1) % threads == t)
            .map(|c| {
                let at = conns
                    .iter()
                    .position(|&k| k == c % args.conns.max(1))
                    .unwrap_or(0);
                let link = channels[at].clone();
                let (args, progress) = (args.clone(), progress.clone());
                tokio::task::spawn(async move { client(&args, c, link, deadline, &progress).await })
            })
            .collect();
        let mut failure = None;
        for task in tasks {
            match task.await {
                Ok((h, failed)) => {
                    add(&mut hist, h, &mut failure);
                    failure = failure.or(failed);
                }
                Err(e) => {
                    let failed = Failure::Failed(format!("a client task failed: {e}"));
                    failure = failure.or(Some(failed));
                }
            }
        }
        (hist, failure)
    })
}

/// A connection to an endpoint: the key-value workloads make unary calls of their own on
/// it; lock and lease use tonic's generated clients (their keepalive is a stream).
#[derive(Clone)]
enum Link {
    Unary(unary::Conn),
    Tonic(Channel),
}

async fn connect(endpoint: &str, workload: Workload) -> Result<Link, Failure> {
    if !matches!(workload, Workload::Lock | Workload::Lease) {
        let authority = endpoint.strip_prefix("http://").unwrap_or(endpoint);
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, unary::Conn::connect(authority))
            .await
            .map_err(|_| Failure::Unreachable(format!("{endpoint}: connecting timed out")))?
            .map_err(Failure::Unreachable)?;
        return Ok(Link::Unary(conn));
    }
    let url = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    };
    let unreachable = |e: &dyn std::fmt::Display| Failure::Unreachable(format!("{url}: {e}"));
    Endpoint::from_shared(url.clone())
        .map_err(|e| Failure::Failed(format!("{url}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .connect()
        .await
        .map(Link::Tonic)
        .map_err(|e| unreachable(&e))
}

/// One client's loop; its latencies.
async fn client(
    args: &Args,
    c: usize,
    link: Link,
    deadline: Instant,
    progress: &Progress,
) -> (Histogram<u64>, Option<Failure>) {
    let done = match (args.workload, link) {
        (Workload::Lock, Link::Tonic(channel)) => {
            lock_client(args, c, channel, deadline, progress).await
        }
        (Workload::Lease, Link::Tonic(channel)) => lease_client(channel, deadline, progress).await,
        (_, Link::Unary(conn)) => return kv_client(args, c, conn, deadline, progress).await,
        _ => Err("a client on the wrong kind of connection".into()),
    };
    match done {
        Ok(h) => (h, None),
        Err(e) => (crate::conn::new_hist(), Some(Failure::Failed(e))),
    }
}

/// The key-value workloads: put, range, txn, mixed and fill, as the native target makes
/// them (same keys, values and mix). A client stops when its connection is lost.
async fn kv_client(
    args: &Args,
    c: usize,
    conn: unary::Conn,
    deadline: Instant,
    progress: &Progress,
) -> (Histogram<u64>, Option<Failure>) {
    let mut hist = crate::conn::new_hist();
    let uris = ["Put", "Range", "Txn"].map(|m| conn.uri(&format!("/etcdserverpb.KV/{m}")));
    let [put_uri, range_uri, txn_uri] = match uris {
        [Ok(p), Ok(r), Ok(t)] => [p, r, t],
        [p, r, t] => {
            let e = p.and(r).and(t).err().unwrap_or_default();
            return (hist, Some(Failure::Failed(e)));
        }
    };
    let mut rng = StdRng::seed_from_u64(c as u64);
    let value = vec![b'v'; args.value_size];
    let space = args.key_space.max(1);
    // Open loop: each client sends every `interval`, staggered over the clients.
    let interval =
        (args.rate > 0.0).then(|| Duration::from_secs_f64(args.clients as f64 / args.rate));
    let mut intended = Instant::now()
        + interval.map_or(Duration::ZERO, |i| {
            i.mul_f64(c as f64 / args.clients.max(1) as f64)
        });
    loop {
        let scheduled = match interval {
            Some(i) => {
                let now = Instant::now();
                if intended > now {
                    tokio::time::sleep(intended - now).await;
                }
                intended += i;
                intended - i
            }
            None => Instant::now(),
        };
        if Instant::now() >= deadline {
            return (hist, None);
        }
        let n = if args.workload == Workload::Fill {
            let n = progress.next_key.fetch_add(1, Ordering::Relaxed);
            if n >= space {
                return (hist, None);
            }
            n
        } else {
            rng.gen_range(0..space)
        };
        let key = crate::conn::key_bytes(n, args.key_size);
        let put = || PutRequest {
            key: key.clone(),
            value: value.clone(),
            ..PutRequest::default()
        };
        let range = || RangeRequest {
            key: key.clone(),
            serializable: args.consistency == "s",
            ..RangeRequest::default()
        };
        let call = async {
            match args.workload {
                Workload::Range => conn
                    .call::<_, RangeResponse>(&range_uri, &range())
                    .await
                    .map(drop),
                Workload::Mixed if rng.gen_range(0..10) != 0 => conn
                    .call::<_, RangeResponse>(&range_uri, &range())
                    .await
                    .map(drop),
                Workload::Txn => {
                    let op = || RequestOp {
                        request: Some(request_op::Request::RequestPut(put())),
                    };
                    let t = TxnRequest {
                        compare: vec![Compare {
                            result: compare::CompareResult::Greater as i32,
                            target: compare::CompareTarget::Mod as i32,
                            key: key.clone(),
                            range_end: Vec::new(),
                            target_union: Some(compare::TargetUnion::ModRevision(0)),
                        }],
                        success: vec![op()],
                        failure: vec![op()],
                    };
                    conn.call::<_, TxnResponse>(&txn_uri, &t).await.map(drop)
                }
                _ => conn
                    .call::<_, PutResponse>(&put_uri, &put())
                    .await
                    .map(drop),
            }
        };
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, call).await;
        record(
            &mut hist,
            progress,
            scheduled,
            matches!(outcome, Ok(Ok(()))),
        );
        if conn.is_closed() {
            let lost = format!("{}: the connection was lost", conn.authority());
            return (hist, Some(Failure::Unreachable(lost)));
        }
    }
}

fn record(hist: &mut Histogram<u64>, progress: &Progress, from: Instant, ok: bool) {
    if ok {
        let _ = hist.record(from.elapsed().as_nanos().max(1_000) as u64);
        progress.ops.fetch_add(1, Ordering::Relaxed);
    } else {
        progress.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// etcd's v3lock service: the client holds a session lease (kept alive on its own stream),
/// and in a loop locks one of `--locks` locks and unlocks it.
async fn lock_client(
    args: &Args,
    c: usize,
    channel: Channel,
    deadline: Instant,
    progress: &Progress,
) -> Result<Histogram<u64>, String> {
    let mut leases = LeaseClient::new(channel.clone());
    let lease = leases
        .lease_grant(LeaseGrantRequest { ttl: 10, id: 0 })
        .await
        .map_err(|e| format!("lease grant: {}", e.message()))?
        .into_inner()
        .id;
    let keeper = tokio::spawn(keep_alive(LeaseClient::new(channel.clone()), lease));
    let mut locks = LockClient::new(channel);
    let mut rng = StdRng::seed_from_u64(c as u64);
    let mut hist = crate::conn::new_hist();
    let count = args.locks.max(1);
    while Instant::now() < deadline {
        let name = format!("lock-{}", rng.gen_range(0..count)).into_bytes();
        let began = Instant::now();
        let held =
            tokio::time::timeout(REQUEST_TIMEOUT, locks.lock(LockRequest { name, lease })).await;
        let Ok(Ok(held)) = held else {
            progress.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let key = held.into_inner().key;
        let released =
            tokio::time::timeout(REQUEST_TIMEOUT, locks.unlock(UnlockRequest { key })).await;
        record(&mut hist, progress, began, matches!(released, Ok(Ok(_))));
    }
    keeper.abort();
    let _ = leases.lease_revoke(LeaseRevokeRequest { id: lease }).await;
    Ok(hist)
}

/// Keeps `lease` alive on a stream of its own, a renewal every 2 s, until aborted.
async fn keep_alive(mut leases: LeaseClient<Channel>, lease: i64) {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    // Queued before the call: a server may answer the call only once a request came.
    if tx.send(LeaseKeepAliveRequest { id: lease }).await.is_err() {
        return;
    }
    let Ok(responses) = leases
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    else {
        return;
    };
    let mut responses = responses.into_inner();
    loop {
        if !matches!(responses.message().await, Ok(Some(_))) {
            return;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        if tx.send(LeaseKeepAliveRequest { id: lease }).await.is_err() {
            return;
        }
    }
}

/// Renews one lease back to back on a keepalive stream: the latency of each renewal.
async fn lease_client(
    channel: Channel,
    deadline: Instant,
    progress: &Progress,
) -> Result<Histogram<u64>, String> {
    let mut leases = LeaseClient::new(channel);
    let lease = leases
        .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
        .await
        .map_err(|e| format!("lease grant: {}", e.message()))?
        .into_inner()
        .id;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    // The first renewal is queued before the call: a server may answer the call only once
    // a request came.
    let mut began = Instant::now();
    tx.send(LeaseKeepAliveRequest { id: lease })
        .await
        .map_err(|_| "the keepalive stream closed".to_string())?;
    let mut responses = leases
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|e| format!("lease keepalive stream: {}", e.message()))?
        .into_inner();
    let mut hist = crate::conn::new_hist();
    let mut first = true;
    while Instant::now() < deadline {
        if !std::mem::take(&mut first) {
            began = Instant::now();
            if tx.send(LeaseKeepAliveRequest { id: lease }).await.is_err() {
                return Err("the keepalive stream closed".into());
            }
        }
        let renewed = tokio::time::timeout(REQUEST_TIMEOUT, responses.message()).await;
        let ok = matches!(&renewed, Ok(Ok(Some(r))) if r.ttl > 0);
        record(&mut hist, progress, began, ok);
        if !matches!(renewed, Ok(Ok(Some(_)))) {
            return Err("the keepalive stream failed".into());
        }
    }
    drop(tx);
    let _ = leases.lease_revoke(LeaseRevokeRequest { id: lease }).await;
    Ok(hist)
}
