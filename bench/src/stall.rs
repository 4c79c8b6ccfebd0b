//! The count-stall benchmark: does a long Range on another thread stall the writer?
//!
//! Loads N keys, then applies single puts (`Store::apply_put`, one Raft entry each,
//! overwriting random loaded keys) at a fixed rate, in rounds that take turns: no reader
//! ("quiet"); a reader thread running count_only Ranges over every key back to back through
//! the `ReadView` the writer publishes every 1000 puts ("counting"); and, as a control, that
//! thread spinning without touching the store ("spinning"), which takes a core from the
//! writer's machine as counting does but never the index lock. On a machine with few cores
//! the difference between counting and spinning is what the lock costs.
//!
//! Each put has two latencies. `apply` is how long `apply_put` took, the writer's service
//! time. `due` runs from when the put was due to when it was applied: puts come at a fixed
//! rate, as entries from Raft do, so while the writer is stalled the puts due meanwhile
//! queue up and each counts its wait (in a closed loop only the one put that waited would,
//! as no other would have been issued yet). A checkpoint restarts the schedule: its own
//! pause is not what is measured here. Before the rounds, a few counts are timed alone.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use cairn::btree::DbOptions;
use cairn::mvcc::{ApplyOutcome, PutRef, RaftPosition, RangeRequest, ReadView, Store};
use hdrhistogram::Histogram;
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::store::{key, rss_mib, BenchError, Loader};

/// Puts between two published views (the server publishes once per apply step).
const PUBLISH_EVERY_PUTS: u64 = 1000;

/// How long the idle reader sleeps, and the spinning one spins, between looks at the mode.
const READER_LOOK_MS: u64 = 1;

/// Counts timed with no writer running, before the rounds.
const ALONE_COUNTS: usize = 5;

pub struct StallConfig {
    pub keys: u64,
    pub value_size: usize,
    /// Rounds of each mode.
    pub rounds: usize,
    pub round_ms: u64,
    /// Puts per second the writer is given.
    pub put_rate: u64,
    pub path: PathBuf,
}

/// What the second thread does during a round.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Mode {
    Quiet,
    Counting,
    Spinning,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Quiet, Mode::Counting, Mode::Spinning];

    fn name(self) -> &'static str {
        match self {
            Mode::Quiet => "quiet",
            Mode::Counting => "counting",
            Mode::Spinning => "spinning",
        }
    }
}

/// One round's measurements.
struct Round {
    mode: Mode,
    puts: u64,
    secs: f64,
    apply: Latency,
    due: Latency,
    counts: u64,
    count_ms_mean: f64,
}

/// Percentiles of one latency over a round, in microseconds.
#[derive(Clone, Copy)]
struct Latency {
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
}

impl Latency {
    fn of(hist: &Histogram<u64>) -> Latency {
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            p50_us: us(hist.value_at_quantile(0.5)),
            p99_us: us(hist.value_at_quantile(0.99)),
            max_us: us(hist.max()),
        }
    }

    fn text(self) -> String {
        format!(
            "p50 {:.1} us, p99 {:.1} us, max {:.0} us",
            self.p50_us, self.p99_us, self.max_us
        )
    }
}

/// What the writer and the reader share.
struct Shared {
    view: Mutex<ReadView>,
    /// The current round's [`Mode`].
    mode: AtomicU8,
    stop: AtomicBool,
    /// Held by the reader during each count or spin, so the writer can wait for the last.
    busy: Mutex<CountTotals>,
}

