//! WAL tests that need the on-disk layout: round trips, crash cuts and corruption at every
//! batch boundary and inside batches, release, replay from an LSN.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::LocalExecutorBuilder;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::format::{
    batch_disk_bytes, BatchDecode, BatchHeader, BLOCK_BYTES, SEGMENT_HEADER_BYTES,
};
use super::segment;
use super::*;

type Replayed = Vec<(Lsn, u8, Vec<u8>)>;

fn run<F, T>(make: impl FnOnce() -> F + Send + 'static) -> T
where
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    LocalExecutorBuilder::default()
        .spawn(|| {
            crate::wal::keep_reactor_awake();
            make()
        })
        .expect("spawn executor")
        .join()
        .expect("executor thread")
}

/// Test directories live on the same file system as the build, which supports O_DIRECT
/// (a tmpfs `/tmp` would not); `CAIRN_TEST_DIR` overrides.
fn test_root() -> PathBuf {
    let root = std::env::var_os("CAIRN_TEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-tmp"));
    std::fs::create_dir_all(&root).expect("test root");
    root
}

fn small_options() -> WalOptions {
    WalOptions {
        segment_bytes: 128 << 10,
        batch_bytes_max: 60 << 10,
        ..WalOptions::default()
    }
}

async fn open(dir: &Path, options: WalOptions, from: Lsn) -> Result<(Wal, Replayed)> {
    let mut seen = Vec::new();
    let wal = Wal::open(dir, options, from, |lsn, rtype, payload| {
        seen.push((lsn, rtype.get(), payload.to_vec()));
        Ok(())
    })
    .await?;
    Ok((wal, seen))
}

/// Opens, checks nothing, closes; returns what was replayed and the torn tail.
async fn reopen(dir: &Path) -> Result<(Replayed, Option<TornTail>)> {
    let (wal, seen) = open(dir, small_options(), 1).await?;
    let torn = wal.torn_tail().cloned();
    wal.close().await?;
    Ok((seen, torn))
}

fn payload(rng: &mut StdRng, lsn: Lsn, max: usize) -> Vec<u8> {
    let len = match rng.gen_range(0..10) {
        0 => 0,
        1 => rng.gen_range(4096..max),
        _ => rng.gen_range(1..600),
    };
    let mut p = vec![0u8; len];
    rng.fill(&mut p[..]);
    if let Some(first) = p.first_mut() {
        *first = lsn as u8;
    }
    p
}

fn rtype_of(lsn: Lsn) -> RecordType {
    RecordType::new((lsn % 5) as u8 + 1).expect("nonzero")
}

/// Appends `count` records one at a time (one batch each); returns what was written.
async fn append_sequential(wal: &Wal, rng: &mut StdRng, count: usize, max: usize) -> Replayed {
    let mut written = Vec::new();
    for _ in 0..count {
        let lsn = wal.next_lsn();
        let p = payload(rng, lsn, max);
        let got = wal.append(rtype_of(lsn), &p).await.expect("append");
        assert_eq!(got, lsn);
        assert!(wal.durable_lsn() >= lsn);
        written.push((lsn, rtype_of(lsn).get(), p));
    }
    written
}

fn segment_paths(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    paths.sort();
    paths
}

/// A batch as found on disk.
#[derive(Debug, Clone)]
struct BatchAt {
    segment: usize,
    offset: u64,
    records_end: u64,
    /// One past the last nonzero byte: a cut at or after it loses nothing.
    data_end: u64,
    disk_end: u64,
    first_lsn: Lsn,
    last_lsn: Lsn,
}

/// Every batch of every segment, parsed with the format decoder.
fn layout(dir: &Path) -> Vec<BatchAt> {
    let mut batches = Vec::new();
    for (segment, path) in segment_paths(dir).iter().enumerate() {
        let bytes = std::fs::read(path).expect("read segment");
        let mut off = SEGMENT_HEADER_BYTES;
        while let BatchDecode::Valid(h) = BatchHeader::decode(&bytes[off as usize..]) {
            let records_end = off + 32 + u64::from(h.records_bytes);
            let disk_end = off + batch_disk_bytes(h.records_bytes as usize);
            let (first_lsn, last_lsn) = (h.first_lsn, h.last_lsn());
            let data = &bytes[off as usize..records_end as usize];
            let data_end = off
                + data
                    .iter()
                    .rposition(|&x| x != 0)
                    .map_or(0, |i| i as u64 + 1);
            batches.push(BatchAt {
                segment,
                offset: off,
                records_end,
                data_end,
                disk_end,
                first_lsn,
                last_lsn,
            });
            off = disk_end;
        }
    }
    batches
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for path in segment_paths(from) {
        std::fs::copy(&path, to.join(path.file_name().expect("name"))).expect("copy");
    }
}

fn flip_byte(path: &Path, at: u64) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[at as usize] ^= 0x5a;
    std::fs::write(path, bytes).expect("write");
}

