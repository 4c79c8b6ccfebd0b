//! `cairn check` and `cairn repair` on every damage case of `docs/wal.md` and
//! `docs/btree.md`: check never changes a byte of the data directory (every file's path,
//! size and content are compared before and after), exits 0 only where a start would succeed
//! and lose nothing, and names the file and byte offset of what it found. Where it matters,
//! the directory is one a real member wrote (`cairn serve` with small WAL segments and
//! frequent checkpoints, so that segments are released and the log compacted), and `serve`
//! is run on the damaged directory to confirm check's verdict.

mod common;

use cairn::btree::DbOptions;
use cairn::client::Client;
use cairn::mvcc::{PutRequest, RaftPosition, Request, Store};
use cairn::protocol::{ClientRequest, ClientResponse};
use cairn::wal::{RecordType, Wal, WalOptions};
use common::{free_addr, serve_command};
use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const SEGMENT_BYTES: u64 = 8 << 20;
const PAGE: u64 = 4096;

fn cairn(args: &[&str], dir: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cairn_check(dir: &Path) -> (i32, String, String) {
    cairn(&["check"], dir)
}

/// Every file under `dir`: its size and a hash of its content.
fn files(dir: &Path) -> BTreeMap<PathBuf, (u64, u64)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                let mut h = DefaultHasher::new();
                h.write(&bytes);
                out.insert(path, (bytes.len() as u64, h.finish()));
            }
        }
    }
    out
}

/// Runs `cairn check` and asserts that it changed nothing.
fn check_unchanged(dir: &Path) -> (i32, String, String) {
    let before = files(dir);
    let result = cairn_check(dir);
    assert_eq!(files(dir), before, "check changed the data directory");
    result
}

fn serve_flags(snapshot_count: u64) -> Vec<String> {
    vec![
        "--snapshot-count".into(),
        snapshot_count.to_string(),
        "--wal-segment-bytes".into(),
        SEGMENT_BYTES.to_string(),
        "--log-level".into(),
        "warn".into(),
    ]
}

/// A running member; killed if the test fails before it stops it.
struct Member {
    child: std::process::Child,
    addr: String,
}

