//! cairn: a strongly consistent key-value store with etcd v3 semantics, built as a
//! thread-per-core engine.
//!
//! # Layout
//!
//! - [`wal`]: the write-ahead log. Fixed-size preallocated segments written with O_DIRECT
//!   through io_uring (glommio DMA files), records chained by a rolling CRC32C, group commit
//!   (one O_DSYNC write per batch). Format: `docs/wal.md`. `MemWal` is its in-memory twin
//!   with a disk's faults (lost and torn writes, flipped bits) for simulations.
//! - [`btree`]: the append-only copy-on-write B+tree file. Checksummed fixed-size pages,
//!   commit records, readers on any thread, online space reclamation, consistent snapshots
//!   as byte streams. Format: `docs/btree.md`. `MemDisk` is its in-memory twin with a
//!   disk's faults (a power failure at any step, unsynced writes lost or torn by sector,
//!   flipped bits) for simulations and crash tests.
//! - [`mvcc`]: the etcd v3 data model on top of the tree: revisions, versions, Range, Put,
//!   DeleteRange, Txn, Compact, HashKV, batched apply with a durable applied-index checkpoint;
//!   the lease table (leases, their TTLs and attached keys, in tree 1 of the same file).
//! - [`lease`]: leases as in etcd v3: the Lease service's messages, the lease operations the
//!   log carries, and the leader's lease clock, sans-IO (keepalives, expiry proposed as
//!   revokes, checkpoints of remaining TTLs, the extension on becoming leader). Rules:
//!   `docs/leases.md`.
//! - [`watch`]: streaming watch, sans-IO: the hub of a member's watchers, synced (fed the
//!   events each applied batch yields) and unsynced (fed from the revision-keyed tree in
//!   chunks of whole revisions), with etcd's guarantees; the Watch messages.
//! - [`lock`]: locks, elections and semaphores on keys, revisions and leases (etcd's
//!   v3lock and v3election): the messages, and the contenders waiting on the apply role for
//!   the deletion of the keys just before their own.
//! - [`node`]: one member's consensus and apply core, sans-IO: raft-rs's `RawNode` over the
//!   Raft log; the driver that keeps proposal and read waiters (by proposal ids unique across
//!   members and starts), WAL rounds and log compaction, with the clock and random source
//!   behind traits; the versioned log command; applying committed entries to the MVCC store.
//! - [`raftlog`]: the Raft log as raft-rs's `Storage`, written to and rebuilt from the WAL.
//! - [`server`]: `cairn serve`: the glommio shell around [`node`], thread-per-core: `net`
//!   shards (SO_REUSEPORT listeners, native protocol, serializable reads from published
//!   views), the `raft` role (the shell around the driver: WAL group commit, the peer
//!   transport, snapshots sent and received) and the `apply` role (the store, snapshot
//!   installs, the leader's lease clock, the watch hub and the lock waiters), mapped onto
//!   cores by a placement; cluster flags,
//!   member identity and the members; clean shutdown; HTTP metrics and health probes on
//!   threads of their own. Replication: `docs/cluster.md`; metrics: `docs/metrics.md`.
//! - [`backup`]: snapshot files (the tree file up to a commit, then its SHA-256, as etcd's
//!   snapshots end), streamed in chunks, incremental snapshots and their combination,
//!   `cairn snapshot save` (from a running member), `cairn snapshot status` and
//!   `cairn snapshot restore` (a new cluster's data directory
//!   from a snapshot). Format: `docs/backup.md`.
//! - [`check`]: `cairn check` (what a start would do to a data directory, found without
//!   changing it) and `cairn repair` (doing it).
//! - [`client`]: native-protocol clients with timeouts and endpoint failover: blocking, and
//!   async for glommio code (pipelined); the leader found for lease keepalives, and a
//!   keepalive loop; [`client::WatchStream`], many watchers on one connection, resumed on
//!   another member after a failure.
//! - [`cli`]: etcdctl-style arguments of `get`, `put`, `del`, `member`, `lease` and `watch`,
//!   the `txn` text format, the output formats, and `lock`, `elect` and `sem`.
//! - [`grpc`]: etcd's v3 API messages, servers and clients, generated from etcd's `.proto`
//!   files (`proto/`) at build time; the server side is `server`'s gRPC front end.
//! - [`protocol`]: the native wire protocol: frames with request ids carrying validated rkyv
//!   messages. Format: `docs/protocol.md`.
//!
//! The storage layers are sans-IO where they can be: the MVCC apply path is a deterministic
//! function of its input batch and the tree state, so a simulator can drive it.

pub mod backup;
pub mod btree;
pub mod check;
pub mod cli;
pub mod client;
pub mod grpc;
pub mod lease;
pub mod lock;
pub mod mvcc;
pub mod node;
pub mod protocol;
pub mod raftlog;
pub mod server;
pub mod wal;
pub mod watch;
