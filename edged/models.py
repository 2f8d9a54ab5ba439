"""The model catalogue: discovers manifests, verifies artifacts, hides layouts.

A model is a directory ``<root>/<name>/`` holding ``manifest.json`` (or
``manifest.toml``) and its artifacts. The shipped models live in the
repository's ``models/`` (installed copies in ``<prefix>/share/edged/models``);
users add their own by putting a directory with a manifest in a configured
models directory — nothing else is needed. The minimal manifest (TOML, the
"v1" form: one input, one output of class probabilities)::

    labels = ["no", "yes"]  # optional: class names
    [input]
    shape = [-1, 16]        # -1 (or "N") marks a dynamic dimension; first is the batch
    dtype = "float32"
    layout = "NC"           # one letter per dimension: NC, NHWC, NCHW, ...
    [artifacts.onnx]        # and/or [artifacts.litert]
    file = "model.onnx"
    sha256 = "..."          # sha256sum model.onnx
    layout = "NC"           # optional: the artifact's own layout if it differs

Contract v2 (any number of inputs and outputs; a v1 manifest means one input
and one ``probabilities`` output)::

    [[inputs]]
    name = "x"              # the tensor's name in the file (see artifacts.<b>.names otherwise)
    shape = [-1, 512]       # any dimension may be dynamic (-1 or "N")
    dtype = "float32"
    [[inputs]]
    name = "h"
    shape = [-1, 64]
    dtype = "float32"
    initial = 0.0           # initial state: a number, or a nested list of the sample shape
    [[inputs]]
    name = "sr"
    shape = [1]
    dtype = "int64"
    batch = false           # this input has no batch dimension: fed as is
    [[outputs]]
    name = "prob"
    kind = "probabilities"  # probabilities | logits | regression | tensor | state
    labels = ["silence", "speech"]
    top_k = 2
    [[outputs]]
    name = "h_out"
    kind = "state"
    state_input = "h"       # fed back as input "h" on the sender's next call
    [artifacts.onnx]
    file = "model.onnx"
    sha256 = "..."
    layouts = { x = "NC" }  # per input, when the artifact's layout differs
    names = { x = "input_1" }  # per input/output, when the file's tensor name differs

A dynamic model may list the shapes ``edged profile`` measures it at::

    profile_shapes = [[1, 3, 320, 320], [1, 3, 640, 640]]       # the one data input
    profile_shapes = [{ x = [1, 3, 640, 640] }]                 # or by input name

Every artifact's sha256 is checked before it is loaded; a mismatch is refused
with the file, the expected and the actual hash. Callers always pass inputs in
the manifest's canonical layouts; if an artifact uses another layout (an NCHW
ONNX export of an NHWC model, say) the transposition happens here. Outputs come
back in the artifact's own layout, batch dimension first.

A catalogue never fails as a whole for one bad model: :meth:`Catalogue.unservable`
names each model that cannot be served and why, and :meth:`Catalogue.require`
refuses, with that reason, only the models a configuration enables by name.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from edged.errors import BackendError, EdgedError, InputError, IntegrityError, ManifestError, UnknownModelError
from edged.runtime import BACKENDS, Backend, TensorSpec, backend_class, canonical_name
from edged.runtime.base import Dim

log = logging.getLogger(__name__)

MANIFEST_NAMES = ("manifest.json", "manifest.toml")
SUPPORTED_DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool")
#: Preference when the caller asks for backend "auto".
AUTO_ORDER = ("onnx", "litert")
#: What an output is; chooses how a result is summarised (see edged.results).
OUTPUT_KINDS = ("probabilities", "logits", "regression", "tensor", "state")
CLASSIFIER_KINDS = ("probabilities", "logits")
DEFAULT_TOP_K = 3

Feeds = Mapping[str, np.ndarray]


class UnservableModelError(EdgedError):
    """A model is in the catalogue but cannot be served here (the message says why)."""


def shipped_models_dir() -> Path:
    """Directory of the models that ship with edged.

    ``$EDGED_MODELS_DIR`` wins; then the source checkout's ``models/``; then the
    data files an installed wheel puts in ``<prefix>/share/edged/models``.
    """
    env = os.environ.get("EDGED_MODELS_DIR")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parent.parent / "models"
    if repo.is_dir():
        return repo
    return Path(sys.prefix) / "share" / "edged" / "models"


def site_models_dir() -> Optional[Path]:
    """``$CONFIGURATION_DIRECTORY/models`` (``/etc/edged/models`` under the systemd units) if it exists.

    User models installed there (``hw/install.sh --models DIR``) are found by every edged command run
    by edged.service or edged-fog.service, without a ``models.dirs`` entry; the hardened units can read
    /etc, and both units serve the same directory, so edge and fog hold the same models.
    """
    conf = os.environ.get("CONFIGURATION_DIRECTORY", "").split(":")[0]
    if not conf:
        return None
    d = Path(conf) / "models"
    return d if d.is_dir() else None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _load_toml(path: Path) -> Dict[str, Any]:
    try:
        import tomllib  # type: ignore[import-not-found]
    except ImportError:  # Python < 3.11
        import tomli as tomllib  # type: ignore[no-redef]
    with open(path, "rb") as f:
        return dict(tomllib.load(f))


def _dim(value: Any) -> Dim:
    if value is None or isinstance(value, str):
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"dimension {value!r} is not an integer")
    return None if value <= 0 else value


def layout_permutation(src: str, dst: str) -> Optional[Tuple[int, ...]]:
    """Axes permutation taking an array in layout ``src`` to layout ``dst`` (None if equal or unknown)."""
    if not src or not dst or src == dst:
        return None
    if sorted(src) != sorted(dst) or len(set(src)) != len(src):
        raise ValueError(f"layouts {src!r} and {dst!r} are not permutations of each other")
    return tuple(src.index(ch) for ch in dst)


def shape_key(feeds: Union[np.ndarray, Sequence[int], Mapping[str, Any]]) -> str:
    """A shape as a key: ``(1, 3, 640, 640)`` -> ``"1x3x640x640"``.

    Takes an array, a shape, or a mapping name -> array/shape; a mapping of one
    entry gives the same key as its value, several give ``"h=1x64;x=1x512"``
    (sorted by name). A 0-d array gives ``""``. Profiles key WCET by this
    (use :meth:`ModelEntry.shape_key` to key by a model's dynamic inputs only).
    """
    if isinstance(feeds, Mapping):
        if len(feeds) == 1:
            return shape_key(next(iter(feeds.values())))
        return ";".join(f"{k}={shape_key(v)}" for k, v in sorted(feeds.items()))
    shape = feeds.shape if isinstance(feeds, np.ndarray) else tuple(feeds)
    return "x".join(str(int(d)) for d in shape)


def key_elements(key: str) -> int:
    """Elements per sample a :func:`shape_key` stands for: ``"1x3x640x640"`` -> 1228800 (summed over inputs).

    What an unprofiled shape's WCET is scaled by: ``wcet(profiled) * key_elements(actual) / key_elements(profiled)``.
    ``""`` (a model without dynamic inputs) is 1.
    """
    if not key:
        return 1
    total = 0
    for part in key.split(";"):
        dims = part.rpartition("=")[2]
        n = 1
        for d in dims.split("x") if dims else ():
            n *= int(d)
        total += n
    return max(total, 1)


@dataclass(frozen=True)
class Artifact:
    backend: str
    path: Path
    sha256: str
    layout: str
    #: input name -> the artifact's own layout for that input (the first data input's is ``layout``)
    layouts: Mapping[str, str] = field(default_factory=dict)
    #: manifest input/output name -> the tensor's name in this file, where they differ
    names: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelInput:
    """One model input as the manifest declares it.

    ``spec.shape`` includes the batch dimension first unless ``batched`` is
    False (an input such as a sample rate that the file takes without one).
    ``state`` marks an input fed from a ``state`` output (recurrent state);
    ``initial`` is its manifest initial value (a number or a nested list of the
    sample shape; zeros when absent).
    """

    spec: TensorSpec
    batched: bool = True
    state: bool = False
    initial: Any = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def shape(self) -> Tuple[Dim, ...]:
        return self.spec.shape

    @property
    def dtype(self) -> str:
        return self.spec.dtype

    @property
    def layout(self) -> str:
        return self.spec.layout

    @property
    def sample_shape(self) -> Tuple[Dim, ...]:
        """Shape of one sample's tensor (the whole shape for an unbatched input)."""
        return self.spec.shape[1:] if self.batched else self.spec.shape

    @property
    def dynamic_axes(self) -> Tuple[int, ...]:
        """Axes of ``shape`` other than the batch axis whose size is dynamic."""
        first = 1 if self.batched else 0
        return tuple(i for i in range(first, len(self.spec.shape)) if self.spec.shape[i] is None)

    @property
    def dynamic(self) -> bool:
        """True if a dimension other than the batch is dynamic (an image's H x W, an audio chunk's length)."""
        return bool(self.dynamic_axes)

    def initial_value(self, batch: int = 1) -> np.ndarray:
        """The initial state for ``batch`` samples (batch axis first if batched)."""
        dt = np.dtype(self.dtype)
        if isinstance(self.initial, list):
            one = np.asarray(self.initial, dtype=dt)
        else:
            one = np.full([d or 1 for d in self.sample_shape], self.initial or 0, dtype=dt)
        if not self.batched:
            return one
        return np.repeat(one[np.newaxis], batch, axis=0)

    def to_dict(self) -> Dict[str, Any]:
        d = self.spec.to_dict()
        if not self.batched:
            d["batch"] = False
        if self.state:
            d["state"] = True
        return d


@dataclass(frozen=True)
class ModelOutput:
    """One model output as the manifest declares it; ``kind`` chooses how results are summarised."""

    name: str
    kind: str
    labels: Tuple[str, ...] = ()
    top_k: int = DEFAULT_TOP_K
    state_input: Optional[str] = None
    shape: Optional[Tuple[Dim, ...]] = None
    dtype: Optional[str] = None

    @property
    def is_classifier(self) -> bool:
        return self.kind in CLASSIFIER_KINDS

    @property
    def is_state(self) -> bool:
        return self.kind == "state"

    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.labels:
            d["labels"] = list(self.labels)
        if self.is_classifier:
            d["top_k"] = self.top_k
        if self.state_input:
            d["state_input"] = self.state_input
        return d


@dataclass
class ModelEntry:
    """One model as its manifest describes it. Loading happens in :meth:`Catalogue.load`.

    ``input`` is the first data (non-state) input, the one a bare array feeds;
    ``inputs`` and ``outputs`` list everything the manifest declares (a v1
    manifest: one input, one ``probabilities`` output).
    """

    name: str
    dir: Path
    manifest_path: Path
    manifest: Dict[str, Any]
    input: TensorSpec
    artifacts: Dict[str, Artifact]
    labels: List[str] = field(default_factory=list)
    validation_path: Optional[Path] = None
    validation_sha256: Optional[str] = None
    inputs: Tuple[ModelInput, ...] = ()
    outputs: Tuple[ModelOutput, ...] = ()
    #: shapes ``edged profile`` measures a dynamic model at: each maps every input name to a full shape
    profile_shapes: Tuple[Dict[str, Tuple[int, ...]], ...] = ()
    #: True when the manifest uses the v2 keys (``inputs``/``outputs``)
    v2: bool = False

    def __post_init__(self) -> None:
        if not self.inputs:
            self.inputs = (ModelInput(self.input),)
        if not self.outputs:
            self.outputs = (ModelOutput("output", "probabilities", tuple(self.labels)),)

    @property
    def backends(self) -> List[str]:
        return list(self.artifacts)

    @property
    def model_hash(self) -> str:
        """Identity of the exact model across edge and fog: input spec(s), output contract, every artifact hash.

        A v1 manifest hashes as it always did (input spec + artifact hashes), so existing profiles stay valid.
        """
        ident: Dict[str, Any] = {
            "input": self.input.to_dict(),
            "artifacts": {k: a.sha256 for k, a in sorted(self.artifacts.items())},
        }
        if self.v2:
            ident["inputs"] = [i.to_dict() for i in self.inputs]
            ident["outputs"] = [o.to_dict() for o in self.outputs]
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()

    @property
    def manifest_cuts(self) -> Optional[Tuple[str, ...]]:
        """The interior partition cuts the manifest allows (``partition.cuts``: tensor names), or None
        when it does not restrict them (every cut that passes verification is offered). ``[]`` allows none."""
        return parse_partition_cuts(self.manifest.get("partition"))

    # ------------------------------------------------------------------ the contract

    @property
    def primary_input(self) -> ModelInput:
        """The first data (non-state) input: what a bare array feeds."""
        return next(i for i in self.inputs if i.name == self.input.name)

    @property
    def data_inputs(self) -> List[ModelInput]:
        """Inputs a sender supplies (every input except recurrent state)."""
        return [i for i in self.inputs if not i.state]

    @property
    def state_inputs(self) -> List[ModelInput]:
        return [i for i in self.inputs if i.state]

    @property
    def state_outputs(self) -> List[ModelOutput]:
        return [o for o in self.outputs if o.is_state]

    @property
    def stateful(self) -> bool:
        return any(o.is_state for o in self.outputs)

    @property
    def dynamic_inputs(self) -> List[str]:
        """Names of the inputs with a dynamic dimension other than the batch."""
        return [i.name for i in self.inputs if i.dynamic]

    @property
    def is_dynamic(self) -> bool:
        return any(i.dynamic for i in self.inputs)

    def get_input(self, name: str) -> ModelInput:
        for i in self.inputs:
            if i.name == name:
                return i
        raise InputError(f"model {self.name!r} has no input {name!r}: its inputs are "
                         f"{', '.join(i.name for i in self.inputs)}")

    def get_output(self, name: str) -> ModelOutput:
        for o in self.outputs:
            if o.name == name:
                return o
        raise KeyError(f"model {self.name!r} has no output {name!r}: its outputs are "
                       f"{', '.join(o.name for o in self.outputs)}")

    def shape_key(self, feeds: Union[np.ndarray, Mapping[str, Any]]) -> str:
        """The WCET key of an input: the shapes of the dynamic inputs, one sample, batch dimension 1.

        ``feeds`` is a bare array (the primary input), or name -> array or shape; a
        sample without its batch axis and the same sample with one key alike
        (``"1x3x640x640"``). A model without dynamic dimensions always gives ``""``.
        """
        if not self.is_dynamic:
            return ""
        if not isinstance(feeds, Mapping):
            feeds = {self.input.name: feeds}
        shapes: Dict[str, Tuple[int, ...]] = {}
        for i in self.inputs:
            if not i.dynamic or i.name not in feeds:
                continue
            v = feeds[i.name]
            shp = tuple(v.shape) if isinstance(v, np.ndarray) else tuple(v)
            if i.batched:
                shp = (1, *shp[1:]) if len(shp) == len(i.shape) else (1, *shp)
            shapes[i.name] = shp
        return shape_key(shapes) if shapes else ""

    def make_feeds(self, shapes: Optional[Mapping[str, Sequence[int]]] = None, seed: Optional[int] = None,
                   batch: int = 1) -> Dict[str, np.ndarray]:
        """Synthetic feeds for every input: seeded random data (zeros if ``seed`` is None), initial state.

        ``shapes`` gives full shapes for dynamic inputs (one of :attr:`profile_shapes`, say); a dynamic
        dimension without one is 1.
        """
        rng = np.random.default_rng(seed) if seed is not None else None
        out: Dict[str, np.ndarray] = {}
        for i in self.inputs:
            if i.state:
                out[i.name] = i.initial_value(batch)
                continue
            if shapes and i.name in shapes:
                shp = tuple(int(d) for d in shapes[i.name])
                if i.batched:
                    shp = (batch, *shp[1:])
            else:
                shp = tuple(d or 1 for d in i.shape)
                if i.batched:
                    shp = (batch, *shp[1:])
            dt = np.dtype(i.dtype)
            if rng is None:
                out[i.name] = np.zeros(shp, dt)
            elif dt.kind == "f":
                out[i.name] = rng.standard_normal(shp).astype(dt)
            elif dt.kind == "b":
                out[i.name] = rng.integers(0, 2, shp).astype(dt)
            else:
                info = np.iinfo(dt)
                out[i.name] = rng.integers(max(info.min, -128), min(info.max, 127), shp, endpoint=True).astype(dt)
        return out

    def profile_cases(self, seed: int = 0) -> List[Tuple[str, Dict[str, np.ndarray]]]:
        """(shape key, feeds) for each of :attr:`profile_shapes`: seeded synthetic inputs, initial state.

        What ``edged profile`` measures a dynamic model at when its validation set does not give
        the shapes; empty when the manifest lists none.
        """
        cases = []
        for shapes in self.profile_shapes:
            feeds = self.make_feeds(shapes, seed=seed)
            cases.append((self.shape_key(feeds), feeds))
        return cases

    # ------------------------------------------------------------------ files

    def metric(self, backend: str, key: str) -> Optional[float]:
        v = self.manifest.get("metrics", {}).get(backend, {}).get(key)
        return float(v) if isinstance(v, (int, float)) else None

    def verify(self, backend: Optional[str] = None) -> None:
        """Check sha256 of the artifact(s) (and the validation set); raise IntegrityError on mismatch."""
        items = [self.artifacts[backend]] if backend else list(self.artifacts.values())
        checks = [(a.path, a.sha256) for a in items]
        if backend is None and self.validation_path is not None and self.validation_sha256:
            checks.append((self.validation_path, self.validation_sha256))
        for path, expected in checks:
            if not path.is_file():
                raise IntegrityError(f"model {self.name!r}: artifact {path} is missing")
            actual = sha256_file(path)
            if actual != expected.lower():
                raise IntegrityError(
                    f"model {self.name!r}: refusing {path}: sha256 is {actual}, manifest expects {expected}"
                )

    def load_validation(self) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """(inputs in canonical layout, labels or None). Raises ManifestError if there is no validation set.

        ``x`` feeds the primary input; a multi-input model's other inputs are in :meth:`load_validation_feeds`.
        """
        z = self._open_validation()
        with z:
            if "x" not in z and self.input.name not in z:
                raise ManifestError(f"model {self.name!r}: {self.validation_path} has no array 'x'")
            x = np.ascontiguousarray(z["x"] if "x" in z else z[self.input.name], dtype=self.input.dtype)
            y = np.asarray(z["y"]) if "y" in z else None
        return x, y

    def load_validation_feeds(self) -> Tuple[Dict[str, np.ndarray], Optional[np.ndarray]]:
        """(input name -> array, labels or None): ``x`` is the primary input, other inputs by their names."""
        z = self._open_validation()
        with z:
            feeds: Dict[str, np.ndarray] = {}
            for i in self.inputs:
                key = "x" if i.name == self.input.name and "x" in z else i.name
                if key in z:
                    feeds[i.name] = np.ascontiguousarray(z[key], dtype=i.dtype)
                elif not i.state:
                    raise ManifestError(
                        f"model {self.name!r}: {self.validation_path} has no array for input {i.name!r}"
                    )
            y = np.asarray(z["y"]) if "y" in z else None
        return feeds, y

    def _open_validation(self) -> Any:
        if self.validation_path is None:
            raise ManifestError(f"model {self.name!r} has no validation set in {self.manifest_path}")
        if self.validation_sha256:
            actual = sha256_file(self.validation_path)
            if actual != self.validation_sha256.lower():
                raise IntegrityError(
                    f"model {self.name!r}: refusing {self.validation_path}: sha256 is {actual}, "
                    f"manifest expects {self.validation_sha256}"
                )
        return np.load(self.validation_path)


# --------------------------------------------------------------------------- manifest parsing


def _parse_input(d: Any, fld: str, default_name: Optional[str], bad: Any) -> ModelInput:
    if not isinstance(d, dict):
        raise bad(fld, "must be a table with name, shape, dtype and layout")
    name = d.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise bad(f"{fld}.name", "is required: the input's name (the tensor's name in the model file)")
    batched = d.get("batch", True)
    if not isinstance(batched, bool):
        raise bad(f"{fld}.batch", f"is {batched!r}: expected true or false")
    raw = d.get("shape")
    if not isinstance(raw, list) or (batched and len(raw) < 1):
        example = "[-1, 30]" if batched else "[1]"
        raise bad(f"{fld}.shape", f"is required: a list with the batch dimension first, e.g. {example}")
    if fld == "input" and len(raw) < 2:
        raise bad(f"{fld}.shape", "is required: a list with the batch dimension first, e.g. [-1, 30]")
    try:
        dims = tuple(_dim(x) for x in raw)
    except ValueError as exc:
        raise bad(f"{fld}.shape", f"is invalid: {exc}") from exc
    shape = (None, *dims[1:]) if batched else dims
    dtype = str(d.get("dtype", ""))
    if dtype not in SUPPORTED_DTYPES:
        raise bad(f"{fld}.dtype", f"is {dtype!r}: expected one of {', '.join(SUPPORTED_DTYPES)}")
    layout = str(d.get("layout", ""))
    if layout and len(layout) != len(shape):
        shp = "input.shape" if fld == "input" else f"{fld}.shape"
        raise bad(f"{fld}.layout", f"is {layout!r} ({len(layout)} letters) but {shp} has {len(shape)} dims")
    initial = d.get("initial")
    if initial is not None and (isinstance(initial, bool) or not isinstance(initial, (int, float, list))):
        raise bad(f"{fld}.initial", f"is {initial!r}: expected a number or a nested list of the sample shape")
    return ModelInput(TensorSpec(name, shape, dtype, layout), batched=batched, initial=initial)


def _parse_output(d: Any, fld: str, default_name: Optional[str], default_kind: str, bad: Any) -> ModelOutput:
    if not isinstance(d, dict):
        raise bad(fld, "must be a table with name and kind")
    name = d.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise bad(f"{fld}.name", "is required: the output's name (the tensor's name in the model file)")
    kind = d.get("kind", default_kind if "labels" not in d else "probabilities")
    if kind not in OUTPUT_KINDS:
        raise bad(f"{fld}.kind", f"is {kind!r}: expected one of {', '.join(OUTPUT_KINDS)}")
    labels_raw = d.get("labels", [])
    if not isinstance(labels_raw, list):
        raise bad(f"{fld}.labels", "must be a list of class names")
    if labels_raw and kind not in CLASSIFIER_KINDS:
        raise bad(f"{fld}.labels", f"only apply to a classifier output (kind probabilities or logits), not {kind!r}")
    top_k = d.get("top_k", DEFAULT_TOP_K)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise bad(f"{fld}.top_k", f"is {top_k!r}: expected an integer >= 1")
    state_input = d.get("state_input")
    if kind == "state" and (not isinstance(state_input, str) or not state_input):
        raise bad(f"{fld}.state_input", "is required for kind 'state': the name of the input it is fed back into")
    if kind != "state" and state_input is not None:
        raise bad(f"{fld}.state_input", f"only applies to kind 'state', not {kind!r}")
    shape: Optional[Tuple[Dim, ...]] = None
    if d.get("shape") is not None:
        if not isinstance(d["shape"], list):
            raise bad(f"{fld}.shape", "must be a list of dimensions")
        try:
            shape = tuple(_dim(x) for x in d["shape"])
        except ValueError as exc:
            raise bad(f"{fld}.shape", f"is invalid: {exc}") from exc
    dtype = d.get("dtype")
    if dtype is not None and dtype not in SUPPORTED_DTYPES:
        raise bad(f"{fld}.dtype", f"is {dtype!r}: expected one of {', '.join(SUPPORTED_DTYPES)}")
    return ModelOutput(name, kind, tuple(str(x) for x in labels_raw), top_k, state_input, shape,
                       str(dtype) if dtype is not None else None)


def _parse_profile_shapes(raw: Any, inputs: Sequence[ModelInput], primary: str,
                          bad: Any) -> Tuple[Dict[str, Tuple[int, ...]], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise bad("profile_shapes", "must be a list of shapes (or of tables input name -> shape)")
    by_name = {i.name: i for i in inputs}
    out: List[Dict[str, Tuple[int, ...]]] = []
    for k, item in enumerate(raw):
        fld = f"profile_shapes[{k}]"
        given = {primary: item} if isinstance(item, list) else item
        if not isinstance(given, dict):
            raise bad(fld, f"is {item!r}: expected a shape like [1, 3, 640, 640] or a table input name -> shape")
        shapes: Dict[str, Tuple[int, ...]] = {}
        for name, shp in given.items():
            if name not in by_name:
                raise bad(f"{fld}.{name}", f"names no input: the inputs are {', '.join(by_name)}")
            i = by_name[name]
            if not isinstance(shp, list) or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0
                                                    for x in shp):
                raise bad(f"{fld}" if isinstance(item, list) else f"{fld}.{name}",
                          f"is {shp!r}: expected a list of positive integers")
            full = tuple(shp)
            if i.batched and len(full) == len(i.shape) - 1:
                full = (1, *full)
            want = [d if d is not None else "?" for d in i.shape]
            if len(full) != len(i.shape) or any(
                w is not None and g != w for j, (g, w) in enumerate(zip(full, i.shape)) if not (i.batched and j == 0)
            ):
                raise bad(f"{fld}" if isinstance(item, list) else f"{fld}.{name}",
                          f"is {list(shp)} but input {name!r} has shape {want}")
            shapes[name] = full
        for i in inputs:
            if i.name in shapes:
                continue
            if i.dynamic and not i.state:
                raise bad(fld, f"lacks input {i.name!r}, which has dynamic dimensions")
            shapes[i.name] = tuple(d or 1 for d in i.shape)
        out.append(shapes)
    return tuple(out)


def parse_partition_cuts(raw: Any) -> Optional[Tuple[str, ...]]:
    """``partition = {cuts = ["p1", "p2"]}`` -> ("p1", "p2"); absent -> None (no restriction).
    Raises ValueError saying what is expected."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError("must be inside a table: partition = { cuts = [\"tensor\", ...] }")
    cuts = raw.get("cuts")
    if cuts is None:
        return None
    if not isinstance(cuts, list) or not all(isinstance(c, str) and c for c in cuts):
        raise ValueError(f"must be a list of tensor names (single-tensor cuts of the ONNX graph), not {cuts!r}")
    return tuple(cuts)


def parse_manifest(path: Path) -> ModelEntry:
    """Read and validate one manifest (v1 or v2). Every error names the model, the file and the field."""
    model_dir = path.parent
    fallback_name = model_dir.name
    try:
        m = _load_toml(path) if path.suffix == ".toml" else json.loads(path.read_text())
    except Exception as exc:
        raise ManifestError(f"model {fallback_name!r}: cannot parse {path}: {exc}") from exc
    if not isinstance(m, dict):
        raise ManifestError(f"model {fallback_name!r}: {path} must hold a table/object at the top level")
    name = str(m.get("name") or fallback_name)

    def bad(fld: str, why: str) -> ManifestError:
        return ManifestError(f"model {name!r}: {path}: field '{fld}' {why}")

    # ---- inputs
    if "inputs" in m and "input" in m:
        raise bad("inputs", "and 'input' are both given: use 'inputs' (a list) or 'input' (one table), not both")
    v2 = "inputs" in m or "outputs" in m
    if "inputs" in m:
        raw_inputs = m["inputs"]
        if not isinstance(raw_inputs, list) or not raw_inputs:
            raise bad("inputs", "must be a non-empty list of tables with name, shape, dtype and layout")
        inputs = [_parse_input(d, f"inputs[{k}]", "input" if len(raw_inputs) == 1 else None, bad)
                  for k, d in enumerate(raw_inputs)]
    else:
        if not isinstance(m.get("input"), dict):
            raise bad("input", "is required: a table with shape, dtype and layout (or 'inputs', a list of them)")
        inputs = [_parse_input(m["input"], "input", "input", bad)]
    seen: Dict[str, int] = {}
    for k, i in enumerate(inputs):
        if i.name in seen:
            raise bad(f"inputs[{k}].name", f"{i.name!r} repeats inputs[{seen[i.name]}].name")
        seen[i.name] = k

    # ---- outputs
    if "outputs" in m and "output" in m:
        raise bad("outputs", "and 'output' are both given: use 'outputs' (a list) or 'output' (one table), not both")
    top_labels_raw = m.get("labels", [])
    if not isinstance(top_labels_raw, list):
        raise bad("labels", "must be a list of class names")
    top_labels = tuple(str(x) for x in top_labels_raw)
    if "outputs" in m:
        raw_outputs = m["outputs"]
        if not isinstance(raw_outputs, list) or not raw_outputs:
            raise bad("outputs", "must be a non-empty list of tables with name and kind")
        outputs = [_parse_output(d, f"outputs[{k}]", "output" if len(raw_outputs) == 1 else None, "tensor", bad)
                   for k, d in enumerate(raw_outputs)]
    elif "inputs" in m and "output" not in m:
        raise bad("outputs", "is required with 'inputs': a list of tables with name and kind "
                  f"({', '.join(OUTPUT_KINDS)})")
    else:
        o = m.get("output", {})
        outputs = [_parse_output(o if isinstance(o, dict) else None, "output", "output", "probabilities", bad)]
    if top_labels:  # the v1 top-level labels belong to the first classifier without its own
        for k, o in enumerate(outputs):
            if o.is_classifier and not o.labels:
                outputs[k] = ModelOutput(o.name, o.kind, top_labels, o.top_k, o.state_input, o.shape, o.dtype)
                break
    seen = {}
    for k, o in enumerate(outputs):
        if o.name in seen:
            raise bad(f"outputs[{k}].name", f"{o.name!r} repeats outputs[{seen[o.name]}].name")
        seen[o.name] = k
    state_of: Dict[str, str] = {}
    for k, o in enumerate(outputs):
        if not o.is_state:
            continue
        assert o.state_input is not None
        if o.state_input not in {i.name for i in inputs}:
            raise bad(f"outputs[{k}].state_input",
                      f"is {o.state_input!r}, which names no input: the inputs are {', '.join(i.name for i in inputs)}")
        if o.state_input in state_of:
            raise bad(f"outputs[{k}].state_input",
                      f"{o.state_input!r} is already fed by output {state_of[o.state_input]!r}")
        state_of[o.state_input] = o.name
    for k, i in enumerate(inputs):
        fld = "input" if "inputs" not in m else f"inputs[{k}]"
        if i.name in state_of:
            inputs[k] = i = ModelInput(i.spec, i.batched, True, i.initial)
            if isinstance(i.initial, list):
                try:
                    arr = np.asarray(i.initial, dtype=np.dtype(i.dtype))
                except (TypeError, ValueError) as exc:
                    raise bad(f"{fld}.initial", f"is not a numeric array: {exc}") from exc
                if arr.ndim != len(i.sample_shape) or any(
                    d is not None and g != d for g, d in zip(arr.shape, i.sample_shape)
                ):
                    raise bad(f"{fld}.initial", f"has shape {list(arr.shape)}, expected the sample shape "
                              f"{[d if d is not None else '?' for d in i.sample_shape]}")
            elif any(d is None for d in i.sample_shape):
                raise bad(f"{fld}.shape", "of a state input must be fixed (or give 'initial' as a nested list)")
        elif i.initial is not None:
            raise bad(f"{fld}.initial", "only applies to a state input (one that a kind='state' output feeds)")
    data = [i for i in inputs if not i.state]
    if not data:
        raise bad("inputs", "are all state inputs: at least one input must come from the sender")
    spec = data[0].spec

    # ---- artifacts
    arts_raw = m.get("artifacts")
    if not isinstance(arts_raw, dict) or not arts_raw:
        raise bad("artifacts", f"is required: a table of backend -> {{file, sha256}} for {', '.join(BACKENDS)}")
    artifacts: Dict[str, Artifact] = {}
    by_name = {i.name: i for i in inputs}
    out_names = {o.name for o in outputs}
    for key, a in arts_raw.items():
        try:
            backend = canonical_name(key)
        except BackendError as exc:
            raise bad(f"artifacts.{key}", str(exc)) from exc
        if not isinstance(a, dict) or not a.get("file"):
            raise bad(f"artifacts.{key}.file", "is required")
        if not isinstance(a.get("sha256"), str) or len(a["sha256"]) != 64:
            raise bad(f"artifacts.{key}.sha256", f"must be the 64-hex-digit sha256 of the file (sha256sum {a['file']})")
        a_layout = str(a.get("layout", spec.layout))
        try:
            layout_permutation(spec.layout, a_layout)
        except ValueError as exc:
            raise bad(f"artifacts.{key}.layout", str(exc)) from exc
        layouts_raw = a.get("layouts", {})
        if not isinstance(layouts_raw, dict):
            raise bad(f"artifacts.{key}.layouts", "must be a table input name -> layout")
        layouts: Dict[str, str] = {spec.name: a_layout} if a_layout else {}
        for in_name, lay in layouts_raw.items():
            if in_name not in by_name:
                raise bad(f"artifacts.{key}.layouts.{in_name}", f"names no input: the inputs are {', '.join(by_name)}")
            try:
                layout_permutation(by_name[in_name].layout, str(lay))
            except ValueError as exc:
                raise bad(f"artifacts.{key}.layouts.{in_name}", str(exc)) from exc
            layouts[in_name] = str(lay)
        names_raw = a.get("names", {})
        if not isinstance(names_raw, dict) or not all(isinstance(v, str) for v in names_raw.values()):
            raise bad(f"artifacts.{key}.names", "must be a table manifest name -> tensor name in the file")
        for n in names_raw:
            if n not in by_name and n not in out_names:
                raise bad(f"artifacts.{key}.names.{n}", "names no input or output of the manifest")
        artifacts[backend] = Artifact(backend, model_dir / str(a["file"]), str(a["sha256"]),
                                      layouts.get(spec.name, a_layout), layouts, dict(names_raw))

    profile_shapes = _parse_profile_shapes(m.get("profile_shapes"), inputs, spec.name, bad)
    try:
        parse_partition_cuts(m.get("partition"))
    except ValueError as exc:
        raise bad("partition.cuts", str(exc)) from None

    val = m.get("validation") or {}
    val_path = model_dir / str(val["file"]) if isinstance(val, dict) and val.get("file") else None
    if val_path is None and (model_dir / "validation.npz").is_file():
        val_path = model_dir / "validation.npz"
    first_cls = next((o for o in outputs if o.is_classifier), None)
    labels = list(top_labels) or (list(first_cls.labels) if first_cls else [])
    return ModelEntry(
        name=name, dir=model_dir, manifest_path=path, manifest=m, input=spec, artifacts=artifacts, labels=labels,
        validation_path=val_path, validation_sha256=(val.get("sha256") if isinstance(val, dict) else None),
        inputs=tuple(inputs), outputs=tuple(outputs), profile_shapes=profile_shapes, v2=v2,
    )


# --------------------------------------------------------------------------- a loaded model


@dataclass(frozen=True)
class _BoundInput:
    """A manifest input bound to a file tensor: its name there and the layout permutation."""

    decl: ModelInput
    file_name: str
    perm: Optional[Tuple[int, ...]]
    accepted: Tuple[str, ...]  # dtypes a sender may send (the manifest's, and a quantised tensor's integer type)
    # precomputed for the per-input hot path
    np_accepted: Tuple[np.dtype, ...] = ()
    sample_shape: Tuple[Dim, ...] = ()
    batched: bool = True


def _match_names(model: str, path: Path, what: str, declared: Sequence[str], file_names: Sequence[str],
                 explicit: Mapping[str, str], aliases: Mapping[str, str]) -> Dict[str, str]:
    """manifest name -> file tensor name: explicit mapping, exact name, alias; one of each: by position."""
    out: Dict[str, str] = {}
    for n in declared:
        cand = explicit.get(n, n)
        cand = cand if cand in file_names else aliases.get(cand, "")
        if cand in file_names:
            out[n] = cand
    if len(out) == len(declared):
        return out
    if len(declared) == 1 and len(file_names) == 1:
        return {declared[0]: file_names[0]}
    missing = [n for n in declared if n not in out]
    raise ManifestError(
        f"model {model!r}: {path} has no {what} named {', '.join(repr(n) for n in missing)}: its {what}s are "
        f"{', '.join(repr(n) for n in file_names)} (name them so in the manifest, or map them with "
        f"artifacts.<backend>.names)"
    )


class LoadedModel:
    """A model loaded into one backend, taking inputs in the canonical layouts.

    ``run`` takes every input by name (or a bare array for the primary input)
    and returns every declared output by name, batch dimension first.
    ``predict`` accepts one sample (``entry.input.sample_shape``) or a batch of
    the primary input and returns the first declared output (class
    probabilities for the shipped models). Not thread-safe: use one
    LoadedModel per worker thread.
    """

    def __init__(self, entry: ModelEntry, backend: Backend, backend_name: str, threads: int) -> None:
        self.entry = entry
        self.name = entry.name
        self.backend = backend
        self.backend_name = backend_name
        self.threads = threads
        art = entry.artifacts[backend_name]
        self._perm = layout_permutation(entry.input.layout, art.layout)
        spec = entry.input
        self._sample_shape = spec.sample_shape
        self._sample_ndim = len(self._sample_shape)
        self._dtype = np.dtype(spec.dtype)
        self._bind(art)

    def _bind(self, art: Artifact) -> None:
        """Match manifest inputs/outputs to the file's tensors; the file must agree with the manifest."""
        be = self.backend
        aliases: Dict[str, str] = dict(getattr(be, "tensor_aliases", dict)())
        file_in = {s.name: s for s in be.input_specs}
        file_out = [s.name for s in be.output_specs]
        e = self.entry
        in_map = _match_names(self.name, art.path, "input", [i.name for i in e.inputs], list(file_in),
                              art.names, aliases)
        extra = [n for n in file_in if n not in in_map.values()]
        if extra:
            raise ManifestError(
                f"model {self.name!r}: {art.path} takes input(s) {', '.join(map(repr, extra))} that the manifest "
                f"does not declare (it declares {', '.join(i.name for i in e.inputs)})"
            )
        self._inputs: Dict[str, _BoundInput] = {}
        for decl in e.inputs:
            fname = in_map[decl.name]
            lay = art.layouts.get(decl.name, decl.layout)
            perm = layout_permutation(decl.layout, lay)
            declared = file_in[fname]
            quant = be.quantization(fname)
            want = decl.shape if perm is None else tuple(decl.shape[i] for i in perm)
            first = 1 if decl.batched else 0
            ok = len(declared.shape) == len(want) and all(
                a is None or b is None or a == b for a, b in zip(declared.shape[first:], want[first:])
            )
            dtype_ok = declared.dtype == decl.dtype or (quant is not None and np.dtype(decl.dtype).kind == "f")
            if not ok or not dtype_ok:
                which = "" if len(e.inputs) == 1 else f"input {decl.name!r} "
                raise ManifestError(
                    f"model {self.name!r}: {art.path} {which}takes {declared.dtype} {list(declared.shape)} but the "
                    f"manifest says {decl.dtype} {list(want)} (layout {lay or '?'})"
                )
            accepted = (decl.dtype,) + ((declared.dtype,) if quant is not None and declared.dtype != decl.dtype else ())
            self._inputs[decl.name] = _BoundInput(decl, fname, perm, accepted, tuple(np.dtype(t) for t in accepted),
                                                  tuple(decl.sample_shape), decl.batched)
        out_map = _match_names(self.name, art.path, "output", [o.name for o in e.outputs], file_out,
                               art.names, aliases)
        self._outputs: List[Tuple[str, str]] = [(o.name, out_map[o.name]) for o in e.outputs]
        self._primary = self._inputs[e.input.name]
        first_out = next((o for o in e.outputs if not o.is_state), e.outputs[0])
        self._first_output = first_out.name
        # predict() may use backend.infer (first input -> first file output) when that is what it means
        self._fast = len(e.inputs) == 1 and out_map[first_out.name] == file_out[0]

    @property
    def input_spec(self) -> TensorSpec:
        return self.entry.input

    @property
    def input_names(self) -> List[str]:
        return [i.name for i in self.entry.inputs]

    @property
    def output_names(self) -> List[str]:
        return [o for o, _ in self._outputs]

    # ------------------------------------------------------------------ validation

    def _check_one(self, bound: _BoundInput, x: Any, label: str) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            try:
                x = np.asarray(x, dtype=bound.np_accepted[0])
            except (TypeError, ValueError) as exc:
                raise InputError(f"model {self.name!r}: {label} is not numeric: {exc}") from exc
        if x.dtype not in bound.np_accepted:
            raise InputError(f"model {self.name!r}: {label} dtype is {x.dtype}, expected {' or '.join(bound.accepted)}")
        sample = bound.sample_shape
        shape = x.shape[1:] if bound.batched and x.ndim == len(sample) + 1 else x.shape
        if len(shape) != len(sample) or any(want is not None and got != want for got, want in zip(shape, sample)):
            expected = [d if d is not None else "?" for d in sample]
            more = f" or a batch [N, {', '.join(map(str, expected))}]" if bound.batched else ""
            raise InputError(f"model {self.name!r}: {label} shape is {list(x.shape)}, expected {expected}{more}")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            n_bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
            raise InputError(
                f"model {self.name!r}: {label} has {n_bad} NaN or inf value(s); only finite values allowed"
            )
        return x

    def check_input(self, x: Any) -> np.ndarray:
        """Return ``x`` as an array the primary input accepts, or raise InputError naming model and field."""
        return self._check_one(self._primary, x, "input")

    def check_feeds(self, feeds: Mapping[str, Any]) -> Dict[str, np.ndarray]:
        """Validate every fed input (names, dtypes, shapes, finite); state inputs may be left out."""
        unknown = [n for n in feeds if n not in self._inputs]
        if unknown:
            raise InputError(f"model {self.name!r}: no input named {', '.join(map(repr, unknown))}: "
                             f"the inputs are {', '.join(self._inputs)}")
        missing = [i.name for i in self.entry.inputs if not i.state and i.name not in feeds]
        if missing:
            raise InputError(f"model {self.name!r}: input(s) {', '.join(map(repr, missing))} missing: "
                             f"the model takes {', '.join(self._inputs)}")
        single_data = len(self.entry.data_inputs) == 1
        out: Dict[str, np.ndarray] = {}
        batch: Optional[Tuple[str, int]] = None
        for name, x in feeds.items():
            b = self._inputs[name]
            label = "input" if single_data and b is self._primary else f"input {name!r}"
            arr = self._check_one(b, x, label)
            out[name] = arr
            if b.decl.batched and arr.ndim == len(b.decl.sample_shape) + 1:
                if batch is not None and batch[1] != arr.shape[0]:
                    raise InputError(f"model {self.name!r}: input {name!r} has a batch of {arr.shape[0]}, "
                                     f"input {batch[0]!r} one of {batch[1]}")
                batch = batch or (name, int(arr.shape[0]))
        return out

    # ------------------------------------------------------------------ inference

    def run(self, feeds: Union[Feeds, np.ndarray, Any], validate: bool = True) -> Dict[str, np.ndarray]:
        """Run one sample or a batch; return every declared output by name, batch dimension first.

        ``feeds`` maps input names to arrays in the canonical layouts (a bare array
        feeds the primary input). Each batched input may be one sample (no batch
        axis) or a batch. A state input left out gets its initial value (see
        :class:`edged.results.StateStore` for state kept per sender). Validates
        unless ``validate=False``. Outputs are in the artifact's own layout.
        """
        if not isinstance(feeds, Mapping):
            feeds = {self._primary.decl.name: feeds}
        arrays = self.check_feeds(feeds) if validate else {k: np.asarray(v) for k, v in feeds.items()}
        n = 1
        for name, x in arrays.items():
            d = self._inputs[name].decl
            if d.batched and x.ndim == len(d.sample_shape) + 1:
                n = int(x.shape[0])
                break
        file_feeds: Dict[str, np.ndarray] = {}
        for b in self._inputs.values():
            given = arrays.get(b.decl.name)
            if given is None and not b.decl.state:
                self.check_feeds(arrays)  # raises InputError naming the missing input(s)
            x = b.decl.initial_value(n) if given is None else given
            if given is not None and b.decl.batched and x.ndim == len(b.decl.sample_shape):
                x = np.repeat(x[np.newaxis], n, axis=0) if n > 1 else x[np.newaxis]
            if b.perm is not None:
                x = np.ascontiguousarray(x.transpose(b.perm))
            file_feeds[b.file_name] = x
        out = self.backend.infer_named(file_feeds)
        return {name: out[fname] for name, fname in self._outputs}

    def accepted_dtypes(self, name: str) -> Tuple[str, ...]:
        """The dtypes a sender may send for input ``name``: the manifest's, and a quantised tensor's integer type."""
        return self._inputs[name].accepted

    def predict(self, x: Any, validate: bool = True) -> np.ndarray:
        """Run one sample or a batch of the primary input; return the first declared output.

        One sample in, one output row out (no batch axis); a batch in, a batch out.
        """
        if validate:
            x = self.check_input(x)
        single = x.ndim == self._sample_ndim
        if not self._fast:
            out = self.run({self._primary.decl.name: x}, validate=False)[self._first_output]
            return out[0] if single else out
        batch = x[np.newaxis] if single else x
        if self._perm is not None:
            batch = np.ascontiguousarray(batch.transpose(self._perm))
        out = self.backend.infer(batch)
        return out[0] if single else out

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> LoadedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- the catalogue


class Catalogue:
    """All models found in the shipped directory and any extra directories.

    A model in a later directory replaces a shipped one of the same name (logged).
    One bad model never fails the catalogue: an unparsable manifest is kept in
    :attr:`errors`, and :meth:`unservable` names every model that cannot be
    served here and why.
    """

    def __init__(self, entries: Mapping[str, ModelEntry], errors: Optional[Dict[str, str]] = None) -> None:
        self._entries = dict(entries)
        #: model dir -> error for manifests that could not be parsed (skipped, reported by `edged models`)
        self.errors: Dict[str, str] = dict(errors or {})
        self._checked: Dict[Tuple[str, str], Optional[str]] = {}

    @classmethod
    def discover(cls, extra_dirs: Optional[Iterable[Union[str, os.PathLike]]] = None, include_shipped: bool = True,
                 strict: bool = False) -> Catalogue:
        """Read every ``<root>/<name>/manifest.*``. Only ``strict`` raises for a bad manifest."""
        roots: List[Path] = [shipped_models_dir()] if include_shipped else []
        site = site_models_dir()
        if site is not None and include_shipped:
            roots.append(site)
        roots += [Path(d) for d in (extra_dirs or [])]
        entries: Dict[str, ModelEntry] = {}
        errors: Dict[str, str] = {}
        for root in roots:
            if not root.is_dir():
                if root != shipped_models_dir():
                    raise ManifestError(f"models directory {root} does not exist")
                continue
            for d in sorted(p for p in root.iterdir() if p.is_dir()):
                mpath = next((d / n for n in MANIFEST_NAMES if (d / n).is_file()), None)
                if mpath is None:
                    continue
                try:
                    entry = parse_manifest(mpath)
                except Exception as exc:
                    err = exc if isinstance(exc, ManifestError) else ManifestError(
                        f"model {d.name!r}: cannot read {mpath}: {type(exc).__name__}: {exc}")
                    if strict:
                        raise err from exc
                    log.warning("skipping model in %s: %s", d, err)
                    errors[str(d)] = str(err)
                    continue
                if entry.name in entries:
                    log.info("model %r from %s replaces the one in %s", entry.name, d, entries[entry.name].dir)
                entries[entry.name] = entry
        return cls(entries, errors)

    def names(self) -> List[str]:
        """Every model whose manifest parsed (servable or not: see :meth:`servable_names`)."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str) -> ModelEntry:
        try:
            return self._entries[name]
        except KeyError:
            for d, err in self.errors.items():
                if Path(d).name == name:
                    raise UnservableModelError(f"model {name!r} cannot be served: {err}") from None
            known = ", ".join(self.names()) or "none"
            raise UnknownModelError(f"unknown model {name!r}: the catalogue has {known}") from None

    def input_specs(self) -> Dict[str, TensorSpec]:
        """name -> spec of the primary input (what a v1 message or a bare array feeds)."""
        return {n: e.input for n, e in self._entries.items()}

    def entries(self) -> Dict[str, ModelEntry]:
        """name -> ModelEntry (every input and output of each model's contract), for sources and sinks."""
        return dict(self._entries)

    # ------------------------------------------------------------------ servability

    def check(self, name: str, backend: str = "auto") -> Optional[str]:
        """Why ``name`` cannot be served with ``backend`` here, or None if it can.

        Loads the artifact (sha256, runtime, the file's inputs and outputs against
        the manifest) once and remembers the answer.
        """
        key = (name, backend)
        if key not in self._checked:
            try:
                self.load(name, backend).close()
                self._checked[key] = None
            except EdgedError as exc:
                self._checked[key] = str(exc)
            except Exception as exc:  # a runtime's own exception types: still one model's problem
                self._checked[key] = f"{type(exc).__name__}: {exc}"
        return self._checked[key]

    def unservable(self) -> Dict[str, str]:
        """name -> reason for every model that cannot be served here (unparsable manifests by directory name)."""
        out = {Path(d).name: err for d, err in self.errors.items()}
        for name in self.names():
            reason = self.check(name)
            if reason is not None:
                out[name] = reason
        return out

    def servable_names(self) -> List[str]:
        return [n for n in self.names() if self.check(n) is None]

    def select(self, enabled: Sequence[str] = (),
               backends: Union[str, Mapping[str, str]] = "auto") -> Tuple[List[str], Dict[str, str]]:
        """The models a command serves, and those it skips with why (``run``, ``fog`` and ``profile``).

        Models ``enabled`` by name must all be servable, or this raises with the reason (see
        :meth:`require`). With none named, every servable model is chosen and each one that cannot
        be served is returned in the second dict (name -> reason) for the caller's one error line
        each (an unparsable manifest was already logged, once, by :meth:`discover`). ``backends`` is
        one backend for every model or a per-model mapping (missing names mean ``auto``).
        """
        def backend(name: str) -> str:
            return backends if isinstance(backends, str) else backends.get(name, "auto")

        if enabled:
            self.require(enabled, {n: backend(n) for n in enabled})
            return list(enabled), {}
        chosen: List[str] = []
        skipped: Dict[str, str] = {}
        for name in self.names():
            reason = self.check(name, backend(name))
            if reason is None:
                chosen.append(name)
            else:
                skipped[name] = reason
        return chosen, skipped

    def require(self, names: Iterable[str], backends: Optional[Mapping[str, str]] = None) -> None:
        """Raise for the first model in ``names`` that is unknown or cannot be served (with the reason).

        ``backends`` maps a model to the backend a config asks for (default auto).
        """
        for name in names:
            self.get(name)  # UnknownModelError, or UnservableModelError for an unparsable manifest
            reason = self.check(name, (backends or {}).get(name, "auto"))
            if reason is not None:
                raise UnservableModelError(f"model {name!r} is enabled by name but cannot be served: {reason}")

    # ------------------------------------------------------------------ loading

    def resolve_backend(self, name: str, backend: str = "auto") -> str:
        return self._candidates(name, backend)[0]

    def _candidates(self, name: str, backend: str) -> List[str]:
        entry = self.get(name)
        if backend != "auto":
            b = canonical_name(backend)
            if b not in entry.artifacts:
                raise BackendError(
                    f"model {name!r} has no {b} artifact (it has: {', '.join(entry.artifacts)})"
                )
            return [b]
        from edged.runtime import available_backends

        avail = available_backends()
        order = [b for b in AUTO_ORDER if b in entry.artifacts and b in avail]
        if not order:
            hints = []
            for b in entry.artifacts:
                if b not in avail:
                    try:
                        backend_class(b)().version()
                    except Exception as exc:
                        hints.append(str(exc))
            raise BackendError(
                f"model {name!r}: none of its artifacts ({', '.join(entry.artifacts)}) can run here "
                f"(available runtimes: {', '.join(avail) or 'none'})" + (f"; {'; '.join(hints)}" if hints else "")
            )
        return order

    def load(self, name: str, backend: str = "auto", threads: int = 1, **options: Any) -> LoadedModel:
        """Verify the artifact's sha256, load it and return a LoadedModel in the canonical layout.

        With ``backend="auto"`` an artifact that fails (bad hash, contradicts the
        manifest) is skipped with a warning for the next usable one; if all fail,
        the first one's error is raised.
        """
        entry = self.get(name)
        first: Optional[BaseException] = None
        candidates = self._candidates(name, backend)
        for b in candidates:
            try:
                return self._load_one(entry, b, threads, **options)
            except EdgedError as exc:
                if len(candidates) == 1:
                    raise
                if first is None:
                    first = exc
                log.warning("model %r: cannot use its %s artifact: %s", name, b, exc)
        assert first is not None
        raise first

    def _load_one(self, entry: ModelEntry, b: str, threads: int, **options: Any) -> LoadedModel:
        entry.verify(b)
        impl = backend_class(b)()
        impl.load(str(entry.artifacts[b].path), threads=threads, **options)
        try:
            return LoadedModel(entry, impl, b, threads)
        except Exception:
            impl.close()
            raise


# --------------------------------------------------------------------------- CLI: edged models


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models-dir", action="append", default=[], metavar="DIR",
                   help="extra directory of <name>/manifest.{json,toml} (repeatable)")
    p.add_argument("--model", action="append", default=[], metavar="NAME",
                   help="a model that must be servable: exit 1 if it is not (repeatable, comma-separated)")
    p.add_argument("--config", metavar="FILE", help="also require the models the config enables by name, "
                   "and read its models.dirs")
    p.add_argument("--json", action="store_true", help="print the catalogue as JSON")


def main(args: argparse.Namespace) -> int:
    """List every model with "ok" or "UNSERVABLE: <reason>".

    Exits 1 only if a model enabled by name (``--model``, or ``models.enabled`` in
    ``--config``) is unservable or unknown; other unservable models are reported.
    """
    dirs = list(args.models_dir)
    wanted = split_csv(getattr(args, "model", []) or [])
    if getattr(args, "config", None):
        from edged.config import load_config

        cfg = load_config(Path(args.config), check_models=False)
        dirs += [d for d in cfg.models.dirs if d not in dirs]
        wanted += [m for m in cfg.models.enabled if m not in wanted]
    cat = Catalogue.discover(dirs)
    bad = cat.unservable()
    rows: List[Dict[str, Any]] = []
    for name in cat.names():
        e = cat.get(name)
        status = f"UNSERVABLE: {bad[name]}" if name in bad else "ok"
        try:
            e.verify()  # every artifact and the validation set, even those this device would not load
        except EdgedError as exc:
            if name not in bad:
                status = f"ok (but {exc})"
        n_val = None
        if e.validation_path is not None and e.validation_path.is_file() and name not in bad:
            try:
                with np.load(e.validation_path) as z:
                    n_val = len(z["x"]) if "x" in z else None
            except Exception:
                n_val = None
        rows.append({
            "name": name, "dir": str(e.dir), "input": e.input.to_dict(),
            "inputs": [i.to_dict() for i in e.inputs], "outputs": [o.to_dict() for o in e.outputs],
            "dynamic": e.dynamic_inputs, "backends": e.backends, "labels": len(e.labels),
            "model_hash": e.model_hash[:16], "status": status, "integrity": status, "validation": n_val,
        })
    for d, err in cat.errors.items():
        rows.append({"name": Path(d).name, "dir": d, "status": f"UNSERVABLE: {err}", "integrity": f"UNSERVABLE: {err}"})
    rc = 0
    known = {r["name"] for r in rows}
    for name in wanted:
        if name not in known:
            rows.append({"name": name, "dir": "-", "status": f"UNSERVABLE: unknown model {name!r}",
                         "integrity": "UNSERVABLE: unknown model"})
            rc = 1
        elif name in bad:
            rc = 1
    if args.json:
        print(json.dumps(rows, indent=2))
        return rc
    table = [("model", "inputs", "outputs", "backends", "val", "hash", "status")]
    for r in rows:
        table.append((
            r["name"], "; ".join(_describe_input(i) for i in r.get("inputs") or []) or "-",
            ", ".join(f"{o['name']}:{o['kind']}" for o in r.get("outputs") or []) or "-",
            ",".join(r.get("backends", [])) or "-", str(r.get("validation") or "-"), r.get("model_hash", "-"),
            r["status"],
        ))
    widths = [max(len(row[c]) for row in table) for c in range(6)]
    for row in table:
        print("  ".join(cell.rjust(w) if c == 4 else cell.ljust(w) for c, (cell, w) in enumerate(zip(row, widths)))
              + "  " + row[6])
    for name in wanted:
        if name in bad or name not in known:
            print(f"edged models: model {name!r} is enabled by name but cannot be served", file=sys.stderr)
    return rc


def _describe_input(i: Mapping[str, Any]) -> str:
    """``x:float32[N,16]``, ``h:float32[N,8]=state``, ``img:uint8[N,?,?,3]NHWC``."""
    dims = [("N" if k == 0 and i.get("batch", True) else "?") if d is None else str(d)
            for k, d in enumerate(i["shape"])]
    return f"{i['name']}:{i['dtype']}[{','.join(dims)}]{i['layout'] if len(i['layout']) > 2 else ''}" + (
        "=state" if i.get("state") else "")


def split_csv(values: Sequence[str]) -> List[str]:
    """'a,b' 'c' -> ['a', 'b', 'c'] (for repeatable comma-separated CLI options)."""
    return [v for item in values for v in item.split(",") if v]
