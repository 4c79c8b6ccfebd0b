//! The single writer of a database file: open and recovery, copy-on-write changes, commits,
//! published views, durable snapshots, and the switch to a reclaimed file.

use super::backing::Dir;
use super::file::{io_err, Appender, FileShared};
use super::node::{BranchEntry, LeafEntry, Node, NodeRef, Val};
use super::page::{
    self, check_tree, CommitRecord, Seal, COMMIT_COPIES, COMMIT_USER_BYTES_MAX, NO_PAGE, PAGE_SIZE,
};
use super::reclaim::{self, Reclaim};
use super::snapshot::Snapshot;
use super::view::{RangeIter, Roots};
use super::write::{self, Ctx};
use super::{BtreeError, CommitMeta, DbOptions, Result, Stats, TreeId, KEY_BYTES_MAX, MAX_TREES};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An immutable read view of every tree at one point: `Send + Sync + Clone`, readable from
/// any thread while the writer goes on. Views of uncommitted state are served from memory.
#[derive(Clone)]
pub struct View {
    roots: Roots,
}

impl View {
    pub fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.roots.get(tree, key)
    }
    pub fn range(
        &self,
        tree: TreeId,
        lo: Bound<&[u8]>,
        hi: Bound<&[u8]>,
        reverse: bool,
    ) -> RangeIter {
        self.roots.range(tree, lo, hi, reverse)
    }
}

/// One database file as the writer sees it.
pub(crate) struct FileState {
    pub cur: Roots,
    /// Next page to append (the file's length in pages once the last commit is written).
    pub next_page: u64,
    pub last: CommitRecord,
    /// Bytes reachable from the last commit, plus the file header and that commit record.
    pub live_bytes: u64,
    /// On-disk bytes made dead by changes since the last commit.
    pub freed_bytes: u64,
    /// Key and value bytes written since the last commit.
    pub put_bytes: u64,
}

/// The single writer of one database file.
pub struct Db {
    path: PathBuf,
    opts: DbOptions,
    state: FileState,
    meta: CommitMeta,
    reclaim: Option<Reclaim>,
    /// Reclamations that switched to their new file since the database was opened: how a
    /// caller waiting for one tells a switch from a reclamation abandoned or failed (both
    /// end with none pending).
    reclaims_done: u64,
    /// Set when a write or sync failed: the file's durable state is unknown, so nothing more
    /// is written (a failed fsync cannot be retried safely).
    poisoned: bool,
    /// A commit whose pages are written and whose syncs and commit record are being done on
    /// a background thread ([`Db::commit_background`]).
    pending: Option<PendingCommit>,
    /// Pages of the file up to the end of the last durable commit record.
    durable_pages: u64,
    /// A background commit known durable and not yet reported by [`Db::poll_commit`].
    unreported: Option<CommitMeta>,
    /// How long the last commit that became durable took, until taken
    /// ([`Db::take_commit_duration`]).
    last_commit_duration: Option<std::time::Duration>,
    /// Opened by [`Db::open_read_only`]: changes stay in memory, commits are refused.
    read_only: bool,
}

impl Drop for Db {
    /// A background commit finishes before the file can be opened again.
    fn drop(&mut self) {
        let _ = self.wait_commit();
    }
}

struct PendingCommit {
    finish: std::thread::JoinHandle<Result<WrittenCommit>>,
    meta: CommitMeta,
    /// The writer's counts of changes when the commit was taken, given back if it fails for
    /// lack of space (its changes then count toward the next commit again).
    freed_bytes: u64,
    put_bytes: u64,
}

/// A background commit, durable: what the writer needs to move onto it.
struct WrittenCommit {
    record: CommitRecord,
    data_pages: u64,
    written: write::Written,
    /// How long it took to write and sync, on its thread.
    elapsed: std::time::Duration,
    /// The state the commit wrote, held until the writer has looked its nodes up by address
    /// (so that no address is reused before).
    _state: Roots,
}

/// What makes a written commit durable: sync its pages, write its record, sync again.
pub(crate) struct FinishCommit {
    file: Arc<FileShared>,
    data_pages: u64,
    record: Vec<u8>,
    record_page: u64,
}

impl FinishCommit {
    pub(crate) fn run(self) -> Result<()> {
        let file = &self.file;
        if self.data_pages > 0 {
            file.file.sync_data().map_err(|e| io_err(&file.path, e))?;
        }
        file.file
            .write_all_at(&self.record, self.record_page * PAGE_SIZE as u64)
            .map_err(|e| io_err(&file.path, e))?;
        file.file.sync_data().map_err(|e| io_err(&file.path, e))
    }
}

pub(crate) fn end_pages(last: &CommitRecord) -> u64 {
    if last.page_id == NO_PAGE {
        1
    } else {
        last.page_id + COMMIT_COPIES
    }
}

impl FileState {
    pub fn put(&mut self, t: usize, key: &[u8], value: &[u8]) -> Result<()> {
        self.insert(t, key, Val::new(key, value))
    }

    pub fn insert(&mut self, t: usize, key: &[u8], val: Val) -> Result<()> {
        self.put_bytes += (key.len() + val.len()) as u64;
        let mut ctx = Ctx {
            file: &self.cur.file,
            freed_bytes: &mut self.freed_bytes,
        };
        match &mut self.cur.roots[t] {
            None => {
                let leaf = Node::Leaf(vec![LeafEntry {
                    key: key.into(),
                    val,
                }]);
                self.cur.roots[t] = Some(NodeRef::Mem(Arc::new(leaf)));
            }
            Some(root) => {
                if let Some((k, right)) = write::insert(&mut ctx, root, key, val)? {
                    let left = root.clone();
                    *root = NodeRef::Mem(Arc::new(Node::Branch(vec![
                        BranchEntry {
                            key: Box::default(),
                            child: left,
                        },
                        BranchEntry {
                            key: k,
                            child: right,
                        },
                    ])));
                }
            }
        }
        Ok(())
    }

