#!/usr/bin/env bash
# Installs volume-agent into a guest root filesystem tree, the way extra
# components are added to a Kata guest image before it is packed:
#
#   /usr/bin/volume-agent                        the agent
#   /usr/lib/systemd/system/volume-agent.service ordered before and wanted
#                                                by kata-containers.target
#   resize2fs, e2fsck, xfs_growfs, xfs_repair    the tools the agent runs
#                                                (those present on the host)
#   the shared libraries of all of the above, as ldd resolves them
#
# Usage: install-volume-agent.sh ROOTFS [--dry-run] [--agent PATH] [--no-unit]
#
#   --agent PATH  agent binary to install (default: $VOLUME_AGENT_BIN, else
#                 target/release/volume-agent, else target/debug/volume-agent)
#   --dry-run     list what would be copied or created, change nothing
#   --no-unit     skip the systemd unit (for images without systemd)
#
# A second run with the same inputs changes nothing: a file whose content
# and mode already match is left alone. Every destination must resolve
# inside ROOTFS, so an absolute symlink in the tree (lib -> /usr/lib) is an
# error rather than a write into the host.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools=(resize2fs e2fsck xfs_growfs xfs_repair)
unit_name="volume-agent.service"
unit_dir="/usr/lib/systemd/system"
target_name="kata-containers.target"

die() {
    echo "install-volume-agent.sh: $*" >&2
    exit 1
}

rootfs=""
agent="${VOLUME_AGENT_BIN:-}"
dry_run=false
install_unit=true
while (($#)); do
    case "$1" in
    --dry-run) dry_run=true ;;
    --no-unit) install_unit=false ;;
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
        [[ -z "$rootfs" ]] || die "one ROOTFS expected, got $rootfs and $1"
        rootfs="$1"
        ;;
    esac
    shift
done
[[ -n "$rootfs" ]] || die "missing ROOTFS; usage: install-volume-agent.sh ROOTFS [--dry-run] [--agent PATH] [--no-unit]"
[[ -d "$rootfs" ]] || die "ROOTFS $rootfs is not a directory; create the guest tree first"
rootfs="$(realpath "$rootfs")"

if [[ -z "$agent" ]]; then
    for candidate in "$repo/target/release/volume-agent" "$repo/target/debug/volume-agent"; do
        if [[ -x "$candidate" ]]; then
            agent="$candidate"
            break
        fi
    done
fi
[[ -n "$agent" && -x "$agent" ]] ||
    die "agent binary ${agent:-target/{release,debug}/volume-agent} not found; run cargo build or pass --agent PATH"

changed=0
unchanged=0

