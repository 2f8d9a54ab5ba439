"""The OIP back end against a real Triton: PyTriton's bundled CPU tritonserver, as a subprocess on loopback ports.

Optional: it runs where nvidia-pytriton installs (``make test-oip`` tries, in its own ``.venv-triton``:
PyTriton pins numpy 1.26 and protobuf 6, which KServe's venv cannot take) and skips elsewhere. Triton answers
with integer versions and raw contents and says nothing about the model's hash: the name carries it
(``identity = "name"``) and the canary vouches for the outputs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any, Dict, Iterator

import numpy as np
import pytest

from tests.conftest import MODELS, REPO
from tests.oip_servers import _http_ok, free_port, require


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    require("grpc", "pytriton")
    ports = [free_port() for _ in range(3)]
    log = tmp_path_factory.mktemp("triton") / "triton.log"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    # the documented workaround: the venv interpreter's libpython first (see tests/pytriton_serve.py)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, os.environ.get("LD_LIBRARY_PATH", "")) if p)
    with open(log, "wb") as out:
        # as a module from the repo: run as a script, tests/platform/ would shadow the stdlib's platform
        proc = subprocess.Popen([sys.executable, "-m", "tests.pytriton_serve", *map(str, ports), str(MODELS / "mlp"),
                                 str(MODELS / "cnn")], env=env, cwd=str(REPO), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while b"serving " not in log.read_bytes() or not _http_ok(ports[0], "/v2/health/ready"):
            if proc.poll() is not None:
                pytest.fail(f"pytriton server exited {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"pytriton server not ready in 120 s:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.3)
        yield f"127.0.0.1:{ports[1]}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.fixture(scope="module")
def local(catalogue: Any) -> Iterator[Dict[str, Any]]:
    models = {n: catalogue.load(n, backend="onnx") for n in ("mlp", "cnn")}
    yield models
    for m in models.values():
        m.close()


@pytest.mark.timeout(240)
def test_triton_outputs_equal_local_and_identity_by_name(triton: str, local: Dict[str, Any]) -> None:
    from edged.offload.fog_client import FogRefused
    from edged.offload.oip import OipFogBackend

    fog = OipFogBackend(triton, identity="name")
    try:
        assert fog.attach_models(local) == {"mlp": "verified", "cnn": "verified"}
        for name, model in local.items():
            x, _ = model.entry.load_validation()
            for i in range(5):
                reply = fog.submit(name, x[i], model.entry.model_hash, 10.0).result(20)
                np.testing.assert_allclose(reply.outputs, model.predict(x[i]), rtol=1e-5, atol=1e-6)
            assert reply.model_version == "1" and 0 <= reply.t_f_us <= reply.rtt_us
            v2 = fog.submit(name, {model.entry.input.name: x[0]}, model.entry.model_hash, 10.0).result(20)
            np.testing.assert_allclose(v2.outputs[model.entry.outputs[0].name][0], model.predict(x[0]),
                                       rtol=1e-5, atol=1e-6)
        pong = fog.ping(timeout_s=5.0)
        assert pong.models["cnn"]["model_hash"] == local["cnn"].entry.model_hash
    finally:
        fog.close()
    other = OipFogBackend(triton, identity="name")  # another hash: Triton has no such name
    try:
        with pytest.raises(FogRefused, match="does not serve model 'mlp-sha256-0000000000000000'"):
            other.submit("mlp", local["mlp"].entry.load_validation()[0][0], "0" * 64, 10.0).result(20)
    finally:
        other.close()



@pytest.mark.timeout(120)
def test_exported_triton_repository_is_read_by_tritonserver(tmp_path: Path) -> None:
    """``edged export-fog --format triton`` writes what tritonserver reads: its config.pbtxt parses and names the
    model and version dir Triton loads. PyTriton's build has only the python backend, so the load stops at the
    missing onnxruntime backend, after the repository and every config have been read."""
    import importlib.util

    require("pytriton")
    spec = importlib.util.find_spec("pytriton")
    assert spec is not None and spec.submodule_search_locations
    ts = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    if (ts / "backends" / "onnxruntime").exists():
        pytest.skip("this tritonserver has the onnxruntime backend: it would serve the repository, not stop")
    from tests.conftest import run_edged

    p = run_edged(["export-fog", "--format", "triton", "--models", "mlp,cnn", str(tmp_path / "repo")])
    assert p.returncode == 0, p.stderr
    names = sorted(d.name for d in (tmp_path / "repo").iterdir())
    libs = [sysconfig.get_config_var("LIBDIR") or "", str(ts / "external_libs"), os.environ.get("LD_LIBRARY_PATH", "")]
    env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(x for x in libs if x))
    ports = [str(free_port()) for _ in range(3)]
    proc = subprocess.run([str(ts / "bin" / "tritonserver"), f"--model-repository={tmp_path / 'repo'}",
                           f"--backend-directory={ts / 'backends'}", "--http-port", ports[0], "--grpc-port", ports[1],
                           "--metrics-port", ports[2], "--exit-on-error=true"], env=env, capture_output=True,
                          text=True, timeout=90)
    log = proc.stdout + proc.stderr
    assert "failed to read text proto" not in log and "Poll failed" not in log, log[-3000:]
    for name in names:
        assert f"loading: {name}:1" in log, log[-3000:]
        assert f"failed to load '{name}' version 1: Invalid argument: unable to find backend library for backend " \
               "'onnxruntime'" in log, log[-3000:]