    pub fn delete(&mut self, t: usize, key: &[u8]) -> Result<bool> {
        let Some(root) = &mut self.cur.roots[t] else {
            return Ok(false);
        };
        if !write::contains(&self.cur.file, root, key)? {
            return Ok(false);
        }
        let mut ctx = Ctx {
            file: &self.cur.file,
            freed_bytes: &mut self.freed_bytes,
        };
        write::remove(&mut ctx, root, key)?;
        write::shrink_root(&mut ctx, &mut self.cur.roots[t])?;
        Ok(true)
    }
}

pub(crate) fn empty_commit() -> CommitRecord {
    CommitRecord {
        seq: 0,
        page_id: NO_PAGE,
        applied_index: 0,
        applied_term: 0,
        data_start: 0,
        data_crc: 0,
        prev_commit: NO_PAGE,
        live_bytes: PAGE_SIZE as u64,
        roots: [NO_PAGE; MAX_TREES],
        user: Vec::new(),
    }
}

/// Creates a new file holding only the header page (with a new salt), atomically (temp
/// file, fsync, rename, directory fsync).
pub(crate) fn create_file(dir: &Dir, path: &Path, tmp: &Path) -> Result<()> {
    let f = dir.create(tmp).map_err(|e| io_err(tmp, e))?;
    f.write_all_at(&page::encode_file_header(Seal::fresh()), 0)
        .map_err(|e| io_err(tmp, e))?;
    f.sync_all().map_err(|e| io_err(tmp, e))?;
    dir.rename(tmp, path).map_err(|e| io_err(path, e))?;
    dir.sync_dir(path)
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

impl Db {
    /// Opens (or creates) the database file at `path`, at its newest valid commit. Anything
    /// after that commit (a commit torn by a crash) is cut off and reported, and leftover
    /// `.tmp`, `.reclaim` and `.reclaim.new` files are deleted. With
    /// [`DbOptions::mem_disk`], `path` names a file of that in-memory disk.
    pub fn open(path: impl AsRef<Path>, opts: DbOptions) -> Result<Db> {
        let path = path.as_ref().to_path_buf();
        let dir = Dir::of(&opts);
        for leftover in leftovers(&dir, &path)? {
            tracing::warn!(path = %leftover.path.display(), bytes = leftover.bytes, "removing an unfinished database file");
            dir.remove(&leftover.path)
                .map_err(|e| io_err(&leftover.path, e))?;
        }
        if !dir.exists(&path) {
            create_file(&dir, &path, &suffixed(&path, ".tmp"))?;
        }
        let file = dir.open(&path, true).map_err(|e| io_err(&path, e))?;
        let shared = Arc::new(FileShared::open(
            file,
            path.clone(),
            opts.branch_cache_pages,
        )?);
        let (state, cut) = recover(shared)?;
        if let Some(cut) = cut {
            tracing::warn!(
                path = %path.display(),
                offset = cut.offset,
                bytes = cut.bytes,
                "cutting off an incomplete commit after the newest valid commit record"
            );
            let file = &state.cur.file;
            file.file
                .set_len(cut.offset)
                .map_err(|e| io_err(&path, e))?;
            file.file.sync_all().map_err(|e| io_err(&path, e))?;
        }
        Ok(Db::new(path, opts, state, false))
    }

    /// Opens the existing file at `path` read-only, as [`Db::open`] would find it, without
    /// changing anything: nothing is cut, deleted or created. Changes are kept in memory;
    /// commits (and space reclamation) fail with [`BtreeError::ReadOnly`].
    pub fn open_read_only(path: impl AsRef<Path>, opts: DbOptions) -> Result<Db> {
        let path = path.as_ref().to_path_buf();
        let file = Dir::of(&opts)
            .open(&path, false)
            .map_err(|e| io_err(&path, e))?;
        let shared = Arc::new(FileShared::open(
            file,
            path.clone(),
            opts.branch_cache_pages,
        )?);
        let (state, _) = recover(shared)?;
        Ok(Db::new(path, opts, state, true))
    }

    /// What [`Db::open`] would find and do at `path`, read-only: the newest commit (its pages
    /// verified), the bytes after it that it would cut, and the leftovers it would delete.
    /// Cheap: reads the file's header, scans back to the newest commit record and reads the
    /// pages of that commit, nothing else.
    pub fn inspect(path: impl AsRef<Path>) -> Result<Inspection> {
        Db::inspect_with(path, &DbOptions::default())
    }

    /// As [`Db::inspect`], where `opts` says the files are (the file system, or
    /// [`DbOptions::mem_disk`]).
    pub fn inspect_with(path: impl AsRef<Path>, opts: &DbOptions) -> Result<Inspection> {
        let path = path.as_ref();
        let dir = Dir::of(opts);
        let leftovers = leftovers(&dir, path)?;
        let file = match dir.open(path, false) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Inspection {
                    exists: false,
                    file_bytes: 0,
                    commit: CommitMeta::default(),
                    cut: None,
                    leftovers,
                })
            }
            Err(e) => return Err(io_err(path, e)),
        };
        let shared = FileShared::open(file, path.to_owned(), 0)?;
        let (last, len, cut) = find_state(&shared)?;
        Ok(Inspection {
            exists: true,
            file_bytes: len,
            commit: CommitMeta {
                applied_index: last.applied_index,
                applied_term: last.applied_term,
                user: last.user,
            },
            cut,
            leftovers,
        })
    }

    fn new(path: PathBuf, opts: DbOptions, state: FileState, read_only: bool) -> Db {
        let meta = CommitMeta {
            applied_index: state.last.applied_index,
            applied_term: state.last.applied_term,
            user: state.last.user.clone(),
        };
        let durable_pages = end_pages(&state.last);
        Db {
            path,
            opts,
            state,
            meta,
            reclaim: None,
            reclaims_done: 0,
            poisoned: false,
            pending: None,
            durable_pages,
            unreported: None,
            last_commit_duration: None,
            read_only,
        }
    }

    /// Metadata of the last durable commit (zeroes for a new file).
    pub fn last_commit(&self) -> &CommitMeta {
        &self.meta
    }

    /// Reads the writer's current state (uncommitted writes included).
    pub fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.state.cur.get(tree, key)
    }

    /// Range over the writer's current state; the iterator is a snapshot.
    pub fn range(
        &self,
        tree: TreeId,
        lo: Bound<&[u8]>,
        hi: Bound<&[u8]>,
        reverse: bool,
    ) -> RangeIter {
        self.state.cur.range(tree, lo, hi, reverse)
    }

    /// Publishes a cheap immutable view of everything written so far.
    pub fn view(&self) -> View {
        View {
            roots: self.state.cur.clone(),
        }
    }

    /// Whether the file may be written: neither poisoned nor opened read-only.
    fn check_writable(&self) -> Result<()> {
        self.check_changeable()?;
        if self.read_only {
            return Err(BtreeError::ReadOnly(self.path.clone()));
        }
        Ok(())
    }

    /// Whether the trees may change (in memory: a read-only file's changes are never written).
    fn check_changeable(&self) -> Result<()> {
        if self.poisoned {
            return Err(BtreeError::Poisoned(self.path.clone()));
        }
        Ok(())
    }

    /// Inserts or replaces `key` in `tree` (in memory until the next commit).
    pub fn put(&mut self, tree: TreeId, key: &[u8], value: &[u8]) -> Result<()> {
        self.put_owned(tree, key, value.to_vec())
    }

    /// As [`Db::put`], taking ownership of the value so that it is not copied again.
    pub fn put_owned(&mut self, tree: TreeId, key: &[u8], value: Vec<u8>) -> Result<()> {
        self.check_changeable()?;
        let t = check_tree(tree)?;
        if key.len() > KEY_BYTES_MAX {
            return Err(BtreeError::KeyTooLarge(key.len()));
        }
        if value.len() > super::VALUE_BYTES_MAX {
            return Err(BtreeError::ValueTooLarge(value.len()));
        }
        self.note_touched(tree, key);
        self.state.insert(t, key, Val::from_vec(key, value))
    }

    /// Removes `key`; returns whether it existed.
    pub fn delete(&mut self, tree: TreeId, key: &[u8]) -> Result<bool> {
        self.check_changeable()?;
        let t = check_tree(tree)?;
        let existed = self.state.delete(t, key)?;
        if existed {
            self.note_touched(tree, key);
        }
        Ok(existed)
    }

    fn note_touched(&mut self, tree: TreeId, key: &[u8]) {
        if let Some(r) = &mut self.reclaim {
            if !r.touch(tree, key) {
                tracing::warn!(path = %self.path.display(), "space reclamation abandoned: too many writes while it ran");
                self.reclaim = None;
            }
        }
    }

    /// Makes everything written so far durable, recording `meta`; returns after fsync. If a
    /// space reclamation has finished building, this commit also switches to the new file.
    pub fn commit(&mut self, meta: CommitMeta) -> Result<()> {
        self.check_writable()?;
        self.wait_commit()?;
        let started = std::time::Instant::now();
        if meta.user.len() > COMMIT_USER_BYTES_MAX {
            return Err(BtreeError::MetaTooLarge(meta.user.len()));
        }
        let ready = self.reclaim.as_ref().is_some_and(Reclaim::is_finished);
        // Each path poisons the database where a failure leaves the file's state unknown; a
        // commit undone for lack of space leaves the writer as it was.
        if ready {
            self.finish_reclaim(&meta)?;
        } else {
            self.commit_state(&meta)?;
        }
        self.meta = meta;
        self.durable_pages = end_pages(&self.state.last);
        self.last_commit_duration = Some(started.elapsed());
        Ok(())
    }

    /// How long the last commit that became durable took (pages written, file synced,
    /// commit record written and synced), once: `None` until another one does.
    pub fn take_commit_duration(&mut self) -> Option<std::time::Duration> {
        self.last_commit_duration.take()
    }

    /// As [`Db::commit`], but returns at once: the commit's pages are encoded and written,
    /// synced, and its record written and synced, on a background thread, from the state as
    /// it is now, while the writer goes on. [`Db::poll_commit`] says when the commit is
    /// durable; the next commit (or [`Db::wait_commit`]) waits for it, and then the memory
    /// nodes it wrote that the writer has not changed since are replaced by their pages.
    /// Until then a crash recovers the commit before.
    pub fn commit_background(&mut self, meta: CommitMeta) -> Result<()> {
        self.check_writable()?;
        self.wait_commit()?;
        if self.reclaim.as_ref().is_some_and(Reclaim::is_finished) {
            return self.commit(meta); // switching files is done in the foreground
        }
        if meta.user.len() > COMMIT_USER_BYTES_MAX {
            return Err(BtreeError::MetaTooLarge(meta.user.len()));
        }
        let st = &mut self.state;
        let state = st.cur.clone();
        let (start, last) = (st.next_page, st.last.clone());
        let live_before = st.live_bytes - st.freed_bytes.min(st.live_bytes);
        let commit_meta = meta.clone();
        let spawned = std::thread::Builder::new()
            .name("cairn-commit".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                let mut written = write::Written::new();
                let built = write_commit(
                    &state,
                    start,
                    &last,
                    live_before,
                    &commit_meta,
                    Some(&mut written),
                )?;
                let data_pages = built.finish.data_pages;
                built.finish.run()?;
                Ok(WrittenCommit {
                    record: built.record,
                    data_pages,
                    written,
                    elapsed: started.elapsed(),
                    _state: state,
                })
            });
        match spawned {
            Ok(handle) => {
                // Changes from now on count toward the next commit.
                let freed_bytes = std::mem::take(&mut st.freed_bytes);
                let put_bytes = std::mem::take(&mut st.put_bytes);
                self.pending = Some(PendingCommit {
                    finish: handle,
                    meta,
                    freed_bytes,
                    put_bytes,
                });
                Ok(())
            }
            Err(e) => {
                self.poisoned = true;
                Err(io_err(&self.path, e))
            }
        }
    }

    /// The newest commit made by [`Db::commit_background`] that became durable since the
    /// last call, if any: whether it was found finished here or waited for by a later commit
    /// (a durable commit is never missed by the caller).
    pub fn poll_commit(&mut self) -> Result<Option<CommitMeta>> {
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.finish.is_finished())
        {
            self.wait_commit()?;
        }
        Ok(self.unreported.take())
    }

    /// Waits for the background commit, if any, to be durable.
    pub fn wait_commit(&mut self) -> Result<()> {
        let Some(p) = self.pending.take() else {
            return Ok(());
        };
        let result = match p.finish.join() {
            Ok(r) => r,
            Err(_) => Err(io_err(
                &self.path,
                std::io::Error::other("the commit thread panicked"),
            )),
        };
        match result {
            Ok(done) => {
                self.last_commit_duration = Some(done.elapsed);
                self.adopt(done);
                self.meta = p.meta.clone();
                self.durable_pages = end_pages(&self.state.last);
                self.unreported = Some(p.meta);
                Ok(())
            }
            Err(e) if e.is_no_space() => {
                // Nothing of the commit is referenced yet: the writer's state still holds
                // every change it wrote. Undo its bytes and let a later commit try again.
                self.cut_failed_commit()?;
                self.state.freed_bytes += p.freed_bytes;
                self.state.put_bytes += p.put_bytes;
                tracing::warn!(path = %self.path.display(), error = %e, "a commit failed for lack of space; it can be tried again");
                Err(e)
            }
            Err(e) => {
                self.poisoned = true;
                Err(e)
            }
        }
    }

    /// Stops the database if `e` is an I/O error (the file's state is then unknown); other
    /// errors (damage found, limits) leave it usable. Returns `e`.
    fn poison_on_io(&mut self, e: BtreeError) -> BtreeError {
        self.poisoned |= matches!(e, BtreeError::Io { .. });
        e
    }

    /// Cuts the file back to the end of the last durable commit, removing whatever a failed
    /// commit wrote after it (so that none of its bytes, a half-written commit record
    /// included, can be taken for a commit at open), and giving that space back.
    fn cut_failed_commit(&mut self) -> Result<()> {
        let end = self.state.next_page * PAGE_SIZE as u64;
        let file = &self.state.cur.file;
        let cut = file.file.set_len(end).and_then(|()| file.file.sync_all());
        if let Err(e) = cut {
            self.poisoned = true;
            return Err(io_err(&self.path, e));
        }
        Ok(())
    }

    /// Moves the writer onto a durable background commit: the nodes it wrote that are still
    /// in the trees unchanged become page references, and the pages of those changed since
    /// are dead from the next commit on.
    fn adopt(&mut self, done: WrittenCommit) {
        let st = &mut self.state;
        let reachable: u64 = st
            .cur
            .roots
            .iter_mut()
            .flatten()
            .map(|r| write::adopt_written(r, &done.written))
            .sum();
        st.freed_bytes += done.data_pages.saturating_sub(reachable) * PAGE_SIZE as u64;
        st.next_page = done.record.page_id + COMMIT_COPIES;
        st.live_bytes = done.record.live_bytes;
        st.last = done.record;
    }

    /// Whether a background commit is not yet known to be durable.
    pub fn commit_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// A foreground commit. If writing its pages fails for lack of space, nothing has
    /// changed yet: the bytes are cut off and the commit may be tried again. A failure after
    /// that (syncing, the record) leaves the file's state unknown.
    fn commit_state(&mut self, meta: &CommitMeta) -> Result<()> {
        let finish = match prepare_commit(&mut self.state, meta) {
            Ok(finish) => finish,
            Err(e) if e.is_no_space() => {
                self.cut_failed_commit()?;
                return Err(e);
            }
            Err(e) => return Err(self.poison_on_io(e)),
        };
        finish.run().inspect_err(|_| self.poisoned = true)
    }

    /// Starts rewriting every live entry into a fresh file on a background thread, from a
    /// view of the current state; reads and writes go on. A later `commit` switches to the
    /// new file once it is built.
    pub fn start_reclaim(&mut self) -> Result<()> {
        self.check_writable()?;
        if self.reclaim.is_none() {
            let src = self.state.cur.clone();
            let tmp = suffixed(&self.path, ".reclaim");
            self.reclaim = Some(Reclaim::start(
                src,
                Dir::of(&self.opts),
                tmp,
                self.opts.branch_cache_pages,
            ));
        }
        Ok(())
    }

    /// Whether a reclamation is running or waiting for the next commit to switch files.
    pub fn reclaim_pending(&self) -> bool {
        self.reclaim.is_some()
    }

    /// Whether a running reclamation has built its file, without waiting: the next commit
    /// switches to it.
    pub fn reclaim_built(&self) -> bool {
        self.reclaim.as_ref().is_some_and(Reclaim::is_finished)
    }

    /// Reclamations that switched files since the database was opened.
    pub fn reclaims_done(&self) -> u64 {
        self.reclaims_done
    }

    /// Blocks until a running reclamation has built its file (the next commit switches).
    pub fn wait_reclaim_built(&self) {
        if let Some(r) = &self.reclaim {
            r.wait_built();
        }
    }

    fn finish_reclaim(&mut self, meta: &CommitMeta) -> Result<()> {
        let Some(r) = self.reclaim.take() else {
            return self.commit_state(meta);
        };
        let (built, touched) = match r.join() {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "space reclamation failed; keeping the current file");
                return self.commit_state(meta);
            }
        };
        let mut next = built;
        reclaim::replay_touched(&self.state.cur, &mut next, touched)
            .map_err(|e| self.poison_on_io(e))?;
        next.last.prev_commit = NO_PAGE;
        if let Err(e) = commit_into(&mut next, meta) {
            if !e.is_no_space() {
                return Err(self.poison_on_io(e));
            }
            // The live file is untouched: drop the new one (giving its space back) and stay.
            let tmp = next.cur.file.path.clone();
            drop(next);
            if let Err(remove) = Dir::of(&self.opts).remove(&tmp) {
                tracing::warn!(error = %remove, path = %tmp.display(), "removing a failed reclamation file");
            }
            tracing::warn!(error = %e, "space reclamation failed for lack of space; keeping the current file");
            return Err(e);
        }
        let dir = Dir::of(&self.opts);
        dir.rename(&next.cur.file.path, &self.path)
            .map_err(|e| self.poison_on_io(io_err(&self.path, e)))?;
        dir.sync_dir(&self.path).map_err(|e| self.poison_on_io(e))?;
        let new_file = reopen_shared(&self.path, &next.cur.file, self.opts.branch_cache_pages)
            .map_err(|e| self.poison_on_io(e))?;
        next.cur.file = new_file;
        let before = self.state.next_page * PAGE_SIZE as u64;
        tracing::info!(
            path = %self.path.display(),
            before_bytes = before,
            after_bytes = next.next_page * PAGE_SIZE as u64,
            "space reclaimed"
        );
        self.state = next;
        self.reclaims_done += 1;
        Ok(())
    }

    /// A consistent snapshot of the last durable commit, readable as a byte stream (the file
    /// up to and including that commit record) while writes go on.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::new(
            self.state.cur.file.clone(),
            self.durable_pages * PAGE_SIZE as u64,
            self.meta.clone(),
        )
    }

    pub fn stats(&self) -> Stats {
        Stats {
            file_bytes: self.state.next_page * PAGE_SIZE as u64,
            live_bytes: self.state.live_bytes,
        }
    }

    /// Roughly the memory held by changes since the last commit (pages copied into memory
    /// plus bytes written): the layer above commits when this grows past its budget.
    pub fn uncommitted_bytes(&self) -> u64 {
        self.state.freed_bytes + self.state.put_bytes
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Re-labels the shared file with its final path after the rename (the fd stays the same).
fn reopen_shared(path: &Path, old: &Arc<FileShared>, cache: usize) -> Result<Arc<FileShared>> {
    let f = old.file.try_clone().map_err(|e| io_err(path, e))?;
    Ok(Arc::new(FileShared::new(
        f,
        path.to_path_buf(),
        cache,
        old.seal,
    )))
}

/// The commit protocol: append every memory node, fdatasync, append the commit record,
/// fdatasync. A commit record therefore only ever reaches the disk after its pages did.
pub(crate) fn commit_into(st: &mut FileState, meta: &CommitMeta) -> Result<()> {
    prepare_commit(st, meta)?.run()
}

/// Writes a commit's pages and moves the writer's state onto them; the returned
/// [`FinishCommit`] makes the commit durable. The writer may go on before it runs (reads of
/// the new pages come from the OS cache); no other commit may be written until it has.
pub(crate) fn prepare_commit(st: &mut FileState, meta: &CommitMeta) -> Result<FinishCommit> {
    let live_before = st.live_bytes - st.freed_bytes.min(st.live_bytes);
    let built = write_commit(&st.cur, st.next_page, &st.last, live_before, meta, None)?;
    for (t, r) in st.cur.roots.iter_mut().enumerate() {
        *r = (built.roots[t] != NO_PAGE).then_some(NodeRef::Disk(built.roots[t]));
    }
    st.next_page = built.record.page_id + COMMIT_COPIES;
    st.live_bytes = built.record.live_bytes;
    st.freed_bytes = 0;
    st.put_bytes = 0;
    st.last = built.record;
    Ok(built.finish)
}

/// A commit's pages, written; `finish` makes it durable.
pub(crate) struct BuiltCommit {
    roots: [u64; MAX_TREES],
    record: CommitRecord,
    finish: FinishCommit,
}

/// Writes the pages of every memory node of `state` from page `start` on, after the commit
/// `last`; `live_before` is what stays live of what `last` holds. With `written`, records
/// each node written (see [`write::adopt_written`]).
fn write_commit(
    state: &Roots,
    start: u64,
    last: &CommitRecord,
    live_before: u64,
    meta: &CommitMeta,
    mut written: Option<&mut write::Written>,
) -> Result<BuiltCommit> {
    let file = state.file.clone();
    // Sequence numbers and live bytes come from the disk: saturating, so that a damaged
    // record cannot make the arithmetic overflow.
    let seq = last.seq.saturating_add(1);
    // A background commit is written while the writer (and, in the server, the WAL) goes
    // on: its pages reach the device a chunk at a time. A foreground commit is waited for.
    let mut app = if written.is_some() {
        Appender::paced(start)
    } else {
        Appender::new(start)
    };
    let mut roots = [NO_PAGE; MAX_TREES];
    for (t, r) in state.roots.iter().enumerate() {
        if let Some(r) = r {
            roots[t] = write::flush(&file, &mut app, r, seq, written.as_deref_mut())?.0;
        }
    }
    app.flush(&file)?;
    let data_pages = app.next_page - start;
    let commit_page = app.reserve(COMMIT_COPIES);
    let record_bytes = COMMIT_COPIES * PAGE_SIZE as u64;
    let old_commit = if last.page_id == NO_PAGE {
        0
    } else {
        record_bytes
    };
    let live = live_before.saturating_add(data_pages * PAGE_SIZE as u64);
    let record = CommitRecord {
        seq,
        page_id: commit_page,
        applied_index: meta.applied_index,
        applied_term: meta.applied_term,
        data_start: start,
        data_crc: app.crc,
        prev_commit: last.page_id,
        live_bytes: live.saturating_sub(old_commit).saturating_add(record_bytes),
        roots,
        user: meta.user.clone(),
    };
    let finish = FinishCommit {
        record: record.encode(file.seal),
        file,
        data_pages,
        record_page: commit_page,
    };
    Ok(BuiltCommit {
        roots,
        record,
        finish,
    })
}

/// Bytes after the newest commit that opening cuts off: a commit torn by a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    pub offset: u64,
    pub bytes: u64,
}

