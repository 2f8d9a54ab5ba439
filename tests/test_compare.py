"""``edged profile --export`` and ``edged compare``: two exports of this machine (1 and 2 threads stand in
for two devices) merged into the N x M table, in Markdown, JSON and a PNG."""

from __future__ import annotations

import json

import pytest

from edged.compare import compare, device_names, load_export, to_markdown
from edged.errors import EdgedError
from tests.conftest import run_edged


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    d = tmp_path_factory.mktemp("exports")
    paths = []
    for t in (1, 2):
        p = d / f"t{t}.json"
        proc = run_edged(["profile", "-m", "mlp,rgbcnn", "-b", "onnx", "--threads", str(t), "--repeats", "1",
                          "--warmup", "2", "--max-inputs", "20", "--no-store", "--export", str(p),
                          "--label", f"box-t{t}"], timeout=300)
        assert proc.returncode == 0, proc.stderr
        paths.append(p)
    return paths


def test_export_holds_the_device_table(exports):
    e = load_export(exports[0])
    assert e["label"] == "box-t1" and e["fingerprint"]["cores"] >= 1 and "onnxruntime" in e["fingerprint"]["runtimes"]
    rows = {(r["model"], r["backend"], r["threads"]): r for r in e["rows"]}
    assert set(rows) == {("mlp", "onnx", 1), ("rgbcnn", "onnx", 1)}
    r = rows[("rgbcnn", "onnx", 1)]
    assert r["flops"] == 21300480 and r["gflops"] == pytest.approx(r["flops"] / (r["p50_us"] * 1e-6) / 1e9, rel=1e-3)
    assert r["wcet_us"] >= r["p99_us"] >= r["p50_us"] > 0 and r["accuracy"] is not None and r["macro_f1"] is not None
    assert r["energy_mj"] is None and e["power_measured"] is False  # no power sensor asked for


def test_compare_renders_markdown_json_and_png(exports, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "cmp"
    proc = run_edged(["compare", *map(str, exports), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    md = (out / "compare.md").read_text()
    assert "| model | box-t1 | box-t2 | best |" in md
    assert md.count("| rgbcnn |") == 1 + 2 and md.count("| mlp |") == 1 + 2  # the N x M row, a row per device
    assert proc.stdout.startswith(md.split("\n")[0])
    table = json.loads((out / "compare.json").read_text())
    assert table["models"] == ["mlp", "rgbcnn"] and [d["name"] for d in table["devices"]] == ["box-t1", "box-t2"]
    for m in table["models"]:
        best = table["best"][m]
        values = {d: r["p50_us"] for d, r in table["cells"][m].items()}
        assert best["device"] == min(values, key=lambda d: values[d])  # the best device is the argmin
        assert f"best for {m} by p50: {best['device']}" in proc.stdout
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_energy_objective_without_a_power_sensor_names_why(exports):
    es = [load_export(p) for p in exports]
    table = compare(es, device_names(es, exports), "energy")
    assert all(b["device"] is None and "no power sensor" in b["why"] for b in table["best"].values())
    assert "| rgbcnn |" in to_markdown(table)


def test_same_label_twice_gets_told_apart(exports):
    es = [load_export(exports[0]), load_export(exports[0])]
    assert device_names(es, ["a/x.json", "b/y.json"]) == ["box-t1 (x)", "box-t1 (y)"]


def test_bad_files_are_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something-else", "rows": []}')
    with pytest.raises(EdgedError, match=r"bad.json: format is 'something-else', expected 'edged-profile-export/1'"):
        load_export(bad)
    bad.write_text("not json")
    with pytest.raises(EdgedError, match=r"bad.json is not JSON"):
        load_export(bad)
    proc = run_edged(["compare", str(tmp_path / "missing.json")])
    assert proc.returncode == 1 and "cannot read" in proc.stderr and "missing.json" in proc.stderr


def test_energy_per_inference_from_a_power_sensor_and_the_energy_objective(exports, tmp_path, catalogue):
    """A fake INA219 hwmon tree (3.0988 W) measures energy per inference; that export wins on energy."""
    from edged.compare import write_export
    from edged.power.hwmon import HwmonSource
    from edged.profile import device_fingerprint, measure_energy, run_profile
    from tests.fakes.sysfs import ina219_hwmon

    ina219_hwmon(str(tmp_path / "hwmon"))
    results = run_profile(catalogue, ["mlp"], ["onnx"], [1], repeats=1, warmup=2, max_inputs=10)
    energy = measure_energy(catalogue, results, HwmonSource(root=str(tmp_path / "hwmon")), lambda _m: None,
                            seconds=0.2)
    mj = energy["mlp/onnx/1"]
    per_inference_ms = mj / 3.0988  # mJ / W = ms of wall time per inference, at least the latency
    assert results[0]["p50_us"] / 1e3 * 0.5 <= per_inference_ms <= 50.0
    p = write_export(tmp_path / "powered.json", device_fingerprint(), results, label="powered", energy_mj=energy)
    e = load_export(p)
    assert e["power_measured"] and e["rows"][0]["energy_mj"] == mj
    es = [load_export(exports[0]), e]
    table = compare(es, device_names(es, [exports[0], p]), "energy")
    assert table["best"]["mlp"]["device"] == "powered" and table["best"]["mlp"]["value"] == mj
