//! The load generator against a member running in this process: every workload completes
//! requests without errors and reports them as one JSON line.

mod common;

use common::{field, free_addr, loadgen, member_config, wait_for};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A number the report must have.
fn number(line: &str, name: &str) -> f64 {
    field(line, name).unwrap_or_else(|| panic!("{name} is null: {line}"))
}

/// A member running in this process (native protocol at `addr`, gRPC at `grpc`), stopped
/// by [`InProcess::stop`], which checks that it stopped cleanly.
struct InProcess {
    addr: String,
    grpc: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    server: std::thread::JoinHandle<Result<(), String>>,
    _dir: tempfile::TempDir,
}

impl InProcess {
    fn start() -> InProcess {
        let dir = tempfile::tempdir().unwrap();
        let (addr, grpc) = (free_addr(), free_addr());
        let mut config = member_config(dir.path(), &addr);
        config.listen_client_urls = vec![format!("http://{grpc}")];
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let member_stop = stop.clone();
        let server = std::thread::spawn(move || {
            cairn::server::serve_until(config, member_stop).map_err(|e| e.to_string())
        });
        wait_for(&addr);
        wait_for(&grpc);
        InProcess {
            addr,
            grpc,
            stop,
            server,
            _dir: dir,
        }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        assert_eq!(self.server.join().unwrap(), Ok(()));
    }
}

/// The report of a run of `workload` that went through and completed requests without
/// errors.
fn clean_run(workload: &str, out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{workload}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(number(&line, "ops") > 0.0, "{workload}: {line}");
    assert_eq!(number(&line, "errors"), 0.0, "{workload}: {line}");
    line
}

#[test]
fn every_workload_runs_against_a_member() {
    let member = InProcess::start();
    let addr = member.addr.clone();
    for (workload, consistency, rate) in [
        ("put", "l", "0"),
        ("range", "s", "0"),
        ("range", "l", "0"),
        ("txn", "l", "0"),
        ("mixed", "s", "2000"),
    ] {
        let out = loadgen(
            "native",
            &addr,
            &[
                "--workload",
                workload,
                "--consistency",
                consistency,
                "--rate",
                rate,
                "--duration",
                "1",
                "--key-space",
                "100",
            ],
        )
        .output()
        .unwrap();
        let line = clean_run(workload, out);
        assert!(number(&line, "p50_ms") <= number(&line, "p99_ms"), "{line}");
        if rate != "0" {
            // Open loop at 2000/s for one second.
            let qps = number(&line, "qps");
            assert!(
                (1000.0..=2500.0).contains(&qps),
                "{workload} at --rate {rate}: {line}"
            );
        }
    }
    // fill puts each key once and stops on its own, long before --duration.
    let started = Instant::now();
    let extra = [
        "--workload",
        "fill",
        "--key-space",
        "500",
        "--duration",
        "60",
    ];
    let out = loadgen("native", &addr, &extra).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    assert_eq!(number(&line, "ops"), 500.0, "{line}");
    assert_eq!(number(&line, "errors"), 0.0, "{line}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "fill stopped on its own"
    );
    member.stop();
}

/// `--target etcd` speaks etcd's gRPC API: against the member's gRPC port every workload it
/// offers completes requests without errors, `fill` writes each key once, and a request the
/// member refuses counts as an error, not as an operation.
#[test]
fn every_workload_runs_through_the_grpc_api() {
    let member = InProcess::start();
    let grpc = member.grpc.clone();
    let run = |extra: &[&str]| loadgen("etcd", &grpc, extra).output().unwrap();
    for (workload, consistency) in [
        ("put", "l"),
        ("range", "s"),
        ("range", "l"),
        ("txn", "l"),
        ("mixed", "s"),
        ("lock", "l"),
        ("lease", "l"),
    ] {
        let out = run(&[
            "--workload",
            workload,
            "--consistency",
            consistency,
            "--key-space",
            "100",
            "--duration",
            "1",
        ]);
        clean_run(workload, out);
    }
    let out = run(&[
        "--workload",
        "fill",
        "--key-space",
        "300",
        "--duration",
        "60",
    ]);
    let line = String::from_utf8(out.stdout).unwrap();
    assert_eq!(number(&line, "ops"), 300.0, "{line}");
    assert_eq!(number(&line, "errors"), 0.0, "{line}");
    // Values over the member's 1 MiB request limit: every put is refused.
    let out = run(&[
        "--workload",
        "put",
        "--value-size",
        "2000000",
        "--key-space",
        "100",
        "--duration",
        "1",
    ]);
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(number(&line, "errors") > 0.0, "{line}");
    assert_eq!(number(&line, "ops"), 0.0, "{line}");
    member.stop();
}
