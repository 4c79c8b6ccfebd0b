//! The etcd v3 gRPC API of real `cairn serve` processes, through the generated tonic
//! client: each KV, Watch, Lease, Cluster and Maintenance call with its results, response
//! headers and etcd's error codes and messages, on a 3-member cluster through a follower;
//! the `hasleader` metadata; limits, malformed requests and unknown methods, after which
//! the member still serves. `tests/etcdctl.rs` compares etcdctl's output with etcd's.

mod common;

use cairn::grpc::pb::etcdserverpb as pb;
use common::cluster::{poll, Cluster};
use pb::cluster_client::ClusterClient;
use pb::kv_client::KvClient;
use pb::lease_client::LeaseClient;
use pb::maintenance_client::MaintenanceClient;
use pb::watch_client::WatchClient;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Code;

const CONVERGE: Duration = Duration::from_secs(20);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn channel(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("URL")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

fn put(key: &str, value: &str) -> pb::PutRequest {
    pb::PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

fn range(key: &str) -> pb::RangeRequest {
    pb::RangeRequest {
        key: key.into(),
        ..Default::default()
    }
}

fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

fn keys(r: &pb::RangeResponse) -> Vec<String> {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

#[track_caller]
fn assert_status<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, message: &str) {
    match r {
        Err(s) => assert_eq!((s.code(), s.message()), (code, message), "{s:?}"),
        Ok(v) => panic!("expected {code:?} {message:?}, got {v:?}"),
    }
}

/// The follower of a 3-member cluster answers every call as etcd would: KV, Maintenance,
/// Cluster and Lease, with headers naming the cluster, the member and the Raft term.
#[test]
fn a_follower_serves_the_etcd_api() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(&[0, 1, 2], CONVERGE);
    let follower = (leader + 1) % 3;
    let (cluster_id, follower_id) = {
        let s = c.status(follower).expect("status");
        (s.cluster_id, s.member_id)
    };
    let grpc_addrs: Vec<String> = c.members.iter().map(|m| m.grpc_addr.clone()).collect();
    let rt = runtime();
    rt.block_on(async {
        let ch = channel(&grpc_addrs[follower]).await;
        let mut kv = KvClient::new(ch.clone());
        kv_calls(&mut kv, cluster_id, follower_id).await;
        maintenance_calls(&ch, &grpc_addrs, follower_id, c.members[leader].id).await;
        cluster_calls(&ch, &c, &grpc_addrs).await;
        lease_calls(&ch, &mut kv).await;
        watch_calls(&ch, &mut kv).await;
    });
    // With the other two gone, the follower has no leader: `hasleader` requests are
    // refused at once, as etcd refuses them.
    let others: Vec<usize> = (0..3).filter(|&i| i != follower).collect();
    for &i in &others {
        c.kill(i);
    }
    rt.block_on(async {
        let mut kv = KvClient::new(channel(&grpc_addrs[follower]).await);
        poll(CONVERGE, "the follower knows no leader", || {
            c.status(follower).filter(|s| s.leader == 0)
        });
        let mut req = tonic::Request::new(range("a"));
        req.metadata_mut()
            .insert("hasleader", "true".parse().expect("metadata"));
        assert_status(
            kv.range(req).await,
            Code::Unavailable,
            "etcdserver: no leader",
        );
        // Without it, a serializable read is still served.
        let ser = pb::RangeRequest {
            serializable: true,
            ..range("a")
        };
        assert!(kv.range(ser).await.is_ok());
    });
}

async fn kv_calls(kv: &mut KvClient<Channel>, cluster_id: u64, member_id: u64) {
    let first = kv.put(put("a", "1")).await.expect("put").into_inner();
    let h = first.header.expect("header");
    assert_eq!((h.cluster_id, h.member_id), (cluster_id, member_id));
    assert!(h.raft_term > 0 && h.revision > 1, "{h:?}");
    let rev_a = h.revision;
    for (k, v) in [("b", "22"), ("c", "333"), ("d", "4")] {
        kv.put(put(k, v)).await.expect("put");
    }
    // prev_kv, ignore_value.
    let r = kv
        .put(pb::PutRequest {
            prev_kv: true,
            ..put("a", "11")
        })
        .await
        .expect("put")
        .into_inner();
    let prev = r.prev_kv.expect("prev_kv");
    assert_eq!(
        (prev.value.as_slice(), prev.mod_revision),
        (&b"1"[..], rev_a)
    );
    let r = kv
        .put(pb::PutRequest {
            ignore_value: true,
            ..put("a", "")
        })
        .await
        .expect("put with ignore_value");
    let rev_now = r.into_inner().header.expect("header").revision;
    let got = kv.range(range("a")).await.expect("range").into_inner();
    assert_eq!(got.kvs[0].value, b"11");
    assert_eq!((got.kvs[0].version, got.kvs[0].mod_revision), (3, rev_now));

    // Range with its fields.
    let all = pb::RangeRequest {
        range_end: vec![0],
        ..range("a")
    };
    let r = kv.range(all.clone()).await.expect("range").into_inner();
    assert_eq!(
        (keys(&r), r.count, r.more),
        (
            vec!["a".into(), "b".into(), "c".into(), "d".into()],
            4,
            false
        )
    );
    let r = kv
        .range(pb::RangeRequest {
            limit: 2,
            sort_order: pb::range_request::SortOrder::Descend as i32,
            sort_target: pb::range_request::SortTarget::Value as i32,
            ..all.clone()
        })
        .await
        .expect("range")
        .into_inner();
    assert_eq!(
        (keys(&r), r.count, r.more),
        (vec!["d".into(), "c".into()], 4, true)
    );
    let r = kv
        .range(pb::RangeRequest {
            keys_only: true,
            serializable: true,
            ..all.clone()
        })
        .await
        .expect("range")
        .into_inner();
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()) && r.kvs.len() == 4);
    let r = kv
        .range(pb::RangeRequest {
            count_only: true,
            ..all.clone()
        })
        .await
        .expect("range")
        .into_inner();
    assert_eq!((r.kvs.len(), r.count), (0, 4));
    let r = kv
        .range(pb::RangeRequest {
            revision: rev_a,
            ..all.clone()
        })
        .await
        .expect("range at a revision")
        .into_inner();
    assert_eq!(keys(&r), vec!["a".to_string()]);
    let r = kv
        .range(pb::RangeRequest {
            min_mod_revision: rev_a + 1,
            max_mod_revision: rev_a + 2,
            ..all.clone()
        })
        .await
        .expect("range by mod revision")
        .into_inner();
    assert_eq!(keys(&r), vec!["b".to_string(), "c".to_string()]);
    let r = kv
        .range(pb::RangeRequest {
            min_create_revision: rev_a + 3,
            ..all.clone()
        })
        .await
        .expect("range by create revision")
        .into_inner();
    assert_eq!(keys(&r), vec!["d".to_string()]);

    // Txn: compares, then/else, nested.
    let cmp = |key: &str, value: &str| pb::Compare {
        key: key.into(),
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Value as i32,
        target_union: Some(pb::compare::TargetUnion::Value(value.into())),
        ..Default::default()
    };
    let op_put = |k: &str, v: &str| pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(put(k, v))),
    };
    let op_get = |k: &str| pb::RequestOp {
        request: Some(pb::request_op::Request::RequestRange(range(k))),
    };
    let txn = pb::TxnRequest {
        compare: vec![cmp("b", "22")],
        success: vec![
            op_put("t", "yes"),
            pb::RequestOp {
                request: Some(pb::request_op::Request::RequestTxn(pb::TxnRequest {
                    compare: vec![cmp("c", "nope")],
                    success: vec![],
                    failure: vec![op_get("c")],
                })),
            },
        ],
        failure: vec![op_put("t", "no")],
    };
    let r = kv.txn(txn.clone()).await.expect("txn").into_inner();
    assert!(r.succeeded);
    match &r.responses[1].response {
        Some(pb::response_op::Response::ResponseTxn(inner)) => {
            assert!(!inner.succeeded);
            match &inner.responses[0].response {
                Some(pb::response_op::Response::ResponseRange(g)) => {
                    assert_eq!(g.kvs[0].value, b"333")
                }
                other => panic!("{other:?}"),
            }
        }
        other => panic!("{other:?}"),
    }
    let r = kv
        .txn(pb::TxnRequest {
            compare: vec![cmp("b", "other")],
            ..txn
        })
        .await
        .expect("txn")
        .into_inner();
    assert!(!r.succeeded);
    let got = kv.range(range("t")).await.expect("range").into_inner();
    assert_eq!(got.kvs[0].value, b"no");

    // DeleteRange with prev_kv.
    let r = kv
        .delete_range(pb::DeleteRangeRequest {
            key: "c".into(),
            range_end: prefix_end("d"),
            prev_kv: true,
        })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(r.deleted, 2);
    assert_eq!(r.prev_kvs.len(), 2);
    let rev_deleted = r.header.expect("header").revision;

    // Errors, with etcd's codes and words.
    assert_status(
        kv.put(put("", "x")).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    let many = pb::TxnRequest {
        success: (0..129).map(|i| op_put(&format!("k{i}"), "v")).collect(),
        ..Default::default()
    };
    assert_status(
        kv.txn(many).await,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );
    let dup = pb::TxnRequest {
        success: vec![op_put("x", "1"), op_put("x", "2")],
        ..Default::default()
    };
    assert_status(
        kv.txn(dup).await,
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    );
    let future = pb::RangeRequest {
        revision: rev_deleted + 1000,
        ..range("a")
    };
    assert_status(
        kv.range(future).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    let compact = kv
        .compact(pb::CompactionRequest {
            revision: rev_deleted,
            physical: true,
        })
        .await
        .expect("compact")
        .into_inner();
    assert!(compact.header.expect("header").revision >= rev_deleted);
    let old = pb::RangeRequest {
        revision: rev_a,
        ..range("a")
    };
    assert_status(
        kv.range(old).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    assert_status(
        kv.compact(pb::CompactionRequest {
            revision: rev_a,
            physical: false,
        })
        .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
}

async fn maintenance_calls(ch: &Channel, grpc_addrs: &[String], member_id: u64, leader_id: u64) {
    let mut m = MaintenanceClient::new(ch.clone());
    let s = m
        .status(pb::StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(s.header.expect("header").member_id, member_id);
    assert_eq!(s.leader, leader_id);
    assert!(!s.is_learner && s.raft_index > 0 && s.raft_applied_index > 0 && s.raft_term > 0);
    assert!(s.db_size > 0 && s.version.starts_with("3."), "{s:?}");
    let alarms = m
        .alarm(pb::AlarmRequest::default())
        .await
        .expect("alarm list");
    assert!(alarms.into_inner().alarms.is_empty());

    // Every member's HashKV agrees at one revision, once each has applied it.
    let rev = s.header.expect("header").revision;
    let mut hashes = Vec::new();
    for addr in grpc_addrs {
        let mut m = MaintenanceClient::new(channel(addr).await);
        let mut kv = KvClient::new(channel(addr).await);
        kv.range(range("a")).await.expect("linearizable read");
        let h = m
            .hash_kv(pb::HashKvRequest { revision: rev })
            .await
            .expect("hashkv")
            .into_inner();
        hashes.push(h.hash);
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");

    // MoveLeader is the leader's to take, as with etcd; to a member that does not exist it
    // is etcd's "bad leader transferee".
    let not_leader = m
        .move_leader(pb::MoveLeaderRequest {
            target_id: member_id,
        })
        .await;
    assert_eq!(
        not_leader.map(|_| ()).map_err(|s| s.code()),
        Err(Code::FailedPrecondition)
    );
}

async fn cluster_calls(ch: &Channel, c: &Cluster, grpc_addrs: &[String]) {
    let mut cl = ClusterClient::new(ch.clone());
    let list = cl
        .member_list(pb::MemberListRequest { linearizable: true })
        .await
        .expect("member list")
        .into_inner();
    assert_eq!(list.members.len(), 3);
    for m in &c.members {
        let listed = list
            .members
            .iter()
            .find(|l| l.id == m.id)
            .expect("member listed");
        assert_eq!(listed.client_ur_ls, vec![format!("http://{}", m.grpc_addr)]);
        assert_eq!(listed.peer_ur_ls, vec![m.peer_url.clone()]);
        assert_eq!(listed.name, m.name);
    }
    // Changes through a follower reach the leader.
    let url = format!("http://{}", common::free_addr());
    let added = cl
        .member_add(pb::MemberAddRequest {
            peer_ur_ls: vec![url.clone()],
            is_learner: true,
        })
        .await
        .expect("member add")
        .into_inner();
    let new = added.member.expect("the member added");
    assert!(new.is_learner && new.peer_ur_ls == vec![url.clone()]);
    assert_eq!(added.members.len(), 4);
    assert_status(
        cl.member_add(pb::MemberAddRequest {
            peer_ur_ls: vec![url],
            is_learner: true,
        })
        .await,
        Code::FailedPrecondition,
        "etcdserver: Peer URLs already exists",
    );
    assert_status(
        cl.member_promote(pb::MemberPromoteRequest { id: new.id })
            .await,
        Code::FailedPrecondition,
        "etcdserver: can only promote a learner member which is in sync with leader",
    );
    let moved = format!("http://{}", common::free_addr());
    let updated = cl
        .member_update(pb::MemberUpdateRequest {
            id: new.id,
            peer_ur_ls: vec![moved.clone()],
        })
        .await
        .expect("member update")
        .into_inner();
    let listed = updated
        .members
        .iter()
        .find(|m| m.id == new.id)
        .expect("listed");
    assert_eq!(listed.peer_ur_ls, vec![moved]);
    let removed = cl
        .member_remove(pb::MemberRemoveRequest { id: new.id })
        .await
        .expect("member remove")
        .into_inner();
    assert_eq!(removed.members.len(), 3);
    assert!(removed.members.iter().all(|m| m.client_ur_ls.len() == 1));
    assert_status(
        cl.member_remove(pb::MemberRemoveRequest { id: 0x1234 })
            .await,
        Code::NotFound,
        "etcdserver: member not found",
    );
    assert_eq!(grpc_addrs.len(), 3);
}

async fn lease_calls(ch: &Channel, kv: &mut KvClient<Channel>) {
    let mut l = LeaseClient::new(ch.clone());
    let g = l
        .lease_grant(pb::LeaseGrantRequest { ttl: 30, id: 0 })
        .await
        .expect("grant")
        .into_inner();
    assert!(g.id != 0 && g.ttl == 30 && g.error.is_empty());
    kv.put(pb::PutRequest {
        lease: g.id,
        ..put("leased", "v")
    })
    .await
    .expect("put with a lease");
    assert_status(
        kv.put(pb::PutRequest {
            lease: 0x7777,
            ..put("leased", "v")
        })
        .await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    // Keepalives and time-to-live through the follower are answered by the leader.
    let asks = tokio_stream::iter(vec![pb::LeaseKeepAliveRequest { id: g.id }; 2]);
    let mut renewals = l
        .lease_keep_alive(asks)
        .await
        .expect("keepalive")
        .into_inner();
    for _ in 0..2 {
        let r = renewals
            .message()
            .await
            .expect("renewal")
            .expect("a renewal");
        assert_eq!((r.id, r.ttl), (g.id, 30));
        assert!(r.header.expect("header").revision > 0);
    }
    let ttl = l
        .lease_time_to_live(pb::LeaseTimeToLiveRequest {
            id: g.id,
            keys: true,
        })
        .await
        .expect("time to live")
        .into_inner();
    assert_eq!(
        (ttl.granted_ttl, ttl.keys.clone()),
        (30, vec![b"leased".to_vec()])
    );
    assert!(ttl.ttl > 0 && ttl.ttl <= 30);
    let leases = l
        .lease_leases(pb::LeaseLeasesRequest {})
        .await
        .expect("leases")
        .into_inner();
    assert!(leases.leases.iter().any(|s| s.id == g.id));
    l.lease_revoke(pb::LeaseRevokeRequest { id: g.id })
        .await
        .expect("revoke");
    let got = kv.range(range("leased")).await.expect("range").into_inner();
    assert_eq!(got.count, 0, "revoking deletes the lease's keys");
    assert_status(
        l.lease_revoke(pb::LeaseRevokeRequest { id: g.id }).await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    let gone = l
        .lease_time_to_live(pb::LeaseTimeToLiveRequest {
            id: g.id,
            keys: false,
        })
        .await
        .expect("time to live of a lease that is gone")
        .into_inner();
    assert_eq!(gone.ttl, -1);
    let asks = tokio_stream::iter(vec![pb::LeaseKeepAliveRequest { id: g.id }]);
    let mut renewals = l
        .lease_keep_alive(asks)
        .await
        .expect("keepalive")
        .into_inner();
    let r = renewals.message().await.expect("renewal").expect("a reply");
    assert_eq!(
        (r.id, r.ttl),
        (g.id, 0),
        "a lease that is gone is renewed with TTL 0"
    );
}

async fn next(responses: &mut tonic::Streaming<pb::WatchResponse>) -> pb::WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .expect("a watch response in time")
        .expect("watch stream")
        .expect("a watch response")
}

async fn watch_calls(ch: &Channel, kv: &mut KvClient<Channel>) {
    let mut w = WatchClient::new(ch.clone());
    let first = kv.put(put("w/1", "a")).await.expect("put").into_inner();
    let from = first.header.expect("header").revision;
    let create = |key: &str, start_revision: i64, watch_id: i64| pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: key.into(),
                range_end: prefix_end(key),
                start_revision,
                prev_kv: true,
                watch_id,
                ..Default::default()
            },
        )),
    };
    let (requests, asks) = tokio::sync::mpsc::channel(4);
    requests.send(create("w/", from, 7)).await.expect("send");
    let mut responses = w
        .watch(tokio_stream::wrappers::ReceiverStream::new(asks))
        .await
        .expect("watch")
        .into_inner();
    let created = next(&mut responses).await;
    assert!(created.created && created.watch_id == 7, "{created:?}");
    assert!(created.header.expect("header").member_id != 0);
    // The history from `from`, then what is written after.
    let past = next(&mut responses).await;
    assert_eq!(past.events.len(), 1, "{past:?}");
    assert_eq!(past.events[0].kv.as_ref().expect("kv").value, b"a");
    kv.put(put("w/1", "b")).await.expect("put");
    kv.delete_range(pb::DeleteRangeRequest {
        key: "w/1".into(),
        ..Default::default()
    })
    .await
    .expect("delete");
    let mut events = Vec::new();
    while events.len() < 2 {
        events.extend(next(&mut responses).await.events);
    }
    use cairn::grpc::pb::mvccpb::event::EventType;
    assert_eq!(events[0].r#type, EventType::Put as i32);
    assert_eq!(events[0].prev_kv.as_ref().expect("prev_kv").value, b"a");
    assert_eq!(events[1].r#type, EventType::Delete as i32);
    assert_eq!(events[1].kv.as_ref().expect("kv").key, b"w/1");
    // A watcher on a compacted revision is canceled with the compaction's revision.
    requests.send(create("w/", 1, 8)).await.expect("send");
    let mut canceled = next(&mut responses).await;
    while canceled.watch_id != 8 || !canceled.canceled {
        canceled = next(&mut responses).await;
    }
    assert!(canceled.compact_revision > 1, "{canceled:?}");
    let cancel = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CancelRequest(
            pb::WatchCancelRequest { watch_id: 7 },
        )),
    };
    requests.send(cancel).await.expect("send");
    let mut r = next(&mut responses).await;
    while !(r.canceled && r.watch_id == 7) {
        r = next(&mut responses).await;
    }
}

/// A request over `--max-request-bytes` is etcd's "request is too large"; one over the
/// gRPC message limit (that plus etcd's 512 KiB) is ResourceExhausted; a message that does
/// not decode is Internal (as grpc-go answers it); an unknown method or service is
/// Unimplemented. The member serves the next request after each.
#[test]
fn limits_malformed_and_unknown_requests() {
    let (_member, grpc) = OneMember::start(&["--max-request-bytes", "65536"]);
    runtime().block_on(async {
        let ch = channel(&grpc).await;
        let mut kv = KvClient::new(ch.clone());
        kv.put(put("k", "v")).await.expect("put");
        let big = "x".repeat(65536 + 1);
        assert_status(
            kv.put(put("k", &big)).await,
            Code::InvalidArgument,
            "etcdserver: request is too large",
        );
        kv.put(put("k", "v2"))
            .await
            .expect("served after a large request");
        // etcd measures the raft request a put becomes, not its gRPC message: the put with
        // a header holding an id whose top 16 bits are the member's, above 48 bits of time
        // (today's with the top one set). For key "k" and a value of L bytes (L near
        // 64 KiB) that is L + 15 + the id's bytes as a varint; against etcd 3.4.23 at
        // 65,536 with a 9-byte id, 65,512 bytes were taken and 65,513 refused.
        let member = kv
            .put(put("k", "v"))
            .await
            .expect("put")
            .into_inner()
            .header
            .expect("header")
            .member_id;
        let id = ((member & 0xffff) << 48) | (1 << 47);
        let id_bytes = (64 - id.leading_zeros() as usize).div_ceil(7);
        let largest = 65536 - 15 - id_bytes;
        kv.put(put("k", &"v".repeat(largest)))
            .await
            .expect("the largest value under the limit");
        assert_status(
            kv.put(put("k", &"v".repeat(largest + 1))).await,
            Code::InvalidArgument,
            "etcdserver: request is too large",
        );
        // A message far over the codec's first buffer goes through whole, both ways.
        let large = "y".repeat(60_000);
        kv.put(put("large", &large))
            .await
            .expect("put under the limit");
        let got = kv.range(range("large")).await.expect("range").into_inner();
        assert_eq!(got.kvs[0].value, large.as_bytes());
        let huge = "x".repeat(65536 + 512 * 1024 + 1);
        let r = kv.put(put("k", &huge)).await;
        assert_eq!(
            r.map(|_| ()).map_err(|s| s.code()),
            Err(Code::ResourceExhausted)
        );
        let mut kv = KvClient::new(channel(&grpc).await);
        kv.put(put("k", "v3"))
            .await
            .expect("served after an oversized message");

        // A KeyValue's field 2 is an integer; a RangeRequest's is bytes: it does not decode.
        let bad = cairn::grpc::pb::mvccpb::KeyValue {
            create_revision: 5,
            ..Default::default()
        };
        let r = raw_call::<_, pb::RangeResponse>(&ch, "/etcdserverpb.KV/Range", bad).await;
        assert_eq!(r.map(|_| ()).map_err(|s| s.code()), Err(Code::Internal));
        let r = raw_call::<_, pb::RangeResponse>(&ch, "/etcdserverpb.KV/NoSuchMethod", range("k"))
            .await;
        assert_eq!(
            r.map(|_| ()).map_err(|s| s.code()),
            Err(Code::Unimplemented)
        );
        let r =
            raw_call::<_, pb::RangeResponse>(&ch, "/etcdserverpb.Nothing/Range", range("k")).await;
        assert_eq!(
            r.map(|_| ()).map_err(|s| s.code()),
            Err(Code::Unimplemented)
        );
        let got = kv.range(range("k")).await.expect("range").into_inner();
        assert_eq!(got.kvs[0].value, b"v3");
    });
}

/// A unary call of `path` with any message, for requests the generated client cannot make.
async fn raw_call<Req, Resp>(
    ch: &Channel,
    path: &'static str,
    req: Req,
) -> Result<Resp, tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unknown(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(req), path, codec)
        .await
        .map(tonic::Response::into_inner)
}

/// A child process killed when the test ends, however it ends.
struct Process(std::process::Child);

/// A one-member cluster of its own, started with `cairn serve` and `extra` flags; ends
/// with the test.
struct OneMember {
    // Killed before its directory is removed (fields drop in order).
    _child: Process,
    _dir: tempfile::TempDir,
}

impl OneMember {
    /// The member, serving, and its gRPC address.
    fn start(extra: &[&str]) -> (OneMember, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let native = common::free_addr();
        let grpc = common::free_addr();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"));
        cmd.args(["serve", "--listen-native-addr", &native, "--data-dir"])
            .arg(dir.path().join("d"))
            .args([
                "--listen-peer-urls",
                &format!("http://{}", common::free_addr()),
            ])
            .args(["--listen-client-urls", &format!("http://{grpc}")])
            .args(extra)
            .args(["--log-level", "warn"])
            .stderr(std::process::Stdio::null());
        let mut child = Process(cmd.spawn().expect("spawn cairn serve"));
        common::wait_serving(&native, Some(&mut child.0));
        let member = OneMember {
            _child: child,
            _dir: dir,
        };
        (member, grpc)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Connections a client URL's listener holds at once (`incoming::CONNECTIONS_MAX`).
const GRPC_CONNECTIONS_MAX: usize = 1024;

/// An HTTP/2 client's first bytes: the preface, then an empty SETTINGS frame.
const H2_START: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Opens a connection that starts HTTP/2 and reads what the server sends within `limit`:
/// whether it sent anything (its SETTINGS: the connection was taken), and whether it closed
/// the connection.
fn h2_connect(addr: &str, limit: Duration) -> (std::net::TcpStream, bool, bool) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    let _ = s.write_all(H2_START);
    s.set_read_timeout(Some(limit)).expect("timeout");
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => (s, false, true),
        Ok(_) => (s, true, false),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            (s, false, false)
        }
        Err(_) => (s, false, true),
    }
}