#[derive(Default, Clone, Copy)]
struct CountTotals {
    counts: u64,
    busy: Duration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A count of every key.
fn count_all() -> RangeRequest {
    RangeRequest {
        key: vec![0],
        range_end: vec![0],
        count_only: true,
        ..Default::default()
    }
}

/// Does what the round's mode asks until stopped: counts every key back to back (checking
/// every count), spins, or sleeps.
fn reader(shared: &Shared, keys: u64) -> Result<(), String> {
    let look = Duration::from_millis(READER_LOOK_MS);
    while !shared.stop.load(Ordering::SeqCst) {
        let mut totals = lock(&shared.busy);
        let mode = shared.mode.load(Ordering::SeqCst);
        if mode == Mode::Spinning as u8 {
            let t = Instant::now();
            while t.elapsed() < look {
                std::hint::spin_loop();
            }
            continue;
        }
        if mode != Mode::Counting as u8 {
            drop(totals);
            std::thread::sleep(look);
            continue;
        }
        let view = lock(&shared.view).clone();
        let t = Instant::now();
        let r = view.range(&count_all()).map_err(|e| e.to_string())?;
        totals.busy += t.elapsed();
        totals.counts += 1;
        if r.count != keys as i64 {
            return Err(format!("counted {} keys, loaded {keys}", r.count));
        }
    }
    Ok(())
}

/// Times counts of every key with nothing else running; returns their milliseconds.
fn counts_alone(view: &ReadView, keys: u64) -> Result<Vec<f64>, BenchError> {
    let mut ms = Vec::with_capacity(ALONE_COUNTS);
    for _ in 0..ALONE_COUNTS {
        let t = Instant::now();
        let r = view.range(&count_all())?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        if r.count != keys as i64 {
            return Err(format!("counted {} keys, loaded {keys}", r.count).into());
        }
    }
    Ok(ms)
}

/// Sets the reader's mode; waits for its count or spin in flight and returns the totals of
/// the counts since the mode was last set.
fn set_mode(shared: &Shared, mode: Mode) -> CountTotals {
    shared.mode.store(mode as u8, Ordering::SeqCst);
    std::mem::take(&mut *lock(&shared.busy))
}

fn one_round(
    l: &mut Loader,
    shared: &Shared,
    cfg: &StallConfig,
    rng: &mut StdRng,
    mode: Mode,
) -> Result<Round, BenchError> {
    let value = vec![b'v'; cfg.value_size];
    let new_hist = || Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3);
    let (mut apply, mut due) = (new_hist()?, new_hist()?);
    let length = Duration::from_millis(cfg.round_ms);
    set_mode(shared, mode);
    let start = Instant::now();
    let mut schedule = Schedule::new(cfg.put_rate);
    let mut puts = 0u64;
    while start.elapsed() < length {
        let k = key(rng.gen_range(0..cfg.keys));
        let due_at = schedule.wait_next();
        let t = Instant::now();
        put(l, &k, &value)?;
        apply.saturating_record((t.elapsed().as_nanos() as u64).max(1));
        due.saturating_record((due_at.elapsed().as_nanos() as u64).max(1));
        puts += 1;
        if l.store.maybe_checkpoint()? {
            schedule.restart();
        }
        if puts.is_multiple_of(PUBLISH_EVERY_PUTS) {
            *lock(&shared.view) = l.store.read_view();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let totals = set_mode(shared, Mode::Quiet);
    Ok(Round {
        mode,
        puts,
        secs,
        apply: Latency::of(&apply),
        due: Latency::of(&due),
        counts: totals.counts,
        count_ms_mean: totals.busy.as_secs_f64() * 1000.0 / totals.counts.max(1) as f64,
    })
}

/// When puts are due: `rate` a second from an origin.
struct Schedule {
    origin: Instant,
    /// Puts due since the origin.
    due: u64,
    rate: u64,
}

impl Schedule {
    fn new(rate: u64) -> Schedule {
        Schedule {
            origin: Instant::now(),
            due: 0,
            rate: rate.max(1),
        }
    }

    /// Waits (spinning: sleeps are far coarser than a put) until the next put is due, if it
    /// is not yet; returns when it was due.
    fn wait_next(&mut self) -> Instant {
        let after = Duration::from_nanos(self.due.saturating_mul(1_000_000_000) / self.rate);
        let due = self.origin + after;
        self.due += 1;
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        due
    }

    /// Starts over from now, forgetting the puts a checkpoint delayed.
    fn restart(&mut self) {
        *self = Schedule::new(self.rate);
    }
}

/// Applies one put as the next Raft entry.
fn put(l: &mut Loader, key: &[u8], value: &[u8]) -> Result<(), BenchError> {
    l.index += 1;
    let at = RaftPosition {
        index: l.index,
        term: 1,
    };
    let put = PutRef {
        key,
        value,
        lease: 0,
        prev_kv: false,
        ignore_value: false,
        ignore_lease: false,
    };
    match l.store.apply_put(at, put)? {
        ApplyOutcome::Applied(mut rs) => match rs.pop() {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(e.into()),
            None => Err("a put without a response".into()),
        },
        ApplyOutcome::Skipped => Err("a fresh entry was skipped".into()),
    }
}

fn print_round(i: usize, r: &Round) {
    let mode = r.mode.name();
    eprint!(
        "round {i} {mode}: {} puts in {:.1} s ({:.0}/s); apply {}; due {}",
        r.puts,
        r.secs,
        r.puts as f64 / r.secs,
        r.apply.text(),
        r.due.text()
    );
    if r.mode == Mode::Counting {
        eprint!("; {} counts of {:.1} ms", r.counts, r.count_ms_mean);
    }
    eprintln!();
}

/// Median, smallest and largest of one measurement over a mode's rounds.
#[derive(Clone, Copy)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(rounds: &[&Round], field: impl Fn(&Round) -> f64) -> Spread {
        Spread::of_values(rounds.iter().map(|r| field(r)).collect())
    }

    fn of_values(mut v: Vec<f64>) -> Spread {
        v.sort_by(f64::total_cmp);
        Spread {
            median: v[v.len() / 2],
            min: v[0],
            max: v[v.len() - 1],
        }
    }

    fn text(self) -> String {
        format!("{:.1} ({:.1}..{:.1})", self.median, self.min, self.max)
    }

    fn json(self) -> String {
        format!(
            "{{\"median\":{:.1},\"min\":{:.1},\"max\":{:.1}}}",
            self.median, self.min, self.max
        )
    }
}

/// A mode's spreads over its rounds: of p50, p99 and max of one latency.
fn latency_spreads(mine: &[&Round], latency: impl Fn(&Round) -> Latency) -> [Spread; 3] {
    [
        Spread::of(mine, |r| latency(r).p50_us),
        Spread::of(mine, |r| latency(r).p99_us),
        Spread::of(mine, |r| latency(r).max_us),
    ]
}

