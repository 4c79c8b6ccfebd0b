//! `cairn check` and `cairn repair`: what a start would do to a data directory, found
//! without changing a byte of it, and the explicit repair that does it.
//!
//! [`check`] goes through the start's steps read-only: the WAL's verification and replay
//! ([`wal::inspect`]) into a [`RaftLog`] as the raft role replays it, the tree's newest
//! commit ([`Db::inspect`]), the comparison of the two that the start makes, and then the
//! whole store opened read-only (which reads every revision page) with the log's entries
//! after the tree's applied index applied in memory, as the member applies them before it
//! serves. The [`Report`] says what a start would cut and delete, and whether it would
//! refuse. The damage cases and the verdict on each: `docs/wal.md` and `docs/btree.md`.

use std::path::{Path, PathBuf};

use crate::btree::{self, BtreeError, Db, DbOptions};
use crate::cli::output::json_string;
use crate::mvcc::{MvccError, Store};
use crate::node::{apply_committed, NodeError};
use crate::raftlog::{RaftLog, RaftLogError};
use crate::server::tree_meets_log;
use crate::server::Identity;
use crate::wal::{self, RecordType, Wal, WalError, WalOptions};

/// Entries applied in memory in one call, to bound the copies made of the log.
const APPLY_CHUNK_ENTRIES: u64 = 1024;

