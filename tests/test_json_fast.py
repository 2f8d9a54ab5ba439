"""orjson on the per-input path gives exactly the stdlib json answers (edged._json).

Each known difference between orjson and json has a case here; each is checked differentially
against the stdlib path (orjson switched off in-process, or blocked in a real subprocess).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pytest

import edged._json as ej
import edged.logs.writer as writer
import edged.sources.zmq as zsrc
from edged.logs.writer import encode_record
from edged.offload.protocol import decode_header, encode_header
from edged.sinks import zmq as zsink
from edged.sinks.base import Result
from edged.sources.base import Rejection
from edged.sources.framing import FrameError, parse_header_json
from edged.sources.zmq import ZmqSource
from tests.helpers_ingest import SPECS, Collector, mlp_rows

pytestmark = pytest.mark.skipif(not ej.HAVE_ORJSON, reason="orjson is not installed")

ROOT = Path(__file__).resolve().parents[1]
X = mlp_rows(1)[0]

#: A real decision record (from a `make run` decisions.jsonl), 673 bytes.
DECISION = json.loads(
    '{"ts":1795423883.962674,"seq":95,"source":"zmq","model":"cnn","policy":"offload","decision":"offload",'
    '"reason":"policy offload","wcet_us":550.9,"local_exec_us":93.5,"t_l_us":1538.7,"t_l_out_us":1538.7,'
    '"t_f_us":146.8,"fog_queue_us":261.2,"threshold_us":null,"local_queue_us":0.0,"expected_local_us":null,'
    '"expected_offload_us":3485.4,"fog_up":true,"deadline_us":null,"objective":"latency","latency_us":2755.7,'
    '"exec_us":146.3,"transfer_us":939.4,"result":{"label":4,"name":"4","score":0.999724,"top":[[4,0.999724],'
    '[7,0.000203],[5,4.9e-05]]},"error":null,"fog_error":null,"energy_mj":null,"batch":1,"sender":null,'
    '"sender_ts":1795423883.961516}')


def _typed(v: Any) -> Any:
    """``v`` with every scalar tagged by its type (so 1 != 1.0 != True) and NaN comparable."""
    if isinstance(v, dict):
        return {k: _typed(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_typed(x) for x in v]
    if isinstance(v, float) and math.isnan(v):
        return ("float", "nan")
    return (type(v).__name__, v)


# ----------------------------------------------------------------------------------- parsing
PARSE_CASES: List[bytes] = [
    b'{"model":"mlp","seq":1,"ts":1795423883.962674}',
    b' {"model":"mlp","seq":1} \n',                       # whitespace around: both accept
    b'{"a":1,"a":2}',                                      # duplicate key: both keep the last
    b'{"a":-0,"b":-0.0,"c":1E5,"d":5e-324,"e":1e-400}',    # -0 is int 0; 1e-400 underflows to 0.0
    b'{"a":18446744073709551615,"b":-9223372036854775808}',  # the 64-bit edges: ints in both
    b'{"a":18446744073709551616}',                         # 2**64: orjson would give a float
    b'{"a":-9223372036854775809}',                         # below int64: orjson would give a float
    b'{"seq":1000000000000000000000000000000}',            # 10**30: orjson would give 1e30
    b'{"seq":1' + b"0" * 400 + b'}',                       # 10**400: orjson refuses; json: an int
    b'{"s":"12345678901234567890"}',                       # 19+ digits in a string: json path, same answer
    b'{"ts":NaN,"a":Infinity,"b":-Infinity}',              # orjson refuses the literals
    b'{"ts":1e400}',                                       # orjson refuses; json: inf
    b'{"s":"\\ud800"}',                                    # lone surrogate: orjson refuses
    b'{"s":"\\ud83d\\ude00 \\u00e9 \\u0000"}',             # a surrogate pair, escapes
    "{\"s\":\"\u00e9\u2028\"}".encode("utf-8"),            # raw non-ASCII
    b'\xef\xbb\xbf{"a":1}',                                # UTF-8 BOM: orjson refuses, json accepts
    '{"a":1}'.encode("utf-16"),                            # UTF-16: orjson refuses, json accepts
    '{"a":1}'.encode("utf-32-le"),
]

BAD_CASES: List[bytes] = [
    b'{"s":"\xff"}',                                       # invalid UTF-8
    b'{"a":1}\x00', b'{"a":1} x', b"", b"{", b'{"a":01}', b'{"a":"\x01"}', b"[1,]", b"nul",
    b'{"seq":' + b"9" * 5000 + b"}",                       # beyond int("...") digits: ValueError
]


@pytest.mark.parametrize("raw", PARSE_CASES, ids=range(len(PARSE_CASES)))
def test_loads_gives_json_loads_answer_with_the_same_types(raw: bytes) -> None:
    assert _typed(ej.loads(raw)) == _typed(json.loads(raw))


@pytest.mark.parametrize("raw", BAD_CASES, ids=range(len(BAD_CASES)))
def test_loads_raises_what_json_loads_raises(raw: bytes) -> None:
    with pytest.raises(ValueError) as ours:
        ej.loads(raw)
    with pytest.raises(ValueError) as theirs:
        json.loads(raw)
    assert type(ours.value) is type(theirs.value) and str(ours.value) == str(theirs.value)


def test_big_integers_stay_python_ints() -> None:
    """orjson alone would silently turn these into floats (seq 10**30 would no longer be an int)."""
    for n in (2**64, 10**30, -(2**63) - 1, 10**400):
        assert ej.loads(f'{{"seq":{n}}}'.encode()) == {"seq": n}
        assert type(parse_header_json(f'{{"seq":{n}}}'.encode())["seq"]) is int


def test_long_digit_run_guard() -> None:
    assert ej.has_long_digit_run(b'{"a":' + b"1" * 19 + b"}") and ej.has_long_digit_run("x" + "9" * 25)
    assert ej.has_long_digit_run(memoryview(b"1" * 19)) and ej.has_long_digit_run(bytearray(b"1" * 19))
    assert not ej.has_long_digit_run(b'{"ts":1795423871.689523,"x":123456789012345678.5}')
    assert not ej.has_long_digit_run("\ud800 " + "1" * 18)
    assert ej.has_long_digit_run(12345)  # not text: cannot tell, so json.loads decides (and raises TypeError)
    with pytest.raises(TypeError):
        ej.loads(12345)


def test_parse_header_json_bounds_are_checked_before_parsing() -> None:
    with pytest.raises(FrameError, match="nests 40 levels deep"):
        parse_header_json(b'{"x":' + b"[" * 39 + b"]" * 39 + b"}")
    with pytest.raises(FrameError, match="limit 65535"):
        parse_header_json(b'{"x":"' + b"a" * 70000 + b'"}')


HEADERS: List[bytes] = [
    b'{"model":"mlp","seq":1}', b'{"model":"mlp","seq":2,"ts":1.5}', b'{"model":"mlp","seq":3}  ',
    b'{"model":"mlp","seq":' + str(2**70).encode() + b"}",
    b'{"model":"mlp","seq":4,"ts":' + str(10**30).encode() + b"}",
    b'{"model":"mlp","seq":4,"ts":' + str(2**64).encode() + b"}", b'{"model":"mlp","seq":4,"ts":-9223372036854775809}',
    b'{"model":"mlp","seq":4,"ts":9223372036854775807}', b'{"model":"mlp","seq":4,"ts":1e19}',
    b'{"model":"mlp","seq":18446744073709551615}',
    b'{"model":"mlp","seq":17,"ts":1.5,"ts":2.5}', b'{"seq":18,"model":"mlp","model":"nope"}',
    b'{"model":"mlp","seq":1' + b"0" * 400 + b"}",
    b'{"model":"mlp","seq":5,"ts":1e400}', b'{"model":"mlp","seq":6,"ts":NaN}',
    b'{"model":"mlp","seq":7,"deadline_ms":-Infinity}', b'{"model":"mlp","seq":8,"sender":"\\ud800"}',
    b'{"model":"mlp","seq":9,"model":"mlp"}', b'\xef\xbb\xbf{"model":"mlp","seq":10}',
    b'{"model":"mlp","seq":11,"ts":-0}', b'{"model":"mlp","seq":12,"ts":12345678901234567890.5}',
    b'{"model":"mlp","seq":13,"sender":"d\\u00e9v"}', b'{"model":"mlp","seq":14,"ts":"x"}',
    b'{"model":"nope","seq":15}', b'{"model":"mlp","seq":16', b'{"model":"mlp","seq":-1}',
]


def _run_burst(headers: List[bytes]) -> Tuple[List[Tuple[Any, ...]], List[Tuple[Any, ...]], Dict[str, Any]]:
    src = ZmqSource(SPECS)
    rejections: List[Rejection] = []
    src.on_rejected = rejections.append
    got = Collector()
    src.handle_burst([([h, X.tobytes()], float(i)) for i, h in enumerate(headers)], got)
    samples = [(s.seq, s.model, s.sender, repr(s.sender_ts), repr(s.deadline_ms), repr(s.meta))
               for s in got.samples]
    rejected = [(r.reason, r.model, r.seq) for r in rejections]
    return samples, rejected, src.stats.snapshot()


def test_zmq_source_burst_accepts_and_refuses_exactly_as_with_stdlib_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fast path and general path of the real burst handler, orjson on vs off: the same samples,
    the same attributable rejections (10**400 is still ``bad_number`` naming the model)."""
    fast = _run_burst(HEADERS)
    monkeypatch.setattr(ej, "_orjson", None)
    monkeypatch.setattr(zsrc, "orjson_loads", None)
    slow = _run_burst(HEADERS)
    assert fast[0] == slow[0] and fast[1] == slow[1]
    assert fast[2]["rejected"] == slow[2]["rejected"] and fast[2]["accepted"] == slow[2]["accepted"]
    assert ("bad_number", "mlp", None) in [(r, m, None) for r, m, _ in fast[1]]