/// One mode's summary: its lines on stderr, its JSON object, and its median p99s (apply, due).
fn mode_summary(rounds: &[Round], mode: Mode) -> (String, [f64; 2]) {
    let mine: Vec<&Round> = rounds.iter().filter(|r| r.mode == mode).collect();
    let apply = latency_spreads(&mine, |r| r.apply);
    let due = latency_spreads(&mine, |r| r.due);
    let rate = Spread::of(&mine, |r| r.puts as f64 / r.secs);
    let name = mode.name();
    for (what, s) in [("apply", apply), ("due", due)] {
        eprintln!(
            "  {name:8} {what:5} p50 {}  p99 {}  max {}",
            s[0].text(),
            s[1].text(),
            s[2].text()
        );
    }
    eprintln!("  {name:8} puts/s {}", rate.text());
    let json = |s: [Spread; 3]| {
        format!(
            "{{\"p50_us\":{},\"p99_us\":{},\"max_us\":{}}}",
            s[0].json(),
            s[1].json(),
            s[2].json()
        )
    };
    let object = format!(
        "{{\"apply\":{},\"due\":{},\"puts_per_sec\":{}}}",
        json(apply),
        json(due),
        rate.json()
    );
    (object, [apply[1].median, due[1].median])
}

/// Prints the summary on stderr and returns it as one JSON line.
fn summarize(cfg: &StallConfig, alone: Spread, rounds: &[Round]) -> String {
    eprintln!(
        "put latency, us: median (min..max) over {} rounds of each kind",
        cfg.rounds
    );
    let [quiet, counting, spinning] = Mode::ALL.map(|mode| mode_summary(rounds, mode));
    let ratio = |of: [f64; 2], to: [f64; 2]| [0, 1].map(|i| of[i] / to[i]);
    let to_quiet = ratio(counting.1, quiet.1);
    let to_spinning = ratio(counting.1, spinning.1);
    for (what, r) in [("quiet", to_quiet), ("spinning", to_spinning)] {
        eprintln!(
            "  p99 counting / {what}: apply {:.2}, due {:.2}",
            r[0], r[1]
        );
    }
    eprintln!("a count alone, ms: {}", alone.text());
    let counts: u64 = rounds.iter().map(|r| r.counts).sum();
    format!(
        concat!(
            "{{\"keys\":{},\"rounds\":{},\"put_rate\":{},\"count_alone_ms\":{},",
            "\"quiet\":{},\"counting\":{},\"spinning\":{},\"counts\":{},",
            "\"p99_counting_to_quiet\":{{\"apply\":{:.2},\"due\":{:.2}}},",
            "\"p99_counting_to_spinning\":{{\"apply\":{:.2},\"due\":{:.2}}}}}"
        ),
        cfg.keys,
        cfg.rounds,
        cfg.put_rate,
        alone.json(),
        quiet.0,
        counting.0,
        spinning.0,
        counts,
        to_quiet[0],
        to_quiet[1],
        to_spinning[0],
        to_spinning[1]
    )
}

/// Loads the keys, then runs the rounds in turn, quiet first; returns the result as one JSON
/// line.
pub fn run_stall_bench(cfg: StallConfig) -> Result<String, BenchError> {
    if cfg.rounds == 0 || cfg.keys == 0 {
        return Err("--rounds and --keys must be at least 1".into());
    }
    let store = Store::open(&cfg.path, DbOptions::default())?;
    let mut l = Loader { store, index: 0 };
    let value = vec![b'v'; cfg.value_size];
    let loaded = l.puts(0..cfg.keys, &value, "load")?;
    eprintln!("load: {loaded:.0} puts/s, rss {} MiB", rss_mib());
    let alone = Spread::of_values(counts_alone(&l.store.read_view(), cfg.keys)?);
    let shared = Shared {
        view: Mutex::new(l.store.read_view()),
        mode: AtomicU8::new(Mode::Quiet as u8),
        stop: AtomicBool::new(false),
        busy: Mutex::new(CountTotals::default()),
    };
    let mut rng = StdRng::seed_from_u64(42);
    let mut rounds = Vec::new();
    std::thread::scope(|s| -> Result<(), BenchError> {
        let reader = s.spawn(|| reader(&shared, cfg.keys));
        let mut result = Ok(());
        let modes = Mode::ALL.iter().cycle().take(cfg.rounds * Mode::ALL.len());
        for (i, &mode) in modes.enumerate() {
            match one_round(&mut l, &shared, &cfg, &mut rng, mode) {
                Ok(r) => {
                    print_round(i + 1, &r);
                    rounds.push(r);
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        shared.stop.store(true, Ordering::SeqCst);
        match reader.join() {
            Ok(Ok(())) => result,
            Ok(Err(e)) => Err(format!("reader: {e}").into()),
            Err(_) => Err("the reader panicked".into()),
        }
    })?;
    Ok(summarize(&cfg, alone, &rounds))
}
