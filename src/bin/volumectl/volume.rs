//! `stats` and `resize`: GetVolumeStats and ResizeVolume.

use clap::Args;
use protocols::agent::{ResizeVolumeRequest, VolumeStatsRequest};
use protocols::agent_ttrpc::AgentServiceClient;
use protocols::csi::volume_usage::Unit;
use protocols::csi::VolumeStatsResponse;

use crate::error::CliError;
use crate::size::{format_bytes, parse_size};
use crate::Session;

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Guest path of the volume: its storage mount point, a bind target in a
    /// container, or a path inside either.
    pub path: String,
}

#[derive(Debug, Args)]
pub struct ResizeArgs {
    /// Guest path of the volume, as for `stats`.
    pub path: String,
    /// Requested size in bytes, or with a unit: K, M, G, T and KiB..TiB are
    /// powers of 1024, KB, MB, GB, TB powers of 1000. 0 means the size the
    /// device has now.
    #[arg(value_parser = parse_size)]
    pub size: u64,
}

/// Sends GetVolumeStats for `args.path` and prints the usage table.
pub async fn stats(session: &Session, args: &StatsArgs) -> Result<(), CliError> {
    stats_at(session, &args.path).await
}

/// Sends GetVolumeStats for the guest path `path` and prints the usage table.
pub async fn stats_at(session: &Session, path: &str) -> Result<(), CliError> {
    let client = AgentServiceClient::new(session.connect().await?);
    let mut request = VolumeStatsRequest::new();
    request.volume_guest_path = path.to_string();
    let response = client
        .get_volume_stats(session.context(), &request)
        .await
        .map_err(|error| {
            CliError::from_rpc("GetVolumeStats", &session.address, session.timeout, error)
        })?;

    if session.json {
        println!("{}", stats_json(&response));
    } else {
        print!("{}", stats_table(&response));
    }
    Ok(())
}

/// Sends ResizeVolume for `args.path` and prints what was requested.
pub async fn resize(session: &Session, args: &ResizeArgs) -> Result<(), CliError> {
    resize_at(session, &args.path, args.size).await
}

/// Sends ResizeVolume for the guest path `path` and prints the outcome.
pub async fn resize_at(session: &Session, path: &str, size: u64) -> Result<(), CliError> {
    let client = AgentServiceClient::new(session.connect().await?);
    let mut request = ResizeVolumeRequest::new();
    request.volume_guest_path = path.to_string();
    request.size = size;
    client
        .resize_volume(session.context(), &request)
        .await
        .map_err(|error| {
            CliError::from_rpc("ResizeVolume", &session.address, session.timeout, error)
        })?;

    if session.json {
        println!(
            "{}",
            serde_json::json!({ "volume_guest_path": path, "size": size })
        );
    } else if size == 0 {
        println!("{path}: filesystem grown to the current size of its device");
    } else {
        println!(
            "{path}: filesystem grown for a requested size of {} ({size} bytes)",
            format_bytes(size)
        );
    }
    Ok(())
}

fn unit_name(unit: protobuf::EnumOrUnknown<Unit>) -> String {
    match unit.enum_value() {
        Ok(unit) => format!("{unit:?}"),
        Err(number) => format!("UNKNOWN({number})"),
    }
}

/// Renders the reply with the raw numbers, for scripts.
fn stats_json(response: &VolumeStatsResponse) -> serde_json::Value {
    let usage: Vec<serde_json::Value> = response
        .usage
        .iter()
        .map(|usage| {
            serde_json::json!({
                "unit": unit_name(usage.unit),
                "total": usage.total,
                "used": usage.used,
                "available": usage.available,
            })
        })
        .collect();
    let condition = response.volume_condition.as_ref();
    serde_json::json!({
        "usage": usage,
        "volume_condition": {
            "abnormal": condition.is_some_and(|condition| condition.abnormal),
            "message": condition.map(|condition| condition.message.as_str()).unwrap_or(""),
        },
    })
}

/// Renders the reply as an aligned table: bytes in binary units, inodes as
/// counts, then the condition.
fn stats_table(response: &VolumeStatsResponse) -> String {
    let mut rows = vec![[
        "UNIT".to_string(),
        "TOTAL".to_string(),
        "USED".to_string(),
        "AVAILABLE".to_string(),
    ]];
    for usage in &response.usage {
        let render = |value: u64| match usage.unit.enum_value() {
            Ok(Unit::BYTES) => format_bytes(value),
            _ => value.to_string(),
        };
        rows.push([
            unit_name(usage.unit),
            render(usage.total),
            render(usage.used),
            render(usage.available),
        ]);
    }

    let mut widths = [0usize; 4];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut text = String::new();
    for row in &rows {
        let line = format!(
            "{:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
        );
        text.push_str(line.trim_end());
        text.push('\n');
    }

    match response.volume_condition.as_ref() {
        Some(condition) if condition.abnormal => {
            text.push_str(&format!("condition: ABNORMAL: {}\n", condition.message));
        }
        Some(condition) => text.push_str(&format!("condition: normal: {}\n", condition.message)),
        None => text.push_str("condition: not reported\n"),
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocols::csi::{VolumeCondition, VolumeUsage};

    fn sample() -> VolumeStatsResponse {
        let mut bytes = VolumeUsage::new();
        bytes.unit = Unit::BYTES.into();
        bytes.total = 1_288_490_189;
        bytes.used = 1024;
        bytes.available = 1_000_000;
        let mut inodes = VolumeUsage::new();
        inodes.unit = Unit::INODES.into();
        inodes.total = 65536;
        inodes.used = 11;
        inodes.available = 65525;
        let mut condition = VolumeCondition::new();
        condition.abnormal = true;
        condition.message = "filesystem is read-only".into();
        let mut response = VolumeStatsResponse::new();
        response.usage = vec![bytes, inodes];
        response.volume_condition = Some(condition).into();
        response
    }

    #[test]
    fn table_shows_human_bytes_and_condition() {
        let table = stats_table(&sample());
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[0].starts_with("UNIT"), "{table}");
        assert!(
            lines[1].starts_with("BYTES") && lines[1].contains("1.2 GiB"),
            "{table}"
        );
        assert!(lines[1].contains("1.0 KiB"), "{table}");
        assert!(
            lines[2].starts_with("INODES") && lines[2].contains("65525"),
            "{table}"
        );
        assert_eq!(lines[3], "condition: ABNORMAL: filesystem is read-only");
    }

    #[test]
    fn json_keeps_raw_numbers() {
        let value = stats_json(&sample());
        assert_eq!(value["usage"][0]["unit"], "BYTES");
        assert_eq!(value["usage"][0]["total"], 1_288_490_189u64);
        assert_eq!(value["usage"][1]["available"], 65525);
        assert_eq!(value["volume_condition"]["abnormal"], true);
    }
}
