//! In-memory tree nodes. The writer's tree is a mix of nodes still on disk (`NodeRef::Disk`)
//! and nodes it has copied into memory and changed (`NodeRef::Mem`). Memory nodes are
//! shared with readers through `Arc`: the writer changes a node in place only while it holds
//! the sole reference, and copies it otherwise (copy-on-write in memory as on disk).

use super::page::{
    PageBuf, BRANCH_ENTRY_OVERHEAD, HEADER_BYTES, INLINE_ENTRY_MAX, LEAF_ENTRY_OVERHEAD, PAGE_SIZE,
};
use std::sync::Arc;

#[derive(Clone)]
pub enum NodeRef {
    Disk(u64),
    Mem(Arc<Node>),
}

#[derive(Clone)]
pub enum Val {
    /// Stored in the leaf itself.
    Inline(Box<[u8]>),
    /// In an overflow run already on disk.
    Overflow { page: u64, len: u32 },
    /// Too large to inline; written as an overflow run at the next commit.
    Large(Arc<[u8]>),
}

impl Val {
    pub fn new(key: &[u8], value: &[u8]) -> Val {
        if LEAF_ENTRY_OVERHEAD + key.len() + value.len() <= INLINE_ENTRY_MAX {
            Val::Inline(value.into())
        } else {
            Val::Large(value.into())
        }
    }
    /// As [`Val::new`], reusing the vector's allocation.
    pub fn from_vec(key: &[u8], value: Vec<u8>) -> Val {
        if LEAF_ENTRY_OVERHEAD + key.len() + value.len() <= INLINE_ENTRY_MAX {
            Val::Inline(value.into_boxed_slice())
        } else {
            Val::Large(value.into())
        }
    }

    /// Length of the value in bytes.
    pub fn len(&self) -> usize {
        match self {
            Val::Inline(v) => v.len(),
            Val::Large(v) => v.len(),
            Val::Overflow { len, .. } => *len as usize,
        }
    }

    /// Bytes this value takes inside a leaf page (an overflow reference is 8 bytes).
    fn leaf_bytes(&self) -> usize {
        match self {
            Val::Inline(v) => v.len(),
            Val::Overflow { .. } | Val::Large(_) => 8,
        }
    }
}

#[derive(Clone)]
pub struct LeafEntry {
    pub key: Box<[u8]>,
    pub val: Val,
}

impl LeafEntry {
    pub fn bytes(&self) -> usize {
        LEAF_ENTRY_OVERHEAD + self.key.len() + self.val.leaf_bytes()
    }
}

#[derive(Clone)]
pub struct BranchEntry {
    /// Smallest key that may be found under `child` (empty for the first child).
    pub key: Box<[u8]>,
    pub child: NodeRef,
}

impl BranchEntry {
    pub fn bytes(&self) -> usize {
        BRANCH_ENTRY_OVERHEAD + self.key.len()
    }
}

#[derive(Clone)]
pub enum Node {
    Leaf(Vec<LeafEntry>),
    Branch(Vec<BranchEntry>),
}

impl Node {
    /// Serialized size of this node as a page.
    pub fn page_bytes(&self) -> usize {
        HEADER_BYTES
            + match self {
                Node::Leaf(es) => es.iter().map(LeafEntry::bytes).sum::<usize>(),
                Node::Branch(es) => es.iter().map(BranchEntry::bytes).sum::<usize>(),
            }
    }

    pub fn len(&self) -> usize {
        match self {
            Node::Leaf(es) => es.len(),
            Node::Branch(es) => es.len(),
        }
    }

    /// Copies a disk page into a memory node.
    pub fn from_page(page: &PageBuf) -> Node {
        let n = page.count();
        if page.is_leaf() {
            Node::Leaf(
                (0..n)
                    .map(|i| LeafEntry {
                        key: page.key(i).into(),
                        val: match page.value(i) {
                            super::page::DiskVal::Inline(v) => Val::Inline(v.into()),
                            super::page::DiskVal::Overflow { page, len } => {
                                Val::Overflow { page, len }
                            }
                        },
                    })
                    .collect(),
            )
        } else {
            Node::Branch(
                (0..n)
                    .map(|i| BranchEntry {
                        key: page.key(i).into(),
                        child: NodeRef::Disk(page.child(i)),
                    })
                    .collect(),
            )
        }
    }

    /// Splits an over-full node in two, returning the right half. `hint` is the index just
    /// written: an append at the right edge keeps the left node full (sequential keys, such
    /// as revisions, then fill every page), anything else splits by bytes in the middle.
    pub fn split(&mut self, hint: usize) -> Node {
        let sizes: Vec<usize> = match self {
            Node::Leaf(es) => es.iter().map(LeafEntry::bytes).collect(),
            Node::Branch(es) => es.iter().map(BranchEntry::bytes).collect(),
        };
        let at = split_point(&sizes, hint);
        match self {
            Node::Leaf(es) => Node::Leaf(es.split_off(at)),
            Node::Branch(es) => Node::Branch(es.split_off(at)),
        }
    }
}

/// Chooses where to split entries of the given sizes so both halves fit in a page.
fn split_point(sizes: &[usize], hint: usize) -> usize {
    let n = sizes.len();
    assert!(n >= 2, "cannot split a node of {n} entries");
    let total: usize = sizes.iter().sum();
    let fits =
        |from: usize, to: usize| HEADER_BYTES + sizes[from..to].iter().sum::<usize>() <= PAGE_SIZE;
    if hint == n - 1 && fits(0, n - 1) {
        return n - 1;
    }
    let mut acc = 0;
    let mut at = 0;
    while at < n - 1 && acc + sizes[at] <= total / 2 {
        acc += sizes[at];
        at += 1;
    }
    let mut at = at.max(1);
    while at < n - 1 && !fits(at, n) {
        at += 1;
    }
    while at > 1 && !fits(0, at) {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_split_keeps_left_full() {
        let sizes = vec![300; 14];
        assert_eq!(split_point(&sizes, 13), 13);
        assert_eq!(split_point(&sizes, 3), 7);
    }

    #[test]
    fn split_of_uneven_entries_fits_both_halves() {
        let sizes = vec![1000, 1000, 1000, 1000, 20];
        let at = split_point(&sizes, 0);
        assert!(HEADER_BYTES + sizes[..at].iter().sum::<usize>() <= PAGE_SIZE);
        assert!(HEADER_BYTES + sizes[at..].iter().sum::<usize>() <= PAGE_SIZE);
    }
}