/// Why the directory could not be checked or repaired: damage a start would refuse (the
/// error names the file and byte offset), or a failure to read it.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("cannot start an executor: {0}")]
    Executor(String),
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Btree(#[from] BtreeError),
    #[error(transparent)]
    Mvcc(#[from] MvccError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("the WAL's Raft records: {0}")]
    Log(#[from] RaftLogError),
    #[error("the WAL's member metadata record: {0}")]
    Identity(String),
}

/// What a start would find in a data directory and do to it.
#[derive(Debug)]
pub struct Report {
    /// The WAL, if the directory has one.
    pub wal: Option<wal::Inspection>,
    /// Records the WAL holds (all of them are verified and replayed).
    pub wal_records: u64,
    /// The tree file's newest commit, and what opening it would cut and delete.
    pub tree: btree::Inspection,
    /// The Raft log rebuilt from the WAL: the entry it starts after, and its last entry.
    pub log_start: u64,
    pub log_last: u64,
    /// Why a start would refuse this directory, if it would.
    pub refusal: Option<String>,
    /// The store as the member would serve it once started (`None` when the start would
    /// refuse, or there is no tree file yet).
    pub store: Option<StoreSummary>,
    /// A snapshot received from the leader (in `snap/`) that the log already starts after:
    /// a start makes it the tree file before anything else (the member stopped between
    /// the two). The rest of the report describes that file as the tree.
    pub snapshot_to_install: Option<PathBuf>,
}

/// The store after the log's entries were applied in memory.
#[derive(Debug, Clone, Copy)]
pub struct StoreSummary {
    pub revision: i64,
    pub compact_revision: i64,
    /// Log entries after the tree's applied index, applied in memory.
    pub entries_applied: u64,
    pub file_bytes: u64,
    pub live_bytes: u64,
}

impl Report {
    /// Whether a start would succeed and keep everything acknowledged: no refusal, and no
    /// WAL tail to cut (damage to the last batch cannot be told from a torn write of it).
    /// Leftovers and an unfinished tree commit hold nothing acknowledged.
    pub fn intact(&self) -> bool {
        self.refusal.is_none() && self.wal.as_ref().is_none_or(|w| w.torn.is_none())
    }

    /// One line per thing a start would do, and one per reason it would refuse.
    pub fn findings(&self, data_dir: &Path) -> Vec<String> {
        let mut lines = self.actions(data_dir, "a start cuts", "a start deletes");
        if let Some(torn) = self.wal.as_ref().and_then(|w| w.torn.as_ref()) {
            lines.push(format!(
                "{}: a torn write of the WAL's last batch cannot be told from damage to an \
                 acknowledged one, so acknowledged writes may be lost; `cairn repair --data-dir \
                 {}` makes the cut",
                torn.path.display(),
                data_dir.display()
            ));
        }
        if let Some(reason) = &self.refusal {
            lines.push(format!("a start refuses: {reason}"));
        }
        lines
    }

    /// What [`repair`] did, one line each: [`Report::findings`]' actions, done.
    pub fn repairs(&self, data_dir: &Path) -> Vec<String> {
        self.actions(data_dir, "cut", "deleted")
    }

    fn actions(&self, data_dir: &Path, cuts: &str, deletes: &str) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(snap) = &self.snapshot_to_install {
            let verb = if cuts == "cut" {
                "installed"
            } else {
                "a start installs"
            };
            lines.push(format!(
                "{}: {verb} this snapshot from the leader as {} (the log starts after it)",
                snap.display(),
                db_path(data_dir).display()
            ));
        }
        if let Some(torn) = self.wal.as_ref().and_then(|w| w.torn.as_ref()) {
            let records = torn.records.map_or_else(
                || "unreadable header".to_owned(),
                |n| format!("{n} record{}", if n == 1 { "" } else { "s" }),
            );
            lines.push(format!(
                "{}: {cuts} {} bytes at byte {}: the WAL's last batch ({records}), which fails \
                 verification ({})",
                torn.path.display(),
                torn.bytes,
                torn.offset,
                torn.reason
            ));
        }
        for leftover in self.wal.iter().flat_map(|w| &w.leftovers) {
            lines.push(format!(
                "{}: {deletes} this file of {} bytes ({}; nothing acknowledged)",
                leftover.path.display(),
                leftover.bytes,
                leftover.reason
            ));
        }
        for leftover in &self.tree.leftovers {
            lines.push(format!(
                "{}: {deletes} this unfinished database file of {} bytes (nothing acknowledged)",
                leftover.path.display(),
                leftover.bytes
            ));
        }
        match self.tree.cut {
            Some(cut) if self.refusal.is_some() => lines.push(format!(
                "{}: {} bytes at byte {} follow the newest whole commit (applied index {}); \
                 the start refuses before it would cut them",
                db_path(data_dir).display(),
                cut.bytes,
                cut.offset,
                self.tree.commit.applied_index
            )),
            Some(cut) => lines.push(format!(
                "{}: {cuts} {} bytes at byte {}, after the newest commit record (an unfinished \
                 commit: nothing acknowledged)",
                db_path(data_dir).display(),
                cut.bytes,
                cut.offset
            )),
            None => {}
        }
        lines
    }

    /// The summary as one JSON line.
    pub fn json(&self) -> String {
        let wal = self.wal.as_ref();
        let torn = match wal.and_then(|w| w.torn.as_ref()) {
            Some(t) => format!(
                "{{\"path\":{},\"offset\":{},\"bytes\":{},\"records\":{}}}",
                json_string(&t.path.display().to_string()),
                t.offset,
                t.bytes,
                t.records
                    .map_or_else(|| "null".to_owned(), |n| n.to_string())
            ),
            None => "null".to_owned(),
        };
        let files = |list: Vec<(&Path, u64)>| {
            let items: Vec<String> = list
                .iter()
                .map(|(p, bytes)| {
                    let path = json_string(&p.display().to_string());
                    format!("{{\"path\":{path},\"bytes\":{bytes}}}")
                })
                .collect();
            format!("[{}]", items.join(","))
        };
        let wal_leftovers = files(
            wal.iter()
                .flat_map(|w| &w.leftovers)
                .map(|l| (l.path.as_path(), l.bytes))
                .collect(),
        );
        let db_leftovers = files(
            self.tree
                .leftovers
                .iter()
                .map(|l| (l.path.as_path(), l.bytes))
                .collect(),
        );
        let db_cut = match self.tree.cut {
            Some(c) => format!("{{\"offset\":{},\"bytes\":{}}}", c.offset, c.bytes),
            None => "null".to_owned(),
        };
        let store = self.store.unwrap_or(StoreSummary {
            revision: 1,
            compact_revision: -1,
            entries_applied: 0,
            file_bytes: self.tree.file_bytes,
            live_bytes: 0,
        });
        let refusal = self
            .refusal
            .as_deref()
            .map_or_else(|| "null".to_owned(), json_string);
        format!(
            concat!(
                "{{\"wal_records\":{},\"wal_first_lsn\":{},\"wal_next_lsn\":{},",
                "\"applied_index\":{},\"revision\":{},\"compact_revision\":{},",
                "\"db_file_bytes\":{},\"db_live_bytes\":{},",
                "\"log_start_index\":{},\"log_last_index\":{},",
                "\"entries_applied\":{},",
                "\"start_refuses\":{},\"intact\":{},",
                "\"wal_torn_tail\":{},\"wal_leftovers\":{},\"db_cut\":{},\"db_leftovers\":{}}}"
            ),
            self.wal_records,
            wal.map_or(0, |w| w.first_lsn),
            wal.map_or(0, |w| w.next_lsn),
            self.tree.commit.applied_index,
            store.revision,
            store.compact_revision,
            store.file_bytes,
            store.live_bytes,
            self.log_start,
            self.log_last,
            store.entries_applied,
            refusal,
            self.intact(),
            torn,
            wal_leftovers,
            db_cut,
            db_leftovers,
        )
    }
}

/// Where the tree file lives inside a data directory.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("db").join("cairn.db")
}

