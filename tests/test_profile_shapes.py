"""Dynamic shapes in the profile: WCET per shape, the dispatcher's lookup, old files, the stop event.

The dynamic model is built here (tests/modelgen: a 3x3 conv over x [N, H, W, 1], NCHW in the ONNX file)
and profiled through the real `edged profile` CLI in a subprocess.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edged.profile import (
    Profile,
    ProfileCase,
    device_fingerprint,
    estimate_wcet_us,
    format_table,
    load_profile,
    profile_plan,
    store_results,
)

from . import modelgen as g
from .conftest import run_edged

SMALL, LARGE = "1x32x32x1", "1x256x256x1"  # DYNAMIC_MANIFEST's profile_shapes, as shape keys
STATS = ("wcet_us", "p50_us", "p95_us", "p99_us", "mean_us", "stdev_us")

#: every key of a profile entry as edged wrote it before shapes existed (a static model's entry stays so)
OLD_ENTRY_KEYS = {
    "model", "backend", "threads", "model_hash", "inputs", "n_inputs", "warmup", "repeats", "runs", "load_ms",
    "wcet_us", "p50_us", "p95_us", "p99_us", "mean_us", "stdev_us", "peak_rss_increase_kb", "peak_rss_exact",
    "gap_ms", "accuracy", "macro_f1", "manifest_accuracy", "measured_at",
}


def _models(root: Path, **validation) -> Path:
    g.write_model(root, "seg", g.DYNAMIC_MANIFEST, {"onnx": ("model.onnx", g.onnx_dynamic_hw())},
                  validation=validation or None)
    return root


def _catalogue(root: Path):
    from edged.models import Catalogue

    return Catalogue.discover([root], include_shipped=False)


# --------------------------------------------------------------------------- the real CLI


def test_cli_profiles_a_dynamic_model_per_shape_and_the_file_round_trips(tmp_path):
    models, state = _models(tmp_path / "models"), tmp_path / "state"
    p = run_edged(["profile", "--models-dir", str(models), "--model", "seg", "--backend", "onnx",
                   "--state-dir", str(state), "--repeats", "3", "--warmup", "5", "--json"], check=True)
    (r,) = json.loads(p.stdout)["results"]
    assert f"at shape {SMALL}: pass 3/3" in p.stderr and f"at shape {LARGE}: pass 3/3" in p.stderr
    shapes = r["shapes"]
    assert set(shapes) == {SMALL, LARGE}
    for s in shapes.values():
        assert s["wcet_us"] >= s["p99_us"] >= s["p95_us"] >= s["p50_us"] > 0 and s["stdev_us"] >= 0
        assert s["n"] == 3 * s["n_inputs"] and s["source"] == "profile_shapes"
    # the larger shape costs more: its median and its worst case
    assert shapes[LARGE]["p50_us"] > shapes[SMALL]["p50_us"]
    assert shapes[LARGE]["wcet_us"] > shapes[SMALL]["wcet_us"]
    print(f"\nmeasured WCET ratio {LARGE}/{SMALL}: {shapes[LARGE]['wcet_us'] / shapes[SMALL]['wcet_us']:.1f}x "
          f"(p50 {shapes[LARGE]['p50_us'] / shapes[SMALL]['p50_us']:.1f}x)")
    # the top level holds the largest shape's numbers, so a shape-unaware reader gets the upper bound
    assert r["shape"] == LARGE and all(r[k] == shapes[LARGE][k] for k in STATS)
    assert r["runs"] == shapes[LARGE]["n"] and r["accuracy"] is None

    # the stored file: what the CLI printed, read back through the API, and written again unchanged
    prof = load_profile(state)
    assert prof is not None and prof.get("seg", "onnx", 1) == r
    assert prof.wcet_by_shape("seg", "onnx", 1) == {k: v["wcet_us"] for k, v in shapes.items()}
    assert prof.p50_by_shape("seg", "onnx", 1) == {k: v["p50_us"] for k, v in shapes.items()}
    assert prof.wcet_for_shape("seg", "onnx", 1, LARGE) == (shapes[LARGE]["wcet_us"], False)
    w, scaled = prof.wcet_for_shape("seg", "onnx", 1, "1x64x64x1")  # 4x the small shape's elements
    assert scaled and w == pytest.approx(4 * shapes[SMALL]["wcet_us"])
    assert prof.is_current("seg", "onnx", 1, r["model_hash"], dynamic=True)
    again = store_results(list(prof.entries.values()), tmp_path / "again", prof.fingerprint)
    assert load_profile(tmp_path / "again", prof.fingerprint).entries == prof.entries == again.entries

    # --show: one row per shape, the shape column, the top-level shape marked
    show = run_edged(["profile", "--show", "--state-dir", str(state)], check=True)
    rows = [ln for ln in show.stdout.splitlines() if ln.startswith("seg ")]
    assert len(rows) == 2 and SMALL in rows[0] and f"{LARGE}*" in rows[1], show.stdout
    assert "shape" in show.stdout.splitlines()[1] and "WCET us" in show.stdout


def test_cli_static_model_entry_is_as_before(tmp_path):
    state = tmp_path / "state"
    p = run_edged(["profile", "--model", "mlp", "--backend", "onnx", "--state-dir", str(state), "--repeats", "1",
                   "--warmup", "2", "--max-inputs", "30", "--json"], check=True)
    (r,) = json.loads(p.stdout)["results"]
    assert set(r) == OLD_ENTRY_KEYS  # no "shape", no "shapes": existing profile.json files stay valid
    (dev,) = json.loads((state / "profile.json").read_text())["devices"].values()
    assert set(dev["entries"]) == {"mlp/onnx/1"} and set(dev["entries"]["mlp/onnx/1"]) == OLD_ENTRY_KEYS
    assert "at shape" not in p.stderr and "pass 1/1 over validation set" in p.stderr
    prof = load_profile(state)
    assert prof.wcet_by_shape("mlp", "onnx", 1) == {} and prof.p50_by_shape("mlp", "onnx", 1) == {}
    assert prof.wcet_for_shape("mlp", "onnx", 1, "") == (r["wcet_us"], False)
    assert prof.is_current("mlp", "onnx", 1, r["model_hash"], dynamic=False)
    show = run_edged(["profile", "--show", "--state-dir", str(state)], check=True)
    (row,) = [ln for ln in show.stdout.splitlines() if ln.startswith("mlp ")]
    assert row.split()[3] == "-"  # the shape column of a static model


# --------------------------------------------------------------------------- an old file


def test_old_profile_file_without_shapes_loads(tmp_path):
    """A profile.json written before shapes existed: every number still readable, no shapes, and a
    dynamic model's old entry (measured at dynamic dimensions 1) is not current, so it is measured again."""
    fp = device_fingerprint()
    from edged.profile import fingerprint_id

    old = {k: 1 for k in OLD_ENTRY_KEYS} | {"model": "seg", "backend": "onnx", "threads": 1, "model_hash": "h",
                                             "wcet_us": 1600.0, "p50_us": 900.0, "accuracy": None, "macro_f1": None,
                                             "inputs": "256 synthetic inputs"}
    (tmp_path / "profile.json").write_text(json.dumps(
        {"version": 1, "devices": {fingerprint_id(fp): {"fingerprint": fp, "entries": {"seg/onnx/1": old}}}}))
    prof = load_profile(tmp_path, fp)
    assert prof is not None and prof.wcet_us("seg", "onnx", 1) == 1600.0 and prof.p50_us("seg", "onnx", 1) == 900.0
    assert prof.shapes("seg", "onnx", 1) == {} and prof.wcet_by_shape("seg", "onnx", 1) == {}
    assert prof.wcet_for_shape("seg", "onnx", 1, "1x640x640x3") == (1600.0, False)  # nothing to scale: top level
    assert prof.p50_for_shape("seg", "onnx", 1, "1x640x640x3") == (900.0, False)
    assert prof.is_current("seg", "onnx", 1, "h") and not prof.is_current("seg", "onnx", 1, "h", dynamic=True)
    assert not prof.is_current("seg", "onnx", 1, "other")
    table = format_table(list(prof.entries.values()))
    assert "1600.0" in table and "\nseg " in table
    show = run_edged(["profile", "--show", "--state-dir", str(tmp_path)], check=True)
    assert "1600.0" in show.stdout


