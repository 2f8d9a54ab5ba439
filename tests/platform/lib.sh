# shellcheck shell=bash
# Shared helpers for the platform stages (tests/platform/arm64.sh, tests/platform/systemd.sh):
# cached Debian root file systems, bind mounts that are always undone, and the SKIPPED convention.
#
# A stage that cannot run because this machine lacks a capability (not root, no binfmt_misc, nspawn
# cannot boot, no Debian mirror) prints a loud "SKIPPED: <reason>" and exits 0; a test failure inside
# exits non-zero. Root file systems are cached as tarballs under $EDGED_CACHE (~/.cache/edged), keyed by
# suite, architecture and package list, so a second run only unpacks one.

EDGED_CACHE=${EDGED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edged}
EDGED_WORK=${EDGED_WORK:-/var/tmp}
SUITE=${SUITE:-bookworm}

say() { printf '[%s %s] %s\n' "${STAGE:-platform}" "$(date +%H:%M:%S)" "$*"; }
die() { printf '[%s] error: %s\n' "${STAGE:-platform}" "$*" >&2; exit 1; }

# skip REASON: the loud, non-failing exit for a missing capability
skip() {
    printf '\n==============================================================================\n'
    printf 'SKIPPED: %s: %s\n' "${STAGE:-platform}" "$*"
    printf '==============================================================================\n\n'
    exit 0
}

# need_root: the stages mount, chroot and boot containers
need_root() {
    [ "$(id -u)" = 0 ] || skip "needs root (mounts, chroot, systemd-nspawn); run as root or with sudo"
}

