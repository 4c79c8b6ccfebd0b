//! The `cairn` command: `serve` runs a member, `check` verifies a data directory without
//! changing it and `repair` does the cuts a start would do (`cairn::check`), `snapshot` reads,
//! combines and restores snapshot files (`cairn::backup`), and the client
//! commands (`put`, `get`, `del`, `txn`, `compact`, `endpoint`, `member`, `move-leader`,
//! `alarm`, `lease`) talk to members in etcdctl's spirit.
//!
//! Exit codes (etcdctl's): 0 success; 1 the request failed (the server's error is printed,
//! or "context deadline exceeded" when no reply came in time); 2 no endpoint could be
//! reached; 3 invalid input (a malformed `txn`); 128 bad arguments. `check` and `repair`
//! document their own in their help.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use cairn::cli::{LeaseCmd, MemberCmd};
use cairn::client::ClientError;
use cairn::mvcc::{Request, Response};
use cairn::protocol::{ClientRequest, ClientResponse, MemberRequest, MemberResponse};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// The database quota when `--quota-backend-bytes` is 0 (etcd's rule: 0 means default).
const DEFAULT_QUOTA_BACKEND_BYTES: u64 = 8 << 30;

/// Exit code of a member stopped by a panic (a bug), as Rust's own.
const EXIT_PANIC: i32 = 101;

/// glibc's malloc spends a large share of a write-heavy load in consolidation; mimalloc does
/// not (see tuning.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::time::Duration;

/// Gives the memory this thread's heap freed back to the OS at once. mimalloc purges freed
/// pages only when the thread that freed them allocates or collects again after its purge
/// delay; a net shard left idle after many connections closed would hold them for good.
fn release_memory() {
    extern "C" {
        /// mimalloc's public API (`mimalloc.h`), linked in through the `mimalloc` crate.
        fn mi_collect(force: bool);
    }
    // SAFETY: mi_collect takes no pointers and may be called on any thread at any time.
    unsafe { mi_collect(true) }
}

/// A duration as etcd's flags write them: a number and a unit (`ms`, `s`, `m`, `h`),
/// several of them added up (`1m30s`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?} (use a number and a unit: 10m, 30s, 500ms)");
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        let unit_len = rest[digits..]
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len() - digits);
        let unit_ms = match &rest[digits..digits + unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        let ms = number.checked_mul(unit_ms).ok_or_else(bad)?;
        total = total
            .checked_add(Duration::from_millis(ms))
            .ok_or_else(bad)?;
        rest = &rest[digits + unit_len..];
    }
    Ok(total)
}

/// Takes transparent huge pages off for this process's anonymous memory. With them on, the
/// allocator's freed memory goes back to the kernel in 64 KiB pieces and comes back as a
/// fresh 2 MiB page, zeroed whole, when any byte of it is touched again: under a steady
/// write load the leader's executor spent a fifth of its time zeroing pages. See tuning.md
/// ("Transparent huge pages").
fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes integers only and changes nothing but this flag.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        tracing::warn!(
            "could not turn transparent huge pages off: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Each connection takes a descriptor: the soft limit is raised to the hard one, as Go's
/// runtime does for etcd (a soft limit of 1,024 is common and far under what a member
/// serves).
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                ..limit
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                tracing::warn!(
                    soft = limit.rlim_cur,
                    "could not raise the open files limit: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "A strongly consistent key-value store"
)]
struct Cli {
    /// Native protocol endpoints, comma separated.
    #[arg(
        long,
        global = true,
        env = "CAIRN_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:2378"
    )]
    endpoints: Vec<String>,
    /// Output format: simple, json or table.
    #[arg(
        short = 'w',
        long = "write-out",
        global = true,
        default_value = "simple"
    )]
    write_out: OutputFormat,
    /// Timeout of each request, in seconds.
    #[arg(long, global = true, default_value_t = 5)]
    command_timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OutputFormat {
    Simple,
    Json,
    /// Tables where etcdctl draws them (endpoint status, member list); simple output
    /// elsewhere.
    Table,
}

#[derive(clap::Args)]
struct GetCmd {
    #[command(flatten)]
    args: cairn::cli::GetArgs,
    /// Only write values.
    #[arg(long)]
    print_value_only: bool,
    /// Linearizable (l) or serializable (s).
    #[arg(long, default_value = "l")]
    consistency: String,
}

#[derive(Subcommand)]
enum EndpointCmd {
    /// The status of each endpoint.
    Status,
    /// Checks that each endpoint is healthy: a linearizable read through it succeeds.
    Health,
    /// The hash of each endpoint's key-value history (members agree at equal revisions).
    Hashkv {
        /// The revision to hash up to (0 for the current one).
        #[arg(long, default_value_t = 0)]
        rev: i64,
    },
}

