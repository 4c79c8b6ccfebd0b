//! Leases on clusters of real `cairn serve` processes: expiry deletes a lease's keys once,
//! in one revision, and never before its TTL; keepalives keep a lease through the leader's
//! SIGKILL, and it expires once they stop; remaining TTLs go on from their checkpoint
//! across a restart of the whole cluster; and the CLI's lines are etcdctl's.

mod common;

use cairn::client::{keep_alive_loop, Client, KeepAliveEvent, LeaderClient};
use cairn::mvcc::{PutRequest, RangeRequest, Request, Response};
use cairn::protocol::{ClientRequest, ClientResponse};
use common::cluster::{poll, Cluster, Options};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// A lease's TTL in these tests, in seconds (above the minimum of 2 s that the default
/// election timeout of 1 s gives).
const TTL_S: i64 = 3;
const TTL: Duration = Duration::from_secs(TTL_S as u64);
/// How late an expiry may come after its deadline: an election after a leader's death
/// (under 3 s at the default timeouts), an election timeout of extension, the revoke's
/// commit and a few heartbeats.
const EXPIRY_SLACK: Duration = Duration::from_secs(6);

/// One cluster at a time: their elections would measure each other on a small machine.
fn one_cluster_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn put_leased(client: &mut Client, key: &str, lease: i64) -> i64 {
    let put = PutRequest {
        key: key.as_bytes().to_vec(),
        value: b"v".to_vec(),
        lease,
        ..Default::default()
    };
    match client.request(&ClientRequest::Kv(Request::Put(put))) {
        Ok(ClientResponse::Kv(Response::Put(p))) => p.header.revision,
        other => panic!("put {key}: {other:?}"),
    }
}

/// A get of `key`, linearizable or at revision `rev` (0: the current one): whether the key
/// is there, and the revision read at. `None` when no member answered.
fn get(client: &mut Client, key: &str, rev: i64) -> Option<(bool, i64)> {
    let range = RangeRequest {
        key: key.as_bytes().to_vec(),
        revision: rev,
        ..Default::default()
    };
    match client.request(&ClientRequest::Kv(Request::Range(range))) {
        Ok(ClientResponse::Kv(Response::Range(r))) => Some((!r.kvs.is_empty(), r.header.revision)),
        _ => None,
    }
}

