//! Boots the test guest in QEMU with hot-plug slots, a virtio-scsi
//! controller and a hybrid vsock, and stops everything it started when
//! dropped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::guest_shell::GuestShell;
use super::image::GuestImage;
use super::qmp::Qmp;
use super::vsock;

/// Line the image's init prints once modules are loaded and the test shell
/// and the agent are starting.
pub const READY_LINE: &str = "init: guest ready";

/// Hot-plug root ports `rp0`.. sit in PCI slots from this one on, so a
/// virtio-blk disk on `rpN` has PCI path `{FIRST_ROOT_PORT_SLOT + N:02x}/00`.
pub const FIRST_ROOT_PORT_SLOT: u8 = 0x02;
pub const ROOT_PORTS: u8 = 4;
const SCSI_CONTROLLER_SLOT: u8 = 0x08;
const VSOCK_SLOT: u8 = 0x09;

/// Guest vsock context id; each vhost-device-vsock serves one guest, so
/// parallel guests may all use the same one.
const GUEST_CID: u32 = 3;

/// Time allowed from QEMU start to a running agent. Boot takes about 4 s
/// on an idle host under TCG; parallel tests on 2 cores take far longer.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// Host programs the guest needs, found on this machine.
#[derive(Debug, Clone)]
pub struct Prerequisites {
    pub qemu: PathBuf,
    pub vhost_device_vsock: PathBuf,
    pub image: GuestImage,
}

impl Prerequisites {
    /// Finds QEMU, vhost-device-vsock and the guest image, or returns what is
    /// missing and how to get it.
    pub fn find() -> Result<Prerequisites, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("the guest tests need root (QEMU hot-plug of host files, mkfs)".into());
        }
        let qemu = find_program("qemu-system-x86_64", &[])
            .ok_or("qemu-system-x86_64 not found; apt-get install qemu-system-x86")?;
        let cargo_bin = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
            .map(|dir| dir.join("bin"));
        let vhost_device_vsock = find_program("vhost-device-vsock", cargo_bin.as_slice())
            .ok_or("vhost-device-vsock not found; cargo install --locked vhost-device-vsock")?;
        let image = GuestImage::locate()?;
        Ok(Prerequisites {
            qemu,
            vhost_device_vsock,
            image,
        })
    }
}

fn find_program(name: &str, extra_dirs: &[PathBuf]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra_dirs.iter().cloned())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A running guest: QEMU, its vhost-device-vsock, the QMP connection and
/// the guest shell. Dropping it stops both processes by PID; the working
/// directory (serial log included) is kept when the thread is panicking.
pub struct Guest {
    pub qmp: Qmp,
    pub shell: GuestShell,
    dir: Option<tempfile::TempDir>,
    qemu: Child,
    vhost: Child,
    /// Time from QEMU start until the agent accepted a vsock connection.
    pub boot_time: Duration,
    pub accel: &'static str,
    /// Keep the working directory on drop even without a panic.
    keep_logs: bool,
}

