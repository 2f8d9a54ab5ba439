#!/usr/bin/env bash
# Install edged as a systemd service on this device (Raspberry Pi, Jetson, any systemd Linux).
#
#   sudo hw/install.sh              # edge daemon: venv in /opt/edged, config, unit(s), logrotate
#   sudo hw/install.sh --fog        # also install edged-fog.service (on the fog node)
#   hw/install.sh --dry-run         # print every step, change nothing (no root needed)
#   hw/install.sh --root /tmp/r     # stage everything under /tmp/r (packaging, tests; no root needed)
#
# Idempotent: re-running upgrades edged in the venv and refreshes units/logrotate, and never
# overwrites an existing /etc/edged/edged.toml (the new example lands next to it as .example).
# Used by `make install-service`. See docs/deploy.md.
set -euo pipefail

ROOT=""
PREFIX=""
PYTHON=${PYTHON:-python3}
DRY_RUN=0
WITH_FOG=0
MODELS_SRC=
EXTRAS=""
BOARD=""
SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
    cat <<EOF
usage: $0 [--dry-run] [--root DIR] [--fog] [--prefix DIR] [--extras LIST] [--board pi|jetson|generic] [--python PY] [--models DIR]

  --dry-run       print what would be done, change nothing
  --root DIR      install under DIR instead of / (no groups, no daemon-reload, no root needed)
  --fog           also install edged-fog.service (run 'edged fog' on this machine)
  --prefix DIR    venv location (default ROOT/opt/edged; the units expect /opt/edged)
  --extras LIST   pip extras, comma separated (default: detected from the board)
  --board NAME    skip detection: pi, jetson or generic
  --python PY     interpreter for the venv (default python3, >= 3.9)
  --models DIR    copy each model directory in DIR (DIR/<name>/manifest.* + files) to /etc/edged/models,
                  where edged.service and edged-fog.service find them
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --fog) WITH_FOG=1 ;;
        --root) ROOT=${2:?--root needs a directory}; ROOT=${ROOT%/}; shift ;;
        --prefix) PREFIX=${2:?--prefix needs a directory}; shift ;;
        --extras) EXTRAS=${2:?--extras needs a list}; shift ;;
        --board) BOARD=${2:?--board needs pi, jetson or generic}; shift ;;
        --python) PYTHON=${2:?--python needs an interpreter}; shift ;;
        --models) MODELS_SRC=${2:?--models needs a directory}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

PREFIX=${PREFIX:-$ROOT/opt/edged}
CONF_DIR=$ROOT/etc/edged
UNIT_DIR=$ROOT/etc/systemd/system
LOGROTATE_DIR=$ROOT/etc/logrotate.d
BIN_LINK=$ROOT/usr/local/bin/edged

say() { printf '==> %s\n' "$*"; }
warn() { printf 'install.sh: warning: %s\n' "$*" >&2; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

# run CMD...: execute, or only print it with --dry-run
run() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '   + %s\n' "$*"
    else
        "$@"
    fi
}

# try CMD...: like run, but a failure is a warning (optional extras that may not build here)
try() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '   + %s   (optional)\n' "$*"
    elif ! "$@"; then
        warn "optional step failed (continuing): $*"
    fi
}

detect_board() {
    if [ -n "$BOARD" ]; then
        echo "$BOARD"
    elif [ -r /etc/nv_tegra_release ]; then
        echo jetson
    elif [ -r /proc/device-tree/model ] && tr -d '\0' </proc/device-tree/model | grep -q 'Raspberry Pi'; then
        echo pi
    else
        echo generic
    fi
}

# --- checks -----------------------------------------------------------------------------------
if [ "$DRY_RUN" = 0 ] && [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root (sudo $0), or try --dry-run"
fi
[ -f "$SRC_DIR/setup.cfg" ] || die "run from an edged checkout: $SRC_DIR/setup.cfg not found"
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (apt-get install python3 python3-venv)"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' \
    || die "$PYTHON is $("$PYTHON" -V 2>&1); edged needs Python >= 3.9"
if [ "$DRY_RUN" = 0 ] && [ ! -x "$PREFIX/bin/python" ]; then
    "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null \
        || die "$PYTHON cannot create a venv: apt-get install python3-venv"
fi

BOARD=$(detect_board)
case "$BOARD" in
    pi) DEFAULT_EXTRAS="pi" ;;
    jetson) DEFAULT_EXTRAS="jetson" ;;
    generic) DEFAULT_EXTRAS="" ;;
    *) die "--board $BOARD: expected pi, jetson or generic" ;;