#[derive(Subcommand)]
enum AlarmCmd {
    /// Lists all alarms.
    List,
    /// Disarms all alarms.
    Disarm,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a member. Flags keep etcd's names; each is also read from CAIRN_<FLAG>, and
    /// --name, --initial-cluster, --initial-advertise-peer-urls and --initial-cluster-state
    /// from etcd's ETCD_<FLAG> (which `member add` prints) where CAIRN_<FLAG> is not set.
    Serve(Box<ServeArgs>),
    /// Puts the given key into the store. Without a value, the value is all of standard
    /// input.
    Put(cairn::cli::PutArgs),
    /// Gets the key or a range of keys.
    Get(GetCmd),
    /// Removes the specified key or range of keys [key, range_end).
    #[command(alias = "delete")]
    Del(cairn::cli::DelArgs),
    /// Watches events stream on keys or prefixes: from now, or from --rev on. Runs until
    /// interrupted; when the connection fails, goes on through another endpoint from the
    /// revision after the last one seen.
    Watch(cairn::cli::WatchArgs),
    /// Acquires a named lock: prints its key and holds it until interrupted, or runs the
    /// command given while holding it (with ETCD_LOCK_KEY and ETCD_LOCK_REV set) and exits
    /// with its exit code. The lock is released at the end.
    Lock(cairn::cli::LockArgs),
    /// Observes and participates in leader election: campaigns with the proposal (prints
    /// the leader key and value once elected, holds until interrupted, resigns), or with
    /// -l prints the leader's key and value at every change.
    Elect(cairn::cli::ElectArgs),
    /// A semaphore: at most --limit holders at once.
    Sem {
        #[command(subcommand)]
        command: cairn::cli::SemCmd,
    },
    /// Txn processes all the requests in one transaction, read from standard input: compares,
    /// an empty line, success requests, an empty line, failure requests.
    Txn,
    /// Compacts the event history up to the given revision.
    Compact {
        revision: i64,
        /// Wait for the compaction to be applied (always the case here).
        #[arg(long)]
        physical: bool,
    },
    /// Endpoint related commands.
    Endpoint {
        /// Use all endpoints from the cluster member list (each member's client URLs)
        /// instead of --endpoints.
        #[arg(long, global = true)]
        cluster: bool,
        #[command(subcommand)]
        command: EndpointCmd,
    },
    /// Membership related commands. Changes are sent to the leader: the first of the
    /// endpoints that leads, or the leader as they know it.
    Member {
        #[command(subcommand)]
        command: MemberCmd,
    },
    /// Alarm related commands.
    Alarm {
        #[command(subcommand)]
        command: AlarmCmd,
    },
    /// Lease related commands. Keep-alive and timetolive are sent to the leader: the first
    /// of the endpoints that leads, or the leader as they know it.
    Lease {
        #[command(subcommand)]
        command: LeaseCmd,
    },
    /// Transfers leadership to another member (its ID in hex, as `endpoint status` shows
    /// it). The current leader must be among the endpoints.
    MoveLeader {
        /// The member to lead, in hex.
        transferee: String,
    },
    /// Defragments the storage of each endpoint's member: its dead space is reclaimed
    /// online (writes go on), and the answer comes once it writes to the compacted file.
    Defrag,
    /// Snapshots: save one of a running member, status, restore into a new cluster,
    /// combine increments.
    Snapshot {
        #[command(subcommand)]
        command: cairn::backup::cli::SnapshotCmd,
    },
    /// Verifies a stopped member's data directory without changing it: every WAL record,
    /// every revision page, and the log entries a start would apply; prints a summary as one
    /// JSON line on stdout and, on stderr, each thing a start would cut or delete and why it
    /// would refuse. Exit code 0: a start would succeed and lose nothing; 1: a start would
    /// refuse, or acknowledged writes may be lost (a WAL tail to cut), or the directory is
    /// in use or unreadable (the error names the file and byte offset).
    Check {
        /// The data directory (holds `wal/` and `db/`).
        #[arg(long, env = "CAIRN_DATA_DIR", default_value = "default.cairn")]
        data_dir: PathBuf,
    },
    /// Does to a stopped member's data directory what a start does: cuts a torn WAL tail
    /// and an unfinished tree commit, and deletes leftover files; prints what it removed.
    /// Exit code 0: repaired (or nothing to do); 1: a start would refuse for a reason a cut
    /// cannot fix, and nothing was changed.
    Repair {
        /// The data directory (holds `wal/` and `db/`).
        #[arg(long, env = "CAIRN_DATA_DIR", default_value = "default.cairn")]
        data_dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Human-readable name for this member.
    #[arg(long, env = "CAIRN_NAME", default_value = "default")]
    name: String,
    /// Path to the data directory.
    #[arg(long, env = "CAIRN_DATA_DIR", default_value = "default.cairn")]
    data_dir: PathBuf,
    /// Address for the native protocol.
    #[arg(
        long,
        env = "CAIRN_LISTEN_NATIVE_ADDR",
        default_value = "127.0.0.1:2378"
    )]
    listen_native_addr: String,
    /// URLs to listen on for the etcd v3 gRPC API (comma-separated; port 0: any free port).
    #[arg(
        long,
        env = "CAIRN_LISTEN_CLIENT_URLS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    listen_client_urls: Vec<String>,
    /// This member's gRPC client URLs to advertise to clients in the member list
    /// (comma-separated; default: the listen URLs).
    #[arg(long, env = "CAIRN_ADVERTISE_CLIENT_URLS", value_delimiter = ',')]
    advertise_client_urls: Vec<String>,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long, env = "CAIRN_MAX_REQUEST_BYTES", default_value_t = 1_572_864)]
    max_request_bytes: u32,
    /// Milliseconds a connection may hold part of a frame with no more of it arriving
    /// before it is closed (idle connections, with no partial frame, stay open).
    #[arg(long, env = "CAIRN_PARTIAL_FRAME_TIMEOUT", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    partial_frame_timeout: u64,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long, env = "CAIRN_MAX_TXN_OPS", default_value_t = 128)]
    max_txn_ops: usize,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, env = "CAIRN_HEARTBEAT_INTERVAL", default_value_t = 100)]
    heartbeat_interval: u64,
    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, env = "CAIRN_ELECTION_TIMEOUT", default_value_t = 1000)]
    election_timeout: u64,
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, env = "CAIRN_LOG_LEVEL", default_value = "info")]
    log_level: tracing::Level,
    /// How the net, raft and apply roles map onto cores: spread (one pinned executor per
    /// core, a net shard on each, raft on the first, apply on the last), one (every role on
    /// one pinned executor) or unpinned (the spread layout, not pinned). See tuning.md.
    #[arg(long, env = "CAIRN_PLACEMENT", default_value = "spread")]
    placement: cairn::server::PlacementMode,
    /// Initial cluster configuration for bootstrapping: name=peer-url,... (every member of
    /// the new cluster, this one included). Ignored once the data directory holds a member.
    #[arg(
        long,
        env = "CAIRN_INITIAL_CLUSTER",
        default_value = "default=http://localhost:2380"
    )]
    initial_cluster: String,
    /// This member's peer URLs to advertise to the rest of the cluster.
    #[arg(
        long,
        env = "CAIRN_INITIAL_ADVERTISE_PEER_URLS",
        value_delimiter = ',',
        default_value = "http://localhost:2380"
    )]
    initial_advertise_peer_urls: Vec<String>,
    /// URLs to listen on for peer traffic.
    #[arg(
        long,
        env = "CAIRN_LISTEN_PEER_URLS",
        value_delimiter = ',',
        default_value = "http://localhost:2380"
    )]
    listen_peer_urls: Vec<String>,
    /// Initial cluster state: new or existing.
    #[arg(long, env = "CAIRN_INITIAL_CLUSTER_STATE", default_value = "new")]
    initial_cluster_state: cairn::server::ClusterState,
    /// Initial cluster token, which the member and cluster IDs are derived from.
    #[arg(
        long,
        env = "CAIRN_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    initial_cluster_token: String,
    /// Raise an alarm when the database's live bytes exceed this, and refuse writes that
    /// add data (deletes, compaction and reads go on). 0 means the default, 8 GiB.
    #[arg(long, env = "CAIRN_QUOTA_BACKEND_BYTES", default_value_t = 0)]
    quota_backend_bytes: u64,
    /// Number of committed entries to trigger a checkpoint of the tree file, after which the
    /// log is compacted and old WAL segments deleted.
    #[arg(long, env = "CAIRN_SNAPSHOT_COUNT", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    snapshot_count: u64,
    /// Entries a member of a cluster keeps in its log behind a checkpoint, for followers
    /// that lag a little; one further behind is sent a snapshot (the tree file).
    #[arg(long, env = "CAIRN_SNAPSHOT_CATCH_UP_ENTRIES", default_value_t = 5_000)]
    snapshot_catch_up_entries: u64,
    /// Size in bytes of each WAL segment file (a multiple of 4096, at least 8 MiB).
    #[arg(long, env = "CAIRN_WAL_SEGMENT_BYTES", default_value_t = 64 << 20,
          value_parser = clap::value_parser!(u64).range((8 << 20)..))]
    wal_segment_bytes: u64,
    /// How often a watcher that asked for progress notifications, and was sent nothing
    /// meanwhile, gets the member's revision: a duration such as 10m, 30s or 500ms.
    #[arg(long = "experimental-watch-progress-notify-interval",
          env = "CAIRN_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL", default_value = "10m",
          value_parser = parse_duration)]
    watch_progress_notify_interval: Duration,
    /// Minimum time a client should wait before pinging the server: one pinging more often
    /// is sent GOAWAY "too_many_pings" and disconnected (a duration: 5s, 500ms...).
    #[arg(long, env = "CAIRN_GRPC_KEEPALIVE_MIN_TIME", default_value = "5s",
          value_parser = parse_duration)]
    grpc_keepalive_min_time: Duration,
    /// How long a gRPC connection may stay silent before the server pings it.
    #[arg(long, env = "CAIRN_GRPC_KEEPALIVE_INTERVAL", default_value = "2h",
          value_parser = parse_duration)]
    grpc_keepalive_interval: Duration,
    /// How long the server waits for the answer to its ping before closing the connection.
    #[arg(long, env = "CAIRN_GRPC_KEEPALIVE_TIMEOUT", default_value = "20s",
          value_parser = parse_duration)]
    grpc_keepalive_timeout: Duration,
    /// Number of executors for spread and unpinned; 0: one per core this process may use.
    #[arg(long, env = "CAIRN_EXECUTORS", default_value_t = 0)]
    executors: usize,
    /// Time (in milliseconds) between the leader's checkpoints of the leases' remaining
    /// TTLs through the log: after a restart, or a new leader, a lease goes on from its last
    /// checkpoint instead of its whole TTL (etcd's --experimental-lease-checkpoint-interval).
    #[arg(long, env = "CAIRN_LEASE_CHECKPOINT_INTERVAL",
          default_value_t = cairn::lease::CHECKPOINT_INTERVAL_MS_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1..))]
    lease_checkpoint_interval: u64,
    /// URLs (http://host:port, comma-separated) serving /metrics (Prometheus text),
    /// /health, /livez, /readyz and /version; none by default, as etcd.
    #[arg(long, env = "CAIRN_LISTEN_METRICS_URLS", value_delimiter = ',')]
    listen_metrics_urls: Vec<String>,
}

