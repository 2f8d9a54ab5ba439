"""LiteRT heads and tails written by models/build.py from the Keras model (TFLite has no graph extraction)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("onnx")


def _litert_or_skip() -> None:
    from edged.errors import MissingDependencyError
    from edged.runtime.litert import find_interpreter

    try:
        find_interpreter()
    except MissingDependencyError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def split(catalogue):
    _litert_or_skip()
    from edged.partition.litert import LitertSplit

    return LitertSplit(catalogue.get("rgbcnn"))


def test_every_litert_split_reproduces_model_tflite(split, catalogue):
    x, _ = catalogue.get("rgbcnn").load_validation()
    assert split.cut_names == ["p1", "p3"] and not split.rejected
    assert all(d <= 1e-5 for d in split.deltas.values())
    with catalogue.load("rgbcnn", "litert") as full:
        want = full.predict(x[:16])
    for cut in split.cut_names:
        mid = split.head(cut, x[:16])
        assert mid.nbytes == 16 * split.specs[cut]["bytes"]
        assert np.max(np.abs(split.tail(cut, mid) - want)) <= 1e-5, cut


def test_a_litert_head_feeds_the_onnx_tail_of_the_same_cut(split, catalogue):
    from edged.partition.split import PartitionedModel

    pm = PartitionedModel(catalogue.get("rgbcnn"), max_verify=16)
    x, _ = catalogue.get("rgbcnn").load_validation()
    with catalogue.load("rgbcnn", "onnx") as full:
        want = full.predict(x[:8])
    for cut in split.cut_names:
        mid = split.head_for_onnx(cut, x[:8])
        assert list(mid.shape[1:]) == list(pm.cut(cut).shape[1:])  # NCHW, as the ONNX tail takes it
        got = pm.tail(cut, mid)["probs"]
        assert np.max(np.abs(got - want)) <= 1e-4, cut  # two runtimes, same weights


def test_a_tampered_split_is_refused(catalogue, tmp_path):
    _litert_or_skip()
    from edged.errors import IntegrityError
    from edged.models import Catalogue
    from edged.partition.litert import LitertSplit

    d = tmp_path / "models" / "rgbcnn"
    shutil.copytree(catalogue.get("rgbcnn").dir, d)
    with open(d / "cuts" / "p3.tail.tflite", "ab") as f:
        f.write(b"\0")
    cat = Catalogue.discover([d.parent], include_shipped=False)
    with pytest.raises(IntegrityError, match=r"p3.tail.tflite: its sha256 differs from partition.litert_splits.p3"):
        LitertSplit(cat.get("rgbcnn"))


def test_a_model_without_splits_says_so(catalogue):
    from edged.partition.graph import PartitionError
    from edged.partition.litert import LitertSplit

    with pytest.raises(PartitionError, match="'cnn' has no LiteRT heads and tails"):
        LitertSplit(catalogue.get("cnn"))
