//! The read path: point lookups and range iterators over a set of tree roots. Shared by the
//! writer (reading its own uncommitted state) and by `View`s on any thread.

use super::file::FileShared;
use super::node::{Node, NodeRef, Val};
use super::page::{check_tree, DiskVal, PageBuf};
use super::{Result, TreeId, MAX_TREES};
use std::ops::Bound;
use std::sync::Arc;

/// A node ready to read: a memory node or a validated disk page.
#[derive(Clone)]
pub(crate) enum Handle {
    Mem(Arc<Node>),
    Disk(Arc<PageBuf>),
}

impl Handle {
    pub fn load(file: &FileShared, r: &NodeRef) -> Result<Handle> {
        Ok(match r {
            NodeRef::Mem(n) => Handle::Mem(n.clone()),
            NodeRef::Disk(id) => Handle::Disk(file.page(*id)?),
        })
    }
    pub fn is_leaf(&self) -> bool {
        match self {
            Handle::Mem(n) => matches!(**n, Node::Leaf(_)),
            Handle::Disk(p) => p.is_leaf(),
        }
    }
    pub fn len(&self) -> usize {
        match self {
            Handle::Mem(n) => n.len(),
            Handle::Disk(p) => p.count(),
        }
    }
    pub fn key(&self, i: usize) -> &[u8] {
        match self {
            Handle::Mem(n) => match &**n {
                Node::Leaf(es) => &es[i].key,
                Node::Branch(es) => &es[i].key,
            },
            Handle::Disk(p) => p.key(i),
        }
    }
    pub fn child(&self, i: usize) -> NodeRef {
        match self {
            Handle::Mem(n) => match &**n {
                Node::Branch(es) => es[i].child.clone(),
                Node::Leaf(_) => unreachable!("child() of a leaf"),
            },
            Handle::Disk(p) => NodeRef::Disk(p.child(i)),
        }
    }
    pub fn value(&self, file: &FileShared, i: usize) -> Result<Vec<u8>> {
        match self {
            Handle::Mem(n) => match &**n {
                Node::Leaf(es) => match &es[i].val {
                    Val::Inline(v) => Ok(v.to_vec()),
                    Val::Large(v) => Ok(v.to_vec()),
                    Val::Overflow { page, len } => file.overflow(*page, *len),
                },
                Node::Branch(_) => unreachable!("value() of a branch"),
            },
            Handle::Disk(p) => match p.value(i) {
                DiskVal::Inline(v) => Ok(v.to_vec()),
                DiskVal::Overflow { page, len } => file.overflow(page, len),
            },
        }
    }
    /// Index of the first entry whose key is >= `key` (leaf), or of the child to descend
    /// into for `key` (branch: the last child whose smallest key is <= `key`).
    pub fn search(&self, key: &[u8]) -> std::result::Result<usize, usize> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.key(mid).cmp(key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(mid),
            }
        }
        Err(lo)
    }
    pub fn child_for(&self, key: &[u8]) -> usize {
        match self.search(key) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        }
    }
}

/// Tree roots plus the file they live in: everything a reader needs.
#[derive(Clone)]
pub(crate) struct Roots {
    pub file: Arc<FileShared>,
    pub roots: [Option<NodeRef>; MAX_TREES],
}

impl Roots {
    pub fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let Some(root) = &self.roots[check_tree(tree)?] else {
            return Ok(None);
        };
        let mut h = Handle::load(&self.file, root)?;
        while !h.is_leaf() {
            let c = h.child(h.child_for(key));
            h = Handle::load(&self.file, &c)?;
        }
        match h.search(key) {
            Ok(i) => Ok(Some(h.value(&self.file, i)?)),
            Err(_) => Ok(None),
        }
    }

    pub fn range(
        &self,
        tree: TreeId,
        lo: Bound<&[u8]>,
        hi: Bound<&[u8]>,
        reverse: bool,
    ) -> RangeIter {
        let mut it = RangeIter {
            file: self.file.clone(),
            stack: Vec::new(),
            lo: lo.map(<[u8]>::to_vec),
            hi: hi.map(<[u8]>::to_vec),
            reverse,
            done: false,
            pending_err: None,
        };
        match check_tree(tree) {
            Err(e) => it.pending_err = Some(e),
            Ok(t) => {
                if let Some(root) = &self.roots[t] {
                    if let Err(e) = it.seek(root.clone()) {
                        it.pending_err = Some(e);
                    }
                } else {
                    it.done = true;
                }
            }
        }
        it
    }
}

