//! Agent configuration: command-line flags, with defaults taken from the
//! kernel command line in the `agent.<name>=<value>` form of Kata guests.
//!
//! Precedence: a flag given on the command line, then the kernel command
//! line, then the built-in default.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Default listen address: the vsock port the Kata agent uses, any CID.
pub const DEFAULT_LISTEN: &str = "vsock://-1:1024";
/// Default root under which storages are mounted.
pub const DEFAULT_STORAGE_ROOT: &str = "/run/kata-containers/sandbox/storage";
/// Default state file, kept on tmpfs so it lives exactly as long as the guest.
pub const DEFAULT_STATE_FILE: &str = "/run/volume-agent/state.json";
/// Default time a request waits for its device when the client set no deadline.
pub const DEFAULT_DEVICE_TIMEOUT: Duration = Duration::from_secs(30);

/// Kernel command-line keys, named as Kata guests name them where one exists.
pub const CMDLINE_LISTEN: &str = "agent.server_addr";
pub const CMDLINE_LOG_LEVEL: &str = "agent.log";
pub const CMDLINE_DEVICE_TIMEOUT: &str = "agent.hotplug_timeout";
pub const CMDLINE_STORAGE_ROOT: &str = "agent.storage_root";
pub const CMDLINE_STATE_FILE: &str = "agent.state_file";

#[derive(Debug, Parser)]
#[command(
    name = "volume-agent",
    version,
    about = "Guest agent for direct-assigned block volumes"
)]
pub struct Args {
    /// Address to serve on: vsock://CID:PORT (CID -1 means any) or unix:///PATH.
    /// Kernel command line: agent.server_addr. Default: vsock://-1:1024.
    #[arg(long)]
    pub listen: Option<String>,

    /// Log level: critical, error, warning, info, debug or trace.
    /// Kernel command line: agent.log. Default: info.
    #[arg(long)]
    pub log_level: Option<String>,

    /// Seconds a request waits for its device when the client set no
    /// deadline. Kernel command line: agent.hotplug_timeout. Default: 30.
    #[arg(long)]
    pub device_timeout: Option<u64>,

    /// Directory that every storage mount point must lie under.
    /// Kernel command line: agent.storage_root.
    /// Default: /run/kata-containers/sandbox/storage.
    #[arg(long)]
    pub storage_root: Option<PathBuf>,

    /// File where the agent persists its storage state across restarts.
    /// Kernel command line: agent.state_file. Default: /run/volume-agent/state.json.
    #[arg(long)]
    pub state_file: Option<PathBuf>,

    /// Root of the sysfs tree to scan for block devices.
    #[arg(long, default_value = "/sys", hide = true)]
    pub sysfs_root: PathBuf,

    /// Directory holding the block device nodes.
    #[arg(long, default_value = "/dev", hide = true)]
    pub dev_root: PathBuf,

    /// File to read kernel command-line options from.
    #[arg(long, default_value = "/proc/cmdline", hide = true)]
    pub cmdline: PathBuf,

    /// Do not read kernel uevents (devices are then found by sysfs scans only).
    #[arg(long, hide = true)]
    pub no_uevents: bool,
}

/// The resolved configuration the agent runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: String,
    pub log_level: slog::Level,
    pub device_timeout: Duration,
    pub storage_root: PathBuf,
    pub state_file: PathBuf,
    pub sysfs_root: PathBuf,
    pub dev_root: PathBuf,
    pub uevents: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid {key} value {value:?}: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: String,
    },
}

impl Config {
    /// Resolves `args` against the kernel command line text `cmdline`.
    pub fn resolve(args: Args, cmdline: &str) -> Result<Config, ConfigError> {
        let from_cmdline = |key: &str| cmdline_value(cmdline, key);

        let listen = args
            .listen
            .or_else(|| from_cmdline(CMDLINE_LISTEN))
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        validate_listen(&listen)?;

        let log_level = match args.log_level.or_else(|| from_cmdline(CMDLINE_LOG_LEVEL)) {
            Some(text) => parse_log_level(&text)?,
            None => slog::Level::Info,
        };

        let device_timeout = match args.device_timeout {
            Some(seconds) => Duration::from_secs(seconds),
            None => match from_cmdline(CMDLINE_DEVICE_TIMEOUT) {
                Some(text) => parse_seconds(CMDLINE_DEVICE_TIMEOUT, &text)?,
                None => DEFAULT_DEVICE_TIMEOUT,
            },
        };
        if device_timeout.is_zero() {
            return Err(ConfigError::Invalid {
                key: "device timeout",
                value: "0".into(),
                reason: "must be at least 1 second".into(),
            });
        }

        let storage_root = args
            .storage_root
            .or_else(|| from_cmdline(CMDLINE_STORAGE_ROOT).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STORAGE_ROOT));
        let state_file = args
            .state_file
            .or_else(|| from_cmdline(CMDLINE_STATE_FILE).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_FILE));
        for (key, path) in [("storage root", &storage_root), ("state file", &state_file)] {
            if !path.is_absolute() {
                return Err(ConfigError::Invalid {
                    key,
                    value: path.display().to_string(),
                    reason: "must be an absolute path".into(),
                });
            }
        }

        Ok(Config {
            listen,
            log_level,
            device_timeout,
            storage_root,
            state_file,
            sysfs_root: args.sysfs_root,
            dev_root: args.dev_root,
            uevents: !args.no_uevents,
        })
    }
}