impl Guest {
    /// Boots a guest and waits until its shell and agent are up.
    /// `name` goes into the working directory name, for finding logs.
    pub fn boot(prerequisites: &Prerequisites, name: &str) -> Result<Guest> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("volume-agent-{name}-"))
            .tempdir()
            .context("creating the guest working directory")?;
        let path = dir.path().to_path_buf();
        let accel = select_accel(prerequisites);

        let vhost_socket = path.join("vhost.sock");
        let mut vhost_command = Command::new(&prerequisites.vhost_device_vsock);
        kill_with_parent(&mut vhost_command);
        let vhost = vhost_command
            .arg("--vm")
            .arg(format!(
                "guest-cid={GUEST_CID},socket={},uds-path={}",
                vhost_socket.display(),
                path.join("vm.vsock").display()
            ))
            .stdin(Stdio::null())
            .stdout(log_file(&path, "vhost-device-vsock.log")?)
            .stderr(log_file(&path, "vhost-device-vsock.log")?)
            .spawn()
            .context("starting vhost-device-vsock")?;
        // From here on, a failure stops vhost-device-vsock through this guard.
        let mut vhost = ChildGuard(Some(vhost));
        wait_for_file(&vhost_socket, Duration::from_secs(10), &mut vhost)
            .context("vhost-device-vsock did not create its socket")?;

        let qemu = qemu_command(prerequisites, &path, accel, true)
            .stdin(Stdio::null())
            .stdout(log_file(&path, "qemu.log")?)
            .stderr(log_file(&path, "qemu.log")?)
            .spawn()
            .context("starting QEMU")?;
        let mut qemu = ChildGuard(Some(qemu));
        let start = Instant::now();

        let fail = |error: anyhow::Error, path: &Path| {
            let tail = tail_of(&path.join("serial.log"), 30);
            let qemu_log = tail_of(&path.join("qemu.log"), 10);
            error.context(format!(
                "booting the guest in {} failed\nqemu.log:\n{qemu_log}\nserial.log (last lines):\n{tail}",
                path.display()
            ))
        };
        let result = (|| -> Result<(Qmp, GuestShell)> {
            let qmp = Qmp::connect(&path.join("qmp.sock"), Duration::from_secs(30))?;
            wait_for_line(
                &path.join("serial.log"),
                READY_LINE,
                BOOT_TIMEOUT,
                &mut qemu,
            )?;
            let shell = GuestShell::connect(&path.join("shell.sock"), Duration::from_secs(60))?;
            vsock::wait_for_port(
                &path.join("vm.vsock"),
                vsock::AGENT_PORT,
                Duration::from_secs(60),
            )?;
            Ok((qmp, shell))
        })();
        let (qmp, shell) = match result {
            Ok(parts) => parts,
            Err(error) => {
                // Keep the directory: its logs are the only trace of the failure.
                let kept = dir.keep();
                return Err(fail(error, &kept));
            }
        };
        Ok(Guest {
            qmp,
            shell,
            dir: Some(dir),
            qemu: qemu.0.take().expect("QEMU child present"),
            vhost: vhost.0.take().expect("vhost-device-vsock child present"),
            boot_time: start.elapsed(),
            accel,
            keep_logs: false,
        })
    }

    /// Working directory: sockets, logs, and the place for disk images.
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("directory present until drop")
            .path()
    }

    /// Returns the path of the hybrid vsock unix socket of vhost-device-vsock.
    pub fn vsock_path(&self) -> PathBuf {
        self.dir().join("vm.vsock")
    }

    /// Returns the `volumectl --address` of the agent in this guest.
    pub fn agent_address(&self) -> String {
        vsock::hvsock_address(&self.vsock_path(), vsock::AGENT_PORT)
    }

    /// Returns the path of the guest's serial console log (kernel messages
    /// and the agent's log).
    pub fn serial_log(&self) -> PathBuf {
        self.dir().join("serial.log")
    }

    /// Returns the PCI path of a virtio-blk disk plugged into root port `rpN`.
    pub fn blk_pci_path(root_port: u8) -> String {
        format!("{:02x}/00", FIRST_ROOT_PORT_SLOT + root_port)
    }

    /// Keeps the working directory and its logs when the guest is dropped,
    /// for a failure that is reported without a panic.
    pub fn keep_logs(&mut self) {
        self.keep_logs = true;
    }

    /// Stops QEMU (QMP quit, then SIGKILL if it lingers) and
    /// vhost-device-vsock, so that disk images in [`Guest::dir`] can be
    /// checked. The directory lives until the guest is dropped.
    pub fn shutdown(&mut self) -> Result<()> {
        let quit = self.qmp.quit();
        let exited = wait_exit(&mut self.qemu, Duration::from_secs(10));
        stop(&mut self.qemu);
        stop(&mut self.vhost);
        quit.context("QMP quit")?;
        if !exited {
            bail!("QEMU did not exit within 10 s of QMP quit");
        }
        Ok(())
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        stop(&mut self.qemu);
        stop(&mut self.vhost);
        let Some(dir) = self.dir.take() else { return };
        if std::thread::panicking() || self.keep_logs {
            remove_disk_images(dir.path());
            let kept = dir.keep();
            eprintln!("guest logs kept: {}", kept.join("serial.log").display());
        }
    }
}

/// Kills a child on drop unless it was taken out. It covers processes
/// started during boot, before the [`Guest`] that owns them exists.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            stop(child);
        }
    }
}

/// Makes the kernel send SIGKILL to the child when the thread that spawns
/// it exits, so that a test process killed outright (timeout, Ctrl-C)
/// leaves no QEMU behind. Drop handles every other exit.
fn kill_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only
    // calls prctl(2), which is async-signal-safe; it touches no memory
    // shared with the parent.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}