# need_tools PKG:CMD ...: install missing Debian packages with apt-get (root only), else skip
need_tools() {
    local missing_pkgs="" item pkg cmd
    for item in "$@"; do
        pkg=${item%%:*}; cmd=${item#*:}
        command -v "$cmd" >/dev/null 2>&1 || [ -e "$cmd" ] || missing_pkgs="$missing_pkgs $pkg"
    done
    [ -z "$missing_pkgs" ] && return 0
    command -v apt-get >/dev/null 2>&1 || skip "missing$missing_pkgs and no apt-get to install them"
    say "installing$missing_pkgs"
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086  # a list of package names
    if ! apt-get install -y -qq --no-install-recommends $missing_pkgs >/dev/null 2>&1; then
        apt-get update -qq >/dev/null 2>&1 || true
        # shellcheck disable=SC2086
        apt-get install -y -qq --no-install-recommends $missing_pkgs >/dev/null 2>&1 \
            || skip "could not apt-get install$missing_pkgs"
    fi
}

# debian_mirror: the Debian mirror this host's apt uses (deb822 or one-line format), else deb.debian.org
debian_mirror() {
    local url=""
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        url=$(awk '/^URIs:/ {for (i = 2; i <= NF; i++) if ($i !~ /security/) {print $i; exit}}' \
            /etc/apt/sources.list.d/debian.sources)
    fi
    if [ -z "$url" ] && [ -f /etc/apt/sources.list ]; then
        url=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' \
            /etc/apt/sources.list)
    fi
    echo "${url:-http://deb.debian.org/debian}"
}

# compress / decompress (stdin to stdout): zstd when present (fast), else gzip; tar_ext names the result
compress() { if command -v zstd >/dev/null 2>&1; then zstd -T0 -3 -q; else gzip -1; fi; }
decompress() { if command -v zstd >/dev/null 2>&1; then zstd -d -q; else gzip -d; fi; }
tar_ext() { if command -v zstd >/dev/null 2>&1; then echo tar.zst; else echo tar.gz; fi; }

# cached_rootfs_tarball ARCH PACKAGES [SETUP_FN]: path of a cached root file system tarball, built on a miss.
# The tarball name carries a hash of the arch, suite, package list, the setup function's source and
# this file, so changing any of them builds a new one.
cached_rootfs_tarball() {
    local arch=$1 packages=$2 setup_fn=${3:-} key ext tarball tmp mirror
    ext=$(tar_ext)
    key=$( { echo "$arch $SUITE $packages"; [ -n "$setup_fn" ] && declare -f "$setup_fn"; declare -f _debootstrap; } \
        | sha256sum | cut -c1-12)
    tarball=$EDGED_CACHE/rootfs-$SUITE-$arch-$key.$ext
    if [ -s "$tarball" ]; then
        echo "$tarball"
        return 0
    fi
    mkdir -p "$EDGED_CACHE"
    tmp=$(mktemp -d "$EDGED_WORK/edged-rootfs-build.XXXXXX")
    mirror=$(debian_mirror)
    say "building the $SUITE $arch root file system (cache miss: $tarball) from $mirror" >&2
    if ! _debootstrap "$arch" "$packages" "$tmp/root" "$mirror" >&2; then
        rm -rf "$tmp"
        return 1
    fi
    if [ -n "$setup_fn" ]; then
        "$setup_fn" "$tmp/root" >&2 || { rm -rf "$tmp"; return 1; }
    fi
    # apt's package cache is not needed in the tarball
    rm -rf "$tmp/root/var/cache/apt/archives/"*.deb "$tmp/root/var/lib/apt/lists/"*_Packages
    tar -C "$tmp/root" --numeric-owner --xattrs -cf - . | compress > "$tarball.part"
    mv "$tarball.part" "$tarball"
    rm -rf "$tmp"
    # older tarballs of the same arch are superseded
    find "$EDGED_CACHE" -maxdepth 1 -name "rootfs-$SUITE-$arch-*" ! -name "$(basename "$tarball")" -delete
    say "cached $(du -h "$tarball" | cut -f1) at $tarball" >&2
    echo "$tarball"
}

# _debootstrap ARCH PACKAGES DIR MIRROR: a minbase root file system; a foreign arch runs its second
# stage under qemu-user-static (which must be registered with binfmt_misc already)
_debootstrap() {
    local arch=$1 packages=$2 dir=$3 mirror=$4 host_arch
    host_arch=$(dpkg --print-architecture)
    if [ "$arch" = "$host_arch" ]; then
        debootstrap --variant=minbase --arch="$arch" --include="$packages" "$SUITE" "$dir" "$mirror" \
            > "$dir.log" 2>&1 || { tail -30 "$dir.log"; return 1; }
    else
        debootstrap --foreign --variant=minbase --arch="$arch" --include="$packages" "$SUITE" "$dir" "$mirror" \
            > "$dir.log" 2>&1 || { tail -30 "$dir.log"; return 1; }
        # the interpreter that binfmt_misc names must exist inside the target (entries without the F flag)
        install -D -m 0755 "$(qemu_static "$arch")" "$dir$(qemu_static "$arch")"
        [ -n "${QEMU_INTERP:-}" ] && install -D -m 0755 "$(qemu_static "$arch")" "$dir$QEMU_INTERP"
        chroot "$dir" /debootstrap/debootstrap --second-stage >> "$dir.log" 2>&1 \
            || { tail -30 "$dir.log"; tail -30 "$dir/debootstrap/debootstrap.log" 2>/dev/null; return 1; }
    fi
    say "debootstrap $arch done ($(du -sh "$dir" | cut -f1))"
}

# qemu_static ARCH: the host's qemu-user-static binary for a Debian architecture name
qemu_static() {
    case "$1" in
        arm64) echo /usr/bin/qemu-aarch64-static ;;
        armhf|armel) echo /usr/bin/qemu-arm-static ;;
        *) echo "/usr/bin/qemu-$1-static" ;;
    esac
}

# unpack_rootfs TARBALL DIR
unpack_rootfs() {
    mkdir -p "$2"
    decompress < "$1" | tar -C "$2" --numeric-owner --xattrs -xf -
}

