//! etcdctl's output formats: `simple` (lines) and `json` (etcd's JSON, bytes in base64, zero
//! fields left out).

use crate::mvcc::{
    DeleteRangeResponse, KeyValue, PutResponse, RangeResponse, ResponseHeader, ResponseOp,
    TxnResponse,
};
use crate::protocol::{Member, MemberResponse, StatusResponse};
use std::fmt::Write;

/// Standard base64 with padding, as Go's `encoding/json` writes `[]byte`.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (k, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if k <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A JSON object that leaves out zero fields, as etcd's `omitempty` does.
struct Obj(String);

impl Obj {
    fn new() -> Obj {
        Obj(String::from("{"))
    }
    fn raw(mut self, name: &str, value: &str) -> Obj {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        let _ = write!(self.0, "\"{name}\":{value}");
        self
    }
    fn int(self, name: &str, v: i64) -> Obj {
        if v == 0 {
            self
        } else {
            self.raw(name, &v.to_string())
        }
    }
    fn uint(self, name: &str, v: u64) -> Obj {
        if v == 0 {
            self
        } else {
            self.raw(name, &v.to_string())
        }
    }
    fn bytes(self, name: &str, v: &[u8]) -> Obj {
        if v.is_empty() {
            self
        } else {
            self.raw(name, &format!("\"{}\"", base64(v)))
        }
    }
    fn string(self, name: &str, v: &str) -> Obj {
        if v.is_empty() {
            self
        } else {
            self.raw(name, &json_string(v))
        }
    }
    fn strings(self, name: &str, v: &[String]) -> Obj {
        self.list(name, v.iter().map(|s| json_string(s)).collect())
    }
    fn flag(self, name: &str, v: bool) -> Obj {
        if v {
            self.raw(name, "true")
        } else {
            self
        }
    }
    fn list(self, name: &str, items: Vec<String>) -> Obj {
        if items.is_empty() {
            self
        } else {
            self.raw(name, &format!("[{}]", items.join(",")))
        }
    }
    fn done(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

/// A JSON string as Go's `encoding/json` writes one (names and URLs come from members, and
/// paths from the file system: either may hold anything).
pub(crate) fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Other control characters as \u00XX; Go also escapes <, > and & (HTML-safe
            // output) and JavaScript's line separators.
            c if c < ' ' || matches!(c, '<' | '>' | '&' | '\u{2028}' | '\u{2029}') => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub(crate) fn header(h: &ResponseHeader) -> String {
    Obj::new().int("revision", h.revision).done()
}

/// `mvccpb.Event` as Go's JSON has it: `type` left out for a put (0), 1 for a delete.
pub(crate) fn json_event(e: &crate::mvcc::Event) -> String {
    let o = match e.kind {
        crate::mvcc::EventType::Put => Obj::new(),
        crate::mvcc::EventType::Delete => Obj::new().int("type", 1),
    };
    let o = o.raw("kv", &kv(&e.kv));
    match &e.prev_kv {
        Some(p) => o.raw("prev_kv", &kv(p)).done(),
        None => o.done(),
    }
}

fn kv(kv: &KeyValue) -> String {
    Obj::new()
        .bytes("key", &kv.key)
        .int("create_revision", kv.create_revision)
        .int("mod_revision", kv.mod_revision)
        .int("version", kv.version)
        .bytes("value", &kv.value)
        .int("lease", kv.lease)
        .done()
}

pub fn range_json(r: &RangeResponse) -> String {
    Obj::new()
        .raw("header", &header(&r.header))
        .list("kvs", r.kvs.iter().map(kv).collect())
        .flag("more", r.more)
        .int("count", r.count)
        .done()
}

pub fn put_json(r: &PutResponse) -> String {
    let o = Obj::new().raw("header", &header(&r.header));
    match &r.prev_kv {
        Some(p) => o.raw("prev_kv", &kv(p)).done(),
        None => o.done(),
    }
}

pub fn delete_json(r: &DeleteRangeResponse) -> String {
    Obj::new()
        .raw("header", &header(&r.header))
        .int("deleted", r.deleted)
        .list("prev_kvs", r.prev_kvs.iter().map(kv).collect())
        .done()
}

pub fn txn_json(r: &TxnResponse) -> String {
    let ops = r
        .responses
        .iter()
        .map(|op| match op {
            ResponseOp::Range(x) => {
                format!("{{\"Response\":{{\"response_range\":{}}}}}", range_json(x))
            }
            ResponseOp::Put(x) => format!("{{\"Response\":{{\"response_put\":{}}}}}", put_json(x)),
            ResponseOp::DeleteRange(x) => {
                format!(
                    "{{\"Response\":{{\"response_delete_range\":{}}}}}",
                    delete_json(x)
                )
            }
            ResponseOp::Txn(x) => format!("{{\"Response\":{{\"response_txn\":{}}}}}", txn_json(x)),
        })
        .collect();
    Obj::new()
        .raw("header", &header(&r.header))
        .flag("succeeded", r.succeeded)
        .list("responses", ops)
        .done()
}

/// `endpoint status -w json`: one object per endpoint, in an array.
pub fn status_json(rows: &[(String, StatusResponse)]) -> String {
    let objects: Vec<String> = rows
        .iter()
        .map(|(endpoint, s)| {
            let status = Obj::new()
                .raw(
                    "header",
                    &Obj::new()
                        .uint("cluster_id", s.cluster_id)
                        .uint("member_id", s.member_id)
                        .int("revision", s.revision)
                        .uint("raft_term", s.raft_term)
                        .done(),
                )
                .raw("version", &format!("\"{}\"", env!("CARGO_PKG_VERSION")))
                .uint("dbSize", s.db_size)
                .uint("leader", s.leader)
                .uint("raftIndex", s.raft_index)
                .uint("raftTerm", s.raft_term)
                .uint("raftAppliedIndex", s.raft_applied_index)
                .uint("dbSizeInUse", s.db_size_in_use)
                .flag("isLearner", s.is_learner);
            let status = if s.errors.is_empty() {
                status
            } else {
                let quoted: Vec<String> = s.errors.iter().map(|e| format!("{e:?}")).collect();
                status.raw("errors", &format!("[{}]", quoted.join(",")))
            }
            .done();
            Obj::new()
                .raw("Endpoint", &format!("\"{endpoint}\""))
                .raw("Status", &status)
                .done()
        })
        .collect();
    format!("[{}]", objects.join(","))
}

/// Bytes as etcdctl prints them (go-humanize's SI units: "4.1 kB", "20 MB").
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 10 {
        return format!("{n} B");
    }
    let e = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let e = e.min(UNITS.len() - 1);
    let val = ((n as f64) / 1000f64.powi(e as i32) * 10.0 + 0.5).floor() / 10.0;
    if val < 10.0 {
        format!("{val:.1} {}", UNITS[e])
    } else {
        format!("{val:.0} {}", UNITS[e])
    }
}

fn status_fields(endpoint: &str, s: &StatusResponse) -> [String; 10] {
    [
        endpoint.to_string(),
        format!("{:x}", s.member_id),
        env!("CARGO_PKG_VERSION").to_string(),
        human_bytes(s.db_size),
        (s.leader == s.member_id && s.leader != 0).to_string(),
        s.is_learner.to_string(),
        s.raft_term.to_string(),
        s.raft_index.to_string(),
        s.raft_applied_index.to_string(),
        s.errors.join(", "),
    ]
}

/// `endpoint status` lines, as etcdctl's simple output.
pub fn status_simple(rows: &[(String, StatusResponse)]) -> String {
    rows.iter()
        .map(|(endpoint, s)| format!("{}\n", status_fields(endpoint, s).join(", ")))
        .collect()
}

/// `endpoint status -w table`, as etcdctl draws it.
pub fn status_table(rows: &[(String, StatusResponse)]) -> String {
    let header = [
        "ENDPOINT",
        "ID",
        "VERSION",
        "DB SIZE",
        "IS LEADER",
        "IS LEARNER",
        "RAFT TERM",
        "RAFT INDEX",
        "RAFT APPLIED INDEX",
        "ERRORS",
    ];
    let cells: Vec<[String; 10]> = rows.iter().map(|(e, s)| status_fields(e, s)).collect();
    table(&header, &cells)
}

/// `member ... -w json`, etcd's `Member*Response`: the header, the member added (for
/// `add`) and the members.
pub fn member_json(r: &MemberResponse) -> String {
    // The reply carries no raft term; etcd's is never 0, so the field is always written,
    // as scripts find it in etcd's output.
    let header = Obj::new()
        .uint("cluster_id", r.cluster_id)
        .uint("member_id", r.member_id)
        .raw("raft_term", "0")
        .done();
    let member = |m: &Member| {
        Obj::new()
            .uint("ID", m.id)
            .string("name", &m.name)
            .strings("peerURLs", &m.peer_urls)
            .strings("clientURLs", &m.client_urls)
            .flag("isLearner", m.is_learner)
            .done()
    };
    let o = Obj::new().raw("header", &header);
    let o = match &r.member {
        Some(m) => o.raw("member", &member(m)),
        None => o,
    };
    o.list("members", r.members.iter().map(member).collect())
        .done()
}

/// A member's row, as etcdctl's `member list` has it.
fn member_fields(m: &Member) -> [String; 6] {
    [
        format!("{:x}", m.id),
        if m.name.is_empty() {
            "unstarted"
        } else {
            "started"
        }
        .to_string(),
        m.name.clone(),
        m.peer_urls.join(","),
        m.client_urls.join(","),
        m.is_learner.to_string(),
    ]
}

/// `member list` lines, as etcdctl's simple output.
pub fn member_list_simple(r: &MemberResponse) -> String {
    r.members
        .iter()
        .map(|m| format!("{}\n", member_fields(m).join(", ")))
        .collect()
}

/// `member list -w table`, as etcdctl draws it.
pub fn member_list_table(r: &MemberResponse) -> String {
    let header = [
        "ID",
        "STATUS",
        "NAME",
        "PEER ADDRS",
        "CLIENT ADDRS",
        "IS LEARNER",
    ];
    let cells: Vec<[String; 6]> = r.members.iter().map(member_fields).collect();
    table(&header, &cells)
}

/// What etcdctl prints for `member add NAME`: the new member's ID, then the variables that
/// start it (`cairn serve` reads them), its name given to it in the cluster's list (it has
/// none until it starts; other unstarted members are listed with their empty names, as
/// etcdctl lists them). `None` if the reply names no member added.
pub fn member_added(name: &str, r: &MemberResponse) -> Option<String> {
    let added = r.member.as_ref()?;
    let cluster: Vec<String> = r
        .members
        .iter()
        .flat_map(|m| {
            let n = if m.id == added.id { name } else { &m.name };
            m.peer_urls.iter().map(move |url| format!("{n}={url}"))
        })
        .collect();
    // etcdctl quotes the values with Go's %q; Rust's {:?} writes the same for anything a
    // name or URL holds short of control characters.
    Some(format!(
        "Member {:16x} added to cluster {:16x}\n\n\
         ETCD_NAME={name:?}\n\
         ETCD_INITIAL_CLUSTER={:?}\n\
         ETCD_INITIAL_ADVERTISE_PEER_URLS={:?}\n\
         ETCD_INITIAL_CLUSTER_STATE=\"existing\"\n",
        added.id,
        r.cluster_id,
        cluster.join(","),
        added.peer_urls.join(","),
    ))
}

/// What etcdctl prints for `member remove|update|promote` (`done` is "removed from",
/// "updated in" or "promoted in").
pub fn member_changed(id: u64, done: &str, r: &MemberResponse) -> String {
    format!("Member {id:16x} {done} cluster {:16x}\n", r.cluster_id)
}

/// A table with etcdctl's borders: header centered, cells right-aligned.
pub(crate) fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain(std::iter::once(header[i].len()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let rule: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(w + 2)))
        .collect::<String>()
        + "+\n";
    let mut out = rule.clone();
    for (h, w) in header.iter().zip(&widths) {
        let pad = w - h.len();
        let left = pad / 2;
        let _ = write!(
            out,
            "| {}{}{} ",
            " ".repeat(left),
            h,
            " ".repeat(pad - left)
        );
    }
    out.push_str("|\n");
    out.push_str(&rule);
    for row in rows {
        for (cell, w) in row.iter().zip(&widths) {
            let _ = write!(out, "| {cell:>w$} ");
        }
        out.push_str("|\n");
    }
    out.push_str(&rule);
    out
}

/// `key` and `value` on lines of their own, bytes as stored.
fn push_kv(out: &mut Vec<u8>, kv: &KeyValue) {
    for field in [&kv.key, &kv.value] {
        out.extend_from_slice(field);
        out.push(b'\n');
    }
}

/// `get` lines: key, then value (or only one of them), bytes as stored (etcdctl's simple
/// output writes them raw; JSON has them in base64).
pub fn range_simple(r: &RangeResponse, keys_only: bool, value_only: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for kv in &r.kvs {
        if !value_only {
            out.extend_from_slice(&kv.key);
            out.push(b'\n');
        }
        if !keys_only {
            out.extend_from_slice(&kv.value);
            out.push(b'\n');
        }
    }
    out
}

pub fn put_simple(r: &PutResponse) -> Vec<u8> {
    let mut out = b"OK\n".to_vec();
    if let Some(p) = &r.prev_kv {
        push_kv(&mut out, p);
    }
    out
}

pub fn delete_simple(r: &DeleteRangeResponse) -> Vec<u8> {
    let mut out = format!("{}\n", r.deleted).into_bytes();
    for p in &r.prev_kvs {
        push_kv(&mut out, p);
    }
    out
}

pub fn txn_simple(r: &TxnResponse) -> Vec<u8> {
    let mut out = if r.succeeded {
        b"SUCCESS\n".to_vec()
    } else {
        b"FAILURE\n".to_vec()
    };
    for op in &r.responses {
        out.push(b'\n');
        out.extend_from_slice(&match op {
            ResponseOp::Range(x) => range_simple(x, false, false),
            ResponseOp::Put(x) => put_simple(x),
            ResponseOp::DeleteRange(x) => delete_simple(x),
            ResponseOp::Txn(x) => txn_simple(x),
        });
    }
    out
}

/// `lease grant -w json` (etcd's `LeaseGrantResponse`).
pub fn lease_grant_json(r: &crate::lease::LeaseGrantResponse) -> String {
    Obj::new()
        .raw("header", &header(&r.header))
        .int("ID", r.id)
        .int("TTL", r.ttl)
        .done()
}

/// `lease revoke -w json`.
pub fn lease_revoke_json(r: &crate::lease::LeaseRevokeResponse) -> String {
    Obj::new().raw("header", &header(&r.header)).done()
}

/// `lease keep-alive -w json`: one object per renewal.
pub fn lease_keep_alive_json(r: &crate::lease::LeaseKeepAliveResponse) -> String {
    Obj::new()
        .raw("header", &header(&r.header))
        .int("ID", r.id)
        .int("TTL", r.ttl)
        .done()
}

/// `lease timetolive -w json` (keys base64, as etcd's JSON has bytes).
pub fn lease_time_to_live_json(r: &crate::lease::LeaseTimeToLiveResponse) -> String {
    Obj::new()
        .raw("header", &header(&r.header))
        .int("ID", r.id)
        .int("TTL", r.ttl)
        .int("grantedTTL", r.granted_ttl)
        .list(
            "keys",
            r.keys.iter().map(|k| json_string(&base64(k))).collect(),
        )
        .done()
}

/// `lease list -w json`.
pub fn lease_list_json(r: &crate::lease::LeaseLeasesResponse) -> String {
    Obj::new()
        .raw("header", &header(&r.header))
        .list(
            "leases",
            r.leases
                .iter()
                .map(|l| Obj::new().int("ID", l.id).done())
                .collect(),
        )
        .done()
}
