//! `watch`: etcdctl 3.4's arguments, the watch request they make, and the output of each
//! response (simple: the event type, then the previous key and value if asked for, then
//! the key and value; json: the response as etcdctl marshals it).

use super::output::{header as json_header, json_event};
use super::CliError;
use crate::mvcc::{Event, EventType};
use crate::watch::{WatchCreateRequest, WatchResponse};
use clap::Args;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;

/// `watch [key or prefix] [range_end] [-- exec-command arg1 arg2 ...]`.
#[derive(Args, Debug, Clone, Default, PartialEq)]
pub struct WatchArgs {
    pub key: Option<OsString>,
    pub range_end: Option<OsString>,
    /// Watch on a prefix if prefix is set.
    #[arg(long)]
    pub prefix: bool,
    /// Revision to start watching from.
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// Get the previous key-value pair before the event happens.
    #[arg(long)]
    pub prev_kv: bool,
    /// Get periodic watch progress notification from the server.
    #[arg(long)]
    pub progress_notify: bool,
    /// A command to run for each event, with ETCD_WATCH_REVISION, ETCD_WATCH_KEY,
    /// ETCD_WATCH_EVENT_TYPE and ETCD_WATCH_VALUE set.
    #[arg(last = true)]
    pub exec: Vec<OsString>,
}

impl WatchArgs {
    pub fn request(&self) -> Result<WatchCreateRequest, CliError> {
        let Some(key) = &self.key else {
            return Err(CliError::Usage(
                "watch in non-interactive mode requires one or two arguments as key or prefix, with range end".into(),
            ));
        };
        let (key, range_end) = super::ops::key_range(
            key.as_bytes(),
            self.range_end.as_deref().map(OsStrExt::as_bytes),
            self.prefix,
            false,
        )?;
        Ok(WatchCreateRequest {
            key,
            range_end,
            start_revision: self.rev,
            progress_notify: self.progress_notify,
            prev_kv: self.prev_kv,
            ..WatchCreateRequest::default()
        })
    }
}

fn type_name(kind: EventType) -> &'static str {
    match kind {
        EventType::Put => "PUT",
        EventType::Delete => "DELETE",
    }
}

/// etcdctl's simple output of one response: `progress notify: REV` for a progress
/// response; per event its type, the previous key and value if any, the key and value.
pub fn watch_simple(r: &WatchResponse) -> Vec<u8> {
    let mut out = Vec::new();
    if r.is_progress_notify() {
        out.extend_from_slice(format!("progress notify: {}\n", r.header.revision).as_bytes());
    }
    for e in &r.events {
        out.extend_from_slice(type_name(e.kind).as_bytes());
        out.push(b'\n');
        for kv in e.prev_kv.iter().chain(std::iter::once(&e.kv)) {
            for field in [&kv.key, &kv.value] {
                out.extend_from_slice(field);
                out.push(b'\n');
            }
        }
    }
    out
}

/// etcdctl's json output of one response (clientv3's `WatchResponse` marshalled).
pub fn watch_json(r: &WatchResponse) -> String {
    let events: Vec<String> = r.events.iter().map(json_event).collect();
    format!(
        "{{\"Header\":{},\"Events\":[{}],\"CompactRevision\":{},\"Canceled\":{},\"Created\":{}}}\n",
        json_header(&r.header),
        events.join(","),
        r.compact_revision,
        r.canceled,
        r.created
    )
}

/// The environment etcdctl gives an exec-command for an event.
pub fn exec_env(e: &Event) -> Vec<(&'static str, OsString)> {
    use std::os::unix::ffi::OsStringExt;
    vec![
        ("ETCD_WATCH_REVISION", e.kv.mod_revision.to_string().into()),
        ("ETCD_WATCH_KEY", OsString::from_vec(e.kv.key.clone())),
        ("ETCD_WATCH_EVENT_TYPE", type_name(e.kind).into()),
        ("ETCD_WATCH_VALUE", OsString::from_vec(e.kv.value.clone())),
    ]
}
