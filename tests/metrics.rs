//! `--listen-metrics-urls`: `/metrics` scraped from real members and parsed strictly as
//! Prometheus' text format, `/health`, `/livez`, `/readyz` and `/version` as etcd answers
//! them, and a server that refuses malformed and slow clients while it serves the others.

mod common;

use common::cluster::{poll, Cluster, Options};
use common::free_addr;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One member process or cluster at a time: the elections and timings are real.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// An HTTP response: status, headers (names lowercased), body.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

/// Reads one response (with a Content-Length) from `s`.
fn read_reply(s: &mut TcpStream) -> std::io::Result<Reply> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    assert!(status_line.starts_with("HTTP/1.1 "), "{status_line:?}");
    let status: u16 = status_line[9..12].parse().expect("status code");
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .expect("content-length");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8(body).expect("UTF-8 body"),
    })
}

/// A request on a fresh connection; its response.
fn request(addr: &str, method: &str, path: &str) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    read_reply(&mut s).expect("reply")
}

fn get(addr: &str, path: &str) -> Reply {
    request(addr, "GET", path)
}

/// One sample: metric name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scrape, parsed: each family's type, and the samples in order.
struct Scrape {
    types: HashMap<String, String>,
    samples: Vec<Sample>,
}

impl Scrape {
    /// Samples of `name` whose labels include `labels`.
    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The one sample of `name` with `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found = self.find(name, labels);
        assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}");
        found[0].value
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

fn is_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn parse_value(v: &str) -> f64 {
    match v {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => v
            .parse()
            .unwrap_or_else(|_| panic!("not a sample value: {v:?}")),
    }
}

/// `{k="v",...}` (escapes `\\`, `\"`, `\n`) at the start of `s`; the labels and the rest.
fn parse_labels(s: &str) -> (BTreeMap<String, String>, &str) {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').expect("{");
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return (labels, after);
        }
        let (name, after) = rest.split_once("=\"").expect("label=\"value\"");
        assert!(is_label_name(name), "label name {name:?}");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().expect("unterminated label value") {
                (i, '"') => break i,
                (_, '\\') => match chars.next().expect("escape").1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    c => panic!("bad escape \\{c}"),
                },
                (_, c) => value.push(c),
            }
        };
        assert!(
            labels.insert(name.to_string(), value).is_none(),
            "label {name} twice"
        );
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// The family a sample belongs to: histograms' `_bucket`, `_sum` and `_count` samples
/// belong to the histogram.
fn family<'a>(name: &'a str, types: &HashMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).is_some_and(|t| t == "histogram") {
                return base;
            }
        }
    }
    name
}

/// Parses the text exposition format strictly: every line is a HELP, a TYPE or a sample;
/// each family is typed once, before its samples, and its samples are together; histogram
/// buckets are cumulative and end with `+Inf` equal to `_count`.
fn parse_scrape(text: &str) -> Scrape {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples: Vec<Sample> = Vec::new();
    let mut seen_families: Vec<String> = Vec::new();
    assert!(text.ends_with('\n'), "the last line ends with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, what) = (parts.next(), parts.next(), parts.next());
            let name = name.unwrap_or_else(|| panic!("bad comment line {line:?}"));
            assert!(is_metric_name(name), "{line:?}");
            match kind {
                Some("HELP") => assert!(what.is_some_and(|h| !h.is_empty()), "{line:?}"),
                Some("TYPE") => {
                    let t = what.unwrap_or_default();
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                        "{line:?}"
                    );
                    assert!(
                        types.insert(name.to_string(), t.to_string()).is_none(),
                        "TYPE twice: {line:?}"
                    );
                    assert!(
                        !seen_families.iter().any(|f| f == name),
                        "TYPE after samples: {line:?}"
                    );
                }
                _ => panic!("bad comment line {line:?}"),
            }
            continue;
        }
        assert!(!line.is_empty() && !line.starts_with('#'), "line {line:?}");
        let name_end = line.find(['{', ' ']).expect("a sample has a value");
        let name = &line[..name_end];
        assert!(is_metric_name(name), "{line:?}");
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..])
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let value = rest.strip_prefix(' ').unwrap_or_else(|| panic!("{line:?}"));
        assert!(!value.contains(' '), "timestamps are not sent: {line:?}");
        let fam = family(name, &types).to_string();
        assert!(types.contains_key(&fam), "sample before its TYPE: {line:?}");
        match seen_families.last() {
            Some(last) if *last == fam => {}
            _ => {
                assert!(
                    !seen_families.contains(&fam),
                    "{fam}'s samples are not together"
                );
                seen_families.push(fam);
            }
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value: parse_value(value),
        });
    }
    let scrape = Scrape { types, samples };
    check_histograms(&scrape);
    scrape
}

