//! GetVolumeStats over a unix socket next to its two floors: a Health Check
//! round trip (the ttrpc transport) and a bare statfs(2) (the syscall).
//!
//! The three run interleaved in rounds, so that load from other processes
//! hits all of them alike and the ratios hold on a busy machine.

use std::time::Duration;

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
        "{} interleaved rounds of {} calls of each kind per client count; \
         percentiles pool all rounds.",
        plan.rounds, plan.calls_per_round
    ));

    for clients in [1usize, 8] {
        let mut connections = Vec::new();
        for _ in 0..clients {
            connections.push(agent.connect().await?);
        }
        let calls_per_client = (plan.calls_per_round / clients).max(1);
        let mut statfs = Totals::default();
        let mut health = Totals::default();
        let mut stats = Totals::default();
        let mut round_ratios = Vec::new();
        for _ in 0..plan.rounds {
            let path = volume.path.clone();
            statfs.add(run_threads(clients, calls_per_client, || {
                nix::sys::statfs::statfs(&path)?;
                Ok(())
            })?);
            let mut health_round =
                run_batch(&connections, calls_per_client, |c: Clients| async move {
                    health_check(&c).await
                })
                .await?;
            let stats_path = volume.path_str().to_string();
            let mut stats_round = run_batch(&connections, calls_per_client, move |c: Clients| {
                let path = stats_path.clone();
                async move { volume_stats(&c, &path).await }
            })
            .await?;
            round_ratios.push(ratio(stats_round.samples.p50(), health_round.samples.p50()));
            health.add(health_round);
            stats.add(stats_round);
        }
        add_rows(section, clients, &mut statfs, &mut health, &mut stats);
        round_ratios.sort_by(f64::total_cmp);
        section.note(format!(
            "{clients} client(s): the per-round p50 ratio to Health ranged {:.2}x to {:.2}x.",
            round_ratios[0],
            round_ratios[round_ratios.len() - 1]
        ));
    }
    Ok(())
}

fn add_rows(
    section: &mut Section,
    clients: usize,
    statfs: &mut Totals,
    health: &mut Totals,
    stats: &mut Totals,
) {
    let label = if clients == 1 {
        "1 client".to_string()
    } else {
        format!("{clients} clients")
    };
    section.rows.push(Row::latency(
        format!("GetVolumeStats p50, {label}"),
        stats.samples.p50(),
        "Health",
        health.samples.p50(),
        Some(MAX_RATIO_TO_HEALTH),
    ));
    section.rows.push(Row::latency(
        format!("GetVolumeStats p99, {label}"),
        stats.samples.p99(),
        "Health",
        health.samples.p99(),
        Some(MAX_RATIO_TO_HEALTH),
    ));
    section.rows.push(Row::latency(
        format!("GetVolumeStats p50 vs syscall, {label}"),
        stats.samples.p50(),
        "statfs(2)",
        statfs.samples.p50(),
        None,
    ));
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
