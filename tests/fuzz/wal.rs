//! WAL segment directories, through `Wal::open` (every header, batch and record decoder,
//! the torn-tail repair and the replay), with each replayed record decoded as the raft role
//! decodes it.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::time::Duration;

use cairn::raftlog::RaftLog;
use cairn::wal::{Lsn, RecordType, Wal, WalOptions};
use futures_lite::FutureExt;
use glommio::LocalExecutorBuilder;
use raft::eraftpb::ConfState;
use rand::rngs::StdRng;
use rand::Rng;

use crate::harness::{Bound, Fuzz, Input};
use crate::mutate::{mutate, Field};
use crate::wire::{query_log, raft_records, replay_one};

const BLOCK: usize = 4096;

/// Small segments, so that one directory holds several and a case stays fast.
pub fn options() -> WalOptions {
    WalOptions {
        segment_bytes: 32 << 10,
        batch_bytes_max: 8 << 10,
        ..WalOptions::default()
    }
}

/// Open reads a segment in chunks of up to 1 MiB (or one whole batch, at most the file):
/// one allocation up to twice the input plus 2 MiB for the read chunk and the writer's
/// batch buffer. Live bytes are not bounded: the executor keeps its own buffers.
const WAL_BOUND: Bound = Bound {
    single_per_input: 2,
    peak_per_input: None,
    fixed_bytes: 2 << 20,
};

fn read_image(dir: &Path) -> Input {
    let mut files: Input = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            let path = e.expect("entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .expect("file name")
                .to_owned();
            (name, std::fs::read(&path).expect("read"))
        })
        .filter(|(name, _)| name.contains(".wal"))
        .collect();
    files.sort();
    files
}

