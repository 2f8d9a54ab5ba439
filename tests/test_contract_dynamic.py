"""A dynamic H x W model: WCET per input shape changes the paper's threshold decision, an unprofiled shape
is scaled and flagged, and outputs (local or offloaded over a real `edged fog`) equal the runtime's."""

from __future__ import annotations

import copy
import math
import time
from typing import List

import numpy as np
import pytest

from edged.models import Catalogue
from edged.offload.dispatcher import Dispatcher
from edged.offload.estimator import LinkEstimator
from edged.offload.fog_client import ZmqFogBackend
from edged.offload.policy import decide, inputs_from_record
from edged.profile import estimate_wcet_us, profile_one
from edged.sources.sample import Sample

from . import modelgen as g
from .test_contract_runtime import direct_ort
from .test_offload_fog import FogProcess

SMALL, LARGE, UNPROFILED = "1x32x32x1", "1x512x512x1", "1x128x128x1"


class FixedLink(LinkEstimator):
    """T_L and T_F pinned, so the decision depends on the WCET of the input's shape alone."""

    def __init__(self, t_l_us: float, t_f_us: float) -> None:
        super().__init__()
        self.fixed_t_l, self.fixed_t_f = t_l_us, t_f_us

    def t_l_us(self, nbytes: int) -> float:
        return self.fixed_t_l

    def t_f_us(self, model: str) -> float:
        return self.fixed_t_f

    def fog_queue_us(self) -> float:
        return 0.0


@pytest.mark.timeout(180)
def test_wcet_per_shape_changes_the_threshold_decision(tmp_path):
    root = tmp_path / "models"
    manifest = copy.deepcopy(g.DYNAMIC_MANIFEST)
    manifest["profile_shapes"] = [[1, 32, 32, 1], [1, 512, 512, 1]]
    g.write_model(root, "seg", manifest, {"onnx": ("model.onnx", g.onnx_dynamic_hw())})
    cat = Catalogue.discover([root], include_shipped=False)
    row = profile_one(cat, "seg", "onnx", 1, repeats=2, warmup=3, max_inputs=8)
    by_shape = {k: v["wcet_us"] for k, v in row["shapes"].items()}
    assert set(by_shape) == {SMALL, LARGE}
    ratio = by_shape[LARGE] / by_shape[SMALL]
    print(f"WCET {SMALL} {by_shape[SMALL]:.1f} us, {LARGE} {by_shape[LARGE]:.1f} us: {ratio:.1f}x")
    assert ratio >= 10, "256x the elements must cost at least 10x"

    t_f = math.sqrt(by_shape[SMALL] * by_shape[LARGE])  # T_L + T_F lies between the two WCETs
    models = {"seg": cat.load("seg", "onnx")}
    fog = FogProcess("--models-dir", str(root), "--model", "seg")
    backend = ZmqFogBackend(fog.endpoint)
    records: List[dict] = []
    published: List[tuple] = []
    d = Dispatcher(models, {"*": "threshold"}, records.append, fog=backend, link=FixedLink(1.0, t_f),
                   fog_timeout_s=10.0, wcet_by_shape={"seg": by_shape},
                   on_results=lambda recs, outs: published.extend(zip(recs, outs)))
    rng = np.random.default_rng(3)
    xs = {SMALL: rng.standard_normal((32, 32, 1)), LARGE: rng.standard_normal((512, 512, 1)),
          UNPROFILED: rng.standard_normal((128, 128, 1))}
    try:
        for i, key in enumerate((SMALL, LARGE, UNPROFILED)):
            d.submit(Sample(model="seg", seq=i, array=xs[key].astype(np.float32)))
            time.sleep(0.05)
        assert d.close(30)
    finally:
        backend.close()
        fog.stop()
        models["seg"].close()
    by = {r["shape"]: (r, o) for r, o in published}
    assert set(by) == {SMALL, LARGE, UNPROFILED}
    small, large, other = by[SMALL][0], by[LARGE][0], by[UNPROFILED][0]
    assert small["decision"] == "local" and large["decision"] == "offload", (small["reason"], large["reason"])
    assert small["wcet_us"] == round(by_shape[SMALL], 1) and large["wcet_us"] == round(by_shape[LARGE], 1)
    assert not small["wcet_scaled"] and not large["wcet_scaled"]
    scaled, flagged = estimate_wcet_us(by_shape, UNPROFILED)
    assert flagged and other["wcet_scaled"] and other["wcet_us"] == round(scaled, 1)
    for rec, _ in by.values():  # every decision replays from its record
        assert decide(rec["policy"], inputs_from_record(rec)).decision == (
            "offload" if rec["decision"] == "offload" else "local")
    for key, (rec, outs) in by.items():  # local and offloaded outputs equal a direct runtime call
        x = xs[key].astype(np.float32)[None].transpose(0, 3, 1, 2)
        ref = direct_ort(root / "seg" / "model.onnx", {"x": x})
        np.testing.assert_allclose(outs["mask"], ref["mask"][0], rtol=1e-5, atol=1e-6)
        assert rec["outputs"]["mask"]["shape"] == list(ref["mask"][0].shape) and rec["result"] is None
