//! Copy-on-write changes to one tree: insert, delete with merging of under-full nodes, and
//! serialization of every memory node into appended pages at commit.

use super::file::{Appender, FileShared};
use super::node::{BranchEntry, LeafEntry, Node, NodeRef, Val};
use super::page::{self, PageBuilder, HEADER_BYTES, KIND_BRANCH, KIND_LEAF, PAGE_SIZE};
use super::view::Handle;
use super::{BtreeError, Result};
use std::sync::Arc;

/// What a change needs besides the node it changes: the file to read from and the count
/// of on-disk bytes the change makes dead.
pub struct Ctx<'a> {
    pub file: &'a FileShared,
    pub freed_bytes: &'a mut u64,
}

/// Below this many page bytes a node is merged with a neighbour when they fit together.
const UNDERFULL_BYTES: usize = PAGE_SIZE / 4;

fn free_val(ctx: &mut Ctx, val: &Val) {
    if let Val::Overflow { len, .. } = val {
        *ctx.freed_bytes += page::overflow_pages(*len as usize) * PAGE_SIZE as u64;
    }
}

/// Makes the referenced node writable: a disk page is copied into memory (its page becomes
/// dead at the next commit), a shared memory node is cloned.
fn make_mut<'r>(ctx: &mut Ctx, r: &'r mut NodeRef) -> Result<&'r mut Node> {
    if let NodeRef::Disk(id) = *r {
        let page = ctx.file.page(id)?;
        *ctx.freed_bytes += PAGE_SIZE as u64;
        *r = NodeRef::Mem(Arc::new(Node::from_page(&page)));
    }
    match r {
        NodeRef::Mem(n) => Ok(Arc::make_mut(n)),
        NodeRef::Disk(_) => unreachable!("converted above"),
    }
}

/// Deepest tree the recursive changes below descend into. A tree this writer builds is a
/// handful of levels deep (every branch holds at least 3 children when written full); a
/// damaged file can chain thousands of one-child branches, which would overflow the stack.
pub const TREE_DEPTH_MAX: usize = 128;

fn check_depth(ctx: &Ctx, r: &NodeRef, depth: usize) -> Result<()> {
    if depth <= TREE_DEPTH_MAX {
        return Ok(());
    }
    let page = match r {
        NodeRef::Disk(id) => *id,
        NodeRef::Mem(_) => 0,
    };
    Err(BtreeError::Corrupt {
        path: ctx.file.path.clone(),
        offset: page * PAGE_SIZE as u64,
        reason: format!("tree deeper than {TREE_DEPTH_MAX} levels"),
    })
}

/// Inserts or replaces `key`; returns the new right sibling (and its first key) on a split.
pub fn insert(
    ctx: &mut Ctx,
    r: &mut NodeRef,
    key: &[u8],
    val: Val,
) -> Result<Option<(Box<[u8]>, NodeRef)>> {
    insert_at(ctx, r, key, val, 0)
}

fn insert_at(
    ctx: &mut Ctx,
    r: &mut NodeRef,
    key: &[u8],
    val: Val,
    depth: usize,
) -> Result<Option<(Box<[u8]>, NodeRef)>> {
    check_depth(ctx, r, depth)?;
    let node = make_mut(ctx, r)?;
    let hint = match node {
        Node::Leaf(es) => match es.binary_search_by(|e| (*e.key).cmp(key)) {
            Ok(i) => {
                let old = std::mem::replace(&mut es[i].val, val);
                free_val(ctx, &old);
                i
            }
            Err(i) => {
                es.insert(
                    i,
                    LeafEntry {
                        key: key.into(),
                        val,
                    },
                );
                i
            }
        },
        Node::Branch(es) => {
            let idx = match es.binary_search_by(|e| (*e.key).cmp(key)) {
                Ok(i) => i,
                Err(i) => i.saturating_sub(1),
            };
            match insert_at(ctx, &mut es[idx].child, key, val, depth + 1)? {
                None => return Ok(None),
                Some((k, right)) => {
                    es.insert(
                        idx + 1,
                        BranchEntry {
                            key: k,
                            child: right,
                        },
                    );
                    idx + 1
                }
            }
        }
    };
    if node.page_bytes() <= PAGE_SIZE {
        return Ok(None);
    }
    let right = node.split(hint);
    let first = match &right {
        Node::Leaf(es) => es[0].key.clone(),
        Node::Branch(es) => es[0].key.clone(),
    };
    Ok(Some((first, NodeRef::Mem(Arc::new(right)))))
}

