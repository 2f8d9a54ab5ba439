"""Serial reply sink: a pty reader (the MCU's side) gets the text and COBS replies, decoded correctly;
the C decoder of docs/results.md, compiled, reads edged's COBS replies; the doc examples are the code's."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import pytest

from edged.sinks import Result, SinkSet, build_sinks, parse_sink_config
from edged.sinks.serial import ReplyBuffer, SerialReplySink, SerialSinkConfig, cobs_reply, text_reply
from edged.sources.framing import CobsDeframer, cobs_decode, parse_body
from edged.sources.serial import open_port

from .helpers_ingest import PtyPair, hexdump
from .helpers_sinks import model_results, record, rejected_result, two_output_result

DOC = Path(__file__).resolve().parent.parent / "docs" / "results.md"


def _classifier_result(seq: int = 7) -> Result:
    rec = record("mlp", seq, result={"probs": {"label": 1, "name": "benign", "score": 0.998,
                                               "top": [[1, 0.998], [0, 0.002]]}})
    return Result(rec, {"probs": np.array([0.002, 0.998], np.float32)})


def reply_examples() -> Dict[str, str]:
    """The worked examples of docs/results.md, computed by the sink's encoders."""
    r = _classifier_result()
    return {"reply-text": text_reply(r, SerialSinkConfig()).decode().rstrip("\n"),
            "reply-cobs-frame": hexdump(cobs_reply(r, SerialSinkConfig(form="cobs")))}


def _doc_blocks() -> Dict[str, str]:
    text = DOC.read_text(encoding="utf-8")
    return {m.group(1): m.group(2).rstrip("\n")
            for m in re.finditer(r"<!-- example:([\w-]+) -->\n```[a-z]*\n(.*?)```", text, re.S)}


def test_doc_examples_are_what_the_code_produces():
    doc = _doc_blocks()
    for name, want in reply_examples().items():
        assert doc.get(name) == want, f"example {name!r} in {DOC} is stale:\n{want}"


def _reply_buffer(path: str, max_bytes: int = 65536) -> Tuple[Any, ReplyBuffer]:
    """The port opened as the serial source opens it, with the ReplyBuffer it would own."""
    port = open_port(path, 115200)
    buf = ReplyBuffer(max_bytes)
    buf.attach(port)
    return port, buf


def _read_all(fd: int, idle_s: float = 0.3) -> bytes:
    out = bytearray()
    while True:
        r, _, _ = select.select([fd], [], [], idle_s)
        if not r:
            return bytes(out)
        out += os.read(fd, 65536)


def _sink(form: str, writer_for: Callable[[str], Optional[Callable[[bytes], bool]]], **kw) -> SerialReplySink:
    cfg = parse_sink_config({"type": "serial", "form": form, **kw}, "sinks[0]")
    sinks = build_sinks([cfg], writer_for=writer_for)
    sink = sinks.sinks[0]
    assert isinstance(sink, SerialReplySink)
    return sink


def _from_pty(catalogue, n: int = 40) -> List[Result]:
    rs = model_results(catalogue, n, source="serial:/dev/ttyUSB0")
    return rs


def test_pty_reader_gets_text_replies(catalogue):
    pty = PtyPair()
    port, rb = _reply_buffer(pty.path)
    w = rb.write
    try:
        results = _from_pty(catalogue)
        results.append(rejected_result(500, source="serial:/dev/ttyUSB0"))
        reg = Result(record("depth", 3, source="serial:/dev/ttyUSB0",
                            result={"d": {"values": [0.25, 1.5], "n": 2}}), {"d": np.array([0.25, 1.5], np.float32)})
        emb = Result(record("emb", 4, source="serial:/dev/ttyUSB0",
                            result={"e": {"shape": [20], "dtype": "float32", "min": 0, "max": 1, "mean": 0.5}}),
                     {"e": np.arange(20, dtype=np.float32) / 8})
        zmq_one = model_results(catalogue, 1, source="zmq")[0]  # not from this port: no reply
        sink = _sink("text", lambda src: w if src == "serial:/dev/ttyUSB0" else None)
        SinkSet([sink]).publish_many(results + [reg, emb, zmq_one])
        lines = _read_all(pty.master).decode("ascii").split("\n")
        assert lines[-1] == ""
        lines = lines[:-1]
        assert len(lines) == len(results) + 2
        for r, line in zip(results[:-1], lines):
            p = r.outputs["probs"]
            m = re.fullmatch(r"mlp:(\d+),([0-9.e-]+)", line)
            assert m, line
            assert int(m.group(1)) == int(p.argmax())
            assert float(m.group(2)) == pytest.approx(float(p.max()), rel=1e-5)
        assert lines[len(results) - 1] == "mlp:!rejected,non_finite"
        assert lines[-2] == "depth:0.25,1.5"
        assert lines[-1] == "emb:" + ",".join(f"{v:.6g}" for v in (np.arange(16) / 8)) + ",..."
        st = sink.stats()
        assert st["published"] == len(results) + 2 and st["unroutable"] == 1 and st["dropped"] == 0
    finally:
        port.close()
        pty.close()


