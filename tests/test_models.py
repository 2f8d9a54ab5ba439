"""The catalogue: manifests, integrity, layouts, user-added models, bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from edged.errors import InputError, IntegrityError, ManifestError, UnknownModelError
from edged.models import Catalogue, layout_permutation
from edged.runtime import available_backends

from .conftest import MODELS


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_shipped_catalogue(catalogue):
    assert {"mlp", "cnn"} <= set(catalogue.names())
    mlp, cnn = catalogue.get("mlp"), catalogue.get("cnn")
    assert mlp.input.sample_shape == (30,) and mlp.input.dtype == "float32"
    assert cnn.input.sample_shape == (8, 8, 1) and cnn.input.layout == "NHWC"
    assert cnn.artifacts["onnx"].layout == "NCHW"  # the catalogue, not the caller, transposes
    assert len(cnn.labels) == 10 and len(mlp.labels) == 2
    assert mlp.model_hash != cnn.model_hash and len(mlp.model_hash) == 64
    for name in ("mlp", "cnn"):
        m = json.loads((MODELS / name / "manifest.json").read_text())
        for key in ("parameters", "flops", "preprocessing", "metrics", "validation"):
            assert key in m, f"{name} manifest lacks {key}"
        assert m["parameters"] > 0 and m["flops"] > 0
        catalogue.get(name).verify()


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_manifest_accuracies_match_reevaluation(catalogue, name):
    entry = catalogue.get(name)
    x, y = entry.load_validation()
    for backend in entry.backends:
        if backend not in available_backends():
            continue
        with catalogue.load(name, backend) as m:
            pred = m.predict(x).argmax(axis=1)
        assert abs(float(np.mean(pred == y)) - entry.metric(backend, "accuracy")) < 1e-6, backend
    assert entry.metric("onnx", "accuracy") > 0.9


def test_tampered_artifact_is_refused(model_copy):
    d = model_copy("mlp")
    blob = bytearray((d / "model.onnx").read_bytes())
    blob[-10] ^= 0xFF
    (d / "model.onnx").write_bytes(bytes(blob))
    cat = Catalogue.discover([d.parent], include_shipped=False)
    expected = cat.get("mlp").artifacts["onnx"].sha256
    with pytest.raises(IntegrityError) as ei:
        cat.load("mlp", "onnx")
    msg = str(ei.value)
    assert "model.onnx" in msg and expected in msg and sha(d / "model.onnx") in msg and "refusing" in msg


def test_missing_artifact_is_refused(model_copy):
    d = model_copy("cnn")
    (d / "model.onnx").unlink()
    cat = Catalogue.discover([d.parent], include_shipped=False)
    with pytest.raises(IntegrityError, match="missing"):
        cat.load("cnn", "onnx")


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda m: m.pop("input"), "'input'"),
        (lambda m: m["input"].pop("shape"), "'input.shape'"),
        (lambda m: m["input"].__setitem__("dtype", "complex64"), "'input.dtype'"),
        (lambda m: m["artifacts"]["onnx"].pop("sha256"), "'artifacts.onnx.sha256'"),
        (lambda m: m["artifacts"].__setitem__("tensorrt", {"file": "x", "sha256": "0" * 64}), "'artifacts.tensorrt'"),
        (lambda m: m["artifacts"]["onnx"].__setitem__("layout", "NCHWX"), "'artifacts.onnx.layout'"),
    ],
)
def test_bad_manifest_names_model_and_field(model_copy, mutate, field):
    d = model_copy("cnn")
    m = json.loads((d / "manifest.json").read_text())
    mutate(m)
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ManifestError) as ei:
        Catalogue.discover([d.parent], include_shipped=False, strict=True)
    assert "'cnn'" in str(ei.value) and field in str(ei.value)
    # non-strict discovery skips the bad model and reports it instead of failing the whole catalogue
    cat = Catalogue.discover([d.parent], include_shipped=False)
    assert "cnn" not in cat and field in next(iter(cat.errors.values()))


def test_unparsable_manifest(tmp_path):
    d = tmp_path / "m" / "broken"
    d.mkdir(parents=True)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="cannot parse"):
        Catalogue.discover([tmp_path / "m"], include_shipped=False, strict=True)


def test_unknown_model_lists_known(catalogue):
    with pytest.raises(UnknownModelError, match="unknown model 'resnet'.*cnn, cnn_int8, mlp"):
        catalogue.get("resnet")


def test_bad_inputs_are_named(catalogue):
    with catalogue.load("cnn", "onnx") as m:
        with pytest.raises(InputError, match=r"model 'cnn': input shape is \[8, 8\], expected \[8, 8, 1\]"):
            m.predict(np.zeros((8, 8), np.float32))
        with pytest.raises(InputError, match="dtype is float64, expected float32"):
            m.predict(np.zeros((8, 8, 1)))
        x = np.zeros((2, 8, 8, 1), np.float32)
        x[1, 3, 3, 0] = np.nan
        x[0, 0, 0, 0] = np.inf
        with pytest.raises(InputError, match="2 NaN or inf"):
            m.predict(x)
        assert m.predict([[[0.0]] * 8] * 8).shape == (10,)  # nested lists are converted


def test_layout_permutation():
    assert layout_permutation("NHWC", "NCHW") == (0, 3, 1, 2)
    assert layout_permutation("NC", "NC") is None
    with pytest.raises(ValueError):
        layout_permutation("NHWC", "NCH")


def _user_model(root: Path, name: str, src: Path, backend: str, in_layout: str, art_layout: str, shape: str) -> Path:
    d = root / name
    d.mkdir(parents=True)
    art = d / src.name
    art.write_bytes(src.read_bytes())
    (d / "manifest.toml").write_text(
        f'[input]\nshape = {shape}\ndtype = "float32"\nlayout = "{in_layout}"\n\n'
        f'[artifacts.{backend}]\nfile = "{src.name}"\nsha256 = "{sha(art)}"\nlayout = "{art_layout}"\n'
    )
    return d


def test_user_model_with_only_a_manifest(tmp_path):
    """A TOML manifest next to a model file is all a user writes; dynamic batch, own layout."""
    root = tmp_path / "user"
    _user_model(root, "digits_nchw", MODELS / "cnn" / "model.onnx", "onnx", "NCHW", "NCHW", '["N", 1, 8, 8]')
    _user_model(root, "signal", MODELS / "mlp" / "model.tflite", "tflite", "NC", "NC", "[-1, 30]")
    cat = Catalogue.discover([root])
    assert {"digits_nchw", "signal", "mlp", "cnn"} <= set(cat.names())
    x_nhwc, _ = cat.get("cnn").load_validation()
    with cat.load("digits_nchw", "auto") as user, cat.load("cnn", "onnx") as shipped:
        out = user.predict(np.ascontiguousarray(x_nhwc[:9].transpose(0, 3, 1, 2)))
        np.testing.assert_allclose(out, shipped.predict(x_nhwc[:9]), atol=1e-6)
    if "litert" in available_backends():
        with cat.load("signal") as m:
            assert m.backend_name == "litert" and m.predict(np.zeros((4, 30), np.float32)).shape == (4, 2)


def test_user_manifest_that_contradicts_the_file(tmp_path):
    root = tmp_path / "user"
    _user_model(root, "wrong", MODELS / "mlp" / "model.onnx", "onnx", "NC", "NC", "[-1, 31]")
    cat = Catalogue.discover([root], include_shipped=False)
    with pytest.raises(ManifestError, match=r"takes float32 \[None, 30\] but the manifest says float32 \[None, 31\]"):
        cat.load("wrong")
