//! The member's metrics: counters, gauges and histograms the roles update on their own
//! executors (relaxed atomics, each written by one role, never a lock on the hot path),
//! read and rendered in Prometheus' text exposition format (version 0.0.4) when `/metrics`
//! is scraped. Names, types, labels, units and histogram buckets are etcd's where etcd has
//! the metric; cairn's own are under `cairn_`. The list, and what each one measures here:
//! `docs/metrics.md`.

use super::placement::ExecutorPlan;
use super::{Phase, Shared};
use parking_lot::Mutex;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A histogram of `u64` observations in a base unit (nanoseconds, records, bytes), exported
/// in its unit (seconds, records, bytes) with fixed bucket bounds. Observing is three relaxed
/// additions and a scan of at most [`BUCKETS_MAX`] bounds.
pub(crate) struct Histogram {
    /// Upper bounds in the base unit, ascending.
    upper: Box<[u64]>,
    /// Base units per exported unit (1e9 for nanoseconds exported as seconds).
    scale: f64,
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum: AtomicU64,
}

/// Buckets of a histogram, at most (etcd's largest here has 16).
const BUCKETS_MAX: usize = 24;

impl Histogram {
    /// Buckets `start`, `start * 2`, ... (`n` of them), as Prometheus'
    /// `ExponentialBuckets(start, 2, n)` with `start` in the base unit.
    pub fn exponential(start: u64, n: usize, scale: f64) -> Histogram {
        assert!(n > 0 && n <= BUCKETS_MAX && start > 0);
        let upper: Box<[u64]> = (0..n as u32).map(|i| start << i).collect();
        Histogram {
            buckets: (0..=n).map(|_| AtomicU64::new(0)).collect(),
            upper,
            scale,
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    /// etcd's buckets for disk latencies (WAL fsync, backend commit): 1 ms to 8.192 s.
    pub fn disk_seconds() -> Histogram {
        Histogram::exponential(1_000_000, 14, 1e9)
    }

    pub fn observe(&self, value: u64) {
        let at = self
            .upper
            .iter()
            .position(|&u| value <= u)
            .unwrap_or(self.upper.len());
        self.buckets[at].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Writes the `_bucket`, `_sum` and `_count` samples, with `labels` (`name="value"`
    /// pairs, comma-separated, or empty) before `le`.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        // Read the buckets first and derive the count from them, so that `+Inf` equals
        // `_count` even while observations go on.
        let mut cumulative = 0u64;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let le = match self.upper.get(i) {
                Some(&u) => format_float(u as f64 / self.scale),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let sum = self.sum.load(Ordering::Relaxed) as f64 / self.scale;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", format_float(sum));
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// A float as Prometheus reads it: the shortest form that reads back the same.
fn format_float(v: f64) -> String {
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    if v.is_nan() {
        return "NaN".into();
    }
    format!("{v}")
}

/// Peers whose round-trip times are kept, at most (as many as a membership holds).
const PEERS_MAX: usize = crate::raftlog::MEMBERS_MAX;

/// What the roles measure, shared by the executors and read when scraped.
pub(crate) struct Metrics {
    /// Leaders seen (a leader known where none or another was), by the raft role.
    pub leader_changes: AtomicU64,
    /// The raft role's commit index (etcd exports it as `proposals_committed_total`).
    pub committed_index: AtomicU64,
    /// Proposals waiting in the raft role to be committed or refused.
    pub proposals_pending: AtomicU64,
    /// Proposals answered with an error by the raft role (refused, lost to another term,
    /// timed out).
    pub proposals_failed: AtomicU64,
    /// Each O_DSYNC WAL batch write (the write and the device flush are one operation).
    pub wal_fsync: Histogram,
    pub wal_batch_records: Histogram,
    pub wal_batch_bytes: Histogram,
    /// Each tree checkpoint: pages written, file synced, commit record written and synced.
    pub backend_commit: Histogram,
    /// Committed entries applied in one round of the apply role.
    pub apply_batch_entries: Histogram,
    /// Watchers held by the apply role's hub.
    pub watchers: AtomicU64,
    /// Round-trip times of the peer transport's probes, by peer id.
    peer_rtt: Mutex<Vec<(u64, Arc<Histogram>)>>,
    /// The executors and their roles, to name their threads' CPU time.
    plan: Vec<ExecutorPlan>,
}

impl Metrics {
    pub fn new(plan: Vec<ExecutorPlan>) -> Metrics {
        Metrics {
            leader_changes: AtomicU64::new(0),
            committed_index: AtomicU64::new(0),
            proposals_pending: AtomicU64::new(0),
            proposals_failed: AtomicU64::new(0),
            wal_fsync: Histogram::disk_seconds(),
            // 1 to 4096 records, 4 KiB to 4 MiB (a batch is at most 4 MiB by default).
            wal_batch_records: Histogram::exponential(1, 13, 1.0),
            wal_batch_bytes: Histogram::exponential(4096, 11, 1.0),
            backend_commit: Histogram::disk_seconds(),
            apply_batch_entries: Histogram::exponential(1, 14, 1.0),
            watchers: AtomicU64::new(0),
            peer_rtt: Mutex::new(Vec::new()),
            plan,
        }
    }

    /// The round-trip histogram for peer `to` (made on first use; `None` past
    /// [`PEERS_MAX`] peers). The caller keeps the `Arc` and observes without a lock.
    pub fn peer_rtt(&self, to: u64) -> Option<Arc<Histogram>> {
        let mut peers = self.peer_rtt.lock();
        if let Some((_, h)) = peers.iter().find(|(id, _)| *id == to) {
            return Some(h.clone());
        }
        if peers.len() >= PEERS_MAX {
            return None;
        }
        // etcd's buckets: 0.1 ms to 3.2768 s.
        let h = Arc::new(Histogram::exponential(100_000, 16, 1e9));
        peers.push((to, h.clone()));
        Some(h)
    }

    /// Forgets peer `to` (it left the membership).
    pub fn forget_peer(&self, to: u64) {
        self.peer_rtt.lock().retain(|(id, _)| *id != to);
    }
}

/// Writes one metric's `# HELP` and `# TYPE` lines.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes a metric with one unlabelled sample.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {}", format_float(value));
}

/// Every metric of the member, in the text exposition format.
pub(crate) fn render(shared: &Shared) -> String {
    let mut out = String::with_capacity(16 << 10);
    render_process(&mut out);
    render_server(&mut out, shared);
    render_executors(&mut out, &shared.metrics.plan);
    out
}

fn render_server(out: &mut String, shared: &Shared) {
    let m = &shared.metrics;
    let status = shared.status.lock().clone();
    let serving = shared.phase() == Phase::Serving;
    let has_leader = serving && status.leader != raft::INVALID_ID;
    let is_leader = has_leader && status.leader == status.member_id;
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
    single(
        out,
        "etcd_server_has_leader",
        "gauge",
        "Whether or not a leader exists. 1 is existence, 0 is not.",
        flag(has_leader),
    );
    single(
        out,
        "etcd_server_is_leader",
        "gauge",
        "Whether or not this member is a leader. 1 if is, 0 otherwise.",
        flag(is_leader),
    );
    single(
        out,
        "etcd_server_is_learner",
        "gauge",
        "Whether or not this member is a learner. 1 if is, 0 otherwise.",
        flag(status.is_learner),
    );
    single(
        out,
        "etcd_server_leader_changes_seen_total",
        "counter",
        "The number of leader changes seen.",
        load(&m.leader_changes),
    );
    single(
        out,
        "etcd_server_proposals_committed_total",
        "gauge",
        "The total number of consensus proposals committed.",
        load(&m.committed_index),
    );
    single(
        out,
        "etcd_server_proposals_applied_total",
        "gauge",
        "The total number of consensus proposals applied.",
        status.raft_applied_index as f64,
    );
    single(
        out,
        "etcd_server_proposals_pending",
        "gauge",
        "The current number of pending proposals to commit.",
        load(&m.proposals_pending),
    );
    single(
        out,
        "etcd_server_proposals_failed_total",
        "counter",
        "The total number of failed proposals seen.",
        load(&m.proposals_failed),
    );
    single(
        out,
        "etcd_server_quota_backend_bytes",
        "gauge",
        "Current backend storage quota size in bytes.",
        shared.config.quota_backend_bytes as f64,
    );
    header(
        out,
        "etcd_server_id",
        "gauge",
        "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
    );
    // Known once the raft role has started.
    if status.member_id != 0 {
        let _ = writeln!(
            out,
            "etcd_server_id{{server_id=\"{:x}\"}} 1",
            status.member_id
        );
    }
    header(
        out,
        "etcd_disk_wal_fsync_duration_seconds",
        "histogram",
        "The latency distributions of fsync called by WAL.",
    );
    m.wal_fsync
        .render(out, "etcd_disk_wal_fsync_duration_seconds", "");
    header(
        out,
        "etcd_disk_backend_commit_duration_seconds",
        "histogram",
        "The latency distributions of commit called by backend.",
    );
    m.backend_commit
        .render(out, "etcd_disk_backend_commit_duration_seconds", "");
    single(
        out,
        "etcd_mvcc_db_total_size_in_bytes",
        "gauge",
        "Total size of the underlying database physically allocated in bytes.",
        status.db_size as f64,
    );
    single(
        out,
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "gauge",
        "Total size of the underlying database logically in use in bytes.",
        status.db_size_in_use as f64,
    );
    single(
        out,
        "etcd_debugging_mvcc_current_revision",
        "gauge",
        "The current revision of store.",
        status.revision as f64,
    );
    single(
        out,
        "etcd_debugging_mvcc_watcher_total",
        "gauge",
        "Total number of watchers.",
        load(&m.watchers),
    );
    header(
        out,
        "etcd_network_peer_round_trip_time_seconds",
        "histogram",
        "Round-Trip-Time histogram between peers",
    );
    let peers = m.peer_rtt.lock().clone();
    for (id, h) in peers {
        h.render(
            out,
            "etcd_network_peer_round_trip_time_seconds",
            &format!("To=\"{id:x}\""),
        );
    }
    header(
        out,
        "cairn_wal_batch_records",
        "histogram",
        "Records made durable by one WAL batch write (one device flush).",
    );
    m.wal_batch_records
        .render(out, "cairn_wal_batch_records", "");
    header(
        out,
        "cairn_wal_batch_bytes",
        "histogram",
        "Bytes written by one WAL batch write (one device flush), headers and padding included.",
    );
    m.wal_batch_bytes.render(out, "cairn_wal_batch_bytes", "");
    header(
        out,
        "cairn_apply_batch_entries",
        "histogram",
        "Committed log entries applied to the store in one round of the apply role.",
    );
    m.apply_batch_entries
        .render(out, "cairn_apply_batch_entries", "");
}

fn render_process(out: &mut String) {
    let Some(stat) = super::procfs::process_stat() else {
        return;
    };
    single(
        out,
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        stat.cpu_seconds(),
    );
    single(
        out,
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        stat.rss_bytes as f64,
    );
    single(
        out,
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        stat.vsize_bytes as f64,
    );
    if let Some(start) = super::procfs::start_time_seconds(&stat) {
        single(
            out,
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            start,
        );
    }
    if let Some(fds) = super::procfs::open_fds() {
        single(
            out,
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            fds as f64,
        );
    }
    if let Some(max) = super::procfs::max_fds() {
        single(
            out,
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max as f64,
        );
    }
}

/// The CPU time of each executor (its thread is named `cairn-<i>-<id>`), labelled with the
/// roles the placement gave it.
fn render_executors(out: &mut String, plan: &[ExecutorPlan]) {
    header(
        out,
        "cairn_executor_cpu_seconds_total",
        "counter",
        "CPU time spent by an executor's threads in seconds, by mode; roles names the roles it hosts.",
    );
    for t in super::procfs::executor_threads() {
        let Some(p) = plan.get(t.executor) else {
            continue;
        };
        let roles: Vec<&str> = [(p.net, "net"), (p.raft, "raft"), (p.apply, "apply")]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, name)| *name)
            .collect();
        let roles = roles.join("+");
        for (mode, v) in [("user", t.user_seconds), ("system", t.system_seconds)] {
            let _ = writeln!(
                out,
                "cairn_executor_cpu_seconds_total{{executor=\"{}\",roles=\"{roles}\",mode=\"{mode}\"}} {}",
                t.executor,
                format_float(v)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets_in_the_exported_unit() {
        let h = Histogram::exponential(1_000_000, 3, 1e9);
        h.observe(500_000); // 0.5 ms: first bucket
        h.observe(2_000_000); // 2 ms: second (bounds are inclusive)
        h.observe(9_000_000_000); // 9 s: +Inf only
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "To=\"a\"");
        assert_eq!(
            out,
            "x_seconds_bucket{To=\"a\",le=\"0.001\"} 1\n\
             x_seconds_bucket{To=\"a\",le=\"0.002\"} 2\n\
             x_seconds_bucket{To=\"a\",le=\"0.004\"} 2\n\
             x_seconds_bucket{To=\"a\",le=\"+Inf\"} 3\n\
             x_seconds_sum{To=\"a\"} 9.0025\n\
             x_seconds_count{To=\"a\"} 3\n"
        );
    }

    #[test]
    fn etcd_bucket_bounds_print_as_etcd_prints_them() {
        let mut out = String::new();
        Histogram::exponential(100_000, 16, 1e9).render(&mut out, "rtt", "");
        let les: Vec<&str> = out
            .lines()
            .filter_map(|l| l.split("le=\"").nth(1))
            .map(|l| l.split('"').next().unwrap_or(""))
            .collect();
        assert_eq!(les.first(), Some(&"0.0001"));
        assert_eq!(les.get(15), Some(&"3.2768"));
        assert_eq!(les.last(), Some(&"+Inf"));
        let mut disk = String::new();
        Histogram::disk_seconds().render(&mut disk, "d", "");
        assert!(disk.contains("le=\"8.192\""), "{disk}");
        assert!(disk.contains("d_sum 0\n"), "{disk}");
    }
}
