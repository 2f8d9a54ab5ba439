"""A real Mosquitto broker for tests: ``mosquitto -c <generated conf>`` on free loopback ports.

One anonymous listener (``port``) and, with ``users``, a second one (``auth_port``) that
needs a username/password (a ``mosquitto_passwd`` file). Persistence is on (in the
broker's temporary directory) so a broker stopped with SIGTERM and started again on the
same ports keeps persistent sessions and their queued QoS >= 1 messages. Never a system
service: the process belongs to the test, and :meth:`Broker.stop` ends it by its pid.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Dict, Optional

import pytest

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")

needs_mosquitto = pytest.mark.skipif(MOSQUITTO is None, reason="needs the mosquitto broker (apt-get install mosquitto)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_certs(d: Path) -> Dict[str, Path]:
    """A throw-away CA, a server certificate for DNS:localhost and a client certificate (openssl CLI)."""
    d.mkdir(parents=True, exist_ok=True)

    def ossl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=edged test CA",
         "-keyout", "ca.key", "-out", "ca.pem")
    for who, ext in (("server", "subjectAltName=DNS:localhost"), ("client", "extendedKeyUsage=clientAuth")):
        ossl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={who}", "-keyout", f"{who}.key",
             "-out", f"{who}.csr")
        (d / f"{who}.ext").write_text(ext + "\n")
        ossl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", f"{who}.ext", "-out", f"{who}.pem")
    return {"ca": d / "ca.pem", "server_cert": d / "server.pem", "server_key": d / "server.key",
            "client_cert": d / "client.pem", "client_key": d / "client.key"}


class Broker:
    """One mosquitto process; ``start()``/``stop()``/``restart()``; ``port`` and ``auth_port`` stay the same."""

    def __init__(self, workdir: Path, users: Optional[Dict[str, str]] = None, tls: bool = False) -> None:
        if MOSQUITTO is None:
            raise RuntimeError("mosquitto is not installed")
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.auth_port = free_port() if users else None
        #: a TLS listener that requires a client certificate (server cert for DNS:localhost only)
        self.tls_port = free_port() if tls else None
        self.certs: Dict[str, Path] = make_certs(self.dir / "certs") if tls else {}
        self.users = dict(users or {})
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = self.dir / "mosquitto.log"
        self.conf = self.dir / "mosquitto.conf"
        self._write_conf()

    def _write_conf(self) -> None:
        lines = [
            f"user {pwd.getpwuid(os.getuid()).pw_name}",  # as root, mosquitto would switch to user 'mosquitto'
            "per_listener_settings true",
            "persistence true",
            f"persistence_location {self.dir}/",
            "autosave_interval 0",
            "max_queued_messages 200000",
            "max_inflight_messages 0",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
        ]
        if self.users:
            pw = self.dir / "passwd"
            pw.write_text("")
            for user, password in self.users.items():
                subprocess.run([MOSQUITTO_PASSWD or "mosquitto_passwd", "-b", str(pw), user, password],
                               check=True, capture_output=True, timeout=30)
            os.chmod(pw, 0o600)
            acl = self.dir / "acl"  # every user may use everything but edged/results/denied/...
            acl.write_text("pattern readwrite #\npattern deny edged/results/denied/#\n")
            lines += [f"listener {self.auth_port} 127.0.0.1", "allow_anonymous false", f"password_file {pw}",
                      f"acl_file {acl}"]
        if self.tls_port:
            c = self.certs
            lines += [f"listener {self.tls_port} 127.0.0.1", "allow_anonymous true", f"cafile {c['ca']}",
                      f"certfile {c['server_cert']}", f"keyfile {c['server_key']}", "require_certificate true"]
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout_s: float = 10.0) -> Broker:
        assert self.proc is None, "already running"
        self.proc = subprocess.Popen([str(MOSQUITTO), "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
                self.proc = None
                raise RuntimeError(f"mosquitto exited at start: {err}\n{log}")
            if all(self._accepts(p) for p in (self.port, self.auth_port, self.tls_port) if p):
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not accept connections on {self.port} within {timeout_s} s")

    @staticmethod
    def _accepts(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc.stderr:
            proc.stderr.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(name="broker")
def broker_fixture(tmp_path: Path):
    """A running broker (anonymous ``port``; ``auth_port`` for user ``edge`` / ``s3cret``), stopped after the test."""
    with Broker(tmp_path / "mosquitto", users={"edge": "s3cret"}) as b:
        yield b
