"""``edged export-fog``: the model catalogue as a Triton repository, an MLServer folder or KServe manifests.

The fleet's serving engine then serves exactly what the edges verify: every artifact is copied, and the copy's
sha256 checked against the manifest (a mismatch stops the export). Each model carries its identity the way
its engine can (docs/scale-out.md):

- ``mlserver``: ``<name>/model-settings.json`` with ``parameters.version = "sha256-<16 hex>"`` and the
  ``edged.fog.mlserver.EdgedRuntime`` implementation, the model folder in ``<name>/model/``. Edge:
  ``fog.identity = "version"``.
- ``triton``: ``<name>-sha256-<16 hex>/config.pbtxt`` (onnxruntime backend: the file's tensor names, types
  and dims; max batch; dynamic batching; the hash as a model parameter) and ``1/model.onnx``. Triton takes
  integer versions only, so the hash travels in the name. Edge: ``fog.identity = "name"``,
  ``fog.tensors = "artifact"`` (Triton runs the file itself: its names and layouts).
- ``kserve``: ``<name>/`` model folders plus ``inferenceservice.yaml``: one InferenceService per model whose
  predictor runs ``python -m edged.fog.kserve`` on the folder (storage initializer at ``/mnt/models``), named
  ``<name>-sha256-<16 hex>`` (KServe reports no versions). Edge: ``fog.identity = "name"``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from edged.errors import EdgedError, IntegrityError
from edged.models import Catalogue, ModelEntry, sha256_file, split_csv

FORMATS = ("triton", "mlserver", "kserve")

_ORT_TO_TRITON = {
    "tensor(float)": "TYPE_FP32", "tensor(double)": "TYPE_FP64", "tensor(float16)": "TYPE_FP16",
    "tensor(int8)": "TYPE_INT8", "tensor(int16)": "TYPE_INT16", "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64", "tensor(uint8)": "TYPE_UINT8", "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint32)": "TYPE_UINT32", "tensor(uint64)": "TYPE_UINT64", "tensor(bool)": "TYPE_BOOL",
}


def hash_tag(model_hash: str) -> str:
    return f"sha256-{model_hash[:16]}"


def _copy_verified(src: Path, dst: Path, sha256: Optional[str], what: str) -> None:
    """Copy ``src`` to ``dst``; the copy's sha256 must be the manifest's (raises IntegrityError naming both)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    if sha256:
        actual = sha256_file(dst)
        if actual != sha256.lower():
            dst.unlink()
            raise IntegrityError(f"{what}: the copy {dst} has sha256 {actual}, the manifest expects {sha256} "
                                 f"(source {src}); nothing of it is exported")


def copy_model_folder(entry: ModelEntry, dst: Path, backend: str = "onnx") -> Path:
    """``dst/`` with the manifest (verbatim, so its hash is the edges'), the ``backend`` artifact and the
    validation set, each copy sha256-checked. Artifacts of other backends are listed but not copied."""
    art = entry.artifacts.get(backend)
    if art is None:
        raise EdgedError(f"model {entry.name!r} has no {backend} artifact (it has {', '.join(entry.artifacts)}); "
                         "an engine cannot serve it: leave it out with --models")
    entry.verify(backend)
    dst.mkdir(parents=True, exist_ok=True)
    _copy_verified(art.path, dst / art.path.name, art.sha256, f"model {entry.name!r} {backend} artifact")
    if entry.validation_path is not None and entry.validation_path.is_file():
        _copy_verified(entry.validation_path, dst / entry.validation_path.name, entry.validation_sha256,
                       f"model {entry.name!r} validation set")
    manifest = dst / entry.manifest_path.name  # verbatim: the hash the edges compute is the manifest's
    shutil.copyfile(entry.manifest_path, manifest)
    from edged.models import parse_manifest

    copied = parse_manifest(manifest)
    if copied.model_hash != entry.model_hash:
        raise IntegrityError(f"model {entry.name!r}: the exported manifest {manifest} hashes to "
                             f"{copied.model_hash[:16]}, the catalogue's to {entry.model_hash[:16]}")
    return dst


# ---- MLServer ------------------------------------------------------------------------------------
def export_mlserver(entries: Sequence[ModelEntry], out: Path, max_batch: int = 1, threads: int = 1) -> List[Path]:
    written: List[Path] = []
    settings = out / "settings.json"
    if not settings.exists():
        settings.write_text(json.dumps({"debug": False, "server_name": "edged-fog"}, indent=2) + "\n")
        written.append(settings)
    for e in entries:
        d = out / e.name
        copy_model_folder(e, d / "model")
        batch = max_batch if all(i.batched for i in e.inputs) else 1
        ms: Dict[str, Any] = {
            "name": e.name,
            "implementation": "edged.fog.mlserver.EdgedRuntime",
            "parameters": {"uri": "./model", "version": hash_tag(e.model_hash),
                           "extra": {"backend": "onnx", "threads": threads, "model_hash": e.model_hash}},
        }
        if batch > 1:  # MLServer's adaptive batching: up to max_batch_size inputs within max_batch_time (s)
            ms.update(max_batch_size=batch, max_batch_time=0.002)
        (d / "model-settings.json").write_text(json.dumps(ms, indent=2) + "\n")
        written.append(d / "model-settings.json")
    return written


