//! etcd's Maintenance Snapshot, Defragment and Hash on real `cairn serve` processes:
//! `etcdctl snapshot save` writes a file `cairn snapshot status` and `restore` take, and the
//! restored member serves the data; a defragmentation shrinks the tree file while a writer
//! goes on and loses nothing; members that applied the same log agree on the Hash; and the
//! quota: puts refused with etcd's NOSPACE error and alarm until compaction, defragmentation
//! and a disarm. The etcdctl checks are skipped (with a line saying so) where etcdctl is not
//! installed, except in CI (`CI` set), which installs it.

mod common;

use cairn::client::{Client, ClientError};
use cairn::grpc::pb::etcdserverpb as pb;
use cairn::mvcc::{
    CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest, Request, Response,
};
use cairn::protocol::{ClientRequest, ClientResponse, ErrorCode};
use common::cluster::{poll, Cluster};
use common::free_addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

/// A single-member `cairn serve` with its native and gRPC addresses, killed on drop.
struct Member {
    child: Child,
    addr: String,
    grpc: String,
    dir: PathBuf,
    log: PathBuf,
}

impl Member {
    fn start(dir: &Path, extra: &[&str]) -> Member {
        Member::start_named(dir, "m", &free_addr(), extra)
    }

    fn start_named(dir: &Path, name: &str, peer: &str, extra: &[&str]) -> Member {
        let (addr, grpc) = (free_addr(), free_addr());
        let log = dir.with_extension("log");
        let child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["serve", "--name", name, "--data-dir"])
            .arg(dir)
            .args(["--listen-native-addr", &addr])
            .args(["--listen-client-urls", &format!("http://{grpc}")])
            .args(["--listen-peer-urls", &format!("http://{peer}")])
            .args(["--initial-advertise-peer-urls", &format!("http://{peer}")])
            .args(["--initial-cluster", &format!("{name}=http://{peer}")])
            .args(["--placement", "unpinned", "--executors", "1"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn cairn serve");
        let mut m = Member {
            child,
            addr,
            grpc,
            dir: dir.to_path_buf(),
            log,
        };
        common::wait_serving(&m.addr.clone(), Some(&mut m.child));
        m
    }

    fn client(&self) -> Client {
        Client::new(vec![self.addr.clone()], TIMEOUT)
    }

    fn db_bytes(&self) -> u64 {
        std::fs::metadata(self.dir.join("db/cairn.db"))
            .expect("the tree file")
            .len()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        common::end_member(&mut self.child, &self.addr, &self.log);
    }
}

fn cairn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .output()
        .expect("run cairn")
}

/// Whether etcdctl can be run; outside CI a missing etcdctl skips the test.
fn etcdctl_installed() -> bool {
    let ok = Command::new("etcdctl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI installs etcdctl (.ci/run)"
        );
        eprintln!("SKIPPED: etcdctl 3.4 is needed (Debian: etcd-client)");
    }
    ok
}

/// etcdctl's exit code, stdout, and its "Error: ..." lines.
fn etcdctl(endpoint: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            &format!("--endpoints={endpoint}"),
            "--dial-timeout=5s",
            "--command-timeout=30s",
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run etcdctl");
    let errors = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("Error:"))
        .collect::<Vec<_>>()
        .join("\n");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        errors,
    )
}

fn put(c: &mut Client, key: &str, value: &[u8]) -> Result<i64, ClientError> {
    let put = PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.to_vec(),
        ..Default::default()
    };
    match c.request(&ClientRequest::Kv(Request::Put(put)))? {
        ClientResponse::Kv(Response::Put(p)) => Ok(p.header.revision),
        other => panic!("put {key}: {other:?}"),
    }
}

fn get(c: &mut Client, key: &str) -> Option<Vec<u8>> {
    let range = RangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    };
    match c.request(&ClientRequest::Kv(Request::Range(range))) {
        Ok(ClientResponse::Kv(Response::Range(mut r))) => r.kvs.pop().map(|kv| kv.value),
        other => panic!("get {key}: {other:?}"),
    }
}

