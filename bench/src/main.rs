//! `storage-bench`: benchmarks of cairn's storage layers. Prints progress on stderr and one
//! JSON line of results on stdout.
//!
//! Default: the MVCC store (load, overwrite, compact, reclaim, reopen, point gets).
//! `--wal-only`: the write-ahead log alone (durable records from concurrent appenders).
//! `--count-stall`: put latency on the writer with and without full-keyspace counts running
//! on another thread (and, as a control, a thread that only spins).

mod stall;
mod store;
mod wal;

use std::path::PathBuf;

use clap::Parser;

/// The allocator the server uses too: glibc's malloc spends much of a write-heavy load in
/// consolidation and gives freed memory back to the OS reluctantly.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Storage benchmarks.
#[derive(Debug, Parser)]
#[command(name = "storage-bench")]
struct Args {
    /// Keys to load into the store.
    #[arg(long, default_value_t = 2_000_000)]
    keys: u64,
    /// Value bytes per key.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Random point gets to time after the reopen.
    #[arg(long, default_value_t = 500_000)]
    gets: u64,
    /// Only reopen the store at `--db` and time point gets (the second half of the store
    /// benchmark, run as its own process so that a restart's memory is measured alone).
    #[arg(long, requires = "db")]
    reopen_only: bool,
    /// The store file for `--reopen-only`.
    #[arg(long)]
    db: Option<PathBuf>,
    /// Run only the WAL benchmark.
    #[arg(long)]
    wal_only: bool,
    /// Run only the count-stall benchmark: load `--keys`, then time single puts in rounds
    /// taking turns between no reader, a reader counting every key back to back, and a
    /// thread spinning without touching the store (a control).
    #[arg(long, conflicts_with = "wal_only")]
    count_stall: bool,
    /// Count-stall: rounds of each kind.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Count-stall: a round's length, in milliseconds.
    #[arg(long, default_value_t = 4_000)]
    round_ms: u64,
    /// Count-stall: puts a second the writer is given.
    #[arg(long, default_value_t = 50_000)]
    put_rate: u64,
    /// WAL: records to append.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// WAL: payload bytes per record.
    #[arg(long, default_value_t = 300)]
    record_bytes: usize,
    /// WAL: concurrent appender tasks.
    #[arg(long, default_value_t = 256)]
    appenders: usize,
    /// Directory for the data (default: a temporary directory under the current one,
    /// deleted afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// WAL: segment preallocation, zero-fill or fallocate.
    #[arg(long, default_value = "zero-fill", value_parser = wal::parse_prealloc)]
    prealloc: cairn::wal::Prealloc,
    /// WAL: segment size in MiB.
    #[arg(long, default_value_t = 64)]
    segment_mib: u64,
}

fn fail(what: impl std::fmt::Display) -> ! {
    eprintln!("storage-bench: {what}");
    std::process::exit(1);
}

fn main() {
    let args = Args::parse();
    if let (true, Some(db)) = (args.reopen_only, &args.db) {
        let config = store::StoreBenchConfig {
            keys: args.keys,
            value_size: args.value_size,
            gets: args.gets,
            path: db.clone(),
        };
        match store::run_reopen(&config) {
            Ok(result) => println!("{}", result.to_json()),
            Err(e) => fail(e),
        }
        return;
    }
    let temp;
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::tempdir_in(".")
                .unwrap_or_else(|e| fail(format!("cannot create a temporary directory: {e}")));
            temp.path().to_path_buf()
        }
    };
    if args.wal_only {
        let options = cairn::wal::WalOptions {
            segment_bytes: args.segment_mib << 20,
            prealloc: args.prealloc,
            ..Default::default()
        };
        let config = wal::WalBenchConfig {
            records: args.records,
            record_bytes: args.record_bytes,
            appenders: args.appenders,
            dir: dir.join("wal"),
            options,
        };
        match wal::run_wal_bench(config) {
            Ok(result) => println!("{}", result.to_json()),
            Err(e) => fail(e),
        }
        return;
    }
    if let Err(e) = std::fs::create_dir_all(&dir) {
        fail(format!("cannot create {}: {e}", dir.display()));
    }
    if args.count_stall {
        let config = stall::StallConfig {
            keys: args.keys,
            value_size: args.value_size,
            rounds: args.rounds,
            round_ms: args.round_ms,
            put_rate: args.put_rate,
            path: dir.join("db"),
        };
        match stall::run_stall_bench(config) {
            Ok(json) => println!("{json}"),
            Err(e) => fail(e),
        }
        return;
    }
    let config = store::StoreBenchConfig {
        keys: args.keys,
        value_size: args.value_size,
        gets: args.gets,
        path: dir.join("db"),
    };
    match store::run_store_bench(config) {
        Ok(result) => println!("{}", result.to_json()),
        Err(e) => fail(e),
    }
}
