//! The services on hyper's HTTP/2 connections, with nothing between a call and its service
//! but the routing by service name, etcd's `hasleader` check and its size-refusal code.
//!
//! tonic's own server wraps every call in a stack of services (error recovery, load
//! shedding, a deadline timer, the interceptor, a router of boxed services), each with its
//! future moved into the next: at tens of thousands of calls a second, moving and dropping
//! those futures was a visible part of the gRPC thread's time. Here a call costs one boxed
//! future (the generated service's own). What the stack did that etcd's server does:
//! - `hasleader` (etcd's clients send it to learn at once that a member has no leader) is
//!   checked on the request's headers before the call is routed;
//! - a request message over the size limit gets etcd's code ([`limits`]);
//! - an unknown service or method is Unimplemented;
//! - a client's deadline (`grpc-timeout`) is the client's: it cancels the stream when the
//!   deadline passes, which drops the call here, as grpc-go's server cancels the call's
//!   context.
//!
//! A stopping member stops accepting, tells each connection to finish (HTTP/2 GOAWAY:
//! calls in flight get their answers) and waits for them; `super::run` bounds that wait.

use super::{limits, status, Ctx};
use super::{v3electionpb, v3lockpb};
use crate::grpc::pb::etcdserverpb as pb;
use crate::server::Shared;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use tokio_stream::StreamExt as _;
use tonic::codegen::{http, BoxFuture};
use tonic::server::NamedService;
use tower::Service as _;

/// A call's response.
type Answer = http::Response<tonic::body::Body>;

/// The generated services, each bounded in the size of the messages it takes and sends.
#[derive(Clone)]
pub(super) struct Services {
    shared: Arc<Shared>,
    kv: pb::kv_server::KvServer<Ctx>,
    lease: pb::lease_server::LeaseServer<Ctx>,
    watch: pb::watch_server::WatchServer<Ctx>,
    cluster: pb::cluster_server::ClusterServer<Ctx>,
    maintenance: pb::maintenance_server::MaintenanceServer<Ctx>,
    lock: v3lockpb::lock_server::LockServer<Ctx>,
    election: v3electionpb::election_server::ElectionServer<Ctx>,
}

impl Services {
    /// Every service takes requests of at most `recv_max` bytes and sends responses of at
    /// most `send_max`.
    pub(super) fn new(ctx: Ctx, recv_max: usize, send_max: usize) -> Services {
        // The generated servers share no trait to set their bounds through.
        macro_rules! bounded {
            ($server:expr) => {
                $server
                    .max_decoding_message_size(recv_max)
                    .max_encoding_message_size(send_max)
            };
        }
        Services {
            shared: ctx.shared.clone(),
            kv: bounded!(pb::kv_server::KvServer::new(ctx.clone())),
            lease: bounded!(pb::lease_server::LeaseServer::new(ctx.clone())),
            watch: bounded!(pb::watch_server::WatchServer::new(ctx.clone())),
            cluster: bounded!(pb::cluster_server::ClusterServer::new(ctx.clone())),
            maintenance: bounded!(pb::maintenance_server::MaintenanceServer::new(ctx.clone())),
            lock: bounded!(v3lockpb::lock_server::LockServer::new(ctx.clone())),
            election: bounded!(v3electionpb::election_server::ElectionServer::new(ctx)),
        }
    }

    /// The call `req` makes, or the answer it gets at once (no leader, unknown service).
    fn route(&self, req: http::Request<hyper::body::Incoming>) -> BoxFuture<Answer, Infallible> {
        let at_once = |answer: Answer| -> BoxFuture<Answer, Infallible> {
            Box::pin(std::future::ready(Ok(answer)))
        };
        let wants_leader = req
            .headers()
            .get("hasleader")
            .is_some_and(|v| v.as_bytes() == b"true");
        if wants_leader && self.shared.status.lock().leader == 0 {
            return at_once(status::no_leader().into_http());
        }
        // "/etcdserverpb.KV/Range": the service, then the method (which the generated
        // service matches, answering Unimplemented to one it does not have).
        let service = req
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .map_or("", |(service, _)| service);
        fn is<S: NamedService>(_: &S, name: &str) -> bool {
            S::NAME == name
        }
        match service {
            s if is(&self.kv, s) => self.kv.clone().call(req),
            s if is(&self.lease, s) => self.lease.clone().call(req),
            s if is(&self.watch, s) => self.watch.clone().call(req),
            s if is(&self.cluster, s) => self.cluster.clone().call(req),
            s if is(&self.maintenance, s) => self.maintenance.clone().call(req),
            s if is(&self.lock, s) => self.lock.clone().call(req),
            s if is(&self.election, s) => self.election.clone().call(req),
            _ => at_once(tonic::Status::unimplemented("").into_http()),
        }
    }
}

/// The HTTP/2 settings of every connection: keepalive as etcd's server, a bound on the
/// calls open at once on one connection, no `date` header; the rest is hyper's default (as
/// tonic leaves it, and as `headers` relies on: frame size and header table size).
fn http2(
    keepalive_interval: std::time::Duration,
    keepalive_timeout: std::time::Duration,
    streams_max: u32,
) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(keepalive_interval))
        .keep_alive_timeout(keepalive_timeout)
        .max_concurrent_streams(streams_max)
        // gRPC has no use for a `date` header on every response (grpc-go sends none).
        .auto_date_header(false);
    builder
}

/// Serves `services` on the connections `incoming` yields until `stop` ends, then lets the
/// connections finish their calls and returns once they have.
pub(super) async fn serve(
    services: Services,
    incoming: impl tokio_stream::Stream<Item = std::io::Result<super::incoming::Conn>>,
    stop: impl std::future::Future<Output = ()>,
    keepalive: crate::server::GrpcKeepalive,
) {
    let http2 = http2(
        keepalive.interval,
        keepalive.timeout,
        super::STREAMS_PER_CONNECTION_MAX,
    );
    let (closing, closed) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    {
        tokio::pin!(incoming, stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                next = incoming.next() => match next {
                    Some(Ok(conn)) => {
                        connections.spawn(connection(
                            http2.clone(),
                            conn,
                            services.clone(),
                            closed.clone(),
                        ));
                    }
                    Some(Err(e)) => tracing::debug!(error = %e, "a gRPC connection failed"),
                    None => break,
                },
                // Ended connections are reaped as they end, so the set holds live ones only.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        // The acceptor ends with `incoming`.
    }
    let _ = closing.send(true);
    while connections.join_next().await.is_some() {}
}

/// Serves one connection until it closes, or until `closing` says to finish.
async fn connection(
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    conn: super::incoming::Conn,
    services: Services,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |req| {
        let call = services.route(req);
        async move {
            let mut answer = call.await?;
            limits::resource_exhausted(answer.headers_mut());
            Ok::<_, Infallible>(answer)
        }
    });
    let served = http2.serve_connection(TokioIo::new(conn), service);
    tokio::pin!(served);
    let ended = tokio::select! {
        ended = served.as_mut() => ended,
        _ = async { closing.wait_for(|closing| *closing).await.is_ok() } => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "a gRPC connection ended with an error");
    }
}
