//! Clusters of real `cairn serve` processes on loopback under faults: a leader killed,
//! stopped or cut off in a minority, members restarted one by one under load, and a member
//! of another cluster knocking. Peer links go through a proxy the test controls
//! (`common/proxy.rs`); each test records every acknowledged write (and every write whose
//! outcome is unknown) and checks them on every member once the cluster converges (same
//! applied index, same `endpoint hashkv`), and the rolling-restart test checks a history of
//! puts and linearizable reads with the linearizability checker of the simulator.

#[path = "sim/checker.rs"]
mod checker;
mod common;

use cairn::client::{Client, ClientError};
use cairn::mvcc::{PutRequest, RangeRequest, Request, Response};
use cairn::protocol::{ClientRequest, ClientResponse, ErrorCode, MemberRequest, MemberResponse};
use common::cluster::{poll, status_of, Cluster, Options};
use common::free_addr;
use common::proxy::Proxy;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The client timeout of the tests' writers and readers.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// The bound on an election after the leader dies, at the default timeouts (heartbeat
/// 100 ms, election 1000 ms: raft's randomized timeout is under 2 s, plus a pre-vote).
const ELECTION_BOUND: Duration = Duration::from_secs(3);
const CONVERGE: Duration = Duration::from_secs(30);
/// A client's pause after a failed request (no leader yet, a member gone).
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// One cluster at a time: the tests measure elections on a machine of few cores, and two
/// clusters under load at once would measure each other.
fn one_cluster_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn put_request(key: &str, value: &str) -> ClientRequest {
    ClientRequest::Kv(Request::Put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    }))
}

/// A put's outcome: Ok, or the error (its outcome unknown, unless the request was invalid,
/// which fails the test: the tests only send valid puts).
fn put(client: &mut Client, key: &str, value: &str) -> Result<(), ClientError> {
    match client.request(&put_request(key, value)) {
        Ok(ClientResponse::Kv(Response::Put(_))) => Ok(()),
        Ok(other) => panic!("put {key}: answered {other:?}"),
        Err(ClientError::Server {
            code: code @ (ErrorCode::InvalidRequest | ErrorCode::Malformed | ErrorCode::NoSpace),
            message,
        }) => panic!("put {key}: refused as {code:?}: {message}"),
        Err(e) => Err(e),
    }
}

/// The first key after every key starting with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("a prefix") += 1;
    end
}

