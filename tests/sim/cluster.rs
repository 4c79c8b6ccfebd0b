//! N members of the real consensus core ([`Driver`] over raft-rs, the MVCC [`Store`], the
//! WAL's in-memory twin [`MemWal`], the tree file's [`MemDisk`]) in one thread, on a
//! simulated clock, network and disk.
//! Everything random is drawn from one seed, so one seed replays one run.
//!
//! Leases run beside the clients: a lease agent grants short leases through random members,
//! attaches a key to each, and keeps half of them alive through whichever member's lease
//! clock leads; each member's [`LeaseClock`] runs on the simulated clock as the server's
//! apply role runs it. Checked: no lease is revoked (its keys deleted) on any member before
//! the last deadline a client was promised (its grant, or a keepalive, plus its TTL), and a
//! lease's key is deleted at one revision only; the lease tables are part of the replicas'
//! hash.

use crate::checker::{Kind, Op};
use cairn::btree::{DbOptions, MemDisk};
use cairn::lease::{ClockConfig, LeaseClock, LeaseOp, CHECKPOINT_BATCH_MAX};
use cairn::mvcc::{EventType, LeaseChange, PutRequest, RangeRequest, Request, Response, Store};
use cairn::node::{
    apply_committed, command, conf_change, Clock, Driver, DriverConfig, Node, NodeError, Random,
    SplitMix64,
};
use cairn::protocol::{encode_request, ClientRequest, HEADER_BYTES};
use cairn::raftlog::{MemberInfo, RaftLog};
use cairn::wal::{Lsn, MemWal, RecordType, WriteToken};
use raft::eraftpb::{ConfChangeType, Message, MessageType};
use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

/// A bug planted on purpose, to show the checks catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Planted {
    /// Members tell raft their records are durable as soon as they are queued, before
    /// the WAL write completes: a power failure then loses acknowledged writes.
    AckBeforeWalWrite,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub members: usize,
    pub clients: usize,
    pub keys: u64,
    /// Simulated time with clients and faults, then the cluster is healed and checked.
    pub run_ms: u64,
    pub faults: bool,
    /// Members are removed, added back (under a new id, with an empty disk) as learners,
    /// and promoted, through joint configurations, while the clients and faults go on.
    pub membership: bool,
    pub planted: Option<Planted>,
}

/// A slot's members have ids `slot + 1 + ID_STRIDE * generation`: a member added back
/// gets a new id, as raft and etcd require.
const ID_STRIDE: u64 = 100;

fn slot_of(id: u64) -> usize {
    (id.saturating_sub(1) % ID_STRIDE) as usize
}

const HEARTBEAT_MS: u64 = 10;
const ELECTION_TICKS: usize = 10;
const REQUEST_TIMEOUT_MS: u64 = 1_000;
/// After healing, the cluster must answer a read of every key within this.
const SETTLE_MS: u64 = 5_000;
/// The store checkpoints after this many applied entries (and the log is compacted).
const CHECKPOINT_ENTRIES: u64 = 40;
/// Entries kept behind a compaction: a member further behind needs a snapshot.
const RETAIN_ENTRIES: u64 = 10;
/// Where a member keeps the snapshot it received until it is installed.
const SNAPSHOT_PATH: &str = "snap";
/// The leases' TTLs, in seconds: 1 (the shortest there is) or 2 (long enough for a
/// checkpoint to record less than the TTL).
const LEASE_TTLS_S: [i64; 2] = [1, 2];
/// How often the leader checkpoints remaining TTLs.
const LEASE_CHECKPOINT_MS: u64 = 300;
/// How often the lease agent acts (grants, keepalives).
const LEASE_AGENT_MS: u64 = 50;
/// Leases granted in one run, at most.
const LEASES_MAX: usize = 12;
/// A lease's key.
fn lease_key(id: i64) -> Vec<u8> {
    format!("lease/{id}").into_bytes()
}

struct SimClock(Rc<Cell<u64>>);

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        self.0.get()
    }
}

enum Event {
    /// A snapshot and the tree file it stands for, streamed from `from`.
    DeliverSnapshot {
        to: usize,
        from: usize,
        msg: Message,
        file: Vec<u8>,
    },
    /// The leader learns how sending a snapshot went.
    SnapshotReport {
        leader: usize,
        life: u64,
        to: u64,
        ok: bool,
    },
    Deliver {
        to: usize,
        msg: Message,
    },
    Tick {
        member: usize,
    },
    WriteDone {
        member: usize,
        life: u64,
        token: WriteToken,
    },
    ClientNext {
        client: usize,
    },
    Fault,
    Restart {
        member: usize,
    },
    Heal {
        member: usize,
    },
    /// The next membership change.
    Change,
    /// The lease agent's next step.
    LeaseNext,
}

/// What a client waits for, on which member. The simulator's own membership changes wait
/// as op and client `usize::MAX`.
#[derive(Clone, Copy)]
struct Waiting {
    op: usize,
    client: usize,
    member: usize,
}

type SimDriver = Driver<Waiting, Waiting>;

struct Member {
    /// Raft id (index + 1).
    id: u64,
    /// Raised at every crash: events of an earlier life are void.
    life: u64,
    wal: MemWal,
    writing: Option<WriteToken>,
    /// Holds the member's store file.
    disk: Arc<MemDisk>,
    up: Option<Up>,
    /// Cut off from every peer until healed.
    isolated: bool,
    /// Removed from the cluster (its peers refuse it): down until added back.
    removed: bool,
    generation: u64,
}

struct Up {
    driver: SimDriver,
    store: Store,
    /// Entries applied since the last store checkpoint.
    since_checkpoint: u64,
    /// Reads whose read index this member has not applied yet (a follower learns the
    /// leader's commit index before it has applied that far).
    reads: Vec<(u64, Vec<Waiting>)>,
    /// The member's watchers, fed the events of what it applies.
    hub: crate::watch::SimHub,
    /// The leader's lease deadlines (empty unless it leads).
    leases: LeaseClock,
    /// What the clock was last told: this member leads in this term (and applied its
    /// term's entry).
    lease_term: Option<u64>,
}

/// What the lease agent knows of one lease.
struct LeaseRecord {
    /// The latest deadline a client was promised: its grant or a keepalive sent, plus
    /// the TTL (the lease's deadline on a leader is never earlier).
    promised_ms: u64,
    /// The agent keeps it alive (until a keepalive finds it gone).
    kept: bool,
    /// The revision its key was deleted at, as the first member to apply it saw.
    deleted_at: Option<i64>,
}

/// A proposal of the simulator's own (membership changes, lease operations): no client
/// waits for its result.
const OWN: Waiting = Waiting {
    op: usize::MAX,
    client: usize::MAX,
    member: usize::MAX,
};

