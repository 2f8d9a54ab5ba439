"""A catalogue that degrades gracefully: one unservable model is reported and the others still serve."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edged.errors import UnknownModelError
from edged.models import Catalogue, UnservableModelError

from . import modelgen as g
from .conftest import MODELS, run_edged


@pytest.fixture
def mixed(tmp_path):
    """A models dir with good models (mlp copy, a 3-input VAD) and four unservable ones."""
    root = tmp_path / "models"
    shutil.copytree(MODELS / "mlp", root / "mlp2")
    m = json.loads((root / "mlp2" / "manifest.json").read_text())
    m["name"] = "mlp2"
    (root / "mlp2" / "manifest.json").write_text(json.dumps(m))
    g.write_model(root, "vad", g.STATEFUL_MANIFEST, {"onnx": ("model.onnx", g.onnx_stateful())})
    # 1. unparsable manifest
    (root / "broken").mkdir()
    (root / "broken" / "manifest.json").write_text("{nope")
    # 2. hash mismatch
    d = g.write_model(root, "tampered", g.TWO_OUTPUT_MANIFEST, {"onnx": ("model.onnx", g.onnx_two_outputs())})
    (d / "model.onnx").write_bytes((d / "model.onnx").read_bytes() + b"\0")
    # 3. the file's inputs disagree with the manifest
    bad = json.loads(json.dumps(g.STATEFUL_MANIFEST))
    bad["inputs"][0]["shape"] = [-1, 17]
    g.write_model(root, "liar", bad, {"onnx": ("model.onnx", g.onnx_stateful())})
    # 4. no runtime here for its only artifact: an artifact for a backend whose runtime is made unavailable
    g.write_model(root, "norun", g.TWO_OUTPUT_MANIFEST, {"litert": ("model.tflite", g.tflite_dynamic_hw())})
    return root


def test_unservable_models_are_reported_and_others_serve(mixed, monkeypatch):
    import edged.runtime as rt

    monkeypatch.setattr(rt, "available_backends", lambda: ["onnx"])  # this box has no LiteRT
    cat = Catalogue.discover([mixed], include_shipped=False)
    assert set(cat.names()) == {"mlp2", "vad", "tampered", "liar", "norun"}  # 'broken' did not parse
    bad = cat.unservable()
    assert set(bad) == {"broken", "tampered", "liar", "norun"}
    assert "cannot parse" in bad["broken"]
    assert "refusing" in bad["tampered"] and "sha256" in bad["tampered"]
    assert "takes float32 [None, 16] but the manifest says float32 [None, 17]" in bad["liar"]
    assert "none of its artifacts (litert) can run here" in bad["norun"]
    assert cat.servable_names() == ["mlp2", "vad"]
    assert cat.entries()["vad"].stateful and cat.input_specs()["vad"].name == "x"
    # the others still load and run
    x, _ = cat.get("mlp2").load_validation()
    with cat.load("mlp2") as m:
        assert m.predict(x[:3]).shape == (3, 2)
    with cat.load("vad") as m:
        assert m.run({"x": np.zeros(16, np.float32), "sr": np.array([16000], np.int64)})["y"].shape == (1, 1)
    # a model enabled by name is refused with its reason; a servable one passes
    cat.require(["mlp2", "vad"])
    with pytest.raises(UnservableModelError, match=r"model 'liar' is enabled by name but cannot be served: .*17"):
        cat.require(["mlp2", "liar"])
    with pytest.raises(UnservableModelError, match=r"model 'broken' cannot be served: .*cannot parse"):
        cat.require(["broken"])
    with pytest.raises(UnknownModelError, match="unknown model 'nope'"):
        cat.require(["nope"])


def test_auto_backend_falls_back_to_a_good_artifact(model_copy):
    """A tampered ONNX artifact is skipped under backend auto when the LiteRT one is intact."""
    from edged.runtime import available_backends

    if "litert" not in available_backends():
        pytest.skip("no LiteRT implementation installed")
    d = model_copy("mlp")
    (d / "model.onnx").write_bytes((d / "model.onnx").read_bytes()[:-1])
    cat = Catalogue.discover([d.parent], include_shipped=False)
    with cat.load("mlp") as m:
        assert m.backend_name == "litert"
    assert cat.unservable() == {}
    assert "refusing" in (cat.check("mlp", "onnx") or "")


def test_discover_never_raises_for_a_manifest_that_is_not_a_table(tmp_path):
    root = tmp_path / "models"
    (root / "list").mkdir(parents=True)
    (root / "list" / "manifest.json").write_text("[1, 2]")
    (root / "weird").mkdir()
    (root / "weird" / "manifest.json").write_text(json.dumps({"input": {"shape": [-1, 2], "dtype": "float32"},
                                                              "artifacts": {"onnx": "model.onnx"}}))
    cat = Catalogue.discover([root], include_shipped=False)
    assert set(cat.unservable()) == {"list", "weird"}
    assert "artifacts.onnx.file" in cat.unservable()["weird"]


def test_edged_models_cli_lists_ok_and_unservable(mixed):
    proc = run_edged(["models", "--models-dir", str(mixed)])
    assert proc.returncode == 0, proc.stderr  # nothing was enabled by name
    lines = {ln.split()[0]: ln for ln in proc.stdout.splitlines()[1:] if ln.strip()}
    assert lines["mlp"].rstrip().endswith("ok") and lines["cnn"].rstrip().endswith("ok")
    assert lines["vad"].rstrip().endswith("ok") and "x:?" not in lines["vad"]
    assert "y:regression" in lines["vad"] and "h_out:state" in lines["vad"]
    for name in ("broken", "tampered", "liar"):
        assert "UNSERVABLE: " in lines[name], lines[name]
    proc = run_edged(["models", "--models-dir", str(mixed), "--model", "mlp,vad"])
    assert proc.returncode == 0, proc.stderr
    proc = run_edged(["models", "--models-dir", str(mixed), "--model", "mlp", "--model", "liar"])
    assert proc.returncode == 1
    assert "model 'liar' is enabled by name but cannot be served" in proc.stderr
    proc = run_edged(["models", "--models-dir", str(mixed), "--json", "--model", "ghost"])
    assert proc.returncode == 1
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["ghost"]["status"].startswith("UNSERVABLE: unknown model")
    assert rows["vad"]["outputs"][1] == {"name": "h_out", "kind": "state", "state_input": "h"}
    assert rows["vad"]["inputs"][2] == {"name": "sr", "shape": [1], "dtype": "int64", "layout": "", "batch": False}


def test_edged_models_cli_reads_enabled_models_from_config(mixed, tmp_path):
    cfg = tmp_path / "edged.toml"
    cfg.write_text(f'[models]\ndirs = ["{mixed}"]\nenabled = ["mlp", "tampered"]\n')
    proc = run_edged(["models", "--config", str(cfg)])
    assert proc.returncode == 1 and "'tampered' is enabled by name" in proc.stderr
    cfg.write_text(f'[models]\ndirs = ["{mixed}"]\nenabled = ["mlp", "vad"]\n')
    proc = run_edged(["models", "--config", str(cfg)])
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def with_bad(tmp_path):
    """A models dir holding only unservable models: an unparsable manifest and a tampered artifact."""
    root = tmp_path / "extra"
    (root / "broken").mkdir(parents=True)
    (root / "broken" / "manifest.json").write_text("{nope")
    d = g.write_model(root, "tampered", g.TWO_OUTPUT_MANIFEST, {"onnx": ("model.onnx", g.onnx_two_outputs())})
    (d / "model.onnx").write_bytes((d / "model.onnx").read_bytes() + b"\0")
    return root


def test_run_fog_and_profile_skip_unservable_models_and_serve_the_rest(with_bad, tmp_path):
    import subprocess
    import sys

    from .conftest import REPO
    from .test_daemon import free_port, write_config

    prof = run_edged(["profile", "--models-dir", str(with_bad), "--repeats", "1", "--warmup", "1",
                      "--max-inputs", "20", "--no-store", "--json"])
    assert prof.returncode == 0, prof.stderr
    assert {r["model"] for r in json.loads(prof.stdout)["results"]} == {"cnn", "cnn_int8", "mlp", "rgbcnn"}
    assert "skipping tampered" in prof.stderr and prof.stderr.count("broken/manifest.json") == 1

    fog = subprocess.Popen([sys.executable, "-m", "edged", "fog", "--bind", "tcp://127.0.0.1:0", "--workers", "1",
                            "--models-dir", str(with_bad)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, cwd=str(REPO))
    try:
        assert fog.stdout is not None
        assert "serving 4 models" in fog.stdout.readline()
    finally:
        fog.terminate()
        _, err = fog.communicate(timeout=30)
    assert "model tampered skipped" in err and "sha256" in err

    cfg = write_config(tmp_path, free_port(), extra="", models=None)  # every catalogue model
    text = cfg.read_text().replace("[power]", f'[models]\ndirs = ["{with_bad}"]\n[power]')
    cfg.write_text(text.replace("[daemon]", "[daemon]\nmax_inputs = 1\nprofile_on_start = false"))
    p = subprocess.Popen([sys.executable, "-m", "edged", "run", "--config", str(cfg)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, cwd=str(REPO))
    try:
        out = ""
        assert p.stdout is not None
        for line in p.stdout:
            out += line
            if "ready in" in line:
                break
        assert "models cnn, cnn_int8, mlp, rgbcnn;" in out and "model tampered skipped" in out, out
    finally:
        p.terminate()
        p.communicate(timeout=30)

    cfg.write_text(text.replace("[power]", '[models]\nenabled = ["mlp", "tampered"]\n[power]', 1)
                   .replace(f'[models]\ndirs = ["{with_bad}"]\n[models]\n', f'[models]\ndirs = ["{with_bad}"]\n'))
    named = run_edged(["run", "--config", str(cfg)])
    assert named.returncode != 0 and "tampered" in named.stderr and "cannot be served" in named.stderr, named.stderr


def test_run_models_dir_flag_adds_a_directory(tmp_path):
    import subprocess
    import sys

    from .conftest import REPO
    from .test_daemon import free_port, write_config

    extra = tmp_path / "more"
    shutil.copytree(MODELS / "mlp", extra / "mlp2")
    m = json.loads((extra / "mlp2" / "manifest.json").read_text())
    m["name"] = "mlp2"
    (extra / "mlp2" / "manifest.json").write_text(json.dumps(m))
    cfg = write_config(tmp_path, free_port(), models=None)  # every catalogue model, and --models-dir's
    cfg.write_text(cfg.read_text().replace("[daemon]", "[daemon]\nprofile_on_start = false"))
    p = subprocess.Popen([sys.executable, "-m", "edged", "run", "--config", str(cfg), "--models-dir", str(extra)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(REPO))
    try:
        out = ""
        assert p.stdout is not None
        for line in p.stdout:
            out += line
            if "ready in" in line:
                break
        assert "models cnn, cnn_int8, mlp, mlp2, rgbcnn;" in out, out
    finally:
        p.terminate()
        p.communicate(timeout=30)
    bad = run_edged(["run", "--config", str(cfg), "--models-dir", str(tmp_path / "nope")])
    assert bad.returncode == 78 and "nope: expected an existing directory" in bad.stderr


def test_user_models_in_the_units_configuration_directory_are_found(tmp_path):
    """/etc/edged/models is $CONFIGURATION_DIRECTORY/models under edged.service and edged-fog.service: every
    command finds a model there without models.dirs, and hw/install.sh --models puts models there."""
    conf = tmp_path / "etc-edged"
    shutil.copytree(MODELS / "mlp", conf / "models" / "mlp2")
    m = json.loads((conf / "models" / "mlp2" / "manifest.json").read_text())
    m["name"] = "mlp2"
    (conf / "models" / "mlp2" / "manifest.json").write_text(json.dumps(m))
    out = run_edged(["models"], env={"CONFIGURATION_DIRECTORY": str(conf)})
    assert out.returncode == 0 and "mlp2" in out.stdout, out.stdout + out.stderr
    assert "mlp2" not in run_edged(["models"]).stdout

    import subprocess

    from .conftest import REPO

    dry = subprocess.run(["bash", str(REPO / "hw" / "install.sh"), "--dry-run", "--root", str(tmp_path / "root"),
                          "--models", str(conf / "models"), "--board", "generic"],
                         capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert dry.returncode == 0, dry.stderr
    assert f"{tmp_path}/root/etc/edged/models/mlp2" in dry.stdout
    for unit in ("edged.service", "edged-fog.service"):
        assert "ConfigurationDirectory=edged" in (REPO / "systemd" / unit).read_text()
