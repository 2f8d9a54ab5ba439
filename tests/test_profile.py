"""edged profile: the real CLI in a subprocess, the stored per-device table, user models."""

from __future__ import annotations

import hashlib
import json
import os

from edged.profile import device_fingerprint, fingerprint_id, load_profile, store_results

from .conftest import MODELS, run_edged


def test_profile_cli_stores_and_shows_table(tmp_path):
    state = tmp_path / "state"
    # every catalogue model; under qemu (make test-arm64) rgbcnn alone takes ~45 s, so only the paper's pair there
    models = ["mlp", "cnn"] if os.environ.get("EDGED_EMULATED") else ["mlp", "cnn", "rgbcnn"]
    only = ["--model", ",".join(models)] if os.environ.get("EDGED_EMULATED") else []
    p = run_edged(["profile", "--state-dir", str(state), "--repeats", "2", "--warmup", "3", "--json",
                   "--backend", "onnx", *only], check=True)
    data = json.loads(p.stdout)
    assert "warm-up 3 runs" in p.stderr and "pass 2/2" in p.stderr  # progress goes to stderr
    rows = {(r["model"], r["backend"]): r for r in data["results"]}
    assert set(rows) == {(m, "onnx") for m in models}
    for (model, _), r in rows.items():
        assert r["runs"] == 2 * r["n_inputs"] and r["warmup"] == 3
        assert r["wcet_us"] >= r["p99_us"] >= r["p95_us"] >= r["p50_us"] > 0
        assert r["load_ms"] > 0 and r["stdev_us"] >= 0 and r["peak_rss_increase_kb"] >= 0
        manifest = json.loads((MODELS / model / "manifest.json").read_text())
        assert abs(r["accuracy"] - manifest["metrics"]["onnx"]["accuracy"]) < 1e-6
        assert 0 < r["macro_f1"] <= 1
    stored = json.loads((state / "profile.json").read_text())
    (dev,) = stored["devices"].values()
    assert set(dev["entries"]) == {f"{m}/onnx/1" for m in models}
    assert dev["fingerprint"]["cores"] >= 1 and "onnxruntime" in dev["fingerprint"]["runtimes"]

    show = run_edged(["profile", "--show", "--state-dir", str(state)], check=True)
    assert "WCET us" in show.stdout and "mlp" in show.stdout and "cnn" in show.stdout


def test_profile_show_without_profile_says_what_to_do(tmp_path):
    p = run_edged(["profile", "--show", "--state-dir", str(tmp_path)])
    assert p.returncode == 1 and "run 'edged profile' first" in p.stderr


def test_profile_unknown_model_is_a_clear_error(tmp_path):
    p = run_edged(["profile", "--model", "nope", "--state-dir", str(tmp_path)])
    assert p.returncode == 1 and "unknown model 'nope'" in p.stderr


def test_user_model_without_validation_set_is_profiled(tmp_path):
    d = tmp_path / "user" / "mine"
    d.mkdir(parents=True)
    blob = (MODELS / "mlp" / "model.onnx").read_bytes()
    (d / "model.onnx").write_bytes(blob)
    (d / "manifest.toml").write_text(
        '[input]\nshape = [-1, 30]\ndtype = "float32"\nlayout = "NC"\n'
        f'[artifacts.onnx]\nfile = "model.onnx"\nsha256 = "{hashlib.sha256(blob).hexdigest()}"\n'
    )
    p = run_edged(["profile", "--models-dir", str(tmp_path / "user"), "--model", "mine", "--repeats", "1",
                   "--state-dir", str(tmp_path / "s"), "--json"], check=True)
    (r,) = json.loads(p.stdout)["results"]
    assert r["model"] == "mine" and r["runs"] == 256 and r["accuracy"] is None
    assert "synthetic" in r["inputs"]


def test_store_merges_and_keys_by_fingerprint(tmp_path):
    fp = device_fingerprint()
    row = {"model": "m", "backend": "onnx", "threads": 2, "wcet_us": 10.0, "p50_us": 5.0, "model_hash": "h"}
    store_results([row], tmp_path, fp)
    store_results([dict(row, backend="litert", wcet_us=7.0)], tmp_path, fp)
    other = dict(fp, board="Raspberry Pi 4 Model B Rev 1.4")
    store_results([dict(row, wcet_us=99.0)], tmp_path, other)
    prof = load_profile(tmp_path, fp)
    assert prof is not None and prof.id == fingerprint_id(fp)
    assert prof.wcet_us("m", "onnx", 2) == 10.0 and prof.wcet_us("m", "litert", 2) == 7.0
    assert prof.wcet_us("m", "onnx", 1) is None and prof.is_current("m", "onnx", 2, "h")
    assert load_profile(tmp_path, other).wcet_us("m", "onnx", 2) == 99.0


def test_profile_with_idle_gaps_is_recorded_as_such(tmp_path):
    p = run_edged(["profile", "--model", "mlp", "--backend", "onnx", "--repeats", "1", "--max-inputs", "20",
                   "--gap-ms", "2", "--state-dir", str(tmp_path), "--json"], check=True)
    (r,) = json.loads(p.stdout)["results"]
    assert r["gap_ms"] == 2.0 and r["runs"] == 20 and "2 ms idle before each" in r["inputs"]
    show = run_edged(["profile", "--show", "--state-dir", str(tmp_path)], check=True)
    assert "gap ms" in show.stdout
    bad = run_edged(["profile", "--gap-ms", "-1", "--state-dir", str(tmp_path)])
    assert bad.returncode == 1 and "--gap-ms must be >= 0" in bad.stderr


