//! What the driver takes from the world besides messages and storage: the time and random
//! numbers. The server gives it the monotonic clock and a source seeded at start; the
//! simulator gives it a simulated clock and a source seeded from the run's seed, so that
//! one seed replays one run.

use std::time::Instant;

/// Milliseconds on a clock that never goes back.
pub trait Clock {
    fn now_ms(&self) -> u64;
}

/// The process's monotonic clock, from when this value was made.
pub struct MonotonicClock {
    start: Instant,
}

impl MonotonicClock {
    pub fn new() -> MonotonicClock {
        MonotonicClock {
            start: Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

/// A source of random numbers (election timeouts).
pub trait Random {
    fn next_u64(&mut self) -> u64;

    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        // Multiply-shift: unbiased enough for timeouts, and the same on every platform.
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// SplitMix64: small, fast, and one seed gives one sequence.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// Seeded from the time and the process id (a member's election timeouts must differ
    /// from its peers', not repeat anything).
    pub fn from_entropy() -> SplitMix64 {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        SplitMix64(t ^ ((std::process::id() as u64) << 32))
    }
}

impl Random for SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_seed_gives_one_sequence_within_bounds() {
        let (mut a, mut b) = (SplitMix64::new(7), SplitMix64::new(7));
        let xs: Vec<u64> = (0..100).map(|_| a.below(10)).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.below(10)).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().all(|&x| x < 10));
        assert!(
            (0..10).all(|v| xs.contains(&v)),
            "every value turns up: {xs:?}"
        );
    }
}