/// `cairn member add` prints etcd's variables for the new member's start, as etcdctl does
/// (scripts use its lines as they are), and deployments set etcd's variables for the other
/// flags cairn shares with etcd: `serve` reads each for its flag, by the flag's id, when
/// the flag's own CAIRN_ variable is not set.
const ETCD_VARIABLES: [(&str, &str); 7] = [
    ("name", "ETCD_NAME"),
    ("listen_client_urls", "ETCD_LISTEN_CLIENT_URLS"),
    ("advertise_client_urls", "ETCD_ADVERTISE_CLIENT_URLS"),
    ("initial_cluster", "ETCD_INITIAL_CLUSTER"),
    (
        "initial_advertise_peer_urls",
        "ETCD_INITIAL_ADVERTISE_PEER_URLS",
    ),
    ("initial_cluster_state", "ETCD_INITIAL_CLUSTER_STATE"),
    ("listen_metrics_urls", "ETCD_LISTEN_METRICS_URLS"),
];

/// The command line's grammar, with etcd's variables in place of ours where only theirs are
/// set (`ETCD_VARIABLES`).
fn cli_command() -> clap::Command {
    Cli::command().mut_subcommand("serve", |mut serve| {
        for (arg, etcds) in ETCD_VARIABLES {
            serve = serve.mut_arg(arg, |a| {
                let ours_set = a.get_env().is_some_and(|v| std::env::var_os(v).is_some());
                if !ours_set && std::env::var_os(etcds).is_some() {
                    a.env(etcds)
                } else {
                    a
                }
            });
        }
        serve
    })
}

/// Parses a command line as `Cli::try_parse_from` does, with `cli_command`'s grammar.
fn parse_cli<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = cli_command().try_get_matches_from(args)?;
    Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut Cli::command()))
}

const EXIT_ERROR: u8 = 1;
const EXIT_BAD_CONNECTION: u8 = 2;
const EXIT_INVALID_INPUT: u8 = 3;
const EXIT_BAD_ARGS: u8 = 128;

/// A client command's failure and its exit code.
struct Failure(u8, String);

