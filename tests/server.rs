//! `cairn serve` as a real process: writes acknowledged over the native protocol survive
//! SIGKILL, bad input gets an error reply while other clients are served, SIGTERM exits
//! cleanly; a connection costs little memory while idle and gives it back, a client that does
//! not read holds bounded memory, and a stalled partial frame is closed.

use cairn::mvcc::{PutRequest, RangeRequest, Request, RequestOp, Response, TxnRequest};
use cairn::protocol::{
    decode_error, decode_response, encode_request, split_frame, ClientRequest, ClientResponse,
    ErrorCode, FrameKind, HEADER_BYTES,
};
mod common;

use common::{free_addr, serve_command};
use rand::{Rng, SeedableRng};
use rkyv::util::AlignedVec;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(dir: &Path, addr: &str) -> Server {
        Server::start_with(dir, addr, &[])
    }
    fn start_with(dir: &Path, addr: &str, flags: &[&str]) -> Server {
        let child = serve_command(dir, addr)
            .args(["--log-level", "warn"])
            .args(flags)
            .stdout(Stdio::null())
            .stderr(match std::env::var("CAIRN_TEST_SERVER_LOG") {
                Ok(path) => Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .unwrap(),
                ),
                Err(_) => Stdio::null(),
            })
            .spawn()
            .unwrap();
        // Serving, not only listening: the port is bound before the data directory is
        // locked, and a test that starts another member on the same directory next must
        // find it taken.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !serving(addr) {
            assert!(Instant::now() < deadline, "server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Server {
            child,
            addr: addr.to_string(),
        }
    }
    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a member answers a status request on `addr`.
fn serving(addr: &str) -> bool {
    let Ok(stream) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut client = Client {
        stream,
        buf: Vec::new(),
    };
    let request = encode_request(0, &ClientRequest::Status).unwrap();
    if client.stream.write_all(&request).is_err() {
        return false;
    }
    matches!(
        client.recv(),
        Some((0, Reply::Ok(ClientResponse::Status(_))))
    )
}

struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

enum Reply {
    Ok(ClientResponse),
    Err(ErrorCode),
}