/// Where the WAL lives inside a data directory.
pub fn wal_path(data_dir: &Path) -> PathBuf {
    data_dir.join("wal")
}

/// Checks `data_dir` without changing it (see the module doc). Damage a start would refuse
/// with an error is returned as that error; a refusal the start finds by comparing what it
/// read is in [`Report::refusal`].
pub fn check(data_dir: &Path) -> Result<Report, CheckError> {
    if !data_dir.is_dir() {
        return Err(CheckError::NotADirectory(data_dir.to_owned()));
    }
    let data_dir = data_dir.to_owned();
    executor()?.run(async move {
        crate::wal::keep_reactor_awake();
        check_on_executor(&data_dir).await
    })
}

/// An executor on this thread for the WAL's I/O.
fn executor() -> Result<glommio::LocalExecutor, CheckError> {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .map_err(|e| CheckError::Executor(e.to_string()))
}

async fn check_on_executor(data_dir: &Path) -> Result<Report, CheckError> {
    let log = RaftLog::default();
    let wal_dir = wal_path(data_dir);
    // An absent directory is a new member's: the start creates it. The WAL's lock guards
    // the whole data directory: it is held, shared, until the tree file is read too.
    let (_lock, replayed) = if wal_dir.is_dir() {
        let lock = wal::lock_shared(&wal_dir).await?;
        (Some(lock), Some(replay(&wal_dir, &log).await?))
    } else {
        (None, None)
    };
    let (wal, wal_records, identity) = match replayed {
        Some((inspection, records, identity)) => (Some(inspection), records, identity),
        None => (None, 0, None),
    };
    log.finish_replay()?;
    if let Some(identity) = identity {
        identity.map_err(CheckError::Identity)?;
    } else if wal_records > 0 {
        return Err(CheckError::Identity(
            "the WAL holds no member metadata record (was it written by another program?)".into(),
        ));
    }
    let mut db = db_path(data_dir);
    let mut tree = Db::inspect(&db)?;
    let mut snapshot_to_install = None;
    let pending = crate::server::snapshot_file(data_dir, log.start_index());
    if tree.commit.applied_index < log.start_index() && pending.exists() {
        tree = Db::inspect(&pending)?;
        db = pending.clone();
        snapshot_to_install = Some(pending);
    }
    let applied = tree.commit.applied_index;
    let mut refusal = tree_meets_log(applied, &log, &db)
        .err()
        .map(|e| e.to_string());
    let store = match (&refusal, tree.exists) {
        (None, true) => match replay_into_store(&db, &log) {
            Ok(s) => Some(s),
            // A start stops at a committed entry it cannot apply, as every member would.
            Err(CheckError::Node(e @ NodeError::BadEntry { .. })) => {
                refusal = Some(e.to_string());
                None
            }
            Err(e) => return Err(e),
        },
        _ => None,
    };
    Ok(Report {
        wal,
        wal_records,
        log_start: log.start_index(),
        log_last: log.last_index_held(),
        tree,
        refusal,
        store,
        snapshot_to_install,
    })
}

/// The identity the WAL's metadata record holds, if it holds one.
type ReplayedIdentity = Option<Result<Identity, String>>;

/// Replays the WAL into `log` as the raft role does at start.
async fn replay(
    dir: &Path,
    log: &RaftLog,
) -> Result<(wal::Inspection, u64, ReplayedIdentity), CheckError> {
    let mut records = 0u64;
    let mut identity = None;
    let inspection = wal::inspect(dir, 0, |_, rtype, payload| {
        records += 1;
        if rtype == RecordType::METADATA {
            identity = Some(Identity::decode(payload).map(|m| m.identity));
            return Ok(());
        }
        log.replay(rtype, payload)?;
        Ok(())
    })
    .await?;
    Ok((inspection, records, identity))
}

