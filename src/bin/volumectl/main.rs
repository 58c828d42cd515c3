//! volumectl: host-side control of volume-agent over ttrpc.
//!
//! Every subcommand connects with `--address`, sends one request with
//! `--timeout` as its ttrpc deadline and prints the reply, in plain text or
//! with `--json` as one JSON object. On failure it prints the ttrpc status
//! code and the message to stderr and exits with status 1.

mod attach;
mod call;
mod direct_volume;
mod error;
mod health;
mod size;
mod volume;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use error::CliError;

/// Default agent address: the unix socket a local agent serves on.
const DEFAULT_ADDRESS: &str = "unix:///run/volume-agent.sock";

#[derive(Debug, Parser)]
#[command(
    name = "volumectl",
    version,
    about = "Attach, inspect and grow volumes through volume-agent"
)]
struct Cli {
    /// Agent address: unix:///PATH, vsock://CID:PORT or hvsock:///VMM/SOCKET:PORT
    /// (hybrid vsock of Firecracker, Cloud Hypervisor or vhost-device-vsock).
    #[arg(long, global = true, env = "VOLUMECTL_ADDRESS", default_value = DEFAULT_ADDRESS)]
    address: String,

    /// Seconds allowed for connecting and for the request, which the agent
    /// also receives as its ttrpc deadline. Fractions such as 0.5 are allowed.
    #[arg(long, global = true, default_value = "60", value_parser = parse_timeout)]
    timeout: Duration,

    /// Print one JSON object instead of human-readable text.
    #[arg(long, global = true)]
    json: bool,

    /// Directory of the direct-volume records, one subdirectory per volume.
    #[arg(
        long,
        global = true,
        env = "VOLUMECTL_DIRECT_VOLUMES_ROOT",
        default_value = direct_volume::DEFAULT_ROOT
    )]
    direct_volumes_root: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check that the agent serves requests (Health.Check).
    Check,
    /// Print the agent and protocol versions (Health.Version).
    Version,
    /// Mount a storage for the sandbox or for a container.
    Attach(Box<attach::AttachArgs>),
    /// Remove a container's binds and storages, or the whole sandbox.
    Detach(attach::DetachArgs),
    /// Print byte and inode usage and the condition of a volume.
    Stats(volume::StatsArgs),
    /// Grow the filesystem of a volume after its disk was grown.
    Resize(volume::ResizeArgs),
    /// Send an empty request to any method and print the reply status.
    Call(call::CallArgs),
    /// Manage direct-volume records in the layout of `kata-runtime direct-volume`.
    #[command(subcommand)]
    DirectVolume(direct_volume::DirectVolumeCommand),
}

/// Settings every subcommand that talks to the agent uses.
pub struct Session {
    pub address: String,
    pub timeout: Duration,
    pub json: bool,
    pub direct_volumes_root: PathBuf,
}

impl Session {
    /// Connects to the agent, retrying until the timeout while it is not up yet.
    pub async fn connect(&self) -> Result<ttrpc::r#async::Client, CliError> {
        Ok(volume_agent::client::connect(&self.address, self.timeout).await?)
    }

    /// Builds the ttrpc context that carries the request deadline.
    pub fn context(&self) -> ttrpc::context::Context {
        ttrpc::context::with_duration(self.timeout)
    }
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("expected a number of seconds, got {text:?}"))?;
    if seconds.is_nan() || seconds <= 0.0 {
        return Err(format!("must be more than 0 seconds, got {text:?}"));
    }
    let timeout = Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("{text:?} seconds is too long"))?;
    // A deadline that rounds to 0 ns would reach the agent as "no deadline".
    if timeout < MIN_TIMEOUT {
        return Err(format!("must be at least 0.001 seconds, got {text:?}"));
    }
    Ok(timeout)
}

/// Shortest `--timeout` accepted.
const MIN_TIMEOUT: Duration = Duration::from_millis(1);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let session = Session {
        address: cli.address,
        timeout: cli.timeout,
        json: cli.json,
        direct_volumes_root: cli.direct_volumes_root,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("volumectl: INTERNAL: creating the tokio runtime failed: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&session, cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!(
                "volumectl: {:?}: {}",
                error.code(),
                volume_agent::rpc::status::error_chain(&error)
            );
            ExitCode::FAILURE
        }
    }
}

async fn run(session: &Session, command: Command) -> Result<(), CliError> {
    match command {
        Command::Check => health::check(session).await,
        Command::Version => health::version(session).await,
        Command::Attach(args) => attach::attach(session, *args).await,
        Command::Detach(args) => attach::detach(session, args).await,
        Command::Stats(args) => volume::stats(session, &args).await,
        Command::Resize(args) => volume::resize(session, &args).await,
        Command::Call(args) => call::call(session, &args).await,
        Command::DirectVolume(command) => direct_volume::run(session, command).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_accepts_whole_and_fractional_seconds() {
        assert_eq!(parse_timeout("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_timeout("0.5"), Ok(Duration::from_millis(500)));
    }

    #[test]
    fn timeout_rejects_zero_negative_and_words() {
        for text in ["0", "-1", "soon", "NaN", "inf", "1e-12", "0.0009"] {
            assert!(parse_timeout(text).is_err(), "{text:?} was accepted");
        }
    }

    #[test]
    fn command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
