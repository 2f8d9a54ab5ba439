"""Task-aware result summaries and per-sender recurrent state."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from edged.models import ModelEntry, ModelInput, ModelOutput, parse_manifest
from edged.results import (
    MAX_VALUES,
    StateStore,
    primary_summary,
    split_batch,
    summarize,
    summarize_classifier,
    summarize_output,
)
from edged.runtime import TensorSpec

from . import modelgen as g


def entry_with(outputs, inputs=None) -> ModelEntry:
    ins = tuple(inputs or (ModelInput(TensorSpec("x", (None, 4), "float32", "NC")),))
    return ModelEntry(name="t", dir=Path("."), manifest_path=Path("m.json"), manifest={}, input=ins[0].spec,
                      artifacts={}, inputs=ins, outputs=tuple(outputs))


def test_shipped_classifier_summary(catalogue):
    e = catalogue.get("mlp")
    with catalogue.load("mlp", "onnx") as m:
        x, _ = e.load_validation()
        out = m.run(x[0])
    s = summarize(e, out)
    p = out["probs"][0]
    assert list(s) == ["probs"]
    assert s["probs"]["label"] == int(p.argmax()) and s["probs"]["name"] == e.labels[int(p.argmax())]
    assert s["probs"]["score"] == pytest.approx(float(p.max()), rel=1e-5)
    assert [t[0] for t in s["probs"]["top"]] == list(np.argsort(-p)[:2])  # default top_k 3, only 2 classes
    json.dumps(s, allow_nan=False)
    assert primary_summary(e, s) == s["probs"]


def test_logits_are_softmaxed_for_the_score():
    o = ModelOutput("logits", "logits", ("a", "b", "c", "d"), top_k=3)
    z = np.array([[1.0, 3.0, -2.0, 2.0]], np.float32)
    s = summarize_output(z, o)
    p = np.exp(z[0] - z[0].max())
    p /= p.sum()
    assert s["label"] == 1 and s["name"] == "b" and s["score"] == pytest.approx(float(p[1]), rel=1e-5)
    assert [t[0] for t in s["top"]] == [1, 3, 0]
    assert [t[1] for t in s["top"]] == pytest.approx([float(p[1]), float(p[3]), float(p[0])], rel=1e-5)


def test_classifier_without_labels_and_ties():
    o = ModelOutput("p", "probabilities", top_k=2)
    s = summarize_classifier(np.array([0.25, 0.25, 0.5], np.float32), o)
    assert s["label"] == 2 and s["name"] is None and s["top"][0] == [2, 0.5] and s["top"][1][1] == 0.25


def test_regression_is_rounded_and_bounded():
    o = ModelOutput("v", "regression")
    s = summarize_output(np.arange(100, dtype=np.float64)[None] / 3, o)
    assert s["n"] == 100 and len(s["values"]) == MAX_VALUES and s["values"][1] == 0.333333
    assert summarize_output(np.array([[np.nan, 1.5]], np.float32), o) == {"values": [None, 1.5], "n": 2}


def test_tensor_stats_never_argmax():
    o = ModelOutput("mask", "tensor")
    mask = np.zeros((1, 1, 64, 64), np.float32)
    mask[0, 0, 10, 10] = 0.75
    s = summarize_output(mask, o)
    assert s == {"shape": [1, 64, 64], "dtype": "float32", "min": 0.0, "max": 0.75,
                 "mean": pytest.approx(0.75 / 4096, rel=1e-5)}
    assert "label" not in s and "score" not in s
    boxes = summarize_output(np.array([[[1, 2, 3, 4]]], np.int64), ModelOutput("boxes", "tensor"))
    assert boxes == {"shape": [1, 4], "dtype": "int64", "min": 1.0, "max": 4.0, "mean": 2.5}
    empty = summarize_output(np.zeros((1, 0, 4), np.float32), ModelOutput("none", "tensor"))
    assert empty["shape"] == [0, 4] and empty["min"] is None


def test_summarize_every_kind_state_left_out_and_json_able():
    e = entry_with([
        ModelOutput("cls", "logits", ("x", "y")), ModelOutput("reg", "regression"),
        ModelOutput("emb", "tensor"), ModelOutput("h_out", "state", state_input="h"),
    ], [ModelInput(TensorSpec("x", (None, 2), "float32")), ModelInput(TensorSpec("h", (None, 2), "float32"), state=True)])
    outs = {"cls": np.array([[0.0, 1.0]]), "reg": np.array([[2.5]]), "emb": np.ones((1, 8)),
            "h_out": np.ones((1, 2)), "extra": np.array([[7]])}
    s = summarize(e, outs)
    assert list(s) == ["cls", "reg", "emb", "extra"]
    assert s["reg"] == {"values": [2.5], "n": 1} and s["extra"]["max"] == 7.0
    json.dumps(s, allow_nan=False)


def test_split_batch_summarises_each_row(catalogue):
    e = catalogue.get("cnn")
    x, _ = e.load_validation()
    with catalogue.load("cnn", "onnx") as m:
        out = m.run(x[:5])
    labels = [summarize(e, split_batch(out, i))["probs"]["label"] for i in range(5)]
    assert labels == list(out["probs"].argmax(axis=1))


# --------------------------------------------------------------------------- StateStore


@pytest.fixture
def vad(tmp_path) -> ModelEntry:
    return parse_manifest(g.write_model(tmp_path, "vad", g.STATEFUL_MANIFEST, {"onnx": ("m.onnx", b"x")})
                          / "manifest.json")


def test_state_store_initial_update_override_reset(vad):
    st = StateStore(max_entries=4)
    first = st.get("a", vad)
    np.testing.assert_array_equal(first["h"], np.zeros((1, 8), np.float32))
    st.update("a", vad, {"y": np.zeros((1, 1)), "h_out": np.full((1, 8), 2.0, np.float32)})
    assert st.get("a", vad)["h"][0, 0] == 2.0 and st.get("b", vad)["h"][0, 0] == 0.0
    # a sender that sends its state (an offloaded input carrying the edge's state) wins for that call
    mine = np.full((1, 8), 5.0, np.float32)
    assert st.feeds("a", vad, {"x": 1, "h": mine})["h"] is mine
    assert st.feeds("a", vad, {"x": 1})["h"][0, 0] == 2.0
    assert st.reset(sender="a") == 1 and st.get("a", vad)["h"][0, 0] == 0.0


def test_state_store_initial_from_manifest(tmp_path):
    m = json.loads(json.dumps(g.STATEFUL_MANIFEST))
    m["inputs"][1]["initial"] = [0.5] * 8
    e = parse_manifest(g.write_model(tmp_path, "vad", m, {"onnx": ("m.onnx", b"x")}) / "manifest.json")
    np.testing.assert_array_equal(StateStore().get("s", e)["h"], np.full((1, 8), 0.5, np.float32))


def test_state_store_is_a_bounded_lru(vad):
    st = StateStore(max_entries=3)
    for s in ("a", "b", "c"):
        st.update(s, vad, {"h_out": np.full((1, 8), ord(s), np.float32)})
    st.get("a", vad)  # a is now the most recently used
    st.update("d", vad, {"h_out": np.ones((1, 8), np.float32)})
    assert len(st) == 3 and st.evictions == 1
    assert st.get("b", vad)["h"][0, 0] == 0.0  # b was evicted: back to the initial state
    assert st.get("a", vad)["h"][0, 0] == ord("a")
    assert st.stats() == {"entries": 3, "max_entries": 3, "evictions": 1}
    with pytest.raises(ValueError):
        StateStore(0)


def test_state_store_is_thread_safe(vad):
    st = StateStore(max_entries=50)
    errors = []

    def worker(k: int) -> None:
        try:
            for i in range(300):
                sender = f"s{(k * 7 + i) % 80}"
                h = st.get(sender, vad)["h"]
                st.update(sender, vad, {"h_out": h + 1})
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors and len(st) == 50
    assert st.evictions > 0