# ----------------------------------------------------------------------------------- records
@dataclasses.dataclass
class _DC:
    a: float
    b: List[Any]


class _Color(enum.Enum):
    RED = "red"


class _IntE(enum.IntEnum):
    ONE = 1


class _F(float):
    pass


class _S(str):
    pass


class _Weird:
    def __repr__(self) -> str:
        return "<weird>"


def _records() -> List[Any]:
    circular: Dict[str, Any] = {"a": 1}
    circular["self"] = circular
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    return [
        DECISION,
        {"nan": float("nan"), "inf": [float("inf"), -math.inf], "np": np.float64("nan"), "np32": np.float32("inf")},
        {"f32": np.float32(0.1), "a32": np.arange(3, dtype=np.float32) / 3, "i64": np.int64(-5), "b": np.bool_(True),
         "u8": np.arange(4, dtype=np.uint8).reshape(2, 2), "nc": np.zeros((3, 3))[:, 1], "f16": np.float16(0.1),
         "a_nan": np.array([1.0, np.nan]), "c": np.complex64(1 + 2j), "dt64": np.datetime64("2020-01-01")},
        {2: "int key", 1.5: "float key", False: "bool key", None: "none key"},
        {(1, 2): "tuple key", "nan": float("nan")},
        {"t": (1, (2, 3)), "p": Path("/tmp/x"), "b": b"\xff\x00ab", "ba": bytearray(b"xy"), "set": {3, 1},
         "fs": frozenset({"b", "a"})},
        {"dc": _DC(float("nan"), [np.float64(1.0), Path("/y")]), "e": _Color.RED, "ie": _IntE.ONE},
        {"fsub": _F(1.5), "fsub_nan": _F("nan"), "ssub": _S("s"), "obj": _Weird(), "cls": object},
        {"dt": dt.datetime(2020, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc), "naive": dt.datetime(2020, 1, 2),
         "d": dt.date(2020, 1, 2), "tm": dt.time(1, 2, 3, 400)},
        {"txt": "µs\nline\u2028x\x85", "lone": "\ud800"},
        {"big": 2**64, "neg": -(2**63) - 1, "ok": 2**64 - 1},
        {"floats": [1e-5, 1e16, 1e22, 0.1, -0.0, 5e-324, 1.7976931348623157e308]},
        circular,
        {"deep": deep},
        [1, "not a dict"],
    ]


