"""The OIP client against a Triton-like gRPC server in this process (real grpcio server, loopback sockets).

Triton's onnxruntime backend serves the ONNX file itself: the file's tensor names and layouts, integer versions,
no model hash in replies, and the statistics extension. :class:`TritonLike` does the same with onnxruntime, which
is what the paths below need: ``tensors = "artifact"`` (the cnn's NHWC input transposed to the file's NCHW),
T_F from the statistics, the canary as the only identity check (a wrong model behind the right name), replies
that name another version, deadlines, close() with requests in flight, and mutual TLS.

Needs grpcio (the ``oip`` extra); skipped without it.
"""

from __future__ import annotations

import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np
import pytest

grpc = pytest.importorskip("grpc", reason="needs grpcio (pip install 'edged[oip]')")

from edged.offload import oip_wire as w  # noqa: E402
from edged.offload.fog_client import FogRefused, FogTimeout, FogUnavailable  # noqa: E402
from edged.offload.oip import OipFogBackend, name_for  # noqa: E402
from tests.conftest import MODELS  # noqa: E402


class TritonLike:
    """ServerReady, ModelReady, ModelInfer (onnxruntime on the file's own names) and ModelStatistics."""

    def __init__(self, files: Dict[str, Path], delay_s: float = 0.0, reply_version: str = "1",
                 any_version: bool = False, tls: Optional[Tuple[bytes, bytes, bytes]] = None) -> None:
        import onnxruntime as ort

        self.sessions = {n: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for n, p in files.items()}
        self.delay_s = delay_s
        self.reply_version = reply_version
        self.any_version = any_version
        self.stats: Dict[str, Tuple[int, int]] = {}
        self.lock = threading.Lock()
        self.server = grpc.server(ThreadPoolExecutor(max_workers=8))
        handlers = {m: grpc.unary_unary_rpc_method_handler(getattr(self, m))
                    for m in ("ServerReady", "ModelReady", "ModelInfer", "ModelStatistics")}
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("inference.GRPCInferenceService",
                                                                                   handlers),))
        if tls is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            key, cert, ca = tls
            creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
            self.port = self.server.add_secure_port("127.0.0.1:0", creds)
        self.server.start()

    def swap(self, name: str, path: Path) -> None:
        import onnxruntime as ort

        self.sessions[name] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def _session(self, model: str, version: str, context: Any) -> Any:
        sess = self.sessions.get(model)
        if sess is None or (version not in ("", "1") and not self.any_version):
            context.abort(grpc.StatusCode.NOT_FOUND, f"Request for unknown model: '{model}' version {version!r}")
        return sess

    def ServerReady(self, body: bytes, context: Any) -> bytes:  # noqa: N802 - the OIP method name
        return w.encode_ready_response(True)

    def ModelReady(self, body: bytes, context: Any) -> bytes:  # noqa: N802
        f = w.parse_fields(body)
        name = f.get(1, [b""])[0].decode()
        version = f.get(2, [b""])[0].decode() if f.get(2) else ""
        return w.encode_ready_response(name in self.sessions and (version in ("", "1") or self.any_version))

    def ModelInfer(self, body: bytes, context: Any) -> bytes:  # noqa: N802
        req = w.decode_infer_request(body)
        sess = self._session(req.model, req.version, context)
        if self.delay_s:
            time.sleep(self.delay_s)
        t0 = time.perf_counter_ns()
        outs = sess.run(None, req.inputs)
        ns = time.perf_counter_ns() - t0
        with self.lock:
            c, total = self.stats.get(req.model, (0, 0))
            self.stats[req.model] = (c + 1, total + ns)
        names = [o.name for o in sess.get_outputs()]
        return w.encode_infer_response(req.model, dict(zip(names, outs)), version=self.reply_version,
                                       request_id=req.request_id)

    def ModelStatistics(self, body: bytes, context: Any) -> bytes:  # noqa: N802
        f = w.parse_fields(body)
        name = f.get(1, [b""])[0].decode()
        with self.lock:
            count, ns = self.stats.get(name, (0, 0))
        return w.encode_compute_infer_stats(name, count, ns, version="1")

    def stop(self) -> None:
        self.server.stop(0).wait(5)


@pytest.fixture(scope="module")
def local(catalogue: Any) -> Iterator[Dict[str, Any]]:
    models = {n: catalogue.load(n, backend="onnx") for n in ("mlp", "cnn")}
    yield models
    for m in models.values():
        m.close()


def _triton_name(model: Any) -> str:
    return name_for(model.entry.name, model.entry.model_hash)


