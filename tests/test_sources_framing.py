"""COBS codec (cross-checked against the ``cobs`` package), CRC frames, deframers, line parsing."""

from __future__ import annotations

import json
import random
import struct
import zlib

import pytest
from cobs import cobs as ref

from edged.sources.framing import (
    CobsDeframer,
    FrameError,
    LineDeframer,
    build_body,
    build_cobs_frame,
    cobs_decode,
    cobs_encode,
    format_line,
    parse_body,
    parse_line,
)


def _random_bytes(rng: random.Random, n: int, zero_p: float) -> bytes:
    return bytes(0 if rng.random() < zero_p else rng.randrange(1, 256) for _ in range(n))


def test_cobs_matches_reference_package_on_edge_and_random_inputs() -> None:
    rng = random.Random(7)
    cases = [b"", b"\x00", b"\x00\x00", b"\x01", b"\xff" * 253, b"\xff" * 254, b"\xff" * 255, b"\xff" * 254 + b"\x00",
             b"\x00" + b"\x11" * 508, b"\x11" * 508 + b"\x00"]
    cases += [_random_bytes(rng, rng.randrange(0, 1200), rng.choice([0.0, 0.01, 0.2, 0.9])) for _ in range(400)]
    for data in cases:
        enc = cobs_encode(data)
        assert enc == ref.encode(data)
        assert b"\x00" not in enc
        assert cobs_decode(enc) == data == ref.decode(enc)


def test_cobs_decode_rejects_invalid_input() -> None:
    for bad in (b"\x05\x01\x02", b"\x00\x01", b"\x03\x01\x00"):
        with pytest.raises(FrameError) as exc:
            cobs_decode(bad)
        assert exc.value.reason == "bad_cobs"


def test_frame_layout_is_header_len_header_payload_crc() -> None:
    body = build_body({"model": "mlp", "seq": 3}, b"\x01\x02")
    head = b'{"model":"mlp","seq":3}'
    assert body[:2] == struct.pack("<H", len(head))
    assert body[2 : 2 + len(head)] == head
    assert body[2 + len(head) : -4] == b"\x01\x02"
    assert body[-4:] == struct.pack("<I", zlib.crc32(body[:-4]))
    frame = build_cobs_frame({"model": "mlp", "seq": 3}, b"\x01\x02")
    assert frame[0] == 0 and frame[-1] == 0 and b"\x00" not in frame[1:-1]
    assert parse_body(cobs_decode(frame[1:-1])) == ({"model": "mlp", "seq": 3}, b"\x01\x02")


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"\x01\x00\x02", "truncated"),
        (struct.pack("<H", 50) + b"{}" + b"\x00" * 4, "truncated"),
        (build_body({"model": "x"}, b"abc")[:-1] + b"\x00", "bad_crc"),
    ],
)
def test_parse_body_reasons(body: bytes, reason: str) -> None:
    with pytest.raises(FrameError) as exc:
        parse_body(body)
    assert exc.value.reason == reason


def test_parse_body_bad_header_after_valid_crc() -> None:
    raw = struct.pack("<H", 5) + b"[1,2]"
    with pytest.raises(FrameError) as exc:
        parse_body(raw + struct.pack("<I", zlib.crc32(raw)))
    assert exc.value.reason == "bad_header"


def test_cobs_deframer_handles_any_chunking() -> None:
    frames = [build_cobs_frame({"model": "m", "seq": i}, bytes(range(i % 7, 40))) for i in range(50)]
    stream = b"".join(frames)
    for chunk in (1, 3, 17, len(stream)):
        d = CobsDeframer(max_frame_bytes=1000)
        got = []
        for i in range(0, len(stream), chunk):
            for seg, err in d.feed(stream[i : i + chunk]):
                assert err is None
                got.append(parse_body(cobs_decode(seg))[0]["seq"])
        assert got == list(range(50))


def test_cobs_deframer_oversize_is_skipped_to_next_delimiter_without_buffering() -> None:
    d = CobsDeframer(max_frame_bytes=100)
    out = list(d.feed(b"\x00" + b"\x07" * 150))
    assert out == [] and d.pending == 0  # dropped already, not buffered
    out = list(d.feed(b"\x07" * 10 + build_cobs_frame({"model": "m"})))
    assert out[0][1] is not None and out[0][1].reason == "oversize" and out[0][1].nbytes == 160
    assert out[1][1] is None and parse_body(cobs_decode(out[1][0]))[0] == {"model": "m"}


def test_line_deframer_crlf_blank_and_oversize() -> None:
    d = LineDeframer(max_frame_bytes=20)
    out = list(d.feed(b"1,2\r\n\r\n\n3 4\n" + b"9" * 30 + b"\n5\n"))
    assert [s for s, e in out if e is None] == [b"1,2", b"3 4", b"5"]
    errs = [e for _, e in out if e is not None]
    assert len(errs) == 1 and errs[0].reason == "oversize"


def test_parse_line_forms() -> None:
    assert parse_line(b"1, 2 3,4") == (None, [1.0, 2.0, 3.0, 4.0])
    assert parse_line(b"cnn: -1e-3,  2.5") == ("cnn", [-0.001, 2.5])
    model, values = parse_line(b"nan inf")
    assert model is None and len(values) == 2
    for bad in (b"1,2,x", b"mlp:", b":1,2", b"\xff:1"):
        with pytest.raises(FrameError) as exc:
            parse_line(bad)
        assert exc.value.reason == "unparsable"


def test_format_line_round_trips_float32() -> None:
    import numpy as np

    x = np.random.default_rng(1).standard_normal(30).astype(np.float32)
    model, values = parse_line(format_line(x, "mlp").rstrip(b"\n"))
    assert model == "mlp"
    assert np.array_equal(np.asarray(values, dtype=np.float32), x)


def test_header_json_is_compact_utf8() -> None:
    body = build_body({"model": "mlp", "note": "µ"})
    n = struct.unpack_from("<H", body)[0]
    assert json.loads(body[2 : 2 + n].decode("utf-8"))["note"] == "µ"
