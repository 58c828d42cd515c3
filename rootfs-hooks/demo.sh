#!/usr/bin/env bash
# Runs the volume-agent demo in one command. It installs what is missing
# (rootfs-hooks/setup-host.sh), builds the agent and volumectl, builds (or
# reuses) the test guest in target/guest, then runs
# `cargo run --example demo`. The demo boots the guest and hot-plugs a
# virtio-blk ext4 disk and a virtio-scsi xfs disk. It attaches, writes and
# grows them, shows usage before and after, detaches and shuts down.
#
# Usage: rootfs-hooks/demo.sh [--release]
#
# Needs root. Exits 0 only if every step of the demo passed its check.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

profile=()
guest_args=()
case "${1:-}" in
"") ;;
--release)
    profile=(--release)
    guest_args=(--release)
    ;;
*)
    echo "demo.sh: unknown argument $1; usage: rootfs-hooks/demo.sh [--release]" >&2
    exit 1
    ;;
esac

if [[ "$(id -u)" -ne 0 ]]; then
    echo "demo.sh: run as root (QEMU opens the disk images, mkfs and fsck run on them)" >&2
    exit 1
fi

"$repo/rootfs-hooks/setup-host.sh"

echo "==> cargo build${profile[*]:+ ${profile[*]}} (volume-agent, volumectl, demo)"
cargo build -q "${profile[@]}" --bins --example demo
"$repo/rootfs-hooks/build-test-guest.sh" "$repo/target/guest" "${guest_args[@]}"
exec cargo run -q "${profile[@]}" --example demo