/// Sends SIGKILL to `child` (by its PID) and reaps it.
fn stop(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn remove_disk_images(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .path()
            .extension()
            .is_some_and(|extension| extension == "img")
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn log_file(dir: &Path, name: &str) -> Result<File> {
    File::options()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .with_context(|| format!("opening {name} in {}", dir.display()))
}

fn tail_of(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn wait_for_file(path: &Path, timeout: Duration, owner: &mut ChildGuard) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        if let Some(status) = owner.exited() {
            bail!(
                "process exited with {status} before creating {}",
                path.display()
            );
        }
        if Instant::now() >= deadline {
            bail!("{} not created within {timeout:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn wait_for_line(log: &Path, line: &str, timeout: Duration, qemu: &mut ChildGuard) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if std::fs::read_to_string(log).is_ok_and(|text| text.contains(line)) {
            return Ok(());
        }
        if let Some(status) = qemu.exited() {
            bail!("QEMU exited with {status} before the guest printed {line:?}");
        }
        if Instant::now() >= deadline {
            bail!("the guest did not print {line:?} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Builds the QEMU command line. `with_devices` adds the hot-plug slots,
/// the SCSI controller, QMP, the shell and the vsock, which the KVM probe
/// boot does without.
fn qemu_command(
    prerequisites: &Prerequisites,
    dir: &Path,
    accel: &str,
    with_devices: bool,
) -> Command {
    let image = &prerequisites.image;
    let mut command = Command::new(&prerequisites.qemu);
    kill_with_parent(&mut command);
    command
        .args(["-machine", &format!("q35,accel={accel},memory-backend=mem")])
        .args(["-object", "memory-backend-memfd,id=mem,size=1G,share=on"])
        .args([
            "-m",
            "1G",
            "-smp",
            "2",
            "-nographic",
            "-nodefaults",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.initramfs)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .arg("-chardev")
        .arg(format!(
            "file,id=console,path={}",
            dir.join("serial.log").display()
        ))
        .args(["-serial", "chardev:console"]);
    if !with_devices {
        return command;
    }
    command
        .arg("-chardev")
        .arg(format!(
            "socket,id=shell,path={},server=on,wait=off",
            dir.join("shell.sock").display()
        ))
        .args(["-serial", "chardev:shell"])
        .arg("-qmp")
        .arg(format!(
            "unix:{},server=on,wait=off",
            dir.join("qmp.sock").display()
        ));
    for index in 0..ROOT_PORTS {
        command.args([
            "-device",
            &format!(
                "pcie-root-port,id=rp{index},bus=pcie.0,chassis={},addr={:#x}",
                index + 1,
                FIRST_ROOT_PORT_SLOT + index
            ),
        ]);
    }
    command
        .args([
            "-device",
            &format!("virtio-scsi-pci,id=scsi0,bus=pcie.0,addr={SCSI_CONTROLLER_SLOT:#x}"),
        ])
        .arg("-chardev")
        .arg(format!(
            "socket,id=vsock,path={}",
            dir.join("vhost.sock").display()
        ))
        .args([
            "-device",
            &format!("vhost-user-vsock-pci,chardev=vsock,bus=pcie.0,addr={VSOCK_SLOT:#x}"),
        ]);
    command
}

/// Picks `kvm` only when a probe boot under KVM reached init (cached per
/// guest image in `kvm-probe`), else `tcg`. `VOLUME_AGENT_ACCEL=tcg|kvm`
/// skips the probe.
fn select_accel(prerequisites: &Prerequisites) -> &'static str {
    match std::env::var("VOLUME_AGENT_ACCEL").as_deref() {
        Ok("kvm") => return "kvm",
        Ok("tcg") => return "tcg",
        _ => {}
    }
    if !Path::new("/dev/kvm").exists() {
        return "tcg";
    }
    let image = &prerequisites.image;
    let cache = image.dir.join("kvm-probe");
    // Parallel tests probe once: the first takes the lock, the rest wait
    // and read its result.
    let Ok(lock_file) = File::create(image.dir.join("kvm-probe.lock")) else {
        return "tcg";
    };
    let Ok(_lock) = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive) else {
        return "tcg";
    };
    if let Ok(text) = std::fs::read_to_string(&cache) {
        if let Some((key, verdict)) = text.trim().split_once(' ') {
            if key == image.kernel_key {
                return if verdict == "kvm" { "kvm" } else { "tcg" };
            }
        }
    }
    let verdict = if probe_kvm(prerequisites) {
        "kvm"
    } else {
        "tcg"
    };
    let _ = std::fs::write(&cache, format!("{} {verdict}\n", image.kernel_key));
    eprintln!(
        "KVM probe boot: using {verdict} (cached in {})",
        cache.display()
    );
    verdict
}

/// Boots the guest under KVM without devices and reports whether it
/// reached init. On hosts whose KVM cannot run this kernel, QEMU starts
/// and the guest dies partway through boot.
fn probe_kvm(prerequisites: &Prerequisites) -> bool {
    let Ok(dir) = tempfile::Builder::new()
        .prefix("volume-agent-kvm-probe-")
        .tempdir()
    else {
        return false;
    };
    let Ok(child) = qemu_command(prerequisites, dir.path(), "kvm", false)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let mut qemu = ChildGuard(Some(child));
    wait_for_line(
        &dir.path().join("serial.log"),
        READY_LINE,
        Duration::from_secs(30),
        &mut qemu,
    )
    .is_ok()
}
