"""Single-tensor cuts, head/tail sessions and their verification (issue 12).

Real onnxruntime sessions on the shipped ``cnn``/``rgbcnn`` and on a graph built here with
``onnx.helper`` (a residual branch, so some positions have no single-tensor cut, and a
Constant node the tail must copy from the head).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")

from edged.errors import ManifestError  # noqa: E402
from edged.models import Catalogue  # noqa: E402
from edged.partition import ALL_FOG, ALL_LOCAL  # noqa: E402
from edged.partition.graph import PartitionError, analyse  # noqa: E402
from edged.partition.split import PartitionedModel  # noqa: E402
from tests.modelgen import write_model  # noqa: E402


def residual_onnx(scale: float = 2.0) -> bytes:
    """x [N,8] -> MatMul -> Relu -> MatMul -> Add(x) = s -> Mul(const) = m -> MatMul -> Softmax."""
    from onnx import TensorProto, checker, helper, numpy_helper

    rng = np.random.default_rng(5)
    w = {"W1": rng.standard_normal((8, 16)), "W2": rng.standard_normal((16, 8)), "W3": rng.standard_normal((8, 3))}
    nodes = [
        helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.array(scale, np.float32), "cv")),
        helper.make_node("MatMul", ["x", "W1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("MatMul", ["r1", "W2"], ["h2"]),
        helper.make_node("Add", ["h2", "x"], ["s"]),
        helper.make_node("Mul", ["s", "c"], ["m"]),
        helper.make_node("MatMul", ["m", "W3"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "residual", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array((v * 0.4).astype(np.float32), k) for k, v in w.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="edged-tests")
    model.ir_version = 8
    checker.check_model(model)
    return bytes(model.SerializeToString())


def write_residual(root: Path, name: str = "residual", partition=None, scale: float = 2.0) -> Path:
    manifest = {
        "format": "edged-model/2", "name": name,
        "inputs": [{"name": "x", "shape": [-1, 8], "dtype": "float32", "layout": "NC"}],
        "outputs": [{"name": "probs", "kind": "probabilities", "labels": ["a", "b", "c"]}],
    }
    if partition is not None:
        manifest["partition"] = partition
    x = np.random.default_rng(9).standard_normal((40, 8)).astype(np.float32)
    return write_model(root, name, manifest, {"onnx": ("model.onnx", residual_onnx(scale))}, {"x": x})


def test_residual_graph_has_only_single_tensor_cuts(tmp_path):
    d = write_residual(tmp_path / "models")
    plan = analyse(d / "model.onnx")
    names = [c.name for c in plan.cuts]
    # inside the residual branch x is still needed by Add: two tensors live, no cut there
    assert names == [ALL_FOG, "s", "m", "logits", ALL_LOCAL]
    assert [c.k for c in plan.cuts] == [0, 5, 6, 7, 8]
    assert [c.bytes for c in plan.cuts] == [32, 32, 32, 12, 12]
    s = plan.get("s")
    tail_ops = [n.op_type for n in plan.tail_model(s).graph.node]
    assert tail_ops == ["Constant", "Mul", "MatMul", "Softmax"]  # the head's Constant copied into the tail
    with pytest.raises(PartitionError, match=r"no single-tensor cut 'h1'.*all-fog, s, m, logits, all-local"):
        plan.get("h1")


def test_every_cut_of_the_residual_model_reproduces_the_full_output(tmp_path):
    d = write_residual(tmp_path / "models")
    cat = Catalogue.discover([d.parent], include_shipped=False)
    pm = PartitionedModel(cat.get("residual"))
    assert pm.cut_names == [ALL_FOG, "s", "m", "logits", ALL_LOCAL]
    assert pm.verified_on == 40 and set(pm.deltas) == {"s", "m", "logits"}
    x, _ = cat.get("residual").load_validation()
    with cat.load("residual", "onnx") as full:
        want = full.predict(x)
        for name in pm.cut_names:
            got = pm.run(name, x)["probs"]
            assert np.max(np.abs(got - want)) <= 1e-5, name
            one = pm.run(name, x[3])["probs"]  # one sample, no batch axis
            assert np.max(np.abs(one[0] - want[3])) <= 1e-5, name


def test_manifest_restricts_the_cuts(tmp_path):
    d = write_residual(tmp_path / "models", partition={"cuts": ["m"]})
    cat = Catalogue.discover([d.parent], include_shipped=False)
    assert cat.get("residual").manifest_cuts == ("m",)
    pm = PartitionedModel(cat.get("residual"))
    assert pm.cut_names == [ALL_FOG, "m", ALL_LOCAL]
    assert pm.rejected == {"s": "not in the manifest's partition.cuts", "logits": "not in the manifest's partition.cuts"}
    with pytest.raises(PartitionError, match=r"no usable cut 's' \(not in the manifest's partition.cuts\)"):
        pm.head("s", np.zeros(8, np.float32))


def test_manifest_cut_that_is_not_a_cut_is_refused_naming_the_cuts(tmp_path):
    d = write_residual(tmp_path / "models", partition={"cuts": ["h1"]})
    cat = Catalogue.discover([d.parent], include_shipped=False)
    with pytest.raises(PartitionError, match=r"'h1' named in partition.cuts are not single-tensor cuts.*s, m, logits"):
        PartitionedModel(cat.get("residual"))


@pytest.mark.parametrize("bad", ["m", {"cuts": "m"}, {"cuts": [1]}])
def test_malformed_partition_key_is_a_manifest_error(tmp_path, bad):
    d = write_residual(tmp_path / "models", partition=bad)
    cat = Catalogue.discover([d.parent], include_shipped=False)
    assert "residual" not in cat.servable_names()
    assert "partition.cuts" in cat.unservable()["residual"]
    from edged.models import parse_manifest

    with pytest.raises(ManifestError, match=r"field 'partition.cuts'"):
        parse_manifest(d / "manifest.json")


def test_a_cut_that_differs_is_not_offered(tmp_path):
    d = write_residual(tmp_path / "models")
    cat = Catalogue.discover([d.parent], include_shipped=False)
    pm = PartitionedModel(cat.get("residual"), tolerance=-1.0)  # nothing can be that close
    assert pm.cut_names == [ALL_FOG, ALL_LOCAL]
    assert all("differ from the full model by" in why for why in pm.rejected.values())


def test_tail_hash_identifies_the_tail_graph(tmp_path):
    a = analyse(write_residual(tmp_path / "a", scale=2.0) / "model.onnx")
    b = analyse(write_residual(tmp_path / "b", scale=2.0) / "model.onnx")
    c = analyse(write_residual(tmp_path / "c", scale=3.0) / "model.onnx")  # the Constant differs
    hashes = {x.name: x.tail_hash for x in a.cuts}
    assert hashes == {x.name: x.tail_hash for x in b.cuts}  # same file, same hashes
    assert len({h for n, h in hashes.items() if n != ALL_LOCAL}) == 4 and hashes[ALL_LOCAL] == ""
    assert c.get("s").tail_hash != hashes["s"]  # its tail reads the constant
    assert c.get("logits").tail_hash == hashes["logits"]  # this tail does not


@pytest.mark.parametrize("name", ["cnn", "rgbcnn"])
def test_every_cut_of_a_shipped_model_reproduces_the_full_output(catalogue, name):
    entry = catalogue.get(name)
    x, _ = entry.load_validation()
    n = 64 if os.environ.get("EDGED_EMULATED") else len(x)  # the whole set takes 2 s here, 10+ under qemu
    pm = PartitionedModel(entry, max_verify=n)  # verifies every cut on the validation set
    assert pm.verified_on == n and not pm.rejected
    assert len(pm.cuts) == len(pm.plan.nodes) + 1  # a chain: a cut after every node
    with catalogue.load(name, "onnx") as full:
        want = full.predict(x[:32])
    for c in pm.cuts:
        got = pm.run(c.name, x[:32])["probs"]
        assert np.max(np.abs(got - want)) <= 1e-5, c.name
        if c.interior:
            mid = pm.head(c.name, x[:2])
            assert mid.nbytes == 2 * c.bytes and list(mid.shape[1:]) == list(c.shape[1:])  # sizes from the graph


def test_rgbcnn_has_cuts_far_smaller_than_its_input(catalogue):
    plan = analyse(catalogue.get("rgbcnn").artifacts["onnx"].path)
    sizes = {c.name: c.bytes for c in plan.cuts}
    assert sizes[ALL_FOG] == 64 * 64 * 3 * 4
    assert sizes["p1"] == 8192 and sizes["p2"] == 4096 and sizes["p3"] == 2048  # 6x, 12x, 24x smaller
    p1 = plan.get("p1")
    flops_after = sum(la.flops for la in plan.layers if la.index >= p1.k)
    assert flops_after >= 0.85 * sum(la.flops for la in plan.layers)  # the work is after the early shrink


def test_rgbcnn_manifest_carries_accuracy_and_f1(catalogue):
    m = json.loads(catalogue.get("rgbcnn").manifest_path.read_text())
    assert m["input"]["shape"] == [None, 64, 64, 3]
    for backend in ("onnx", "litert"):
        assert m["metrics"][backend]["accuracy"] >= 0.9 and m["metrics"][backend]["macro_f1"] >= 0.9


def test_tail_checks_the_intermediate_shape(catalogue):
    pm = PartitionedModel(catalogue.get("cnn"), verify=False)
    with pytest.raises(PartitionError, match=r"cut 'p': the intermediate tensor has shape \[1, 32, 4, 5\], "
                                             r"expected \['N', 32, 4, 4\]"):
        pm.tail("p", np.zeros((1, 32, 4, 5), np.float32))


def test_a_model_without_onnx_cannot_be_partitioned(catalogue):
    with pytest.raises(PartitionError, match="cnn_int8.*no onnx artifact"):
        PartitionedModel(catalogue.get("cnn_int8"))