impl From<cairn::client::ClientError> for Failure {
    fn from(e: cairn::client::ClientError) -> Failure {
        use cairn::client::ClientError;
        let code = match &e {
            ClientError::Unreachable { .. } | ClientError::Io { .. } => EXIT_BAD_CONNECTION,
            // A member that took the request and did not answer in time: the request failed
            // (etcdctl's "context deadline exceeded", exit code 1).
            ClientError::Timeout { .. } => EXIT_ERROR,
            ClientError::Server { .. } | ClientError::Protocol { .. } => EXIT_ERROR,
        };
        Failure(code, e.to_string())
    }
}

impl From<cairn::cli::CliError> for Failure {
    fn from(e: cairn::cli::CliError) -> Failure {
        Failure(EXIT_BAD_ARGS, e.to_string())
    }
}

fn kv(client: &mut cairn::client::Client, req: Request) -> Result<Response, Failure> {
    match client.request(&ClientRequest::Kv(req))? {
        ClientResponse::Kv(r) => Ok(r),
        _ => Err(Failure(EXIT_ERROR, "unexpected reply".into())),
    }
}

/// A client of one endpoint alone: endpoint commands ask each member, as etcdctl does.
fn endpoint_client(endpoint: &str, timeout_s: u64) -> cairn::client::Client {
    cairn::client::Client::new(vec![endpoint.to_string()], Duration::from_secs(timeout_s))
}

/// Asks each endpoint on its own: the replies of those that answer, in order, and how many
/// did not (each said on stderr, as etcdctl says it: "Failed to get {what} of endpoint").
fn ask_each<T>(
    endpoints: &[String],
    timeout_s: u64,
    request: &ClientRequest,
    what: &str,
    pick: impl Fn(ClientResponse) -> Option<T>,
) -> Result<(Vec<(String, T)>, usize), Failure> {
    let mut rows = Vec::new();
    let mut failed = 0;
    for endpoint in endpoints {
        match endpoint_client(endpoint, timeout_s).request(request) {
            Ok(reply) => match pick(reply) {
                Some(row) => rows.push((endpoint.clone(), row)),
                None => return Err(Failure(EXIT_ERROR, "unexpected reply".into())),
            },
            Err(e) => {
                eprintln!("Failed to get {what} of endpoint {endpoint} ({e})");
                failed += 1;
            }
        }
    }
    Ok((rows, failed))
}

/// Some endpoints did not answer: what those that did said goes out, and the command
/// fails (exit code 1) saying how many did not.
fn some_did_not_answer(answered: Option<&[u8]>, failed: usize, total: usize) -> Failure {
    if let Some(out) = answered {
        if let Err(e) = write_out(out) {
            return Failure(EXIT_ERROR, e);
        }
    }
    Failure(
        EXIT_ERROR,
        format!("{failed} of {total} endpoints did not answer"),
    )
}

fn member_reply(reply: ClientResponse) -> Result<MemberResponse, Failure> {
    match reply {
        ClientResponse::Member(r) => Ok(r),
        _ => Err(Failure(EXIT_ERROR, "unexpected reply".into())),
    }
}

/// The members, as the first endpoint that answers knows them (any member answers).
fn member_list(client: &mut cairn::client::Client) -> Result<MemberResponse, Failure> {
    member_reply(client.request(&ClientRequest::Member(MemberRequest::List))?)
}

/// `endpoint ... --cluster`: every member's client URLs, as etcdctl takes them.
fn cluster_endpoints(client: &mut cairn::client::Client) -> Result<Vec<String>, Failure> {
    let r = member_list(client).map_err(|Failure(code, e)| {
        Failure(
            code,
            format!("failed to fetch endpoints from etcd cluster member list: {e}"),
        )
    })?;
    Ok(cairn::cli::member::cluster_endpoints(&r.members))
}

/// Sends a member change to the leader, which alone takes one: to the endpoints in order,
/// past those that cannot be reached or answer "not leader" (neither took it); if none of
/// them leads, to the leader as the first that refused knows it. Any other error ends it:
/// the change may have been applied, and is not sent again.
fn change_membership(
    endpoints: &[String],
    timeout_s: u64,
    change: MemberRequest,
) -> Result<MemberResponse, Failure> {
    let request = ClientRequest::Member(change);
    let mut refused = None;
    let mut unreachable = String::from("no endpoints given");
    for endpoint in endpoints {
        match endpoint_client(endpoint, timeout_s).request(&request) {
            Ok(reply) => return member_reply(reply),
            Err(e) if cairn::cli::member::is_not_leader(&e) => {
                refused.get_or_insert((endpoint, e));
            }
            Err(ClientError::Unreachable { last, .. }) => unreachable = last,
            Err(e) => return Err(e.into()),
        }
    }
    let Some((follower, refusal)) = refused else {
        return Err(ClientError::Unreachable {
            endpoints: endpoints.to_vec(),
            last: unreachable,
        }
        .into());
    };
    let leader = cairn::client::leader_endpoint(follower, Duration::from_secs(timeout_s))
        .map_err(|why| Failure(EXIT_ERROR, format!("{refusal} (and {why})")))?;
    member_reply(endpoint_client(&leader, timeout_s).request(&request)?)
}

