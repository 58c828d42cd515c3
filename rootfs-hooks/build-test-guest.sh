#!/usr/bin/env bash
# Builds the small guest that the end-to-end tests and the demo boot:
#
#   OUTDIR/vmlinuz          Debian cloud kernel (linux-image-cloud-amd64)
#   OUTDIR/initramfs.img    busybox initramfs (cpio newc, gzip) holding the
#                           kernel modules for virtio-pci, virtio-blk,
#                           virtio-scsi, sd_mod, ext4, xfs and virtio-vsock,
#                           the agent and its tools (installed by
#                           install-volume-agent.sh), and /init
#   OUTDIR/kernel-version   the kernel release, e.g. 6.1.0-57-cloud-amd64
#
# The kernel package is fetched with `apt-get download` and unpacked with
# `dpkg-deb -x`, so nothing is installed into the host's /boot.
#
# /init mounts proc, sys, devtmpfs and /run, loads the modules and starts
# a command shell on /dev/ttyS1 for tests. Then it runs the agent
# (`volume-agent --listen vsock://-1:1024`, log on the serial console
# ttyS0) in a supervisor loop, which restarts it when it exits or is
# killed.
#
# Usage: build-test-guest.sh OUTDIR [--release | --agent PATH]
#
#   --agent PATH  agent binary (default: $VOLUME_AGENT_BIN, else
#                 target/debug/volume-agent)
#   --release     use target/release/volume-agent
#
# The build is cached: OUTDIR/inputs.sha256 records the hash of every input
# (this script, the install hook, the agent, busybox, the tool packages and
# the kernel package), and a rebuild with unchanged inputs does nothing.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
hook="$repo/rootfs-hooks/install-volume-agent.sh"
kernel_metapackage="linux-image-cloud-amd64"
modules=(virtio_pci virtio_blk virtio_scsi sd_mod ext4 xfs vmw_vsock_virtio_transport)
busybox="/bin/busybox"

die() {
    echo "build-test-guest.sh: $*" >&2
    exit 1
}

outdir=""
agent="${VOLUME_AGENT_BIN:-$repo/target/debug/volume-agent}"
while (($#)); do
    case "$1" in
    --release) agent="$repo/target/release/volume-agent" ;;
    --agent)
        [[ $# -ge 2 ]] || die "--agent needs a path"
        agent="$2"
        shift
        ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    -*) die "unknown option $1; see --help" ;;
    *)
        [[ -z "$outdir" ]] || die "one OUTDIR expected, got $outdir and $1"
        outdir="$1"
        ;;
    esac
    shift
done
[[ -n "$outdir" ]] || die "missing OUTDIR; usage: build-test-guest.sh OUTDIR [--release | --agent PATH]"
[[ -x "$agent" ]] || die "agent binary $agent not found; run cargo build (or --release) first"
busybox_ldd="$(ldd "$busybox" 2>&1 || true)"
grep -q 'not a dynamic executable' <<<"$busybox_ldd" ||
    die "$busybox is not a static busybox; apt-get install busybox-static"
for command in apt-cache apt-get dpkg-deb depmod modprobe cpio gzip objcopy; do
    command -v "$command" >/dev/null || die "$command not found; install the packages in rootfs-hooks/ci-packages.txt"
done
mkdir -p "$outdir"
outdir="$(realpath "$outdir")"

# The metapackage depends on exactly one versioned image package; its name
# carries the kernel ABI, so it is resolved here rather than written down.
kernel_package="$(apt-cache depends "$kernel_metapackage" |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')"
[[ -n "$kernel_package" ]] ||
    die "apt-cache depends $kernel_metapackage named no linux-image package; run apt-get update"

debdir="$outdir/deb"
mkdir -p "$debdir"
deb="$(find "$debdir" -maxdepth 1 -name "${kernel_package}_*.deb" | sort | tail -n 1)"
if [[ -z "$deb" ]]; then
    echo "==> apt-get download $kernel_package"
    (cd "$debdir" && apt-get download -q "$kernel_package") ||
        die "apt-get download $kernel_package failed; check the apt sources and network"
    deb="$(find "$debdir" -maxdepth 1 -name "${kernel_package}_*.deb" | sort | tail -n 1)"
    [[ -n "$deb" ]] || die "apt-get download left no ${kernel_package}_*.deb in $debdir"
fi

inputs="$(
    sha256sum "${BASH_SOURCE[0]}" "$hook" "$agent" "$busybox" "$deb"
    dpkg-query -W e2fsprogs xfsprogs libc6 busybox-static 2>/dev/null || true
)"
input_hash="$(sha256sum <<<"$inputs" | cut -d' ' -f1)"
if [[ -f "$outdir/inputs.sha256" && "$(cat "$outdir/inputs.sha256")" == "$input_hash" &&
    -f "$outdir/vmlinuz" && -f "$outdir/initramfs.img" ]]; then
    echo "guest in $outdir is up to date (inputs $input_hash)"
    exit 0
