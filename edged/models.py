"""The model catalogue: discovers manifests, verifies artifacts, hides layouts.

A model is a directory ``<root>/<name>/`` holding ``manifest.json`` (or
``manifest.toml``) and its artifacts. The shipped models live in the
repository's ``models/`` (installed copies in ``<prefix>/share/edged/models``);
users add their own by putting a directory with a manifest in a configured
models directory — nothing else is needed. The minimal manifest (TOML)::

    [input]
    shape = [-1, 16]        # -1 (or "N") marks a dynamic dimension; first is the batch
    dtype = "float32"
    layout = "NC"           # one letter per dimension: NC, NHWC, NCHW, ...
    [artifacts.onnx]        # and/or [artifacts.litert]
    file = "model.onnx"
    sha256 = "..."          # sha256sum model.onnx
    layout = "NC"           # optional: the artifact's own layout if it differs

Every artifact's sha256 is checked before it is loaded; a mismatch is refused
with the file, the expected and the actual hash. Callers always pass inputs in
the manifest's canonical ``input.layout``; if an artifact uses another layout
(an NCHW ONNX export of an NHWC model, say) the transposition happens here.
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

from edged.errors import BackendError, InputError, IntegrityError, ManifestError, UnknownModelError
from edged.runtime import BACKENDS, Backend, TensorSpec, backend_class, canonical_name
from edged.runtime.base import Dim

log = logging.getLogger(__name__)

MANIFEST_NAMES = ("manifest.json", "manifest.toml")
SUPPORTED_DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64")
#: Preference when the caller asks for backend "auto".
AUTO_ORDER = ("onnx", "litert")


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


@dataclass(frozen=True)
class Artifact:
    backend: str
    path: Path
    sha256: str
    layout: str


@dataclass
class ModelEntry:
    """One model as its manifest describes it. Loading happens in :meth:`Catalogue.load`."""

    name: str
    dir: Path
    manifest_path: Path
    manifest: Dict[str, Any]
    input: TensorSpec
    artifacts: Dict[str, Artifact]
    labels: List[str] = field(default_factory=list)
    validation_path: Optional[Path] = None
    validation_sha256: Optional[str] = None

    @property
    def backends(self) -> List[str]:
        return list(self.artifacts)

    @property
    def model_hash(self) -> str:
        """Identity of the exact model across edge and fog: input spec + every artifact hash."""
        ident = {
            "input": self.input.to_dict(),
            "artifacts": {k: a.sha256 for k, a in sorted(self.artifacts.items())},
        }
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()

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
        """(inputs in canonical layout, labels or None). Raises ManifestError if there is no validation set."""
        if self.validation_path is None:
            raise ManifestError(f"model {self.name!r} has no validation set in {self.manifest_path}")
        if self.validation_sha256:
            actual = sha256_file(self.validation_path)
            if actual != self.validation_sha256.lower():
                raise IntegrityError(
                    f"model {self.name!r}: refusing {self.validation_path}: sha256 is {actual}, "
                    f"manifest expects {self.validation_sha256}"
                )
        with np.load(self.validation_path) as z:
            if "x" not in z:
                raise ManifestError(f"model {self.name!r}: {self.validation_path} has no array 'x'")
            x = np.ascontiguousarray(z["x"], dtype=self.input.dtype)
            y = np.asarray(z["y"]) if "y" in z else None
        return x, y


def parse_manifest(path: Path) -> ModelEntry:
    """Read and validate one manifest. Every error names the model, the file and the field."""
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

    inp = m.get("input")
    if not isinstance(inp, dict):
        raise bad("input", "is required: a table with shape, dtype and layout")
    if "shape" not in inp or not isinstance(inp["shape"], list) or len(inp["shape"]) < 2:
        raise bad("input.shape", "is required: a list with the batch dimension first, e.g. [-1, 30]")
    try:
        shape = (None, *(_dim(d) for d in inp["shape"][1:]))
    except ValueError as exc:
        raise bad("input.shape", f"is invalid: {exc}") from exc
    dtype = str(inp.get("dtype", ""))
    if dtype not in SUPPORTED_DTYPES:
        raise bad("input.dtype", f"is {dtype!r}: expected one of {', '.join(SUPPORTED_DTYPES)}")
    layout = str(inp.get("layout", ""))
    if layout and len(layout) != len(shape):
        raise bad("input.layout", f"is {layout!r} ({len(layout)} letters) but input.shape has {len(shape)} dims")
    spec = TensorSpec(str(inp.get("name", "input")), shape, dtype, layout)

    arts_raw = m.get("artifacts")
    if not isinstance(arts_raw, dict) or not arts_raw:
        raise bad("artifacts", f"is required: a table of backend -> {{file, sha256}} for {', '.join(BACKENDS)}")
    artifacts: Dict[str, Artifact] = {}
    for key, a in arts_raw.items():
        try:
            backend = canonical_name(key)
        except BackendError as exc:
            raise bad(f"artifacts.{key}", str(exc)) from exc
        if not isinstance(a, dict) or not a.get("file"):
            raise bad(f"artifacts.{key}.file", "is required")
        if not isinstance(a.get("sha256"), str) or len(a["sha256"]) != 64:
            raise bad(f"artifacts.{key}.sha256", f"must be the 64-hex-digit sha256 of the file (sha256sum {a['file']})")
        a_layout = str(a.get("layout", layout))
        try:
            layout_permutation(layout, a_layout)
        except ValueError as exc:
            raise bad(f"artifacts.{key}.layout", str(exc)) from exc
        artifacts[backend] = Artifact(backend, model_dir / str(a["file"]), str(a["sha256"]), a_layout)

    val = m.get("validation") or {}
    val_path = model_dir / str(val["file"]) if isinstance(val, dict) and val.get("file") else None
    if val_path is None and (model_dir / "validation.npz").is_file():
        val_path = model_dir / "validation.npz"
    labels = [str(x) for x in m.get("labels", [])] if isinstance(m.get("labels"), list) else []
    return ModelEntry(
        name=name, dir=model_dir, manifest_path=path, manifest=m, input=spec, artifacts=artifacts, labels=labels,
        validation_path=val_path, validation_sha256=(val.get("sha256") if isinstance(val, dict) else None),
    )


class LoadedModel:
    """A model loaded into one backend, taking inputs in the canonical layout.

    ``predict`` accepts one sample (``entry.input.sample_shape``) or a batch and
    returns the first output (class probabilities for the shipped models).
    Not thread-safe: use one LoadedModel per worker thread.
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
        self._check_backend_spec(art)

    def _check_backend_spec(self, art: Artifact) -> None:
        """The file's own input must match the manifest (after layout), or a user manifest is wrong."""
        declared = self.backend.input_spec
        want = self.entry.input.shape
        if self._perm is not None:
            want = tuple(want[i] for i in self._perm)
        ok = len(declared.shape) == len(want) and all(
            a is None or b is None or a == b for a, b in zip(declared.shape[1:], want[1:])
        )
        if not ok or declared.dtype != self.entry.input.dtype:
            raise ManifestError(
                f"model {self.name!r}: {art.path} takes {declared.dtype} {list(declared.shape)} but the manifest says "
                f"{self.entry.input.dtype} {list(want)} (layout {art.layout or '?'})"
            )

    @property
    def input_spec(self) -> TensorSpec:
        return self.entry.input

    def check_input(self, x: Any) -> np.ndarray:
        """Return ``x`` as an array the model accepts, or raise InputError naming model and field."""
        if not isinstance(x, np.ndarray):
            try:
                x = np.asarray(x, dtype=self._dtype)
            except (TypeError, ValueError) as exc:
                raise InputError(f"model {self.name!r}: input is not numeric: {exc}") from exc
        if x.dtype != self._dtype:
            raise InputError(f"model {self.name!r}: input dtype is {x.dtype}, expected {self._dtype}")
        shape = x.shape[1:] if x.ndim == self._sample_ndim + 1 else x.shape
        if len(shape) != self._sample_ndim or any(
            want is not None and got != want for got, want in zip(shape, self._sample_shape)
        ):
            expected = [d if d is not None else "?" for d in self._sample_shape]
            raise InputError(
                f"model {self.name!r}: input shape is {list(x.shape)}, expected {expected} "
                f"or a batch [N, {', '.join(map(str, expected))}]"
            )
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
            raise InputError(f"model {self.name!r}: input has {bad} NaN or inf value(s); only finite values allowed")
        return x

    def predict(self, x: Any, validate: bool = True) -> np.ndarray:
        """Run one sample or a batch (canonical layout). Validates unless ``validate=False``."""
        if validate:
            x = self.check_input(x)
        single = x.ndim == self._sample_ndim
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


