//! On-disk page layout: encoding and validated decoding of leaf, branch, overflow, commit
//! and file-header pages. Byte diagrams live in `docs/btree.md`; this file is their code.

use super::{BtreeError, Result, TreeId, KEY_BYTES_MAX, MAX_TREES, VALUE_BYTES_MAX};
use std::path::Path;

/// Every page is this many bytes; page `n` starts at byte `n * PAGE_SIZE`.
pub const PAGE_SIZE: usize = 4096;
/// Bytes of the header common to every page.
pub const HEADER_BYTES: usize = 32;
/// Page id meaning "no page" (an empty tree, no previous commit).
pub const NO_PAGE: u64 = u64::MAX;

pub const KIND_LEAF: u8 = 1;
pub const KIND_BRANCH: u8 = 2;
pub const KIND_OVERFLOW: u8 = 3;
pub const KIND_COMMIT: u8 = 4;
pub const KIND_FILE_HEADER: u8 = 5;

pub const FILE_MAGIC: &[u8; 8] = b"CAIRNDB\0";
pub const COMMIT_MAGIC: &[u8; 8] = b"CAIRNCMT";
/// The format new files are written in. Version 2 adds the file's salt (see [`Seal`]);
/// files of version 1 are still opened, and written on in their own format.
pub const FORMAT_VERSION: u32 = 2;
/// The first format version, without a salt.
const FORMAT_VERSION_UNSALTED: u32 = 1;

/// Per-entry bytes in a leaf besides key and value: slot (2) + klen (2) + flags (1) + pad (1) + vlen (4).
pub const LEAF_ENTRY_OVERHEAD: usize = 10;
/// Per-entry bytes in a branch besides the key: slot (2) + child (8) + klen (2).
pub const BRANCH_ENTRY_OVERHEAD: usize = 12;
/// Leaf entry flag: the value lives in an overflow run; the entry holds its first page id.
pub const FLAG_OVERFLOW: u8 = 1;
/// Values whose entry would exceed this many bytes go to an overflow run.
pub const INLINE_ENTRY_MAX: usize = PAGE_SIZE / 4;

fn rd_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn rd_u32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}
fn rd_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// Writes the common header and seals the page with its CRC32C (over bytes 4..).
pub fn seal(page: &mut [u8], kind: u8, count: u16, page_id: u64, commit_seq: u64) {
    debug_assert_eq!(page.len(), PAGE_SIZE);
    page[4] = kind;
    page[5] = 0;
    page[6..8].copy_from_slice(&count.to_le_bytes());
    page[8..16].copy_from_slice(&page_id.to_le_bytes());
    page[16..24].copy_from_slice(&commit_seq.to_le_bytes());
    let crc = crc32c::crc32c(&page[4..]);
    page[0..4].copy_from_slice(&crc.to_le_bytes());
}

pub fn kind_of(page: &[u8]) -> u8 {
    page[4]
}

/// Checks a page read from `page_id`: its CRC, its recorded id, and its kind.
pub fn verify(page: &[u8], page_id: u64, path: &Path) -> Result<()> {
    let corrupt = |reason: String| BtreeError::Corrupt {
        path: path.to_path_buf(),
        offset: page_id * PAGE_SIZE as u64,
        reason,
    };
    if page.len() != PAGE_SIZE {
        return Err(corrupt(format!("short page of {} bytes", page.len())));
    }
    if rd_u32(page, 0) != crc32c::crc32c(&page[4..]) {
        return Err(corrupt("page checksum mismatch".into()));
    }
    let recorded = rd_u64(page, 8);
    if recorded != page_id {
        return Err(corrupt(format!(
            "page records id {recorded}, expected {page_id}"
        )));
    }
    Ok(())
}

/// A validated tree page (leaf or branch) read from disk, accessed in place.
pub struct PageBuf {
    bytes: Box<[u8]>,
}

