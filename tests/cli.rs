//! The client commands against a running member: etcdctl's outputs and exit codes.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
mod common;

use common::free_addr;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Server(Child, String);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &std::path::Path) -> Server {
    let addr = free_addr();
    let mut child = common::serve_command(dir, &addr)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    common::wait_serving(&addr, Some(&mut child));
    Server(child, addr)
}

/// Runs a client command against a dead endpoint and then the member (failover).
fn cairn<A: AsRef<OsStr>>(s: &Server, args: &[A], stdin: impl AsRef<[u8]>) -> Output {
    cairn_at(&format!("127.0.0.1:1,{}", s.1), args, stdin)
}

fn cairn_at<A: AsRef<OsStr>>(endpoints: &str, args: &[A], stdin: impl AsRef<[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--endpoints", endpoints])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_ref())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn ok(s: &Server, args: &[&str]) -> String {
    let out = cairn(s, args, "");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn put_get_del_txn_compact_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    // The first endpoint refuses connections: the client fails over to the second.
    assert_eq!(ok(&s, &["put", "foo", "bar"]), "OK\n");
    assert_eq!(ok(&s, &["put", "foo2", "baz"]), "OK\n");
    assert_eq!(
        ok(&s, &["put", "foo", "bar2", "--prev-kv"]),
        "OK\nfoo\nbar\n"
    );
    assert_eq!(
        ok(&s, &["get", "foo", "--prefix"]),
        "foo\nbar2\nfoo2\nbaz\n"
    );
    assert_eq!(ok(&s, &["get", "foo", "--print-value-only"]), "bar2\n");
    assert_eq!(
        ok(&s, &["get", "f", "--prefix", "--keys-only", "--limit", "1"]),
        "foo\n"
    );
    assert_eq!(
        ok(&s, &["get", "foo", "--rev", "2", "--consistency", "s"]),
        "foo\nbar\n"
    );
    assert_eq!(
        ok(&s, &["get", "foo2", "-w", "json"]),
        "{\"header\":{\"revision\":4},\"kvs\":[{\"key\":\"Zm9vMg==\",\"create_revision\":3,\"mod_revision\":3,\"version\":1,\"value\":\"YmF6\"}],\"count\":1}\n"
    );
    let txn = "value(\"foo\") = \"bar2\"\n\nput foo x\nget foo\n\nput foo y\n";
    let out = cairn(&s, &["txn"], txn);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "SUCCESS\n\nOK\n\nfoo\nx\n"
    );
    assert_eq!(ok(&s, &["del", "foo", "--prefix"]), "2\n");
    assert_eq!(ok(&s, &["compact", "3"]), "compacted revision 3\n");
    // endpoint status asks every endpoint: a row for each that answers, a line on stderr
    // and exit code 1 for each that does not.
    let out = cairn(&s, &["endpoint", "status"], "");
    assert_eq!(out.status.code(), Some(1));
    let status = String::from_utf8(out.stdout).unwrap();
    assert!(
        status.starts_with(&format!("{}, 8e9e05c52164694d, ", s.1)) && status.contains(", true, "),
        "{status}"
    );
    assert_eq!(status.lines().count(), 1);
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("Failed to get the status of endpoint 127.0.0.1:1"));
    let json = cairn_at(&s.1, &["endpoint", "status", "-w", "json"], "");
    assert!(json.status.success());
    assert!(String::from_utf8_lossy(&json.stdout).contains("\"revision\":6"));
    let table = cairn_at(&s.1, &["endpoint", "status", "-w", "table"], "");
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.contains("| RAFT APPLIED INDEX |") && table.contains("| 8e9e05c52164694d |"),
        "{table}"
    );
    // Elsewhere -w table prints what simple does, as etcdctl's.
    assert_eq!(
        ok(&s, &["get", "foo2", "-w", "table"]),
        ok(&s, &["get", "foo2"])
    );
}

#[test]
fn exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    ok(&s, &["put", "k", "v"]);
    ok(&s, &["compact", "2"]);
    let compacted = cairn(&s, &["get", "k", "--rev", "1"], "");
    assert_eq!(compacted.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&compacted.stderr).contains("required revision has been compacted")
    );
    let empty_key = cairn(&s, &["put", "", "v"], "");
    assert_eq!(empty_key.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&empty_key.stderr).contains("key is not provided"));
    assert_eq!(cairn(&s, &["get"], "").status.code(), Some(128));
    assert_eq!(
        cairn(&s, &["get", "a", "--order", "SIDEWAYS"], "")
            .status
            .code(),
        Some(128)
    );
    assert_eq!(
        cairn(&s, &["txn"], "bogus(\"k\") = \"1\"\n\n\n")
            .status
            .code(),
        Some(3)
    );
    let down = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--endpoints", "127.0.0.1:1", "get", "k"])
        .output()
        .unwrap();
    assert_eq!(down.status.code(), Some(2));
}