impl Client {
    fn connect(addr: &str) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }
    fn send(&mut self, id: u64, req: &ClientRequest) {
        self.stream
            .write_all(&encode_request(id, req).unwrap())
            .unwrap();
    }
    /// The next reply frame, or None if the server closed the connection.
    fn recv(&mut self) -> Option<(u64, Reply)> {
        loop {
            if let Some((h, total)) = split_frame(&self.buf, u32::MAX).unwrap() {
                let mut p = AlignedVec::<16>::new();
                p.extend_from_slice(&self.buf[HEADER_BYTES..total]);
                self.buf.drain(..total);
                let reply = match h.kind {
                    FrameKind::Response => Reply::Ok(decode_response(&p).unwrap()),
                    _ => Reply::Err(decode_error(&p).unwrap().code),
                };
                return Some((h.request_id, reply));
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
    fn put(&mut self, id: u64, key: &str, value: &str) -> Option<i64> {
        let req = Request::Put(PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        });
        self.send(id, &ClientRequest::Kv(req));
        match self.recv()? {
            (rid, Reply::Ok(ClientResponse::Kv(Response::Put(p)))) if rid == id => {
                Some(p.header.revision)
            }
            _ => None,
        }
    }
    fn get(&mut self, key: &str) -> Option<(Vec<u8>, i64)> {
        let req = Request::Range(RangeRequest {
            key: key.into(),
            serializable: true,
            ..Default::default()
        });
        self.send(1, &ClientRequest::Kv(req));
        match self.recv() {
            Some((_, Reply::Ok(ClientResponse::Kv(Response::Range(r))))) => {
                r.kvs.first().map(|kv| (kv.value.clone(), kv.mod_revision))
            }
            _ => panic!("range failed"),
        }
    }
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked: Vec<(String, String, i64)> = Vec::new();
    // A fresh port per start: a killed process's listening socket can linger in the kernel
    // (its io_uring is torn down after the process is reaped) and, sharing the port through
    // SO_REUSEPORT, would take and reset some of the next connections.
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    // Frequent checkpoints and small WAL segments, so that kills land around log
    // compactions and restarts replay a WAL whose first segments were released.
    let flags = ["--snapshot-count", "20", "--wal-segment-bytes", "8388608"];
    let value_of = |key: &str| format!("{key}:{}", "v".repeat(16 << 10));
    for round in 0..20 {
        let addr = free_addr();
        let server = Server::start_with(dir.path(), &addr, &flags);
        let mut c = Client::connect(&server.addr);
        // Pipeline a burst, then kill while some are in flight.
        let base = acked.len();
        for i in 0..50 {
            let key = format!("k{round}-{i}");
            let req = Request::Put(PutRequest {
                key: key.clone().into(),
                value: value_of(&key).into(),
                ..Default::default()
            });
            c.send(1000 + i, &ClientRequest::Kv(req));
        }
        // Kill at a random moment: after some replies, with the rest still in flight.
        let wait_for = rng.gen_range(1..50);
        for _ in 0..wait_for {
            match c.recv() {
                Some((id, Reply::Ok(ClientResponse::Kv(Response::Put(p))))) => {
                    let key = format!("k{round}-{}", id - 1000);
                    acked.push((key.clone(), value_of(&key), p.header.revision));
                }
                Some((id, Reply::Err(code))) => panic!("round {round}: {id} failed: {code:?}"),
                Some((id, Reply::Ok(_))) => panic!("round {round}: {id}: not a put response"),
                None => panic!("round {round}: no reply"),
            }
        }
        assert_eq!(
            acked.len(),
            base + wait_for,
            "every reply before the kill is a success"
        );
        server.kill9();
    }
    let server = Server::start_with(dir.path(), &free_addr(), &flags);
    let mut c = Client::connect(&server.addr);
    for (key, value, rev) in &acked {
        assert_eq!(c.get(key), Some((value.as_bytes().to_vec(), *rev)), "{key}");
    }
    let mut revs: Vec<i64> = acked.iter().map(|a| a.2).collect();
    revs.sort();
    revs.dedup();
    assert_eq!(revs.len(), acked.len(), "each write has its own revision");
    // Every key was written once, so the stored revisions must be exactly 2..=current: no
    // gaps (writes applied but not acknowledged before a kill count too).
    let all = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        serializable: true,
        ..Default::default()
    };
    c.send(2, &ClientRequest::Kv(Request::Range(all)));
    let Some((_, Reply::Ok(ClientResponse::Kv(Response::Range(r))))) = c.recv() else {
        panic!("range")
    };
    let mut stored: Vec<i64> = r.kvs.iter().map(|kv| kv.mod_revision).collect();
    stored.sort();
    assert_eq!(stored, (2..=r.header.revision).collect::<Vec<_>>());
    let next = c.put(1, "after", "x").unwrap();
    assert!(next > *revs.last().unwrap());
    // 16 KiB a write filled several 8 MiB segments: the checkpoints that follow these
    // writes (once durable) compact the log and release the first segment. (Kills may come
    // before a checkpoint is durable, so the member is given these writes to do it.)
    for i in 0..25 {
        let key = format!("tail{i}");
        assert!(c.put(10 + i, &key, &value_of(&key)).is_some());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while dir.path().join("wal/0000000000000000.wal").exists() {
        assert!(
            Instant::now() < deadline,
            "log compaction releases WAL segments"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bad_input_gets_an_error_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let server = Server::start(dir.path(), &addr);
    let mut good = Client::connect(&server.addr);
    assert_eq!(good.put(1, "a", "1"), Some(2));
    // Garbage bytes: an error frame, then the connection closes.
    let mut bad = Client::connect(&server.addr);
    bad.stream.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert!(matches!(
        bad.recv(),
        Some((0, Reply::Err(ErrorCode::Malformed)))
    ));
    assert!(bad.recv().is_none());
    // Valid framing, invalid payload.
    let mut bad = Client::connect(&server.addr);
    let mut frame = encode_request(5, &ClientRequest::Status).unwrap().to_vec();
    frame.extend_from_slice(&[0xAB; 3]);
    let n = (frame.len() - HEADER_BYTES) as u32;
    frame[4..8].copy_from_slice(&n.to_le_bytes());
    bad.stream.write_all(&frame).unwrap();
    assert!(matches!(
        bad.recv(),
        Some((5, Reply::Err(ErrorCode::Malformed)))
    ));
    // Over the size limit.
    let mut bad = Client::connect(&server.addr);
    let mut header = encode_request(6, &ClientRequest::Status).unwrap()[..HEADER_BYTES].to_vec();
    header[4..8].copy_from_slice(&(64u32 << 20).to_le_bytes());
    bad.stream.write_all(&header).unwrap();
    assert!(matches!(
        bad.recv(),
        Some((0, Reply::Err(ErrorCode::Malformed)))
    ));
    // Empty key: etcd's error, connection stays open.
    let mut c = Client::connect(&server.addr);
    c.send(7, &ClientRequest::Kv(Request::Put(PutRequest::default())));
    assert!(matches!(
        c.recv(),
        Some((7, Reply::Err(ErrorCode::InvalidRequest)))
    ));
    assert_eq!(c.put(8, "b", "2"), Some(3));
    // A txn over --max-txn-ops (default 128): etcd's error, connection stays open.
    let ops = (0..129).map(|i| {
        RequestOp::Put(PutRequest {
            key: format!("t{i}").into(),
            ..Default::default()
        })
    });
    let big = TxnRequest {
        success: ops.collect(),
        ..Default::default()
    };
    c.send(10, &ClientRequest::Kv(Request::Txn(big)));
    assert!(matches!(
        c.recv(),
        Some((10, Reply::Err(ErrorCode::InvalidRequest)))
    ));
    // range_end before key: an empty result, as etcd gives.
    let backwards = RangeRequest {
        key: b"z".to_vec(),
        range_end: b"a".to_vec(),
        serializable: true,
        ..Default::default()
    };
    c.send(11, &ClientRequest::Kv(Request::Range(backwards)));
    let Some((11, Reply::Ok(ClientResponse::Kv(Response::Range(r))))) = c.recv() else {
        panic!("range")
    };
    assert!(r.kvs.is_empty() && r.count == 0);
    // Truncated frame then close: the server just drops it.
    let mut t = Client::connect(&server.addr);
    t.stream
        .write_all(&encode_request(9, &ClientRequest::Status).unwrap()[..10])
        .unwrap();
    drop(t);
    assert_eq!(good.get("b"), Some((b"2".to_vec(), 3)));
}

#[test]
fn sigterm_exits_cleanly_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut server = Server::start(dir.path(), &addr);
    let mut c = Client::connect(&server.addr);
    assert_eq!(c.put(1, "k", "v"), Some(2));
    // Writes in flight on several connections when SIGTERM comes: each is answered with
    // success or "stopping", and every success is there after the restart.
    let mut conns: Vec<Client> = (0..4).map(|_| Client::connect(&server.addr)).collect();
    for (n, c) in conns.iter_mut().enumerate() {
        for i in 0..200u64 {
            let key = format!("t{n}-{i}");
            let req = Request::Put(PutRequest {
                key: key.clone().into(),
                value: key.into(),
                ..Default::default()
            });
            c.send(10 + i, &ClientRequest::Kv(req));
        }
    }
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    let signalled = Instant::now();
    let mut acked = Vec::new();
    for (n, c) in conns.iter_mut().enumerate() {
        while let Some((id, reply)) = c.recv() {
            match reply {
                Reply::Ok(ClientResponse::Kv(Response::Put(p))) => {
                    acked.push((format!("t{n}-{}", id - 10), p.header.revision))
                }
                Reply::Err(ErrorCode::Unavailable) => {}
                Reply::Err(code) => panic!("in-flight write failed with {code:?}"),
                Reply::Ok(_) => panic!("not a put response"),
            }
        }
    }
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    // Every request was answered or refused at once: no reply waited out the drain timeout.
    assert!(signalled.elapsed() < Duration::from_secs(3));
    drop(server);
    let server = Server::start(dir.path(), &free_addr());
    let mut c = Client::connect(&server.addr);
    assert_eq!(c.get("k"), Some((b"v".to_vec(), 2)));
    for (key, rev) in &acked {
        assert_eq!(c.get(key), Some((key.as_bytes().to_vec(), *rev)), "{key}");
    }
}

#[test]
fn linearizable_reads_see_every_acknowledged_write_without_writing_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &free_addr());
    let mut writer = Client::connect(&server.addr);
    let mut reader = Client::connect(&server.addr);
    let status = |c: &mut Client| {
        c.send(99, &ClientRequest::Status);
        match c.recv() {
            Some((99, Reply::Ok(ClientResponse::Status(s)))) => s,
            _ => panic!("status"),
        }
    };
    for i in 0..50 {
        let rev = writer.put(i, "k", &i.to_string()).unwrap();
        // A read on another connection, right after the acknowledgement, sees the write.
        let req = Request::Range(RangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        });
        reader.send(1000 + i, &ClientRequest::Kv(req));
        let Some((_, Reply::Ok(ClientResponse::Kv(Response::Range(r))))) = reader.recv() else {
            panic!("read")
        };
        assert_eq!(
            (r.kvs[0].value.clone(), r.kvs[0].mod_revision),
            (i.to_string().into_bytes(), rev)
        );
    }
    let before = status(&mut reader).raft_index;
    for i in 0..20 {
        reader.send(
            2000 + i,
            &ClientRequest::Kv(Request::Range(RangeRequest {
                key: b"k".to_vec(),
                ..Default::default()
            })),
        );
        assert!(matches!(reader.recv(), Some((_, Reply::Ok(_)))));
    }
    assert_eq!(
        status(&mut reader).raft_index,
        before,
        "reads append nothing to the log"
    );
}

