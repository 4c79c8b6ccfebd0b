//! etcdctl 3.4 against cairn's gRPC API and against a real etcd, started by the test: the
//! same commands, the same output, except ids, addresses, timestamps, sizes, hashes and
//! Raft indexes. Skipped (with a line saying so) where etcd or etcdctl is not installed,
//! except in CI (`CI` set), which installs them.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed when the test ends, however it ends.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn installed(tool: &str, version_arg: &str) -> bool {
    Command::new(tool)
        .arg(version_arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What etcdctl printed and how it exited.
#[derive(Debug, PartialEq)]
struct Run {
    exit: Option<i32>,
    stdout: String,
    /// etcdctl's error lines ("Error: ..."), without its timestamped log lines.
    errors: String,
}

/// How long a `watch` runs before it is stopped (it prints the history asked for at once).
const WATCH_RUN: Duration = Duration::from_millis(1500);

fn etcdctl(endpoint: &str, args: &[&str], stdin: &str) -> Run {
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            &format!("--endpoints={endpoint}"),
            "--dial-timeout=5s",
            "--command-timeout=10s",
        ])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run etcdctl");
    if let Some(mut input) = child.stdin.take() {
        std::io::Write::write_all(&mut input, stdin.as_bytes()).expect("etcdctl's stdin");
    }
    if args.first() == Some(&"watch") {
        let deadline = Instant::now() + WATCH_RUN;
        while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("etcdctl");
    let errors = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("Error:"))
        .collect::<Vec<_>>()
        .join("\n");
    Run {
        exit: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        errors,
    }
}

/// The output with what legitimately differs between two servers replaced by names.
fn normalize(text: &str, endpoint: &str, peer: &str) -> String {
    let rules: &[(&str, &str)] = &[
        (r"took = [0-9.]+[µmn]?s", "took = T"),
        (r"remaining\(\d+s\)", "remaining(R)"),
        (r"\b[0-9a-f]{13,16}\b", "ID"),
        (
            r#""(cluster_id|member_id|raft_term|ID|leader|raftIndex|raftTerm|raftAppliedIndex|dbSize|dbSizeInUse|hash|hash_revision)":\d+"#,
            r#""$1":N"#,
        ),
        (r"\b3\.\d+\.\d+\b", "VERSION"),
        (r"\b\d+(\.\d+)? [kMG]?B\b", "SIZE"),
        (
            r"(true|false), \d+, \d+, \d+, ",
            "$1, TERM, INDEX, APPLIED, ",
        ),
        (r"ENDPOINT, \d+", "ENDPOINT, HASH"),
    ];
    let mut s = text.replace(peer, "PEER").replace(endpoint, "ENDPOINT");
    for (pattern, with) in rules {
        let re = regex::Regex::new(pattern).expect("pattern");
        s = re.replace_all(&s, *with).into_owned();
        s = s.replace(endpoint, "ENDPOINT");
    }
    s
}

