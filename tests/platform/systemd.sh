#!/usr/bin/env bash
# make test-systemd: edged as a service under a real systemd (PID 1 of a container), installed the way
# docs/deploy.md says, with every promise of the units checked (tests/platform/systemd_check.py).
#
#   1. a Debian Bookworm amd64 root file system (systemd 252, as on Raspberry Pi OS Bookworm), cached
#      as a tarball under ~/.cache/edged;
#   2. booted with `systemd-nspawn --register=no --keep-unit -b` (no machined or host systemd needed),
#      entered with `nsenter -t <container PID 1> -a`;
#   3. `make install-service` and `hw/install.sh --fog` from a copy of this work tree, as root;
#   4. tests/platform/systemd_check.py inside: a table of checks (name, PASS/FAIL, seconds); any FAIL
#      fails the stage.
#
# Exit: 0 when every check passed or the stage was SKIPPED (not root, no nspawn, the container does not
# boot here), else non-zero. Environment: EDGED_CACHE, EDGED_WORK (see lib.sh), SYSTEMD_CHECKS=a,b
# (run only these checks), KEEP_CONTAINER=1 (leave it running for a look; prints how to enter it).
set -euo pipefail
STAGE=test-systemd
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=tests/platform/lib.sh
. "$HERE/lib.sh"

T0=$(date +%s)
need_root
command -v dpkg >/dev/null 2>&1 || skip "not a Debian-like host (no dpkg): debootstrap needs one"
need_tools debootstrap:debootstrap systemd-container:systemd-nspawn util-linux:nsenter
[ -d /sys/fs/cgroup ] || skip "no /sys/fs/cgroup: systemd-nspawn cannot boot a container here"

# --- the cached root file system ------------------------------------------------------------------
# systemd + libnss-systemd (DynamicUser names), python3-venv (install.sh), gcc/python3-dev/pkg-config/
# libsystemd-dev (systemd-python: journald fields), logrotate, sudo + make (`sudo make install-service`)
PACKAGES=systemd,systemd-sysv,libnss-systemd,dbus,python3,python3-venv,python3-dev,gcc,libc6-dev,make,pkg-config,libsystemd-dev,logrotate,procps,sudo,ca-certificates,gzip

# shellcheck disable=SC2317  # called by cached_rootfs_tarball
setup_container_rootfs() {
    local root=$1
    echo edged-test > "$root/etc/hostname"
    : > "$root/etc/machine-id"
    # a quiet, quick boot: no login prompts on the console
    ln -sf /dev/null "$root/etc/systemd/system/console-getty.service"
    ln -sf /dev/null "$root/etc/systemd/system/getty@tty1.service"
    # journald: keep everything in memory, no rate limit in the way of the checks
    mkdir -p "$root/etc/systemd/journald.conf.d"
    printf '[Journal]\nStorage=volatile\nRateLimitIntervalSec=0\n' > "$root/etc/systemd/journald.conf.d/edged-test.conf"
}

say "root file system: amd64 $SUITE"
TB0=$(date +%s)
TARBALL=$(cached_rootfs_tarball amd64 "$PACKAGES" setup_container_rootfs) || die "debootstrap of the amd64 root file system failed"
TB1=$(date +%s)
CACHE_STATE=cached
[ "$(stat -c %Y "$TARBALL")" -lt "$TB0" ] || CACHE_STATE=built