impl Member {
    fn start(dir: &Path, snapshot_count: u64) -> Member {
        let addr = free_addr();
        let child = serve_command(dir, &addr)
            .args(serve_flags(snapshot_count))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut member = Member { child, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(
            member.client().request(&ClientRequest::Status),
            Ok(ClientResponse::Status(_))
        ) {
            assert!(Instant::now() < deadline, "member did not start");
            assert!(member.child.try_wait().unwrap().is_none(), "member exited");
            std::thread::sleep(Duration::from_millis(50));
        }
        member
    }

    fn client(&self) -> Client {
        Client::new(vec![self.addr.clone()], Duration::from_secs(10))
    }

    fn stop(mut self) {
        // SAFETY: a plain syscall on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert!(
            self.child.wait().unwrap().success(),
            "member did not stop cleanly"
        );
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `serve` on `dir`, expecting it to refuse; returns its stderr.
fn serve_refuses(dir: &Path) -> String {
    let out = serve_command(dir, &free_addr())
        .args(serve_flags(20))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "serve started on a damaged directory"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A data directory written by a real member: 400 puts of 60 KB with 8 MiB segments. With
/// a small `snapshot_count` the log is compacted and the first segments released.
fn member_dir(snapshot_count: u64) -> PathBuf {
    // One name per kind: a later run starts it over instead of leaving another behind.
    let root =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-check-{snapshot_count}"));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let member = Member::start(&root, snapshot_count);
    let mut client = member.client();
    for i in 0..400 {
        let put = PutRequest {
            key: format!("key{i:04}").into_bytes(),
            value: vec![b'v'; 60_000],
            ..Default::default()
        };
        let reply = client.request(&ClientRequest::Kv(Request::Put(put)));
        assert!(reply.is_ok(), "put {i}: {reply:?}");
    }
    // Let the last checkpoint compact the log, then stop cleanly.
    std::thread::sleep(Duration::from_millis(300));
    member.stop();
    root
}

/// A copy of a member's directory (built once per snapshot count and test process).
fn copy_of(snapshot_count: u64) -> tempfile::TempDir {
    static COMPACTED: OnceLock<PathBuf> = OnceLock::new();
    static LONG: OnceLock<PathBuf> = OnceLock::new();
    let cell = if snapshot_count == 20 {
        &COMPACTED
    } else {
        &LONG
    };
    let src = cell.get_or_init(|| member_dir(snapshot_count));
    let copy = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for sub in ["wal", "db"] {
        assert!(Command::new("cp")
            .arg("-a")
            .arg(src.join(sub))
            .arg(copy.path())
            .status()
            .unwrap()
            .success());
    }
    copy
}

/// The data segments of a WAL directory (stamped header: first LSN not 0), in order.
fn data_segments(dir: &Path) -> Vec<PathBuf> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .filter(|p| {
            let bytes = std::fs::read(p).unwrap();
            bytes[32..40] != [0; 8]
        })
        .collect();
    segments.sort();
    segments
}

/// End of the last block holding a nonzero byte in `path`.
fn data_end(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    let last = bytes.iter().rposition(|&b| b != 0).unwrap() as u64;
    (last / PAGE + 1) * PAGE
}

fn field<'a>(json: &'a str, name: &str) -> &'a str {
    let key = format!("\"{name}\":");
    let at = json
        .find(&key)
        .unwrap_or_else(|| panic!("{name} missing in {json}"))
        + key.len();
    let rest = &json[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    &rest[..end]
}

#[test]
fn a_member_directory_checks_intact_and_unchanged() {
    let dir = copy_of(20);
    let (code, out, err) = check_unchanged(dir.path());
    assert_eq!(code, 0, "{err}");
    assert_eq!(field(&out, "intact"), "true");
    assert_eq!(field(&out, "start_refuses"), "null");
    assert_eq!(field(&out, "revision"), "401", "{out}");
    assert_ne!(
        field(&out, "log_start_index"),
        "0",
        "the log was compacted: {out}"
    );
}

/// The tester's case: after log compaction, half of the tree file is gone. The tree falls
/// back to an old commit the log no longer leads on from.
#[test]
fn a_half_truncated_tree_file_is_refused_by_check_and_serve_and_left_as_it_is() {
    let dir = copy_of(20);
    let db = dir.path().join("db/cairn.db");
    let len = std::fs::metadata(&db).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let (code, out, err) = check_unchanged(dir.path());
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("a start refuses")
            && err.contains(&format!("tree file {} holds entries up to", db.display())),
        "{err}"
    );
    assert!(
        err.contains("cairn.db") && err.contains("the start refuses before it would cut"),
        "{err}"
    );
    let err = serve_refuses(dir.path());
    assert!(err.contains("the data directory is damaged"), "{err}");
    assert_eq!(
        std::fs::metadata(&db).unwrap().len(),
        len / 2,
        "serve cut the tree file"
    );
    // Repair cannot fix this, and changes nothing.
    let before = files(dir.path());
    let (code, _, err) = cairn(&["repair"], dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(files(dir.path()), before);
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// Both copies of the newest commit record zeroed: the tree falls back to the commit
/// before. Where the log still leads on from that commit, nothing is lost and a start cuts
/// the newer commit's pages; once the fallback is older than the compacted log's start, the
/// start (and check) refuse, and the tree file is left as it is.
#[test]
fn zeroed_newest_commit_records_fall_back_or_are_refused_and_not_cut() {
    let dir = copy_of(20);
    let (_, out, _) = check_unchanged(dir.path());
    let log_start: u64 = field(&out, "log_start_index").parse().unwrap();
    let db = dir.path().join("db/cairn.db");
    let mut bytes = std::fs::read(&db).unwrap();
    // After a clean stop the newest record's two copies are the file's last two pages.
    let mut record = bytes.len() / PAGE as usize - 2;
    for _ in 0..10 {
        let at = record * PAGE as usize;
        assert_eq!(
            &bytes[at + 32..at + 40],
            b"CAIRNCMT",
            "no commit record at page {record}"
        );
        let previous = u64_at(&bytes, at + 80) as usize;
        let previous_applied = u64_at(&bytes, previous * PAGE as usize + 48);
        bytes[at..at + 2 * PAGE as usize].fill(0);
        std::fs::write(&db, &bytes).unwrap();
        let (code, out, err) = check_unchanged(dir.path());
        assert_eq!(field(&out, "applied_index"), previous_applied.to_string());
        assert_ne!(field(&out, "db_cut"), "null", "{out}");
        if previous_applied >= log_start {
            assert_eq!(code, 0, "{err}");
            record = previous;
            continue;
        }
        assert_eq!(code, 1, "{out}");
        assert!(err.contains("a start refuses"), "{err}");
        let err = serve_refuses(dir.path());
        assert!(err.contains("the data directory is damaged"), "{err}");
        assert_eq!(
            std::fs::read(&db).unwrap(),
            bytes,
            "serve changed the tree file"
        );
        return;
    }
    panic!("ten commits back, the tree still meets the log");
}

/// `truncate -s 3M` on the 8 MiB segment holding the WAL's data: its missing bytes may
/// have held acknowledged records, so neither check nor serve takes it for a torn tail.
#[test]
fn a_short_last_segment_is_named_with_the_offset_where_it_ends() {
    let dir = copy_of(20);
    let segment = data_segments(dir.path()).pop().unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(3 << 20)
        .unwrap();
    let name = segment.display().to_string();
    let (code, _, err) = check_unchanged(dir.path());
    assert_eq!(code, 1);
    assert!(err.contains(&name) && err.contains("byte 3145728"), "{err}");
    // The start verifies the whole WAL before it deletes anything: it leaves it all as is.
    let before = files(dir.path());
    let err = serve_refuses(dir.path());
    assert!(err.contains(&name) && err.contains("byte 3145728"), "{err}");
    assert_eq!(
        files(dir.path()),
        before,
        "serve changed the data directory"
    );
}

/// A torn last batch (a valid header, records that do not verify): check names the cut and
/// exits 1 (an acknowledged last batch could look the same); repair makes the cut; then
/// check is clean and the member starts.
#[test]
fn a_torn_last_batch_is_reported_and_repair_cuts_it() {
    let dir = copy_of(20);
    let segment = data_segments(dir.path()).pop().unwrap();
    let end = data_end(&segment);
    let mut bytes = std::fs::read(&segment).unwrap();
    // The last batch's header, as the next batch's: one record at the next LSN.
    let mut at = end - PAGE;
    while &bytes[at as usize..at as usize + 4] != b"WBAT" {
        at -= PAGE;
    }
    let last = &bytes[at as usize..at as usize + 32];
    let count = u32::from_le_bytes(last[4..8].try_into().unwrap());
    let first = u64::from_le_bytes(last[8..16].try_into().unwrap());
    let mut header = last.to_vec();
    header[4..8].copy_from_slice(&1u32.to_le_bytes());
    header[8..16].copy_from_slice(&(first + u64::from(count)).to_le_bytes());
    header[24..28].copy_from_slice(&100u32.to_le_bytes());
    let crc = crc32c::crc32c(&header[..28]);
    header[28..32].copy_from_slice(&crc.to_le_bytes());
    let torn = end as usize;
    bytes[torn..torn + 32].copy_from_slice(&header);
    bytes[torn + 32..torn + 132].fill(0xab);
    std::fs::write(&segment, &bytes).unwrap();
    let (code, out, err) = check_unchanged(dir.path());
    assert_eq!(code, 1, "{out}");
    let name = segment.display().to_string();
    assert!(
        err.contains(&name) && err.contains(&format!("at byte {end}")),
        "{err}"
    );
    assert!(
        err.contains("(1 record)") && err.contains("cairn repair"),
        "{err}"
    );
    assert_eq!(field(&out, "records"), "1", "{out}");

    let (code, out, err) = cairn(&["repair"], dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&name) && out.contains(&format!("cut {PAGE} bytes at byte {end}")),
        "{out}"
    );
    // Only the successor a start preallocates is created, of the segments' own size.
    for (path, (size, _)) in files(dir.path()) {
        if path.extension().is_some_and(|e| e == "wal") {
            assert_eq!(size, SEGMENT_BYTES, "{}", path.display());
        }
    }
    let (code, out, err) = check_unchanged(dir.path());
    assert_eq!(code, 0, "{err}");
    assert_eq!(field(&out, "wal_torn_tail"), "null");
    Member::start(dir.path(), 20).stop();
}

/// Damage in an acknowledged batch before the last one: an error naming the segment.
#[test]
fn a_damaged_middle_batch_and_a_missing_segment_are_errors() {
    let dir = copy_of(100_000);
    let segments = data_segments(dir.path());
    assert!(segments.len() >= 3, "{segments:?}");
    let mut bytes = std::fs::read(&segments[0]).unwrap();
    bytes[PAGE as usize + 100] ^= 0x40;
    std::fs::write(&segments[0], &bytes).unwrap();
    let (code, _, err) = check_unchanged(dir.path());
    assert_eq!(code, 1);
    assert!(
        err.contains(&segments[0].display().to_string()) && err.contains("corrupt WAL segment"),
        "{err}"
    );

    let dir = copy_of(100_000);
    let segments = data_segments(dir.path());
    std::fs::remove_file(&segments[1]).unwrap();
    let (code, _, err) = check_unchanged(dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("is missing from"), "{err}");
}

/// Files a start deletes because they never held anything acknowledged: reported, exit 0.
#[test]
fn leftovers_are_reported_but_are_no_damage() {
    let dir = copy_of(20);
    let spare = dir.path().join("wal/00000000000000aa.wal.tmp");
    std::fs::write(&spare, [1u8; 4096]).unwrap();
    let unfinished = dir.path().join("db/cairn.db.reclaim");
    std::fs::write(&unfinished, [2u8; 8192]).unwrap();
    let db = dir.path().join("db/cairn.db");
    let mut tree = std::fs::OpenOptions::new().append(true).open(&db).unwrap();
    let len = tree.metadata().unwrap().len();
    std::io::Write::write_all(&mut tree, &[3u8; 5000]).unwrap();
    drop(tree);
    let (code, out, err) = check_unchanged(dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&spare.display().to_string()), "{err}");
    assert!(err.contains(&unfinished.display().to_string()), "{err}");
    assert!(
        err.contains(&format!("a start cuts 5000 bytes at byte {len}")),
        "{err}"
    );
    assert!(
        out.contains(&format!("\"db_cut\":{{\"offset\":{len},\"bytes\":5000}}")),
        "{out}"
    );
}

