//! The member dies in the middle of a run (SIGKILL): the load generator counts the requests
//! in flight as errors, reports the latencies of those that completed, and exits 2; against
//! no member at all it says that nothing completed. The same through the native protocol and
//! through etcd's gRPC API (`--target etcd`).

mod common;

use common::{field, free_addr, member_config, wait_for};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MEMBER_ADDR: &str = "LOADGEN_TEST_MEMBER_ADDR";
const MEMBER_DIR: &str = "LOADGEN_TEST_MEMBER_DIR";
const MEMBER_GRPC: &str = "LOADGEN_TEST_MEMBER_GRPC";

/// Not a test of its own: the member that `member_killed_mid_run` runs in a child process
/// (this test binary again) and kills.
#[test]
#[ignore = "a member process for member_killed_mid_run"]
fn member_process() {
    let (Ok(addr), Ok(dir)) = (std::env::var(MEMBER_ADDR), std::env::var(MEMBER_DIR)) else {
        return;
    };
    let mut config = member_config(dir.as_ref(), &addr);
    if let Ok(grpc) = std::env::var(MEMBER_GRPC) {
        config.listen_client_urls = vec![format!("http://{grpc}")];
    }
    cairn::server::serve(config).unwrap();
}

/// The member's process, killed when dropped (also when the test fails).
struct Member(Child);

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn loadgen(target: &str, addr: &str, duration: &str) -> Command {
    let extra = [
        "--workload",
        "put",
        "--key-space",
        "100",
        "--duration",
        duration,
    ];
    let mut cmd = common::loadgen(target, addr, &extra);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

#[test]
fn member_killed_mid_run() {
    killed_mid_run("native");
}

#[test]
fn member_killed_mid_run_through_grpc() {
    killed_mid_run("etcd");
}

/// The test of both targets: `native` or `etcd`.
fn killed_mid_run(target: &str) {
    let dir = tempfile::tempdir().unwrap();
    let native = free_addr();
    let grpc = free_addr();
    let member = Command::new(std::env::current_exe().unwrap())
        .args(["member_process", "--exact", "--ignored", "--nocapture"])
        .env(MEMBER_ADDR, &native)
        .env(MEMBER_DIR, dir.path())
        .env(MEMBER_GRPC, &grpc)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let member = Member(member);
    wait_for(&native);
    wait_for(&grpc);
    let addr = if target == "etcd" { grpc } else { native };
    let started = Instant::now();
    let run = loadgen(target, &addr, "30").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    drop(member); // SIGKILL
    let out = run.wait_with_output().unwrap();
    let line = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{line}{stderr}");
    // It stops when its connections are gone, not at --duration.
    assert!(started.elapsed() < Duration::from_secs(20), "{stderr}");
    // Closed loop: every client had a request in flight when the member died.
    let (ops, errors) = (field(&line, "ops"), field(&line, "errors"));
    assert!(ops > Some(0.0), "{line}");
    assert!(errors >= Some(1.0) && errors <= Some(8.0), "{line}");
    let p50 = field(&line, "p50_ms").unwrap_or(0.0);
    assert!(
        p50 > 0.0 && p50 <= field(&line, "max_ms").unwrap_or(0.0),
        "{line}"
    );
    assert!(stderr.contains(&addr), "{stderr}");
    // Nothing to reach at all: no latencies to report, and it says so. (Port 1: nothing
    // listens there, and outside the ephemeral range a client cannot connect to itself.)
    let out = loadgen(target, "127.0.0.1:1", "1").output().unwrap();
    let line = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{line}{stderr}");
    assert_eq!(field(&line, "ops"), Some(0.0), "{line}");
    for name in ["p50_ms", "p99_ms", "p999_ms", "max_ms"] {
        assert_eq!(field(&line, name), None, "{line}");
    }
    assert!(stderr.contains("no request completed"), "{stderr}");
}
