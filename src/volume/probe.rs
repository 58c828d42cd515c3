//! Blocking probes (statfs, opening a mount root, block device ioctls)
//! run on tokio's blocking pool with a bounded wait, because a call on a
//! dead device can sleep in the kernel forever.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Reason a probe returned no result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeStall {
    /// This probe did not return within the wait.
    TimedOut { waited: Duration },
    /// An earlier probe of the same path has run longer than the wait and
    /// still not returned, so no new thread is spent on it.
    StillRunning { since: Duration },
}

impl std::fmt::Display for ProbeStall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeStall::TimedOut { waited } => write!(f, "did not return within {waited:?}"),
            ProbeStall::StillRunning { since } => {
                write!(f, "an earlier probe has not returned for {since:?}")
            }
        }
    }
}

/// Ids and start times of the probes still running, by path.
type RunningProbes = HashMap<PathBuf, Vec<(u64, Instant)>>;

/// Runs blocking probes keyed by path. A probe that times out keeps its
/// thread until the kernel call returns. While such a probe is pending, new
/// probes of its path fail at once instead of piling up blocked threads.
pub struct Prober {
    timeout: Duration,
    running: Arc<Mutex<RunningProbes>>,
    next_id: AtomicU64,
}

impl Prober {
    pub fn new(timeout: Duration) -> Prober {
        Prober {
            timeout,
            running: Arc::new(Mutex::new(HashMap::new())),
            next_id: AtomicU64::new(0),
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `probe` on a blocking thread and waits for it at most the
    /// prober's timeout.
    pub async fn run<T, F>(&self, key: &Path, probe: F) -> Result<T, ProbeStall>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            let probes = running.entry(key.to_path_buf()).or_default();
            let oldest = probes.iter().map(|(_, started)| started.elapsed()).max();
            if let Some(since) = oldest.filter(|since| *since >= self.timeout) {
                return Err(ProbeStall::StillRunning { since });
            }
            probes.push((id, Instant::now()));
        }

        let running = self.running.clone();
        let owned_key = key.to_path_buf();
        let task = tokio::task::spawn_blocking(move || {
            let result = probe();
            let mut running = running.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(probes) = running.get_mut(&owned_key) {
                probes.retain(|(probe_id, _)| *probe_id != id);
                if probes.is_empty() {
                    running.remove(&owned_key);
                }
            }
            result
        });
        match tokio::time::timeout(self.timeout, task).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(join_error)) => std::panic::resume_unwind(join_error.into_panic()),
            Err(_) => Err(ProbeStall::TimedOut {
                waited: self.timeout,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn probe_returns_value() {
        let prober = Prober::new(Duration::from_secs(5));
        let value = prober.run(Path::new("/a"), || 7).await;
        assert_eq!(value, Ok(7));
        assert_eq!(
            prober.run(Path::new("/a"), || 8).await,
            Ok(8),
            "key released"
        );
        assert!(
            prober.running.lock().unwrap().is_empty(),
            "nothing left running"
        );
    }

    #[tokio::test]
    async fn concurrent_probes_of_one_path() {
        let prober = Prober::new(Duration::from_secs(5));
        let slow = prober.run(Path::new("/a"), || {
            std::thread::sleep(Duration::from_millis(100));
            1
        });
        let fast = prober.run(Path::new("/a"), || 2);
        let (slow, fast) = tokio::join!(slow, fast);
        assert_eq!(slow, Ok(1));
        assert_eq!(fast, Ok(2), "a probe within its wait does not block others");
    }

    #[tokio::test]
    async fn probe_times_out_then_blocks_key() {
        let prober = Prober::new(Duration::from_millis(50));
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let first = prober
            .run(Path::new("/hung"), move || {
                let _ = wait.recv();
            })
            .await;
        assert!(
            matches!(first, Err(ProbeStall::TimedOut { .. })),
            "{first:?}"
        );

        let second = prober.run(Path::new("/hung"), || ()).await;
        assert!(
            matches!(second, Err(ProbeStall::StillRunning { .. })),
            "{second:?}"
        );
        assert_eq!(prober.run(Path::new("/other"), || 1).await, Ok(1));

        release.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if prober.run(Path::new("/hung"), || 2).await == Ok(2) {
                break;
            }
            assert!(Instant::now() < deadline, "key never released");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
