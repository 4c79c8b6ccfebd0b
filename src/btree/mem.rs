//! [`MemDisk`] and [`MemFile`]: the tree file's in-memory twin for simulations and crash
//! tests, with a disk's faults (the WAL's is [`crate::wal::MemWal`]).
//!
//! A [`MemDisk`] stands for the file system: paths name [`MemFile`]s. With
//! [`DbOptions::mem_disk`](super::DbOptions::mem_disk) set, everything the tree does to
//! files happens on it: opening, creating (the temporary file and its rename), the
//! leftovers `Db::open` deletes, and space reclamation's new file and its rename over the
//! old one. Each file keeps what reads see (every write so far, as the OS page cache
//! would) and what the disk holds (every change a completed `sync_data` or `sync_all`
//! covered). What it adds is the disk's misbehaviour, on demand:
//!
//! - [`MemDisk::fail_after`]: the power fails after that many more operations (writes,
//!   syncs, length changes, creates, renames, removes, directory syncs, on any file of the
//!   disk; opening and reading do not count). Each operation from then on fails with an
//!   I/O error and changes nothing, so a writer stops exactly there, half way through a
//!   commit if it was in one.
//! - [`MemDisk::crash`]: power loss. In every file, each write not covered by a completed
//!   sync reached the disk or not, 512-byte sector by sector ([`SECTOR_BYTES`], aligned to
//!   the file), as `keep` says for each sector: in any order, a later sector may survive an
//!   earlier one. A `set_len` not covered by a sync survives or not, as `keep` says. A file
//!   then holds what reached the disk: a sector that reached it past the file's end
//!   lengthens the file, a lost sector holds what the disk held there before (zeros past
//!   the old end). Handles opened before the crash are dead (their process is gone): every
//!   operation on them fails.
//! - [`MemFile::flip_bit`]: one stored bit changes.
//!
//! Directory operations (create, rename, remove) are durable at once: a crash never undoes
//! one. The tree relies on this only where it syncs the directory afterwards (a new file
//! and a reclaimed file are renamed into place, then the directory is fsynced; see
//! `docs/btree.md`); the removals it does not sync are of leftovers, which the next open
//! deletes again if a crash brings them back. A real disk may lose a rename not followed by
//! a directory sync: this twin does not model that, nor I/O errors other than a power
//! failure, a full disk, or a write torn inside a sector.

use crate::wal::SECTOR_BYTES;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A change not yet covered by a completed sync.
enum Unsynced {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

struct Image {
    /// What reads see: every change so far.
    cached: Vec<u8>,
    /// What the disk holds for certain: every change a completed sync covered.
    synced: Vec<u8>,
    /// Changes since the last completed sync, in order.
    unsynced: Vec<Unsynced>,
    /// Set by a crash: the handle belongs to a process that is gone.
    dead: bool,
}

/// Whether the disk still has power; shared by the disk and its files.
struct Power {
    /// Operations left before the power fails; `None`: no failure planned.
    ops_left: Mutex<Option<u64>>,
}

impl Power {
    fn new() -> Arc<Power> {
        Arc::new(Power {
            ops_left: Mutex::new(None),
        })
    }

    /// Takes one operation's worth of power, or fails if there is none left.
    fn spend(&self) -> io::Result<()> {
        let mut left = self.ops_left.lock();
        match left.as_mut() {
            None => Ok(()),
            Some(0) => Err(power_lost()),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
        }
    }
}

fn power_lost() -> io::Error {
    io::Error::other("simulated power failure: the disk refuses every operation")
}

fn dead_handle() -> io::Error {
    io::Error::other("file handle opened before a simulated crash")
}

/// Writes `bytes` at `offset` into `image`, extending it with zeros as needed.
fn write_into(image: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let start = offset as usize;
    let end = start + bytes.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[start..end].copy_from_slice(bytes);
}

/// One in-memory file of a [`MemDisk`] (see the module doc for its faults).
pub struct MemFile {
    image: Mutex<Image>,
    power: Arc<Power>,
}

impl MemFile {
    fn new(bytes: Vec<u8>, power: Arc<Power>) -> Arc<MemFile> {
        Arc::new(MemFile {
            image: Mutex::new(Image {
                cached: bytes.clone(),
                synced: bytes,
                unsynced: Vec::new(),
                dead: false,
            }),
            power,
        })
    }

