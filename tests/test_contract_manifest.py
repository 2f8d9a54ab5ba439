"""Model contract v2: manifests with several inputs and outputs, output kinds, state, dynamic shapes.

Every bad field is refused with the model and the field named; a v1 manifest means what it always meant.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from edged.errors import ManifestError
from edged.models import Catalogue, ModelInput, ModelOutput, key_elements, parse_manifest, shape_key

from . import modelgen as g


def _write(tmp_path: Path, manifest: dict, name: str = "m", blob: bytes = b"not loaded here") -> Path:
    return g.write_model(tmp_path / "models", name, manifest, {"onnx": ("model.onnx", blob)}) / "manifest.json"


def test_v1_manifest_maps_to_one_input_and_one_probabilities_output(catalogue):
    for name, n_cls in (("mlp", 2), ("cnn", 10)):
        e = catalogue.get(name)
        assert len(e.inputs) == 1 and e.inputs[0].spec == e.input and e.primary_input.name == "input"
        assert len(e.outputs) == 1
        out = e.outputs[0]
        assert isinstance(out, ModelOutput) and out.kind == "probabilities" and out.name == "probs"
        assert len(out.labels) == n_cls and list(out.labels) == e.labels
        assert not e.v2 and not e.stateful and not e.is_dynamic and e.dynamic_inputs == []
        assert e.shape_key(np.zeros(e.input.sample_shape, np.float32)) == ""


def test_v1_model_hash_is_unchanged(catalogue):
    """Profiles are keyed by model_hash: a v1 manifest must hash exactly as before contract v2."""
    import hashlib

    e = catalogue.get("cnn")
    ident = {"input": e.input.to_dict(), "artifacts": {k: a.sha256 for k, a in sorted(e.artifacts.items())}}
    assert e.model_hash == hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def test_v2_stateful_manifest(tmp_path):
    e = parse_manifest(_write(tmp_path, g.STATEFUL_MANIFEST, "vad"))
    assert e.v2 and e.name == "vad"
    assert [i.name for i in e.inputs] == ["x", "h", "sr"]
    x, h, sr = e.inputs
    assert isinstance(x, ModelInput) and not x.state and x.batched and x.shape == (None, 16)
    assert h.state and h.initial == 0.0 and h.shape == (None, 8)
    assert not sr.batched and sr.shape == (1,) and sr.dtype == "int64" and sr.sample_shape == (1,)
    assert e.input == x.spec and e.primary_input is x
    assert [i.name for i in e.data_inputs] == ["x", "sr"] and [i.name for i in e.state_inputs] == ["h"]
    assert [(o.name, o.kind, o.state_input) for o in e.outputs] == [("y", "regression", None), ("h_out", "state", "h")]
    assert e.stateful and [o.name for o in e.state_outputs] == ["h_out"]
    np.testing.assert_array_equal(h.initial_value(3), np.zeros((3, 8), np.float32))
    feeds = e.make_feeds(seed=1)
    assert feeds["x"].shape == (1, 16) and feeds["h"].shape == (1, 8) and feeds["sr"].shape == (1,)
    assert feeds["sr"].dtype == np.int64


def test_v2_dynamic_manifest_profile_shapes_and_shape_key(tmp_path):
    e = parse_manifest(_write(tmp_path, g.DYNAMIC_MANIFEST, "seg"))
    assert e.is_dynamic and e.dynamic_inputs == ["x"] and e.inputs[0].dynamic_axes == (1, 2)
    assert e.profile_shapes == ({"x": (1, 32, 32, 1)}, {"x": (1, 256, 256, 1)})
    assert e.artifacts["onnx"].layout == "NCHW" and e.artifacts["onnx"].layouts == {"x": "NCHW"}
    one = np.zeros((640, 480, 1), np.float32)
    assert e.shape_key(one) == e.shape_key(one[None]) == e.shape_key({"x": (1, 640, 480, 1)}) == "1x640x480x1"
    assert e.shape_key(np.zeros((4, 32, 32, 1), np.float32)) == "1x32x32x1"  # WCET is per sample
    assert shape_key(np.zeros((1, 3, 640, 640))) == "1x3x640x640"
    assert shape_key({"b": (1, 2), "a": np.zeros((3,))}) == "a=3;b=1x2"
    feeds = e.make_feeds(e.profile_shapes[1], seed=0)
    assert feeds["x"].shape == (1, 256, 256, 1) and feeds["x"].dtype == np.float32
    cases = e.profile_cases(seed=0)
    assert [k for k, _ in cases] == ["1x32x32x1", "1x256x256x1"]
    np.testing.assert_array_equal(cases[1][1]["x"], feeds["x"])  # seeded: the same inputs every time
    assert key_elements("1x256x256x1") == 64 * key_elements("1x32x32x1") == 65536
    assert key_elements("") == 1 and key_elements("h=1x64;x=1x512") == 576


def test_profile_shapes_by_name_fill_static_inputs(tmp_path):
    m = copy.deepcopy(g.STATEFUL_MANIFEST)
    m["inputs"][0]["shape"] = [-1, -1]
    m["profile_shapes"] = [{"x": [1, 512]}, {"x": [2048]}]
    e = parse_manifest(_write(tmp_path, m, "vad"))
    assert e.profile_shapes == (
        {"x": (1, 512), "h": (1, 8), "sr": (1,)},
        {"x": (1, 2048), "h": (1, 8), "sr": (1,)},
    )
    assert e.shape_key({"x": np.zeros((512,)), "sr": np.zeros(1)}) == "1x512"


def test_v2_two_output_labels_and_top_k(tmp_path):
    e = parse_manifest(_write(tmp_path, g.TWO_OUTPUT_MANIFEST, "two"))
    probs, emb = e.outputs
    assert probs.labels == ("cat", "dog", "owl") and probs.top_k == 2 and probs.is_classifier
    assert emb.kind == "tensor" and not emb.is_classifier and emb.labels == ()
    assert e.labels == ["cat", "dog", "owl"]


def test_v2_top_level_labels_go_to_the_first_classifier(tmp_path):
    m = copy.deepcopy(g.TWO_OUTPUT_MANIFEST)
    m["outputs"] = [{"name": "emb", "kind": "tensor"}, {"name": "probs", "kind": "logits"}]
    m["labels"] = ["a", "b", "c"]
    e = parse_manifest(_write(tmp_path, m, "two"))
    assert e.outputs[0].labels == () and e.outputs[1].labels == ("a", "b", "c")


def _mut(path: str, value):
    """A mutation setting (or with value=KeyError, deleting) a dotted path like 'inputs.1.shape'."""

    def f(m):
        keys = [int(k) if k.isdigit() else k for k in path.split(".")]
        obj = m
        for k in keys[:-1]:
            obj = obj[k]
        if value is KeyError:
            del obj[keys[-1]]
        else:
            obj[keys[-1]] = value

    return f


@pytest.mark.parametrize(
    "mutate, field, why",
    [
        (_mut("inputs", []), "'inputs'", "non-empty list"),
        (_mut("inputs.0.name", KeyError), "'inputs[0].name'", "is required"),
        (_mut("inputs.1.name", "x"), "'inputs[1].name'", "repeats inputs[0].name"),
        (_mut("inputs.1.shape", "big"), "'inputs[1].shape'", "is required"),
        (_mut("inputs.1.shape", [-1, 2.5]), "'inputs[1].shape'", "not an integer"),
        (_mut("inputs.2.dtype", "complex64"), "'inputs[2].dtype'", "expected one of"),
        (_mut("inputs.0.layout", "NHWC"), "'inputs[0].layout'", "4 letters"),
        (_mut("inputs.2.batch", "no"), "'inputs[2].batch'", "true or false"),
        (_mut("inputs.1.initial", "zeros"), "'inputs[1].initial'", "a number or a nested list"),
        (_mut("inputs.1.initial", [0.0, 1.0]), "'inputs[1].initial'", "expected the sample shape [8]"),
        (_mut("inputs.0.initial", 1.0), "'inputs[0].initial'", "only applies to a state input"),
        (_mut("inputs.1.shape", [-1, -1]), "'inputs[1].shape'", "state input must be fixed"),
        (_mut("outputs", {"name": "y"}), "'outputs'", "non-empty list"),
        (_mut("outputs.0.name", KeyError), "'outputs[0].name'", "is required"),
        (_mut("outputs.0.kind", "boxes"), "'outputs[0].kind'", "probabilities, logits, regression, tensor, state"),
        (_mut("outputs.0.labels", ["a"]), "'outputs[0].labels'", "only apply to a classifier"),
        (_mut("outputs.0.top_k", 0), "'outputs[0].top_k'", "integer >= 1"),
        (_mut("outputs.1.state_input", KeyError), "'outputs[1].state_input'", "is required for kind 'state'"),
        (_mut("outputs.1.state_input", "c"), "'outputs[1].state_input'", "names no input"),
        (_mut("outputs.0.state_input", "h"), "'outputs[0].state_input'", "only applies to kind 'state'"),
        (_mut("outputs.1.name", "y"), "'outputs[1].name'", "repeats outputs[0].name"),
        (_mut("input", {"shape": [-1, 2], "dtype": "float32"}), "'inputs'", "both given"),
        (_mut("profile_shapes", "640x640"), "'profile_shapes'", "must be a list"),
        (_mut("profile_shapes", [[1, 17]]), "'profile_shapes[0]'", "input 'x' has shape ['?', 16]"),
        (_mut("profile_shapes", [{"z": [1, 16]}]), "'profile_shapes[0].z'", "names no input"),
        (_mut("profile_shapes", [[1, 0]]), "'profile_shapes[0]'", "positive integers"),
    ],
)
def test_bad_v2_field_is_named(tmp_path, mutate, field, why):
    m = copy.deepcopy(g.STATEFUL_MANIFEST)
    mutate(m)
    p = _write(tmp_path, m, "vad")
    with pytest.raises(ManifestError) as ei:
        parse_manifest(p)
    msg = str(ei.value)
    assert "'vad'" in msg and field in msg and why in msg, msg


def test_all_state_inputs_is_refused(tmp_path):
    m = {"inputs": [{"name": "h", "shape": [-1, 2], "dtype": "float32"}],
         "outputs": [{"name": "o", "kind": "state", "state_input": "h"}]}
    with pytest.raises(ManifestError, match="'inputs' are all state inputs"):
        parse_manifest(_write(tmp_path, m, "loop"))


def test_v2_inputs_require_outputs(tmp_path):
    m = {"inputs": [{"name": "x", "shape": [-1, 2], "dtype": "float32"}]}
    with pytest.raises(ManifestError, match="field 'outputs' is required with 'inputs'"):
        parse_manifest(_write(tmp_path, m, "x"))


def test_artifact_layouts_and_names_are_checked(tmp_path):
    m = copy.deepcopy(g.STATEFUL_MANIFEST)
    m["artifact_options"] = {"onnx": {"layouts": {"nope": "NC"}}}
    with pytest.raises(ManifestError, match=r"'artifacts.onnx.layouts.nope' names no input"):
        parse_manifest(_write(tmp_path, m, "a"))
    m["artifact_options"] = {"onnx": {"layouts": {"x": "CN"}, "names": {"y": "Y:0", "q": "r"}}}
    with pytest.raises(ManifestError, match=r"'artifacts.onnx.names.q' names no input or output"):
        parse_manifest(_write(tmp_path, m, "b"))
    m["artifact_options"] = {"onnx": {"layouts": {"x": "CNX"}}}
    with pytest.raises(ManifestError, match=r"'artifacts.onnx.layouts.x'.*not permutations"):
        parse_manifest(_write(tmp_path, m, "c"))


def test_toml_v2_manifest(tmp_path):
    d = tmp_path / "models" / "vad"
    d.mkdir(parents=True)
    blob = g.onnx_stateful()
    (d / "model.onnx").write_bytes(blob)
    (d / "manifest.toml").write_text(f"""