/// A file [`Db::open`] deletes: one being created, or a reclamation's unfinished copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub path: PathBuf,
    pub bytes: u64,
}

/// What [`Db::inspect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// Whether the file exists (if not, opening creates it, empty).
    pub exists: bool,
    pub file_bytes: u64,
    /// The newest commit's metadata (zeroes without one).
    pub commit: CommitMeta,
    /// What opening would cut after the newest commit.
    pub cut: Option<Cut>,
    /// What opening would delete.
    pub leftovers: Vec<Leftover>,
}

fn leftovers(dir: &Dir, path: &Path) -> Result<Vec<Leftover>> {
    let mut found = Vec::new();
    // A reclamation creates its file as `.reclaim.new` and renames it to `.reclaim`.
    let names = [".tmp", ".reclaim", ".reclaim.new"];
    for leftover in names.map(|name| suffixed(path, name)) {
        match dir.len_of(&leftover) {
            Ok(bytes) => found.push(Leftover {
                path: leftover,
                bytes,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&leftover, e)),
        }
    }
    Ok(found)
}

/// Finds the newest valid commit record and checks the pages it wrote; returns the state
/// at that commit and the bytes after it, which the caller cuts off (or reports).
fn recover(file: Arc<FileShared>) -> Result<(FileState, Option<Cut>)> {
    let (last, _, cut) = find_state(&file)?;
    let end = end_pages(&last);
    let mut roots: [Option<NodeRef>; MAX_TREES] = Default::default();
    for (t, r) in last.roots.iter().enumerate() {
        if *r != NO_PAGE {
            roots[t] = Some(NodeRef::Disk(*r));
        }
    }
    let state = FileState {
        cur: Roots { file, roots },
        next_page: end,
        live_bytes: last.live_bytes,
        freed_bytes: 0,
        put_bytes: 0,
        last,
    };
    Ok((state, cut))
}