pub struct Sim {
    opts: Options,
    rng: SplitMix64,
    now: Rc<Cell<u64>>,
    events: BTreeMap<(u64, u64), Event>,
    seq: u64,
    members: Vec<Member>,
    pub history: Vec<Op>,
    /// Ops sent and not answered, by index in `history`.
    outstanding: BTreeMap<usize, Waiting>,
    /// Ops excluded from the history (certainly not applied, or reads without an answer).
    excluded: Vec<bool>,
    next_value: u64,
    clients_running: bool,
    /// Leader seen in each term.
    leaders: BTreeMap<u64, u64>,
    /// State hash seen at each applied index: (member, hash).
    hashes: BTreeMap<u64, (u64, u32)>,
    drop_per_mille: u64,
    dup_per_mille: u64,
    /// The lease agent's leases, by id.
    leases: BTreeMap<i64, LeaseRecord>,
    pub stats: Stats,
    watchers: Vec<crate::watch::Watcher>,
    next_conn: u64,
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub puts_ok: u64,
    pub gets_ok: u64,
    pub unknown: u64,
    pub refused: u64,
    pub crashes: u64,
    pub power_failures: u64,
    pub partitions: u64,
    pub messages: u64,
    pub leaders: u64,
    pub snapshots: u64,
    pub installs: u64,
    pub crashes_mid_install: u64,
    pub installs_at_start: u64,
    pub removals: u64,
    pub joins: u64,
    pub promotions: u64,
    pub watch_events: u64,
    pub watch_resumes: u64,
    pub lease_grants: u64,
    pub lease_renewals: u64,
    pub lease_expiries: u64,
}

impl Sim {
    pub fn new(seed: u64, opts: Options) -> Sim {
        let mut rng = SplitMix64::new(seed);
        let (drop_per_mille, dup_per_mille) = if opts.faults {
            (rng.below(80), rng.below(20))
        } else {
            (0, 0)
        };
        let now = Rc::new(Cell::new(0));
        let members = (0..opts.members)
            .map(|i| Member {
                id: i as u64 + 1,
                life: 0,
                wal: MemWal::new(),
                writing: None,
                disk: Arc::new(MemDisk::new()),
                up: None,
                isolated: false,
                removed: false,
                generation: 0,
            })
            .collect();
        let mut sim = Sim {
            opts,
            rng,
            now,
            events: BTreeMap::new(),
            seq: 0,
            members,
            history: Vec::new(),
            outstanding: BTreeMap::new(),
            excluded: Vec::new(),
            next_value: 0,
            clients_running: true,
            leaders: BTreeMap::new(),
            hashes: BTreeMap::new(),
            drop_per_mille,
            dup_per_mille,
            leases: BTreeMap::new(),
            stats: Stats::default(),
            watchers: crate::watch::Watcher::all(),
            next_conn: 1,
        };
        for m in 0..sim.members.len() {
            sim.bootstrap(m);
            sim.start(m);
        }
        sim
    }

    /// Runs the whole simulation and its checks.
    pub fn run(&mut self) -> Result<(), String> {
        for client in 0..self.opts.clients {
            let at = self.rng.below(50);
            self.schedule(at, Event::ClientNext { client });
        }
        if self.opts.faults {
            self.schedule(200, Event::Fault);
        }
        if self.opts.membership {
            self.schedule(150, Event::Change);
        }
        self.schedule(LEASE_AGENT_MS, Event::LeaseNext);
        self.run_until(self.opts.run_ms)?;
        // Heal everything, let the cluster settle, and read every key.
        self.clients_running = false;
        for m in 0..self.members.len() {
            self.members[m].isolated = false;
            if self.members[m].up.is_none() && !self.members[m].removed {
                self.start(m);
            }
        }
        self.drop_per_mille = 0;
        self.dup_per_mille = 0;
        let deadline = self.now() + SETTLE_MS;
        self.run_until(self.now() + 500)?;
        for key in 0..self.opts.keys {
            self.final_read(key, deadline)?;
        }
        self.run_until(self.now() + 300)?;
        self.check_replicas()?;
        self.check_watchers()?;
        crate::checker::check(&self.final_history())
    }

    fn final_history(&self) -> Vec<Op> {
        self.history
            .iter()
            .zip(&self.excluded)
            .filter(|(_, &x)| !x)
            .map(|(o, _)| o)
            // A read never answered told nothing.
            .filter(|o| o.ret.is_some() || matches!(o.kind, Kind::Put(_)))
            .cloned()
            .collect()
    }

    fn now(&self) -> u64 {
        self.now.get()
    }

    fn schedule(&mut self, after: u64, e: Event) {
        self.seq += 1;
        self.events.insert((self.now() + after, self.seq), e);
    }

    fn run_until(&mut self, end: u64) -> Result<(), String> {
        while let Some(entry) = self.events.first_entry() {
            let (at, _) = *entry.key();
            if at > end {
                break;
            }
            let e = entry.remove();
            self.now.set(at);
            self.handle(e)?;
        }
        self.now.set(end);
        Ok(())
    }

    fn handle(&mut self, e: Event) -> Result<(), String> {
        match e {
            Event::DeliverSnapshot {
                to,
                from,
                msg,
                file,
            } => {
                let life = self.members[from].life;
                let to_id = msg.to;
                let ok = self.members[to].up.is_some() && self.members[to].id == to_id;
                if ok {
                    // Durable in snap/ before raft sees the message (as the server does).
                    self.members[to].disk.write_file(SNAPSHOT_PATH, &file);
                    if let Some(up) = self.members[to].up.as_mut() {
                        let _ = up.driver.step(msg);
                    }
                    self.pump(to)?;
                }
                self.stats.snapshots += 1;
                self.schedule(
                    1,
                    Event::SnapshotReport {
                        leader: from,
                        life,
                        to: to_id,
                        ok,
                    },
                );
            }
            Event::SnapshotReport {
                leader,
                life,
                to,
                ok,
            } => {
                if self.members[leader].life == life {
                    if let Some(up) = self.members[leader].up.as_mut() {
                        up.driver.report_snapshot(to, ok);
                        self.pump(leader)?;
                    }
                }
            }
            Event::Deliver { to, msg } => {
                let current = self.members[to].id == msg.to;
                if let Some(up) = self.members[to].up.as_mut().filter(|_| current) {
                    // A stale or unknown sender's message is refused; raft carries on.
                    let _ = up.driver.step(msg);
                    self.pump(to)?;
                }
            }
            Event::Tick { member } => {
                if let Some(up) = self.members[member].up.as_mut() {
                    up.driver.tick();
                    self.lease_tick(member);
                    self.pump(member)?;
                    self.watch_step(member)?;
                    self.schedule(HEARTBEAT_MS, Event::Tick { member });
                }
            }
            Event::WriteDone {
                member,
                life,
                token,
            } => {
                let m = &mut self.members[member];
                if m.life == life {
                    m.wal.write_done(&token);
                    m.writing = None;
                    if m.up.is_some() {
                        self.pump(member)?;
                    }
                }
            }
            Event::ClientNext { client } => {
                if self.clients_running {
                    self.client_op(client)?;
                }
            }
            Event::Fault => {
                if self.clients_running {
                    self.fault();
                }
            }
            Event::Restart { member } => {
                if self.members[member].up.is_none() && !self.members[member].removed {
                    self.start(member);
                }
            }
            Event::Heal { member } => self.members[member].isolated = false,
            Event::Change => {
                if self.clients_running {
                    self.change()?;
                }
            }
            Event::LeaseNext => {
                if self.clients_running {
                    self.lease_agent()?;
                    self.schedule(LEASE_AGENT_MS, Event::LeaseNext);
                }
            }
        }
        self.check_leaders();
        Ok(())
    }