/// Builds a WAL in `dir` with one record per batch over at least `segments` segments.
fn build_wal(dir: &Path, seed: u64, segments: usize) -> Replayed {
    let dir = dir.to_owned();
    run(move || async move {
        let (wal, seen) = open(&dir, small_options(), 1).await.expect("open");
        assert!(seen.is_empty());
        let mut rng = StdRng::seed_from_u64(seed);
        let mut written = Vec::new();
        while segment_paths(&dir).len() <= segments {
            written.extend(append_sequential(&wal, &mut rng, 8, 9000).await);
        }
        wal.close().await.expect("close");
        written
    })
}

#[test]
fn round_trip_across_segments_and_reopen() {
    let tmp = tempfile::tempdir_in(test_root()).expect("tempdir");
    let dir = tmp.path().join("wal");
    run(move || async move {
        let mut rng = StdRng::seed_from_u64(1);
        let (wal, seen) = open(&dir, small_options(), 1).await.expect("open");
        assert!(seen.is_empty());
        assert_eq!(wal.next_lsn(), 1);
        let mut written = append_sequential(&wal, &mut rng, 150, 40_000).await;
        let wal = Rc::new(wal);
        let mut tasks = Vec::new();
        for t in 0..8u8 {
            let wal = wal.clone();
            tasks.push(glommio::spawn_local(async move {
                let mut mine = Vec::new();
                for i in 0..40usize {
                    let p = vec![t; (i * 97) % 7000];
                    let lsn = wal.append(RecordType::ENTRY, &p).await.expect("append");
                    mine.push((lsn, RecordType::ENTRY.get(), p));
                }
                mine
            }));
        }
        for task in tasks {
            written.extend(task.await);
        }
        written.sort_by_key(|r| r.0);
        let wal = Rc::try_unwrap(wal).ok().expect("sole owner");
        wal.close().await.expect("close");
        assert!(
            segment_paths(&dir).len() >= 4,
            "records should span several segments"
        );

        let (wal, seen) = open(&dir, small_options(), 1).await.expect("reopen");
        assert_eq!(seen, written);
        assert!(wal.torn_tail().is_none());
        assert_eq!(wal.next_lsn(), written.len() as u64 + 1);
        written.extend(append_sequential(&wal, &mut rng, 30, 20_000).await);
        wal.close().await.expect("close");

        let (seen, torn) = reopen(&dir).await.expect("reopen again");
        assert_eq!(seen, written);
        assert!(torn.is_none());
    });
}

