"""Real Open Inference Protocol servers for the OIP tests: MLServer (``mlserver start`` on an export-fog folder)
and KServe's standalone ModelServer (``python -m edged.fog.kserve``), each a subprocess on free loopback ports.

They need the ``oip-test`` extra (``make test-oip`` builds ``.venv-oip`` with it); :func:`require` skips a test
with the reason where a package is missing. Also the test models the OIP tests add to the catalogue: the
stateful multi-input model of tests/modelgen.py (``x``, ``h`` state, ``sr`` int64 without a batch axis) and an
int8 model (int8 in, float32 and int8 out).
"""

from __future__ import annotations

import http.client
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pytest

from tests import modelgen

BIN = Path(sys.executable).parent


def require(*modules: str) -> None:
    """Skip unless every module is installed (found, not imported: mlserver and kserve register the same
    protobuf symbols and cannot share a process)."""
    if os.environ.get("EDGED_EMULATED"):
        pytest.skip("OIP server tests take several seconds each; skipped under emulation")
    for m in modules:
        if importlib.util.find_spec(m) is None:
            where = ("the 'oip-triton' extra: make test-oip builds .venv-triton with it" if m == "pytriton" else
                     "the 'oip-test' extra: make test-oip builds .venv-oip with it")
            pytest.skip(f"needs {m} ({where})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A server subprocess; ``grpc`` and ``http`` are its loopback ``HOST:PORT`` addresses."""

    def __init__(self, argv: List[str], env: Dict[str, str], cwd: Path, http_port: int, grpc_port: int,
                 log_path: Path) -> None:
        self.argv, self.env, self.cwd, self.log_path = argv, env, cwd, log_path
        self.http_port, self.grpc_port = http_port, grpc_port
        self.grpc = f"127.0.0.1:{grpc_port}"
        self.http = f"http://127.0.0.1:{http_port}"
        self.proc: Optional[subprocess.Popen] = None

    def start(self, timeout_s: float = 90.0, ready_path: str = "/v2/health/ready") -> Server:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=str(self.cwd), stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.argv[0]} exited {self.proc.returncode}:\n{self.log()}")
            if _http_ok(self.http_port, ready_path) and _port_open(self.grpc_port):
                return self
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"{self.argv} not ready within {timeout_s:.0f}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the whole process group (MLServer forks workers): the node vanishes mid-stream."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()


def _http_ok(port: int, path: str) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
        conn.request("GET", path)
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def start_mlserver(folder: Path, log_path: Path) -> Server:
    """``mlserver start FOLDER`` (an ``edged export-fog --format mlserver`` folder) on free ports, no worker pool."""
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    env = dict(os.environ, MLSERVER_HTTP_PORT=str(http_port), MLSERVER_GRPC_PORT=str(grpc_port),
               MLSERVER_METRICS_PORT=str(metrics_port), MLSERVER_PARALLEL_WORKERS="0", MLSERVER_HOST="127.0.0.1",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")]))
    return Server([str(BIN / "mlserver"), "start", str(folder)], env, folder, http_port, grpc_port,
                  log_path).start()


def start_kserve(model_dirs: Sequence[Path], log_path: Path, names: Sequence[str] = ()) -> Server:
    """KServe's ModelServer with :class:`edged.fog.kserve.EdgedKServeModel` for each folder, on free ports."""
    http_port, grpc_port = free_port(), free_port()
    argv = [sys.executable, "-m", "edged.fog.kserve", "--http-port", str(http_port), "--grpc-port", str(grpc_port)]
    for d in model_dirs:
        argv += ["--model-dir", str(d)]
    for n in names:
        argv += ["--model-name", n]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    return Server(argv, env, log_path.parent, http_port, grpc_port, log_path).start()


# ---- test models ---------------------------------------------------------------------------------
INT8_MANIFEST: Dict[str, Any] = {
    "format": "edged-model/2",
    "inputs": [{"name": "q", "shape": [-1, 4], "dtype": "int8", "layout": "NC"}],
    "outputs": [{"name": "y", "kind": "regression"}, {"name": "yq", "kind": "tensor"}],
}


def onnx_int8() -> bytes:
    """q int8 [N,4] -> y = float(q) * 0.5 (float32) and yq = int8(q * -1) (int8)."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Cast", ["q"], ["qf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["qf", "half"], ["y"]),
        helper.make_node("Mul", ["qf", "minus"], ["nf"]),
        helper.make_node("Cast", ["nf"], ["yq"], to=TensorProto.INT8),
    ]
    inputs = [helper.make_tensor_value_info("q", TensorProto.INT8, ["N", 4])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]),
               helper.make_tensor_value_info("yq", TensorProto.INT8, ["N", 4])]
    inits = [("half", np.array([0.5], np.float32)), ("minus", np.array([-1.0], np.float32))]
    return modelgen._onnx_model(nodes, inputs, outputs, inits, "int8")


def write_test_models(root: Path) -> Path:
    """``root`` with ``vad`` (3 inputs: x, h state, sr int64 unbatched; 2 outputs) and ``q8`` (int8)."""
    rng = np.random.default_rng(7)
    modelgen.write_model(root, "vad", modelgen.STATEFUL_MANIFEST, {"onnx": ("model.onnx", modelgen.onnx_stateful())},
                         validation={"x": rng.standard_normal((6, 16)).astype(np.float32),
                                     "sr": np.array([16000], np.int64)})
    modelgen.write_model(root, "q8", INT8_MANIFEST, {"onnx": ("model.onnx", onnx_int8())},
                         validation={"q": rng.integers(-128, 127, (6, 4), endpoint=True).astype(np.int8)})
    return root


def write_altered_mlp(root: Path, shipped: Path) -> Path:
    """``root/mlp``: the shipped mlp with its weights scaled (same names, shapes and labels; another hash and
    other outputs): a wrong model behind the right name."""
    import json

    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(shipped / "model.onnx"))
    for init in model.graph.initializer:
        if len(init.dims) == 2:
            w = numpy_helper.to_array(init) * 1.7
            init.CopyFrom(numpy_helper.from_array(w.astype(np.float32), init.name))
            break
    manifest = json.loads((shipped / "manifest.json").read_text())
    manifest.pop("artifacts", None)
    manifest.pop("validation", None)
    d = modelgen.write_model(root, "mlp", manifest, {"onnx": ("model.onnx", model.SerializeToString())})
    shutil.copyfile(shipped / "validation.npz", d / "validation.npz")
    return d
