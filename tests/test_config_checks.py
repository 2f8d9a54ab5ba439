"""check-config validates what `edged run` needs: each case through the real CLI and through load_config.

Endpoint and serial URL syntax, the types of power adapter options, model dirs that must exist,
sources that would clash, and errors in values set from the environment naming the variable.
`edged run` refuses the same configs the same way, before READY=1.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from edged.config import load_config
from edged.errors import EXIT_CONFIG, ConfigError

from .conftest import REPO, run_edged

ZMQ_EXPECTED = "expected tcp://HOST:PORT, ipc://PATH"
SCHEMES = "loop://, socket://, rfc2217://, spy://, alt://, hwgrep://, cp2110://"

# (name, TOML text, environment, the error line after "WHERE: ") -- WHERE is FILE:LINE, or the variable
CASES = [
    ("risk not mean+kdev", '[policy]\nrisk = "mean+x"\n', {},
     'policy.risk = \'mean+x\': expected "mean" or "mean+<k>dev" with k >= 0, e.g. "mean+1dev"'),
    ("makespan weight negative", '[policy]\nmakespan_weight = -1\n', {}, "policy.makespan_weight = -1"),
    ("fog endpoint without ://", '[fog]\nendpoint = "tcp//10.0.0.2:5556"\n', {},
     "fog.endpoint = 'tcp//10.0.0.2:5556': " + ZMQ_EXPECTED + " or inproc://NAME (missing '://' after 'tcp')"),
    ("fog port out of range", '[fog]\nendpoint = "tcp://10.0.0.2:65536"\n', {},
     "fog.endpoint = 'tcp://10.0.0.2:65536': " + ZMQ_EXPECTED + " or inproc://NAME "
     "(tcp needs a port 1-65535, not '65536')"),
    ("fog connects to *", '[fog]\nendpoint = "tcp://*:5556"\n', {},
     "fog.endpoint = 'tcp://*:5556': " + ZMQ_EXPECTED),
    ("fog over udp", '[fog]\nendpoint = "udp://10.0.0.2:5556"\n', {},
     "fog.endpoint = 'udp://10.0.0.2:5556': " + ZMQ_EXPECTED + " or inproc://NAME "
     "(transport 'udp' is not one edged can use)"),
    ("source bind port 0", '[[sources]]\ntype = "zmq"\nendpoint = "tcp://*:0"\n', {},
     "sources[0].endpoint = 'tcp://*:0': " + ZMQ_EXPECTED + " or inproc://NAME "
     "(tcp needs a port 1-65535 or '*' for any free port, not '0')"),
    ("source without port", '[[sources]]\ntype = "zmq"\nendpoint = "tcp://eth0"\n', {},
     "sources[0].endpoint = 'tcp://eth0': " + ZMQ_EXPECTED + " or inproc://NAME ('eth0' has no ':PORT')"),
    ("serial unknown scheme", '[[sources]]\ntype = "serial"\nurl = "usb://ttyUSB0"\n', {},
     "sources[0].url = 'usb://ttyUSB0': expected a device path (/dev/ttyUSB0, /dev/serial/by-id/...) or a URL "
     f"with a scheme pyserial knows: {SCHEMES} (scheme 'usb' is unknown)"),
    ("serial relative path", '[[sources]]\ntype = "serial"\nurl = "ttyUSB0"\n', {},
     "sources[0].url = 'ttyUSB0': expected a device path"),
    ("serial socket without port", '[[sources]]\ntype = "serial"\nurl = "socket://mcu.local"\n', {},
     "sources[0].url = 'socket://mcu.local': expected socket://HOST:PORT[?options]"),
    ("ina219 busnum is a string", '[power.ina219]\nbusnum = "i2c-1"\n', {},
     "power.ina219.busnum = 'i2c-1': expected an integer"),
    ("ina219 gain is a float", '[power.ina219]\ngain = 1.5\n', {},
     "power.ina219.gain = 1.5: expected a string or an integer"),
    ("ina219 shunt is a bool", '[power.ina219]\nshunt_ohms = true\n', {},
     "power.ina219.shunt_ohms = True: expected a number"),
    ("jtop interval is a string", '[power.jtop]\ninterval = "fast"\n', {},
     "power.jtop.interval = 'fast': expected a number"),
    ("jtop factory cannot be configured", '[power.jtop]\njtop_factory = "jtop.jtop"\n', {},
     "power.jtop.jtop_factory = 'jtop.jtop': expected a Callable"),
    ("hwmon names is not a list", '[power.hwmon]\nnames = "ina219"\n', {},
     "power.hwmon.names = 'ina219': expected a list of strings"),
    ("model dir does not exist", '[models]\ndirs = ["/nonexistent/edged-models"]\n', {},
     "models.dirs[0] = '/nonexistent/edged-models': expected an existing directory of <model>/manifest.json "
     "folders: /nonexistent/edged-models does not exist"),
    ("spool_records negative", '[logs]\nspool_records = -1\n', {}, "logs.spool_records = -1: expected a value >= 0"),
    ("two sources, one name",
     '[[sources]]\ntype = "zmq"\nname = "a"\nendpoint = "tcp://*:5555"\n'
     '[[sources]]\ntype = "zmq"\nname = "a"\nendpoint = "tcp://*:5560"\n', {},
     "sources[1].name = 'a': expected a name no other source has (sources[0] has it"),
    ("two sources bind one port",
     '[[sources]]\ntype = "zmq"\nname = "a"\nendpoint = "tcp://*:5555"\n'
     '[[sources]]\ntype = "zmq"\nname = "b"\nendpoint = "tcp://127.0.0.1:5555"\n', {},
     "sources[1].endpoint = 'tcp://127.0.0.1:5555': expected an endpoint no other source uses "
     "(sources[0] already binds 'tcp://*:5555')"),
    ("two sources open one port",
     '[[sources]]\ntype = "serial"\nname = "a"\nurl = "/dev/ttyACM0"\n'
     '[[sources]]\ntype = "serial"\nname = "b"\nurl = "/dev/ttyACM0"\n', {},
     "sources[1].url = '/dev/ttyACM0': expected a port no other source opens (sources[0] opens it)"),
    ("fog is this daemon",
     '[fog]\nendpoint = "tcp://localhost:5555"\n[[sources]]\ntype = "zmq"\nendpoint = "tcp://*:5555"\n', {},
     "fog.endpoint = 'tcp://localhost:5555': expected the fog node's address, not this daemon's own source "
     "sources[0] ('tcp://*:5555')"),
    # values from the environment: the message names the variable, not a line of the file
    ("env fog endpoint", '[fog]\nendpoint = "tcp://10.0.0.2:5556"\n', {"EDGED_FOG__ENDPOINT": "tcp//10.0.0.2:5556"},
     "EDGED_FOG__ENDPOINT (environment): fog.endpoint = 'tcp//10.0.0.2:5556': " + ZMQ_EXPECTED),
    ("env ina219 busnum", '[power.ina219]\nbusnum = 1\n', {"EDGED_POWER__INA219__BUSNUM": "i2c-1"},
     "EDGED_POWER__INA219__BUSNUM (environment): power.ina219.busnum = 'i2c-1': expected an integer"),
    ("env source endpoint", '[[sources]]\ntype = "zmq"\nendpoint = "tcp://*:5555"\n',
     {"EDGED_SOURCES__0__ENDPOINT": "tcp://*:99999"},
     "EDGED_SOURCES__0__ENDPOINT (environment): sources[0].endpoint = 'tcp://*:99999': " + ZMQ_EXPECTED),
    ("env model dir", "", {"EDGED_MODELS__DIRS": '["/nonexistent/env-models"]'},
     "EDGED_MODELS__DIRS (environment): models.dirs[0] = '/nonexistent/env-models': expected an existing directory"),
    ("env single underscore", "", {"EDGED_FOG_ENDPOINT": "tcp://10.0.0.2:5556"},
     "EDGED_FOG_ENDPOINT: not a config override: use two underscores between the section and the key, "
     "e.g. EDGED_FOG__ENDPOINT"),
]


def _write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "edged.toml"
    f.write_text("# test config\n" + text)
    return f


def _clean_env(extra: Dict[str, str]) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGED_") or k == "EDGED_MODELS_DIR"}
    env.update(extra)
    return env


def _line_of(f: Path, expected: str) -> Optional[str]:
    """FILE:LINE of the key the expected message is about (None for messages about the environment)."""
    if expected.startswith("EDGED_"):
        return None
    key = expected.split(" = ", 1)[0].split(":", 1)[0]
    leaf = re.sub(r"\[\d+\]", "", key).rsplit(".", 1)[-1]
    table = key.rsplit(".", 1)[0] if "." in key else ""
    lines = f.read_text().splitlines()
    if table.startswith("sources["):
        n = int(table[len("sources["):-1])
        starts = [i for i, ln in enumerate(lines) if ln.strip() == "[[sources]]"]
        lo, hi = starts[n], starts[n + 1] if n + 1 < len(starts) else len(lines)
    else:
        lo, hi = 0, len(lines)
    for i in range(lo, hi):
        if lines[i].split("=", 1)[0].strip() == leaf:
            return f"{f}:{i + 1}"
    return None


@pytest.mark.parametrize("name,text,env,expected", CASES, ids=[c[0] for c in CASES])
def test_load_config_refuses_with_the_message(tmp_path, name, text, env, expected):
    f = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(f, environ=env)
    lines = str(err.value).splitlines()
    hits = [ln for ln in lines if expected in ln]
    assert len(hits) == 1, f"{expected!r} not in:\n" + "\n".join(lines)
    where = _line_of(f, expected)
    if where is not None:
        assert hits[0].startswith(where + ": "), hits[0]
    else:  # a value from the environment never points at the file
        assert str(f) not in hits[0]


@pytest.mark.parametrize("name,text,env,expected", CASES, ids=[c[0] for c in CASES])
def test_check_config_cli_refuses_with_the_message(tmp_path, name, text, env, expected):
    f = _write(tmp_path, text)
    p = run_edged(["check-config", str(f)], env=_clean_env(env), timeout=60)
    assert p.returncode == EXIT_CONFIG, p.stdout + p.stderr
    assert expected in p.stderr and re.search(r"edged check-config: \d+ error\(s\)", p.stderr), p.stderr
    where = _line_of(f, expected)
    if where is not None:
        assert f"{where}: " in p.stderr


GOOD = """
[fog]
endpoint = "tcp://[::1]:5556"
[power.ina219]
busnum = 1
address = 0x41
gain = 8
bus_adc = "128samp"
shunt_ohms = 1
[power.jtop]
interval = 1
[power.hwmon]
names = ["ina219"]
[logs]
spool_records = 0
[[sources]]
type = "zmq"
name = "a"
endpoint = "tcp://*:5555"
[[sources]]
type = "zmq"
name = "b"
endpoint = "tcp://127.0.0.1:5556"
[[sources]]
type = "zmq"
name = "c"
endpoint = "ipc:///run/edged/in.sock"
[[sources]]
type = "zmq"
name = "d"
endpoint = "tcp://sensor-hub.lan:7000"
bind = false
[[sources]]
type = "serial"
name = "e"
url = "loop://"
[[sources]]
type = "serial"
name = "f"
url = "loop://"
[[sources]]
type = "serial"
name = "g"
url = "rfc2217://192.168.1.7:2217?logging=debug"
[[sources]]
type = "serial"
name = "h"
url = "spy:///dev/ttyUSB0?file=/tmp/spy.txt"
"""


def test_what_run_can_use_passes(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    f = _write(tmp_path, f'[models]\ndirs = ["{models}"]\n' + GOOD)
    cfg = load_config(f, environ={})
    assert cfg.power.ina219 == {"busnum": 1, "address": 0x41, "gain": 8, "bus_adc": "128samp", "shunt_ohms": 1}
    assert cfg.logs.spool_records == 0 and len(cfg.sources) == 8
    p = run_edged(["check-config", str(f), "--no-env"], env={"LOGS_DIRECTORY": str(tmp_path / "logs")})
    assert p.returncode == 0, p.stderr
    assert "8 source(s)" in p.stdout


def test_spool_records_defaults_and_env_override(tmp_path):
    f = _write(tmp_path, "")
    assert load_config(f, environ={}).logs.spool_records == 10000
    assert load_config(f, environ={"EDGED_LOGS__SPOOL_RECORDS": "25"}).logs.spool_records == 25
    with pytest.raises(ConfigError, match=re.escape("EDGED_LOGS__SPOOL_RECORDS (environment): "
                                                    "logs.spool_records = 'many': expected an integer")):
        load_config(f, environ={"EDGED_LOGS__SPOOL_RECORDS": "many"})


def test_every_error_is_reported_at_once(tmp_path):
    f = _write(tmp_path, '[fog]\nendpoint = "tcp//x:1"\n[power.ina219]\nbusnum = "i2c-1"\n'
                         '[models]\ndirs = ["/nonexistent/m"]\n')
    with pytest.raises(ConfigError) as err:
        load_config(f, environ={"EDGED_POWER__JTOP__INTERVAL": "soon"})
    text = str(err.value)
    for key in ("fog.endpoint", "power.ina219.busnum", "models.dirs[0]", "EDGED_POWER__JTOP__INTERVAL"):
        assert key in text
    assert len(text.splitlines()) == 4


def test_logs_dir_that_cannot_be_written_fails_check_config(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    f = _write(tmp_path, f'[logs]\ndir = "{blocker}/logs"\n')
    load_config(f, environ={})  # the config itself is fine: `run` checks the dir it will really use
    p = run_edged(["check-config", str(f), "--no-env"])
    assert p.returncode == 1  # not EX_CONFIG: a disk can come back, so the unit may retry
    assert f"logs dir {blocker}/logs does not exist and cannot be created: {blocker} is not a writable " \
           "directory" in p.stderr
    fresh = tmp_path / "new" / "logs"
    g = _write(tmp_path, f'[logs]\ndir = "{fresh}"\n')
    assert run_edged(["check-config", str(g), "--no-env"]).returncode == 0
    assert not fresh.exists(), "a check creates nothing (edged run creates the dir it will use)"


class _NotifySocket:
    """systemd's end of sd_notify: collects the datagrams a daemon sends."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.1)
        self.messages: List[str] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except socket.timeout:
                continue
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self._t.join(2)
        self.sock.close()