impl PageBuf {
    /// Validates the page's structure so that the accessors below cannot index out of bounds.
    pub fn parse(bytes: Box<[u8]>, page_id: u64, path: &Path) -> Result<PageBuf> {
        verify(&bytes, page_id, path)?;
        let corrupt = |reason: &str| BtreeError::Corrupt {
            path: path.to_path_buf(),
            offset: page_id * PAGE_SIZE as u64,
            reason: reason.to_string(),
        };
        let kind = kind_of(&bytes);
        if kind != KIND_LEAF && kind != KIND_BRANCH {
            return Err(corrupt("expected a leaf or branch page"));
        }
        let page = PageBuf { bytes };
        let n = page.count();
        if n == 0 || HEADER_BYTES + 2 * n > PAGE_SIZE {
            return Err(corrupt("bad entry count"));
        }
        // Entries may not overlap in a way that makes a page hold more than a page: the
        // writer copies them into a memory node, which must fit back into one.
        let mut used = HEADER_BYTES;
        for i in 0..n {
            let off = page.slot(i);
            let fixed = if kind == KIND_LEAF { 8 } else { 10 };
            if off < HEADER_BYTES + 2 * n || off + fixed > PAGE_SIZE {
                return Err(corrupt("entry offset out of bounds"));
            }
            let (klen, body) = if kind == KIND_LEAF {
                let klen = rd_u16(&page.bytes, off) as usize;
                let vlen = rd_u32(&page.bytes, off + 4) as usize;
                let v = if page.bytes[off + 2] & FLAG_OVERFLOW != 0 {
                    8
                } else {
                    if LEAF_ENTRY_OVERHEAD + klen + vlen > INLINE_ENTRY_MAX {
                        return Err(corrupt("inline value larger than an inline entry holds"));
                    }
                    vlen
                };
                (klen, v)
            } else {
                (rd_u16(&page.bytes, off + 8) as usize, 0)
            };
            if klen > KEY_BYTES_MAX {
                return Err(corrupt("key longer than the key limit"));
            }
            if off + fixed + klen + body > PAGE_SIZE {
                return Err(corrupt("entry extends past the page"));
            }
            used += 2 + fixed + klen + body;
            if used > PAGE_SIZE {
                return Err(corrupt("entries hold more than a page"));
            }
            // Every page a page refers to was written before it (children before parents,
            // an overflow run before its leaf): a reference forward, or to the page itself,
            // is damage, and following it could loop forever.
            if kind == KIND_BRANCH {
                if page.child(i) >= page_id {
                    return Err(corrupt("child page is not older than its parent"));
                }
            } else if let DiskVal::Overflow { page: run, len } = page.value(i) {
                let end = run.checked_add(overflow_pages(len as usize));
                if len as usize > VALUE_BYTES_MAX || end.is_none_or(|end| end > page_id) {
                    return Err(corrupt("overflow reference out of range"));
                }
            }
        }
        Ok(page)
    }

