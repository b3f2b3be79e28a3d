"""Checking and cleaning the SDP a client sends, before aiortc applies it.

aiortc raises assorted exceptions for SDP it cannot use (``OperationError``
for a codec it cannot satisfy, ``ValueError``/``IndexError``/... from its
parser) and may have changed the connection's state half-way when it does.
The relay checks an offer first, so that the common refusals (garbage, no
common codec, wrong codec for the visit) leave the connection untouched, and
turns whatever remains into one typed error, :class:`UnsupportedOffer`.
"""

from __future__ import annotations

from relay import aiortc_internals
from relay.aiortc_internals import MediaSection
from relay.codec import VisitCodec

MEDIA_KINDS = ("audio", "video")


class UnsupportedOffer(Exception):
    """The client's SDP cannot be used; ``message`` says why (safe to show)."""

    code = "unsupported-offer"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PeerClosed(Exception):
    """The relay peer was closed; no further negotiation is possible."""

    code = "peer-closed"


MEDIA_DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


def check_description(
    sdp: object, codec: VisitCodec, *, answer_to: list[MediaSection] | None = None
) -> list[MediaSection]:
    """Parse an offer (or an answer to ``answer_to``) and check it is usable.

    Checks what aiortc would otherwise refuse half-way through applying it:
    the visit's codecs, ICE credentials, DTLS fingerprint, rtcp-mux, a
    unique mid and a direction on each media section, a BUNDLE group that
    names existing sections, and for an answer the same sections as the
    offer. Returns the m-lines; raises UnsupportedOffer.
    """
    if not isinstance(sdp, str) or not sdp.strip():
        raise UnsupportedOffer("SDP is empty")
    try:
        summary = aiortc_internals.parse_description(sdp)
    except ValueError as exc:
        raise UnsupportedOffer("SDP is malformed") from exc
    media = summary.media
    mids = [m.mid for m in media]
    if len(set(mids)) != len(mids):
        raise UnsupportedOffer("SDP repeats a media section id (a=mid)")
    if summary.bundle is not None and (not summary.bundle or not set(summary.bundle) <= set(mids)):
        raise UnsupportedOffer("SDP's BUNDLE group names media sections it does not have")
    if not any(m.kind in MEDIA_KINDS for m in media):
        raise UnsupportedOffer("SDP has no audio or video section")
    if answer_to is not None and [(m.kind, m.mid) for m in media] != [
        (m.kind, m.mid) for m in answer_to
    ]:
        raise UnsupportedOffer("answer's media sections do not match the offer")
    for m in media:
        where = f"{m.kind} section {m.mid or '?'}"
        if not m.has_ice_credentials:
            raise UnsupportedOffer(f"{where} has no ICE username fragment or password")
        if not m.has_fingerprint:
            raise UnsupportedOffer(f"{where} has no DTLS fingerprint")
        if answer_to is not None and m.dtls_role not in ("client", "server"):
            raise UnsupportedOffer(f"{where}: an answer must say a=setup:active or passive")
        if m.kind not in MEDIA_KINDS:
            continue
        if not m.mid:
            raise UnsupportedOffer(f"{where} has no a=mid")
        if m.direction not in MEDIA_DIRECTIONS:
            raise UnsupportedOffer(f"{where} has no direction")
        if not m.rtcp_mux:
            raise UnsupportedOffer(f"{where} does not use rtcp-mux")
        if not aiortc_internals.common_codecs(m.kind, m.codecs, codec.preferences(m.kind)):
            offered = ", ".join(sorted({c.mimeType.split("/")[-1] for c in m.codecs})) or "none"
            wanted = "Opus" if m.kind == "audio" else _describe_video(codec)
            raise UnsupportedOffer(
                f"{where} offers no codec this visit uses: needs {wanted}, offered {offered}"
            )
    return media


def _describe_video(codec: VisitCodec) -> str:
    if codec.name == "H264":
        return "H264 constrained baseline (profile-level-id 42e01f, packetization-mode=1)"
    return codec.name


def is_mdns_candidate(candidate: str) -> bool:
    """True for an ICE candidate whose address is an mDNS ``.local`` name."""
    bits = candidate.split()
    return len(bits) > 4 and bits[4].lower().rstrip(".").endswith(".local")


def without_mdns_candidates(sdp: str) -> str:
    """Remove mDNS ``.local`` candidates from an SDP.

    Resolving them makes aioice bind 0.0.0.0:5353 for multicast DNS; the
    relay binds only to the configured addresses. Browsers behind such
    candidates still connect: their checks reach the relay's candidates and
    aioice learns them as peer-reflexive. ``a=end-of-candidates`` is dropped
    with them, so ICE keeps waiting for those checks instead of failing.
    """
    lines = sdp.splitlines()
    kept = [
        line
        for line in lines
        if not (line.startswith("a=candidate:") and is_mdns_candidate(line[len("a=candidate:") :]))
    ]
    if len(kept) == len(lines):
        return sdp
    kept = [line for line in kept if line.strip() != "a=end-of-candidates"]
    return "\r\n".join(kept) + "\r\n"
