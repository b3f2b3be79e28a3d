"""Parlor's media plane: forwarding RTP packets between a visit's peers.

``RelayPeer`` is one participant's server-side peer connection, ``Room`` the
forwarding graph of one visit. The relay is an SFU: it forwards RTP packets
(``relay.fastpath``, ``relay.uptrack``, ``relay.leg``), never decoding,
re-encoding nor re-packetizing, and feeds congestion control back to browsers
(``relay.twcc``, ``relay.congestion``). Imports only the standard library,
aiortc, aioice, pylibsrtp and av.

The packet building blocks are pure functions and small classes over bytes,
with explicit times and no asyncio: ``relay.rtp`` (headers, header
extensions, RTX), ``relay.payload`` (VP8 and H264 keyframes), ``relay.rtcp``
(RTCP packets), ``relay.twcc`` (transport-cc feedback), ``relay.rtpstats``
(what receiver and sender reports carry), ``relay.retransmission`` (NACKs
asked and answered) and ``relay.ntp`` (NTP and RTP timestamps).
"""

from relay.aiortc_internals import DtlsCertificate
from relay.ice import pin_ice_addresses, pinned_ice_addresses
from relay.negotiation import PeerClosed, UnsupportedOffer
from relay.peer import RelayPeer
from relay.room import Room
from relay.stats import RelayStats

__all__ = [
    "DtlsCertificate",
    "PeerClosed",
    "RelayPeer",
    "RelayStats",
    "Room",
    "UnsupportedOffer",
    "pin_ice_addresses",
    "pinned_ice_addresses",
]
