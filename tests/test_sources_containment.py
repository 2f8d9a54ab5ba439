"""Every message is its own failure domain; per-sender state is bounded; refusals are attributable.

Poison messages go through the real ZeroMQ burst handler (both the two-frame fast path and the
general path) and the serial deframers; each must cost exactly itself.
"""

from __future__ import annotations

import json
import math
import threading
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest
import zmq

from edged.sources.base import Rejection
from edged.sources.framing import MAX_JSON_DEPTH, FrameError, build_cobs_frame, format_line, json_depth
from edged.sources.serial import SerialSource
from edged.sources.stats import SourceStats
from edged.sources.validate import MAX_SENDER_BYTES, check_header
from edged.sources.zmq import ZmqSource
from tests.helpers_ingest import SPECS, Collector, mlp_rows, wait_until

X = mlp_rows(1)[0]
NAN = X.copy()
NAN[3] = np.nan
HUGE = "1" + "0" * 400  # an integer literal no float can hold


def _valid(seq: int) -> List[bytes]:
    return [json.dumps({"model": "mlp", "seq": seq}).encode(), X.tobytes()]


#: (frames, reason, attributable to model 'mlp')
POISON: List[Tuple[List[bytes], str, bool]] = [
    ([b"[" * 100_000, X.tobytes()], "bad_header", False),                      # nesting bomb
    ([b"{" * 5000, X.tobytes()], "bad_header", False),
    ([b'{"model":"mlp","x":' + b"[" * 40 + b"]" * 40 + b"}", X.tobytes()], "bad_header", False),
    ([f'{{"model":"mlp","seq":{HUGE}}}'.encode(), X.tobytes()], "bad_number", True),
    ([f'{{"model":"mlp","seq":1,"ts":{HUGE}}}'.encode(), X.tobytes()], "bad_number", True),
    ([f'{{"model":"mlp","seq":1,"deadline_ms":{HUGE}}}'.encode(), X.tobytes()], "bad_number", True),
    ([b'{"model":"mlp","seq":1,"ts":1e400}', X.tobytes()], "bad_number", True),  # parses to inf
    ([b'{"model":"mlp","seq":1,"ts":NaN}', X.tobytes()], "bad_number", True),
    ([b'{"model":"mlp","seq":1,"deadline_ms":-Infinity}', X.tobytes()], "bad_number", True),
    ([b'{"model":"mlp","seq":1,"sender":7}', X.tobytes()], "bad_sender", True),
    ([json.dumps({"model": "mlp", "seq": 1, "sender": "s" * 16384}).encode(), X.tobytes()], "bad_sender", True),
    ([b'{"model":"mlp","seq":1,"sender":"\\ud800"}', X.tobytes()], "bad_sender", True),  # lone surrogate
    ([json.dumps({"model": "mlp", "note": {"nested": 1}}).encode(), X.tobytes()], "bad_meta", True),
    ([json.dumps({"model": "mlp", **{f"k{i}": i for i in range(17)}}).encode(), X.tobytes()], "bad_meta", True),
    ([json.dumps({"model": "mlp", "note": "n" * 300}).encode(), X.tobytes()], "bad_meta", True),
    ([b'{"model":"mlp","seq":1}', X[:7].tobytes()], "wrong_size", True),
    ([b'{"model":"mlp","seq":1,"sender":"nan-sensor"}', NAN.tobytes()], "non_finite", True),
    ([b'{"model":"mlp","seq":1}', NAN.tobytes()], "non_finite", True),          # fast path NaN
    ([b'{"model":"mlp","dtype":">f4"}', X.astype(">f4").tobytes()], "dtype_mismatch", True),
    ([json.dumps({"model": "mlp", "data": ["1"] * 30}).encode()], "bad_values", True),
    ([json.dumps({"model": "mlp", "data": [True] * 30}).encode()], "bad_values", True),
    ([json.dumps({"model": "mlp", "data": [1.0] * 29 + [False]}).encode()], "bad_values", True),
    ([b'{"model":"mlp","data":[' + b",".join([b"1"] * 29) + b"," + HUGE.encode() + b"]}"], "non_finite", True),
    ([b'{"model":"mlp","data":[[1,2],[3]]}'], "bad_values", True),              # ragged
    ([b"\xff\xfe\x00garbage", X.tobytes()], "bad_header", False),
    ([b'{"model":"nope","seq":1}', X.tobytes()], "unknown_model", False),
    ([b"[1, 2, 3]", X.tobytes()], "bad_header", False),
    ([b"not json at all"], "unparsable", False),
    ([b"[" * 100_000], "unparsable", False),                                   # one-frame nesting bomb
    ([b"a", b"b", b"c"], "bad_header", False),
    ([b'{"model":"mlp","seq":' + b"9" * 5000 + b"}", X.tobytes()], "bad_header", False),  # > 4300 digits
]


