//! Latency bookkeeping for the load generator: per-worker samples merged into percentiles.

use std::time::Duration;

/// Raw latency samples in microseconds. Kept exact rather than bucketed:
/// a 60 s run at 50k req/s is 3M samples, 12 MB, which is affordable and
/// spares us a histogram's rounding at the tail.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    micros: Vec<u32>,
}

impl Latencies {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(n: usize) -> Self {
        Self {
            micros: Vec::with_capacity(n),
        }
    }

    pub fn record(&mut self, d: Duration) {
        self.micros
            .push(u32::try_from(d.as_micros()).unwrap_or(u32::MAX));
    }

    pub fn merge(&mut self, other: Latencies) {
        self.micros.extend(other.micros);
    }

    pub fn len(&self) -> usize {
        self.micros.len()
    }

    pub fn is_empty(&self) -> bool {
        self.micros.is_empty()
    }

    pub fn summary(mut self) -> LatencySummary {
        self.micros.sort_unstable();
        LatencySummary {
            p50_ms: percentile_ms(&self.micros, 0.50),
            p90_ms: percentile_ms(&self.micros, 0.90),
            p99_ms: percentile_ms(&self.micros, 0.99),
            max_ms: self.micros.last().map_or(0.0, |&m| f64::from(m) / 1000.0),
        }
    }
}

/// Percentiles in milliseconds; all zero when nothing was measured.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct LatencySummary {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Nearest-rank percentile of sorted samples.
fn percentile_ms(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    let idx = rank.clamp(1, sorted.len()) - 1;
    f64::from(sorted[idx]) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let mut l = Latencies::new();
        for ms in 1..=100u64 {
            l.record(Duration::from_millis(ms));
        }
        let s = l.summary();
        assert_eq!(s.p50_ms, 50.0);
        assert_eq!(s.p90_ms, 90.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.max_ms, 100.0);
    }

    #[test]
    fn empty_is_zero() {
        assert_eq!(Latencies::new().summary(), LatencySummary::default());
    }
}