/// A linearizable read of every key starting with `prefix`: (key, value, mod revision).
fn read_prefix(client: &mut Client, prefix: &str) -> Result<Vec<(String, String, i64)>, String> {
    let range = RangeRequest {
        key: prefix.as_bytes().to_vec(),
        range_end: prefix_end(prefix),
        ..Default::default()
    };
    match client.request(&ClientRequest::Kv(Request::Range(range))) {
        Ok(ClientResponse::Kv(Response::Range(r))) => Ok(r
            .kvs
            .into_iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    String::from_utf8_lossy(&kv.value).into_owned(),
                    kv.mod_revision,
                )
            })
            .collect()),
        Ok(other) => Err(format!("answered {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// A linearizable get of one key: its value, None if absent.
fn get(client: &mut Client, key: &str) -> Result<Option<String>, String> {
    let range = RangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    };
    match client.request(&ClientRequest::Kv(Request::Range(range))) {
        Ok(ClientResponse::Kv(Response::Range(r))) => Ok(r
            .kvs
            .first()
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())),
        Ok(other) => Err(format!("answered {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Whether `cond` holds within `limit` (polled every 20 ms).
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Puts whose outcome the client knows (acknowledged) and does not (an error, a timeout,
/// a lost connection: applied or not). Keys are written once each.
#[derive(Default)]
struct Writes {
    acked: Vec<(String, String)>,
    unknown: Vec<(String, String)>,
}

impl Writes {
    fn record(&mut self, key: &str, value: &str, outcome: &Result<(), ClientError>) {
        let entry = (key.to_string(), value.to_string());
        match outcome {
            Ok(()) => self.acked.push(entry),
            Err(_) => self.unknown.push(entry),
        }
    }

    fn extend(&mut self, other: Writes) {
        self.acked.extend(other.acked);
        self.unknown.extend(other.unknown);
    }
}

/// Threads putting unique keys through clients that know every endpoint.
struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    threads: Vec<JoinHandle<Writes>>,
}

impl Writers {
    fn start(n: usize, endpoints: &[String], prefix: &str, pause: Duration) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let threads = (0..n)
            .map(|w| {
                // Each writer starts on another member.
                let mut endpoints = endpoints.to_vec();
                let first = w % endpoints.len();
                endpoints.rotate_left(first);
                let (stop, acked, prefix) = (stop.clone(), acked.clone(), prefix.to_string());
                std::thread::spawn(move || {
                    let mut client = Client::new(endpoints, CLIENT_TIMEOUT);
                    let mut writes = Writes::default();
                    let mut seq = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("{prefix}{w:02}-{seq:06}");
                        let value = format!("value-{w}-{seq}");
                        seq += 1;
                        let outcome = put(&mut client, &key, &value);
                        writes.record(&key, &value, &outcome);
                        match outcome {
                            Ok(()) => {
                                acked.fetch_add(1, Ordering::Relaxed);
                                std::thread::sleep(pause);
                            }
                            Err(_) => std::thread::sleep(RETRY_PAUSE),
                        }
                    }
                    writes
                })
            })
            .collect();
        Writers {
            stop,
            acked,
            threads,
        }
    }

    fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits until `more` writes beyond the current count are acknowledged.
    fn wait_for_more(&self, more: u64, limit: Duration) {
        let target = self.acked() + more;
        poll(limit, &format!("{more} more acknowledged writes"), || {
            (self.acked() >= target).then_some(())
        });
    }

    fn stop(mut self) -> Writes {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Writes::default();
        for t in std::mem::take(&mut self.threads) {
            all.extend(t.join().expect("writer thread"));
        }
        all
    }
}

impl Drop for Writers {
    /// A failed test's writers stop too (they are not joined: the test is unwinding).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Raises a stop flag when dropped, also when a test fails.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Every running member serves, through a linearizable read of the prefix, every
/// acknowledged write with its value, and nothing that was not written (a key of unknown
/// outcome may be there or not); each key at a revision of its own. `never`: writes that
/// must not be there.
fn check_writes(c: &Cluster, writes: &Writes, never: &[(String, String)], prefix: &str) {
    let acked: HashMap<&str, &str> = writes
        .acked
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let unknown: HashMap<&str, &str> = writes
        .unknown
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert!(!acked.is_empty(), "no write was acknowledged");
    for (i, m) in c.members.iter().enumerate() {
        if !c.is_running(i) {
            continue;
        }
        let mut client = Client::new(vec![m.client_addr.clone()], Duration::from_secs(5));
        let kvs = poll(
            Duration::from_secs(20),
            &format!("a linearizable read of {prefix} through member {i}"),
            || read_prefix(&mut client, prefix).ok(),
        );
        let stored: HashMap<&str, (&str, i64)> = kvs
            .iter()
            .map(|(k, v, r)| (k.as_str(), (v.as_str(), *r)))
            .collect();
        let mut problems = Vec::new();
        for (k, v) in &acked {
            match stored.get(k) {
                Some((sv, _)) if sv == v => {}
                Some((sv, _)) => problems.push(format!("{k}: acknowledged {v:?}, read {sv:?}")),
                None => problems.push(format!("{k}: acknowledged {v:?}, missing")),
            }
        }
        for (k, (v, _)) in &stored {
            if acked.get(k) != Some(v) && unknown.get(k) != Some(v) {
                problems.push(format!("{k}: {v:?} was never written"));
            }
        }
        for (k, v) in never {
            if stored.contains_key(k.as_str()) {
                problems.push(format!("{k}: {v:?} was refused, yet it is there"));
            }
        }
        let mut revisions: Vec<i64> = stored.values().map(|(_, r)| *r).collect();
        revisions.sort_unstable();
        revisions.dedup();
        if revisions.len() != stored.len() {
            problems.push("two keys at one revision".into());
        }
        problems.sort();
        assert!(
            problems.is_empty(),
            "member {i} ({}): {} problems among {} acknowledged and {} unknown writes, the first: {:#?}",
            m.client_addr,
            problems.len(),
            acked.len(),
            unknown.len(),
            &problems[..problems.len().min(20)]
        );
    }
    eprintln!(
        "{prefix}: {} acknowledged writes (and {} of unknown outcome) checked on every member",
        acked.len(),
        unknown.len()
    );
}

/// Waits for the cluster to converge; then every member must have one hash at one
/// revision.
fn converge_and_compare_hashes(c: &Cluster) {
    let rev = c.wait_converged(CONVERGE);
    let hashes = c.hashkv(rev);
    assert!(
        hashes.iter().all(|(_, h)| *h == hashes[0].1),
        "members differ at revision {rev}: {hashes:?}"
    );
}

#[test]
fn leader_sigkill_under_load() {
    let _one = one_cluster_at_a_time();
    let mut c = Cluster::start(3);
    let all = [0, 1, 2];
    c.wait_leader(&all, Duration::from_secs(20));
    let writers = Writers::start(4, &c.endpoints(), "a/", Duration::ZERO);
    let history = History::start(2, &c.endpoints());
    // Three times: a leader killed under load, the others elect, the old one comes back.
    for _ in 0..3 {
        let old = c.wait_leader(&all, Duration::from_secs(20));
        writers.wait_for_more(100, Duration::from_secs(20));
        let term = c.status(old).map_or(0, |s| s.raft_term);
        c.kill(old);
        let killed = Instant::now();
        let survivors: Vec<usize> = all.iter().copied().filter(|&i| i != old).collect();
        let new = c.wait_leader(&survivors, Duration::from_secs(20));
        let election = killed.elapsed();
        let new_term = c.status(new).map_or(0, |s| s.raft_term);
        eprintln!(
            "member {new} leads {election:?} after the leader (member {old}) was killed \
             (term {term} -> {new_term})"
        );
        assert!(
            election < ELECTION_BOUND,
            "a new leader after {election:?} (bound {ELECTION_BOUND:?})"
        );
        // The survivors take writes for a second; then the old leader comes back and
        // catches up under load.
        writers.wait_for_more(50, Duration::from_secs(10));
        std::thread::sleep(Duration::from_secs(1));
        c.start_member(old);
        let target = c
            .status(new)
            .expect("the leader answers")
            .raft_applied_index;
        poll(CONVERGE, "the old leader catches up", || {
            c.status(old)
                .filter(|s| s.raft_applied_index >= target && s.leader != 0)
        });
    }
    let writes = writers.stop();
    history.stop_and_check();
    converge_and_compare_hashes(&c);
    check_writes(&c, &writes, &[], "a/");
}

/// A follower cut off (blackholed both ways) while the others write far past what they keep
/// in their logs is sent a snapshot once healed: it catches up by installing the leader's
/// tree file, and then serves every acknowledged write.
#[test]
fn a_blackholed_follower_catches_up_by_snapshot() {
    let _one = one_cluster_at_a_time();
    // Checkpoints more often than the entries kept: the follower's first checkpoint after
    // installing a snapshot is then within those entries of it (which once stopped the
    // member).
    let options = Options::snapshots(60, 100);
    let c = Cluster::start_with(3, options);
    let all = [0, 1, 2];
    let leader = c.wait_leader(&all, Duration::from_secs(20));
    let behind = (leader + 1) % 3;
    let others: Vec<u64> = all
        .iter()
        .filter(|&&i| i != behind)
        .map(|&i| c.members[i].id)
        .collect();
    c.proxy.partition(&[c.members[behind].id], &others);
    let endpoints: Vec<String> = all
        .iter()
        .filter(|&&i| i != behind)
        .map(|&i| c.members[i].client_addr.clone())
        .collect();
    let writers = Writers::start(4, &endpoints, "s/", Duration::ZERO);
    // Well past a checkpoint and the entries kept behind it.
    writers.wait_for_more(1_500, Duration::from_secs(60));
    let lagging = c.status(behind).map_or(0, |s| s.raft_applied_index);
    c.proxy.heal();
    writers.wait_for_more(200, Duration::from_secs(30));
    let writes = writers.stop();
    let target = c
        .status(c.wait_leader(&all, Duration::from_secs(20)))
        .expect("the leader answers")
        .raft_applied_index;
    poll(CONVERGE, "the cut-off follower catches up", || {
        c.status(behind).filter(|s| s.raft_applied_index >= target)
    });
    let log = c.log(behind);
    assert!(
        log.contains("installed a snapshot from the leader"),
        "member {behind} (applied {lagging} when healed) caught up without a snapshot:\n{log}"
    );
    converge_and_compare_hashes(&c);
    check_writes(&c, &writes, &[], "s/");
}

#[test]
fn sigstop_of_the_leader() {
    let _one = one_cluster_at_a_time();
    let c = Cluster::start(3);
    let old = c.wait_leader(&[0, 1, 2], Duration::from_secs(20));
    let old_id = c.members[old].id;
    let writers = Writers::start(1, &c.endpoints(), "b/", Duration::from_millis(20));
    let history = History::start(2, &c.endpoints());
    writers.wait_for_more(20, Duration::from_secs(20));
    c.pause(old);
    let stopped = Instant::now();
    let others: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let new = c.wait_leader(&others, Duration::from_secs(20));
    eprintln!(
        "member {new} leads {:?} after the leader (member {old}) was stopped",
        stopped.elapsed()
    );
    // A write the stopped leader cannot know of...
    let mut through_new = Client::new(vec![c.members[new].client_addr.clone()], CLIENT_TIMEOUT);
    let mut probe = Writes::default();
    poll(
        Duration::from_secs(10),
        "a put through the new leader",
        || {
            let outcome = put(&mut through_new, "b-probe", "written-while-stopped");
            probe.record("b-probe", "written-while-stopped", &outcome);
            outcome.ok()
        },
    );
    // ...and a linearizable read of it sent to the stopped leader (the kernel takes it):
    // the old leader sees it the moment it wakes, before it hears of the new term. It
    // must fail or see the write, never answer from its old state.
    let old_addr = c.members[old].client_addr.clone();
    let read = std::thread::spawn(move || {
        let mut client = Client::new(vec![old_addr], Duration::from_secs(5));
        get(&mut client, "b-probe")
    });
    // The fault lasts about 3 s (and the read is sent by then).
    std::thread::sleep(
        Duration::from_secs(3)
            .saturating_sub(stopped.elapsed())
            .max(Duration::from_millis(300)),
    );
    c.resume(old);
    match read.join().expect("reader thread") {
        Ok(Some(v)) => assert_eq!(v, "written-while-stopped"),
        Ok(None) => panic!("the old leader answered a linearizable read without a newer write"),
        Err(e) => eprintln!("the old leader refused the read it took while stopped: {e}"),
    }
    poll(Duration::from_secs(10), "the old leader steps down", || {
        c.status(old)
            .filter(|s| s.leader != old_id && s.leader != 0)
    });
    writers.wait_for_more(20, Duration::from_secs(10));
    let mut writes = writers.stop();
    writes.extend(probe);
    history.stop_and_check();
    converge_and_compare_hashes(&c);
    check_writes(&c, &writes, &[], "b");
}

/// What a minority member answers, tried at once through each member of `minority` in
/// parallel: puts of fresh keys and linearizable gets of `probe`. Returns the puts tried.
fn through_the_minority(
    c: &Cluster,
    minority: &[usize],
    round: &str,
    attempt: usize,
    probe: &str,
) -> Vec<(String, String)> {
    let threads: Vec<_> = minority
        .iter()
        .map(|&i| {
            let addr = c.members[i].client_addr.clone();
            let key = format!("c/{round}-minority-{attempt}-{i}");
            let probe = probe.to_string();
            std::thread::spawn(move || {
                let put_thread = {
                    let (addr, key) = (addr.clone(), key.clone());
                    std::thread::spawn(move || {
                        put(
                            &mut Client::new(vec![addr], CLIENT_TIMEOUT),
                            &key,
                            "minority",
                        )
                    })
                };
                let read = get(&mut Client::new(vec![addr], CLIENT_TIMEOUT), &probe);
                let put = put_thread.join().expect("put thread");
                (i, key, put, read)
            })
        })
        .collect();
    let mut tried = Vec::new();
    for t in threads {
        let (i, key, put, read) = t.join().expect("minority thread");
        assert!(
            put.is_err(),
            "{round}: a put through member {i} of the minority succeeded"
        );
        assert!(
            read.is_err(),
            "{round}: a linearizable read through member {i} of the minority answered {read:?}"
        );
        eprintln!(
            "{round}: through member {i} of the minority: put {}; read {}",
            put.err().map_or_else(String::new, |e| e.to_string()),
            read.err().unwrap_or_default()
        );
        tried.push((key, "minority".to_string()));
    }
    tried
}

#[test]
fn minority_partition_of_five() {
    let _one = one_cluster_at_a_time();
    let c = Cluster::start(5);
    let all: Vec<usize> = (0..5).collect();
    let mut writes = Writes::default();
    let mut never = Vec::new();
    for round in ["leader-in-minority", "leader-in-majority"] {
        let leader = c.wait_leader(&all, Duration::from_secs(20));
        let others: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
        let minority: Vec<usize> = if round == "leader-in-minority" {
            vec![leader, others[0]]
        } else {
            others[..2].to_vec()
        };
        let majority: Vec<usize> = all
            .iter()
            .copied()
            .filter(|i| !minority.contains(i))
            .collect();
        let mut everyone = Client::new(c.endpoints(), CLIENT_TIMEOUT);
        let probe = format!("c/{round}-probe");
        let outcome = put(&mut everyone, &probe, "before");
        writes.record(&probe, "before", &outcome);
        outcome.expect("a put before the partition");
        let ids = |of: &[usize]| of.iter().map(|&i| c.members[i].id).collect::<Vec<_>>();
        c.proxy.partition(&ids(&minority), &ids(&majority));
        eprintln!("{round}: partitioned {minority:?} from {majority:?}");
        // At once, while a minority leader may still believe it leads...
        let tried = through_the_minority(&c, &minority, round, 0, &probe);
        // ...the minority cannot commit. Its leader's entries never reach the majority (the
        // messages it sent are refused there once the majority elected a leader of a later
        // term), so they can never be committed. A minority follower may have forwarded a
        // put to a majority leader, delayed in the proxy until healed: its outcome is
        // unknown.
        if round == "leader-in-minority" {
            never.extend(tried);
        } else {
            writes.unknown.extend(tried);
        }
        // The majority goes on (after electing a leader of its own if needed).
        let endpoints: Vec<String> = majority
            .iter()
            .map(|&i| c.members[i].client_addr.clone())
            .collect();
        let mut through_majority = Client::new(endpoints, CLIENT_TIMEOUT);
        poll(
            Duration::from_secs(20),
            "a put through the majority",
            || {
                let outcome = put(&mut through_majority, &probe, "during");
                writes.record(&probe, "during", &outcome);
                outcome.ok()
            },
        );
        for n in 0..20 {
            let key = format!("c/{round}-majority-{n:02}");
            let outcome = put(&mut through_majority, &key, "majority");
            writes.record(&key, "majority", &outcome);
            outcome.unwrap_or_else(|e| panic!("{round}: a put through the majority: {e}"));
        }
        for &i in &majority {
            let mut client = Client::new(vec![c.members[i].client_addr.clone()], CLIENT_TIMEOUT);
            assert_eq!(
                get(&mut client, &probe),
                Ok(Some("during".into())),
                "member {i}"
            );
            let last = format!("c/{round}-majority-19");
            assert_eq!(
                get(&mut client, &last),
                Ok(Some("majority".into())),
                "member {i}"
            );
        }
        // The minority still cannot serve: a read of the probe would be stale now.
        let tried = through_the_minority(&c, &minority, round, 1, &probe);
        if round == "leader-in-minority" {
            never.extend(tried);
        } else {
            writes.unknown.extend(tried);
        }
        c.proxy.heal();
        converge_and_compare_hashes(&c);
    }
    check_writes(&c, &writes, &never, "c/");
}

/// Clients recording a history of puts (unique values) and linearizable gets on a few
/// registers (keys `h/<n>`), with call and return times from one monotonic clock; checked
/// with the linearizability checker once stopped.
struct History {
    stop: StopOnDrop,
    clients: Vec<JoinHandle<Vec<checker::Op>>>,
}

impl History {
    const KEYS: u64 = 3;

    fn start(clients: usize, endpoints: &[String]) -> History {
        let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
        let epoch = Instant::now();
        let values = Arc::new(AtomicU64::new(0));
        let clients = (0..clients)
            .map(|n| {
                let mut endpoints = endpoints.to_vec();
                let first = n % endpoints.len();
                endpoints.rotate_left(first);
                let (values, stop) = (values.clone(), stop.0.clone());
                std::thread::spawn(move || history_client(n, endpoints, epoch, values, stop))
            })
            .collect();
        History { stop, clients }
    }

    /// Stops the clients and checks their history.
    fn stop_and_check(self) {
        self.stop.0.store(true, Ordering::Relaxed);
        let history: Vec<checker::Op> = self
            .clients
            .into_iter()
            .flat_map(|t| t.join().expect("history client"))
            .collect();
        let (all, unknown) = (
            history.len(),
            history.iter().filter(|o| o.ret.is_none()).count(),
        );
        assert!(all > 50, "a history of {all} operations");
        let history = without_unobserved_unknown_puts(history);
        let seen = history.iter().filter(|o| o.ret.is_none()).count();
        let checked = Instant::now();
        if let Err(e) = checker::check(&history) {
            panic!("the history is not linearizable: {e}");
        }
        eprintln!(
            "a history of {all} operations is linearizable ({unknown} puts of unknown outcome, \
             {seen} of them seen by a read; checked in {:?})",
            checked.elapsed()
        );
    }
}

/// One client's operations: a random key, then a put or a linearizable get of it.
fn history_client(
    client_no: usize,
    endpoints: Vec<String>,
    epoch: Instant,
    values: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Vec<checker::Op> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(client_no as u64);
    let mut client = Client::new(endpoints, CLIENT_TIMEOUT);
    let now = || epoch.elapsed().as_micros() as u64;
    let mut ops = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let key = rng.gen_range(0..History::KEYS);
        let name = format!("h/{key}");
        let call = now();
        let failed = if rng.gen_bool(0.5) {
            let value = values.fetch_add(1, Ordering::Relaxed) + 1;
            let outcome = put(&mut client, &name, &value.to_string());
            ops.push(checker::Op {
                client: client_no,
                key,
                kind: checker::Kind::Put(value),
                call,
                // Unknown outcome: it may take effect at any time after its call, or never.
                ret: outcome.is_ok().then(now),
            });
            outcome.is_err()
        } else {
            match get(&mut client, &name) {
                Ok(v) => {
                    ops.push(checker::Op {
                        client: client_no,
                        key,
                        kind: checker::Kind::Get(v.map(|v| v.parse().expect("a value of ours"))),
                        call,
                        ret: Some(now()),
                    });
                    false
                }
                // A failed read has no effect: left out.
                Err(_) => true,
            }
        };
        std::thread::sleep(if failed {
            RETRY_PAUSE
        } else {
            Duration::from_millis(5)
        });
    }
    ops
}

/// The history without the puts of unknown outcome whose value no read returned: such a
/// put can be linearized at the very end (it never returned), where nothing sees it, so
/// leaving it out changes no verdict, and the checker need not try it at every point.
fn without_unobserved_unknown_puts(history: Vec<checker::Op>) -> Vec<checker::Op> {
    let read: std::collections::HashSet<(u64, u64)> = history
        .iter()
        .filter_map(|o| match o.kind {
            checker::Kind::Get(Some(v)) => Some((o.key, v)),
            _ => None,
        })
        .collect();
    history
        .into_iter()
        .filter(|o| match o.kind {
            checker::Kind::Put(v) => o.ret.is_some() || read.contains(&(o.key, v)),
            checker::Kind::Get(_) => true,
        })
        .collect()
}

#[test]
fn rolling_restart_under_load() {
    let _one = one_cluster_at_a_time();
    let mut c = Cluster::start(3);
    let all = [0, 1, 2];
    c.wait_leader(&all, Duration::from_secs(20));
    let writers = Writers::start(2, &c.endpoints(), "d/", Duration::ZERO);
    let history = History::start(3, &c.endpoints());
    for i in all {
        // About a second of load between restarts.
        writers.wait_for_more(300, Duration::from_secs(20));
        let exit = c.terminate(i);
        assert!(exit.success(), "member {i} after SIGTERM: {exit}");
        c.start_member(i);
        let leader = c.wait_leader(&all, Duration::from_secs(20));
        let target = c.status(leader).map_or(0, |s| s.raft_applied_index);
        poll(CONVERGE, &format!("member {i} catches up"), || {
            c.status(i)
                .filter(|s| s.raft_applied_index >= target && s.leader != 0)
        });
        eprintln!("member {i} restarted and caught up (leader: member {leader})");
    }
    writers.wait_for_more(50, Duration::from_secs(20));
    let writes = writers.stop();
    history.stop_and_check();
    converge_and_compare_hashes(&c);
    check_writes(&c, &writes, &[], "d/");
}

/// A process the test started, killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_member_of_another_cluster_is_refused() {
    let _one = one_cluster_at_a_time();
    let c = Cluster::start(3);
    let all = [0, 1, 2];
    c.wait_leader(&all, Duration::from_secs(20));
    let mut client = Client::new(c.endpoints(), CLIENT_TIMEOUT);
    put(&mut client, "e/before", "1").expect("a put");
    let before: Vec<_> = all.iter().map(|&i| c.status(i).expect("status")).collect();
    // Another cluster (another token) whose --initial-cluster names this cluster's peer
    // URLs beside its own.
    let dir = tempfile::tempdir().unwrap();
    let own = format!("http://{}", free_addr());
    let mut initial_cluster = format!("intruder={own}");
    for m in &c.members {
        initial_cluster.push_str(&format!(",{}={}", m.name, m.peer_url));
    }
    let log_path = dir.path().join("intruder.log");
    let addr = free_addr();
    let intruder = Process(
        Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["serve", "--listen-client-urls", "http://127.0.0.1:0"])
            .args(["--name", "intruder", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-native-addr", &addr])
            .args(["--listen-peer-urls", &own])
            .args(["--initial-advertise-peer-urls", &own])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-token", "another-cluster"])
            .args(["--placement", "unpinned"])
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(20), || log()
            .contains("refusing to join")),
        "the intruder never said it was refused; its log:\n{}",
        log()
    );
    assert!(
        eventually(Duration::from_secs(10), || all
            .iter()
            .any(|&i| c.log(i).contains("refused a peer"))),
        "no member said it refused the intruder"
    );
    // Two election timeouts of the intruder's campaigning: the cluster does not notice.
    std::thread::sleep(Duration::from_secs(2));
    for (&i, b) in all.iter().zip(&before) {
        let s = c.status(i).expect("status");
        assert_eq!(
            (s.cluster_id, s.member_id, s.leader, s.raft_term),
            (b.cluster_id, b.member_id, b.leader, b.raft_term),
            "member {i}'s status changed"
        );
    }
    put(&mut client, "e/after", "2").expect("a put after the intruder knocked");
    for m in &c.members {
        let mut one = Client::new(vec![m.client_addr.clone()], CLIENT_TIMEOUT);
        assert_eq!(get(&mut one, "e/after"), Ok(Some("2".into())));
    }
    let s = status_of(&addr, CLIENT_TIMEOUT).expect("the intruder serves its own status");
    assert_ne!(s.cluster_id, before[0].cluster_id);
    assert_eq!(s.leader, 0, "the intruder found no leader");
    drop(intruder);
}

/// A peer connection's hello, as a member dials it (`from` to `to`).
fn hello(from: u64, to: u64) -> Vec<u8> {
    let mut h = u64::from_le_bytes(*b"cairnpr\0").to_le_bytes().to_vec();
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&7u64.to_le_bytes());
    h.extend_from_slice(&from.to_le_bytes());
    h.extend_from_slice(&to.to_le_bytes());
    h
}

