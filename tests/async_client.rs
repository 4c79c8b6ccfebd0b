//! The async client on a glommio executor against real members: many requests in flight on
//! one connection, failover when a member dies, and timeouts instead of hangs.

mod common;

use cairn::client::{AsyncClient, ClientError};
use cairn::mvcc::{PutRequest, RangeRequest, Request, Response};
use cairn::protocol::{ClientRequest, ClientResponse, ErrorCode};
use common::{free_addr, serve_command};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

struct Member(Child, String);

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &std::path::Path) -> Member {
    let addr = free_addr();
    let mut child = serve_command(dir, &addr)
        .args(["--placement", "unpinned"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    common::wait_serving(&addr, Some(&mut child));
    Member(child, addr)
}

fn put(key: String) -> ClientRequest {
    ClientRequest::Kv(Request::Put(PutRequest {
        key: key.into_bytes(),
        value: b"v".to_vec(),
        ..Default::default()
    }))
}

fn run<T: 'static>(f: impl std::future::Future<Output = T> + 'static) -> T {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .unwrap()
        .run(f)
}

#[test]
fn many_tasks_share_one_connection_and_every_request_gets_its_own_reply() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(dir.path());
    let endpoints = vec!["127.0.0.1:1".to_string(), m.1.clone()];
    let revisions = run(async move {
        let client = AsyncClient::new(endpoints, Duration::from_secs(10));
        let tasks: Vec<_> = (0..300)
            .map(|i| {
                let c = client.clone();
                glommio::spawn_local(async move { c.request(&put(format!("k{i}"))).await })
            })
            .collect();
        let mut revisions = Vec::new();
        for t in tasks {
            match t.await {
                Ok(ClientResponse::Kv(Response::Put(p))) => revisions.push(p.header.revision),
                other => panic!("{other:?}"),
            }
        }
        // And a read of one of them, answered on the same connection.
        let get = ClientRequest::Kv(Request::Range(RangeRequest {
            key: b"k7".to_vec(),
            ..Default::default()
        }));
        let Ok(ClientResponse::Kv(Response::Range(r))) = client.request(&get).await else {
            panic!("range")
        };
        assert_eq!(r.kvs.len(), 1);
        revisions
    });
    let mut sorted = revisions.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        (2..302).collect::<Vec<i64>>(),
        "each put its own revision"
    );
}

#[test]
fn a_read_a_member_cannot_serve_goes_to_the_next_endpoint_and_a_write_does_not() {
    // A member that never has a leader: it answers reads and writes Unavailable at once.
    let (lonely_dir, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let lonely = free_addr();
    let mut child = serve_command(lonely_dir.path(), &lonely)
        .args(["--placement", "unpinned"])
        .args(common::leaderless_flags())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    common::wait_serving(&lonely, Some(&mut child));
    let _lonely = Member(child, lonely.clone());
    let healthy = start(dir.path());
    let endpoints = vec![lonely.clone(), healthy.1.clone()];
    run(async move {
        let client = AsyncClient::new(endpoints.clone(), Duration::from_secs(5));
        // A write the first member refuses is not sent on: its error is the answer.
        let refused = client.request(&put("w".into())).await;
        assert!(
            matches!(
                refused,
                Err(ClientError::Server {
                    code: ErrorCode::Unavailable,
                    ..
                })
            ),
            "{refused:?}"
        );
        // A read goes on to the second member, and so do the requests after it.
        let get = |key: &str| {
            ClientRequest::Kv(Request::Range(RangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            }))
        };
        let Ok(ClientResponse::Kv(Response::Range(r))) = client.request(&get("w")).await else {
            panic!("the read was not asked of the second endpoint")
        };
        assert!(r.kvs.is_empty(), "the refused put was not applied");
        assert_eq!(client.endpoint(), Some(endpoints[1].clone()));
        client.request(&put("k".into())).await.expect("a put after");
        let Ok(ClientResponse::Kv(Response::Range(r))) = client.request(&get("k")).await else {
            panic!("read")
        };
        assert_eq!(r.kvs.len(), 1);
    });
}

#[test]
fn a_dead_member_fails_over_and_an_unreachable_cluster_is_an_error_not_a_hang() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = start(d1.path());
    let second = start(d2.path());
    let endpoints = vec![first.1.clone(), second.1.clone()];
    let first = std::rc::Rc::new(std::cell::RefCell::new(Some(first)));
    let killer = first.clone();
    run(async move {
        let client = AsyncClient::new(endpoints.clone(), Duration::from_secs(5));
        client.request(&put("a".into())).await.unwrap();
        assert_eq!(client.endpoint(), Some(endpoints[0].clone()));
        drop(killer.borrow_mut().take()); // SIGKILL the member in use
                                          // The request in flight when the connection dies fails; the next ones go to the
                                          // other member.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match client.request(&put("b".into())).await {
                Ok(_) => break,
                Err(e) => assert!(Instant::now() < deadline, "no failover: {e}"),
            }
        }
        assert_eq!(client.endpoint(), Some(endpoints[1].clone()));
    });
    drop(second);
    // Nobody left: a clear error well within the timeout's reach.
    let dead = vec![free_addr()];
    let started = Instant::now();
    let err = run(async move {
        AsyncClient::new(dead, Duration::from_secs(2))
            .request(&put("c".into()))
            .await
            .unwrap_err()
    });
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A peer that takes the connection and never answers: the request times out.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = vec![silent.local_addr().unwrap().to_string()];
    let started = Instant::now();
    let err = run(async move {
        AsyncClient::new(addr, Duration::from_millis(500))
            .request(&put("d".into()))
            .await
            .unwrap_err()
    });
    assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
}
