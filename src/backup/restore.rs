//! `cairn snapshot restore`: a new member's data directory, of a new cluster, holding a
//! snapshot's data, as `etcdctl snapshot restore` makes one.
//!
//! The tree file is the snapshot's, with one more commit that puts its applied position at
//! the new log's start. The WAL is what a member of a new cluster has once its bootstrap
//! entries are applied, as etcd's restore writes it: the member metadata record (the
//! member and cluster ids `cairn serve` derives from the same flags), a start marker at
//! index n (the number of members), term 1, with every member a voter, and the hard state
//! (term 1, commit n). So a start applies nothing again, refuses nothing, and the members
//! elect a leader at term 2; the revision goes on from the snapshot's.

use super::file::{open, read_trailer, FileKind};
use super::{bad_file, hex, io_err, sync_parent, BackupError, Result, CHUNK_BYTES, HASH_BYTES};
use crate::btree::{DbOptions, Snapshot};
use crate::mvcc::{RaftPosition, Store};
use crate::raftlog::{encode_hard_state, encode_marker, MemberInfo, Membership};
use crate::server::{ClusterConfig, ClusterState, Identity, PeerInfo};
use crate::wal::{RecordType, Wal, WalOptions};
use sha2::{Digest, Sha256};
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// What `cairn snapshot restore` is given (etcdctl's flags).
#[derive(Debug, Clone)]
pub struct RestoreConfig {
    pub snapshot: PathBuf,
    /// The new data directory: absent, or empty.
    pub data_dir: PathBuf,
    pub name: String,
    pub initial_cluster: String,
    pub initial_cluster_token: String,
    pub initial_advertise_peer_urls: Vec<String>,
    /// Restore a file without a SHA-256 trailer (a copy of a tree file), or one whose
    /// trailer does not match.
    pub skip_hash_check: bool,
}

/// What [`restore`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub member_id: u64,
    pub cluster_id: u64,
    /// The revision the member serves once started.
    pub revision: i64,
    /// The new log's start (the number of members).
    pub applied_index: u64,
}

/// The new log's term at its start, as a new cluster's bootstrap entries have it.
const START_TERM: u64 = 1;

/// Writes the data directory (see the module doc): in a temporary directory beside it,
/// synced, then renamed into place, so that on any failure nothing is left behind.
pub fn restore(cfg: &RestoreConfig) -> Result<Restored> {
    let cluster = ClusterConfig {
        initial_cluster: cfg.initial_cluster.clone(),
        initial_advertise_peer_urls: cfg.initial_advertise_peer_urls.clone(),
        listen_peer_urls: cfg.initial_advertise_peer_urls.clone(),
        state: ClusterState::New,
        token: cfg.initial_cluster_token.clone(),
    };
    let (identity, peers) = cluster.bootstrap(&cfg.name).map_err(BackupError::Invalid)?;
    check_data_dir(&cfg.data_dir)?;
    let source = Source::open(&cfg.snapshot, cfg.skip_hash_check)?;
    let tmp = temporary_dir(&cfg.data_dir)?;
    let mut guard = RemoveOnDrop(Some(tmp.clone()));
    let at = RaftPosition {
        index: peers.len() as u64,
        term: START_TERM,
    };
    let revision = write_tree(&source, &tmp, at)?;
    write_wal(&tmp, identity, &peers, at)?;
    for dir in [tmp.join("db"), tmp.join("wal"), tmp.clone()] {
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&dir))?;
    }
    std::fs::rename(&tmp, &cfg.data_dir).map_err(io_err(&cfg.data_dir))?;
    guard.0 = None; // in place: nothing to remove
    sync_parent(&cfg.data_dir)?;
    Ok(Restored {
        member_id: identity.member_id,
        cluster_id: identity.cluster_id,
        revision,
        applied_index: at.index,
    })
}

/// The data directory must not exist, or be empty (etcd's rule).
fn check_data_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let empty = std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none());
    if !empty {
        return Err(BackupError::Invalid(format!(
            "data-dir {:?} not empty or could not be read",
            dir.display().to_string()
        )));
    }
    Ok(())
}