@pytest.mark.timeout(60)
def test_artifact_tensors_and_t_f_from_server_statistics(local: Dict[str, Any]) -> None:
    cnn = local["cnn"]
    server = TritonLike({_triton_name(cnn): MODELS / "cnn" / "model.onnx"})
    fog = OipFogBackend(f"127.0.0.1:{server.port}", identity="name", tensors="artifact")
    try:
        assert fog.attach_models({"cnn": cnn}) == {"cnn": "verified"}  # the canary ran through the NCHW file
        x, _ = cnn.entry.load_validation()
        fog.ping(timeout_s=2.0)  # statistics baseline
        for i in range(5):
            reply = fog.submit("cnn", x[i], cnn.entry.model_hash, 5.0).result(10)  # NHWC in, as the edge has it
            np.testing.assert_allclose(reply.outputs, cnn.predict(x[i]), rtol=1e-5, atol=1e-6)
        assert reply.t_f_source == "derived"  # no statistics yet: round trip minus the probes' link time
        pong = fog.ping(timeout_s=2.0)
        assert pong.models["cnn"]["t_f_us"] > 0 and pong.models["cnn"]["model_hash"] == cnn.entry.model_hash
        reply = fog.submit("cnn", x[0], cnn.entry.model_hash, 5.0).result(10)
        assert reply.t_f_source == "server_stats" and 0 < reply.t_f_us <= reply.rtt_us
        feeds = fog.submit("cnn", {"input": x[1]}, cnn.entry.model_hash, 5.0).result(10)  # v2: outputs by name
        np.testing.assert_allclose(feeds.outputs["probs"][0], cnn.predict(x[1]), rtol=1e-5, atol=1e-6)
    finally:
        fog.close()
        server.stop()


@pytest.mark.timeout(60)
def test_canary_refuses_a_wrong_model_behind_the_right_name_until_it_is_fixed(local: Dict[str, Any],
                                                                               tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    from tests.oip_servers import write_altered_mlp

    mlp = local["mlp"]
    altered = write_altered_mlp(tmp_path, MODELS / "mlp") / "model.onnx"
    server = TritonLike({_triton_name(mlp): altered})  # the right name, another model: nothing in OIP says so
    fog = OipFogBackend(f"127.0.0.1:{server.port}", identity="name", recheck_s=0.0)
    try:
        status = fog.attach_models({"mlp": mlp})["mlp"]
        assert status.startswith("refused: canary input 0: output 'probs' differs from the local model's by up to")
        x = mlp.entry.load_validation()[0][0]
        with pytest.raises(FogRefused, match="canary input 0"):
            fog.submit("mlp", x, mlp.entry.model_hash, 5.0).result(10)
        assert "model_hash" not in fog.ping(timeout_s=2.0).models["mlp"]  # the dispatcher keeps it local
        server.swap(_triton_name(mlp), MODELS / "mlp" / "model.onnx")  # the operator deploys the right file
        assert fog.ping(timeout_s=2.0).models["mlp"]["model_hash"] == mlp.entry.model_hash  # offload it again
        reply = fog.submit("mlp", x, mlp.entry.model_hash, 5.0).result(10)
        np.testing.assert_allclose(reply.outputs, mlp.predict(x), rtol=1e-5, atol=1e-6)
    finally:
        fog.close()
        server.stop()


@pytest.mark.timeout(60)
def test_reply_naming_another_version_is_refused(local: Dict[str, Any]) -> None:
    mlp = local["mlp"]
    server = TritonLike({"mlp": MODELS / "mlp" / "model.onnx"}, reply_version="sha256-0000000000000000",
                        any_version=True)
    fog = OipFogBackend(f"127.0.0.1:{server.port}", identity="version")
    try:
        status = fog.attach_models({"mlp": mlp})["mlp"]
        assert status.startswith("refused: ") and "with version 'sha256-0000000000000000'" in status
        bare = OipFogBackend(f"127.0.0.1:{server.port}", identity="version")  # no canary: the reply check alone
        with pytest.raises(FogRefused, match="this edge runs 'sha256-"):
            bare.submit("mlp", mlp.entry.load_validation()[0][0], mlp.entry.model_hash, 5.0).result(10)
        bare.close()
    finally:
        fog.close()
        server.stop()


@pytest.mark.timeout(60)
def test_deadline_and_close_resolve_every_future(local: Dict[str, Any]) -> None:
    mlp = local["mlp"]
    server = TritonLike({"mlp": MODELS / "mlp" / "model.onnx"}, delay_s=0.5)
    fog = OipFogBackend(f"127.0.0.1:{server.port}", identity="none", canary=0)
    x = mlp.entry.load_validation()[0][0]
    try:
        assert fog.attach_models({"mlp": mlp}) == {"mlp": "verified"}
        with pytest.raises(FogTimeout, match="within 0.050s"):
            fog.submit("mlp", x, mlp.entry.model_hash, 0.05).result(10)
        slow = [fog.submit("mlp", x, mlp.entry.model_hash, 30.0) for _ in range(3)]
        fog.close()
        for f in slow:
            with pytest.raises(FogUnavailable, match="closed"):
                f.result(10)
        assert fog.counts["timeout"] == 1 and fog.counts["unavailable"] == 3
    finally:
        fog.close()
        server.stop()


@pytest.mark.timeout(60)
def test_timeouts_in_a_row_replace_the_connection(local: Dict[str, Any]) -> None:
    """On one HTTP/2 connection, requests given up on still hold the link; after 3 timeouts in a row the back end
    starts a new connection (as the ZeroMQ one rebuilds its socket) and the node is used again at once."""
    mlp = local["mlp"]
    server = TritonLike({"mlp": MODELS / "mlp" / "model.onnx"}, delay_s=0.4)
    fog = OipFogBackend(f"127.0.0.1:{server.port}", identity="none", canary=0)
    x = mlp.entry.load_validation()[0][0]
    try:
        for _ in range(3):
            with pytest.raises(FogTimeout):
                fog.submit("mlp", x, mlp.entry.model_hash, 0.05).result(10)
        assert fog.counts["rebuilds"] == 1
        server.delay_s = 0.0
        reply = fog.submit("mlp", x, mlp.entry.model_hash, 5.0).result(10)
        np.testing.assert_allclose(reply.outputs, mlp.predict(x), rtol=1e-5, atol=1e-6)
        with pytest.raises(FogTimeout):  # a success resets the count: one timeout is not a rebuild
            server.delay_s = 0.4
            fog.submit("mlp", x, mlp.entry.model_hash, 0.05).result(10)
        assert fog.counts["rebuilds"] == 1
    finally:
        fog.close()
        server.stop()


@pytest.mark.timeout(60)
def test_node_gone_then_back_is_rechecked(local: Dict[str, Any]) -> None:
    mlp = local["mlp"]
    name = _triton_name(mlp)
    server = TritonLike({name: MODELS / "mlp" / "model.onnx"})
    port = server.port
    fog = OipFogBackend(f"127.0.0.1:{port}", identity="name")
    x = mlp.entry.load_validation()[0][0]
    try:
        assert fog.attach_models({"mlp": mlp}) == {"mlp": "verified"}
        server.stop()
        with pytest.raises(FogUnavailable):
            fog.submit("mlp", x, mlp.entry.model_hash, 2.0).result(10)
        with pytest.raises(FogUnavailable):
            fog.ping(timeout_s=1.0)
        server = TritonLike.__new__(TritonLike)  # the same port again, as a restarted node
        _restart_on(server, {name: MODELS / "mlp" / "model.onnx"}, port)
        deadline = time.monotonic() + 20
        while True:
            try:
                pong = fog.ping(timeout_s=1.0)
                break
            except FogUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert pong.models["mlp"]["model_hash"] == mlp.entry.model_hash and fog.counts["canary_ok"] == 2
        np.testing.assert_allclose(fog.submit("mlp", x, mlp.entry.model_hash, 5.0).result(10).outputs,
                                   mlp.predict(x), rtol=1e-5, atol=1e-6)
    finally:
        fog.close()
        server.stop()


def _restart_on(server: TritonLike, files: Dict[str, Path], port: int) -> None:
    import onnxruntime as ort

    server.sessions = {n: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for n, p in files.items()}
    server.delay_s, server.reply_version, server.any_version = 0.0, "1", False
    server.stats, server.lock = {}, threading.Lock()
    server.server = grpc.server(ThreadPoolExecutor(max_workers=4))
    handlers = {m: grpc.unary_unary_rpc_method_handler(getattr(server, m))
                for m in ("ServerReady", "ModelReady", "ModelInfer", "ModelStatistics")}
    server.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("inference.GRPCInferenceService",
                                                                                 handlers),))
    server.port = server.server.add_insecure_port(f"127.0.0.1:{port}")
    assert server.port == port
    server.server.start()