#[test]
fn a_port_in_use_or_a_data_dir_in_use_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let _first = Server::start(dir.path(), &addr);
    let other = tempfile::tempdir().unwrap();
    let out = serve_command(other.path(), &addr).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot listen on") && err.contains(&addr),
        "{err}"
    );
    let out = serve_command(dir.path(), &free_addr()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("cairn serve:") && err.contains("is in use by another open WAL"),
        "one clear line: {err}"
    );
}

#[test]
fn cluster_flags_are_checked_and_the_member_gets_etcds_ids() {
    let dir = tempfile::tempdir().unwrap();
    let run = |flags: &[&str]| {
        let out = serve_command(dir.path(), &free_addr())
            .args(flags)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flags:?}");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(err.starts_with("cairn serve:"), "one clear line: {err}");
        err
    };
    assert!(run(&["--name", "a"]).contains("couldn't find local name \"a\""));
    let twice = "default=http://localhost:2380,b=http://localhost:2380";
    assert!(run(&["--initial-cluster", twice]).contains("same peer URLs"));
    assert!(run(&["--initial-cluster-state", "existing"]).contains("no member besides"));
    assert!(
        run(&["--initial-advertise-peer-urls", "http://10.0.0.1:2380"])
            .contains("--initial-advertise-peer-urls")
    );
    // A peer port in use is refused like the native one.
    let taken = free_addr();
    let _hold = std::net::TcpListener::bind(&taken).unwrap();
    let err = run(&["--listen-peer-urls", &format!("http://{taken}")]);
    assert!(
        err.contains("cannot listen on") && err.contains(&taken),
        "{err}"
    );

    // A valid single-member cluster: etcd's IDs for the same flags, kept across restarts
    // even if the --initial-* flags change (as in etcd, they only matter the first time).
    let name_flags = [
        "--name",
        "m1",
        "--initial-cluster",
        "m1=http://127.0.0.1:12380",
        "--initial-advertise-peer-urls",
        "http://127.0.0.1:12380",
        "--initial-cluster-token",
        "tok",
    ];
    let server = Server::start_with(dir.path(), &free_addr(), &name_flags);
    let status = |addr: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["--endpoints", addr, "endpoint", "status", "-w", "json"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let expected_member = cairn::server::member_id(&["http://127.0.0.1:12380".into()], "tok");
    let expected_cluster = cairn::server::cluster_id(&[expected_member]);
    let json = status(&server.addr);
    assert!(
        json.contains(&format!("\"member_id\":{expected_member}"))
            && json.contains(&format!("\"cluster_id\":{expected_cluster}"))
            && json.contains(&format!("\"leader\":{expected_member}")),
        "{json}"
    );
    server.kill9();
    // A fresh port: a killed member's listener can linger for a moment.
    let server = Server::start_with(dir.path(), &free_addr(), &["--name", "renamed"]);
    let json = status(&server.addr);
    assert!(
        json.contains(&format!("\"member_id\":{expected_member}")),
        "{json}"
    );
    drop(server);
}

