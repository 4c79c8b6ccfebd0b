//! One test per etcd 3.4 rule; several port etcd's own tests (named in each doc comment).

use std::ops::Bound;

use super::harness::{cmp, compact, del, get, keys_of, put, txn, Harness};
use crate::btree::{CommitMeta, Db, DbOptions};
use crate::mvcc::range::PRIMARY_TREE;
use crate::mvcc::{
    validate, ApplyOutcome, CompareResult as R, CompareTarget as T, DeleteRangeRequest, KeyValue,
    MvccError, PutRequest, RaftPosition, RangeRequest, Request, RequestOp, Response, ResponseOp,
    Revision, SortOrder, SortTarget, Store, TargetUnion as U, TxnRequest, TxnResponse,
    MAX_TXN_OPS_DEFAULT,
};

fn put_rev(h: &mut Harness, key: &str, value: &str) -> i64 {
    match h.ok(Request::Put(put(key, value))) {
        Response::Put(p) => p.header.revision,
        other => panic!("{other:?}"),
    }
}

fn range(h: &mut Harness, r: RangeRequest) -> crate::mvcc::RangeResponse {
    h.store.range(&r).unwrap()
}

fn one(h: &mut Harness, key: &str) -> Option<KeyValue> {
    range(h, get(key, "")).kvs.pop()
}

fn txn_response(h: &mut Harness, t: TxnRequest) -> TxnResponse {
    match h.ok(Request::Txn(t)) {
        Response::Txn(t) => t,
        other => panic!("{other:?}"),
    }
}

fn stored_revisions(h: &mut Harness) -> Vec<i64> {
    let db = h.store.db_mut();
    db.range(PRIMARY_TREE, Bound::Unbounded, Bound::Unbounded, false)
        .map(|e| Revision::from_key(&e.unwrap().0).unwrap().main)
        .collect()
}

#[test]
fn fresh_store_starts_at_revision_one() {
    let mut h = Harness::new();
    assert_eq!(h.store.current_revision(), 1);
    assert_eq!(h.store.compact_revision(), -1);
    let r = range(&mut h, get("\0", "\0"));
    assert_eq!((r.header.revision, r.count, r.kvs.len()), (1, 0, 0));
    assert_eq!(
        put_rev(&mut h, "a", "1"),
        2,
        "the first write is revision 2, as in etcd"
    );
}

#[test]
fn versions_count_puts_and_delete_resets_them() {
    let mut h = Harness::new();
    put_rev(&mut h, "k", "1");
    put_rev(&mut h, "k", "2");
    let kv = one(&mut h, "k").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    let Response::DeleteRange(d) = h.ok(Request::DeleteRange(del("k", ""))) else {
        panic!()
    };
    assert_eq!((d.deleted, d.header.revision), (1, 4));
    assert_eq!(one(&mut h, "k"), None);
    put_rev(&mut h, "k", "3");
    let kv = one(&mut h, "k").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
    let old = range(
        &mut h,
        RangeRequest {
            revision: 3,
            ..get("k", "")
        },
    )
    .kvs;
    assert_eq!(
        (
            old[0].create_revision,
            old[0].version,
            old[0].value.as_slice()
        ),
        (2, 2, b"2".as_slice())
    );
}

#[test]
fn prev_kv_on_put_and_delete() {
    let mut h = Harness::new();
    let with_prev = |k: &str, v: &str| {
        Request::Put(PutRequest {
            prev_kv: true,
            ..put(k, v)
        })
    };
    let Response::Put(p) = h.ok(with_prev("a", "1")) else {
        panic!()
    };
    assert_eq!(p.prev_kv, None);
    let Response::Put(p) = h.ok(with_prev("a", "2")) else {
        panic!()
    };
    let prev = p.prev_kv.unwrap();
    assert_eq!(
        (prev.value.as_slice(), prev.mod_revision, prev.version),
        (b"1".as_slice(), 2, 1)
    );
    put_rev(&mut h, "b", "3");
    let d = DeleteRangeRequest {
        prev_kv: true,
        ..del("a", "c")
    };
    let Response::DeleteRange(d) = h.ok(Request::DeleteRange(d)) else {
        panic!()
    };
    assert_eq!(
        (d.deleted, keys_of(&d.prev_kvs)),
        (2, vec!["a".to_string(), "b".to_string()])
    );
    assert_eq!(d.prev_kvs[0].value, b"2");
}

#[test]
fn delete_of_nothing_keeps_the_revision() {
    let mut h = Harness::new();
    put_rev(&mut h, "a", "1");
    let Response::DeleteRange(d) = h.ok(Request::DeleteRange(del("zzz", ""))) else {
        panic!()
    };
    assert_eq!(
        (d.deleted, d.header.revision, h.store.current_revision()),
        (0, 2, 2)
    );
    assert_eq!(put_rev(&mut h, "b", "1"), 3);
}

/// etcd's TestV3PutIgnoreValue (lease revocation left to the lease module).
#[test]
fn put_ignore_value() {
    let mut h = Harness::new();
    let ignore = PutRequest {
        ignore_value: true,
        ..put("foo", "")
    };
    assert_eq!(
        h.err(Request::Put(ignore.clone())),
        "etcdserver: key not found"
    );
    let in_txn = txn(vec![], vec![RequestOp::Put(ignore.clone())], vec![]);
    assert_eq!(h.err(Request::Txn(in_txn)), "etcdserver: key not found");
    assert_eq!(h.store.current_revision(), 1);
    put_rev(&mut h, "foo", "bar");
    h.grant(5);
    let leased = PutRequest {
        lease: 5,
        ..ignore.clone()
    };
    txn_response(&mut h, txn(vec![], vec![RequestOp::Put(leased)], vec![]));
    let kv = one(&mut h, "foo").unwrap();
    assert_eq!((kv.value.as_slice(), kv.lease), (b"bar".as_slice(), 5));
    let valued = PutRequest {
        ignore_value: true,
        ..put("foo", "bar")
    };
    assert_eq!(h.err(Request::Put(valued)), "etcdserver: value is provided");
    let Response::Put(p) = h.ok(Request::Put(ignore)) else {
        panic!()
    };
    assert_eq!(p.prev_kv, None, "no prev_kv unless asked for");
    let kv = one(&mut h, "foo").unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.lease, kv.version),
        (b"bar".as_slice(), 0, 3)
    );
}