/// The gRPC port holds at most `GRPC_CONNECTIONS_MAX` connections: one more is closed as
/// soon as it arrives, without an answer, and the port serves again once one closes.
#[test]
fn connections_over_the_limit_are_closed_at_once() {
    let c = Cluster::start(1);
    let addr = c.members[0].grpc_addr.clone();
    poll(CONVERGE, "the member serves gRPC", || {
        let (_, taken, _) = h2_connect(&addr, Duration::from_secs(2));
        taken.then_some(())
    });
    let held: Vec<std::net::TcpStream> = (0..GRPC_CONNECTIONS_MAX)
        .map(|i| {
            let (s, taken, _) = h2_connect(&addr, Duration::from_secs(10));
            assert!(taken, "connection {i} was not served");
            s
        })
        .collect();
    let started = std::time::Instant::now();
    let (_, taken, closed) = h2_connect(&addr, Duration::from_secs(5));
    assert!(!taken && closed, "taken {taken}, closed {closed}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    runtime().block_on(async {
        let refused = Channel::from_shared(format!("http://{addr}"))
            .expect("URL")
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(2))
            .connect()
            .await;
        if let Ok(ch) = refused {
            let r = KvClient::new(ch).range(range("k")).await;
            assert!(r.is_err(), "served over the limit: {r:?}");
        }
    });
    drop(held);
    poll(CONVERGE, "served again", || {
        let (_, taken, _) = h2_connect(&addr, Duration::from_secs(2));
        taken.then_some(())
    });
    runtime().block_on(async {
        let mut kv = KvClient::new(channel(&addr).await);
        kv.put(put("k", "v"))
            .await
            .expect("put once connections closed");
    });
}