#[test]
fn over_the_quota_puts_are_refused_and_reads_deletes_and_compaction_free_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        &free_addr(),
        &["--quota-backend-bytes", "1048576"],
    );
    let mut c = Client::connect(&server.addr);
    let value = "v".repeat(16 << 10);
    let put = |c: &mut Client, id: u64, key: &str| {
        let req = Request::Put(PutRequest {
            key: key.into(),
            value: value.clone().into(),
            ..Default::default()
        });
        c.send(id, &ClientRequest::Kv(req));
        match c.recv() {
            Some((_, Reply::Ok(_))) => Ok(()),
            Some((_, Reply::Err(code))) => Err(code),
            None => panic!("no reply"),
        }
    };
    let mut written = 0;
    let refused = loop {
        assert!(written < 200, "1 MiB of quota never ran out");
        match put(&mut c, 1, &format!("k{written}")) {
            Ok(()) => written += 1,
            Err(code) => break code,
        }
    };
    assert_eq!(refused, ErrorCode::NoSpace);
    assert!(
        written >= 40,
        "refused only near the quota, after {written} puts"
    );
    // A lease grant adds a record too: refused alike.
    let grant = cairn::lease::LeaseGrantRequest { ttl: 60, id: 0 };
    c.send(
        6,
        &ClientRequest::Lease(cairn::lease::LeaseRequest::Grant(grant)),
    );
    assert!(matches!(
        c.recv(),
        Some((6, Reply::Err(ErrorCode::NoSpace)))
    ));
    // Reads and deletes go on; so does a txn that only reads.
    assert_eq!(c.get("k0").map(|(v, _)| v.len()), Some(value.len()));
    let delete = Request::DeleteRange(cairn::mvcc::DeleteRangeRequest {
        key: b"k".to_vec(),
        range_end: b"l".to_vec(),
        ..Default::default()
    });
    c.send(2, &ClientRequest::Kv(delete));
    let Some((_, Reply::Ok(ClientResponse::Kv(Response::DeleteRange(d))))) = c.recv() else {
        panic!("delete refused")
    };
    assert_eq!(d.deleted, written as i64);
    // Compacting past the delete frees the space; as in etcd, the NOSPACE alarm stays
    // raised (and writes refused) until it is disarmed.
    let compact = Request::Compaction(cairn::mvcc::CompactionRequest {
        revision: d.header.revision,
        ..Default::default()
    });
    c.send(3, &ClientRequest::Kv(compact));
    assert!(matches!(c.recv(), Some((3, Reply::Ok(_)))));
    let alarm = |c: &mut Client, action| {
        let req = cairn::protocol::AlarmRequest {
            action,
            member_id: 0,
            alarm: Some(cairn::protocol::AlarmType::Nospace),
        };
        c.send(5, &ClientRequest::Alarm(req));
        match c.recv() {
            Some((5, Reply::Ok(ClientResponse::Alarm(a)))) => a.alarms.len(),
            _ => panic!("alarm request failed"),
        }
    };
    assert_eq!(alarm(&mut c, cairn::protocol::AlarmAction::Get), 1);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(put(&mut c, 4, "again"), Err(ErrorCode::NoSpace));
    let deadline = Instant::now() + Duration::from_secs(10);
    while {
        alarm(&mut c, cairn::protocol::AlarmAction::Deactivate);
        put(&mut c, 4, "again").is_err()
    } {
        assert!(
            Instant::now() < deadline,
            "space freed by compaction never counted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn too_little_locked_memory_is_one_clear_line() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = serve_command(dir.path(), &free_addr());
    // SAFETY: setrlimit is async-signal-safe; it runs in the child before exec.
    unsafe {
        cmd.pre_exec(|| {
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &none) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("cairn serve:")
            && err.contains("raise `ulimit -l`")
            && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn a_data_directory_missing_its_tree_or_its_wal_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--snapshot-count", "5"];
    let mut server = Server::start_with(dir.path(), &free_addr(), &flags);
    let mut c = Client::connect(&server.addr);
    for i in 0..30 {
        assert!(c.put(i, &format!("k{i}"), "v").is_some());
    }
    // Let a checkpoint compact the log, then stop cleanly.
    std::thread::sleep(Duration::from_millis(300));
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    assert!(server.child.wait().unwrap().success());
    drop(server);
    let refused = |dir: &Path| {
        let out = serve_command(dir, &free_addr())
            .args(flags)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Without the tree file, the compacted log cannot rebuild what was acknowledged.
    let copy = tempfile::tempdir().unwrap();
    let cp = |from: &Path, to: &Path| {
        assert!(Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(to)
            .status()
            .unwrap()
            .success())
    };
    cp(&dir.path().join("wal"), copy.path());
    let err = refused(copy.path());
    assert!(err.contains("the data directory is damaged"), "{err}");
    // Without the WAL, the tree holds entries no log leads to.
    let copy = tempfile::tempdir().unwrap();
    cp(&dir.path().join("db"), copy.path());
    let err = refused(copy.path());
    assert!(err.contains("the data directory is damaged"), "{err}");
    // Whole, it starts and has everything.
    let server = Server::start_with(dir.path(), &free_addr(), &flags);
    assert_eq!(
        Client::connect(&server.addr).get("k29").map(|(v, _)| v),
        Some(b"v".to_vec())
    );
}

#[test]
fn a_reply_over_64_mib_is_an_error_asking_for_a_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &free_addr());
    let mut c = Client::connect(&server.addr);
    let value = "x".repeat(1 << 20);
    for i in 0..66 {
        assert!(c.put(i, &format!("big{i:02}"), &value).is_some());
    }
    let all = |limit: i64| {
        ClientRequest::Kv(Request::Range(RangeRequest {
            key: b"big".to_vec(),
            range_end: b"bih".to_vec(),
            limit,
            serializable: true,
            ..Default::default()
        }))
    };
    c.send(100, &all(0));
    let Some((100, Reply::Err(ErrorCode::InvalidRequest))) = c.recv() else {
        panic!("a 66 MiB reply was not refused")
    };
    // The connection goes on, and with a limit the same range is served.
    c.send(101, &all(10));
    let Some((101, Reply::Ok(ClientResponse::Kv(Response::Range(r))))) = c.recv() else {
        panic!("limited range")
    };
    assert_eq!((r.kvs.len(), r.count, r.more), (10, 66, true));
}

#[test]
fn a_read_a_member_cannot_serve_is_asked_of_the_next_endpoint_and_a_write_is_not() {
    use cairn::client::{Client as Library, ClientError};
    // A member that never has a leader: it answers reads and writes Unavailable at once.
    let (lonely_dir, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let flags = common::leaderless_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let lonely = Server::start_with(lonely_dir.path(), &free_addr(), &flags);
    let healthy = Server::start(dir.path(), &free_addr());
    let timeout = Duration::from_secs(5);
    let range = ClientRequest::Kv(Request::Range(RangeRequest {
        key: b"k".to_vec(),
        ..Default::default()
    }));
    let put = |value: &str| {
        ClientRequest::Kv(Request::Put(PutRequest {
            key: b"k".to_vec(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        }))
    };
    let unavailable = |r: Result<ClientResponse, ClientError>| {
        matches!(
            r,
            Err(ClientError::Server {
                code: ErrorCode::Unavailable,
                ..
            })
        )
    };
    Library::new(vec![healthy.addr.clone()], timeout)
        .request(&put("v"))
        .expect("put");
    let mut alone = Library::new(vec![lonely.addr.clone()], timeout);
    assert!(unavailable(alone.request(&range)), "no leader, no read");

    // Both endpoints, the leaderless one first: the read is answered by the other...
    let both = vec![lonely.addr.clone(), healthy.addr.clone()];
    let mut client = Library::new(both.clone(), timeout);
    let Ok(ClientResponse::Kv(Response::Range(r))) = client.request(&range) else {
        panic!("the read was not asked of the second endpoint")
    };
    assert_eq!(r.kvs[0].value, b"v");
    // ...and so is a read-only txn...
    let txn = ClientRequest::Kv(Request::Txn(TxnRequest {
        success: vec![RequestOp::Range(RangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        })],
        ..Default::default()
    }));
    let mut client = Library::new(both.clone(), timeout);
    assert!(client.request(&txn).is_ok(), "a read-only txn");
    // ...but a write the first member refused is not sent on: its error is the answer.
    let mut client = Library::new(both.clone(), timeout);
    assert!(unavailable(client.request(&put("w"))), "a write went on");
    let mut client = Library::new(vec![healthy.addr.clone()], timeout);
    let Ok(ClientResponse::Kv(Response::Range(r))) = client.request(&range) else {
        panic!("read")
    };
    assert_eq!(r.kvs[0].value, b"v", "the refused put was not applied");
    // The command line goes through the same client.
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--endpoints", &both.join(","), "get", "k"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "k\nv\n");
}

#[test]
fn an_election_timeout_under_five_heartbeats_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "serve",
            "--heartbeat-interval",
            "100",
            "--election-timeout",
            "300",
        ])
        .args(["--listen-native-addr", &free_addr(), "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("should be at least as 5 times as --heartbeat-interval"),
        "{err}"
    );
}

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Raises this process's open files limit to its hard limit; at least `need` must fit.
fn raise_open_files_limit(need: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    assert!(
        limit.rlim_max >= need,
        "the open files hard limit is under {need}"
    );
}

#[test]
fn idle_connections_cost_a_few_kib_each_and_give_it_back_when_closed() {
    const CONNECTIONS: usize = 2_000;
    raise_open_files_limit(CONNECTIONS as u64 + 200);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &free_addr());
    let pid = server.child.id();
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kib(pid);
    // Each connection sends a request and reads its reply (so it was accepted and its
    // buffers were used), then stays idle.
    let mut clients: Vec<Client> = (0..CONNECTIONS)
        .map(|_| Client::connect(&server.addr))
        .collect();
    for c in &mut clients {
        c.send(1, &ClientRequest::Status);
    }
    for c in &mut clients {
        assert!(matches!(c.recv(), Some((1, Reply::Ok(_)))));
    }
    std::thread::sleep(Duration::from_millis(300));
    let open = rss_kib(pid);
    let per_connection = (open.saturating_sub(before) << 10) / CONNECTIONS as u64;
    drop(clients);
    // Freed memory goes back a moment after the closes (RELEASE_MEMORY_DELAY, 2 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = rss_kib(pid);
    while after > before + before / 10 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        after = rss_kib(pid);
    }
    eprintln!("VmRSS KiB: {before} before, {open} with {CONNECTIONS} idle connections ({per_connection} bytes each), {after} after they closed");
    assert!(
        per_connection <= 16 << 10,
        "{per_connection} bytes per idle connection"
    );
    assert!(
        after <= before + before / 10,
        "VmRSS {after} KiB after closing, {before} KiB before"
    );
    // Still serving.
    assert!(serving(&server.addr));
}

