"""The shipped systemd units, Jetson drop-in, logrotate config and hw/install.sh."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest

from edged.logs import JsonlWriter, read_records

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "systemd"
UNITS = ("edged.service", "edged-fog.service")
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)")


def _edged_bin() -> str:
    cand = Path(sys.executable).parent / "edged"
    found = str(cand) if cand.exists() else shutil.which("edged")
    if not found:
        pytest.skip("the edged console script is not installed in this environment")
    return found


def _staged_units(tmp_path: Path, with_jetson: bool = False) -> List[Path]:
    """Copies of the units with /opt/edged/bin/edged replaced by this venv's edged.

    `systemd-analyze verify` checks that every Exec*= binary exists; the units name the installed
    path /opt/edged/bin/edged, which does not exist on a build machine. Everything else is verbatim.
    """
    edged = _edged_bin()
    out = []
    for name in UNITS:
        text = (SYSTEMD / name).read_text()
        assert "/opt/edged/bin/edged" in text
        dst = tmp_path / name
        dst.write_text(text.replace("/opt/edged/bin/edged", edged))
        out.append(dst)
    if with_jetson:
        d = tmp_path / "edged.service.d"
        d.mkdir()
        shutil.copy(SYSTEMD / "jetson.conf", d / "jetson.conf")
    return out


@needs_analyze
@pytest.mark.timeout(60)
@pytest.mark.parametrize("with_jetson", [False, True], ids=["plain", "jetson-dropin"])
def test_systemd_analyze_verify_is_clean(tmp_path: Path, with_jetson: bool) -> None:
    units = _staged_units(tmp_path, with_jetson)
    res = subprocess.run([str(ANALYZE), "verify", *map(str, units)], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stderr == "", res.stderr


@needs_analyze
@pytest.mark.timeout(60)
def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: an unknown key is reported on stderr."""
    units = _staged_units(tmp_path)
    units[0].write_text(units[0].read_text().replace("[Service]\n", "[Service]\nDeviceAlow=char-ttyUSB rw\n"))
    res = subprocess.run([str(ANALYZE), "verify", str(units[0])], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path)
    assert "DeviceAlow" in res.stderr


def _exposure(unit: Path) -> float:
    res = subprocess.run([str(ANALYZE), "security", "--offline=yes", "--no-pager", str(unit)], capture_output=True,
                         text=True, timeout=60, cwd=unit.parent)
    if res.returncode != 0 and "offline" in (res.stderr or ""):
        pytest.skip(f"systemd-analyze security --offline unsupported here: {res.stderr.strip()[:200]}")
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", res.stdout)
    if not m:
        pytest.skip(f"no exposure score in systemd-analyze output (rc {res.returncode}): {res.stderr[:200]}")
    return float(m.group(1))


@needs_analyze
@pytest.mark.timeout(60)
def test_security_exposure_stays_low(tmp_path: Path) -> None:
    units = _staged_units(tmp_path)
    scores = {u.name: _exposure(u) for u in units}
    print("systemd-analyze security exposure:", scores)
    # 10 = unprotected, < 2 = "OK"; a lost hardening line pushes the score up
    assert scores["edged.service"] <= 2.5, scores
    assert scores["edged-fog.service"] <= 2.0, scores


def test_unit_settings_the_daemon_relies_on() -> None:
    edge = (SYSTEMD / "edged.service").read_text()
    for line in ("Type=notify", "NotifyAccess=main", "WatchdogSec=30", "Restart=on-failure", "KillSignal=SIGTERM",
                 "TimeoutStopSec=30", "User=edged", "Group=edged-log", "StateDirectory=edged",
                 "StateDirectoryMode=0700", "LogsDirectory=edged", "LogsDirectoryMode=0750", "UMask=0027",
                 "RestartPreventExitStatus=78",
                 "ProtectSystem=strict", "NoNewPrivileges=yes", "DevicePolicy=closed", "DeviceAllow=char-ttyUSB rw",
                 "DeviceAllow=char-ttyACM rw", "DeviceAllow=/dev/i2c-1 rw", "SupplementaryGroups=dialout i2c",
                 "ExecStartPre=-/opt/edged/bin/edged check-config /etc/edged/edged.toml",
                 "ExecStart=/opt/edged/bin/edged run --config /etc/edged/edged.toml",
                 "ExecReload=/bin/kill -HUP $MAINPID", "MemoryDenyWriteExecute=no"):
        assert re.search(rf"^{re.escape(line)}$", edge, re.M), line
    unit_section = edge.split("[Service]")[0]
    assert "StartLimitBurst=" in unit_section and "StartLimitIntervalSec=" in unit_section
    # globs are not supported in DeviceAllow= paths
    for text in (edge, (SYSTEMD / "jetson.conf").read_text()):
        for m in re.finditer(r"^DeviceAllow=(\S+)", text, re.M):
            assert "*" not in m.group(1) and "?" not in m.group(1), m.group(0)
    jetson = (SYSTEMD / "jetson.conf").read_text()
    assert "After=jtop.service" in jetson and "Wants=jtop.service" in jetson and "SupplementaryGroups=jtop" in jetson


