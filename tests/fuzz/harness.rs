//! What every fuzz target shares: the seed and the time budget, one reproducible random
//! stream per case, the allocation meter, the hang watchdog, and failure reports that save
//! the input.
//!
//! Environment:
//! - `CAIRN_FUZZ_SECS`: the time budget of the whole run, in seconds (default 20). The
//!   targets are tests run side by side, as many at a time as the test harness runs
//!   threads; each gets its share of the budget (`secs * threads / TARGETS`).
//! - `CAIRN_FUZZ_SEED`: the seed (default: from the clock; always printed).
//! - `CAIRN_FUZZ_CASE`: run only this case of the seed (to reproduce a failure).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::SeedableRng;

/// One input: named files (a single `input.bin` for decoders of one buffer).
pub type Input = Vec<(String, Vec<u8>)>;

/// A single allocation above this is refused while a case runs (the process then aborts
/// with the case named on stderr): no decoder here has a reason to ask for 1 GiB, and
/// refusing keeps a length-field bug from taking the machine's memory.
const ALLOCATION_REFUSED_BYTES: usize = 1 << 30;

/// The global allocator of the fuzz binary: the system allocator, metered per thread while
/// a case runs (largest single allocation, peak of live bytes).
pub struct Meter;

thread_local! {
    static METERING: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static CASE: Cell<u64> = const { Cell::new(0) };
}

fn on_alloc(size: usize) -> bool {
    METERING
        .try_with(|m| {
            if !m.get() {
                return true;
            }
            if size > ALLOCATION_REFUSED_BYTES {
                refuse(size);
                return false;
            }
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
            let _ = LIVE.try_with(|live| {
                let now = live.get() + size as isize;
                live.set(now);
                let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
            });
            true
        })
        .unwrap_or(true)
}

fn on_dealloc(size: usize) {
    let _ = METERING.try_with(|m| {
        if m.get() {
            let _ = LIVE.try_with(|live| live.set(live.get() - size as isize));
        }
    });
}

/// Says which case asked for a refused allocation, without allocating.
fn refuse(size: usize) {
    fn digits(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
        let mut at = buf.len();
        loop {
            at -= 1;
            buf[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                return &buf[at..];
            }
        }
    }
    let case = CASE.try_with(Cell::get).unwrap_or(0);
    let (mut a, mut b) = ([0u8; 20], [0u8; 20]);
    let parts: [&[u8]; 5] = [
        b"\nfuzz: over-allocation: a single allocation of ",
        digits(size as u64, &mut a),
        b" bytes in case ",
        digits(case, &mut b),
        b" (seed in target/tmp/fuzz-work/*.inflight); refused, aborting\n",
    ];
    for p in parts {
        // SAFETY: writes a valid buffer to stderr; nothing is allocated.
        unsafe { libc::write(2, p.as_ptr().cast(), p.len()) };
    }
}

// SAFETY: forwards to the system allocator; the bookkeeping touches only thread-locals
// with const initializers and no destructors, so it never allocates or re-enters.
unsafe impl GlobalAlloc for Meter {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !on_alloc(layout.size()) {
            return std::ptr::null_mut();
        }
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !on_alloc(layout.size()) {
            return std::ptr::null_mut();
        }
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        on_dealloc(layout.size());
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !on_alloc(new_size) {
            return std::ptr::null_mut();
        }
        on_dealloc(layout.size());
        System.realloc(ptr, layout, new_size)
    }
}

/// What one case allocated on the thread that ran it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allocated {
    pub largest: usize,
    pub peak: usize,
}

/// Starts metering this thread's allocations for case `case`.
pub fn meter_start(case: u64) {
    LIVE.with(|c| c.set(0));
    PEAK.with(|c| c.set(0));
    LARGEST.with(|c| c.set(0));
    CASE.with(|c| c.set(case));
    METERING.with(|m| m.set(true));
}

/// Stops metering and says what the case allocated.
pub fn meter_stop() -> Allocated {
    METERING.with(|m| m.set(false));
    Allocated {
        largest: LARGEST.with(Cell::get),
        peak: PEAK.with(Cell::get).max(0) as usize,
    }
}