/// An owned iterator over one tree's key range, in key order or reverse key order. It holds
/// its own snapshot: later writes never show up in it.
pub struct RangeIter {
    file: Arc<FileShared>,
    /// Path from the root: (node, position). Forward: the next index to visit. Reverse:
    /// how many entries remain (the next to visit is position - 1). For branches the
    /// position refers to the child currently descended into, with the same convention.
    stack: Vec<(Handle, usize)>,
    lo: Bound<Vec<u8>>,
    hi: Bound<Vec<u8>>,
    reverse: bool,
    done: bool,
    pending_err: Option<super::BtreeError>,
}

impl RangeIter {
    fn seek(&mut self, root: NodeRef) -> Result<()> {
        let mut h = Handle::load(&self.file, &root)?;
        loop {
            let start = if self.reverse { &self.hi } else { &self.lo };
            if h.is_leaf() {
                let pos = match start {
                    Bound::Unbounded if self.reverse => h.len(),
                    Bound::Unbounded => 0,
                    Bound::Included(k) => match h.search(k) {
                        Ok(i) if self.reverse => i + 1,
                        Ok(i) | Err(i) => i,
                    },
                    Bound::Excluded(k) => match h.search(k) {
                        Ok(i) if !self.reverse => i + 1,
                        Ok(i) | Err(i) => i,
                    },
                };
                self.stack.push((h, pos));
                return Ok(());
            }
            let idx = match start {
                Bound::Unbounded if self.reverse => h.len() - 1,
                Bound::Unbounded => 0,
                Bound::Included(k) | Bound::Excluded(k) => h.child_for(k),
            };
            let child = h.child(idx);
            let pos = if self.reverse { idx + 1 } else { idx };
            self.stack.push((h, pos));
            h = Handle::load(&self.file, &child)?;
        }
    }

    /// Moves to the next leaf, descending from the nearest ancestor with a sibling left.
    fn next_leaf(&mut self) -> Result<bool> {
        self.stack.pop();
        loop {
            let Some((h, pos)) = self.stack.last_mut() else {
                return Ok(false);
            };
            let next = if self.reverse {
                if *pos <= 1 {
                    None
                } else {
                    *pos -= 1;
                    Some(*pos - 1)
                }
            } else if *pos + 1 < h.len() {
                *pos += 1;
                Some(*pos)
            } else {
                None
            };
            let Some(idx) = next else {
                self.stack.pop();
                continue;
            };
            let mut child = Handle::load(&self.file, &h.child(idx))?;
            loop {
                let pos = if self.reverse { child.len() } else { 0 };
                if child.is_leaf() {
                    self.stack.push((child, pos));
                    return Ok(true);
                }
                let first = if self.reverse { child.len() - 1 } else { 0 };
                let grandchild = child.child(first);
                self.stack
                    .push((child, if self.reverse { first + 1 } else { 0 }));
                child = Handle::load(&self.file, &grandchild)?;
            }
        }
    }

    fn in_bounds(&self, key: &[u8]) -> bool {
        if self.reverse {
            match &self.lo {
                Bound::Unbounded => true,
                Bound::Included(lo) => key >= lo.as_slice(),
                Bound::Excluded(lo) => key > lo.as_slice(),
            }
        } else {
            match &self.hi {
                Bound::Unbounded => true,
                Bound::Included(hi) => key <= hi.as_slice(),
                Bound::Excluded(hi) => key < hi.as_slice(),
            }
        }
    }

    fn step(&mut self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        loop {
            let Some((leaf, pos)) = self.stack.last_mut() else {
                return Ok(None);
            };
            let idx = if self.reverse {
                if *pos == 0 {
                    None
                } else {
                    *pos -= 1;
                    Some(*pos)
                }
            } else if *pos < leaf.len() {
                *pos += 1;
                Some(*pos - 1)
            } else {
                None
            };
            match idx {
                Some(i) => {
                    let leaf = leaf.clone();
                    let key = leaf.key(i);
                    if !self.in_bounds(key) {
                        return Ok(None);
                    }
                    return Ok(Some((key.to_vec(), leaf.value(&self.file, i)?)));
                }
                None => {
                    if !self.next_leaf()? {
                        return Ok(None);
                    }
                }
            }
        }
    }
}

impl Iterator for RangeIter {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.pending_err.take() {
            self.done = true;
            return Some(Err(e));
        }
        if self.done {
            return None;
        }
        match self.step() {
            Ok(Some(kv)) => Some(Ok(kv)),
            Ok(None) => {
                self.done = true;
                self.stack.clear();
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
