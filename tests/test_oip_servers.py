"""The OIP fog back end against real servers: MLServer and KServe as subprocesses on loopback ports.

Each server serves an ``edged export-fog`` folder of the shipped mlp and cnn, a multi-input stateful model
(x, h, sr int64 without a batch axis) and an int8 model. What is checked: offloaded outputs equal local
ones (gRPC raw contents from MLServer, typed contents from KServe, REST JSON), identity (wrong version and
wrong model behind the name are refused and run locally, through the real Dispatcher), and a server killed
mid-stream (every input exactly one record, none lost).

Skipped where mlserver/kserve/grpcio are not installed (``make test-oip`` runs them in .venv-oip).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import numpy as np
import pytest

from tests.oip_servers import Server, require, start_kserve, start_mlserver, write_altered_mlp, write_test_models

MODELS = ("mlp", "cnn", "vad", "q8")


@pytest.fixture(scope="module")
def catalogue_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require("grpc", "onnx")
    return write_test_models(tmp_path_factory.mktemp("oip-models"))


@pytest.fixture(scope="module")
def local(catalogue_dir: Path) -> Iterator[Dict[str, Any]]:
    from edged.models import Catalogue

    cat = Catalogue.discover([catalogue_dir])
    models = {n: cat.load(n, backend="onnx") for n in MODELS}
    yield models
    for m in models.values():
        m.close()


@pytest.fixture(scope="module")
def mlserver(catalogue_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    require("grpc", "mlserver")
    from edged.export_fog import export
    from edged.models import Catalogue

    out = tmp_path_factory.mktemp("mlserver")
    export("mlserver", out / "repo", Catalogue.discover([catalogue_dir]), MODELS)
    server = start_mlserver(out / "repo", out / "mlserver.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def kserve(catalogue_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    require("grpc", "kserve")
    from edged.export_fog import export
    from edged.models import Catalogue

    out = tmp_path_factory.mktemp("kserve")
    export("kserve", out / "repo", Catalogue.discover([catalogue_dir]), MODELS)
    server = start_kserve([out / "repo" / n for n in MODELS], out / "kserve.log")
    yield server
    server.stop()


def _backend(url: str, **kw: Any) -> Any:
    from edged.offload.oip import OipFogBackend

    return OipFogBackend(url, **kw)


def _feeds(model: Any, row: int) -> Dict[str, np.ndarray]:
    feeds, _ = model.entry.load_validation_feeds()
    out = {k: (v[row] if model.entry.get_input(k).batched else v) for k, v in feeds.items()}
    for i in model.entry.state_inputs:
        out.setdefault(i.name, np.full([d or 1 for d in i.sample_shape], 0.25, np.dtype(i.dtype)))
    return out


def _assert_outputs_equal(fog: Any, local: Dict[str, Any], rows: int = 3) -> None:
    for name, model in local.items():
        h = model.entry.model_hash
        for r in range(rows):
            feeds = _feeds(model, r)
            want = model.run(feeds)  # every output by name, batch axis first
            got = fog.submit(name, feeds, h, 5.0).result(10)
            assert set(got.outputs) == set(want), name
            for k in want:
                assert got.outputs[k].dtype == want[k].dtype, (name, k)
                np.testing.assert_allclose(got.outputs[k], want[k], rtol=1e-5, atol=1e-6, err_msg=f"{name}.{k}")
            assert got.t_f_source == "server" and 0 < got.t_f_us <= got.rtt_us
            if model.entry.inputs[0].name == model.entry.input.name and len(model.entry.inputs) == 1:
                one = fog.submit(name, feeds[model.entry.input.name], h, 5.0).result(10)  # v1: one array in
                np.testing.assert_allclose(one.outputs, want[model.entry.outputs[0].name][0], rtol=1e-5, atol=1e-6)


@pytest.mark.timeout(120)
def test_mlserver_outputs_equal_local_every_model(mlserver: Server, local: Dict[str, Any]) -> None:
    fog = _backend(mlserver.grpc, identity="version")
    try:
        status = fog.attach_models(local)
        assert status == {n: "verified" for n in MODELS}, status
        _assert_outputs_equal(fog, local)
        reply = fog.submit("cnn", _feeds(local["cnn"], 0), local["cnn"].entry.model_hash, 5.0).result(10)
        assert reply.model_version == "sha256-" + local["cnn"].entry.model_hash[:16]
        pong = fog.ping(timeout_s=2.0)
        assert pong.models["cnn"]["model_hash"] == local["cnn"].entry.model_hash and pong.models["cnn"]["t_f_us"] > 0
        padded = fog.ping(timeout_s=2.0, pad_bytes=50_000)  # a bandwidth probe: the bytes really go out
        assert padded.bytes_out > 100_000 > pong.bytes_out
    finally:
        fog.close()


@pytest.mark.timeout(120)
def test_mlserver_rest_json(mlserver: Server, local: Dict[str, Any]) -> None:
    fog = _backend(mlserver.http, protocol="rest", identity="version")
    try:
        assert fog.attach_models(local) == {n: "verified" for n in MODELS}
        _assert_outputs_equal(fog, local, rows=2)
    finally:
        fog.close()
    from edged.offload.fog_client import FogRefused

    bare = _backend(mlserver.http, protocol="rest", identity="version")  # no models attached: the hash decides
    try:
        ok = bare.submit("mlp", _feeds(local["mlp"], 0), local["mlp"].entry.model_hash, 5.0).result(10)
        assert ok.outputs["probs"].shape == (1, 2)
        with pytest.raises(FogRefused, match="does not serve model 'mlp' version 'sha256-ffffffffffffffff'"):
            bare.submit("mlp", _feeds(local["mlp"], 0), "f" * 64, 5.0).result(10)
    finally:
        bare.close()


@pytest.mark.timeout(120)
def test_kserve_typed_contents_and_rest(kserve: Server, local: Dict[str, Any]) -> None:
    for url, protocol in ((kserve.grpc, "grpc"), (kserve.http, "rest")):
        fog = _backend(url, protocol=protocol, identity="name")
        try:
            assert fog.attach_models(local) == {n: "verified" for n in MODELS}, protocol
            _assert_outputs_equal(fog, local, rows=2)
        finally:
            fog.close()


def _dispatch(local: Dict[str, Any], fog: Any, names: List[str], n: int, policy: str = "offload",
              between: Any = None, gap_s: float = 0.0) -> List[Dict[str, Any]]:
    from edged.offload.dispatcher import Dispatcher
    from edged.sources.sample import Sample

    records: List[Dict[str, Any]] = []
    lock = threading.Lock()

    def sink(rec: Dict[str, Any]) -> None:
        with lock:
            records.append(rec)

    d = Dispatcher({k: local[k] for k in names}, {"*": policy}, sink, fog=fog, fog_timeout_s=1.0,
                   probe_interval_s=0.1)
    xs = {k: local[k].entry.load_validation()[0] for k in names}
    for i in range(n):
        name = names[i % len(names)]
        x = xs[name]
        d.submit(Sample(model=name, seq=i, array=x[i % len(x)], source="t"))
        if between is not None:
            between(i)
        if gap_s:
            time.sleep(gap_s)
    assert d.close(30.0)
    return records


@pytest.mark.timeout(180)
def test_wrong_version_and_wrong_model_are_refused_then_run_locally(mlserver: Server, local: Dict[str, Any],
                                                                    tmp_path: Path) -> None:
    from edged.models import Catalogue
    from tests.conftest import MODELS as SHIPPED

    altered_dir = tmp_path / "altered"
    write_altered_mlp(altered_dir, SHIPPED / "mlp")
    altered = Catalogue.discover([altered_dir]).load("mlp", backend="onnx")
    assert altered.entry.model_hash != local["mlp"].entry.model_hash
    try:
        # the version names the hash: the node has no such version of mlp -> refused at connect
        fog = _backend(mlserver.grpc, identity="version")
        status = fog.attach_models({"mlp": altered})
        assert status["mlp"].startswith("refused: ") and "no ready model 'mlp' version 'sha256-" in status["mlp"]
        recs = _dispatch({"mlp": altered}, fog, ["mlp"], 10)
        fog.close()
        assert sorted(r["seq"] for r in recs) == list(range(10))
        assert "offload" not in {r["decision"] for r in recs}
        first = min(recs, key=lambda r: r["seq"])
        assert first["decision"] == "fallback" and "FogRefused" in first["fog_error"]
        assert "sha256-" + altered.entry.model_hash[:16] in first["fog_error"]
        want = altered.predict(altered.entry.load_validation()[0][0])
        assert first["result"]["label"] == int(np.argmax(want))
        # no version (identity "none"): the name alone matches; edged's runtime says which hash it serves
        # (a server that does not, e.g. Triton, is caught by the canary: test_oip_client.py)
        fog = _backend(mlserver.grpc, identity="none")
        status = fog.attach_models({"mlp": altered})
        assert status["mlp"] == (f"refused: node {fog.node} serves model mlp with hash "
                                 f"{local['mlp'].entry.model_hash[:16]}, this edge runs "
                                 f"{altered.entry.model_hash[:16]}"), status
        recs = _dispatch({"mlp": altered}, fog, ["mlp"], 10)
        fog.close()
        assert len(recs) == 10 and "offload" not in {r["decision"] for r in recs}
        assert any("serves model mlp with hash" in (r.get("fog_error") or "") for r in recs)
        # the right model through the same path is offloaded
        fog = _backend(mlserver.grpc, identity="none")
        assert fog.attach_models({"mlp": local["mlp"]}) == {"mlp": "verified"}
        recs = _dispatch(local, fog, ["mlp"], 10)
        fog.close()
        assert [r["decision"] for r in sorted(recs, key=lambda r: r["seq"])] == ["offload"] * 10
    finally:
        altered.close()


@pytest.mark.timeout(240)
def test_server_killed_mid_stream_loses_nothing(catalogue_dir: Path, local: Dict[str, Any], tmp_path: Path) -> None:
    require("grpc", "mlserver")
    from edged.export_fog import export
    from edged.models import Catalogue

    export("mlserver", tmp_path / "repo", Catalogue.discover([catalogue_dir]), ["mlp", "cnn"])
    server = start_mlserver(tmp_path / "repo", tmp_path / "mlserver.log")
    fog = _backend(server.grpc, identity="version")
    try:
        assert fog.attach_models({k: local[k] for k in ("mlp", "cnn")}) == {"mlp": "verified", "cnn": "verified"}
        n = 400

        def kill_at_half(i: int) -> None:
            if i == n // 2:
                server.kill()

        recs = _dispatch(local, fog, ["mlp", "cnn"], n, between=kill_at_half, gap_s=0.002)
    finally:
        fog.close()
        server.stop()
    seqs = sorted(r["seq"] for r in recs)
    assert seqs == list(range(n)), "every input exactly one record"
    decisions = [r["decision"] for r in sorted(recs, key=lambda r: r["seq"])]
    assert decisions[: n // 4].count("offload") >= 0.9 * (n // 4), "offloaded while the node was up"
    assert set(decisions[n // 2 + 1:]) <= {"fallback", "local"} and "offload" not in decisions[n // 2 + 10:]
    assert all(r.get("result") is not None and not r.get("error") for r in recs), "each one has a result"
    assert any(r["decision"] == "fallback" and "Fog" in (r.get("fog_error") or "") for r in recs)
