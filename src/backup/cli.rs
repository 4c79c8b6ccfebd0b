//! `cairn snapshot save|status|restore|combine`: the arguments (etcdctl 3.4's, where etcdctl
//! has the command) and the output.

use super::{combine, restore, save, status, RestoreConfig, Status};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Subcommand)]
pub enum SnapshotCmd {
    /// Stores a snapshot of a running member (the first of --endpoints that answers) in
    /// FILE: the member checkpoints, then streams its tree as of that checkpoint; it
    /// writes on meanwhile. With --since, only what the member appended after an earlier
    /// snapshot of it (an increment for `combine`). Written to FILE.part, synced, renamed.
    Save {
        /// The snapshot file to write (replaced if it exists).
        file: PathBuf,
        /// An earlier snapshot of the same member (full or incremental): save only what
        /// came after it.
        #[arg(long)]
        since: Option<PathBuf>,
    },
    /// Gets backend snapshot status of a given file: its hash, revision, total keys and
    /// total size. The file's SHA-256 trailer is checked, and every page of it as it is read.
    Status {
        /// The snapshot file.
        file: PathBuf,
    },
    /// Restores a snapshot into a new data directory for one member of a new cluster (its
    /// member and cluster ids derived from --initial-cluster and --initial-cluster-token,
    /// as `cairn serve` derives them). Restore into each member's directory with the same
    /// flags, then start `cairn serve` on each with those flags.
    Restore(RestoreArgs),
    /// Writes one full snapshot from a full snapshot and the incremental snapshots taken
    /// after it, in order (each --since the one before): byte for byte the full snapshot of
    /// the same member at the last one's commit.
    Combine {
        /// The full snapshot, then the increments.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The full snapshot to write (replaced if it exists).
        #[arg(long, short = 'o')]
        output: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The snapshot file.
    pub file: PathBuf,
    /// Path to the data directory (absent or empty).
    #[arg(long, default_value = "")]
    pub data_dir: String,
    /// Human-readable name for this member.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Initial cluster configuration for restore bootstrap.
    #[arg(long, default_value = "default=http://localhost:2380")]
    pub initial_cluster: String,
    /// Initial cluster token for the cluster during restore bootstrap.
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// List of this member's peer URLs to advertise to the rest of the cluster.
    #[arg(long, value_delimiter = ',', default_value = "http://localhost:2380")]
    pub initial_advertise_peer_urls: Vec<String>,
    /// Ignore snapshot integrity hash value (required if copied from data directory).
    #[arg(long)]
    pub skip_hash_check: bool,
}

/// How `status` prints (the command's `-w`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Simple,
    Json,
    Table,
}

/// Where `save` asks for a snapshot: the native protocol endpoints, and how long to wait
/// for each piece.
#[derive(Debug, Clone)]
pub struct Remote {
    pub endpoints: Vec<String>,
    pub timeout: Duration,
}

/// Runs the command: what to print on stdout, or the error (exit code 1).
pub fn run(cmd: &SnapshotCmd, format: Format, remote: &Remote) -> Result<String, String> {
    match cmd {
        SnapshotCmd::Save { file, since } => {
            save(&remote.endpoints, remote.timeout, file, since.as_deref())
                .map_err(|e| e.to_string())?;
            // etcdctl's line.
            Ok(format!("Snapshot saved at {}\n", file.display()))
        }
        SnapshotCmd::Status { file } => {
            let s = status(file).map_err(|e| e.to_string())?;
            if !s.hash_checked {
                eprintln!(
                    "{}: no SHA-256 trailer (a copy of a database file?): only the pages' \
                     checksums were checked",
                    file.display()
                );
            }
            Ok(status_output(&s, format))
        }
        SnapshotCmd::Restore(args) => {
            let data_dir = if args.data_dir.is_empty() {
                PathBuf::from(format!("{}.cairn", args.name))
            } else {
                PathBuf::from(&args.data_dir)
            };
            let cfg = RestoreConfig {
                snapshot: args.file.clone(),
                data_dir: data_dir.clone(),
                name: args.name.clone(),
                initial_cluster: args.initial_cluster.clone(),
                initial_cluster_token: args.initial_cluster_token.clone(),
                initial_advertise_peer_urls: args.initial_advertise_peer_urls.clone(),
                skip_hash_check: args.skip_hash_check,
            };
            let r = restore(&cfg).map_err(|e| e.to_string())?;
            eprintln!(
                "restored snapshot {} into {}: member {:x} of cluster {:x}, revision {}",
                args.file.display(),
                data_dir.display(),
                r.member_id,
                r.cluster_id,
                r.revision
            );
            Ok(String::new())
        }
        SnapshotCmd::Combine { files, output } => {
            let (full, increments) = files.split_first().ok_or("no snapshot files given")?;
            let c = combine(full, increments, output).map_err(|e| e.to_string())?;
            Ok(format!(
                "Snapshot saved at {} ({} bytes of database, SHA-256 {})\n",
                output.display(),
                c.end,
                super::hex(&c.sha256)
            ))
        }
    }
}

/// etcdctl 3.4's `snapshot status` output.
pub fn status_output(s: &Status, format: Format) -> String {
    let fields = [
        format!("{:x}", s.hash),
        s.revision.to_string(),
        s.total_keys.to_string(),
        crate::cli::output::human_bytes(s.total_size),
    ];
    match format {
        Format::Simple => format!("{}\n", fields.join(", ")),
        Format::Json => format!(
            "{{\"hash\":{},\"revision\":{},\"totalKey\":{},\"totalSize\":{}}}\n",
            s.hash, s.revision, s.total_keys, s.total_size
        ),
        Format::Table => {
            crate::cli::output::table(&["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"], &[fields])
        }
    }
}
