//! The process's own figures from `/proc` (Linux): CPU time, memory, descriptors, start
//! time, and the CPU time of each executor thread. Read when `/metrics` is scraped.

/// Fields of `/proc/<pid>/stat` or `/proc/<pid>/task/<tid>/stat` (proc(5)).
pub(crate) struct Stat {
    /// The thread's or process's name (`comm`).
    pub comm: String,
    /// User and system time, in clock ticks.
    pub utime_ticks: u64,
    pub stime_ticks: u64,
    /// Start time after boot, in clock ticks.
    pub start_ticks: u64,
    pub vsize_bytes: u64,
    pub rss_bytes: u64,
}

impl Stat {
    pub fn cpu_seconds(&self) -> f64 {
        (self.utime_ticks + self.stime_ticks) as f64 / clock_ticks()
    }
}

/// `stat`'s contents parsed; `None` if it does not have proc(5)'s layout. `comm` sits in
/// parentheses and may itself hold spaces and parentheses: the fields after it are read
/// from after its last `)`.
pub(crate) fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    // Fields from the third (`state`) on; proc(5) numbers them from 1.
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { rest.get(n - 3)?.parse().ok() };
    let page = page_bytes();
    Some(Stat {
        comm,
        utime_ticks: field(14)?,
        stime_ticks: field(15)?,
        start_ticks: field(22)?,
        vsize_bytes: field(23)?,
        rss_bytes: field(24)?.saturating_mul(page),
    })
}

pub(crate) fn process_stat() -> Option<Stat> {
    parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// When the process started, in seconds since the Unix epoch: the boot time (`btime` of
/// `/proc/stat`) plus the start time after boot.
pub(crate) fn start_time_seconds(stat: &Stat) -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let btime: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(btime as f64 + stat.start_ticks as f64 / clock_ticks())
}

/// Descriptors the process has open.
pub(crate) fn open_fds() -> Option<usize> {
    // The directory's own descriptor, open while it is read, is not counted.
    Some(
        std::fs::read_dir("/proc/self/fd")
            .ok()?
            .count()
            .saturating_sub(1),
    )
}

/// The soft limit on open descriptors.
pub(crate) fn max_fds() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    Some(limit.rlim_cur)
}

/// One executor's CPU time: its thread's and its helper threads'.
pub(crate) struct ExecutorThread {
    /// Its index in the placement plan.
    pub executor: usize,
    pub user_seconds: f64,
    pub system_seconds: f64,
}

/// The CPU time of each executor of this process, by index. glommio names an executor's
/// thread `<name>-<id>` (`cairn-<i>-<id>`); the helper threads it starts for blocking calls
/// inherit that name, and count with it.
pub(crate) fn executor_threads() -> Vec<ExecutorThread> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let ticks = clock_ticks();
    let mut executors: Vec<ExecutorThread> = Vec::new();
    for task in dir.flatten() {
        let Some(stat) = std::fs::read_to_string(task.path().join("stat"))
            .ok()
            .and_then(|t| parse_stat(&t))
        else {
            continue; // the thread exited meanwhile
        };
        let Some(executor) = executor_index(&stat.comm) else {
            continue;
        };
        let (user, system) = (
            stat.utime_ticks as f64 / ticks,
            stat.stime_ticks as f64 / ticks,
        );
        match executors.iter_mut().find(|e| e.executor == executor) {
            Some(e) => {
                e.user_seconds += user;
                e.system_seconds += system;
            }
            None => executors.push(ExecutorThread {
                executor,
                user_seconds: user,
                system_seconds: system,
            }),
        }
    }
    executors.sort_by_key(|e| e.executor);
    executors
}

/// `Some(i)` for a thread named `cairn-<i>` or `cairn-<i>-<id>` (an executor's), `None`
/// for any other.
fn executor_index(comm: &str) -> Option<usize> {
    let rest = comm.strip_prefix("cairn-")?;
    let (index, id) = match rest.split_once('-') {
        Some((index, id)) => (index, Some(id)),
        None => (rest, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(index) || !id.is_none_or(digits) {
        return None;
    }
    index.parse().ok()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a system setting.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn page_bytes() -> u64 {
    // SAFETY: sysconf only reads a system setting.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_last_parenthesis() {
        let text = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 4 0 555 \
                    1048576 10 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let s = parse_stat(text).expect("parses");
        assert_eq!(s.comm, "a (b) c");
        assert_eq!((s.utime_ticks, s.stime_ticks), (7, 3));
        assert_eq!(s.start_ticks, 555);
        assert_eq!(s.vsize_bytes, 1_048_576);
        assert_eq!(s.rss_bytes, 10 * page_bytes());
        assert!(parse_stat("42 (x) S 1 2").is_none());
    }

    #[test]
    fn only_threads_named_cairn_and_a_number_are_executors() {
        assert_eq!(executor_index("cairn-0"), Some(0));
        assert_eq!(executor_index("cairn-12"), Some(12));
        assert_eq!(executor_index("cairn-1-2"), Some(1));
        assert_eq!(executor_index("cairn-1-x"), None);
        assert_eq!(executor_index("cairn-1-"), None);
        assert_eq!(executor_index("cairn-free"), None);
        assert_eq!(executor_index("cairn-"), None);
        assert_eq!(executor_index("cairn-commit"), None);
        assert!(process_stat().is_some_and(|s| s.rss_bytes > 0));
        assert!(open_fds().is_some_and(|n| n >= 3));
    }
}