/// Dials the proxy as member 1 to member 2; the member's side of the connection.
fn dial_through(proxy_addr: &str, member: &TcpListener) -> (TcpStream, TcpStream) {
    let mut dialer = TcpStream::connect(proxy_addr).unwrap();
    dialer.write_all(&hello(1, 2)).unwrap();
    let (mut accepted, _) = member.accept().unwrap();
    let mut got = [0u8; 36];
    accepted.read_exact(&mut got).unwrap();
    assert_eq!(
        got.to_vec(),
        hello(1, 2),
        "the hello is passed on as it came"
    );
    for s in [&dialer, &accepted] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    (dialer, accepted)
}

/// The test's own tool: a blackholed link stalls its sender and then delivers everything
/// in order, the other direction flowing meanwhile; a delay delays; a cut closes the
/// link's connections and lets new ones through; dropping the proxy closes everything.
#[test]
fn the_proxy_blackholes_delays_and_cuts_a_link() {
    let member = TcpListener::bind(free_addr()).unwrap();
    let front = free_addr();
    let proxy = Proxy::start(&[(2, front.clone(), member.local_addr().unwrap().to_string())]);
    let (mut dialer, mut accepted) = dial_through(&front, &member);
    dialer.write_all(b"abc").unwrap();
    let mut buf = [0u8; 3];
    accepted.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"abc");

    proxy.blackhole(1, 2);
    // The sender fills the socket buffers and stalls: a nonblocking write runs out of room.
    let pattern = |i: usize| (i % 251) as u8;
    let chunk: Vec<u8> = (0..64 << 10).map(pattern).collect();
    dialer.set_nonblocking(true).unwrap();
    let mut sent = 0usize;
    let stalled = poll(Duration::from_secs(10), "the sender stalls", || {
        let from = sent % 251;
        match dialer.write(&chunk[from..]) {
            Ok(n) => {
                sent += n;
                None
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Some(sent),
            Err(e) => panic!("{e}"),
        }
    });
    assert!(stalled < 64 << 20, "{stalled} bytes went into a blackhole");
    dialer.set_nonblocking(false).unwrap();
    // Nothing arrives meanwhile; the other direction flows.
    accepted.set_nonblocking(true).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        accepted.read(&mut buf).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::WouldBlock),
        "bytes went through a blackhole"
    );
    accepted.set_nonblocking(false).unwrap();
    accepted.write_all(b"ok").unwrap();
    let mut ok = [0u8; 2];
    dialer.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"ok");
    // Healed: every byte comes, in order.
    proxy.heal();
    let mut received = vec![0u8; stalled];
    accepted.read_exact(&mut received).unwrap();
    let wrong = received
        .iter()
        .enumerate()
        .position(|(i, &b)| b != pattern(i));
    assert_eq!(wrong, None, "of {stalled} bytes");

    proxy.delay(1, 2, 300);
    let sent_at = Instant::now();
    dialer.write_all(b"d").unwrap();
    accepted.read_exact(&mut buf[..1]).unwrap();
    assert!(sent_at.elapsed() >= Duration::from_millis(300));
    proxy.heal();

    proxy.cut(1, 2);
    assert_eq!(
        accepted.read(&mut buf).ok(),
        Some(0),
        "the member's side is closed"
    );
    assert_eq!(
        dialer.read(&mut buf).ok(),
        Some(0),
        "the dialer's side is closed"
    );
    let (mut dialer, mut accepted) = dial_through(&front, &member);
    dialer.write_all(b"again").unwrap();
    let mut again = [0u8; 5];
    accepted.read_exact(&mut again).unwrap();
    assert_eq!(&again, b"again");

    // Isolated: a blackhole both ways.
    proxy.isolate(1);
    dialer.write_all(b"i").unwrap();
    accepted.write_all(b"j").unwrap();
    for s in [&accepted, &dialer] {
        s.set_nonblocking(true).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    for mut s in [&accepted, &dialer] {
        assert_eq!(
            s.read(&mut buf).map_err(|e| e.kind()),
            Err(std::io::ErrorKind::WouldBlock),
            "bytes went through an isolated member's link"
        );
        s.set_nonblocking(false).unwrap();
    }
    proxy.heal();
    accepted.read_exact(&mut buf[..1]).unwrap();
    dialer.read_exact(&mut buf[1..2]).unwrap();
    assert_eq!(&buf[..2], b"ij");

    drop(proxy);
    assert_eq!(
        accepted.read(&mut buf).ok(),
        Some(0),
        "closed with the proxy"
    );
    assert!(
        TcpStream::connect(&front).is_err(),
        "the proxy still listens"
    );
}