#[test]
fn concurrent_appends_are_batched_and_durable_on_return() {
    let tmp = tempfile::tempdir_in(test_root()).expect("tempdir");
    let dir = tmp.path().join("wal");
    run(move || async move {
        let options = WalOptions {
            segment_bytes: 1 << 20,
            batch_bytes_max: 256 << 10,
            ..WalOptions::default()
        };
        let (wal, _) = open(&dir, options.clone(), 1).await.expect("open");
        let wal = Rc::new(wal);
        let (tasks_n, per_task) = (64usize, 40usize);
        let mut tasks = Vec::new();
        for t in 0..tasks_n {
            let wal = wal.clone();
            tasks.push(glommio::spawn_local(async move {
                let mut lsns = Vec::new();
                for i in 0..per_task {
                    let p = format!("task {t} record {i}").into_bytes();
                    let lsn = wal.append(RecordType::ENTRY, &p).await.expect("append");
                    assert!(wal.durable_lsn() >= lsn, "acknowledged before durable");
                    lsns.push((lsn, p));
                }
                lsns
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            let lsns = task.await;
            assert!(lsns.windows(2).all(|w| w[0].0 < w[1].0));
            all.extend(lsns);
        }
        let metrics = wal.metrics();
        let records = (tasks_n * per_task) as u64;
        assert_eq!(metrics.records, records);
        assert!(metrics.fsyncs < records / 4, "no batching: {metrics:?}");
        all.sort();
        // Everything acknowledged is on disk before close: reopen a copy of the files now.
        let copy = dir.with_file_name("copy");
        copy_dir(&dir, &copy);
        let (copy_wal, seen) = open(&copy, options, 1).await.expect("open copy");
        copy_wal.close().await.expect("close copy");
        let seen: Vec<_> = seen.into_iter().map(|(lsn, _, p)| (lsn, p)).collect();
        assert_eq!(seen, all);
        let wal = Rc::try_unwrap(wal).ok().expect("sole owner");
        wal.close().await.expect("close");
    });
}

#[test]
fn append_many_is_one_batch_and_limits_are_enforced() {
    let tmp = tempfile::tempdir_in(test_root()).expect("tempdir");
    let dir = tmp.path().join("wal");
    run(move || async move {
        let (wal, _) = open(&dir, small_options(), 1).await.expect("open");
        let records: Vec<(RecordType, &[u8])> = vec![
            (RecordType::ENTRY, b"one"),
            (RecordType::HARD_STATE, b"two"),
            (RecordType::SNAPSHOT, b""),
        ];
        assert_eq!(wal.append_many(&records).await.expect("append"), 1..4);
        assert_eq!(wal.append_many(&[]).await.expect("empty"), 4..4);
        assert_eq!(wal.metrics().batches, 1);
        let big = vec![0u8; small_options().payload_bytes_max() + 1];
        assert!(matches!(
            wal.append(RecordType::ENTRY, &big).await,
            Err(WalError::RecordTooLarge { .. })
        ));
        let max = vec![1u8; small_options().payload_bytes_max()];
        assert_eq!(
            wal.append(RecordType::ENTRY, &max).await.expect("largest"),
            4
        );
        wal.close().await.expect("close");
        let (seen, _) = reopen(&dir).await.expect("reopen");
        assert_eq!(seen.len(), 4);
        assert_eq!(seen[1], (2, RecordType::HARD_STATE.get(), b"two".to_vec()));
        assert_eq!(seen[3].2, max);
    });
}

#[test]
fn backpressure_keeps_batches_under_the_limit() {
    let tmp = tempfile::tempdir_in(test_root()).expect("tempdir");
    let dir = tmp.path().join("wal");
    run(move || async move {
        let options = WalOptions {
            segment_bytes: 256 << 10,
            batch_bytes_max: 8 << 10,
            ..WalOptions::default()
        };
        let (wal, _) = open(&dir, options.clone(), 1).await.expect("open");
        let wal = Rc::new(wal);
        let mut tasks = Vec::new();
        for t in 0..32u8 {
            let wal = wal.clone();
            tasks.push(glommio::spawn_local(async move {
                for i in 0..20usize {
                    let p = vec![t; 100 + (i * 331) % 3000];
                    wal.append(RecordType::ENTRY, &p).await.expect("append");
                }
            }));
        }
        for task in tasks {
            task.await;
        }
        let metrics = wal.metrics();
        assert_eq!(metrics.records, 640);
        let wal = Rc::try_unwrap(wal).ok().expect("sole owner");
        wal.close().await.expect("close");
        let max_disk = batch_disk_bytes(options.batch_bytes_max);
        for b in layout(&dir) {
            assert!(b.disk_end - b.offset <= max_disk);
        }
        let (wal, seen) = open(&dir, options, 1).await.expect("reopen");
        assert_eq!(seen.len(), 640);
        wal.close().await.expect("close");
    });
}

#[test]
fn options_are_validated() {
    let tmp = tempfile::tempdir_in(test_root()).expect("tempdir");
    let dir = tmp.path().join("wal");
    run(move || async move {
        let bad = [
            WalOptions {
                segment_bytes: 100_000,
                ..WalOptions::default()
            },
            WalOptions {
                segment_bytes: 64 << 10,
                batch_bytes_max: 64 << 10,
                ..WalOptions::default()
            },
            WalOptions {
                batch_bytes_max: 4,
                ..WalOptions::default()
            },
        ];
        for options in bad {
            assert!(matches!(
                open(&dir, options, 1).await,
                Err(WalError::InvalidOptions(_))
            ));
        }
    });
}

/// Cuts a copy of the WAL at `at` in segment `segment` (truncating or zeroing to the end),
/// removes later segments, and checks the reopened WAL holds exactly the records of the
/// batches that end before the cut, then that appends continue the chain; a truncation
/// short of the segment's size must be an error where the file ends.
fn check_cut(
    src: &Path,
    work: &Path,
    written: &Replayed,
    batches: &[BatchAt],
    segment: usize,
    at: u64,
    zero: bool,
) {
    let dir = work.join(format!("cut-{segment}-{at}-{zero}"));
    copy_dir(src, &dir);
    let paths = segment_paths(&dir);
    for later in &paths[segment + 1..] {
        std::fs::remove_file(later).expect("remove later segment");
    }
    let path = &paths[segment];
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open");
    let len = file.metadata().expect("metadata").len();
    if zero {
        use std::os::unix::fs::FileExt;
        file.write_all_at(&vec![0u8; (len - at) as usize], at)
            .expect("zero");
    } else {
        file.set_len(at).expect("truncate");
    }
    drop(file);
    if !zero && at < len {
        // Segments are preallocated before they are named: a short one was cut, and what
        // its missing bytes held is unknown. An error where the file ends; nothing changed.
        let dir2 = dir.clone();
        let result = run(move || async move { reopen(&dir2).await });
        expect_corrupt_in(result, path, at, at + 1);
        assert_eq!(std::fs::metadata(path).expect("metadata").len(), at);
        std::fs::remove_dir_all(&dir).expect("cleanup");
        return;
    }
    // A batch survives iff all its nonzero bytes are before the cut (the rest reads zero).
    let kept = batches
        .iter()
        .filter(|b| b.segment < segment || (b.segment == segment && b.data_end <= at))
        .map(|b| b.last_lsn)
        .max()
        .unwrap_or(0);
    let torn_expected = batches
        .iter()
        .any(|b| b.segment == segment && b.offset < at && at < b.data_end);
    let expected: Replayed = written.iter().filter(|r| r.0 <= kept).cloned().collect();
    let extra = written[..3].to_vec();
    let dir2 = dir.clone();
    run(move || async move {
        let (wal, seen) = open(&dir2, small_options(), 1)
            .await
            .expect("reopen after cut");
        assert_eq!(seen.len(), expected.len(), "cut at {at} zero={zero}");
        assert!(seen == expected, "cut at {at} zero={zero}: wrong records");
        assert_eq!(
            wal.torn_tail().is_some(),
            torn_expected,
            "cut at {at}: {:?}",
            wal.torn_tail()
        );
        assert_eq!(wal.next_lsn(), kept + 1);
        for (_, rtype, p) in &extra {
            wal.append(RecordType::new(*rtype).expect("type"), p)
                .await
                .expect("append after cut");
        }
        wal.close().await.expect("close");
        let (wal, seen) = open(&dir2, small_options(), 1)
            .await
            .expect("reopen after append");
        assert!(wal.torn_tail().is_none());
        assert_eq!(seen.len(), expected.len() + extra.len());
        assert!(seen[..expected.len()] == expected[..]);
        wal.close().await.expect("close");
    });
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// Cut points: every batch boundary and several offsets inside every batch of a segment.
fn cut_points(batches: &[BatchAt], segment: usize) -> Vec<u64> {
    let mut points = vec![0, 100, SEGMENT_HEADER_BYTES];
    for b in batches.iter().filter(|b| b.segment == segment) {
        let inside = [1, 31, 32, 33, 47, 48, (b.records_end - b.offset) / 2];
        points.extend(inside.iter().map(|d| b.offset + d));
        points.extend([b.records_end - 1, b.records_end, b.disk_end - 1, b.disk_end]);
    }
    points.sort_unstable();
    points.dedup();
    points
}

#[test]
fn cut_at_every_batch_boundary_and_inside_batches() {
    let tmp = tempfile::tempdir_in(test_root()).expect("tempdir");
    let src = tmp.path().join("wal");
    let written = build_wal(&src, 7, 3);
    let batches = layout(&src);
    assert_eq!(batches.len(), written.len(), "one record per batch");
    // Last data segment is the last but one file (the last is the preallocated blank).
    let last = batches.last().expect("batches").segment;
    for segment in [last, last - 1] {
        for at in cut_points(&batches, segment) {
            for zero in [false, true] {
                check_cut(&src, tmp.path(), &written, &batches, segment, at, zero);
            }
        }
    }
}

#[test]
fn cut_inside_a_multi_record_batch_drops_the_whole_batch() {
    let tmp = tempfile::tempdir_in(test_root()).expect("tempdir");
    let src = tmp.path().join("wal");
    let dir = src.clone();
    let written = run(move || async move {
        let (wal, _) = open(&dir, small_options(), 1).await.expect("open");
        let mut written = Vec::new();
        for b in 0..6u8 {
            let payloads: Vec<Vec<u8>> = (0..5).map(|i| vec![b; 200 * i + 10]).collect();
            let records: Vec<(RecordType, &[u8])> = payloads
                .iter()
                .map(|p| (RecordType::ENTRY, &p[..]))
                .collect();
            let lsns = wal.append_many(&records).await.expect("append");
            for (lsn, p) in lsns.zip(payloads) {
                written.push((lsn, RecordType::ENTRY.get(), p));
            }
        }
        wal.close().await.expect("close");
        written
    });
    let batches = layout(&src);
    assert_eq!(batches.len(), 6);
    for at in cut_points(&batches, 0) {
        for zero in [false, true] {
            check_cut(&src, tmp.path(), &written, &batches, 0, at, zero);
        }
    }
}

fn expect_corrupt_in(result: Result<(Replayed, Option<TornTail>)>, path: &Path, lo: u64, hi: u64) {
    match result {
        Err(WalError::Corrupt {
            path: p, offset, ..
        }) => {
            assert_eq!(p, path);
            assert!(
                (lo..hi).contains(&offset),
                "offset {offset} outside the damaged batch {lo}..{hi}"
            );
        }
        Err(WalError::RecordTooLong {
            path: p, offset, ..
        }) => {
            assert_eq!(p, path);
            assert!((lo..hi).contains(&offset));
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
}

fn reopen_blocking(dir: &Path) -> Result<(Replayed, Option<TornTail>)> {
    let dir = dir.to_owned();
    run(move || async move { reopen(&dir).await })
}

#[test]
fn flipped_byte_in_a_middle_segment_is_a_typed_error() {
    let tmp = tempfile::tempdir_in(test_root()).expect("tempdir");
    let src = tmp.path().join("wal");
    build_wal(&src, 11, 3);
    let batches = layout(&src);
    let middle = batches.last().expect("batches").segment - 1;
    let in_middle: Vec<BatchAt> = batches
        .iter()
        .filter(|b| b.segment == middle)
        .cloned()
        .collect();
    // Every byte of the smallest batch (header, records, padding), one byte in every batch.
    let victim = in_middle
        .iter()
        .min_by_key(|b| b.disk_end - b.offset)
        .expect("batch")
        .clone();
    let mut targets: Vec<(u64, BatchAt)> = (victim.offset..victim.disk_end)
        .map(|at| (at, victim.clone()))
        .collect();
    targets.extend(in_middle.iter().map(|b| (b.offset + 40, b.clone())));
    let work = tmp.path().join("flip");
    run(move || async move {
        for (at, batch) in targets {
            copy_dir(&src, &work);
            let path = segment_paths(&work)[middle].clone();
            flip_byte(&path, at);
            expect_corrupt_in(reopen(&work).await, &path, batch.offset, batch.disk_end);
            std::fs::remove_dir_all(&work).expect("cleanup");
        }
    });
}

#[test]
fn flipped_byte_in_the_last_segment() {
    let tmp = tempfile::tempdir_in(test_root()).expect("tempdir");
    let src = tmp.path().join("wal");
    let written = build_wal(&src, 12, 2);
    let batches = layout(&src);
    let last_seg = batches.last().expect("batches").segment;
    let in_last: Vec<&BatchAt> = batches.iter().filter(|b| b.segment == last_seg).collect();
    assert!(in_last.len() >= 2);
    // An earlier batch of the last segment: a later batch proves it was acknowledged.
    for b in &in_last[..in_last.len() - 1] {
        let dir = tmp.path().join(format!("early-{}", b.offset));
        copy_dir(&src, &dir);
        let path = segment_paths(&dir)[last_seg].clone();
        flip_byte(&path, (b.offset + b.records_end) / 2);
        expect_corrupt_in(reopen_blocking(&dir), &path, b.offset, b.disk_end);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
    // The last batch: indistinguishable from a torn write, so it is truncated.
    let b = in_last[in_last.len() - 1];
    for at in [b.offset, b.offset + 20, b.offset + 40, b.records_end - 1] {
        let dir = tmp.path().join(format!("last-{at}"));
        copy_dir(&src, &dir);
        let path = segment_paths(&dir)[last_seg].clone();
        flip_byte(&path, at);
        let (seen, torn) = reopen_blocking(&dir).expect("torn last batch");
        assert_eq!(seen.len() as u64, b.first_lsn - 1);
        assert!(seen[..] == written[..seen.len()]);
        let torn = torn.expect("torn tail reported");
        assert_eq!((torn.path, torn.offset), (path, b.offset));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
    // A zeroed batch followed by a valid one is corruption, not a clean end.
    let b = in_last[0];
    let dir = tmp.path().join("zeroed");
    copy_dir(&src, &dir);
    let path = segment_paths(&dir)[last_seg].clone();
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[b.offset as usize..b.disk_end as usize].fill(0);
    std::fs::write(&path, bytes).expect("write");
    expect_corrupt_in(reopen_blocking(&dir), &path, b.offset, b.disk_end);
}

#[test]
fn damaged_segments_and_headers_are_typed_errors() {
    let tmp = tempfile::tempdir_in(test_root()).expect("tempdir");
    let src = tmp.path().join("wal");
    build_wal(&src, 13, 3);
    let case = |name: &str, damage: &dyn Fn(&[PathBuf])| -> Result<(Replayed, Option<TornTail>)> {
        let dir = tmp.path().join(name);
        copy_dir(&src, &dir);
        damage(&segment_paths(&dir));
        reopen_blocking(&dir)
    };
    let missing = case("missing", &|p| std::fs::remove_file(&p[1]).expect("rm"));
    assert!(
        matches!(missing, Err(WalError::MissingSegment { seq: 1, .. })),
        "{missing:?}"
    );
    let magic = case("magic", &|p| flip_byte(&p[1], 0));
    assert!(matches!(magic, Err(WalError::BadMagic { .. })), "{magic:?}");
    let version = case("version", &|p| flip_byte(&p[1], 8));
    assert!(
        matches!(version, Err(WalError::UnsupportedVersion { .. })),
        "{version:?}"
    );
    let header = case("header", &|p| flip_byte(&p[1], 33));
    assert!(
        matches!(header, Err(WalError::Corrupt { offset: 0, .. })),
        "{header:?}"
    );
    let long = case("long", &|p| {
        let at = SEGMENT_HEADER_BYTES + 32 + 3;
        flip_byte(&p[1], at);
    });
    assert!(
        matches!(long, Err(WalError::RecordTooLong { .. })),
        "{long:?}"
    );
    // The last data segment's header zeroed while it holds batches: not a torn creation.
    let last = layout(&src).last().expect("batches").segment;
    let zeroed = case("zeroed-header", &|p| {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&p[last])
            .expect("open");
        std::os::unix::fs::FileExt::write_all_at(&file, &[0u8; 4096], 0).expect("zero");
    });
    assert!(
        matches!(zeroed, Err(WalError::Corrupt { offset: 0, .. })),
        "{zeroed:?}"
    );
}

#[test]
fn leftovers_of_segment_creation_are_removed() {
    let tmp = tempfile::tempdir_in(test_root()).expect("tempdir");
    let src = tmp.path().join("wal");
    let written = build_wal(&src, 14, 2);
    let paths = segment_paths(&src);
    let blank = paths.last().expect("blank").clone();
    std::fs::write(src.join("00000000000000ff.wal.tmp"), b"partial").expect("tmp");
    // A torn header stamp: the blank header survived but the first batch reached the disk.
    let data = std::fs::read(&paths[paths.len() - 2]).expect("read");
    let mut bytes = std::fs::read(&blank).expect("read blank");
    bytes[4096..8192].copy_from_slice(&data[4096..8192]);
    std::fs::write(&blank, bytes).expect("write");
    let (seen, torn) = reopen_blocking(&src).expect("reopen");
    assert!(seen == written);
    assert!(torn.is_none());
    assert!(!src.join("00000000000000ff.wal.tmp").exists());
}

/// The LSN of the first record in segment `segment` (by position in the directory).
fn first_lsn_in_segment(dir: &Path, segment: usize) -> Lsn {
    layout(dir)
        .iter()
        .find(|b| b.segment == segment)
        .expect("segment present")
        .first_lsn
}

#[test]
fn release_below_deletes_whole_segments_only() {
    let tmp = tempfile::tempdir_in(test_root()).expect("tempdir");
    let dir = tmp.path().join("wal");
    let written = build_wal(&dir, 15, 5);
    let third_first = first_lsn_in_segment(&dir, 2);
    let dir2 = dir.clone();
    let written2 = written.clone();
    run(move || async move {
        let (wal, _) = open(&dir2, small_options(), 1).await.expect("open");
        let names: Vec<PathBuf> = (0..3)
            .map(|seq| dir2.join(segment::segment_name(seq)))
            .collect();
        // One LSN short of segment 2: segment 1 still holds a needed record.
        assert_eq!(
            wal.release_below(third_first - 1).await.expect("release"),
            1
        );
        assert_eq!(wal.release_below(third_first).await.expect("release"), 1);
        assert_eq!(
            names.iter().map(|p| p.exists()).collect::<Vec<_>>(),
            [false, false, true]
        );
        assert_eq!(wal.first_lsn(), third_first);
        wal.close().await.expect("close");
        let (wal, seen) = open(&dir2, small_options(), 1).await.expect("reopen");
        assert_eq!(seen.first().map(|r| r.0), Some(third_first));
        assert!(seen[..] == written2[third_first as usize - 1..]);
        assert_eq!(wal.first_lsn(), third_first);
        // Releasing everything keeps the segment being written.
        wal.release_below(Lsn::MAX).await.expect("release all");
        let next = wal.next_lsn();
        wal.append(RecordType::ENTRY, b"after release")
            .await
            .expect("append");
        wal.close().await.expect("close");
        let (wal, seen) = open(&dir2, small_options(), 1).await.expect("reopen");
        assert_eq!(
            seen.last().map(|r| (r.0, r.2.clone())),
            Some((next, b"after release".to_vec()))
        );
        wal.close().await.expect("close");
    });
}

#[test]
fn a_released_segment_is_written_over_whole_as_a_later_segment() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir_in(test_root()).expect("tempdir");
    let dir = tmp.path().join("wal");
    let mut written = build_wal(&dir, 16, 5);
    let third_first = first_lsn_in_segment(&dir, 2);
    let dir2 = dir.clone();
    let kept = run(move || async move {
        let (wal, _) = open(&dir2, small_options(), 1).await.expect("open");
        assert_eq!(wal.release_below(third_first).await.expect("release"), 2);
        // The oldest is kept aside under its `.tmp` name (full of old records), the other
        // deleted.
        let spare = dir2.join(format!("{}.tmp", segment::segment_name(0)));
        let inode = std::fs::metadata(&spare).expect("spare kept").ino();
        assert!(!dir2.join(segment::segment_name(0)).exists());
        assert!(!dir2.join(segment::segment_name(1)).exists());
        // Fill the segments that exist and the one made at open: the next is made over
        // the spare.
        let mut rng = StdRng::seed_from_u64(17);
        let mut more = Vec::new();
        while spare.exists() {
            more.extend(append_sequential(&wal, &mut rng, 8, 9000).await);
        }
        more.extend(append_sequential(&wal, &mut rng, 8, 9000).await);
        let reused = segment_paths(&dir2)
            .iter()
            .any(|p| std::fs::metadata(p).expect("segment").ino() == inode);
        assert!(reused, "no segment took the spare's file");
        wal.close().await.expect("close");
        more
    });
    written.extend(kept);
    let dir3 = dir.clone();
    run(move || async move {
        // Nothing of the file's old records is replayed, and nothing is torn.
        let (seen, torn) = reopen(&dir3).await.expect("reopen");
        assert!(torn.is_none(), "{torn:?}");
        assert!(seen[..] == written[third_first as usize - 1..]);
    });
}

#[test]
fn replay_from_skips_earlier_records() {
    let tmp = tempfile::tempdir_in(test_root()).expect("tempdir");
    let dir = tmp.path().join("wal");
    let written = build_wal(&dir, 16, 4);
    run(move || async move {
        for from in [
            1,
            2,
            written.len() as u64 / 2,
            written.len() as u64,
            written.len() as u64 + 5,
        ] {
            let (wal, seen) = open(&dir, small_options(), from).await.expect("open");
            let expected: Replayed = written.iter().filter(|r| r.0 >= from).cloned().collect();
            assert!(seen == expected, "replay from {from}");
            assert_eq!(wal.next_lsn(), written.len() as u64 + 1);
            wal.close().await.expect("close");
        }
        let stop = Wal::open(&dir, small_options(), 1, |lsn, _, _| {
            if lsn == 3 {
                Err("stop here".into())
            } else {
                Ok(())
            }
        })
        .await;
        assert!(matches!(stop, Err(WalError::Replay { lsn: 3, .. })));
    });
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 48, ..Default::default() })]

    #[test]
    fn random_cuts_keep_a_prefix(fraction in 0.0f64..1.0, zero in proptest::bool::ANY, seed in 0u64..4) {
        let tmp = tempfile::tempdir_in(test_root()).expect("tempdir");
        let src = tmp.path().join("wal");
        let written = build_wal(&src, 100 + seed, 2);
        let batches = layout(&src);
        let segment = batches.last().expect("batches").segment;
        let len = std::fs::metadata(&segment_paths(&src)[segment]).expect("metadata").len();
        let at = ((len as f64 * fraction) as u64).min(len);
        check_cut(&src, tmp.path(), &written, &batches, segment, at, zero);
    }
}

#[test]
fn torn_batch_is_zeroed_so_it_cannot_reappear() {
    let tmp = tempfile::tempdir_in(test_root()).expect("tempdir");
    let src = tmp.path().join("wal");
    build_wal(&src, 17, 1);
    let batches = layout(&src);
    let b = batches.last().expect("batches").clone();
    let path = segment_paths(&src)[b.segment].clone();
    flip_byte(&path, b.records_end - 1);
    let (_, torn) = reopen_blocking(&src).expect("reopen");
    let torn = torn.expect("torn");
    assert_eq!(torn.offset, b.offset);
    assert!(torn.bytes >= b.records_end - b.offset);
    let bytes = std::fs::read(&path).expect("read");
    assert!(bytes[b.offset as usize..b.disk_end as usize]
        .iter()
        .all(|&x| x == 0));
    assert_eq!(bytes.len() as u64 % BLOCK_BYTES, 0);
}

#[test]
fn a_failed_write_fails_its_waiters_and_every_later_append() {
    let tmp = tempfile::tempdir_in(test_root()).expect("tempdir");
    let dir = tmp.path().join("wal");
    run(move || async move {
        let (wal, _) = open(&dir, small_options(), 1).await.expect("open");
        for i in 0..5u8 {
            wal.append(RecordType::ENTRY, &[i; 10])
                .await
                .expect("append");
        }
        wal.fail_next_write();
        let wal = Rc::new(wal);
        let tasks: Vec<_> = (0..10u8)
            .map(|i| {
                let wal = wal.clone();
                glommio::spawn_local(async move { wal.append(RecordType::ENTRY, &[i; 10]).await })
            })
            .collect();
        for task in tasks {
            assert!(matches!(task.await, Err(WalError::Failed { .. })));
        }
        assert_eq!(wal.durable_lsn(), 5);
        assert!(matches!(
            wal.append(RecordType::ENTRY, b"late").await,
            Err(WalError::Failed { .. })
        ));
        let wal = Rc::try_unwrap(wal).ok().expect("sole owner");
        assert!(matches!(wal.close().await, Err(WalError::Failed { .. })));
        let (seen, torn) = reopen(&dir).await.expect("reopen");
        assert_eq!(seen.len(), 5);
        assert!(torn.is_none());
    });
}

#[test]
fn enqueued_records_are_written_in_order_and_waited_for_by_lsn() {
    let tmp = tempfile::tempdir_in(test_root()).expect("tempdir");
    let dir = tmp.path().join("wal");
    run(move || async move {
        let (wal, _) = open(&dir, small_options(), 1).await.expect("open");
        // A pipelined writer: queue many small groups without waiting, as one task.
        let mut last = 0;
        let mut firsts = Vec::new();
        for i in 0..200u32 {
            let payload = i.to_le_bytes();
            let lsns = wal
                .enqueue(&[(RecordType::ENTRY, &payload[..])])
                .await
                .expect("enqueue");
            assert_eq!(lsns.start, last + 1, "LSNs are handed out in order");
            last = lsns.end - 1;
            firsts.push(lsns.start);
        }
        assert!(
            wal.durable_lsn() < last,
            "queueing does not wait for the disk"
        );
        // Waiting for an early LSN does not need the later ones.
        wal.wait_durable(firsts[0]).await.expect("durable");
        assert!(wal.durable_lsn() >= firsts[0]);
        wal.wait_durable(last).await.expect("durable");
        assert!(wal.durable_lsn() >= last);
        assert!(wal.metrics().batches < 200, "queued groups share batches");
        // A wait for what is durable already completes at once.
        wal.wait_durable(1).await.expect("durable");
        wal.fail_next_write();
        let lsns = wal
            .enqueue(&[(RecordType::ENTRY, b"lost")])
            .await
            .expect("queued before the write fails");
        assert!(matches!(
            wal.wait_durable(lsns.start).await,
            Err(WalError::Failed { .. })
        ));
        assert!(wal.close().await.is_err());
        let (seen, _) = reopen(&dir).await.expect("reopen");
        let values: Vec<u32> = seen
            .iter()
            .map(|(_, _, p)| u32::from_le_bytes(p[..4].try_into().expect("4 bytes")))
            .collect();
        assert_eq!(values, (0..200).collect::<Vec<u32>>());
    });
}

#[test]
fn a_directory_is_opened_by_one_wal_at_a_time() {
    let tmp = tempfile::tempdir_in(test_root()).expect("tempdir");
    let dir = tmp.path().join("wal");
    run(move || async move {
        let (wal, _) = open(&dir, small_options(), 1).await.expect("open");
        assert!(matches!(
            open(&dir, small_options(), 1).await,
            Err(WalError::Locked { .. })
        ));
        wal.close().await.expect("close");
        let (wal, _) = open(&dir, small_options(), 1)
            .await
            .expect("open after close");
        wal.close().await.expect("close");
    });
}

#[test]
fn a_failed_open_releases_the_directory() {
    let tmp = tempfile::tempdir_in(test_root()).expect("tempdir");
    let dir = tmp.path().join("wal");
    build_wal(&dir, 18, 2);
    flip_byte(&segment_paths(&dir)[0], SEGMENT_HEADER_BYTES + 40);
    run(move || async move {
        for _ in 0..2 {
            assert!(matches!(reopen(&dir).await, Err(WalError::Corrupt { .. })));
        }
    });
}

#[test]
fn a_relative_directory_works() {
    let tmp = tempfile::tempdir_in(test_root()).expect("tempdir");
    let cwd = std::env::current_dir().expect("cwd");
    let relative = tmp
        .path()
        .strip_prefix(&cwd)
        .expect("test root under cwd")
        .join("a/wal");
    run(move || async move {
        let (wal, _) = open(&relative, small_options(), 1).await.expect("open");
        assert!(wal.dir().is_absolute());
        wal.append(RecordType::ENTRY, b"x").await.expect("append");
        wal.close().await.expect("close");
        let (seen, _) = reopen(&relative).await.expect("reopen");
        assert_eq!(seen.len(), 1);
    });
}

/// Every file of a directory with its bytes.
fn dir_bytes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            let path = e.expect("entry").path();
            let bytes = std::fs::read(&path).expect("read");
            (path, bytes)
        })
        .collect();
    files.sort();
    files
}

