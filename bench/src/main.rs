//! `storage-bench`: micro-benchmarks of cairn's storage layers. Prints one JSON line per
//! benchmark on stdout, progress on stderr.

mod wal;

use std::path::PathBuf;

use clap::Parser;

/// Storage micro-benchmarks.
#[derive(Debug, Parser)]
#[command(name = "storage-bench")]
struct Args {
    /// Run only the WAL benchmark.
    #[arg(long)]
    wal_only: bool,
    /// Records to append.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Payload bytes per record.
    #[arg(long, default_value_t = 300)]
    record_bytes: usize,
    /// Concurrent appender tasks.
    #[arg(long, default_value_t = 256)]
    appenders: usize,
    /// Directory for the WAL (default: a temporary directory under the current one,
    /// deleted afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Segment preallocation: zero-fill or fallocate.
    #[arg(long, default_value = "zero-fill", value_parser = wal::parse_prealloc)]
    prealloc: cairn::wal::Prealloc,
    /// Segment size in MiB.
    #[arg(long, default_value_t = 64)]
    segment_mib: u64,
}

fn main() {
    let args = Args::parse();
    if !args.wal_only {
        eprintln!("storage-bench: the WAL benchmark is the only one so far");
    }
    let temp;
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => {
            temp = match tempfile::tempdir_in(".") {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("storage-bench: cannot create a temporary directory: {e}");
                    std::process::exit(1);
                }
            };
            temp.path().join("wal")
        }
    };
    let options = cairn::wal::WalOptions {
        segment_bytes: args.segment_mib << 20,
        prealloc: args.prealloc,
        ..Default::default()
    };
    let config = wal::WalBenchConfig {
        records: args.records,
        record_bytes: args.record_bytes,
        appenders: args.appenders,
        dir,
        options,
    };
    match wal::run_wal_bench(config) {
        Ok(result) => println!("{}", result.to_json()),
        Err(e) => {
            eprintln!("storage-bench: {e}");
            std::process::exit(1);
        }
    }
}
