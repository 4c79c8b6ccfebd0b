//! `cairn-loadgen`: a thread-per-core load generator for cairn's native protocol, and for
//! etcd's v3 gRPC API (`--target etcd`: an etcd, or cairn's gRPC port), so that both are
//! measured by one client in one run.
//!
//! One glommio executor per core; each runs its share of the connections, and each
//! connection keeps its share of the clients' requests in flight (pipelined, answered out
//! of order). Closed loop by default: a client sends its next request when the previous one
//! is answered. With `--rate`, open loop: each client sends on a fixed schedule and latency is
//! measured from the scheduled time, so a stall is charged to every request it delayed
//! (no coordinated omission).
//!
//! Requests that fail (an error reply, or in flight on a connection that was lost or on a
//! target that stopped answering) are counted as errors; latencies are those of the
//! requests that completed. Exit code 0: the run went through; 1: it failed; 2: the target
//! could not be reached or was lost during the run; 128: bad arguments.

mod conn;
mod coord;
mod etcd;
mod unary;
mod watch;

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// glibc's malloc spends a large share of a write-heavy load in consolidation; mimalloc does
/// not (see tuning.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Workload {
    /// Puts of random keys.
    Put,
    /// Point reads of random keys.
    Range,
    /// A txn per request: compare the key's version, then put it or read it.
    Txn,
    /// 90% point reads, 10% puts.
    Mixed,
    /// Puts every key of the key space once, in order, then stops (or stops at --duration):
    /// loads a data set for the other workloads or a restart measurement.
    Fill,
    /// --watchers watchers (watcher j on key j mod --key-space) on --watch-conns
    /// connections of their own, while puts of random keys go on (at --rate); reports the
    /// delivery latency from each put's acknowledgement to its event, and events missing.
    Watch,
    /// Each client acquires one of --locks locks (at random) and releases it, in a loop,
    /// holding a session lease: acquire+release latency, and hand-offs per second.
    Lock,
    /// Each client renews its own lease back to back through the leader: keepalives per
    /// second and their latency.
    Lease,
}

/// What the load generator speaks.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Target {
    /// cairn's native protocol (`--listen-native-addr`).
    Native,
    /// etcd's v3 gRPC API: an etcd, or cairn's `--listen-client-urls`.
    Etcd,
}

/// Load generator for cairn.
#[derive(Parser, Debug, Clone)]
#[command(name = "cairn-loadgen")]
pub struct Args {
    /// Endpoints, comma separated (connections are spread over them): native protocol
    /// addresses, or with `--target etcd` gRPC addresses (host:port or http://host:port).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2378")]
    pub endpoints: Vec<String>,
    /// The protocol: cairn's native one, or etcd's gRPC API.
    #[arg(long, value_enum, default_value = "native")]
    pub target: Target,
    /// The workload.
    #[arg(long, value_enum, default_value = "put")]
    pub workload: Workload,
    /// Concurrent clients (requests in flight), spread over the connections.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// TCP connections, spread over the cores.
    #[arg(long, default_value_t = 1)]
    pub conns: usize,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Distinct keys.
    #[arg(long, default_value_t = 100_000)]
    pub key_space: u64,
    /// Key bytes.
    #[arg(long, default_value_t = 16)]
    pub key_size: usize,
    /// Value bytes.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Total requests per second (open loop); 0 for closed loop.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Reads: linearizable (l, through the log) or serializable (s).
    #[arg(long, default_value = "l")]
    pub consistency: String,
    /// Executors (cores) to use; default: all.
    #[arg(long)]
    pub cores: Option<usize>,
    /// Print the final report as one JSON line.
    #[arg(long)]
    pub json: bool,
    /// Locks the lock workload's clients contend for.
    #[arg(long, default_value_t = 1)]
    pub locks: usize,
    /// Watchers of the watch workload.
    #[arg(long, default_value_t = 1_000)]
    pub watchers: usize,
    /// Connections (a thread each) the watchers are spread over.
    #[arg(long, default_value_t = 4)]
    pub watch_conns: usize,
    /// Process ids of the servers, comma separated: their CPU time (user + system, from
    /// /proc) per completed operation is reported; with the watch workload, the first one's
    /// resident memory before and after the watchers are created, and at the end.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
}

/// Counters shared by every executor, read by the progress display.
#[derive(Default)]
pub struct Progress {
    pub ops: AtomicU64,
    pub errors: AtomicU64,
    /// The next key `fill` puts.
    pub next_key: AtomicU64,
    /// Executors whose connections are all done.
    pub finished: AtomicU64,
    /// The watch workload's shared bookkeeping.
    pub watch: Option<Arc<watch::Shared>>,
}

