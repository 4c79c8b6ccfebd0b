//! The deterministic cluster simulator: members of the real consensus core in one thread,
//! with a simulated network (drops, delays that reorder, duplicates, partitions), clock and
//! disk (the WAL's in-memory twin: a power failure loses queued records and tears the
//! write in flight). One seed reproduces one run.
//!
//! Every run checks that the client history is linearizable (`checker.rs`; a put
//! acknowledged and then not read back is a violation), that replicas at equal applied
//! indexes hash equal (lease tables included), that no term has two leaders, that the healed
//! cluster answers, that no lease expires before a deadline a client was promised, and that
//! watchers (resuming on other members when theirs fails) saw exactly the events of their
//! ranges in order and progress responses only after what they cover (`watch.rs`).
//!
//! ```sh
//! cargo test --release --test sim                        # CI: a batch of seeds
//! CAIRN_SIM_SEEDS=5000 cargo test --release --test sim   # a long run
//! CAIRN_SIM_SEED=<seed> cargo test --release --test sim seeds   # replay one seed
//! ```

mod checker;
mod cluster;
mod watch;

use cluster::{Options, Planted, Sim};

fn options(seed: u64) -> Options {
    Options {
        members: if seed.is_multiple_of(3) { 5 } else { 3 },
        clients: 4,
        keys: 3,
        run_ms: 2_000,
        faults: true,
        membership: seed.is_multiple_of(2),
        planted: std::env::var("CAIRN_SIM_PLANTED")
            .ok()
            .filter(|v| v == PLANTED_NAME)
            .map(|_| Planted::AckBeforeWalWrite),
    }
}

/// `CAIRN_SIM_PLANTED=ack-before-wal-write` plants the bug in every run.
const PLANTED_NAME: &str = "ack-before-wal-write";

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Runs one seed; on failure (a check, or a panic inside a member), the message says how
/// to replay it.
fn run_seed(seed: u64, opts: Options) -> Result<cluster::Stats, String> {
    let planted = opts.planted.is_some();
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut sim = Sim::new(seed, opts);
        sim.run().map(|()| sim.stats.clone())
    }));
    let failure = match run {
        Ok(Ok(stats)) => return Ok(stats),
        Ok(Err(e)) => e,
        Err(panic) => format!(
            "a member panicked: {}",
            panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)")
        ),
    };
    let planted = if planted {
        format!("CAIRN_SIM_PLANTED={PLANTED_NAME} ")
    } else {
        String::new()
    };
    Err(format!(
        "seed {seed} failed: {failure}\nreplay: {planted}CAIRN_SIM_SEED={seed} cargo test --release --test sim seeds"
    ))
}

#[test]
fn seeds() {
    let (first, count) = match env_u64("CAIRN_SIM_SEED") {
        Some(seed) => (seed, 1),
        None => (
            env_u64("CAIRN_SIM_FIRST").unwrap_or(1),
            env_u64("CAIRN_SIM_SEEDS").unwrap_or(500),
        ),
    };
    let mut total = cluster::Stats::default();
    for seed in first..first + count {
        match run_seed(seed, options(seed)) {
            Ok(s) => {
                total.puts_ok += s.puts_ok;
                total.gets_ok += s.gets_ok;
                total.unknown += s.unknown;
                total.crashes += s.crashes;
                total.power_failures += s.power_failures;
                total.partitions += s.partitions;
                total.leaders += s.leaders;
                total.messages += s.messages;
                total.refused += s.refused;
                total.snapshots += s.snapshots;
                total.installs += s.installs;
                total.crashes_mid_install += s.crashes_mid_install;
                total.installs_at_start += s.installs_at_start;
                total.removals += s.removals;
                total.joins += s.joins;
                total.promotions += s.promotions;
                total.watch_events += s.watch_events;
                total.watch_resumes += s.watch_resumes;
                total.lease_grants += s.lease_grants;
                total.lease_renewals += s.lease_renewals;
                total.lease_expiries += s.lease_expiries;
            }
            Err(e) => panic!("{e}"),
        }
    }
    println!("{count} seeds from {first}: {total:?}");
    assert!(total.puts_ok > count * 10, "the runs did work: {total:?}");
    if count >= 100 {
        assert!(
            total.installs > 0,
            "members caught up by snapshot: {total:?}"
        );
        assert!(
            total.removals > 0 && total.joins > 0 && total.promotions > 0,
            "the membership changed: {total:?}"
        );
        assert!(
            total.lease_renewals > 0 && total.lease_expiries > 0,
            "leases were kept alive and expired: {total:?}"
        );
        assert!(
            total.watch_events > 0 && total.watch_resumes > 0,
            "watchers saw events and resumed on other members: {total:?}"
        );
    }
}

/// The planted bug (members tell raft their records are durable before the WAL write
/// completes) loses acknowledged writes in a power failure. Within a batch of seeds the
/// size of CI's, the checks must catch it: a lost write read back as missing (the
/// linearizability checker), or raft finding its own log shorter than what it had
/// acknowledged (a member panics).
#[test]
fn the_planted_bug_is_found() {
    let (mut by_checker, mut by_raft) = (Vec::new(), Vec::new());
    for seed in 1..=500 {
        let mut opts = options(seed);
        opts.planted = Some(Planted::AckBeforeWalWrite);
        if let Err(e) = run_seed(seed, opts) {
            if e.contains("panicked") {
                by_raft.push(seed);
            } else {
                by_checker.push((seed, e));
            }
        }
    }
    println!(
        "planted bug: {} seeds caught by the checks, {} by raft's own assertions",
        by_checker.len(),
        by_raft.len()
    );
    for (_, e) in &by_checker {
        println!("caught: {}", e.lines().next().unwrap_or_default());
    }
    assert!(
        !by_checker.is_empty(),
        "the checks never caught acknowledging before the WAL write completes"
    );
}

/// One seed, run twice, gives the same history operation for operation.
#[test]
fn one_seed_replays_one_run() {
    for seed in [3, 4] {
        let runs: Vec<String> = (0..2)
            .map(|_| {
                let mut sim = Sim::new(seed, options(seed));
                let result = sim.run();
                format!("{result:?} {:?} {:?}", sim.stats, sim.history)
            })
            .collect();
        assert_eq!(runs[0], runs[1], "seed {seed} ran differently twice");
    }
}