def _pki(d: Path) -> Dict[str, Path]:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate (EC P-256, openssl CLI)."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=30)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=edged-test-ca")
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for who, cn in (("server", "localhost"), ("client", "edge-1")):
        run("req", *ec, "-keyout", f"{who}.key", "-out", f"{who}.csr", "-subj", f"/CN={cn}")
        run("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{who}.pem", "-days", "2", *(["-extfile", "san.ext"] if who == "server" else []))
    return {k: d / k for k in ("ca.pem", "server.key", "server.pem", "client.key", "client.pem")}


@pytest.mark.timeout(60)
def test_mutual_tls(local: Dict[str, Any], tmp_path: Path) -> None:
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make test certificates")
    pki = _pki(tmp_path)
    mlp = local["mlp"]
    server = TritonLike({_triton_name(mlp): MODELS / "mlp" / "model.onnx"},
                        tls=(pki["server.key"].read_bytes(), pki["server.pem"].read_bytes(), pki["ca.pem"].read_bytes()))
    x = mlp.entry.load_validation()[0][0]
    try:
        fog = OipFogBackend(f"grpcs://127.0.0.1:{server.port}", identity="name", tls_ca_file=str(pki["ca.pem"]),
                            tls_cert_file=str(pki["client.pem"]), tls_key_file=str(pki["client.key"]))
        assert fog.attach_models({"mlp": mlp}) == {"mlp": "verified"}
        np.testing.assert_allclose(fog.submit("mlp", x, mlp.entry.model_hash, 5.0).result(10).outputs,
                                   mlp.predict(x), rtol=1e-5, atol=1e-6)
        fog.close()
        anonymous = OipFogBackend(f"grpcs://127.0.0.1:{server.port}", identity="name",
                                  tls_ca_file=str(pki["ca.pem"]))  # TLS, but no client certificate
        with pytest.raises(FogUnavailable):
            anonymous.ping(timeout_s=2.0)
        anonymous.close()
    finally:
        server.stop()
