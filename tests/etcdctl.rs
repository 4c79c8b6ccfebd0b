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

/// Whether etcd and etcdctl can be run (see [`at_hand`]).
fn etcd_at_hand() -> bool {
    at_hand(
        &[("etcdctl", "version"), ("etcd", "--version")],
        "etcd and etcdctl",
        "Debian: etcd-server, etcd-client",
    )
}

/// Whether every one of `tools` (command, version argument) can be run. Outside CI a
/// missing one skips the test, saying so; CI installs them (`.ci/run`), so there it fails.
fn at_hand(tools: &[(&str, &str)], what: &str, packages: &str) -> bool {
    if tools.iter().all(|(tool, arg)| installed(tool, arg)) {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI installs {what} (.ci/run)"
    );
    let are = if tools.len() > 1 { "are" } else { "is" };
    eprintln!("SKIPPED: {what} 3.4 {are} needed ({packages})");
    false
}

/// One etcd and one cairn member, each on ports of its own, answering; both stopped
/// when this is dropped.
struct OneEach {
    /// Client and peer addresses.
    etcd: (String, String),
    cairn: (String, String),
    _processes: [Process; 2],
    /// The members' data directories, and room for a test's files.
    tmp: tempfile::TempDir,
}

impl OneEach {
    fn start() -> OneEach {
        let tmp = tempfile::tempdir().expect("tempdir");
        let etcd = (common::free_addr(), common::free_addr());
        let cairn = (common::free_addr(), common::free_addr());
        let processes = [
            start_etcd(
                &tmp.path().join("etcd"),
                &format!("http://{}", etcd.0),
                &format!("http://{}", etcd.1),
            ),
            start_cairn(
                &tmp.path().join("cairn"),
                &format!("http://{}", cairn.0),
                &format!("http://{}", cairn.1),
            ),
        ];
        wait_answers(&etcd.0);
        wait_answers(&cairn.0);
        OneEach {
            etcd,
            cairn,
            _processes: processes,
            tmp,
        }
    }
}

