//! The services, and what a call meets before one of them: the routing by service name,
//! etcd's `hasleader` check, its size-refusal code. The connections themselves are served by
//! `super::conn`.
//!
//! tonic's own server wraps every call in a stack of services (error recovery, load
//! shedding, a deadline timer, the interceptor, a router of boxed services), each with its
//! future moved into the next: at tens of thousands of calls a second, moving and dropping
//! those futures was a visible part of the gRPC thread's time. Here a call costs one boxed
//! future (the generated service's own), or none for a unary KV call (`super::unary`).
//! What the stack did that etcd's server does:
//! - `hasleader` (etcd's clients send it to learn at once that a member has no leader) is
//!   checked on the request's headers before the call is routed;
//! - a request message over the size limit gets etcd's code ([`limits`]);
//! - an unknown service or method is Unimplemented;
//! - a client's deadline (`grpc-timeout`) is the client's: it cancels the stream when the
//!   deadline passes, which drops the call (`super::conn`), as grpc-go's server cancels the
//!   call's context.
//!
//! A stopping member stops accepting, tells each connection to finish (HTTP/2 GOAWAY:
//! calls in flight get their answers) and waits for them; `super::run` bounds that wait.

use super::conn::{self, RecvBody};
use super::unary::Bounds;
use super::{status, Ctx};
use super::{v3electionpb, v3lockpb};
use crate::grpc::pb::etcdserverpb as pb;
use std::convert::Infallible;
use tokio_stream::StreamExt as _;
use tonic::codegen::{http, BoxFuture};
use tonic::server::NamedService;
use tower::Service as _;

/// A call's response.
type Answer = http::Response<tonic::body::Body>;

/// The generated services, each bounded in the size of the messages it takes and sends.
#[derive(Clone)]
pub(super) struct Services {
    ctx: Ctx,
    bounds: Bounds,
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
            ctx: ctx.clone(),
            bounds: Bounds { recv_max, send_max },
            kv: bounded!(pb::kv_server::KvServer::new(ctx.clone())),
            lease: bounded!(pb::lease_server::LeaseServer::new(ctx.clone())),
            watch: bounded!(pb::watch_server::WatchServer::new(ctx.clone())),
            cluster: bounded!(pb::cluster_server::ClusterServer::new(ctx.clone())),
            maintenance: bounded!(pb::maintenance_server::MaintenanceServer::new(ctx.clone())),
            lock: bounded!(v3lockpb::lock_server::LockServer::new(ctx.clone())),
            election: bounded!(v3electionpb::election_server::ElectionServer::new(ctx)),
        }
    }

    pub(super) fn ctx(&self) -> &Ctx {
        &self.ctx
    }

    pub(super) fn bounds(&self) -> Bounds {
        self.bounds
    }

    /// The answer a call gets at once, before it is routed: no leader when the client asks
    /// for one (`hasleader`).
    pub(super) fn refusal(&self, parts: &http::request::Parts) -> Option<Answer> {
        let wants_leader = parts
            .headers
            .get("hasleader")
            .is_some_and(|v| v.as_bytes() == b"true");
        (wants_leader && self.ctx.shared.status.lock().leader == 0)
            .then(|| status::no_leader().into_http())
    }

    /// The call `req` makes through its generated service; an unknown service is
    /// Unimplemented.
    pub(super) fn route(&self, req: http::Request<RecvBody>) -> BoxFuture<Answer, Infallible> {
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
            _ => Box::pin(std::future::ready(Ok(
                tonic::Status::unimplemented("").into_http()
            ))),
        }
    }
}

/// Serves `services` on the connections `incoming` yields until `stop` ends, then lets the
/// connections finish their calls and returns once they have.
pub(super) async fn serve(
    services: Services,
    incoming: impl tokio_stream::Stream<Item = std::io::Result<super::incoming::Conn>>,
    stop: impl std::future::Future<Output = ()>,
    keepalive: crate::server::GrpcKeepalive,
) {
    let settings = conn::Settings {
        keepalive_interval: keepalive.interval,
        keepalive_timeout: keepalive.timeout,
        streams_max: super::STREAMS_PER_CONNECTION_MAX,
    };
    let services = std::sync::Arc::new(services);
    let (closing, closed) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    {
        tokio::pin!(incoming, stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                next = incoming.next() => match next {
                    Some(Ok(c)) => {
                        let (services, closed) = (services.clone(), closed.clone());
                        connections.spawn(async move {
                            if let Err(e) = conn::serve(c, services, settings, closed).await {
                                tracing::debug!(error = %e, "a gRPC connection ended with an error");
                            }
                        });
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