/// Opens the store read-only and applies the log's entries after its applied index in
/// memory, as the member applies them before it serves.
fn replay_into_store(db: &Path, log: &RaftLog) -> Result<StoreSummary, CheckError> {
    // Opening rebuilds the key index, which reads and checks every revision page.
    let mut store = Store::open_read_only(db, DbOptions::default())?;
    let stats = store.stats();
    let mut summary = StoreSummary {
        revision: 0,
        compact_revision: 0,
        entries_applied: 0,
        file_bytes: stats.file_bytes,
        live_bytes: stats.live_bytes,
    };
    let last = log.last_index_held();
    let mut next = store.applied().index + 1;
    while next <= last {
        let high = (next + APPLY_CHUNK_ENTRIES).min(last + 1);
        let entries =
            raft::Storage::entries(log, next, high, None, raft::GetEntriesContext::empty(false))
                .map_err(NodeError::from)?;
        summary.entries_applied += entries.len() as u64;
        apply_committed(&mut store, &entries)?;
        next = high;
    }
    summary.revision = store.current_revision();
    summary.compact_revision = store.compact_revision();
    Ok(summary)
}

/// What [`repair`] did.
#[derive(Debug)]
pub struct Repaired {
    /// What the check before the repair found; its findings are what was done.
    pub report: Report,
    /// Whether anything was changed.
    pub changed: bool,
}

/// Does to `data_dir` what a start does (cut a torn WAL tail, delete leftovers, cut an
/// unfinished tree commit), and nothing else: no segment is created beyond the successor a
/// start preallocates, of the size the existing segments record. Refuses, changing nothing,
/// when a start would refuse for a reason a cut cannot fix.
pub fn repair(data_dir: &Path) -> Result<Repaired, CheckError> {
    let report = check(data_dir)?;
    if report.refusal.is_some() {
        return Ok(Repaired {
            report,
            changed: false,
        });
    }
    let wal_work = report
        .wal
        .as_ref()
        .is_some_and(|w| w.torn.is_some() || !w.leftovers.is_empty());
    let tree_work = report.tree.cut.is_some() || !report.tree.leftovers.is_empty();
    let install = report.snapshot_to_install.is_some();
    if !wal_work && !tree_work && !install {
        return Ok(Repaired {
            report,
            changed: false,
        });
    }
    let data_dir = data_dir.to_owned();
    executor()?.run(async move {
        crate::wal::keep_reactor_awake();
        // The WAL is opened (and so locked) even when only the tree needs the cut: the
        // WAL's lock guards the whole data directory.
        let wal_dir = wal_path(&data_dir);
        let wal = if wal_dir.is_dir() {
            let segment_bytes = report.wal.as_ref().and_then(|w| w.segment_bytes);
            let options = options_for(segment_bytes);
            // Records were verified by the check; this open replays none of them.
            Some(Wal::open(&wal_dir, options, u64::MAX, |_, _, _| Ok(())).await?)
        } else {
            None
        };
        let db = db_path(&data_dir);
        if let Some(snap) = &report.snapshot_to_install {
            crate::server::rename_durably(snap, &db).map_err(|source| {
                crate::btree::BtreeError::Io {
                    path: db.clone(),
                    source,
                }
            })?;
        }
        let opened = if tree_work && report.tree.exists {
            Db::open(&db, DbOptions::default()).map(drop)
        } else {
            // No tree file (a crash while the first one was created): a start deletes its
            // leftovers before it creates the file; do the deleting only.
            report.tree.leftovers.iter().try_for_each(|l| {
                std::fs::remove_file(&l.path).map_err(|source| crate::btree::BtreeError::Io {
                    path: l.path.clone(),
                    source,
                })
            })
        };
        if let Some(wal) = wal {
            wal.close().await?;
        }
        opened?;
        Ok(Repaired {
            report,
            changed: true,
        })
    })
}

/// Options that make `Wal::open` preallocate a successor of the size the WAL's segments
/// record (the default size for a WAL without data segments).
fn options_for(segment_bytes: Option<u64>) -> WalOptions {
    let default = WalOptions::default();
    let Some(segment_bytes) = segment_bytes else {
        return default;
    };
    // The largest batch must fit in one segment after its header.
    let fits = segment_bytes.saturating_sub(2 * 4096) as usize;
    WalOptions {
        segment_bytes,
        batch_bytes_max: default.batch_bytes_max.min(fits),
        ..default
    }
}