    /// A first member's WAL: the cluster's first entries, adding every member (the same on
    /// each, as the server bootstraps).
    fn bootstrap(&mut self, m: usize) {
        let members: Vec<MemberInfo> = (1..=self.opts.members as u64).map(info).collect();
        let records = RaftLog::bootstrap(&members);
        let refs: Vec<(RecordType, &[u8])> =
            records.iter().map(|(t, p)| (*t, p.as_slice())).collect();
        self.members[m].wal.enqueue(&refs);
        self.members[m].wal.flush();
    }

    /// The next membership change, proposed to the leader: a removed slot comes back as a
    /// learner under a new id (with an empty disk), a learner is promoted, or else a voter
    /// (the leader too) is removed.
    fn change(&mut self) -> Result<(), String> {
        let next = 100 + self.rng.below(300);
        self.schedule(next, Event::Change);
        let Some(l) = (0..self.members.len()).find(|&m| {
            self.members[m]
                .up
                .as_ref()
                .is_some_and(|up| up.driver.is_leader())
        }) else {
            return Ok(());
        };
        let Some(up) = self.members[l].up.as_ref() else {
            return Ok(());
        };
        if up.driver.node().conf_change_pending() {
            return Ok(());
        }
        let ms = up.driver.node().membership();
        let removed = (0..self.members.len()).find(|&m| self.members[m].removed);
        let (kind, id, voters, context) = if let Some(slot) = removed {
            let id = slot as u64 + 1 + ID_STRIDE * (self.members[slot].generation + 1);
            (ConfChangeType::AddLearnerNode, id, false, info(id))
        } else if let Some(&learner) = ms.conf.learners.first() {
            (
                ConfChangeType::AddNode,
                learner,
                true,
                MemberInfo::default(),
            )
        } else if ms.conf.voters.len() >= 3 {
            let at = self.rng.below(ms.conf.voters.len() as u64) as usize;
            let id = ms.conf.voters[at];
            (ConfChangeType::RemoveNode, id, true, MemberInfo::default())
        } else {
            return Ok(());
        };
        let context = if context.id != 0 {
            context.to_bytes()
        } else {
            Vec::new()
        };
        let cc = conf_change(kind, id, voters, context);
        let w = Waiting {
            op: usize::MAX,
            client: usize::MAX,
            member: l,
        };
        let Some(up) = self.members[l].up.as_mut() else {
            return Ok(());
        };
        if up.driver.propose_conf_change(cc, w).is_err() {
            return Ok(());
        }
        if kind == ConfChangeType::AddLearnerNode {
            // The new member starts at once with an empty disk: it learns the cluster
            // from the leader (by entries, or a snapshot).
            let slot = slot_of(id);
            let member = &mut self.members[slot];
            member.id = id;
            member.generation += 1;
            member.removed = false;
            member.life += 1;
            member.wal = MemWal::new();
            member.writing = None;
            member.disk = Arc::new(MemDisk::new());
            member.isolated = false;
            self.stats.joins += 1;
            self.start(slot);
        } else if kind == ConfChangeType::AddNode {
            self.stats.promotions += 1;
        }
        self.pump(l)
    }

    /// The cluster removed member `m` (its peers refuse it from now on): it stops.
    fn retire(&mut self, m: usize) {
        let member = &mut self.members[m];
        if member.removed {
            return;
        }
        member.removed = true;
        member.life += 1;
        member.writing = None;
        member.up = None;
        self.stats.removals += 1;
        self.abandon_waiters(m);
    }

    /// Members that member `m`'s membership says were removed stop.
    fn retire_removed(&mut self, m: usize) {
        let Some(up) = self.members[m].up.as_ref() else {
            return;
        };
        let ms = up.driver.node().membership();
        let gone: Vec<usize> = (0..self.members.len())
            .filter(|&s| !self.members[s].removed && ms.was_removed(self.members[s].id))
            .collect();
        for s in gone {
            self.retire(s);
        }
    }

    /// Starts (or restarts) a member from its WAL and its store file.
    fn start(&mut self, m: usize) {
        let member = &mut self.members[m];
        let log = RaftLog::default();
        let mut batches = VecDeque::new();
        let mut epoch = 0;
        let replayed = member.wal.replay(|lsn, t, p| {
            if t == RecordType::METADATA {
                epoch = u64::from_le_bytes(p.try_into().expect("an 8-byte epoch"));
                return;
            }
            log.replay(t, p).expect("records the member wrote");
            if t == RecordType::ENTRY {
                let index = log.last_index_held();
                batches.push_back((index, index, lsn));
            }
        });
        replayed.expect("no bit flips are injected into a member's WAL");
        log.finish_replay().expect("a whole log");
        epoch += 1;
        member
            .wal
            .enqueue(&[(RecordType::METADATA, &epoch.to_le_bytes())]);
        member.wal.flush();
        let options = DbOptions {
            mem_disk: Some(member.disk.clone()),
            ..DbOptions::default()
        };
        let mut store = Store::open("db", options.clone()).expect("the store file");
        if store.applied().index < log.start_index() {
            // Stopped between making a snapshot the log's start and installing its file.
            let file = member
                .disk
                .file(SNAPSHOT_PATH)
                .map(|f| f.contents())
                .expect("the snapshot the log starts after");
            drop(store);
            member.disk.write_file("db", &file);
            store = Store::open("db", options).expect("the snapshot's store");
            self.stats.installs_at_start += 1;
        }
        let applied = store.applied().index;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let node = Node::open(member.id, ELECTION_TICKS, applied, log, &logger).expect("open");
        let mut driver = Driver::new(
            node,
            DriverConfig {
                member: member.id,
                epoch,
                election_tick: ELECTION_TICKS,
                request_timeout_ms: REQUEST_TIMEOUT_MS,
                max_pending: 10_000,
                retain_entries: RETAIN_ENTRIES,
            },
            Box::new(SimClock(self.now.clone())),
            Box::new(SplitMix64::new(self.rng.next_u64())),
            batches,
        );
        // What the store holds durably can be sent as a snapshot at once.
        let at = store.applied();
        driver.set_snapshot_point(at.index, at.term);
        let hub = crate::watch::hub(&store);
        let election_timeout_ms = HEARTBEAT_MS * ELECTION_TICKS as u64;
        member.up = Some(Up {
            driver,
            store,
            since_checkpoint: 0,
            reads: Vec::new(),
            hub,
            leases: LeaseClock::new(ClockConfig {
                election_timeout_ms,
                checkpoint_interval_ms: LEASE_CHECKPOINT_MS,
                revokes_per_s: 1000,
                revoke_retry_ms: 3 * election_timeout_ms,
            }),
            lease_term: None,
        });
        let first_tick = 1 + self.rng.below(HEARTBEAT_MS);
        self.schedule(first_tick, Event::Tick { member: m });
    }