/// Directories written by the real writer: several segments with batches of one and of
/// many records, the same after older segments were released, and a single record.
async fn corpus(root: &Path) -> Vec<Input> {
    let records = raft_records();
    let mut images = Vec::new();
    for (n, variant) in ["multi", "released", "single"].iter().enumerate() {
        let dir = root.join(format!("corpus-{n}"));
        let wal = Wal::open(&dir, options(), 1, |_, _, _| Ok(()))
            .await
            .expect("open");
        let rounds = if *variant == "single" { 1 } else { 4 };
        let mut last: Lsn = 0;
        for round in 0..rounds {
            for (i, (rtype, payload)) in records.iter().enumerate() {
                let rtype = RecordType::new(*rtype).expect("nonzero");
                last = if (i + round) % 3 == 0 {
                    let big = vec![round as u8; 3000 + 500 * round];
                    let many = [
                        (rtype, &payload[..]),
                        (RecordType::new(9).expect("nonzero"), &big[..]),
                    ];
                    wal.append_many(&many).await.expect("append").end - 1
                } else {
                    wal.append(rtype, payload).await.expect("append")
                };
                if *variant == "single" {
                    break;
                }
            }
        }
        if *variant == "released" {
            wal.release_below(last / 2).await.expect("release");
        }
        wal.close().await.expect("close");
        images.push(read_image(&dir));
    }
    images
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Visits the batches and records of a segment as far as their lengths allow:
/// `batch(offset)` for each batch header, `record(offset, payload_len)` for each record.
fn walk(bytes: &[u8], mut batch: impl FnMut(usize), mut record: impl FnMut(usize, usize)) {
    let mut off = BLOCK;
    while off + 32 <= bytes.len() && &bytes[off..off + 4] == b"WBAT" {
        let count = u32_at(bytes, off + 4) as usize;
        let records_bytes = u32_at(bytes, off + 24) as usize;
        let end = (off + 32).saturating_add(records_bytes).min(bytes.len());
        let mut pos = off + 32;
        for _ in 0..count.min(1 << 16) {
            if pos + 16 > end {
                break;
            }
            let len = u32_at(bytes, pos) as usize;
            if len > end - pos - 16 {
                break;
            }
            record(pos, len);
            pos += 16 + len.next_multiple_of(8);
        }
        batch(off);
        off += (32 + records_bytes).next_multiple_of(BLOCK);
    }
}

/// Header, batch, record and raft payload fields of a segment.
fn segment_fields(bytes: &[u8]) -> Vec<Field> {
    let mut fields: Vec<Field> = [(8, 4), (12, 4), (16, 8), (24, 8), (32, 8), (40, 4), (60, 4)]
        .iter()
        .map(|&(at, w)| Field::new(at, w))
        .collect();
    let mut batches = Vec::new();
    walk(
        bytes,
        |off| batches.push(off),
        |pos, len| {
            for (at, w) in [
                (0, 4),
                (4, 1),
                (5, 1),
                (12, 4),
                (16, 8),
                (24, 8),
                (32, 1),
                (33, 4),
                (41, 4),
            ] {
                if at < 16 || at + w <= 16 + len {
                    fields.push(Field::new(pos + at, w));
                }
            }
        },
    );
    for off in batches {
        for (at, w) in [(4, 4), (8, 8), (16, 8), (24, 4), (28, 4)] {
            fields.push(Field::new(off + at, w));
        }
    }
    fields
}

/// Recomputes every checksum a mutation broke (segment header, record chain, batch
/// header), so that damage behind the checksums reaches the decoders. With `chain`, each
/// stamped segment's CRC seed is also set to where the previous segment's chain ended.
pub fn reseal(files: &mut Input, chain: bool) {
    let mut carried: Option<u32> = None;
    for (name, bytes) in files.iter_mut() {
        if !name.ends_with(".wal") || bytes.len() < 64 || &bytes[0..8] != b"CAIRNWAL" {
            carried = None;
            continue;
        }
        let stamped = u64_at(bytes, 32) != 0;
        if let (true, true, Some(seed)) = (chain, stamped, carried) {
            bytes[40..44].copy_from_slice(&seed.to_le_bytes());
        }
        let crc = crc32c::crc32c(&bytes[..60]);
        bytes[60..64].copy_from_slice(&crc.to_le_bytes());
        let mut crc = u32_at(bytes, 40);
        let (mut records, mut batches) = (Vec::new(), Vec::new());
        walk(
            bytes,
            |off| batches.push(off),
            |pos, len| records.push((pos, len)),
        );
        for (pos, len) in records {
            crc = crc32c::crc32c_append(
                crc32c::crc32c_append(crc, &bytes[pos..pos + 12]),
                &bytes[pos + 16..pos + 16 + len],
            );
            bytes[pos + 12..pos + 16].copy_from_slice(&crc.to_le_bytes());
        }
        for off in batches {
            let c = crc32c::crc32c(&bytes[off..off + 28]);
            bytes[off + 28..off + 32].copy_from_slice(&c.to_le_bytes());
        }
        carried = stamped.then_some(crc);
    }
}

fn seq_of(name: &str) -> Option<u64> {
    u64::from_str_radix(name.strip_suffix(".wal")?, 16).ok()
}

fn name_of(seq: u64) -> String {
    format!("{seq:016x}.wal")
}

/// Damage to the directory: a segment's bytes, or the set and names of its files.
fn mutate_dir(rng: &mut StdRng, files: &mut Input, donors: &[&[u8]]) {
    if files.is_empty() {
        files.push((name_of(0), Vec::new()));
    }
    let i = rng.gen_range(0..files.len());
    match rng.gen_range(0..100) {
        0..=71 => {
            let fields = segment_fields(&files[i].1);
            mutate(rng, &mut files[i].1, &fields, donors);
        }
        72..=77 => {
            files.remove(i);
        }
        78..=85 => {
            let seq = seq_of(&files[i].0).unwrap_or(0);
            let new = match rng.gen_range(0..4) {
                0 => seq.wrapping_add(1),
                1 => seq.wrapping_sub(1),
                2 => u64::MAX,
                _ => rng.gen_range(0..8),
            };
            files[i].0 = name_of(new);
        }
        86..=91 => {
            let top = files
                .iter()
                .filter_map(|(n, _)| seq_of(n))
                .max()
                .unwrap_or(0);
            let copy = files[i].1.clone();
            files.push((name_of(top.wrapping_add(1)), copy));
        }
        92..=95 => {
            let top = files
                .iter()
                .filter_map(|(n, _)| seq_of(n))
                .max()
                .unwrap_or(0);
            let len = [0, 100, BLOCK, 32 << 10][rng.gen_range(0..4)];
            files.push((name_of(top.wrapping_add(1)), vec![0; len]));
        }
        _ => {
            let copy = files[i].1.clone();
            files.push((format!("{}.tmp", files[i].0), copy));
        }
    }
    files.sort();
    files.dedup_by(|a, b| a.0 == b.0);
}

/// One case: the files written to a fresh directory, opened (records replayed into a Raft
/// log), sometimes appended to and reopened (the repaired directory must open again).
async fn open_case(dir: &Path, input: &Input, replay_from: Lsn, append: bool) {
    std::fs::create_dir_all(dir).expect("case dir");
    for (name, bytes) in input {
        std::fs::write(dir.join(name), bytes).expect("write case file");
    }
    for round in 0..if append { 2 } else { 1 } {
        let log = RaftLog::new(ConfState::default());
        let opened = Wal::open(dir, options(), replay_from, |_, rtype, payload| {
            replay_one(&log, rtype, payload);
            Ok(())
        })
        .await;
        query_log(&log);
        let Ok(wal) = opened else { return };
        if append && round == 0 {
            let _ = wal.append(RecordType::ENTRY, b"after the damage").await;
        }
        let _ = wal.close().await;
    }
}

#[test]
fn fuzz_wal() {
    LocalExecutorBuilder::default()
        .spawn(|| async {
            cairn::wal::keep_reactor_awake();
            let mut fuzz = Fuzz::new("wal", Duration::from_secs(30), true);
            let root = fuzz.work_dir();
            let images = corpus(&root).await;
            let donors: Vec<&[u8]> = images.iter().flatten().map(|(_, b)| b.as_slice()).collect();
            let case_dir = root.join("case");
            while let Some((case, mut rng)) = fuzz.next_case() {
                let mut input = images[rng.gen_range(0..images.len())].clone();
                for _ in 0..rng.gen_range(1..=2) {
                    mutate_dir(&mut rng, &mut input, &donors);
                }
                if rng.gen_bool(0.6) {
                    reseal(&mut input, rng.gen_bool(0.5));
                }
                let replay_from = if rng.gen_bool(0.8) {
                    1
                } else {
                    rng.gen_range(0..200)
                };
                let append = rng.gen_bool(0.2);
                fuzz.begin(case, &input);
                let outcome = AssertUnwindSafe(open_case(&case_dir, &input, replay_from, append))
                    .catch_unwind()
                    .await;
                fuzz.end(case, &input, outcome, WAL_BOUND);
                std::fs::remove_dir_all(&case_dir).expect("remove case dir");
            }
            println!("wal: {} cases", fuzz.cases());
            let _ = std::fs::remove_dir_all(&root);
        })
        .expect("executor")
        .join()
        .expect("executor thread");
}