/// Each histogram series: `le` ascending, counts cumulative, `+Inf` equal to `_count`.
fn check_histograms(scrape: &Scrape) {
    for (name, t) in &scrape.types {
        if t != "histogram" {
            continue;
        }
        let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
        for s in scrape.find(&format!("{name}_bucket"), &[]) {
            let mut labels = s.labels.clone();
            let le = parse_value(&labels.remove("le").expect("le"));
            series.entry(labels).or_default().push((le, s.value));
        }
        for (labels, buckets) in series {
            assert!(
                buckets
                    .windows(2)
                    .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                "{name}{labels:?}: {buckets:?}"
            );
            let last = buckets.last().expect("buckets");
            assert!(last.0.is_infinite(), "{name}{labels:?} ends with +Inf");
            let pairs: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            assert_eq!(
                scrape.value(&format!("{name}_count"), &pairs),
                last.1,
                "{name}{labels:?}"
            );
            scrape.value(&format!("{name}_sum"), &pairs);
        }
    }
}

fn scrape(addr: &str) -> Scrape {
    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.headers.get("content-type").map(String::as_str),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    parse_scrape(&r.body)
}

/// What `/metrics` must hold, with etcd's types.
const REQUIRED: [(&str, &str); 24] = [
    ("process_resident_memory_bytes", "gauge"),
    ("process_cpu_seconds_total", "counter"),
    ("process_open_fds", "gauge"),
    ("process_start_time_seconds", "gauge"),
    ("etcd_server_has_leader", "gauge"),
    ("etcd_server_is_leader", "gauge"),
    ("etcd_server_leader_changes_seen_total", "counter"),
    ("etcd_server_proposals_committed_total", "gauge"),
    ("etcd_server_proposals_applied_total", "gauge"),
    ("etcd_server_proposals_pending", "gauge"),
    ("etcd_server_proposals_failed_total", "counter"),
    ("etcd_disk_wal_fsync_duration_seconds", "histogram"),
    ("etcd_disk_backend_commit_duration_seconds", "histogram"),
    ("etcd_mvcc_db_total_size_in_bytes", "gauge"),
    ("etcd_mvcc_db_total_size_in_use_in_bytes", "gauge"),
    ("etcd_network_peer_round_trip_time_seconds", "histogram"),
    ("etcd_server_quota_backend_bytes", "gauge"),
    ("etcd_debugging_mvcc_watcher_total", "gauge"),
    ("etcd_debugging_mvcc_current_revision", "gauge"),
    ("etcd_server_id", "gauge"),
    ("cairn_executor_cpu_seconds_total", "counter"),
    ("cairn_wal_batch_records", "histogram"),
    ("cairn_wal_batch_bytes", "histogram"),
    ("cairn_apply_batch_entries", "histogram"),
];

/// One client for the test's puts.
fn put(client: &mut cairn::client::Client, key: &str, value: &str) {
    use cairn::mvcc::{PutRequest, Request, Response};
    use cairn::protocol::{ClientRequest, ClientResponse};
    let req = ClientRequest::Kv(Request::Put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    }));
    match client.request(&req) {
        Ok(ClientResponse::Kv(Response::Put(_))) => {}
        other => panic!("put {key}: {other:?}"),
    }
}