    /// Power loss on one member: queued WAL records are lost, the write in flight torn,
    /// and the store file loses the sectors of its writes no sync covered.
    fn crash(&mut self, m: usize) {
        let Some(up) = self.members[m].up.take() else {
            return;
        };
        let rng = &mut self.rng;
        let member = &mut self.members[m];
        member.life += 1;
        member.writing = None;
        member.wal.crash(|| rng.below(2) == 0);
        member.disk.crash(|| rng.below(2) == 0);
        drop(up);
        self.stats.crashes += 1;
        self.abandon_waiters(m);
    }

    fn fault(&mut self) {
        let n = self.members.len();
        match self.rng.below(10) {
            0..=3 => {
                let m = self.rng.below(n as u64) as usize;
                self.crash(m);
                let after = 20 + self.rng.below(400);
                self.schedule(after, Event::Restart { member: m });
            }
            4..=7 => {
                let m = self.rng.below(n as u64) as usize;
                self.members[m].isolated = true;
                self.stats.partitions += 1;
                let after = 50 + self.rng.below(800);
                self.schedule(after, Event::Heal { member: m });
            }
            _ => {
                // Every member loses power at once.
                let live: Vec<usize> = (0..n).filter(|&m| !self.members[m].removed).collect();
                for m in live {
                    self.crash(m);
                    let after = 20 + self.rng.below(200);
                    self.schedule(after, Event::Restart { member: m });
                }
                self.stats.power_failures += 1;
            }
        }
        let next = 100 + self.rng.below(300);
        self.schedule(next, Event::Fault);
    }

    /// Runs the member's rounds until it has nothing to do without the disk or the
    /// network.
    fn pump(&mut self, m: usize) -> Result<(), String> {
        loop {
            loop {
                let Some(up) = self.members[m].up.as_mut() else {
                    return Ok(());
                };
                let round = up
                    .driver
                    .ready()
                    .map_err(|e| format!("member {}: {e}", m + 1))?;
                let Some(round) = round else { break };
                let span = round.entries_span();
                self.send(m, round.messages);
                if let Some((index, _)) = round.snapshot {
                    // The log's new start durable first, then the tree file becomes the
                    // store (a crash in between is repaired by the next start).
                    let member = &mut self.members[m];
                    let recs: Vec<(RecordType, &[u8])> = round
                        .records
                        .iter()
                        .map(|(t, p)| (*t, p.as_slice()))
                        .collect();
                    let lsns = member.wal.enqueue(&recs);
                    member.wal.flush();
                    member.writing = None;
                    if self.opts.faults && self.rng.below(4) == 0 {
                        // Power fails between the two: the next start installs the file.
                        self.crash(m);
                        self.stats.crashes_mid_install += 1;
                        let after = 20 + self.rng.below(200);
                        self.schedule(after, Event::Restart { member: m });
                        return Ok(());
                    }
                    self.install(m, index)?;
                    if let Some(up) = self.members[m].up.as_mut() {
                        up.driver
                            .queued(round.number, span, lsns, round.persisted_messages);
                        up.reads.extend(round.reads);
                    }
                    self.serve_reads(m)?;
                    continue;
                }
                if !round.committed.is_empty() {
                    self.apply(m, &round.committed, round.waiters)?;
                }
                if let Some(up) = self.members[m].up.as_mut() {
                    up.reads.extend(round.reads);
                }
                self.serve_reads(m)?;
                let member = &mut self.members[m];
                let lsns = if round.records.is_empty() {
                    let next = member.wal.next_lsn();
                    next..next
                } else {
                    let recs: Vec<(RecordType, &[u8])> = round
                        .records
                        .iter()
                        .map(|(t, p)| (*t, p.as_slice()))
                        .collect();
                    member.wal.enqueue(&recs)
                };
                if round.membership_changed && !lsns.is_empty() {
                    // Durable before anyone acts on the change (as the server waits).
                    member.wal.flush();
                    member.writing = None;
                }
                if let Some(up) = member.up.as_mut() {
                    up.driver
                        .queued(round.number, span, lsns, round.persisted_messages);
                }
            }
            self.answer_failed(m);
            self.lease_leadership(m);
            self.retire_removed(m);
            if self.members[m].up.is_none() {
                return Ok(());
            }
            self.start_write(m);
            let member = &mut self.members[m];
            let durable: Lsn = match self.opts.planted {
                Some(Planted::AckBeforeWalWrite) => member.wal.next_lsn() - 1,
                None => member.wal.durable_lsn(),
            };
            let Some(up) = member.up.as_mut() else {
                return Ok(());
            };
            if !up.driver.durable(durable) {
                return Ok(());
            }
            let msgs = up.driver.take_persisted_messages();
            self.send(m, msgs);
        }
    }

    /// Makes the received snapshot the member's store.
    fn install(&mut self, m: usize, index: u64) -> Result<(), String> {
        let member = &mut self.members[m];
        let id = member.id;
        let Some(up) = member.up.as_mut() else {
            return Ok(());
        };
        let file = member
            .disk
            .file(SNAPSHOT_PATH)
            .map(|f| f.contents())
            .ok_or_else(|| format!("member {id}: a snapshot to install but no file"))?;
        member.disk.write_file("db", &file);
        let options = DbOptions {
            mem_disk: Some(member.disk.clone()),
            ..DbOptions::default()
        };
        up.store = Store::open("db", options).map_err(|e| format!("member {id}: install: {e}"))?;
        // The events the snapshot holds were not applied here: watchers read them from
        // its tree.
        up.hub
            .resync(up.store.current_revision(), up.store.compact_revision());
        if up.store.applied().index != index {
            return Err(format!(
                "member {id}: the snapshot's store holds {} not {index}",
                up.store.applied().index
            ));
        }
        up.since_checkpoint = 0;
        self.stats.installs += 1;
        Ok(())
    }