/// Reads only: the newest valid commit (its pages verified, or the empty commit of a file
/// holding only its header), the file's length, and what lies after that commit.
pub(crate) fn find_state(file: &FileShared) -> Result<(CommitRecord, u64, Option<Cut>)> {
    let len = file.file.len().map_err(|e| io_err(&file.path, e))?;
    let pages = len / PAGE_SIZE as u64;
    let last = find_newest_commit(file, pages)?;
    if let Some(c) = &last {
        verify_commit_data(file, c)?;
    }
    let last = last.unwrap_or_else(empty_commit);
    let end = end_pages(&last) * PAGE_SIZE as u64;
    let cut = (len > end).then(|| Cut {
        offset: end,
        bytes: len - end,
    });
    Ok((last, len, cut))
}

const SCAN_CHUNK_PAGES: u64 = 256;

fn find_newest_commit(file: &FileShared, pages: u64) -> Result<Option<CommitRecord>> {
    let mut hi = pages;
    while hi > 1 {
        let lo = hi.saturating_sub(SCAN_CHUNK_PAGES).max(1);
        let buf = file.read_raw(lo, hi - lo)?;
        for id in (lo..hi).rev() {
            let at = ((id - lo) as usize) * PAGE_SIZE;
            if let Some(c) = CommitRecord::decode(&buf[at..at + PAGE_SIZE], id, file.seal) {
                return Ok(Some(c));
            }
        }
        hi = lo;
    }
    Ok(None)
}