/// `lease ...`: grants, revokes and the list go to the endpoints in order; keep-alive and
/// timetolive to the leader. `keep-alive` without `--once` writes a line per renewal as it
/// goes, and ends once the lease is gone.
fn lease(
    client: &mut cairn::client::Client,
    endpoints: &[String],
    timeout_s: u64,
    json: bool,
    command: LeaseCmd,
) -> Result<Vec<u8>, Failure> {
    use cairn::cli::{lease as out, output};
    let timeout = Duration::from_secs(timeout_s);
    let to_leader = || cairn::client::LeaderClient::new(endpoints.to_vec(), timeout);
    Ok(match command {
        LeaseCmd::Grant { ttl } => {
            let r = client.lease_grant(out::parse_ttl(&ttl)?, 0)?;
            match json {
                true => output::lease_grant_json(&r) + "\n",
                false => out::granted(r.id, r.ttl),
            }
            .into_bytes()
        }
        LeaseCmd::Revoke { id } => {
            let id = out::parse_lease_id(&id)?;
            let r = client.lease_revoke(id)?;
            match json {
                true => output::lease_revoke_json(&r) + "\n",
                false => out::revoked(id),
            }
            .into_bytes()
        }
        LeaseCmd::KeepAlive { once: true, id } => {
            let r = to_leader().keep_alive_once(out::parse_lease_id(&id)?)?;
            match json {
                true => output::lease_keep_alive_json(&r) + "\n",
                false => out::keepalived(r.id, r.ttl),
            }
            .into_bytes()
        }
        LeaseCmd::KeepAlive { once: false, id } => {
            let id = out::parse_lease_id(&id)?;
            let never = std::sync::atomic::AtomicBool::new(false);
            let mut written = Ok(());
            cairn::client::keep_alive_loop(endpoints.to_vec(), timeout, id, &never, |event| {
                let line = match event {
                    cairn::client::KeepAliveEvent::Renewed(r) if json => {
                        output::lease_keep_alive_json(&r) + "\n"
                    }
                    cairn::client::KeepAliveEvent::Renewed(r) => out::keepalived(r.id, r.ttl),
                    cairn::client::KeepAliveEvent::Gone if !json => out::expired_or_revoked(id),
                    _ => return,
                };
                if written.is_ok() {
                    written = write_out(line.as_bytes());
                }
            });
            written.map_err(|e| Failure(EXIT_ERROR, e))?;
            Vec::new()
        }
        LeaseCmd::Timetolive { keys, id } => {
            let r = to_leader().time_to_live(out::parse_lease_id(&id)?, keys)?;
            match json {
                true => (output::lease_time_to_live_json(&r) + "\n").into_bytes(),
                false => out::time_to_live(&r, keys),
            }
        }
        LeaseCmd::List => {
            let r = client.lease_leases()?;
            match json {
                true => output::lease_list_json(&r) + "\n",
                false => out::list(&r),
            }
            .into_bytes()
        }
    })
}

/// The exit of `lock`, `elect` and `sem`: the command's code, or 1 with the error.
fn session_exit(result: Result<i32, String>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// etcdctl's exit code for a watch the server canceled.
const EXIT_INTERRUPTED: u8 = 5;

/// `watch`: prints each response as it comes (and runs the exec-command for each event)
/// until the server cancels the watch or the process is interrupted.
fn watch(
    endpoints: &[String],
    format: OutputFormat,
    timeout_s: u64,
    args: &cairn::cli::WatchArgs,
) -> Result<(), Failure> {
    use cairn::cli::watch::{exec_env, watch_json, watch_simple};
    let request = args.request()?;
    let timeout = Duration::from_secs(timeout_s);
    let mut stream = cairn::client::WatchStream::connect(endpoints.to_vec(), timeout)?;
    let created = stream.create(request)?;
    let show = |r: &cairn::watch::WatchResponse| -> Result<(), Failure> {
        let out = match format {
            OutputFormat::Json => watch_json(r).into_bytes(),
            _ => watch_simple(r),
        };
        write_out(&out).map_err(|e| Failure(EXIT_ERROR, e))
    };
    let mut response = created;
    loop {
        if response.canceled {
            // clientv3's error for a compacted start revision, as etcdctl prints it.
            let reason = if response.compact_revision != 0 {
                "etcdserver: mvcc: required revision has been compacted"
            } else {
                response.cancel_reason.as_str()
            };
            eprintln!("watch was canceled ({reason})");
            return Err(Failure(
                EXIT_INTERRUPTED,
                "watch is canceled by the server".into(),
            ));
        }
        if !response.created {
            show(&response)?;
        }
        if let Some((program, rest)) = args.exec.split_first() {
            for e in &response.events {
                let status = std::process::Command::new(program)
                    .args(rest)
                    .envs(exec_env(e))
                    .status();
                if let Err(e) = status {
                    eprintln!("Error running {program:?}: {e}");
                }
            }
        }
        response = loop {
            if let Some(r) = stream.next(Duration::from_secs(1))? {
                break r;
            }
        };
    }
}

/// Writes a client command's output to stdout as it is.
fn write_out(out: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out)
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot write the output: {e}"))
}

