//! Watch against real `cairn serve` processes: etcd's watch guarantees (ordered, unique,
//! atomic, reliable, resumable, bookmarkable) checked on watchers of every member while the
//! leader is killed, partitioned away and members restart; and a watcher that does not read
//! holding bounded memory, then catching up.

mod common;

use cairn::client::{Client, WatchStream};
use cairn::mvcc::{Event, PutRequest, Request, RequestOp, Response, TxnRequest};
use cairn::protocol::{encode_request, ClientRequest, ClientResponse};
use cairn::watch::{WatchCreateRequest, WatchRequest, WatchResponse};
use common::cluster::{poll, Cluster};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// One cluster at a time (see tests/cluster.rs).
fn one_cluster_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp::Put(PutRequest {
        key: key.into(),
        value: value.into(),
        ..PutRequest::default()
    })
}

/// An acknowledged transaction: its revision and keys.
type Acked = (i64, Vec<String>);

/// Writers of two-key transactions, each keeping what was acknowledged.
fn start_writers(
    n: usize,
    endpoints: &[String],
    stop: &Arc<AtomicBool>,
) -> Vec<JoinHandle<Vec<Acked>>> {
    (0..n)
        .map(|w| {
            let mut endpoints = endpoints.to_vec();
            let first = w % endpoints.len();
            endpoints.rotate_left(first);
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut client = Client::new(endpoints, CLIENT_TIMEOUT);
                let mut acked = Vec::new();
                let mut seq = 0;
                while !stop.load(Ordering::Relaxed) {
                    let keys = vec![format!("w/{w}-{seq:05}/a"), format!("w/{w}-{seq:05}/b")];
                    seq += 1;
                    let txn = TxnRequest {
                        success: keys.iter().map(|k| put_op(k, "v")).collect(),
                        ..TxnRequest::default()
                    };
                    match client.request(&ClientRequest::Kv(Request::Txn(txn))) {
                        Ok(ClientResponse::Kv(Response::Txn(t))) => {
                            acked.push((t.header.revision, keys));
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        _ => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
                acked
            })
        })
        .collect()
}

/// What a watcher saw: every response in order.
struct Seen {
    start: i64,
    prev_kv: bool,
    responses: Vec<WatchResponse>,
}

/// A watcher on prefix `w/` starting on `endpoints[0]` (the others to resume on), asking
/// for progress every 300 ms, until it has seen revision `target` (once set).
fn start_watcher(
    endpoints: Vec<String>,
    start: i64,
    prev_kv: bool,
    target: &Arc<AtomicI64>,
) -> JoinHandle<Seen> {
    let target = target.clone();
    std::thread::spawn(move || {
        let mut stream = poll(Duration::from_secs(10), "a watch connection", || {
            WatchStream::connect(endpoints.clone(), CLIENT_TIMEOUT).ok()
        });
        let created = stream
            .create(WatchCreateRequest {
                key: b"w/".to_vec(),
                range_end: b"w0".to_vec(),
                start_revision: start,
                prev_kv,
                ..WatchCreateRequest::default()
            })
            .expect("created");
        assert!(created.created && !created.canceled, "{created:?}");
        let start = if start > 0 {
            start
        } else {
            created.header.revision + 1
        };
        let mut seen = Seen {
            start,
            prev_kv,
            responses: Vec::new(),
        };
        let mut last = 0;
        let mut asked = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let target = target.load(Ordering::Relaxed);
            if target > 0 && last >= target {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "the watcher never reached {target}"
            );
            if asked.elapsed() > Duration::from_millis(300) {
                let _ = stream.request_progress();
                asked = Instant::now();
            }
            match stream.next(Duration::from_millis(200)) {
                Ok(Some(r)) => {
                    if let Some(e) = r.events.last() {
                        last = e.kv.mod_revision;
                    } else if r.watch_id == -1 {
                        last = last.max(r.header.revision);
                    }
                    seen.responses.push(r);
                }
                Ok(None) => {}
                Err(e) => {
                    eprintln!("watcher: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    })
}

/// Every event of `w/` from revision 1 through `target`, from a watch on `endpoint` alone.
fn truth(endpoint: &str, target: i64) -> Vec<Event> {
    let target_flag = Arc::new(AtomicI64::new(target));
    let seen = start_watcher(vec![endpoint.to_string()], 1, true, &target_flag)
        .join()
        .expect("truth watcher");
    seen.responses.into_iter().flat_map(|r| r.events).collect()
}

/// etcd's guarantees for one watcher's responses, against every event there was.
fn check_watcher(name: &str, seen: &Seen, truth: &[Event]) {
    let events: Vec<Event> = seen
        .responses
        .iter()
        .flat_map(|r| r.events.iter().cloned())
        .map(|mut e| {
            if !seen.prev_kv {
                e.prev_kv = None;
            }
            e
        })
        .collect();
    let last = events.last().map_or(seen.start - 1, |e| e.kv.mod_revision);
    let want: Vec<Event> = truth
        .iter()
        .filter(|e| (seen.start..=last).contains(&e.kv.mod_revision))
        .cloned()
        .map(|mut e| {
            if !seen.prev_kv {
                e.prev_kv = None;
            }
            e
        })
        .collect();
    // Ordered, unique and reliable: exactly the events there were, in revision order.
    assert_eq!(events.len(), want.len(), "{name}: event count");
    for (i, (got, want)) in events.iter().zip(&want).enumerate() {
        assert_eq!(got, want, "{name}: event {i}");
    }
    // Atomic: a response holds whole revisions.
    let by_rev = |events: &[Event]| -> BTreeMap<i64, usize> {
        let mut counts = BTreeMap::new();
        for e in events {
            *counts.entry(e.kv.mod_revision).or_default() += 1;
        }
        counts
    };
    let all = by_rev(truth);
    for r in &seen.responses {
        assert!(!r.fragment, "{name}: no revision here needs fragments");
        for (rev, n) in by_rev(&r.events) {
            assert_eq!(all.get(&rev), Some(&n), "{name}: revision {rev} split");
        }
    }
    // Bookmarkable: a progress response for R comes after every event up to R.
    let mut before = 0;
    let mut checked = 0;
    for r in &seen.responses {
        if r.watch_id == -1 {
            let up_to = want
                .iter()
                .take_while(|e| e.kv.mod_revision <= r.header.revision)
                .count();
            // (Events past it may come first: from a member further on, before a resume
            // on one behind.)
            assert!(
                before >= up_to,
                "{name}: progress {} early",
                r.header.revision
            );
            checked += 1;
        }
        before += r.events.len();
    }
    eprintln!(
        "{name}: {} events from revision {} through {last}, {checked} progress responses checked",
        events.len(),
        seen.start
    );
}

#[test]
fn watch_guarantees_hold_on_every_member_through_leader_kill_partition_and_restart() {
    let _one = one_cluster_at_a_time();
    let mut c = Cluster::start(3);
    let all = [0, 1, 2];
    c.wait_leader(&all, Duration::from_secs(20));
    let endpoints = c.endpoints();
    let stop = Arc::new(AtomicBool::new(false));
    let target = Arc::new(AtomicI64::new(0));
    let writers = start_writers(3, &endpoints, &stop);
    std::thread::sleep(Duration::from_millis(500));
    // A watcher on each member (resuming on the others): from the first revision (caught up
    // from the tree), from now, and from now with previous key-values.
    let watchers: Vec<JoinHandle<Seen>> = (0..3)
        .map(|i| {
            let mut ends = endpoints.clone();
            ends.rotate_left(i);
            let (start, prev_kv) = [(1, false), (0, false), (0, true)][i];
            start_watcher(ends, start, prev_kv, &target)
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    // The leader killed, then back.
    let leader = c.wait_leader(&all, Duration::from_secs(20));
    c.kill(leader);
    let others: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
    c.wait_leader(&others, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(1));
    c.start_member(leader);
    // The leader cut off from the others for a while.
    let leader = c.wait_leader(&all, Duration::from_secs(20));
    c.proxy.isolate(c.members[leader].id);
    std::thread::sleep(Duration::from_secs(3));
    c.proxy.heal();
    // A follower restarted.
    let leader = c.wait_leader(&all, Duration::from_secs(20));
    let follower = (leader + 1) % 3;
    c.terminate(follower);
    std::thread::sleep(Duration::from_millis(500));
    c.start_member(follower);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let mut acked: Vec<Acked> = Vec::new();
    for w in writers {
        acked.extend(w.join().expect("writer"));
    }
    let revision = c.wait_converged(Duration::from_secs(30));
    target.store(revision, Ordering::Relaxed);
    // Every member has the same history of events.
    let truths: Vec<Vec<Event>> = endpoints.iter().map(|e| truth(e, revision)).collect();
    assert!(truths.windows(2).all(|w| w[0] == w[1]), "members differ");
    let truth = &truths[0];
    // Every acknowledged transaction is there: its two puts at its revision.
    let mut at: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    for e in truth {
        at.entry(e.kv.mod_revision)
            .or_default()
            .insert(String::from_utf8_lossy(&e.kv.key).into_owned());
    }
    for (rev, keys) in &acked {
        let want: BTreeSet<String> = keys.iter().cloned().collect();
        assert_eq!(at.get(rev), Some(&want), "acknowledged txn at {rev}");
    }
    assert!(
        acked.len() > 100,
        "only {} transactions acknowledged",
        acked.len()
    );
    for (i, w) in watchers.into_iter().enumerate() {
        let seen = w.join().expect("watcher");
        check_watcher(&format!("watcher {i}"), &seen, truth);
    }
}

/// Runs `f` while sampling the process's resident size every 20 ms; returns `f`'s result
/// and the largest size seen, in KiB.
fn with_peak_rss<T>(pid: u32, f: impl FnOnce() -> T) -> (T, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicI64::new(rss_kib(pid) as i64));
    let (s, p) = (stop.clone(), peak.clone());
    let sampler = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            p.fetch_max(rss_kib(pid) as i64, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let out = f();
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    peak.fetch_max(rss_kib(pid) as i64, Ordering::Relaxed);
    (out, peak.load(Ordering::Relaxed) as u64)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("VmRSS:"));
    line.and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Reads frames off a raw connection: (request id, watch response).
fn read_watch_frames(stream: &mut std::net::TcpStream, buf: &mut Vec<u8>) -> Vec<WatchResponse> {
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 1 << 20];
    let n = stream.read(&mut chunk).unwrap_or(0);
    buf.extend_from_slice(&chunk[..n]);
    while let Ok(Some((h, total))) = cairn::protocol::split_frame(buf, 1 << 30) {
        let mut payload = rkyv::util::AlignedVec::<16>::new();
        payload.extend_from_slice(&buf[cairn::protocol::HEADER_BYTES..total]);
        buf.drain(..total);
        if let Ok(ClientResponse::Watch(r)) = cairn::protocol::decode_response(&payload) {
            assert_eq!(h.request_id, 1);
            out.push(r);
        }
    }
    out
}

/// 1,500 puts of 100 KB under `big/`; returns the last revision. `fast` reads along.
fn put_big(client: &mut Client, fast: &mut WatchStream, value: &[u8], round: usize) -> i64 {
    let mut last_rev = 0;
    let mut fast_events = 0;
    for i in 0..1_500 {
        let put = PutRequest {
            key: format!("big/{round}-{i:05}").into_bytes(),
            value: value.to_vec(),
            ..PutRequest::default()
        };
        match client.request(&ClientRequest::Kv(Request::Put(put))) {
            Ok(ClientResponse::Kv(Response::Put(p))) => last_rev = p.header.revision,
            other => panic!("put {i}: {other:?}"),
        }
        while let Ok(Some(r)) = fast.next(Duration::from_millis(1)) {
            fast_events += r.events.len();
        }
    }
    // Meanwhile the other watcher of the member got every event.
    while fast_events < 1_500 {
        let r = fast.next(Duration::from_secs(5)).expect("fast");
        fast_events += r.expect("events").events.len();
    }
    last_rev
}

#[test]
fn a_watcher_that_does_not_read_holds_bounded_memory_and_then_catches_up() {
    let _one = one_cluster_at_a_time();
    let c = Cluster::start(1);
    let endpoint = c.endpoints()[0].clone();
    let pid = c.pid(0).expect("running");
    let range = WatchCreateRequest {
        key: b"big/".to_vec(),
        range_end: b"big0".to_vec(),
        ..WatchCreateRequest::default()
    };
    let mut fast = WatchStream::connect(vec![endpoint.clone()], CLIENT_TIMEOUT).expect("fast");
    fast.create(range.clone()).expect("created");
    let mut client = Client::new(vec![endpoint.clone()], Duration::from_secs(10));
    let value = vec![b'x'; 100_000];
    // 150 MB of writes bring the member's memory to what writing alone takes (the log
    // and tree pages held until a checkpoint). Its peak is the baseline: between
    // checkpoints and allocator purges the resident size swings by tens of MB, so a
    // single reading after the writes may land in a trough.
    let (first, before) = with_peak_rss(pid, || put_big(&mut client, &mut fast, &value, 0));
    // A watcher that sends its request and then does not read, through 150 MB more.
    let mut slow = std::net::TcpStream::connect(&endpoint).expect("connect");
    let create = WatchRequest::Create(WatchCreateRequest {
        start_revision: first + 1,
        ..range
    });
    slow.write_all(&encode_request(1, &ClientRequest::Watch(create)).expect("encode"))
        .expect("send");
    let (last_rev, peak) = with_peak_rss(pid, || put_big(&mut client, &mut fast, &value, 1));
    let grown = peak.saturating_sub(before);
    eprintln!("VmRSS KiB: {before} at most through 150 MB of writes, {peak} at most through 150 MB more with a watcher not reading them");
    // Unbounded, the unread events would take 150 MB; bounded, the 8 MiB watch queue and
    // the 4 MiB reply backlog.
    assert!(grown < 40 << 10, "VmRSS grew {grown} KiB");
    // Once it reads, the slow watcher gets every event once, in order, from the tree.
    let mut buf = Vec::new();
    let mut revs = Vec::new();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let deadline = Instant::now() + Duration::from_secs(60);
    while revs.last() != Some(&last_rev) {
        assert!(Instant::now() < deadline, "caught up to {:?}", revs.last());
        for r in read_watch_frames(&mut slow, &mut buf) {
            revs.extend(r.events.iter().map(|e| e.kv.mod_revision));
            assert!(r.events.iter().all(|e| e.kv.value == value));
        }
    }
    let want: Vec<i64> = (first + 1..=last_rev).collect();
    assert_eq!(revs, want);
}
