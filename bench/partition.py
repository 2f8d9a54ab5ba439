"""Partitioning benchmark: where should ``rgbcnn`` be cut, on three links, and who finds it.

Setup (all on this machine): a real ``edged fog --cuts`` subprocess (1 worker) serving the shipped
``rgbcnn``, reached through the link proxy (``tests/linkproxy.py``) run in this process; the edge
runs heads and all-local inputs here, slowed ``--slowdown`` times: after each run it waits ``slowdown - 1``
times that head's profiled median (a fixed extra, so this host's noise is not multiplied): a Pi-class edge
against an x86 fog.

For each link phase (``fast``: 0.05 ms, no bandwidth limit; ``mid``: 0.05 ms, 400 Mbit/s; ``slow``:
5 ms, 8 Mbit/s; the proxy itself adds ~0.25 ms per message) it

1. *measures* every usable cut end to end on ``--inputs`` validation inputs: head here (slowed),
   the intermediate tensor over the real fog protocol (``cut`` + tail hash), the tail on the fog,
   the result back; all-fog sends the raw input (v1), all-local runs here. The fastest median is the
   ``oracle`` (it includes every cut);
2. asks the ``partition`` policy (:func:`edged.partition.policy.choose_cut`) with the numbers an edge
   has: head times from ``profile_cuts`` (x slowdown), the fog's tail times from its ping reply, the
   link line from padded pings (one-way base + µs per byte);
3. asks the ``neurosurgeon`` baseline: the same argmin on head/tail times *predicted* by the
   per-layer-type regression fitted on this machine's synthetic layer grid (heads x slowdown);

and reports each pick's measured median latency against the oracle's. Numbers are medians in µs.

Usage: ``python bench/partition.py [--slowdown 20] [--inputs 20] [--out bench/results/partition.json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from edged.models import Catalogue  # noqa: E402
from edged.offload.fog_client import ZmqFogBackend  # noqa: E402
from edged.partition import ALL_FOG, ALL_LOCAL  # noqa: E402
from edged.partition import neurosurgeon as ns  # noqa: E402
from edged.partition.live import fog_tail_times  # noqa: E402
from edged.partition.policy import CutCost, PartitionInputs, choose_cut  # noqa: E402
from edged.partition.split import PartitionedModel  # noqa: E402
from tests.linkproxy import LinkProxy  # noqa: E402

PHASES: List[Tuple[str, Dict[str, Any]]] = [
    ("fast", {"latency_ms": 0.05, "bandwidth_Bps": None}),
    ("mid", {"latency_ms": 0.05, "bandwidth_Bps": 50e6}),
    ("slow", {"latency_ms": 5.0, "bandwidth_Bps": 1e6}),
]
PAD = 32768


def start_fog(model: str) -> Tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "edged", "fog", "--bind", "tcp://127.0.0.1:0", "--workers", "1",
                             "--model", model, "--cuts"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, cwd=str(ROOT))
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "serving" not in line:
        proc.kill()
        raise SystemExit(f"edged fog did not start: {line!r}")
    return proc, line.strip().rsplit(" ", 1)[-1]


def slowed(fn: Any, extra_us: float) -> Any:
    """Run ``fn``, then busy-wait ``extra_us`` (a fixed extra, so this host's noise is not multiplied)."""
    out = fn()
    end = time.perf_counter() + extra_us / 1e6
    while time.perf_counter() < end:
        pass
    return out


def link_line(client: ZmqFogBackend, n: int = 15) -> Tuple[float, float]:
    """(one-way base µs, µs per byte one way) from pings with and without ``PAD`` bytes each way."""
    r0 = statistics.median(client.ping(5.0).rtt_us for _ in range(n))
    r1 = statistics.median(client.ping(5.0, pad_bytes=PAD).rtt_us for _ in range(n))
    return r0 / 2.0, max(0.0, (r1 - r0) / (2.0 * PAD))


def measure_cut(pm: PartitionedModel, client: ZmqFogBackend, model_hash: str, cut: str, xs: Sequence[np.ndarray],
                extra_us: float) -> float:
    """Median end-to-end µs of ``cut`` over ``xs`` (head here plus ``extra_us``, tail on the fog)."""
    c = pm.cut(cut)
    sess = pm.sessions(cut)
    times = []
    for x in xs:
        t0 = time.perf_counter()
        if cut == ALL_FOG:
            client.submit(pm.name, x, model_hash, 10.0).result(15)
        else:
            s, name = sess["head"]
            feed = {name: pm.to_file_layout(x)}
            out = slowed(lambda s=s, feed=feed: s.run(None, feed), extra_us)
            if cut != ALL_LOCAL:
                client.submit(pm.name, out[0][0], model_hash, 10.0, cut=(c.name, c.tail_hash)).result(15)
        times.append((time.perf_counter() - t0) * 1e6)
    return float(statistics.median(times))


def costs(pm: PartitionedModel, head: Dict[str, float], tail: Dict[str, float]) -> Tuple[CutCost, ...]:
    out = []
    for c in pm.cuts:
        if c.name == ALL_LOCAL:
            out.append(CutCost.local(c.k, head.get(ALL_LOCAL)))
        else:
            out.append(CutCost(c.name, c.k, 0.0 if c.name == ALL_FOG else head.get(c.name), tail.get(c.name),
                               int(c.bytes or 0)))
    return tuple(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="rgbcnn")
    ap.add_argument("--slowdown", type=float, default=20.0, help="edge slowdown factor (sleep emulation)")
    ap.add_argument("--inputs", type=int, default=20, help="validation inputs per cut and phase")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "partition.json")
    args = ap.parse_args(argv)

    cat = Catalogue.discover()
    entry = cat.get(args.model)
    pm = PartitionedModel(entry, max_verify=64)
    x_all, _ = entry.load_validation()
    xs = [x_all[i] for i in range(args.inputs)]
    print(f"{args.model}: {len(pm.cuts)} cut points; edge slowdown x{args.slowdown:g}", file=sys.stderr)
    rows = ns.profile_cuts(pm, x_all[:32], repeats=3, warmup=10)
    head = {r["name"]: r["head_p50_us"] * args.slowdown for r in rows}
    lm = ns.fit_on_device()
    pred = ns.predict_cuts(pm.plan, lm, pm.cut_names)
    pred_head = {k: v["head_us"] * args.slowdown for k, v in pred.items()}
    pred_tail = {k: v["tail_us"] for k, v in pred.items()}

    fog, endpoint = start_fog(args.model)
    port = int(endpoint.rsplit(":", 1)[-1])
    proxy = LinkProxy(0, "127.0.0.1", port)
    client = ZmqFogBackend(proxy.endpoint)
    results: Dict[str, Any] = {"model": args.model, "slowdown": args.slowdown, "inputs": args.inputs, "phases": {}}
    try:
        client.ping(10.0)
        for phase, settings in PHASES:
            proxy.configure(**settings)
            time.sleep(0.2)
            base, per_byte = link_line(client)
            ping = client.ping(5.0)
            fog_tail = fog_tail_times(ping.models, args.model)
            measured = {c.name: measure_cut(pm, client, entry.model_hash, c.name, xs,
                                            (args.slowdown - 1) * head[c.name] / args.slowdown) for c in pm.cuts}
            oracle = min(measured, key=lambda k: measured[k])
            common = dict(t_l_base_us=base, t_l_us_per_byte=per_byte, out_bytes=int(pm.plan.cuts[-1].bytes or 0),
                          fog_up=True)
            policy = choose_cut(PartitionInputs(costs(pm, head, fog_tail), **common))  # type: ignore[arg-type]
            neuro = choose_cut(PartitionInputs(costs(pm, pred_head, pred_tail), **common))  # type: ignore[arg-type]
            results["phases"][phase] = {
                "link": settings, "t_l_base_us": round(base, 1), "t_l_us_per_byte": round(per_byte, 5),
                "measured_us": {k: round(v, 1) for k, v in measured.items()},
                "oracle": oracle, "partition": policy.cut, "neurosurgeon": neuro.cut,
                "partition_expected_us": policy.expected_us, "neurosurgeon_expected_us": neuro.expected_us,
            }
            print(f"\n{phase}: link {settings} -> measured T_L base {base:.0f} us + {per_byte * 1e3:.2f} us/KB")
            print(f"{'pick':<13} {'cut':<10} {'measured us':>12} {'x oracle':>9} {'expected us':>12}")
            for who, cut, exp in (("oracle", oracle, None), ("partition", policy.cut, policy.expected_us),
                                  ("neurosurgeon", neuro.cut, neuro.expected_us), ("all-local", ALL_LOCAL, None),
                                  ("all-fog", ALL_FOG, None)):
                print(f"{who:<13} {cut:<10} {measured[cut]:>12.0f} {measured[cut] / measured[oracle]:>9.2f} "
                      f"{exp if exp is not None else '':>12}")
    finally:
        client.close()
        proxy.close()
        fog.terminate()
        fog.wait(10)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwritten {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