#[test]
fn inspect_reports_what_open_repairs_and_changes_nothing() {
    let tmp = tempfile::tempdir_in(test_root()).expect("tempdir");
    let dir = tmp.path().join("wal");
    build_wal(&dir, 11, 3);
    let last = layout(&dir).pop().expect("batches");
    let path = segment_paths(&dir)[last.segment].clone();
    // The last batch loses its payload after its header and first record header: torn, with
    // a readable batch header (one record).
    let mut bytes = std::fs::read(&path).expect("read");
    let from = (last.offset + 48) as usize;
    bytes[from..last.data_end as usize].fill(0);
    std::fs::write(&path, bytes).expect("write");
    std::fs::write(dir.join("00000000000000ff.wal.tmp"), [1u8; 10]).expect("tmp");
    let before = dir_bytes(&dir);
    let dir2 = dir.clone();
    let (inspection, torn) = run(move || async move {
        let inspection = super::inspect(&dir2, 1, |_, _, _| Ok(()))
            .await
            .expect("inspect");
        assert!(dir_bytes(&dir2) == before, "inspect changed the directory");
        let (wal, _) = open(&dir2, small_options(), 1).await.expect("open");
        let torn = wal.torn_tail().cloned();
        wal.close().await.expect("close");
        (inspection, torn)
    });
    let found = inspection.torn.expect("inspect finds the torn tail");
    assert_eq!(
        Some(&found),
        torn.as_ref(),
        "open cut what inspect reported"
    );
    assert_eq!(
        (found.path.as_path(), found.offset),
        (path.as_path(), last.offset)
    );
    assert_eq!(found.records, Some(1));
    assert!(inspection
        .leftovers
        .iter()
        .any(|l| l.path.ends_with("00000000000000ff.wal.tmp")));
    assert!(
        !dir.join("00000000000000ff.wal.tmp").exists(),
        "open deletes it"
    );
    assert_eq!(
        inspection.segment_bytes,
        Some(small_options().segment_bytes)
    );
}

#[test]
fn each_batch_written_is_reported_with_its_records_and_bytes() {
    let tmp = tempfile::tempdir_in(test_root()).expect("tempdir");
    let dir = tmp.path().join("wal");
    run(move || async move {
        let (wal, _) = open(&dir, small_options(), 1).await.expect("open");
        let seen = Rc::new(std::cell::RefCell::new(Vec::new()));
        let sink = seen.clone();
        wal.on_batch_written(move |b| sink.borrow_mut().push(b));
        let records: Vec<(RecordType, &[u8])> =
            vec![(RecordType::ENTRY, b"one"), (RecordType::ENTRY, b"two")];
        wal.append_many(&records).await.expect("append");
        wal.append(RecordType::ENTRY, b"three")
            .await
            .expect("append");
        let seen = seen.borrow().clone();
        assert_eq!(seen.len() as u64, wal.metrics().batches);
        assert_eq!(seen.iter().map(|b| b.records).collect::<Vec<_>>(), [2, 1]);
        let bytes: u64 = seen.iter().map(|b| b.bytes).sum();
        assert_eq!(bytes, wal.metrics().bytes_written);
        assert!(seen.iter().all(|b| !b.duration.is_zero()));
        wal.close().await.expect("close");
    });
}