/// Reads `key` until it is gone; panics if a read answered before `not_before` finds it
/// gone (an early expiry) or it is still there at `limit`. When it went: the revision of
/// the first read without it, and the moment that read was answered.
fn watch_expiry(
    client: &mut Client,
    key: &str,
    not_before: Instant,
    limit: Instant,
) -> (i64, Instant) {
    loop {
        let asked = Instant::now();
        match get(client, key, 0) {
            Some((false, rev)) => {
                let answered = Instant::now();
                assert!(
                    answered >= not_before,
                    "{key} gone {:?} before its lease could expire",
                    not_before - answered
                );
                return (rev, answered);
            }
            Some((true, _)) => {}
            None => {}
        }
        assert!(asked < limit, "{key} still there past its lease's expiry");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn expiry_deletes_the_keys_once_in_one_revision_and_never_before_the_ttl() {
    let _one = one_cluster_at_a_time();
    let c = Cluster::start(3);
    c.wait_leader(&[0, 1, 2], Duration::from_secs(10));
    let mut client = Client::new(c.endpoints(), CLIENT_TIMEOUT);
    let sent = Instant::now();
    let lease = client.lease_grant(TTL_S, 0).expect("grant");
    assert_eq!(lease.ttl, TTL_S);
    let keys = ["a", "b", "c"];
    let mut last = 0;
    for k in keys {
        last = put_leased(&mut client, k, lease.id);
    }
    // The lease's deadline is its TTL after its grant applied, which is after `sent`.
    let (gone_rev, _) = watch_expiry(&mut client, "a", sent + TTL, sent + TTL + EXPIRY_SLACK);
    // Every key went in the one revision after the last put, and nothing else happened.
    assert_eq!(gone_rev, last + 1, "the revoke's revision");
    for k in keys {
        assert_eq!(
            get(&mut client, k, last),
            Some((true, gone_rev)),
            "{k} before"
        );
        assert_eq!(get(&mut client, k, gone_rev).map(|r| r.0), Some(false));
    }
    // No second deletion follows (a duplicate revoke would change nothing), on any member.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(c.wait_converged(Duration::from_secs(10)), gone_rev);
    let hashes = c.hashkv(0);
    assert!(hashes.windows(2).all(|w| w[0].1 == w[1].1), "{hashes:?}");
    for endpoint in c.endpoints() {
        let mut one = Client::new(vec![endpoint.clone()], CLIENT_TIMEOUT);
        let listed = one.lease_leases().expect("list");
        assert!(listed.leases.is_empty(), "{endpoint}: {listed:?}");
    }
    let mut leader = LeaderClient::new(c.endpoints(), CLIENT_TIMEOUT);
    assert_eq!(leader.time_to_live(lease.id, false).expect("ttl").ttl, -1);
}

#[test]
fn keepalives_keep_a_lease_through_a_leader_kill_and_it_expires_when_they_stop() {
    let _one = one_cluster_at_a_time();
    let mut c = Cluster::start(3);
    let first_leader = c.wait_leader(&[0, 1, 2], Duration::from_secs(10));
    let mut client = Client::new(c.endpoints(), CLIENT_TIMEOUT);
    let lease = client.lease_grant(TTL_S, 0).expect("grant");
    put_leased(&mut client, "kept", lease.id);

    let stop = Arc::new(AtomicBool::new(false));
    // When the last renewal was sent that the leader answered.
    let renewed = Arc::new(Mutex::new((0usize, Instant::now())));
    let keeper = {
        let (stop, renewed, endpoints) = (stop.clone(), renewed.clone(), c.endpoints());
        std::thread::spawn(move || {
            let mut sent = Instant::now();
            keep_alive_loop(endpoints, CLIENT_TIMEOUT, lease.id, &stop, |e| {
                if let KeepAliveEvent::Renewed(r) = e {
                    assert_eq!(r.ttl, TTL_S);
                    let mut renewed = renewed.lock().unwrap();
                    *renewed = (renewed.0 + 1, sent);
                }
                assert!(!matches!(e, KeepAliveEvent::Gone), "the lease expired");
                sent = Instant::now();
            });
        })
    };
    std::thread::sleep(TTL);
    c.kill(first_leader);
    let survivors: Vec<usize> = (0..3).filter(|&i| i != first_leader).collect();
    c.wait_leader(&survivors, Duration::from_secs(10));
    let killed_at = renewed.lock().unwrap().0;
    // Three TTLs under the new leader: without renewals the lease would be gone.
    let until = Instant::now() + 3 * TTL;
    let mut reads = Client::new(
        survivors
            .iter()
            .map(|&i| c.members[i].client_addr.clone())
            .collect(),
        CLIENT_TIMEOUT,
    );
    while Instant::now() < until {
        assert_ne!(
            get(&mut reads, "kept", 0).map(|r| r.0),
            Some(false),
            "expired while kept alive"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (count, _) = *renewed.lock().unwrap();
    assert!(
        count > killed_at + 3,
        "renewals under the new leader: {}",
        count - killed_at
    );

    stop.store(true, Ordering::Relaxed);
    keeper.join().expect("the keepalive loop");
    let (_, last_sent) = *renewed.lock().unwrap();
    watch_expiry(
        &mut reads,
        "kept",
        last_sent + TTL,
        Instant::now() + TTL + EXPIRY_SLACK,
    );
}

#[test]
fn remaining_ttls_go_on_from_their_checkpoint_after_a_whole_cluster_restart() {
    let _one = one_cluster_at_a_time();
    let options = Options {
        extra: vec!["--lease-checkpoint-interval".into(), "300".into()],
        ..Options::default()
    };
    let mut c = Cluster::start_with(3, options);
    c.wait_leader(&[0, 1, 2], Duration::from_secs(10));
    let mut client = Client::new(c.endpoints(), CLIENT_TIMEOUT);
    const LONG_TTL_S: i64 = 30;
    let lease = client.lease_grant(LONG_TTL_S, 0).expect("grant");
    put_leased(&mut client, "k", lease.id);
    std::thread::sleep(Duration::from_secs(6));
    for i in 0..3 {
        c.kill(i);
    }
    for i in 0..3 {
        c.start_member(i);
    }
    c.wait_leader(&[0, 1, 2], Duration::from_secs(10));
    let mut leader = LeaderClient::new(c.endpoints(), CLIENT_TIMEOUT);
    let r = poll(
        Duration::from_secs(10),
        "time-to-live from the new leader",
        || leader.time_to_live(lease.id, true).ok(),
    );
    // Restarted from its checkpoint (about 24 s left, plus an election timeout), not from
    // its whole TTL (30 s, plus an election timeout).
    assert_eq!(
        (r.granted_ttl, r.keys.clone()),
        (LONG_TTL_S, vec![b"k".to_vec()])
    );
    assert!(
        (LONG_TTL_S - 10..=LONG_TTL_S - 3).contains(&r.ttl),
        "{} s left after 6 s of a {LONG_TTL_S} s lease and a restart",
        r.ttl
    );
    // A keepalive clears the checkpoint: the lease has its whole TTL again.
    let renewed = leader.keep_alive_once(lease.id).expect("keepalive");
    assert_eq!(renewed.ttl, LONG_TTL_S);
    assert!(leader.time_to_live(lease.id, false).expect("ttl").ttl >= LONG_TTL_S - 1);
}

/// Runs the `cairn` binary: (exit code, stdout).
fn cairn(endpoints: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--endpoints", endpoints])
        .args(args)
        .output()
        .expect("run cairn");
    let code = out.status.code().unwrap_or(-1);
    (code, String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn the_lease_commands_print_etcdctls_lines() {
    let _one = one_cluster_at_a_time();
    let c = Cluster::start(1);
    let ep = c.endpoints().join(",");
    let (code, out) = cairn(&ep, &["lease", "grant", "60"]);
    assert_eq!(code, 0, "{out}");
    let id = out
        .strip_prefix("lease ")
        .and_then(|rest| rest.strip_suffix(" granted with TTL(60s)\n"))
        .unwrap_or_else(|| panic!("grant printed {out:?}"))
        .to_string();
    assert_eq!(id.len(), 16, "{id}");
    assert_eq!(
        cairn(&ep, &["put", &format!("--lease={id}"), "k1", "v"]).1,
        "OK\n"
    );
    assert_eq!(
        cairn(&ep, &["put", &format!("--lease={id}"), "k2", "v"]).1,
        "OK\n"
    );
    let (_, ttl) = cairn(&ep, &["lease", "timetolive", "--keys", &id]);
    let prefix = format!("lease {id} granted with TTL(60s), remaining(");
    assert!(ttl.starts_with(&prefix), "{ttl}");
    assert!(ttl.ends_with("s), attached keys([k1 k2])\n"), "{ttl}");
    assert_eq!(
        cairn(&ep, &["lease", "list"]).1,
        format!("found 1 leases\n{id}\n")
    );
    assert_eq!(
        cairn(&ep, &["lease", "keep-alive", "--once", &id]).1,
        format!("lease {id} keepalived with TTL(60)\n")
    );
    assert_eq!(
        cairn(&ep, &["lease", "revoke", &id]).1,
        format!("lease {id} revoked\n")
    );
    assert_eq!(cairn(&ep, &["get", "k1"]).1, "");
    assert_eq!(
        cairn(&ep, &["lease", "timetolive", &id]).1,
        format!("lease {id} already expired\n")
    );
    assert_eq!(
        cairn(&ep, &["lease", "keep-alive", &id]),
        (0, format!("lease {id} expired or revoked.\n"))
    );
    let (code, _) = cairn(&ep, &["lease", "revoke", &id]);
    assert_eq!(code, 1, "revoking a lease that is gone fails");
    let (code, _) = cairn(&ep, &["put", "--lease=7", "k3", "v"]);
    assert_eq!(code, 1, "a put naming a lease not granted fails");
    let (_, json) = cairn(&ep, &["-w", "json", "lease", "grant", "5"]);
    assert!(
        json.starts_with("{\"header\":{\"revision\":") && json.contains("\"TTL\":5}"),
        "{json}"
    );
}