#[test]
fn a_client_that_does_not_read_its_replies_holds_bounded_memory() {
    const READS: u64 = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &free_addr());
    let pid = server.child.id();
    let mut other = Client::connect(&server.addr);
    // Twelve 10 KB values: each range below is a 120 KB reply, 120 MB for all of them.
    let value = "v".repeat(10_000);
    for i in 0..12 {
        assert!(other.put(i, &format!("big{i:02}"), &value).is_some());
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(pid);
    let mut greedy = Client::connect(&server.addr);
    let mut burst = Vec::new();
    for id in 0..READS {
        let range = Request::Range(RangeRequest {
            key: b"big".to_vec(),
            range_end: b"bih".to_vec(),
            // Half serializable (encoded as read), half linearizable (spawned).
            serializable: id % 2 == 0,
            ..Default::default()
        });
        burst.extend_from_slice(&encode_request(id, &ClientRequest::Kv(range)).unwrap());
    }
    greedy.stream.write_all(&burst).unwrap();
    // The server holds at most REPLY_BACKLOG_BYTES_MAX (4 MiB) of replies for it, plus one.
    let mut peak = 0;
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(200));
        peak = peak.max(rss_kib(pid));
    }
    // Meanwhile the others are served.
    assert!(other.put(100, "small", "1").is_some());
    assert_eq!(other.get("small").map(|(v, _)| v), Some(b"1".to_vec()));
    // Once the client reads, every reply comes.
    let mut seen = vec![false; READS as usize];
    for _ in 0..READS {
        let Some((id, Reply::Ok(ClientResponse::Kv(Response::Range(r))))) = greedy.recv() else {
            panic!("a range reply")
        };
        assert_eq!(r.kvs.len(), 12);
        assert!(
            !std::mem::replace(&mut seen[id as usize], true),
            "reply {id} twice"
        );
    }
    let grown = peak.saturating_sub(before);
    eprintln!(
        "VmRSS KiB: {before} before, {peak} at most while {READS} replies of 120 KB were unread"
    );
    // Unbounded, the replies would take 120 MB. Bounded, the growth is the 4 MiB backlog,
    // the replies the in-flight reads are building, and what the allocator keeps of them:
    // 12 to 16.4 MiB measured here (16 MiB, the bound this test had, was met and missed
    // alike by the same build).
    assert!(grown < 24 << 10, "VmRSS grew {grown} KiB");
}

#[test]
fn a_stalled_partial_frame_is_closed_after_the_timeout_and_idle_connections_stay() {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--partial-frame-timeout", "500"];
    let server = Server::start_with(dir.path(), &free_addr(), &flags);
    let put = encode_request(
        1,
        &ClientRequest::Kv(Request::Put(PutRequest {
            key: b"k".to_vec(),
            value: vec![7; 1000],
            ..Default::default()
        })),
    )
    .unwrap();
    let mut half_frame = Client::connect(&server.addr);
    half_frame.stream.write_all(&put[..put.len() / 2]).unwrap();
    let mut half_header = Client::connect(&server.addr);
    half_header.stream.write_all(&put[..5]).unwrap();
    let mut idle = Client::connect(&server.addr);
    let mut used = Client::connect(&server.addr);
    assert!(used.put(2, "a", "1").is_some());
    let sent = Instant::now();
    assert!(half_frame.recv().is_none(), "closed without a reply");
    assert!(half_header.recv().is_none(), "closed without a reply");
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    // Connections with nothing of a frame pending stay open.
    assert!(idle.put(3, "b", "2").is_some());
    assert!(used.put(4, "c", "3").is_some());
}
