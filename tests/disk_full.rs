//! A member whose file system fills up: it raises etcd's NOSPACE alarm, refuses writes that
//! add data with a clear error, keeps serving reads, does not crash (or crash-loop on
//! restart), and takes writes again once space is freed and the alarm disarmed. Nothing
//! acknowledged is lost.
//!
//! The file system is a small tmpfs the test mounts (it needs root); where mounting is not
//! allowed the test says so and passes without running.

mod common;

use cairn::client::{Client, ClientError};
use cairn::mvcc::{PutRequest, RangeRequest, Request, Response};
use cairn::protocol::{
    AlarmAction, AlarmRequest, AlarmType, ClientRequest, ClientResponse, ErrorCode,
};
use common::{free_addr, wait_serving, Tmpfs};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Member {
    child: Child,
    addr: String,
}

impl Member {
    fn start(dir: &Path, addr: &str, peer: &str) -> Member {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["serve", "--log-level", "warn", "--listen-native-addr", addr])
            .args(["--listen-client-urls", "http://127.0.0.1:0"])
            .arg("--listen-peer-urls")
            .arg(format!("http://{peer}"))
            .arg("--data-dir")
            .arg(dir)
            .args(["--wal-segment-bytes", "8388608", "--snapshot-count", "500"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_serving(addr, Some(&mut child));
        Member {
            child,
            addr: addr.to_string(),
        }
    }

    fn client(&self) -> Client {
        Client::new(vec![self.addr.clone()], Duration::from_secs(10))
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const VALUE_BYTES: usize = 8 << 10;

fn put(c: &mut Client, key: &str) -> Result<i64, ClientError> {
    let req = Request::Put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: vec![b'v'; VALUE_BYTES],
        ..Default::default()
    });
    match c.request(&ClientRequest::Kv(req))? {
        ClientResponse::Kv(Response::Put(p)) => Ok(p.header.revision),
        other => panic!("put {key}: {other:?}"),
    }
}

fn get(c: &mut Client, key: &str, serializable: bool) -> Option<i64> {
    let req = Request::Range(RangeRequest {
        key: key.as_bytes().to_vec(),
        serializable,
        ..Default::default()
    });
    match c.request(&ClientRequest::Kv(req)) {
        Ok(ClientResponse::Kv(Response::Range(r))) => r.kvs.first().map(|kv| kv.mod_revision),
        other => panic!("get {key}: {other:?}"),
    }
}

fn alarms(c: &mut Client) -> Vec<AlarmType> {
    let req = AlarmRequest {
        action: AlarmAction::Get,
        member_id: 0,
        alarm: None,
    };
    match c.request(&ClientRequest::Alarm(req)) {
        Ok(ClientResponse::Alarm(r)) => r.alarms.iter().map(|a| a.alarm).collect(),
        other => panic!("alarm list: {other:?}"),
    }
}

fn is_no_space(e: &ClientError) -> bool {
    matches!(e, ClientError::Server { code: ErrorCode::NoSpace, message }
        if message == "etcdserver: mvcc: database space exceeded")
}

fn cli(addr: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--endpoints", addr])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Puts new keys until one is refused for space; returns the acknowledged ones.
fn fill(m: &mut Member, from: usize, acked: &mut Vec<(String, i64)>) -> ClientError {
    let mut c = m.client();
    for i in from.. {
        let key = format!("k{i:06}");
        match put(&mut c, &key) {
            Ok(rev) => acked.push((key, rev)),
            Err(e) => return e,
        }
        assert!(i < from + 20_000, "the file system never filled");
    }
    unreachable!()
}

#[test]
fn a_full_disk_raises_nospace_serves_reads_and_recovers_once_space_is_freed() {
    let Some(fs) = Tmpfs::mount("80m") else {
        return;
    };
    // Ballast to delete later, giving space back.
    std::fs::write(fs.path.join("ballast"), vec![1u8; 24 << 20]).unwrap();
    let dir = fs.path.join("member");
    let (addr, peer) = (free_addr(), free_addr());
    let mut m = Member::start(&dir, &addr, &peer);
    let mut acked = Vec::new();
    let refused = fill(&mut m, 0, &mut acked);
    assert!(is_no_space(&refused), "refused with: {refused}");
    assert!(
        acked.len() > 500,
        "refused early: {} puts acknowledged",
        acked.len()
    );
    let mut c = m.client();
    assert_eq!(alarms(&mut c), vec![AlarmType::Nospace]);
    // etcdctl's forms: `alarm list` and the ERRORS of `endpoint status`.
    let (ok, out) = cli(&addr, &["alarm", "list"]);
    assert!(ok && out.ends_with("alarm:NOSPACE\n"), "{out}");
    let (ok, out) = cli(&addr, &["endpoint", "status"]);
    assert!(ok && out.contains("alarm:NOSPACE"), "{out}");
    // The member stays up, refusing writes and serving reads, across its checkpoint
    // retries (it used to exit at its next checkpoint).
    for _ in 0..3 {
        std::thread::sleep(Duration::from_secs(1));
        assert!(m.alive(), "the member exited with the disk full");
        let e = put(&mut c, "more").unwrap_err();
        assert!(is_no_space(&e), "{e}");
        let (key, rev) = &acked[acked.len() / 2];
        assert_eq!(get(&mut c, key, true), Some(*rev));
        assert_eq!(get(&mut c, key, false), Some(*rev));
    }
    // A restart with the disk still full serves reads.
    assert!(m.stop().success(), "a stop with the disk full is clean");
    let mut m = Member::start(&dir, &addr, &peer);
    let mut c = m.client();
    for (key, rev) in acked.iter().step_by(97) {
        assert_eq!(get(&mut c, key, true), Some(*rev), "{key}");
    }
    // It finds the disk full again (writes may be taken until then: the WAL has room).
    let refused = fill(&mut m, acked.len(), &mut acked);
    assert!(is_no_space(&refused), "refused with: {refused}");
    assert!(m.alive());
    // Space is freed: once the alarm is disarmed, writes are taken again.
    std::fs::remove_file(fs.path.join("ballast")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out) = cli(&addr, &["alarm", "disarm"]);
        assert!(ok, "{out}");
        match put(&mut c, "after") {
            Ok(rev) => {
                acked.push(("after".into(), rev));
                break;
            }
            Err(e) if is_no_space(&e) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(Instant::now() < deadline, "writes never resumed");
        std::thread::sleep(Duration::from_millis(200));
    }
    for i in 0..100 {
        let key = format!("resumed{i}");
        let rev = put(&mut c, &key).unwrap();
        acked.push((key, rev));
    }
    assert!(alarms(&mut c).is_empty());
    // Nothing acknowledged was lost, across the restart either.
    assert!(m.stop().success());
    let m = Member::start(&dir, &addr, &peer);
    let mut c = m.client();
    for (key, rev) in &acked {
        assert_eq!(get(&mut c, key, true), Some(*rev), "{key}");
    }
    drop(m);
    drop(fs);
}
