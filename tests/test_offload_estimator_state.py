"""LinkEstimator (issue 14): fresh fog state, this edge's work in flight, collapse, dispersion.

Pure logic on a fake clock: every number is hand-computed from the link model
``T_L(bytes) = latency + bytes / bandwidth`` (µs, bytes).
"""

from __future__ import annotations

from typing import List

import pytest

from edged.offload.estimator import LinkEstimator, LocalEstimator


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance_us(self, us: float) -> None:
        self.t += us / 1e6


def learned(latency_us: float = 1000.0, us_per_byte: float = 1.0, t_f_us: float = 10_000.0,
            dev_alpha: float = 0.25, fog_workers: int = 1) -> tuple:
    """An estimator that has learned a link (latency, µs per byte) and cnn's T_F from clean round trips."""
    clock = Clock()
    est = LinkEstimator(clock=clock, dev_alpha=dev_alpha, fog_workers=fog_workers)
    for n in [400, 8600] * 4:
        transfer = 2 * latency_us + n * us_per_byte
        est.observe_round_trip(n // 2, n - n // 2, transfer + t_f_us, t_f_us=t_f_us, model="cnn")
        clock.advance_us(50_000)
    assert est.latency_us() == pytest.approx(latency_us)
    assert est.t_f_us("cnn") == pytest.approx(t_f_us)
    return est, clock


# ---- fresh fog state -------------------------------------------------------------------------------
# (report µs, µs since the report, expected fog queue µs): a report drains at one µs per µs
AGEING = [
    (13_400, 0, 13_400),
    (13_400, 5_000, 8_400),
    (13_400, 13_400, 0),
    (13_400, 20_000, 0),  # the case: the edge's own burst left 13.4 ms, the fog is idle since
    (0, 0, 0),
]


@pytest.mark.parametrize("report,after_us,expected", AGEING)
def test_a_fog_queue_report_drains_with_time(report: float, after_us: float, expected: float) -> None:
    clock = Clock()
    est = LinkEstimator(clock=clock)
    est.observe_fog_queue(report)
    clock.advance_us(after_us)
    assert est.fog_queue_us() == pytest.approx(expected)


def test_a_new_report_replaces_the_old_one_not_a_median() -> None:
    clock = Clock()
    est = LinkEstimator(clock=clock)
    for q in (13_400, 13_400, 13_400):
        est.observe_fog_queue(q)
    est.observe_fog_queue(0.0)  # the fog says it is idle now: it is idle now
    assert est.fog_queue_us() == 0.0


def test_a_report_made_before_it_arrived_is_aged_from_when_it_was_made() -> None:
    clock = Clock()
    est = LinkEstimator(clock=clock)
    est.observe_fog_queue(10_000, workers=2, age_us=4_000)
    assert est.fog_queue_us() == pytest.approx(6_000) and est.fog_workers == 2


def test_own_work_in_flight_is_the_fog_queue_exactly() -> None:
    # link 1 ms + 1 us/byte, T_F(cnn) 10 ms, 1 worker: three 1000-byte requests sent at once
    est, clock = learned()
    for k in range(3):
        est.on_send(k, 1000, "cnn")
    # uplink: each takes 1000 us; arrivals at 2000, 3000, 4000 us; fog runs them 2000-12000, 12000-22000,
    # 22000-32000. A 4th request sent now: on the link after 3000 us of bytes, its own 1000, then 1000 latency
    assert est.in_flight() == (3, 3000)
    t_l_in = est.t_l_in_us(1000)
    assert t_l_in == pytest.approx(1000 + 3000 + 1000)
    assert est.fog_queue_at_us(t_l_in) == pytest.approx(32_000 - 5_000)
    # the first reply comes back early: the fog finished it at 7000 us (T_F 5 ms, not 10 ms)
    clock.advance_us(8_000)  # reply: 7000 + 1000 us back (latency + ~0 bytes)
    est.observe_round_trip(1000, 0, rtt_us=8_000, t_f_us=5_000, queue_us=0, model="cnn", key=0)
    # the two behind it re-simulated from 7000 us: 7000-17000, 17000-27000 (T_F estimate of when they were sent)
    assert est.fog_queue_at_us(0) == pytest.approx(27_000 - 8_000, abs=1.0)
    assert est.in_flight() == (2, 2000)


def test_two_fog_workers_drain_own_work_twice_as_fast() -> None:
    est, _ = learned(fog_workers=2)
    for k in range(4):
        est.on_send(k, 0, "cnn")  # arrivals at 1000 us (latency only)
    assert est.fog_queue_at_us(1000) == pytest.approx(4 * 10_000 / 2)


def test_a_ping_report_counts_only_the_foreign_share() -> None:
    est, clock = learned()
    est.on_send("a", 0, "cnn")  # on the fog 1000-11000 us
    clock.advance_us(1000)
    # the fog reports 25 ms of queue at 1000 us: 10 ms of it is this edge's request, 15 ms is other edges'
    est.observe_fog_queue(25_000)
    assert est.fog_queue_us() == pytest.approx(15_000 + 10_000)
    clock.advance_us(15_000)  # the foreign 15 ms drained, and this edge's own request is done
    assert est.fog_queue_us() == pytest.approx(0.0, abs=1e-3)


# ---- the uplink: bytes in flight ------------------------------------------------------------------
# (bytes queued ahead, µs since, request bytes, expected T_L in) on 1 ms + 1 µs/byte
LINK_QUEUE = [
    (0, 0, 1000, 2000),
    (50_000, 0, 1000, 1000 + 50_000 + 1000),
    (50_000, 30_000, 1000, 1000 + 20_000 + 1000),
    (50_000, 60_000, 1000, 2000),  # sent by now
    (20_000, 0, 49_152, 1000 + 20_000 + 49_152),
]


@pytest.mark.parametrize("ahead,after_us,nbytes,expected", LINK_QUEUE)
def test_bytes_this_edge_has_in_flight_raise_t_l(ahead: int, after_us: float, nbytes: int,
                                                 expected: float) -> None:
    est, clock = learned()
    if ahead:
        est.on_send("x", ahead, "cnn")
    clock.advance_us(after_us)
    assert est.t_l_us(nbytes) == pytest.approx(1000 + nbytes)  # the idle link, as before
    assert est.t_l_in_us(nbytes) == pytest.approx(expected)


def test_a_burst_teaches_bandwidth_not_latency() -> None:
    # 1 ms + 0.1 us/byte learned; then a burst of 8 x 20 kB queues on the uplink. Fitting each reply's transfer
    # against its own bytes only would read the queueing as latency; with the bytes ahead the fit stays put.
    est, clock = learned(us_per_byte=0.1)
    t0 = clock.t
    for k in range(8):
        est.on_send(k, 20_000, "cnn", bytes_in=0)
    for k in range(8):
        transfer = 2 * 1000 + (k + 1) * 20_000 * 0.1  # its bytes wait behind the k before it
        done = t0 + (1000 + (k + 1) * 2000 + 10_000 * (k + 1) + 1000) / 1e6
        clock.t = max(clock.t, done)
        est.observe_round_trip(20_000, 0, transfer + 10_000, t_f_us=10_000, model="cnn", key=k)
    assert est.latency_us() == pytest.approx(1000, rel=0.05)
    assert est.bandwidth_bps() == pytest.approx(10e6, rel=0.05)
    assert est.changes == 0


# ---- collapse ---------------------------------------------------------------------------------------
def test_a_collapse_shows_within_one_round_trip_before_any_reply() -> None:
    # 1 ms + 0.1 us/byte (10 MB/s). A 10 kB request: expected round trip 1000 + 1000 + 10000 + 1000 = 13 ms
    est, clock = learned(us_per_byte=0.1)
    est.on_send("r", 10_000, "cnn", bytes_in=0)
    clock.advance_us(13_000)
    assert not est.is_collapsed()
    assert est.t_l_in_us(1000) == pytest.approx(1000 + 100)  # its bytes left the uplink long ago
    # the link went to 1 Mbit/s (8 us/byte): no reply at 1.5 x 13 ms + 2 ms = 21.5 ms
    clock.advance_us(12_000)  # 25 ms after sending
    assert est.is_collapsed() and est.collapses == 1
    # it is 25000 - 13000 = 12000 us overdue: a new input waits at least that; and it shows at least
    # 25000 - 2000 - 10000 = 13000 us of transfer for 10 000 bytes: 1.3 us/byte (not 0.1) for a new input's bytes
    small, big = est.t_l_in_us(1000), est.t_l_in_us(49_152)
    assert small == pytest.approx(1000 + 100 + 12_000 + 1000 * 1.2)
    assert big == pytest.approx(1000 + 49_152 * 0.1 + 12_000 + 49_152 * 1.2)
    # the reply: the collapse is over, the fit follows (change detection needs three)
    est.observe_round_trip(10_000, 0, rtt_us=90_000, t_f_us=10_000, model="cnn", key="r")
    assert not est.is_collapsed() and est.in_flight() == (0, 0)


def test_bytes_sent_during_a_collapse_queue_at_the_collapsed_rate_once() -> None:
    est, clock = learned(us_per_byte=0.1)
    est.on_send("r", 10_000, "cnn", bytes_in=0)
    clock.advance_us(25_000)  # overdue by 12 ms; at least 1.3 us/byte (see above)
    for k in range(3):
        est.on_send(k, 10_000, "cnn", bytes_in=0)
    # 30 000 bytes queued at 1.3 us/byte (not at 1.3 and then scaled again), a new input's own bytes at 1.3
    assert est.t_l_in_us(1000) == pytest.approx(1000 + 100 + 30_000 * 1.3 + 1000 * 1.2)
    assert est.in_flight() == (4, 40_000)


def test_a_timeout_keeps_the_link_slow_until_the_next_reply() -> None:
    est, clock = learned(us_per_byte=0.1)
    est.on_send("r", 10_000, "cnn", bytes_in=0)
    clock.advance_us(1_000_000)  # 1 s timeout
    est.on_fail("r", timed_out=True)
    assert est.in_flight() == (0, 0) and est.is_collapsed()
    # it was 1 000 000 - 13 000 us late, and showed at least (1 000 000 - 2000 - 10000) / 10000 us per byte
    assert est.t_l_in_us(1000) == pytest.approx(1000 + 100 + 987_000 + 1000 * 98.7)
    est.on_send("p", 0)
    est.observe_round_trip(0, 0, rtt_us=2000, key="p")  # a probe comes back: the fit is the evidence again
    assert not est.is_collapsed()
    assert est.t_l_in_us(1000) == pytest.approx(1100)


def test_a_small_late_request_counts_as_latency_not_as_bandwidth() -> None:
    # a 300-byte request 50 ms late (a stall, or a slow fog) says nothing about how slow a byte is:
    # a 48 kB input is not charged 48 kB x (50 ms / 300 B)
    est, clock = learned(us_per_byte=0.1)
    est.on_send("r", 300, "cnn", bytes_in=0)  # expected back after 1030 + 10000 + 1000 us
    clock.advance_us(62_030)
    assert est.is_collapsed()
    assert est.t_l_in_us(49_152) == pytest.approx(1000 + 4915.2 + 50_000)


def test_a_failure_without_timeout_is_no_evidence() -> None:
    est, clock = learned()
    est.on_send("r", 10_000, "cnn")
    clock.advance_us(500)
    est.on_fail("r")  # refused, fog error: the link is fine
    assert not est.is_collapsed() and est.in_flight() == (0, 0)
    est.on_fail("unknown")  # never sent: ignored


# ---- dispersion -------------------------------------------------------------------------------------
def test_jitter_shows_as_transfer_dispersion_and_a_steady_link_has_none() -> None:
    steady, clock = learned()
    assert steady.transfer_dev_us() == pytest.approx(0.0)
    jitter: List[float] = [6000, -6000, 4000, -4000, 6000, -6000, 5000, -5000] * 4
    for j in jitter:
        steady.observe_round_trip(200, 200, 2000 + 400 + j + 6000 + 10_000, t_f_us=10_000, model="cnn")
        clock.advance_us(20_000)
    dev = steady.transfer_dev_us()
    assert dev is not None and 3_000 < dev < 9_000  # about the mean |jitter| (5 ms): a median fit sits inside it
    assert LinkEstimator(clock=clock).transfer_dev_us() is None  # no fit: unknown


def test_t_f_and_local_dispersion() -> None:
    est, _ = learned()
    assert est.t_f_dev_us("cnn") == pytest.approx(0.0)
    for t in (10_000, 30_000, 10_000, 30_000):
        est.observe_round_trip(200, 200, t + 3000, t_f_us=t, model="cnn")
    assert (est.t_f_dev_us("cnn") or 0) > 5_000
    assert est.t_f_dev_us("mlp") is None
    loc = LocalEstimator({"cnn": 1000.0}, dev_alpha=0.5)
    assert loc.dev_us("cnn") is None
    loc.observe("cnn", 3000)  # |3000 - 1000| x 0.5
    assert loc.dev_us("cnn") == pytest.approx(1000)


def test_estimates_are_cached_until_a_sample_arrives() -> None:
    est, clock = learned()
    a = est.estimates()
    clock.advance_us(1000)
    assert est.estimates() is a  # reads on the hot path recompute nothing
    est.observe_t_f("mlp", 500)
    b = est.estimates()
    assert b is not a and b.version > a.version and b.t_f_us["mlp"] == 500
    assert b.t_l_us(1000) == pytest.approx(2000)
    snap = est.snapshot()
    assert snap["in_flight"] == 0 and snap["collapsed"] is False and snap["transfer_dev_us"] == 0.0


def test_probes_are_wanted_when_the_fit_cannot_tell_latency_from_bandwidth() -> None:
    est, clock = learned(us_per_byte=0.1)
    est.on_send("p", 0)
    est.observe_round_trip(0, 0, 2000, key="p")  # a probe: the last one
    assert not est.wants_probe()
    for _ in range(8):  # then only big inputs of one size, much slower than the fit
        est.observe_round_trip(49_352, 300, 400_000, t_f_us=10_000, model="cnn")
    clock.advance_us(100_000)
    assert not est.wants_probe()  # not more often than every 0.25 s
    clock.advance_us(200_000)
    assert est.wants_probe()
    est.observe_round_trip(0, 0, 80_000)  # the small probe ...
    est.observe_round_trip(4096, 4096, 80_000 + 8192 * 8)  # ... and the padded one
    assert not est.wants_probe()
    clock.advance_us(2_000_000)
    assert est.wants_probe()  # stale


def test_a_change_resets_the_dispersion_and_asks_for_probes_until_confirmed() -> None:
    est, clock = learned()
    for n, j in zip([400, 8600] * 8, [300_000, 300_000, -300_000, -300_000] * 4):  # a wild link: big dispersion
        est.observe_round_trip(n // 2, n // 2, 2000 + n + 400_000 + j + 10_000, t_f_us=10_000, model="cnn")
    clock.advance_us(300_000)
    assert (est.transfer_dev_us() or 0) > 100_000
    changes = est.changes  # one: 2 ms -> 400 ms
    est.on_send("p", 0)
    est.observe_round_trip(0, 0, 2000, key="p")  # a probe: the link is quick now, far below the fit
    clock.advance_us(300_000)
    assert est.wants_probe()  # one far-off round trip: ask again to confirm
    for n in (4096, 0):
        est.observe_round_trip(n, n, 2000 + 2 * n)
    assert est.changes == changes + 1
    assert (est.transfer_dev_us() or 0) < 1000  # the old link's jitter is forgotten with it


def test_offload_numbers_equal_the_single_reads() -> None:
    est, clock = learned(us_per_byte=0.1)
    est.observe_fog_queue(3000)
    for k in range(3):
        est.on_send(k, 20_000, "cnn")
    clock.advance_us(30_000)  # one overdue: a collapse too
    n = est.offload_numbers(49_352, 300, "cnn")
    t_l_in = est.t_l_in_us(49_352)
    assert n == (t_l_in, est.t_l_us(300), est.t_f_us("cnn"), est.fog_queue_at_us(t_l_in), est.transfer_dev_us(),
                 est.t_f_dev_us("cnn"), pytest.approx(4935.2))
    assert est.offload_numbers(10, 300, "nope").t_f_us is None
    assert LinkEstimator(clock=clock).offload_numbers(10, 300, "cnn").t_l_in_us is None


def test_offload_numbers_call_a_test_doubles_overrides() -> None:
    class Pinned(LinkEstimator):
        def t_l_us(self, nbytes: int) -> float:
            return 7.0

        def t_f_us(self, model: str) -> float:
            return 11.0

        def fog_queue_us(self) -> float:
            return 0.0

    n = Pinned().offload_numbers(1000, 300, "cnn")
    assert (n.t_l_in_us, n.t_l_out_us, n.t_f_us, n.fog_queue_us) == (7.0, 7.0, 11.0, 0.0)


def test_an_idle_edge_pings_and_finds_the_link_good_again_within_a_second() -> None:
    # a congested link (40 ms + 8 us/byte) learned, then nothing offloaded: everything runs locally
    est, clock = learned(latency_us=40_000, us_per_byte=8.0)
    est.on_send("p", 0)
    est.observe_round_trip(0, 0, 80_000, key="p")  # the last probe
    assert est.probe_kind() is None
    clock.advance_us(300_000)
    assert est.probe_kind() == "ping"  # nothing came back for 0.25 s: a small ping
    est.observe_round_trip(60, 60, 4000)  # the link is quick again: far below the fit
    clock.advance_us(300_000)
    assert est.probe_kind() == "full"
    est.observe_round_trip(60, 60, 4000)
    est.observe_round_trip(4096, 4096, 4000 + 8192 * 0.02)
    assert est.changes == 1 and (est.t_l_in_us(49_152) or 0) < 10_000
