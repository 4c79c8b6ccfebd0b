//! The MVCC store benchmark: load N keys in apply batches of 1000, overwrite a random half,
//! compact to the current revision, reclaim file space online, reopen, then time random
//! point gets through a read view.

use cairn::btree::DbOptions;
use cairn::mvcc::{
    ApplyOutcome, CompactionRequest, MvccError, PutRequest, RaftPosition, RangeRequest, Request,
    Store,
};
use hdrhistogram::Histogram;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Any failure of the benchmark, as text for its one error line.
pub type BenchError = Box<dyn std::error::Error>;

pub struct StoreBenchConfig {
    pub keys: u64,
    pub value_size: usize,
    pub gets: u64,
    pub path: PathBuf,
}

pub struct StoreBenchResult {
    pub keys: u64,
    pub value_size: usize,
    pub puts_per_sec: f64,
    pub overwrite_puts_per_sec: f64,
    pub compact_ms: u128,
    pub reclaim_ms: u128,
    pub reopen_ms: u128,
    pub get_p50_us: f64,
    pub get_p99_us: f64,
    pub get_max_us: f64,
    pub file_bytes_before_reclaim: u64,
    pub file_bytes: u64,
    pub live_bytes: u64,
    pub live_kv_bytes: u64,
    pub rss_peak_bytes: u64,
    pub rss_peak_load_bytes: u64,
    pub rss_peak_reopen_bytes: u64,
}

impl StoreBenchResult {
    pub fn to_json(&self) -> String {
        format!(
            concat!(
                "{{\"keys\":{},\"value_size\":{},\"puts_per_sec\":{:.0},",
                "\"overwrite_puts_per_sec\":{:.0},\"compact_ms\":{},\"reclaim_ms\":{},",
                "\"reopen_ms\":{},\"get_p50_us\":{:.1},\"get_p99_us\":{:.1},\"get_max_us\":{:.1},",
                "\"file_bytes_before_reclaim\":{},\"file_bytes\":{},\"live_bytes\":{},",
                "\"live_kv_bytes\":{},\"file_to_kv_ratio\":{:.3},\"rss_peak_bytes\":{},",
                "\"rss_peak_load_bytes\":{},\"rss_peak_reopen_bytes\":{}}}"
            ),
            self.keys,
            self.value_size,
            self.puts_per_sec,
            self.overwrite_puts_per_sec,
            self.compact_ms,
            self.reclaim_ms,
            self.reopen_ms,
            self.get_p50_us,
            self.get_p99_us,
            self.get_max_us,
            self.file_bytes_before_reclaim,
            self.file_bytes,
            self.live_bytes,
            self.live_kv_bytes,
            self.file_bytes as f64 / self.live_kv_bytes as f64,
            self.rss_peak_bytes,
            self.rss_peak_load_bytes,
            self.rss_peak_reopen_bytes
        )
    }
}

const BATCH: u64 = 1000;

/// Key `i` as 16 bytes: a fixed prefix and a scrambled number, so load order is not key order.
pub fn key(i: u64) -> Vec<u8> {
    let scrambled = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20;
    format!("k{:015x}", scrambled & 0x0fff_ffff_ffff_ffff).into_bytes()
}

/// Peak resident set size (VmHWM) of this process.
pub fn rss_peak_bytes() -> u64 {
    status_bytes("VmHWM:")
}

pub fn rss_mib() -> u64 {
    status_bytes("VmRSS:") >> 20
}

fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Applies batches as Raft entries of consecutive indexes, checkpointing within the budget.
pub struct Loader {
    pub store: Store,
    /// The last entry index applied.
    pub index: u64,
}

impl Loader {
    pub fn apply(&mut self, batch: &[Request]) -> Result<(), MvccError> {
        self.index += 1;
        let at = RaftPosition {
            index: self.index,
            term: 1,
        };
        match self.store.apply(at, batch)? {
            ApplyOutcome::Applied(rs) => {
                if let Some(Err(e)) = rs.into_iter().find(Result::is_err) {
                    return Err(e);
                }
            }
            ApplyOutcome::Skipped => unreachable!("indexes increase"),
        }
        self.store.maybe_checkpoint().map(|_| ())
    }

