"""A real Triton server (PyTriton's bundled tritonserver, CPU) serving edged model folders, for test_oip_triton.py.

``python -m tests.pytriton_serve HTTP_PORT GRPC_PORT METRICS_PORT MODEL_DIR...``: each folder is bound as
``<name>-sha256-<16 hex>`` (Triton takes integer versions only; edge ``fog.identity = "name"``), inputs by
manifest name in the canonical layout, run by :class:`edged.fog.ServedModel`; prints ``serving ...`` once
every model is loaded, then serves until SIGTERM (then stops tritonserver and removes its workspace).

PyTriton's tritonserver embeds the Python it finds through the dynamic loader: where the system's libpython
differs from the venv interpreter's (pyenv, a newer patch release), its Python backend stub fails at model
load (``'_thread.RLock' object has no attribute '_recursion_count'``). The workaround is
``LD_LIBRARY_PATH=<sysconfig LIBDIR of the venv interpreter>``; the test sets it.
"""

from __future__ import annotations

import signal
import sys
from typing import Any, Dict

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from edged.fog import ServedModel, hash_version


def _bind(triton: Any, served: ServedModel) -> str:
    name = f"{served.name}-{hash_version(served.model_hash)}"
    entry = served.entry

    @batch
    def infer(**inputs: np.ndarray) -> Dict[str, np.ndarray]:
        outs, _ = served.run(inputs)
        return outs

    outs, _ = served.run(entry.make_feeds(seed=0))  # output dtypes and shapes from one real run
    inputs = [Tensor(name=i.name, dtype=np.dtype(i.dtype), shape=tuple(d or -1 for d in i.sample_shape))
              for i in entry.inputs]
    outputs = [Tensor(name=n, dtype=a.dtype, shape=tuple(a.shape[1:])) for n, a in outs.items()]
    triton.bind(model_name=name, infer_func=infer, inputs=inputs, outputs=outputs,
                config=ModelConfig(max_batch_size=8))
    return name


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # leave the ``with Triton()`` block: tritonserver stops and its workspace is removed


def main() -> int:
    signal.signal(signal.SIGTERM, _stop)
    http_port, grpc_port, metrics_port = (int(a) for a in sys.argv[1:4])
    config = TritonConfig(http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port)
    with Triton(config=config) as triton:
        names = [_bind(triton, ServedModel(d)) for d in sys.argv[4:]]
        print("serving " + " ".join(names), flush=True)
        try:
            triton.serve()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
