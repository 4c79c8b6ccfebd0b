//! A cluster of `cairn serve` processes on loopback, their peer links through a
//! [`Proxy`](super::proxy::Proxy) the test controls.
//!
//! Each member advertises a peer URL on which the proxy listens; the member itself listens
//! for peers on another port (a fresh one at each start, so that a killed process's
//! lingering socket is never shared with its successor), and the proxy forwards there.
//! Members' stderr goes to a file per member, printed if the test panics. Dropping the
//! cluster kills every member (stopped ones too), then stops the proxy.

use super::free_addr;
use super::proxy::Proxy;
use cairn::client::Client;
use cairn::protocol::{ClientRequest, ClientResponse, StatusResponse};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Flags every member of a cluster gets.
#[derive(Clone)]
pub struct Options {
    pub heartbeat_ms: u64,
    pub election_ms: u64,
    pub token: String,
    /// More `cairn serve` flags, for every member.
    pub extra: Vec<String>,
}

impl Options {
    /// The defaults, with a store checkpoint every `count` entries and `keep` entries kept
    /// behind it (`--snapshot-count`, `--snapshot-catch-up-entries`): few kept, members
    /// that fall behind (or join) are sent snapshots.
    pub fn snapshots(count: u64, keep: u64) -> Options {
        Options {
            extra: vec![
                "--snapshot-count".into(),
                count.to_string(),
                "--snapshot-catch-up-entries".into(),
                keep.to_string(),
            ],
            ..Options::default()
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            heartbeat_ms: 100,
            election_ms: 1000,
            token: "cairn-proc-tests".into(),
            extra: Vec::new(),
        }
    }
}

pub struct Member {
    pub name: String,
    pub id: u64,
    /// The native protocol's address (kept across restarts).
    pub client_addr: String,
    /// The etcd v3 gRPC API's address (kept across restarts).
    pub grpc_addr: String,
    /// The advertised peer URL: the proxy's port for this member.
    pub peer_url: String,
    /// Where it serves `/metrics`, `/health` and the probes (kept across restarts).
    pub metrics_addr: String,
    /// For a member added to the running cluster: the `--initial-cluster` it joins with
    /// (`--initial-cluster-state existing`).
    join: Option<String>,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

pub struct Cluster {
    pub members: Vec<Member>,
    pub proxy: Proxy,
    options: Options,
    initial_cluster: String,
    _dir: tempfile::TempDir,
}

/// The member's status, or None if it does not answer within `timeout`.
pub fn status_of(addr: &str, timeout: Duration) -> Option<StatusResponse> {
    let mut c = Client::new(vec![addr.to_string()], timeout);
    match c.request(&ClientRequest::Status) {
        Ok(ClientResponse::Status(s)) => Some(s),
        _ => None,
    }
}

/// Polls `ready` every 20 ms until it returns something; panics with `what` after `limit`.
pub fn poll<T>(limit: Duration, what: &str, mut ready: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = ready() {
            return v;
        }
        assert!(Instant::now() < deadline, "after {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Cluster {
    /// `n` members with the default timeouts, started and serving.
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, Options::default())
    }