@pytest.mark.parametrize("i", range(len(_records())))
def test_encode_record_line_equals_the_stdlib_line_once_parsed(i: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = _records()[i]
    ours = encode_record(rec)
    monkeypatch.setattr(writer, "_orjson_dumps", None)
    theirs = encode_record(_records()[i])
    for line in (ours, theirs):
        assert line.endswith(b"\n") and line.count(b"\n") == 1 and line.isascii()
    assert _typed(json.loads(ours)) == _typed(json.loads(theirs))


def test_encode_record_real_decision_takes_orjson_and_keeps_values() -> None:
    line = encode_record(DECISION)
    assert line == ej._orjson.dumps(DECISION) + b"\n"  # type: ignore[union-attr]
    assert json.loads(line) == DECISION
    # float32 keeps json's value (item()), not float32's shortest text
    assert json.loads(encode_record({"x": np.float32(0.1)}))["x"] == float(np.float32(0.1)) != 0.1


# ----------------------------------------------------------------------------------- headers (fog, sinks)
def _protocol_headers() -> List[Dict[str, Any]]:
    return [
        {"v": 1, "id": "a-1", "kind": "infer", "model": "mlp", "model_hash": None, "sent_ts": 1795423883.962674},
        {"v": 1, "id": "a-2", "kind": "ping", "reply_pad": 0, "sent_ts": 1.5, "t_f_us": float("nan")},  # NaN literal
        {"v": 1, "id": "a-3", "status": "error", "error": "model 'm\u00e9': bad"},          # non-ASCII escaped
        {"v": 1, "id": "a-4", "big": 2**70, "inf": float("inf")},
        {"v": 1, "id": "a-5", "nested": {"x": [1, 2.5, None, True]}, "s": "\ud800"},
    ]


@pytest.mark.parametrize("i", range(len(_protocol_headers())))
def test_fog_header_bytes_equal_json_dumps(i: int) -> None:
    header = _protocol_headers()[i]
    ours = encode_header(header)
    assert ours.isascii()
    assert _typed(decode_header(ours)) == _typed(json.loads(json.dumps(header, separators=(",", ":"))))
    if not any(isinstance(v, float) and not math.isfinite(v) for v in header.values()) and i != 0:
        assert ours == json.dumps(header, separators=(",", ":")).encode()


def test_fog_header_with_nan_keeps_the_nan_literal() -> None:
    """orjson would write ``null``; json writes ``NaN``, which the peer reads back as a float."""
    raw = encode_header({"t_f_us": float("nan"), "x": None})
    assert raw == b'{"t_f_us":NaN,"x":null}'
    assert math.isnan(decode_header(raw)["t_f_us"])


def test_fog_header_refused_types_still_raise_typeerror() -> None:
    for bad in (np.float32(1.0), dt.datetime(2020, 1, 1), _DC(1.0, []), {1, 2}):
        with pytest.raises(TypeError):
            encode_header({"x": bad})


def _sink_record(**over: Any) -> Dict[str, Any]:
    rec = dict(DECISION, sender="dev-0")
    rec.update(over)
    return rec


def _encode_sink(rec: Dict[str, Any], outputs: Optional[Dict[str, np.ndarray]]) -> bytes:
    head, _ = zsink.encode_result(Result(rec, outputs))
    return head


@pytest.mark.parametrize("over", [
    {}, {"sender": "d\u00e9v"}, {"result": {"label": np.int64(3), "score": np.float32(0.25)}},
    {"seq": 2**70}, {"error": "e\ud800"},
])
def test_zmq_and_mqtt_sink_headers_equal_the_stdlib_encoder(over: Dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    rec = _sink_record(**over)
    outs = {"logits": np.arange(10, dtype=np.float32)}
    ours = _encode_sink(rec, outs)
    head = {k: rec[k] for k in zsink.HEADER_KEYS if k in rec}
    mqtt_ours = ej.dumps_header(head, zsink._ENCODE, zsink._json_default)
    monkeypatch.setattr(ej, "_orjson", None)
    zsink._OUTPUTS_JSON.clear()
    theirs = _encode_sink(rec, outs)
    # the same JSON (float text may differ: orjson writes 4.9e-5 where json writes 4.9e-05)
    assert ours.isascii() and mqtt_ours.isascii()
    assert _typed(json.loads(ours)) == _typed(json.loads(theirs))
    assert _typed(json.loads(mqtt_ours)) == _typed(json.loads(zsink._ENCODE(head)))


def test_sink_header_with_nan_still_raises_like_the_stdlib_encoder() -> None:
    """orjson would publish ``null``; the sink's json encoder refuses NaN (allow_nan=False)."""
    for bad in (float("nan"), np.float32("inf"), [1.0, math.inf], np.array([np.nan])):
        with pytest.raises(ValueError):
            _encode_sink(_sink_record(result={"score": bad}), None)


# ----------------------------------------------------------------------------------- no orjson
def test_without_orjson_everything_runs_on_stdlib_json_and_says_so_once(tmp_path: Path) -> None:
    """A real interpreter where ``import orjson`` fails (a box without the wheel)."""
    code = r"""
import logging, sys, json
sys.modules["orjson"] = None  # import orjson -> ImportError
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
import edged._json as ej
from edged.logs.writer import encode_record
from edged.sources.framing import parse_header_json
from edged.offload.protocol import encode_header
import edged._json
assert not ej.HAVE_ORJSON
print(parse_header_json(b'{"model":"mlp","seq":1e400}')["seq"])
print(encode_record({"a": float("nan"), "b": "\u00e9"}).decode(), end="")
print(encode_header({"a": 1}).decode())
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["inf", '{"a":null,"b":"\\u00e9"}', '{"a":1}']
    warnings = [ln for ln in proc.stderr.splitlines() if "orjson" in ln]
    assert len(warnings) == 1 and warnings[0].startswith("WARNING edged.json") and "pip install" in warnings[0]