    pub fn is_leaf(&self) -> bool {
        kind_of(&self.bytes) == KIND_LEAF
    }
    /// Bytes the page's content takes (header, slots, entries): its fill.
    pub fn used_bytes(&self) -> usize {
        let per_entry = |i: usize| {
            if self.is_leaf() {
                let v = match self.value(i) {
                    DiskVal::Inline(v) => v.len(),
                    DiskVal::Overflow { .. } => 8,
                };
                LEAF_ENTRY_OVERHEAD + self.key(i).len() + v
            } else {
                BRANCH_ENTRY_OVERHEAD + self.key(i).len()
            }
        };
        HEADER_BYTES + (0..self.count()).map(per_entry).sum::<usize>()
    }
    pub fn count(&self) -> usize {
        rd_u16(&self.bytes, 6) as usize
    }
    fn slot(&self, i: usize) -> usize {
        rd_u16(&self.bytes, HEADER_BYTES + 2 * i) as usize
    }
    /// Key of entry `i` (for a branch, the smallest key of child `i`; empty for child 0).
    pub fn key(&self, i: usize) -> &[u8] {
        let off = self.slot(i);
        if self.is_leaf() {
            let klen = rd_u16(&self.bytes, off) as usize;
            &self.bytes[off + 8..off + 8 + klen]
        } else {
            let klen = rd_u16(&self.bytes, off + 8) as usize;
            &self.bytes[off + 10..off + 10 + klen]
        }
    }
    pub fn child(&self, i: usize) -> u64 {
        rd_u64(&self.bytes, self.slot(i))
    }
    /// Value of leaf entry `i`: inline bytes, or an overflow run's (first page, length).
    pub fn value(&self, i: usize) -> DiskVal<'_> {
        let off = self.slot(i);
        let klen = rd_u16(&self.bytes, off) as usize;
        let vlen = rd_u32(&self.bytes, off + 4);
        let at = off + 8 + klen;
        if self.bytes[off + 2] & FLAG_OVERFLOW != 0 {
            DiskVal::Overflow {
                page: rd_u64(&self.bytes, at),
                len: vlen,
            }
        } else {
            DiskVal::Inline(&self.bytes[at..at + vlen as usize])
        }
    }
}

pub enum DiskVal<'a> {
    Inline(&'a [u8]),
    Overflow { page: u64, len: u32 },
}

/// Lays out a leaf or branch page body: slots after the header, entries after the slots.
pub struct PageBuilder {
    pub bytes: Vec<u8>,
    n: usize,
    count: usize,
    data_at: usize,
}

impl PageBuilder {
    pub fn new(count: usize) -> PageBuilder {
        PageBuilder {
            bytes: vec![0u8; PAGE_SIZE],
            n: 0,
            count,
            data_at: HEADER_BYTES + 2 * count,
        }
    }
    fn push_slot(&mut self, need: usize) -> usize {
        assert!(self.n < self.count, "more entries than declared");
        assert!(self.data_at + need <= PAGE_SIZE, "page overflow");
        let at = self.data_at;
        let s = HEADER_BYTES + 2 * self.n;
        self.bytes[s..s + 2].copy_from_slice(&(at as u16).to_le_bytes());
        self.n += 1;
        self.data_at += need;
        at
    }
    pub fn leaf_inline(&mut self, key: &[u8], value: &[u8]) {
        let at = self.push_slot(8 + key.len() + value.len());
        self.leaf_head(at, key, 0, value.len() as u32);
        let v = at + 8 + key.len();
        self.bytes[v..v + value.len()].copy_from_slice(value);
    }
    pub fn leaf_overflow(&mut self, key: &[u8], page: u64, len: u32) {
        let at = self.push_slot(16 + key.len());
        self.leaf_head(at, key, FLAG_OVERFLOW, len);
        let v = at + 8 + key.len();
        self.bytes[v..v + 8].copy_from_slice(&page.to_le_bytes());
    }
    fn leaf_head(&mut self, at: usize, key: &[u8], flags: u8, vlen: u32) {
        self.bytes[at..at + 2].copy_from_slice(&(key.len() as u16).to_le_bytes());
        self.bytes[at + 2] = flags;
        self.bytes[at + 4..at + 8].copy_from_slice(&vlen.to_le_bytes());
        self.bytes[at + 8..at + 8 + key.len()].copy_from_slice(key);
    }
    pub fn branch(&mut self, key: &[u8], child: u64) {
        let at = self.push_slot(10 + key.len());
        self.bytes[at..at + 8].copy_from_slice(&child.to_le_bytes());
        self.bytes[at + 8..at + 10].copy_from_slice(&(key.len() as u16).to_le_bytes());
        self.bytes[at + 10..at + 10 + key.len()].copy_from_slice(key);
    }
    pub fn finish(mut self, kind: u8, page_id: u64, commit_seq: u64) -> Vec<u8> {
        assert_eq!(self.n, self.count, "fewer entries than declared");
        seal(
            &mut self.bytes,
            kind,
            self.count as u16,
            page_id,
            commit_seq,
        );
        self.bytes
    }
}

