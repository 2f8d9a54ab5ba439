"""The promises of edged.service and edged-fog.service, checked under a real systemd.

Runs as root INSIDE a booted container (tests/platform/systemd.sh) after ``make install-service`` and
``hw/install.sh --fog``; standard library only. Each check prints one row (name, PASS/FAIL, seconds,
detail) and the table is printed again at the end; the exit status is the number of failed checks
(capped at 100). ``SYSTEMD_CHECKS=a,b`` runs only those checks (plus what they depend on: the unit is
started by whichever check needs it).

Inputs come from ``edged sim`` over ZeroMQ to the edge's source. The services bind 127.0.0.1 only
(the container shares the host's network): the ports move by drop-in, through the environment names
the unit comments document (``EDGED_SOURCES__0__ENDPOINT``, ``EDGED_FOG__ENDPOINT``).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

EDGED = "/usr/local/bin/edged"
CONF = Path("/etc/edged/edged.toml")
DROPIN_DIR = Path("/etc/systemd/system/edged.service.d")
FOG_DROPIN_DIR = Path("/etc/systemd/system/edged-fog.service.d")
LOG_DIR = Path("/var/log/edged")
STATE_DIR = Path("/var/lib/edged")
LOG_GROUP = "edged-log"


class CheckFailed(AssertionError):
    pass


def need(cond: object, message: str) -> None:
    if not cond:
        raise CheckFailed(message)


def sh(cmd: str, timeout: float = 120, check: bool = False, user: Optional[str] = None) -> subprocess.CompletedProcess:
    """Run a shell command (as ``user`` via runuser when given); output captured as text."""
    argv = ["/bin/bash", "-c", cmd]
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise CheckFailed(f"`{cmd}` exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-600:]}")
    return proc


def show(unit: str, *props: str) -> Dict[str, str]:
    out = sh(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props), check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def wait_for(pred: Callable[[], object], timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


def journal_cursor() -> str:
    out = sh("journalctl -n 1 -o json --no-pager").stdout.strip().splitlines()
    return json.loads(out[-1])["__CURSOR"] if out else ""


def journal(unit: str, after: str = "", extra: str = "") -> List[Dict[str, object]]:
    """Journal entries of a unit (messages from the service and from PID 1 about it), oldest first."""
    sh("journalctl --sync", timeout=30)
    cmd = f"journalctl -u {unit} -o json --no-pager {extra}"
    if after:
        cmd += f" --after-cursor={shlex.quote(after)}"
    rows = []
    for line in sh(cmd).stdout.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def messages(rows: List[Dict[str, object]]) -> List[str]:
    return [str(r.get("MESSAGE", "")) for r in rows]


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise CheckFailed("no free TCP port")


# --------------------------------------------------------------------------- decision log helpers
def log_files(name: str = "decisions.jsonl") -> List[Path]:
    """The log and its rotated files, oldest first (by last write; the live file last)."""
    files = [p for p in LOG_DIR.glob(name + "*") if p.is_file()]
    return sorted(files, key=lambda p: (p.name == name, p.stat().st_mtime))


def decision_records() -> List[dict]:
    """Every record in the decision log and its rotated files (plain or .gz); torn lines counted apart."""
    out: List[dict] = []
    for p in log_files():
        opener = gzip.open if p.name.endswith(".gz") else open
        with opener(p, "rt", encoding="utf-8", errors="replace") as f:  # type: ignore[operator]
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    out.append(json.loads(line))
                except ValueError:
                    out.append({"torn": line[:80]})
    return out


def decided_count() -> int:
    return sum(1 for r in decision_records() if "decision" in r)


def wait_count(target: int, timeout: float) -> int:
    n = decided_count()
    deadline = time.monotonic() + timeout
    while n < target and time.monotonic() < deadline:
        time.sleep(0.3)
        n = decided_count()
    return n


# --------------------------------------------------------------------------- the harness
class Harness:
    def __init__(self) -> None:
        self.rows: List[Tuple[str, bool, float, str]] = []
        self.port = free_port(5555)
        self.fog_port = free_port(5556)
        self.facts: Dict[str, object] = {}
        self.lines_at_start = 0  # decision lines before the instance that ready-before-active started

    # ---- unit control
    def write_dropin(self, name: str, body: str, directory: Path = DROPIN_DIR) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(body)
        sh("systemctl daemon-reload", check=True)

    def remove_dropin(self, name: str, directory: Path = DROPIN_DIR) -> None:
        try:
            (directory / name).unlink()
        except FileNotFoundError:
            pass
        sh("systemctl daemon-reload", check=True)

    def ensure_running(self) -> None:
        if show("edged", "ActiveState")["ActiveState"] != "active":
            sh("systemctl reset-failed edged; systemctl start edged", timeout=700, check=True)
        need(show("edged", "ActiveState")["ActiveState"] == "active", "edged is not active")

    def main_pid(self, unit: str = "edged") -> int:
        return int(show(unit, "MainPID")["MainPID"])

    def sim(self, count: int, rate: float = 0, corrupt: float = 0.0, models: str = "mlp,cnn",
            timeout: float = 300) -> int:
        """Send ``count`` valid inputs (plus corrupt frames); return how many edged sim says it sent."""
        model_args = " ".join(f"--model {m}" for m in models.split(","))
        out = sh(f"{EDGED} sim --zmq tcp://127.0.0.1:{self.port} {model_args} --count {count} --rate {rate} "
                 f"--corrupt {corrupt} --progress 0", timeout=timeout, check=True).stdout
        m = re.search(r"sent (\d+) inputs", out)
        need(m, f"no summary from edged sim: {out!r}")
        return int(m.group(1)) if m else 0

    # ---- running checks
    def run(self, name: str, fn: Callable[[], str]) -> None:
        t0 = time.monotonic()
        try:
            detail = fn() or ""
            ok = True
        except CheckFailed as exc:
            ok, detail = False, str(exc)
        except Exception as exc:  # a harness error is a failed check, with its traceback below
            ok, detail = False, f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        dt = time.monotonic() - t0
        self.rows.append((name, ok, dt, detail))
        print(f"  {'PASS' if ok else 'FAIL'}  {name:<24} {dt:7.1f} s  {detail}", flush=True)

    def table(self) -> str:
        w = max(len(r[0]) for r in self.rows)
        lines = [f"{'check':<{w}}  result  seconds  detail", f"{'-' * w}  ------  -------  ------"]
        for name, ok, dt, detail in self.rows:
            lines.append(f"{name:<{w}}  {'PASS' if ok else 'FAIL':<6}  {dt:7.1f}  {detail}")
        failed = sum(1 for r in self.rows if not r[1])
        lines.append(f"{len(self.rows) - failed} passed, {failed} failed")
        return "\n".join(lines)

    # =========================================================================== checks
    def check_install(self) -> str:
        rc = int(os.environ.get("INSTALL_RC", "0"))
        need(rc == 0, f"install exited {rc}")
        for p in ("/etc/systemd/system/edged.service", "/etc/systemd/system/edged-fog.service",
                  "/etc/logrotate.d/edged", "/opt/edged/bin/edged", EDGED, str(CONF)):
            need(Path(p).exists(), f"{p} missing after install")
        sh(f"{EDGED} check-config {CONF}", check=True)
        for group in ("dialout", "i2c", LOG_GROUP):
            need(sh(f"getent group {group}").returncode == 0, f"group {group} missing")
        need(sh("getent passwd edged").returncode == 0, "system user edged missing")
        journald = sh("/opt/edged/bin/python -c 'import systemd.journal'").returncode == 0
        self.facts["systemd-python"] = journald
        return f"{os.environ.get('INSTALL_S', '?')} s; systemd-python {'built' if journald else 'MISSING'}"

    def check_exposure(self) -> str:
        scores = {}
        for unit in ("edged.service", "edged-fog.service"):
            out = sh(f"systemd-analyze security {unit} --no-pager", timeout=60).stdout
            m = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\S+)", out)
            need(m, f"no exposure score for {unit}")
            assert m is not None
            scores[unit] = f"{m.group(1)} {m.group(2)}"
            need(float(m.group(1)) <= 2.5, f"{unit} exposure {m.group(1)} > 2.5")
        return ", ".join(f"{u.split('.')[0]} {s}" for u, s in scores.items())

    def configure_ports(self) -> None:
        self.write_dropin("10-test-ports.conf", (
            "[Service]\n"
            f"Environment=EDGED_SOURCES__0__ENDPOINT=tcp://127.0.0.1:{self.port}\n"
            f"Environment=EDGED_FOG__ENDPOINT=tcp://127.0.0.1:{self.fog_port}\n"))
        self.write_dropin("10-test-ports.conf", (
            "[Service]\nExecStart=\n"
            f"ExecStart=/opt/edged/bin/edged fog --bind tcp://127.0.0.1:{self.fog_port} --workers 2\n"),
            FOG_DROPIN_DIR)

    def check_ready_before_active(self) -> str:
        self.configure_ports()
        cursor = journal_cursor()
        self.lines_at_start = decided_count()
        sh("systemctl start --no-block edged", check=True)
        seen: List[str] = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < 600:
            st = show("edged", "ActiveState", "SubState", "StatusText")
            state = f"{st['ActiveState']}/{st['SubState']}"
            if not seen or seen[-1] != state:
                seen.append(state)
            if st["ActiveState"] in ("active", "failed", "inactive") and len(seen) > 1 or st["ActiveState"] == "failed":
                break
            time.sleep(0.05)
        start_s = time.monotonic() - t0
        need(seen[-1] == "active/running", f"states {seen}")
        need("activating/start" in seen, f"never seen activating before active: {seen}")
        msgs = messages(journal("edged", cursor))
        ready = next((i for i, m in enumerate(msgs) if m.startswith("ready in")), None)
        started = next((i for i, m in enumerate(msgs) if m.startswith("Started ")), None)
        need(ready is not None and started is not None, f"no 'ready in' or 'Started' line: {msgs[-8:]}")
        need(ready is not None and started is not None and ready < started,
             "systemd reported Started before edged logged READY")
        profiled = any("profiling" in m for m in msgs)
        self.facts["first_start_s"] = round(start_s, 1)
        return f"{' -> '.join(seen)} in {start_s:.1f} s ({'profiled models first' if profiled else 'cached profile'})"

    def check_service_identity(self) -> str:
        self.ensure_running()
        pid = self.main_pid()
        status = Path(f"/proc/{pid}/status").read_text()
        uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
        groups = set(re.search(r"^Groups:\s*(.*)$", status, re.M).group(1).split())  # type: ignore[union-attr]
        need(uid != 0, "runs as root")
        user = sh(f"getent passwd {uid} | cut -d: -f1").stdout.strip()
        want = {g: sh(f"getent group {g} | cut -d: -f3").stdout.strip() for g in ("dialout", "i2c")}
        missing = [g for g, gid in want.items() if gid not in groups]
        need(not missing, f"supplementary groups lack {missing}: {groups}")
        need(re.search(r"^NoNewPrivs:\s+1", status, re.M), "NoNewPrivs is not set")
        need(re.search(r"^CapEff:\s+0+$", status, re.M), "has effective capabilities")
        gid = int(re.search(r"^Gid:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
        group = sh(f"getent group {gid} | cut -d: -f1").stdout.strip()
        return f"user {user} ({uid}), group {group}, + dialout i2c; no capabilities, NoNewPrivs"

    def check_directories(self) -> str:
        self.ensure_running()
        pid = self.main_pid()
        env = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
        need(env.get("STATE_DIRECTORY") == str(STATE_DIR), f"STATE_DIRECTORY={env.get('STATE_DIRECTORY')}")
        need(env.get("LOGS_DIRECTORY") == str(LOG_DIR), f"LOGS_DIRECTORY={env.get('LOGS_DIRECTORY')}")
        need((STATE_DIR / "profile.json").exists() or any(STATE_DIR.rglob("profile*.json")),
             f"no profile in {STATE_DIR}: {[p.name for p in STATE_DIR.iterdir()]}")
        need(wait_for(lambda: (LOG_DIR / "decisions.jsonl").exists(), 10) or True, "")
        st_mode = oct(STATE_DIR.stat().st_mode & 0o777)
        lg_mode = oct(LOG_DIR.stat().st_mode & 0o777)
        need(st_mode == "0o700", f"{STATE_DIR} mode {st_mode}, expected 0o700 (keys and profile private)")
        need(lg_mode == "0o750", f"{LOG_DIR} mode {lg_mode}, expected 0o750 (group {LOG_GROUP} reads)")
        lg_group = sh(f"stat -c %G {LOG_DIR}").stdout.strip()
        need(lg_group == LOG_GROUP, f"{LOG_DIR} group {lg_group}, expected {LOG_GROUP}")
        return f"{STATE_DIR} {st_mode[2:]}, {LOG_DIR} {lg_mode[2:]} group {lg_group}"

    def check_inputs_recorded(self) -> str:
        self.ensure_running()
        before = decided_count()
        t0 = time.monotonic()
        sent = self.sim(2000, rate=0)
        need(sent == 2000, f"edged sim sent {sent}")
        got = wait_count(before + 2000, 120) - before
        time.sleep(1.0)
        extra = decided_count() - before - got
        need(got == 2000 and extra == 0, f"{got + extra} of 2000 recorded")
        return f"2000 of 2000 recorded in {time.monotonic() - t0:.1f} s"

    def check_status_counters(self) -> str:
        self.ensure_running()
        need(int(show("edged", "NRestarts")["NRestarts"]) == 0, "edged restarted since it was started")
        decided = decided_count()
        sent = self.sim(100, rate=0)
        wait_count(decided + sent, 60)
        expected = decided_count() - self.lines_at_start  # what this instance decided
        interval = 2.0  # daemon.status_interval_s
        text = ""

        def current() -> bool:
            nonlocal text
            text = show("edged", "StatusText")["StatusText"]
            m = re.match(r"(\d+) decided \(local (\d+), offload (\d+), fallback (\d+), rejected (\d+)\)", text)
            return bool(m) and m is not None and int(m.group(1)) == expected == sum(int(m.group(i)) for i in range(2, 6))

        need(wait_for(current, 5 * interval), f"STATUS= {text!r}, expected {expected} decided")
        return f"STATUS={text}"

    def check_journald_fields(self) -> str:
        self.ensure_running()
        if not self.facts.get("systemd-python"):
            raise CheckFailed("systemd-python is not installed in /opt/edged: no structured fields")
        cursor = journal_cursor()
        self.sim(200, rate=0, corrupt=0.3)
        rows: List[Dict[str, object]] = []

        def have() -> bool:
            nonlocal rows
            rows = [r for r in journal("edged", cursor) if "DECISION" in r or "MODEL" in r]
            return bool(rows)

        need(wait_for(have, 20, 0.5), "no journal entry with DECISION=/MODEL= after 200 inputs with corrupt frames")
        fields = sorted({k for r in rows for k in r if k in ("MODEL", "DECISION", "SOURCE", "SEQ", "PRIORITY")})
        decisions = sorted({str(r.get("DECISION")) for r in rows if "DECISION" in r})
        by_field = sh("journalctl -u edged --no-pager -o cat DECISION=rejected | head -1").stdout.strip()
        need(by_field, "journalctl DECISION=rejected matches nothing")
        return f"{len(rows)} entries with {','.join(fields)}; DECISION in {decisions}"

    def check_reload_and_logrotate(self) -> str:
        self.ensure_running()
        cursor = journal_cursor()
        before = decided_count()
        rot_before = len(log_files())
        sim = subprocess.Popen(["/bin/bash", "-c", f"{EDGED} sim --zmq tcp://127.0.0.1:{self.port} --model mlp "
                                f"--model cnn --count 3000 --rate 300 --progress 0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        actions: List[Tuple[float, str]] = []
        for at, what in ((2.0, "systemctl reload edged"), (4.0, "logrotate -f /etc/logrotate.d/edged"),
                         (6.5, "logrotate -f /etc/logrotate.d/edged"), (8.0, "systemctl reload edged")):
            time.sleep(max(0.0, at - (actions[-1][0] if actions else 0.0)))
            sh(what, check=True, timeout=60)
            actions.append((at, what))
        out, err = sim.communicate(timeout=120)
        need(sim.returncode == 0, f"edged sim failed: {err[-300:]}")
        got = wait_count(before + 3000, 60) - before
        time.sleep(1.0)
        recs = decision_records()
        torn = [r for r in recs if "torn" in r]
        got = sum(1 for r in recs if "decision" in r) - before
        need(not torn, f"{len(torn)} torn lines: {torn[:2]}")
        need(got == 3000, f"{got} of 3000 lines after 2 reloads and 2 logrotate runs")
        reopened = sum(1 for m in messages(journal("edged", cursor)) if "reopened" in m)
        need(reopened >= 4, f"edged logged {reopened} reopen(s), expected 4 (2 reloads + 2 postrotate SIGHUPs)")
        files = [p.name for p in log_files()]
        need(len(files) >= rot_before + 2, f"logrotate made no new files: {files}")
        unreadable = [p.name for p in log_files() if (p.stat().st_mode & 0o040) == 0]
        need(not unreadable, f"rotated files not group-readable: {unreadable}")
        return f"3000 of 3000 lines across {len(files)} files; {reopened} reopens; no torn line"

    def check_tail_as_users(self) -> str:
        self.ensure_running()
        sh(f"id reader >/dev/null 2>&1 || useradd --create-home --groups {LOG_GROUP} reader", check=True)
        sh("id stranger >/dev/null 2>&1 || useradd --create-home stranger", check=True)
        ok = sh(f"cd ~ && {EDGED} tail --json", user="reader", timeout=60)
        need(ok.returncode == 0, f"reader (group {LOG_GROUP}): exit {ok.returncode}: {ok.stderr.strip()[-400:]}")
        lines = [ln for ln in ok.stdout.splitlines() if ln.startswith("{")]
        need(len(lines) >= 2000, f"reader saw {len(lines)} records")
        no = sh(f"cd ~ && {EDGED} tail", user="stranger", timeout=60)
        need(no.returncode != 0, "stranger could read the decision log")
        need("Traceback" not in no.stderr, f"stranger got a traceback: {no.stderr[-400:]}")
        need("sudo" in no.stderr and LOG_GROUP in no.stderr, f"message does not say what to do: {no.stderr.strip()}")
        root = sh(f"{EDGED} tail --json | wc -l", timeout=60)
        need(int(root.stdout.strip() or 0) == len(lines), "root and reader see different logs")
        return f"reader ({LOG_GROUP}) reads {len(lines)} records; stranger: {no.stderr.strip().splitlines()[-1][:90]}"

    def check_restart_on_sigkill(self) -> str:
        self.ensure_running()
        old = self.main_pid()
        n0 = int(show("edged", "NRestarts")["NRestarts"])
        cursor = journal_cursor()
        t0 = time.monotonic()
        sh("systemctl kill --signal=SIGKILL edged", check=True)
        need(wait_for(lambda: self.main_pid() not in (0, old) and show("edged", "ActiveState")["ActiveState"] == "active",
                      60), f"not restarted: {show('edged', 'ActiveState', 'SubState', 'Result')}")
        dt = time.monotonic() - t0
        n1 = int(show("edged", "NRestarts")["NRestarts"])
        need(n1 == n0 + 1, f"NRestarts {n0} -> {n1}")
        msgs = messages(journal("edged", cursor))
        need(not any(m.startswith("profiling") or "profile stored" in m for m in msgs), "profiled again after restart")
        return f"active again in {dt:.1f} s (RestartSec=2) with the cached profile"

    def check_watchdog(self) -> str:
        self.ensure_running()
        self.write_dropin("20-test-watchdog.conf", "[Service]\nWatchdogSec=4\nTimeoutAbortSec=3\n")
        try:
            sh("systemctl restart edged", timeout=300, check=True)
            old = self.main_pid()
            cursor = journal_cursor()
            t0 = time.monotonic()
            sh(f"kill -STOP {old}", check=True)
            need(wait_for(lambda: self.main_pid() not in (0, old) and
                          show("edged", "ActiveState")["ActiveState"] == "active", 90),
                 f"the frozen process was not replaced: {show('edged', 'ActiveState', 'SubState', 'Result')}")
            dt = time.monotonic() - t0
            msgs = messages(journal("edged", cursor))
            need(any("Watchdog timeout" in m for m in msgs), f"no 'Watchdog timeout' in the journal: {msgs[-6:]}")
        finally:
            self.remove_dropin("20-test-watchdog.conf")
            sh("systemctl restart edged", timeout=300)
        return f"SIGSTOPped: killed by the watchdog and active again in {dt:.1f} s (WatchdogSec=4 by drop-in)"

    def check_stop_drains(self) -> str:
        self.ensure_running()
        cursor = journal_cursor()
        sim = subprocess.Popen(["/bin/bash", "-c", f"exec {EDGED} sim --zmq tcp://127.0.0.1:{self.port} --model mlp "
                                f"--model cnn --count 0 --rate 0 --progress 0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3.0)
        t0 = time.monotonic()
        sh("systemctl stop edged", timeout=60, check=True)
        dt = time.monotonic() - t0
        sim.terminate()
        sim.communicate(timeout=30)
        st = show("edged", "Result", "ExecMainStatus", "ActiveState")
        need(st["Result"] == "success" and st["ExecMainStatus"] == "0", f"stop: {st}")
        msgs = messages(journal("edged", cursor))
        line = next((m for m in msgs if m.startswith("stopped: accepted")), "")
        m = re.match(r"stopped: accepted (\d+), decided (\d+), records lost (\d+)", line)
        need(m, f"no 'stopped: accepted ...' line: {msgs[-5:]}")
        assert m is not None
        accepted, decided, lost = (int(x) for x in m.groups())
        need(decided >= accepted and lost == 0, line)
        sh("systemctl start edged", timeout=300, check=True)
        return f"stopped in {dt:.1f} s under load: accepted {accepted}, decided {decided}, lost {lost}; exit 0"

    def check_config_error(self) -> str:
        self.ensure_running()
        good = CONF.read_text()
        n0 = int(show("edged", "NRestarts")["NRestarts"])
        bad = good.replace("profile_repeats = 3", "profile_repets = 3", 1)
        need(bad != good, "the example config has no 'profile_repeats = 3' line to break")
        CONF.write_text(bad)
        try:
            t0 = time.monotonic()
            res = sh("systemctl restart edged", timeout=120)
            dt = time.monotonic() - t0
            need(res.returncode != 0, "restart with a broken config succeeded")
            time.sleep(7.0)  # RestartSec=2: a restart loop would have run check-config 3 more times by now
            st = show("edged", "ActiveState", "Result", "NRestarts", "ExecMainStatus")
            status = sh("systemctl status edged --no-pager", timeout=30).stdout
            need(st["ActiveState"] == "failed", f"state after a config error: {st}")
            need(int(st["NRestarts"]) == n0, f"restarted {int(st['NRestarts']) - n0} time(s) on a config error")
            need("profile_repets" in status, f"the error is not in `systemctl status`:\n{status[-800:]}")
            need(re.search(r"Main process exited, code=exited, status=78", status),
                 f"edged run did not exit 78 (EX_CONFIG):\n{status[-800:]}")
        finally:
            CONF.write_text(good)
            sh("systemctl reset-failed edged")
        self.ensure_running()
        return f"failed in {dt:.1f} s with status=78/CONFIG, no restart in 7 s, the error on `systemctl status`"

    def check_fog_offload(self) -> str:
        t0 = time.monotonic()
        sh("systemctl start edged-fog", timeout=300, check=True)
        fog_start = time.monotonic() - t0
        st = show("edged-fog", "ActiveState", "StatusText", "MainPID")
        need(st["ActiveState"] == "active", f"edged-fog: {st}")
        fog_status = Path(f"/proc/{st['MainPID']}/status").read_text()
        need(not re.search(r"^Uid:\s+0\s", fog_status, re.M), "edged-fog runs as root")
        self.write_dropin("30-test-offload.conf", "[Service]\nEnvironment=EDGED_POLICY__DEFAULT=offload\n")
        try:
            sh("systemctl restart edged", timeout=300, check=True)
            need(wait_for(lambda: "fog up" in show("edged", "StatusText")["StatusText"], 30, 0.5),
                 f"edge never saw the fog up: {show('edged', 'StatusText')['StatusText']}")
            t_send = time.time()
            before = decided_count()
            sent = self.sim(300, rate=100)
            need(wait_count(before + sent, 60) >= before + sent, "not every input recorded")
            new = [r for r in decision_records() if "decision" in r and float(r.get("ts") or 0) >= t_send]
            need(len(new) == sent, f"{len(new)} decision lines for {sent} inputs")
            shares: Dict[str, int] = {}
            for r in new:
                shares[str(r["decision"])] = shares.get(str(r["decision"]), 0) + 1
            need(shares.get("offload", 0) >= 0.9 * sent, f"decisions {shares}")
        finally:
            self.remove_dropin("30-test-offload.conf")
        t1 = time.monotonic()
        sh("systemctl stop edged-fog", timeout=60, check=True)
        fst = show("edged-fog", "Result", "ExecMainStatus")
        need(fst["Result"] == "success", f"edged-fog stop: {fst}")
        return (f"fog READY in {fog_start:.1f} s; {len(new)} decisions {shares}; fog stopped cleanly in "
                f"{time.monotonic() - t1:.1f} s")


CHECKS: List[Tuple[str, str]] = [
    ("install", "check_install"),
    ("exposure", "check_exposure"),
    ("ready-before-active", "check_ready_before_active"),
    ("user-and-groups", "check_service_identity"),
    ("state-and-logs-dirs", "check_directories"),
    ("inputs-recorded", "check_inputs_recorded"),
    ("status-counters", "check_status_counters"),
    ("journald-fields", "check_journald_fields"),
    ("reload-and-logrotate", "check_reload_and_logrotate"),
    ("tail-as-users", "check_tail_as_users"),
    ("restart-on-sigkill", "check_restart_on_sigkill"),
    ("watchdog-on-sigstop", "check_watchdog"),
    ("stop-drains", "check_stop_drains"),
    ("config-error-no-loop", "check_config_error"),
    ("fog-offload", "check_fog_offload"),
]


def main() -> int:
    only = [c for c in os.environ.get("SYSTEMD_CHECKS", "").split(",") if c]
    h = Harness()
    print(f"systemd checks (edge port {h.port}, fog port {h.fog_port}):", flush=True)
    if "ready-before-active" not in only and only:
        h.configure_ports()
    for name, method in CHECKS:
        if only and name not in only:
            continue
        h.run(name, getattr(h, method))
    print("\n" + h.table(), flush=True)
    failed = sum(1 for r in h.rows if not r[1])
    if failed:
        print("\n--- journalctl -u edged (last 40) ---", flush=True)
        print(sh("journalctl -u edged -u edged-fog --no-pager -n 40").stdout, flush=True)
    return min(failed, 100)


if __name__ == "__main__":
    sys.exit(main())
