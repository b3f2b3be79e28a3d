"""The one video codec of a visit, and what the relay must know about it.

A forwarded frame reaches the subscriber exactly as the publisher encoded
it, so every leg of a visit must use the same codec: a mismatch decodes
nothing and turns into a keyframe-request storm. Each server transceiver is
therefore restricted to the visit's codec (plus Opus for audio), and the
relay recognises keyframes in that codec's bitstream to start or resync a
subscriber.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiortc import RTCRtpCodecCapability, RTCRtpSender

H264_PROFILE_LEVEL_ID = "42e01f"  # constrained baseline, level 3.1
H264_IDR_NAL_TYPE = 5


@dataclass(frozen=True)
class VisitCodec:
    """A visit's video codec: ``VP8`` (default) or ``H264``."""

    name: str

    @classmethod
    def named(cls, name: str) -> VisitCodec:
        """Validate a codec name from configuration (case-insensitive)."""
        upper = name.upper()
        if upper not in ("VP8", "H264"):
            raise ValueError(f"unsupported visit codec {name!r}: use VP8 or H264")
        return cls(upper)

    def preferences(self, kind: str) -> list[RTCRtpCodecCapability]:
        """The codec list for ``setCodecPreferences`` on a ``kind`` transceiver."""
        capabilities = RTCRtpSender.getCapabilities(kind).codecs
        if kind == "audio":
            wanted = [c for c in capabilities if c.mimeType.lower() == "audio/opus"]
        else:
            wanted = [c for c in capabilities if self._is_visit_video(c)]
            wanted += [c for c in capabilities if c.mimeType.lower() == "video/rtx"]
        return wanted

    def _is_visit_video(self, capability: RTCRtpCodecCapability) -> bool:
        if self.name == "VP8":
            return capability.mimeType.lower() == "video/vp8"
        return (
            capability.mimeType.lower() == "video/h264"
            and str(capability.parameters.get("packetization-mode")) == "1"
            and str(capability.parameters.get("profile-level-id")).lower() == H264_PROFILE_LEVEL_ID
        )

    def is_keyframe(self, data: bytes) -> bool:
        """True when an encoded video frame can be decoded on its own.

        VP8 (RFC 6386 section 9.1): bit 0 of the frame tag is 0 for a key
        frame. H264: the access unit (Annex B, as aiortc depayloads it)
        contains an IDR slice.
        """
        if not data:
            return False
        if self.name == "VP8":
            return data[0] & 0x01 == 0
        position = data.find(b"\x00\x00\x01")
        while position != -1 and position + 3 < len(data):
            if data[position + 3] & 0x1F == H264_IDR_NAL_TYPE:
                return True
            position = data.find(b"\x00\x00\x01", position + 3)
        return False


@dataclass(frozen=True)
class NegotiatedCodec:
    """What one negotiated m-line says about its media codec, for the packet path."""

    payload_type: int
    clock_rate: int
    rtx_payload_type: int | None
    """The RTX payload type paired with it (``apt``), None without RTX."""
    feedback: frozenset[str]
    """Its rtcp-fb types: ``nack``, ``nack pli``, ``ccm fir``, ``goog-remb``, ``transport-cc``."""

    @classmethod
    def of(cls, codecs: Iterable[Any]) -> NegotiatedCodec | None:
        """From aiortc's negotiated codec list (the media codec first, then RTX)."""
        listed = list(codecs)
        media = next((c for c in listed if not c.mimeType.lower().endswith("/rtx")), None)
        if media is None:
            return None
        rtx = next(
            (
                int(c.payloadType)
                for c in listed
                if c.mimeType.lower().endswith("/rtx")
                and c.parameters.get("apt") == media.payloadType
            ),
            None,
        )
        feedback = frozenset(
            f.type if not f.parameter else f"{f.type} {f.parameter}" for f in media.rtcpFeedback
        )
        return cls(int(media.payloadType), int(media.clockRate), rtx, feedback)