#[test]
fn a_three_member_cluster_exports_etcds_metrics_measured() {
    let _serial = serial();
    // A checkpoint every 20 entries, so that backend commits happen within the test.
    let options = Options::snapshots(20, 10);
    let cluster = Cluster::start_with(3, options);
    cluster.wait_leader(&[0, 1, 2], Duration::from_secs(10));
    let addrs: Vec<String> = cluster
        .members
        .iter()
        .map(|m| m.metrics_addr.clone())
        .collect();
    let before: Vec<Scrape> = addrs.iter().map(|a| scrape(a)).collect();
    for (i, s) in before.iter().enumerate() {
        for (name, t) in REQUIRED {
            assert_eq!(
                s.types.get(name).map(String::as_str),
                Some(t),
                "member {i}: {name}"
            );
        }
        assert!(s.value("process_resident_memory_bytes", &[]) > 1e6);
        assert!(s.value("process_open_fds", &[]) >= 3.0);
        let started = s.value("process_start_time_seconds", &[]);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        assert!(
            started > now - 600.0 && started <= now + 1.0,
            "{started} {now}"
        );
        assert!(s.value("etcd_mvcc_db_total_size_in_bytes", &[]) > 0.0);
        assert_eq!(
            s.value("etcd_server_quota_backend_bytes", &[]),
            8.0 * (1u64 << 30) as f64
        );
        assert_eq!(
            s.value(
                "etcd_server_id",
                &[("server_id", &format!("{:x}", cluster.members[i].id))]
            ),
            1.0
        );
        assert!(s.value("etcd_server_leader_changes_seen_total", &[]) >= 1.0);
        // The members run with --placement unpinned: a net shard on each executor, raft on
        // the first, apply on the last.
        let roles: Vec<String> = s
            .find("cairn_executor_cpu_seconds_total", &[("mode", "user")])
            .iter()
            .map(|x| x.labels["roles"].clone())
            .collect();
        assert!(roles.iter().any(|r| r.contains("raft")), "{roles:?}");
        assert!(roles.iter().any(|r| r.contains("apply")), "{roles:?}");
        assert!(roles.iter().all(|r| r.starts_with("net")), "{roles:?}");
    }
    // Every member knows the leader once it has heard from it, and one of them leads.
    poll(Duration::from_secs(10), "a leader known to all", || {
        let scrapes: Vec<Scrape> = addrs.iter().map(|a| scrape(a)).collect();
        let known = scrapes
            .iter()
            .all(|s| s.value("etcd_server_has_leader", &[]) == 1.0);
        let leaders: f64 = scrapes
            .iter()
            .map(|s| s.value("etcd_server_is_leader", &[]))
            .sum();
        (known && leaders == 1.0).then_some(())
    });
    let n = 60;
    let mut client = cairn::client::Client::new(cluster.endpoints(), Duration::from_secs(10));
    for k in 0..n {
        put(&mut client, &format!("k{k}"), "v");
    }
    for (i, a) in addrs.iter().enumerate() {
        let b = &before[i];
        let committed0 = b.value("etcd_server_proposals_committed_total", &[]);
        // Followers learn the commit index with the next message from the leader.
        let after = poll(
            Duration::from_secs(5),
            "the commit index grows by the puts",
            || {
                let s = scrape(a);
                let committed = s.value("etcd_server_proposals_committed_total", &[]);
                let applied = s.value("etcd_server_proposals_applied_total", &[]);
                (committed >= committed0 + f64::from(n) && applied >= committed0 + f64::from(n))
                    .then_some(s)
            },
        );
        let grew = |name: &str| after.value(name, &[]) - b.value(name, &[]);
        assert!(
            grew("etcd_disk_wal_fsync_duration_seconds_count") >= 1.0,
            "member {i}"
        );
        assert!(
            grew("etcd_disk_wal_fsync_duration_seconds_sum") > 0.0,
            "member {i}"
        );
        assert!(
            grew("cairn_wal_batch_records_sum") >= f64::from(n),
            "member {i}"
        );
        assert!(grew("cairn_wal_batch_bytes_sum") > 0.0, "member {i}");
        assert!(
            grew("cairn_apply_batch_entries_sum") >= f64::from(n),
            "member {i}"
        );
        assert!(after.value("etcd_debugging_mvcc_current_revision", &[]) >= f64::from(n));
        // 60 entries with a checkpoint every 20: some are durable by now.
        poll(Duration::from_secs(5), "a backend commit measured", || {
            let s = scrape(a);
            (s.value("etcd_disk_backend_commit_duration_seconds_count", &[]) >= 1.0).then_some(())
        });
    }
    // Each member probes each peer every second.
    for (i, a) in addrs.iter().enumerate() {
        for (j, peer) in cluster.members.iter().enumerate() {
            let to = format!("{:x}", peer.id);
            let rtts = scrape(a)
                .find(
                    "etcd_network_peer_round_trip_time_seconds_count",
                    &[("To", &to)],
                )
                .len();
            if i == j {
                assert_eq!(rtts, 0, "member {i} probes itself");
                continue;
            }
            let count = poll(Duration::from_secs(10), "round trips to each peer", || {
                let s = scrape(a);
                let c = s.value(
                    "etcd_network_peer_round_trip_time_seconds_count",
                    &[("To", &to)],
                );
                (c >= 2.0).then_some(c)
            });
            assert!(count >= 2.0);
        }
    }
}