/// Sends a member request to the leader among `among` (asking again while leadership
/// moves); the server's answer.
fn member_request(
    c: &Cluster,
    among: &[usize],
    req: MemberRequest,
) -> Result<MemberResponse, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leader = c.wait_leader(among, Duration::from_secs(20));
        let mut client = Client::new(vec![c.members[leader].client_addr.clone()], CLIENT_TIMEOUT);
        match client.request(&ClientRequest::Member(req.clone())) {
            Ok(ClientResponse::Member(r)) => return Ok(r),
            Ok(other) => panic!("a member reply, not {other:?}"),
            Err(ClientError::Server { code, message })
                if code == ErrorCode::InvalidRequest || Instant::now() >= deadline =>
            {
                return Err(message)
            }
            // Not (or no longer) the leader, a change in progress, a timeout: again.
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Member `i`'s view of the membership.
fn member_list(c: &Cluster, i: usize) -> Vec<cairn::protocol::Member> {
    let mut client = Client::new(vec![c.members[i].client_addr.clone()], CLIENT_TIMEOUT);
    match client.request(&ClientRequest::Member(MemberRequest::List)) {
        Ok(ClientResponse::Member(r)) => r.members,
        other => panic!("member list of member {i}: {other:?}"),
    }
}

/// Runs `cairn --endpoints <endpoint> ARGS`: (success, stdout, stderr).
fn cli(endpoint: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--endpoints", endpoint])
        .args(args)
        .output()
        .expect("run cairn");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// How a member is added and promoted: through the protocol (to the leader), or with
/// `cairn member add|promote` given one follower's endpoint (the CLI finds the leader).
#[derive(Clone, Copy, PartialEq)]
enum Via {
    Protocol,
    CliThroughAFollower,
}

/// Adds a learner with an empty data directory to the running members `with`, starts it
/// (`--initial-cluster-state existing`), waits until it has caught up, and promotes it.
fn add_and_promote(c: &mut Cluster, i: usize, with: &[usize], via: Via) {
    let name = c.members[i].name.clone();
    let name = name.as_str();
    let peer_url = c.members[i].peer_url.clone();
    let leader = c.wait_leader(with, Duration::from_secs(20));
    let follower = *with.iter().find(|&&j| j != leader).expect("a follower");
    let follower_addr = c.members[follower].client_addr.clone();
    let id = match via {
        Via::Protocol => {
            let added = member_request(
                c,
                with,
                MemberRequest::Add {
                    peer_urls: vec![peer_url],
                    is_learner: true,
                },
            )
            .expect("member add");
            let id = added.member.as_ref().expect("the member added").id;
            assert!(
                added
                    .members
                    .iter()
                    .any(|m| m.id == id && m.is_learner && m.name.is_empty()),
                "{added:?}"
            );
            id
        }
        Via::CliThroughAFollower => {
            let peer_urls = format!("--peer-urls={peer_url}");
            let args = ["member", "add", name, &peer_urls, "--learner"];
            let (ok, out, err) = cli(&follower_addr, &args);
            assert!(ok, "member add: {out}{err}");
            // As etcdctl prints it, with the variables `cairn serve` takes.
            let id = out
                .strip_prefix("Member ")
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|hex| u64::from_str_radix(hex, 16).ok())
                .unwrap_or_else(|| panic!("no member id in {out:?}"));
            assert!(out.contains(&format!("ETCD_NAME=\"{name}\"")), "{out}");
            assert!(
                out.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
                "{out}"
            );
            assert!(out.contains(&format!("{name}={peer_url}")), "{out}");
            id
        }
    };
    c.set_id(i, id);
    c.join(i, with);
    // It joined by snapshot: the leader's log is long gone.
    poll(CONVERGE, &format!("a snapshot sent to {name}"), || {
        let sent = format!("sent a snapshot peer={id:x}");
        with.iter().any(|&j| c.log(j).contains(&sent)).then_some(())
    });
    // Promoting a learner that lags is refused; it is in sync soon after it starts.
    let mut all = with.to_vec();
    all.push(i);
    poll(CONVERGE, &format!("{name} promoted"), || match via {
        Via::Protocol => match member_request(c, with, MemberRequest::Promote { id }) {
            Ok(_) => Some(()),
            Err(e) if e.contains("in sync") => None,
            Err(e) => panic!("promote {name}: {e}"),
        },
        Via::CliThroughAFollower => {
            let (ok, out, err) = cli(&follower_addr, &["member", "promote", &format!("{id:x}")]);
            if ok {
                assert!(out.contains("promoted in cluster"), "{out}");
                return Some(());
            }
            assert!(err.contains("in sync"), "member promote: {out}{err}");
            None
        }
    });
    poll(
        CONVERGE,
        &format!("{name} is a voter with its name on every member"),
        || {
            all.iter()
                .all(|&j| {
                    member_list(c, j)
                        .iter()
                        .any(|m| m.id == id && !m.is_learner && m.name == name)
                })
                .then_some(())
        },
    );
}

#[test]
fn membership_changes_under_load() {
    let _one = one_cluster_at_a_time();
    // Few entries kept behind a checkpoint: the members added join by snapshot (whose
    // configuration must hold them, and whose member table they learn).
    let options = Options::snapshots(200, 50);
    let mut c = Cluster::start_with(3, options);
    let mut voters = vec![0, 1, 2];
    c.wait_leader(&voters, Duration::from_secs(20));
    // Every member lists the three, with their names, and (once each has published it)
    // its client URL.
    for i in 0..3 {
        poll(
            CONVERGE,
            &format!("member {i} lists three started members"),
            || {
                let list = member_list(&c, i);
                let mut names: Vec<&str> = list.iter().map(|m| m.name.as_str()).collect();
                names.sort_unstable();
                let started = list
                    .iter()
                    .all(|m| !m.is_learner && m.client_urls.len() == 1);
                (names == ["m0", "m1", "m2"] && started).then_some(())
            },
        );
    }
    // The members added later: the clients know their addresses from the start.
    let m3 = c.new_member("m3");
    let m4 = c.new_member("m4");
    let writers = Writers::start(2, &c.endpoints(), "g/", Duration::ZERO);
    let history = History::start(3, &c.endpoints());
    writers.wait_for_more(200, Duration::from_secs(20));

    // Bad requests are refused, and change nothing.
    let taken = c.members[0].peer_url.clone();
    let err = member_request(
        &c,
        &voters,
        MemberRequest::Add {
            peer_urls: vec![taken],
            is_learner: true,
        },
    )
    .unwrap_err();
    assert!(err.contains("Peer URLs already exists"), "{err}");
    let err = member_request(&c, &voters, MemberRequest::Remove { id: 0xdead }).unwrap_err();
    assert!(err.contains("member not found"), "{err}");
    let err = member_request(
        &c,
        &voters,
        MemberRequest::Promote {
            id: c.members[1].id,
        },
    )
    .unwrap_err();
    assert!(err.contains("only promote a learner"), "{err}");

    // A learner joins with an empty data directory, catches up, and is promoted.
    add_and_promote(&mut c, m3, &voters, Via::Protocol);
    voters.push(m3);
    writers.wait_for_more(200, Duration::from_secs(20));

    // `member update` through a follower: every member sees the new peer URLs.
    let leader = c.wait_leader(&voters, Duration::from_secs(20));
    let follower = *voters.iter().find(|&&v| v != leader).expect("a follower");
    let (target, url) = (c.members[follower].id, c.members[follower].peer_url.clone());
    let spare = format!("http://{}", free_addr());
    for urls in [format!("{url},{spare}"), url.clone()] {
        let (ok, out, err) = cli(
            &c.members[follower].client_addr,
            &[
                "member",
                "update",
                &format!("{target:x}"),
                &format!("--peer-urls={urls}"),
            ],
        );
        assert!(
            ok && out.contains("updated in cluster"),
            "member update: {out}{err}"
        );
        let want: Vec<String> = urls.split(',').map(String::from).collect();
        poll(CONVERGE, &format!("every member lists {urls}"), || {
            voters
                .iter()
                .all(|&j| {
                    member_list(&c, j)
                        .iter()
                        .any(|m| m.id == target && m.peer_urls == want)
                })
                .then_some(())
        });
    }
    // `endpoint status --cluster` reaches every member the member list names.
    let (ok, out, err) = cli(
        &c.members[follower].client_addr,
        &["endpoint", "status", "--cluster"],
    );
    assert!(ok, "endpoint status --cluster: {out}{err}");
    for &v in &voters {
        assert!(out.contains(&c.members[v].client_addr), "{out}");
    }
    assert_eq!(out.lines().count(), voters.len(), "{out}");

    // The leader is removed: it hands leadership on and stops; the others go on.
    let leader = c.wait_leader(&voters, Duration::from_secs(20));
    let leader_id = c.members[leader].id;
    member_request(&c, &voters, MemberRequest::Remove { id: leader_id })
        .expect("remove the leader");
    let exit = c.wait_exit(leader, Duration::from_secs(20));
    assert!(!exit.success(), "a removed member exits with an error");
    assert!(
        c.log(leader)
            .contains("permanently removed from the cluster"),
        "{}",
        c.log(leader)
    );
    voters.retain(|&v| v != leader);
    let new_leader = c.wait_leader(&voters, ELECTION_BOUND);
    assert_ne!(new_leader, leader);
    for &i in &voters {
        let list = member_list(&c, i);
        assert!(
            list.iter().all(|m| m.id != leader_id),
            "member {i}: {list:?}"
        );
    }
    // Started again on its old data directory, it refuses: it was removed.
    c.start_member_expecting_exit(leader);
    assert!(c.log(leader).matches("permanently removed").count() >= 2);
    writers.wait_for_more(200, Duration::from_secs(20));

    // A dead member is replaced by a new one with an empty data directory.
    let dead = *voters
        .iter()
        .find(|&&v| v != new_leader && v != m3)
        .expect("a follower");
    c.kill(dead);
    writers.wait_for_more(100, Duration::from_secs(20));
    // With one of three voters dead, adding a fourth would need three of four: refused
    // (once the leader has gone an election timeout without hearing from it).
    std::thread::sleep(Duration::from_millis(2_500));
    let spare = format!("http://{}", free_addr());
    let err = member_request(
        &c,
        &voters,
        MemberRequest::Add {
            peer_urls: vec![spare],
            is_learner: false,
        },
    )
    .unwrap_err();
    assert!(err.contains("not enough started members"), "{err}");
    let dead_id = c.members[dead].id;
    let alive: Vec<usize> = voters.iter().copied().filter(|&v| v != dead).collect();
    let leader = c.wait_leader(&alive, Duration::from_secs(20));
    let follower = *alive.iter().find(|&&v| v != leader).expect("a follower");
    let (ok, out, err) = cli(
        &c.members[follower].client_addr,
        &["member", "remove", &format!("{dead_id:x}")],
    );
    assert!(
        ok && out.contains("removed from cluster"),
        "member remove: {out}{err}"
    );
    voters = alive;
    add_and_promote(&mut c, m4, &voters, Via::CliThroughAFollower);
    voters.push(m4);
    // The dead member, started again, is told by its peers that it was removed.
    c.start_member_expecting_exit(dead);
    writers.wait_for_more(200, Duration::from_secs(20));

    // A live follower is removed: it stops too.
    let leader = c.wait_leader(&voters, Duration::from_secs(20));
    let gone = *voters.iter().find(|&&v| v != leader).expect("a follower");
    let gone_id = c.members[gone].id;
    member_request(&c, &voters, MemberRequest::Remove { id: gone_id }).expect("remove");
    let exit = c.wait_exit(gone, Duration::from_secs(20));
    assert!(!exit.success(), "a removed member exits with an error");
    assert!(
        c.log(gone).contains("permanently removed"),
        "{}",
        c.log(gone)
    );
    voters.retain(|&v| v != gone);
    writers.wait_for_more(200, Duration::from_secs(20));

    let writes = writers.stop();
    history.stop_and_check();
    converge_and_compare_hashes(&c);
    check_writes(&c, &writes, &[], "g/");
    for &i in &voters {
        let mut ids: Vec<u64> = member_list(&c, i).iter().map(|m| m.id).collect();
        ids.sort_unstable();
        let mut want: Vec<u64> = voters.iter().map(|&v| c.members[v].id).collect();
        want.sort_unstable();
        assert_eq!(ids, want, "member {i}'s member list");
    }
}
