//! Online space reclamation. A background thread copies every live entry of the last
//! durable commit into a fresh file, packed in key order (full leaves, sequential pages),
//! while the writer goes on. The writer records which keys it changes meanwhile; the commit
//! that switches files replays just those keys from the current state into the new file, so
//! the pause is proportional to the writes made during the copy, not to the database size.

use super::backing::Dir;
use super::db::{create_file, empty_commit, FileState};
use super::file::{io_err, Appender, FileShared};
use super::node::NodeRef;
use super::node::Val;
use super::page::{self, PageBuilder, HEADER_BYTES, KIND_BRANCH, KIND_LEAF, PAGE_SIZE};
use super::view::Roots;
use super::{BtreeError, Result, TreeId, MAX_TREES};
use std::collections::BTreeSet;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Keys changed during one reclamation beyond which it is abandoned (memory bound).
pub const RECLAIM_TOUCHED_KEYS_MAX: usize = 4_000_000;

/// Keys (with their tree) changed while a reclamation copies.
type Touched = BTreeSet<(TreeId, Box<[u8]>)>;

pub(crate) struct Reclaim {
    handle: Option<JoinHandle<Result<FileState>>>,
    touched: Touched,
    cancel: Arc<AtomicBool>,
    dir: Dir,
    tmp: PathBuf,
}

impl Reclaim {
    pub fn start(src: Roots, dir: Dir, tmp: PathBuf, cache_pages: usize) -> Reclaim {
        let cancel = Arc::new(AtomicBool::new(false));
        let stop = cancel.clone();
        let path = tmp.clone();
        let files = dir.clone();
        let handle = std::thread::Builder::new()
            .name("cairn-reclaim".into())
            .spawn(move || build(&src, &files, path, cache_pages, &stop));
        let handle = match handle {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "could not start the space reclamation thread");
                None
            }
        };
        Reclaim {
            handle,
            touched: BTreeSet::new(),
            cancel,
            dir,
            tmp,
        }
    }

    /// Records a changed key; false when the bound is exceeded and the run must be dropped.
    pub fn touch(&mut self, tree: TreeId, key: &[u8]) -> bool {
        self.touched.insert((tree, key.into()));
        self.touched.len() <= RECLAIM_TOUCHED_KEYS_MAX
    }

    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(JoinHandle::is_finished)
    }

    pub fn wait_built(&self) {
        while !self.is_finished() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    pub fn join(mut self) -> Result<(FileState, Touched)> {
        let handle = self.handle.take().ok_or_else(|| BtreeError::Io {
            path: self.tmp.clone(),
            source: std::io::Error::other("reclamation thread did not start"),
        })?;
        let built = handle.join().map_err(|_| BtreeError::Io {
            path: self.tmp.clone(),
            source: std::io::Error::other("reclamation thread panicked"),
        })??;
        Ok((built, std::mem::take(&mut self.touched)))
    }
}

impl Drop for Reclaim {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
            let _ = self.dir.remove(&self.tmp);
        }
    }
}

/// Replays every key changed during the copy from the writer's current state.
pub(crate) fn replay_touched(cur: &Roots, next: &mut FileState, touched: Touched) -> Result<()> {
    for (tree, key) in touched {
        match cur.get(tree, &key)? {
            Some(v) => next.put(tree as usize, &key, &v)?,
            None => {
                next.delete(tree as usize, &key)?;
            }
        }
    }
    Ok(())
}

/// One level of a bottom-up bulk load: entries waiting to become the next page.
struct Level {
    keys: Vec<Box<[u8]>>,
    /// Leaf: values; branch: child page ids in `ids`.
    vals: Vec<Val>,
    ids: Vec<u64>,
    bytes: usize,
    pages: u64,
}

impl Level {
    fn new() -> Level {
        Level {
            keys: Vec::new(),
            vals: Vec::new(),
            ids: Vec::new(),
            bytes: HEADER_BYTES,
            pages: 0,
        }
    }
}

struct Loader<'a> {
    file: &'a FileShared,
    app: Appender,
    levels: Vec<Level>,
}