mod lock_and_election {
    //! etcd's Lock and Election services through a follower of 3 members: contenders wait
    //! their turn, one whose client cancels is withdrawn, leases end holders, and
    //! elections report their leaders (by Leader and by Observe) as etcd's do.

    use super::*;
    use cairn::grpc::pb::v3electionpb as epb;
    use cairn::grpc::pb::v3lockpb as lpb;
    use epb::election_client::ElectionClient;
    use lpb::lock_client::LockClient;

    /// How long a contender is watched to not hold, while another does.
    const STILL_WAITING: Duration = Duration::from_millis(700);

    /// A follower refuses writes ("no leader") until it has heard from the leader.
    fn follower_knows_leader(c: &Cluster, follower: usize) {
        poll(CONVERGE, "the follower knows the leader", || {
            c.status(follower).filter(|s| s.leader != 0)
        });
    }

    async fn grant(ch: &Channel, ttl: i64) -> i64 {
        LeaseClient::new(ch.clone())
            .lease_grant(pb::LeaseGrantRequest { ttl, id: 0 })
            .await
            .expect("grant")
            .into_inner()
            .id
    }

    async fn exists(kv: &mut KvClient<Channel>, key: &str) -> bool {
        kv.range(range(key))
            .await
            .expect("range")
            .into_inner()
            .count
            == 1
    }