def test_by_shape_ignores_malformed_shape_entries(tmp_path):
    fp = device_fingerprint()
    row = {"model": "m", "backend": "onnx", "threads": 1, "wcet_us": 10.0, "p50_us": 5.0, "model_hash": "h",
           "shape": LARGE, "shapes": {SMALL: {"wcet_us": 2.0, "p50_us": 1.0}, LARGE: {"wcet_us": 10.0},
                                      "1x8x8x1": "not a table", "1x9x9x1": {"wcet_us": "slow", "p50_us": None}}}
    prof = store_results([row], tmp_path, fp)
    assert prof.wcet_by_shape("m", "onnx") == {SMALL: 2.0, LARGE: 10.0}
    assert prof.p50_by_shape("m", "onnx") == {SMALL: 1.0}
    assert isinstance(prof, Profile) and set(prof.shapes("m", "onnx")) == {SMALL, LARGE, "1x9x9x1"}


# --------------------------------------------------------------------------- estimate_wcet_us

TWO = {SMALL: 20.0, LARGE: 1000.0}  # 1024 and 65536 elements


@pytest.mark.parametrize("by_shape, key, expected", [
    ({}, SMALL, (None, False)),                                      # nothing profiled
    ({}, "", (None, False)),
    (TWO, SMALL, (20.0, False)),                                     # exact
    (TWO, LARGE, (1000.0, False)),
    ({SMALL: 20.0}, "1x64x64x1", (80.0, True)),                      # one shape: scaled by elements (4x)
    ({SMALL: 20.0}, "1x16x16x1", (5.0, True)),                       # ... down as well as up
    (TWO, "1x64x64x1", (80.0, True)),                                # 4x the small, 16x below the large
    (TWO, "1x128x128x1", (250.0, True)),                             # 16x the small, 4x below the large
    (TWO, "1x512x512x1", (4000.0, True)),                            # beyond every profiled shape
    (TWO, "1x1x1x1", (20.0 / 1024, True)),
    ({"1x16x16x1": 10.0, "1x64x64x1": 200.0}, SMALL, (40.0, True)),  # a tie (4x either way): the smaller
    ({"1x16x16x1": 10.0, "1x64x64x1": 200.0}, "1x32x64x1", (100.0, True)),  # 2x below the larger: nearer
    (TWO, "", (None, False)),                                        # no shape known: nothing to scale by
    ({"": 7.0}, "", (7.0, False)),
    ({"h=1x8;x=1x64": 10.0}, "h=1x8;x=1x128", (10.0 * 136 / 72, True)),  # several inputs: elements summed
    ({"garbage": 1.0, SMALL: float("nan"), "1x16x16x1": 10.0}, SMALL, (40.0, True)),  # unusable entries skipped
    ({SMALL: -1.0}, SMALL, (None, False)),
    ({SMALL: 0.0}, SMALL, (0.0, False)),
])
def test_estimate_wcet_us(by_shape, key, expected):
    got = estimate_wcet_us(by_shape, key)
    assert got[1] is expected[1]
    if expected[0] is None:
        assert got[0] is None
    else:
        assert got[0] == pytest.approx(expected[0]) and math.isfinite(got[0])


