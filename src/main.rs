//! The `cairn` command. This build carries the storage engine's maintenance command; the
//! server (`cairn serve`) and the client commands are built on top of it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use cairn::btree::DbOptions;
use cairn::mvcc::Store;
use cairn::wal::{Wal, WalOptions};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "A strongly consistent key-value store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a member. Flags keep etcd's names; each is also read from CAIRN_<FLAG>.
    Serve(ServeArgs),
    /// Recovers a data directory as a start would (cutting a torn WAL tail or an unfinished
    /// tree commit), verifies every record and every revision page, and prints a summary as
    /// one JSON line. Exit code 0: intact; 1: damaged or unreadable (the error says where).
    Check {
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
    /// Maximum client request size in bytes the server will accept.
    #[arg(long, env = "CAIRN_MAX_REQUEST_BYTES", default_value_t = 1_572_864)]
    max_request_bytes: u32,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long, env = "CAIRN_MAX_TXN_OPS", default_value_t = 128)]
    max_txn_ops: usize,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, env = "CAIRN_HEARTBEAT_INTERVAL", default_value_t = 100)]
    heartbeat_interval: u64,
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, env = "CAIRN_LOG_LEVEL", default_value = "info")]
    log_level: tracing::Level,
}

/// Where the tree file lives inside a data directory.
fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("db").join("cairn.db")
}

fn check(data_dir: &Path) -> Result<String, Box<dyn std::error::Error>> {
    if !data_dir.is_dir() {
        return Err(format!("{} is not a directory", data_dir.display()).into());
    }
    let (wal_records, wal_first, wal_next) = check_wal(&data_dir.join("wal"))?;
    let db = db_path(data_dir);
    let (applied, revision, compacted, stats) = if db.exists() {
        // Opening rebuilds the key index, which reads and checks every revision page.
        let store = Store::open(&db, DbOptions::default())?;
        (
            store.applied().index,
            store.current_revision(),
            store.compact_revision(),
            store.stats(),
        )
    } else {
        (0, 1, -1, Default::default())
    };
    Ok(format!(
        concat!(
            "{{\"wal_records\":{},\"wal_first_lsn\":{},\"wal_next_lsn\":{},",
            "\"applied_index\":{},\"revision\":{},\"compact_revision\":{},",
            "\"db_file_bytes\":{},\"db_live_bytes\":{}}}"
        ),
        wal_records,
        wal_first,
        wal_next,
        applied,
        revision,
        compacted,
        stats.file_bytes,
        stats.live_bytes
    ))
}

/// Replays the WAL, if there is one, counting its records.
fn check_wal(dir: &Path) -> Result<(u64, u64, u64), Box<dyn std::error::Error>> {
    if !dir.exists() {
        return Ok((0, 0, 0));
    }
    let dir = dir.to_path_buf();
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make()?;
    executor.run(async move {
        let mut records = 0u64;
        let wal = Wal::open(&dir, WalOptions::default(), 0, |_, _, _| {
            records += 1;
            Ok(())
        })
        .await?;
        let summary = (records, wal.first_lsn(), wal.next_lsn());
        wal.close().await?;
        Ok(summary)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            tracing_subscriber::fmt()
                .with_max_level(args.log_level)
                .with_writer(std::io::stderr)
                .init();
            let config = cairn::server::ServeConfig {
                name: args.name,
                data_dir: args.data_dir,
                listen_native_addr: args.listen_native_addr,
                max_request_bytes: args.max_request_bytes + 4096,
                max_txn_ops: args.max_txn_ops,
                heartbeat_interval_ms: args.heartbeat_interval,
                max_inflight_per_conn: 1024,
                max_pending_proposals: 10_000,
            };
            match cairn::server::serve(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cairn serve: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { data_dir } => match check(&data_dir) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cairn check: {}: {e}", data_dir.display());
                ExitCode::FAILURE
            }
        },
    }
}