WORK=$(mktemp -d "$EDGED_WORK/edged-systemd.XXXXXX")
ROOT=$WORK/root
NSPAWN_PID=""
# shellcheck disable=SC2317  # called from the EXIT trap
cleanup() {
    if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
        if [ "${KEEP_CONTAINER:-0}" = 1 ]; then
            say "container left running: nsenter -t $LEADER -a /bin/bash   (stop: kill $NSPAWN_PID; rm -rf $WORK)"
            return
        fi
        [ -n "${LEADER:-}" ] && kill -RTMIN+4 "$LEADER" 2>/dev/null  # systemd: poweroff
        for _ in $(seq 1 30); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.5; done
        kill "$NSPAWN_PID" 2>/dev/null || true
        sleep 1
        kill -9 "$NSPAWN_PID" 2>/dev/null || true
    fi
    unmount_all
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
unpack_rootfs "$TARBALL" "$ROOT"
repo_snapshot "$REPO" "$ROOT/usr/src/edged"
host_pip_config "$ROOT"
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
printf '127.0.0.1\tlocalhost\n127.0.1.1\tedged-test\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$ROOT/etc/hosts"
BINDS=()
for d in $(local_pip_dirs); do BINDS+=("--bind-ro=$d"); done
mkdir -p "$EDGED_CACHE/pip-amd64"
BINDS+=("--bind=$EDGED_CACHE/pip-amd64:/root/.cache/pip")
PIP_ENV=$(host_pip_env)
TB2=$(date +%s)

# --- boot ---------------------------------------------------------------------------------------
say "booting the container (systemd-nspawn -b)"
# the host network (pip reaches PyPI during the install; the services bind 127.0.0.1 only)
systemd-nspawn --register=no --keep-unit -b -D "$ROOT" --console=pipe -M edged-test "${BINDS[@]}" \
    < /dev/null > "$WORK/console.log" 2>&1 &
NSPAWN_PID=$!

# the container's PID 1: the process under nspawn whose own PID namespace calls it 1
find_leader() {
    local pid
    for pid in $(ps -e -o pid= --forest 2>/dev/null); do
        [ "$pid" = "$NSPAWN_PID" ] && continue
        grep -qE '^NSpid:\s+[0-9]+\s+1$' "/proc/$pid/status" 2>/dev/null || continue
        # a descendant of our nspawn
        local p=$pid
        while [ -n "$p" ] && [ "$p" -gt 1 ]; do
            p=$(awk '/^PPid:/ {print $2}' "/proc/$p/status" 2>/dev/null)
            [ "$p" = "$NSPAWN_PID" ] && { echo "$pid"; return 0; }
        done
    done
    return 1
}
LEADER=""
for _ in $(seq 1 100); do
    kill -0 "$NSPAWN_PID" 2>/dev/null || break
    LEADER=$(find_leader || true)
    [ -n "$LEADER" ] && break
    sleep 0.2
done
if [ -z "$LEADER" ]; then
    tail -20 "$WORK/console.log" | sed 's/^/  console: /'
    skip "systemd-nspawn could not boot a container on this machine (see the console lines above)"
fi

# cexec CMD: a shell in the container, root, clean environment
cexec() {
    # shellcheck disable=SC2086
    nsenter -t "$LEADER" -a /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        LANG=C.UTF-8 TERM=dumb $PIP_ENV /bin/bash -c "$1"
}

state=""
for _ in $(seq 1 120); do
    state=$(cexec 'systemctl is-system-running' 2>/dev/null || true)
    case "$state" in running|degraded) break ;; esac
    sleep 0.5
done
case "$state" in
    running|degraded) ;;
    *)
        tail -30 "$WORK/console.log" | sed 's/^/  console: /'
        skip "the container's systemd did not finish booting (state '${state:-none}')"
        ;;
esac
TBOOT=$(date +%s)
say "container up: systemd $(cexec 'systemctl --version | head -1 | cut -d" " -f2'), state $state, PID 1 = host PID $LEADER"
[ "$state" = degraded ] && cexec 'systemctl --failed --no-legend' | sed 's/^/  failed unit: /'

# --- install as docs/deploy.md says ------------------------------------------------------------------
say "installing: cd /usr/src/edged && sudo make install-service && sudo hw/install.sh --fog"
set +e
cexec 'cd /usr/src/edged && sudo make install-service && sudo hw/install.sh --fog' > "$WORK/install.log" 2>&1
install_rc=$?
set -e
grep -vE 'WARNING: Location|^\s*$' "$WORK/install.log" | sed 's/^/  install: /' | tail -40
TINST=$(date +%s)

# --- the checks ---------------------------------------------------------------------------------------
set +e
cexec "INSTALL_RC=$install_rc INSTALL_S=$((TINST - TBOOT)) SYSTEMD_CHECKS='${SYSTEMD_CHECKS:-}' \
    python3 /usr/src/edged/tests/platform/systemd_check.py"
rc=$?
set -e
TEND=$(date +%s)
printf '\n%s\n' "---- test-systemd ----"
printf 'root file system: %ss (%s)   unpack: %ss   boot: %ss   install: %ss   checks: %ss   total: %ss\n' \
    "$((TB1 - TB0))" "$CACHE_STATE" "$((TB2 - TB1))" "$((TBOOT - TB2))" "$((TINST - TBOOT))" "$((TEND - TINST))" \
    "$((TEND - T0))"
exit "$rc"
