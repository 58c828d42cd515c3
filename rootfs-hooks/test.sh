#!/usr/bin/env bash
# Runs every test of volume-agent on a fresh Debian 12 machine, as root.
# It installs the packages and builds the agent and the test guest. Then it
# runs `cargo test` (unit, loop-device and QEMU guest tests) and the
# benchmarks once in quick mode to catch breakage.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

# rustup and `cargo install` put their binaries here; setup-host.sh needs
# cargo, and the tests need vhost-device-vsock.
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
"$repo/rootfs-hooks/setup-host.sh"

echo "==> cargo build"
cargo build --workspace --all-targets

echo "==> build the test guest"
"$repo/rootfs-hooks/build-test-guest.sh" "$repo/target/guest"

echo "==> cargo test"
cargo test --workspace --no-fail-fast

echo "==> cargo bench (quick mode)"
cargo bench --bench agent -- --quick
cargo bench --bench guest_resize -- --quick