/// Whether `key` is present, without making anything writable.
pub fn contains(file: &FileShared, r: &NodeRef, key: &[u8]) -> Result<bool> {
    let mut h = Handle::load(file, r)?;
    while !h.is_leaf() {
        let c = h.child(h.child_for(key));
        h = Handle::load(file, &c)?;
    }
    Ok(h.search(key).is_ok())
}

/// Removes `key`, known to be present. Returns the node's remaining page bytes (0 when it
/// became empty) so the parent can drop or merge it.
pub fn remove(ctx: &mut Ctx, r: &mut NodeRef, key: &[u8]) -> Result<usize> {
    remove_at(ctx, r, key, 0)
}

fn remove_at(ctx: &mut Ctx, r: &mut NodeRef, key: &[u8], depth: usize) -> Result<usize> {
    check_depth(ctx, r, depth)?;
    let node = make_mut(ctx, r)?;
    match node {
        Node::Leaf(es) => {
            if let Ok(i) = es.binary_search_by(|e| (*e.key).cmp(key)) {
                let old = es.remove(i);
                free_val(ctx, &old.val);
            }
        }
        Node::Branch(es) => {
            let idx = match es.binary_search_by(|e| (*e.key).cmp(key)) {
                Ok(i) => i,
                Err(i) => i.saturating_sub(1),
            };
            let left = remove_at(ctx, &mut es[idx].child, key, depth + 1)?;
            if left == 0 {
                es.remove(idx);
            } else if left < UNDERFULL_BYTES && es.len() > 1 {
                merge_with_neighbour(ctx, es, idx)?;
            }
        }
    }
    Ok(if node.len() == 0 {
        0
    } else {
        node.page_bytes()
    })
}

/// Merges child `idx` with a neighbour when both fit in one page.
fn merge_with_neighbour(ctx: &mut Ctx, es: &mut Vec<BranchEntry>, idx: usize) -> Result<()> {
    let (a, b) = if idx > 0 {
        (idx - 1, idx)
    } else {
        (idx, idx + 1)
    };
    let sep = es[b].key.clone();
    let (left, right) = es.split_at_mut(b);
    let (ln, left_leaf) = node_bytes(ctx.file, &left[a].child)?;
    let (rn, right_leaf) = node_bytes(ctx.file, &right[0].child)?;
    if left_leaf != right_leaf {
        // Only a damaged file has a leaf beside a branch.
        let page = [&left[a].child, &right[0].child]
            .into_iter()
            .find_map(|r| match r {
                NodeRef::Disk(id) => Some(*id),
                NodeRef::Mem(_) => None,
            })
            .unwrap_or(0);
        return Err(BtreeError::Corrupt {
            path: ctx.file.path.clone(),
            offset: page * PAGE_SIZE as u64,
            reason: "a leaf and a branch are siblings".into(),
        });
    }
    if ln + rn - HEADER_BYTES + sep.len() > PAGE_SIZE {
        return Ok(());
    }
    let moved = {
        let rnode = make_mut(ctx, &mut right[0].child)?;
        std::mem::replace(rnode, Node::Leaf(Vec::new()))
    };
    let lnode = make_mut(ctx, &mut left[a].child)?;
    match (lnode, moved) {
        (Node::Leaf(l), Node::Leaf(r)) => l.extend(r),
        (Node::Branch(l), Node::Branch(mut r)) => {
            // The right node's first key may be a stale lower bound; the parent's separator
            // is the true smallest key of everything under it.
            r[0].key = sep;
            l.extend(r);
        }
        _ => unreachable!("siblings are at the same level"),
    }
    es.remove(b);
    Ok(())
}