/// The commit record was written only after its pages were synced, so pages that fail
/// their checksum mean the disk lost or damaged synced data: an error, not a torn write.
fn verify_commit_data(file: &FileShared, c: &CommitRecord) -> Result<()> {
    let mut crc = 0u32;
    let mut id = c.data_start;
    while id < c.page_id {
        let n = (c.page_id - id).min(SCAN_CHUNK_PAGES);
        crc = crc32c::crc32c_append(crc, &file.read_raw(id, n)?);
        id += n;
    }
    if crc != c.data_crc {
        find_damaged_page(file, c)?;
        return Err(BtreeError::Corrupt {
            path: file.path.clone(),
            offset: c.data_start * PAGE_SIZE as u64,
            reason: format!(
                "pages of commit {} (pages {}..{}) fail their checksum, though each page checks",
                c.seq, c.data_start, c.page_id
            ),
        });
    }
    Ok(())
}

/// Checks the pages of a commit that failed the commit's checksum one by one (an overflow
/// run as a whole), so that the error names the first damaged page; `Ok` if all check.
fn find_damaged_page(file: &FileShared, c: &CommitRecord) -> Result<()> {
    let reason = |id: u64, what: &str| {
        format!(
            "page {id} of commit {} (pages {}..{}) {what}",
            c.seq, c.data_start, c.page_id
        )
    };
    let mut id = c.data_start;
    while id < c.page_id {
        let first = file.read_raw(id, 1)?;
        let run = match page::kind_of(&first) {
            page::KIND_OVERFLOW => {
                let len = u32::from_le_bytes([first[24], first[25], first[26], first[27]]);
                let pages = page::overflow_pages(len as usize);
                if id + pages > c.page_id {
                    return Err(BtreeError::Corrupt {
                        path: file.path.clone(),
                        offset: id * PAGE_SIZE as u64,
                        reason: reason(id, "is an overflow run longer than its commit"),
                    });
                }
                let run = file.read_raw(id, pages)?;
                page::decode_overflow(&run, id, len, &file.path)
                    .map_err(|e| with_reason(e, reason(id, "fails its overflow run check")))?;
                pages
            }
            kind @ (page::KIND_LEAF | page::KIND_BRANCH) => {
                page::verify(&first, id, &file.path).map_err(|e| {
                    with_reason(
                        e,
                        reason(id, &format!("(kind {kind}) fails its page check")),
                    )
                })?;
                1
            }
            kind => {
                return Err(BtreeError::Corrupt {
                    path: file.path.clone(),
                    offset: id * PAGE_SIZE as u64,
                    reason: reason(id, &format!("has unknown kind {kind}")),
                })
            }
        };
        id += run;
    }
    Ok(())
}