def _burst(messages: List[List[bytes]]) -> List[Tuple[List[bytes], float]]:
    return [(m, float(i)) for i, m in enumerate(messages)]


def test_poison_frames_in_one_burst_cost_no_valid_input_and_are_counted_by_reason() -> None:
    src = ZmqSource(SPECS)
    rejections: List[Rejection] = []
    src.on_rejected = rejections.append
    got = Collector()
    burst: List[List[bytes]] = []
    seq = 0
    for frames, _, _ in POISON:
        burst.append(_valid(seq))
        seq += 1
        burst.append(frames)
    burst.append(_valid(seq))
    seq += 1
    src.handle_burst(_burst(burst), got)
    assert [s.seq for s in got.samples] == list(range(seq)), "every valid input of the burst survives, in order"
    expected: Dict[str, int] = {}
    for _, reason, _ in POISON:
        expected[reason] = expected.get(reason, 0) + 1
    snap = src.stats.snapshot()
    assert snap["rejected"] == expected
    assert snap["accepted"] == seq and snap["errors"] == 0
    assert snap["lost_in_transit"] == 0 and snap["seq_restarts"] == 0, "refused inputs are never lost in transit"
    attributable = [(r, reason) for (_, reason, a) in POISON if a for r in [reason]]
    assert [r.reason for r in rejections] == [reason for reason, _ in attributable]
    assert all(r.model == "mlp" and r.source == "zmq" for r in rejections)


def test_poison_frames_in_a_real_socket_burst_through_run() -> None:
    """The same burst through a real PUSH -> PULL, so run()'s own receive loop is covered."""
    ctx = zmq.Context()
    got = Collector()
    src = ZmqSource(SPECS, endpoint="tcp://127.0.0.1:*")
    stop = threading.Event()
    t = src.start(got, stop)
    push = ctx.socket(zmq.PUSH)
    push.connect(src.bound_endpoint or "")
    n = 0
    try:
        for _ in range(3):
            for frames, _, _ in POISON:
                push.send_multipart(_valid(n))
                n += 1
                push.send_multipart(frames)
        assert wait_until(lambda: len(got) == n and src.stats.rejected_total == 3 * len(POISON), 20)
    finally:
        stop.set()
        t.join(5)
        push.close(0)
        ctx.term()
    assert [s.seq for s in got.samples] == list(range(n))
    assert src.stats.errors == 0 and src.stats.lost_in_transit == 0


def test_nan_without_sender_on_the_fast_path_is_counted_once() -> None:
    src = ZmqSource(SPECS)
    got = Collector()
    msgs = [_valid(0), [b'{"model":"mlp","seq":1}', NAN.tobytes()], _valid(2), _valid(3)]
    src.handle_burst(_burst(msgs), got)
    snap = src.stats.snapshot()
    assert snap["rejected"] == {"non_finite": 1} and snap["lost_in_transit"] == 0 and snap["seq_restarts"] == 0
    assert [s.seq for s in got.samples] == [0, 2, 3]


def test_refused_seq_is_not_lost_but_a_real_gap_still_is() -> None:
    src = ZmqSource(SPECS)
    got = Collector()
    h = {"model": "mlp", "sender": "a"}
    for seq, payload in [(0, X), (1, NAN), (3, X), (4, NAN), (5, NAN), (6, X), (7, X)]:
        src.handle_message([json.dumps({**h, "seq": seq}).encode(), payload.tobytes()], got)
    assert src.stats.lost_in_transit == 1, "only seq 2 never arrived; 1, 4 and 5 were refused"
    # a refused input from a sender never seen valid creates no state
    src.handle_message([b'{"model":"mlp","seq":5,"sender":"ghost"}', NAN.tobytes()], got)
    assert src.stats.snapshot()["tracked_senders"] == 1