/// Runs a client command; returns what to print (bytes: keys and values are written as
/// stored, UTF-8 or not).
fn run_client(
    endpoints: &[String],
    format: OutputFormat,
    timeout_s: u64,
    command: Command,
) -> Result<Vec<u8>, Failure> {
    use cairn::cli::output;
    let json = matches!(format, OutputFormat::Json);
    let mut client = cairn::client::Client::new(endpoints.to_vec(), Duration::from_secs(timeout_s));
    let unexpected = || Failure(EXIT_ERROR, "unexpected reply".into());
    let from_members;
    let endpoints = match &command {
        Command::Endpoint { cluster: true, .. } => {
            from_members = cluster_endpoints(&mut client)?;
            from_members.as_slice()
        }
        _ => endpoints,
    };
    Ok(match command {
        Command::Put(args) => {
            let req = args.request_or_read(std::io::stdin().lock())?;
            match kv(&mut client, Request::Put(req))? {
                Response::Put(r) if json => output::put_json(&r).into_bytes(),
                Response::Put(r) => output::put_simple(&r),
                _ => return Err(unexpected()),
            }
        }
        Command::Get(cmd) => {
            if cmd.print_value_only && cmd.args.keys_only {
                return Err(Failure(
                    EXIT_BAD_ARGS,
                    "--print-value-only and --keys-only cannot be set at the same time".into(),
                ));
            }
            let mut req = cmd.args.request()?;
            req.serializable = match cmd.consistency.as_str() {
                "l" => false,
                "s" => true,
                other => {
                    return Err(Failure(
                        EXIT_BAD_ARGS,
                        format!("unknown consistency flag {other:?}"),
                    ))
                }
            };
            match kv(&mut client, Request::Range(req))? {
                Response::Range(r) if json => output::range_json(&r).into_bytes(),
                Response::Range(r) => {
                    output::range_simple(&r, cmd.args.keys_only, cmd.print_value_only)
                }
                _ => return Err(unexpected()),
            }
        }
        Command::Del(args) => match kv(&mut client, Request::DeleteRange(args.request()?))? {
            Response::DeleteRange(r) if json => output::delete_json(&r).into_bytes(),
            Response::DeleteRange(r) => output::delete_simple(&r),
            _ => return Err(unexpected()),
        },
        Command::Txn => {
            let mut input = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut input)
                .map_err(|e| Failure(EXIT_INVALID_INPUT, e.to_string()))?;
            let txn = cairn::cli::parse_txn(&input)
                .map_err(|e| Failure(EXIT_INVALID_INPUT, e.to_string()))?;
            match kv(&mut client, Request::Txn(txn))? {
                Response::Txn(r) if json => output::txn_json(&r).into_bytes(),
                Response::Txn(r) => output::txn_simple(&r),
                _ => return Err(unexpected()),
            }
        }
        Command::Compact { revision, physical } => {
            let req = Request::Compaction(cairn::mvcc::CompactionRequest { revision, physical });
            match kv(&mut client, req)? {
                Response::Compaction(r) if json => {
                    format!("{{\"header\":{{\"revision\":{}}}}}\n", r.header.revision).into_bytes()
                }
                Response::Compaction(_) => format!("compacted revision {revision}\n").into_bytes(),
                _ => return Err(unexpected()),
            }
        }
        Command::Endpoint {
            command: EndpointCmd::Status,
            ..
        } => {
            let (rows, failed) = ask_each(
                endpoints,
                timeout_s,
                &ClientRequest::Status,
                "the status",
                |r| match r {
                    ClientResponse::Status(s) => Some(s),
                    _ => None,
                },
            )?;
            let out = match format {
                OutputFormat::Json => output::status_json(&rows) + "\n",
                OutputFormat::Table => output::status_table(&rows),
                OutputFormat::Simple => output::status_simple(&rows),
            };
            if failed > 0 {
                let answered = (!rows.is_empty()).then_some(out.as_bytes());
                return Err(some_did_not_answer(answered, failed, endpoints.len()));
            }
            out.into_bytes()
        }
        Command::Endpoint {
            command: EndpointCmd::Health,
            ..
        } => {
            // As etcdctl: a linearizable read through each endpoint, one line each.
            let mut out = String::new();
            let mut failed = 0;
            for endpoint in endpoints {
                let mut one = endpoint_client(endpoint, timeout_s);
                let started = std::time::Instant::now();
                let read = Request::Range(cairn::mvcc::RangeRequest {
                    key: b"health".to_vec(),
                    ..Default::default()
                });
                match one.request(&ClientRequest::Kv(read)) {
                    Ok(_) => out.push_str(&format!(
                        "{endpoint} is healthy: successfully committed proposal: took = {:?}\n",
                        started.elapsed()
                    )),
                    Err(e) => {
                        failed += 1;
                        eprintln!("{endpoint} is unhealthy: failed to commit proposal: {e}");
                    }
                }
            }
            if failed > 0 {
                write_out(out.as_bytes()).map_err(|e| Failure(EXIT_ERROR, e))?;
                return Err(Failure(EXIT_ERROR, "unhealthy cluster".into()));
            }
            out.into_bytes()
        }
        Command::Endpoint {
            command: EndpointCmd::Hashkv { rev },
            ..
        } => {
            let (rows, failed) = ask_each(
                endpoints,
                timeout_s,
                &ClientRequest::HashKv(rev),
                "the hash",
                |r| match r {
                    ClientResponse::HashKv(h) => Some(h),
                    _ => None,
                },
            )?;
            let out = match format {
                OutputFormat::Json => {
                    let items: Vec<String> = rows
                        .iter()
                        .map(|(e, h)| {
                            format!(
                                "{{\"Endpoint\":\"{e}\",\"HashKV\":{{\"header\":{{\"revision\":{}}},\"hash\":{},\"compact_revision\":{}}}}}",
                                h.header.revision, h.hash, h.compact_revision
                            )
                        })
                        .collect();
                    format!("[{}]\n", items.join(","))
                }
                _ => rows
                    .iter()
                    .map(|(e, h)| format!("{e}, {}\n", h.hash))
                    .collect(),
            };
            if failed > 0 {
                return Err(some_did_not_answer(
                    Some(out.as_bytes()),
                    failed,
                    endpoints.len(),
                ));
            }
            out.into_bytes()
        }
        Command::MoveLeader { transferee } => {
            let to =
                u64::from_str_radix(transferee.trim_start_matches("0x"), 16).map_err(|_| {
                    Failure(
                        EXIT_BAD_ARGS,
                        format!("move-leader: {transferee:?} is not a member ID in hex"),
                    )
                })?;
            // Find the leader among the endpoints, as etcdctl does.
            let mut leader = None;
            for endpoint in endpoints {
                let mut one = endpoint_client(endpoint, timeout_s);
                if let Ok(ClientResponse::Status(s)) = one.request(&ClientRequest::Status) {
                    if s.leader == s.member_id && s.leader != 0 {
                        leader = Some((one, s.member_id));
                        break;
                    }
                }
            }
            let Some((mut one, from)) = leader else {
                return Err(Failure(
                    EXIT_ERROR,
                    "no leader endpoint given at [--endpoints]".into(),
                ));
            };
            match one.request(&ClientRequest::MoveLeader(to))? {
                ClientResponse::MoveLeader => {
                    format!("Leadership transferred from {from:x} to {to:x}\n").into_bytes()
                }
                _ => return Err(unexpected()),
            }
        }
        Command::Member { command } => {
            let req = command.request()?;
            let r = match req {
                MemberRequest::List => member_list(&mut client)?,
                _ => change_membership(endpoints, timeout_s, req.clone())?,
            };
            let new_name = match &command {
                MemberCmd::Add { name, .. } => name.as_str(),
                _ => "",
            };
            match (&req, format) {
                (_, OutputFormat::Json) => output::member_json(&r) + "\n",
                (MemberRequest::List, OutputFormat::Table) => output::member_list_table(&r),
                (MemberRequest::List, _) => output::member_list_simple(&r),
                (MemberRequest::Add { .. }, _) => {
                    output::member_added(new_name, &r).ok_or_else(unexpected)?
                }
                (MemberRequest::Remove { id }, _) => {
                    output::member_changed(*id, "removed from", &r)
                }
                (MemberRequest::Update { id, .. }, _) => {
                    output::member_changed(*id, "updated in", &r)
                }
                (MemberRequest::Promote { id }, _) => {
                    output::member_changed(*id, "promoted in", &r)
                }
            }
            .into_bytes()
        }
        Command::Lease { command } => lease(&mut client, endpoints, timeout_s, json, command)?,
        Command::Alarm { command } => {
            use cairn::protocol::{AlarmAction, AlarmRequest};
            let mut alarm = |action, member_id, alarm| match client.request(
                &ClientRequest::Alarm(AlarmRequest {
                    action,
                    member_id,
                    alarm,
                }),
            )? {
                ClientResponse::Alarm(r) => Ok(r.alarms),
                _ => Err(unexpected()),
            };
            // As etcdctl: disarming lists the alarms, then disarms each one.
            let mut alarms = alarm(AlarmAction::Get, 0, None)?;
            if let AlarmCmd::Disarm = command {
                let listed = std::mem::take(&mut alarms);
                for a in listed {
                    alarms.extend(alarm(AlarmAction::Deactivate, a.member_id, Some(a.alarm))?);
                }
            }
            if json {
                let items: Vec<String> = alarms
                    .iter()
                    .map(|a| {
                        format!(
                            "{{\"memberID\":{},\"alarm\":\"{}\"}}",
                            a.member_id,
                            a.alarm.name()
                        )
                    })
                    .collect();
                format!("{{\"alarms\":[{}]}}\n", items.join(",")).into_bytes()
            } else {
                alarms
                    .iter()
                    .flat_map(|a| format!("{a}\n").into_bytes())
                    .collect()
            }
        }
        Command::Serve(_)
        | Command::Snapshot { .. }
        | Command::Defrag
        | Command::Check { .. }
        | Command::Repair { .. }
        | Command::Watch(_)
        | Command::Lock(_)
        | Command::Elect(_)
        | Command::Sem { .. } => return Err(Failure(EXIT_BAD_ARGS, "not a client command".into())),
    })
}