    /// The file's length, as reads see it.
    pub fn len(&self) -> u64 {
        self.image.lock().cached.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The file's bytes, as reads see them.
    pub fn contents(&self) -> Vec<u8> {
        self.image.lock().cached.clone()
    }

    /// Changes (writes and length changes) not yet covered by a completed sync.
    pub fn unsynced_changes(&self) -> usize {
        self.image.lock().unsynced.len()
    }

    /// Flips bit `bit % 8` of the byte at `offset`, where the disk holds it and where reads
    /// see it (damage to stored data). False if the file is not that long.
    pub fn flip_bit(&self, offset: u64, bit: u8) -> bool {
        let mut image = self.image.lock();
        let image = &mut *image;
        let at = offset as usize;
        let mask = 1u8 << (bit % 8);
        let mut flipped = false;
        for bytes in [&mut image.cached, &mut image.synced] {
            if let Some(b) = bytes.get_mut(at) {
                *b ^= mask;
                flipped = true;
            }
        }
        flipped
    }

    fn live(&self) -> io::Result<parking_lot::MutexGuard<'_, Image>> {
        let image = self.image.lock();
        if image.dead {
            return Err(dead_handle());
        }
        Ok(image)
    }

    /// The length as the tree sees it: fails on a handle a crash killed.
    pub(crate) fn live_len(&self) -> io::Result<u64> {
        Ok(self.live()?.cached.len() as u64)
    }

    pub(crate) fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let image = self.live()?;
        let range = usize::try_from(offset)
            .ok()
            .and_then(|start| Some(start..start.checked_add(buf.len())?));
        match range.and_then(|r| image.cached.get(r)) {
            Some(bytes) => {
                buf.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "failed to fill whole buffer",
            )),
        }
    }

    pub(crate) fn write_all_at(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
        self.power.spend()?;
        let mut image = self.live()?;
        write_into(&mut image.cached, offset, bytes);
        image.unsynced.push(Unsynced::Write {
            offset,
            bytes: bytes.to_vec(),
        });
        Ok(())
    }

    pub(crate) fn set_len(&self, len: u64) -> io::Result<()> {
        self.power.spend()?;
        let mut image = self.live()?;
        image.cached.resize(len as usize, 0);
        image.unsynced.push(Unsynced::SetLen(len));
        Ok(())
    }

    /// `sync_data` and `sync_all` alike: every change so far is on the disk.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.power.spend()?;
        let mut image = self.live()?;
        let image = &mut *image;
        for change in image.unsynced.drain(..) {
            match change {
                Unsynced::Write { offset, bytes } => write_into(&mut image.synced, offset, &bytes),
                Unsynced::SetLen(len) => image.synced.resize(len as usize, 0),
            }
        }
        debug_assert!(
            image.synced == image.cached,
            "a sync leaves both images equal"
        );
        Ok(())
    }

    /// The disk's bytes after a power loss (see [`MemDisk::crash`]); the handle dies.
    fn crash(&self, keep: &mut dyn FnMut() -> bool, loss: &mut CrashLoss) -> Vec<u8> {
        let mut image = self.image.lock();
        let image = &mut *image;
        image.dead = true;
        let mut disk = std::mem::take(&mut image.synced);
        for change in image.unsynced.drain(..) {
            match change {
                Unsynced::Write { offset, bytes } => {
                    let end = offset + bytes.len() as u64;
                    let mut at = offset;
                    while at < end {
                        let next = ((at / SECTOR_BYTES as u64 + 1) * SECTOR_BYTES as u64).min(end);
                        let part = &bytes[(at - offset) as usize..(next - offset) as usize];
                        if keep() {
                            write_into(&mut disk, at, part);
                            loss.sectors_kept += 1;
                        } else {
                            loss.sectors_lost += 1;
                        }
                        at = next;
                    }
                }
                Unsynced::SetLen(len) => {
                    if keep() {
                        disk.resize(len as usize, 0);
                    } else {
                        loss.set_lens_lost += 1;
                    }
                }
            }
        }
        image.cached.clear();
        disk
    }
}