/// A running member holds the WAL's lock: check says the directory is in use.
#[test]
fn check_on_a_running_member_says_it_is_in_use() {
    let dir = copy_of(20);
    let member = Member::start(dir.path(), 20);
    let (code, _, err) = cairn_check(dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("in use"), "{err}");
    member.stop();
}

/// A tree file with 300 revisions in one commit, and a WAL whose log starts after them (as
/// after a compaction), as a member would leave them.
fn build(dir: &Path) {
    std::fs::create_dir_all(dir.join("db")).unwrap();
    let mut store = Store::open(dir.join("db/cairn.db"), DbOptions::default()).unwrap();
    for i in 1..=300u64 {
        let put = PutRequest {
            key: format!("key{i:04}").into_bytes(),
            value: vec![7; 200],
            ..Default::default()
        };
        store
            .apply(RaftPosition { index: i, term: 1 }, &[Request::Put(put)])
            .unwrap();
    }
    store.checkpoint().unwrap();
    let wal_dir = dir.join("wal");
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .unwrap()
        .run(async move {
            cairn::wal::keep_reactor_awake();
            let options = WalOptions {
                segment_bytes: SEGMENT_BYTES,
                ..WalOptions::default()
            };
            let wal = Wal::open(&wal_dir, options, 0, |_, _, _| Ok(()))
                .await
                .unwrap();
            let identity = cairn::server::Identity {
                member_id: 7,
                cluster_id: 9,
            }
            .encode(1, &[]);
            let membership = cairn::raftlog::Membership {
                conf: raft::eraftpb::ConfState {
                    voters: vec![7],
                    ..Default::default()
                },
                ..Default::default()
            };
            let marker = cairn::raftlog::encode_marker(300, 1, &membership);
            wal.append_many(&[
                (RecordType::METADATA, &identity),
                (RecordType::SNAPSHOT, &marker),
            ])
            .await
            .unwrap();
            wal.close().await.unwrap();
        });
}