    pub fn start_with(n: usize, options: Options) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut members = Vec::new();
        for i in 0..n {
            let name = format!("m{i}");
            let peer_url = format!("http://{}", free_addr());
            let id = cairn::server::member_id(std::slice::from_ref(&peer_url), &options.token);
            members.push(Member {
                data_dir: dir.path().join(&name),
                log: dir.path().join(format!("{name}.log")),
                name,
                id,
                client_addr: free_addr(),
                grpc_addr: free_addr(),
                peer_url,
                metrics_addr: free_addr(),
                join: None,
                child: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let fronts: Vec<(u64, String, String)> = members
            .iter()
            .map(|m| {
                let advertised = m.peer_url.trim_start_matches("http://").to_string();
                (m.id, advertised, free_addr())
            })
            .collect();
        let proxy = Proxy::start(&fronts);
        let mut cluster = Cluster {
            members,
            proxy,
            options,
            initial_cluster,
            _dir: dir,
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        for i in 0..n {
            cluster.wait_serving(i);
        }
        cluster
    }

    /// Every member's native address.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_addr.clone()).collect()
    }

    /// The command that starts member `i`, with its peer listener on `listen_peer`.
    fn command(&self, i: usize, listen_peer: &str) -> Command {
        let m = &self.members[i];
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
        cmd.arg("serve")
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-native-addr", &m.client_addr])
            .args(["--listen-client-urls", &format!("http://{}", m.grpc_addr)])
            .args(["--listen-peer-urls", &format!("http://{listen_peer}")])
            .args([
                "--listen-metrics-urls",
                &format!("http://{}", m.metrics_addr),
            ])
            .args(["--initial-advertise-peer-urls", &m.peer_url]);
        match &m.join {
            None => cmd.args(["--initial-cluster", &self.initial_cluster]),
            Some(cluster) => cmd
                .args(["--initial-cluster", cluster])
                .args(["--initial-cluster-state", "existing"]),
        };
        cmd.args(["--initial-cluster-token", &self.options.token])
            .args([
                "--heartbeat-interval",
                &self.options.heartbeat_ms.to_string(),
            ])
            .args(["--election-timeout", &self.options.election_ms.to_string()])
            // Several members share this machine's cores.
            .args(["--placement", "unpinned", "--log-level", "info"])
            .args(&self.options.extra)
            // Plain text in the log files.
            .env("NO_COLOR", "1");
        cmd
    }

    /// Starts member `i` (its data directory as it is) without waiting for it to serve.
    fn spawn(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        // The native port stays (clients know it): wait until a killed predecessor's
        // listener is gone, or the new member would share it with SO_REUSEPORT.
        let addr = self.members[i].client_addr.clone();
        poll(
            Duration::from_secs(20),
            &format!("{addr} free again"),
            || std::net::TcpListener::bind(&addr).ok().map(drop),
        );
        let listen_peer = free_addr();
        self.proxy.retarget(i, &listen_peer);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.members[i].log)
            .expect("member log");
        let child = self
            .command(i, &listen_peer)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn cairn serve");
        self.members[i].child = Some(child);
    }

    /// Waits (30 s at most) until member `i` answers a status request.
    pub fn wait_serving(&mut self, i: usize) {
        let addr = self.members[i].client_addr.clone();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let child = self.members[i].child.as_mut().expect("running");
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!("member {i} exited at start ({status})");
            }
            if status_of(&addr, Duration::from_secs(1)).is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "member {i}: not serving after 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A new member's addresses (not yet in the cluster, not started): its index. Give it
    /// the id `member add` answered with [`Cluster::set_id`], then [`Cluster::join`].
    pub fn new_member(&mut self, name: &str) -> usize {
        let peer_url = format!("http://{}", free_addr());
        let advertised = peer_url.trim_start_matches("http://").to_string();
        let i = self.proxy.add_front(0, &advertised, &free_addr());
        assert_eq!(i, self.members.len(), "one proxy front per member");
        self.members.push(Member {
            data_dir: self._dir.path().join(name),
            log: self._dir.path().join(format!("{name}.log")),
            name: name.to_string(),
            id: 0,
            client_addr: free_addr(),
            grpc_addr: free_addr(),
            peer_url,
            metrics_addr: free_addr(),
            join: None,
            child: None,
        });
        i
    }

    pub fn set_id(&mut self, i: usize, id: u64) {
        self.members[i].id = id;
        self.proxy.set_member(i, id);
    }

    /// Starts new member `i` with an empty data directory, joining the running cluster
    /// whose members are `with` (and itself), and waits until it serves.
    pub fn join(&mut self, i: usize, with: &[usize]) {
        let cluster = with
            .iter()
            .chain(std::iter::once(&i))
            .map(|&j| format!("{}={}", self.members[j].name, self.members[j].peer_url))
            .collect::<Vec<_>>()
            .join(",");
        self.members[i].join = Some(cluster);
        self.start_member(i);
    }

    /// Waits (`limit` at most) for member `i` to exit on its own; its exit status.
    pub fn wait_exit(&mut self, i: usize, limit: Duration) -> ExitStatus {
        let child = self.members[i].child.as_mut().expect("running");
        let status = poll(limit, &format!("member {i} exits"), || {
            child.try_wait().expect("try_wait")
        });
        self.members[i].child = None;
        status
    }

    /// Starts member `i` again and waits (30 s at most) for it to exit with an error, as
    /// a member the cluster removed does.
    pub fn start_member_expecting_exit(&mut self, i: usize) {
        self.spawn(i);
        let exit = self.wait_exit(i, Duration::from_secs(30));
        assert!(!exit.success(), "member {i} exited with {exit}");
    }

    /// Starts member `i` again and waits until it serves.
    pub fn start_member(&mut self, i: usize) {
        self.spawn(i);
        self.wait_serving(i);
    }

    fn signal(&self, i: usize, signal: libc::c_int) {
        let child = self.members[i].child.as_ref().expect("running");
        // SAFETY: kill only sends a signal to our own child, which has not been reaped.
        let r = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        assert_eq!(r, 0, "kill({signal}) of member {i}");
    }

    /// SIGKILL, and reaps the process.
    pub fn kill(&mut self, i: usize) {
        let mut child = self.members[i].child.take().expect("running");
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
    }

    /// SIGTERM, and waits (30 s at most) for the member to exit.
    pub fn terminate(&mut self, i: usize) -> ExitStatus {
        self.signal(i, libc::SIGTERM);
        let child = self.members[i].child.as_mut().expect("running");
        let status = poll(Duration::from_secs(30), "exit after SIGTERM", || {
            child.try_wait().expect("try_wait")
        });
        self.members[i].child = None;
        status
    }

    pub fn pause(&self, i: usize) {
        self.signal(i, libc::SIGSTOP);
    }

    pub fn resume(&self, i: usize) {
        self.signal(i, libc::SIGCONT);
    }

    /// The process id of member `i`, if it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    pub fn status(&self, i: usize) -> Option<StatusResponse> {
        status_of(&self.members[i].client_addr, Duration::from_secs(1))
    }