const EXIT_FAILED: i32 = 1;
const EXIT_UNREACHABLE: i32 = 2;
const EXIT_BAD_ARGS: i32 = 128;

/// The final report. Latencies are over the completed requests only; with none there are
/// none to report (`null` in JSON, `-` in the table, and a line saying so).
fn report(args: &Args, hist: &Histogram<u64>, ops: u64, errors: u64, elapsed: f64) {
    let qps = ops as f64 / elapsed;
    // The servers' CPU time per operation, a figure far steadier than throughput on a
    // shared machine.
    let cpu = SERVER_CPU_START.get().and_then(|start| {
        let now = server_cpu_seconds(&args.server_pid)?;
        (ops > 0).then(|| (now - start) * 1e6 / ops as f64)
    });
    let cpu_json = cpu.map_or("null".to_string(), |c| format!("{c:.2}"));
    let ms = |nanos: u64| (!hist.is_empty()).then(|| nanos as f64 / 1e6);
    let latencies = [
        ms(hist.value_at_quantile(0.5)),
        ms(hist.value_at_quantile(0.99)),
        ms(hist.value_at_quantile(0.999)),
        ms(hist.max()),
    ];
    let cell = |v: Option<f64>, null: &str| v.map_or(null.to_string(), |v| format!("{v:.3}"));
    if args.json {
        let [p50, p99, p999, max] = latencies.map(|v| cell(v, "null"));
        println!(
            "{{\"workload\":\"{:?}\",\"clients\":{},\"conns\":{},\"ops\":{ops},\"errors\":{errors},\"qps\":{qps:.0},\"p50_ms\":{p50},\"p99_ms\":{p99},\"p999_ms\":{p999},\"max_ms\":{max},\"target\":\"{:?}\",\"server_cpu_us_per_op\":{cpu_json}}}",
            args.workload, args.clients, args.conns, args.target,
        );
    } else {
        let [p50, p99, p999, max] = latencies.map(|v| cell(v, "-"));
        println!("workload  clients  conns  ops       errors  qps       p50 ms  p99 ms  p99.9 ms  max ms");
        println!(
            "{:<9} {:<8} {:<6} {:<9} {:<7} {:<9.0} {:<7} {:<7} {:<9} {}",
            format!("{:?}", args.workload).to_lowercase(),
            args.clients,
            args.conns,
            ops,
            errors,
            qps,
            p50,
            p99,
            p999,
            max
        );
    }
    if let (false, Some(c)) = (args.json, cpu) {
        println!("server CPU per operation: {c:.2} µs");
    }
    if hist.is_empty() {
        eprintln!("cairn-loadgen: no request completed, so there are no latencies");
    }
}

/// The servers' CPU time when the run began.
static SERVER_CPU_START: std::sync::OnceLock<f64> = std::sync::OnceLock::new();

/// The user + system CPU seconds the processes `pids` have used; `None` without pids or if
/// one cannot be read.
fn server_cpu_seconds(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        return None;
    }
    let mut ticks = 0u64;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces), from its closing ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
        ticks += fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    }
    Some(ticks as f64 / hz as f64)
}

