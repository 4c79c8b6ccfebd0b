//! Members embedded in one process (`server::serve_until`): each has its own stop flag, so
//! stopping one leaves the others serving.

mod common;

use common::{answers_status, free_addr, wait_serving};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn config(dir: &Path, addr: &str) -> cairn::server::ServeConfig {
    cairn::server::ServeConfig {
        name: "embedded".into(),
        data_dir: dir.to_path_buf(),
        listen_native_addr: addr.to_string(),
        listen_client_urls: Vec::new(),
        advertise_client_urls: Vec::new(),
        max_request_bytes: 1 << 20,
        max_txn_ops: 128,
        heartbeat_interval_ms: 100,
        election_timeout_ms: 1000,
        max_inflight_per_conn: 1024,
        partial_frame_timeout: Duration::from_secs(10),
        release_memory: None,
        max_pending_proposals: 10_000,
        placement: cairn::server::Placement {
            mode: cairn::server::PlacementMode::Unpinned,
            executors: 1,
        },
        snapshot_count: 100_000,
        snapshot_catch_up_entries: 5_000,
        lease_checkpoint_interval_ms: cairn::lease::CHECKPOINT_INTERVAL_MS_DEFAULT,
        listen_metrics_urls: Vec::new(),
        grpc_keepalive: Default::default(),
        wal_segment_bytes: 8 << 20,
        quota_backend_bytes: 8 << 30,
        watch_progress_notify_ms: 600_000,
        cluster: cairn::server::ClusterConfig {
            initial_cluster: "embedded=http://localhost:2380".into(),
            listen_peer_urls: vec![format!("http://{}", free_addr())],
            ..Default::default()
        },
    }
}

#[test]
fn members_in_one_process_stop_independently() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let addrs = [free_addr(), free_addr()];
    let stops = [
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    ];
    let members: Vec<_> = (0..2)
        .map(|i| {
            let (config, stop) = (config(dirs[i].path(), &addrs[i]), stops[i].clone());
            std::thread::spawn(move || {
                cairn::server::serve_until(config, stop).map_err(|e| e.to_string())
            })
        })
        .collect();
    for addr in &addrs {
        wait_serving(addr, None);
    }
    let mut members = members.into_iter();
    stops[0].store(true, Ordering::Relaxed);
    let first = members.next().unwrap();
    assert_eq!(first.join().unwrap(), Ok(()));
    assert!(
        !answers_status(&addrs[0]),
        "the stopped member still answers"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        answers_status(&addrs[1]),
        "stopping one member stopped the other"
    );
    stops[1].store(true, Ordering::Relaxed);
    assert_eq!(members.next().unwrap().join().unwrap(), Ok(()));
}
