//! GetVolumeStats over a unix socket next to its two floors: a Health Check
//! round trip (the ttrpc transport) and a bare statfs(2) (the syscall).
//!
//! Health Check and GetVolumeStats alternate call by call on each
//! connection, so that load from other processes hits both alike and their
//! ratio holds on a busy machine. The statfs(2) floor runs between them in
//! every round.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::agent_process::{AgentProcess, Clients};
use crate::fixture::ScratchDir;
use crate::measure::{format_rate, ratio, Samples};
use crate::report::{Row, Section};
use crate::requests::{health_check, run_batch, run_threads, volume_stats, Batch};
use crate::stats_volume;

/// Target: GetVolumeStats latency at most this multiple of a Health Check.
const MAX_RATIO_TO_HEALTH: f64 = 1.2;

pub struct Plan {
    pub rounds: usize,
    /// Calls of each kind per round, split over the clients.
    pub calls_per_round: usize,
}

pub const FULL: Plan = Plan {
    rounds: 10,
    calls_per_round: 2000,
};
pub const QUICK: Plan = Plan {
    rounds: 2,
    calls_per_round: 100,
};

/// Totals of one kind of call over all rounds.
#[derive(Default)]
struct Totals {
    samples: Samples,
    calls: usize,
    wall: Duration,
}

impl Totals {
    fn add(&mut self, batch: Batch) {
        self.samples.extend(batch.samples);
        self.calls += batch.calls;
        self.wall += batch.wall;
    }
}

pub async fn run(section: &mut Section, plan: &Plan) -> anyhow::Result<()> {
    let scratch = ScratchDir::new()?;
    let agent = AgentProcess::start().await?;
    let setup = agent.connect().await?;
    let volume = stats_volume::prepare(&agent, &setup, &scratch).await?;
    section.note(format!(
        "GetVolumeStats and statfs(2) run on {}.",
        volume.description
    ));
    section.note(format!(
        "{} rounds per client count; each round runs {} statfs(2) calls, {} Health Check and \
         GetVolumeStats pairs in alternating order (the latency rows), then a batch of each \
         kind alone (the calls-per-second rows). Percentiles pool all rounds.",
        plan.rounds, plan.calls_per_round, plan.calls_per_round
    ));

    for clients in [1usize, 8] {
        let mut connections = Vec::new();
        for _ in 0..clients {
            connections.push(agent.connect().await?);
        }
        let calls_per_client = (plan.calls_per_round / clients).max(1);
        let mut totals = KindTotals::default();
        let mut round_ratios = Vec::new();
        for _ in 0..plan.rounds {
            let path = volume.path.clone();
            totals
                .statfs
                .add(run_threads(clients, calls_per_client, || {
                    nix::sys::statfs::statfs(&path)?;
                    Ok(())
                })?);

            let (mut health, mut stats) =
                run_alternating(&connections, calls_per_client, volume.path_str()).await?;
            round_ratios.push(ratio(stats.p50(), health.p50()));
            totals.health_latency.extend(health);
            totals.stats_latency.extend(stats);

            totals.health.add(
                run_batch(&connections, calls_per_client, |c: Clients| async move {
                    health_check(&c).await
                })
                .await?,
            );
            let stats_path = volume.path_str().to_string();
            totals.stats.add(
                run_batch(&connections, calls_per_client, move |c: Clients| {
                    let path = stats_path.clone();
                    async move { volume_stats(&c, &path).await }
                })
                .await?,
            );
        }
        add_rows(section, clients, &mut totals);
        round_ratios.sort_by(f64::total_cmp);
        section.note(format!(
            "With {}, the per-round p50 ratio to Health ranged {:.2}x to {:.2}x.",
            client_label(clients),
            round_ratios[0],
            round_ratios[round_ratios.len() - 1]
        ));
    }
    Ok(())
}

/// Everything measured for one client count.
#[derive(Default)]
struct KindTotals {
    statfs: Totals,
    /// Latencies from alternating calls, so that load hits both kinds alike.
    health_latency: Samples,
    stats_latency: Samples,
    /// Throughput from batches of one kind each.
    health: Totals,
    stats: Totals,
}

/// Runs `pairs_per_client` Health Check and GetVolumeStats pairs on each
/// connection in parallel, swapping their order every pair, and returns
/// the latencies of each kind.
async fn run_alternating(
    connections: &[Clients],
    pairs_per_client: usize,
    path: &str,
) -> anyhow::Result<(Samples, Samples)> {
    let mut tasks = tokio::task::JoinSet::new();
    for clients in connections {
        let clients = clients.clone();
        let path = path.to_string();
        tasks.spawn(async move {
            let mut health = Samples::default();
            let mut stats = Samples::default();
            for pair in 0..pairs_per_client {
                if pair % 2 == 0 {
                    time_async(&mut health, health_check(&clients)).await?;
                    time_async(&mut stats, volume_stats(&clients, &path)).await?;
                } else {
                    time_async(&mut stats, volume_stats(&clients, &path)).await?;
                    time_async(&mut health, health_check(&clients)).await?;
                }
            }
            anyhow::Ok((health, stats))
        });
    }
    let mut health = Samples::default();
    let mut stats = Samples::default();
    while let Some(joined) = tasks.join_next().await {
        let (task_health, task_stats) = joined.context("a client task panicked")??;
        health.extend(task_health);
        stats.extend(task_stats);
    }
    Ok((health, stats))
}

async fn time_async(
    samples: &mut Samples,
    call: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    call.await?;
    samples.push(started.elapsed());
    Ok(())
}

fn client_label(clients: usize) -> String {
    if clients == 1 {
        "1 client".to_string()
    } else {
        format!("{clients} clients")
    }
}

fn add_rows(section: &mut Section, clients: usize, totals: &mut KindTotals) {
    let label = client_label(clients);
    let (health_latency, stats_latency) = (&mut totals.health_latency, &mut totals.stats_latency);
    section.rows.push(Row::latency(
        format!("GetVolumeStats p50, {label}"),
        stats_latency.p50(),
        "Health",
        health_latency.p50(),
        Some(MAX_RATIO_TO_HEALTH),
    ));
    section.rows.push(Row::latency(
        format!("GetVolumeStats p99, {label}"),
        stats_latency.p99(),
        "Health",
        health_latency.p99(),
        Some(MAX_RATIO_TO_HEALTH),
    ));
    section.rows.push(Row::latency(
        format!("GetVolumeStats p50 vs syscall, {label}"),
        stats_latency.p50(),
        "statfs(2)",
        totals.statfs.samples.p50(),
        None,
    ));
    let (stats, health, statfs) = (&totals.stats, &totals.health, &totals.statfs);
    let stats_rate = stats.calls as f64 / stats.wall.as_secs_f64();
    let health_rate = health.calls as f64 / health.wall.as_secs_f64();
    let mut throughput = Row::info(
        format!("calls per second, {label} (ratio: ours / Health)"),
        format_rate(stats.calls, stats.wall),
        format!(
            "Health {}, statfs(2) {}",
            format_rate(health.calls, health.wall),
            format_rate(statfs.calls, statfs.wall)
        ),
    );
    throughput.ratio = Some(stats_rate / health_rate);
    section.rows.push(throughput);
}
