"""`edged tail` and `edged report` as real subprocesses on a generated log directory."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pytest

from edged.logs import JsonlWriter, read_records, write_stats_file
from edged.tail import Summary, fmt_us

MODELS = ("cnn", "mlp")
N = 1200
T0 = 1_718_000_000.0


def _decision(i: int, rng: np.random.Generator) -> Dict[str, Any]:
    model = MODELS[int(rng.integers(0, 2))]
    decision = str(rng.choice(["local", "local", "offload", "fallback", "rejected"], p=[0.3, 0.2, 0.3, 0.15, 0.05]))
    rejected = decision == "rejected"
    return {
        "ts": round(T0 + i * 0.01, 6), "seq": i, "source": "zmq:tcp://127.0.0.1:5555", "model": model,
        "policy": "threshold", "decision": decision, "reason": "wcet 900.0 us > threshold 500.0 us",
        "wcet_us": 900.0, "t_l_us": 120.5, "t_f_us": 300.0, "threshold_us": 500.0, "local_queue_us": 0.0,
        "expected_local_us": 900.0, "expected_offload_us": 420.5,
        "latency_us": None if rejected else float(np.round(rng.lognormal(7.0, 0.6), 1)),
        "exec_us": None if rejected else float(np.round(rng.uniform(200, 900), 1)),
        "transfer_us": float(np.round(rng.uniform(50, 300), 1)) if decision in ("offload", "fallback") else None,
        "result": None if rejected else {"label": int(rng.integers(0, 10)), "score": float(np.round(rng.random(), 4))},
        "error": "unknown model" if rejected else ("fog timeout" if decision == "fallback" else None),
        "energy_mj": None if rejected or i % 7 == 0 else float(np.round(rng.uniform(0.5, 3.0), 3)),
    }


@pytest.fixture(scope="module")
def logdir(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, List[Dict[str, Any]], List[Dict[str, Any]]]:
    d = tmp_path_factory.mktemp("logs")
    rng = np.random.default_rng(7)
    decisions = [_decision(i, rng) for i in range(N)]
    with JsonlWriter(d / "decisions.jsonl", max_bytes=200_000, backups=20) as w:  # several rotated files
        for r in decisions:
            w.write(r)
    power: List[Dict[str, Any]] = []
    with JsonlWriter(d / "power.jsonl") as w:
        for i in range(60):
            ts = round(T0 + i * 0.2, 6)
            recs = [
                {"ts": ts, "t_mono": i * 0.2, "seq": i, "source": "jtop", "rail": "VDD_IN", "volts": 5.0,
                 "amps": 1.0, "watts": round(4.0 + 0.5 * np.sin(i), 4), "total": True, "temp_c": 45.0 + i % 5,
                 "throttled": None},
                {"ts": ts, "t_mono": i * 0.2, "seq": i, "source": "jtop", "rail": "VDD_CPU_GPU_CV", "volts": None,
                 "amps": None, "watts": 1.5, "total": False, "temp_c": None, "throttled": None},
            ]
            for r in recs:
                w.write(r)
            power.extend(recs)
    with open(d / "decisions.jsonl", "ab") as f:  # kill -9 mid-write
        f.write(b'{"ts": 1718000099.0, "seq": 99999, "model": "cnn", "decis')
    return d, decisions, power


def edged(*argv: str, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="300")
    env.pop("LOGS_DIRECTORY", None)
    return subprocess.run([sys.executable, "-m", "edged", *argv], capture_output=True, text=True, timeout=timeout,
                          env=env, **kw)


def _pct(values: List[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


@pytest.mark.timeout(60)
def test_tail_prints_readable_lines_and_a_correct_summary(logdir: Any) -> None:
    d, decisions, power = logdir
    out = edged("tail", "--dir", str(d), "--no-color")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == N  # every record once, across the rotated files, torn line skipped
    assert "\033[" not in out.stdout
    for line, r in zip(lines, decisions):
        assert r["model"] in line and r["decision"] in line
        assert fmt_us(r["latency_us"]) in line
        if r["result"]:
            assert f"{r['result']['label']} ({r['result']['score']:.3f})" in line
        if r["error"]:
            assert f"error: {r['error']}" in line
    summary = [s for s in out.stderr.splitlines() if s.startswith("== ")]
    assert len(summary) == 1
    s = summary[0]
    assert s.startswith(f"== {N} inputs {(N - 1) / (decisions[-1]['ts'] - decisions[0]['ts']):.1f}/s")
    for decision in ("local", "offload", "fallback", "rejected"):
        share = sum(r["decision"] == decision for r in decisions) / N
        assert f"{decision} {share:.1%}" in s
    for model in MODELS:
        lat = [r["latency_us"] for r in decisions if r["model"] == model and r["latency_us"] is not None]
        assert f"{model} p50 {fmt_us(_pct(lat, 50))} p99 {fmt_us(_pct(lat, 99))}" in s
    board = [p["watts"] for p in power if p["total"]]
    assert f"power {np.mean(board):.2f} W mean" in s
    energy = [r["energy_mj"] for r in decisions if (r["model"], r["decision"]) == ("cnn", "local")
              and r["energy_mj"] is not None]
    assert f"cnn/local {np.mean(energy):.3g} mJ" in s
    assert f"errors {sum(1 for r in decisions if r['error'])}" in s
    assert "skipped 1 torn" in s


@pytest.mark.timeout(60)
def test_tail_json_passes_records_through_unchanged(logdir: Any) -> None:
    d, decisions, _ = logdir
    out = edged("tail", "--dir", str(d), "--json", "--no-summary")
    assert out.returncode == 0, out.stderr
    raw: List[str] = []
    for f in sorted(d.glob("decisions.jsonl.*"), key=lambda p: -int(p.suffix[1:])) + [d / "decisions.jsonl"]:
        raw.extend(line for line in f.read_text().splitlines() if line.endswith("}"))
    assert out.stdout.splitlines() == raw
    assert [json.loads(line) for line in out.stdout.splitlines()] == decisions
    assert out.stderr == ""


@pytest.mark.timeout(60)
def test_tail_filters_and_power_view(logdir: Any) -> None:
    d, decisions, power = logdir
    out = edged("tail", str(d / "decisions.jsonl"), "--json", "--model", "mlp",
                "--since", str(T0 + 5.0), "--no-summary")
    assert out.returncode == 0, out.stderr
    want = [r for r in decisions if r["model"] == "mlp" and r["ts"] >= T0 + 5.0]
    assert [json.loads(x) for x in out.stdout.splitlines()] == want
    out = edged("tail", "power", "--dir", str(d), "-n", "2")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and "VDD_IN*" in lines[0] and "W" in lines[0] and "VDD_CPU_GPU_CV" in lines[1]
    assert f"{len(power) // 2} power samples" in out.stderr
    bad = edged("tail", "--dir", str(d / "nowhere"))
    assert bad.returncode == 1 and "no log at" in bad.stderr and "Traceback" not in bad.stderr
    bad = edged("tail", "--dir", str(d), "--since", "yesterday-ish")
    assert bad.returncode == 1 and "--since" in bad.stderr


@pytest.mark.timeout(60)
def test_tail_into_a_closed_pipe_exits_quietly(logdir: Any) -> None:
    d, _, _ = logdir
    proc = subprocess.Popen([sys.executable, "-m", "edged", "tail", "--dir", str(d)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()  # like `| head -1`
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(30) == 0
    assert b"cnn" in first or b"mlp" in first
    assert "Traceback" not in err and "BrokenPipe" not in err
    shell = subprocess.run(f"{sys.executable} -m edged tail --dir {d} | head -3", shell=True, capture_output=True,
                           text=True, timeout=30)
    assert len(shell.stdout.splitlines()) == 3 and "Traceback" not in shell.stderr


class LineReader:
    """Reads a subprocess's stdout lines on a thread, so every wait has a timeout."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: queue.Queue[Optional[str]] = queue.Queue()
        self.thread = threading.Thread(target=self._run, args=(proc,), daemon=True)
        self.thread.start()

    def _run(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in iter(proc.stdout.readline, b""):
            self.lines.put(line.decode())
        self.lines.put(None)

    def readline(self, deadline: float) -> Optional[str]:
        try:
            return self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_tail_follow_sees_appended_lines_across_rotation(tmp_path: Path, sig: int) -> None:
    path = tmp_path / "decisions.jsonl"
    rng = np.random.default_rng(1)
    w = JsonlWriter(path, max_bytes=6_000, backups=50)
    old = [_decision(i, rng) for i in range(15)]
    for r in old:
        w.write(r)
    proc = subprocess.Popen([sys.executable, "-m", "edged", "tail", "-f", "--dir", str(tmp_path), "--no-color",
                             "--interval", "0.3", "--poll", "0.05"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        reader = LineReader(proc)
        deadline = time.monotonic() + 20
        backlog = [reader.readline(deadline) for _ in range(10)]  # the last 10 existing records
        for line, r in zip(backlog, old[-10:]):  # the backlog spans the rotated file too
            assert line is not None and r["model"] in line and fmt_us(r["latency_us"]) in line
        new = [_decision(i, rng) for i in range(1000, 1060)]  # 60 new records: crosses rotations
        for r in new:
            w.write(r)
        seen: List[str] = []
        while len(seen) < len(new):
            line = reader.readline(deadline)
            assert line is not None, f"tail -f stopped after {len(seen)} new lines"
            seen.append(line)
        assert w.stats()["rotations"] >= 1
        for line, r in zip(seen, new):
            assert r["model"] in line and r["decision"] in line and fmt_us(r["latency_us"]) in line
        proc.send_signal(sig)
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.wait(15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        w.close()
    assert proc.returncode == 0
    assert "Traceback" not in err.decode()
    summaries = [x for x in err.decode().splitlines() if x.startswith("== ")]
    assert summaries and summaries[-1].startswith("== 70 inputs")


@pytest.mark.timeout(60)
def test_report_tables_and_json(logdir: Any) -> None:
    d, decisions, power = logdir
    out = edged("report", str(d))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith(f"{N} inputs over")
    for model in MODELS:
        recs = [r for r in decisions if r["model"] == model]
        lat = [r["latency_us"] for r in recs if r["latency_us"] is not None]
        row = next(line for line in text.splitlines() if line.startswith(model + " ") and "%" in line)
        assert f" {len(recs)} " in row and fmt_us(_pct(lat, 50)) in row and fmt_us(max(lat)) in row
    assert "skipped 1 torn and 0 unparsable" in text
    assert "VDD_IN" in text and "throttling" in text

    js = edged("report", str(d), "--json")
    assert js.returncode == 0, js.stderr
    rep = json.loads(js.stdout)
    assert rep["inputs"] == N
    for model in MODELS:
        recs = [r for r in decisions if r["model"] == model]
        lat = [r["latency_us"] for r in recs if r["latency_us"] is not None]
        m = rep["per_model"][model]
        assert m["count"] == len(recs) and m["share"] == pytest.approx(len(recs) / N)
        for q in (50, 95, 99):
            assert m[f"latency_p{q}_us"] == pytest.approx(_pct(lat, q))
        assert m["errors"] == sum(1 for r in recs if r["error"])
        ex = [r["exec_us"] for r in recs if r["exec_us"] is not None]
        assert m["exec_mean_us"] == pytest.approx(np.mean(ex))
    pair = next(p for p in rep["per_model_decision"] if (p["model"], p["decision"]) == ("mlp", "offload"))
    recs = [r for r in decisions if (r["model"], r["decision"]) == ("mlp", "offload")]
    assert pair["count"] == len(recs)
    assert pair["energy_mean_mj"] == pytest.approx(np.mean([r["energy_mj"] for r in recs if r["energy_mj"]]))
    assert rep["per_decision"]["rejected"]["latency_p50_us"] is None
    assert rep["power"]["board_mean_w"] == pytest.approx(np.mean([p["watts"] for p in power if p["total"]]))
    assert rep["power"]["rails"]["VDD_CPU_GPU_CV"]["max_w"] == 1.5
    assert rep["power"]["temp_max_c"] == 49.0 and rep["power"]["throttled_seen"] is False


@pytest.mark.timeout(90)
def test_report_png(logdir: Any, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (extra 'report')")
    d, _, _ = logdir
    png = tmp_path / "report.png"
    out = edged("report", str(d), "--png", str(png), timeout=90)
    assert out.returncode == 0, out.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from edged.logs import read_records
    from edged.report import plot_layout

    decisions = read_records(d / "decisions.jsonl")
    models, energy, has_power = plot_layout(decisions, read_records(d / "power.jsonl"))
    assert len(models) >= 2 and energy and has_power, "a panel per model, energy beside, power beneath"
    import struct

    width, height = struct.unpack(">II", png.read_bytes()[16:24])
    assert width == 15 * 110 and height == int(2.6 * (len(models) + 1) * 110)


@pytest.mark.timeout(60)
def test_report_png_without_matplotlib_still_prints_tables(logdir: Any, tmp_path: Path) -> None:
    d, _, _ = logdir
    code = ("import sys; sys.modules['matplotlib'] = None\n"  # makes `import matplotlib` raise ImportError
            "from edged.cli import main\n"
            f"sys.exit(main(['report', {str(d)!r}, '--png', {str(tmp_path / 'x.png')!r}]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "PNG needs matplotlib: pip install 'edged[report]'" in out.stderr
    assert "per model" in out.stdout and not (tmp_path / "x.png").exists()


def test_summary_class_matches_numpy(logdir: Any) -> None:
    d, decisions, power = logdir
    s = Summary()
    for r in read_records(d):
        s.feed(r)
    for p in power:
        s.feed(p)
    got = s.as_dict()
    assert got["inputs"] == N and got["counts"]["offload"] == sum(r["decision"] == "offload" for r in decisions)
    lat = [r["latency_us"] for r in decisions if r["model"] == "cnn" and r["latency_us"] is not None]
    assert got["latency"]["cnn"]["p99_us"] == pytest.approx(_pct(lat, 99))
    assert got["power"]["mean_w"] == pytest.approx(np.mean([p["watts"] for p in power if p["total"]]))
    assert got["inputs_per_s"] == pytest.approx((N - 1) / (decisions[-1]["ts"] - decisions[0]["ts"]))
    assert "inputs" in s.render() and "power" in s.render()
    # tolerant of missing fields and the rails-list power form
    s2 = Summary()
    s2.feed({"decision": "local"})
    s2.feed({"ts": 1.0, "source": "jtop", "rails": [{"rail": "tot", "watts": 5.0, "total": True},
                                                     {"rail": "cpu", "watts": 2.0}]})
    assert s2.as_dict()["power"]["mean_w"] == 5.0 and s2.inputs == 1
    assert s2.render().startswith("1 inputs")


# ---------------------------------------------------------------------------------------------
# rejections: attributable ones as records, unattributable ones from the daemon's stats.json
# ---------------------------------------------------------------------------------------------
def _rejection_logdir(d: Path) -> List[Dict[str, Any]]:
    recs: List[Dict[str, Any]] = []
    for i in range(9):
        recs.append({"ts": T0 + i, "seq": i, "source": "zmq:tcp://*:5555", "sender": "s1", "model": "cnn",
                     "decision": "local", "reason": "wcet below threshold", "latency_us": 800.0, "error": None,
                     "result": {"label": 1, "score": 0.5}})
    for i in range(3):  # a sensor sending NaN: attributable (the header names the model)
        recs.append({"ts": T0 + 10 + i, "seq": 20 + i, "source": "zmq:tcp://*:5555", "sender": "s1", "model": "cnn",
                     "decision": "rejected", "reason": "non_finite", "error": "input 0 has NaN at index 2",
                     "latency_us": None, "result": None})
    recs.append({"ts": T0 + 14, "seq": 9, "source": "serial:/dev/ttyUSB0", "sender": "s2", "model": "cnn",
                 "decision": "rejected", "reason": "wrong_size", "detail": "expected 4 values, got 3",
                 "latency_us": None, "result": None})
    for i in range(4):
        recs.append({"ts": T0 + 15 + i, "seq": i, "source": "zmq:tcp://*:5555", "model": "mlp", "decision": "offload",
                     "reason": "fog faster", "latency_us": 2000.0, "result": {"label": 0, "score": 0.9}})
    with JsonlWriter(d / "decisions.jsonl") as w:
        w.write_many(recs)
    assert write_stats_file(d, {
        "ts": T0 + 20,
        "sources": {
            "zmq": {"accepted": 13, "rejected": {"non_finite": 3, "bad_header": 2, "too_large": 1},
                    "unattributed": {"bad_header": 2, "too_large": 1}, "lost_in_transit": 0, "garbage_bytes": 0},
            "serial": {"accepted": 1, "rejected": {"bad_cobs": 3, "truncated": 1}, "lost_in_transit": 2,
                       "garbage_bytes": 57},
        },
        "logs": {"decisions": {"written": 17, "spooled": 12, "lost": 3, "degraded": True,
                               "last_error": "writing decisions.jsonl: No space left on device (ENOSPC)"},
                 "power": {"written": 40, "spooled": 0, "lost": 0, "degraded": False, "last_error": None}},
    })
    return recs


@pytest.mark.timeout(60)
def test_tail_shows_rejections_with_reasons_and_unattributable_input(tmp_path: Path) -> None:
    recs = _rejection_logdir(tmp_path)
    out = edged("tail", "--dir", str(tmp_path), "--no-color")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == len(recs)
    rejected = [line for line in lines if " rejected " in line]
    assert len(rejected) == 4
    assert "non_finite (seq 20 from s1); error: input 0 has NaN at index 2" in rejected[0]
    assert "wrong_size (seq 9 from s2): expected 4 values, got 3" in rejected[3]
    summary = [s for s in out.stderr.splitlines() if s.startswith("== ")]
    assert len(summary) == 1
    s = summary[0]
    assert f"rejected {4 / len(recs):.1%}" in s
    assert "rejected: non_finite 3, wrong_size 1" in s
    # zmq: its `unattributed` (the NaN rejections have records); serial: no split given, so `rejected`
    assert "unattributable input: 7 (bad_cobs 3, bad_header 2, too_large 1, truncated 1), 57 garbage bytes" in s
    assert "LOG DEGRADED: decisions 12 records waiting in memory, 3 lost (writing decisions.jsonl: No space" in s
    (tmp_path / "stats.json").unlink()  # a daemon that has not written one yet: no such parts
    out = edged("tail", "--dir", str(tmp_path), "--no-color")
    assert out.returncode == 0 and "unattributable" not in out.stderr and "DEGRADED" not in out.stderr
    assert "rejected: non_finite 3, wrong_size 1" in out.stderr


@pytest.mark.timeout(60)
def test_report_breaks_rejections_down_per_model_and_shows_unattributable_input(tmp_path: Path) -> None:
    _rejection_logdir(tmp_path)
    out = edged("report", str(tmp_path))
    assert out.returncode == 0, out.stderr
    text = out.stdout.splitlines()
    i = text.index("rejected inputs per model (share within the model)")
    rows = {line.split()[0]: line for line in text[i + 3:i + 5]}
    assert rows["cnn"].split()[1:3] == ["4", f"{4 / 13:.1%}"] and rows["cnn"].endswith("non_finite 3, wrong_size 1")
    assert rows["mlp"].split()[1:3] == ["0", "0.0%"] and rows["mlp"].endswith("-")
    head = next(line for line in text if line.startswith("unattributable input: "))
    assert head.startswith("unattributable input: 7 (bad_cobs 3, bad_header 2, too_large 1, truncated 1)")
    serial = next(line for line in text if line.startswith("serial "))
    assert serial.split()[1:5] == ["1", "4", "2", "57"]
    decisions = next(line for line in text if line.startswith("decisions "))
    assert "DEGRADED" in decisions and "ENOSPC" in decisions

    js = edged("report", str(tmp_path), "--json")
    assert js.returncode == 0, js.stderr
    rep = json.loads(js.stdout)
    assert rep["rejected"]["cnn"] == {"count": 4, "share": pytest.approx(4 / 13),
                                      "reasons": {"non_finite": 3, "wrong_size": 1}}
    assert rep["rejected"]["mlp"]["count"] == 0
    un = rep["unattributable"]
    assert un["total"] == 7 and un["garbage_bytes"] == 57 and un["lost_in_transit"] == 2 and un["ts"] == T0 + 20
    assert un["per_source"]["zmq"]["reasons"] == {"bad_header": 2, "too_large": 1}
    assert rep["log_health"]["lost"] == 3 and rep["log_health"]["degraded"] == ["decisions"]
    (tmp_path / "stats.json").unlink()
    rep = json.loads(edged("report", str(tmp_path), "--json").stdout)
    assert rep["unattributable"] is None and rep["log_health"] is None


@pytest.mark.timeout(60)
def test_tail_follow_summary_picks_up_the_daemons_stats_file(tmp_path: Path) -> None:
    with JsonlWriter(tmp_path / "decisions.jsonl") as w:
        w.write({"ts": T0, "seq": 1, "model": "cnn", "decision": "rejected", "reason": "non_finite", "sender": "s1"})
    proc = subprocess.Popen([sys.executable, "-m", "edged", "tail", "-f", "--dir", str(tmp_path), "--no-color",
                             "--interval", "0.2", "--poll", "0.05"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        reader = LineReader(proc)
        line = reader.readline(time.monotonic() + 20)
        assert line is not None and "non_finite (seq 1 from s1)" in line
        # the daemon rewrites stats.json every status interval: the next summary shows it
        write_stats_file(tmp_path, {"ts": T0, "sources": {"serial": {"accepted": 1, "rejected": {"bad_cobs": 5}}}})
        deadline = time.monotonic() + 20
        text = ""
        assert proc.stderr is not None
        os.set_blocking(proc.stderr.fileno(), False)
        while "unattributable input: 5 (bad_cobs 5)" not in text and time.monotonic() < deadline:
            chunk = proc.stderr.read()
            text += chunk.decode() if chunk else ""
            time.sleep(0.05)
        assert "unattributable input: 5 (bad_cobs 5)" in text and "rejected: non_finite 1" in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