def test_sender_must_be_a_bounded_string_and_is_carried_on_the_sample() -> None:
    src = ZmqSource(SPECS)
    got = Collector()
    ok = "s" * MAX_SENDER_BYTES
    assert src.handle_message([json.dumps({"model": "mlp", "sender": ok}).encode(), X.tobytes()], got)
    assert not src.handle_message([json.dumps({"model": "mlp", "sender": ok + "s"}).encode(), X.tobytes()], got)
    assert not src.handle_message([b'{"model":"mlp","sender":7}', X.tobytes()], got)
    assert len(got) == 1 and got.samples[0].sender == ok and got.samples[0].meta == {}
    assert src.stats.snapshot()["rejected"] == {"bad_sender": 2}
    # "7" and 7 no longer share a tracker: 7 is refused outright
    for seq in (0, 1):
        src.handle_message([json.dumps({"model": "mlp", "sender": "7", "seq": seq}).encode(), X.tobytes()], got)
    src.handle_message([b'{"model":"mlp","sender":7,"seq":5}', X.tobytes()], got)
    assert src.stats.lost_in_transit == 0


def test_sender_ts_and_bounded_metadata_reach_the_sample() -> None:
    src = ZmqSource(SPECS)
    got = Collector()
    meta = {"room": "b12", "gain": 2.5, "n": -3, "ok": True, "none": None, "k" * 64: "v" * 256}
    header = {"model": "mlp", "seq": 4, "ts": 1700000000.5, "sender": "ecg-1", "deadline_ms": 20, **meta}
    assert src.handle_message([json.dumps(header).encode(), X.tobytes()], got)
    s = got.samples[0]
    assert (s.sender, s.sender_ts, s.deadline_ms, s.seq, s.meta) == ("ecg-1", 1700000000.5, 20.0, 4, meta)
    # 16 keys is the limit (inclusive); 17 is bad_meta
    sixteen = {f"k{i}": i for i in range(16)}
    assert src.handle_message([json.dumps({"model": "mlp", **sixteen}).encode(), X.tobytes()], got)
    assert got.samples[-1].meta == sixteen
    for bad in ({"k" * 65: 1}, {"v": "v" * 257}, {"v": [1]}, {"v": 2**63}, {"v": float("nan")}):
        assert not src.handle_message([json.dumps({"model": "mlp", **bad}).encode(), X.tobytes()], got)
    assert src.stats.snapshot()["rejected"] == {"bad_meta": 5}


@pytest.mark.parametrize("name", ["float32", "f4", "<f4", "=f4", "f", "single"])
def test_numpy_equivalent_dtype_names_are_accepted(name: str) -> None:
    src = ZmqSource(SPECS)
    got = Collector()
    assert src.handle_message([json.dumps({"model": "mlp", "dtype": name}).encode(), X.tobytes()], got)
    assert np.array_equal(got.samples[0].array, X)


@pytest.mark.parametrize("name, words", [(">f4", "big-endian"), ("!f4", "big-endian"), ("float64", "'float64'"),
                                         ("i4", "'i4'"), ("nonsense", "not a numpy dtype"), ("f4,f4", "'f4,f4'")])
def test_other_dtype_names_are_refused_with_a_clear_reason(name: str, words: str) -> None:
    with pytest.raises(FrameError) as exc:
        check_header(SPECS, {"model": "mlp", "dtype": name})
    assert exc.value.reason == "dtype_mismatch" and words in exc.value.detail and "float32" in exc.value.detail


def test_one_frame_json_never_converts_strings_or_booleans_but_takes_ints_and_nesting() -> None:
    src = ZmqSource(SPECS)
    got = Collector()
    img = np.arange(64, dtype=np.float32).reshape(8, 8, 1)
    assert src.handle_message([json.dumps({"model": "cnn", "data": img.astype(int).tolist()}).encode()], got)
    assert np.array_equal(got.samples[0].array, img)
    assert src.handle_message([json.dumps({"model": "counts", "data": [1, 2, 3, 4]}).encode()], got)
    for data in (["1"] * 4, [1, 2, 3, True], "1,2,3,4", 7, [1, 2, None, 4], [1, 2, {"a": 1}, 4]):
        assert not src.handle_message([json.dumps({"model": "counts", "data": data}).encode()], got)
    assert src.stats.snapshot()["rejected"] == {"bad_values": 6}


def test_json_depth_is_bounded_before_parsing() -> None:
    assert json_depth(b"[" * 100_000) == 100_000
    assert json_depth(b'{"a":"' + b"[" * 100 + b'"}') == 1, "brackets inside strings do not nest"
    assert json_depth(b'{"a":"\\"' + b"[" * 100 + b'"}') == 1, "escaped quotes do not end a string"
    ok = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert json_depth(ok) == MAX_JSON_DEPTH
    src = ZmqSource(SPECS)
    got = Collector()
    assert src.handle_message([b'{"model":"mlp","data":' + b"[" * 31 + b",".join([b"1"] * 30) + b"]" * 31 + b"}"],
                              got), "32 levels (object + 31 lists) is within the limit"
    assert not src.handle_message([b'{"model":"mlp","data":' + b"[" * 32 + b"1" + b"]" * 32 + b"}"], got)
    assert src.stats.snapshot()["rejected"] == {"unparsable": 1}


