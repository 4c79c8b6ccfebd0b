//! A fuzz harness, on stable Rust, for every decoder of bytes from a client, a peer or a
//! disk. Each target starts from valid encodings made by the real encoders and writers,
//! mutates them (see `mutate.rs`), and hands them to the decoder; a panic, a case that
//! runs past its time limit, or an allocation far beyond the input's size fails the test
//! with the seed and the case, and the input is saved under `target/tmp/fuzz-failures/`.
//!
//! ```sh
//! cargo test --test fuzz                                   # CI: about 20 s in all
//! CAIRN_FUZZ_SECS=3600 cargo test --release --test fuzz    # an hour
//! CAIRN_FUZZ_SEED=<seed> CAIRN_FUZZ_CASE=<case> cargo test --test fuzz <target>
//! ```
//!
//! Targets: `frames` (frame headers and archived requests, responses and errors),
//! `raft_records` (WAL record payloads of the Raft log and the member identity), `wal`
//! (segment directories through `Wal::open`), `tree` (database files through `Db::open`,
//! reads, writes and commits) and `store` (MVCC store files through `Store::open`).

mod harness;
mod mutate;
mod regressions;
mod tree;
mod wal;
mod wire;

#[global_allocator]
static METER: harness::Meter = harness::Meter;
