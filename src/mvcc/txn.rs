//! Transactions: request validation (etcd 3.4's `checkTxnRequest`, `checkIntervals` and
//! friends from `v3rpc/key.go`), compare evaluation, and execution
//! (`applierV3backend.Txn` from `etcdserver/apply.go`).
//!
//! As in etcd 3.4, every compare, nested ones included, is evaluated against the state before
//! the transaction, which picks the branch at every level up front (the "path"); then the
//! chosen operations run in order, each seeing the writes of the ones before it.

use std::collections::HashSet;

use super::apply::{self, LeaseCheck};
use super::error::MvccError;
use super::key_index::KeyRange;
use super::range::RangeOptions;
use super::types::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, KeyValue, PutRef, RangeRequest,
    Request, RequestOp, ResponseHeader, ResponseOp, TargetUnion, TxnRequest, TxnResponse,
};
use super::write::WriteTxn;

/// etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS_DEFAULT: usize = 128;

/// Checks a request as etcd's gRPC layer does before proposing it. `max_txn_ops` bounds the
/// operations of each txn branch (and the compares), nested txns sharing what is left.
///
/// `apply` runs these checks too, with no operation limit: the limit is a per-member setting,
/// and enforcing it while applying could make members with different settings diverge.
pub fn validate(request: &Request, max_txn_ops: usize) -> Result<(), MvccError> {
    match request {
        Request::Range(r) => check_range(r),
        Request::Put(r) => check_put(r.as_ref()),
        Request::DeleteRange(r) => check_delete(r),
        Request::Txn(t) => {
            check_txn(t, max_txn_ops)?;
            // After the cheap checks, so a huge request is rejected before the quadratic one.
            check_intervals(&t.success)?;
            check_intervals(&t.failure)?;
            Ok(())
        }
        Request::Compaction(_) => Ok(()),
    }
}

pub(crate) fn check_range(r: &RangeRequest) -> Result<(), MvccError> {
    if r.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    Ok(())
}

pub(crate) fn check_put(r: PutRef<'_>) -> Result<(), MvccError> {
    if r.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(MvccError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(MvccError::LeaseProvided);
    }
    Ok(())
}

fn check_delete(r: &DeleteRangeRequest) -> Result<(), MvccError> {
    if r.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    Ok(())
}

fn check_txn(t: &TxnRequest, max_txn_ops: usize) -> Result<(), MvccError> {
    let ops = t.compare.len().max(t.success.len()).max(t.failure.len());
    if ops > max_txn_ops {
        return Err(MvccError::TooManyOps);
    }
    if t.compare.iter().any(|c| c.key.is_empty()) {
        return Err(MvccError::EmptyKey);
    }
    for op in t.success.iter().chain(&t.failure) {
        match op {
            RequestOp::Range(r) => check_range(r)?,
            RequestOp::Put(r) => check_put(r.as_ref())?,
            RequestOp::DeleteRange(r) => check_delete(r)?,
            RequestOp::Txn(nested) => check_txn(nested, max_txn_ops - ops)?,
        }
    }
    Ok(())
}

/// A deleted interval as etcd's `adt` interval tree holds it: a point `[key, key+"\0")` when
/// `range_end` is empty, else `[key, range_end)` taken literally, so that `range_end == "\0"`
/// ("every key from key on") is an empty interval and conflicts with no put, as in etcd 3.4.
#[derive(Clone, Copy)]
struct Deleted<'a> {
    key: &'a [u8],
    range_end: &'a [u8],
}

impl Deleted<'_> {
    fn contains(&self, k: &[u8]) -> bool {
        if self.range_end.is_empty() {
            return self.key == k;
        }
        self.key <= k && k < self.range_end
    }
}

type Puts<'a> = HashSet<&'a [u8]>;