    /// Waits until one of `among` reports itself leader; its index.
    pub fn wait_leader(&self, among: &[usize], limit: Duration) -> usize {
        poll(limit, &format!("a leader among {among:?}"), || {
            among.iter().copied().find(|&i| {
                self.status(i)
                    .is_some_and(|s| s.leader == s.member_id && s.member_id != 0)
            })
        })
    }

    /// Waits until every running member answers, agrees on one leader, and has applied
    /// the same index at the same revision; that revision.
    pub fn wait_converged(&self, limit: Duration) -> i64 {
        let running: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.is_running(i))
            .collect();
        let deadline = Instant::now() + limit;
        loop {
            let statuses: Vec<Option<StatusResponse>> =
                running.iter().map(|&i| self.status(i)).collect();
            if let Some(first) = statuses.first().cloned().flatten() {
                let same = statuses.iter().all(|s| {
                    s.as_ref().is_some_and(|s| {
                        s.leader == first.leader
                            && s.raft_applied_index == first.raft_applied_index
                            && s.raft_index == first.raft_applied_index
                            && s.revision == first.revision
                    })
                });
                if same && first.leader != 0 {
                    return first.revision;
                }
            }
            assert!(
                Instant::now() < deadline,
                "after {limit:?}: the members do not agree on a leader and an applied index; \
                 last statuses: {statuses:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `cairn endpoint hashkv --rev <rev>` over every running member: (endpoint, hash).
    pub fn hashkv(&self, rev: i64) -> Vec<(String, u64)> {
        let endpoints: Vec<String> = (0..self.members.len())
            .filter(|&i| self.is_running(i))
            .map(|i| self.members[i].client_addr.clone())
            .collect();
        let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["--endpoints", &endpoints.join(",")])
            .args([
                "endpoint",
                "hashkv",
                "-w",
                "json",
                "--rev",
                &rev.to_string(),
            ])
            .output()
            .expect("cairn endpoint hashkv");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "endpoint hashkv: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let hashes: Vec<(String, u64)> = stdout
            .split("{\"Endpoint\":\"")
            .skip(1)
            .map(|item| {
                let endpoint = item.split('"').next().unwrap_or_default().to_string();
                let hash = item
                    .split("\"hash\":")
                    .nth(1)
                    .and_then(|h| h.split([',', '}']).next())
                    .and_then(|h| h.parse().ok())
                    .unwrap_or_else(|| panic!("no hash in {item}"));
                (endpoint, hash)
            })
            .collect();
        assert_eq!(hashes.len(), endpoints.len(), "{stdout}");
        hashes
    }

    /// What member `i` logged so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.members[i].log).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                // SIGKILL ends a stopped process too.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            for m in &self.members {
                let log = std::fs::read_to_string(&m.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(200).collect();
                eprintln!(
                    "---- {} ({:x}, {}) stderr, last {} lines ----",
                    m.name,
                    m.id,
                    m.client_addr,
                    tail.len()
                );
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}