def test_install_sh_dry_run(tmp_path: Path) -> None:
    script = ROOT / "hw" / "install.sh"
    assert os.access(script, os.X_OK)
    res = subprocess.run([str(script), "--dry-run", "--board", "jetson", "--fog"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "[jetson]" in out
    assert "/etc/systemd/system/edged.service" in out and "/etc/systemd/system/edged-fog.service" in out
    assert "/etc/systemd/system/edged.service.d/jetson.conf" in out
    assert "/etc/logrotate.d/edged" in out and "systemctl daemon-reload" in out
    assert "systemctl enable --now edged.service" in out and "journalctl -u edged" in out and "edged tail -f" in out
    assert not Path("/opt/edged-never").exists()
    bad = subprocess.run([str(script), "--no-such-option"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "unknown option" in bad.stderr
    generic = subprocess.run([str(script), "--dry-run", "--board", "generic"], capture_output=True, text=True,
                             timeout=60)
    assert generic.returncode == 0 and "jetson.conf" not in generic.stdout and "edged-fog" not in generic.stdout


def test_install_sh_is_shellcheck_clean() -> None:
    sc = shutil.which("shellcheck")
    if sc is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    res = subprocess.run([sc, str(ROOT / "hw" / "install.sh")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.timeout(60)
def test_real_logrotate_with_sighup_reopen_loses_nothing(tmp_path: Path) -> None:
    """The shipped logrotate config, pointed at a temp dir; postrotate's SIGHUP becomes reopen()."""
    lr = shutil.which("logrotate") or ("/usr/sbin/logrotate" if os.path.exists("/usr/sbin/logrotate") else None)
    if lr is None:
        pytest.skip("logrotate is not installed")
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o755)
    conf = (SYSTEMD / "edged.logrotate").read_text().replace("/var/log/edged/", f"{logs}/")
    conf = re.sub(r"(postrotate\n).*?(\n\s*endscript)", r"\1        true\2", conf, flags=re.S)
    (tmp_path / "edged.logrotate").write_text(conf)
    w = JsonlWriter(logs / "decisions.jsonl", max_bytes=0)
    seq = 0

    def write(n: int) -> None:
        nonlocal seq
        for _ in range(n):
            w.write({"seq": seq, "decision": "local"})
            seq += 1

    for _round in range(2):
        write(100)
        res = subprocess.run([lr, "-f", "-s", str(tmp_path / "state"), str(tmp_path / "edged.logrotate")],
                             capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stderr
        write(20)  # before SIGHUP the daemon still appends to the renamed file
        w.reopen()  # what SIGHUP does
        time.sleep(1.1)  # dateformat has 1 s resolution
    write(10)
    w.close()
    names = sorted(p.name for p in logs.iterdir())
    assert len(names) == 3 and any(n.endswith(".gz") for n in names), names  # delaycompress: one .gz, one plain
    assert [r["seq"] for r in read_records(logs)] == list(range(seq))


def test_config_errors_do_not_restart_loop() -> None:
    """check-config (ExecStartPre=) and every edged command exit EXIT_CONFIG on a bad config; both
    units list it in RestartPreventExitStatus=, so the error stays on top of `systemctl status`."""
    from edged.errors import EXIT_CONFIG

    for name in UNITS:
        text = (SYSTEMD / name).read_text()
        m = re.search(r"^RestartPreventExitStatus=(.+)$", text, re.M)
        assert m and str(EXIT_CONFIG) in m.group(1).split(), name


def test_bad_config_exits_with_the_status_the_units_expect(tmp_path: Path) -> None:
    from edged.errors import EXIT_CONFIG

    bad = tmp_path / "edged.toml"
    bad.write_text((SYSTEMD / "edged.toml").read_text().replace("profile_repeats = 3", "profile_repets = 3"))
    res = subprocess.run([sys.executable, "-m", "edged", "check-config", str(bad)], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert res.returncode == EXIT_CONFIG, res.stderr
    assert "profile_repets" in res.stderr


def _comment_lines(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))


def test_unit_comments_name_real_environment_overrides_and_ports(tmp_path: Path) -> None:
    """The examples in the units' comments work when pasted into a drop-in."""
    from edged.config import load_config

    comments = "\n".join(_comment_lines((SYSTEMD / n).read_text()) for n in (*UNITS, "jetson.conf"))
    names = re.findall(r"\b(EDGED_[A-Z0-9_]+)=([^\s),]+)", comments)
    assert names, "no EDGED_* example in the unit comments"
    for var, value in names:
        assert "__" in var, f"{var}: config overrides are EDGED_<SECTION>__<KEY> (double underscore)"
        if "<" in var:
            continue
        cfg = load_config(SYSTEMD / "edged.toml", environ={var: value}, check_models=False)
        got: object = cfg
        for part in var[len("EDGED_"):].lower().split("__"):
            got = got[int(part)] if part.isdigit() else getattr(got, part)  # type: ignore[index]
        assert str(got) == value, f"{var}={value} set {got!r}"
    assert "EDGED_FOG_ENDPOINT" not in comments
    # the ports: sensors send to 5555 (the zmq source), edges reach the fog on 5556 (edged fog --bind)
    fog_unit = (SYSTEMD / "edged-fog.service").read_text()
    assert re.search(r"^ExecStart=.*--bind tcp://\*:5556\b", fog_unit, re.M)
    for var, value in names:
        if var == "EDGED_FOG__ENDPOINT":
            assert value.endswith(":5556"), f"{var}={value}: the fog binds 5556"
        if var.startswith("EDGED_SOURCES__") and "ENDPOINT" in var:
            assert value.endswith(":5555"), f"{var}={value}: the sensors' port is 5555"
    assert 'endpoint = "tcp://*:5555"' in (SYSTEMD / "edged.toml").read_text()
