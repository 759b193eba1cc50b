//! A node's wall clock. Only ids read it (a lease id carries 40 bits of milliseconds, as
//! etcd's do); every deadline, lease expiry included, is measured on the monotonic clock
//! (`tokio::time::Instant`), so a wall-clock step (NTP, an operator's `date -s`) changes no
//! timing. The simulator steps it on purpose and checks that leases keep their promises.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The system clock, or a simulated one, either of which can be stepped.
#[derive(Debug)]
pub struct WallClock {
    /// For a simulated clock: the wall time it showed at a monotonic instant.
    origin: Option<(SystemTime, tokio::time::Instant)>,
    /// Milliseconds the clock was stepped by, in sum (negative: back).
    stepped_ms: AtomicI64,
}

/// Where a simulated wall clock starts: 2026-01-01T00:00:00Z.
const SIMULATED_EPOCH_SECS: u64 = 1_767_225_600;

impl WallClock {
    /// The operating system's clock.
    pub fn system() -> Arc<WallClock> {
        Arc::new(WallClock {
            origin: None,
            stepped_ms: AtomicI64::new(0),
        })
    }

    /// A clock that shows 2026-01-01 now and then follows the runtime's monotonic clock (the
    /// simulated one under the simulator), so what it shows is a function of the run.
    pub fn simulated() -> Arc<WallClock> {
        let epoch = UNIX_EPOCH + Duration::from_secs(SIMULATED_EPOCH_SECS);
        Arc::new(WallClock {
            origin: Some((epoch, tokio::time::Instant::now())),
            stepped_ms: AtomicI64::new(0),
        })
    }

    /// What the clock shows.
    pub fn now(&self) -> SystemTime {
        let base = match self.origin {
            Some((wall, at)) => wall + at.elapsed(),
            None => SystemTime::now(),
        };
        let step = self.stepped_ms.load(Ordering::Relaxed);
        let by = Duration::from_millis(step.unsigned_abs());
        let stepped = if step >= 0 {
            base.checked_add(by)
        } else {
            base.checked_sub(by)
        };
        stepped.unwrap_or(base)
    }

    /// Steps the clock by `by_ms` milliseconds (negative: back).
    pub fn step(&self, by_ms: i64) {
        self.stepped_ms.fetch_add(by_ms, Ordering::Relaxed);
    }

    /// Milliseconds since the Unix epoch it shows (0 before it).
    pub fn unix_millis(&self) -> u64 {
        self.now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_simulated_clock_follows_the_runtime_and_steps_both_ways() {
        let c = WallClock::simulated();
        let start = c.unix_millis();
        assert_eq!(start, SIMULATED_EPOCH_SECS * 1000);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(c.unix_millis(), start + 1500);
        c.step(-60_000);
        assert_eq!(c.unix_millis(), start + 1500 - 60_000);
        c.step(3_600_000);
        assert_eq!(c.unix_millis(), start + 1500 - 60_000 + 3_600_000);
    }

    #[test]
    fn a_system_clock_steps_too() {
        let c = WallClock::system();
        c.step(-10 * 365 * 24 * 3600 * 1000);
        let ten_years = Duration::from_secs(9 * 365 * 24 * 3600);
        assert!(c.now() + ten_years < SystemTime::now());
    }
}
