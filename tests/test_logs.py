"""edged.logs: line-atomic writer, rotation, reopen, torn lines, follow mode, encoding, journald handler."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import numpy as np
import pytest

from edged.logs import (
    JournalHandler,
    JsonlWriter,
    LogReader,
    ReadStats,
    encode_record,
    iter_records,
    log_files,
    read_records,
    setup_logging,
)

PAD = "x" * 120


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def _all_lines(path: Path) -> List[str]:
    lines: List[str] = []
    for f in log_files(path):
        with open(f, encoding="ascii") as fh:
            lines.extend(fh.read().splitlines())
    return lines


@pytest.mark.timeout(60)
def test_rotation_under_load_from_threads_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    max_bytes = 16_000
    writer = JsonlWriter(path, max_bytes=max_bytes, backups=10_000)
    n_threads, per_thread = 4, 1500

    def work(t: int) -> None:
        for i in range(per_thread):
            writer.write({"thread": t, "i": i, "pad": PAD, "x": np.float32(i) / 3})

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    writer.close()

    st = writer.stats()
    assert st["lines"] == n_threads * per_thread and st["errors"] == 0
    assert st["rotations"] > 10
    files = log_files(path)
    assert len(files) == st["rotations"] + 1
    for f in files:
        assert os.path.getsize(f) <= max_bytes, f
        with open(f, "rb") as fh:
            assert fh.read().endswith(b"\n"), f"{f} ends inside a line"
    lines = _all_lines(path)
    assert len(lines) == n_threads * per_thread
    keys = [(r["thread"], r["i"]) for r in map(json.loads, lines)]
    assert len(set(keys)) == len(keys)
    stats = ReadStats()
    records = read_records(path, stats=stats)
    assert len(records) == n_threads * per_thread and stats.bad == 0 and stats.torn == 0
    # oldest first: each thread's own records come back in the order it wrote them
    for t in range(n_threads):
        assert [r["i"] for r in records if r["thread"] == t] == list(range(per_thread))


def test_backups_limit_keeps_newest(tmp_path: Path) -> None:
    path = tmp_path / "power.jsonl"
    with JsonlWriter(path, max_bytes=2_000, backups=2) as w:
        for i in range(200):
            w.write({"i": i, "pad": PAD})
    files = log_files(path)
    assert [Path(f).name for f in files] == ["power.jsonl.2", "power.jsonl.1", "power.jsonl"]
    got = [r["i"] for r in read_records(path)]
    assert got == list(range(200 - len(got), 200))


def test_reopen_after_external_rename_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    w = JsonlWriter(path, max_bytes=0)
    for i in range(100):
        w.write({"seq": i})
    os.rename(path, str(path) + "-20240601")  # logrotate (nocreate) renames ...
    for i in range(100, 150):
        w.write({"seq": i})  # ... the daemon keeps appending to the renamed file until SIGHUP
    time.sleep(0.02)  # distinct mtimes order the files
    w.reopen()
    assert path.exists() and path.stat().st_size == 0
    for i in range(150, 200):
        w.write({"seq": i})
    w.close()
    assert w.stats()["reopens"] == 1 and w.stats()["lines"] == 200
    assert [r["seq"] for r in read_records(path)] == list(range(200))
    assert [r["seq"] for r in read_records(tmp_path)] == list(range(200))  # a directory means decisions.jsonl


def test_torn_last_line_is_skipped_and_terminated_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    with JsonlWriter(path) as w:
        for i in range(3):
            w.write({"seq": i})
    with open(path, "ab") as f:  # what kill -9 in the middle of a write leaves
        f.write(b'{"seq": 3, "decis')
    stats = ReadStats()
    assert [r["seq"] for r in iter_records(path, stats=stats)] == [0, 1, 2]
    assert stats.torn == 1 and stats.bad == 0
    # the restarted daemon terminates the torn line, so its next record is not glued onto it
    with JsonlWriter(path) as w:
        w.write({"seq": 4})
    stats = ReadStats()
    assert [r["seq"] for r in read_records(path, stats=stats)] == [0, 1, 2, 4]
    assert stats.bad == 1 and stats.torn == 0


def test_unparsable_and_non_object_lines_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"a":1}\nnot json\n[1,2]\n\n{"a":2}\n')
    stats = ReadStats()
    assert [r["a"] for r in iter_records(path, stats=stats)] == [1, 2]
    assert stats.bad == 2 and stats.records == 2


def test_missing_file_without_follow_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list(iter_records(tmp_path / "nope.jsonl"))
    with pytest.raises(FileNotFoundError):
        read_records(tmp_path / "nope.jsonl")


def test_follow_lockstep_across_own_rotation_and_logrotate_rename(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    w = JsonlWriter(path, max_bytes=1_000, backups=50)
    reader = LogReader(path, follow=True)
    seen: List[int] = []
    seq = 0
    for _round in range(5):
        for _ in range(7):  # ~7 * 140 bytes: at most one rotation per round
            w.write({"seq": seq, "pad": PAD})
            seq += 1
        seen += [r["seq"] for r in reader.read_available()]
    assert w.stats()["rotations"] >= 3
    # logrotate style: rename, daemon still appends to the old inode, then SIGHUP reopen
    os.rename(path, str(path) + "-1")
    w.write({"seq": seq})
    seq += 1
    seen += [r["seq"] for r in reader.read_available()]
    w.reopen()  # new, empty file: the reader keeps draining the old one until the new one has data
    seen += [r["seq"] for r in reader.read_available()]
    with open(str(path) + "-1", "ab") as f:  # a last line on the old inode is still picked up
        f.write(encode_record({"seq": seq}))
    seq += 1
    for _ in range(3):
        w.write({"seq": seq})
        seq += 1
    seen += [r["seq"] for r in reader.read_available()]
    w.close()
    reader.close()
    assert seen == list(range(seq))
    assert reader.stats.files >= 5 and reader.stats.torn == 0


def test_follow_waits_for_the_rest_of_a_line_and_for_the_file(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    reader = LogReader(path, follow=True)  # missing file: fine in follow mode
    assert reader.read_available() == []
    with open(path, "ab") as f:
        f.write(b'{"seq":0}\n{"seq":')
        f.flush()
        assert [r["seq"] for r in reader.read_available()] == [0]
        f.write(b"1}\n")
        f.flush()
        assert [r["seq"] for r in reader.read_available()] == [1]
    reader.close()
    assert reader.stats.torn == 0 and reader.stats.bad == 0


def test_from_end_skips_existing_and_a_partial_line(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    path.write_bytes(b'{"seq":0}\n{"seq":1')
    reader = LogReader(path, follow=True, from_end=True)
    with open(path, "ab") as f:
        f.write(b'}\n{"seq":2}\n')
    assert [r["seq"] for r in reader.read_available()] == [2]
    reader.close()


@pytest.mark.timeout(30)
def test_iter_records_follow_thread_across_rotation(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    w = JsonlWriter(path, max_bytes=1_500, backups=100)
    stop = threading.Event()
    got: List[int] = []

    def follow() -> None:
        for rec in iter_records(path, follow=True, stop=stop, poll_s=0.01):
            got.append(rec["seq"])

    t = threading.Thread(target=follow)
    t.start()
    total = 0
    for _batch in range(12):
        for _ in range(8):  # < one file per batch: the reader never misses a whole file
            w.write({"seq": total, "pad": PAD})
            total += 1
        deadline = time.monotonic() + 10
        while len(got) < total and time.monotonic() < deadline:
            time.sleep(0.005)
    stop.set()
    t.join(5)
    w.close()
    assert not t.is_alive()
    assert w.stats()["rotations"] >= 5
    assert got == list(range(total))


def test_truncation_in_place_is_followed(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    with JsonlWriter(path) as w:
        for i in range(5):
            w.write({"seq": i})
    reader = LogReader(path, follow=True)
    assert len(reader.read_available()) == 5
    with open(path, "r+b") as f:  # copytruncate
        f.truncate(0)
    with open(path, "ab") as f:
        f.write(b'{"seq":9}\n')
    assert [r["seq"] for r in reader.read_available()] == [9]
    assert reader.stats.truncations == 1
    reader.close()


def test_gzip_backups_are_read(tmp_path: Path) -> None:
    import gzip

    path = tmp_path / "decisions.jsonl"
    with gzip.open(str(path) + "-20240101.gz", "wb") as f:
        f.write(b'{"seq":0}\n{"seq":1}\n')
    old = time.time() - 100
    os.utime(str(path) + "-20240101.gz", (old, old))
    path.write_bytes(b'{"seq":2}\n')
    assert [r["seq"] for r in read_records(path)] == [0, 1, 2]
    assert [r["seq"] for r in read_records(str(tmp_path / "*.jsonl"))] == [0, 1, 2]


def test_encoding_numpy_nan_inf_and_odd_objects() -> None:
    class Weird:
        def __repr__(self) -> str:
            return "<weird>"

    circular: Dict[str, Any] = {"a": 1}
    circular["self"] = circular
    rec = {
        "f32": np.float32(1.5), "i64": np.int64(3), "b": np.bool_(True), "arr": np.arange(4).reshape(2, 2),
        "nan": float("nan"), "inf": float("-inf"), "np_nan": np.float64("nan"), "np32_inf": np.float32("inf"),
        "nested": {"l": [1.0, float("nan"), np.float32(2.0)]}, "obj": Weird(), (1, 2): "tuple key",
        "bytes": b"\x01ab", "path": Path("/tmp/x"), "set": {3, 1}, "text": "µs\nline",
    }
    line = encode_record(rec)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    back = json.loads(line)
    assert back["f32"] == 1.5 and back["i64"] == 3 and back["b"] is True
    assert back["arr"] == [[0, 1], [2, 3]]
    assert back["nan"] is None and back["inf"] is None and back["np_nan"] is None and back["np32_inf"] is None
    assert back["nested"] == {"l": [1.0, None, 2.0]}
    assert back["obj"] == "<weird>" and back["(1, 2)"] == "tuple key"
    assert back["path"] == "/tmp/x" and back["set"] == [1, 3] and back["text"] == "µs\nline"
    # a finite record takes the fast path and is compact
    assert encode_record({"a": np.float32(0.25), "b": [1, 2]}) == b'{"a":0.25,"b":[1,2]}\n'
    # never raises, even on a circular structure
    circ = json.loads(encode_record(circular))
    assert circ["a"] == 1


def test_write_error_is_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("/dev/full (always ENOSPC) is not available")
    w = JsonlWriter("/dev/full", max_bytes=0)
    with caplog.at_level(logging.ERROR, logger="edged.logs"):
        for i in range(3):
            w.write({"seq": i})  # disk full: must not raise into the caller
    assert w.stats()["errors"] == 3 and w.stats()["lines"] == 0
    assert "No space left" in (w.stats()["last_error"] or "")
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
    w.close()
    w.write({"seq": 99})  # after close: counted, not raised
    assert w.stats()["errors"] == 4


def test_stderr_handler_appends_fields_and_priority_prefix_under_journal(tmp_path: Path) -> None:
    code = (
        "import logging\n"
        "from edged.logs import setup_logging\n"
        "setup_logging('INFO', journal='off')\n"
        "logging.getLogger('edged.dispatch').warning('fog down', extra={'journal_fields': {'model': 'cnn'}})\n"
        "logging.getLogger('edged.x').debug('hidden')\n"
    )
    err = tmp_path / "stderr.txt"
    with open(err, "wb") as f:
        st = os.fstat(f.fileno())
        env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        subprocess.run([sys.executable, "-c", code], stderr=f, env=env, check=True, timeout=30)
    assert err.read_text().splitlines() == ["<4>edged.dispatch: fog down MODEL=cnn"]
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=30)
    assert "WARNING edged.dispatch: fog down MODEL=cnn" in out.stderr and not out.stderr.startswith("<")


def test_journal_handler_sends_fields(monkeypatch: pytest.MonkeyPatch, restore_root_logging: None) -> None:
    journal = pytest.importorskip("systemd.journal", reason="systemd-python is not installed (extra 'systemd')")
    calls: List[Dict[str, str]] = []

    def fake_sendv(*args: str) -> None:
        # the C call under the real journal.send: "KEY=value" items, the lowest interface without journald
        calls.append(dict(a.split("=", 1) for a in args))

    monkeypatch.setattr(journal, "sendv", fake_sendv)
    handler = setup_logging(logging.INFO, journal="on", identifier="edged-test")
    assert isinstance(handler, JournalHandler)
    log = logging.getLogger("edged.dispatch")
    log.warning("fell back to local", extra={"journal_fields": {"model": "cnn", "DECISION": "fallback",
                                                                 "latency-us": 12.5, "message": "clash"}})
    log.debug("not sent")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    assert len(calls) == 2
    fields = calls[0]
    assert fields["MESSAGE"] == "fell back to local"
    assert fields["MODEL"] == "cnn" and fields["DECISION"] == "fallback" and fields["LATENCY_US"] == "12.5"
    assert fields["PRIORITY"] == "4" and fields["SYSLOG_IDENTIFIER"] == "edged-test"
    assert fields["LOGGER"] == "edged.dispatch" and fields["CODE_FUNC"] == "test_journal_handler_sends_fields"
    assert int(fields["CODE_LINE"]) > 0 and fields["CODE_FILE"].endswith("test_logs.py")
    fields = calls[1]
    assert fields["PRIORITY"] == "3" and "RuntimeError: boom" in fields["MESSAGE"]


def test_journal_auto_uses_stderr_in_a_terminal(restore_root_logging: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    handler = setup_logging("DEBUG", journal="auto")
    assert not isinstance(handler, JournalHandler)
    assert logging.getLogger().level == logging.DEBUG
    with pytest.raises(ValueError):
        setup_logging(logging.INFO, journal="maybe")


def test_follow_catches_up_after_several_rotations_between_polls(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    w = JsonlWriter(path, max_bytes=1_000, backups=50)
    w.write({"seq": 0, "pad": PAD})
    reader = LogReader(path, follow=True)
    assert [r["seq"] for r in reader.read_available()] == [0]
    for i in range(1, 60):  # ~8 rotations before the reader looks again
        w.write({"seq": i, "pad": PAD})
    got = [r["seq"] for r in reader.read_available()]
    w.close()
    reader.close()
    assert w.stats()["rotations"] >= 5
    assert got == list(range(1, 60))
