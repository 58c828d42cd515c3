#!/usr/bin/env bash
# Installs what building and testing volume-agent needs on a Debian 12 host:
# the apt packages listed in ci-packages.txt and vhost-device-vsock (the
# hybrid vsock backend QEMU talks to). Run as root. Safe to run again: it
# installs only what is missing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [[ "$(id -u)" -ne 0 ]]; then
    echo "setup-host.sh: run as root (it installs apt packages)" >&2
    exit 1
fi

# The package lists also serve build-test-guest.sh, which fetches the guest
# kernel with apt-get download, so they are refreshed even when nothing is
# missing. Offline with every package present, a failed refresh is harmless.
echo "==> apt-get update"
if ! apt-get update -qq; then
    echo "setup-host.sh: apt-get update failed; going on with the current package lists" >&2
fi

mapfile -t packages < <(grep -v '^[[:space:]]*\(#\|$\)' "$here/ci-packages.txt")
missing=()
for package in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$package")
    fi
done
if ((${#missing[@]})); then
    echo "==> apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# vhost-device-vsock is not packaged by Debian 12; crates.io has it.
vhost_version="0.3.0"
if ! command -v vhost-device-vsock >/dev/null 2>&1 &&
    [[ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/vhost-device-vsock" ]]; then
    echo "==> cargo install vhost-device-vsock $vhost_version"
    cargo install --locked --version "$vhost_version" vhost-device-vsock
fi
