"""A KServe model server for edged models: ``python -m edged.fog.kserve --model-dir DIR --model-name NAME``.

KServe's standalone ``ModelServer`` (no Kubernetes needed) with one :class:`EdgedKServeModel` per exported
folder (``edged export-fog --format kserve``; in a cluster, the storage initializer puts it at
``/mnt/models``). KServe reports no model versions, so the name carries the hash (``<name>-sha256-<16 hex>``,
edge ``fog.identity = "name"``), and every reply carries ``edged_model_hash`` and ``edged_t_f_ns``. KServe
answers gRPC with typed contents (``fp32_contents``); the edge decodes both forms.

Needs ``kserve`` (``pip install 'edged[oip-test]'`` or the fog image's own).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

try:
    import kserve
    from kserve import InferOutput, InferRequest, InferResponse
except ImportError as exc:  # pragma: no cover - only where kserve is missing
    raise ImportError("edged.fog.kserve needs kserve: pip install kserve (or 'edged[oip-test]')") from exc

from edged.fog import ServedModel, hash_version
from edged.offload.oip_wire import oip_datatype


class EdgedKServeModel(kserve.Model):  # type: ignore[misc]
    """One edged model folder behind KServe's Open Inference Protocol endpoints (REST v2 and gRPC)."""

    def __init__(self, model_dir: str, name: Optional[str] = None, threads: int = 1) -> None:
        self.model_dir = model_dir
        self.threads = threads
        self.served: Optional[ServedModel] = None
        probe = ServedModel(model_dir, threads=threads)  # fails here, naming the folder, before serving
        super().__init__(name or f"{probe.name}-{hash_version(probe.model_hash)}")
        self.served = probe
        self.ready = True

    def load(self) -> bool:
        if self.served is None:
            self.served = ServedModel(self.model_dir, threads=self.threads)
        self.ready = True
        return True

    async def predict(self, payload: InferRequest, headers: Optional[Dict[str, str]] = None,
                      response_headers: Optional[Dict[str, str]] = None) -> InferResponse:
        served = self.served
        assert served is not None, "predict before load"
        feeds = {inp.name: inp.as_numpy() for inp in payload.inputs}
        outs, t_f_ns = served.run(feeds)
        outputs: List[Any] = []
        for name, arr in outs.items():
            out = InferOutput(name=name, shape=list(arr.shape), datatype=oip_datatype(arr.dtype))
            out.set_data_from_numpy(arr, binary_data=False)
            outputs.append(out)
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=outputs,
                             parameters=served.parameters(t_f_ns))


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edged.fog.kserve", description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", action="append", required=True, type=Path,
                   help="an exported model folder (manifest.json + model.onnx); repeatable")
    p.add_argument("--model-name", action="append", default=[],
                   help="the served name of each --model-dir in order (default <name>-sha256-<16 hex>)")
    p.add_argument("--http-port", type=int, default=8080)
    p.add_argument("--grpc-port", type=int, default=8081)
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads per model")
    args = p.parse_args(argv)
    models = []
    for i, d in enumerate(args.model_dir):
        name = args.model_name[i] if i < len(args.model_name) else None
        models.append(EdgedKServeModel(str(d), name=name, threads=args.threads))
    kserve.ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, workers=1,
                       enable_docs_url=False, enable_latency_logging=False).start(models)
    return 0


if __name__ == "__main__":
    sys.exit(main())
