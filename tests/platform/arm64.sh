#!/usr/bin/env bash
# make test-arm64: the test suite on a Raspberry Pi OS-equivalent arm64 userspace, under qemu-user.
#
# Raspberry Pi OS Bookworm is Debian Bookworm (Python 3.11, systemd 252) plus Pi firmware, so an
# arm64 Debian Bookworm root file system runs the same Python and the same aarch64 wheels
# (onnxruntime, ai-edge-litert, pyzmq, numpy) as a Pi 4/5 or Zero 2 W on the 64-bit OS:
#
#   1. debootstrap --arch=arm64 bookworm (cached as a tarball under ~/.cache/edged);
#   2. qemu-user-static registered with binfmt_misc (mounted here if it is not);
#   3. a chroot with /proc, /sys, /dev, /dev/pts bound, a Raspberry Pi 4 /proc/cpuinfo (Cortex-A72,
#      part 0xd08) bound over /proc/cpuinfo and QEMU_CPU=cortex-a72 (onnxruntime's cpuinfo segfaults
#      at import when it sees the host's x86 cpuinfo);
#   4. `make test` inside, on a copy of this work tree, with EDGED_EMULATED=qemu (tests that cannot be
#      meaningful under emulation are skipped with that reason: see tests/platform/emulation.py);
#   5. the daemon's RSS with one model and with both (tests/platform/rss.py), for the Pi Zero 2 W budget.
#
# Exit: 0 when the suite passed (or the stage was SKIPPED for a missing capability), else non-zero.
# Environment: EDGED_CACHE (default ~/.cache/edged), EDGED_WORK (scratch, default /var/tmp),
# PYTEST_ARGS (passed to make test inside), ARM64_RSS=0 / ARM64_SIGTERM_PROBE=0 to skip those diagnostics.
set -euo pipefail
STAGE=test-arm64
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=tests/platform/lib.sh
. "$HERE/lib.sh"

T0=$(date +%s)
need_root
command -v dpkg >/dev/null 2>&1 || skip "not a Debian-like host (no dpkg): debootstrap needs one"
need_tools debootstrap:debootstrap qemu-user-static:/usr/bin/qemu-aarch64-static binfmt-support:update-binfmts

# --- binfmt_misc: run aarch64 ELF files through qemu-aarch64-static -----------------------------
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null \
        || skip "binfmt_misc is not mounted and cannot be mounted here (a container without that permission)"
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    # no binfmt-support entry: register directly (P: keep argv[0]; the interpreter is looked up in the chroot)
    printf '%s' ':qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-aarch64-static:P' \
        > /proc/sys/fs/binfmt_misc/register 2>/dev/null || skip "cannot register qemu-aarch64 with binfmt_misc"
fi
grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 || skip "qemu-aarch64 binfmt entry is disabled"
QEMU_INTERP=$(awk '/^interpreter/ {print $2}' /proc/sys/fs/binfmt_misc/qemu-aarch64)

# --- the cached root file system ------------------------------------------------------------------
# python3-dev, gcc, pkg-config, libsystemd-dev: systemd-python builds (its tests run, unlike on a host
# without the headers); systemd: systemd-analyze for tests/test_units.py; make: the Makefile.
# logrotate, shellcheck: tests/test_units.py runs the shipped logrotate config and lints hw/install.sh.
PACKAGES=python3,python3-venv,python3-dev,python3-pip,gcc,libc6-dev,make,pkg-config,libsystemd-dev,systemd,logrotate,shellcheck,ca-certificates,procps
say "root file system: arm64 $SUITE"
TB0=$(date +%s)
TARBALL=$(cached_rootfs_tarball arm64 "$PACKAGES") || die "debootstrap of the arm64 root file system failed"
TB1=$(date +%s)
CACHE_STATE=cached
[ "$(stat -c %Y "$TARBALL")" -lt "$TB0" ] || CACHE_STATE=built

