//! The load generator against a member running in this process: every workload completes
//! requests without errors and reports them as one JSON line.

use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn field(line: &str, name: &str) -> f64 {
    let at = line.find(&format!("\"{name}\":")).expect(name) + name.len() + 3;
    let rest = &line[at..];
    rest[..rest.find([',', '}']).unwrap()].parse().unwrap()
}

#[test]
fn every_workload_runs_against_a_member() {
    let dir = tempfile::tempdir().unwrap();
    let free = || {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string()
    };
    let addr = free();
    let config = cairn::server::ServeConfig {
        name: "smoke".into(),
        data_dir: dir.path().to_path_buf(),
        listen_native_addr: addr.clone(),
        max_request_bytes: 1 << 20,
        max_txn_ops: 128,
        heartbeat_interval_ms: 100,
        election_timeout_ms: 1000,
        max_inflight_per_conn: 1024,
        partial_frame_timeout: std::time::Duration::from_secs(10),
        release_memory: None,
        max_pending_proposals: 10_000,
        placement: cairn::server::Placement {
            mode: cairn::server::PlacementMode::Unpinned,
            executors: 2,
        },
        snapshot_count: 100_000,
        wal_segment_bytes: 64 << 20,
        quota_backend_bytes: 8 << 30,
        cluster: cairn::server::ClusterConfig {
            initial_cluster: "smoke=http://localhost:2380".into(),
            listen_peer_urls: vec![format!("http://{}", free())],
            ..Default::default()
        },
    };
    let server =
        std::thread::spawn(move || cairn::server::serve(config).map_err(|e| e.to_string()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "member did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    for (workload, consistency, rate) in [
        ("put", "l", "0"),
        ("range", "s", "0"),
        ("range", "l", "0"),
        ("txn", "l", "0"),
        ("mixed", "s", "2000"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_cairn-loadgen"))
            .args([
                "--endpoints",
                &addr,
                "--workload",
                workload,
                "--consistency",
                consistency,
                "--rate",
                rate,
            ])
            .args([
                "--clients",
                "8",
                "--conns",
                "2",
                "--duration",
                "1",
                "--key-space",
                "100",
                "--json",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{workload}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8(out.stdout).unwrap();
        assert!(field(&line, "ops") > 0.0, "{workload}: {line}");
        assert_eq!(field(&line, "errors"), 0.0, "{workload}: {line}");
        assert!(field(&line, "p50_ms") <= field(&line, "p99_ms"), "{line}");
        if rate != "0" {
            // Open loop at 2000/s for one second.
            let qps = field(&line, "qps");
            assert!(
                (1000.0..=2500.0).contains(&qps),
                "{workload} at --rate {rate}: {line}"
            );
        }
    }
    // fill puts each key once and stops on its own, long before --duration.
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_cairn-loadgen"))
        .args([
            "--endpoints",
            &addr,
            "--workload",
            "fill",
            "--key-space",
            "500",
        ])
        .args([
            "--clients",
            "8",
            "--conns",
            "2",
            "--duration",
            "60",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    assert_eq!(field(&line, "ops"), 500.0, "{line}");
    assert_eq!(field(&line, "errors"), 0.0, "{line}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "fill stopped on its own"
    );
    cairn::server::STOP.store(true, Ordering::Relaxed);
    assert_eq!(server.join().unwrap(), Ok(()));
}
