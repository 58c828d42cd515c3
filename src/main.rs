//! volume-agent: serves the storage subset of the Kata agent API in the guest.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use slog::{error, info};
use tokio::signal::unix::{signal, SignalKind};

use volume_agent::config::{Args, Config};
use volume_agent::device::DeviceRegistry;
use volume_agent::rpc::{self, AgentServiceImpl};
use volume_agent::storage::{StorageConfig, StorageManager};
use volume_agent::volume::VolumeService;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // A missing /proc/cmdline (a container, a test) just means no defaults from it.
    let cmdline = std::fs::read_to_string(&args.cmdline).unwrap_or_default();
    let config = match Config::resolve(args, &cmdline) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("volume-agent: {err}");
            return std::process::ExitCode::from(2);
        }
    };

    let (logger, _flush_guard) = volume_agent::logging::create_logger(config.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            error!(logger, "creating the tokio runtime failed"; "error" => %err);
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config, logger.clone())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // The JSON log is for collectors; a person starting the agent by
            // hand reads stderr, so the error goes there in plain text too.
            error!(logger, "agent stopped"; "error" => format!("{err:#}"));
            eprintln!("volume-agent: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config, logger: slog::Logger) -> anyhow::Result<()> {
    // Bound first: a second agent started on a live socket or port stops
    // here, before it reads or rewrites the state of the running one.
    let listener = rpc::bind(&config.listen, &logger.new(slog::o!("subsystem" => "rpc")))?;

    let registry = DeviceRegistry::new(
        logger.new(slog::o!("subsystem" => "device")),
        config.sysfs_root.clone(),
        config.dev_root.clone(),
    );
    if config.uevents {
        volume_agent::uevent::spawn_listener(
            logger.new(slog::o!("subsystem" => "uevent")),
            registry.clone(),
        )
        .context("starting the uevent listener failed")?;
    }
    registry
        .scan_sysfs()
        .context("scanning sysfs for block devices failed")?;

    let storage = StorageManager::new(
        logger.new(slog::o!("subsystem" => "storage")),
        StorageConfig {
            root: config.storage_root.clone(),
            state_file: config.state_file.clone(),
        },
        registry.clone(),
    )
    .context("restoring storage state failed")?;
    let volumes = Arc::new(
        VolumeService::new(
            logger.new(slog::o!("subsystem" => "volume")),
            storage.clone(),
            registry.clone(),
        )
        .with_sysfs_root(config.sysfs_root.clone()),
    );
    let agent = Arc::new(AgentServiceImpl {
        logger: logger.new(slog::o!("subsystem" => "rpc")),
        storage,
        volumes,
        default_timeout: config.device_timeout,
    });

    let mut server = rpc::create_server(listener, agent);
    server
        .start()
        .await
        .context("starting the ttrpc server failed")?;
    info!(logger, "listening"; "address" => &config.listen, "version" => volume_agent::AGENT_VERSION);

    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let signal_name = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    info!(logger, "shutting down"; "signal" => signal_name);
    server
        .shutdown()
        .await
        .context("stopping the ttrpc server failed")?;
    if let Some(path) = config.listen.strip_prefix("unix://") {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}