    fn start_write(&mut self, m: usize) {
        let member = &mut self.members[m];
        if member.writing.is_some() {
            return;
        }
        if let Some(token) = member.wal.start_write() {
            member.writing = Some(token.clone());
            let life = member.life;
            let after = 1 + self.rng.below(4);
            self.schedule(
                after,
                Event::WriteDone {
                    member: m,
                    life,
                    token,
                },
            );
        }
    }

    fn send(&mut self, from: usize, msgs: Vec<Message>) {
        for mut msg in msgs {
            self.stats.messages += 1;
            let to = slot_of(msg.to);
            if to >= self.members.len() || self.members[to].id != msg.to {
                continue; // an earlier incarnation of the slot, or no one
            }
            let cut_off = self.members[from].isolated || self.members[to].isolated;
            if msg.get_msg_type() == MessageType::MsgSnapshot {
                // Streamed beside the message: the leader's tree file up to its last
                // durable checkpoint, under that checkpoint's index and term.
                let Some(up) = self.members[from].up.as_mut() else {
                    continue;
                };
                let log = up.driver.node().log().clone();
                let mut snap = up.store.snapshot();
                let describe = |msg: &mut Message, snap: &cairn::btree::Snapshot| {
                    let (index, term) = (snap.meta().applied_index, snap.meta().applied_term);
                    let to = msg.to;
                    log.describe_snapshot(msg.mut_snapshot(), index, term, to)
                };
                let mut held = describe(&mut msg, &snap);
                if !held {
                    // The checkpoint predates the follower's addition: checkpoint now (the
                    // server asks its apply role for one).
                    if up.store.checkpoint().is_err() {
                        continue;
                    }
                    up.since_checkpoint = 0;
                    let at = up.store.applied();
                    up.driver.set_snapshot_point(at.index, at.term);
                    snap = up.store.snapshot();
                    // Still without the follower (the leader has not applied its addition
                    // yet), the snapshot fails and raft asks again.
                    held = describe(&mut msg, &snap);
                }
                let mut file = vec![0u8; snap.len() as usize];
                let read = snap.read_at(0, &mut file).map(|n| n == file.len());
                if cut_off || !held || !matches!(read, Ok(true)) {
                    let life = self.members[from].life;
                    let after = 50 + self.rng.below(50);
                    self.schedule(
                        after,
                        Event::SnapshotReport {
                            leader: from,
                            life,
                            to: msg.to,
                            ok: false,
                        },
                    );
                    continue;
                }
                let delay = 5 + self.rng.below(20);
                self.schedule(
                    delay,
                    Event::DeliverSnapshot {
                        to,
                        from,
                        msg,
                        file,
                    },
                );
                continue;
            }
            if cut_off {
                continue;
            }
            if self.rng.below(1000) < self.drop_per_mille {
                continue;
            }
            let copies = if self.rng.below(1000) < self.dup_per_mille {
                2
            } else {
                1
            };
            for _ in 0..copies {
                // Jitter reorders messages between the same two members too.
                let delay = 1 + self.rng.below(5);
                self.schedule(
                    delay,
                    Event::Deliver {
                        to,
                        msg: msg.clone(),
                    },
                );
            }
        }
    }

    fn apply(
        &mut self,
        m: usize,
        committed: &[raft::eraftpb::Entry],
        waiters: Vec<(cairn::node::ProposalId, Waiting)>,
    ) -> Result<(), String> {
        let now = self.now();
        let member = &mut self.members[m];
        let id = member.id;
        let Some(up) = member.up.as_mut() else {
            return Ok(());
        };
        let applied = apply_committed(&mut up.store, committed)
            .map_err(|e| format!("member {id}: apply: {e}"))?;
        up.hub.notify(
            &applied.events,
            up.store.current_revision(),
            up.store.compact_revision(),
        );
        for c in &applied.leases {
            match *c {
                LeaseChange::Granted { id, ttl } => up.leases.granted(now, id, ttl),
                LeaseChange::Revoked { id } => up.leases.revoked(id),
            }
        }
        let revoked: Vec<i64> = applied
            .leases
            .iter()
            .filter_map(|c| match *c {
                LeaseChange::Revoked { id } => Some(id),
                LeaseChange::Granted { .. } => None,
            })
            .collect();
        let deleted: Vec<(Vec<u8>, i64)> = applied
            .events
            .iter()
            .filter(|e| e.kind == EventType::Delete && e.kv.key.starts_with(b"lease/"))
            .map(|e| (e.kv.key.clone(), e.revision()))
            .collect();
        up.since_checkpoint += committed.len() as u64;
        if up.since_checkpoint >= CHECKPOINT_ENTRIES {
            up.store
                .checkpoint()
                .map_err(|e| format!("member {id}: checkpoint: {e}"))?;
            up.since_checkpoint = 0;
            let at = up.store.applied();
            up.driver.set_snapshot_point(at.index, at.term);
            let compaction = up
                .driver
                .compact(at.index)
                .map_err(|e| format!("member {id}: compact: {e}"))?;
            if let Some(c) = compaction {
                let recs: Vec<(RecordType, &[u8])> =
                    c.records.iter().map(|(t, p)| (*t, p.as_slice())).collect();
                let lsns = member.wal.enqueue(&recs);
                up.driver.compacted(c.to, lsns.start);
            }
        }
        // The store's hash, its leases and the membership: equal at equal applied indexes.
        let hash = up
            .store
            .hash_kv(0)
            .map_err(|e| format!("member {id}: hash: {e}"))?
            .hash
            ^ conf_hash(&up.driver.node().membership())
            ^ lease_hash(&up.store);
        self.check_expiries(id, &revoked, &deleted)?;
        // The simulator's own membership changes get no store result.
        let mut waiters = waiters
            .into_iter()
            .filter(|(_, w)| w.op != usize::MAX)
            .peekable();
        let mut done = Vec::new();
        for (pid, result) in applied.results {
            let Some((_, w)) = waiters.next_if(|(wid, _)| *wid == pid) else {
                continue;
            };
            match result {
                Ok(Response::Put(_)) => done.push(w),
                other => return Err(format!("member {id}: a put answered {other:?}")),
            }
        }
        if waiters.next().is_some() {
            return Err(format!("member {id}: a waiter got no result"));
        }
        for w in done {
            self.history[w.op].ret = Some(now);
            self.stats.puts_ok += 1;
            self.answered(w);
        }
        let index = applied.last_index.unwrap_or(0);
        match self.hashes.get(&index) {
            Some(&(other, h)) if h != hash => Err(format!(
                "replicas diverge: at applied index {index} member {id} hashes {hash:08x}, \
                 member {other} {h:08x}"
            )),
            Some(_) => Ok(()),
            None => {
                self.hashes.insert(index, (id, hash));
                Ok(())
            }
        }
    }