    /// Polls (for up to `CONVERGE`) until `key` exists or not, as `want` says.
    async fn wait_exists(kv: &mut KvClient<Channel>, key: &str, want: bool) {
        let deadline = tokio::time::Instant::now() + CONVERGE;
        while exists(kv, key).await != want {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{key} exists: {}, wanted {want}",
                !want
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    type Waiting = tokio::task::JoinHandle<Result<lpb::LockResponse, tonic::Status>>;

    /// A Lock call on a connection of its own, waiting on a task.
    async fn contend(addr: &str, name: &str, lease: i64) -> Waiting {
        let mut l = LockClient::new(channel(addr).await);
        let req = lpb::LockRequest {
            name: name.into(),
            lease,
        };
        tokio::spawn(async move { l.lock(req).await.map(tonic::Response::into_inner) })
    }

    async fn held(w: Waiting) -> lpb::LockResponse {
        tokio::time::timeout(CONVERGE, w)
            .await
            .expect("the lock in time")
            .expect("task")
            .expect("lock")
    }

    #[test]
    fn lock_through_a_follower() {
        let c = Cluster::start(3);
        let leader = c.wait_leader(&[0, 1, 2], CONVERGE);
        let follower = (leader + 1) % 3;
        follower_knows_leader(&c, follower);
        let follower_id = c.status(follower).expect("status").member_id;
        let addr = c.members[follower].grpc_addr.clone();
        runtime().block_on(async {
            let ch = channel(&addr).await;
            let mut kv = KvClient::new(ch.clone());
            let mut locks = LockClient::new(ch.clone());
            let (l1, l2, l3, l4) = (
                grant(&ch, 30).await,
                grant(&ch, 30).await,
                grant(&ch, 30).await,
                grant(&ch, 30).await,
            );
            let first = locks
                .lock(lpb::LockRequest {
                    name: "L".into(),
                    lease: l1,
                })
                .await
                .expect("lock")
                .into_inner();
            assert_eq!(first.key, format!("L/{l1:x}").into_bytes());
            let h = first.header.expect("header");
            assert_eq!(h.member_id, follower_id);
            assert!(h.revision > 1 && h.raft_term > 0, "{h:?}");
            let owner = kv
                .range(range(&format!("L/{l1:x}")))
                .await
                .expect("range")
                .into_inner();
            assert_eq!(
                owner.kvs[0].lease, l1,
                "the key is owned by the lock's lease"
            );

            // A second contender waits while the first holds.
            let second = contend(&addr, "L", l2).await;
            wait_exists(&mut kv, &format!("L/{l2:x}"), true).await;
            tokio::time::sleep(STILL_WAITING).await;
            assert!(!second.is_finished(), "the second held while the first did");

            // A third whose client gives up while it waits is withdrawn: its key goes.
            let mut third = LockClient::new(channel(&addr).await);
            let gave_up = tokio::time::timeout(
                STILL_WAITING,
                third.lock(lpb::LockRequest {
                    name: "L".into(),
                    lease: l3,
                }),
            )
            .await;
            assert!(gave_up.is_err(), "the third held: {gave_up:?}");
            wait_exists(&mut kv, &format!("L/{l3:x}"), false).await;
            // So does one whose connection closes while it waits.
            let fourth = contend(&addr, "L", l4).await;
            wait_exists(&mut kv, &format!("L/{l4:x}"), true).await;
            fourth.abort();
            let _ = fourth.await;
            wait_exists(&mut kv, &format!("L/{l4:x}"), false).await;

            // Unlocking the first hands the lock to the second.
            let unlocked = locks
                .unlock(lpb::UnlockRequest {
                    key: first.key.clone(),
                })
                .await
                .expect("unlock")
                .into_inner();
            let unlocked_at = unlocked.header.expect("header").revision;
            assert!(!exists(&mut kv, &format!("L/{l1:x}")).await);
            let got = held(second).await;
            assert_eq!(got.key, format!("L/{l2:x}").into_bytes());
            assert!(got.header.expect("header").revision >= unlocked_at);

            // The next contender holds once the holder's lease ends.
            let next = contend(&addr, "L", l3).await;
            wait_exists(&mut kv, &format!("L/{l3:x}"), true).await;
            tokio::time::sleep(STILL_WAITING).await;
            assert!(!next.is_finished(), "held while the second did");
            LeaseClient::new(ch.clone())
                .lease_revoke(pb::LeaseRevokeRequest { id: l2 })
                .await
                .expect("revoke");
            assert_eq!(held(next).await.key, format!("L/{l3:x}").into_bytes());

            // Locking again with the same lease is the same acquisition.
            let again = locks
                .lock(lpb::LockRequest {
                    name: "L".into(),
                    lease: l3,
                })
                .await
                .expect("lock again")
                .into_inner();
            assert_eq!(again.key, format!("L/{l3:x}").into_bytes());

            // Without a lease, the server grants one of etcd's session TTL, 60 s.
            let own = locks
                .lock(lpb::LockRequest {
                    name: "M".into(),
                    lease: 0,
                })
                .await
                .expect("lock without a lease")
                .into_inner();
            let m = kv
                .range(range(std::str::from_utf8(&own.key).expect("key")))
                .await
                .expect("range")
                .into_inner();
            let lease = m.kvs[0].lease;
            assert!(lease != 0 && own.key == format!("M/{lease:x}").into_bytes());
            let ttl = LeaseClient::new(ch.clone())
                .lease_time_to_live(pb::LeaseTimeToLiveRequest {
                    id: lease,
                    keys: false,
                })
                .await
                .expect("time to live")
                .into_inner();
            assert_eq!(ttl.granted_ttl, 60);

            // A lease that does not exist: etcd's lock server passes on the KV error it
            // got from its embedded client, which gRPC sends as Unknown.
            assert_status(
                locks
                    .lock(lpb::LockRequest {
                        name: "N".into(),
                        lease: 0x7777,
                    })
                    .await,
                Code::Unknown,
                "etcdserver: requested lease not found",
            );
        });
    }

    async fn next_leader(s: &mut tonic::Streaming<epb::LeaderResponse>) -> (String, String) {
        let r = tokio::time::timeout(CONVERGE, s.message())
            .await
            .expect("a leader in time")
            .expect("observe stream")
            .expect("a leader");
        assert!(r.header.expect("header").revision > 0);
        let kv = r.kv.expect("kv");
        (
            String::from_utf8_lossy(&kv.key).into_owned(),
            String::from_utf8_lossy(&kv.value).into_owned(),
        )
    }

    async fn leader_value(e: &mut ElectionClient<Channel>, name: &str) -> String {
        let r = e
            .leader(epb::LeaderRequest { name: name.into() })
            .await
            .expect("leader")
            .into_inner();
        String::from_utf8_lossy(&r.kv.expect("kv").value).into_owned()
    }

    #[test]
    fn election_through_a_follower() {
        let c = Cluster::start(3);
        let leader = c.wait_leader(&[0, 1, 2], CONVERGE);
        let follower = (leader + 1) % 3;
        follower_knows_leader(&c, follower);
        let addr = c.members[follower].grpc_addr.clone();
        runtime().block_on(async {
            let ch = channel(&addr).await;
            let mut e = ElectionClient::new(ch.clone());
            let (a, b) = (grant(&ch, 30).await, grant(&ch, 30).await);
            assert_status(
                e.leader(epb::LeaderRequest { name: "E".into() }).await,
                Code::Unknown,
                "election: no leader",
            );
            let mut observed = e
                .observe(epb::LeaderRequest { name: "E".into() })
                .await
                .expect("observe")
                .into_inner();

            let won = e
                .campaign(epb::CampaignRequest {
                    name: "E".into(),
                    lease: a,
                    value: "v1".into(),
                })
                .await
                .expect("campaign")
                .into_inner();
            let ours = won.leader.expect("leader key");
            // etcd answers a campaign with the header of its first write: its key's creation.
            assert_eq!(won.header.expect("header").revision, ours.rev);
            let key_a = format!("E/{a:x}");
            assert_eq!(
                (ours.name.as_slice(), ours.key.clone(), ours.lease),
                (&b"E"[..], key_a.clone().into_bytes(), a)
            );
            assert!(ours.rev > 1);
            assert_eq!(leader_value(&mut e, "E").await, "v1");
            assert_eq!(
                next_leader(&mut observed).await,
                (key_a.clone(), "v1".into())
            );

            e.proclaim(epb::ProclaimRequest {
                leader: Some(ours.clone()),
                value: "v2".into(),
            })
            .await
            .expect("proclaim");
            assert_eq!(leader_value(&mut e, "E").await, "v2");
            assert_eq!(
                next_leader(&mut observed).await,
                (key_a.clone(), "v2".into())
            );

            // Campaigning again with the same lease and another value proclaims it, as
            // etcd's election does: the same key and revision, the new value.
            for value in ["v3", "v2"] {
                let again = e
                    .campaign(epb::CampaignRequest {
                        name: "E".into(),
                        lease: a,
                        value: value.into(),
                    })
                    .await
                    .expect("campaign again")
                    .into_inner()
                    .leader
                    .expect("leader key");
                assert_eq!((again.key.clone(), again.rev), (ours.key.clone(), ours.rev));
                assert_eq!(leader_value(&mut e, "E").await, value);
                assert_eq!(
                    next_leader(&mut observed).await,
                    (key_a.clone(), value.into())
                );
            }

            // A second candidate waits while the first leads.
            let mut other = ElectionClient::new(channel(&addr).await);
            let second = tokio::spawn(async move {
                other
                    .campaign(epb::CampaignRequest {
                        name: "E".into(),
                        lease: b,
                        value: "w1".into(),
                    })
                    .await
                    .map(tonic::Response::into_inner)
            });
            let mut kv = KvClient::new(ch.clone());
            wait_exists(&mut kv, &format!("E/{b:x}"), true).await;
            tokio::time::sleep(STILL_WAITING).await;
            assert!(!second.is_finished(), "the second led while the first did");
            // A third whose client gives up while it waits is withdrawn.
            let c3 = grant(&ch, 30).await;
            let mut third = ElectionClient::new(channel(&addr).await);
            let gave_up = tokio::time::timeout(
                STILL_WAITING,
                third.campaign(epb::CampaignRequest {
                    name: "E".into(),
                    lease: c3,
                    value: "x".into(),
                }),
            )
            .await;
            assert!(gave_up.is_err(), "the third led: {gave_up:?}");
            wait_exists(&mut kv, &format!("E/{c3:x}"), false).await;

            // Only the leader proclaims; a leader key is needed.
            let pretender = epb::LeaderKey {
                name: "E".into(),
                key: format!("E/{b:x}").into_bytes(),
                rev: ours.rev,
                lease: b,
            };
            assert_status(
                e.proclaim(epb::ProclaimRequest {
                    leader: Some(pretender),
                    value: "no".into(),
                })
                .await,
                Code::Unknown,
                "election: not leader",
            );
            assert_status(
                e.proclaim(epb::ProclaimRequest {
                    leader: None,
                    value: "no".into(),
                })
                .await,
                Code::Unknown,
                "\"leader\" field must be provided",
            );
            assert_status(
                e.resign(epb::ResignRequest { leader: None }).await,
                Code::Unknown,
                "\"leader\" field must be provided",
            );
            assert_eq!(leader_value(&mut e, "E").await, "v2");

            // Resigning hands over to the next candidate.
            e.resign(epb::ResignRequest {
                leader: Some(ours.clone()),
            })
            .await
            .expect("resign");
            let led = tokio::time::timeout(CONVERGE, second)
                .await
                .expect("the second leads in time")
                .expect("task")
                .expect("campaign");
            let next = led.leader.expect("leader key");
            assert_eq!(next.key, format!("E/{b:x}").into_bytes());
            assert!(next.rev > ours.rev);
            // Its header is its key's creation, not the resignation it waited for.
            assert_eq!(led.header.expect("header").revision, next.rev);
            assert_eq!(leader_value(&mut e, "E").await, "w1");
            assert_eq!(
                next_leader(&mut observed).await,
                (format!("E/{b:x}"), "w1".into())
            );
            // The old leadership is over.
            assert_status(
                e.proclaim(epb::ProclaimRequest {
                    leader: Some(ours),
                    value: "late".into(),
                })
                .await,
                Code::Unknown,
                "election: not leader",
            );
            // The leader's lease ends: no leader.
            LeaseClient::new(ch.clone())
                .lease_revoke(pb::LeaseRevokeRequest { id: b })
                .await
                .expect("revoke");
            assert_status(
                e.leader(epb::LeaderRequest { name: "E".into() }).await,
                Code::Unknown,
                "election: no leader",
            );
        });
    }
}

mod keepalive {
    //! etcd's keepalive enforcement: a client pinging more often than
    //! `--grpc-keepalive-min-time` (or pinging at all on a connection with no call open) is
    //! sent GOAWAY ENHANCE_YOUR_CALM "too_many_pings" and disconnected; one that keeps to
    //! the minimum time is answered, and other clients are served throughout.

    use super::*;
    use std::io::{Read, Write};

    const SETTINGS: u8 = 0x4;
    const PING: u8 = 0x6;
    const GOAWAY: u8 = 0x7;
    const HEADERS: u8 = 0x1;
    const ENHANCE_YOUR_CALM: u32 = 0xb;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        b.extend_from_slice(&[kind, flags]);
        b.extend_from_slice(&stream.to_be_bytes());
        b.extend_from_slice(payload);
        b
    }

    /// The next frame from the server: kind, flags, payload; `None` once it closed (or
    /// nothing came within the read timeout).
    fn next_frame(s: &mut std::net::TcpStream) -> Option<(u8, u8, Vec<u8>)> {
        next_or_closed(s).ok().flatten()
    }

    /// Frames up to the server's answer to a ping: true for the PING ACK, false for a
    /// GOAWAY "too_many_pings" followed by the connection's end.
    fn answer_to_ping(s: &mut std::net::TcpStream) -> bool {
        loop {
            let (kind, flags, payload) = next_frame(s).expect("the server closed without GOAWAY");
            match kind {
                PING if flags & 1 == 1 => return true,
                GOAWAY => {
                    let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                    assert_eq!(code, ENHANCE_YOUR_CALM);
                    assert_eq!(&payload[8..], b"too_many_pings");
                    assert!(
                        next_frame(s).is_none(),
                        "the connection stays open after GOAWAY"
                    );
                    return false;
                }
                _ => {}
            }
        }
    }

    /// A connection past the preface and settings exchange.
    fn connect(addr: &str) -> std::net::TcpStream {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(H2_START).expect("preface");
        s.write_all(&frame(SETTINGS, 1, 0, &[]))
            .expect("settings ack");
        s
    }

    /// Opens a Watch call that stays open (a literal header block, no Huffman coding).
    fn open_watch(s: &mut std::net::TcpStream) {
        let mut block = Vec::new();
        for (name, value) in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/etcdserverpb.Watch/Watch"),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ] {
            block.push(0);
            block.push(name.len() as u8);
            block.extend_from_slice(name.as_bytes());
            block.push(value.len() as u8);
            block.extend_from_slice(value.as_bytes());
        }
        s.write_all(&frame(HEADERS, 0x4, 1, &block))
            .expect("headers");
    }