/// etcd's `checkIntervals`: no key may be put twice, or put and deleted, by one txn; the two
/// branches of a nested txn may put the same key since only one of them runs. Returns this
/// level's puts and deletes for the level above.
fn check_intervals(ops: &[RequestOp]) -> Result<(Puts<'_>, Vec<Deleted<'_>>), MvccError> {
    let mut dels: Vec<Deleted<'_>> = ops
        .iter()
        .filter_map(|op| match op {
            RequestOp::DeleteRange(d) => Some(Deleted {
                key: &d.key,
                range_end: &d.range_end,
            }),
            _ => None,
        })
        .collect();
    let deleted = |dels: &[Deleted<'_>], k: &[u8]| dels.iter().any(|d| d.contains(k));
    let mut puts = Puts::new();
    for op in ops {
        let RequestOp::Txn(nested) = op else { continue };
        let (puts_then, dels_then) = check_intervals(&nested.success)?;
        let (puts_else, dels_else) = check_intervals(&nested.failure)?;
        for &k in &puts_then {
            if puts.contains(k) || deleted(&dels, k) {
                return Err(MvccError::DuplicateKey);
            }
            puts.insert(k);
        }
        for &k in &puts_else {
            let clash = puts.contains(k) && !puts_then.contains(k);
            if clash || deleted(&dels, k) {
                return Err(MvccError::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let RequestOp::Put(p) = op else { continue };
        let k = p.key.as_slice();
        if puts.contains(k) || deleted(&dels, k) {
            return Err(MvccError::DuplicateKey);
        }
        puts.insert(k);
    }
    Ok((puts, dels))
}

/// Whether `c` holds for the keys its range covers (`kvs`), as etcd's `applyCompare`: a VALUE
/// compare on no key fails; other targets compare a missing key as all zeroes.
fn compare_holds(c: &Compare, kvs: &[KeyValue]) -> bool {
    if kvs.is_empty() {
        return c.target != CompareTarget::Value && compare_kv(c, &KeyValue::default());
    }
    kvs.iter().all(|kv| compare_kv(c, kv))
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let int = |v: i64, pick: fn(&TargetUnion) -> Option<i64>| {
        v.cmp(&c.target_union.as_ref().and_then(pick).unwrap_or(0))
    };
    let ordering = match c.target {
        CompareTarget::Value => {
            let want = match &c.target_union {
                Some(TargetUnion::Value(v)) => v.as_slice(),
                _ => &[],
            };
            kv.value.as_slice().cmp(want)
        }
        CompareTarget::Create => int(kv.create_revision, |t| match t {
            TargetUnion::CreateRevision(v) => Some(*v),
            _ => None,
        }),
        CompareTarget::Mod => int(kv.mod_revision, |t| match t {
            TargetUnion::ModRevision(v) => Some(*v),
            _ => None,
        }),
        CompareTarget::Version => int(kv.version, |t| match t {
            TargetUnion::Version(v) => Some(*v),
            _ => None,
        }),
        CompareTarget::Lease => int(kv.lease, |t| match t {
            TargetUnion::Lease(v) => Some(*v),
            _ => None,
        }),
    };
    match c.result {
        CompareResult::Equal => ordering.is_eq(),
        CompareResult::NotEqual => ordering.is_ne(),
        CompareResult::Greater => ordering.is_gt(),
        CompareResult::Less => ordering.is_lt(),
    }
}

/// The branch taken at every level of a txn, decided before anything runs.
struct TxnPath {
    succeeded: bool,
    /// One per nested txn in the chosen branch, in order.
    nested: Vec<TxnPath>,
}

impl TxnPath {
    fn evaluate(w: &WriteTxn<'_>, t: &TxnRequest) -> Result<TxnPath, MvccError> {
        let mut succeeded = true;
        for c in &t.compare {
            let kvs = w
                .range(KeyRange::new(&c.key, &c.range_end), RangeOptions::default())?
                .kvs;
            if !compare_holds(c, &kvs) {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded { &t.success } else { &t.failure };
        let mut nested = Vec::new();
        for op in ops {
            if let RequestOp::Txn(inner) = op {
                nested.push(TxnPath::evaluate(w, inner)?);
            }
        }
        Ok(TxnPath { succeeded, nested })
    }

    fn ops<'t>(&self, t: &'t TxnRequest) -> &'t [RequestOp] {
        if self.succeeded {
            &t.success
        } else {
            &t.failure
        }
    }

    /// Calls `check` on every non-txn operation on the path, depth first in order.
    fn check_each(
        &self,
        t: &TxnRequest,
        check: &mut impl FnMut(&RequestOp) -> Result<(), MvccError>,
    ) -> Result<(), MvccError> {
        let mut nested = self.nested.iter();
        for op in self.ops(t) {
            match op {
                RequestOp::Txn(inner) => next_path(&mut nested).check_each(inner, check)?,
                _ => check(op)?,
            }
        }
        Ok(())
    }
}

fn next_path<'p>(paths: &mut std::slice::Iter<'p, TxnPath>) -> &'p TxnPath {
    paths
        .next()
        .expect("one path per nested txn on the chosen branch")
}

/// etcd's `isTxnReadonly`: only ranges, in both branches (nested txns count as writes).
pub(crate) fn is_read_only(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| matches!(op, RequestOp::Range(_)))
}

/// etcd's `checkRequestPut`, against the state before the txn.
fn check_put_op(
    w: &WriteTxn<'_>,
    op: &RequestOp,
    leases: &dyn LeaseCheck,
) -> Result<(), MvccError> {
    let RequestOp::Put(p) = op else { return Ok(()) };
    if (p.ignore_value || p.ignore_lease) && w.get(&p.key)?.is_none() {
        return Err(MvccError::KeyNotFound);
    }
    apply::check_lease(p.lease, leases)
}

/// etcd's `checkRequestRange`: ranges must read a revision that exists and is not compacted.
fn check_range_op(w: &WriteTxn<'_>, op: &RequestOp) -> Result<(), MvccError> {
    let RequestOp::Range(r) = op else {
        return Ok(());
    };
    // Note etcd's quirk, kept: a negative revision is below every compaction revision (-1
    // when never compacted), so it fails here although a plain Range reads it as "current".
    match r.revision {
        0 => Ok(()),
        rev if rev > w.begin_rev() => Err(MvccError::FutureRev),
        rev if rev < w.compact_revision() => Err(MvccError::Compacted),
        _ => Ok(()),
    }
}

/// etcd's `applierV3backend.Txn`. On error nothing has been written yet, except when an
/// operation fails midway, which the caller rolls back.
pub(crate) fn txn(
    w: &mut WriteTxn<'_>,
    t: &TxnRequest,
    leases: &dyn LeaseCheck,
) -> Result<TxnResponse, MvccError> {
    let path = TxnPath::evaluate(w, t)?;
    if !is_read_only(t) {
        path.check_each(t, &mut |op| check_put_op(w, op, leases))?;
    }
    path.check_each(t, &mut |op| check_range_op(w, op))?;
    let mut response = run(w, t, &path)?;
    response.header.revision = w.read_rev();
    Ok(response)
}

/// Runs the operations on `path`. Nested responses keep a zero header revision, as in etcd.
fn run(w: &mut WriteTxn<'_>, t: &TxnRequest, path: &TxnPath) -> Result<TxnResponse, MvccError> {
    let mut nested = path.nested.iter();
    let mut responses = Vec::with_capacity(path.ops(t).len());
    for op in path.ops(t) {
        responses.push(match op {
            RequestOp::Range(r) => ResponseOp::Range(apply::range(w, r)?),
            RequestOp::Put(p) => ResponseOp::Put(apply::put(w, p.as_ref())?),
            RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(apply::delete_range(w, d)?),
            RequestOp::Txn(inner) => ResponseOp::Txn(run(w, inner, next_path(&mut nested))?),
        });
    }
    Ok(TxnResponse {
        header: ResponseHeader::default(),
        succeeded: path.succeeded,
        responses,
    })
}