/// etcd's TestV3PutIgnoreLease.
#[test]
fn put_ignore_lease() {
    let mut h = Harness::new();
    let ignore = PutRequest {
        ignore_lease: true,
        ..put("zoo", "bar")
    };
    assert_eq!(
        h.err(Request::Put(ignore.clone())),
        "etcdserver: key not found"
    );
    let in_txn = txn(vec![], vec![RequestOp::Put(ignore.clone())], vec![]);
    assert_eq!(h.err(Request::Txn(in_txn)), "etcdserver: key not found");
    h.grant(9);
    h.ok(Request::Put(PutRequest {
        lease: 9,
        ..put("zoo", "bar")
    }));
    let keep_lease = PutRequest {
        ignore_lease: true,
        ..put("zoo", "bar1")
    };
    txn_response(
        &mut h,
        txn(vec![], vec![RequestOp::Put(keep_lease)], vec![]),
    );
    let kv = one(&mut h, "zoo").unwrap();
    assert_eq!((kv.value.as_slice(), kv.lease), (b"bar1".as_slice(), 9));
    let leased = PutRequest { lease: 9, ..ignore };
    assert_eq!(h.err(Request::Put(leased)), "etcdserver: lease is provided");
    h.ok(Request::Put(put("zoo", "bar")));
    assert_eq!(
        one(&mut h, "zoo").unwrap().lease,
        0,
        "a plain put detaches the lease"
    );
}

#[test]
fn empty_keys_are_rejected_everywhere() {
    let mut h = Harness::new();
    let empty = "etcdserver: key is not provided";
    assert_eq!(h.err(Request::Put(put("", "v"))), empty);
    assert_eq!(h.err(Request::DeleteRange(del("", "z"))), empty);
    assert_eq!(h.err(Request::Range(get("", "z"))), empty);
    assert_eq!(h.store.range(&get("", "")).unwrap_err().to_string(), empty);
    assert_eq!(
        h.store
            .read_view()
            .range(&get("", ""))
            .unwrap_err()
            .to_string(),
        empty
    );
    let bad_compare = txn(
        vec![cmp("", T::Version, R::Equal, U::Version(0))],
        vec![],
        vec![],
    );
    assert_eq!(h.err(Request::Txn(bad_compare)), empty);
    let nested = txn(
        vec![],
        vec![],
        vec![RequestOp::Txn(txn(
            vec![],
            vec![RequestOp::Put(put("", "v"))],
            vec![],
        ))],
    );
    assert_eq!(h.err(Request::Txn(nested)), empty);
}

/// etcd's TestV3TxnTooManyOps, plus the budget nested txns share.
#[test]
fn too_many_ops_in_txn() {
    let too_many = "etcdserver: too many operations in txn request";
    let n = MAX_TXN_OPS_DEFAULT + 1;
    let k = |i: usize| format!("key-{i}");
    let puts = |n: usize| {
        (0..n)
            .map(|i| RequestOp::Put(put(&k(i), "bar")))
            .collect::<Vec<_>>()
    };
    let cases = [
        txn(
            (0..n)
                .map(|i| cmp(&k(i), T::Create, R::Greater, U::CreateRevision(0)))
                .collect(),
            vec![],
            vec![],
        ),
        txn(vec![], puts(n), vec![]),
        txn(vec![], vec![], puts(n)),
        txn(
            vec![],
            (0..n)
                .map(|i| RequestOp::Txn(txn(vec![], vec![RequestOp::Put(put(&k(i), ""))], vec![])))
                .collect(),
            vec![],
        ),
    ];
    for t in cases {
        let err = validate(&Request::Txn(t.clone()), MAX_TXN_OPS_DEFAULT).unwrap_err();
        assert_eq!(err.to_string(), too_many);
        // The nested case needs one more: the nested txn's op counts against what is left.
        assert!(validate(&Request::Txn(t), n + 1).is_ok());
    }
    // 100 ops at the top leave 28 for a nested txn.
    let mut ops = puts(99);
    ops.push(RequestOp::Txn(txn(
        vec![],
        puts(29).into_iter().map(rename).collect(),
        vec![],
    )));
    let err = validate(
        &Request::Txn(txn(vec![], ops.clone(), vec![])),
        MAX_TXN_OPS_DEFAULT,
    )
    .unwrap_err();
    assert_eq!(err.to_string(), too_many);
    ops.pop();
    ops.push(RequestOp::Txn(txn(
        vec![],
        puts(28).into_iter().map(rename).collect(),
        vec![],
    )));
    assert!(validate(&Request::Txn(txn(vec![], ops, vec![])), MAX_TXN_OPS_DEFAULT).is_ok());
}

/// Gives a put a key of its own so only the op count matters.
fn rename(op: RequestOp) -> RequestOp {
    match op {
        RequestOp::Put(p) => RequestOp::Put(PutRequest {
            key: [b"nested-".as_slice(), &p.key].concat(),
            ..p
        }),
        other => other,
    }
}