/// The in-flight case of one target, watched for hangs.
struct Slot {
    name: &'static str,
    seed: u64,
    case: AtomicU64,
    /// Milliseconds since `epoch()` at which the case started; 0 when idle.
    started_ms: AtomicU64,
    limit: Duration,
    input: Mutex<Input>,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

/// Panics on any thread (a background thread of the code under test too: its panic may be
/// turned into an error by a `join`, which must not hide it).
static PANICS: AtomicU64 = AtomicU64::new(0);

fn slots() -> &'static Mutex<Vec<Arc<Slot>>> {
    static SLOTS: OnceLock<Mutex<Vec<Arc<Slot>>>> = OnceLock::new();
    SLOTS.get_or_init(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info)
        }));
        std::thread::Builder::new()
            .name("fuzz-watchdog".into())
            .spawn(watchdog)
            .expect("watchdog thread");
        Mutex::new(Vec::new())
    })
}

/// Ends the process when a case runs past its target's limit: a hang is a failure, and the
/// stuck thread cannot be stopped from outside.
fn watchdog() {
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let hung = slots()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|s| {
                let started = s.started_ms.load(Ordering::Acquire);
                started != 0 && now_ms() - started > s.limit.as_millis() as u64
            })
            .cloned();
        if let Some(slot) = hung {
            let case = slot.case.load(Ordering::Acquire);
            let input = slot.input.lock().unwrap_or_else(|e| e.into_inner());
            let saved = save(slot.name, slot.seed, case, &input);
            // Written to stderr directly: the test harness's captured output is lost on exit.
            let _ = writeln!(
                std::io::stderr(),
                "\nfuzz: HANG in target {}: case {case} ran longer than {:?}\n  input saved in {}\n  reproduce: {}",
                slot.name,
                slot.limit,
                saved.display(),
                reproduce(slot.name, slot.seed, case),
            );
            std::process::exit(1);
        }
    }
}

fn work_root() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-work")
}

fn save(name: &str, seed: u64, case: u64, input: &Input) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("fuzz-failures")
        .join(format!("{name}-{seed}-{case}"));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::create_dir_all(&dir);
    for (file, bytes) in input {
        let _ = std::fs::write(dir.join(file), bytes);
    }
    dir
}

fn reproduce(name: &str, seed: u64, case: u64) -> String {
    format!("CAIRN_FUZZ_SEED={seed} CAIRN_FUZZ_CASE={case} cargo test --test fuzz {name}")
}

/// How many fuzz targets the binary has (the budget is shared among them).
const TARGETS: u64 = 5;

/// This target's share of `CAIRN_FUZZ_SECS`.
fn target_secs() -> u64 {
    let total = env_u64("CAIRN_FUZZ_SECS").unwrap_or(20);
    let threads = env_u64("RUST_TEST_THREADS")
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u64));
    (total * threads.clamp(1, TARGETS)).div_ceil(TARGETS)
}

fn env_u64(key: &str) -> Option<u64> {
    let value = std::env::var(key).ok()?;
    match value.trim().parse() {
        Ok(v) => Some(v),
        Err(_) => panic!("{key}={value:?} is not a number"),
    }
}

/// Largest allocations a target's decoder may make for an input of `input_bytes`.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// Times the input size, plus `fixed_bytes`, for the largest single allocation.
    pub single_per_input: usize,
    /// Times the input size, plus `fixed_bytes`, for the peak of live bytes (`None`: not
    /// checked, for targets whose executor or caches keep memory across cases).
    pub peak_per_input: Option<usize>,
    pub fixed_bytes: usize,
}

/// One fuzz target's run: its seed, its deadline, its cases.
pub struct Fuzz {
    name: &'static str,
    seed: u64,
    deadline: Instant,
    only_case: Option<u64>,
    next: u64,
    slot: Arc<Slot>,
    panics_before: AtomicU64,
    /// Cases whose input is written down before they run, so that an abort (a stack
    /// overflow cannot be caught) can be traced to its case.
    mark_cases: bool,
}