# --------------------------------------------------------------------------- what is measured


def test_plan_validation_shape_first_then_profile_shapes(tmp_path):
    x = np.random.default_rng(1).standard_normal((6, 64, 64, 1)).astype(np.float32)
    cat = _catalogue(_models(tmp_path / "m", x=x))
    cases = profile_plan(cat.get("seg"))
    assert [(c.key, c.source) for c in cases] == [
        ("1x64x64x1", "validation"), (SMALL, "profile_shapes"), (LARGE, "profile_shapes")]
    assert cases[0].n == 6 and cases[1].n == 32 and cases[1].feeds["x"].shape == (4, 32, 32, 1)
    capped = profile_plan(cat.get("seg"), max_inputs=3)
    assert [c.n for c in capped] == [3, 3, 3] and "first 3" in capped[0].what
    assert capped[1].feeds["x"].shape == (3, 32, 32, 1)


def test_plan_measures_a_shape_given_twice_once_on_the_validation_set(tmp_path):
    x = np.zeros((5, 32, 32, 1), np.float32)
    cases = profile_plan(_catalogue(_models(tmp_path / "m", x=x)).get("seg"))
    assert [(c.key, c.source) for c in cases] == [(SMALL, "validation"), (LARGE, "profile_shapes")]


def test_plan_static_model_is_one_case_keyed_empty(catalogue):
    (case,) = profile_plan(catalogue.get("mlp"))
    assert isinstance(case, ProfileCase) and case.key == "" and case.source == "validation" and case.y is not None


