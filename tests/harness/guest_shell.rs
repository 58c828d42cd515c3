//! The guest's command shell on its second serial port (`/dev/ttyS1`,
//! a unix-socket chardev on the host).
//!
//! The guest side (`test-shell` in the image) runs each line it reads in a
//! subshell and writes the output back raw. [`GuestShell::run`] appends an
//! end marker that carries the exit status, so output and status come back
//! without a prompt to parse.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Output and exit status of one guest command.
#[derive(Debug, Clone)]
pub struct ShellOutput {
    /// stdout and stderr, interleaved as the guest wrote them.
    pub output: String,
    pub status: i32,
}

/// A connection to the guest shell.
pub struct GuestShell {
    stream: UnixStream,
    /// Bytes read past the last end marker.
    pending: Vec<u8>,
    next_marker: u64,
}

impl GuestShell {
    /// Connects to the shell chardev at `path` and waits up to `timeout`
    /// until the guest shell runs commands.
    pub fn connect(path: &Path, timeout: Duration) -> Result<GuestShell> {
        let stream = UnixStream::connect(path)
            .with_context(|| format!("connecting to the guest shell at {}", path.display()))?;
        let mut shell = GuestShell {
            stream,
            pending: Vec::new(),
            next_marker: 0,
        };
        let deadline = Instant::now() + timeout;
        // Lines sent before the guest opened ttyS1 are lost, so probe with
        // short waits until one comes back.
        loop {
            match shell.run_with_timeout("true", Duration::from_secs(2)) {
                Ok(result) if result.status == 0 => return Ok(shell),
                // A closed connection fails at once, so pause between tries.
                Ok(_) | Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Ok(result) => bail!("guest shell probe failed: {result:?}"),
                Err(error) => {
                    return Err(error).context(format!("guest shell did not answer in {timeout:?}"))
                }
            }
        }
    }

    /// Runs one command line in the guest and returns its output and
    /// status, waiting up to 60 s.
    pub fn run(&mut self, command: &str) -> Result<ShellOutput> {
        self.run_with_timeout(command, Duration::from_secs(60))
    }

    /// Runs `command` and returns its output, or fails unless it exits 0.
    pub fn run_ok(&mut self, command: &str) -> Result<String> {
        let result = self.run(command)?;
        if result.status != 0 {
            bail!(
                "guest command `{command}` exited with {}: {}",
                result.status,
                result.output
            );
        }
        Ok(result.output)
    }

    /// Runs `command` in the guest, waiting up to `timeout` for its end.
    pub fn run_with_timeout(&mut self, command: &str, timeout: Duration) -> Result<ShellOutput> {
        if command.contains('\n') {
            bail!("guest shell commands are one line; got {command:?}");
        }
        self.next_marker += 1;
        let marker = format!("__guest_shell_end_{}__", self.next_marker);
        // The marker is split in the command text so that an echoed command
        // line can never be taken for the end of its output.
        let (head, tail) = marker.split_at(8);
        let line = format!("{{ {command} ; }} ; echo \"{head}\"'{tail}'\" $?\"\n");
        self.stream
            .write_all(line.as_bytes())
            .context("writing to the guest shell")?;

        let deadline = Instant::now() + timeout;
        let mut buffer = [0u8; 4096];
        loop {
            if let Some(result) = self.take_result(&marker) {
                return Ok(result);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                bail!(
                    "guest command `{command}` did not finish in {timeout:?}; output so far: {}",
                    String::from_utf8_lossy(&self.pending)
                );
            }
            self.stream.set_read_timeout(Some(remaining))?;
            match self.stream.read(&mut buffer) {
                Ok(0) => bail!("guest shell connection closed: QEMU exited"),
                Ok(count) => self.pending.extend_from_slice(&buffer[..count]),
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(error) => return Err(error).context("reading from the guest shell"),
            }
        }
    }

    /// Splits off the output up to `marker STATUS\n`, if it has arrived.
    fn take_result(&mut self, marker: &str) -> Option<ShellOutput> {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        let start = text.find(marker)?;
        let line_end = start + text[start..].find('\n')?;
        let status = text[start + marker.len()..line_end].trim().parse().ok()?;
        let output = text[..start].to_string();
        self.pending = text.as_bytes()[line_end + 1..].to_vec();
        Some(ShellOutput { output, status })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell_with_pending(bytes: &[u8]) -> GuestShell {
        let (stream, _peer) = UnixStream::pair().unwrap();
        GuestShell {
            stream,
            pending: bytes.to_vec(),
            next_marker: 0,
        }
    }

    #[test]
    fn take_result_splits_output_at_marker() {
        let mut shell = shell_with_pending(b"a\nb\n__end_1__ 3\nrest");
        let result = shell.take_result("__end_1__").unwrap();
        assert_eq!(result.output, "a\nb\n");
        assert_eq!(result.status, 3);
        assert_eq!(shell.pending, b"rest");
    }

    #[test]
    fn take_result_waits_for_whole_marker_line() {
        let mut shell = shell_with_pending(b"out\n__end_1__ 0");
        assert!(shell.take_result("__end_1__").is_none());
        assert!(shell.take_result("__end_2__").is_none());
    }
}