fn main() -> ExitCode {
    let cli = match parse_cli(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(EXIT_BAD_ARGS),
            };
        }
    };
    match cli.command {
        Command::Serve(args) => {
            let args = *args;
            tracing_subscriber::fmt()
                .with_max_level(args.log_level)
                .with_writer(std::io::stderr)
                .init();
            // A panic on any executor is a bug: stop the member rather than leave the
            // other roles serving without it (recovery is a restart, from the WAL).
            let report = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                report(info);
                std::process::exit(EXIT_PANIC);
            }));
            raise_open_files_limit();
            disable_transparent_huge_pages();
            let config = cairn::server::ServeConfig {
                name: args.name,
                data_dir: args.data_dir,
                listen_native_addr: args.listen_native_addr,
                listen_client_urls: args.listen_client_urls,
                advertise_client_urls: args.advertise_client_urls,
                max_request_bytes: args
                    .max_request_bytes
                    .saturating_add(cairn::server::REQUEST_ENVELOPE_BYTES),
                max_txn_ops: args.max_txn_ops,
                heartbeat_interval_ms: args.heartbeat_interval,
                election_timeout_ms: args.election_timeout,
                max_inflight_per_conn: 1024,
                partial_frame_timeout: Duration::from_millis(args.partial_frame_timeout),
                release_memory: Some(release_memory),
                max_pending_proposals: 10_000,
                placement: cairn::server::Placement {
                    mode: args.placement,
                    executors: args.executors,
                },
                snapshot_count: args.snapshot_count,
                snapshot_catch_up_entries: args.snapshot_catch_up_entries,
                lease_checkpoint_interval_ms: args.lease_checkpoint_interval,
                listen_metrics_urls: args.listen_metrics_urls,
                grpc_keepalive: cairn::server::GrpcKeepalive {
                    min_time: args.grpc_keepalive_min_time,
                    interval: args.grpc_keepalive_interval,
                    timeout: args.grpc_keepalive_timeout,
                },
                wal_segment_bytes: args.wal_segment_bytes,
                quota_backend_bytes: if args.quota_backend_bytes == 0 {
                    DEFAULT_QUOTA_BACKEND_BYTES
                } else {
                    args.quota_backend_bytes
                },
                watch_progress_notify_ms: args.watch_progress_notify_interval.as_millis() as u64,
                cluster: cairn::server::ClusterConfig {
                    initial_cluster: args.initial_cluster,
                    initial_advertise_peer_urls: args.initial_advertise_peer_urls,
                    listen_peer_urls: args.listen_peer_urls,
                    state: args.initial_cluster_state,
                    token: args.initial_cluster_token,
                },
            };
            match cairn::server::serve(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cairn serve: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Lock(args) => session_exit(cairn::cli::lock::lock(
            &cli.endpoints,
            Duration::from_secs(cli.command_timeout),
            &args,
        )),
        Command::Elect(args) => session_exit(cairn::cli::lock::elect(
            &cli.endpoints,
            Duration::from_secs(cli.command_timeout),
            &args,
        )),
        Command::Sem { command } => session_exit(cairn::cli::lock::sem(
            &cli.endpoints,
            Duration::from_secs(cli.command_timeout),
            &command,
        )),
        Command::Watch(args) => {
            match watch(&cli.endpoints, cli.write_out, cli.command_timeout, &args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(Failure(code, message)) => {
                    eprintln!("Error: {message}");
                    ExitCode::from(code)
                }
            }
        }
        command @ (Command::Put(_)
        | Command::Get(_)
        | Command::Del(_)
        | Command::Txn
        | Command::Compact { .. }
        | Command::Endpoint { .. }
        | Command::Member { .. }
        | Command::MoveLeader { .. }
        | Command::Alarm { .. }
        | Command::Lease { .. }) => {
            match run_client(&cli.endpoints, cli.write_out, cli.command_timeout, command) {
                Ok(mut out) => {
                    // Every format ends with a newline, as etcdctl's do.
                    if out.last().is_some_and(|&b| b != b'\n') {
                        out.push(b'\n');
                    }
                    match write_out(&out) {
                        Ok(()) => ExitCode::SUCCESS,
                        Err(e) => {
                            eprintln!("Error: {e}");
                            ExitCode::from(EXIT_ERROR)
                        }
                    }
                }
                Err(Failure(code, message)) => {
                    eprintln!("Error: {message}");
                    ExitCode::from(code)
                }
            }
        }
        Command::Snapshot { command } => {
            let remote = cairn::backup::cli::Remote {
                endpoints: cli.endpoints.clone(),
                timeout: Duration::from_secs(cli.command_timeout),
            };
            snapshot(&command, cli.write_out, &remote)
        }
        Command::Defrag => defrag(&cli.endpoints, cli.command_timeout),
        Command::Check { data_dir } => check(&data_dir),
        Command::Repair { data_dir } => repair(&data_dir),
    }
}

