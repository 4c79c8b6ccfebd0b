//! Where the tree's bytes live: [`Backing`] is one open file, on the disk or a [`MemFile`];
//! [`Dir`] names files by path, in the file system or on a [`MemDisk`]. Enums rather than
//! trait objects: every page read goes through here, and the disk's arm is the code it
//! always was.

use super::file::io_err;
use super::mem::{MemDisk, MemFile};
use super::{DbOptions, Result};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// One open database file.
pub(crate) enum Backing {
    Disk(File),
    Mem(Arc<MemFile>),
}

impl Backing {
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match self {
            Backing::Disk(f) => f.read_exact_at(buf, offset),
            Backing::Mem(m) => m.read_exact_at(buf, offset),
        }
    }

    pub fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        match self {
            Backing::Disk(f) => f.write_all_at(buf, offset),
            Backing::Mem(m) => m.write_all_at(buf, offset),
        }
    }

    pub fn sync_data(&self) -> io::Result<()> {
        match self {
            Backing::Disk(f) => f.sync_data(),
            Backing::Mem(m) => m.sync(),
        }
    }

    pub fn sync_all(&self) -> io::Result<()> {
        match self {
            Backing::Disk(f) => f.sync_all(),
            Backing::Mem(m) => m.sync(),
        }
    }

    pub fn set_len(&self, len: u64) -> io::Result<()> {
        match self {
            Backing::Disk(f) => f.set_len(len),
            Backing::Mem(m) => m.set_len(len),
        }
    }

    pub fn len(&self) -> io::Result<u64> {
        match self {
            Backing::Disk(f) => Ok(f.metadata()?.len()),
            Backing::Mem(m) => m.live_len(),
        }
    }

    /// Another handle on the same file (a reclaimed file keeps its descriptor across the
    /// rename that puts it in place).
    /// Identifies the file while it exists: its inode on the disk, the address of the
    /// shared in-memory file for the twin.
    pub fn file_id(&self) -> u64 {
        match self {
            Backing::Disk(f) => {
                use std::os::unix::fs::MetadataExt;
                f.metadata().map_or(0, |m| m.ino())
            }
            Backing::Mem(m) => Arc::as_ptr(m) as usize as u64,
        }
    }

    pub fn try_clone(&self) -> io::Result<Backing> {
        match self {
            Backing::Disk(f) => Ok(Backing::Disk(f.try_clone()?)),
            Backing::Mem(m) => Ok(Backing::Mem(m.clone())),
        }
    }

    /// Starts writeback of a written range and waits for it (no cache flush: a later
    /// `sync_data` still makes it durable). In memory there is nothing to do: only a sync
    /// makes a write durable there too.
    pub fn write_out(&self, offset: u64, len: usize) -> io::Result<()> {
        match self {
            Backing::Disk(f) => {
                use std::os::unix::io::AsRawFd;
                let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER;
                // SAFETY: a plain syscall on an open descriptor; no memory is passed.
                let r = unsafe {
                    libc::sync_file_range(f.as_raw_fd(), offset as i64, len as i64, flags)
                };
                if r != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            }
            Backing::Mem(_) => Ok(()),
        }
    }
}

/// Where database files are found by path: the file system, or an in-memory disk.
#[derive(Clone)]
pub(crate) enum Dir {
    Disk,
    Mem(Arc<MemDisk>),
}

impl Dir {
    pub fn of(opts: &DbOptions) -> Dir {
        match &opts.mem_disk {
            Some(disk) => Dir::Mem(disk.clone()),
            None => Dir::Disk,
        }
    }

    /// Opens an existing file, for reading and (with `write`) writing.
    pub fn open(&self, path: &Path, write: bool) -> io::Result<Backing> {
        match self {
            Dir::Disk => Ok(Backing::Disk(
                OpenOptions::new().read(true).write(write).open(path)?,
            )),
            Dir::Mem(disk) => Ok(Backing::Mem(disk.open(path)?)),
        }
    }

    /// Creates a file, or empties the one at `path`, and opens it for writing.
    pub fn create(&self, path: &Path) -> io::Result<Backing> {
        match self {
            Dir::Disk => Ok(Backing::Disk(File::create(path)?)),
            Dir::Mem(disk) => Ok(Backing::Mem(disk.create(path)?)),
        }
    }

    pub fn exists(&self, path: &Path) -> bool {
        match self {
            Dir::Disk => path.exists(),
            Dir::Mem(disk) => disk.file(path).is_some(),
        }
    }

    /// The length of the file at `path` (`NotFound` if there is none).
    pub fn len_of(&self, path: &Path) -> io::Result<u64> {
        match self {
            Dir::Disk => Ok(std::fs::metadata(path)?.len()),
            Dir::Mem(disk) => Ok(disk.open(path)?.len()),
        }
    }

    pub fn remove(&self, path: &Path) -> io::Result<()> {
        match self {
            Dir::Disk => std::fs::remove_file(path),
            Dir::Mem(disk) => disk.remove(path),
        }
    }

    pub fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        match self {
            Dir::Disk => std::fs::rename(from, to),
            Dir::Mem(disk) => disk.rename(from, to),
        }
    }

    /// Makes the directory holding `path` durable (its entries: created, renamed files).
    pub fn sync_dir(&self, path: &Path) -> Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        match self {
            Dir::Disk => File::open(dir).and_then(|d| d.sync_all()),
            Dir::Mem(disk) => disk.sync_dir(),
        }
        .map_err(|e| io_err(dir, e))
    }
}