/// What one [`MemDisk::crash`] did to changes not covered by a sync.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CrashLoss {
    /// Sectors of unsynced writes that reached the disk.
    pub sectors_kept: u64,
    /// Sectors of unsynced writes that did not.
    pub sectors_lost: u64,
    /// Unsynced `set_len` calls that did not reach the disk.
    pub set_lens_lost: u64,
}

/// An in-memory file system for the tree: files by path (see the module doc). Share it
/// with `Arc`; every [`super::Db`] opened with it in its options works on these files.
pub struct MemDisk {
    files: Mutex<BTreeMap<PathBuf, Arc<MemFile>>>,
    power: Arc<Power>,
}

impl Default for MemDisk {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemDisk")
            .field("files", &self.paths())
            .finish_non_exhaustive()
    }
}

impl MemDisk {
    /// An empty disk with power.
    pub fn new() -> MemDisk {
        MemDisk {
            files: Mutex::new(BTreeMap::new()),
            power: Power::new(),
        }
    }

    /// The file at `path`, if there is one.
    pub fn file(&self, path: impl AsRef<Path>) -> Option<Arc<MemFile>> {
        self.files.lock().get(path.as_ref()).cloned()
    }

    /// Every file's path, in order.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.files.lock().keys().cloned().collect()
    }

    /// Puts a file holding `bytes` at `path`, on the disk (as if written and synced),
    /// replacing any file there. Open handles of a replaced file keep the old one.
    pub fn write_file(&self, path: impl AsRef<Path>, bytes: &[u8]) {
        let file = MemFile::new(bytes.to_vec(), self.power.clone());
        self.files.lock().insert(path.as_ref().to_path_buf(), file);
    }

    /// The power fails after `ops` more operations: see the module doc.
    pub fn fail_after(&self, ops: u64) {
        *self.power.ops_left.lock() = Some(ops);
    }

    /// Power loss on every file: each change not covered by a completed sync reaches the
    /// disk or not as `keep` says (per sector of a write, per `set_len`), files in path
    /// order, changes in the order they were made. Every handle opened before is dead from
    /// now on; the power is back (a failure set by [`MemDisk::fail_after`] is cleared).
    pub fn crash(&self, mut keep: impl FnMut() -> bool) -> CrashLoss {
        let mut files = self.files.lock();
        let mut loss = CrashLoss::default();
        for file in files.values_mut() {
            let disk = file.crash(&mut keep, &mut loss);
            *file = MemFile::new(disk, self.power.clone());
        }
        *self.power.ops_left.lock() = None;
        loss
    }

    pub(crate) fn open(&self, path: &Path) -> io::Result<Arc<MemFile>> {
        self.file(path).ok_or_else(|| not_found(path))
    }

    /// Creates an empty file at `path` (a new one is on the disk at once), or truncates the
    /// one there (an unsynced change), and opens it.
    pub(crate) fn create(&self, path: &Path) -> io::Result<Arc<MemFile>> {
        let mut files = self.files.lock();
        if let Some(file) = files.get(path) {
            file.set_len(0)?;
            return Ok(file.clone());
        }
        self.power.spend()?;
        let file = MemFile::new(Vec::new(), self.power.clone());
        files.insert(path.to_path_buf(), file.clone());
        Ok(file)
    }

    pub(crate) fn remove(&self, path: &Path) -> io::Result<()> {
        self.power.spend()?;
        match self.files.lock().remove(path) {
            Some(_) => Ok(()),
            None => Err(not_found(path)),
        }
    }

    /// Moves the file at `from` to `to`, replacing any file there; open handles follow
    /// the file, as they follow an inode.
    pub(crate) fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.power.spend()?;
        let mut files = self.files.lock();
        let file = files.remove(from).ok_or_else(|| not_found(from))?;
        files.insert(to.to_path_buf(), file);
        Ok(())
    }

    /// A directory sync: directory operations are durable at once here, so it only takes
    /// power (and fails without).
    pub(crate) fn sync_dir(&self) -> io::Result<()> {
        self.power.spend()
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("no file {} on the in-memory disk", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{Random, SplitMix64};

    fn read_all(f: &MemFile) -> Vec<u8> {
        let mut buf = vec![0; f.len() as usize];
        f.read_exact_at(&mut buf, 0).unwrap();
        buf
    }

    /// Reads see every write; a crash keeps what was synced, and of the rest exactly the
    /// sectors `keep` chose, however writes overlap and lengths change.
    #[test]
    fn a_crash_keeps_synced_bytes_and_the_chosen_sectors_of_the_rest() {
        for seed in 0..200 {
            let mut rng = SplitMix64::new(seed);
            let disk = MemDisk::new();
            let path = Path::new("f");
            let f = disk.create(path).unwrap();
            // The model: the synced bytes, and the unsynced changes in order.
            let mut synced: Vec<u8> = Vec::new();
            let mut cached: Vec<u8> = Vec::new();
            let mut changes: Vec<Unsynced> = Vec::new();
            for _ in 0..rng.below(20) + 1 {
                match rng.below(6) {
                    0 => {
                        f.sync().unwrap();
                        synced = cached.clone();
                        changes.clear();
                    }
                    1 => {
                        let len = rng.below(cached.len() as u64 + 1);
                        f.set_len(len).unwrap();
                        cached.resize(len as usize, 0);
                        changes.push(Unsynced::SetLen(len));
                    }
                    _ => {
                        let offset = rng.below(cached.len() as u64 + 2000);
                        let bytes = vec![rng.below(255) as u8 + 1; rng.below(3000) as usize];
                        f.write_all_at(&bytes, offset).unwrap();
                        write_into(&mut cached, offset, &bytes);
                        changes.push(Unsynced::Write { offset, bytes });
                    }
                }
                assert_eq!(read_all(&f), cached, "seed {seed}: reads see every write");
            }
            let choices: Vec<bool> = (0..10_000).map(|_| rng.below(2) == 0).collect();
            let mut want = synced;
            let mut next = choices.iter().copied();
            for change in changes {
                match change {
                    Unsynced::Write { offset, bytes } => {
                        let end = offset as usize + bytes.len();
                        let mut at = offset as usize;
                        while at < end {
                            let stop = ((at / SECTOR_BYTES + 1) * SECTOR_BYTES).min(end);
                            if next.next().unwrap() {
                                let part = &bytes[at - offset as usize..stop - offset as usize];
                                write_into(&mut want, at as u64, part);
                            }
                            at = stop;
                        }
                    }
                    Unsynced::SetLen(len) => {
                        if next.next().unwrap() {
                            want.resize(len as usize, 0);
                        }
                    }
                }
            }
            let mut given = choices.iter().copied();
            disk.crash(|| given.next().unwrap());
            assert!(
                f.read_exact_at(&mut [0], 0).is_err(),
                "the old handle is dead"
            );
            let after = disk.open(path).unwrap();
            assert_eq!(read_all(&after), want, "seed {seed}");
            assert_eq!(after.unsynced_changes(), 0);
        }
    }

    #[test]
    fn the_power_fails_after_the_given_operations_and_changes_nothing_more() {
        let disk = MemDisk::new();
        let f = disk.create(Path::new("a")).unwrap();
        f.write_all_at(b"synced", 0).unwrap();
        f.sync().unwrap();
        disk.fail_after(2);
        f.write_all_at(b"SY", 0).unwrap();
        disk.rename(Path::new("a"), Path::new("b")).unwrap();
        assert!(f.write_all_at(b"lost", 6).is_err());
        assert!(f.sync().is_err());
        assert!(disk.create(Path::new("c")).is_err());
        assert_eq!(
            f.contents(),
            b"SYnced",
            "reads see the write before the failure"
        );
        let loss = disk.crash(|| false);
        assert_eq!(loss.sectors_lost, 1);
        assert_eq!(
            disk.paths(),
            vec![PathBuf::from("b")],
            "the rename is durable"
        );
        assert_eq!(disk.file("b").unwrap().contents(), b"synced");
        disk.file("b").unwrap().write_all_at(b"!", 6).unwrap();
    }

    #[test]
    fn a_flipped_bit_reaches_reads_and_the_disk() {
        let disk = MemDisk::new();
        disk.write_file("f", &[0u8; 10]);
        let f = disk.file("f").unwrap();
        assert!(f.flip_bit(3, 9));
        assert!(!f.flip_bit(10, 0));
        assert_eq!(f.contents()[3], 2);
        disk.crash(|| true);
        assert_eq!(disk.file("f").unwrap().contents()[3], 2);
    }
}