/// etcd's TestV3TxnDuplicateKeys, plus the else branch, sibling order and the from-key quirk.
#[test]
fn duplicate_keys_in_txn() {
    let p = || RequestOp::Put(put("abc", "def"));
    let del_key = || RequestOp::DeleteRange(del("abc", ""));
    let del_in = || RequestOp::DeleteRange(del("a", "b"));
    let del_out = || RequestOp::DeleteRange(del("abb", "abc"));
    let then = |ops: Vec<RequestOp>| RequestOp::Txn(txn(vec![], ops, vec![]));
    let both = |op: fn() -> RequestOp| RequestOp::Txn(txn(vec![], vec![op()], vec![op()]));
    let dup = Err("etcdserver: duplicate key given in txn request".to_string());
    let cases: Vec<(Vec<RequestOp>, Result<(), String>)> = vec![
        (vec![p(), p()], dup.clone()),
        (vec![p(), del_key()], dup.clone()),
        (vec![p(), del_in()], dup.clone()),
        (vec![p(), then(vec![del_in()])], dup.clone()),
        (vec![del_in(), then(vec![p()])], dup.clone()),
        (vec![both(p), both(p)], dup.clone()),
        (vec![del_out(), both(p)], Ok(())),
        (vec![then(vec![del_in()]), both(del_in)], Ok(())),
        (vec![del_key(), del_in(), del_key(), del_in()], Ok(())),
        (vec![p(), del_out()], Ok(())),
        // Not in etcd's table, same rules:
        (
            vec![RequestOp::Txn(txn(vec![], vec![], vec![p(), p()]))],
            dup.clone(),
        ),
        (
            vec![
                then(vec![p()]),
                RequestOp::Txn(txn(vec![], vec![], vec![p()])),
            ],
            dup.clone(),
        ),
        // A put in an earlier nested txn may be deleted by a later one...
        (vec![then(vec![p()]), then(vec![del_key()])], Ok(())),
        // ...but not the other way round.
        (vec![then(vec![del_key()]), then(vec![p()])], dup.clone()),
        // etcd's interval check takes range_end "\0" literally: an empty interval.
        (vec![RequestOp::DeleteRange(del("a", "\0")), p()], Ok(())),
    ];
    for (i, (ops, want)) in cases.into_iter().enumerate() {
        let request = Request::Txn(txn(vec![], ops, vec![]));
        let got = validate(&request, MAX_TXN_OPS_DEFAULT).map_err(|e| e.to_string());
        assert_eq!(got, want, "case {i}");
        let mut h = Harness::new();
        assert_eq!(
            h.apply(request).map(|_| ()).map_err(|e| e.to_string()),
            want,
            "case {i} applied"
        );
    }
}

/// etcd's TestV3TxnRevision.
#[test]
fn txn_header_revision() {
    let mut h = Harness::new();
    let put_rev = put_rev(&mut h, "abc", "def");
    let read = txn_response(
        &mut h,
        txn(vec![], vec![RequestOp::Range(get("abc", ""))], vec![]),
    );
    assert_eq!(
        read.header.revision, put_rev,
        "read-only txn keeps the revision"
    );
    let no_op = txn_response(
        &mut h,
        txn(vec![], vec![RequestOp::DeleteRange(del("def", ""))], vec![]),
    );
    assert_eq!(
        no_op.header.revision, put_rev,
        "a delete of nothing keeps the revision"
    );
    let write = txn_response(
        &mut h,
        txn(vec![], vec![RequestOp::Put(put("abc", "123"))], vec![]),
    );
    assert_eq!(write.header.revision, put_rev + 1);
}

/// etcd's TestV3TxnRangeCompare.
#[test]
fn txn_range_compares() {
    let mut h = Harness::new();
    for k in ["/a/2", "/a/3", "/a/4", "/f/5"] {
        put_rev(&mut h, k, "x");
    }
    let c = |end: &str, t: T, r: R, u: U| crate::mvcc::Compare {
        range_end: end.into(),
        ..cmp("/a/", t, r, u)
    };
    let cases = [
        (c("\0", T::Create, R::Less, U::CreateRevision(6)), true),
        (c("\0", T::Create, R::Less, U::CreateRevision(5)), false),
        (c("/a0", T::Create, R::Less, U::CreateRevision(5)), true),
        (c("/a0", T::Create, R::Less, U::CreateRevision(4)), false),
        (
            crate::mvcc::Compare {
                key: "/b/".into(),
                ..c("/b0", T::Value, R::Equal, U::Value(b"x".to_vec()))
            },
            false,
        ),
        (c("/a0", T::Lease, R::Greater, U::Lease(0)), false),
        (c("/a0", T::Lease, R::Equal, U::Lease(0)), true),
    ];
    for (i, (compare, want)) in cases.into_iter().enumerate() {
        assert_eq!(
            txn_response(&mut h, txn(vec![compare], vec![], vec![])).succeeded,
            want,
            "case {i}"
        );
    }
}

#[test]
fn compares_on_missing_keys_and_mismatched_targets() {
    let mut h = Harness::new();
    let holds = |h: &mut Harness, c| txn_response(h, txn(vec![c], vec![], vec![])).succeeded;
    assert!(holds(
        &mut h,
        cmp("nope", T::Version, R::Equal, U::Version(0))
    ));
    assert!(holds(
        &mut h,
        cmp("nope", T::Create, R::Equal, U::CreateRevision(0))
    ));
    assert!(
        !holds(&mut h, cmp("nope", T::Value, R::Equal, U::Value(vec![]))),
        "value compares need a key"
    );
    put_rev(&mut h, "k", "");
    assert!(holds(
        &mut h,
        cmp("k", T::Value, R::Equal, U::Value(vec![]))
    ));
    // A target union that does not match the target compares against zero, as in etcd.
    assert!(holds(
        &mut h,
        cmp("k", T::Version, R::Greater, U::ModRevision(100))
    ));
    assert!(holds(&mut h, cmp("k", T::Mod, R::NotEqual, U::Version(2))));
}

