"""`edged tail` by a user who may not read the service's logs: advice, not a traceback.

The real case: /var/log/edged is edged:edged-log 0750 (systemd/edged.service) and the user is not in
edged-log. Here a real unprivileged process (root drops to nobody after importing) meets a real
0750 directory; tests/platform/systemd_check.py does the same with real users under systemd.
"""

from __future__ import annotations

import grp
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator, List

import pytest

from edged import tail as tail_mod
from edged.errors import EdgedError

REPO = Path(__file__).resolve().parent.parent
GRANTED_GID = 54321  # a group id no one has; the log directory is given to it

DROP_AND_TAIL = """
import gettext, gzip, json, locale, os, sys, grp, pwd
import edged.cli, edged.tail, edged.logs
edged.cli.build_parser(["tail"]).parse_args(["tail"])  # argparse's lazy imports, while /root is readable
groups = [int(g) for g in sys.argv[2].split(",") if g]
os.setgroups(groups)
os.setgid(65534)
os.setuid(65534)
sys.exit(edged.cli.main(["tail", "--no-summary", "--json", "--dir", sys.argv[1]]))
"""


@pytest.fixture
def service_like_logs() -> Iterator[Path]:
    """A 0750 log directory owned by root:GRANTED_GID holding one decision line (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to hand the directory to another group and drop to nobody")
    base = Path(tempfile.mkdtemp(prefix="edged-tail-perm-"))
    try:
        base.chmod(0o755)
        logs = base / "edged"
        logs.mkdir()
        (logs / "decisions.jsonl").write_text('{"ts": 1.0, "model": "mlp", "decision": "local", "seq": 0}\n')
        os.chown(logs, 0, GRANTED_GID)
        os.chown(logs / "decisions.jsonl", 0, GRANTED_GID)
        logs.chmod(0o750)
        (logs / "decisions.jsonl").chmod(0o640)
        yield logs
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def _tail_as_nobody(logs: Path, groups: List[int]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", DROP_AND_TAIL, str(logs), ",".join(map(str, groups))],
                          capture_output=True, text=True, cwd=REPO, timeout=60)


@pytest.mark.timeout(60)
def test_a_user_outside_the_group_gets_advice_not_a_traceback(service_like_logs: Path) -> None:
    res = _tail_as_nobody(service_like_logs, [])
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert f"cannot read {service_like_logs}" in res.stderr and "permission denied" in res.stderr
    assert "sudo edged tail" in res.stderr


@pytest.mark.timeout(60)
def test_a_member_of_the_granted_group_reads_the_log(service_like_logs: Path) -> None:
    res = _tail_as_nobody(service_like_logs, [GRANTED_GID])
    assert res.returncode == 0, res.stderr
    assert '"decision":"local"' in res.stdout


def _fake_group(monkeypatch: pytest.MonkeyPatch, members: List[str], gid: int = 4242) -> None:
    entry = grp.struct_group(("edged-log", "x", gid, members))

    def getgrnam(name: str) -> grp.struct_group:
        if name != "edged-log":
            raise KeyError(name)
        return entry

    monkeypatch.setattr(grp, "getgrnam", getgrnam)


def _hint(path: str = "/var/log/edged") -> str:
    exc = PermissionError(13, "Permission denied", path)
    err = tail_mod.permission_hint(exc)
    assert isinstance(err, EdgedError)
    return str(err)


def test_hint_without_the_group_says_sudo_and_reinstall(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> grp.struct_group:
        raise KeyError(name)

    monkeypatch.setattr(grp, "getgrnam", missing)
    text = _hint()
    assert "cannot read /var/log/edged: permission denied" in text
    assert "sudo edged tail" in text and "hw/install.sh" in text


def test_hint_outside_the_group_names_the_group_and_usermod(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_group(monkeypatch, [])
    monkeypatch.setattr(os, "getgroups", lambda: [])
    monkeypatch.setattr(os, "getgid", lambda: 1000)
    text = _hint()
    assert "sudo usermod -aG edged-log" in text and "sudo edged tail" in text


def test_hint_for_a_member_whose_session_predates_the_group(monkeypatch: pytest.MonkeyPatch) -> None:
    import pwd

    me = pwd.getpwuid(os.getuid()).pw_name
    _fake_group(monkeypatch, [me])
    monkeypatch.setattr(os, "getgroups", lambda: [])
    monkeypatch.setattr(os, "getgid", lambda: 1000)
    text = _hint()
    assert "log in again" in text and "newgrp edged-log" in text


def test_default_dir_prefers_the_one_holding_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty ~/.local/state/edged/logs (sudo edged check-config creates root's) must not hide the
    service's /var/log/edged from `sudo edged tail`."""
    service = tmp_path / "var-log-edged"
    service.mkdir()
    (service / "decisions.jsonl").write_text('{"decision": "local"}\n')
    (tmp_path / "state" / "edged" / "logs").mkdir(parents=True)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("LOGS_DIRECTORY", raising=False)
    monkeypatch.setattr(tail_mod, "SERVICE_LOG_DIR", service)
    assert tail_mod.resolve_log("decisions", None) == (service / "decisions.jsonl", "decisions")
    # a user's own logs still come first when they exist
    (tmp_path / "state" / "edged" / "logs" / "decisions.jsonl").write_text('{"decision": "local"}\n')
    assert tail_mod.resolve_log("decisions", None)[0] == tmp_path / "state" / "edged" / "logs" / "decisions.jsonl"
    # inside the service, $LOGS_DIRECTORY is the answer
    monkeypatch.setenv("LOGS_DIRECTORY", str(service))
    assert tail_mod.resolve_log("power", None) == (service / "power.jsonl", "power")
