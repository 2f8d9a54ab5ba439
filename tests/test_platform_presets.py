"""hw/presets/*.toml: every board preset is a valid config (the same check as `edged check-config`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edged.config import load_config

PRESETS = sorted((Path(__file__).resolve().parent.parent / "hw" / "presets").glob("*.toml"))


def test_there_is_a_preset_per_documented_board() -> None:
    assert {p.stem for p in PRESETS} >= {"pi4-pi5", "pi-zero-2w", "jetson-orin-nano"}
    for p in PRESETS:
        assert (p.parent.parent / f"{p.stem}.md").exists(), f"{p.name} has no bring-up notes hw/{p.stem}.md"


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_is_a_valid_config(preset: Path) -> None:
    cfg = load_config(preset, environ={})
    assert cfg.sources, "a preset must name at least one source"
    assert cfg.fog.endpoint.endswith(":5556"), "edges reach edged fog on 5556"


def test_zero_2w_preset_is_sized_for_512_mb() -> None:
    cfg = load_config(PRESETS[[p.stem for p in PRESETS].index("pi-zero-2w")], environ={})
    assert cfg.models.backend == "litert" and cfg.models.threads == 1
    assert cfg.queue.size <= 256 and cfg.local.max_queue <= 64


def test_jetson_preset_reads_power_from_jtop() -> None:
    cfg = load_config(PRESETS[[p.stem for p in PRESETS].index("jetson-orin-nano")], environ={})
    assert cfg.power.source == "jtop"
