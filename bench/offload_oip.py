"""bench/offload.py with the fog on an Open Inference Protocol server: MLServer over gRPC instead of ``edged fog``.

The same stream, link schedule (the ``tests.linkproxy`` TCP proxy carries HTTP/2 as it carries ZeroMQ),
policies and references (oracle, offline schedule) as ``bench/offload.py``; only the fog differs:

* MLServer (``mlserver start`` on an ``edged export-fog --format mlserver`` folder of bigcnn, cnn and mlp;
  ``parallel_workers = 0``: one inference at a time, like ``edged fog --workers 1``; onnxruntime with the same
  intra-op threads);
* the edge: :class:`edged.offload.oip.OipFogBackend` through the proxy (identity by version, the canary at
  connect, which also gives the estimators a T_F before the first offload).

Every option of bench/offload.py applies (``--quick``, ``--stream``, ``--repeats``...). Needs mlserver: run it
with ``.venv-oip/bin/python`` (``make test-oip`` builds it). Writes ``bench/results/offload_oip.json``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bench.offload as off  # noqa: E402
from edged.export_fog import export  # noqa: E402
from edged.models import Catalogue  # noqa: E402
from edged.offload.oip import OipFogBackend  # noqa: E402
from tests.oip_servers import start_mlserver  # noqa: E402

LOADED: Dict[str, Any] = {}


class RegisteredModel(off.SlowedModel):  # type: ignore[misc]
    """bench/offload.py's edge model, remembered so the OIP back end can run the canary against it."""

    def __init__(self, model: Any, factor: float) -> None:
        super().__init__(model, factor)
        LOADED[model.entry.name] = self


class MlserverFog:
    """Stands in for bench/offload.py's ``Fog`` (an ``edged fog`` subprocess): MLServer on the same models."""

    def __init__(self, models_dir: Path, threads: int, workers: int, core: Optional[int] = None) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="edged-bench-mlserver-"))
        export("mlserver", self.tmp / "repo", Catalogue.discover([models_dir]), ["bigcnn", "cnn", "mlp"],
               threads=threads)
        old = os.environ.get("MLSERVER_PARALLEL_WORKERS")
        os.environ["MLSERVER_PARALLEL_WORKERS"] = "0" if workers <= 1 else str(workers)
        try:
            self.server = start_mlserver(self.tmp / "repo", self.tmp / "mlserver.log")
        finally:
            if old is None:
                os.environ.pop("MLSERVER_PARALLEL_WORKERS", None)
            else:
                os.environ["MLSERVER_PARALLEL_WORKERS"] = old
        self.port = self.server.grpc_port
        self.endpoint = self.server.grpc

    def stop(self) -> None:
        self.server.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def oip_backend(endpoint: str) -> OipFogBackend:
    """What bench/offload.py builds as ``ZmqFogBackend(proxy.endpoint)``: the OIP client through the proxy."""
    fog = OipFogBackend(endpoint.split("://", 1)[-1], identity="version")
    status = fog.attach_models(LOADED, timeout_s=5.0)
    bad = {k: v for k, v in status.items() if v != "verified"}
    if bad:
        raise SystemExit(f"MLServer does not serve the edge's models: {bad}")
    return fog


def main() -> int:
    import importlib.util

    if importlib.util.find_spec("mlserver") is None:
        print("bench/offload_oip.py needs mlserver: run it with .venv-oip/bin/python (make test-oip builds it)",
              file=sys.stderr)
        return 2
    off.SlowedModel = RegisteredModel
    off.Fog = MlserverFog  # type: ignore[misc]
    off.ZmqFogBackend = oip_backend  # type: ignore[assignment]
    if not any(a == "--out" or a.startswith("--out=") for a in sys.argv[1:]):
        sys.argv += ["--out", str(ROOT / "bench" / "results" / "offload_oip.json")]
    return off.main()


if __name__ == "__main__":
    sys.exit(main())
