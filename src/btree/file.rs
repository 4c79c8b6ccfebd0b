//! The database file shared by the writer and every reader: positioned reads of pages
//! (`pread`, safe from any thread), a bounded cache of branch pages, and the append path.

use super::backing::Backing;
use super::page::{self, PageBuf, Seal, PAGE_SIZE};
use super::{BtreeError, Result};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const CACHE_SHARDS: usize = 16;

pub struct FileShared {
    pub file: Backing,
    pub path: PathBuf,
    /// How the file's commit records are sealed, as its header says.
    pub seal: Seal,
    cache: Vec<Mutex<HashMap<u64, Arc<PageBuf>>>>,
    cache_per_shard: usize,
}

pub fn io_err(path: &Path, source: std::io::Error) -> BtreeError {
    BtreeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl FileShared {
    /// The database file `file` at `path`, its header checked: a file too short for one, or
    /// whose header is damaged or foreign, is `Corrupt`.
    pub fn open(file: Backing, path: PathBuf, cache_pages: usize) -> Result<FileShared> {
        let len = file.len().map_err(|e| io_err(&path, e))?;
        if len < PAGE_SIZE as u64 {
            return Err(BtreeError::Corrupt {
                path,
                offset: 0,
                reason: "file shorter than its header page".into(),
            });
        }
        let mut header = vec![0u8; PAGE_SIZE];
        file.read_exact_at(&mut header, 0)
            .map_err(|e| io_err(&path, e))?;
        let seal = page::check_file_header(&header, &path)?;
        Ok(FileShared::new(file, path, cache_pages, seal))
    }

    /// The same file under another name (after a rename), or a file whose header was just
    /// written with `seal`.
    pub fn new(file: Backing, path: PathBuf, cache_pages: usize, seal: Seal) -> FileShared {
        FileShared {
            file,
            path,
            seal,
            cache: (0..CACHE_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            cache_per_shard: cache_pages.div_ceil(CACHE_SHARDS),
        }
    }

    pub fn read_raw(&self, page_id: u64, pages: u64) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; pages as usize * PAGE_SIZE];
        self.file
            .read_exact_at(&mut buf, page_id * PAGE_SIZE as u64)
            .map_err(|e| self.read_error(page_id, e))?;
        Ok(buf)
    }

    fn read_error(&self, page_id: u64, e: std::io::Error) -> BtreeError {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            BtreeError::Corrupt {
                path: self.path.clone(),
                offset: page_id * PAGE_SIZE as u64,
                reason: "page reference points past the end of the file".into(),
            }
        } else {
            io_err(&self.path, e)
        }
    }

    /// Reads and validates a tree page, through the cache for branch pages.
    pub fn page(&self, page_id: u64) -> Result<Arc<PageBuf>> {
        let shard = &self.cache[(page_id as usize) % CACHE_SHARDS];
        if let Some(p) = shard.lock().get(&page_id) {
            return Ok(p.clone());
        }
        let raw = self.read_raw(page_id, 1)?;
        let page = Arc::new(PageBuf::parse(raw.into_boxed_slice(), page_id, &self.path)?);
        if !page.is_leaf() && self.cache_per_shard > 0 {
            let mut map = shard.lock();
            if map.len() >= self.cache_per_shard {
                // Pages never change, so any victim is as good as another for correctness;
                // branch pages are few, so the cache rarely fills at all.
                if let Some(&victim) = map.keys().next() {
                    map.remove(&victim);
                }
            }
            map.insert(page_id, page.clone());
        }
        Ok(page)
    }

    /// Reads an overflow value run.
    pub fn overflow(&self, page_id: u64, len: u32) -> Result<Vec<u8>> {
        let raw = self.read_raw(page_id, page::overflow_pages(len as usize))?;
        page::decode_overflow(&raw, page_id, len, &self.path)
    }
}

/// Buffers appended pages and writes them in large sequential chunks.
pub struct Appender {
    buf: Vec<u8>,
    /// Page id of the first buffered byte.
    buf_start: u64,
    /// Next page id to hand out.
    pub next_page: u64,
    /// CRC32C over everything appended since `begin`.
    pub crc: u32,
    /// Waits for each chunk to reach the device before taking the next (see
    /// [`Appender::paced`]).
    paced: bool,
}

const APPEND_CHUNK_BYTES: usize = 1 << 20;

impl Appender {
    pub fn new(next_page: u64) -> Appender {
        Appender {
            buf: Vec::new(),
            buf_start: next_page,
            next_page,
            crc: 0,
            paced: false,
        }
    }

    /// As [`Appender::new`], but each chunk is written out to the device, and waited for,
    /// before the next is encoded: a commit written while the WAL takes writes reaches the
    /// device a megabyte at a time instead of as one burst at its `fdatasync`, which every
    /// WAL write in flight would wait behind.
    pub fn paced(next_page: u64) -> Appender {
        Appender {
            paced: true,
            ..Appender::new(next_page)
        }
    }

    /// Reserves `pages` page ids for data the caller encodes with them.
    pub fn reserve(&mut self, pages: u64) -> u64 {
        let id = self.next_page;
        self.next_page += pages;
        id
    }

    /// Appends encoded pages that were reserved in order.
    pub fn push(&mut self, file: &FileShared, bytes: &[u8]) -> Result<()> {
        debug_assert_eq!(bytes.len() % PAGE_SIZE, 0);
        debug_assert_eq!(
            self.buf_start + ((self.buf.len() + bytes.len()) / PAGE_SIZE) as u64,
            self.next_page
        );
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= APPEND_CHUNK_BYTES {
            self.flush(file)?;
        }
        Ok(())
    }

    pub fn flush(&mut self, file: &FileShared) -> Result<()> {
        if !self.buf.is_empty() {
            let offset = self.buf_start * PAGE_SIZE as u64;
            file.file
                .write_all_at(&self.buf, offset)
                .map_err(|e| io_err(&file.path, e))?;
            if self.paced {
                write_out(file, offset, self.buf.len())?;
            }
            self.buf_start += (self.buf.len() / PAGE_SIZE) as u64;
            self.buf.clear();
        }
        Ok(())
    }
}

/// Starts writeback of a written range and waits for it (no cache flush: the commit's
/// `fdatasync` still makes it durable).
fn write_out(file: &FileShared, offset: u64, len: usize) -> Result<()> {
    file.file
        .write_out(offset, len)
        .map_err(|e| io_err(&file.path, e))
}
