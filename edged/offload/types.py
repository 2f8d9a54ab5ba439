"""What the dispatcher needs from its inputs and collaborators (structural types), and its settings.

:class:`DispatcherConfig` holds every plain setting of a :class:`~edged.offload.dispatcher.Dispatcher`
(policies, queue sizes, timeouts, the profile's numbers); the constructor takes the collaborators
(sink, fog back end, estimators, power) apart. The Protocols say what the dispatcher reads from a
sample and calls on a model, so test doubles and other sources type-check against the same contract
as :class:`edged.sources.sample.Sample` and :class:`edged.models.LoadedModel`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Protocol

import numpy as np

from edged.errors import ConfigError
from edged.offload.policy import check_policy

OBJECTIVES = ("latency", "energy")


class SampleLike(Protocol):
    """One validated input, as the dispatcher reads it (:class:`edged.sources.sample.Sample` is one).

    ``feeds`` (every input by name, wire v2), ``sender``, ``sender_ts``, ``deadline_ms`` and ``meta`` are
    optional: the dispatcher reads them with a default when a sample type lacks them."""

    model: str
    seq: int
    array: np.ndarray
    source: str
    t_arrival: float

    @property
    def nbytes(self) -> int: ...


class ModelLike(Protocol):
    """A loaded model (:class:`edged.models.LoadedModel` is one): a batch through its single output, or every
    input and output by name. ``entry`` (the manifest entry) is optional for test doubles, and ``run`` is
    only called for a model whose entry has several inputs or outputs, or state."""

    def predict(self, x: Any, validate: bool = True) -> np.ndarray: ...

    def run(self, feeds: Any, validate: bool = True) -> Dict[str, np.ndarray]: ...


class ActivityLike(Protocol):
    """Marks what the device is doing, for the energy model (:class:`edged.power.energy.ActivityTracker`)."""

    def begin(self, kind: str) -> Any: ...

    def end(self, token: Any) -> None: ...


class PowerLike(Protocol):
    """Learned power draw per activity (W, None until learned): :class:`edged.power.energy.PowerModel`."""

    @property
    def p_idle_w(self) -> Optional[float]: ...

    @property
    def p_active_w(self) -> Optional[float]: ...

    @property
    def p_radio_w(self) -> Optional[float]: ...


def _frozen(m: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    return dict(m or {})


@dataclass(frozen=True)
class DispatcherConfig:
    """Every plain setting of a dispatcher.

    Attributes:
        policies: policy per model name (``"*"``: default for the others; ``threshold`` if absent).
        objective: ``latency`` or ``energy`` (what ``adaptive`` minimises).
        local_workers: threads running local inputs (the caller's thread also runs a lone burst inline when
            they are all idle).
        max_local_queue: local inputs waiting beyond which ``submit`` blocks (backpressure, never a drop).
        max_batch: most queued inputs of one model run as one batched inference (1 = no batching).
        fog_timeout_s: per-request fog timeout (s); on expiry the input falls back locally.
        probe_interval_s: how often the probe thread checks the fog (s).
        probe_pad_bytes: padding of the bandwidth probe (bytes, each direction).
        wcet_us: profile WCET per model (µs).
        local_exec_us: seeds of the local execution estimator (µs), e.g. the profile p50.
        wcet_by_shape / p50_by_shape: a dynamic model's profile per input shape key (µs).
        model_hashes: model hash per name, for models that do not carry ``entry.model_hash``.
        risk_k: ``adaptive`` compares each path at mean + ``risk_k`` × its dispersion (``[offload] risk``,
            see :func:`edged.offload.policy.parse_risk`).
        joint: ``adaptive`` inputs that arrive together (``submit_many``) are decided together
            (:func:`edged.offload.policy.decide_batch`) and started shortest first.
        makespan_weight: weight of the latest completion in the joint objective (0 = total completion time).
    """

    policies: Mapping[str, str] = field(default_factory=lambda: {"*": "threshold"})
    objective: str = "latency"
    local_workers: int = 1
    max_local_queue: int = 256
    max_batch: int = 32
    fog_timeout_s: float = 1.0
    probe_interval_s: float = 0.5
    probe_pad_bytes: int = 4096
    wcet_us: Mapping[str, float] = field(default_factory=dict)
    local_exec_us: Mapping[str, float] = field(default_factory=dict)
    wcet_by_shape: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    p50_by_shape: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    model_hashes: Mapping[str, str] = field(default_factory=dict)
    risk_k: float = 0.5
    joint: bool = True
    makespan_weight: float = 0.0

    def __post_init__(self) -> None:
        for name in ("policies", "wcet_us", "local_exec_us", "model_hashes"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        for name in ("wcet_by_shape", "p50_by_shape"):
            object.__setattr__(self, name, {k: dict(v) for k, v in (getattr(self, name) or {}).items()})
        for policy in self.policies.values():
            check_policy(policy)
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective {self.objective!r}: expected latency or energy")
        for name in ("local_workers", "max_local_queue", "max_batch"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigError(f"dispatcher {name} = {value!r}: expected an integer >= 1")
        for name in ("fog_timeout_s", "probe_interval_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"dispatcher {name} = {value!r}: expected a number of seconds > 0")
        for name in ("risk_k", "makespan_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ConfigError(f"dispatcher {name} = {value!r}: expected a number >= 0")
        if not isinstance(self.joint, bool):
            raise ConfigError(f"dispatcher joint = {self.joint!r}: expected true or false")
        if type(self.probe_pad_bytes) is not int or self.probe_pad_bytes < 0:
            raise ConfigError(f"dispatcher probe_pad_bytes = {self.probe_pad_bytes!r}: expected an integer >= 0")

    @property
    def default_policy(self) -> str:
        return self.policies.get("*", "threshold")

    def policy_for(self, model: str) -> str:
        return self.policies.get(model, self.default_policy)

    def replace(self, **changes: Any) -> DispatcherConfig:
        """A copy with ``changes``; an unknown setting is a :class:`ConfigError` naming the known ones."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown dispatcher setting(s) {', '.join(unknown)}; "
                              f"expected some of {', '.join(sorted(known))}")
        return dataclasses.replace(self, **changes)


__all__ = ["ActivityLike", "DispatcherConfig", "ModelLike", "PowerLike", "SampleLike"]