def test_pty_reader_gets_cobs_replies_with_equal_outputs(catalogue):
    pty = PtyPair()
    port, rb = _reply_buffer(pty.path)
    w = rb.write
    try:
        results = _from_pty(catalogue, 30)
        two = two_output_result(1)
        two.record["source"] = "serial:/dev/ttyUSB0"
        results += [two, rejected_result(77, source="serial:/dev/ttyUSB0")]
        sink = _sink("cobs", lambda src: w)
        sink.publish_many(results)
        raw = _read_all(pty.master)
        frames = [parse_body(cobs_decode(seg)) for seg, err in CobsDeframer().feed(raw) if err is None]
        assert len(frames) == len(results)
        for r, (head, payload) in zip(results, frames):
            rec = r.record
            assert head["model"] == rec["model"] and head["seq"] == rec["seq"] and head["decision"] == rec["decision"]
            want = r.outputs or {}
            assert [d["name"] for d in head["outputs"]] == list(want)
            off = 0
            for d in head["outputs"]:
                a = want[d["name"]]
                n = a.nbytes
                got = np.frombuffer(payload[off:off + n], np.dtype(d["dtype"]).newbyteorder("<")).reshape(d["shape"])
                assert np.array_equal(got, a)
                off += n
            assert off == len(payload)
            if rec["model"] == "mlp" and rec["decision"] == "local":
                assert head["label"] == int(r.outputs["probs"].argmax())
        assert frames[-1][0]["reason"] == "non_finite" and frames[-1][1] == b""
    finally:
        port.close()
        pty.close()


def test_an_mcu_that_stops_reading_never_blocks_and_gets_only_whole_replies(catalogue):
    pty = PtyPair()
    port, buf = _reply_buffer(pty.path, max_bytes=8192)
    try:
        results = _from_pty(catalogue, 256)
        sink = _sink("text", lambda src: buf.write, seq=True)
        for _ in range(40):  # ~10 000 replies (~230 kB) at a reader that reads nothing; pytest timeout = blocked
            for i in range(0, len(results), 32):
                sink.publish_many(results[i:i + 32])
        st = sink.stats()
        assert st["dropped"] > 0 and st["published"] > 0
        received = bytearray()
        while True:  # the MCU reads again; the source's loop keeps flushing
            buf.flush()
            chunk = _read_all(pty.master, idle_s=0.2)
            received += chunk
            if not chunk and buf.pending == 0:
                break
        lines = received.decode("ascii").split("\n")
        assert lines[-1] == ""
        assert len(lines) - 1 == st["published"]
        assert all(re.fullmatch(r"mlp@\d+:\d+,[0-9.e-]+", ln) for ln in lines[:-1])  # none cut
        assert buf.written_bytes == len(received) and buf.lost_bytes == 0
    finally:
        port.close()
        pty.close()
    assert buf.detach() == 0


def test_loop_url_and_a_busy_port_counts_drops(catalogue):
    port, rb = _reply_buffer("loop://")  # no file descriptor: ReplyBuffer writes through port.write
    results = _from_pty(catalogue, 5)
    busy = [True, False, True, False, True]
    calls = iter(busy)
    writes: List[bytes] = []

    def write(data: bytes) -> bool:
        writes.append(data)
        return next(calls) and rb.write(data)

    sink = _sink("text", lambda src: write, seq=True)
    for r in results:  # one result per call, as with batch 1
        sink.publish_many([r])
    got = port.read(4096).decode().splitlines()
    assert [ln.split(":")[0] for ln in got] == [f"mlp@{r.record['seq']}" for r, ok in zip(results, busy) if ok]
    st = sink.stats()
    assert st["published"] == 3 and st["dropped"] == 2
    # a batch goes to its port in one write, whole or not at all
    calls = iter([False, True])
    sink.publish_many(results)
    assert sink.stats()["dropped"] == 7 and port.read(4096) == b""
    sink.publish_many(results)
    assert len(writes) == 7 and writes[-1].count(b"\n") == 5
    assert port.read(4096).decode().splitlines() == [ln.decode() for ln in writes[-1].splitlines()]
    assert sink.stats()["published"] == 8
    port.close()


