//! Requests the bench sends, and batches of concurrent calls timed per call.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use protocols::agent::VolumeStatsRequest;
use protocols::agent::{CreateSandboxRequest, DestroySandboxRequest, ResizeVolumeRequest, Storage};
use protocols::health::CheckRequest;
use ttrpc::context::{self, Context};

use crate::agent_process::Clients;
use crate::measure::Samples;

/// Deadline of each request: generous, because a shared machine stalls.
const REQUEST_DEADLINE: Duration = Duration::from_secs(60);

pub fn deadline() -> Context {
    context::with_duration(REQUEST_DEADLINE)
}

/// Turns a ttrpc error into `CODE: message` for a status, or its text.
fn status_error(error: ttrpc::Error) -> anyhow::Error {
    match error {
        ttrpc::Error::RpcStatus(status) => {
            anyhow::anyhow!("{:?}: {}", status.code(), status.message())
        }
        other => anyhow::Error::new(other),
    }
}

/// Builds a storage of driver `mmioblk` for the `/dev` node `device`.
pub fn mmioblk_storage(device: &str, fstype: &str, mount_point: &Path) -> Storage {
    let mut storage = Storage::new();
    storage.driver = "mmioblk".into();
    storage.source = device.into();
    storage.fstype = fstype.into();
    storage.mount_point = mount_point.display().to_string();
    storage
}

pub async fn create_sandbox(clients: &Clients, storages: Vec<Storage>) -> anyhow::Result<()> {
    let mut request = CreateSandboxRequest::new();
    request.sandbox_id = "bench".into();
    request.storages = storages;
    clients
        .agent
        .create_sandbox(deadline(), &request)
        .await
        .map_err(status_error)
        .context("CreateSandbox failed")?;
    Ok(())
}

pub async fn destroy_sandbox(clients: &Clients) -> anyhow::Result<()> {
    clients
        .agent
        .destroy_sandbox(deadline(), &DestroySandboxRequest::new())
        .await
        .map_err(status_error)
        .context("DestroySandbox failed")?;
    Ok(())
}

pub async fn volume_stats(clients: &Clients, path: &str) -> anyhow::Result<()> {
    let mut request = VolumeStatsRequest::new();
    request.volume_guest_path = path.into();
    let response = clients
        .agent
        .get_volume_stats(deadline(), &request)
        .await
        .map_err(status_error)
        .with_context(|| format!("GetVolumeStats on {path} failed"))?;
    anyhow::ensure!(
        !response.usage.is_empty(),
        "GetVolumeStats on {path} returned no usage"
    );
    Ok(())
}

pub async fn health_check(clients: &Clients) -> anyhow::Result<()> {
    clients
        .health
        .check(deadline(), &CheckRequest::new())
        .await
        .map_err(status_error)
        .context("Health Check failed")?;
    Ok(())
}

pub async fn resize_volume(clients: &Clients, path: &str, size: u64) -> anyhow::Result<()> {
    let mut request = ResizeVolumeRequest::new();
    request.volume_guest_path = path.into();
    request.size = size;
    clients
        .agent
        .resize_volume(deadline(), &request)
        .await
        .map_err(status_error)
        .with_context(|| format!("ResizeVolume of {path} to {size} bytes failed"))?;
    Ok(())
}

/// Latencies of a batch and its wall-clock time.
pub struct Batch {
    pub samples: Samples,
    pub calls: usize,
    pub wall: Duration,
}

/// Runs `calls_per_client` calls of `call` on each connection in parallel,
/// one task per connection, timing every call.
pub async fn run_batch<F, Fut>(
    connections: &[Clients],
    calls_per_client: usize,
    call: F,
) -> anyhow::Result<Batch>
where
    F: Fn(Clients) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for clients in connections {
        let clients = clients.clone();
        let call = call.clone();
        tasks.spawn(async move {
            let mut samples = Samples::default();
            for _ in 0..calls_per_client {
                let call_started = Instant::now();
                call(clients.clone()).await?;
                samples.push(call_started.elapsed());
            }
            anyhow::Ok(samples)
        });
    }
    let mut samples = Samples::default();
    while let Some(joined) = tasks.join_next().await {
        samples.extend(joined.context("a client task panicked")??);
    }
    Ok(Batch {
        calls: samples.len(),
        samples,
        wall: started.elapsed(),
    })
}

/// Runs `calls_per_thread` calls of `call` on each of `threads` threads,
/// timing every call: the syscall floor beside [`run_batch`].
pub fn run_threads<F>(threads: usize, calls_per_thread: usize, call: F) -> anyhow::Result<Batch>
where
    F: Fn() -> anyhow::Result<()> + Sync,
{
    let started = Instant::now();
    let results: Vec<anyhow::Result<Samples>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut samples = Samples::default();
                    for _ in 0..calls_per_thread {
                        let call_started = Instant::now();
                        call()?;
                        samples.push(call_started.elapsed());
                    }
                    anyhow::Ok(samples)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a thread panicked")))
            })
            .collect()
    });
    let wall = started.elapsed();
    let mut samples = Samples::default();
    for result in results {
        samples.extend(result?);
    }
    Ok(Batch {
        calls: samples.len(),
        samples,
        wall,
    })
}
