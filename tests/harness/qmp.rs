//! A synchronous QMP client: the commands the tests use to hot-plug, grow
//! and unplug disks, and the events they wait for.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

/// Time a QMP command may take to return, hot-plug included.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A QMP connection in command mode (after `qmp_capabilities`).
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Events read while waiting for command replies, oldest first.
    events: VecDeque<Value>,
}

impl Qmp {
    /// Connects to the QMP socket at `path`, retrying until `timeout`
    /// (QEMU creates it shortly after start), and enters command mode.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(stream) => break stream,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(error) => {
                    return Err(error)
                        .with_context(|| format!("connecting to QMP at {}", path.display()))
                }
            }
        };
        stream.set_read_timeout(Some(COMMAND_TIMEOUT))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            events: VecDeque::new(),
        };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            bail!("expected the QMP greeting, got {greeting}");
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    fn read_message(&mut self) -> Result<Value> {
        let mut line = String::new();
        let read = self
            .reader
            .read_line(&mut line)
            .context("reading from QMP (timed out, or QEMU exited?)")?;
        if read == 0 {
            bail!("QMP connection closed: QEMU exited");
        }
        serde_json::from_str(&line).with_context(|| format!("parsing QMP message {line:?}"))
    }

    /// Runs `command` with `arguments` and returns its `return` value, or
    /// the QMP error as an error.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let request = json!({ "execute": command, "arguments": arguments });
        let mut text = request.to_string();
        text.push('\n');
        self.writer
            .write_all(text.as_bytes())
            .with_context(|| format!("sending QMP {command}"))?;
        loop {
            let message = self.read_message()?;
            if message.get("event").is_some() {
                self.events.push_back(message);
            } else if let Some(value) = message.get("return") {
                return Ok(value.clone());
            } else if let Some(error) = message.get("error") {
                bail!("QMP {command} {arguments} failed: {error}");
            } else {
                bail!("unexpected QMP reply to {command}: {message}");
            }
        }
    }

    /// Waits up to `timeout` for an event named `name` whose `data`
    /// satisfies `matches`, and returns it. Events that do not match stay
    /// queued for later waits.
    pub fn wait_event(
        &mut self,
        name: &str,
        timeout: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let is_match = |event: &Value| event["event"] == name && matches(&event["data"]);
        if let Some(index) = self.events.iter().position(is_match) {
            return Ok(self.events.remove(index).expect("index from position"));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                bail!("no QMP event {name} within {timeout:?}");
            }
            self.reader.get_ref().set_read_timeout(Some(remaining))?;
            let message = self.read_message();
            self.reader
                .get_ref()
                .set_read_timeout(Some(COMMAND_TIMEOUT))?;
            let message = message.map_err(|error| anyhow!("waiting for {name}: {error:#}"))?;
            if is_match(&message) {
                return Ok(message);
            }
            if message.get("event").is_some() {
                self.events.push_back(message);
            }
        }
    }

    /// Opens `path` as a raw block node named `node` (file node `node-file`).
    pub fn blockdev_add_raw(&mut self, node: &str, path: &Path) -> Result<()> {
        let file_node = format!("{node}-file");
        self.execute(
            "blockdev-add",
            json!({ "node-name": file_node, "driver": "file", "filename": path }),
        )?;
        self.execute(
            "blockdev-add",
            json!({ "node-name": node, "driver": "raw", "file": file_node }),
        )?;
        Ok(())
    }

    /// Removes a node added by [`Qmp::blockdev_add_raw`]; the device using
    /// it must be gone first.
    pub fn blockdev_del_raw(&mut self, node: &str) -> Result<()> {
        self.execute("blockdev-del", json!({ "node-name": node }))?;
        self.execute(
            "blockdev-del",
            json!({ "node-name": format!("{node}-file") }),
        )?;
        Ok(())
    }

    /// Plugs a virtio-blk disk with device id `id` backed by `node` into
    /// the PCIe root port `root_port` (e.g. `rp0`).
    pub fn device_add_blk(&mut self, id: &str, node: &str, root_port: &str) -> Result<()> {
        self.execute(
            "device_add",
            json!({ "driver": "virtio-blk-pci", "id": id, "drive": node, "bus": root_port }),
        )?;
        Ok(())
    }

    /// Plugs a SCSI disk with device id `id` backed by `node` into the
    /// virtio-scsi controller at target `scsi_id`, unit `lun`.
    pub fn device_add_scsi(&mut self, id: &str, node: &str, scsi_id: u32, lun: u32) -> Result<()> {
        self.execute(
            "device_add",
            json!({
                "driver": "scsi-hd", "id": id, "drive": node,
                "bus": "scsi0.0", "scsi-id": scsi_id, "lun": lun,
            }),
        )?;
        Ok(())
    }

    /// Grows (or shrinks) the disk backed by `node` to `size` bytes.
    pub fn block_resize(&mut self, node: &str, size: u64) -> Result<()> {
        self.execute("block_resize", json!({ "node-name": node, "size": size }))?;
        Ok(())
    }

    /// Unplugs device `id` and waits until QEMU reports it deleted, which
    /// for PCI devices needs the guest to release it.
    pub fn device_del(&mut self, id: &str, timeout: Duration) -> Result<()> {
        self.execute("device_del", json!({ "id": id }))?;
        self.wait_event("DEVICE_DELETED", timeout, |data| data["device"] == id)
            .with_context(|| format!("unplugging device {id}"))?;
        Ok(())
    }

    /// Asks QEMU to exit at once.
    pub fn quit(&mut self) -> Result<()> {
        self.execute("quit", json!({}))?;
        Ok(())
    }
}