/// Pages an overflow run of `len` value bytes occupies (the header sits in the first page).
pub fn overflow_pages(len: usize) -> u64 {
    (HEADER_BYTES + len).div_ceil(PAGE_SIZE) as u64
}

/// Encodes a value as an overflow run: header in the first page, the CRC covering the run.
pub fn encode_overflow(value: &[u8], page_id: u64, commit_seq: u64) -> Vec<u8> {
    let pages = overflow_pages(value.len()) as usize;
    let mut run = vec![0u8; pages * PAGE_SIZE];
    run[4] = KIND_OVERFLOW;
    run[8..16].copy_from_slice(&page_id.to_le_bytes());
    run[16..24].copy_from_slice(&commit_seq.to_le_bytes());
    run[24..28].copy_from_slice(&(value.len() as u32).to_le_bytes());
    run[HEADER_BYTES..HEADER_BYTES + value.len()].copy_from_slice(value);
    let crc = crc32c::crc32c(&run[4..]);
    run[0..4].copy_from_slice(&crc.to_le_bytes());
    run
}

/// Checks an overflow run read from `page_id` and returns its value bytes.
pub fn decode_overflow(run: &[u8], page_id: u64, len: u32, path: &Path) -> Result<Vec<u8>> {
    let corrupt = |reason: &str| BtreeError::Corrupt {
        path: path.to_path_buf(),
        offset: page_id * PAGE_SIZE as u64,
        reason: reason.to_string(),
    };
    if run.len() < HEADER_BYTES || rd_u32(run, 0) != crc32c::crc32c(&run[4..]) {
        return Err(corrupt("overflow run checksum mismatch"));
    }
    if kind_of(run) != KIND_OVERFLOW || rd_u64(run, 8) != page_id || rd_u32(run, 24) != len {
        return Err(corrupt("overflow run header does not match its reference"));
    }
    Ok(run[HEADER_BYTES..HEADER_BYTES + len as usize].to_vec())
}

/// How a file's commit records are sealed: its format version, and (version 2) its salt, a
/// random number in the file header that seeds each record's CRC. Open finds the newest
/// commit by scanning back for a page that decodes as a record; without the salt, a
/// client's value stored in an overflow run could hold a page built to decode as one, and a
/// crash while that run was written would make open take it for the newest commit. With the
/// salt, such a page matches with the chance of guessing a 32-bit CRC; nothing but the tree
/// reads it, except that a snapshot is a copy of the file (docs/btree.md, "The salt").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seal {
    version: u32,
    salt: u64,
}

impl Seal {
    /// A new file's: the current format, with a salt drawn from the operating system's
    /// randomness (the keys of std's `RandomState`).
    pub fn fresh() -> Seal {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(std::process::id() as u64);
        Seal {
            version: FORMAT_VERSION,
            salt: h.finish(),
        }
    }

    /// A version 1 file's (records sealed by a plain CRC).
    #[cfg(test)]
    pub fn unsalted() -> Seal {
        Seal {
            version: FORMAT_VERSION_UNSALTED,
            salt: 0,
        }
    }

    /// The CRC of a commit record page (over bytes 4..).
    fn crc(&self, p: &[u8]) -> u32 {
        match self.version {
            FORMAT_VERSION_UNSALTED => crc32c::crc32c(&p[4..]),
            _ => crc32c::crc32c_append(crc32c::crc32c(&self.salt.to_le_bytes()), &p[4..]),
        }
    }
}

/// Every commit record is written twice, in consecutive pages, so that damage to one copy
/// of the newest record is told apart from a torn write (see docs/btree.md).
pub const COMMIT_COPIES: u64 = 2;