#[test]
fn leader_changes_are_counted_and_health_follows_the_quorum() {
    let _serial = serial();
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_leader(&[0, 1, 2], Duration::from_secs(10));
    let addr = |c: &Cluster, i: usize| c.members[i].metrics_addr.clone();
    for i in 0..3 {
        let a = addr(&cluster, i);
        let h = poll(Duration::from_secs(5), "healthy", || {
            let r = get(&a, "/health");
            (r.status == 200).then_some(r)
        });
        assert_eq!(h.body, r#"{"health":"true","reason":""}"#);
        assert_eq!(
            h.headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
        assert_eq!(get(&a, "/readyz").body, "ok");
    }
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let changes_before: Vec<f64> = followers
        .iter()
        .map(|&i| scrape(&addr(&cluster, i)).value("etcd_server_leader_changes_seen_total", &[]))
        .collect();
    cluster.kill(leader);
    let next = cluster.wait_leader(&followers, Duration::from_secs(10));
    for (k, &i) in followers.iter().enumerate() {
        let a = addr(&cluster, i);
        poll(Duration::from_secs(5), "the new leader counted", || {
            let s = scrape(&a);
            (s.value("etcd_server_leader_changes_seen_total", &[]) > changes_before[k]
                && s.value("etcd_server_has_leader", &[]) == 1.0)
                .then_some(())
        });
        poll(
            Duration::from_secs(5),
            "healthy with the new leader",
            || (get(&a, "/health").status == 200).then_some(()),
        );
    }
    // The last member alone has no quorum: no leader, not healthy, not ready, but live.
    cluster.kill(next);
    let last = followers
        .iter()
        .copied()
        .find(|&i| i != next)
        .expect("a member left");
    let a = addr(&cluster, last);
    let unhealthy = poll(Duration::from_secs(10), "unhealthy without quorum", || {
        let r = get(&a, "/health");
        (r.status == 503).then_some(r)
    });
    assert!(
        unhealthy.body == "{\"health\":\"false\",\"reason\":\"RAFT NO LEADER\"}\n"
            || unhealthy
                .body
                .starts_with("{\"health\":\"false\",\"reason\":\"RANGE ERROR:"),
        "{}",
        unhealthy.body
    );
    poll(Duration::from_secs(10), "no leader", || {
        let s = scrape(&a);
        (s.value("etcd_server_has_leader", &[]) == 0.0).then_some(())
    });
    let r = get(&a, "/health");
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            503,
            "{\"health\":\"false\",\"reason\":\"RAFT NO LEADER\"}\n"
        )
    );
    let ready = get(&a, "/readyz");
    assert_eq!(ready.status, 503);
    assert!(
        ready.body.contains("[-]linearizable_read failed")
            && ready.body.contains("[+]serializable_read ok")
            && ready.body.ends_with("readyz check failed\n"),
        "{}",
        ready.body
    );
    // A write to a member without a leader fails, and is counted.
    let failed = scrape(&a).value("etcd_server_proposals_failed_total", &[]);
    let mut client = cairn::client::Client::new(
        vec![cluster.members[last].client_addr.clone()],
        Duration::from_secs(3),
    );
    let req =
        cairn::protocol::ClientRequest::Kv(cairn::mvcc::Request::Put(cairn::mvcc::PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        }));
    assert!(client.request(&req).is_err(), "a put without a quorum");
    poll(
        Duration::from_secs(5),
        "the failed proposal counted",
        || {
            let s = scrape(&a);
            (s.value("etcd_server_proposals_failed_total", &[]) > failed).then_some(())
        },
    );
    let live = get(&a, "/livez");
    assert_eq!((live.status, live.body.as_str()), (200, "ok"));
    // A local read still works: etcd's serializable health.
    let local = get(&a, "/health?serializable=true");
    assert_eq!(
        (local.status, local.body.as_str()),
        (200, r#"{"health":"true","reason":""}"#)
    );
}

