"""The platform stages (tests/platform/): shell hygiene, the loud SKIPPED path, and the RSS probe.

The stages themselves (`make test-arm64`, `make test-systemd`) need root, debootstrap and minutes; CI
runs them. Here: they parse, lint clean, skip loudly without root, and the memory probe they run under
arm64 works against a real daemon on this machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLATFORM = ROOT / "tests" / "platform"
SCRIPTS = sorted(PLATFORM.glob("*.sh"))


def test_stage_scripts_parse_and_are_executable() -> None:
    assert {p.name for p in SCRIPTS} >= {"arm64.sh", "systemd.sh", "lib.sh"}
    for p in SCRIPTS:
        res = subprocess.run(["bash", "-n", str(p)], capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stderr
        if p.name != "lib.sh":
            assert os.access(p, os.X_OK), f"{p.name} is not executable (make runs it directly)"


def test_stage_scripts_are_shellcheck_clean() -> None:
    sc = shutil.which("shellcheck")
    if sc is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    res = subprocess.run([sc, "-x", *map(str, SCRIPTS)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("stage", ["arm64.sh", "systemd.sh"])
def test_a_stage_without_root_skips_loudly_and_passes(stage: str) -> None:
    if os.geteuid() != 0:
        argv = ["bash", str(PLATFORM / stage)]
    elif shutil.which("runuser") and Path("/usr/sbin/nologin").exists():
        argv = ["runuser", "-u", "nobody", "--", "bash", str(PLATFORM / stage)]
    else:
        pytest.skip("cannot drop root here")
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/",
                         env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SKIPPED: test-" in res.stdout and "needs root" in res.stdout


@pytest.mark.timeout(240)
def test_rss_probe_measures_a_real_daemon(tmp_path: Path) -> None:
    out = tmp_path / "rss.json"
    res = subprocess.run([sys.executable, str(PLATFORM / "rss.py"), "--only", "mlp (onnx)", "--seconds", "1",
                          "--rate", "20", "--json", str(out)], capture_output=True, text=True, timeout=200, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads(out.read_text())
    (row,) = data["configs"]
    assert row["config"] == "mlp (onnx)" and row["decided"] > 0
    assert 10 < row["VmHWM"] < 2000 and row["VmRSS"] <= row["VmHWM"]
    assert "VmRSS" in res.stdout


def test_emulation_skips_name_existing_tests_with_reasons() -> None:
    """tests/platform/emulation.py: every entry names a test that exists, with a reason."""
    import ast

    from tests.platform.emulation import NOT_MEANINGFUL

    for nodeid, reason in NOT_MEANINGFUL.items():
        path, _, name = nodeid.partition("::")
        tree = ast.parse((ROOT / path).read_text())
        names = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        assert name.split("[")[0] in names, f"{nodeid}: no such test"
        assert len(reason) > 40, f"{nodeid}: say why it cannot mean anything under emulation"