fn delete_prefix(c: &mut Client, prefix: &str) -> i64 {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let del = DeleteRangeRequest {
        key: prefix.as_bytes().to_vec(),
        range_end: end,
        ..Default::default()
    };
    match c.request(&ClientRequest::Kv(Request::DeleteRange(del))) {
        Ok(ClientResponse::Kv(Response::DeleteRange(d))) => d.header.revision,
        other => panic!("delete {prefix}: {other:?}"),
    }
}

fn compact(c: &mut Client, revision: i64) {
    let req = CompactionRequest {
        revision,
        physical: true,
    };
    match c.request(&ClientRequest::Kv(Request::Compaction(req))) {
        Ok(ClientResponse::Kv(Response::Compaction(_))) => {}
        other => panic!("compact {revision}: {other:?}"),
    }
}

#[test]
fn etcdctl_snapshot_save_restores_into_a_serving_member() {
    if !etcdctl_installed() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let source = Member::start(&dir.path().join("src"), &[]);
    let mut c = source.client();
    let mut last = 0;
    for i in 0..300 {
        last = put(
            &mut c,
            &format!("key{i:03}"),
            format!("value{i}").as_bytes(),
        )
        .expect("put");
    }
    let file = dir.path().join("etcdctl.snap");
    let path = file.to_str().expect("path");
    let (exit, out, errors) = etcdctl(&source.grpc, &["snapshot", "save", path]);
    assert_eq!(exit, Some(0), "{errors}");
    assert_eq!(out, format!("Snapshot saved at {path}\n"));
    // Everything applied before the call is in it: the snapshot checkpointed first.
    let status = cairn(&["snapshot", "status", path, "-w", "json"]);
    let json = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status.status.success(), "{json}");
    assert!(json.contains(&format!("\"revision\":{last},")), "{json}");
    drop(source);

    let restored = dir.path().join("restored");
    let peer = free_addr();
    let out = cairn(&[
        "snapshot",
        "restore",
        path,
        "--data-dir",
        restored.to_str().expect("path"),
        "--name",
        "r",
        "--initial-cluster",
        &format!("r=http://{peer}"),
        "--initial-advertise-peer-urls",
        &format!("http://{peer}"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let member = Member::start_named(&restored, "r", &peer, &[]);
    let mut c = member.client();
    poll(TIMEOUT, "the restored member reads", || {
        let range = RangeRequest {
            key: b"key".to_vec(),
            range_end: b"kez".to_vec(),
            ..Default::default()
        };
        match c.request(&ClientRequest::Kv(Request::Range(range))) {
            Ok(ClientResponse::Kv(Response::Range(r))) => Some(r),
            _ => None,
        }
    });
    for i in [0, 150, 299] {
        assert_eq!(
            get(&mut c, &format!("key{i:03}")),
            Some(format!("value{i}").into_bytes())
        );
    }
    let (exit, out, _) = etcdctl(&member.grpc, &["get", "key", "--prefix", "--keys-only"]);
    assert_eq!(exit, Some(0));
    assert_eq!(out.lines().filter(|l| !l.is_empty()).count(), 300);
    assert_eq!(put(&mut c, "after", b"restore").expect("put"), last + 1);
}

/// Keys of the bulk the defragmentation test deletes, and their value bytes.
const BULK_KEYS: usize = 4000;
const BULK_VALUE_BYTES: usize = 2048;

#[test]
fn defragment_shrinks_the_file_while_a_writer_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Checkpoints every 500 entries: the bulk reaches the file before it is deleted.
    let m = Member::start(&dir.path().join("m"), &["--snapshot-count", "500"]);
    let mut c = m.client();
    for i in 0..BULK_KEYS {
        put(&mut c, &format!("bulk/{i:05}"), &[b'x'; BULK_VALUE_BYTES]).expect("put");
    }
    let deleted_at = delete_prefix(&mut c, "bulk/");
    compact(&mut c, deleted_at);
    // The compaction's deletions free pages inside the file; it does not shrink.
    let before = m.db_bytes();
    assert!(
        before > (BULK_KEYS * BULK_VALUE_BYTES) as u64,
        "{before} bytes"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, mut c) = (stop.clone(), m.client());
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) || acked.len() < 50 {
                let (key, value) = (format!("w/{i:06}"), format!("v{i}"));
                let rev = put(&mut c, &key, value.as_bytes()).expect("a write during defrag");
                acked.push((rev, key, value));
                i += 1;
            }
            acked
        })
    };
    std::thread::sleep(Duration::from_millis(200)); // the writer is writing
    let out = cairn(&["--endpoints", &m.addr, "--command-timeout", "60", "defrag"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("Finished defragmenting etcd member[{}]\n", m.addr)
    );
    let after = m.db_bytes();
    stop.store(true, Ordering::Relaxed);
    let acked = writer.join().expect("writer");
    assert!(
        after * 4 < before,
        "the file shrank from {before} bytes to {after} only"
    );
    for (rev, key, value) in &acked {
        assert_eq!(
            get(&mut c, key).as_deref(),
            Some(value.as_bytes()),
            "{key}, written at {rev}"
        );
    }
    // Status reports the new size.
    match c.request(&ClientRequest::Status) {
        Ok(ClientResponse::Status(s)) => assert!(s.db_size * 4 < before, "{s:?}"),
        other => panic!("status: {other:?}"),
    }
    if etcdctl_installed() {
        let (exit, out, errors) = etcdctl(&m.grpc, &["defrag"]);
        assert_eq!(exit, Some(0), "{errors}");
        assert_eq!(
            out,
            format!("Finished defragmenting etcd member[{}]\n", m.grpc)
        );
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn maintenance(
    addr: &str,
) -> pb::maintenance_client::MaintenanceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("URL")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    pb::maintenance_client::MaintenanceClient::new(channel)
}

/// Each member's Hash, once they all applied the same log: (hash, revision).
fn hashes(c: &Cluster) -> Vec<(u32, i64)> {
    c.wait_converged(Duration::from_secs(20));
    runtime().block_on(async {
        let mut out = Vec::new();
        for m in &c.members {
            let r = maintenance(&m.grpc_addr)
                .await
                .hash(pb::HashRequest::default())
                .await
                .expect("hash")
                .into_inner();
            let revision = r.header.expect("header").revision;
            out.push((r.hash, revision));
        }
        out
    })
}

#[test]
fn members_that_applied_the_same_log_have_the_same_hash() {
    let c = Cluster::start(3);
    c.wait_converged(Duration::from_secs(20));
    let mut client = Client::new(c.endpoints(), TIMEOUT);
    for i in 0..200 {
        put(
            &mut client,
            &format!("k{}", i % 50),
            format!("v{i}").as_bytes(),
        )
        .expect("put");
    }
    delete_prefix(&mut client, "k1");
    let granted = cairn(&[
        "--endpoints",
        &c.endpoints().join(","),
        "lease",
        "grant",
        "600",
    ]);
    assert!(granted.status.success());
    let first = hashes(&c);
    assert!(first.iter().all(|h| *h == first[0]), "{first:?}");
    // A compaction changes what the history holds: every member hashes it alike.
    compact(&mut client, first[0].1 - 10);
    let compacted = hashes(&c);
    assert!(
        compacted.iter().all(|h| *h == compacted[0]),
        "{compacted:?}"
    );
    assert_ne!(compacted[0].0, first[0].0);
    // So does a new lease (no key changed).
    let granted = cairn(&[
        "--endpoints",
        &c.endpoints().join(","),
        "lease",
        "grant",
        "60",
    ]);
    assert!(granted.status.success());
    let leased = hashes(&c);
    assert!(leased.iter().all(|h| *h == leased[0]), "{leased:?}");
    assert_ne!(leased[0].0, compacted[0].0);
    assert_eq!(leased[0].1, compacted[0].1);
}

/// `--quota-backend-bytes` of the quota test: room for a few hundred 4 KiB values.
const QUOTA_BYTES: u64 = 2 << 20;

#[test]
fn quota_exceeded_until_compaction_defragment_and_disarm() {
    if !etcdctl_installed() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let quota = QUOTA_BYTES.to_string();
    let m = Member::start(&dir.path().join("m"), &["--quota-backend-bytes", &quota]);
    let mut c = m.client();
    let value = vec![b'q'; 4096];
    let mut filled = 0;
    let refused = loop {
        match put(&mut c, &format!("fill/{filled:05}"), &value) {
            Ok(_) => filled += 1,
            Err(e) => break e,
        }
        assert!(filled < 10_000, "the quota never refused a put");
    };
    assert!(
        matches!(
            &refused,
            ClientError::Server {
                code: ErrorCode::NoSpace,
                ..
            }
        ),
        "{refused}"
    );
    assert!(filled > 100, "only {filled} puts were taken");
    let ep = m.grpc.as_str();
    // etcd's words and forms, through etcdctl.
    let (exit, _, errors) = etcdctl(ep, &["put", "more", "x"]);
    assert_eq!(exit, Some(1));
    assert_eq!(errors, "Error: etcdserver: mvcc: database space exceeded");
    let (exit, out, _) = etcdctl(ep, &["alarm", "list"]);
    assert_eq!(exit, Some(0));
    let alarm = regex::Regex::new(r"^memberID:\d+ alarm:NOSPACE ?\n$").expect("pattern");
    assert!(alarm.is_match(&out), "{out}");
    // Reads and deletes go on.
    let (exit, out, _) = etcdctl(ep, &["get", "fill/00000", "--print-value-only"]);
    assert_eq!((exit, out.trim_end().len()), (Some(0), value.len()));
    let (exit, out, errors) = etcdctl(ep, &["del", "fill/", "--prefix"]);
    assert_eq!((exit, out), (Some(0), format!("{filled}\n")), "{errors}");
    // Disarmed too early, the alarm is raised again by the next put (the history still
    // holds every value): compaction and defragmentation give the space back.
    let (exit, out, _) = etcdctl(ep, &["endpoint", "status", "-w", "json"]);
    assert_eq!(exit, Some(0));
    let revision: i64 = regex::Regex::new(r#""revision":(\d+)"#)
        .expect("pattern")
        .captures(&out)
        .and_then(|c| c[1].parse().ok())
        .unwrap_or_else(|| panic!("no revision in {out}"));
    let (exit, out, errors) = etcdctl(ep, &["compaction", &revision.to_string()]);
    assert_eq!(exit, Some(0), "{errors}");
    assert_eq!(out, format!("compacted revision {revision}\n"));
    let (exit, out, errors) = etcdctl(ep, &["defrag"]);
    assert_eq!(exit, Some(0), "{errors}");
    assert_eq!(out, format!("Finished defragmenting etcd member[{ep}]\n"));
    let (exit, out, _) = etcdctl(ep, &["alarm", "disarm"]);
    assert_eq!(exit, Some(0));
    assert!(alarm.is_match(&out), "{out}");
    let (exit, out, errors) = etcdctl(ep, &["put", "more", "x"]);
    assert_eq!((exit, out.as_str()), (Some(0), "OK\n"), "{errors}");
    let (_, out, _) = etcdctl(ep, &["alarm", "list"]);
    assert_eq!(out, "");
    assert!(m.db_bytes() < QUOTA_BYTES, "{} bytes", m.db_bytes());
}

/// Snapshot streams abandoned by their clients after one chunk, more of them than the
/// member reads at once: each one's reader stops and gives its place back (else the later
/// ones would be refused for good).
#[test]
fn abandoned_snapshot_streams_stop_reading() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = Member::start(&dir.path().join("m"), &["--snapshot-count", "500"]);
    let mut c = m.client();
    // 20 MiB: more than a stream's read-ahead, the connection's reply backlog and the
    // sockets' buffers hold, so a reader blocks when nobody takes the chunks.
    for i in 0..5000 {
        put(&mut c, &format!("big/{i:05}"), &[b'b'; 4096]).expect("put");
    }
    for n in 0..20 {
        let chunk = poll(Duration::from_secs(15), "a snapshot stream's place", || {
            let mut download = cairn::client::SnapshotDownload::start(
                std::slice::from_ref(&m.addr),
                TIMEOUT,
                None,
            )
            .expect("connect");
            match download.next_chunk() {
                Ok(chunk) => chunk,
                Err(ClientError::Server {
                    code: ErrorCode::Overloaded,
                    ..
                }) => None,
                Err(e) => panic!("snapshot stream {n}: {e}"),
            }
        });
        assert!(chunk.remaining_bytes > 3 << 20, "{}", chunk.remaining_bytes);
    }
    let file = dir.path().join("whole.snap");
    let path = file.to_str().expect("path");
    let out = cairn(&["--endpoints", &m.addr, "snapshot", "save", path]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = cairn(&["snapshot", "status", path]);
    assert!(status.status.success());
}