/// etcd's TestV3TxnNestedPath, with the nested headers etcd leaves at zero.
#[test]
fn nested_txn_follows_its_path() {
    let mut h = Harness::new();
    let cmp_true = cmp("k", T::Version, R::Equal, U::Version(0));
    let cmp_false = cmp("k", T::Version, R::Equal, U::Version(1));
    let path = [
        true, false, false, true, true, false, true, false, true, true,
    ];
    let mut inner = TxnRequest::default();
    for &ok in path.iter().rev() {
        let op = RequestOp::Txn(inner);
        inner = if ok {
            txn(vec![cmp_true.clone()], vec![op], vec![])
        } else {
            txn(vec![cmp_false.clone()], vec![], vec![op])
        };
    }
    let mut t = txn_response(&mut h, inner);
    assert_eq!(t.header.revision, 1);
    for (depth, &ok) in path.iter().enumerate() {
        assert_eq!(t.succeeded, ok, "depth {depth}");
        let Some(ResponseOp::Txn(next)) = t.responses.pop() else {
            panic!("depth {depth}")
        };
        assert_eq!(next.header.revision, 0, "nested header at depth {depth}");
        t = next;
    }
}

#[test]
fn txn_ops_see_earlier_writes_and_compares_see_the_state_before() {
    let mut h = Harness::new();
    put_rev(&mut h, "a", "old");
    let nested = txn(
        vec![cmp("b", T::Version, R::Equal, U::Version(0))],
        vec![RequestOp::Range(get("b", ""))],
        vec![],
    );
    let t = txn(
        vec![],
        vec![
            RequestOp::Put(PutRequest {
                prev_kv: true,
                ..put("b", "new")
            }),
            RequestOp::Range(get("a", "c")),
            RequestOp::Txn(nested),
            RequestOp::DeleteRange(DeleteRangeRequest {
                prev_kv: true,
                ..del("a", "")
            }),
            RequestOp::Range(get("a", "c")),
        ],
        vec![],
    );
    let r = txn_response(&mut h, t);
    assert_eq!(r.header.revision, 3);
    let [ResponseOp::Put(p), ResponseOp::Range(r1), ResponseOp::Txn(n), ResponseOp::DeleteRange(d), ResponseOp::Range(r2)] =
        r.responses.as_slice()
    else {
        panic!("{r:?}")
    };
    assert_eq!((p.header.revision, &p.prev_kv), (3, &None));
    assert_eq!(
        (keys_of(&r1.kvs), r1.header.revision),
        (vec!["a".into(), "b".into()], 3)
    );
    assert_eq!(r1.kvs[1].mod_revision, 3);
    assert!(n.succeeded, "nested compares run before the put");
    let [ResponseOp::Range(nr)] = n.responses.as_slice() else {
        panic!()
    };
    assert_eq!(nr.kvs[0].value, b"new", "but nested ops see it");
    assert_eq!(
        (d.deleted, d.header.revision, d.prev_kvs[0].value.as_slice()),
        (1, 3, b"old".as_slice())
    );
    assert_eq!(keys_of(&r2.kvs), vec!["b".to_string()]);
    let stored = range(&mut h, get("a", "c")).kvs;
    assert_eq!(keys_of(&stored), vec!["b".to_string()]);
}

/// A range request changed by `f`.
fn with(r: RangeRequest, f: impl FnOnce(&mut RangeRequest)) -> RangeRequest {
    let mut r = r;
    f(&mut r);
    r
}

/// One group of etcd's TestV3RangeRequest: put `puts` in order, then check each request's
/// keys, `more` and `count`.
fn check_ranges(puts: &[&str], cases: Vec<(RangeRequest, Vec<&str>, bool, i64)>) {
    let mut h = Harness::new();
    for k in puts {
        put_rev(&mut h, k, "bar");
    }
    for (i, (request, keys, more, count)) in cases.into_iter().enumerate() {
        let resp = range(&mut h, request);
        assert_eq!(keys_of(&resp.kvs), keys, "#{i} keys");
        assert_eq!((resp.more, resp.count), (more, count), "#{i} more, count");
        assert_eq!(resp.header.revision, puts.len() as i64 + 1, "#{i} header");
    }
}

#[test]
fn range_single_key_and_key_ranges() {
    check_ranges(
        &["foo", "bar"],
        vec![
            (get("foo", ""), vec!["foo"], false, 1),
            (get("baz", ""), vec![], false, 0),
        ],
    );
    check_ranges(
        &["a", "b", "c", "d", "e"],
        vec![
            (get("a", "z"), vec!["a", "b", "c", "d", "e"], false, 5),
            (get("b", "d"), vec!["b", "c"], false, 2),
            (get("f", "z"), vec![], false, 0),
            (get("c", "c"), vec![], false, 0),
            (get("d", "b"), vec![], false, 0),
            (get("\0", "\0"), vec!["a", "b", "c", "d", "e"], false, 5),
        ],
    );
}

#[test]
fn range_at_past_revisions() {
    let at = |rev| with(get("a", "z"), |r| r.revision = rev);
    check_ranges(
        &["a", "b", "c", "d", "e"],
        vec![
            (at(0), vec!["a", "b", "c", "d", "e"], false, 5),
            (at(1), vec![], false, 0),
            (at(2), vec!["a"], false, 1),
            (at(3), vec!["a", "b"], false, 2),
        ],
    );
}

#[test]
fn range_limit_sets_more() {
    let limit = |n| with(get("a", "z"), |r| r.limit = n);
    check_ranges(
        &["a", "b", "c"],
        vec![
            (limit(1), vec!["a"], true, 3),
            (limit(2), vec!["a", "b"], true, 3),
            (limit(3), vec!["a", "b", "c"], false, 3),
            (limit(4), vec!["a", "b", "c"], false, 3),
        ],
    );
}