def test_oversize_cobs_reply_is_sent_without_payload():
    big = Result(record("seg", 1, source="s", result={"mask": {"shape": [64, 64]}}),
                 {"mask": np.zeros((64, 64), np.float32)})
    head, payload = parse_body(cobs_decode(cobs_reply(big, SerialSinkConfig(form="cobs"))[1:-1]))
    assert head["outputs_omitted"] is True and payload == b"" and head["outputs"][0]["shape"] == [64, 64]


_C_MAIN = r"""
#include <stdio.h>
static void on_reply(const char *h, size_t hn, const uint8_t *p, size_t pn) {
    long label = -1, seq = -1;
    int has_label = edged_header_int(h, hn, "label", &label);
    edged_header_int(h, hn, "seq", &seq);
    printf("reply seq=%ld label=%ld has_label=%d header=%.*s payload=", seq, label, has_label, (int)hn, h);
    for (size_t i = 0; i < pn; i++) printf("%02x", p[i]);
    printf("\n");
}
int main(void) {
    static edged_rx rx;
    rx.on_reply = on_reply;
    int c;
    while ((c = getchar()) != EOF) edged_rx_byte(&rx, (uint8_t)c);
    printf("bad=%u\n", (unsigned)rx.bad);
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler on this machine")
def test_c_decoder_sketch_reads_edged_replies(tmp_path, catalogue):
    code = _doc_blocks()["c-reply-decoder"]
    src = tmp_path / "dec.c"
    src.write_text(code + "\n" + _C_MAIN)
    exe = tmp_path / "dec"
    subprocess.run(["cc", "-std=c99", "-Wall", "-Werror", "-O1", "-DEDGED_RX_MAX=2048", "-o", str(exe), str(src)],
                   check=True, timeout=60)
    results = _from_pty(catalogue, 20) + [two_output_result(3), rejected_result(99)]
    cfg = SerialSinkConfig(form="cobs")
    frames = [cobs_reply(r, cfg) for r in results]
    corrupt = bytearray(frames[0])
    corrupt[20] ^= 0x01  # CRC mismatch
    too_long = b"\x00" + b"\x11" * 3000 + b"\x00"  # longer than EDGED_RX_MAX
    stream = b"garbage\x01\x02" + frames[0] + bytes(corrupt) + too_long + b"".join(frames[1:])
    out = subprocess.run([str(exe)], input=stream, capture_output=True, check=True, timeout=30).stdout.decode()
    lines = out.splitlines()
    assert lines[-1] == "bad=3"  # the garbage, the corrupted frame, the oversize run
    replies = lines[:-1]
    assert len(replies) == len(results)
    for r, f, line in zip(results, frames, replies):
        head, payload = parse_body(cobs_decode(f[1:-1]))
        m = re.fullmatch(r"reply seq=(-?\d+) label=(-?\d+) has_label=(\d) header=(.*) payload=([0-9a-f]*)", line)
        assert m, line
        assert json.loads(m.group(4)) == head
        assert bytes.fromhex(m.group(5)) == payload
        assert int(m.group(1)) == r.record["seq"]
        if "label" in head:
            assert m.group(3) == "1" and int(m.group(2)) == head["label"]
        else:
            assert m.group(3) == "0"


def test_text_reply_never_carries_separators_from_a_reason():
    r = Result(record("mlp", 1, decision="rejected", reason="bad,reason\nwith: stuff"), None)
    assert text_reply(r, SerialSinkConfig()) == b"mlp:!rejected,bad_reason_with__stuff\n"
    r2 = Result(record("mlp", 2, error="fog: timeout, then local failed"), None)
    assert text_reply(r2, SerialSinkConfig()).startswith(b"mlp:!error,fog__timeout__then_local_failed")


def test_v1_result_form_is_understood():
    r = Result(record("mlp", 1, result={"label": 0, "score": 0.75}), {"probs": np.array([0.75, 0.25], np.float32)})
    assert text_reply(r, SerialSinkConfig()) == b"mlp:0,0.75\n"
    head, _ = parse_body(cobs_decode(cobs_reply(r, SerialSinkConfig(form="cobs"))[1:-1]))
    assert head["label"] == 0 and head["score"] == 0.75


def test_writer_that_raises_costs_only_its_result(catalogue):
    results = _from_pty(catalogue, 4)
    seen: List[bytes] = []

    def flaky(data: bytes) -> bool:
        if len(seen) == 1:
            seen.append(b"boom")
            raise OSError(5, "Input/output error")
        seen.append(data)
        return True

    sink = _sink("text", lambda src: flaky)
    sinks = SinkSet([sink])
    for r in results:
        sinks.publish_many([r])
    st = sink.stats()
    assert st["errors"] == 1 and st["published"] == 3
