"""OIP without a server: the wire codec (raw and typed contents, every dtype, REST JSON), fog.url parsing,
the [fog] keys of backend = "oip" in check-config, and the files edged export-fog writes."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from edged.offload import oip_wire as w
from edged.offload.oip_target import parse_oip_url
from tests.conftest import MODELS, run_edged

DTYPES = ["float32", "float64", "float16", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
          "bool"]


def _sample(dtype: str, shape: tuple = (2, 3)) -> np.ndarray:
    rng = np.random.default_rng(len(dtype))
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.standard_normal(shape).astype(dt)
    if dt.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, shape, endpoint=True, dtype=dt)


@pytest.mark.parametrize("dtype", DTYPES)
def test_request_round_trip_raw_every_dtype(dtype: str) -> None:
    x = _sample(dtype)
    body = w.encode_infer_request("m", {"a": x, "b": np.arange(3, dtype=np.int64)}, version="sha256-0123",
                                  request_id="7", outputs=["y"], parameters={"k": 3, "s": "x", "t": True},
                                  padding=100)
    req = w.decode_infer_request(body)
    assert (req.model, req.version, req.request_id, req.outputs) == ("m", "sha256-0123", "7", ["y"])
    assert req.parameters == {"k": 3, "s": "x", "t": True}
    assert req.inputs["a"].dtype == x.dtype and req.inputs["a"].shape == x.shape
    np.testing.assert_array_equal(req.inputs["a"], x)
    np.testing.assert_array_equal(req.inputs["b"], np.arange(3))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_response_raw_and_typed_contents_decode_alike(dtype: str, raw: bool) -> None:
    x = _sample(dtype, (1, 4))
    if dtype == "float16" and not raw:
        with pytest.raises(w.OipWireError, match="FP16 has no typed contents"):
            w.encode_infer_response("m", {"y": x}, raw=False)
        return
    body = w.encode_infer_response("m", {"y": x, "z": np.zeros((0, 2), np.float32)}, version="v", request_id="9",
                                   parameters={"edged_t_f_ns": 12345, "edged_model_hash": "ab"}, raw=raw)
    resp = w.decode_infer_response(body)
    assert resp.raw is raw and (resp.model, resp.version, resp.request_id) == ("m", "v", "9")
    assert resp.parameters == {"edged_t_f_ns": 12345, "edged_model_hash": "ab"}
    assert resp.outputs["y"].dtype == x.dtype and resp.outputs["y"].shape == (1, 4)
    np.testing.assert_array_equal(resp.outputs["y"], x)
    assert resp.outputs["z"].shape == (0, 2)


def test_negative_ints_and_unpacked_shapes() -> None:
    """int8/int32/int64 negatives travel as 10-byte varints in typed contents; a shape may come unpacked."""
    q = np.array([[-128, -1, 0, 127]], np.int8)
    resp = w.decode_infer_response(w.encode_infer_response("m", {"q": q}, raw=False))
    np.testing.assert_array_equal(resp.outputs["q"], q)
    # a hand-built output whose shape is written as separate varints (not packed)
    meta = (w._str_field(1, "y") + w._str_field(2, "INT64") + w._key(3, 0) + w._varint(1) + w._key(3, 0)
            + w._varint(2))
    body = w._len_field(5, meta) + w._len_field(6, np.array([-5, 2**40], "<i8").tobytes())
    out = w.decode_infer_response(body).outputs["y"]
    assert out.shape == (1, 2) and out.tolist() == [[-5, 2**40]]


def test_malformed_messages_name_what_is_wrong() -> None:
    good = w.encode_infer_response("m", {"probs": np.ones((1, 3), np.float32)})
    with pytest.raises(w.OipWireError):
        w.decode_infer_response(good[:-3])  # truncated
    bad = w._len_field(5, w._str_field(1, "probs") + w._str_field(2, "FP32") + w._shape_field(3, [1, 3]))
    bad += w._len_field(6, b"\0" * 8)  # 2 floats for a shape of 3
    with pytest.raises(w.OipWireError, match=r"tensor 'probs': 2 values for shape \[1, 3\]"):
        w.decode_infer_response(bad)
    odd = w._len_field(5, w._str_field(1, "y") + w._str_field(2, "BYTES") + w._shape_field(3, [1]))
    with pytest.raises(w.OipWireError, match="'BYTES' is not supported"):
        w.decode_infer_response(odd + w._len_field(6, b"abc"))
    with pytest.raises(w.OipWireError, match="dtype complex64 has no Open Inference Protocol datatype"):
        w.encode_infer_request("m", {"x": np.zeros(2, np.complex64)})


def test_ready_and_statistics_messages() -> None:
    assert w.decode_ready_response(w.encode_ready_response(True)) is True
    assert w.decode_ready_response(b"") is False
    req = w.parse_fields(w.encode_model_ready_request("mlp", "sha256-1"))
    assert req[1] == [b"mlp"] and req[2] == [b"sha256-1"]
    assert len(w.encode_server_ready_request(padding=5000)) > 5000  # a padded probe really carries the bytes
    stats = w.encode_compute_infer_stats("cnn", count=40, ns=4_000_000)
    assert w.decode_compute_infer_stats(stats, "cnn") == (40, 4_000_000)
    assert w.decode_compute_infer_stats(stats, "mlp") is None


def test_rest_json_round_trip_and_errors() -> None:
    q = np.array([[-3, 4]], np.int8)
    doc = orjson.loads(w.encode_rest_request({"q": q, "x": np.ones((1, 2), np.float32)}, request_id="r"))
    assert doc["id"] == "r" and doc["inputs"][0] == {"name": "q", "shape": [1, 2], "datatype": "INT8",
                                                      "data": [-3, 4]}
    reply = {"model_name": "m", "model_version": "v", "id": "r", "parameters": {"edged_t_f_ns": 5},
             "outputs": [{"name": "y", "shape": [1, 2], "datatype": "INT8", "data": [-3, 4]}]}
    resp = w.decode_rest_response(orjson.dumps(reply))
    assert resp.outputs["y"].dtype == np.int8 and resp.outputs["y"].tolist() == [[-3, 4]]
    assert resp.parameters == {"edged_t_f_ns": 5} and resp.version == "v"
    with pytest.raises(w.OipWireError, match="not JSON"):
        w.decode_rest_response(b"<html>")
    with pytest.raises(w.OipWireError, match="no 'outputs' list"):
        w.decode_rest_response(b'{"error": "x"}')
    with pytest.raises(w.OipWireError, match=r"tensor 'y': 3 values for shape \[1, 2\]"):
        w.decode_rest_response(orjson.dumps({"outputs": [{"name": "y", "shape": [1, 2], "datatype": "FP32",
                                                          "data": [1, 2, 3]}]}))


def test_codec_agrees_with_the_generated_protobuf_classes() -> None:
    """Where MLServer is installed, its generated dataplane_pb2 parses what we write and we parse what it writes."""
    if importlib.util.find_spec("mlserver") is None:
        pytest.skip("needs mlserver's generated OIP protobuf classes (the 'oip-test' extra: make test-oip)")
    from mlserver.grpc import dataplane_pb2 as pb

    body = w.encode_infer_request("mlp", {"x": np.arange(6, dtype=np.float32).reshape(1, 6),
                                          "q": np.array([[-3, 4]], np.int8)}, version="sha256-ab", request_id="1",
                                  outputs=["probs"], parameters={"a": 1, "b": "s"}, padding=64)
    m = pb.ModelInferRequest()
    m.ParseFromString(body)
    assert (m.model_name, m.model_version, m.id) == ("mlp", "sha256-ab", "1")
    assert [(i.name, i.datatype, list(i.shape)) for i in m.inputs] == [("x", "FP32", [1, 6]), ("q", "INT8", [1, 2])]
    assert m.raw_input_contents[1] == np.array([-3, 4], np.int8).tobytes() and m.parameters["b"].string_param == "s"
    r = pb.ModelInferResponse(model_name="m", model_version="v", id="1")
    o = r.outputs.add(name="probs", datatype="FP32", shape=[1, 3])
    o.contents.fp32_contents.extend([0.25, 0.25, 0.5])
    o = r.outputs.add(name="q", datatype="INT8", shape=[2])
    o.contents.int_contents.extend([-5, 7])
    r.parameters["edged_t_f_ns"].int64_param = 1234
    resp = w.decode_infer_response(r.SerializeToString())
    assert resp.outputs["probs"].tolist() == [[0.25, 0.25, 0.5]] and resp.outputs["q"].tolist() == [-5, 7]
    assert resp.parameters == {"edged_t_f_ns": 1234} and not resp.raw


# ---- fog.url -------------------------------------------------------------------------------------
@pytest.mark.parametrize("url,protocol,expect", [
    ("127.0.0.1:8081", "grpc", "grpc://127.0.0.1:8081"),
    ("grpcs://fog.example:443", "grpc", "grpcs://fog.example:443"),
    ("[::1]:8001", "grpc", "grpc://[::1]:8001"),
    ("http://fog:8080", "rest", "http://fog:8080"),
    ("https://gw.example/mlserver/", "rest", "https://gw.example:443/mlserver"),
])
def test_oip_urls(url: str, protocol: str, expect: str) -> None:
    target, why = parse_oip_url(url, protocol)
    assert why == "" and str(target) == expect


@pytest.mark.parametrize("url,protocol,why", [
    ("", "grpc", "the OIP server's address"),
    ("fog.local", "grpc", "a port is needed"),
    ("http://fog:8080", "grpc", "for a http:// url set protocol = 'rest'"),
    ("fog:8081", "rest", "http://HOST[:PORT] or https://HOST[:PORT] for protocol = 'rest'"),
    ("grpc://fog:8081/v2", "grpc", "no path, query or fragment"),
    ("grpc://fog:99999", "grpc", "out of range"),
])
def test_bad_oip_urls_say_what_is_expected(url: str, protocol: str, why: str) -> None:
    target, msg = parse_oip_url(url, protocol)
    assert target is None and why in msg


# ---- config --------------------------------------------------------------------------------------
def _parse(fog: dict, check_paths: bool = False) -> Any:
    from edged.config import parse_config

    return parse_config({"fog": fog}, path="t.toml", check_paths=check_paths)


def test_config_oip_keys_and_defaults_keep_zmq_working() -> None:
    cfg, errs = _parse({"endpoint": "tcp://10.0.0.2:5556"})
    assert errs == [] and cfg.fog.backend == "zmq" and cfg.fog.endpoint == "tcp://10.0.0.2:5556"
    cfg, errs = _parse({"backend": "oip", "url": "fog.local:8081", "identity": "name", "canary": 2,
                        "tensors": "artifact", "timeout_ms": 200})
    assert errs == []
    assert (cfg.fog.backend, cfg.fog.url, cfg.fog.protocol, cfg.fog.identity, cfg.fog.canary) == (
        "oip", "fog.local:8081", "grpc", "name", 2)
    from edged.config import fog_address

    assert fog_address(cfg.fog) == "oip grpc fog.local:8081"


@pytest.mark.parametrize("fog,key,why", [
    ({"backend": "oip"}, "fog.url", "the OIP server's address"),
    ({"backend": "oip", "url": "http://fog:8080"}, "fog.url", "set protocol = 'rest'"),
    ({"backend": "triton"}, "fog.backend", "'zmq'"),
    ({"backend": "oip", "url": "fog:8081", "protocol": "http"}, "fog.protocol", "'grpc'"),
    ({"backend": "oip", "url": "fog:8081", "identity": "hash"}, "fog.identity", "'version'"),
    ({"backend": "oip", "url": "fog:8081", "tls_cert_file": "c.pem"}, "fog.tls_key_file", "mutual TLS needs both"),
    ({"backend": "oip", "url": "http://fog:80", "protocol": "rest", "tls_cert_file": "c", "tls_key_file": "k"},
     "fog.tls_cert_file", "mutual TLS is for gRPC"),
    ({"backend": "oip", "url": "fog:8081", "canary": -1}, "fog.canary", ">= 0"),
])
def test_config_oip_errors_name_key_and_expectation(fog: dict, key: str, why: str) -> None:
    _, errs = _parse(fog)
    assert any(key in e and why in e for e in errs), errs


def test_config_oip_tls_files_must_exist(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    _, errs = _parse({"backend": "oip", "url": "grpcs://fog:443", "tls_ca_file": str(ca),
                      "tls_cert_file": str(tmp_path / "nope.pem"), "tls_key_file": str(ca)}, check_paths=True)
    assert len(errs) == 1 and "fog.tls_cert_file" in errs[0] and "no such file" in errs[0]


def test_check_config_cli_reports_oip(tmp_path: Path) -> None:
    cfg = tmp_path / "edged.toml"
    cfg.write_text(f'[logs]\ndir = "{tmp_path}/logs"\n[fog]\nbackend = "oip"\nurl = "127.0.0.1:8081"\n')
    p = run_edged(["check-config", str(cfg)])
    assert p.returncode == 0 and "fog on oip grpc 127.0.0.1:8081" in p.stdout, p.stderr
    cfg.write_text('[fog]\nbackend = "oip"\nurl = "http://127.0.0.1:8080"\n')
    p = run_edged(["check-config", str(cfg)])
    assert p.returncode == 78 and "fog.url" in p.stderr and "protocol = 'rest'" in p.stderr


def test_config_several_fog_nodes() -> None:
    """[[fog]]: zmq and oip nodes in order of preference; each validated under its own key; names unique."""
    from edged.config import apply_env_overrides, fog_name, parse_config

    raw = {"fog": [{"endpoint": "tcp://10.0.0.2:5556", "name": "box"},
                   {"backend": "oip", "url": "mlserver.local:8081", "timeout_ms": 100}]}
    cfg, errs = parse_config(raw, path="t.toml")
    assert errs == [] and [fog_name(f) for f in cfg.fog_nodes] == ["box", "mlserver.local:8081"]
    assert cfg.fog is cfg.fog_nodes[0] and cfg.fog_nodes[1].timeout_ms == 100
    env = apply_env_overrides(raw, {"EDGED_FOG__1__URL": "http://x:8080"})
    _, errs = parse_config(raw, path="t.toml", env_keys=env)
    assert len(errs) == 1 and errs[0].startswith("EDGED_FOG__1__URL") and "fog[1].url" in errs[0]
    _, errs = parse_config({"fog": [{"endpoint": "tcp://a:1"}, {"endpoint": "tcp://a:1"}]}, path="t.toml")
    assert len(errs) == 1 and "fog[1]" in errs[0] and "a name no other fog node has" in errs[0]
    _, errs = parse_config({"fog": []}, path="t.toml")
    assert len(errs) == 1 and "at least one [[fog]] table" in errs[0]
    _, errs = parse_config({"fog": [{"backend": "oip"}, "x"]}, path="t.toml")
    assert any("fog[0].url" in e for e in errs) and any("fog[1]" in e and "a table" in e for e in errs)
    cfg, errs = parse_config({"fog": {"endpoint": "tcp://10.0.0.2:5556"}}, path="t.toml")
    assert errs == [] and cfg.fogs == () and cfg.fog_nodes == (cfg.fog,)


def test_backend_errors_are_config_errors() -> None:
    from edged.errors import ConfigError
    from edged.offload.oip import OipFogBackend

    with pytest.raises(ConfigError, match="fog.url 'fog.local': expected .*a port is needed"):
        OipFogBackend("fog.local")
    if importlib.util.find_spec("grpc") is None:
        with pytest.raises(ConfigError, match=r"needs grpcio: pip install 'edged\[oip\]'"):
            OipFogBackend("127.0.0.1:1")
    with pytest.raises(ConfigError, match="mutual TLS needs both"):
        OipFogBackend("http://127.0.0.1:1", protocol="rest", tls_cert_file="c.pem")


def test_rest_backend_unreachable_node_fails_fast_with_unavailable() -> None:
    """REST needs no optional package: a node that is not there fails the request with FogUnavailable (the
    dispatcher then runs it locally), and a probe says the same."""
    from edged.offload.fog_client import FogUnavailable
    from edged.offload.oip import OipFogBackend
    from tests.oip_servers import free_port

    fog = OipFogBackend(f"http://127.0.0.1:{free_port()}", protocol="rest")
    try:
        fut = fog.submit("mlp", np.zeros(30, np.float32), "a" * 64, 2.0)
        with pytest.raises(FogUnavailable, match="Connection refused|ConnectionRefused"):
            fut.result(5)
        with pytest.raises(FogUnavailable):
            fog.ping(timeout_s=1.0)
        assert fog.derive_t_f_us(500.0, 1000) == 500.0  # no probe yet: no link time to subtract
    finally:
        fog.close()
    with pytest.raises(FogUnavailable, match="closed"):
        fog.submit("mlp", np.zeros(30, np.float32), None, 1.0).result(1)


def test_rest_backend_silent_node_times_out_by_the_deadline() -> None:
    """A node that accepts the connection and never answers: the request fails FogTimeout (the dispatcher runs
    it locally); close() fails whatever is still waiting with FogUnavailable."""
    import socket

    from edged.offload.fog_client import FogTimeout, FogUnavailable
    from edged.offload.oip import OipFogBackend

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel accepts; nobody reads or answers
        fog = OipFogBackend(f"http://127.0.0.1:{silent.getsockname()[1]}", protocol="rest", rest_workers=2)
        try:
            with pytest.raises(FogTimeout, match="within 0.100s"):
                fog.submit("mlp", np.zeros(30, np.float32), "a" * 64, 0.1).result(10)
            waiting = [fog.submit("mlp", np.zeros(30, np.float32), "a" * 64, 30.0) for _ in range(4)]
        finally:
            fog.close()
        for f in waiting:
            with pytest.raises(FogUnavailable, match="closed"):
                f.result(10)


# ---- export-fog ----------------------------------------------------------------------------------
def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_export_fog_mlserver_triton_kserve(tmp_path: Path, catalogue: Any) -> None:
    mlp, cnn = catalogue.get("mlp"), catalogue.get("cnn")
    tag = {e.name: "sha256-" + e.model_hash[:16] for e in (mlp, cnn)}
    for fmt in ("mlserver", "triton", "kserve"):
        p = run_edged(["export-fog", "--format", fmt, "--models", "mlp,cnn", str(tmp_path / fmt)])
        assert p.returncode == 0, p.stderr
    ml = tmp_path / "mlserver"
    settings = json.loads((ml / "cnn" / "model-settings.json").read_text())
    assert settings["implementation"] == "edged.fog.mlserver.EdgedRuntime"
    assert settings["parameters"]["version"] == tag["cnn"] and settings["parameters"]["uri"] == "./model"
    assert _sha(ml / "cnn" / "model" / "model.onnx") == cnn.artifacts["onnx"].sha256
    assert (ml / "cnn" / "model" / "manifest.json").read_bytes() == cnn.manifest_path.read_bytes()
    assert not (ml / "cnn" / "model" / "model.tflite").exists()  # the engine gets the ONNX file only
    tr = tmp_path / "triton" / f"cnn-{tag['cnn']}"
    cfg = (tr / "config.pbtxt").read_text()
    assert f'name: "cnn-{tag["cnn"]}"' in cfg and 'backend: "onnxruntime"' in cfg and "max_batch_size: 8" in cfg
    assert "dims: [ 1, 8, 8 ]" in cfg  # the file's own layout (NCHW): the edge sends tensors = "artifact"
    assert "dynamic_batching" in cfg and cnn.model_hash in cfg
    assert _sha(tr / "1" / "model.onnx") == cnn.artifacts["onnx"].sha256
    ks = (tmp_path / "kserve" / "inferenceservice.yaml").read_text()
    assert ks.count("kind: InferenceService") == 2 and f"mlp-{tag['mlp']}" in ks and "edged.fog.kserve" in ks
    assert _sha(tmp_path / "kserve" / "mlp" / "model.onnx") == mlp.artifacts["onnx"].sha256


def test_export_fog_refuses_a_tampered_artifact_and_unknown_models(tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(MODELS / "mlp", models / "mlp2")
    manifest = json.loads((models / "mlp2" / "manifest.json").read_text())
    manifest["name"] = "mlp2"
    (models / "mlp2" / "manifest.json").write_text(json.dumps(manifest))
    with open(models / "mlp2" / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    p = run_edged(["export-fog", "--format", "mlserver", "--models-dir", str(models), "--models", "mlp2",
                   str(tmp_path / "out")])
    assert p.returncode == 1 and "mlp2" in p.stderr and "sha256" in p.stderr
    assert not (tmp_path / "out" / "mlp2" / "model-settings.json").exists()
    p = run_edged(["export-fog", "--format", "triton", "--models", "nope", str(tmp_path / "out")])
    assert p.returncode == 1 and "no model named 'nope'" in p.stderr
    p = run_edged(["export-fog", "--format", "triton", "--models", "cnn_int8", str(tmp_path / "out")])
    assert p.returncode == 1 and "has no onnx artifact" in p.stderr
