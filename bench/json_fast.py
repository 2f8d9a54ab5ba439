"""Per-call cost of edged's JSON on the per-input path: orjson (edged._json) vs the stdlib json path.

    .venv/bin/python bench/json_fast.py

Each figure is the median of 5 timeit runs (µs per call), in one process: first with orjson, then
with orjson switched off (exactly the path a box without the wheel takes). Inputs: a real 670-byte
decision record (from a ``make run`` decisions.jsonl), a typical ZeroMQ header, a fog request
header, a one-frame JSON input of 30 values and a zmq result-sink header.
"""

from __future__ import annotations

import json
import statistics
import timeit
from typing import Any, Callable, Dict

import numpy as np

import edged._json as ej
import edged.logs.writer as writer
import edged.sources.zmq as zsrc
from edged.offload.protocol import decode_header, encode_header
from edged.sinks import zmq as zsink
from edged.sinks.base import Result
from edged.sources.framing import parse_header_json, parse_json

RECORD = json.loads(
    '{"ts":1795423875.795235,"seq":29,"source":"zmq","model":"cnn_int8","policy":"adaptive","decision":"local",'
    '"reason":"expected local 205us <= offload 2417us","wcet_us":435.2,"local_exec_us":205.1,"t_l_us":837.0,'
    '"t_l_out_us":837.0,"t_f_us":424.9,"fog_queue_us":317.9,"threshold_us":2416.8,"local_queue_us":0.0,'
    '"expected_local_us":205.1,"expected_offload_us":2416.8,"fog_up":true,"deadline_us":null,"objective":"latency",'
    '"latency_us":1882.1,"exec_us":195.1,"transfer_us":null,"result":{"label":3,"name":"3","score":0.769531,'
    '"top":[[3,0.769531],[8,0.226562],[9,0.003906]]},"error":null,"fog_error":null,"energy_mj":null,"batch":1,'
    '"sender":null,"sender_ts":1795423875.794603}')
HEADER = b'{"model":"mlp","seq":123456,"ts":1795423871.689523,"sender":"dev-0"}'
FAST_HEADER = b'{"model":"mlp","seq":123456,"ts":1795423871.689523}'
FOG: Dict[str, Any] = {"v": 1, "id": "ab12-77", "kind": "infer", "model": "mlp", "model_hash": None,
                       "sent_ts": 1795423871.689523, "dtype": "float32", "shape": [1, 30]}
ONE_FRAME = json.dumps({"model": "mlp", "seq": 5, "data": [round(0.123456789 * i, 6) for i in range(30)]}).encode()


def per_call_us(fn: Callable[[], Any], number: int = 20000) -> float:
    return statistics.median(min(timeit.repeat(fn, number=number, repeat=1)) / number * 1e6 for _ in range(5))


def fast_path_header() -> Any:
    """What the ZeroMQ burst fast path does per header."""
    if zsrc.orjson_loads is not None:
        return zsrc.orjson_loads(FAST_HEADER)
    text = FAST_HEADER.decode("utf-8")
    return zsrc._SCAN_JSON(text, 0)


def measure() -> Dict[str, float]:
    fog_raw = encode_header(FOG)
    result = Result(dict(RECORD, sender="dev-0"), {"logits": np.zeros(10, dtype=np.float32)})
    return {
        f"encode_record ({len(writer.encode_record(RECORD)) - 1} B record)": per_call_us(
            lambda: writer.encode_record(RECORD)),
        "zmq burst fast path header": per_call_us(fast_path_header),
        "parse_header_json (zmq/serial header)": per_call_us(lambda: parse_header_json(HEADER)),
        f"parse_json (one-frame input, {len(ONE_FRAME)} B)": per_call_us(
            lambda: parse_json(ONE_FRAME, "one-frame message", "unparsable")),
        "encode_header (fog request)": per_call_us(lambda: encode_header(FOG)),
        "decode_header (fog request)": per_call_us(lambda: decode_header(fog_raw)),
        "zmq sink encode_result": per_call_us(lambda: zsink.encode_result(result)),
    }


def main() -> int:
    if not ej.HAVE_ORJSON:
        print("orjson is not installed: nothing to compare")
        return 1
    fast = measure()
    ej._orjson = None  # type: ignore[assignment]
    writer._orjson_dumps = None
    zsrc.orjson_loads = None
    slow = measure()
    print(f"{'per call, median of 5 (us)':44s} {'stdlib':>8s} {'orjson':>8s} {'speed-up':>9s}")
    for name, t in fast.items():
        print(f"{name:44s} {slow[name]:8.2f} {t:8.2f} {slow[name] / t:8.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