esac
EXTRAS=${EXTRAS:-$DEFAULT_EXTRAS}
say "board: $BOARD; extras: ${EXTRAS:-none}; source: $SRC_DIR; venv: $PREFIX"

# --- venv and package ---------------------------------------------------------------------------
if [ -x "$PREFIX/bin/python" ]; then
    say "venv $PREFIX exists; upgrading edged in it"
else
    say "creating venv $PREFIX"
    run "$PYTHON" -m venv "$PREFIX"
fi
PIP=("$PREFIX/bin/python" -m pip --disable-pip-version-check --quiet)
run "${PIP[@]}" install --upgrade pip setuptools wheel
if [ -n "$EXTRAS" ]; then
    run "${PIP[@]}" install --upgrade "${SRC_DIR}[$EXTRAS]"
else
    run "${PIP[@]}" install --upgrade "$SRC_DIR"
fi
# Optional extras, each on its own so one that cannot build here does not block the rest:
# LiteRT (a second local backend) and systemd-python (journald fields; needs libsystemd-dev).
try "${PIP[@]}" install --upgrade "${SRC_DIR}[tflite]"
try "${PIP[@]}" install --upgrade "${SRC_DIR}[systemd]"
# The shipped models (edged.models looks in <venv>/share/edged/models outside a checkout).
run install -d -m 0755 "$PREFIX/share/edged/models"
for model_dir in "$SRC_DIR"/models/*/; do
    [ -d "$model_dir" ] || continue
    run cp -R "${model_dir%/}" "$PREFIX/share/edged/models/"
done
run install -d -m 0755 "$PREFIX/share/doc/edged"
run install -m 0644 "$SRC_DIR/docs/deploy.md" "$PREFIX/share/doc/edged/deploy.md"
run install -d -m 0755 "$(dirname "$BIN_LINK")"
run ln -sfn "$PREFIX/bin/edged" "$BIN_LINK"

# --- config -------------------------------------------------------------------------------------
run install -d -m 0755 "$CONF_DIR"
EXAMPLE="$SRC_DIR/systemd/edged.toml"
if [ -f "$EXAMPLE" ] || [ "$DRY_RUN" = 1 ]; then
    run install -m 0644 "$EXAMPLE" "$CONF_DIR/edged.toml.example"
    if [ -e "$CONF_DIR/edged.toml" ]; then
        say "keeping existing $CONF_DIR/edged.toml (compare with edged.toml.example)"
    else
        run install -m 0644 "$EXAMPLE" "$CONF_DIR/edged.toml"
    fi
else
    warn "$EXAMPLE not found; write $CONF_DIR/edged.toml yourself"
fi
# user models: /etc/edged/models is the units' ConfigurationDirectory/models, found by every edged command
# run under them (run, fog, profile) without a models.dirs entry; read-only for the services
run install -d -m 0755 "$CONF_DIR/models"
if [ -n "${MODELS_SRC:-}" ]; then
    [ -d "$MODELS_SRC" ] || die "--models $MODELS_SRC: not a directory"
    for m in "$MODELS_SRC"/*/; do
        [ -e "$m/manifest.json" ] || [ -e "$m/manifest.toml" ] || { warn "skipping $m: no manifest.json or manifest.toml"; continue; }
        name=$(basename "$m")
        run install -d -m 0755 "$CONF_DIR/models/$name"
        run cp -r --no-preserve=ownership "$m". "$CONF_DIR/models/$name/"
        say "model $name installed in $CONF_DIR/models/$name"
    done
fi