#[test]
fn range_sort_orders_and_targets() {
    let sorted = |key, limit, order, target| {
        with(get(key, "z"), |r| {
            (r.limit, r.sort_order, r.sort_target) = (limit, order, target)
        })
    };
    let (asc, desc, none) = (SortOrder::Ascend, SortOrder::Descend, SortOrder::None);
    check_ranges(
        &["b", "a", "c", "d", "c"],
        vec![
            (sorted("a", 1, asc, SortTarget::Key), vec!["a"], true, 4),
            (sorted("a", 1, desc, SortTarget::Key), vec!["d"], true, 4),
            (sorted("a", 1, asc, SortTarget::Create), vec!["b"], true, 4),
            (sorted("a", 1, desc, SortTarget::Mod), vec!["c"], true, 4),
            (sorted("z", 1, desc, SortTarget::Create), vec![], false, 0),
            // A target other than KEY with order NONE sorts ascending.
            (
                sorted("a", 10, none, SortTarget::Create),
                vec!["b", "a", "c", "d"],
                false,
                4,
            ),
        ],
    );
}

#[test]
fn range_min_max_filters() {
    let all = || get("\0", "\0");
    let (min_mod, max_mod) = (
        |v| with(all(), |r| r.min_mod_revision = v),
        |v| with(all(), |r| r.max_mod_revision = v),
    );
    check_ranges(
        &["rev2", "rev3", "rev4", "rev5", "rev6"],
        vec![
            (min_mod(3), vec!["rev3", "rev4", "rev5", "rev6"], false, 5),
            (max_mod(3), vec!["rev2", "rev3"], false, 5),
            (
                with(min_mod(3), |r| r.max_mod_revision = 5),
                vec!["rev3", "rev4", "rev5"],
                false,
                5,
            ),
            (
                max_mod(10),
                vec!["rev2", "rev3", "rev4", "rev5", "rev6"],
                false,
                5,
            ),
        ],
    );
    let min_create = |v| with(all(), |r| r.min_create_revision = v);
    let max_create = |v| with(all(), |r| r.max_create_revision = v);
    check_ranges(
        &["rev2", "rev3", "rev2", "rev2", "rev6", "rev3"],
        vec![
            (min_create(3), vec!["rev3", "rev6"], false, 3),
            (max_create(3), vec!["rev2", "rev3"], false, 3),
            (
                with(min_create(3), |r| r.max_create_revision = 5),
                vec!["rev3"],
                false,
                3,
            ),
            (max_create(10), vec!["rev2", "rev3", "rev6"], false, 3),
        ],
    );
}

#[test]
fn count_only_keys_only_and_limit_with_sort_target() {
    let mut h = Harness::new();
    for (k, v) in [("a", "3"), ("b", "1"), ("c", "2"), ("a", "4")] {
        put_rev(&mut h, k, v);
    }
    let r = range(
        &mut h,
        RangeRequest {
            count_only: true,
            limit: 1,
            ..get("a", "z")
        },
    );
    assert_eq!((r.kvs.len(), r.count, r.more), (0, 3, false));
    let r = range(
        &mut h,
        RangeRequest {
            keys_only: true,
            ..get("a", "z")
        },
    );
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()) && r.kvs[0].version == 2);
    // Order NONE with a non-key target fetches limit+1 keys in key order, then sorts those.
    let r = range(
        &mut h,
        RangeRequest {
            limit: 1,
            sort_target: SortTarget::Value,
            ..get("a", "z")
        },
    );
    assert_eq!(
        (keys_of(&r.kvs), r.more, r.count),
        (vec!["b".to_string()], true, 3)
    );
    // Explicit order fetches everything first.
    let r = range(
        &mut h,
        RangeRequest {
            limit: 1,
            sort_order: SortOrder::Descend,
            sort_target: SortTarget::Value,
            ..get("a", "z")
        },
    );
    assert_eq!(keys_of(&r.kvs), vec!["a".to_string()]);
    // Filters apply before the limit but not to the count.
    let r = range(
        &mut h,
        RangeRequest {
            limit: 1,
            min_mod_revision: 4,
            ..get("a", "z")
        },
    );
    assert_eq!(
        (keys_of(&r.kvs), r.more, r.count),
        (vec!["a".to_string()], true, 3)
    );
    let r = range(
        &mut h,
        RangeRequest {
            limit: 1,
            max_mod_revision: 4,
            min_mod_revision: 4,
            ..get("a", "z")
        },
    );
    assert_eq!(
        (keys_of(&r.kvs), r.more, r.count),
        (vec!["c".to_string()], false, 3)
    );
}

#[test]
fn range_revision_errors() {
    let mut h = Harness::new();
    for v in ["1", "2", "3", "4"] {
        put_rev(&mut h, "k", v);
    }
    h.ok(compact(3));
    let at = |rev| RangeRequest {
        revision: rev,
        ..get("k", "")
    };
    assert_eq!(
        h.store.range(&at(2)).unwrap_err().to_string(),
        "mvcc: required revision has been compacted"
    );
    assert_eq!(
        h.store.range(&at(6)).unwrap_err().to_string(),
        "mvcc: required revision is a future revision"
    );
    assert_eq!(
        range(&mut h, at(3)).kvs[0].value,
        b"2",
        "the compaction revision stays readable"
    );
    assert_eq!(
        range(&mut h, at(-5)).kvs[0].value,
        b"4",
        "a negative revision reads the current one"
    );
    assert_eq!(
        h.err(Request::Range(at(2))),
        "mvcc: required revision has been compacted"
    );
    // etcd's txn check compares a negative revision with the compaction revision.
    let in_txn = |rev| Request::Txn(txn(vec![], vec![RequestOp::Range(at(rev))], vec![]));
    assert_eq!(
        h.err(in_txn(-5)),
        "mvcc: required revision has been compacted"
    );
    assert_eq!(
        h.err(in_txn(6)),
        "mvcc: required revision is a future revision"
    );
    assert_eq!(
        h.err(in_txn(2)),
        "mvcc: required revision has been compacted"
    );
    let Response::Txn(t) = h.ok(in_txn(3)) else {
        panic!()
    };
    let [ResponseOp::Range(r)] = t.responses.as_slice() else {
        panic!()
    };
    assert_eq!(
        (r.kvs[0].value.as_slice(), r.header.revision),
        (b"2".as_slice(), 5)
    );
}