# --------------------------------------------------------------------------- interruption (SIGTERM at start-up)


def _profile_until_stopped(stop, **kw):
    """Profile the real cnn (onnx) for far longer than any test waits; return (exception, seconds after set)."""
    import time

    from edged.models import Catalogue
    from edged.profile import profile_one

    cat = Catalogue.discover()
    set_at = []

    def fire():
        set_at.append(time.monotonic())
        stop.set()

    import threading

    timer = threading.Timer(0.5, fire)
    timer.start()
    try:
        profile_one(cat, "cnn", "onnx", 1, stop=stop, **kw)
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return exc, time.monotonic() - set_at[0]
    finally:
        timer.cancel()
    raise AssertionError("profile_one finished although the stop event was set")


def test_stop_event_interrupts_profiling_within_a_second():
    import threading

    from edged.errors import EdgedError, Interrupted

    exc, after_set = _profile_until_stopped(threading.Event(), repeats=100_000, warmup=5)
    assert isinstance(exc, Interrupted) and isinstance(exc, EdgedError)
    assert "profiling cnn stopped in pass " in str(exc) and "/100000 at input " in str(exc)
    assert after_set < 1.0  # 100 000 passes would take hours: the event cut it short


def test_stop_event_ends_an_idle_gap_at_once():
    import threading

    from edged.errors import Interrupted

    exc, after_set = _profile_until_stopped(threading.Event(), repeats=3, warmup=0, gap_ms=60_000)
    assert isinstance(exc, Interrupted) and after_set < 1.0  # not the rest of a 60 s gap


def test_set_stop_event_before_start_loads_nothing():
    import threading

    from edged.errors import Interrupted
    from edged.models import Catalogue
    from edged.profile import profile_one

    stop = threading.Event()
    stop.set()
    try:
        profile_one(Catalogue.discover(), "mlp", "onnx", 1, stop=stop)
    except Interrupted as exc:
        assert "before it started" in str(exc)
    else:
        raise AssertionError("not interrupted")


SIGTERM_SCRIPT = r"""
import signal, sys, threading, time
from edged.errors import Interrupted
from edged.models import Catalogue
from edged.profile import profile_one

stop = threading.Event()
got = []
signal.signal(signal.SIGTERM, lambda *_: (got.append(time.monotonic()), stop.set()))  # as the daemon's handler

cat = Catalogue.discover()
try:
    profile_one(cat, "cnn", "onnx", 1, repeats=100000, warmup=5,
                progress=lambda m: print(m, flush=True), max_inputs=50, stop=stop)
except Interrupted as exc:
    print("INTERRUPTED", exc, flush=True)
    print("AFTER_SIGNAL_S", time.monotonic() - got[0], flush=True)
    sys.exit(3)
sys.exit(0)
"""


def test_real_sigterm_interrupts_profiling_in_a_subprocess():
    import signal
    import subprocess
    import sys

    from .conftest import REPO

    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=str(REPO))
    assert proc.stdout is not None and proc.stderr is not None
    try:
        first = proc.stdout.readline()  # a pass finished: it is measuring now
        assert "pass 1/100000" in first, first + proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, err
    assert "INTERRUPTED profiling cnn stopped in pass" in out
    after_signal = float(out.split("AFTER_SIGNAL_S", 1)[1].split()[0])
    assert after_signal < 1.0  # from the handler running to profile_one raising


def test_models_with_several_inputs_and_outputs_are_profiled(tmp_path):
    """A 3-input stateful model (no validation set) and a 2-output classifier: each input timed as the
    daemon runs it (every input by name), a static entry as always, accuracy from the classifier output."""
    import numpy as np

    from . import modelgen as g

    root = tmp_path / "models"
    g.write_model(root, "vad", g.STATEFUL_MANIFEST, {"onnx": ("model.onnx", g.onnx_stateful())})
    x = np.random.default_rng(3).standard_normal((40, 6)).astype(np.float32)
    g.write_model(root, "two", g.TWO_OUTPUT_MANIFEST, {"onnx": ("model.onnx", g.onnx_two_outputs())},
                  validation={"x": x, "y": np.zeros(40, np.int64)})
    p = run_edged(["profile", "--models-dir", str(root), "--model", "vad,two", "--backend", "onnx", "--repeats", "1",
                   "--warmup", "2", "--state-dir", str(tmp_path / "s"), "--json"], check=True)
    rows = {r["model"]: r for r in json.loads(p.stdout)["results"]}
    assert rows["vad"]["runs"] == 256 and rows["vad"]["accuracy"] is None and "shapes" not in rows["vad"]
    assert rows["two"]["runs"] == 40 and 0 <= rows["two"]["accuracy"] <= 1 and "shapes" not in rows["two"]
    for r in rows.values():
        assert r["wcet_us"] >= r["p50_us"] > 0