/// `.<name>.restore.<pid>` beside `data_dir`: the rename into place stays in one file
/// system.
fn temporary_dir(data_dir: &Path) -> Result<PathBuf> {
    let name = data_dir.file_name().ok_or_else(|| {
        BackupError::Invalid(format!("{}: not a directory name", data_dir.display()))
    })?;
    let parent = match data_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    let tmp = parent.join(format!(
        ".{}.restore.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    std::fs::create_dir_all(tmp.join("db")).map_err(io_err(&tmp))?;
    Ok(tmp)
}

struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The snapshot file, checked for what restoring it needs before anything is written.
struct Source {
    path: PathBuf,
    file: std::fs::File,
    tree_bytes: u64,
    /// The trailer to check the bytes against as they are copied.
    expect: Option<[u8; HASH_BYTES]>,
    /// A file that had a trailer: its bytes end exactly with a commit.
    snapshot: bool,
}

impl Source {
    fn open(path: &Path, skip_hash_check: bool) -> Result<Source> {
        let (file, len) = open(path)?;
        let (tree_bytes, snapshot) =
            match FileKind::of(&file, path, len)? {
                FileKind::Full { tree_bytes } => (tree_bytes, true),
                FileKind::Database { .. } if !skip_hash_check => return Err(bad_file(
                    path,
                    "snapshot missing hash but --skip-hash-check=false (the file has no SHA-256 \
                     trailer: it is cut short, or a copy of a database file, which \
                     --skip-hash-check restores)",
                )),
                FileKind::Database { tree_bytes } => (tree_bytes, false),
                FileKind::Increment { .. } => return Err(bad_file(
                    path,
                    "is an incremental snapshot: combine it with the snapshots before it first \
                     (cairn snapshot combine)",
                )),
            };
        let expect = if snapshot && !skip_hash_check {
            Some(read_trailer(&file, path, len)?)
        } else {
            None
        };
        Ok(Source {
            path: path.to_path_buf(),
            file,
            tree_bytes,
            expect,
            snapshot,
        })
    }
}

/// Copies the snapshot's database into `tmp/db/cairn.db` (checking the hash on the way),
/// opens it as a store (which reads every revision page), and commits the new log's
/// position. Returns the store's revision.
fn write_tree(source: &Source, tmp: &Path, at: RaftPosition) -> Result<i64> {
    let db = crate::check::db_path(tmp);
    let mut out = std::fs::File::create(&db).map_err(io_err(&db))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut pos = 0u64;
    while pos < source.tree_bytes {
        let n = (source.tree_bytes - pos).min(CHUNK_BYTES as u64) as usize;
        source
            .file
            .read_exact_at(&mut buf[..n], pos)
            .map_err(io_err(&source.path))?;
        if source.expect.is_some() {
            hasher.update(&buf[..n]);
        }
        out.write_all(&buf[..n]).map_err(io_err(&db))?;
        pos += n as u64;
    }
    if let Some(want) = source.expect {
        let got: [u8; HASH_BYTES] = hasher.finalize().into();
        if got != want {
            return Err(bad_file(
                &source.path,
                format!(
                    "SHA-256 mismatch: the trailer says {}, the contents hash to {} (the file \
                     is damaged or cut short; --skip-hash-check restores it anyway)",
                    hex(&want),
                    hex(&got)
                ),
            ));
        }
    }
    out.sync_all().map_err(io_err(&db))?;
    drop(out);
    let newest = Snapshot::of_file(&db)?.len();
    if source.snapshot && newest != source.tree_bytes {
        return Err(bad_file(
            &source.path,
            format!(
                "its database ends at byte {} but its newest whole commit at byte {newest}",
                source.tree_bytes
            ),
        ));
    }
    let mut store = Store::open(&db, DbOptions::default())?;
    store.restart_at(at)?;
    Ok(store.current_revision())
}

/// The new member's WAL: its metadata record, the log's start marker with the new
/// membership, and the hard state.
fn write_wal(tmp: &Path, identity: Identity, peers: &[PeerInfo], at: RaftPosition) -> Result<()> {
    let mut membership = Membership::default();
    let ids: Vec<u64> = peers.iter().map(|p| p.id).collect();
    membership.set_conf(
        raft::eraftpb::ConfState {
            voters: ids,
            ..Default::default()
        },
        None,
    );
    for p in peers {
        membership.upsert(MemberInfo {
            id: p.id,
            name: p.name.clone(),
            peer_urls: p.peer_urls.clone(),
            client_urls: Vec::new(),
        });
    }
    let hard_state = raft::eraftpb::HardState {
        term: at.term,
        vote: 0,
        commit: at.index,
        ..Default::default()
    };
    let records = [
        (RecordType::METADATA, identity.encode(0, peers)),
        (
            RecordType::SNAPSHOT,
            encode_marker(at.index, at.term, &membership),
        ),
        (RecordType::HARD_STATE, encode_hard_state(&hard_state)),
    ];
    let wal_dir = crate::check::wal_path(tmp);
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .map_err(|e| BackupError::Invalid(format!("cannot start an executor: {e}")))?;
    executor.run(async move {
        crate::wal::keep_reactor_awake();
        let wal = Wal::open(&wal_dir, WalOptions::default(), 0, |_, _, _| Ok(())).await?;
        let refs: Vec<(RecordType, &[u8])> =
            records.iter().map(|(t, p)| (*t, p.as_slice())).collect();
        let appended = wal.append_many(&refs).await;
        let closed = wal.close().await;
        appended?;
        closed?;
        Ok(())
    })
}