/// Contents of a commit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitRecord {
    pub seq: u64,
    /// Page of the record's first copy.
    pub page_id: u64,
    pub applied_index: u64,
    pub applied_term: u64,
    /// First page written by this commit (data pages span `data_start..page_id`).
    pub data_start: u64,
    pub data_crc: u32,
    pub prev_commit: u64,
    pub live_bytes: u64,
    pub roots: [u64; MAX_TREES],
    pub user: Vec<u8>,
}

const C_MAGIC: usize = 32;
const C_VERSION: usize = 40;
const C_NTREES: usize = 44;
const C_APPLIED_INDEX: usize = 48;
const C_APPLIED_TERM: usize = 56;
const C_DATA_START: usize = 64;
const C_DATA_CRC: usize = 72;
const C_USER_LEN: usize = 76;
const C_PREV: usize = 80;
const C_LIVE: usize = 88;
const C_COPY: usize = 96;
const C_ROOTS: usize = 104;
const C_USER: usize = C_ROOTS + 8 * MAX_TREES;
/// Largest opaque user metadata a commit record holds, in bytes.
pub const COMMIT_USER_BYTES_MAX: usize = 2048;
const _: () = assert!(C_USER + COMMIT_USER_BYTES_MAX <= PAGE_SIZE);

impl CommitRecord {
    /// Encodes both copies of the record (`COMMIT_COPIES` pages from `page_id`), sealed for
    /// its file.
    pub fn encode(&self, seal: Seal) -> Vec<u8> {
        let mut out = Vec::with_capacity(COMMIT_COPIES as usize * PAGE_SIZE);
        for copy in 0..COMMIT_COPIES {
            out.extend_from_slice(&self.encode_copy(copy, seal));
        }
        out
    }

    fn encode_copy(&self, copy: u64, file_seal: Seal) -> Vec<u8> {
        assert!(self.user.len() <= COMMIT_USER_BYTES_MAX);
        let mut p = vec![0u8; PAGE_SIZE];
        p[C_COPY..C_COPY + 8].copy_from_slice(&copy.to_le_bytes());
        p[C_MAGIC..C_MAGIC + 8].copy_from_slice(COMMIT_MAGIC);
        p[C_VERSION..C_VERSION + 4].copy_from_slice(&file_seal.version.to_le_bytes());
        p[C_NTREES..C_NTREES + 4].copy_from_slice(&(MAX_TREES as u32).to_le_bytes());
        p[C_APPLIED_INDEX..C_APPLIED_INDEX + 8].copy_from_slice(&self.applied_index.to_le_bytes());
        p[C_APPLIED_TERM..C_APPLIED_TERM + 8].copy_from_slice(&self.applied_term.to_le_bytes());
        p[C_DATA_START..C_DATA_START + 8].copy_from_slice(&self.data_start.to_le_bytes());
        p[C_DATA_CRC..C_DATA_CRC + 4].copy_from_slice(&self.data_crc.to_le_bytes());
        p[C_USER_LEN..C_USER_LEN + 4].copy_from_slice(&(self.user.len() as u32).to_le_bytes());
        p[C_PREV..C_PREV + 8].copy_from_slice(&self.prev_commit.to_le_bytes());
        p[C_LIVE..C_LIVE + 8].copy_from_slice(&self.live_bytes.to_le_bytes());
        for (t, root) in self.roots.iter().enumerate() {
            p[C_ROOTS + 8 * t..C_ROOTS + 8 * t + 8].copy_from_slice(&root.to_le_bytes());
        }
        p[C_USER..C_USER + self.user.len()].copy_from_slice(&self.user);
        seal(&mut p, KIND_COMMIT, 0, self.page_id + copy, self.seq);
        let crc = file_seal.crc(&p);
        p[0..4].copy_from_slice(&crc.to_le_bytes());
        p
    }

