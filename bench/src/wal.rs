//! WAL throughput benchmark: many concurrent appenders of fixed-size records, each append
//! awaited until durable (group commit), on one glommio executor.

use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use cairn::wal::{Prealloc, RecordType, Wal, WalError, WalOptions};
use glommio::LocalExecutorBuilder;
use hdrhistogram::Histogram;

/// What to run.
#[derive(Debug, Clone)]
pub struct WalBenchConfig {
    /// Records to append in total.
    pub records: u64,
    /// Payload bytes per record.
    pub record_bytes: usize,
    /// Concurrent appender tasks.
    pub appenders: usize,
    /// WAL directory (must not hold a WAL yet).
    pub dir: PathBuf,
    pub options: WalOptions,
}

/// What was measured.
#[derive(Debug, Clone)]
pub struct WalBenchResult {
    pub records: u64,
    pub record_bytes: usize,
    pub appenders: usize,
    pub records_per_sec: f64,
    pub fsyncs: u64,
    pub batches: u64,
    pub bytes_written: u64,
    pub elapsed_ms: f64,
    /// Append latency (submit to durable), microseconds.
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl WalBenchResult {
    /// One JSON object on one line.
    pub fn to_json(&self) -> String {
        format!(
            "{{\"bench\":\"wal\",\"records\":{},\"record_bytes\":{},\"appenders\":{},\
             \"records_per_sec\":{:.0},\"fsyncs\":{},\"batches\":{},\"records_per_fsync\":{:.1},\
             \"bytes_written\":{},\"elapsed_ms\":{:.1},\"p50_us\":{},\"p99_us\":{},\"max_us\":{}}}",
            self.records,
            self.record_bytes,
            self.appenders,
            self.records_per_sec,
            self.fsyncs,
            self.batches,
            self.records as f64 / self.fsyncs.max(1) as f64,
            self.bytes_written,
            self.elapsed_ms,
            self.p50_us,
            self.p99_us,
            self.max_us,
        )
    }
}

/// Opens a fresh WAL in `config.dir`, appends `config.records` records from
/// `config.appenders` concurrent tasks, and measures from the first append to the last
/// acknowledgement. Progress goes to stderr.
pub fn run_wal_bench(config: WalBenchConfig) -> Result<WalBenchResult, WalError> {
    let handle = LocalExecutorBuilder::default()
        .name("wal-bench")
        .spawn(move || {
            cairn::wal::keep_reactor_awake();
            bench(config)
        })
        .map_err(|e| WalError::Io {
            path: PathBuf::from("executor"),
            source: e.into(),
        })?;
    match handle.join() {
        Ok(result) => result,
        Err(e) => Err(WalError::Io {
            path: PathBuf::from("executor"),
            source: e.into(),
        }),
    }
}

async fn bench(config: WalBenchConfig) -> Result<WalBenchResult, WalError> {
    let wal = Wal::open(&config.dir, config.options.clone(), 1, |_, _, _| {
        Err("the benchmark needs an empty WAL directory".into())
    })
    .await?;
    // Let the first segment finish preallocating so it is not part of the measurement.
    wal.append(RecordType::METADATA, b"warm-up").await?;
    let wal = Rc::new(wal);
    let done = Rc::new(Cell::new(0u64));
    let appenders = config.appenders.max(1);
    let per_task = config.records / appenders as u64;
    let extra = config.records % appenders as u64;
    let started = Instant::now();
    let progress = glommio::spawn_local(report_progress(done.clone(), config.records));
    let mut tasks = Vec::with_capacity(appenders);
    for t in 0..appenders {
        let count = per_task + u64::from((t as u64) < extra);
        let (wal, done) = (wal.clone(), done.clone());
        let payload = vec![(t % 251) as u8; config.record_bytes];
        tasks.push(glommio::spawn_local(async move {
            let mut latencies =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string());
            for _ in 0..count {
                let start = Instant::now();
                wal.append(RecordType::ENTRY, &payload).await?;
                if let Ok(h) = latencies.as_mut() {
                    h.saturating_record(start.elapsed().as_micros() as u64);
                }
                done.set(done.get() + 1);
            }
            Ok::<_, WalError>(latencies.ok())
        }));
    }
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
    for task in tasks {
        if let (Some(all), Some(mine)) = (latencies.as_mut(), task.await?) {
            let _ = all.add(mine);
        }
    }
    let elapsed = started.elapsed();
    progress.cancel().await;
    let metrics = wal.metrics();
    if let Ok(wal) = Rc::try_unwrap(wal) {
        wal.close().await?;
    }
    let quantile = |q: f64| latencies.as_ref().map_or(0, |h| h.value_at_quantile(q));
    Ok(WalBenchResult {
        records: config.records,
        record_bytes: config.record_bytes,
        appenders,
        records_per_sec: config.records as f64 / elapsed.as_secs_f64(),
        // The warm-up append's batch is not part of the run.
        fsyncs: metrics.fsyncs - 1,
        batches: metrics.batches - 1,
        bytes_written: metrics.bytes_written,
        elapsed_ms: elapsed.as_secs_f64() * 1e3,
        p50_us: quantile(0.5),
        p99_us: quantile(0.99),
        max_us: latencies.as_ref().map_or(0, |h| h.max()),
    })
}

async fn report_progress(done: Rc<Cell<u64>>, total: u64) {
    let start = Instant::now();
    loop {
        glommio::timer::sleep(Duration::from_secs(1)).await;
        let n = done.get();
        let rate = n as f64 / start.elapsed().as_secs_f64();
        eprintln!("wal: {n}/{total} records durable, {rate:.0} records/s");
    }
}

/// Parses `zero-fill` or `fallocate`.
pub fn parse_prealloc(s: &str) -> Result<Prealloc, String> {
    match s {
        "zero-fill" => Ok(Prealloc::ZeroFill),
        "fallocate" => Ok(Prealloc::Fallocate),
        other => Err(format!(
            "unknown preallocation mode {other:?} (zero-fill, fallocate)"
        )),
    }
}