impl Loader<'_> {
    fn entry_bytes(level: usize, key: &[u8], val: Option<&Val>) -> usize {
        match val {
            Some(Val::Inline(v)) if level == 0 => page::LEAF_ENTRY_OVERHEAD + key.len() + v.len(),
            _ if level == 0 => page::LEAF_ENTRY_OVERHEAD + key.len() + 8,
            _ => page::BRANCH_ENTRY_OVERHEAD + key.len(),
        }
    }

    fn add_leaf(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let val = match Val::new(key, value) {
            Val::Large(v) => {
                let id = self.app.reserve(page::overflow_pages(v.len()));
                self.app
                    .push(self.file, &page::encode_overflow(&v, id, 0))?;
                Val::Overflow {
                    page: id,
                    len: v.len() as u32,
                }
            }
            v => v,
        };
        self.add(0, key.into(), Some(val), 0)
    }

    fn add(&mut self, level: usize, key: Box<[u8]>, val: Option<Val>, id: u64) -> Result<()> {
        if self.levels.len() <= level {
            self.levels.push(Level::new());
        }
        let need = Self::entry_bytes(level, &key, val.as_ref());
        if self.levels[level].bytes + need > PAGE_SIZE {
            self.emit(level)?;
        }
        let l = &mut self.levels[level];
        l.bytes += need;
        l.keys.push(key);
        match val {
            Some(v) => l.vals.push(v),
            None => l.ids.push(id),
        }
        Ok(())
    }

    /// Writes the pending entries of `level` as one page and adds it to the level above.
    fn emit(&mut self, level: usize) -> Result<()> {
        let l = &mut self.levels[level];
        let keys = std::mem::take(&mut l.keys);
        let vals = std::mem::take(&mut l.vals);
        let ids = std::mem::take(&mut l.ids);
        l.bytes = HEADER_BYTES;
        l.pages += 1;
        let mut b = PageBuilder::new(keys.len());
        if level == 0 {
            for (k, v) in keys.iter().zip(&vals) {
                match v {
                    Val::Inline(v) => b.leaf_inline(k, v),
                    Val::Overflow { page, len } => b.leaf_overflow(k, *page, *len),
                    Val::Large(_) => unreachable!("large values are written before their leaf"),
                }
            }
        } else {
            for (k, id) in keys.iter().zip(&ids) {
                b.branch(k, *id);
            }
        }
        let id = self.app.reserve(1);
        let kind = if level == 0 { KIND_LEAF } else { KIND_BRANCH };
        self.app.push(self.file, &b.finish(kind, id, 0))?;
        let first = keys.into_iter().next().unwrap_or_default();
        self.add(level + 1, first, None, id)
    }

    /// Flushes every level bottom-up; returns the root page, if the tree has entries.
    fn finish(&mut self) -> Result<Option<u64>> {
        let mut level = 0;
        while level < self.levels.len() {
            let l = &self.levels[level];
            let top = level + 1 == self.levels.len();
            if top && l.pages == 0 && l.keys.len() == 1 && level > 0 {
                let root = l.ids[0];
                self.levels.clear();
                return Ok(Some(root));
            }
            if !l.keys.is_empty() {
                self.emit(level)?;
            }
            level += 1;
        }
        Ok(None)
    }
}

fn build(
    src: &Roots,
    dir: &Dir,
    tmp: PathBuf,
    cache_pages: usize,
    cancel: &AtomicBool,
) -> Result<FileState> {
    let scratch = {
        let mut s = tmp.as_os_str().to_owned();
        s.push(".new");
        PathBuf::from(s)
    };
    create_file(dir, &tmp, &scratch)?;
    let f = dir.open(&tmp, true).map_err(|e| io_err(&tmp, e))?;
    let file = Arc::new(FileShared::open(f, tmp.clone(), cache_pages)?);
    let mut roots = [None, None, None, None, None, None, None, None];
    let mut loader = Loader {
        file: &file,
        app: Appender::new(1),
        levels: Vec::new(),
    };
    for (t, root) in roots.iter_mut().enumerate().take(MAX_TREES) {
        for (n, kv) in src
            .range(t as TreeId, Bound::Unbounded, Bound::Unbounded, false)
            .enumerate()
        {
            if n % 4096 == 0 && cancel.load(Ordering::Relaxed) {
                return Err(BtreeError::Io {
                    path: tmp,
                    source: std::io::Error::other("cancelled"),
                });
            }
            let (k, v) = kv?;
            loader.add_leaf(&k, &v)?;
        }
        *root = loader.finish()?.map(NodeRef::Disk);
    }
    loader.app.flush(&file)?;
    file.file.sync_data().map_err(|e| io_err(&tmp, e))?;
    let next_page = loader.app.next_page;
    let mut last = empty_commit();
    last.live_bytes = next_page * PAGE_SIZE as u64;
    Ok(FileState {
        cur: Roots {
            file: file.clone(),
            roots,
        },
        next_page,
        last,
        live_bytes: next_page * PAGE_SIZE as u64,
        freed_bytes: 0,
        put_bytes: 0,
    })
}