/// A member that takes the request and never answers (SIGSTOPped): the request times out
/// with etcdctl's message and exit code 1, not as an unreachable endpoint.
#[test]
fn a_request_that_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    ok(&s, &["put", "k", "v"]);
    let signal = |sig: &str| {
        let pid = s.0.id().to_string();
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    };
    signal("-STOP");
    let started = Instant::now();
    let out = cairn_at(&s.1, &["get", "k", "--command-timeout", "1"], "");
    let took = started.elapsed();
    signal("-CONT");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("Error: context deadline exceeded") && !stderr.contains("os error"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert_eq!(ok(&s, &["get", "k", "--print-value-only"]), "v\n");
}

/// The bytes a command writes to stdout, after checking that it succeeded.
fn ok_bytes(s: &Server, args: &[&OsStr], stdin: &[u8]) -> Vec<u8> {
    let out = cairn(s, args, stdin);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn put_reads_the_value_from_stdin_when_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    // All of stdin, its trailing newline included (as etcdctl 3.4).
    let out = cairn(&s, &["put", "foo"], "bar\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"OK\n");
    assert_eq!(ok(&s, &["get", "foo", "--print-value-only"]), "bar\n\n");
    assert!(ok(&s, &["get", "foo", "-w", "json"]).contains("\"value\":\"YmFyCg==\""));
    // No value and no input: etcdctl's message and exit code 128; nothing was written.
    let out = cairn(&s, &["put", "foo"], "");
    assert_eq!(out.status.code(), Some(128));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("put command needs 1 argument and input from stdin or 2 arguments"));
    assert_eq!(ok(&s, &["get", "foo", "--print-value-only"]), "bar\n\n");
}

#[test]
fn keys_and_values_are_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    let os = |b: &'static [u8]| OsStr::from_bytes(b);
    let key = os(b"k\xff\xfe");
    assert_eq!(ok_bytes(&s, &[os(b"put"), key, os(b"v\x80")], b""), b"OK\n");
    // Simple output writes them raw; JSON in base64 (etcdctl prints the same).
    assert_eq!(ok_bytes(&s, &[os(b"get"), key], b""), b"k\xff\xfe\nv\x80\n");
    let json = ok_bytes(&s, &[os(b"get"), key, os(b"-w"), os(b"json")], b"");
    let json = String::from_utf8(json).unwrap();
    assert!(
        json.contains("\"key\":\"a//+\"") && json.contains("\"value\":\"doA=\""),
        "{json}"
    );
    let prefix = [
        os(b"get"),
        os(b"k\xff"),
        os(b"--prefix"),
        os(b"--keys-only"),
    ];
    assert_eq!(ok_bytes(&s, &prefix, b""), b"k\xff\xfe\n");
    let range = [
        os(b"get"),
        os(b"k\xff"),
        os(b"k\xff\xff"),
        os(b"--count-only"),
    ];
    let count = ok_bytes(&s, &[&range[..], &[os(b"-w"), os(b"json")]].concat(), b"");
    assert!(String::from_utf8_lossy(&count).contains("\"count\":1"));
    // A value from stdin, and txn input, are bytes too.
    assert_eq!(ok_bytes(&s, &[os(b"put"), os(b"k2")], b"\x00\xff"), b"OK\n");
    assert_eq!(
        ok_bytes(&s, &[os(b"get"), os(b"k2"), os(b"--print-value-only")], b""),
        b"\x00\xff\n"
    );
    let txn = b"value(\"k\xff\xfe\") = \"v\\x80\"\n\nput k3 \xc0\nget k\xff\xfe\n\n";
    assert_eq!(
        ok_bytes(&s, &[os(b"txn")], txn),
        b"SUCCESS\n\nOK\n\nk\xff\xfe\nv\x80\n"
    );
    assert_eq!(
        ok_bytes(&s, &[os(b"get"), os(b"k3"), os(b"--print-value-only")], b""),
        b"\xc0\n"
    );
    assert_eq!(
        ok_bytes(&s, &[os(b"del"), key, os(b"--prev-kv")], b""),
        b"1\nk\xff\xfe\nv\x80\n"
    );
}

/// Runs `cairn watch ARGS` until it has written `lines` lines (or 10 s passed), then stops
/// it; its stdout, stderr and exit status (None if it was stopped).
fn watch_lines(s: &Server, args: &[&str], lines: usize) -> (String, String, Option<i32>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--endpoints", &s.1, "watch"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut byte = [0u8; 1];
        while out.iter().filter(|&&b| b == b'\n').count() < lines {
            match std::io::Read::read(&mut stdout, &mut byte) {
                Ok(1) => out.push(byte[0]),
                _ => break,
            }
        }
        out
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = child.try_wait().unwrap().and_then(|s| s.code());
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(reader.join().unwrap()).unwrap();
    (
        stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
        status,
    )
}

