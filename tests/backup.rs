//! Backups of real `cairn serve` processes: a snapshot (and an increment after it) saved
//! from a running member by `cairn snapshot save` while a client writes, checked by `cairn snapshot
//! status`, restored into new one- and three-member clusters that serve exactly the state
//! at the snapshot's revision and go on from it; damaged files refused.

mod common;

use cairn::backup::{combine, SnapshotStream};
use cairn::btree::Snapshot;
use cairn::client::Client;
use cairn::mvcc::{PutRequest, RangeRequest, Request, Response};
use cairn::protocol::{ClientRequest, ClientResponse};
use common::cluster::poll;
use common::free_addr;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(5);
const TOKEN: &str = "restored-cluster";

fn cairn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .output()
        .expect("run cairn")
}

/// A `cairn serve` process, killed on drop.
struct Member {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Member {
    fn start(name: &str, dir: &Path, cluster: &str, peer: &str, log: PathBuf) -> Member {
        let addr = free_addr();
        let child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["serve", "--name", name, "--data-dir"])
            .arg(dir)
            .args(["--listen-native-addr", &addr])
            // Any free port for the gRPC API: members of one test never share 2379.
            .args(["--listen-client-urls", "http://127.0.0.1:0"])
            .args(["--listen-peer-urls", &format!("http://{peer}")])
            .args(["--initial-advertise-peer-urls", &format!("http://{peer}")])
            .args(["--initial-cluster", cluster])
            .args(["--initial-cluster-token", TOKEN])
            .args(["--placement", "unpinned", "--executors", "1"])
            .args(["--snapshot-count", "300"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn cairn serve");
        Member { child, addr, log }
    }

    fn client(&self) -> Client {
        Client::new(vec![self.addr.clone()], TIMEOUT)
    }

    fn status(&self) -> Option<cairn::protocol::StatusResponse> {
        match self.client().request(&ClientRequest::Status) {
            Ok(ClientResponse::Status(s)) => Some(s),
            _ => None,
        }
    }

    fn wait_leader_known(&mut self) {
        poll(Duration::from_secs(30), "a leader", || {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "member exited ({status}): {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            self.status().filter(|s| s.leader != 0).map(drop)
        });
    }

    fn stop(mut self) {
        // SAFETY: a signal to our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "stopped with {status}");
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        common::end_member(&mut self.child, &self.addr, &self.log);
    }
}

fn put(client: &mut Client, key: &str, value: &str, lease: i64) -> i64 {
    let put = PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        lease,
        ..Default::default()
    };
    match client.request(&ClientRequest::Kv(Request::Put(put))) {
        Ok(ClientResponse::Kv(Response::Put(p))) => p.header.revision,
        other => panic!("put {key}: {other:?}"),
    }
}

/// Every key and value, and the revision read at.
fn all(client: &mut Client, revision: i64) -> (BTreeMap<String, String>, i64) {
    let range = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        revision,
        ..Default::default()
    };
    match client.request(&ClientRequest::Kv(Request::Range(range))) {
        Ok(ClientResponse::Kv(Response::Range(r))) => (
            r.kvs
                .iter()
                .map(|kv| {
                    (
                        String::from_utf8_lossy(&kv.key).into_owned(),
                        String::from_utf8_lossy(&kv.value).into_owned(),
                    )
                })
                .collect(),
            r.header.revision,
        ),
        other => panic!("range: {other:?}"),
    }
}

fn hash_kv(client: &mut Client, revision: i64) -> u32 {
    match client.request(&ClientRequest::HashKv(revision)) {
        Ok(ClientResponse::HashKv(h)) => h.hash,
        other => panic!("hashkv: {other:?}"),
    }
}

fn save(stream: SnapshotStream, path: &Path) {
    let mut bytes = Vec::new();
    for chunk in stream {
        bytes.extend_from_slice(&chunk.expect("snapshot chunk"));
    }
    std::fs::write(path, bytes).expect("write snapshot");
}

/// `cairn snapshot save FILE [--since PREVIOUS]` from the member at `addr`: etcdctl's line,
/// and nothing left beside the file.
fn save_remote(addr: &str, file: &Path, since: Option<&Path>) {
    let path = file.to_str().expect("path");
    let mut args = vec!["--endpoints", addr, "snapshot", "save", path];
    if let Some(since) = since {
        args.extend(["--since", since.to_str().expect("path")]);
    }
    let out = cairn(&args);
    assert!(
        out.status.success(),
        "snapshot save: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("Snapshot saved at {path}\n")
    );
    assert!(!Path::new(&format!("{path}.part")).exists());
}

