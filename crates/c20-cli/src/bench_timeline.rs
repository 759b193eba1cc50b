//! `c20 bench --timeline WINDOW`: latencies window by window over the run, to see whether the
//! slow requests are spread evenly or bunched (a stall every second, a slow start).

use serde::Serialize;
use std::time::Duration;

/// The requests that completed within one window of the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Window {
    /// When the window starts, counted from the start of the timed run.
    pub start_ms: f64,
    /// Requests answered without error in it.
    pub ops: u64,
    /// Latency percentiles of those requests (nearest rank); `None` when there were none.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

/// What one client saw: when each successful request completed and how long it took.
#[derive(Debug, Default)]
pub struct Samples(Vec<(u64, u32)>);

impl Samples {
    /// A request that completed `done` after the start of the run and took `latency_us`.
    pub fn record(&mut self, done: Duration, latency_us: u64) {
        let done_us = u64::try_from(done.as_micros()).unwrap_or(u64::MAX);
        self.0
            .push((done_us, u32::try_from(latency_us).unwrap_or(u32::MAX)));
    }

    pub fn merge(&mut self, other: Samples) {
        self.0.extend(other.0);
    }

    /// The samples grouped into consecutive windows of `window` from the start of the run up to
    /// the last completion; a window in which nothing completed is listed with no latencies.
    pub fn windows(mut self, window: Duration) -> Vec<Window> {
        let width_us = u64::try_from(window.as_micros()).unwrap_or(u64::MAX).max(1);
        self.0
            .sort_unstable_by_key(|&(done, lat)| (done / width_us, lat));
        let Some(&(last, _)) = self.0.last() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut rest = self.0.as_slice();
        for index in 0..=last / width_us {
            let n = rest.partition_point(|&(done, _)| done / width_us == index);
            let (these, later) = rest.split_at(n);
            rest = later;
            // Nearest rank of the window's sorted latencies; none in an empty window.
            let rank = |q: f64| {
                let i = ((q * n as f64).ceil() as usize).max(1);
                these.get(i - 1).map(|&(_, us)| f64::from(us) / 1e3)
            };
            out.push(Window {
                start_ms: (index * width_us) as f64 / 1e3,
                ops: n as u64,
                p50_ms: rank(0.50),
                p99_ms: rank(0.99),
                max_ms: rank(1.0),
            });
        }
        out
    }
}

/// A latency in ms as the bench's tables print it, `-` when there is none.
pub fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.3}"))
}

/// The windows as a table, one line each.
pub fn table(windows: &[Window]) -> String {
    let ms = fmt_ms;
    let mut out = format!(
        "{:>10}  {:>8}  {:>9}  {:>9}  {:>9}\n",
        "from ms", "ops", "p50 ms", "p99 ms", "max ms"
    );
    for w in windows {
        out += &format!(
            "{:>10.1}  {:>8}  {:>9}  {:>9}  {:>9}\n",
            w.start_ms,
            w.ops,
            ms(w.p50_ms),
            ms(w.p99_ms),
            ms(w.max_ms)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn requests_fall_into_the_window_in_which_they_completed() {
        let mut a = Samples::default();
        // Window 0: 100 requests of 1..=100 ms latency, recorded out of order.
        for lat in (1..=100u64).rev() {
            a.record(at(lat % 100), lat * 1000);
        }
        let mut b = Samples::default();
        // Window 2 (nothing in window 1): one slow request at the boundary.
        b.record(at(200), 75_000);
        a.merge(b);
        let w = a.windows(at(100));
        assert_eq!(w.len(), 3);
        assert_eq!(w[0].ops, 100);
        assert_eq!(w[0].p50_ms, Some(50.0));
        assert_eq!(w[0].p99_ms, Some(99.0));
        assert_eq!(w[0].max_ms, Some(100.0));
        assert_eq!(
            w[1],
            Window {
                start_ms: 100.0,
                ops: 0,
                p50_ms: None,
                p99_ms: None,
                max_ms: None
            }
        );
        assert_eq!(w[2].start_ms, 200.0);
        assert_eq!(w[2].ops, 1);
        assert_eq!(w[2].p99_ms, Some(75.0));
    }

    #[test]
    fn no_samples_give_no_windows_and_the_table_has_one_line_per_window() {
        assert!(Samples::default().windows(at(10)).is_empty());
        let mut s = Samples::default();
        s.record(at(5), 1500);
        s.record(at(25), 2500);
        let t = table(&s.windows(at(10)));
        assert_eq!(t.lines().count(), 4, "{t}");
        assert!(t.lines().nth(2).unwrap().contains(" -"), "{t}");
        assert!(t.lines().nth(3).unwrap().contains("2.500"), "{t}");
    }
}
