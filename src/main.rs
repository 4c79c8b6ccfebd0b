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
    /// Recovers a data directory as a start would (cutting a torn WAL tail or an unfinished
    /// tree commit), verifies every record and every revision page, and prints a summary as
    /// one JSON line. Exit code 0: intact; 1: damaged or unreadable (the error says where).
    Check {
        /// The data directory (holds `wal/` and `db/`).
        #[arg(long, env = "CAIRN_DATA_DIR", default_value = "default.cairn")]
        data_dir: PathBuf,
    },
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