    fn ping(s: &mut std::net::TcpStream, n: u8) {
        s.write_all(&frame(PING, 0, 0, &[n; 8])).expect("ping");
    }

    #[test]
    fn clients_pinging_too_often_are_sent_goaway() {
        let (_member, grpc) = OneMember::start(&["--grpc-keepalive-min-time", "300ms"]);

        // No call open: keepalive is not permitted, so the third strike comes on the
        // fourth ping, however slow.
        let mut idle = connect(&grpc);
        for n in 0..3 {
            ping(&mut idle, n);
            assert!(answer_to_ping(&mut idle), "ping {n} refused");
            std::thread::sleep(Duration::from_millis(400));
        }
        ping(&mut idle, 3);
        assert!(
            !answer_to_ping(&mut idle),
            "an idle client pinged four times"
        );

        // A call open: pings the minimum time apart are answered, however many.
        let mut busy = connect(&grpc);
        open_watch(&mut busy);
        for n in 0..6 {
            ping(&mut busy, n);
            assert!(answer_to_ping(&mut busy), "ping {n}, 400 ms apart, refused");
            std::thread::sleep(Duration::from_millis(400));
        }
        // Then four back to back: the third is the third strike. (The server may read the
        // four at once and answer none of them before its GOAWAY.)
        for n in 0..4 {
            ping(&mut busy, 10 + n);
        }
        let acks = (0..4).take_while(|_| answer_to_ping(&mut busy)).count();
        assert!(acks <= 2, "{acks} pings answered before GOAWAY");

        runtime().block_on(async {
            let mut kv = KvClient::new(channel(&grpc).await);
            kv.put(put("k", "v"))
                .await
                .expect("others are served after a connection is closed");
        });
    }