    /// Applies puts of `ids` in batches of 1000 and checkpoints; returns puts per second of
    /// apply and checkpoint time (building the requests is the client's work, not timed).
    pub fn puts(
        &mut self,
        ids: impl Iterator<Item = u64>,
        value: &[u8],
        what: &str,
    ) -> Result<f64, MvccError> {
        let mut busy = Duration::ZERO;
        let mut batch = Vec::with_capacity(BATCH as usize);
        let mut done = 0u64;
        let mut last_report = Instant::now();
        let mut ids = ids.peekable();
        while ids.peek().is_some() {
            batch.clear();
            batch.extend(ids.by_ref().take(BATCH as usize).map(|id| {
                Request::Put(PutRequest {
                    key: key(id),
                    value: value.to_vec(),
                    ..Default::default()
                })
            }));
            let t = Instant::now();
            self.apply(&batch)?;
            busy += t.elapsed();
            done += batch.len() as u64;
            if last_report.elapsed() > Duration::from_secs(1) {
                eprintln!(
                    "{what}: {done} puts, {:.0}/s, rss {} MiB",
                    done as f64 / busy.as_secs_f64(),
                    rss_mib()
                );
                last_report = Instant::now();
            }
        }
        let t = Instant::now();
        self.store.checkpoint()?;
        busy += t.elapsed();
        Ok(done as f64 / busy.as_secs_f64())
    }
}

pub fn run_store_bench(cfg: StoreBenchConfig) -> Result<StoreBenchResult, BenchError> {
    let value = vec![b'v'; cfg.value_size];
    let store = Store::open(&cfg.path, DbOptions::default())?;
    let mut l = Loader { store, index: 0 };

    eprintln!(
        "loading {} keys of 16 bytes with {}-byte values",
        cfg.keys, cfg.value_size
    );
    let puts_per_sec = l.puts(0..cfg.keys, &value, "load")?;
    eprintln!(
        "load: {puts_per_sec:.0} puts/s, rss {} MiB, peak {} MiB",
        rss_mib(),
        rss_peak_bytes() >> 20
    );

    let mut rng = StdRng::seed_from_u64(42);
    let half: Vec<u64> = (0..cfg.keys / 2)
        .map(|_| rng.gen_range(0..cfg.keys))
        .collect();
    let overwrite_puts_per_sec = l.puts(half.into_iter(), &value, "overwrite")?;
    eprintln!("overwrite: {overwrite_puts_per_sec:.0} puts/s");

    let t = Instant::now();
    let revision = l.store.current_revision();
    l.apply(&[Request::Compaction(CompactionRequest {
        revision,
        physical: true,
    })])?;
    l.store.finish_compaction()?;
    l.store.checkpoint()?;
    let compact_ms = t.elapsed().as_millis();
    let file_bytes_before_reclaim = l.store.stats().file_bytes;
    eprintln!(
        "compact to {revision}: {compact_ms} ms, file {file_bytes_before_reclaim} bytes, rss {} MiB, peak {} MiB",
        rss_mib(),
        rss_peak_bytes() >> 20
    );

    let t = Instant::now();
    l.store.reclaim_space()?;
    let reclaim_ms = t.elapsed().as_millis();
    let stats = l.store.stats();
    eprintln!(
        "reclaim: {reclaim_ms} ms, file {} bytes, live {} bytes",
        stats.file_bytes, stats.live_bytes
    );
    let rss_peak_load = rss_peak_bytes();
    eprintln!(
        "after reclaim: rss {} MiB, peak {} MiB",
        rss_mib(),
        rss_peak_load >> 20
    );
    drop(l);

    // A restart is a new process: reopen and read in one, so its memory is its own.
    let reopen = reopen_in_child(&cfg)?;
    Ok(StoreBenchResult {
        keys: cfg.keys,
        value_size: cfg.value_size,
        puts_per_sec,
        overwrite_puts_per_sec,
        compact_ms,
        reclaim_ms,
        reopen_ms: reopen.reopen_ms,
        get_p50_us: reopen.get_p50_us,
        get_p99_us: reopen.get_p99_us,
        get_max_us: reopen.get_max_us,
        file_bytes_before_reclaim,
        file_bytes: stats.file_bytes,
        live_bytes: stats.live_bytes,
        live_kv_bytes: cfg.keys * (16 + cfg.value_size as u64),
        rss_peak_bytes: rss_peak_load.max(reopen.rss_peak_bytes),
        rss_peak_load_bytes: rss_peak_load,
        rss_peak_reopen_bytes: reopen.rss_peak_bytes,
    })
}