#[test]
fn check_summarizes_an_intact_directory() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let (code, out, err) = check_unchanged(dir.path());
    assert_eq!(code, 0, "stderr: {err}");
    for field in [
        "\"wal_records\":2",
        "\"applied_index\":300",
        "\"revision\":301",
        "\"compact_revision\":-1",
    ] {
        assert!(out.contains(field), "{field} missing in {out}");
    }
}

/// A damaged data page of the newest commit is reported at that page, not at the commit's
/// first page.
#[test]
fn a_damaged_data_page_is_reported_at_its_offset() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let db = dir.path().join("db/cairn.db");
    let bytes = std::fs::read(&db).unwrap();
    for page in [1u64, 7] {
        let mut damaged = bytes.clone();
        damaged[(page * PAGE + 100) as usize] ^= 0xff;
        std::fs::write(&db, &damaged).unwrap();
        let (code, _, err) = check_unchanged(dir.path());
        assert_eq!(code, 1);
        let offset = page * PAGE;
        assert!(
            err.contains("corrupt") && err.contains(&format!("byte offset {offset}:")),
            "{err}"
        );
        assert!(err.contains(&format!("page {page} of commit")), "{err}");
    }
}

#[test]
fn check_of_a_missing_directory_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = cairn_check(&dir.path().join("nope"));
    assert_eq!(code, 1);
    assert!(err.contains("is not a directory"), "{err}");
}
