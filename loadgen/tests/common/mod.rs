//! Helpers shared by the load generator's tests.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// A free port on loopback, as `127.0.0.1:port`.
pub fn free_addr() -> String {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string()
}

/// A small member on `addr` with its data in `dir`, two unpinned executors.
pub fn member_config(dir: &Path, addr: &str) -> cairn::server::ServeConfig {
    cairn::server::ServeConfig {
        name: "smoke".into(),
        data_dir: dir.to_path_buf(),
        listen_native_addr: addr.to_string(),
        listen_client_urls: Vec::new(),
        advertise_client_urls: Vec::new(),
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
        snapshot_catch_up_entries: 5_000,
        lease_checkpoint_interval_ms: cairn::lease::CHECKPOINT_INTERVAL_MS_DEFAULT,
        listen_metrics_urls: Vec::new(),
        grpc_keepalive: Default::default(),
        wal_segment_bytes: 64 << 20,
        quota_backend_bytes: 8 << 30,
        watch_progress_notify_ms: 600_000,
        cluster: cairn::server::ClusterConfig {
            initial_cluster: "smoke=http://localhost:2380".into(),
            listen_peer_urls: vec![format!("http://{}", free_addr())],
            ..Default::default()
        },
    }
}

/// Waits until something listens on `addr`. A port of the ephemeral range (as port 0
/// gives) can be handed to the connecting socket itself while nothing listens there: such
/// a connection to itself is not a listener.
pub fn wait_for(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let listening =
        || TcpStream::connect(addr).is_ok_and(|s| s.local_addr().ok() != s.peer_addr().ok());
    while !listening() {
        assert!(Instant::now() < deadline, "member did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `cairn-loadgen --target TARGET --endpoints ENDPOINTS --json` with 8 clients on 2
/// connections, then `extra` (workload, key space, duration...).
pub fn loadgen(target: &str, endpoints: &str, extra: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cairn-loadgen"));
    cmd.args(["--target", target, "--endpoints", endpoints, "--json"])
        .args(["--clients", "8", "--conns", "2"])
        .args(extra);
    cmd
}

/// A number of the report's JSON line; `None` for `null`.
pub fn field(line: &str, name: &str) -> Option<f64> {
    let at = line.find(&format!("\"{name}\":")).expect(name) + name.len() + 3;
    let rest = &line[at..];
    let value = &rest[..rest.find([',', '}']).unwrap()];
    (value != "null").then(|| value.parse().unwrap())
}
