"""Which wheels each target board gets from PyPI: the platform table in docs/deploy.md.

For each target (OS Python version, glibc, CPU) and each package edged installs there, asks pip
which binary wheel it would take, without installing anything::

    pip install --dry-run --report - --no-deps --only-binary=:all: --ignore-installed \\
        --target /tmp/x --python-version 3.11 --platform manylinux_2_17_aarch64 ... PACKAGE

Needs the network (PyPI); not part of the test suite. Run it again when a runtime releases::

    .venv/bin/python tests/platform/wheels.py [--markdown]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

PACKAGES = ("numpy", "pyzmq", "onnxruntime", "ai-edge-litert", "tflite-runtime")

#: target -> (Python version, glibc (major, minor) of the OS, CPU, note)
TARGETS: Dict[str, Tuple[str, Tuple[int, int], str]] = {
    "Pi OS Bookworm 64-bit (Pi 3/4/5, Zero 2 W)": ("3.11", (2, 36), "aarch64"),
    "Pi OS Trixie 64-bit": ("3.13", (2, 41), "aarch64"),
    "JetPack 6 (Ubuntu 22.04, Orin)": ("3.10", (2, 35), "aarch64"),
    "JetPack 5 (Ubuntu 20.04, Xavier/Orin)": ("3.8", (2, 31), "aarch64"),
    "Pi OS Bookworm 32-bit (armhf)": ("3.11", (2, 36), "armv7l"),
}


def platforms(glibc: Tuple[int, int], cpu: str) -> List[str]:
    """Every platform tag a pip on that OS accepts: manylinux_2_17 .. its glibc, the legacy aliases, linux."""
    major, minor = glibc
    tags = [f"manylinux_{major}_{m}_{cpu}" for m in range(minor, 16, -1)]
    if cpu in ("aarch64", "x86_64"):
        tags.append(f"manylinux2014_{cpu}")
    tags.append(f"linux_{cpu}")
    return tags


def best_wheel(package: str, python: str, glibc: Tuple[int, int], cpu: str) -> Optional[str]:
    """The wheel file name pip would install for that target, or None when PyPI has none."""
    with tempfile.TemporaryDirectory() as target:
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-", "--no-deps",
               "--only-binary=:all:", "--ignore-installed", "--target", target, "--python-version", python,
               "--implementation", "cp", "--index-url", "https://pypi.org/simple"]
        for tag in platforms(glibc, cpu):
            cmd += ["--platform", tag]
        proc = subprocess.run([*cmd, package], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        return None
    report = json.loads(proc.stdout)
    for item in report.get("install", []):
        url = item.get("download_info", {}).get("url", "")
        return str(url.rsplit("/", 1)[-1])
    return None


def version_of(wheel: Optional[str]) -> str:
    return wheel.split("-")[1] if wheel else "none"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--markdown", action="store_true", help="print a markdown table (for docs/deploy.md)")
    p.add_argument("--wheels", action="store_true", help="print the wheel file names too")
    args = p.parse_args(argv)
    rows = []
    for name, (python, glibc, cpu) in TARGETS.items():
        found = {pkg: best_wheel(pkg, python, glibc, cpu) for pkg in PACKAGES}
        rows.append((name, python, f"{glibc[0]}.{glibc[1]}", cpu, found))
        if args.wheels:
            for pkg, wheel in found.items():
                print(f"  {name}: {pkg}: {wheel}", file=sys.stderr)
    if args.markdown:
        print("| target | Python | glibc | " + " | ".join(PACKAGES) + " |")
        print("|---|---|---|" + "---|" * len(PACKAGES))
        for name, python, glibc_s, _cpu, found in rows:
            print(f"| {name} | {python} | {glibc_s} | " + " | ".join(version_of(found[p]) for p in PACKAGES) + " |")
    else:
        print(f"{'target':<44} {'py':>4} {'glibc':>5} " + " ".join(f"{p:>14}" for p in PACKAGES))
        for name, python, glibc_s, _cpu, found in rows:
            print(f"{name:<44} {python:>4} {glibc_s:>5} " + " ".join(f"{version_of(found[p]):>14}" for p in PACKAGES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
