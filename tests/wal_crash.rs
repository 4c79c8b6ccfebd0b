//! Black-box crash tests of the WAL through its public API only: whatever is done to the
//! files, reopening yields a prefix of what was written or a typed error, never a panic and
//! never wrong data.

use std::path::{Path, PathBuf};

use cairn::wal::{Lsn, RecordType, Wal, WalError, WalOptions};
use glommio::LocalExecutorBuilder;
use proptest::prelude::*;

type Records = Vec<(Lsn, u8, Vec<u8>)>;

fn options() -> WalOptions {
    WalOptions {
        segment_bytes: 96 << 10,
        batch_bytes_max: 32 << 10,
        ..WalOptions::default()
    }
}

fn run<T: Send + 'static, F: std::future::Future<Output = T> + 'static>(
    make: impl FnOnce() -> F + Send + 'static,
) -> T {
    LocalExecutorBuilder::default()
        .spawn(|| {
            cairn::wal::keep_reactor_awake();
            make()
        })
        .expect("executor")
        .join()
        .expect("executor thread")
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir")
}

async fn reopen(dir: &Path) -> Result<Records, WalError> {
    let mut seen = Vec::new();
    let wal = Wal::open(dir, options(), 1, |lsn, rtype, payload| {
        seen.push((lsn, rtype.get(), payload.to_vec()));
        Ok(())
    })
    .await?;
    wal.close().await?;
    Ok(seen)
}

/// Writes records of assorted sizes, some one per batch and some in multi-record batches.
fn build(dir: &Path) -> Records {
    let dir = dir.to_owned();
    run(move || async move {
        let wal = Wal::open(&dir, options(), 1, |_, _, _| Ok(()))
            .await
            .expect("open");
        let mut written = Vec::new();
        for i in 0..120usize {
            let payload: Vec<u8> = (0..(i * 131) % 5000).map(|j| (i + j) as u8).collect();
            let rtype = RecordType::new((i % 4) as u8 + 1).expect("nonzero");
            if i % 3 == 0 {
                let records = [(rtype, &payload[..]), (RecordType::HARD_STATE, &b"hs"[..])];
                let lsns = wal.append_many(&records).await.expect("append");
                written.push((lsns.start, rtype.get(), payload.clone()));
                written.push((lsns.start + 1, RecordType::HARD_STATE.get(), b"hs".to_vec()));
            } else {
                let lsn = wal.append(rtype, &payload).await.expect("append");
                written.push((lsn, rtype.get(), payload));
            }
        }
        wal.close().await.expect("close");
        written
    })
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    paths.sort();
    paths
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for path in files(from) {
        std::fs::copy(&path, to.join(path.file_name().expect("name"))).expect("copy");
    }
}

#[test]
fn zeroing_the_end_of_the_last_segment_anywhere_keeps_a_growing_prefix() {
    let tmp = scratch();
    let src = tmp.path().join("src");
    let written = build(&src);
    // After close the last file is the preallocated blank; the one before holds the tail.
    let segments = files(&src);
    assert!(segments.len() >= 3, "expected several segments");
    let last = segments.len() - 2;
    let len = std::fs::metadata(&segments[last]).expect("metadata").len();
    let work = tmp.path().join("work");
    run(move || async move {
        let mut previous = 0;
        for at in (0..=len).step_by(509).chain([len]) {
            copy(&src, &work);
            let paths = files(&work);
            std::fs::remove_file(&paths[last + 1]).expect("remove blank");
            let mut bytes = std::fs::read(&paths[last]).expect("read");
            bytes[at as usize..].fill(0);
            std::fs::write(&paths[last], bytes).expect("write");
            let seen = reopen(&work)
                .await
                .expect("a zeroed tail is never an error");
            assert!(
                seen[..] == written[..seen.len()],
                "zeroed from {at}: not a prefix"
            );
            assert!(
                seen.len() >= previous,
                "zeroed from {at}: fewer records than a shorter cut"
            );
            previous = seen.len();
            // The repaired WAL reopens to the same records.
            assert_eq!(
                reopen(&work).await.expect("reopen repaired").len(),
                seen.len()
            );
            std::fs::remove_dir_all(&work).expect("cleanup");
        }
        assert_eq!(previous, written.len(), "an untouched WAL keeps everything");
    });
}

/// Segments are preallocated before they get their names, so a short data segment was cut
/// after it was written: opening and `inspect` name the file and where it ends, and change
/// nothing. A cut blank segment after the data holds nothing and is no error.
#[test]
fn a_truncated_segment_is_an_error_where_it_ends_unless_it_is_blank() {
    let tmp = scratch();
    let src = tmp.path().join("src");
    let written = build(&src);
    let segments = files(&src);
    let last = segments.len() - 2;
    let len = std::fs::metadata(&segments[last]).expect("metadata").len();
    let work = tmp.path().join("work");
    run(move || async move {
        for at in (0..len).step_by(4093) {
            copy(&src, &work);
            let paths = files(&work);
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&paths[last])
                .expect("open");
            file.set_len(at).expect("truncate");
            drop(file);
            let inspected = cairn::wal::inspect(&work, 1, |_, _, _| Ok(())).await;
            for result in [inspected.map(|_| ()), reopen(&work).await.map(|_| ())] {
                match result {
                    Err(WalError::Corrupt { path, offset, .. }) => {
                        assert_eq!((path, offset), (paths[last].clone(), at));
                    }
                    other => panic!("cut at {at}: expected Corrupt, got {other:?}"),
                }
            }
            assert_eq!(files(&work), paths, "cut at {at}: files changed");
            let cut = std::fs::metadata(&paths[last]).expect("metadata").len();
            assert_eq!(cut, at, "cut at {at}: the file was extended");
            std::fs::remove_dir_all(&work).expect("cleanup");
        }
        copy(&src, &work);
        let paths = files(&work);
        let blank = std::fs::OpenOptions::new()
            .write(true)
            .open(&paths[last + 1])
            .expect("open");
        blank.set_len(8192).expect("truncate");
        drop(blank);
        assert!(reopen(&work).await.expect("a cut blank segment") == written);
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// A flipped byte anywhere in any segment but the tail one: a typed error, or (if the
    /// byte lies in unused space) every record, unchanged.
    #[test]
    fn a_flipped_byte_before_the_tail_is_an_error_or_harmless(segment_pick in 0usize..8, at_pick in 0.0f64..1.0, bit in 0u8..8) {
        let tmp = scratch();
        let src = tmp.path().join("src");
        let written = build(&src);
        let segments = files(&src);
        let segment = segment_pick % (segments.len() - 2);
        let len = std::fs::metadata(&segments[segment]).expect("metadata").len();
        let at = ((len as f64 * at_pick) as u64).min(len - 1);
        let mut bytes = std::fs::read(&segments[segment]).expect("read");
        bytes[at as usize] ^= 1 << bit;
        std::fs::write(&segments[segment], bytes).expect("write");
        let dir = src.clone();
        match run(move || async move { reopen(&dir).await }) {
            Ok(seen) => prop_assert!(seen == written, "flip at {} of segment {}: wrong data", at, segment),
            Err(WalError::Corrupt { path, .. })
            | Err(WalError::RecordTooLong { path, .. })
            | Err(WalError::BadMagic { path, .. })
            | Err(WalError::UnsupportedVersion { path, .. }) => {
                prop_assert!(path.starts_with(&src));
            }
            Err(other) => prop_assert!(false, "unexpected error {other:?}"),
        }
    }
}