/// One member serving HTTP on a port of its own; killed when dropped.
struct Single {
    child: Child,
    native: String,
    http: String,
    _dir: tempfile::TempDir,
}

impl Single {
    fn start() -> Single {
        Single::start_with(&[])
    }

    /// With more `cairn serve` flags.
    fn start_with(flags: &[&str]) -> Single {
        let dir = tempfile::tempdir().expect("tempdir");
        let native = free_addr();
        let http = free_addr();
        let mut child = common::serve_command(dir.path(), &native)
            .args(["--listen-metrics-urls", &format!("http://{http}")])
            .args(["--placement", "unpinned"])
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn cairn serve");
        common::wait_serving(&native, Some(&mut child));
        Single {
            child,
            native,
            http,
            _dir: dir,
        }
    }
}

impl Drop for Single {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn probes_version_and_methods_answer_as_etcd_does() {
    let _serial = serial();
    let m = Single::start();
    let a = &m.http;
    let live = poll(Duration::from_secs(5), "live", || {
        let r = get(a, "/livez");
        (r.status == 200).then_some(r)
    });
    assert_eq!(live.body, "ok");
    let ready = poll(Duration::from_secs(5), "ready", || {
        let r = get(a, "/readyz");
        (r.status == 200).then_some(r)
    });
    assert_eq!(ready.body, "ok");
    let verbose = get(a, "/readyz?verbose");
    assert_eq!(
        verbose.body,
        "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\nreadyz check passed\n"
    );
    let excluded = get(a, "/livez?verbose&exclude=serializable_read");
    assert_eq!(
        excluded.body,
        "[+]serializable_read excluded: ok\nlivez check passed\n"
    );
    let v = get(a, "/version");
    assert_eq!(v.status, 200);
    assert_eq!(v.body, r#"{"etcdserver":"3.4.0","etcdcluster":"3.4.0"}"#);
    let h = get(a, "/health");
    assert_eq!(
        (h.status, h.body.as_str()),
        (200, r#"{"health":"true","reason":""}"#)
    );
    // HEAD: the headers alone.
    let mut s = TcpStream::connect(a).expect("connect");
    s.write_all(b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut head = String::new();
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 1024];
    while !head.ends_with("\r\n\r\n") {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "closed early");
        head.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Content-Length: 29\r\n"), "{head}");
    // Keep-alive: a second request on the same connection.
    s.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let again = read_reply(&mut s).expect("second reply");
    assert_eq!(again.status, 200);
    let wrong = request(a, "POST", "/metrics");
    assert_eq!(wrong.status, 405);
    assert_eq!(
        wrong.headers.get("allow").map(String::as_str),
        Some("GET, HEAD")
    );
    assert_eq!(request(a, "DELETE", "/health").status, 405);
    assert_eq!(get(a, "/nothing").status, 404);
    assert_eq!(get(a, "/metrics/x").status, 404);
    // A member alone leads itself.
    let s = scrape(a);
    assert_eq!(s.value("etcd_server_is_leader", &[]), 1.0);
    assert_eq!(s.value("etcd_server_has_leader", &[]), 1.0);
    assert!(s
        .find("etcd_network_peer_round_trip_time_seconds_count", &[])
        .is_empty());
}

#[test]
fn a_nospace_alarm_makes_the_member_unhealthy_unless_excluded() {
    let _serial = serial();
    let m = Single::start_with(&["--quota-backend-bytes", "65536"]);
    let a = &m.http;
    poll(Duration::from_secs(5), "healthy", || {
        (get(a, "/health").status == 200).then_some(())
    });
    assert_eq!(
        scrape(a).value("etcd_server_quota_backend_bytes", &[]),
        65536.0
    );
    // A put past the quota is refused and raises the alarm.
    let mut client = cairn::client::Client::new(vec![m.native.clone()], Duration::from_secs(5));
    let req =
        cairn::protocol::ClientRequest::Kv(cairn::mvcc::Request::Put(cairn::mvcc::PutRequest {
            key: b"big".to_vec(),
            value: vec![b'x'; 70_000],
            ..Default::default()
        }));
    assert!(client.request(&req).is_err(), "a put past the quota");
    let h = get(a, "/health");
    assert_eq!(
        (h.status, h.body.as_str()),
        (503, "{\"health\":\"false\",\"reason\":\"ALARM NOSPACE\"}\n")
    );
    let excluded = get(a, "/health?exclude=NOSPACE");
    assert_eq!(
        (excluded.status, excluded.body.as_str()),
        (200, r#"{"health":"true","reason":""}"#)
    );
    // Not a corruption: still ready, as etcd 3.6 says.
    assert_eq!(get(a, "/readyz").status, 200);
}

/// Reads what the server sends until it closes the connection (or `limit` passes); the
/// bytes read, and whether it closed (a reset counts as closed).
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, bool) {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (String::from_utf8_lossy(&out).to_string(), false);
        }
        s.set_read_timeout(Some(left)).expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&out).to_string(), true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (String::from_utf8_lossy(&out).to_string(), false)
            }
            Err(_) => return (String::from_utf8_lossy(&out).to_string(), true),
        }
    }
}