/// A `Corrupt` error with `context` before its reason.
fn with_reason(e: BtreeError, context: String) -> BtreeError {
    match e {
        BtreeError::Corrupt {
            path,
            offset,
            reason,
        } => BtreeError::Corrupt {
            path,
            offset,
            reason: format!("{context}: {reason}"),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btree::page::DiskVal;
    use crate::btree::view::Handle;
    use rand::{rngs::StdRng, Rng, SeedableRng};
    use std::collections::BTreeMap;

    /// Pages reachable from the last commit, counted by walking it on disk.
    fn reachable_pages(db: &Db) -> u64 {
        fn walk(file: &FileShared, id: u64) -> u64 {
            let h = Handle::load(file, &NodeRef::Disk(id)).unwrap();
            let Handle::Disk(p) = &h else { unreachable!() };
            let mut pages = 1;
            for i in 0..h.len() {
                if p.is_leaf() {
                    if let DiskVal::Overflow { len, .. } = p.value(i) {
                        pages += page::overflow_pages(len as usize);
                    }
                } else {
                    pages += walk(file, p.child(i));
                }
            }
            pages
        }
        let st = &db.state;
        st.last
            .roots
            .iter()
            .filter(|&&r| r != NO_PAGE)
            .map(|&r| walk(&st.cur.file, r))
            .sum()
    }

    /// After a commit is durable and adopted, the live bytes it records are exactly the file
    /// header, its record, and the pages reachable from it.
    fn check_live_bytes(db: &Db) {
        assert!(!db.commit_pending());
        let want = (1 + COMMIT_COPIES + reachable_pages(db)) * PAGE_SIZE as u64;
        assert_eq!(db.stats().live_bytes, want, "live bytes drifted");
    }

    fn all(db: &Db, t: u8) -> Vec<(Vec<u8>, Vec<u8>)> {
        db.range(t, Bound::Unbounded, Bound::Unbounded, false)
            .map(|r| r.unwrap())
            .collect()
    }

    /// A value whose pages, from the second on, are `forged` (page `j` of the run at
    /// `forged[j - 1]`), each page otherwise zero.
    fn value_of_pages(forged: &[Vec<u8>]) -> Vec<u8> {
        let mut v = vec![0u8; (forged.len() + 1) * PAGE_SIZE - page::HEADER_BYTES];
        v[..6].copy_from_slice(b"marker");
        for (j, p) in forged.iter().enumerate() {
            let at = (j + 1) * PAGE_SIZE - page::HEADER_BYTES;
            v[at..at + PAGE_SIZE].copy_from_slice(p);
        }
        v
    }

    /// In a new file at `path`, commits `before` (applied index 1), then the value `value`
    /// makes from the file's seal (applied index 2); returns the first page of the value's
    /// overflow run.
    fn commit_value(path: &Path, value: impl Fn(Seal) -> Vec<u8>) -> u64 {
        let mut db = Db::open(path, DbOptions::default()).unwrap();
        db.put(0, b"before", b"1").unwrap();
        db.commit(CommitMeta {
            applied_index: 1,
            ..Default::default()
        })
        .unwrap();
        let value = value(db.state.cur.file.seal);
        db.put(0, b"value", &value).unwrap();
        db.commit(CommitMeta {
            applied_index: 2,
            ..Default::default()
        })
        .unwrap();
        drop(db);
        let bytes = std::fs::read(path).unwrap();
        let run = bytes
            .chunks(PAGE_SIZE)
            .position(|p| {
                page::kind_of(p) == page::KIND_OVERFLOW
                    && &p[page::HEADER_BYTES..page::HEADER_BYTES + 6] == b"marker"
            })
            .expect("the value's run");
        run as u64
    }

    /// A client's value can hold pages built to decode as a commit record. A crash while
    /// its run is written (the run's first pages on disk, the rest and the real record
    /// not) must leave the file at the commit before, not at the forged record: only a
    /// record sealed with the file's own salt is one.
    #[test]
    fn a_value_built_to_look_like_a_commit_record_is_not_taken_for_one() {
        let dir = tempfile::tempdir().unwrap();
        // Where the run lands: the layout does not depend on the values.
        let run = commit_value(&dir.path().join("probe"), |_| {
            value_of_pages(&vec![vec![0; PAGE_SIZE]; 3])
        });
        // Pages 2 and 3 of the run: both copies of a record of an empty database at applied
        // index 999, with no data pages (so nothing for open to verify).
        let forge = |seal: Seal| {
            let record = CommitRecord {
                seq: 9,
                page_id: run + 2,
                applied_index: 999,
                applied_term: 1,
                data_start: run + 2,
                data_crc: 0,
                prev_commit: NO_PAGE,
                live_bytes: 3 * PAGE_SIZE as u64,
                roots: [NO_PAGE; MAX_TREES],
                user: Vec::new(),
            };
            let both = record.encode(seal);
            let (copy0, copy1) = both.split_at(PAGE_SIZE);
            value_of_pages(&[vec![0; PAGE_SIZE], copy0.to_vec(), copy1.to_vec()])
        };
        let open_torn = |name: &str, value: &dyn Fn(Seal) -> Vec<u8>| {
            let path = dir.path().join(name);
            assert_eq!(commit_value(&path, value), run);
            // The crash: the run on disk up to its forged record, nothing after it.
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.set_len((run + 4) * PAGE_SIZE as u64).unwrap();
            drop(f);
            let db = Db::open(&path, DbOptions::default()).unwrap();
            (
                db.last_commit().applied_index,
                db.get(0, b"before").unwrap(),
            )
        };
        // The control: a page sealed as the file seals its records would be taken (so the
        // crash above is one that matters)...
        assert_eq!(open_torn("own", &forge), (999, None));
        // ...but one sealed without a salt (version 1) or with another salt is not.
        let unsalted = |_| forge(Seal::unsalted());
        let other = |_| forge(Seal::fresh());
        assert_eq!(open_torn("unsalted", &unsalted), (1, Some(b"1".to_vec())));
        assert_eq!(open_torn("other", &other), (1, Some(b"1".to_vec())));
    }

    /// Files of the first format (no salt) open, take commits in their own format, and
    /// open again; space reclamation moves one to a file of the current format.
    #[test]
    fn a_version_1_file_is_opened_and_written_in_its_format_until_a_reclaim() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1");
        std::fs::write(&path, page::encode_file_header(Seal::unsalted())).unwrap();
        for i in 1..=3u64 {
            let mut db = Db::open(&path, DbOptions::default()).unwrap();
            assert_eq!(db.state.cur.file.seal, Seal::unsalted());
            assert_eq!(db.last_commit().applied_index, i - 1);
            db.put(0, &i.to_be_bytes(), &vec![i as u8; 5000]).unwrap();
            db.commit(CommitMeta {
                applied_index: i,
                ..Default::default()
            })
            .unwrap();
        }
        let mut db = Db::open(&path, DbOptions::default()).unwrap();
        assert_eq!(all(&db, 0).len(), 3);
        assert_eq!(db.last_commit().applied_index, 3);
        db.start_reclaim().unwrap();
        db.wait_reclaim_built();
        db.commit(CommitMeta {
            applied_index: 4,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(db.reclaims_done(), 1);
        drop(db);
        let db = Db::open(&path, DbOptions::default()).unwrap();
        let seal = db.state.cur.file.seal;
        assert_ne!(seal, Seal::unsalted());
        let header = std::fs::read(&path).unwrap();
        assert_eq!(
            page::check_file_header(&header[..PAGE_SIZE], &path).unwrap(),
            seal
        );
        assert_eq!(all(&db, 0).len(), 3);
        assert_eq!(db.last_commit().applied_index, 4);
    }

    #[test]
    fn background_commits_with_writes_meanwhile_keep_data_and_live_bytes_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut db = Db::open(&path, DbOptions::default()).unwrap();
        let mut rng = StdRng::seed_from_u64(11);
        let mut model: Vec<BTreeMap<Vec<u8>, Vec<u8>>> = vec![BTreeMap::new(); 2];
        let mut index = 0;
        let mut views = Vec::new();
        for round in 0..40 {
            for _ in 0..rng.gen_range(50..400) {
                let t = rng.gen_range(0..2u8);
                let k = format!("k{:05}", rng.gen_range(0..3000)).into_bytes();
                if rng.gen_bool(0.25) {
                    let existed = db.delete(t, &k).unwrap();
                    assert_eq!(existed, model[t as usize].remove(&k).is_some());
                } else {
                    // Some values take overflow pages.
                    let len = if rng.gen_bool(0.05) {
                        6000
                    } else {
                        rng.gen_range(0..300)
                    };
                    let v: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                    db.put(t, &k, &v).unwrap();
                    model[t as usize].insert(k, v);
                }
            }
            if rng.gen_bool(0.3) {
                views.push((db.view(), model.clone())); // readers share memory nodes
            }
            index += 1;
            let meta = CommitMeta {
                applied_index: index,
                applied_term: 1,
                user: vec![],
            };
            if round % 5 == 4 {
                db.commit(meta).unwrap();
                check_live_bytes(&db);
            } else {
                db.commit_background(meta).unwrap();
                if rng.gen_bool(0.3) {
                    db.wait_commit().unwrap();
                    check_live_bytes(&db);
                }
            }
            for t in 0..2u8 {
                let want: Vec<_> = model[t as usize].clone().into_iter().collect();
                assert_eq!(all(&db, t), want, "tree {t} after round {round}");
            }
        }
        for (v, m) in &views {
            for t in 0..2u8 {
                let got: Vec<_> = v
                    .range(t, Bound::Unbounded, Bound::Unbounded, false)
                    .map(|r| r.unwrap())
                    .collect();
                let want: Vec<_> = m[t as usize].clone().into_iter().collect();
                assert_eq!(got, want);
            }
        }
        // Nothing written since the last background commit: once it is durable, the trees
        // are all on disk and the memory is given back.
        db.commit_background(CommitMeta {
            applied_index: index + 1,
            ..CommitMeta::default()
        })
        .unwrap();
        db.wait_commit().unwrap();
        check_live_bytes(&db);
        assert!(db
            .state
            .cur
            .roots
            .iter()
            .all(|r| !matches!(r, Some(NodeRef::Mem(_)))));
        assert_eq!(db.uncommitted_bytes(), 0);
        drop(db);
        let db = Db::open(&path, DbOptions::default()).unwrap();
        assert_eq!(db.last_commit().applied_index, index + 1);
        for t in 0..2u8 {
            let want: Vec<_> = model[t as usize].clone().into_iter().collect();
            assert_eq!(all(&db, t), want, "tree {t} after reopen");
        }
        check_live_bytes(&db);
    }
}
