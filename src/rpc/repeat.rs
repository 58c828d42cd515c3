//! Rate limiting for logs of repeated, identical request failures, so that
//! a client calling in a loop cannot flood the log.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts occurrences of one kind of event and picks which to log: the
/// 1st, 2nd, 4th, 8th and so on, about 20 lines per million repeats.
#[derive(Debug, Default)]
pub struct RepeatCounter(AtomicU64);

impl RepeatCounter {
    /// Counts one occurrence and returns the total so far when this one
    /// should be logged.
    pub fn record(&self) -> Option<u64> {
        let count = self.0.fetch_add(1, Ordering::Relaxed) + 1;
        count.is_power_of_two().then_some(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_powers_of_two_only() {
        let counter = RepeatCounter::default();
        let logged: Vec<u64> = (0..100).filter_map(|_| counter.record()).collect();
        assert_eq!(logged, vec![1, 2, 4, 8, 16, 32, 64]);
    }
}