class Catalogue:
    """All models found in the shipped directory and any extra directories.

    A model in a later directory replaces a shipped one of the same name (logged).
    """

    def __init__(self, entries: Mapping[str, ModelEntry], errors: Optional[Dict[str, str]] = None) -> None:
        self._entries = dict(entries)
        #: model dir -> error for manifests that could not be parsed (skipped, reported by `edged models`)
        self.errors: Dict[str, str] = dict(errors or {})

    @classmethod
    def discover(cls, extra_dirs: Optional[Iterable[Union[str, os.PathLike]]] = None, include_shipped: bool = True,
                 strict: bool = False) -> Catalogue:
        roots: List[Path] = [shipped_models_dir()] if include_shipped else []
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
                except ManifestError as exc:
                    if strict:
                        raise
                    log.warning("skipping model in %s: %s", d, exc)
                    errors[str(d)] = str(exc)
                    continue
                if entry.name in entries:
                    log.info("model %r from %s replaces the one in %s", entry.name, d, entries[entry.name].dir)
                entries[entry.name] = entry
        return cls(entries, errors)

    def names(self) -> List[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str) -> ModelEntry:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise UnknownModelError(f"unknown model {name!r}: the catalogue has {known}") from None

    def input_specs(self) -> Dict[str, TensorSpec]:
        return {n: e.input for n, e in self._entries.items()}

    def resolve_backend(self, name: str, backend: str = "auto") -> str:
        entry = self.get(name)
        if backend != "auto":
            b = canonical_name(backend)
            if b not in entry.artifacts:
                raise BackendError(
                    f"model {name!r} has no {b} artifact (it has: {', '.join(entry.artifacts)})"
                )
            return b
        from edged.runtime import available_backends

        avail = available_backends()
        for b in AUTO_ORDER:
            if b in entry.artifacts and b in avail:
                return b
        raise BackendError(
            f"model {name!r}: none of its artifacts ({', '.join(entry.artifacts)}) can run here "
            f"(available runtimes: {', '.join(avail) or 'none'})"
        )

    def load(self, name: str, backend: str = "auto", threads: int = 1, **options: Any) -> LoadedModel:
        """Verify the artifact's sha256, load it and return a LoadedModel in the canonical layout."""
        entry = self.get(name)
        b = self.resolve_backend(name, backend)
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
    p.add_argument("--json", action="store_true", help="print the catalogue as JSON")