# --- groups the unit names ------------------------------------------------------------------------
# SupplementaryGroups= fails the start if a group does not exist; i2c is missing on non-Pi Debian.
GROUPS_NEEDED="dialout i2c"
[ "$BOARD" = jetson ] && GROUPS_NEEDED="$GROUPS_NEEDED jtop video"
for group in $GROUPS_NEEDED; do
    if [ -n "$ROOT" ]; then
        getent group "$group" >/dev/null || warn "group $group does not exist; create it on the target"
        continue
    fi
    if ! getent group "$group" >/dev/null; then
        run groupadd --system "$group"
    fi
done

# --- the service user -----------------------------------------------------------------------------
# edged.service runs as the system user edged, group edged-log (User=, Group=): its logs in
# /var/log/edged are 0750/0640, so members of edged-log read them without sudo
# (sudo usermod -aG edged-log "$USER"). Re-running keeps an existing user and group.
NOLOGIN=$(command -v nologin || echo /usr/sbin/nologin)
if [ -n "$ROOT" ]; then
    getent passwd edged >/dev/null || warn "user edged does not exist; on the target: groupadd --system edged-log;" \
        "useradd --system --gid edged-log --home-dir /var/lib/edged --no-create-home --shell $NOLOGIN edged"
else
    getent group edged-log >/dev/null || run groupadd --system edged-log
    getent passwd edged >/dev/null || run useradd --system --gid edged-log --home-dir /var/lib/edged \
        --no-create-home --shell "$NOLOGIN" --comment "edged daemon" edged
fi

# Logs written before the group existed (DynamicUser=yes, UMask=0077) are 0600: let the group read
# them. systemd moves /var/log/private/edged back to /var/log/edged and chowns it on the next start.
if [ -d "$ROOT/var/log/edged/" ]; then
    run chmod -R g+rX "$ROOT/var/log/edged/"
fi

# --- units and logrotate -------------------------------------------------------------------------
run install -d -m 0755 "$UNIT_DIR"
run install -m 0644 "$SRC_DIR/systemd/edged.service" "$UNIT_DIR/edged.service"
if [ "$BOARD" = jetson ]; then
    run install -d -m 0755 "$UNIT_DIR/edged.service.d"
    run install -m 0644 "$SRC_DIR/systemd/jetson.conf" "$UNIT_DIR/edged.service.d/jetson.conf"
fi
if [ "$WITH_FOG" = 1 ]; then
    run install -m 0644 "$SRC_DIR/systemd/edged-fog.service" "$UNIT_DIR/edged-fog.service"
fi
if [ -d "$LOGROTATE_DIR" ] || [ -n "$ROOT" ] || [ "$DRY_RUN" = 1 ]; then
    run install -d -m 0755 "$LOGROTATE_DIR"
    run install -m 0644 "$SRC_DIR/systemd/edged.logrotate" "$LOGROTATE_DIR/edged"
else
    warn "$LOGROTATE_DIR missing (logrotate not installed); edged still rotates by size itself"
fi

if [ -n "$ROOT" ]; then
    say "staged under $ROOT: no systemctl daemon-reload"
elif [ -d /run/systemd/system ] || [ "$DRY_RUN" = 1 ]; then
    run systemctl daemon-reload
else
    warn "systemd is not running here; skipped 'systemctl daemon-reload'"
fi

# --- next steps ---------------------------------------------------------------------------------
run "$PREFIX/bin/edged" check-config "$CONF_DIR/edged.toml" || warn "fix $CONF_DIR/edged.toml before starting"
cat <<EOF

edged is installed. Next:
  sudoedit $CONF_DIR/edged.toml                 # sources, models, fog endpoint, power sensor
  sudo systemctl enable --now edged.service     # start now and at boot
  systemctl status edged                        # READY / STATUS= counters
  journalctl -u edged -f                        # operational messages
  sudo usermod -aG edged-log "\$USER"            # read the logs without sudo (log in again)
  edged tail -f                                 # live decisions (/var/log/edged/decisions.jsonl)
  edged report /var/log/edged                   # summary tables
EOF
if [ "$WITH_FOG" = 1 ]; then
    echo "  sudo systemctl enable --now edged-fog.service # the fog node"
fi