#[test]
fn compaction_keeps_the_latest_revision_and_drops_old_tombstones() {
    let mut h = Harness::new();
    put_rev(&mut h, "a", "1"); // 2
    put_rev(&mut h, "a", "2"); // 3
    put_rev(&mut h, "b", "1"); // 4
    h.ok(Request::DeleteRange(del("b", ""))); // 5
    put_rev(&mut h, "c", "1"); // 6
    h.ok(Request::DeleteRange(del("c", ""))); // 7
    put_rev(&mut h, "d", "1"); // 8
    assert_eq!(stored_revisions(&mut h), vec![2, 3, 4, 5, 6, 7, 8]);
    let Response::Compaction(c) = h.ok(compact(7)) else {
        panic!()
    };
    assert_eq!(c.header.revision, 8);
    // a keeps 3; b's tombstone at 5 < 7 goes with b; c's tombstone at exactly 7 stays.
    assert_eq!(stored_revisions(&mut h), vec![3, 7, 8]);
    let at7 = range(
        &mut h,
        RangeRequest {
            revision: 7,
            ..get("\0", "\0")
        },
    );
    assert_eq!(keys_of(&at7.kvs), vec!["a".to_string()]);
    h.ok(compact(8));
    assert_eq!(stored_revisions(&mut h), vec![3, 8]);
    assert!(h.store.index_matches_tree().unwrap());
}

#[test]
fn compaction_errors() {
    let mut h = Harness::new();
    put_rev(&mut h, "a", "1");
    assert_eq!(
        h.err(compact(3)),
        "mvcc: required revision is a future revision"
    );
    h.ok(compact(2));
    assert_eq!(
        h.err(compact(2)),
        "mvcc: required revision has been compacted"
    );
    assert_eq!(
        h.err(compact(1)),
        "mvcc: required revision has been compacted"
    );
    assert_eq!(
        (h.store.compact_revision(), h.store.current_revision()),
        (2, 2)
    );
}

#[test]
fn apply_skips_entries_at_or_below_the_applied_index() {
    let mut h = Harness::new();
    let at = |index| RaftPosition { index, term: 2 };
    let batch = [
        Request::Put(put("a", "1")),
        Request::DeleteRange(del("nothing", "")),
        Request::Put(put("b", "1")),
    ];
    let ApplyOutcome::Applied(r) = h.store.apply(at(5), &batch).unwrap() else {
        panic!()
    };
    assert_eq!(r.len(), 3);
    assert_eq!((h.store.current_revision(), h.store.applied()), (3, at(5)));
    for index in [5, 3, 0] {
        assert!(matches!(
            h.store.apply(at(index), &batch).unwrap(),
            ApplyOutcome::Skipped
        ));
    }
    assert_eq!(h.store.current_revision(), 3);
    let ApplyOutcome::Applied(r) = h.store.apply(at(6), &batch[..1]).unwrap() else {
        panic!()
    };
    assert!(matches!(&r[0], Ok(Response::Put(p)) if p.header.revision == 4));
    let ApplyOutcome::Applied(r) = h.store.apply(at(7), &[]).unwrap() else {
        panic!()
    };
    assert!(r.is_empty());
    assert_eq!(
        h.store.applied(),
        at(7),
        "an empty entry still advances the applied index"
    );
}

#[test]
fn puts_naming_a_lease_not_granted_fail() {
    let mut h = Harness::new();
    h.grant(7);
    let leased = |lease| PutRequest {
        lease,
        ..put("k", "v")
    };
    let results = h.apply_batch(&[
        Request::Put(leased(8)),
        Request::Put(leased(7)),
        Request::Txn(txn(vec![], vec![RequestOp::Put(leased(8))], vec![])),
        Request::Txn(txn(vec![], vec![], vec![RequestOp::Put(leased(8))])),
    ]);
    let messages: Vec<String> = results
        .iter()
        .map(|r| {
            r.as_ref()
                .map(|_| String::new())
                .unwrap_or_else(|e| e.to_string())
        })
        .collect();
    let missing = "etcdserver: requested lease not found".to_string();
    assert_eq!(
        messages,
        vec![missing.clone(), String::new(), missing, String::new()]
    );
    assert_eq!(
        (h.store.current_revision(), one(&mut h, "k").unwrap().lease),
        (2, 7)
    );
}

/// etcd panics on this (a from-key delete is not caught by its interval check, then the put
/// finds its key gone); cairn rolls the txn back and returns the error.
#[test]
fn txn_failing_midway_is_rolled_back() {
    let mut h = Harness::new();
    put_rev(&mut h, "a", "1");
    put_rev(&mut h, "b", "1");
    let hash = h.store.hash_kv(0).unwrap();
    let t = txn(
        vec![],
        vec![
            RequestOp::DeleteRange(del("a", "\0")),
            RequestOp::Put(PutRequest {
                ignore_value: true,
                ..put("b", "")
            }),
        ],
        vec![],
    );
    assert_eq!(h.err(Request::Txn(t)), "etcdserver: key not found");
    assert_eq!(h.store.current_revision(), 3);
    assert_eq!(h.store.hash_kv(0).unwrap(), hash);
    assert!(h.store.index_matches_tree().unwrap());
    assert_eq!(
        keys_of(&range(&mut h, get("a", "z")).kvs),
        vec!["a".to_string(), "b".to_string()]
    );
    assert_eq!(put_rev(&mut h, "c", "1"), 4);
}

