//! The WAL on a file system that fills up: creating the next segment fails for space, which
//! the WAL reports ([`Wal::no_space`]) and outlasts: appends go on in the current segment,
//! wait (never fail) once it is full, and continue in a new segment once space is freed.
//!
//! The file system is a small tmpfs the test mounts (it needs root); where mounting is not
//! allowed the test says so and passes without running.

mod common;

use common::Tmpfs;

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use cairn::wal::{RecordType, Wal, WalOptions};

const SEGMENT_BYTES: u64 = 256 << 10;

fn options() -> WalOptions {
    WalOptions {
        segment_bytes: SEGMENT_BYTES,
        batch_bytes_max: 32 << 10,
        ..WalOptions::default()
    }
}

/// Appends until one waits (for a segment the file system has no room for: 300 ms without
/// completing); returns how many completed and the one waiting.
async fn append_until_one_waits<'a>(
    wal: &'a Wal,
    payload: &'a [u8],
) -> (
    u64,
    Pin<Box<dyn Future<Output = cairn::wal::Result<u64>> + 'a>>,
) {
    let mut completed = 0;
    loop {
        let mut append: Pin<Box<dyn Future<Output = _>>> =
            Box::pin(wal.append(RecordType::ENTRY, payload));
        let timeout = glommio::timer::sleep(Duration::from_millis(300));
        let done = futures_lite::future::or(async { Some((&mut append).await) }, async {
            timeout.await;
            None
        })
        .await;
        match done {
            Some(r) => {
                r.expect("an append with room");
                completed += 1;
                assert!(completed < 200, "the file system never filled");
            }
            None => return (completed, append),
        }
    }
}

#[test]
fn a_full_file_system_delays_the_next_segment_and_loses_nothing() {
    let Some(fs) = Tmpfs::mount("1m") else {
        return;
    };
    let ballast = fs.path.join("ballast");
    // 1 MiB holds the ballast and two segments, not three.
    std::fs::write(&ballast, vec![1u8; 400 << 10]).expect("ballast");
    let dir = fs.path.join("wal");
    let payload = vec![7u8; 1000];
    let total = glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            cairn::wal::keep_reactor_awake();
            let wal = Wal::open(&dir, options(), 1, |_, _, _| Ok(()))
                .await
                .expect("open");
            let mut appended = 0u64;
            // Segment 0, then into segment 1: creating segment 2 fails for space.
            let deadline = Instant::now() + Duration::from_secs(20);
            while wal.no_space().is_none() {
                wal.append(RecordType::ENTRY, &payload)
                    .await
                    .expect("append");
                appended += 1;
                assert!(Instant::now() < deadline, "the file system never filled");
                assert!(appended < 200, "segment 2 was created without space for it");
            }
            // Appends go on in segment 1 until it is full, then wait for space.
            let (more, waiting) = append_until_one_waits(&wal, &payload).await;
            appended += more;
            assert!(wal.no_space().is_some());
            // Space comes back: the waiting append completes in a new segment.
            std::fs::remove_file(&ballast).expect("remove ballast");
            waiting.await.expect("the waiting append");
            appended += 1;
            // Releasing old segments gives the next one room (as a spare to write over).
            wal.release_below(wal.durable_lsn() + 1)
                .await
                .expect("release");
            for _ in 0..100 {
                wal.append(RecordType::ENTRY, &payload)
                    .await
                    .expect("append");
                appended += 1;
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while wal.no_space().is_some() {
                assert!(Instant::now() < deadline, "still reports no space");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
            let first = wal.first_lsn();
            wal.close().await.expect("close");
            let mut replayed = 0u64;
            let wal = Wal::open(&dir, options(), 1, |_, t, p| {
                assert_eq!((t, p.len()), (RecordType::ENTRY, 1000));
                replayed += 1;
                Ok(())
            })
            .await
            .expect("reopen");
            wal.close().await.expect("close");
            assert_eq!(replayed, appended - (first - 1));
            appended
        })
        .expect("executor")
        .join()
        .expect("executor thread");
    assert!(total > 130, "only {total} records: never crossed a segment");
    drop(fs);
}

#[test]
fn a_stopped_creation_fails_the_appends_waiting_for_space_instead_of_hanging() {
    let Some(fs) = Tmpfs::mount("1m") else {
        return;
    };
    std::fs::write(fs.path.join("ballast"), vec![1u8; 400 << 10]).expect("ballast");
    let dir = fs.path.join("wal");
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            cairn::wal::keep_reactor_awake();
            let wal = Wal::open(&dir, options(), 1, |_, _, _| Ok(()))
                .await
                .expect("open");
            let payload = vec![7u8; 1000];
            // Fill segment 1 until an append waits for segment 2, which has no room.
            let (durable, waiting) = append_until_one_waits(&wal, &payload).await;
            wal.creation_stopper().stop();
            let failed = waiting.await;
            assert!(failed.is_err(), "the waiting append was acknowledged");
            // Closing reports the failure and releases everything; what was durable stays.
            assert!(wal.close().await.is_err());
            let mut replayed = 0u64;
            let wal = Wal::open(&dir, options(), 1, |_, _, _| {
                replayed += 1;
                Ok(())
            })
            .await
            .expect("reopen");
            wal.close().await.expect("close");
            assert_eq!(replayed, durable);
        })
        .expect("executor")
        .join()
        .expect("executor thread");
    drop(fs);
}