# Resolves DEST inside the tree, refusing a path that leaves it.
guest_path() {
    local resolved
    resolved="$(realpath -m "$rootfs/$1")"
    case "$resolved" in
    "$rootfs" | "$rootfs"/*) printf '%s\n' "$resolved" ;;
    *) die "$1 resolves to $resolved, outside $rootfs (absolute symlink in the tree?)" ;;
    esac
}

# Counts a change and, in a dry run, prints DESCRIPTION and returns 1 so
# that the caller skips the write.
will_change() {
    changed=$((changed + 1))
    if $dry_run; then
        echo "$1"
        return 1
    fi
}

# Copies host file SRC (symlinks followed) to guest path DEST with MODE.
# With EXISTING=keep, a different file already at DEST is left in place:
# the tree's own libraries belong to the tree's other programs.
install_file() {
    local src="$1" dest="$2" mode="$3" existing="${4:-replace}" target
    target="$(guest_path "$dest")"
    if [[ -f "$target" ]] && cmp -s "$src" "$target" &&
        [[ "$(stat -c %a "$target")" == "$mode" ]]; then
        unchanged=$((unchanged + 1))
        return
    fi
    if [[ "$existing" == keep && -e "$target" ]]; then
        echo "note: kept the tree's own $dest, which differs from the host's $src" >&2
        unchanged=$((unchanged + 1))
        return
    fi
    will_change "copy $src -> $dest (mode $mode)" || return 0
    mkdir -p "$(dirname "$target")"
    # Copy beside the target, then rename, so that a guest build running
    # at the same time never reads a half-written binary.
    cp -L "$src" "$target.tmp.$$"
    chmod "$mode" "$target.tmp.$$"
    mv -f "$target.tmp.$$" "$target"
    echo "installed $dest"
}

# Writes TEXT to guest path DEST unless it already contains exactly that.
install_text() {
    local dest="$1" text="$2" target
    target="$(guest_path "$dest")"
    if [[ -f "$target" && "$(cat "$target")" == "$text" ]]; then
        unchanged=$((unchanged + 1))
        return
    fi
    will_change "write $dest" || return 0
    mkdir -p "$(dirname "$target")"
    printf '%s\n' "$text" >"$target.tmp.$$"
    chmod 644 "$target.tmp.$$"
    mv -f "$target.tmp.$$" "$target"
    echo "installed $dest"
}

# Creates symlink DEST -> POINTEE unless it already exists with that pointee.
install_symlink() {
    local dest="$1" pointee="$2" target
    target="$(guest_path "$(dirname "$dest")")/$(basename "$dest")"
    if [[ -L "$target" && "$(readlink "$target")" == "$pointee" ]]; then
        unchanged=$((unchanged + 1))
        return
    fi
    will_change "link $dest -> $pointee" || return 0
    mkdir -p "$(dirname "$target")"
    ln -sfn "$pointee" "$target"
    echo "installed $dest -> $pointee"
}

# Prints the shared libraries BINARY loads, the dynamic loader included,
# one absolute host path a line. A static binary prints nothing.
shared_libraries() {
    local output
    output="$(ldd "$1" 2>&1)" || {
        grep -q 'not a dynamic executable' <<<"$output" && return 0
        die "ldd $1 failed: $output"
    }
    if grep -q 'not found' <<<"$output"; then
        die "ldd $1 reports missing libraries; install them on the host: $output"
    fi
    awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$output"
}

binaries=("$agent")
install_file "$agent" /usr/bin/volume-agent 755

for tool in "${tools[@]}"; do
    path="$(PATH="/usr/sbin:/sbin:/usr/bin:/bin:$PATH" command -v "$tool" || true)"
    if [[ -z "$path" ]]; then
        echo "note: $tool not found on the host, not installed (install e2fsprogs / xfsprogs)" >&2
        continue
    fi
    # A tree with its own e2fsprogs or xfsprogs keeps them, with the
    # libraries they were built against.
    for existing_dir in /usr/sbin /sbin; do
        existing_tool="$(guest_path "$existing_dir/$tool")"
        if [[ -x "$existing_tool" ]] && ! cmp -s "$path" "$existing_tool"; then
            echo "note: kept the tree's own $existing_dir/$tool" >&2
            continue 2
        fi
    done
    binaries+=("$path")
    install_file "$path" "/usr/sbin/$tool" 755
done

mapfile -t libraries < <(for binary in "${binaries[@]}"; do shared_libraries "$binary"; done | sort -u)
for library in "${libraries[@]}"; do
    install_file "$library" "$library" 755 keep
done

if $install_unit; then
    # NOTE: with no --listen the agent serves vsock port 1024, the port the
    # Kata agent uses too. In an image that also runs the Kata agent, give
    # one of them another port (agent.server_addr on the kernel command
    # line, or an ExecStart drop-in).
    unit="[Unit]
Description=volume-agent: attach, report and grow direct-assigned block volumes
Before=$target_name

[Service]
Type=simple
ExecStart=/usr/bin/volume-agent
Restart=always
RestartSec=1
LimitNOFILE=65536

[Install]
WantedBy=$target_name"
    install_text "$unit_dir/$unit_name" "$unit"
    # What `systemctl enable` would create; systemctl cannot run on a tree
    # that is not booted, so the link is made by hand.
    install_symlink "/etc/systemd/system/$target_name.wants/$unit_name" "$unit_dir/$unit_name"
fi

if $dry_run; then
    echo "dry run: $changed to change, $unchanged already in place in $rootfs"
else
    echo "done: $changed changed, $unchanged already in place in $rootfs"
fi