    /// Answers the reads whose read index the member has applied.
    fn serve_reads(&mut self, m: usize) -> Result<(), String> {
        let now = self.now();
        let Some(up) = self.members[m].up.as_mut() else {
            return Ok(());
        };
        let applied = up.driver.node().applied_index();
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut up.reads)
            .into_iter()
            .partition(|&(index, _)| index <= applied);
        up.reads = waiting;
        let mut done = Vec::new();
        for w in ready.into_iter().flat_map(|(_, ws)| ws) {
            let key = self.history[w.op].key;
            let r = up
                .store
                .range(&RangeRequest {
                    key: key_bytes(key),
                    ..Default::default()
                })
                .map_err(|e| format!("member {}: read: {e}", m + 1))?;
            done.push((w, r.kvs.first().map(|kv| decode_value(&kv.value))));
        }
        for (w, value) in done {
            self.history[w.op].kind = Kind::Get(value);
            self.history[w.op].ret = Some(now);
            self.stats.gets_ok += 1;
            self.answered(w);
        }
        Ok(())
    }

    fn answer_failed(&mut self, m: usize) {
        let Some(up) = self.members[m].up.as_mut() else {
            return;
        };
        let failed = up.driver.take_failed();
        let failed_reads = up.driver.take_failed_reads();
        for (w, e) in failed {
            if w.op == usize::MAX {
                continue; // a membership change of the simulator's: it tries again later
            }
            match e {
                // Certainly not applied.
                NodeError::NotLeader | NodeError::Dropped | NodeError::Overloaded => {
                    self.excluded[w.op] = true;
                    self.stats.refused += 1;
                }
                // Outcome unknown: the put may apply later, or never.
                _ => self.stats.unknown += 1,
            }
            self.answered(w);
        }
        for (w, _) in failed_reads {
            self.excluded[w.op] = true;
            self.answered(w);
        }
    }

    /// Clients waiting on a crashed member: their puts' outcome is unknown, their reads
    /// told nothing.
    fn abandon_waiters(&mut self, m: usize) {
        let lost: Vec<Waiting> = self
            .outstanding
            .values()
            .filter(|w| w.member == m)
            .copied()
            .collect();
        for w in lost {
            self.outstanding.remove(&w.op);
            match self.history[w.op].kind {
                Kind::Put(_) => self.stats.unknown += 1,
                Kind::Get(_) => self.excluded[w.op] = true,
            }
            self.schedule_next(w.client);
        }
    }

    /// The answer to `w` came: the client goes on.
    fn answered(&mut self, w: Waiting) {
        self.outstanding.remove(&w.op);
        self.schedule_next(w.client);
    }

    fn schedule_next(&mut self, client: usize) {
        if client == usize::MAX {
            return;
        }
        let think = self.rng.below(5);
        self.schedule(think, Event::ClientNext { client });
    }

    fn client_op(&mut self, client: usize) -> Result<(), String> {
        let m = self.rng.below(self.members.len() as u64) as usize;
        let key = self.rng.below(self.opts.keys);
        let put = self.rng.below(2) == 0;
        self.issue(client, m, key, put)
    }

    /// Sends one operation to member `m`; `client == usize::MAX` is the final checker's.
    fn issue(&mut self, client: usize, m: usize, key: u64, put: bool) -> Result<(), String> {
        let op = self.history.len();
        let kind = if put {
            self.next_value += 1;
            Kind::Put(self.next_value)
        } else {
            Kind::Get(None)
        };
        self.history.push(Op {
            client,
            key,
            kind: kind.clone(),
            call: self.now(),
            ret: None,
        });
        self.excluded.push(false);
        let w = Waiting {
            op,
            client,
            member: m,
        };
        let Some(up) = self.members[m].up.as_mut() else {
            // Connection refused: nothing was sent.
            self.excluded[op] = true;
            self.schedule_next(client);
            return Ok(());
        };
        let refused = match kind {
            Kind::Put(v) => {
                let req = ClientRequest::Kv(Request::Put(PutRequest {
                    key: key_bytes(key),
                    value: v.to_le_bytes().to_vec(),
                    ..Default::default()
                }));
                let frame = encode_request(0, &req).map_err(|e| e.to_string())?;
                up.driver
                    .propose(command::client(&frame[HEADER_BYTES..]), w)
                    .err()
            }
            Kind::Get(_) => up.driver.read(w).err(),
        };
        if refused.is_some() {
            self.excluded[op] = true;
            self.stats.refused += 1;
            self.schedule_next(client);
        } else {
            self.outstanding.insert(op, w);
        }
        self.pump(m)
    }

    /// A linearizable read of `key` that must succeed before `deadline`.
    fn final_read(&mut self, key: u64, deadline: u64) -> Result<(), String> {
        let mut m = 0;
        while self.now() < deadline {
            let op = self.history.len();
            self.issue(usize::MAX, m, key, false)?;
            let give_up = self.now() + 2 * REQUEST_TIMEOUT_MS;
            while self.history[op].ret.is_none() && !self.excluded[op] && self.now() < give_up {
                let step = self.now() + HEARTBEAT_MS;
                self.run_until(step)?;
            }
            if self.history[op].ret.is_some() {
                return Ok(());
            }
            self.excluded[op] = true;
            m = (m + 1) % self.members.len();
            // Refused at once (no leader known there, or the member is down): time goes
            // on before the next member is asked.
            let step = self.now() + HEARTBEAT_MS;
            self.run_until(step)?;
        }
        Err(format!(
            "no member answered a read of key {key} within {SETTLE_MS} ms after healing \
             (leaders by term: {:?}; members: {})",
            self.leaders,
            self.describe()
        ))
    }

    /// Each member's raft state, for failure messages.
    fn describe(&self) -> String {
        let mut out = Vec::new();
        for m in &self.members {
            match &m.up {
                None => out.push(format!("{}: down", m.id)),
                Some(up) => {
                    let n = up.driver.node();
                    let c = n.membership().conf;
                    out.push(format!(
                        "{}: term {} leader {} applied {} last {:?} start {} store {} voters \
                         {:?} outgoing {:?} learners {:?} next {:?}",
                        m.id,
                        n.term(),
                        n.leader_id(),
                        n.applied_index(),
                        n.last_log(),
                        n.log().start_index(),
                        up.store.applied().index,
                        c.voters,
                        c.voters_outgoing,
                        c.learners,
                        c.learners_next
                    ));
                    if up.driver.is_leader() {
                        out.push(format!("progress {:?}", n.progress()));
                    }
                }
            }
        }
        out.join("; ")
    }

    fn check_leaders(&mut self) {
        for member in &self.members {
            let Some(up) = &member.up else { continue };
            if !up.driver.is_leader() {
                continue;
            }
            let term = up.driver.node().term();
            let prev = *self.leaders.entry(term).or_insert(member.id);
            if prev == member.id {
                continue;
            }
            // Two leaders in one term: recorded as leader 0, reported by check_replicas.
            self.leaders.insert(term, 0);
        }
        self.stats.leaders = self.leaders.len() as u64;
    }

    /// The watchers of member `m`: those attached read at random moments (asking for
    /// progress now and then), those whose member went attach here, and the hub feeds the
    /// unsynced from the store.
    fn watch_step(&mut self, m: usize) -> Result<(), String> {
        let mut watchers = std::mem::take(&mut self.watchers);
        let result = self.step_watchers(m, &mut watchers);
        self.watchers = watchers;
        result
    }

    fn step_watchers(
        &mut self,
        m: usize,
        watchers: &mut [crate::watch::Watcher],
    ) -> Result<(), String> {
        for w in watchers.iter_mut() {
            if let Some((at, life)) = w.member() {
                let gone = self.members[at].up.is_none()
                    || self.members[at].life != life
                    || self.members[at].removed;
                if gone {
                    w.detach();
                }
            }
        }
        let life = self.members[m].life;
        let removed = self.members[m].removed;
        let Some(up) = self.members[m].up.as_mut() else {
            return Ok(());
        };
        for w in watchers.iter_mut() {
            match w.member() {
                Some((at, _)) if at == m && self.rng.below(2) == 0 => {
                    let ask = self.rng.below(5) == 0;
                    w.read(&mut up.hub, ask)
                        .map_err(|e| format!("member {}: {e}", m + 1))?;
                }
                None if !removed && self.rng.below(3) == 0 => {
                    let conn = self.next_conn;
                    self.next_conn += 1;
                    w.attach(&mut up.hub, &up.store, m, life, conn, &mut self.rng);
                }
                _ => {}
            }
        }
        up.hub
            .catch_up(&up.store)
            .map_err(|e| format!("member {}: watch catch-up: {e}", m + 1))?;
        Ok(())
    }

    /// After settling: each watcher, on a member that is up, catches up to that member's
    /// revision and must have seen exactly the events of its range since it started.
    fn check_watchers(&mut self) -> Result<(), String> {
        let mut watchers = std::mem::take(&mut self.watchers);
        for w in &mut watchers {
            // The member furthest on (one added whose addition never committed has
            // nothing).
            let best = (0..self.members.len())
                .filter(|&m| !self.members[m].removed)
                .filter_map(|m| Some((self.members[m].up.as_ref()?.store.current_revision(), m)))
                .max()
                .map(|(_, m)| m)
                .ok_or("no member up for the watchers")?;
            let life = self.members[best].life;
            let m = match w.member() {
                Some(at) if at == (best, life) => best,
                _ => {
                    w.detach();
                    let m = best;
                    let conn = self.next_conn;
                    self.next_conn += 1;
                    let up = self.members[m].up.as_mut().ok_or("up")?;
                    w.attach(&mut up.hub, &up.store, m, life, conn, &mut self.rng);
                    m
                }
            };
            let up = self.members[m].up.as_mut().ok_or("up")?;
            let revision = up.store.current_revision();
            for _ in 0..100_000 {
                w.read(&mut up.hub, true)?;
                if w.reached(revision) {
                    break;
                }
                up.hub.catch_up(&up.store).map_err(|e| e.to_string())?;
            }
            if !w.reached(revision) {
                return Err(format!(
                    "a watcher at {} never reached revision {revision} of member {} ({} watchers there, {} unsynced)",
                    w.next_rev(),
                    m + 1,
                    up.hub.len(),
                    up.hub.unsynced()
                ));
            }
            // One more progress request, answered at once: everything is sent.
            w.read(&mut up.hub, true)?;
            w.read(&mut up.hub, false)?;
            let (all, _) = up
                .store
                .history(1, usize::MAX, usize::MAX, false)
                .map_err(|e| e.to_string())?;
            w.check(&all)?;
            self.stats.watch_events += w.events_seen();
            self.stats.watch_resumes += w.resumes;
        }
        self.watchers = watchers;
        Ok(())
    }

    /// After healing: one leader per term, and every member applied the same entries to
    /// the same state.
    fn check_replicas(&mut self) -> Result<(), String> {
        if let Some((term, _)) = self.leaders.iter().find(|(_, &l)| l == 0) {
            return Err(format!("two leaders in term {term}"));
        }
        let mut seen: Option<(u64, u64, u32)> = None;
        // A member added whose addition never committed is in no configuration.
        let known: Vec<u64> = self
            .members
            .iter()
            .filter_map(|m| m.up.as_ref())
            .find(|up| up.driver.is_leader())
            .map(|up| up.driver.node().membership().ids())
            .unwrap_or_default();
        for member in &self.members {
            if member.removed || !known.contains(&member.id) {
                continue;
            }
            let Some(up) = &member.up else {
                return Err(format!("member {} is down after healing", member.id));
            };
            let applied = up.driver.node().applied_index();
            let hash = up.store.hash_kv(0).map_err(|e| e.to_string())?.hash
                ^ conf_hash(&up.driver.node().membership())
                ^ lease_hash(&up.store);
            match seen {
                None => seen = Some((member.id, applied, hash)),
                Some((id, a, h)) if a == applied && h != hash => {
                    return Err(format!(
                        "members {id} and {} both applied {a} but hash {h:08x} and {hash:08x}",
                        member.id
                    ))
                }
                Some((id, a, _)) if a != applied => {
                    return Err(format!(
                        "members {id} and {} applied {a} and {applied} after settling",
                        member.id
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

impl Sim {
    /// Tells member `m`'s lease clock when it starts leading (and has applied its term's
    /// entry: every earlier entry is applied) or stops, as the server's raft role does.
    fn lease_leadership(&mut self, m: usize) {
        let now = self.now();
        let Some(up) = self.members[m].up.as_mut() else {
            return;
        };
        let node = up.driver.node();
        let term = node.term();
        let still = up.lease_term == Some(term) && node.is_leader();
        let leading = still || node.leads_applied_term();
        let lease_term = leading.then_some(term);
        if lease_term != up.lease_term {
            up.leases.demote();
            if leading {
                up.leases.promote(now, up.store.leases().times());
            }
            up.lease_term = lease_term;
        }
    }

    /// A heartbeat on member `m`: as leader, it proposes the revokes of expired leases
    /// and checkpoints of remaining TTLs (while the clients run: the healed cluster must
    /// come to rest for the replicas to be compared).
    fn lease_tick(&mut self, m: usize) {
        if !self.clients_running {
            return;
        }
        let now = self.now();
        let Some(up) = self.members[m].up.as_mut() else {
            return;
        };
        if up.lease_term.is_none() || !up.driver.is_leader() {
            return;
        }
        let mut ops: Vec<LeaseOp> = up
            .leases
            .expired(now)
            .into_iter()
            .map(|id| LeaseOp::Revoke { id })
            .collect();
        for chunk in up.leases.checkpoint(now).chunks(CHECKPOINT_BATCH_MAX) {
            ops.push(LeaseOp::Checkpoint(chunk.to_vec()));
        }
        for op in ops {
            // Refused (no longer leading): the clock hands the revoke out again later.
            let _ = up.driver.propose(command::lease(&op), OWN);
        }
    }

    /// The lease agent (a client: it reaches members cut off from their peers too): now and then a new lease (TTL 1 or 2 s) with a key attached, through a
    /// random member; a keepalive of each lease it keeps, through the member that leads.
    fn lease_agent(&mut self) -> Result<(), String> {
        let now = self.now();
        let n = self.members.len() as u64;
        if self.leases.len() < LEASES_MAX && self.rng.below(2) == 0 {
            let m = self.rng.below(n) as usize;
            let kept = self.rng.below(2) == 0;
            let ttl = LEASE_TTLS_S[self.rng.below(2) as usize];
            if let Some(up) = self.members[m].up.as_mut() {
                let id = 1000 + self.leases.len() as i64;
                let grant = LeaseOp::Grant { id, ttl };
                let put = ClientRequest::Kv(Request::Put(PutRequest {
                    key: lease_key(id),
                    value: b"v".to_vec(),
                    lease: id,
                    ..Default::default()
                }));
                let frame = encode_request(0, &put).map_err(|e| e.to_string())?;
                if up.driver.propose(command::lease(&grant), OWN).is_ok() {
                    // The put fails ("lease not found") if it applies before the grant.
                    let _ = up
                        .driver
                        .propose(command::client(&frame[HEADER_BYTES..]), OWN);
                }
                // Whether or not the grant makes it, no deadline comes before this.
                self.leases.insert(
                    id,
                    LeaseRecord {
                        promised_ms: now + ttl as u64 * 1000,
                        kept,
                        deleted_at: None,
                    },
                );
                self.stats.lease_grants += 1;
                self.pump(m)?;
            }
        }
        let leader = (0..self.members.len()).find(|&m| {
            self.members[m]
                .up
                .as_ref()
                .is_some_and(|up| up.lease_term.is_some())
        });
        let Some(m) = leader else {
            return Ok(());
        };
        let kept: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.kept)
            .map(|(&id, _)| id)
            .collect();
        for id in kept {
            self.keep_alive(m, id, now);
        }
        self.pump(m)
    }

    /// A keepalive of lease `id` answered by member `m`'s clock, as the server's apply
    /// role answers one; a renewal counts as a promise only when answered at once (one
    /// that must first clear a checkpointed remaining TTL through the log is not counted).
    fn keep_alive(&mut self, m: usize, id: i64, now: u64) {
        let Some(up) = self.members[m].up.as_mut() else {
            return;
        };
        let Some(lease) = self.leases.get_mut(&id) else {
            return;
        };
        let Some(held) = up.store.leases().get(id) else {
            // Not granted here yet, or gone: kept alive no more once gone.
            lease.kept = lease.deleted_at.is_none();
            return;
        };
        let checkpointed = held.remaining_ttl > 0;
        match up.leases.renew(now, id) {
            Ok(r) if !checkpointed && !r.clear => {
                lease.promised_ms = lease.promised_ms.max(now + r.ttl as u64 * 1000);
                self.stats.lease_renewals += 1;
            }
            Ok(_) => {
                let _ = up
                    .driver
                    .propose(command::lease(&LeaseOp::Checkpoint(vec![(id, 0)])), OWN);
            }
            // Expired (no leader long enough): its revoke is on its way.
            Err(_) => lease.kept = false,
        }
    }

    /// Member `id` applied the revokes of `revoked` and deleted `deleted` (lease keys, at
    /// a revision each): none may come before a deadline a client was promised, and a
    /// lease's key goes at one revision.
    fn check_expiries(
        &mut self,
        id: u64,
        revoked: &[i64],
        deleted: &[(Vec<u8>, i64)],
    ) -> Result<(), String> {
        let now = self.now();
        for lease in revoked {
            let Some(l) = self.leases.get(lease) else {
                return Err(format!("member {id} revoked lease {lease}, never granted"));
            };
            if now < l.promised_ms {
                return Err(format!(
                    "member {id} revoked lease {lease} at {now} ms, before its deadline {} ms",
                    l.promised_ms
                ));
            }
            self.stats.lease_expiries += 1;
        }
        for (key, rev) in deleted {
            let lease: Option<i64> = std::str::from_utf8(&key[b"lease/".len()..])
                .ok()
                .and_then(|s| s.parse().ok());
            let Some(l) = lease.and_then(|lease| self.leases.get_mut(&lease)) else {
                continue;
            };
            match l.deleted_at {
                None => l.deleted_at = Some(*rev),
                Some(first) if first != *rev => {
                    return Err(format!(
                        "member {id} deleted {} at revision {rev}, already deleted at {first}",
                        String::from_utf8_lossy(key)
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

fn key_bytes(key: u64) -> Vec<u8> {
    format!("k{key}").into_bytes()
}

fn decode_value(v: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&v[..8]);
    u64::from_le_bytes(b)
}

/// A member's attributes in the simulator.
fn info(id: u64) -> MemberInfo {
    MemberInfo {
        id,
        name: format!("m{id}"),
        peer_urls: vec![format!("http://sim-{id}:2380")],
        client_urls: Vec::new(),
    }
}

/// A checksum of the lease table: ids, TTLs, checkpointed remaining TTLs, attached keys.
fn lease_hash(store: &Store) -> u32 {
    let mut bytes = Vec::new();
    for t in store.leases().times() {
        bytes.extend_from_slice(&t.id.to_le_bytes());
        bytes.extend_from_slice(&t.ttl.to_le_bytes());
        bytes.extend_from_slice(&t.remaining_ttl.to_le_bytes());
        for k in store
            .leases()
            .get(t.id)
            .map(|l| &l.keys)
            .into_iter()
            .flatten()
        {
            bytes.extend_from_slice(k);
        }
    }
    crc32c::crc32c(&bytes)
}

/// A checksum of the membership's configuration and member table.
fn conf_hash(ms: &cairn::raftlog::Membership) -> u32 {
    let mut bytes = cairn::raftlog::encode_marker(0, 0, ms);
    bytes.extend_from_slice(&ms.members_bytes());
    crc32c::crc32c(&bytes)
}