def _deep_cobs_frame(payload: bytes) -> bytes:
    import struct
    import zlib

    from edged.sources.framing import cobs_encode

    head = b'{"model":"mlp","x":' + b"[" * 40 + b"]" * 40 + b"}"
    body = struct.pack("<H", len(head)) + head + payload
    body += struct.pack("<I", zlib.crc32(body))
    return b"\x00" + cobs_encode(body) + b"\x00"


def test_a_bare_cr_ends_a_line() -> None:
    src = SerialSource(SPECS, "loop://", framing="lines", default_model="mlp")
    got = Collector()
    rows = mlp_rows(3)
    src.feed(format_line(rows[0])[:-1] + b"\r" + format_line(rows[1])[:-1] + b"\r\n" + format_line(rows[2]), got)
    assert len(got) == 3 and src.stats.rejected_total == 0
    assert np.array_equal(np.stack([s.array for s in got.samples]), rows)


def test_serial_poison_lines_and_frames_cost_only_themselves() -> None:
    rej: List[Rejection] = []
    lines = SerialSource(SPECS, "loop://", framing="lines")
    lines.on_rejected = rej.append
    got = Collector()
    rows = mlp_rows(4)
    stream = b"".join([
        format_line(rows[0], "mlp"),
        b"mlp:" + b"1," * 10 + b"1\n",             # wrong_size, attributable
        b"mlp:nan" + b",1" * 29 + b"\n",           # non_finite, attributable
        b"mlp:1,x,3\n",                            # unparsable, attributable by its prefix
        b"vgg:1,2\n",                              # unknown model: counters only
        b"1e999" + b",1" * 29 + b"\n",             # no prefix, no default model: counters only
        format_line(rows[1], "mlp"),
        b"mlp:" + b"1" * 400 + b"0" * 5000 + b",1" * 29 + b"\n",  # a huge number: inf, non_finite
        format_line(rows[2], "mlp"),
    ])
    lines.feed(stream, got)
    assert len(got) == 3 and lines.stats.errors == 0
    assert [r.reason for r in rej] == ["wrong_size", "non_finite", "unparsable", "non_finite"]
    assert all(r.model == "mlp" and r.seq is None and r.sender is None for r in rej)

    cobs = SerialSource(SPECS, "loop://", framing="cobs")
    rej.clear()
    cobs.on_rejected = rej.append
    got = Collector()
    frames = [
        build_cobs_frame({"model": "mlp", "seq": 0, "sender": "u1"}, rows[0].tobytes()),
        build_cobs_frame({"model": "mlp", "seq": 1, "sender": "u1", "ts": 1.5}, NAN.tobytes()),
        build_cobs_frame({"model": "mlp", "seq": 2, "sender": 3}, rows[1].tobytes()),
        _deep_cobs_frame(rows[1].tobytes()),
        b"\x00\x05\x01\x02\x00",
        build_cobs_frame({"model": "mlp", "seq": 2, "sender": "u1"}, rows[1].tobytes()),
    ]
    cobs.feed(b"".join(frames), got)
    assert [s.seq for s in got.samples] == [0, 2] and got.samples[0].sender == "u1"
    snap = cobs.stats.snapshot()
    assert snap["rejected"] == {"non_finite": 1, "bad_sender": 1, "bad_header": 1, "bad_cobs": 1}
    assert snap["lost_in_transit"] == 0 and snap["errors"] == 0
    assert [(r.reason, r.sender, r.seq, r.sender_ts) for r in rej] == [
        ("non_finite", "u1", 1, 1.5), ("bad_sender", None, 2, None)]


