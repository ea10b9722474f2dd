//! The one backoff policy: exponential, doubling from a minimum to a cap (`backon`).
//! The engine waits by it between attempts at a chunk, and the controller between
//! failed reconciles of a batch.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(min: Duration, max: Duration) -> Self {
        Backoff { min, max }
    }

    /// The wait before retry number `attempt` (0 for the first retry): `min · 2^attempt`,
    /// at most `max`.
    pub fn delay(&self, attempt: u32) -> Duration {
        ExponentialBuilder::default()
            .with_min_delay(self.min)
            .with_max_delay(self.max)
            .with_factor(2.0)
            .without_max_times()
            .build()
            // Past 2^32 the cap has long been reached.
            .nth(attempt.min(32) as usize)
            // backon multiplies in floating point; whole milliseconds keep waits exact.
            .map_or(self.max, |d| Duration::from_millis((d.as_secs_f64() * 1000.0).round() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_minimum_up_to_the_cap() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let got: Vec<Duration> = (0..7).map(|n| b.delay(n)).collect();
        assert_eq!(got, [100, 200, 400, 800, 1000, 1000, 1000].map(Duration::from_millis));
        assert_eq!(b.delay(u32::MAX), Duration::from_millis(1000));
    }
}
