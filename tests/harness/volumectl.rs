//! Runs the real `volumectl` binary against the agent in a guest.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Seconds volumectl allows for connecting and for each request, which is
/// also the agent's deadline. TCG guests on a loaded host are slow.
const TIMEOUT_SECONDS: &str = "60";

/// Usage and condition from `volumectl stats --json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeStats {
    pub bytes_total: u64,
    pub bytes_used: u64,
    pub bytes_available: u64,
    pub inodes_total: u64,
    pub inodes_used: u64,
    pub abnormal: bool,
    pub message: String,
}

/// `volumectl` bound to one agent address.
#[derive(Debug, Clone)]
pub struct Volumectl {
    pub binary: PathBuf,
    pub address: String,
}

impl Volumectl {
    /// Uses the volumectl that Cargo built for this test, or, in an
    /// example, the one beside the example's directory.
    pub fn new(address: &str) -> Volumectl {
        let binary = match option_env!("CARGO_BIN_EXE_volumectl") {
            Some(path) => PathBuf::from(path),
            None => std::env::current_exe()
                .ok()
                .and_then(|exe| Some(exe.parent()?.parent()?.join("volumectl")))
                .unwrap_or_else(|| PathBuf::from("volumectl")),
        };
        Volumectl {
            binary,
            address: address.to_string(),
        }
    }

    /// Builds a command with the address and timeout set, followed by `args`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .args(["--address", &self.address, "--timeout", TIMEOUT_SECONDS])
            .args(args)
            .stdin(Stdio::null());
        command
    }

    /// Runs volumectl with `args` and returns its stdout, trimmed, or an
    /// error holding its stderr.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let output = self
            .command(args)
            .output()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        check_output(args, output)
    }

    /// Starts volumectl with `args` in the background (stdout and stderr
    /// piped), for requests that must wait for a disk plugged later.
    pub fn spawn(&self, args: &[&str]) -> Result<Child> {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))
    }

    /// Waits for a volumectl started by [`Volumectl::spawn`] and returns
    /// its stdout like [`Volumectl::run`].
    pub fn finish(args: &[&str], child: Child) -> Result<String> {
        let output = child.wait_with_output().context("waiting for volumectl")?;
        check_output(args, output)
    }

    /// Sends GetVolumeStats for the guest path `path`.
    pub fn stats(&self, path: &str) -> Result<VolumeStats> {
        let text = self.run(&["--json", "stats", path])?;
        parse_stats(&text).with_context(|| format!("parsing volumectl stats output {text:?}"))
    }
}

fn check_output(args: &[&str], output: Output) -> Result<String> {
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() {
        bail!(
            "volumectl {} failed with {}: {}{stdout}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}

fn parse_stats(text: &str) -> Result<VolumeStats> {
    let value: Value = serde_json::from_str(text)?;
    let usage = |unit: &str| -> Result<&Value> {
        value["usage"]
            .as_array()
            .and_then(|usages| usages.iter().find(|usage| usage["unit"] == unit))
            .with_context(|| format!("no {unit} usage"))
    };
    let number = |usage: &Value, key: &str| -> Result<u64> {
        usage[key]
            .as_u64()
            .with_context(|| format!("{key} missing or not a number in {usage}"))
    };
    let bytes = usage("BYTES")?;
    let inodes = usage("INODES")?;
    let condition = if value.get("volume_condition").is_some() {
        &value["volume_condition"]
    } else {
        &value["condition"]
    };
    Ok(VolumeStats {
        bytes_total: number(bytes, "total")?,
        bytes_used: number(bytes, "used")?,
        bytes_available: number(bytes, "available")?,
        inodes_total: number(inodes, "total")?,
        inodes_used: number(inodes, "used")?,
        abnormal: condition["abnormal"]
            .as_bool()
            .context("condition.abnormal missing")?,
        message: condition["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_stats_reads_usage_and_condition() {
        let text = r#"{"usage":[
            {"unit":"BYTES","total":1000,"used":300,"available":600},
            {"unit":"INODES","total":64,"used":12,"available":52}],
            "volume_condition":{"abnormal":true,"message":"device removed"}}"#;
        let stats = parse_stats(text).unwrap();
        assert_eq!(stats.bytes_total, 1000);
        assert_eq!(stats.bytes_used, 300);
        assert_eq!(stats.bytes_available, 600);
        assert_eq!(stats.inodes_total, 64);
        assert_eq!(stats.inodes_used, 12);
        assert!(stats.abnormal);
        assert_eq!(stats.message, "device removed");
    }

    #[test]
    fn parse_stats_rejects_missing_inodes() {
        let text = r#"{"usage":[{"unit":"BYTES","total":1,"used":0,"available":1}],
            "volume_condition":{"abnormal":false,"message":"OK"}}"#;
        assert!(parse_stats(text).is_err());
    }
}