#[test]
fn hash_kv_is_deterministic_and_checks_revisions() {
    let history = [
        Request::Put(put("a", "1")),
        Request::Put(put("b", "1")),
        Request::DeleteRange(del("a", "")),
        Request::Put(put("a", "2")),
    ];
    let mut one = Harness::new();
    let mut two = Harness::new();
    one.apply_batch(&history);
    for request in &history {
        two.apply(request.clone()).unwrap();
    }
    let fresh = Harness::new().store.hash_kv(0).unwrap();
    assert_eq!(
        (fresh.hash, fresh.compact_revision, fresh.header.revision),
        (0, -1, 1)
    );
    let h1 = one.store.hash_kv(0).unwrap();
    assert_eq!(h1, two.store.hash_kv(0).unwrap());
    assert_ne!(h1.hash, one.store.hash_kv(4).unwrap().hash);
    assert_eq!(one.store.hash_kv(4).unwrap().header.revision, 5);
    one.ok(compact(4));
    two.ok(compact(4));
    let h2 = one.store.hash_kv(5).unwrap();
    assert_eq!(
        (h2, h2.compact_revision),
        (two.store.hash_kv(5).unwrap(), 4)
    );
    assert_ne!(h2.hash, h1.hash, "compaction dropped the put at 2");
    assert_eq!(
        one.store.hash_kv(3).unwrap_err().to_string(),
        "mvcc: required revision has been compacted"
    );
    assert_eq!(
        one.store.hash_kv(6).unwrap_err().to_string(),
        "mvcc: required revision is a future revision"
    );
}

#[test]
fn reopen_after_checkpoint_restores_everything() {
    let mut h = Harness::new();
    for (k, v) in [("a", "1"), ("b", "1"), ("a", "2")] {
        put_rev(&mut h, k, v);
    }
    h.ok(Request::DeleteRange(del("b", "")));
    h.ok(compact(3));
    h.store.checkpoint().unwrap();
    let before = (
        h.store.hash_kv(0).unwrap(),
        h.store.applied(),
        range(&mut h, get("\0", "\0")),
    );
    let reopened = Store::from_db(h.store.into_db()).unwrap();
    let after = (
        reopened.hash_kv(0).unwrap(),
        reopened.applied(),
        reopened.range(&get("\0", "\0")).unwrap(),
    );
    assert_eq!(before, after);
    assert_eq!(
        (reopened.current_revision(), reopened.compact_revision()),
        (5, 3)
    );
    assert!(reopened.index_matches_tree().unwrap());
}

/// The same through the file, and a crash: writes after the checkpoint are lost and replayed.
#[test]
fn reopen_from_disk_and_replay_after_crash() {
    let mut h = Harness::new();
    let entry = |i: u64| {
        (
            RaftPosition { index: i, term: 1 },
            [Request::Put(put("k", &i.to_string()))],
        )
    };
    for i in 1..=3 {
        let (at, batch) = entry(i);
        h.store.apply(at, &batch).unwrap();
    }
    h.store.checkpoint().unwrap();
    let (at, batch) = entry(4);
    h.store.apply(at, &batch).unwrap();
    // Close without a checkpoint: the put at index 4 is lost, then replayed.
    h.reopen(|old, path| {
        drop(old);
        Store::open(path, DbOptions::default())
    })
    .unwrap();
    assert_eq!(
        (h.store.applied().index, h.store.current_revision()),
        (3, 4)
    );
    for i in 1..=4 {
        let (at, batch) = entry(i);
        let outcome = h.store.apply(at, &batch).unwrap();
        assert_eq!(matches!(outcome, ApplyOutcome::Skipped), i <= 3);
    }
    assert_eq!(one(&mut h, "k").unwrap().value, b"4");
    assert_eq!(h.store.current_revision(), 5);
}

#[test]
fn open_rejects_bad_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(dir.path().join("db"), DbOptions::default()).unwrap();
    db.commit(CommitMeta {
        applied_index: 1,
        applied_term: 1,
        user: vec![7, 7],
    })
    .unwrap();
    assert!(matches!(Store::from_db(db), Err(MvccError::CorruptMeta(_))));
    let mut db = Db::open(dir.path().join("db2"), DbOptions::default()).unwrap();
    let record = crate::mvcc::record::Record::put(b"k", 2, 1, 0, b"v").encode();
    db.put(PRIMARY_TREE, &Revision::new(2, 0).to_key(), &record)
        .unwrap();
    assert!(
        matches!(Store::from_db(db), Err(MvccError::CorruptMeta(_))),
        "records without metadata"
    );
}

#[test]
fn corrupt_record_stops_the_store() {
    let mut h = Harness::new();
    put_rev(&mut h, "k", "v");
    h.store
        .db_mut()
        .put(PRIMARY_TREE, &Revision::new(2, 0).to_key(), b"garbage")
        .unwrap();
    let at = RaftPosition {
        index: 100,
        term: 1,
    };
    let err = h
        .store
        .apply(at, &[Request::Range(get("k", ""))])
        .unwrap_err();
    assert!(
        matches!(err, MvccError::CorruptRecord { .. }) && err.is_fatal(),
        "{err}"
    );
    let next = RaftPosition {
        index: 101,
        term: 1,
    };
    assert!(matches!(h.store.apply(next, &[]), Err(MvccError::Poisoned)));
    assert!(matches!(h.store.checkpoint(), Err(MvccError::Poisoned)));
    assert!(h.store.range(&get("k", "")).is_err());
}