def main(args: argparse.Namespace) -> int:
    cat = Catalogue.discover(args.models_dir)
    rows: List[Dict[str, Any]] = []
    status = 0
    for name in cat.names():
        e = cat.get(name)
        try:
            e.verify()
            ok = "ok"
        except Exception as exc:  # report, keep listing the others
            ok, status = f"REFUSED: {exc}", 1
        rows.append({
            "name": name, "dir": str(e.dir), "input": e.input.to_dict(), "backends": e.backends,
            "labels": len(e.labels), "model_hash": e.model_hash[:16], "integrity": ok,
            "validation": len(np.load(e.validation_path)["x"]) if e.validation_path and ok == "ok" else None,
        })
    for d, err in cat.errors.items():
        rows.append({"name": Path(d).name, "dir": d, "integrity": f"SKIPPED: {err}"})
        status = 1
    if args.json:
        print(json.dumps(rows, indent=2))
        return status
    print(f"{'model':<10} {'input':<28} {'backends':<14} {'val':>5}  {'hash':<16}  integrity")
    for r in rows:
        inp = r.get("input")
        desc = f"{inp['dtype']} {inp['shape']} {inp['layout']}" if inp else "-"
        print(f"{r['name']:<10} {desc:<28} {','.join(r.get('backends', [])):<14} {r.get('validation') or '-':>5}  "
              f"{r.get('model_hash', '-'):<16}  {r['integrity']}")
    return status


def split_csv(values: Sequence[str]) -> List[str]:
    """'a,b' 'c' -> ['a', 'b', 'c'] (for repeatable comma-separated CLI options)."""
    return [v for item in values for v in item.split(",") if v]
