"""Property-based fuzzing of the ingest path (hypothesis): deframers, header parser, validators,
the ZeroMQ burst handler, wire protocol v2 (several named tensors per message).

Invariant everywhere: valid frames in = samples out, in order, with the same values, whatever
garbage surrounds them; nothing but a counted rejection ever comes of the garbage (no exception
escapes, ``stats.errors`` stays 0). Budget: derandomized, at most 200 examples per test, so the
whole file runs in well under a minute.
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edged.runtime.base import TensorSpec
from edged.sources.framing import (
    CobsDeframer,
    FrameError,
    LineDeframer,
    build_cobs_frame,
    build_tensor_cobs_frame,
    build_tensor_frames,
    cobs_decode,
    cobs_encode,
    format_line,
    parse_body,
    parse_header_json,
)
from edged.sources.serial import SerialSource
from edged.sources.validate import InputContract, ModelContract, array_from_values, check_header, model_contract
from edged.sources.zmq import ZmqSource
from tests.helpers_ingest import Collector

SPECS = {
    "tiny": TensorSpec("input", (None, 3), "float32", "NC"),
    "pair": TensorSpec("input", (None, 2), "int16", "NC"),
}

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])

finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)
rows3 = st.lists(finite32, min_size=3, max_size=3).map(lambda v: np.array(v, dtype=np.float32))
chunk_sizes = st.integers(min_value=1, max_value=97)

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                         st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                 st.dictionaries(st.text(max_size=8), inner,
                                                                                 max_size=4)),
                           max_leaves=12)
header_keys = st.sampled_from(["model", "seq", "ts", "dtype", "shape", "deadline_ms", "sender", "data", "x", "v"])
headers = st.dictionaries(header_keys, st.one_of(json_values, st.sampled_from(["tiny", "pair", "float32", "<f4"])),
                          max_size=7)


def _chunks(data: bytes, size: int) -> List[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)] or [b""]


# --------------------------------------------------------------------------- COBS


@FUZZ
@given(st.binary(max_size=2000))
def test_cobs_round_trip(data: bytes) -> None:
    enc = cobs_encode(data)
    assert b"\x00" not in enc and cobs_decode(enc) == data


@FUZZ
@given(st.binary(max_size=600))
def test_cobs_decode_and_parse_body_only_ever_raise_frame_error(data: bytes) -> None:
    try:
        parse_body(cobs_decode(data))
    except FrameError:
        pass


@FUZZ
@given(
    st.lists(st.tuples(st.booleans(), rows3, st.binary(max_size=120)), min_size=1, max_size=12),
    chunk_sizes,
)
def test_cobs_stream_valid_frames_in_equal_samples_out_whatever_the_garbage(
        items: List[Tuple[bool, np.ndarray, bytes]], chunk: int) -> None:
    src = SerialSource(SPECS, "loop://", framing="cobs", max_frame_bytes=256)
    stream = b""
    expected: List[np.ndarray] = []
    for is_valid, row, junk in items:
        if is_valid:
            stream += build_cobs_frame({"model": "tiny", "seq": len(expected), "sender": "f"}, row.tobytes())
            expected.append(row)
        else:
            stream += junk  # anything at all: delimiters, half frames, oversize runs
    got = Collector()
    for part in _chunks(stream, chunk):
        src.feed(part, got)
    src.feed(b"\x00", got)  # the end of the stream ends the last segment
    assert [s.seq for s in got.samples] == list(range(len(expected)))
    assert all(np.array_equal(s.array, r) for s, r in zip(got.samples, expected))
    assert src.stats.errors == 0 and src.stats.lost_in_transit == 0


# --------------------------------------------------------------------------- lines


def _is_valid_tiny_line(line: bytes) -> bool:
    """Independent oracle: would this line be a valid 'tiny' input (3 finite numbers, optional 'tiny:')?"""
    text = line.strip()
    if b":" in text:
        name, _, text = text.partition(b":")
        if name.strip() != b"tiny":
            return False
    tokens = text.replace(b",", b" ").split()
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        return False
    return len(values) == 3 and all(math.isfinite(np.float32(v)) for v in values)


@FUZZ
@given(
    st.lists(st.tuples(st.booleans(), rows3, st.binary(max_size=80), st.sampled_from([b"\n", b"\r\n", b"\r"])),
             min_size=1, max_size=12),
    chunk_sizes,
)
def test_line_stream_valid_lines_in_equal_samples_out_whatever_the_garbage(
        items: List[Tuple[bool, np.ndarray, bytes, bytes]], chunk: int) -> None:
    src = SerialSource(SPECS, "loop://", framing="lines", default_model="tiny", max_frame_bytes=200)
    stream = b""
    expected: List[np.ndarray] = []
    for is_valid, row, junk, eol in items:
        if is_valid:
            stream += format_line(row, "tiny" if len(expected) % 2 else None)[:-1] + eol
            expected.append(row)
        else:
            for piece in junk.replace(b"\r", b"\n").split(b"\n"):
                if _is_valid_tiny_line(piece):
                    expected.append(np.array([float(t) for t in piece.split(b":")[-1].replace(b",", b" ").split()],
                                             dtype=np.float32))
            stream += junk + b"\n"  # garbage is its own line(s)
    got = Collector()
    for part in _chunks(stream, chunk):
        src.feed(part, got)
    assert len(got) == len(expected)
    assert all(np.array_equal(s.array, r) for s, r in zip(got.samples, expected))
    assert src.stats.errors == 0


@FUZZ
@given(st.binary(max_size=400), chunk_sizes)
def test_deframers_never_raise_and_never_hold_more_than_the_limit(data: bytes, chunk: int) -> None:
    for deframer in (CobsDeframer(64), LineDeframer(64)):
        for part in _chunks(data, chunk):
            for seg, err in deframer.feed(part):
                assert (err is None and 0 < len(seg) <= 64) or (err is not None and err.reason == "oversize")
            assert deframer.pending <= 64


# --------------------------------------------------------------------------- header parser and validators


@FUZZ
@given(st.one_of(st.binary(max_size=300), headers.map(lambda h: json.dumps(h).encode()),
                 st.integers(min_value=0, max_value=3000).map(lambda n: b"[" * n + b"]" * n)))
def test_header_parser_and_check_header_only_raise_frame_error(raw: bytes) -> None:
    try:
        header = parse_header_json(raw)
        info = check_header(SPECS, header)
    except FrameError as err:
        assert err.reason in {"bad_header", "unknown_model", "bad_sender", "bad_number", "bad_meta",
                              "dtype_mismatch"}
        return
    assert info.model in SPECS
    assert info.sender is None or (isinstance(info.sender, str) and len(info.sender.encode()) <= 128)
    assert info.seq is None or 0 <= info.seq <= 2**63 - 1
    for v in (info.ts, info.deadline_ms):
        assert v is None or math.isfinite(v)
    assert len(info.meta) <= 16
    json.dumps(info.meta, allow_nan=False)  # what reaches a record is always encodable


@FUZZ
@given(st.sampled_from(["tiny", "pair"]), json_values)
def test_values_validator_accepts_only_numbers_of_the_right_count(model: str, values: Any) -> None:
    try:
        arr = array_from_values(SPECS[model], model, values)
    except FrameError as err:
        assert err.reason in {"bad_values", "wrong_size", "non_finite", "dtype_mismatch"}
        return
    assert arr.shape == (3,) if model == "tiny" else (2,)
    assert np.isfinite(arr.astype(np.float64)).all()

    def leaves(v: Any) -> List[Any]:
        return [x for item in v for x in leaves(item)] if isinstance(v, list) else [v]

    assert all(type(x) in (int, float) for x in leaves(values)), "no bool or string was converted"


# --------------------------------------------------------------------------- ZeroMQ burst handler

poison_frames = st.one_of(
    st.lists(st.binary(max_size=60), min_size=1, max_size=3),
    st.integers(min_value=33, max_value=5000).map(lambda n: [b"[" * n, b"\x00" * 12]),
    st.sampled_from([
        [b'{"model":"tiny","seq":' + b"9" * 400 + b"}", b"\x00" * 12],
        [b'{"model":"tiny","ts":' + b"9" * 400 + b"}", b"\x00" * 12],
        [b'{"model":"tiny","ts":NaN}', b"\x00" * 12],
        [b'{"model":"tiny","sender":7}', b"\x00" * 12],
        [b'{"model":"tiny"}', np.array([1, np.nan, 2], np.float32).tobytes()],
        [b'{"model":"tiny"}', b"\x00" * 11],
        [b'{"model":"tiny","data":["1","2","3"]}'],
        [b'{"model":"tiny","data":[true,1,2]}'],
    ]),
    headers.map(lambda h: [json.dumps({**h, "model": "tiny", "ts": "no"}).encode(), b"\x00" * 12]),
)


def _valid_message(row: np.ndarray, seq: int, form: int) -> List[bytes]:
    if form == 0:  # the fast path
        return [json.dumps({"model": "tiny", "seq": seq, "ts": 1.5}).encode(), row.tobytes()]
    if form == 1:  # general path: metadata (the same sender, "", as the other forms: one seq stream)
        return [json.dumps({"model": "tiny", "seq": seq, "room": "b", "dtype": "<f4"}).encode(), row.tobytes()]
    return [json.dumps({"model": "tiny", "seq": seq, "data": [float(v) for v in row]}).encode()]


@FUZZ
@given(st.lists(st.one_of(st.tuples(st.just(True), rows3, st.integers(0, 2)),
                          st.tuples(st.just(False), poison_frames, st.just(0))), min_size=1, max_size=30))
def test_zmq_burst_valid_messages_in_equal_samples_out_whatever_the_poison(
        items: List[Tuple[bool, Any, int]]) -> None:
    src = ZmqSource(SPECS)
    burst: List[Tuple[List[bytes], float]] = []
    expected: List[np.ndarray] = []
    for is_valid, what, form in items:
        if is_valid:
            burst.append((_valid_message(what, len(expected), form), 0.0))
            expected.append(what)
        else:
            burst.append((what, 0.0))
    got = Collector()
    src.handle_burst(burst, got)
    assert [s.seq for s in got.samples] == list(range(len(expected)))
    assert all(np.array_equal(s.array, r) for s, r in zip(got.samples, expected))
    snap = src.stats.snapshot()
    assert snap["errors"] == 0 and snap["accepted"] == len(expected)
    assert snap["rejected_total"] == len(items) - len(expected)
    assert snap["lost_in_transit"] == 0


@FUZZ
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=3), st.one_of(st.none(), st.integers(0, 2**70)))
def test_zmq_any_frames_are_delivered_or_counted_never_raised(frames: List[bytes], seq: Optional[int]) -> None:
    src = ZmqSource(SPECS)
    got = Collector()
    src.handle_message(frames, got)
    src.handle_burst([(frames, 0.0)], got)
    snap = src.stats.snapshot()
    assert snap["errors"] == 0 and snap["accepted"] + snap["rejected_total"] == 2


# --------------------------------------------------------------------------- wire protocol v2 (several named tensors)

#: "duo": data inputs a (3 x float32) and n (2 x int16), state s (2 x float32); "dyn": x [?, 2] float32
CONTRACTS = {
    "duo": ModelContract("duo", [InputContract("a", (3,), "float32"), InputContract("n", (2,), "int16"),
                                 InputContract("s", (2,), "float32", state=True)], "a"),
    "dyn": ModelContract("dyn", [InputContract("x", (None, 2), "float32")], "x"),
    **{n: model_contract(n, s) for n, s in SPECS.items()},
}
ints2 = st.lists(st.integers(-2**15, 2**15 - 1), min_size=2, max_size=2).map(lambda v: np.array(v, dtype=np.int16))
rows_dyn = st.integers(1, 4).flatmap(lambda k: st.lists(finite32, min_size=2 * k, max_size=2 * k)).map(
    lambda v: np.array(v, dtype=np.float32).reshape(-1, 2))
#: one valid v2 input: (model, tensors by name) — duo with or without its state, or a dynamic-shape input
v2_inputs = st.one_of(
    st.tuples(st.just("duo"), st.fixed_dictionaries({"a": rows3, "n": ints2})),
    st.tuples(st.just("duo"), st.fixed_dictionaries({"n": ints2, "a": rows3, "s": rows3.map(lambda r: r[:2])})),
    st.tuples(st.just("dyn"), st.fixed_dictionaries({"x": rows_dyn})),
)
tensor_entry = st.dictionaries(st.sampled_from(["name", "dtype", "shape", "nbytes", "x"]),
                               st.one_of(json_values, st.sampled_from(["a", "n", "s", "x", "int16", "<f4"]),
                                         st.lists(st.integers(-2, 5), max_size=3)), max_size=4)
poison_v2 = st.one_of(
    poison_frames,
    st.lists(tensor_entry, max_size=4).flatmap(lambda ts: st.lists(st.binary(max_size=24), min_size=0, max_size=4).map(
        lambda ps: [json.dumps({"model": st_pick(ts), "tensors": ts}).encode(), *ps])),
    st.tuples(v2_inputs, st.integers(0, 3)).map(lambda t: _spoil(*t)),
)


def st_pick(ts: List[Any]) -> str:
    return "dyn" if any(isinstance(t, dict) and t.get("name") == "x" for t in ts) else "duo"


def _spoil(item: Tuple[str, Dict[str, Any]], how: int) -> List[bytes]:
    """A v2 message made invalid in one way: a frame short, one missing, a NaN, an unknown input."""
    model, tensors = item
    frames = build_tensor_frames({"model": model}, tensors)
    if how == 0:
        return [frames[0], frames[1][:-1], *frames[2:]]
    if how == 1:
        return frames[:-1]
    if how == 2:
        first = next(iter(tensors))
        bad = dict(tensors)
        bad[first] = np.full_like(tensors[first], np.nan, dtype=np.float32)
        return build_tensor_frames({"model": model}, bad)
    return build_tensor_frames({"model": model}, {**tensors, "zz": np.zeros(1, np.float32)})


def _v2_message(model: str, tensors: Dict[str, np.ndarray], seq: int, form: int) -> List[bytes]:
    if form == 0:
        return build_tensor_frames({"model": model, "seq": seq, "sender": "f"}, tensors)
    return [json.dumps({"model": model, "seq": seq, "sender": "f",
                        "inputs": {k: v.tolist() for k, v in tensors.items()}}).encode()]


def _same_inputs(sample: Any, tensors: Dict[str, np.ndarray]) -> bool:
    feeds = sample.feeds if sample.feeds is not None else {next(iter(tensors)): sample.array}
    return set(feeds) == set(tensors) and all(
        feeds[k].dtype == v.dtype and np.array_equal(feeds[k], v) for k, v in tensors.items())


@FUZZ
@given(st.lists(st.one_of(st.tuples(st.just(True), v2_inputs, st.integers(0, 1)),
                          st.tuples(st.just(False), poison_v2, st.just(0))), min_size=1, max_size=20))
def test_zmq_v2_valid_multi_tensor_messages_in_equal_samples_out_whatever_the_poison(
        items: List[Tuple[bool, Any, int]]) -> None:
    src = ZmqSource(CONTRACTS)
    burst: List[Tuple[List[bytes], float]] = []
    expected: List[Tuple[str, Dict[str, np.ndarray]]] = []
    seqs: Dict[str, int] = {}
    for is_valid, what, form in items:
        if is_valid:
            model, tensors = what
            burst.append((_v2_message(model, tensors, seqs.get(model, 0), form), 0.0))
            seqs[model] = seqs.get(model, 0) + 1
            expected.append((model, tensors))
        else:
            burst.append((what, 0.0))
    got = Collector()
    src.handle_burst(burst, got)
    assert [s.model for s in got.samples] == [m for m, _ in expected]
    assert all(_same_inputs(s, t) for s, (_, t) in zip(got.samples, expected))
    snap = src.stats.snapshot()
    assert snap["errors"] == 0 and snap["accepted"] == len(expected)
    assert snap["rejected_total"] == len(items) - len(expected) and snap["lost_in_transit"] == 0


@FUZZ
@given(st.lists(st.tuples(st.booleans(), v2_inputs, st.binary(max_size=120)), min_size=1, max_size=10), chunk_sizes)
def test_cobs_v2_stream_valid_frames_in_equal_samples_out_whatever_the_garbage(
        items: List[Tuple[bool, Tuple[str, Dict[str, np.ndarray]], bytes]], chunk: int) -> None:
    src = SerialSource(CONTRACTS, "loop://", framing="cobs", max_frame_bytes=512)
    stream = b""
    expected: List[Tuple[str, Dict[str, np.ndarray]]] = []
    for is_valid, (model, tensors), junk in items:
        if is_valid:
            stream += build_tensor_cobs_frame({"model": model, "seq": len(expected), "sender": "g"}, tensors)
            expected.append((model, tensors))
        else:
            stream += junk
    got = Collector()
    for part in _chunks(stream, chunk):
        src.feed(part, got)
    src.feed(b"\x00", got)
    assert [s.seq for s in got.samples] == list(range(len(expected)))
    assert all(_same_inputs(s, t) for s, (_, t) in zip(got.samples, expected))
    assert src.stats.errors == 0


@FUZZ
@given(st.sampled_from(["duo", "dyn", "tiny"]), st.one_of(st.lists(tensor_entry, max_size=5), json_values),
       st.lists(st.binary(max_size=40), max_size=5))
def test_v2_tensors_validation_only_raises_named_reasons(model: str, tensors: Any, payloads: List[bytes]) -> None:
    src = ZmqSource(CONTRACTS)
    header = {"model": model, "tensors": tensors}
    for call in (lambda: src.sample_from_frames(dict(header), payloads, 0.0),
                 lambda: src.sample_from_body(dict(header), b"".join(payloads), 0.0),
                 lambda: src.sample_from_json({"model": model, "inputs": tensors}, 0.0)):
        try:
            sample = call()
        except FrameError as err:
            assert err.reason in {"bad_header", "unknown_input", "missing_input", "missing_shape", "dtype_mismatch",
                                  "wrong_size", "non_finite", "bad_values"}, err
            assert err.header is not None
            continue
        assert sample.model == model and np.isfinite(sample.array.astype(np.float64)).all()