#[test]
fn requests_round_trip_through_rkyv() {
    let nested = txn(
        vec![cmp("k", T::Mod, R::Less, U::ModRevision(9))],
        vec![RequestOp::Range(get("a", "\0"))],
        vec![],
    );
    let request = Request::Txn(txn(
        vec![cmp("k", T::Value, R::NotEqual, U::Value(b"v".to_vec()))],
        vec![RequestOp::Put(put("k", "v")), RequestOp::Txn(nested)],
        vec![RequestOp::DeleteRange(del("a", "b"))],
    ));
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&request).unwrap();
    let archived =
        rkyv::access::<crate::mvcc::ArchivedRequest, rkyv::rancor::Error>(&bytes).unwrap();
    assert!(matches!(archived, crate::mvcc::ArchivedRequest::Txn(_)));
    assert_eq!(
        rkyv::from_bytes::<Request, rkyv::rancor::Error>(&bytes).unwrap(),
        request
    );
    let mut h = Harness::new();
    let response = h.ok(request);
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&response).unwrap();
    assert_eq!(
        rkyv::from_bytes::<Response, rkyv::rancor::Error>(&bytes).unwrap(),
        response
    );
}

/// Compaction drops revisions from the index at once and deletes their records from the
/// tree in bounded steps; a crash in between leaves records that reopening finds again.
#[test]
fn compaction_deletes_records_in_steps_and_resumes_after_a_crash() {
    let mut h = Harness::new();
    for i in 0..50 {
        put_rev(&mut h, "k", &i.to_string()); // revisions 2..=51
    }
    let at = RaftPosition {
        index: 1000,
        term: 1,
    };
    let rev = h.store.current_revision();
    let hash_before = h.store.hash_kv(rev).unwrap();
    h.store.apply(at, &[compact(rev)]).unwrap();
    // The index walk is still to do (one key: one step); then 49 records to delete.
    assert_eq!(h.store.compaction_backlog(), 1);
    assert_eq!(h.store.compact_step(10).unwrap(), 39);
    // The hash and reads do not depend on how far the deletions have got.
    let hash_mid = h.store.hash_kv(rev).unwrap();
    assert_eq!(one(&mut h, "k").unwrap().value, b"49");
    h.store.checkpoint().unwrap();
    h.reopen(|old, path| {
        drop(old);
        Store::open(path, DbOptions::default())
    })
    .unwrap();
    assert_eq!(h.store.compaction_backlog(), 39);
    assert_eq!(h.store.hash_kv(rev).unwrap(), hash_mid);
    h.store.finish_compaction().unwrap();
    assert_eq!(h.store.compaction_backlog(), 0);
    assert_eq!(stored_revisions(&mut h), vec![51]);
    assert_eq!(h.store.hash_kv(rev).unwrap().hash, hash_mid.hash);
    assert_ne!(
        hash_before.hash, hash_mid.hash,
        "compaction changes the kept history"
    );
    assert!(h.store.index_matches_tree().unwrap());
}

/// Compaction walks the key index a chunk of keys at a time, between which readers and
/// writers go on: reads at or above the compaction revision find the same whatever keys
/// the walk has reached, reads below it fail at once, writes in between are kept, and a
/// crash in the middle of the walk loses nothing (reopening compacts the rebuilt index).
#[test]
fn compaction_walks_the_index_in_chunks_between_which_reads_and_writes_go_on() {
    let mut h = Harness::new();
    let keys = 10_000;
    for i in 0..keys {
        put_rev(&mut h, &format!("k{i:05}"), "old");
        put_rev(&mut h, &format!("k{i:05}"), "new");
    }
    let before_compaction = h.store.current_revision();
    // Applied straight to the store: the harness would finish the compaction at once.
    let mut index = 1_000_000;
    let mut apply = |h: &mut Harness, r: Request| {
        index += 1;
        let at = RaftPosition { index, term: 1 };
        match h.store.apply(at, &[r]).unwrap() {
            ApplyOutcome::Applied(mut results) => results.pop().unwrap().unwrap(),
            ApplyOutcome::Skipped => panic!("skipped"),
        }
    };
    apply(&mut h, compact(before_compaction));
    // Applying it only began it: the walk (one count) is still to do, no record is yet.
    assert_eq!(h.store.compaction_backlog(), 1);
    // Reads below the compaction revision fail before any key is compacted.
    let below = RangeRequest {
        revision: before_compaction - 1,
        ..get("k00000", "")
    };
    assert!(matches!(h.store.range(&below), Err(MvccError::Compacted)));
    let count_all = |h: &mut Harness, rev: i64| {
        let r = RangeRequest {
            revision: rev,
            count_only: true,
            ..get("k", "l")
        };
        h.store.range(&r).unwrap().count
    };
    let mut steps = 0;
    let mut written = Vec::new();
    while h.store.compaction_backlog() > 0 {
        // Between steps: a write to a key the walk has passed, one it has not reached,
        // and reads at the compaction revision and now.
        let i = steps * 997 % keys;
        let key = format!("k{i:05}");
        let Response::Put(p) = apply(&mut h, Request::Put(put(&key, &format!("s{steps}")))) else {
            panic!("not a put response");
        };
        written.push((key, p.header.revision));
        assert_eq!(count_all(&mut h, before_compaction), keys as i64);
        let r = RangeRequest {
            revision: before_compaction,
            ..get("k09999", "")
        };
        assert_eq!(h.store.range(&r).unwrap().kvs[0].value, b"new");
        h.store.compact_step(1000).unwrap();
        steps += 1;
        if steps == 2 {
            // A crash in the middle of the walk, after a checkpoint.
            h.store.checkpoint().unwrap();
            h.reopen(|old, path| {
                drop(old);
                Store::open(path, DbOptions::default())
            })
            .unwrap();
        }
    }
    assert!(steps > 3, "the walk took {steps} steps");
    assert!(h.store.index_matches_tree().unwrap());
    for (key, rev) in written {
        let kv = one(&mut h, &key).unwrap();
        assert!(kv.mod_revision >= rev, "{key}: {kv:?}");
    }
    // Each key keeps only its revision at the compaction and those after it.
    let kept = stored_revisions(&mut h);
    assert_eq!(
        kept.iter().filter(|&&r| r <= before_compaction).count(),
        keys
    );
}