fi

work="$(mktemp -d "$outdir/build.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "==> unpack $(basename "$deb")"
dpkg-deb -x "$deb" "$work/kernel"
kernel_version="$(ls "$work/kernel/lib/modules")"
[[ "$(wc -w <<<"$kernel_version")" -eq 1 ]] ||
    die "$deb contains modules for '$kernel_version', expected one kernel release"
depmod -b "$work/kernel" "$kernel_version"

root="$work/root"
mkdir -p "$root"/{usr/bin,usr/sbin,usr/lib,usr/lib64,proc,sys,dev,run,tmp,etc,root}
for dir in bin sbin lib lib64; do
    ln -s "usr/$dir" "$root/$dir"
done

# Module load order, dependencies first, each module once.
echo "==> collect modules for $kernel_version"
module_root="$work/kernel/lib/modules/$kernel_version"
: >"$root/etc/modules-load.list"
declare -A seen=()
for module in "${modules[@]}"; do
    while read -r action path _; do
        [[ "$action" == "insmod" ]] || continue
        [[ -z "${seen[$path]:-}" ]] || continue
        seen[$path]=1
        relative="${path#"$module_root"/}"
        mkdir -p "$root/lib/modules/$kernel_version/$(dirname "$relative")"
        # busybox insmod cannot read compressed modules.
        case "$relative" in
        *.ko.xz) xz -dc "$path" >"$root/lib/modules/$kernel_version/${relative%.xz}" ;;
        *.ko.zst) zstd -qdc "$path" >"$root/lib/modules/$kernel_version/${relative%.zst}" ;;
        *.ko) cp "$path" "$root/lib/modules/$kernel_version/$relative" ;;
        *) die "unexpected module file $path" ;;
        esac
        relative="${relative%.xz}"
        echo "${relative%.zst}" >>"$root/etc/modules-load.list"
    done < <(modprobe -d "$work/kernel" -S "$kernel_version" --show-depends "$module")
done

# The debug agent carries ~50 MB of debug info the guest never reads.
objcopy --strip-debug "$agent" "$work/volume-agent"
"$hook" "$root" --agent "$work/volume-agent" --no-unit >/dev/null

cp "$busybox" "$root/usr/bin/busybox"
for applet in $("$busybox" --list); do
    for dir in usr/bin usr/sbin; do
        [[ -e "$root/$dir/$applet" ]] && continue 2
    done
    ln -s busybox "$root/usr/bin/$applet"
done

cat >"$root/init" <<EOF
#!/bin/sh
# Test guest init: mounts, modules, test shell on ttyS1, supervised agent.
export PATH=/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs tmpfs /tmp
while read -r module; do
    insmod "/lib/modules/$kernel_version/\$module" || echo "init: insmod \$module failed, continuing"
done </etc/modules-load.list

(while true; do /usr/bin/test-shell; sleep 0.2; done) &

echo "init: guest ready"
while true; do
    volume-agent --listen vsock://-1:1024 --log-level debug </dev/null >/dev/ttyS0 2>&1
    echo "init: volume-agent exited with status \$?, restarting"
    sleep 0.2
done
EOF
chmod 755 "$root/init"

# The test shell runs one command a line from ttyS1, each in its own
# subshell, so a failing command cannot end the loop. Commands read
# /dev/null, so one that reads stdin cannot swallow the next lines. The
# loop reads the tty itself because a `cat | sh` pipeline stalled in
# pipe_read under TCG.
cat >"$root/usr/bin/test-shell" <<'EOF'
#!/bin/sh
exec </dev/ttyS1 >/dev/ttyS1 2>&1
stty raw -echo
while IFS= read -r line; do
    (eval "$line") </dev/null
done
EOF
chmod 755 "$root/usr/bin/test-shell"

echo "==> pack initramfs"
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) |
    gzip -1 >"$work/initramfs.img"
cp "$work/kernel/boot/vmlinuz-$kernel_version" "$work/vmlinuz"

mv -f "$work/vmlinuz" "$outdir/vmlinuz"
mv -f "$work/initramfs.img" "$outdir/initramfs.img"
echo "$kernel_version" >"$outdir/kernel-version"
echo "$input_hash" >"$outdir/inputs.sha256"
echo "guest built in $outdir: vmlinuz, initramfs.img ($(du -h "$outdir/initramfs.img" | cut -f1)), kernel $kernel_version"