fn wait_answers(endpoint: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while etcdctl(endpoint, &["endpoint", "health"], "").exit != Some(0) {
        assert!(Instant::now() < deadline, "{endpoint} does not answer");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_etcd(dir: &Path, client: &str, peer: &str) -> Process {
    let child = Command::new("etcd")
        .args(["--name", "m", "--data-dir"])
        .arg(dir)
        .args([
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
        ])
        .args([
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
        ])
        .args(["--initial-cluster", &format!("m={peer}")])
        .args(["--log-level", "error", "--logger", "zap"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcd");
    Process(child)
}

fn start_cairn(dir: &Path, client: &str, peer: &str) -> Process {
    let child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["serve", "--name", "m", "--data-dir"])
        .arg(dir)
        .args(["--listen-native-addr", &common::free_addr()])
        .args(["--listen-client-urls", client])
        .args([
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
        ])
        .args(["--initial-cluster", &format!("m={peer}")])
        .args(["--log-level", "warn", "--placement", "unpinned"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start cairn");
    Process(child)
}

/// The commands, in order; `LEASE` stands for the lease the first `lease grant` printed.
const SCRIPT: &[(&[&str], &str)] = &[
    (&["put", "foo", "bar"], ""),
    (&["put", "foo2", "baz"], ""),
    (&["put", "zoo", "z"], ""),
    (&["get", "foo"], ""),
    (&["get", "foo", "--prefix"], ""),
    (&["get", "foo", "--prefix", "--keys-only"], ""),
    (&["get", "foo", "--prefix", "--limit", "1"], ""),
    (&["get", "foo", "--rev", "2"], ""),
    (&["get", "foo", "--prefix", "-w", "json"], ""),
    (
        &[
            "get",
            "",
            "--from-key",
            "--sort-by",
            "VALUE",
            "--order",
            "DESCEND",
        ],
        "",
    ),
    (
        &["get", "foo", "--consistency", "s", "--print-value-only"],
        "",
    ),
    (&["put", "foo", "bar2", "--prev-kv"], ""),
    (&["del", "foo2"], ""),
    (&["del", "nothing"], ""),
    (
        &["txn", "-i"],
        "value(\"foo\") = \"bar2\"\n\nput foo x\nget zoo\n\nput foo y\n\n",
    ),
    (
        &["txn", "-i", "-w", "json"],
        "value(\"foo\") = \"nope\"\n\nput foo x\n\ndel zoo\n\n",
    ),
    (&["get", "foo", "-w", "json"], ""),
    (&["watch", "foo", "--rev", "2", "--prev-kv"], ""),
    (&["watch", "zoo", "--rev", "1"], ""),
    (&["compaction", "3"], ""),
    (&["watch", "foo", "--rev", "2"], ""),
    (&["get", "foo", "--rev", "2"], ""),
    (&["get", "foo", "--rev", "1000"], ""),
    (&["put", "", "x"], ""),
    (&["endpoint", "status"], ""),
    (&["endpoint", "health"], ""),
    (&["endpoint", "hashkv"], ""),
    (&["member", "list"], ""),
    (&["alarm", "list"], ""),
    (&["lease", "grant", "100"], ""),
    (&["put", "leased", "v", "--lease", "LEASE"], ""),
    (&["lease", "timetolive", "LEASE"], ""),
    (&["lease", "timetolive", "LEASE", "--keys"], ""),
    (&["lease", "list"], ""),
    (&["lease", "keep-alive", "--once", "LEASE"], ""),
    (&["lease", "revoke", "LEASE"], ""),
    (&["lease", "timetolive", "LEASE"], ""),
    (&["lease", "revoke", "LEASE"], ""),
    (&["get", "leased"], ""),
    (&["del", "", "--from-key", "--prev-kv"], ""),
];

/// Runs the script against `endpoint`: each command's normalized output.
fn run_script(endpoint: &str, peer: &str) -> Vec<(String, Run)> {
    let mut lease = String::new();
    let mut runs = Vec::new();
    for (args, stdin) in SCRIPT {
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                if *a == "LEASE" {
                    lease.clone()
                } else {
                    a.to_string()
                }
            })
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = etcdctl(endpoint, &args, stdin);
        if args[..2] == ["lease", "grant"] {
            lease = run
                .stdout
                .split_whitespace()
                .nth(1)
                .unwrap_or("")
                .to_string();
        }
        let normalized = Run {
            exit: run.exit,
            stdout: normalize(&run.stdout, endpoint, peer),
            errors: normalize(&run.errors, endpoint, peer),
        };
        runs.push((args.join(" "), normalized));
    }
    runs
}

#[test]
fn etcdctl_sees_cairn_as_etcd() {
    if !installed("etcdctl", "version") || !installed("etcd", "--version") {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI installs etcd and etcdctl (.ci/run)"
        );
        eprintln!("SKIPPED: etcd and etcdctl 3.4 are needed (Debian: etcd-server, etcd-client)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (etcd_client, etcd_peer) = (common::free_addr(), common::free_addr());
    let (cairn_client, cairn_peer) = (common::free_addr(), common::free_addr());
    let _etcd = start_etcd(
        &dir.path().join("etcd"),
        &format!("http://{etcd_client}"),
        &format!("http://{etcd_peer}"),
    );
    let _cairn = start_cairn(
        &dir.path().join("cairn"),
        &format!("http://{cairn_client}"),
        &format!("http://{cairn_peer}"),
    );
    wait_answers(&etcd_client);
    wait_answers(&cairn_client);
    let etcd = run_script(&etcd_client, &etcd_peer);
    let cairn = run_script(&cairn_client, &cairn_peer);
    let mut differences = Vec::new();
    for ((command, want), (_, got)) in etcd.iter().zip(&cairn) {
        if want != got {
            differences.push(format!(
                "etcdctl {command}\n  etcd:  {want:?}\n  cairn: {got:?}"
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    // etcd answered, and the script exercised both outcomes: some commands failed, alike.
    assert_eq!(etcd[3].1.stdout, "foo\nbar\n", "{:?}", etcd[3]);
    assert!(etcd.iter().any(|(_, r)| r.exit != Some(0)));
    let watched = etcd
        .iter()
        .find(|(c, _)| c == "watch foo --rev 2 --prev-kv");
    assert!(
        watched.is_some_and(|(_, r)| r.stdout.matches("PUT").count() == 3),
        "{watched:?}"
    );
}

/// An etcdctl run in the background, stopped by the test.
struct Background {
    child: Process,
    /// When it was seen to end on its own (`poll_exit`).
    ended: Option<Instant>,
}

fn etcdctl_background(endpoint: &str, args: &[&str]) -> Background {
    let child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([&format!("--endpoints={endpoint}"), "--dial-timeout=5s"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run etcdctl");
    Background {
        child: Process(child),
        ended: None,
    }
}

impl Background {
    fn poll_exit(&mut self) -> bool {
        if self.ended.is_none() && self.child.0.try_wait().ok().flatten().is_some() {
            self.ended = Some(Instant::now());
        }
        self.ended.is_some()
    }

    /// Asks it to stop as a user's Ctrl-C would (etcdctl then unlocks or resigns).
    fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.0.id().to_string()])
            .status();
    }

    /// Waits (up to 10 s) for it to end, then what it printed, normalized.
    fn finish(mut self, endpoint: &str, peer: &str) -> Run {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.poll_exit() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.0.kill();
        let mut stdout = String::new();
        let mut stderr = String::new();
        if let Some(mut out) = self.child.0.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut out, &mut stdout);
        }
        if let Some(mut err) = self.child.0.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut err, &mut stderr);
        }
        let exit = self.child.0.wait().ok().and_then(|s| s.code());
        let errors = stderr
            .lines()
            .filter(|l| l.starts_with("Error:"))
            .collect::<Vec<_>>()
            .join("\n");
        Run {
            exit,
            stdout: normalize(&stdout, endpoint, peer),
            errors: normalize(&errors, endpoint, peer),
        }
    }
}

/// Waits `d`, watching which of `runs` end meanwhile.
fn watch_for(d: Duration, runs: &mut [&mut Background]) {
    let deadline = Instant::now() + d;
    while Instant::now() < deadline {
        for r in runs.iter_mut() {
            r.poll_exit();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long a step of the lock and election scenario lasts: long enough for a campaign, a
/// resignation or a release to be seen, with room on a busy machine.
const STEP: Duration = Duration::from_millis(1500);

/// `etcdctl lock` and `etcdctl elect` (etcd's client-side `concurrency` package: txns,
/// watches, lease keepalives) against `endpoint`: each run's normalized output, and
/// whether the second contender for a lock held only after the first let go.
fn lock_and_elect(endpoint: &str, peer: &str) -> (Vec<(&'static str, Run)>, bool) {
    let mut runs = Vec::new();
    let once = etcdctl(endpoint, &["lock", "one", "--", "echo", "ok"], "");
    runs.push((
        "lock one -- echo ok",
        Run {
            exit: once.exit,
            stdout: normalize(&once.stdout, endpoint, peer),
            errors: normalize(&once.errors, endpoint, peer),
        },
    ));

    // Two contenders: the first holds for a while, the second waits its turn.
    let mut first = etcdctl_background(
        endpoint,
        &[
            "lock",
            "two",
            "--",
            "sh",
            "-c",
            "echo first; sleep 1.5; echo done",
        ],
    );
    watch_for(Duration::from_millis(500), &mut [&mut first]);
    let mut second = etcdctl_background(endpoint, &["lock", "two", "--", "echo", "second"]);
    watch_for(STEP * 2, &mut [&mut first, &mut second]);
    let in_turn = matches!((first.ended, second.ended), (Some(a), Some(b)) if a <= b);
    // A holder without a command prints its key, and unlocks when told to stop.
    let mut holder = etcdctl_background(endpoint, &["lock", "three"]);
    watch_for(STEP, &mut [&mut holder]);
    holder.terminate();
    runs.push(("lock two (first)", first.finish(endpoint, peer)));
    runs.push(("lock two (second)", second.finish(endpoint, peer)));
    runs.push(("lock three", holder.finish(endpoint, peer)));
    let after = etcdctl(endpoint, &["lock", "three", "--", "echo", "free"], "");
    runs.push((
        "lock three -- echo free",
        Run {
            exit: after.exit,
            stdout: normalize(&after.stdout, endpoint, peer),
            errors: normalize(&after.errors, endpoint, peer),
        },
    ));

    // An observer, a leader, a candidate that waits, the leader resigns.
    let mut observer = etcdctl_background(endpoint, &["elect", "-l", "e"]);
    watch_for(STEP / 3, &mut [&mut observer]);
    let mut v1 = etcdctl_background(endpoint, &["elect", "e", "v1"]);
    watch_for(STEP, &mut [&mut v1]);
    let mut v2 = etcdctl_background(endpoint, &["elect", "e", "v2"]);
    watch_for(STEP, &mut [&mut v2]);
    v1.terminate();
    watch_for(STEP, &mut [&mut v1, &mut v2]);
    let late = etcdctl_background(endpoint, &["elect", "-l", "e"]);
    watch_for(STEP, &mut []);
    for b in [&v2, &observer, &late] {
        b.terminate();
    }
    runs.push(("elect e v1", v1.finish(endpoint, peer)));
    runs.push(("elect e v2", v2.finish(endpoint, peer)));
    runs.push((
        "elect -l e (from the start)",
        observer.finish(endpoint, peer),
    ));
    runs.push(("elect -l e (while v2 led)", late.finish(endpoint, peer)));
    (runs, in_turn)
}

/// The gRPC Lock and Election services' errors (code and message) for calls that fail.
async fn lock_service_errors(endpoint: &str) -> Vec<(tonic::Code, String)> {
    use cairn::grpc::pb::v3electionpb as epb;
    use cairn::grpc::pb::v3lockpb as lpb;
    let ch = tonic::transport::Channel::from_shared(format!("http://{endpoint}"))
        .expect("URL")
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("connect");
    let mut e = epb::election_client::ElectionClient::new(ch.clone());
    let mut l = lpb::lock_client::LockClient::new(ch);
    let stranger = epb::LeaderKey {
        name: "nobody".into(),
        key: "nobody/1".into(),
        rev: 1,
        lease: 1,
    };
    let errors = [
        e.leader(epb::LeaderRequest {
            name: "nobody".into(),
        })
        .await
        .err(),
        e.proclaim(epb::ProclaimRequest {
            leader: Some(stranger),
            value: "v".into(),
        })
        .await
        .err(),
        e.proclaim(epb::ProclaimRequest {
            leader: None,
            value: "v".into(),
        })
        .await
        .err(),
        e.resign(epb::ResignRequest { leader: None }).await.err(),
        l.lock(lpb::LockRequest {
            name: "x".into(),
            lease: 0x7777,
        })
        .await
        .err(),
        l.unlock(lpb::UnlockRequest { key: Vec::new() }).await.err(),
    ];
    errors
        .into_iter()
        .map(|s| {
            s.map_or((tonic::Code::Ok, String::new()), |s| {
                (s.code(), s.message().to_string())
            })
        })
        .collect()
}

#[test]
fn etcdctl_locks_and_elects_on_cairn_as_on_etcd() {
    if !installed("etcdctl", "version") || !installed("etcd", "--version") {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI installs etcd and etcdctl (.ci/run)"
        );
        eprintln!("SKIPPED: etcd and etcdctl 3.4 are needed (Debian: etcd-server, etcd-client)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (etcd_client, etcd_peer) = (common::free_addr(), common::free_addr());
    let (cairn_client, cairn_peer) = (common::free_addr(), common::free_addr());
    let _etcd = start_etcd(
        &dir.path().join("etcd"),
        &format!("http://{etcd_client}"),
        &format!("http://{etcd_peer}"),
    );
    let _cairn = start_cairn(
        &dir.path().join("cairn"),
        &format!("http://{cairn_client}"),
        &format!("http://{cairn_peer}"),
    );
    wait_answers(&etcd_client);
    wait_answers(&cairn_client);
    let (etcd, etcd_in_turn) = lock_and_elect(&etcd_client, &etcd_peer);
    let (cairn, cairn_in_turn) = lock_and_elect(&cairn_client, &cairn_peer);
    let mut differences = Vec::new();
    for ((command, want), (_, got)) in etcd.iter().zip(&cairn) {
        if want != got {
            differences.push(format!(
                "etcdctl {command}\n  etcd:  {want:?}\n  cairn: {got:?}"
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    assert!(
        etcd_in_turn && cairn_in_turn,
        "the second contender held only after the first"
    );
    // The scenario did what it says on etcd: the lock ran its command, the observer saw
    // both leaders in order, the second candidate led after the first resigned.
    let out = |c: &str| &etcd.iter().find(|(k, _)| *k == c).expect(c).1.stdout;
    assert_eq!(out("lock one -- echo ok"), "ok\n");
    assert_eq!(out("lock two (second)"), "second\n");
    assert_eq!(out("lock three"), "three/ID\n\n");
    assert_eq!(out("elect -l e (from the start)"), "e/ID\nv1\ne/ID\nv2\n");
    assert_eq!(out("elect e v2"), "e/ID\nv2\n");

    // The gRPC Lock and Election services fail as etcd's do (code and message).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let want = rt.block_on(lock_service_errors(&etcd_client));
    let got = rt.block_on(lock_service_errors(&cairn_client));
    assert!(
        want.iter().all(|(code, _)| *code != tonic::Code::Ok),
        "{want:?}"
    );
    assert_eq!(got, want);
}