WORK=$(mktemp -d "$EDGED_WORK/edged-arm64.XXXXXX")
ROOT=$WORK/root
# shellcheck disable=SC2317  # called from the EXIT trap
cleanup() {
    kill_chroot_processes "$ROOT"
    unmount_all
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
unpack_rootfs "$TARBALL" "$ROOT"
# the interpreter binfmt_misc names must exist inside the chroot (the entry has no F flag)
install -D -m 0755 /usr/bin/qemu-aarch64-static "$ROOT$QEMU_INTERP"
TB2=$(date +%s)

bind_mount /proc "$ROOT/proc"
bind_mount /sys "$ROOT/sys"
bind_mount /dev "$ROOT/dev"
bind_mount /dev/pts "$ROOT/dev/pts"
[ -d /dev/shm ] && bind_mount /dev/shm "$ROOT/dev/shm"
# a Raspberry Pi 4's /proc/cpuinfo, with as many processors as this host has (onnxruntime's cpuinfo
# cross-checks /sys/devices/system/cpu)
NCPU=$(getconf _NPROCESSORS_CONF)
awk -v n="$NCPU" '/^processor/ {p = $3} p < n || /^(Hardware|Revision|Serial|Model)/ {print}' \
    "$HERE/pi4-cpuinfo" > "$WORK/cpuinfo"
bind_mount "$WORK/cpuinfo" "$ROOT/proc/cpuinfo" ro
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
host_pip_config "$ROOT"
for d in $(local_pip_dirs); do bind_mount "$d" "$ROOT$d" ro; done
mkdir -p "$EDGED_CACHE/pip-arm64"
bind_mount "$EDGED_CACHE/pip-arm64" "$ROOT/root/.cache/pip"

repo_snapshot "$REPO" "$ROOT/src/edged"
say "work tree copied to the chroot ($(du -sh "$ROOT/src/edged" | cut -f1))"

# run_in CMD: a login-free shell in the chroot with a clean environment
run_in() {
    # shellcheck disable=SC2046
    QEMU_CPU=cortex-a72 chroot "$ROOT" /usr/bin/env -i \
        HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
        QEMU_CPU=cortex-a72 EDGED_EMULATED=qemu TERM=dumb CI="${CI:-}" $(host_pip_env) \
        /bin/bash -c "$1"
}

run_in 'uname -m; python3 -V; grep -m1 "CPU part" /proc/cpuinfo' | sed 's/^/  chroot: /'
if [ "$(run_in 'uname -m')" != aarch64 ]; then
    die "the chroot does not run aarch64 code (binfmt_misc + qemu-aarch64-static)"
fi

say "make test inside the arm64 chroot (QEMU_CPU=cortex-a72, EDGED_EMULATED=qemu)"
TV0=$(date +%s)
# The chroot's .venv is cached too (pip under qemu takes minutes), keyed by what `make venv` installs:
# setup.cfg, pyproject.toml and the Makefile. A changed key builds a fresh one with `make venv`.
VENV_KEY=$( { cat "$ROOT/src/edged/setup.cfg" "$ROOT/src/edged/pyproject.toml" "$ROOT/src/edged/Makefile"; \
    basename "$TARBALL"; } 2>/dev/null | sha256sum | cut -c1-12)
VENV_TAR=$EDGED_CACHE/venv-arm64-$VENV_KEY.$(tar_ext)
VENV_STATE=built
if [ -s "$VENV_TAR" ]; then
    decompress < "$VENV_TAR" | tar -C "$ROOT/src/edged" -xf -
    touch "$ROOT/src/edged/.venv/.stamp"
    VENV_STATE=cached
fi
set +e
run_in "cd /src/edged && make venv" 2>&1 | grep -v "WARNING: Location 'file:" | sed 's/^/  /'
venv_rc=${PIPESTATUS[0]}
set -e
[ "$venv_rc" = 0 ] || die "make venv failed inside the chroot (exit $venv_rc)"
if [ "$VENV_STATE" = built ]; then
    find "$EDGED_CACHE" -maxdepth 1 -name 'venv-arm64-*' -delete
    tar -C "$ROOT/src/edged" -cf - .venv | compress > "$VENV_TAR.part" && mv "$VENV_TAR.part" "$VENV_TAR"
fi
TV1=$(date +%s)
set +e
# tests/platform/emulation.py skips, with their reasons, the few tests whose premise fails under emulation
run_in "cd /src/edged && make test PYTEST_ARGS='-p no:cacheprovider -p tests.platform.emulation ${PYTEST_ARGS:-}'" 2>&1 \
    | tee "$WORK/pytest.log" | sed 's/^/  /'
test_rc=${PIPESTATUS[0]}
set -e
TT1=$(date +%s)

if [ "${ARM64_RSS:-1}" != 0 ]; then
    say "daemon RSS under arm64 (one model, both models)"
    run_in "cd /src/edged && .venv/bin/python tests/platform/rss.py --seconds 10" 2>&1 | sed 's/^/  /' \
        || say "warning: the RSS measurement failed (the suite result stands)"
fi
if [ "${ARM64_SIGTERM_PROBE:-1}" != 0 ]; then
    say "SIGTERM right after READY, under qemu (tests/platform/sigterm_probe.py; diagnostic, does not change the result)"
    run_in "cd /src/edged && .venv/bin/python tests/platform/sigterm_probe.py --tries 4 --grace 60" 2>&1 | sed 's/^/  /' || true
fi
TR1=$(date +%s)

summary=$(grep -E '^(=+ )?[0-9]+ (passed|failed)' "$WORK/pytest.log" | tail -1 || true)
printf '\n%s\n' "---- test-arm64 ----"
printf 'suite (arm64, qemu cortex-a72, %s):   %s\n' "$(run_in 'python3 -V' 2>/dev/null)" "${summary:-no pytest summary}"
printf 'root file system: %ss (%s)   unpack+mounts: %ss   venv: %ss (%s)   tests: %ss   rss+probe: %ss   total: %ss\n' \
    "$((TB1 - TB0))" "$CACHE_STATE" "$((TB2 - TB1))" \
    "$((TV1 - TV0))" "$VENV_STATE" "$((TT1 - TV1))" "$((TR1 - TT1))" "$(( $(date +%s) - T0 ))"
exit "$test_rc"
