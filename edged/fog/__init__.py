"""edged models on other serving engines (the fog tier on Triton, KServe or MLServer; docs/scale-out.md).

:class:`ServedModel` is the engine-independent part: it loads one edged model folder (``manifest.json`` +
``model.onnx``), verifies the artifact's sha256 against the manifest, and runs requests with the same
contract as ``edged fog`` (every input by manifest name, canonical layouts, every output by name). The
engine adapters are thin: :mod:`edged.fog.mlserver` (an MLServer runtime) and :mod:`edged.fog.kserve`
(a KServe ``Model`` and its standalone ``ModelServer``). Each answers two response parameters the edge
reads: ``edged_t_f_ns`` (this request's execution time, ns) and ``edged_model_hash`` (the manifest hash).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np

from edged.errors import EdgedError

PARAM_T_F_NS = "edged_t_f_ns"
PARAM_MODEL_HASH = "edged_model_hash"


def hash_version(model_hash: str) -> str:
    """The OIP version naming a manifest hash (same as :func:`edged.offload.oip.version_for`)."""
    return f"sha256-{model_hash[:16]}"


class ServedModel:
    """One edged model folder served by an engine.

    Args:
        path: the model folder (with ``manifest.json``) or the manifest file itself.
        backend: the runtime (``onnx``; ``litert`` where the engine's image has it).
        threads: intra-op threads of the session.
        expect_version: the version the engine was told to serve (model-settings ``parameters.version``);
            if it names a hash, it must be this model's (an engine must not serve a folder under another
            model's label).

    Raises:
        EdgedError: no manifest, an artifact whose sha256 differs from the manifest, or a mislabelled version.
    """

    def __init__(self, path: Union[str, Path], backend: str = "onnx", threads: int = 1,
                 expect_version: Optional[str] = None) -> None:
        from edged.models import Catalogue, parse_manifest

        p = Path(path)
        manifest = p / "manifest.json" if p.is_dir() else p
        if not manifest.is_file():
            raise EdgedError(f"edged model folder {p}: no manifest.json (expected the folder edged export-fog "
                             "wrote, or a models/<name>/ folder)")
        entry = parse_manifest(manifest)
        entry.verify(backend)  # the engine serves exactly the bytes the edges verify
        self.entry = entry
        self.name = entry.name
        self.model_hash = entry.model_hash
        self.version = hash_version(self.model_hash)
        if expect_version and expect_version.startswith("sha256-") and expect_version != self.version:
            raise EdgedError(f"model {entry.name!r} in {p}: configured as version {expect_version!r} but its "
                             f"manifest hash gives {self.version!r}; re-run edged export-fog")
        self.model = Catalogue({entry.name: entry}).load(entry.name, backend=backend, threads=threads)

    def run(self, feeds: Mapping[str, Any]) -> Tuple[Dict[str, np.ndarray], int]:
        """(every output by manifest name, batch axis first; execution time in ns)."""
        t0 = time.perf_counter_ns()
        outs = self.model.run(dict(feeds))
        return outs, time.perf_counter_ns() - t0

    def parameters(self, t_f_ns: int) -> Dict[str, Any]:
        return {PARAM_T_F_NS: int(t_f_ns), PARAM_MODEL_HASH: self.model_hash}

    def close(self) -> None:
        self.model.close()