impl Fuzz {
    /// `hang_limit`: a case running longer fails the test. `mark_cases`: name each case in
    /// `target/tmp/fuzz-work/<name>.inflight` before it runs (for targets slow enough that
    /// one small write per case does not matter).
    pub fn new(name: &'static str, hang_limit: Duration, mark_cases: bool) -> Fuzz {
        let seed = env_u64("CAIRN_FUZZ_SEED").unwrap_or_else(|| {
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            t.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)
        });
        let secs = target_secs();
        let slot = Arc::new(Slot {
            name,
            seed,
            case: AtomicU64::new(0),
            started_ms: AtomicU64::new(0),
            limit: hang_limit,
            input: Mutex::new(Vec::new()),
        });
        slots()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(slot.clone());
        let _ = std::fs::create_dir_all(work_root());
        let _ = std::fs::write(
            work_root().join(format!("{name}.inflight")),
            format!("seed={seed}\n"),
        );
        println!("fuzz target {name}: seed {seed}, {secs} s (CAIRN_FUZZ_SEED / CAIRN_FUZZ_SECS)");
        Fuzz {
            name,
            seed,
            deadline: Instant::now() + Duration::from_secs(secs),
            only_case: env_u64("CAIRN_FUZZ_CASE"),
            next: 0,
            slot,
            panics_before: AtomicU64::new(0),
            mark_cases,
        }
    }

    /// A scratch directory for this target's cases.
    pub fn work_dir(&self) -> PathBuf {
        let dir = work_root().join(format!("{}-{}", self.name, self.seed));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("fuzz work directory");
        dir
    }

    /// The next case and its random stream, until the budget is spent (at least 20 cases).
    pub fn next_case(&mut self) -> Option<(u64, StdRng)> {
        let case = match self.only_case {
            Some(_) if self.next > 0 => return None,
            Some(only) => only,
            None if self.next >= 20 && Instant::now() >= self.deadline => return None,
            None => self.next,
        };
        self.next += 1;
        let stream = self.seed ^ fnv(self.name).rotate_left(17);
        let rng = StdRng::seed_from_u64(splitmix(stream.wrapping_add(splitmix(case))));
        Some((case, rng))
    }

    /// Cases run so far.
    pub fn cases(&self) -> u64 {
        self.next
    }

    /// Marks `case` as running with `input` (for the watchdog) and starts metering.
    pub fn begin(&self, case: u64, input: &Input) {
        if self.mark_cases {
            let _ = std::fs::write(
                work_root().join(format!("{}.inflight", self.name)),
                format!("seed={} case={case}\n", self.seed),
            );
        }
        {
            let mut slot = self.slot.input.lock().unwrap_or_else(|e| e.into_inner());
            slot.clone_from(input);
        }
        self.slot.case.store(case, Ordering::Release);
        self.slot.started_ms.store(now_ms(), Ordering::Release);
        self.panics_before
            .store(PANICS.load(Ordering::SeqCst), Ordering::Relaxed);
        meter_start(case);
    }

    /// Ends the case begun with [`Fuzz::begin`]: fails the test (input saved) if it
    /// panicked or allocated beyond `bound`.
    pub fn end(&self, case: u64, input: &Input, outcome: std::thread::Result<()>, bound: Bound) {
        let allocated = meter_stop();
        self.slot.started_ms.store(0, Ordering::Release);
        let input_bytes: usize = input.iter().map(|(_, b)| b.len()).sum();
        let failure = match outcome {
            Err(panic) => Some(format!("PANIC: {}", panic_message(&*panic))),
            Ok(())
                if PANICS.load(Ordering::SeqCst) > self.panics_before.load(Ordering::Relaxed) =>
            {
                Some("PANIC on another thread during the case (see the message above)".into())
            }
            Ok(()) => over_allocation(allocated, input_bytes, bound),
        };
        if let Some(failure) = failure {
            let saved = save(self.name, self.seed, case, input);
            panic!(
                "fuzz target {}: {failure}\n  seed {}, case {case}, input saved in {}\n  reproduce: {}",
                self.name,
                self.seed,
                saved.display(),
                reproduce(self.name, self.seed, case)
            );
        }
    }

    /// Runs one synchronous case: `begin`, the decoder under `catch_unwind`, `end`.
    pub fn run(&self, case: u64, input: &Input, bound: Bound, decode: impl FnOnce(&Input)) {
        self.begin(case, input);
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| decode(input)));
        self.end(case, input, outcome, bound);
    }
}

fn over_allocation(a: Allocated, input_bytes: usize, bound: Bound) -> Option<String> {
    let single_max = bound.single_per_input * input_bytes + bound.fixed_bytes;
    if a.largest > single_max {
        return Some(format!(
            "OVER-ALLOCATION: one allocation of {} bytes for {input_bytes} input bytes (bound {single_max})",
            a.largest
        ));
    }
    let peak_max = bound.peak_per_input? * input_bytes + bound.fixed_bytes;
    (a.peak > peak_max).then(|| {
        format!(
            "OVER-ALLOCATION: {} live bytes at the peak for {input_bytes} input bytes (bound {peak_max})",
            a.peak
        )
    })
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_owned()
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}
