//! The lock and semaphore services against real `cairn serve` processes, under faults:
//! many clients through different members, the leader killed, a holder frozen past its
//! lease. A checker reads the history back: every protected write was made by the holder
//! of the lock at that revision, with a fencing revision that only grows; and at most
//! `limit` machines of a fleet reboot at once.

mod common;

use cairn::client::{keep_alive_loop, Client, ClientError, ObserveStream};
use cairn::lock::{LockRequest, LockResponse};
use cairn::mvcc::{
    Compare, CompareResult, CompareTarget, PutRequest, RangeRequest, Request, RequestOp, Response,
    SortOrder, SortTarget, TargetUnion, TxnRequest,
};
use cairn::protocol::{encode_request, ClientRequest, ClientResponse, ErrorCode};
use common::cluster::{poll, Cluster};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

fn one_cluster_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A lease kept alive by a thread until the session is dropped or frozen (`halt`: a
/// frozen client sends no keepalives).
struct Session {
    lease: i64,
    halt: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Session {
    fn new(endpoints: &[String], ttl: i64) -> Session {
        let mut client = Client::new(endpoints.to_vec(), CLIENT_TIMEOUT);
        let lease = loop {
            match client.lease_grant(ttl, 0) {
                Ok(g) => break g.id,
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let halt = Arc::new(AtomicBool::new(false));
        let (h, ends) = (halt.clone(), endpoints.to_vec());
        let thread = std::thread::spawn(move || {
            keep_alive_loop(ends, CLIENT_TIMEOUT, lease, &h, |_| {});
        });
        Session {
            lease,
            halt,
            thread: Some(thread),
        }
    }

    fn freeze(&self) {
        self.halt.store(true, Ordering::Relaxed);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.halt.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock(client: &mut Client, req: LockRequest) -> Result<LockResponse, ClientError> {
    match client.request_within(&ClientRequest::Lock(req), Duration::from_secs(30))? {
        ClientResponse::Lock(r) => Ok(r),
        other => panic!("lock answered {other:?}"),
    }
}

/// A write allowed only while `key` still has create revision `fence`: the holder's
/// protected write. Its revision if it was made.
fn protected_write(client: &mut Client, key: &[u8], fence: i64, value: String) -> Option<i64> {
    let txn = TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal,
            target: CompareTarget::Create,
            key: key.to_vec(),
            target_union: Some(TargetUnion::CreateRevision(fence)),
            range_end: Vec::new(),
        }],
        success: vec![RequestOp::Put(PutRequest {
            key: b"protected".to_vec(),
            value: value.into_bytes(),
            ..PutRequest::default()
        })],
        failure: Vec::new(),
    };
    match client.request(&ClientRequest::Kv(Request::Txn(txn))) {
        Ok(ClientResponse::Kv(Response::Txn(t))) if t.succeeded => Some(t.header.revision),
        _ => None,
    }
}

/// The first-created key under `prefix` at revision `rev`: the holder then.
fn holder_at(client: &mut Client, prefix: &[u8], rev: i64) -> Option<(Vec<u8>, i64)> {
    let r = RangeRequest {
        key: prefix.to_vec(),
        range_end: cairn::cli::prefix_range_end(prefix),
        revision: rev,
        limit: 1,
        sort_order: SortOrder::Ascend,
        sort_target: SortTarget::Create,
        ..RangeRequest::default()
    };
    match read(client, r) {
        Ok(ClientResponse::Kv(Response::Range(mut r))) => {
            r.kvs.pop().map(|kv| (kv.key, kv.create_revision))
        }
        other => panic!("range at {rev}: {other:?}"),
    }
}

/// Sends the read `r`, again while the member answers that it knows no leader (a member
/// just restarted, before it hears from the leader), as etcd's client retries a read
/// answered Unavailable; for at most 10 s.
fn read(client: &mut Client, r: RangeRequest) -> Result<ClientResponse, ClientError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.request(&ClientRequest::Kv(Request::Range(r.clone()))) {
            Err(ClientError::Server {
                code: ErrorCode::Unavailable,
                ..
            }) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            other => return other,
        }
    }
}

#[test]
fn a_lock_has_one_holder_and_fencing_revisions_grow_through_leader_kills_and_a_frozen_holder() {
    let _one = one_cluster_at_a_time();
    let mut c = Cluster::start(3);
    let all = [0, 1, 2];
    c.wait_leader(&all, Duration::from_secs(20));
    let endpoints = c.endpoints();
    let stop = Arc::new(AtomicBool::new(false));
    let freeze = Arc::new(AtomicU64::new(u64::MAX));
    // (revision of the write, fence, client) of every protected write made.
    let writes = Arc::new(Mutex::new(Vec::<(i64, i64, usize, Vec<u8>)>::new()));
    let clients: Vec<_> = (0..6)
        .map(|i| {
            let mut ends = endpoints.clone();
            ends.rotate_left(i % 3);
            let (stop, freeze, writes) = (stop.clone(), freeze.clone(), writes.clone());
            std::thread::spawn(move || {
                let session = Session::new(&ends, 2);
                let mut client = Client::new(ends.clone(), CLIENT_TIMEOUT);
                let mut held = 0;
                while !stop.load(Ordering::Relaxed) {
                    let req = LockRequest::Lock {
                        name: b"L".to_vec(),
                        lease: session.lease,
                    };
                    let Ok(LockResponse::Lock { key, revision, .. }) = lock(&mut client, req)
                    else {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    };
                    held += 1;
                    if freeze.load(Ordering::Relaxed) == i as u64 {
                        // Frozen while holding, past its lease's TTL: the others go on;
                        // thawed, its write with the old fence must be refused.
                        session.freeze();
                        std::thread::sleep(Duration::from_secs(5));
                        freeze.store(u64::MAX, Ordering::Relaxed);
                        let late =
                            protected_write(&mut client, &key, revision, format!("{i}-late"));
                        assert_eq!(late, None, "a write with an expired lock's fence");
                        return held;
                    }
                    for n in 0..3 {
                        if let Some(at) =
                            protected_write(&mut client, &key, revision, format!("{i}-{n}"))
                        {
                            writes.lock().unwrap().push((at, revision, i, key.clone()));
                        }
                    }
                    let _ = lock(&mut client, LockRequest::Unlock { key });
                }
                drop(session);
                held
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..2 {
        let leader = c.wait_leader(&all, Duration::from_secs(20));
        c.kill(leader);
        let others: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
        c.wait_leader(&others, Duration::from_secs(20));
        std::thread::sleep(Duration::from_secs(2));
        c.start_member(leader);
        std::thread::sleep(Duration::from_secs(1));
    }
    freeze.store(0, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(30);
    while freeze.load(Ordering::Relaxed) != u64::MAX {
        assert!(Instant::now() < deadline, "the frozen holder never thawed");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let held: u64 = clients.into_iter().map(|t| t.join().expect("client")).sum();
    // The checker: each protected write was made while its writer's key was the first
    // under L/ (the holder) the revision before; fences never go back, and a new fence
    // is a new holder.
    let mut writes = writes.lock().unwrap().clone();
    writes.sort();
    assert!(writes.len() > 20, "only {} protected writes", writes.len());
    let mut reader = Client::new(endpoints.clone(), CLIENT_TIMEOUT);
    let mut last_fence = 0;
    for (at, fence, client, key) in &writes {
        assert!(*fence >= last_fence, "fence {fence} after {last_fence}");
        last_fence = *fence;
        let holder = holder_at(&mut reader, b"L/", at - 1);
        assert_eq!(
            holder,
            Some((key.clone(), *fence)),
            "client {client}'s write at {at} while another held"
        );
    }
    eprintln!("{held} holds, {} protected writes checked", writes.len());
}

/// The first `n` keys created under `prefix` at revision `rev`.
fn first_at(client: &mut Client, prefix: &[u8], rev: i64, n: i64) -> Vec<Vec<u8>> {
    let r = RangeRequest {
        key: prefix.to_vec(),
        range_end: cairn::cli::prefix_range_end(prefix),
        revision: rev,
        limit: n,
        sort_order: SortOrder::Ascend,
        sort_target: SortTarget::Create,
        ..RangeRequest::default()
    };
    match read(client, r) {
        Ok(ClientResponse::Kv(Response::Range(r))) => r.kvs.into_iter().map(|kv| kv.key).collect(),
        other => panic!("range at {rev}: {other:?}"),
    }
}

/// The fleet case: 10 machines may reboot only 2 at a time (a semaphore of limit 2),
/// while the leader is killed twice: never more than 2 reboot at once, and every machine
/// reboots.
#[test]
fn ten_machines_reboot_two_at_a_time_through_two_leader_kills() {
    let _one = one_cluster_at_a_time();
    let mut c = Cluster::start(3);
    let all = [0, 1, 2];
    c.wait_leader(&all, Duration::from_secs(20));
    let endpoints = c.endpoints();
    let rebooting = Arc::new(AtomicU64::new(0));
    let most = Arc::new(AtomicU64::new(0));
    let machines: Vec<_> = (0..10)
        .map(|m| {
            let mut ends = endpoints.clone();
            ends.rotate_left(m % 3);
            let (rebooting, most) = (rebooting.clone(), most.clone());
            std::thread::spawn(move || {
                let session = Session::new(&ends, 5);
                let mut client = Client::new(ends.clone(), CLIENT_TIMEOUT);
                let deadline = Instant::now() + Duration::from_secs(90);
                loop {
                    assert!(Instant::now() < deadline, "machine {m} never rebooted");
                    let req = LockRequest::Acquire {
                        name: b"reboot".to_vec(),
                        lease: session.lease,
                        limit: 2,
                    };
                    let Ok(LockResponse::Acquire { key, header, .. }) = lock(&mut client, req)
                    else {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    };
                    let now = rebooting.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    // The reboot.
                    std::thread::sleep(Duration::from_millis(300 + 50 * m as u64));
                    rebooting.fetch_sub(1, Ordering::SeqCst);
                    while lock(&mut client, LockRequest::Release { key: key.clone() }).is_err() {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    return (key, header.revision);
                }
            })
        })
        .collect();
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(700));
        let leader = c.wait_leader(&all, Duration::from_secs(20));
        c.kill(leader);
        let others: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
        c.wait_leader(&others, Duration::from_secs(20));
        c.start_member(leader);
    }
    let held: Vec<(Vec<u8>, i64)> = machines
        .into_iter()
        .map(|t| t.join().expect("machine"))
        .collect();
    assert!(
        most.load(Ordering::SeqCst) <= 2,
        "{} rebooted at once",
        most.load(Ordering::SeqCst)
    );
    // The store agrees: at the revision each machine was told it may reboot, its key was
    // among the first two under reboot/.
    let mut reader = Client::new(endpoints, CLIENT_TIMEOUT);
    for (key, rev) in &held {
        let first = first_at(&mut reader, b"reboot/", *rev, 2);
        assert!(first.contains(key), "{key:?} at {rev}: holders {first:?}");
    }
    assert_eq!(held.len(), 10);
}

/// The keys under `prefix` now.
fn keys_under(client: &mut Client, prefix: &[u8]) -> Vec<Vec<u8>> {
    let r = RangeRequest {
        key: prefix.to_vec(),
        range_end: cairn::cli::prefix_range_end(prefix),
        keys_only: true,
        ..RangeRequest::default()
    };
    match read(client, r) {
        Ok(ClientResponse::Kv(Response::Range(r))) => r.kvs.into_iter().map(|kv| kv.key).collect(),
        other => panic!("range of {prefix:?}: {other:?}"),
    }
}

/// Sends `req` until a member answers it: a request in flight on the member killed fails
/// with the connection, and the client does not send it again by itself (it may have been
/// applied). Campaigning again with the same lease, proclaiming the same value again or
/// resigning again leaves the election as the first one did.
fn until_answered(client: &mut Client, req: &LockRequest) -> LockResponse {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match lock(client, req.clone()) {
            Ok(r) => return r,
            Err(e) => {
                assert!(Instant::now() < deadline, "{req:?}: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[test]
fn an_election_is_observed_through_every_member_across_a_leader_kill() {
    let _one = one_cluster_at_a_time();
    let mut c = Cluster::start(3);
    let all = [0, 1, 2];
    let leader = c.wait_leader(&all, Duration::from_secs(20));
    let endpoints = c.endpoints();
    // One observer through each member (then the others), before anyone campaigns.
    let stop = Arc::new(AtomicBool::new(false));
    let observers: Vec<_> = (0..3)
        .map(|i| {
            let mut ends = endpoints.clone();
            ends.rotate_left(i);
            let mut stream = ObserveStream::connect(ends, CLIENT_TIMEOUT, b"e").expect("observe");
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut seen: Vec<(String, String)> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match stream.next(Duration::from_millis(200)) {
                        Ok(Some(kv)) => {
                            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                            let now = (text(&kv.key), text(&kv.value));
                            // A proclamation sent again after a failure is the same state.
                            if seen.last() != Some(&now) {
                                seen.push(now);
                            }
                        }
                        Ok(None) => {}
                        Err(e) => panic!("observer {i}: {e}"),
                    }
                }
                seen
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut client = Client::new(endpoints.clone(), CLIENT_TIMEOUT);
    let (one, two) = (Session::new(&endpoints, 60), Session::new(&endpoints, 60));
    let campaign = |client: &mut Client, lease: i64, value: &str| {
        let req = LockRequest::Campaign {
            name: b"e".to_vec(),
            lease,
            value: value.into(),
        };
        match until_answered(client, &req) {
            LockResponse::Campaign { leader, .. } => leader,
            other => panic!("campaign answered {other:?}"),
        }
    };
    let proclaim = |client: &mut Client, leader: &cairn::lock::LeaderKey, value: &str| {
        let req = LockRequest::Proclaim {
            leader: leader.clone(),
            value: value.into(),
        };
        until_answered(client, &req);
    };
    let first = campaign(&mut client, one.lease, "a1");
    proclaim(&mut client, &first, "a2");
    // The second contender waits behind the first.
    let second = {
        let (ends, lease) = (endpoints.clone(), two.lease);
        std::thread::spawn(move || {
            let mut client = Client::new(ends, CLIENT_TIMEOUT);
            let req = LockRequest::Campaign {
                name: b"e".to_vec(),
                lease,
                value: b"b1".to_vec(),
            };
            match until_answered(&mut client, &req) {
                LockResponse::Campaign { leader, .. } => leader,
                other => panic!("campaign answered {other:?}"),
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    c.kill(leader);
    let others: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
    c.wait_leader(&others, Duration::from_secs(20));
    proclaim(&mut client, &first, "a3");
    until_answered(
        &mut client,
        &LockRequest::Resign {
            leader: first.clone(),
        },
    );
    let second = second.join().expect("second contender");
    proclaim(&mut client, &second, "b2");
    let key = |l: &cairn::lock::LeaderKey| String::from_utf8_lossy(&l.key).into_owned();
    let want: Vec<(String, String)> = [
        (key(&first), "a1"),
        (key(&first), "a2"),
        (key(&first), "a3"),
        (key(&second), "b1"),
        (key(&second), "b2"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_string()))
    .collect();
    // Until every observer has the last state (or the time is up, and the checks fail).
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for (i, o) in observers.into_iter().enumerate() {
        let seen = o.join().expect("observer");
        if i == leader {
            // It observed again through another member: it may have missed states that
            // came and went meanwhile, but never sees one out of order or twice, and ends
            // on the last.
            let mut rest = want.iter();
            assert!(
                seen.iter().all(|s| rest.any(|w| w == s)),
                "observer {i} through the killed member saw {seen:?}, want a subsequence of {want:?}"
            );
            assert_eq!(seen.last(), want.last(), "observer {i}");
        } else {
            assert_eq!(seen, want, "observer {i}");
        }
    }
}

#[test]
fn a_waiter_that_goes_away_gives_up_its_place_in_line() {
    let _one = one_cluster_at_a_time();
    let c = Cluster::start(1);
    let endpoints = c.endpoints();
    let mut client = Client::new(endpoints.clone(), CLIENT_TIMEOUT);
    let sessions: Vec<Session> = (0..3).map(|_| Session::new(&endpoints, 60)).collect();
    let lock_req = |s: &Session| LockRequest::Lock {
        name: b"q".to_vec(),
        lease: s.lease,
    };
    let held = match lock(&mut client, lock_req(&sessions[0])).expect("lock") {
        LockResponse::Lock { key, .. } => key,
        other => panic!("lock answered {other:?}"),
    };
    // The second waits on a connection of its own, then goes away (its process dies, say;
    // its lease lives on for a minute).
    let mut gone = std::net::TcpStream::connect(&endpoints[0]).expect("connect");
    let frame = encode_request(1, &ClientRequest::Lock(lock_req(&sessions[1]))).expect("encode");
    gone.write_all(&frame).expect("send");
    poll(
        Duration::from_secs(10),
        "the second contender's key",
        || (keys_under(&mut client, b"q/").len() == 2).then_some(()),
    );
    // The third waits behind it.
    let third = {
        let (ends, req) = (endpoints.clone(), lock_req(&sessions[2]));
        std::thread::spawn(move || {
            let mut client = Client::new(ends, CLIENT_TIMEOUT);
            lock(&mut client, req).expect("third lock")
        })
    };
    poll(Duration::from_secs(10), "the third contender's key", || {
        (keys_under(&mut client, b"q/").len() == 3).then_some(())
    });
    drop(gone);
    // Its key goes at once, not when its lease ends.
    poll(
        Duration::from_secs(5),
        "the departed contender's key to go",
        || (keys_under(&mut client, b"q/").len() == 2).then_some(()),
    );
    let released = Instant::now();
    lock(&mut client, LockRequest::Unlock { key: held }).expect("unlock");
    let LockResponse::Lock { key, .. } = third.join().expect("third") else {
        panic!("the third contender was not given the lock");
    };
    assert!(
        released.elapsed() < Duration::from_secs(5),
        "the third contender held {:?} after the release",
        released.elapsed()
    );
    assert_eq!(keys_under(&mut client, b"q/"), vec![key]);
}