    /// Decodes a page that is a copy of a commit record at `page_id` in a file sealed with
    /// `seal`, or `None` if it is not one (wrong kind, bad checksum, wrong id, magic or
    /// version): a torn, damaged or foreign page, or a page of a value built to look like a
    /// record.
    pub fn decode(p: &[u8], page_id: u64, seal: Seal) -> Option<CommitRecord> {
        if p.len() != PAGE_SIZE || kind_of(p) != KIND_COMMIT {
            return None;
        }
        if rd_u32(p, 0) != seal.crc(p) || rd_u64(p, 8) != page_id {
            return None;
        }
        if &p[C_MAGIC..C_MAGIC + 8] != COMMIT_MAGIC
            || rd_u32(p, C_VERSION) != seal.version
            || rd_u32(p, C_NTREES) as usize != MAX_TREES
        {
            return None;
        }
        let user_len = rd_u32(p, C_USER_LEN) as usize;
        let data_start = rd_u64(p, C_DATA_START);
        let copy = rd_u64(p, C_COPY);
        if user_len > COMMIT_USER_BYTES_MAX || copy >= COMMIT_COPIES || copy > page_id {
            return None;
        }
        let page_id = page_id - copy;
        if data_start > page_id {
            return None;
        }
        // Roots and the previous record were written before this record.
        let older = |id: u64| id == NO_PAGE || id < page_id;
        let mut roots = [NO_PAGE; MAX_TREES];
        for (t, root) in roots.iter_mut().enumerate() {
            *root = rd_u64(p, C_ROOTS + 8 * t);
        }
        if !roots.iter().all(|&r| older(r)) || !older(rd_u64(p, C_PREV)) {
            return None;
        }
        Some(CommitRecord {
            seq: rd_u64(p, 16),
            page_id,
            applied_index: rd_u64(p, C_APPLIED_INDEX),
            applied_term: rd_u64(p, C_APPLIED_TERM),
            data_start,
            data_crc: rd_u32(p, C_DATA_CRC),
            prev_commit: rd_u64(p, C_PREV),
            live_bytes: rd_u64(p, C_LIVE),
            roots,
            user: p[C_USER..C_USER + user_len].to_vec(),
        })
    }
}

/// The file header (page 0): magic, format version, page size and (version 2) the salt.
pub fn encode_file_header(file_seal: Seal) -> Vec<u8> {
    let mut p = vec![0u8; PAGE_SIZE];
    p[32..40].copy_from_slice(FILE_MAGIC);
    p[40..44].copy_from_slice(&file_seal.version.to_le_bytes());
    p[44..48].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
    if file_seal.version != FORMAT_VERSION_UNSALTED {
        p[48..56].copy_from_slice(&file_seal.salt.to_le_bytes());
    }
    seal(&mut p, KIND_FILE_HEADER, 0, 0, 0);
    p
}

/// Checks the file header and returns how the file's commit records are sealed.
pub fn check_file_header(p: &[u8], path: &Path) -> Result<Seal> {
    verify(p, 0, path)?;
    let bad = |reason: String| BtreeError::Corrupt {
        path: path.to_path_buf(),
        offset: 0,
        reason,
    };
    if kind_of(p) != KIND_FILE_HEADER || &p[32..40] != FILE_MAGIC {
        return Err(bad("not a cairn database file (bad magic)".into()));
    }
    let version = rd_u32(p, 40);
    if version != FORMAT_VERSION && version != FORMAT_VERSION_UNSALTED {
        return Err(bad(format!("unsupported format version {version}")));
    }
    let page = rd_u32(p, 44);
    if page as usize != PAGE_SIZE {
        return Err(bad(format!(
            "page size {page}, this build uses {PAGE_SIZE}"
        )));
    }
    let salt = match version {
        FORMAT_VERSION_UNSALTED => 0,
        _ => rd_u64(p, 48),
    };
    Ok(Seal { version, salt })
}

/// A tree id is valid if it indexes a root slot.
pub fn check_tree(tree: TreeId) -> Result<usize> {
    if (tree as usize) < MAX_TREES {
        Ok(tree as usize)
    } else {
        Err(BtreeError::BadTree(tree))
    }
}