@pytest.mark.parametrize("name,text,env,expected", [c for c in CASES if c[0] in (
    "fog endpoint without ://", "ina219 busnum is a string", "model dir does not exist", "env fog endpoint",
    "two sources bind one port")], ids=lambda v: v if isinstance(v, str) and len(v) < 40 else "")
def test_run_refuses_the_same_config_before_ready(tmp_path, name, text, env, expected):
    f = _write(tmp_path, text)
    ns = _NotifySocket(str(tmp_path / "notify.sock"))
    try:
        p = subprocess.run([sys.executable, "-m", "edged", "run", "--config", str(f), "--log-dir",
                            str(tmp_path / "logs"), "--state-dir", str(tmp_path / "state")],
                           capture_output=True, text=True, timeout=120, cwd=str(REPO),
                           env=_clean_env(dict(env, NOTIFY_SOCKET=ns.path)))
    finally:
        ns.close()
    assert p.returncode == EXIT_CONFIG, p.stderr
    assert expected in p.stderr and "edged run: error:" in p.stderr
    assert not [m for m in ns.messages if "READY=1" in m]
    assert not (tmp_path / "logs" / "decisions.jsonl").exists()


# --------------------------------------------------------------------------- property: our parser is never laxer than libzmq

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_PIECES = st.lists(st.sampled_from([
    "tcp", "ipc", "inproc", "udp", "TCP", "://", ":/", "//", ":", ";", "*", "[", "]", "::1", "%lo", "fe80::1",
    "127.0.0.1", "10.0.0.2", "0", "1", "5556", "65535", "65536", "-1", "host", "fog.local", "a_b", "-", ".", " ",
    "eth0", "/tmp/x", "@abs", "?", "é",
]), min_size=1, max_size=8).map("".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_PIECES, st.text(max_size=40)))
def test_an_endpoint_we_accept_is_one_libzmq_connects_to(text):
    import zmq

    from edged.endpoints import check_zmq_endpoint, parse_zmq_endpoint

    for bind in (False, True):
        ep, why = parse_zmq_endpoint(text, bind=bind)  # never raises
        assert (ep is None) == (why is not None)
        if why is not None:
            assert why.startswith("tcp://HOST:PORT, ipc://PATH")
    if check_zmq_endpoint(text, bind=False) is None and not text.startswith("inproc://"):
        with zmq.Context.instance().socket(zmq.DEALER) as s:
            s.setsockopt(zmq.LINGER, 0)
            s.connect(text)  # a ZMQError here is a bad endpoint that slipped through to the I/O thread


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=40), st.sampled_from(["loop://", "socket://h:1", "spy://", "/dev/ttyS0"])))
def test_serial_url_check_never_raises(text):
    from edged.endpoints import check_serial_url

    why = check_serial_url(text)
    assert why is None or isinstance(why, str)


def test_policy_risk_and_joint_reach_the_dispatcher_settings(tmp_path):
    from edged.offload.policy import parse_risk

    f = _write(tmp_path, '[policy]\nrisk = "mean+2.5dev"\njoint = false\n')
    cfg = load_config(f, environ={})
    assert (parse_risk(cfg.policy.risk), cfg.policy.joint, cfg.policy.makespan_weight) == (2.5, False, 0.0)
    assert load_config(_write(tmp_path, ""), environ={"EDGED_POLICY__RISK": "mean"}).policy.risk == "mean"
