//! Applying one request inside a write transaction: etcd 3.4's `applierV3backend` Put,
//! DeleteRange, Range and Compaction (Txn is in `txn.rs`), and the lease hook.

use super::error::MvccError;
use super::key_index::KeyRange;
use super::range::{self, RangeOptions};
use super::txn;
use super::types::{
    CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRef, PutResponse, RangeRequest,
    RangeResponse, Request, Response, ResponseHeader,
};
use super::write::WriteTxn;

/// Tells a write whether a lease exists. Puts naming a lease that does not exist fail with
/// "etcdserver: requested lease not found", as in etcd. The store's
/// [`LeaseTable`](super::LeaseTable) implements it: every member checks against the same
/// table, at the same point of the log, so every member gives the same answer.
pub(crate) trait LeaseCheck {
    fn lease_exists(&self, lease: i64) -> bool;
}

/// Lease 0 means "no lease" and always passes.
pub(crate) fn check_lease(lease: i64, leases: &dyn LeaseCheck) -> Result<(), MvccError> {
    if lease != 0 && !leases.lease_exists(lease) {
        return Err(MvccError::LeaseNotFound);
    }
    Ok(())
}

/// Runs one validated request. A failure after a write leaves changes the caller rolls back.
pub(crate) fn request(
    w: &mut WriteTxn<'_>,
    request: &Request,
    leases: &dyn LeaseCheck,
) -> Result<Response, MvccError> {
    Ok(match request {
        Request::Range(r) => Response::Range(range(w, r)?),
        Request::Put(p) => put_checked(w, p.as_ref(), leases)?,
        Request::DeleteRange(d) => Response::DeleteRange(delete_range(w, d)?),
        Request::Txn(t) => Response::Txn(txn::txn(w, t, leases)?),
        Request::Compaction(c) => {
            w.compact(c.revision)?;
            let header = ResponseHeader {
                revision: w.begin_rev(),
            };
            Response::Compaction(CompactionResponse { header })
        }
    })
}

/// etcd's `applierV3backend.Range` inside a write transaction.
pub(crate) fn range(w: &WriteTxn<'_>, r: &RangeRequest) -> Result<RangeResponse, MvccError> {
    range::range(r, |keys, ro| w.range(keys, ro))
}

/// A put outside a txn: etcd checks the lease before anything else.
pub(crate) fn put_checked(
    w: &mut WriteTxn<'_>,
    p: PutRef<'_>,
    leases: &dyn LeaseCheck,
) -> Result<Response, MvccError> {
    check_lease(p.lease, leases)?;
    Ok(Response::Put(put(w, p)?))
}

/// etcd's `applierV3backend.Put` (the lease was checked by the caller).
pub(crate) fn put(w: &mut WriteTxn<'_>, p: PutRef<'_>) -> Result<PutResponse, MvccError> {
    let ignore = p.ignore_value || p.ignore_lease;
    let prev = if ignore || p.prev_kv {
        w.get(p.key)?
    } else {
        None
    };
    if ignore && prev.is_none() {
        return Err(MvccError::KeyNotFound);
    }
    let (value, lease) = match &prev {
        Some(prev) => (
            if p.ignore_value {
                prev.value.as_slice()
            } else {
                p.value
            },
            if p.ignore_lease { prev.lease } else { p.lease },
        ),
        None => (p.value, p.lease),
    };
    let revision = w.put(p.key, value, lease)?;
    let prev_kv = if p.prev_kv { prev } else { None };
    Ok(PutResponse {
        header: ResponseHeader { revision },
        prev_kv,
    })
}

/// etcd's `applierV3backend.DeleteRange`.
pub(crate) fn delete_range(
    w: &mut WriteTxn<'_>,
    d: &DeleteRangeRequest,
) -> Result<DeleteRangeResponse, MvccError> {
    let keys = KeyRange::new(&d.key, &d.range_end);
    let prev_kvs = if d.prev_kv {
        w.range(keys, RangeOptions::default())?.kvs
    } else {
        Vec::new()
    };
    let (deleted, revision) = w.delete_range(keys)?;
    Ok(DeleteRangeResponse {
        header: ResponseHeader { revision },
        deleted,
        prev_kvs,
    })
}
