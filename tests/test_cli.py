"""The edged entry point."""

from __future__ import annotations

from edged.cli import COMMANDS

from .conftest import run_edged


def test_help_lists_every_subcommand_with_one_line():
    p = run_edged(["--help"], check=True, env={"COLUMNS": "80"})
    lines = p.stdout.splitlines()
    for name, (_, help_line) in COMMANDS.items():
        (line,) = [ln for ln in lines if ln.strip().startswith(name + " ")]
        assert help_line in line, f"{name}: help not on its own line at 80 columns"
    assert "offloading" in p.stdout.lower()


def test_unknown_subcommand_is_an_error():
    p = run_edged(["frobnicate"])
    assert p.returncode == 2 and "invalid choice" in p.stderr


def test_models_lists_and_verifies():
    p = run_edged(["models"], check=True)
    assert "mlp" in p.stdout and "cnn" in p.stdout and p.stdout.count(" ok") >= 2