/// Fails with every command whose output differs between etcd and cairn.
fn assert_same_output<C: std::fmt::Display>(etcd: &[(C, Run)], cairn: &[(C, Run)]) {
    let mut differences = Vec::new();
    for ((command, want), (_, got)) in etcd.iter().zip(cairn) {
        if want != got {
            differences.push(format!(
                "etcdctl {command}\n  etcd:  {want:?}\n  cairn: {got:?}"
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
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

/// The commands, in order; `LEASE` stands for the lease the first `lease grant` printed,
/// `SNAPSHOT` for a file in a directory of the test's own.
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
    (&["defrag"], ""),
    (&["snapshot", "save", "SNAPSHOT"], ""),
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
fn run_script(endpoint: &str, peer: &str, snapshot: &Path) -> Vec<(String, Run)> {
    let mut lease = String::new();
    let mut runs = Vec::new();
    for (args, stdin) in SCRIPT {
        let args: Vec<String> = args
            .iter()
            .map(|a| match *a {
                "LEASE" => lease.clone(),
                "SNAPSHOT" => snapshot.display().to_string(),
                _ => a.to_string(),
            })
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = etcdctl(endpoint, &args, stdin);
        if args.starts_with(&["lease", "grant"]) {
            lease = run
                .stdout
                .split_whitespace()
                .nth(1)
                .unwrap_or("")
                .to_string();
        }
        let file = snapshot.display().to_string();
        let normalized = Run {
            exit: run.exit,
            stdout: normalize(&run.stdout.replace(&file, "SNAPSHOT"), endpoint, peer),
            errors: normalize(&run.errors.replace(&file, "SNAPSHOT"), endpoint, peer),
        };
        runs.push((args.join(" ").replace(&file, "SNAPSHOT"), normalized));
    }
    runs
}

#[test]
fn etcdctl_sees_cairn_as_etcd() {
    if !etcd_at_hand() {
        return;
    }
    let one = OneEach::start();
    let (etcd_client, etcd_peer) = (&one.etcd.0, &one.etcd.1);
    let (cairn_client, cairn_peer) = (&one.cairn.0, &one.cairn.1);
    let (etcd_snapshot, cairn_snapshot) = (
        one.tmp.path().join("etcd-snapshot.db"),
        one.tmp.path().join("cairn-snapshot.db"),
    );
    let etcd = run_script(etcd_client, etcd_peer, &etcd_snapshot);
    let cairn = run_script(cairn_client, cairn_peer, &cairn_snapshot);
    assert_same_output(&etcd, &cairn);
    // Both saved a snapshot and defragmented (the outputs compared equal above).
    let run_of = |c: &str| &etcd.iter().find(|(k, _)| k == c).expect(c).1;
    assert_eq!(
        run_of("snapshot save SNAPSHOT").stdout,
        "Snapshot saved at SNAPSHOT\n"
    );
    assert_eq!(
        run_of("defrag").stdout,
        "Finished defragmenting etcd member[ENDPOINT]\n"
    );
    // The snapshot etcdctl saved from cairn is a whole cairn snapshot.
    let status = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["snapshot", "status", "-w", "json"])
        .arg(&cairn_snapshot)
        .output()
        .expect("cairn snapshot status");
    assert!(status.status.success(), "{status:?}");
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("\"revision\""),
        "{status:?}"
    );
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

/// Three members' addresses: each one's client `host:port` and peer URL, the initial
/// cluster naming them m0, m1, m2.
struct Three {
    clients: Vec<String>,
    peers: Vec<String>,
}

impl Three {
    fn new() -> Three {
        Three {
            clients: (0..3).map(|_| common::free_addr()).collect(),
            peers: (0..3)
                .map(|_| format!("http://{}", common::free_addr()))
                .collect(),
        }
    }

    fn initial_cluster(&self) -> String {
        let named: Vec<String> = (0..3).map(|i| format!("m{i}={}", self.peers[i])).collect();
        named.join(",")
    }

    /// Every member's endpoint, as `--endpoints` takes them.
    fn endpoints(&self) -> String {
        self.clients.join(",")
    }
}

fn start_etcd_three(dir: &Path, three: &Three) -> Vec<Process> {
    (0..3)
        .map(|i| {
            let client = format!("http://{}", three.clients[i]);
            let child = Command::new("etcd")
                .args(["--name", &format!("m{i}"), "--data-dir"])
                .arg(dir.join(format!("etcd{i}")))
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &three.peers[i]])
                .args(["--initial-advertise-peer-urls", &three.peers[i]])
                .args(["--initial-cluster", &three.initial_cluster()])
                .args(["--log-level", "error", "--logger", "zap"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start etcd");
            Process(child)
        })
        .collect()
}

fn start_cairn_three(dir: &Path, three: &Three) -> Vec<Process> {
    (0..3)
        .map(|i| {
            let child = Command::new(env!("CARGO_BIN_EXE_cairn"))
                .args(["serve", "--name", &format!("m{i}"), "--data-dir"])
                .arg(dir.join(format!("cairn{i}")))
                .args(["--listen-native-addr", &common::free_addr()])
                .args([
                    "--listen-client-urls",
                    &format!("http://{}", three.clients[i]),
                ])
                .args(["--listen-peer-urls", &three.peers[i]])
                .args(["--initial-advertise-peer-urls", &three.peers[i]])
                .args(["--initial-cluster", &three.initial_cluster()])
                .args(["--log-level", "warn", "--placement", "unpinned"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start cairn");
            Process(child)
        })
        .collect()
}

/// [`normalize`] for a cluster's output: each member's addresses become `EP<i>` and
/// `PEER<i>`, the peer URLs given to `member add` and `member update` their names, and
/// `endpoint hashkv`'s hashes `HASH` (whether they agree is checked apart); then the lines
/// are sorted (and the members of `ETCD_INITIAL_CLUSTER`), since both
/// print members in the order of their ids, which differ.
fn normalize_three(text: &str, three: &Three, more_peers: &[(&str, &str)]) -> String {
    let mut s = text.to_string();
    for i in 0..3 {
        s = s.replace(&three.clients[i], &format!("EP{i}"));
        s = s.replace(&three.peers[i], &format!("PEER{i}"));
    }
    for (url, name) in more_peers {
        s = s.replace(url, name);
    }
    let s = normalize(&s, "\u{0}", "\u{0}");
    let hash = regex::Regex::new(r"(EP\d), \d+").expect("pattern");
    let s = hash.replace_all(&s, "$1, HASH");
    // "Member %16x added to cluster %16x": an id of fewer digits is padded with spaces.
    let padded = regex::Regex::new(r"(Member|cluster) +ID").expect("pattern");
    let s = padded.replace_all(&s, "$1 ID");
    let mut lines: Vec<String> = s
        .lines()
        .map(|l| match l.strip_prefix("ETCD_INITIAL_CLUSTER=\"") {
            Some(rest) => {
                let mut members: Vec<&str> = rest.trim_end_matches('"').split(',').collect();
                members.sort_unstable();
                format!("ETCD_INITIAL_CLUSTER=\"{}\"", members.join(","))
            }
            None => l.to_string(),
        })
        .collect();
    lines.sort();
    lines.join("\n")
}

/// The member id `member list` prints for `name`.
fn member_id(endpoints: &str, name: &str) -> String {
    let list = etcdctl(endpoints, &["member", "list"], "");
    list.stdout
        .lines()
        .find_map(|l| {
            let fields: Vec<&str> = l.split(", ").collect();
            (fields.get(2) == Some(&name)).then(|| fields[0].to_string())
        })
        .unwrap_or_else(|| panic!("no member {name} in {list:?}"))
}

/// `member add`, again while the cluster refuses it: etcd takes no member for its first
/// 5 seconds of serving ("unhealthy cluster": its peers must have been connected that
/// long); the id it printed.
fn member_add(endpoints: &str, args: &[&str]) -> (Run, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let run = etcdctl(endpoints, args, "");
        if run.exit == Some(0) || !run.errors.contains("unhealthy cluster") {
            let id = run
                .stdout
                .strip_prefix("Member ")
                .and_then(|s| s.split_whitespace().next())
                .unwrap_or("")
                .to_string();
            return (run, id);
        }
        assert!(Instant::now() < deadline, "{run:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The membership and cluster-wide commands against a 3-member cluster: each command
/// with its output normalized by [`normalize_three`].
fn run_membership(three: &Three) -> Vec<(String, Run)> {
    let all = three.endpoints();
    let learner_url = format!("http://{}", common::free_addr());
    let voter_url = format!("http://{}", common::free_addr());
    let moved_url = format!("http://{}", common::free_addr());
    let more = [
        (learner_url.as_str(), "PEER_L"),
        (voter_url.as_str(), "PEER_V"),
        (moved_url.as_str(), "PEER_MOVED"),
    ];
    let mut runs = Vec::new();
    let mut record = |args: &[&str], run: Run| {
        let normalized = Run {
            exit: run.exit,
            stdout: normalize_three(&run.stdout, three, &more),
            errors: normalize_three(&run.errors, three, &more),
        };
        runs.push((args.join(" "), normalized));
    };
    let list = ["member", "list"];
    record(&list, etcdctl(&all, &list, ""));
    let add_learner = [
        "member",
        "add",
        "l",
        &format!("--peer-urls={learner_url}"),
        "--learner",
    ];
    let (run, learner) = member_add(&all, &add_learner);
    record(&add_learner, run);
    record(&list, etcdctl(&all, &list, ""));
    // Never started, so not caught up: refused.
    let promote = ["member", "promote", learner.as_str()];
    record(&promote, etcdctl(&all, &promote, ""));
    let add_voter = ["member", "add", "v", &format!("--peer-urls={voter_url}")];
    let (run, voter) = member_add(&all, &add_voter);
    record(&add_voter, run);
    let (m0, m1) = (member_id(&all, "m0"), member_id(&all, "m1"));
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<String>>();
    let commands = [
        s(&[
            "member",
            "update",
            &voter,
            &format!("--peer-urls={moved_url}"),
        ]),
        s(&list),
        s(&["member", "remove", &voter]),
        s(&["member", "remove", &voter]),
        s(&[
            "member",
            "update",
            &voter,
            &format!("--peer-urls={voter_url}"),
        ]),
        s(&["member", "promote", "1234"]),
        s(&["member", "remove", &learner]),
        s(&list),
        // Leadership to m0 (which may lead already: etcd then names it twice), then to
        // m1, so that both clusters' leader is m1 whoever won the election.
        s(&["move-leader", &m0]),
        s(&["move-leader", &m1]),
        s(&["move-leader", "1234"]),
        s(&["endpoint", "status", "--cluster"]),
        s(&["endpoint", "health", "--cluster"]),
        s(&["put", "after", "moves"]),
        s(&["endpoint", "hashkv", "--cluster"]),
    ];
    for args in &commands {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        record(&args, etcdctl(&all, &args, ""));
    }
    runs
}

#[test]
fn etcdctl_sees_a_three_member_cairn_as_etcd() {
    if !etcd_at_hand() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (etcd_three, cairn_three) = (Three::new(), Three::new());
    let _etcd = start_etcd_three(dir.path(), &etcd_three);
    let _cairn = start_cairn_three(dir.path(), &cairn_three);
    wait_answers(&etcd_three.endpoints());
    wait_answers(&cairn_three.endpoints());
    let etcd = run_membership(&etcd_three);
    let cairn = run_membership(&cairn_three);
    assert_same_output(&etcd, &cairn);
    // etcd answered as the comparison assumes: the learner was refused promotion, m1
    // leads at the end, and every member's hash is the same.
    let promote = etcd.iter().find(|(c, _)| c.starts_with("member promote"));
    assert!(
        promote.is_some_and(|(_, r)| r.errors.contains("in sync with leader")),
        "{promote:?}"
    );
    let (_, status) = etcd
        .iter()
        .find(|(c, _)| c == "endpoint status --cluster")
        .expect("endpoint status ran");
    assert_eq!(
        status.stdout.matches(", true, false, ").count(),
        1,
        "{status:?}"
    );
    assert!(
        status.stdout.contains("EP1, ID, VERSION, SIZE, true"),
        "{status:?}"
    );
    // The hashes, normalized away above, agree between cairn's members.
    let hashes = etcdctl(
        &cairn_three.endpoints(),
        &["endpoint", "hashkv", "--cluster"],
        "",
    );
    let hashes: Vec<&str> = hashes
        .stdout
        .lines()
        .filter_map(|l| l.split(", ").nth(1))
        .collect();
    assert_eq!(hashes.len(), 3, "{hashes:?}");
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
}

/// The lines of `check perf` that give its verdict (the progress bar aside): `PASS...`,
/// or `FAIL...`, `Slowest request took too long...`, `Stddev too high...`. The first may
/// follow the bar's last frame on the same line (when the bar stops short of its end, it
/// prints no line break).
fn verdicts(stdout: &str) -> Vec<&str> {
    stdout
        .split(['\n', '\r'])
        .filter_map(|l| {
            ["PASS", "FAIL", "Slowest", "Stddev"]
                .iter()
                .filter_map(|p| l.find(p))
                .min()
                .map(|at| l[at..].trim())
        })
        .collect()
}

/// `etcdctl check perf --load=s` (60 s of 1 KiB puts at 150 a second from 50 clients,
/// spread over the members) passes against a 3-member cairn: throughput, slowest request
/// and deviation; then `check datascale --load=s` (10,000 puts, the first member's resident
/// memory read from `/metrics` on its client URL before and after) runs to its end.
///
/// About 65 s, 60 of them check perf's own.
#[test]
fn etcdctl_check_perf_and_datascale_pass_against_three_members() {
    if !at_hand(&[("etcdctl", "version")], "etcdctl", "Debian: etcd-client") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let three = Three::new();
    let _cairn = start_cairn_three(dir.path(), &three);
    let all = three.endpoints();
    wait_answers(&all);
    let perf = etcdctl(&all, &["check", "perf", "--load=s"], "");
    let lines = verdicts(&perf.stdout);
    eprintln!("etcdctl check perf --load=s: {lines:?}");
    assert_eq!(lines.len(), 4, "{perf:?}");
    assert!(lines.iter().all(|l| l.starts_with("PASS")), "{perf:?}");
    assert_eq!((perf.exit, lines[3]), (Some(0), "PASS"), "{perf:?}");
    let scale = etcdctl(&all, &["check", "datascale", "--load=s"], "");
    assert_eq!(scale.exit, Some(0), "{scale:?}");
    let lines = verdicts(&scale.stdout);
    eprintln!("etcdctl check datascale --load=s: {lines:?}");
    assert_eq!(lines.len(), 1, "{scale:?}");
    assert!(
        lines[0].starts_with("PASS: Approximate system memory used : "),
        "{scale:?}"
    );
    // Both removed their keys.
    let left = etcdctl(
        &all,
        &["get", "/etcdctl-check", "--prefix", "--keys-only"],
        "",
    );
    assert_eq!((left.exit, left.stdout.as_str()), (Some(0), ""), "{left:?}");
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
    if !etcd_at_hand() {
        return;
    }
    let one = OneEach::start();
    let (etcd_client, etcd_peer) = (&one.etcd.0, &one.etcd.1);
    let (cairn_client, cairn_peer) = (&one.cairn.0, &one.cairn.1);
    let (etcd, etcd_in_turn) = lock_and_elect(etcd_client, etcd_peer);
    let (cairn, cairn_in_turn) = lock_and_elect(cairn_client, cairn_peer);
    assert_same_output(&etcd, &cairn);
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
    let want = rt.block_on(lock_service_errors(etcd_client));
    let got = rt.block_on(lock_service_errors(cairn_client));
    assert!(
        want.iter().all(|(code, _)| *code != tonic::Code::Ok),
        "{want:?}"
    );
    assert_eq!(got, want);
}