# ---- Triton --------------------------------------------------------------------------------------
def _ort_io(path: Path) -> Any:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.get_inputs(), sess.get_outputs()


def _dims(shape: Sequence[Any], batched: bool) -> List[int]:
    dims = [d if isinstance(d, int) and d > 0 else -1 for d in shape]
    return dims[1:] if batched else dims


def triton_config(entry: ModelEntry, name: str, max_batch: int = 8, instances: int = 1,
                  queue_delay_us: int = 500) -> str:
    """config.pbtxt text for the onnxruntime backend, from the ONNX file's own names, types and dims."""
    art = entry.artifacts["onnx"]
    inputs, outputs = _ort_io(art.path)
    unbatched = {art.names.get(i.name, i.name) for i in entry.inputs if not i.batched}
    batch = max_batch if not unbatched else 0
    lines = [f'name: "{name}"', 'backend: "onnxruntime"', f"max_batch_size: {batch}"]

    def block(kind: str, tensors: Sequence[Any]) -> None:
        lines.append(f"{kind} [")
        parts = []
        for t in tensors:
            dtype = _ORT_TO_TRITON.get(t.type)
            if dtype is None:
                raise EdgedError(f"model {entry.name!r}: tensor {t.name!r} of type {t.type} has no Triton type")
            dims = _dims(t.shape, batch > 0 and t.name not in unbatched)
            dims_text = ", ".join(map(str, dims))
            parts.append(f'  {{\n    name: "{t.name}"\n    data_type: {dtype}\n    dims: [ {dims_text} ]\n  }}')
        lines.append(",\n".join(parts))
        lines.append("]")

    block("input", inputs)
    block("output", outputs)
    if batch > 0:
        lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {queue_delay_us}\n}}")
    lines.append(f"instance_group [\n  {{\n    count: {instances}\n    kind: KIND_CPU\n  }}\n]")
    lines.append('parameters {\n  key: "edged_model_hash"\n  value: {\n    string_value: "'
                 f'{entry.model_hash}"\n  }}\n}}')
    return "\n".join(lines) + "\n"