#[test]
fn malformed_large_and_slow_requests_are_refused_while_others_are_served() {
    let _serial = serial();
    let m = Single::start();
    let a = m.http.clone();
    // Garbage (a TLS hello, say): 400, closed.
    let mut s = TcpStream::connect(&a).expect("connect");
    s.write_all(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\r\n\r\n")
        .expect("write");
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(5));
    assert!(got.starts_with("HTTP/1.1 400 "), "{got:?}");
    assert!(closed);
    // A header of 1 MB: 431 or a reset once the server stops reading, and closed.
    let mut s = TcpStream::connect(&a).expect("connect");
    let mut big = b"GET /metrics HTTP/1.1\r\nX-Big: ".to_vec();
    big.resize(big.len() + (1 << 20), b'a');
    let writer = {
        let mut w = s.try_clone().expect("clone");
        std::thread::spawn(move || {
            let _ = w.write_all(&big);
        })
    };
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(10));
    assert!(closed, "still open after a 1 MB header");
    assert!(
        got.is_empty() || got.starts_with("HTTP/1.1 431 "),
        "{got:?}"
    );
    drop(s);
    writer.join().expect("writer");
    // A slow client: a byte every 200 ms never finishes its head, and is cut off within
    // the head timeout (5 s), while another client is served meanwhile.
    let mut slow = TcpStream::connect(&a).expect("connect");
    slow.write_all(b"GET /metrics HTTP/1.1\r\n").expect("write");
    let started = Instant::now();
    let trickle = {
        let mut w = slow.try_clone().expect("clone");
        std::thread::spawn(move || {
            for _ in 0..100 {
                if w.write_all(b"X").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let t = Instant::now();
    let other = get(&a, "/health");
    assert_eq!(other.status, 200);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let (got, closed) = read_until_closed(&mut slow, Duration::from_secs(10));
    assert!(closed, "the slow client is still connected");
    assert!(got.starts_with("HTTP/1.1 408 "), "{got:?}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    trickle.join().expect("trickle");
    // Connections beyond the limit (64) are answered 503 and closed; once the idle ones
    // go, requests are served again.
    let idle: Vec<TcpStream> = (0..64)
        .map(|_| TcpStream::connect(&a).expect("connect"))
        .collect();
    let busy = poll(
        Duration::from_secs(5),
        "a connection over the limit refused",
        || {
            let mut s = TcpStream::connect(&a).ok()?;
            let (got, closed) = read_until_closed(&mut s, Duration::from_secs(2));
            (closed && got.starts_with("HTTP/1.1 503 ")).then_some(got)
        },
    );
    assert!(busy.ends_with("too many connections"), "{busy}");
    drop(idle);
    poll(Duration::from_secs(5), "served again", || {
        let mut s = TcpStream::connect(&a).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
            .ok()?;
        let r = read_reply(&mut s).ok()?;
        (r.status == 200).then_some(())
    });
}

/// The metric names of a scrape, each once.
fn names(s: &Scrape) -> std::collections::BTreeSet<String> {
    s.samples.iter().map(|s| s.name.clone()).collect()
}

/// The gRPC client URL's port answers HTTP/1.1 as the metrics port does (etcd serves both
/// on its client port; `etcdctl check datascale` scrapes `/metrics` there), while gRPC
/// calls on that port, on a connection opened before and one opened after, are served.
#[test]
fn the_client_port_answers_http_as_the_metrics_port_does() {
    use cairn::grpc::pb::etcdserverpb as pb;
    let _serial = serial();
    let grpc = free_addr();
    let m = Single::start_with(&["--listen-client-urls", &format!("http://{grpc}")]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let connect = || async {
        let ch = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
            .expect("URL")
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .expect("gRPC connection");
        pb::kv_client::KvClient::new(ch)
    };
    let put = |key: &str| pb::PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        ..Default::default()
    };
    let mut before = rt.block_on(connect());
    rt.block_on(before.put(put("before"))).expect("gRPC put");
    for port in [&m.http, &grpc] {
        poll(Duration::from_secs(5), "ready", || {
            (get(port, "/readyz").status == 200).then_some(())
        });
    }
    for (method, path) in [
        ("GET", "/health"),
        ("GET", "/health?serializable=true"),
        ("GET", "/livez"),
        ("GET", "/readyz?verbose"),
        ("GET", "/version"),
        ("GET", "/nothing"),
        ("POST", "/metrics"),
    ] {
        let (want, got) = (request(&m.http, method, path), request(&grpc, method, path));
        assert_eq!(
            (got.status, &got.body, got.headers.get("content-type")),
            (want.status, &want.body, want.headers.get("content-type")),
            "{method} {path}"
        );
    }
    let (want, got) = (scrape(&m.http), scrape(&grpc));
    assert_eq!(names(&got), names(&want));
    assert!(got.value("process_resident_memory_bytes", &[]) > 0.0);
    // Keep-alive, and a request line that arrives in pieces (the first bytes alone do not
    // tell the protocol apart from HTTP/2's preface: "P").
    let mut s = TcpStream::connect(&grpc).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"P").expect("write");
    std::thread::sleep(Duration::from_millis(100));
    s.write_all(b"OST /version HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    assert_eq!(read_reply(&mut s).expect("reply").status, 405);
    s.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let again = read_reply(&mut s).expect("reply");
    assert_eq!(
        (again.status, again.body.as_str()),
        (200, r#"{"etcdserver":"3.4.0","etcdcluster":"3.4.0"}"#)
    );
    // Garbage is HTTP/1's to refuse.
    let mut s = TcpStream::connect(&grpc).expect("connect");
    s.write_all(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\r\n\r\n")
        .expect("write");
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(5));
    assert!(got.starts_with("HTTP/1.1 400 ") && closed, "{got:?}");
    rt.block_on(async {
        before
            .put(put("after"))
            .await
            .expect("gRPC put, old connection");
        let mut after = connect().await;
        let got = after
            .range(pb::RangeRequest {
                key: b"a".to_vec(),
                range_end: b"c".to_vec(),
                ..Default::default()
            })
            .await
            .expect("gRPC range, new connection")
            .into_inner();
        let keys: Vec<&[u8]> = got.kvs.iter().map(|kv| kv.key.as_slice()).collect();
        assert_eq!(keys, [&b"after"[..], b"before"]);
    });
}