/// What the reopen process measures.
pub struct ReopenResult {
    pub reopen_ms: u128,
    pub get_p50_us: f64,
    pub get_p99_us: f64,
    pub get_max_us: f64,
    pub rss_peak_bytes: u64,
}

impl ReopenResult {
    pub fn to_json(&self) -> String {
        format!(
            "{{\"reopen_ms\":{},\"get_p50_us\":{:.1},\"get_p99_us\":{:.1},\"get_max_us\":{:.1},\"rss_peak_bytes\":{}}}",
            self.reopen_ms, self.get_p50_us, self.get_p99_us, self.get_max_us, self.rss_peak_bytes
        )
    }

    fn from_json(line: &str) -> Option<ReopenResult> {
        let field = |name: &str| -> Option<f64> {
            let at = line.find(&format!("\"{name}\":"))? + name.len() + 3;
            let rest = &line[at..];
            let end = rest.find([',', '}']).unwrap_or(rest.len());
            rest[..end].parse().ok()
        };
        Some(ReopenResult {
            reopen_ms: field("reopen_ms")? as u128,
            get_p50_us: field("get_p50_us")?,
            get_p99_us: field("get_p99_us")?,
            get_max_us: field("get_max_us")?,
            rss_peak_bytes: field("rss_peak_bytes")? as u64,
        })
    }
}

fn reopen_in_child(cfg: &StoreBenchConfig) -> Result<ReopenResult, BenchError> {
    let fail = BenchError::from;
    let exe =
        std::env::current_exe().map_err(|e| fail(format!("cannot find this program: {e}")))?;
    let out = std::process::Command::new(exe)
        .arg("--reopen-only")
        .arg("--keys")
        .arg(cfg.keys.to_string())
        .arg("--gets")
        .arg(cfg.gets.to_string())
        .arg("--db")
        .arg(&cfg.path)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| fail(format!("cannot run the reopen process: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(fail(format!("the reopen process failed: {}", out.status)));
    }
    ReopenResult::from_json(stdout.trim())
        .ok_or_else(|| fail(format!("unreadable reopen result: {stdout}")))
}

/// Reopens the store at `cfg.path` (rebuilding its index) and times random point gets.
pub fn run_reopen(cfg: &StoreBenchConfig) -> Result<ReopenResult, MvccError> {
    let t = Instant::now();
    let store = Store::open(&cfg.path, DbOptions::default())?;
    let reopen_ms = t.elapsed().as_millis();
    eprintln!(
        "reopen: {reopen_ms} ms, rss {} MiB, peak {} MiB",
        rss_mib(),
        rss_peak_bytes() >> 20
    );
    let view = store.read_view();
    let mut rng = StdRng::seed_from_u64(7);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    for _ in 0..cfg.gets {
        let k = key(rng.gen_range(0..cfg.keys));
        let t = Instant::now();
        let r = view.range(&RangeRequest {
            key: k,
            ..Default::default()
        })?;
        let ns = t.elapsed().as_nanos() as u64;
        assert_eq!(r.kvs.len(), 1, "every loaded key is present");
        hist.saturating_record(ns.max(1));
    }
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(ReopenResult {
        reopen_ms,
        get_p50_us: us(0.5),
        get_p99_us: us(0.99),
        get_max_us: hist.max() as f64 / 1000.0,
        rss_peak_bytes: rss_peak_bytes(),
    })
}