#[test]
fn watch_prints_events_as_etcdctl_and_exits_5_when_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    ok(&s, &["put", "a", "1"]); // revision 2
    ok(&s, &["put", "ab", "2"]); // 3
    ok(&s, &["put", "b", "3"]); // 4
    ok(&s, &["del", "a"]); // 5
                           // From a past revision, with previous key-values: the type, then the previous key and
                           // value, then the key and value (empty for a delete).
    let (out, _, _) = watch_lines(&s, &["a", "--prefix", "--rev", "2", "--prev-kv"], 11);
    assert_eq!(out, "PUT\na\n1\nPUT\nab\n2\nDELETE\na\n1\na\n\n");
    let (out, _, _) = watch_lines(&s, &["a", "--rev", "3", "-w", "json"], 1);
    assert!(
        out.starts_with("{\"Header\":{\"revision\":5},\"Events\":[{\"type\":1,\"kv\":{\"key\":\"YQ==\",\"mod_revision\":5}}]"),
        "{out}"
    );
    ok(&s, &["compact", "4"]);
    let (out, err, status) = watch_lines(&s, &["a", "--rev", "2"], 1);
    assert_eq!(out, "");
    assert_eq!(
        err,
        "watch was canceled (etcdserver: mvcc: required revision has been compacted)\nError: watch is canceled by the server\n"
    );
    assert_eq!(status, Some(5));
    // Bad arguments, as etcdctl words them.
    let out = cairn(&s, &["watch"], "");
    assert_eq!(out.status.code(), Some(128));
    assert!(String::from_utf8_lossy(&out.stderr).contains("requires one or two arguments"));
}

#[test]
fn lock_runs_a_command_while_holding_and_a_second_waits_for_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    // The command sees the key and fencing revision; its exit code is lock's.
    let out = cairn(
        &s,
        &[
            "lock",
            "L",
            "--",
            "sh",
            "-c",
            "echo $ETCD_LOCK_KEY $ETCD_LOCK_REV; exit 3",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(3));
    let line = String::from_utf8(out.stdout).unwrap();
    let (key, rev) = line.trim().split_once(' ').unwrap();
    assert!(key.starts_with("L/"), "{line}");
    assert!(rev.parse::<i64>().unwrap() > 1);
    // Released at the end: nothing is left under L/.
    assert_eq!(ok(&s, &["get", "L/", "--prefix", "--keys-only"]), "");
    // A holder without a command holds until interrupted; a second one waits for it.
    let mut first = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--endpoints", &s.1, "lock", "L"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(first.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with("L/"), "{line}");
    let mut second = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--endpoints", &s.1, "lock", "L", "--", "echo", "second"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(second.try_wait().unwrap().is_none(), "the second waits");
    // SAFETY: kill only sends SIGINT to our own child.
    unsafe { libc::kill(first.id() as libc::pid_t, libc::SIGINT) };
    assert!(first.wait().unwrap().success());
    let out = second.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "second\n");
}

/// Reads one line of a child's output.
fn read_line(from: &mut std::io::BufReader<std::process::ChildStdout>) -> String {
    let mut line = String::new();
    std::io::BufRead::read_line(from, &mut line).unwrap();
    line.trim_end().to_string()
}

#[test]
fn elect_campaigns_and_elect_l_prints_each_leader_as_etcdctl() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    let spawn = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["--endpoints", &s.1])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut observer = spawn(&["elect", "-l", "E"]);
    let mut observed = std::io::BufReader::new(observer.stdout.take().unwrap());
    // The first to campaign leads: it prints its key and proposal, as does the observer.
    let mut one = spawn(&["elect", "E", "one"]);
    let mut one_out = std::io::BufReader::new(one.stdout.take().unwrap());
    let key_one = read_line(&mut one_out);
    assert!(key_one.starts_with("E/"), "{key_one}");
    assert_eq!(read_line(&mut one_out), "one");
    assert_eq!(read_line(&mut observed), key_one);
    assert_eq!(read_line(&mut observed), "one");
    // The second waits; when the first resigns (interrupted), it leads.
    let mut two = spawn(&["elect", "E", "two"]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(two.try_wait().unwrap().is_none(), "the second waits");
    // SAFETY: kill only sends SIGINT to our own child.
    unsafe { libc::kill(one.id() as libc::pid_t, libc::SIGINT) };
    assert!(one.wait().unwrap().success());
    let mut two_out = std::io::BufReader::new(two.stdout.take().unwrap());
    let key_two = read_line(&mut two_out);
    assert_ne!(key_two, key_one);
    assert_eq!(read_line(&mut observed), key_two);
    assert_eq!(read_line(&mut observed), "two");
    for child in [&mut two, &mut observer] {
        // SAFETY: as above.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        assert!(child.wait().unwrap().success());
    }
}
