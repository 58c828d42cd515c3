//! Footprint: resident memory of an idle agent before and after a long run
//! of requests, and the size of the binary.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use crate::agent_process::{self, AgentProcess, Clients};
use crate::fixture::{run_tool, ScratchDir};
use crate::measure::format_bytes;
use crate::report::{Row, Section, Verdict};
use crate::requests::{run_batch, volume_stats};
use crate::stats_volume;

/// Target: idle resident memory below this.
const MAX_IDLE_RSS: u64 = 4 << 20;
/// Connections the long run spreads its requests over.
const CONNECTIONS: usize = 8;
/// Idle time after which tokio's blocking pool has let its threads go:
/// they exit after 10 s without work (tokio's default keep-alive).
pub const BLOCKING_POOL_IDLE: Duration = Duration::from_secs(11);
/// Pause before reading VmRSS, so that the runtime's idle workers settle.
const SETTLE: Duration = Duration::from_millis(200);

/// Reads the RSS `requests` GetVolumeStats after start, then once more
/// after `long_idle` when given.
pub async fn run_rss(
    section: &mut Section,
    requests: usize,
    long_idle: Option<Duration>,
) -> anyhow::Result<()> {
    let scratch = ScratchDir::new()?;
    let agent = AgentProcess::start().await?;
    tokio::time::sleep(SETTLE).await;
    let rss_started = agent.status_bytes("VmRSS")?;
    section.rows.push(rss_row(
        "idle RSS after start (one Health Check)",
        rss_started,
    ));
    section.rows.push(rss_split_row(
        "of which anonymous / file-backed; threads",
        &agent,
    )?);
    let files: Vec<String> = agent
        .file_rss()?
        .into_iter()
        .take(4)
        .map(|(file, bytes)| format!("{file} {}", format_bytes(bytes)))
        .collect();
    section.note(format!(
        "File-backed RSS after start, largest files: {}.",
        files.join(", ")
    ));

    let setup = agent.connect().await?;
    let volume = stats_volume::prepare(&agent, &setup, &scratch).await?;
    let mut connections = Vec::new();
    for _ in 0..CONNECTIONS {
        connections.push(agent.connect().await?);
    }
    let path = volume.path_str().to_string();
    let batch = run_batch(&connections, requests / CONNECTIONS, move |c: Clients| {
        let path = path.clone();
        async move { volume_stats(&c, &path).await }
    })
    .await?;
    drop(connections);
    drop(setup);
    tokio::time::sleep(SETTLE).await;
    let rss_after = agent.status_bytes("VmRSS")?;
    let peak = agent.status_bytes("VmHWM")?;
    section.rows.push(rss_row(
        &format!("idle RSS after {} GetVolumeStats", batch.calls),
        rss_after,
    ));
    section.rows.push(rss_split_row(
        "of which anonymous / file-backed; threads",
        &agent,
    )?);
    section.rows.push(Row::info(
        "peak RSS (VmHWM) over the run",
        format_bytes(peak),
        "",
    ));
    if let Some(idle) = long_idle {
        tokio::time::sleep(idle).await;
        let rss_idle = agent.status_bytes("VmRSS")?;
        section.rows.push(rss_row(
            &format!("idle RSS {} s after the requests", idle.as_secs()),
            rss_idle,
        ));
        section.rows.push(rss_split_row(
            "of which anonymous / file-backed; threads",
            &agent,
        )?);
    }
    section.note(format!(
        "Largest anonymous mappings at the end (resident of mapped): {}.",
        largest_anonymous(&agent)?
    ));
    section.note(format!(
        "The requests ran over {CONNECTIONS} connections on {}; the connections were closed \
         before the second reading.",
        volume.description
    ));
    Ok(())
}

/// Splits the resident set into heap and stacks (`RssAnon`) and mapped
/// files such as the binary itself (`RssFile`), with the thread count,
/// because every thread adds a stack and may add a malloc arena.
fn rss_split_row(measurement: &str, agent: &AgentProcess) -> anyhow::Result<Row> {
    let anonymous = agent.status_bytes("RssAnon")?;
    let file_backed = agent.status_bytes("RssFile")?;
    let threads = agent.status_count("Threads")?;
    Ok(Row::info(
        measurement,
        format!(
            "{} / {}; {threads}",
            format_bytes(anonymous),
            format_bytes(file_backed)
        ),
        "",
    ))
}

/// Describes the four anonymous mappings with the most resident bytes.
fn largest_anonymous(agent: &AgentProcess) -> anyhow::Result<String> {
    let mut anonymous: Vec<_> = agent
        .mappings()?
        .into_iter()
        .filter(|mapping| matches!(mapping.name.as_deref(), None | Some("[heap]")))
        .collect();
    anonymous.sort_by_key(|mapping| std::cmp::Reverse(mapping.rss));
    let described: Vec<String> = anonymous
        .iter()
        .take(4)
        .map(|mapping| {
            let name = mapping.name.as_deref().unwrap_or("anonymous");
            format!(
                "{name} {} of {}",
                format_bytes(mapping.rss),
                format_bytes(mapping.size)
            )
        })
        .collect();
    Ok(described.join(", "))
}

fn rss_row(measurement: &str, bytes: u64) -> Row {
    let mut row = Row::info(measurement, format_bytes(bytes), "");
    row.target = format!("< {}", format_bytes(MAX_IDLE_RSS));
    row.verdict = if bytes < MAX_IDLE_RSS {
        Verdict::Met
    } else {
        Verdict::Missed(format!("{} over", format_bytes(bytes - MAX_IDLE_RSS)))
    };
    row
}

/// Reports the size of the agent binary this bench started: unless
/// overridden, the one cargo built with the bench profile, which inherits
/// `[profile.release]` and so is stripped.
pub fn run_binary_size(section: &mut Section) -> anyhow::Result<()> {
    let binary = agent_process::binary();
    let bytes = std::fs::metadata(&binary)
        .with_context(|| format!("reading the size of {} failed", binary.display()))?
        .len();
    let description = describe_binary(&binary);
    section
        .rows
        .push(Row::info("agent binary size", format_bytes(bytes), ""));
    section.note(format!("Binary: {} ({description}).", binary.display()));
    let musl = run_tool("rustup", &["target", "list", "--installed"])
        .map(|targets| targets.lines().any(|target| target.contains("musl")))
        .unwrap_or(false);
    if musl {
        section.note(
            "A musl target is installed, but this bench measures the glibc build cargo made.",
        );
    } else {
        section.note("No musl target is installed (rustup target list --installed), so this is the glibc build.");
    }
    Ok(())
}

/// Returns the linking and stripping details that `file -b` prints.
fn describe_binary(binary: &Path) -> String {
    let Some(path) = binary.to_str() else {
        return "file type unknown".into();
    };
    match run_tool("file", &["-b", path]) {
        Ok(text) => text
            .split(", ")
            .filter(|part| {
                part.contains("linked") || part.contains("stripped") || part.starts_with("ELF")
            })
            .collect::<Vec<_>>()
            .join(", "),
        Err(_) => "file type unknown: `file` is not installed".into(),
    }
}
