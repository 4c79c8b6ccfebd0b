//! Restarting a member on the same ports and data directory, right after it exited (SIGTERM)
//! or was killed (SIGKILL): every start succeeds and sees every acknowledged write. A member
//! that cannot bind its ports leaves nothing on disk.

mod common;

use cairn::client::Client;
use cairn::mvcc::{PutRequest, RangeRequest, Request, Response};
use cairn::protocol::{ClientRequest, ClientResponse};
use common::{free_addr, wait_serving};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn serve(dir: &Path, addr: &str, peer: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["serve", "--log-level", "warn", "--listen-native-addr", addr])
        .args(["--listen-client-urls", "http://127.0.0.1:0"])
        .arg("--listen-peer-urls")
        .arg(format!("http://{peer}"))
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn put(addr: &str, key: &str) -> i64 {
    let mut c = Client::new(vec![addr.to_string()], Duration::from_secs(10));
    let req = Request::Put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: key.as_bytes().to_vec(),
        ..Default::default()
    });
    match c.request(&ClientRequest::Kv(req)) {
        Ok(ClientResponse::Kv(Response::Put(p))) => p.header.revision,
        other => panic!("put {key}: {other:?}"),
    }
}

fn count(addr: &str) -> i64 {
    let mut c = Client::new(vec![addr.to_string()], Duration::from_secs(10));
    let req = Request::Range(RangeRequest {
        key: b"\0".to_vec(),
        range_end: b"\0".to_vec(),
        count_only: true,
        ..Default::default()
    });
    match c.request(&ClientRequest::Kv(req)) {
        Ok(ClientResponse::Kv(Response::Range(r))) => r.count,
        other => panic!("count: {other:?}"),
    }
}

fn restarts(signal: libc::c_int, rounds: usize) {
    let dir = tempfile::tempdir().unwrap();
    let (addr, peer) = (free_addr(), free_addr());
    for round in 0..rounds {
        let name = format!("round {round} (signal {signal})");
        let mut child = serve(dir.path(), &addr, &peer);
        wait_serving(&addr, Some(&mut child));
        assert_eq!(count(&addr), round as i64, "{name}: writes lost");
        put(&addr, &format!("k{round}"));
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait().unwrap();
        if signal == libc::SIGTERM {
            assert!(status.success(), "{name}: {status}");
        }
    }
}

#[test]
fn twenty_restarts_after_sigterm_all_succeed() {
    restarts(libc::SIGTERM, 20);
}

#[test]
fn twenty_restarts_after_sigkill_all_succeed() {
    restarts(libc::SIGKILL, 20);
}

#[test]
fn a_start_whose_port_is_taken_creates_nothing() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("member");
    // The native port taken, then the peer port.
    for (native, peer) in [(addr.clone(), free_addr()), (free_addr(), addr.clone())] {
        let out = serve(&dir, &native, &peer).wait_with_output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("cannot listen on") && err.contains(&addr),
            "{err}"
        );
        assert!(!dir.exists(), "the data directory was created");
    }
}