# Mounts made with bind_mount are undone (in reverse order) by unmount_all, which the stages call
# from an EXIT trap, so an interrupted run leaves nothing mounted.
_MOUNTS=()
bind_mount() {  # bind_mount SRC DST [ro]
    mkdir -p "$2" 2>/dev/null || true
    [ -e "$2" ] || touch "$2"
    mount --bind "$1" "$2"
    _MOUNTS+=("$2")
    if [ "${3:-}" = ro ]; then
        mount -o remount,bind,ro "$2"
    fi
}
unmount_all() {
    local i
    for ((i = ${#_MOUNTS[@]} - 1; i >= 0; i--)); do
        umount "${_MOUNTS[$i]}" 2>/dev/null || umount -l "${_MOUNTS[$i]}" 2>/dev/null || true
    done
    _MOUNTS=()
}

# kill_chroot_processes DIR: processes left running inside our chroot (a test's daemon that outlived a
# failure) hold its mounts; end them, by PID, before unmounting
kill_chroot_processes() {
    local dir=$1 p pids=""
    [ -n "$dir" ] && [ -d "$dir" ] || return 0
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/root" 2>/dev/null)" = "$dir" ] && pids="$pids ${p#/proc/}"
    done
    [ -z "$pids" ] && return 0
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    sleep 1
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
}

# repo_snapshot SRC DST: the work tree as git sees it (tracked and untracked, not ignored: no .venv,
# no caches), so uncommitted changes are tested too; EDGED_SNAPSHOT=head takes the last commit instead
repo_snapshot() {
    mkdir -p "$2"
    if [ "${EDGED_SNAPSHOT:-worktree}" = head ]; then
        git -C "$1" archive HEAD | tar -C "$2" -xf -
    elif git -C "$1" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        (cd "$1" && git ls-files -z --cached --others --exclude-standard \
            | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
            | tar --null -T - -cf -) | tar -C "$2" -xf -
    else
        tar -C "$1" --exclude=./.venv --exclude=./.venv-legacy --exclude=./.git -cf - . | tar -C "$2" -xf -
    fi
}

# host_pip_config DIR: copy whatever makes pip work on this host into a root file system: its config
# files (the local mirrors they name are bound read-only by the caller) and its CA bundle (a
# TLS-inspecting proxy's CA lives only there; PIP_CERT and certifi-less tools need it)
host_pip_config() {
    local root=$1 bundle
    for bundle in /etc/ssl/certs/ca-certificates.crt ${PIP_CERT:-} ${REQUESTS_CA_BUNDLE:-} ${SSL_CERT_FILE:-}; do
        [ -f "$bundle" ] && install -D -m 0644 "$bundle" "$root$bundle"
    done
    [ -f /etc/pip.conf ] && install -D -m 0644 /etc/pip.conf "$root/etc/pip.conf"
    if [ -f "$HOME/.config/pip/pip.conf" ]; then
        install -D -m 0644 "$HOME/.config/pip/pip.conf" "$root/root/.config/pip/pip.conf"
    fi
    if [ -f "$HOME/.pip/pip.conf" ]; then
        install -D -m 0644 "$HOME/.pip/pip.conf" "$root/root/.pip/pip.conf"
    fi
    return 0
}

# host_pip_env: PIP_* variables of this environment as NAME=VALUE words (for env -i)
host_pip_env() {
    env | grep -E '^PIP_[A-Z_]+=' | tr '\n' ' ' || true
}

# local_pip_dirs: local directories that the host's pip configuration names (file:// indexes,
# find-links), to bind read-only into a root file system so the copied configuration works there
local_pip_dirs() {
    { cat /etc/pip.conf "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf" 2>/dev/null; env | grep -E '^PIP_'; } \
        | grep -oE '(file://)?/[A-Za-z0-9._/-]+' | sed 's|^file://||' | sort -u \
        | while read -r d; do
            case "$d" in /etc/*|/usr/*|/root/*|/home/*) continue ;; esac
            # a file:// "simple" index links to its files beside it (../files/...)
            case "$d" in */simple|*/simple/) d=$(dirname "$d") ;; esac
            [ -d "$d" ] && echo "$d"
        done | sort -u
    return 0
}
