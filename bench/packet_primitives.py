"""Cost of the relay's packet-level building blocks, per call, in CPython.

The SFU's hot path runs these once per packet (per leg for the rewrites):
header parse, in-place rewrite, header-extension remapping, keyframe
checks, the transport-cc tracker, statistics and the NACK/RTX machinery;
the RTCP builders run a few times a second per stream. Each figure is the
median over ``--rounds`` rounds of the mean µs per call over ``--calls``
calls (``time.perf_counter_ns``), and the best round too (least disturbed
by other load on a shared machine), on fixed inputs: a 1,200-byte VP8 packet
with the four header extensions Chromium sends. aiortc's ``RtpPacket.parse``
and ``serialize`` are measured in the same run as the baseline, and an empty
call shows the timing loop's own cost (included in every figure).

Prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# bench/relay.py is named like the package: make `import relay` find the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(REPO))

import aiortc  # noqa: E402
from aiortc import RTCRtpHeaderExtensionParameters, RTCRtpParameters  # noqa: E402
from aiortc.rtp import HeaderExtensionsMap, RtcpPacket, RtpPacket  # noqa: E402

from relay import payload, rtcp, rtp  # noqa: E402
from relay.retransmission import NackGenerator, RetransmissionHistory  # noqa: E402
from relay.rtcp import ReportBlock  # noqa: E402
from relay.rtpstats import ReceiveStats, SendStats  # noqa: E402
from relay.twcc import TwccTracker  # noqa: E402
from tests.harness.rtp_packets import rtp_packet  # noqa: E402

TWCC_ID = 3
# What Chromium puts on a video packet: abs-send-time, transport-cc, mid, and one more.
EXTENSIONS = [(2, b"\x12\x34\x56"), (TWCC_ID, b"\x01\x02"), (4, b"0"), (9, b"\x00")]
AIORTC_URIS = {
    2: "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    3: "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
    4: "urn:ietf:params:rtp-hdrext:sdes:mid",
}
VP8_KEY = b"\x90\x80\x80\x01\x00\x9d\x01\x2a" + bytes(1192)
H264_FU_A = b"\x7c\x85\x88" + bytes(1197)


def measure(function: Callable[[], object], calls: int, rounds: int) -> tuple[float, float]:
    """(best, median) over rounds of the mean µs per call."""
    results = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for _ in range(calls):
            function()
        results.append((time.perf_counter_ns() - start) / calls / 1000)
    return round(min(results), 3), round(statistics.median(results), 3)


def cases() -> dict[str, tuple[Callable[[], object], int]]:
    """Name -> (the call, how many calls make one round relative to --calls: a divisor)."""
    packet = rtp_packet(
        payload_type=96, sequence_number=1000, extensions=EXTENSIONS, payload=VP8_KEY
    )
    h264 = rtp_packet(payload_type=102, extensions=EXTENSIONS, payload=H264_FU_A)
    header = rtp.parse_header(packet)
    leg = bytearray(packet)
    identity = rtp.ExtensionIdMap({2: 2, 3: 3, 4: 4, 9: 9})
    renamed = rtp.ExtensionIdMap({2: 3, 3: 2, 4: 1, 1: 4, 9: 9})  # swaps: stays in place
    dropping = rtp.ExtensionIdMap({2: 2, 3: 3, 4: 4})
    rtx = rtp.wrap_rtx(packet, 97, 0xBBBB, 7)
    aiortc_extensions = HeaderExtensionsMap()
    aiortc_extensions.configure(
        RTCRtpParameters(
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=i, uri=uri) for i, uri in AIORTC_URIS.items()
            ]
        )
    )
    aiortc_packet = RtpPacket.parse(packet, aiortc_extensions)

    tracker = TwccTracker()
    twcc_state = {"seq": 0, "time": 0}

    def twcc_record() -> None:
        sequence = twcc_state["seq"]
        twcc_state["seq"] = sequence + 1
        twcc_state["time"] += 250
        tracker.record(sequence & 0xFFFF, twcc_state["time"])

    feedback_tracker = TwccTracker()
    feedback_state = {"seq": 0, "time": 0}

    def twcc_feedback_100() -> None:
        base = feedback_state["seq"]
        time_us = feedback_state["time"]
        for offset in range(100):
            if offset % 17 != 5:  # a loss now and then
                time_us += 400 if offset % 9 else 30_000
                feedback_tracker.record((base + offset) & 0xFFFF, time_us)
        feedback_state["seq"] = base + 100
        feedback_state["time"] = time_us
        feedback_tracker.feedback(time_us, 1, 2)

    receive = ReceiveStats(0xAAAA, 90_000)
    receive_state = {"seq": 0}

    def receive_stats() -> None:
        sequence = receive_state["seq"]
        receive_state["seq"] = sequence + 1
        receive.on_packet(sequence & 0xFFFF, sequence * 30, sequence * 333)

    send = SendStats()
    nacks = NackGenerator()
    nack_state = {"seq": 0}

    def nack_in_order() -> None:
        sequence = nack_state["seq"]
        nack_state["seq"] = sequence + 1
        nacks.on_packet(sequence & 0xFFFF, sequence * 333)

    history = RetransmissionHistory()
    history_state = {"seq": 0}

    def history_store_get() -> None:
        sequence = history_state["seq"] & 0xFFFF
        history_state["seq"] += 1
        history.store(sequence, packet, sequence)
        history.get((sequence - 100) & 0xFFFF, sequence)

    lost = [1000, 1001, 1003, 1010, 1030, 1031, 1032, 1050, 1100, 1101]
    block = ReportBlock(0xAAAA, 12, 40, 70_000, 30, 0x12345678, 6553)
    nack_bytes = rtcp.build_nack(1, 2, lost)
    sr_compound = rtcp.build_sender_report(
        1, 1 << 60, 1234, 100, 10_000, [block]
    ) + rtcp.build_sdes_cname(1, "parlor-relay")

    def copy_and_rewrite() -> None:
        copy = bytearray(packet)
        rtp.rewrite_header(copy, 0xCAFE, 100, 5, 6)

    return {
        "empty_call": (lambda: None, 1),
        "parse_header": (lambda: rtp.parse_header(packet), 1),
        "rewrite_header_in_place": (lambda: rtp.rewrite_header(leg, 0xCAFE, 100, 5, 6), 1),
        "copy_and_rewrite_header": (copy_and_rewrite, 1),
        "remap_extensions_identity": (lambda: rtp.remap_extensions(leg, identity), 1),
        "remap_extensions_rename_in_place": (lambda: rtp.remap_extensions(leg, renamed), 1),
        "remap_extensions_drop_rebuild": (
            lambda: rtp.remap_extensions(bytearray(packet), dropping),
            1,
        ),
        "read_transport_sequence": (lambda: rtp.read_transport_sequence(packet, TWCC_ID), 1),
        "write_transport_sequence": (lambda: rtp.write_transport_sequence(leg, TWCC_ID, 77), 1),
        "is_padding_only": (lambda: rtp.is_padding_only(packet), 1),
        "vp8_is_keyframe": (
            lambda: payload.vp8_is_keyframe(packet, header.payload_start, header.payload_end),
            1,
        ),
        "h264_is_keyframe": (
            lambda: payload.h264_is_keyframe(h264, header.payload_start, len(h264)),
            1,
        ),
        "wrap_rtx": (lambda: rtp.wrap_rtx(packet, 97, 0xBBBB, 7), 1),
        "unwrap_rtx": (lambda: rtp.unwrap_rtx(rtx, 96, 0x11223344), 1),
        "twcc_record": (twcc_record, 1),
        "twcc_record_and_feedback_100_packets": (twcc_feedback_100, 100),
        "receive_stats_on_packet": (receive_stats, 1),
        "send_stats_on_packet": (lambda: send.on_packet(1180, 90_000, 5), 1),
        "nack_generator_on_packet_in_order": (nack_in_order, 1),
        "retransmission_history_store_and_get": (history_store_get, 1),
        "build_nack_10_lost": (lambda: rtcp.build_nack(1, 2, lost), 1),
        "build_sender_report_1_block_plus_cname": (
            lambda: (
                rtcp.build_sender_report(1, 1 << 60, 1234, 100, 10_000, [block])
                + rtcp.build_sdes_cname(1, "parlor-relay")
            ),
            1,
        ),
        "build_receiver_report_1_block": (lambda: rtcp.build_receiver_report(1, [block]), 1),
        "build_pli": (lambda: rtcp.build_pli(1, 2), 1),
        "build_remb": (lambda: rtcp.build_remb(1, 1_500_000, [5, 6]), 1),
        "parse_nack": (lambda: rtcp.parse_compound(nack_bytes), 1),
        "parse_sender_report_compound": (lambda: rtcp.parse_compound(sr_compound), 1),
        "baseline_aiortc_rtp_parse": (lambda: RtpPacket.parse(packet, aiortc_extensions), 1),
        "baseline_aiortc_rtp_serialize": (lambda: aiortc_packet.serialize(aiortc_extensions), 1),
        "baseline_aiortc_rtcp_parse_nack": (lambda: RtcpPacket.parse(nack_bytes), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    best: dict[str, float] = {}
    median: dict[str, float] = {}
    for name, (function, divisor) in cases().items():
        best[name], median[name] = measure(function, max(args.calls // divisor, 10), args.rounds)
    parse = best["parse_header"]
    recorded = 100 - len(range(5, 100, 17))  # packets twcc_feedback_100 records per call
    result = {
        "benchmark": "packet_primitives",
        "unit": "µs per call",
        "calls_per_round": args.calls,
        "rounds": args.rounds,
        "python": platform.python_version(),
        "aiortc": aiortc.__version__,
        "platform": platform.platform(),
        "us_per_call_best": best,
        "us_per_call_median": median,
        "ratios_best": {
            "aiortc_parse_over_parse_header": round(best["baseline_aiortc_rtp_parse"] / parse, 1),
            "aiortc_serialize_over_copy_and_rewrite": round(
                best["baseline_aiortc_rtp_serialize"] / best["copy_and_rewrite_header"], 1
            ),
        },
        "twcc_feedback_only_per_100_packets_us_best": round(
            best["twcc_record_and_feedback_100_packets"] - recorded * best["twcc_record"], 3
        ),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
