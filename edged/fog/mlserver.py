"""An MLServer runtime for edged models: ``implementation = "edged.fog.mlserver.EdgedRuntime"``.

MLServer has no plain onnxruntime runtime; this one serves an edged model folder (``parameters.uri``,
written by ``edged export-fog --format mlserver``) through :class:`edged.fog.ServedModel`: the artifact is
sha256-verified at load, requests carry every input by manifest name (raw or typed contents, any dtype the
contract has, int8 included) and replies carry every output plus ``edged_t_f_ns`` and ``edged_model_hash``.
The model version (``parameters.version``) is ``sha256-<16 hex>`` of the manifest hash, so an edge asking
for another version gets NOT_FOUND.

Needs ``mlserver`` (``pip install 'edged[oip-test]'`` or the fog image's own MLServer).
"""

from __future__ import annotations

import os
from typing import Any, Optional

try:
    from mlserver import MLModel
    from mlserver.codecs import NumpyCodec
    from mlserver.types import InferenceRequest, InferenceResponse, Parameters
    from mlserver.utils import get_model_uri
except ImportError as exc:  # pragma: no cover - only where mlserver is missing
    raise ImportError("edged.fog.mlserver is an MLServer runtime and needs mlserver: "
                      "pip install mlserver (or 'edged[oip-test]')") from exc

from edged.fog import ServedModel


class EdgedRuntime(MLModel):  # type: ignore[misc]
    """Serves one edged model folder. Extra ``parameters.extra``: ``backend`` (default onnx), ``threads``."""

    _served: Optional[ServedModel] = None

    async def load(self) -> bool:
        uri = await get_model_uri(self.settings)
        extra = dict(getattr(self.settings.parameters, "extra", None) or {})
        threads = int(extra.get("threads") or os.environ.get("EDGED_FOG_THREADS") or 1)
        self._served = ServedModel(uri, backend=str(extra.get("backend") or "onnx"), threads=threads,
                                   expect_version=self.settings.parameters.version)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        served = self._served
        assert served is not None, "predict before load"
        feeds = {inp.name: NumpyCodec.decode_input(inp) for inp in payload.inputs}
        outs, t_f_ns = served.run(feeds)
        wanted = [o.name for o in payload.outputs or []]
        names = [n for n in outs if not wanted or n in wanted]
        return InferenceResponse(
            model_name=self.name, model_version=self.version, id=payload.id,
            parameters=Parameters(**served.parameters(t_f_ns)),
            outputs=[NumpyCodec.encode_output(n, outs[n]) for n in names],
        )

    async def unload(self) -> bool:
        if self._served is not None:
            self._served.close()
            self._served = None
        return True


__all__: Any = ["EdgedRuntime"]