/// Page bytes of a node and whether it is a leaf, reading it from disk if needed but
/// copying nothing.
fn node_bytes(file: &FileShared, r: &NodeRef) -> Result<(usize, bool)> {
    Ok(match r {
        NodeRef::Mem(n) => (n.page_bytes(), matches!(**n, Node::Leaf(_))),
        NodeRef::Disk(id) => {
            let page = file.page(*id)?;
            (page.used_bytes(), page.is_leaf())
        }
    })
}

/// Collapses a root that is a branch with a single child, repeatedly.
pub fn shrink_root(ctx: &mut Ctx, root: &mut Option<NodeRef>) -> Result<()> {
    loop {
        let Some(r) = root else { return Ok(()) };
        let h = Handle::load(ctx.file, r)?;
        if h.len() == 0 {
            *root = None;
            return Ok(());
        }
        if h.is_leaf() || h.len() > 1 {
            return Ok(());
        }
        let child = h.child(0);
        if let NodeRef::Disk(_) = r {
            *ctx.freed_bytes += PAGE_SIZE as u64;
        }
        *root = Some(child);
    }
}

/// Pages a commit wrote for its memory nodes, by node address: (page id, pages written for
/// the node and every memory node under it, overflow runs included).
pub type Written = std::collections::HashMap<usize, (u64, u64)>;

/// Writes every memory node under `r` (children first) and returns the page id of `r` and
/// how many pages that took; with `written`, records each node written there.
pub fn flush(
    file: &FileShared,
    app: &mut Appender,
    r: &NodeRef,
    seq: u64,
    mut written: Option<&mut Written>,
) -> Result<(u64, u64)> {
    let node = match r {
        NodeRef::Disk(id) => return Ok((*id, 0)),
        NodeRef::Mem(n) => n,
    };
    let before = app.next_page;
    let page = match &**node {
        Node::Leaf(es) => {
            let mut b = PageBuilder::new(es.len());
            for e in es {
                match &e.val {
                    Val::Inline(v) => b.leaf_inline(&e.key, v),
                    Val::Overflow { page, len } => b.leaf_overflow(&e.key, *page, *len),
                    Val::Large(v) => {
                        let id = app.reserve(page::overflow_pages(v.len()));
                        app.push(file, &page::encode_overflow(v, id, seq))?;
                        b.leaf_overflow(&e.key, id, v.len() as u32);
                    }
                }
            }
            (b, KIND_LEAF)
        }
        Node::Branch(es) => {
            let mut ids = Vec::with_capacity(es.len());
            for e in es {
                ids.push(flush(file, app, &e.child, seq, written.as_deref_mut())?.0);
            }
            let mut b = PageBuilder::new(es.len());
            for (e, id) in es.iter().zip(ids) {
                b.branch(&e.key, id);
            }
            (b, KIND_BRANCH)
        }
    };
    let id = app.reserve(1);
    app.push(file, &page.0.finish(page.1, id, seq))?;
    let pages = app.next_page - before;
    if let Some(w) = written {
        w.insert(Arc::as_ptr(node) as usize, (id, pages));
    }
    Ok((id, pages))
}

/// After a background commit of an earlier state of this tree: every memory node under `r`
/// that the commit wrote, and that is still here unchanged, becomes a reference to its page
/// (memory is given back). Returns the pages of the commit still reachable from `r`.
pub fn adopt_written(r: &mut NodeRef, written: &Written) -> u64 {
    let NodeRef::Mem(n) = r else { return 0 };
    if let Some(&(id, pages)) = written.get(&(Arc::as_ptr(n) as usize)) {
        *r = NodeRef::Disk(id);
        return pages;
    }
    if matches!(**n, Node::Leaf(_)) {
        return 0; // changed since: stays in memory, written by the next commit
    }
    // A branch changed since the commit: its children may still be the commit's nodes.
    let Node::Branch(es) = Arc::make_mut(n) else {
        unreachable!("checked above")
    };
    es.iter_mut()
        .map(|e| adopt_written(&mut e.child, written))
        .sum()
}
