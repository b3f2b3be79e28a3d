"""relay.retransmission: NACKs asked upstream, and the history that answers them downstream."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay import rtcp
from relay.retransmission import NackGenerator, RetransmissionHistory

MS = 1_000
RTT = 50 * MS


def generator_after(sequences: list[int], now_us: int = 0, **options: int) -> NackGenerator:
    nacks = NackGenerator(**options)
    for sequence in sequences:
        nacks.on_packet(sequence & 0xFFFF, now_us)
    return nacks


# --- Upstream NACK generator --------------------------------------------------------------


def test_a_gap_is_nacked_after_the_reordering_wait() -> None:
    nacks = generator_after([1, 2, 5], wait_us=10 * MS)
    assert nacks.missing == [3, 4]
    assert nacks.poll(9 * MS, RTT) == []
    assert nacks.next_due_us() == 10 * MS
    assert nacks.poll(10 * MS, RTT) == [3, 4]
    assert nacks.poll(11 * MS, RTT) == []  # not again before an RTT


def test_reordering_inside_the_wait_sends_nothing() -> None:
    nacks = generator_after([1, 3])
    nacks.on_packet(2, 2 * MS)
    assert nacks.missing == [] and nacks.recovered == 1
    assert nacks.poll(100 * MS, RTT) == []
    assert nacks.next_due_us() is None


def test_retries_are_spaced_by_the_rtt_and_bounded() -> None:
    nacks = generator_after([1, 3], wait_us=0, max_retries=3)
    sent_at = [t for t in range(0, 400 * MS, MS) if nacks.poll(t, RTT) == [2]]
    assert sent_at == [0, 50 * MS, 100 * MS]
    assert nacks.missing == [] and nacks.given_up == 1


def test_a_small_rtt_is_floored_so_retries_do_not_storm() -> None:
    nacks = generator_after([1, 3], wait_us=0, min_retry_us=20 * MS)
    assert nacks.poll(0, 100) == [2]
    assert nacks.poll(19 * MS, 100) == []
    assert nacks.poll(20 * MS, 100) == [2]


def test_a_retransmission_clears_the_packet() -> None:
    nacks = generator_after([10, 14], wait_us=0)
    assert nacks.poll(0, RTT) == [11, 12, 13]
    nacks.on_packet(12, 5 * MS)  # the RTX arrived, unwrapped to its original number
    assert nacks.poll(RTT, RTT) == [11, 13]
    assert nacks.recovered == 1


def test_gaps_across_the_wrap_are_nacked_in_order() -> None:
    nacks = generator_after([65533, 2], wait_us=0)
    assert nacks.poll(0, RTT) == [65534, 65535, 0, 1]
    pairs = rtcp.nack_pairs(nacks.missing)
    assert pairs == [(65534, 0b111)]


def test_packets_missing_too_long_are_forgotten() -> None:
    nacks = generator_after([1, 3], wait_us=0, max_age_us=300 * MS)
    assert nacks.poll(0, 200 * MS) == [2]
    assert nacks.poll(200 * MS, 200 * MS) == [2]
    assert nacks.poll(400 * MS, 200 * MS) == []
    assert nacks.given_up == 1


def test_the_list_is_capped_oldest_first() -> None:
    nacks = generator_after([0, 100], max_missing=50)
    assert nacks.missing == list(range(50, 100))
    assert nacks.given_up == 49


def test_a_huge_jump_is_not_nacked_and_a_confirmed_one_restarts() -> None:
    nacks = generator_after([1, 2, 3], max_gap=1000, wait_us=0)
    nacks.on_packet(30_000, 0)  # a stray or a restart: nothing NACKed yet
    nacks.on_packet(4, 0)
    assert nacks.missing == []
    nacks.on_packet(50_000, 0)
    nacks.on_packet(50_001, 0)  # confirmed: the sender restarted its sequence
    nacks.on_packet(50_003, 0)
    assert nacks.poll(0, RTT) == [50_002]


def test_a_restart_forgets_what_was_missing() -> None:
    nacks = generator_after([1, 5], max_gap=100)
    nacks.on_packet(9_000, 0)
    nacks.on_packet(9_001, 0)
    assert nacks.missing == [] and nacks.given_up == 3


@given(st.integers(0, 0xFFFF), st.sets(st.integers(1, 400), max_size=80))
def test_what_is_missing_is_exactly_what_never_arrived(first: int, lost: set[int]) -> None:
    arrived = [first + offset for offset in range(402) if offset not in lost]
    nacks = generator_after(arrived, max_missing=1000)
    assert nacks.missing == [(first + offset) & 0xFFFF for offset in sorted(lost)]
    assert nacks.poll(10**6 - 1, RTT) == nacks.missing


def test_max_gap_is_checked() -> None:
    with pytest.raises(ValueError):
        NackGenerator(max_gap=40_000)


# --- Per-leg retransmission history -------------------------------------------------------


def test_history_returns_what_was_stored_under_its_sequence_number() -> None:
    history = RetransmissionHistory(capacity=8)
    for sequence in range(65530, 65540):
        history.store(sequence & 0xFFFF, bytes([sequence & 0xFF]), 0)
    assert history.get(65535, 0) == bytes([0xFF])
    assert history.get(3, 0) == bytes([3])
    assert history.get(65531, 0) is None  # its slot was reused by 3
    assert history.get(100, 0) is None


def test_history_does_not_resend_old_packets() -> None:
    history = RetransmissionHistory(max_age_us=1_000_000)
    packet = bytearray(b"rtp")
    history.store(7, packet, 0)
    assert history.get(7, 1_000_000) is packet
    assert history.get(7, 1_000_001) is None


def test_history_capacity_must_be_a_power_of_two() -> None:
    for capacity in (0, 1000, 1 << 17):
        with pytest.raises(ValueError):
            RetransmissionHistory(capacity=capacity)
