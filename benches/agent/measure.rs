//! Latency samples, percentiles and the formatting of durations and sizes.

use std::time::{Duration, Instant};

/// Latencies of one kind of operation, pooled over all rounds of a run.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    durations: Vec<Duration>,
    sorted: bool,
}

impl Samples {
    pub fn push(&mut self, duration: Duration) {
        self.durations.push(duration);
        self.sorted = false;
    }

    pub fn extend(&mut self, other: Samples) {
        self.durations.extend(other.durations);
        self.sorted = false;
    }

    pub fn len(&self) -> usize {
        self.durations.len()
    }

    /// Returns the nearest-rank percentile `p` (0 < p <= 100).
    ///
    /// # Panics
    ///
    /// Panics when no sample was taken, because a percentile of nothing
    /// would be a made-up number.
    pub fn percentile(&mut self, p: f64) -> Duration {
        assert!(
            !self.durations.is_empty(),
            "percentile of an empty sample set"
        );
        if !self.sorted {
            self.durations.sort_unstable();
            self.sorted = true;
        }
        let rank = ((p / 100.0) * self.durations.len() as f64).ceil() as usize;
        self.durations[rank.clamp(1, self.durations.len()) - 1]
    }

    pub fn p50(&mut self) -> Duration {
        self.percentile(50.0)
    }

    pub fn p99(&mut self) -> Duration {
        self.percentile(99.0)
    }
}

/// Runs `operation` once and records how long it took.
pub fn time<T>(samples: &mut Samples, operation: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let value = operation();
    samples.push(started.elapsed());
    value
}

/// Returns `ours / baseline`.
pub fn ratio(ours: Duration, baseline: Duration) -> f64 {
    ours.as_secs_f64() / baseline.as_secs_f64().max(f64::MIN_POSITIVE)
}

/// Formats a duration with three significant digits in a fitting unit.
pub fn format_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos() as f64;
    let (value, unit) = if nanos < 1e3 {
        (nanos, "ns")
    } else if nanos < 1e6 {
        (nanos / 1e3, "µs")
    } else if nanos < 1e9 {
        (nanos / 1e6, "ms")
    } else {
        (nanos / 1e9, "s")
    };
    format!("{} {unit}", three_digits(value))
}

/// Formats a byte count in KiB or MiB.
pub fn format_bytes(bytes: u64) -> String {
    let bytes = bytes as f64;
    if bytes < 1024.0 * 1024.0 {
        format!("{} KiB", three_digits(bytes / 1024.0))
    } else {
        format!("{} MiB", three_digits(bytes / (1024.0 * 1024.0)))
    }
}

/// Formats a rate in operations per second.
pub fn format_rate(operations: usize, elapsed: Duration) -> String {
    let rate = operations as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
    if rate >= 1000.0 {
        format!("{:.1}k/s", rate / 1000.0)
    } else {
        format!("{rate:.0}/s")
    }
}

fn three_digits(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}