    /// The next frame, `Ok(None)` once the server closed the connection, `Err` when nothing
    /// came within the read timeout.
    fn next_or_closed(
        s: &mut std::net::TcpStream,
    ) -> Result<Option<(u8, u8, Vec<u8>)>, std::io::Error> {
        let mut head = [0u8; 9];
        match s.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload)?;
        Ok(Some((head[3], head[4], payload)))
    }

    #[test]
    fn a_silent_connection_is_pinged_and_closed_unless_it_answers() {
        let (_member, grpc) = OneMember::start(&[
            "--grpc-keepalive-interval",
            "500ms",
            "--grpc-keepalive-timeout",
            "500ms",
        ]);

        // A client that answers the server's pings keeps its connection, silent as it is.
        let mut answering = connect(&grpc);
        let mut pings = 0;
        while pings < 3 {
            match next_or_closed(&mut answering) {
                Ok(Some((PING, 0, payload))) => {
                    pings += 1;
                    answering
                        .write_all(&frame(PING, 1, 0, &payload))
                        .expect("ping ack");
                }
                Ok(Some((GOAWAY, _, payload))) => {
                    panic!("GOAWAY to a client that answers pings: {payload:?}")
                }
                Ok(Some(_)) => {}
                Ok(None) => panic!("the connection of a client answering pings was closed"),
                Err(e) => panic!("no ping within 10 s: {e}"),
            }
        }

        // One that does not is pinged once, then sent GOAWAY and closed.
        let mut silent = connect(&grpc);
        let mut seen = Vec::new();
        loop {
            match next_or_closed(&mut silent) {
                Ok(Some((kind, flags, _))) => seen.push((kind, flags)),
                Ok(None) => break,
                Err(e) => panic!("still open after 10 s of silence ({seen:?}): {e}"),
            }
        }
        let ping_at = seen.iter().position(|f| *f == (PING, 0));
        let goaway_at = seen.iter().position(|f| f.0 == GOAWAY);
        assert!(
            matches!((ping_at, goaway_at), (Some(p), Some(g)) if p < g),
            "expected a PING then GOAWAY, got {seen:?}"
        );

        // And the member serves the others meanwhile.
        runtime().block_on(async {
            let mut kv = KvClient::new(channel(&grpc).await);
            kv.put(put("k", "v")).await.expect("put");
        });
    }
}
