"""Layer partitioning (Neurosurgeon): run the head of a model on the device, the tail on the fog.

- :mod:`edged.partition.graph`: single-tensor cut enumeration of an ONNX graph, head/tail
  graphs, intermediate sizes from the graph, the cut hash (needs ``onnx``: ``pip install
  'edged[partition]'``).
- :mod:`edged.partition.split`: :class:`PartitionedModel`, head and tail sessions
  (onnxruntime) for every usable cut, verified against the full model before use.
- :mod:`edged.partition.policy`: the pure ``partition`` policy (argmin over cuts).
- :mod:`edged.partition.neurosurgeon`: per-layer-type latency regression (the published baseline).

Cut ``k`` is the number of graph nodes that run on the device: ``k = 0`` is all-fog (the raw
input is sent), ``k = N`` all-local (nothing is sent). Interior cuts are named by the tensor
that crosses the link.
"""

from __future__ import annotations

ALL_FOG = "all-fog"
ALL_LOCAL = "all-local"

__all__ = ["ALL_FOG", "ALL_LOCAL"]