/// The running watchers of the watch workload.
struct Watching {
    threads: Vec<watch::WatcherThread>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    created_s: f64,
    rss_kib: Option<(u64, u64)>,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Creates the watchers (waiting until all are) before the puts start.
fn start_watchers(args: &Args, progress: &mut Progress) -> Watching {
    // Room for every put the run could make at its rate (or closed loop, generously).
    let puts_max = if args.rate > 0.0 {
        (args.rate * (args.duration + 5.0)) as usize
    } else {
        20_000_000
    };
    progress.watch = Some(Arc::new(watch::Shared::new(puts_max)));
    watch::epoch();
    let before = args.server_pid.first().copied().and_then(rss_kib);
    let ready = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let key_size = args.key_size;
    let key_of = move |n: u64| conn::key_bytes(n, key_size);
    let began = Instant::now();
    let threads = watch::start(args, key_of, ready.clone(), stop.clone());
    let conns = threads.len() as u64;
    while ready.load(Ordering::Relaxed) < conns {
        if threads.iter().any(|t| t.is_finished()) {
            break; // one failed; its error is reported at the end
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let created_s = began.elapsed().as_secs_f64();
    let after = args.server_pid.first().copied().and_then(rss_kib);
    eprintln!("{} watchers created in {created_s:.2}s", args.watchers);
    Watching {
        threads,
        stop,
        created_s,
        rss_kib: before.zip(after),
    }
}

/// Lets the last events arrive, stops the watchers and matches what they saw.
fn finish_watchers(
    args: &Args,
    progress: &Progress,
    w: Watching,
) -> Result<(watch::Report, Option<[u64; 3]>), String> {
    std::thread::sleep(Duration::from_secs(1));
    let end = args.server_pid.first().copied().and_then(rss_kib);
    w.stop.store(true, Ordering::Relaxed);
    let mut deliveries = Vec::new();
    for t in w.threads {
        let got = t
            .join()
            .map_err(|_| "a watcher thread panicked".to_string())??;
        deliveries.extend(got);
    }
    let shared = progress.watch.as_ref().ok_or("no watch bookkeeping")?;
    let owed_before = u64::MAX;
    Ok((
        watch::report(args, shared, deliveries, owed_before, w.created_s),
        w.rss_kib.zip(end).map(|((b, c), e)| [b, c, e]),
    ))
}

fn report_watch(
    args: &Args,
    (r, rss): &(watch::Report, Option<[u64; 3]>),
    puts: u64,
    elapsed: f64,
) {
    let ms = |q: f64| r.latency.value_at_quantile(q) as f64 / 1e6;
    let (p50, p99, p999, max) = (ms(0.5), ms(0.99), ms(0.999), r.latency.max() as f64 / 1e6);
    let rss = rss.map_or("null".to_string(), |[b, c, e]| format!("[{b},{c},{e}]"));
    if args.json {
        println!(
            "{{\"watch\":{{\"watchers\":{},\"created_s\":{:.2},\"puts_per_s\":{:.0},\"delivered\":{},\"missing\":{},\"delivery_p50_ms\":{p50:.3},\"delivery_p99_ms\":{p99:.3},\"delivery_p999_ms\":{p999:.3},\"delivery_max_ms\":{max:.3},\"server_rss_kib_before_created_end\":{rss}}}}}",
            r.watchers, r.created_s, puts as f64 / elapsed, r.delivered, r.missing
        );
    } else {
        println!("watchers  created s  puts/s    delivered  missing  delivery p50 ms  p99 ms  p99.9 ms  max ms  server RSS KiB before,created,end");
        println!(
            "{:<9} {:<10.2} {:<9.0} {:<10} {:<8} {:<16.3} {:<7.3} {:<9.3} {:<7.3} {rss}",
            r.watchers,
            r.created_s,
            puts as f64 / elapsed,
            r.delivered,
            r.missing,
            p50,
            p99,
            p999,
            max
        );
    }
}

/// The etcd target: the clients on tokio runtimes, progress each second, the report (also
/// of a run that failed part way, as the native target's), then the exit code.
fn run_etcd(
    args: &Args,
    cores: usize,
    progress: &Arc<Progress>,
    start: Instant,
    deadline: Instant,
) {
    let (args2, progress2) = (args.clone(), progress.clone());
    let runner = std::thread::spawn(move || etcd::run(&args2, cores, deadline, &progress2));
    show_progress(progress, start, &runner);
    let (hist, failure) = runner.join().unwrap_or_else(|_| {
        eprintln!("cairn-loadgen: the clients failed");
        std::process::exit(EXIT_FAILED);
    });
    report(
        args,
        &hist,
        progress.ops.load(Ordering::Relaxed),
        progress.errors.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
    );
    match failure {
        None => {}
        Some(etcd::Failure::Unreachable(e)) => {
            eprintln!("cairn-loadgen: {e}");
            std::process::exit(EXIT_UNREACHABLE);
        }
        Some(etcd::Failure::Failed(e)) => {
            eprintln!("cairn-loadgen: {e}");
            std::process::exit(EXIT_FAILED);
        }
    }
}

/// The lock and lease workloads: client threads, progress each second, the report.
fn run_coordination(args: &Args, progress: &Arc<Progress>, start: Instant, deadline: Instant) {
    let (args2, progress2) = (args.clone(), progress.clone());
    let runner = std::thread::spawn(move || {
        coord::run(&args2, deadline, &progress2).map_err(|e| (EXIT_FAILED, e))
    });
    finish_threaded(args, progress, start, runner);
}

/// Prints the operations and errors of each second until `runner` ends.
fn show_progress<T>(progress: &Progress, start: Instant, runner: &std::thread::JoinHandle<T>) {
    let mut last = 0;
    while !runner.is_finished() {
        std::thread::sleep(Duration::from_secs(1));
        let ops = progress.ops.load(Ordering::Relaxed);
        eprintln!(
            "{:>5.1}s  {} ops/s  {} errors",
            start.elapsed().as_secs_f64(),
            ops - last,
            progress.errors.load(Ordering::Relaxed)
        );
        last = ops;
    }
}

/// Shows the progress of clients running on `runner` each second, then reports them (or
/// exits with the code and message of their failure).
fn finish_threaded(
    args: &Args,
    progress: &Progress,
    start: Instant,
    runner: std::thread::JoinHandle<Result<Histogram<u64>, (i32, String)>>,
) {
    show_progress(progress, start, &runner);
    let hist = match runner.join() {
        Ok(Ok(h)) => h,
        Ok(Err((code, e))) => {
            eprintln!("cairn-loadgen: {e}");
            std::process::exit(code);
        }
        Err(_) => {
            eprintln!("cairn-loadgen: the clients failed");
            std::process::exit(EXIT_FAILED);
        }
    };
    let elapsed = start.elapsed().as_secs_f64();
    report(
        args,
        &hist,
        progress.ops.load(Ordering::Relaxed),
        progress.errors.load(Ordering::Relaxed),
        elapsed,
    );
}

fn main() {
    let args = Args::parse();
    if args.clients < args.conns || args.conns == 0 {
        eprintln!("cairn-loadgen: --clients must be at least --conns, and --conns at least 1");
        std::process::exit(EXIT_BAD_ARGS);
    }
    if !matches!(args.consistency.as_str(), "l" | "s") {
        eprintln!("cairn-loadgen: --consistency must be l or s");
        std::process::exit(EXIT_BAD_ARGS);
    }
    let cores = args
        .cores
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
        .min(args.conns);
    if args.target == Target::Etcd && args.workload == Workload::Watch {
        eprintln!("cairn-loadgen: the watch workload runs against the native target only");
        std::process::exit(EXIT_BAD_ARGS);
    }
    let mut progress = Progress::default();
    let watching = (args.workload == Workload::Watch).then(|| start_watchers(&args, &mut progress));
    let progress = Arc::new(progress);
    if let Some(cpu) = server_cpu_seconds(&args.server_pid) {
        let _ = SERVER_CPU_START.set(cpu);
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.duration);
    if args.target == Target::Etcd {
        return run_etcd(&args, cores, &progress, start, deadline);
    }
    if matches!(args.workload, Workload::Lock | Workload::Lease) {
        return run_coordination(&args, &progress, start, deadline);
    }
    let mut threads = Vec::new();
    for core in 0..cores {
        let args = args.clone();
        let progress = progress.clone();
        // Connections and clients dealt out as evenly as possible.
        let conns: Vec<usize> = (0..args.conns).filter(|c| c % cores == core).collect();
        let builder =
            glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(core)).name("loadgen");
        let handle = builder.spawn(move || conn::run_core(args, conns, deadline, progress));
        match handle {
            Ok(h) => threads.push(h),
            Err(e) => {
                eprintln!("cairn-loadgen: cannot start an executor: {e}");
                std::process::exit(EXIT_FAILED);
            }
        }
    }
    let mut last = 0;
    while Instant::now() < deadline && progress.finished.load(Ordering::Relaxed) < cores as u64 {
        std::thread::sleep(
            Duration::from_secs(1).min(deadline.saturating_duration_since(Instant::now())),
        );
        let ops = progress.ops.load(Ordering::Relaxed);
        eprintln!(
            "{:>5.1}s  {} ops/s  {} errors",
            start.elapsed().as_secs_f64(),
            ops - last,
            progress.errors.load(Ordering::Relaxed)
        );
        last = ops;
    }
    let mut hist = conn::new_hist();
    let mut exit = 0;
    for t in threads {
        match t.join() {
            Ok((h, errors)) => {
                if let Err(e) = hist.add(h) {
                    eprintln!("cairn-loadgen: {e}");
                    exit = exit.max(EXIT_FAILED);
                }
                for e in errors {
                    eprintln!("cairn-loadgen: {e}");
                    exit = exit.max(match e {
                        conn::ConnError::Unreachable(_) => EXIT_UNREACHABLE,
                        conn::ConnError::Failed(_) => EXIT_FAILED,
                    });
                }
            }
            Err(e) => {
                eprintln!("cairn-loadgen: an executor failed: {e:?}");
                exit = exit.max(EXIT_FAILED);
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let ops = progress.ops.load(Ordering::Relaxed);
    if let Some(w) = watching {
        match finish_watchers(&args, &progress, w) {
            Ok(r) => report_watch(&args, &r, ops, elapsed),
            Err(e) => {
                eprintln!("cairn-loadgen: {e}");
                exit = exit.max(EXIT_FAILED);
            }
        }
    }
    report(
        &args,
        &hist,
        ops,
        progress.errors.load(Ordering::Relaxed),
        elapsed,
    );
    if exit != 0 {
        std::process::exit(exit);
    }
}
