"""Shared fixtures: the shipped catalogue, a scratch copy of a model, subprocess helpers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"


@pytest.fixture(scope="session")
def catalogue():
    from edged.models import Catalogue

    return Catalogue.discover()


@pytest.fixture
def model_copy(tmp_path: Path):
    """Copy a shipped model directory into tmp_path/models/<name> and return the path."""

    def make(name: str, new_name: str = "") -> Path:
        dst = tmp_path / "models" / (new_name or name)
        shutil.copytree(MODELS / name, dst)
        return dst

    return make


def run_edged(args: List[str], timeout: float = 120, env: dict = None, check: bool = False, **kw):
    """Run the real `edged` CLI in a subprocess (python -m edged) and capture its output."""
    e = dict(os.environ)
    e.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "edged", *args], capture_output=True, text=True, timeout=timeout,
                          env=e, cwd=str(REPO), **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"edged {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc
