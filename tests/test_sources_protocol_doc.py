"""docs/protocol.md stays true: its byte examples and its C encoder match edged's code."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict

import numpy as np
import pytest

from edged.sources.base import Rejection
from edged.sources.framing import (
    build_body,
    build_cobs_frame,
    build_tensor_frames,
    cobs_decode,
    parse_body,
    parse_line,
)
from edged.sources.validate import InputContract, ModelContract
from edged.sources.zmq import ZmqSource
from tests.helpers_ingest import Collector, hexdump, protocol_examples

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def _doc_examples() -> Dict[str, str]:
    text = DOC.read_text(encoding="utf-8")
    return {m.group(1): m.group(2).rstrip("\n")
            for m in re.finditer(r"<!-- example:([\w-]+) -->\n```[a-z]*\n(.*?)```", text, re.S)}


#: the doc's v2 example model: data inputs x (3 x float32) and sr (1 x int64), state h; a dynamic image model
V2_CONTRACTS = {
    "vad": ModelContract("vad", [InputContract("x", (3,), "float32"), InputContract("h", (8,), "float32", state=True),
                                 InputContract("sr", (1,), "int64")], "x"),
    "seg": ModelContract("seg", [InputContract("img", (None, None, 3), "uint8")], "img"),
}
V2_X = np.array([1.0, -2.5, 0.0], dtype=np.float32)
V2_SR = np.array([16000], dtype=np.int64)
V2_COBS_HEADER = {"model": "vad", "seq": 7, "tensors": [{"name": "x"}, {"name": "sr"}]}


def v2_examples() -> Dict[str, str]:
    """The v2 worked examples of docs/protocol.md section 4, computed by the real encoder and validator."""
    import json

    header = {"model": "vad", "seq": 7}
    frames = build_tensor_frames(header, {"x": V2_X, "sr": V2_SR})
    payload = V2_X.tobytes() + V2_SR.tobytes()
    src = ZmqSource(V2_CONTRACTS)
    details: Dict[str, str] = {}

    def keep(r: Rejection) -> None:
        details.setdefault(r.reason, r.detail)

    src.on_rejected = keep
    src.handle_message([json.dumps(header).encode(), V2_X.tobytes()], Collector())
    src.handle_message([json.dumps({"model": "seg", "seq": 7}).encode(), b"\x00" * 12], Collector())
    src.handle_message(build_tensor_frames(header, {"x": V2_X, "sr": V2_SR, "gain": V2_X}), Collector())
    got = Collector()  # and the examples themselves are accepted
    src.handle_message(frames, got)
    src.handle_message([json.dumps({"model": "vad", "seq": 8, "inputs": {"x": V2_X.tolist(), "sr": [16000]}})
                        .encode()], got)
    assert len(got) == 2 and all(np.array_equal((s.feeds or {})["sr"], V2_SR) for s in got.samples)
    return {
        "v2-missing-input": details["missing_input"],
        "v2-missing-shape": details["missing_shape"],
        "v2-unknown-input": details["unknown_input"],
        "v2-zmq-header": frames[0].decode(),
        "v2-zmq-frame-x": hexdump(frames[1]),
        "v2-zmq-frame-sr": hexdump(frames[2]),
        "v2-json": json.dumps({"model": "vad", "seq": 7, "inputs": {"x": V2_X.tolist(), "sr": V2_SR.tolist()}}),
        "v2-cobs-header": json.dumps(V2_COBS_HEADER, separators=(",", ":")),
        "v2-cobs-body": hexdump(build_body(V2_COBS_HEADER, payload)),
        "v2-cobs-frame": hexdump(build_cobs_frame(V2_COBS_HEADER, payload)),
    }


def test_every_v2_example_in_the_doc_is_what_the_code_produces() -> None:
    doc = _doc_examples()
    for name, expected in v2_examples().items():
        assert name in doc, f"example {name!r} missing from {DOC}"
        assert doc[name] == expected, f"example {name!r} in {DOC} is stale; regenerate from v2_examples()"


def test_the_doc_cobs_v2_frame_is_a_valid_input() -> None:
    from edged.sources.serial import SerialSource

    src = SerialSource(V2_CONTRACTS, "loop://", framing="cobs")
    got = Collector()
    src.feed(build_cobs_frame(V2_COBS_HEADER, V2_X.tobytes() + V2_SR.tobytes()), got)
    assert len(got) == 1 and np.array_equal(got.samples[0].array, V2_X)
    assert np.array_equal((got.samples[0].feeds or {})["sr"], V2_SR)


def test_every_byte_example_in_the_doc_is_what_the_code_produces() -> None:
    doc = _doc_examples()
    for name, expected in protocol_examples().items():
        assert name in doc, f"example {name!r} missing from {DOC}"
        assert doc[name] == expected, f"example {name!r} in {DOC} is stale; regenerate from protocol_examples()"


_C_MAIN = r"""
#include <stdio.h>
static void put(uint8_t b) { putchar(b); }
int main(void) {
    float x[3] = {1.0f, -2.5f, 0.0f};
    edged_send_frame(put, "{\"model\":\"demo\",\"seq\":7}", x, sizeof x);
    static unsigned char big[1000];
    for (int i = 0; i < 1000; i++) big[i] = (unsigned char)((i * 7) % 256 ? (i * 7) % 256 : 1);
    for (int n = 250; n <= 262; n++) edged_send_frame(put, "{\"model\":\"raw\"}", big, (size_t)n);
    edged_send_frame(put, "{\"model\":\"raw\"}", big, 1000);
    return 0;
}
"""


@pytest.mark.timeout(60)
@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler on this machine")
def test_c_encoder_sketch_compiles_and_matches_python(tmp_path: Path) -> None:
    src = tmp_path / "enc.c"
    src.write_text(_doc_examples()["c-encoder"] + _C_MAIN)
    exe = tmp_path / "enc"
    subprocess.run(["cc", "-std=c99", "-Wall", "-Werror", "-O1", "-o", str(exe), str(src)], check=True, timeout=60)
    out = subprocess.run([str(exe)], capture_output=True, check=True, timeout=30).stdout
    big = bytes((i * 7) % 256 or 1 for i in range(1000))
    x = np.array([1.0, -2.5, 0.0], np.float32).tobytes()
    frames = [seg for seg in out.split(b"\x00") if seg]
    assert out.startswith(build_cobs_frame({"model": "demo", "seq": 7}, x))
    expected = [({"model": "demo", "seq": 7}, x)] + [({"model": "raw"}, big[:n]) for n in range(250, 263)]
    expected.append(({"model": "raw"}, big))
    assert [parse_body(cobs_decode(seg)) for seg in frames] == expected


_C_MAIN_V2 = r"""
#include <stdio.h>
static void put(uint8_t b) { putchar(b); }
int main(void) {
    float x[3] = {1.0f, -2.5f, 0.0f};
    int64_t sr[1] = {16000};
    const void *parts[2] = {x, sr};
    const size_t sizes[2] = {sizeof x, sizeof sr};
    edged_send_tensors(put, "{\"model\":\"vad\",\"seq\":7,\"tensors\":[{\"name\":\"x\"},{\"name\":\"sr\"}]}",
                       parts, sizes, 2);
    static unsigned char big[600];
    for (int i = 0; i < 600; i++) big[i] = (unsigned char)((i * 7) % 256 ? (i * 7) % 256 : 1);
    const void *bparts[2] = {big, big + 300};
    const size_t bsizes[2] = {300, 300};
    edged_send_tensors(put, "{\"model\":\"raw\"}", bparts, bsizes, 2);
    return 0;
}
"""


@pytest.mark.timeout(60)
@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler on this machine")
def test_c_encoder_v2_sketch_compiles_and_matches_python(tmp_path: Path) -> None:
    doc = _doc_examples()
    src = tmp_path / "enc2.c"
    src.write_text(doc["c-encoder"] + doc["c-encoder-v2"] + _C_MAIN_V2)
    exe = tmp_path / "enc2"
    subprocess.run(["cc", "-std=c99", "-Wall", "-Werror", "-O1", "-o", str(exe), str(src)], check=True, timeout=60)
    out = subprocess.run([str(exe)], capture_output=True, check=True, timeout=30).stdout
    big = bytes((i * 7) % 256 or 1 for i in range(600))
    assert out == build_cobs_frame(V2_COBS_HEADER, V2_X.tobytes() + V2_SR.tobytes()) + \
        build_cobs_frame({"model": "raw"}, big)


_ARDUINO_MAIN = r"""
#include <cstdio>
#include <cstring>
#include <cstdint>
struct StandInSerial {
    void print(const char *s) { std::fputs(s, stdout); }
    void print(char c) { std::putchar(c); }
} Serial;
int main() {
    static const uint32_t bits[30] = {BITS};
    float x[30];
    std::memcpy(x, bits, sizeof x);
SKETCH
    return 0;
}
"""


@pytest.mark.timeout(60)
@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler on this machine")
def test_arduino_lines_sketch_prints_values_edged_reads_back_bit_for_bit(tmp_path: Path) -> None:
    """The doc's Arduino `lines` loop, compiled against a stand-in Serial: 9 significant digits
    round-trip float32 exactly, including tiny, huge, subnormal and negative-zero values."""
    x = np.random.default_rng(9).standard_normal(30).astype(np.float32)
    x[:8] = np.array([1.2345678e-7, 3.4028235e38, -1.1754944e-38, 1e-45, -0.0, 1 / 3, 16777217.0, 4294967296.0],
                     dtype=np.float32)
    bits = ", ".join(f"0x{b:08x}u" for b in x.view(np.uint32))
    code = _ARDUINO_MAIN.replace("BITS", bits).replace("SKETCH", _doc_examples()["arduino-lines"])
    src = tmp_path / "lines.cpp"
    src.write_text(code)
    exe = tmp_path / "lines"
    subprocess.run(["c++", "-Wall", "-Werror", "-O1", "-o", str(exe), str(src)], check=True, timeout=60)
    out = subprocess.run([str(exe)], capture_output=True, check=True, timeout=30).stdout
    assert out.endswith(b"\n") and out.count(b"\n") == 1
    model, values = parse_line(out.rstrip(b"\n"))
    assert model == "mlp"
    got = np.asarray(values, dtype=np.float32)
    assert np.array_equal(got.view(np.uint32), x.view(np.uint32)), "every float32 read back bit for bit"