fn field(json: &str, name: &str) -> i64 {
    json.split(&format!("\"{name}\":"))
        .nth(1)
        .and_then(|s| s.split([',', '}']).next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {json}"))
}

/// The state at `revision` from the acknowledged puts: each key's last value at or before.
fn state_at(acked: &[(i64, String, String)], revision: i64) -> BTreeMap<String, String> {
    let mut state = BTreeMap::new();
    for (rev, key, value) in acked.iter().filter(|(rev, ..)| *rev <= revision) {
        let _ = rev;
        state.insert(key.clone(), value.clone());
    }
    state
}

/// Restores `file` for each of `names` (peer addresses chosen here), starts them, and waits
/// for a leader; the members.
fn restore_cluster(file: &Path, dir: &Path, names: &[&str]) -> Vec<Member> {
    let peers: Vec<String> = names.iter().map(|_| free_addr()).collect();
    let cluster = names
        .iter()
        .zip(&peers)
        .map(|(n, p)| format!("{n}=http://{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut members = Vec::new();
    for (name, peer) in names.iter().zip(&peers) {
        let data = dir.join(name);
        let out = cairn(&[
            "snapshot",
            "restore",
            file.to_str().expect("path"),
            "--data-dir",
            data.to_str().expect("path"),
            "--name",
            name,
            "--initial-cluster",
            &cluster,
            "--initial-cluster-token",
            TOKEN,
            "--initial-advertise-peer-urls",
            &format!("http://{peer}"),
        ]);
        assert!(
            out.status.success(),
            "restore {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let check = cairn(&["check", "--data-dir", data.to_str().expect("path")]);
        assert!(
            check.status.success(),
            "check {name}: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        // The ids `cairn serve` would derive for a new cluster of these flags.
        let id = cairn::server::member_id(&[format!("http://{peer}")], TOKEN);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("member {id:x}")), "{stderr}");
    }
    for (name, peer) in names.iter().zip(&peers) {
        let log = dir.join(format!("{name}.log"));
        members.push(Member::start(name, &dir.join(name), &cluster, peer, log));
    }
    for m in &mut members {
        m.wait_leader_known();
    }
    members
}

#[test]
fn snapshots_of_a_running_member_restore_into_new_clusters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let peer = free_addr();
    let source = Member::start(
        "src",
        &dir.path().join("src"),
        &format!("src=http://{peer}"),
        &peer,
        dir.path().join("src.log"),
    );
    common::wait_serving(&source.addr, None);
    // A key under a lease: restore keeps leases.
    let granted = cairn(&["--endpoints", &source.addr, "lease", "grant", "600"]);
    let text = String::from_utf8_lossy(&granted.stdout).into_owned();
    let lease_hex = text.split_whitespace().nth(1).expect("lease id");
    let lease = i64::from_str_radix(lease_hex, 16).expect("hex lease id");
    let mut c = source.client();
    let mut acked = vec![(
        put(&mut c, "leased", "v", lease),
        "leased".to_string(),
        "v".to_string(),
    )];
    let acked_all = Arc::new(Mutex::new(std::mem::take(&mut acked)));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop, mut c) = (acked_all.clone(), stop.clone(), source.client());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("key{:04}", i % 1500);
                let value = format!("value-{i}-{}", "x".repeat((i % 7) as usize * 40));
                let rev = put(&mut c, &key, &value, 0);
                acked.lock().expect("acked").push((rev, key, value));
                i += 1;
            }
        })
    };
    let first = dir.path().join("first.snap");
    let wait_for = |n: usize| {
        poll(Duration::from_secs(60), "writes", || {
            (acked_all.lock().expect("acked").len() >= n).then_some(())
        })
    };
    // Both taken from the running member while the writer writes.
    wait_for(1500);
    save_remote(&source.addr, &first, None);
    wait_for(3500);
    let inc = dir.path().join("second.inc");
    save_remote(&source.addr, &inc, Some(&first));
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    let second = dir.path().join("combined.snap");
    combine(&first, std::slice::from_ref(&inc), &second).expect("combine");
    // With nothing written in between, an increment and a full snapshot end at the same
    // checkpoint: combined, the increment is the full snapshot byte for byte.
    let (inc_now, full_now) = (dir.path().join("now.inc"), dir.path().join("now.snap"));
    save_remote(&source.addr, &inc_now, Some(&first));
    save_remote(&source.addr, &full_now, None);
    let combined_now = dir.path().join("combined-now.snap");
    combine(&first, std::slice::from_ref(&inc_now), &combined_now).expect("combine");
    assert_eq!(
        std::fs::read(&combined_now).expect("read"),
        std::fs::read(&full_now).expect("read")
    );
    let acked = acked_all.lock().expect("acked").clone();

    // Status: etcdctl's fields; the revision is one acknowledged while writing.
    let mut revisions = Vec::new();
    for file in [&first, &second] {
        let out = cairn(&[
            "snapshot",
            "status",
            file.to_str().expect("path"),
            "-w",
            "json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json = String::from_utf8_lossy(&out.stdout).into_owned();
        let rev = field(&json, "revision");
        assert!(acked.iter().any(|(r, ..)| *r == rev), "{json}");
        assert_eq!(
            field(&json, "totalSize") as u64 + 32,
            std::fs::metadata(file).expect("size").len()
        );
        let table = cairn(&[
            "snapshot",
            "status",
            file.to_str().expect("path"),
            "-w",
            "table",
        ]);
        let table = String::from_utf8_lossy(&table.stdout).into_owned();
        assert!(
            table.contains("| REVISION |") && table.contains(&format!(" {rev} |")),
            "{table}"
        );
        revisions.push(rev);
    }
    assert!(revisions[0] < revisions[1], "{revisions:?}");
    let mut c = source.client();
    let hashes: Vec<u32> = revisions.iter().map(|&r| hash_kv(&mut c, r)).collect();
    source.stop();

    // One member from the first snapshot, three from the combined one.
    for (file, names, rev, hash) in [
        (&first, vec!["solo"], revisions[0], hashes[0]),
        (&second, vec!["a", "b", "c"], revisions[1], hashes[1]),
    ] {
        let members = restore_cluster(file, &dir.path().join(format!("r{rev}")), &names);
        let want = state_at(&acked, rev);
        for m in &members {
            let mut c = m.client();
            let (got, at) = all(&mut c, 0);
            assert_eq!(at, rev, "the restored revision");
            assert_eq!(got.len(), want.len());
            assert!(got == want, "the keys at revision {rev}");
            assert_eq!(hash_kv(&mut c, rev), hash, "HashKV at {rev}");
        }
        // Writes go on from the snapshot's revision, on every member; the lease is kept.
        let mut c = Client::new(members.iter().map(|m| m.addr.clone()).collect(), TIMEOUT);
        assert_eq!(put(&mut c, "after", "restore", 0), rev + 1);
        assert_eq!(put(&mut c, "leased-again", "v", lease), rev + 2);
        for m in &members {
            poll(Duration::from_secs(10), "the write on every member", || {
                let (got, _) = all(&mut m.client(), 0);
                (got.get("after").map(String::as_str) == Some("restore")).then_some(())
            });
        }
        for m in members {
            m.stop();
        }
    }
}

#[test]
fn restore_refuses_damaged_files_and_bad_flags_leaving_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("cairn.db");
    {
        let mut store =
            cairn::mvcc::Store::open(&db, cairn::btree::DbOptions::default()).expect("store");
        for i in 1..200u64 {
            let put = Request::Put(PutRequest {
                key: format!("k{i}").into_bytes(),
                value: vec![b'v'; 100],
                ..Default::default()
            });
            store
                .apply(cairn::mvcc::RaftPosition { index: i, term: 2 }, &[put])
                .expect("apply");
        }
        store.checkpoint().expect("checkpoint");
    }
    let good = dir.path().join("good.snap");
    save(
        SnapshotStream::full(Arc::new(Snapshot::of_file(&db).expect("snapshot"))),
        &good,
    );
    let bytes = std::fs::read(&good).expect("read");
    let mut flipped = bytes.clone();
    flipped[5000] ^= 1;
    let cases: [(&str, Option<Vec<u8>>, &str); 4] = [
        ("missing", None, "No such file"),
        ("flipped", Some(flipped), "SHA-256 mismatch"),
        (
            "cut",
            Some(bytes[..bytes.len() - 100].to_vec()),
            "cut short",
        ),
        (
            "cut-at-page",
            Some(bytes[..4096 * 3].to_vec()),
            "missing hash",
        ),
    ];
    for (name, content, why) in cases {
        let file = dir.path().join(name);
        if let Some(content) = content {
            std::fs::write(&file, content).expect("write");
        }
        let target = dir.path().join(format!("{name}.data"));
        let out = cairn(&[
            "snapshot",
            "restore",
            file.to_str().expect("path"),
            "--data-dir",
            target.to_str().expect("path"),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains(why), "{name}: {stderr}");
        assert!(!target.exists(), "{name}: nothing left");
        if name != "cut-at-page" {
            let out = cairn(&["snapshot", "status", file.to_str().expect("path")]);
            assert_eq!(out.status.code(), Some(1), "status of {name}");
            assert!(out.stdout.is_empty());
        }
    }
    let restore = |extra: &[&str]| {
        let mut args = vec!["snapshot", "restore", good.to_str().expect("path")];
        args.extend_from_slice(extra);
        cairn(&args)
    };
    let target = dir.path().join("x.data");
    let t = target.to_str().expect("path");
    let out = restore(&["--data-dir", t, "--name", "nobody"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("couldn't find local name"));
    assert!(!target.exists());
    std::fs::create_dir(&target).expect("mkdir");
    std::fs::write(target.join("something"), b"x").expect("write");
    let out = restore(&["--data-dir", t]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    assert_eq!(std::fs::read(target.join("something")).expect("kept"), b"x");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The good file restores, and its status is etcdctl's simple line.
    let out = restore(&["--data-dir", dir.path().join("ok").to_str().expect("path")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cairn(&["snapshot", "status", good.to_str().expect("path")]);
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let fields: Vec<&str> = line.trim_end().split(", ").collect();
    assert_eq!(fields.len(), 4, "{line}");
    assert_eq!(fields[1], "200");
    assert_eq!(fields[2], "199");
}
