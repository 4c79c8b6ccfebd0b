//! etcd's Watch service: one stream is one connection of the member's watch hub (the apply
//! role's, as the native protocol's), with the same guarantees and bounds; its responses
//! are queued for the stream bounded in bytes (`WATCH_QUEUE_BYTES_MAX`), then in messages.

use super::Ctx;
use crate::grpc::pb::etcdserverpb as pb;
use crate::grpc::pb::mvccpb;
use crate::server::watch::{next_conn, ClientInput, ConnSink};
use crate::watch::{WatchCreateRequest, WatchFilter, WatchInput, WatchRequest};
use std::sync::atomic::Ordering;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

/// Responses converted ahead of a client that does not read them.
const WATCH_BACKLOG_MAX: usize = 64;

fn request(r: pb::WatchRequest) -> Result<Option<WatchRequest>, Status> {
    use pb::watch_request::RequestUnion;
    Ok(match r.request_union {
        Some(RequestUnion::CreateRequest(c)) => {
            let filters = c
                .filters
                .iter()
                .map(
                    |&f| match pb::watch_create_request::FilterType::try_from(f) {
                        Ok(pb::watch_create_request::FilterType::Noput) => Ok(WatchFilter::NoPut),
                        Ok(pb::watch_create_request::FilterType::Nodelete) => {
                            Ok(WatchFilter::NoDelete)
                        }
                        Err(_) => Err(Status::invalid_argument(format!(
                            "etcdserver: unknown watch filter {f}"
                        ))),
                    },
                )
                .collect::<Result<_, _>>()?;
            Some(WatchRequest::Create(WatchCreateRequest {
                key: c.key,
                range_end: c.range_end,
                start_revision: c.start_revision,
                progress_notify: c.progress_notify,
                filters,
                prev_kv: c.prev_kv,
                watch_id: c.watch_id,
                fragment: c.fragment,
            }))
        }
        Some(RequestUnion::CancelRequest(c)) => Some(WatchRequest::Cancel {
            watch_id: c.watch_id,
        }),
        Some(RequestUnion::ProgressRequest(_)) => Some(WatchRequest::Progress),
        // etcd ignores a request with nothing set.
        None => None,
    })
}

fn event(e: crate::mvcc::Event) -> mvccpb::Event {
    let kind = match e.kind {
        crate::mvcc::EventType::Put => mvccpb::event::EventType::Put,
        crate::mvcc::EventType::Delete => mvccpb::event::EventType::Delete,
    };
    mvccpb::Event {
        r#type: kind as i32,
        kv: Some(super::convert::key_value(e.kv)),
        prev_kv: e.prev_kv.map(super::convert::key_value),
    }
}

impl Ctx {
    fn watch_response(&self, r: crate::watch::WatchResponse) -> pb::WatchResponse {
        pb::WatchResponse {
            header: self.header(r.header.revision),
            watch_id: r.watch_id,
            created: r.created,
            canceled: r.canceled,
            compact_revision: r.compact_revision,
            cancel_reason: r.cancel_reason,
            fragment: r.fragment,
            events: r.events.into_iter().map(event).collect(),
        }
    }
}

#[tonic::async_trait]
impl pb::watch_server::Watch for Ctx {
    type WatchStream = tokio_stream::wrappers::ReceiverStream<Result<pb::WatchResponse, Status>>;

    async fn watch(
        &self,
        req: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.serving()?;
        let mut incoming = req.into_inner();
        let conn = next_conn();
        let (sink, queued, queued_bytes) = ConnSink::channel();
        let inputs = self.shared.client_inputs.clone();
        inputs
            .try_send(ClientInput::Watch(WatchInput::Open { conn, sink }))
            .map_err(|_| Status::resource_exhausted("etcdserver: too many requests"))?;
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BACKLOG_MAX);
        // The hub's responses onto the stream, as the client takes them.
        let (ctx, out) = (self.clone(), tx.clone());
        tokio::spawn(async move {
            while let Ok(o) = queued.recv_async().await {
                let bytes = o.bytes();
                let sent = out.send(Ok(ctx.watch_response(o.response))).await;
                queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
                if sent.is_err() {
                    break;
                }
            }
        });
        // The client's requests to the hub; when the client is done or gone, so are its
        // watchers (and the stream ends, as etcd ends it).
        tokio::spawn(async move {
            let mut request_id = 0u64;
            while let Some(Ok(r)) = incoming.next().await {
                let r = match request(r) {
                    Ok(Some(r)) => r,
                    Ok(None) => continue,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        break;
                    }
                };
                request_id += 1;
                let input = WatchInput::Request {
                    conn,
                    request_id,
                    request: r,
                };
                if inputs.try_send(ClientInput::Watch(input)).is_err() {
                    let busy = Status::resource_exhausted("etcdserver: too many requests");
                    let _ = tx.send(Err(busy)).await;
                    break;
                }
            }
            drop(tx);
            let _ = inputs
                .send_async(ClientInput::Watch(WatchInput::Close { conn }))
                .await;
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }
}