def export_triton(entries: Sequence[ModelEntry], out: Path, max_batch: int = 8, instances: int = 1) -> List[Path]:
    written: List[Path] = []
    for e in entries:
        name = f"{e.name}-{hash_tag(e.model_hash)}"
        d = out / name
        art = e.artifacts.get("onnx")
        if art is None:
            raise EdgedError(f"model {e.name!r} has no onnx artifact (it has {', '.join(e.artifacts)}); Triton's "
                             "onnxruntime backend cannot serve it: leave it out with --models")
        e.verify("onnx")
        _copy_verified(art.path, d / "1" / "model.onnx", art.sha256, f"model {e.name!r} onnx artifact")
        (d / "config.pbtxt").write_text(triton_config(e, name, max_batch=max_batch, instances=instances))
        manifest = json.loads(e.manifest_path.read_text())  # provenance: Triton ignores it
        (d / "edged-manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        written += [d / "config.pbtxt", d / "1" / "model.onnx"]
    return written


# ---- KServe --------------------------------------------------------------------------------------
def kserve_manifest(entry: ModelEntry, image: str, storage_uri: str, min_replicas: int = 1,
                    max_replicas: int = 4, concurrency: int = 8) -> str:
    """An InferenceService (v1beta1) running edged's KServe model server on the exported folder."""
    name = f"{entry.name}-{hash_tag(entry.model_hash)}"
    svc = name.replace("_", "-").lower()[:63]
    return f"""apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: {svc}
  annotations:
    edged/model: "{entry.name}"
    edged/model-hash: "{entry.model_hash}"
    serving.kserve.io/enable-prometheus-scraping: "true"
spec:
  predictor:
    minReplicas: {min_replicas}     # 0 = scale to zero (the edge falls back locally while one starts)
    maxReplicas: {max_replicas}
    scaleMetric: concurrency
    scaleTarget: {concurrency}
    containers:
      - name: kserve-container
        image: {image}
        command: ["python", "-m", "edged.fog.kserve"]
        args: ["--model-dir", "/mnt/models", "--model-name", "{name}", "--http-port", "8080", "--grpc-port", "8081"]
        env:
          - name: STORAGE_URI
            value: "{storage_uri.rstrip('/')}/{entry.name}"
        ports:
          - containerPort: 8081
            name: h2c
            protocol: TCP
        readinessProbe:
          httpGet:
            path: /v2/models/{name}/ready
            port: 8080
"""


def export_kserve(entries: Sequence[ModelEntry], out: Path, image: str, storage_uri: str,
                  min_replicas: int = 1, max_replicas: int = 4) -> List[Path]:
    written: List[Path] = []
    docs = []
    for e in entries:
        copy_model_folder(e, out / e.name)
        docs.append(kserve_manifest(e, image, storage_uri, min_replicas=min_replicas, max_replicas=max_replicas))
    path = out / "inferenceservice.yaml"
    path.write_text("---\n".join(docs))
    written.append(path)
    return written


# ---- command line --------------------------------------------------------------------------------
def export(fmt: str, out: Path, catalogue: Catalogue, names: Sequence[str] = (), **options: Any) -> List[Path]:
    """Export ``names`` (default: every model with an ONNX artifact) in ``fmt``; returns the files written."""
    if fmt not in FORMATS:
        raise EdgedError(f"export-fog format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if names:
        missing = [n for n in names if n not in catalogue]
        if missing:
            raise EdgedError(f"no model named {', '.join(map(repr, missing))} in the catalogue: it has "
                             f"{', '.join(catalogue.names())}")
        entries = [catalogue.get(n) for n in names]
    else:
        entries = [catalogue.get(n) for n in catalogue.names() if "onnx" in catalogue.get(n).artifacts]
    if not entries:
        raise EdgedError("no model with an ONNX artifact to export (engines serve ONNX files)")
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "mlserver":
        return export_mlserver(entries, out, max_batch=options.get("max_batch", 1), threads=options.get("threads", 1))
    if fmt == "triton":
        return export_triton(entries, out, max_batch=options.get("max_batch", 8),
                             instances=options.get("instances", 1))
    return export_kserve(entries, out, image=options.get("image") or "edged-fog:latest",
                         storage_uri=options.get("storage_uri") or "pvc://edged-models",
                         min_replicas=options.get("min_replicas", 1), max_replicas=options.get("max_replicas", 4))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", type=Path, help="output directory (created; existing files of the same models are replaced)")
    p.add_argument("--format", required=True, choices=FORMATS, help="the serving engine to export for")
    p.add_argument("--models", action="append", default=[], metavar="NAME[,NAME]",
                   help="models to export (default: every model with an ONNX artifact)")
    p.add_argument("--models-dir", action="append", default=[], metavar="DIR",
                   help="extra model directories (as models.dirs in the config)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="largest batch the engine forms (Triton dynamic batching, default 8; MLServer adaptive "
                        "batching, default 1 = off)")
    p.add_argument("--instances", type=int, default=1, help="Triton: model instances (CPU)")
    p.add_argument("--threads", type=int, default=1, help="MLServer: onnxruntime threads per model")
    p.add_argument("--image", default="edged-fog:latest", help="KServe: the container image with edged installed")
    p.add_argument("--storage-uri", default="pvc://edged-models",
                   help="KServe: where the exported folders are uploaded (one folder per model under it)")
    p.add_argument("--min-replicas", type=int, default=1, help="KServe: 0 allows scale to zero")
    p.add_argument("--max-replicas", type=int, default=4, help="KServe: autoscaling ceiling")


def main(args: argparse.Namespace) -> int:
    try:
        cat = Catalogue.discover(args.models_dir)
        opts: Dict[str, Any] = {"instances": args.instances, "threads": args.threads, "image": args.image,
                                "storage_uri": args.storage_uri, "min_replicas": args.min_replicas,
                                "max_replicas": args.max_replicas}
        if args.max_batch is not None:
            if args.max_batch < 1:
                raise EdgedError(f"--max-batch {args.max_batch}: expected 1 or more")
            opts["max_batch"] = args.max_batch
        written = export(args.format, args.dir, cat, split_csv(args.models), **opts)
    except EdgedError as exc:
        print(f"edged export-fog: {exc}", file=sys.stderr)
        return 1
    for p in written:
        print(p)
    hint = {"mlserver": 'fog.identity = "version"', "triton": 'fog.identity = "name", fog.tensors = "artifact"',
            "kserve": 'fog.identity = "name"'}[args.format]
    print(f"edged export-fog: {len(written)} file(s) in {args.dir}; edges offloading to it: backend = \"oip\", {hint}",
          file=sys.stderr)
    return 0