/// Returns the value of the last `key=value` word of a kernel command line.
/// The kernel applies the last occurrence of a repeated parameter, and so
/// does this.
pub fn cmdline_value(cmdline: &str, key: &str) -> Option<String> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|word| word.split_once('='))
        .filter(|(name, _)| *name == key)
        .map(|(_, value)| value.trim_matches('"').to_string())
        .next_back()
}

fn validate_listen(listen: &str) -> Result<(), ConfigError> {
    let invalid = |reason: &str| ConfigError::Invalid {
        key: "listen address",
        value: listen.to_string(),
        reason: reason.to_string(),
    };
    if let Some(path) = listen.strip_prefix("unix://") {
        if !path.starts_with('/') || path.contains('\0') {
            return Err(invalid("expected unix:///ABSOLUTE/PATH"));
        }
        return Ok(());
    }
    if let Some(rest) = listen.strip_prefix("vsock://") {
        let (cid, port) = rest
            .split_once(':')
            .ok_or_else(|| invalid("expected vsock://CID:PORT, e.g. vsock://-1:1024"))?;
        if cid != "-1" && cid.parse::<u32>().is_err() {
            return Err(invalid("CID must be -1 (any) or an unsigned 32-bit number"));
        }
        if port.parse::<u32>().is_err() {
            return Err(invalid("port must be an unsigned 32-bit number"));
        }
        return Ok(());
    }
    Err(invalid("expected vsock://CID:PORT or unix:///PATH"))
}

fn parse_log_level(text: &str) -> Result<slog::Level, ConfigError> {
    match text.to_ascii_lowercase().as_str() {
        "critical" | "fatal" | "panic" => Ok(slog::Level::Critical),
        "error" => Ok(slog::Level::Error),
        "warning" | "warn" => Ok(slog::Level::Warning),
        "info" => Ok(slog::Level::Info),
        "debug" => Ok(slog::Level::Debug),
        "trace" => Ok(slog::Level::Trace),
        _ => Err(ConfigError::Invalid {
            key: "log level",
            value: text.to_string(),
            reason: "expected critical, error, warning, info, debug or trace".into(),
        }),
    }
}

fn parse_seconds(key: &'static str, text: &str) -> Result<Duration, ConfigError> {
    text.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| ConfigError::Invalid {
            key,
            value: text.to_string(),
            reason: "expected a whole number of seconds".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        Args::parse_from(std::iter::once("volume-agent").chain(list.iter().copied()))
    }

    #[test]
    fn cmdline_value_takes_last_occurrence() {
        let cmdline = "console=ttyS0 agent.log=debug quiet agent.log=warn";
        assert_eq!(cmdline_value(cmdline, "agent.log").as_deref(), Some("warn"));
        assert_eq!(cmdline_value(cmdline, "agent.missing"), None);
    }

    #[test]
    fn defaults_without_flags_or_cmdline() {
        let config = Config::resolve(args(&[]), "console=ttyS0").unwrap();
        assert_eq!(config.listen, DEFAULT_LISTEN);
        assert_eq!(config.log_level, slog::Level::Info);
        assert_eq!(config.device_timeout, DEFAULT_DEVICE_TIMEOUT);
        assert_eq!(config.storage_root, PathBuf::from(DEFAULT_STORAGE_ROOT));
    }

    #[test]
    fn cmdline_sets_defaults_and_flags_win() {
        let cmdline =
            "agent.server_addr=unix:///tmp/a.sock agent.log=debug agent.hotplug_timeout=7";
        let config = Config::resolve(args(&[]), cmdline).unwrap();
        assert_eq!(config.listen, "unix:///tmp/a.sock");
        assert_eq!(config.log_level, slog::Level::Debug);
        assert_eq!(config.device_timeout, Duration::from_secs(7));

        let config = Config::resolve(args(&["--listen", "vsock://3:1025"]), cmdline).unwrap();
        assert_eq!(config.listen, "vsock://3:1025");
    }

    #[test]
    fn invalid_values_are_rejected() {
        for (flags, cmdline) in [
            (vec!["--listen", "tcp://1.2.3.4:5"], ""),
            (vec!["--listen", "vsock://x:1024"], ""),
            (vec!["--listen", "vsock://-1"], ""),
            (vec!["--listen", "unix://agent.sock"], ""),
            (vec!["--log-level", "loud"], ""),
            (vec!["--device-timeout", "0"], ""),
            (vec![], "agent.hotplug_timeout=soon"),
            (vec!["--storage-root", "relative/dir"], ""),
        ] {
            let result = Config::resolve(args(&flags), cmdline);
            assert!(result.is_err(), "{flags:?} {cmdline:?} was accepted");
        }
    }
}