[[inputs]]
name = "x"
shape = ["N", 16]
dtype = "float32"
[[inputs]]
name = "h"
shape = ["N", 8]
dtype = "float32"
initial = 0.5
[[inputs]]
name = "sr"
shape = [1]
dtype = "int64"
batch = false
[[outputs]]
name = "y"
kind = "regression"
[[outputs]]
name = "h_out"
kind = "state"
state_input = "h"
[artifacts.onnx]
file = "model.onnx"
sha256 = "{g.sha256(blob)}"
""")
    cat = Catalogue.discover([tmp_path / "models"], include_shipped=False)
    e = cat.get("vad")
    assert e.inputs[1].state and e.inputs[1].initial == 0.5
    np.testing.assert_array_equal(e.inputs[1].initial_value(), np.full((1, 8), 0.5, np.float32))
    assert cat.unservable() == {}


def test_readme_add_your_own_model_example_is_a_valid_manifest(tmp_path):
    """The README's manifest example parses, with the inputs, state and output kinds it describes."""
    import re

    from edged.models import parse_manifest

    from .conftest import REPO

    text = (REPO / "README.md").read_text()
    block = re.search(r"a voice-activity model.*?```toml\n(.*?)```", text, re.S).group(1)
    d = tmp_path / "vad"
    d.mkdir()
    (d / "manifest.toml").write_text(block.replace('"…"', '"' + "0" * 64 + '"'))
    (d / "model.onnx").write_bytes(b"not checked by parse_manifest")
    e = parse_manifest(d / "manifest.toml")
    assert [i.name for i in e.inputs] == ["x", "h", "sr"] and e.stateful
    assert [(o.name, o.kind) for o in e.outputs] == [("speech", "regression"), ("h_out", "state")]