/// `cairn defrag`: each endpoint's member reclaims its dead space; etcdctl's lines, a
/// failure on stderr and exit code 1 (the other endpoints are still asked).
fn defrag(endpoints: &[String], timeout_s: u64) -> ExitCode {
    let mut failed = false;
    for endpoint in endpoints {
        let mut client =
            cairn::client::Client::new(vec![endpoint.clone()], Duration::from_secs(timeout_s));
        match client.request(&ClientRequest::Defragment) {
            Ok(ClientResponse::Defragment) => {
                println!("Finished defragmenting etcd member[{endpoint}]")
            }
            Ok(other) => {
                eprintln!(
                    "Failed to defragment etcd member[{endpoint}] (unexpected reply {other:?})"
                );
                failed = true;
            }
            Err(e) => {
                eprintln!("Failed to defragment etcd member[{endpoint}] ({e})");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::from(EXIT_ERROR)
    } else {
        ExitCode::SUCCESS
    }
}

/// `cairn snapshot ...`: the output on stdout, an error on stderr with exit code 1.
fn snapshot(
    command: &cairn::backup::cli::SnapshotCmd,
    format: OutputFormat,
    remote: &cairn::backup::cli::Remote,
) -> ExitCode {
    use cairn::backup::cli::Format;
    let format = match format {
        OutputFormat::Simple => Format::Simple,
        OutputFormat::Json => Format::Json,
        OutputFormat::Table => Format::Table,
    };
    match cairn::backup::cli::run(command, format, remote) {
        Ok(out) => match write_out(out.as_bytes()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("Error: {e}");
                ExitCode::from(EXIT_ERROR)
            }
        },
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// `cairn check`: the summary on stdout, each finding on stderr; see its help for the exit
/// codes.
fn check(data_dir: &Path) -> ExitCode {
    match cairn::check::check(data_dir) {
        Ok(report) => {
            println!("{}", report.json());
            for line in report.findings(data_dir) {
                eprintln!("cairn check: {line}");
            }
            if report.intact() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("cairn check: {}: {e}", data_dir.display());
            ExitCode::FAILURE
        }
    }
}

/// `cairn repair`: what was removed on stdout, a refusal on stderr.
fn repair(data_dir: &Path) -> ExitCode {
    match cairn::check::repair(data_dir) {
        Ok(done) if done.report.refusal.is_some() => {
            for line in done.report.findings(data_dir) {
                eprintln!("cairn repair: {line}");
            }
            eprintln!("cairn repair: nothing was changed: a cut cannot fix this");
            ExitCode::FAILURE
        }
        Ok(done) if !done.changed => {
            println!("nothing to repair");
            ExitCode::SUCCESS
        }
        Ok(done) => {
            for line in done.report.repairs(data_dir) {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            // An error found by the check changed nothing; one while cutting may come after
            // part of the repair was done: `cairn check` tells what is left.
            eprintln!(
                "cairn repair: {}: {e} (run `cairn check` to see what is left to do)",
                data_dir.display()
            );
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The variables `member add` prints start a member; ours win where both are set. (The
    /// one test that sets these variables in this process.)
    #[test]
    fn serve_reads_the_variables_member_add_prints() {
        let serve = |cli: Cli| match cli.command {
            Command::Serve(args) => args,
            _ => panic!("not serve"),
        };
        let ours = [
            "CAIRN_NAME",
            "CAIRN_INITIAL_CLUSTER",
            "CAIRN_INITIAL_ADVERTISE_PEER_URLS",
            "CAIRN_INITIAL_CLUSTER_STATE",
            "CAIRN_LISTEN_METRICS_URLS",
        ];
        for var in ETCD_VARIABLES.map(|(_, var)| var).iter().chain(&ours) {
            std::env::remove_var(var);
        }
        let args = serve(parse_cli(["cairn", "serve"]).unwrap());
        assert_eq!(args.name, "default");
        assert!(args.listen_metrics_urls.is_empty());
        std::env::set_var("ETCD_NAME", "infra4");
        std::env::set_var(
            "ETCD_INITIAL_CLUSTER",
            "infra4=http://10.0.1.14:2380,infra1=http://10.0.1.11:2380",
        );
        std::env::set_var(
            "ETCD_INITIAL_ADVERTISE_PEER_URLS",
            "http://10.0.1.14:2380,http://10.0.2.14:2380",
        );
        std::env::set_var("ETCD_INITIAL_CLUSTER_STATE", "existing");
        std::env::set_var(
            "ETCD_LISTEN_METRICS_URLS",
            "http://127.0.0.1:2381,http://10.0.1.14:2381",
        );
        let args = serve(parse_cli(["cairn", "serve"]).unwrap());
        assert_eq!(
            args.listen_metrics_urls,
            ["http://127.0.0.1:2381", "http://10.0.1.14:2381"]
        );
        assert_eq!(args.name, "infra4");
        assert_eq!(
            args.initial_cluster,
            "infra4=http://10.0.1.14:2380,infra1=http://10.0.1.11:2380"
        );
        assert_eq!(
            args.initial_advertise_peer_urls,
            ["http://10.0.1.14:2380", "http://10.0.2.14:2380"]
        );
        assert_eq!(
            args.initial_cluster_state,
            cairn::server::ClusterState::Existing
        );
        // A flag wins over both; our variable over etcd's.
        let args = serve(parse_cli(["cairn", "serve", "--name", "flag"]).unwrap());
        assert_eq!(args.name, "flag");
        std::env::set_var("CAIRN_NAME", "ours");
        let args = serve(parse_cli(["cairn", "serve"]).unwrap());
        assert_eq!(args.name, "ours");
        std::env::remove_var("CAIRN_NAME");
        for (_, var) in ETCD_VARIABLES {
            std::env::remove_var(var);
        }
    }
}