def test_dynamic_model_with_neither_is_measured_at_ones_with_a_warning(tmp_path):
    from edged.profile import profile_one

    m = {k: v for k, v in g.DYNAMIC_MANIFEST.items() if k != "profile_shapes"}
    g.write_model(tmp_path / "m", "bare", m, {"onnx": ("model.onnx", g.onnx_dynamic_hw())})
    said = []
    r = profile_one(_catalogue(tmp_path / "m"), "bare", "onnx", 1, repeats=1, warmup=1, progress=said.append)
    assert r["shape"] == "1x1x1x1" and set(r["shapes"]) == {"1x1x1x1"}
    assert r["shapes"]["1x1x1x1"]["source"] == "default"
    assert any("WARNING" in s and "profile_shapes" in s for s in said)


def test_accuracy_is_measured_on_the_validation_shape_only(tmp_path):
    """A dynamic classifier (global mean pooled to 2 classes) with labelled validation images."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2], keepdims=0),  # NHWC -> [N, 1]
             helper.make_node("Neg", ["m"], ["neg"]),
             helper.make_node("Concat", ["m", "neg"], ["logits"], axis=1),
             helper.make_node("Softmax", ["logits"], ["prob"], axis=1)]
    graph = helper.make_graph(
        nodes, "cls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "H", "W", 1])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 2])], [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    manifest = {"format": "edged-model/2",
                "inputs": [{"name": "x", "shape": [-1, "H", "W", 1], "dtype": "float32", "layout": "NHWC"}],
                "outputs": [{"name": "prob", "kind": "probabilities", "labels": ["pos", "neg"]}],
                "profile_shapes": [[1, 8, 8, 1]]}
    x = np.concatenate([np.ones((4, 16, 16, 1)), -np.ones((4, 16, 16, 1))]).astype(np.float32)
    y = np.array([0] * 4 + [1] * 4)
    g.write_model(tmp_path / "m", "cls", manifest, {"onnx": ("model.onnx", model.SerializeToString())},
                  validation={"x": x, "y": y})
    from edged.profile import profile_one

    r = profile_one(_catalogue(tmp_path / "m"), "cls", "onnx", 1, repeats=1, warmup=1)
    assert r["accuracy"] == 1.0 and r["macro_f1"] == 1.0
    assert [r["shapes"][k]["source"] for k in ("1x16x16x1", "1x8x8x1")] == ["validation", "profile_shapes"]
    assert r["shape"] == "1x16x16x1"  # the largest measured
    rows = {ln.split()[3]: ln for ln in format_table([r]).splitlines() if ln.startswith("cls ")}
    assert rows["1x16x16x1*"].split()[-2:] == ["1.000", "1.000"] and rows["1x8x8x1"].split()[-2:] == ["-", "-"]


# --------------------------------------------------------------------------- the stop event


def test_stop_event_interrupts_the_per_shape_loop_within_a_second(tmp_path):
    from edged.errors import Interrupted
    from edged.profile import profile_one

    cat = _catalogue(_models(tmp_path / "m"))
    stop = threading.Event()
    set_at = []
    timer = threading.Timer(0.5, lambda: (set_at.append(time.monotonic()), stop.set()))
    timer.start()
    try:
        profile_one(cat, "seg", "onnx", 1, repeats=100_000, warmup=2, stop=stop)
    except Interrupted as exc:
        after = time.monotonic() - set_at[0]
        assert f"profiling seg stopped at shape {SMALL} in pass " in str(exc) and "/100000 at input " in str(exc)
        assert after < 1.0
    else:
        raise AssertionError("profile_one finished although the stop event was set")
    finally:
        timer.cancel()