def test_100000_unique_senders_keep_the_tracker_at_its_bound() -> None:
    stats = SourceStats("t", max_tracked=4096)
    for i in range(100_000):
        stats.track_seq((f"sender-{i}", "mlp"), 0)
        stats.note_rejected_seq((f"ghost-{i}", "mlp"), 5)  # refused inputs of unknown senders add nothing
    snap = stats.snapshot()
    assert snap["tracked_senders"] == 4096 and snap["senders_evicted"] == 100_000 - 4096
    assert snap["lost_in_transit"] == 0
    # least recently seen is evicted first: a sender kept busy survives the churn
    stats.track_seq(("busy", "mlp"), 0)
    for i in range(10_000):
        stats.track_seq((f"churn-{i}", "mlp"), 0)
        if i % 1000 == 0:
            stats.track_seq(("busy", "mlp"), i // 1000 + 1)
    stats.track_seq(("busy", "mlp"), 12)
    assert stats.lost_in_transit == 1, "'busy' was still tracked: its one gap (seq 11) is counted"


def test_100000_unique_senders_through_the_source_stay_bounded() -> None:
    src = ZmqSource(SPECS)
    got: List[Any] = []

    def sink(s: Any) -> bool:
        got.append(s.seq)
        return True

    row = X.tobytes()
    for i in range(100_000):
        src.handle_message([b'{"model":"mlp","seq":0,"sender":"s%06d"}' % i, row], sink)
    snap = src.stats.snapshot()
    assert len(got) == 100_000 and snap["tracked_senders"] == 4096 and snap["lost_in_transit"] == 0


def test_on_rejected_exceptions_are_contained_and_counted() -> None:
    src = ZmqSource(SPECS)

    def boom(_: Rejection) -> None:
        raise RuntimeError("callback bug")

    src.on_rejected = boom
    got = Collector()
    src.handle_burst(_burst([[b'{"model":"mlp"}', NAN.tobytes()], _valid(0), [b'{"model":"mlp","sender":1}',
                                                                                 X.tobytes()], _valid(1)]), got)
    assert len(got) == 2 and src.stats.errors == 2 and src.stats.rejected_total == 2


def test_a_sink_that_raises_costs_only_its_own_sample() -> None:
    src = ZmqSource(SPECS)
    seen: List[int] = []

    def sink(s: Any) -> bool:
        seen.append(s.seq)
        if s.seq == 1:
            raise RuntimeError("sink bug")
        return True

    src.handle_burst(_burst([_valid(i) for i in range(4)]), sink)
    src.handle_message(_valid(4), sink)
    assert seen == [0, 1, 2, 3, 4] and src.stats.errors == 1


def test_rejection_carries_what_the_header_said() -> None:
    src = ZmqSource(SPECS, name="zmq-a")
    rej: List[Rejection] = []
    src.on_rejected = rej.append
    header = {"model": "mlp", "seq": 9, "sender": "ecg", "ts": 12.5, "room": "b1", "big": "x" * 300}
    src.handle_message([json.dumps(header).encode(), NAN.tobytes()], Collector(), t_arrival=123.0)
    assert len(rej) == 1
    r = rej[0]
    assert (r.source, r.model, r.sender, r.seq, r.sender_ts, r.t_arrival) == ("zmq-a", "mlp", "ecg", 9, 12.5, 123.0)
    assert r.reason == "bad_meta" and r.meta == {"room": "b1"} and "300 bytes" in r.detail
    assert math.isfinite(r.ts_arrival) and r.ts_arrival > 1e9


def test_an_exception_nobody_expected_is_internal_error_for_that_message_only() -> None:
    """A catalogue entry edged cannot even lay out (a dtype numpy does not know) makes the validator raise
    TypeError: on both paths that costs exactly the messages for that model, counted as internal_error."""
    from edged.runtime.base import TensorSpec

    specs = dict(SPECS, broken=TensorSpec("input", (None, 3), "no_such_dtype", "NC"))
    src = ZmqSource(specs)
    rej: List[Rejection] = []
    src.on_rejected = rej.append
    got = Collector()
    broken = [b'{"model":"broken","seq":0}', b"\x00" * 12]
    src.handle_burst(_burst([_valid(0), broken, _valid(1), broken, _valid(2)]), got)
    src.handle_message([b'{"model":"broken","data":[1,2,3]}'], got)
    assert [s.seq for s in got.samples] == [0, 1, 2]
    snap = src.stats.snapshot()
    assert snap["rejected"] == {"internal_error": 3} and snap["errors"] >= 3
    assert [r.model for r in rej] == ["broken"] * 3 and "TypeError" in rej[0].detail


def test_an_oversize_message_with_a_small_header_is_attributed() -> None:
    src = ZmqSource(SPECS, max_msg_bytes=1000)
    rej: List[Rejection] = []
    src.on_rejected = rej.append
    src.handle_message([b'{"model":"mlp","seq":3,"sender":"cam"}', b"\x00" * 2000], Collector())
    assert [(r.reason, r.model, r.seq, r.sender) for r in rej] == [("oversize", "mlp", 3, "cam")]
