"""RelayPeer: the server side of one participant's peer connection.

Negotiation, as built:

* The client's first offer (sendrecv audio + video) is answered
  ``recvonly`` (``inactive`` for a receive-only peer such as a staff
  monitor), or ``sendrecv`` where the answer carries a publisher (below).
* Media from other participants travels on m-lines the *server* adds:
  ``Room.add``/``Room.remove`` wire or unwire forwarding at once and report
  which peers changed; ``create_offer`` then adds one ``sendonly`` audio and
  video transceiver per publisher (msid stream id = the publisher's id, so
  a browser groups them into one MediaStream per participant) and marks the
  ones of departed publishers ``inactive``. m-lines are never reused.
* A joiner's first answer carries the room's first publisher: when the owner
  wires the peer in *during* :meth:`RelayPeer.accept_offer` (its ``joining``
  callback), the first subscription of each kind whose own m-line the client
  offered ``sendrecv`` is answered on that m-line (``sendrecv``, msid = the
  publisher). A two-party call then needs no server offer to the joiner: one
  round trip less per join, and media from the first packet after DTLS.
  Server offers never change an own m-line's direction (GStreamer's
  ``webrtcbin`` refuses "transceiver direction changes"): a carried publisher
  that leaves stops its leg, and the m-line stays ``sendrecv`` and silent.
* Every server transceiver is restricted to the visit's codec (and Opus) with
  ``setCodecPreferences`` before aiortc negotiates it.
* Every server offer keeps the RTP header-extension ids and payload types of
  the client's offer (``aiortc_internals.create_offer``): aiortc would
  renumber them, and browsers refuse an id that changes meaning.
* A client re-offer (e.g. ICE restart) is answered the same way. aiortc
  cannot restart ICE: the answer keeps the server's ICE credentials and the
  existing transport goes on as before.
* DTLS: the server answers the first offer ``a=setup:passive`` and is the
  DTLS server; every later description keeps that role, and server re-offers
  state it (``aiortc_internals.DtlsRole``). So the answer to a re-offer, in
  whatever order it arrives relative to the handshake, cannot flip the role,
  and peers with RSA certificates (GStreamer) connect.
* A connection that cannot be set up (ICE finds no pair, DTLS fails, or
  neither completes within ``MEDIA_SETUP_SECONDS``) or that dies later sets
  :attr:`RelayPeer.lost` with the cause in :attr:`RelayPeer.failure`.

Media is forwarded as RTP packets, never decoded, re-encoded nor re-packetized. aiortc
keeps ICE, DTLS, the SRTP keys, SDP and the transceivers; its senders and receivers are
never started (``aiortc_internals.take_over_sender``/``take_over_receiver``): each publishing
m-line is an :class:`~relay.uptrack.UpTrack`, each forwarded m-line a
:class:`~relay.leg.Leg` with the SSRCs the SDP declares, and once the DTLS transport is
connected a :class:`~relay.fastpath.MediaTransport` carries both below aioice's queue.
The publisher-side m-lines negotiate transport-wide congestion control
(``aiortc_internals.extend_negotiation``), so browser publishers ramp as in a direct call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from aiortc import (
    RTCPeerConnection,
    RTCRtpTransceiver,
)

from relay import aiortc_internals
from relay.aiortc_internals import (
    AiortcInternalsChanged,
    DatagramPath,
    DtlsCertificate,
    MediaSection,
)
from relay.codec import VisitCodec
from relay.fastpath import MediaTransport
from relay.ice import rtc_configuration
from relay.leg import Leg
from relay.negotiation import (
    MEDIA_KINDS,
    PeerClosed,
    UnsupportedOffer,
    check_description,
    is_mdns_candidate,
    without_mdns_candidates,
)
from relay.stats import RelayStats
from relay.uptrack import PublisherClock, Tap, UpTrack

logger = logging.getLogger(__name__)

MEDIA_SETUP_SECONDS = 20.0
"""From the client's first offer to a connected transport, at most (ICE + DTLS)."""


@dataclass(eq=False)
class Subscription:
    """One publisher track forwarded to this peer."""

    publisher_id: str
    kind: str
    leg: Leg
    transceiver: RTCRtpTransceiver | None = None
    """None until the next server offer adds it to the connection."""


class RelayPeer:
    """One participant's server-side peer connection and its forwarding."""

    DRAIN_SOCKETS = True
    """Read each socket until it would block per readiness callback (see
    ``aiortc_internals.DatagramPath``); False wraps aioice's datagram callback instead."""

    def __init__(
        self,
        peer_id: str,
        *,
        codec: str = "VP8",
        ice_servers: list[dict] | None = None,
        publish: bool = True,
        totals: RelayStats | None = None,
        certificate: DtlsCertificate | None = None,
    ) -> None:
        """``certificate``: the process's DTLS certificate (a node passes one for all its
        peers); without one the connection gets a certificate of its own."""
        self.peer_id = peer_id
        self.codec = VisitCodec.named(codec)
        self.publish = publish
        aiortc_internals.defer_bitrate_estimators()  # the relay's receivers never start
        certificates = certificate if certificate is not None else DtlsCertificate()
        self._pc = certificates.peer_connection(rtc_configuration(ice_servers))
        self._dtls = aiortc_internals.DtlsRole()
        self.lost = asyncio.Event()
        """Set when the connection cannot be set up or fails on its own (ICE found no pair,
        DTLS failed, ICE consent expired): the owner ends the session, since no media can
        flow. :attr:`failure` says why."""
        self.failure: str | None = None
        """Why media failed, in words safe to show the client; None while it has not."""
        self._connected_once = False
        self._setup_timer: asyncio.TimerHandle | None = None
        self._pc.on("connectionstatechange", self._on_connection_state)
        self._stats = RelayStats()
        self._stat_targets = (self._stats,) if totals is None else (self._stats, totals)
        self._clock = PublisherClock()
        self._uptracks: dict[str, UpTrack] = {}
        self._publishing: dict[str, RTCRtpTransceiver] = {}
        self._subscriptions: dict[tuple[str, str], Subscription] = {}
        self._unnegotiated: list[Subscription] = []
        self._departed: list[Subscription] = []
        self._transports: dict[int, MediaTransport] = {}
        self._tasks: set[asyncio.Future[None]] = set()
        self._forwarding = True
        self._video = True
        self._held = False
        self._closed = False
        self._broken = False
        self._numbering: aiortc_internals.RtpNumbering | None = None
        """RTP numbering of the client's last offer; every server offer keeps it."""
        self._offered: list[MediaSection] | None = None
        """The m-lines of the server's last offer (its answer is checked against them)."""

    # --- state ---------------------------------------------------------------

    @property
    def connection_state(self) -> str:
        return self._pc.connectionState

    @property
    def dtls_role(self) -> str:
        """The DTLS role the connection's transport has: ``server`` once the first offer was
        answered (``client`` if the client insisted on being the server), ``auto`` before."""
        return aiortc_internals.dtls_role(self._pc)

    @property
    def connection(self) -> RTCPeerConnection:
        """The aiortc connection, for inspection only: negotiate through this class."""
        return self._pc

    @property
    def forwarding(self) -> bool:
        return self._forwarding

    @property
    def video_enabled(self) -> bool:
        return self._video

    @property
    def held(self) -> bool:
        return self._held

    @property
    def counters(self) -> RelayStats:
        """This peer's own counters (live object)."""
        return self._stats

    def published_kinds(self) -> list[str]:
        """Kinds this peer's client sends to the relay (after its offer)."""
        return [kind for kind in MEDIA_KINDS if kind in self._uptracks]

    def uptrack(self, kind: str) -> UpTrack:
        """The track of ``kind`` this peer publishes (KeyError if it publishes none)."""
        return self._uptracks[kind]

    def legs(self) -> list[Leg]:
        """The legs forwarding other peers' tracks to this peer (for inspection)."""
        return [s.leg for s in self._subscriptions.values()]

    def add_tap(self, kind: str, tap: Tap) -> Any:
        """Hand every packet this peer publishes of ``kind`` to ``tap`` (for recording);
        returns the function that removes it. See :meth:`UpTrack.add_tap`."""
        return self._uptracks[kind].add_tap(tap)

    def stats(self) -> dict:
        """Counters and state, for logs, ``/metrics`` and tests.

        ``video_encoders`` counts server senders that opened a video encoder and
        ``decoders_running`` receivers with a live decoder thread: aiortc's own media
        machinery never starts here, so both stay 0.
        """
        transceivers = self._pc.getTransceivers()
        return {
            "peer_id": self.peer_id,
            "connection_state": self.connection_state,
            "forwarding": self._forwarding,
            "video": self._video,
            "held": self._held,
            "publish": self.publish,
            "subscriptions": len(self._subscriptions),
            "legs_live": sum(1 for s in self._subscriptions.values() if s.leg.live),
            "video_encoders": sum(
                1
                for t in transceivers
                if t.kind == "video" and aiortc_internals.encoding_context(t.sender) is not None
            ),
            "decoders_running": sum(
                1 for t in transceivers if aiortc_internals.decoder_running(t.receiver)
            ),
            **self._stats.as_dict(),
        }

    # --- negotiation ---------------------------------------------------------

    async def accept_offer(self, sdp: str, joining: Callable[[], None] | None = None) -> str:
        """Apply a client offer (first or re-offer) and return the answer SDP.

        ``joining``, for the first offer: called once the offer is applied and before the
        answer is made, to wire this peer into its room (``Room.add``); the answer then
        carries the first publisher of each kind on the client's own m-line (module
        docstring), and :attr:`offer_needed` tells whether a server offer must follow.

        Raises UnsupportedOffer for anything unusable; the connection is left
        as it was when the offer fails the checks made before aiortc sees it.
        """
        if self._closed:
            raise UnsupportedOffer("the session's media connection is closed")
        if self._broken:
            raise UnsupportedOffer("a refused offer left the media connection unusable; rejoin")
        if self._pc.signalingState != "stable":
            raise UnsupportedOffer("an offer crossed the server's pending offer; answer it first")
        media = check_description(sdp, self.codec)
        try:
            self._prepare_transceivers(media)
        except AiortcInternalsChanged as exc:
            self._broken = True
            logger.error("peer %s: the packet path is unavailable: %s", self.peer_id, exc)
            raise UnsupportedOffer(
                "the server cannot forward media (its aiortc version is not supported)"
            ) from exc
        numbering = aiortc_internals.rtp_numbering(sdp)  # read before aiortc takes the parse
        try:
            self._dtls.adopt(self._pc)
            remote = await aiortc_internals.set_remote_description(
                self._pc, without_mdns_candidates(sdp), "offer"
            )
            aiortc_internals.extend_negotiation(self._pc, remote, self._publishing_mids())
            self._dtls.choose(self._pc, _bundle_setup(media))
            if joining is not None:
                joining()
                self._carry(media)
            await aiortc_internals.set_local_answer(self._pc)
        except Exception as exc:
            # aiortc may have changed the connection half-way: do not build on it.
            self._broken = True
            logger.info("peer %s: offer refused by aiortc: %r", self.peer_id, exc)
            raise UnsupportedOffer(f"offer cannot be applied: {exc}") from exc
        self._numbering = numbering
        self._watch_setup()
        return self._pc.localDescription.sdp

    @property
    def offer_needed(self) -> bool:
        """Do subscriptions wait for a server offer (new ones to add, departed ones to
        retire)? False after a joiner's answer carried all it had."""
        return bool(self._unnegotiated or self._departed)

    async def create_offer(self) -> str:
        """A server offer that adds and retires forwarded tracks.

        Call after ``Room.add``/``Room.remove`` named this peer; feed the
        client's answer to :meth:`accept_answer`. Raises PeerClosed.
        """
        if self._closed or self._broken:
            raise PeerClosed(self.peer_id)
        for subscription in self._unnegotiated:
            subscription.transceiver = self._add_sender(subscription)
        self._unnegotiated.clear()
        retiring = [s.transceiver for s in self._departed if s.transceiver is not None]
        self._departed.clear()
        for transceiver in retiring:
            transceiver.direction = "inactive"
        try:
            # Not pc.createOffer(): aiortc would renumber RTP header extensions
            # and payload types, which a browser refuses under BUNDLE.
            offer, description = await aiortc_internals.create_offer(
                self._pc, self._numbering, self._dtls.role
            )
            self._dtls.adopt(self._pc)
            await aiortc_internals.set_local_description(self._pc, offer, description)
        except Exception:
            if self._closed:  # closed while the offer was being made
                raise PeerClosed(self.peer_id) from None
            raise
        self._offered = aiortc_internals.summarize(description).media
        return self._pc.localDescription.sdp  # (with the candidates gathered meanwhile)

    async def accept_answer(self, sdp: str) -> None:
        """Apply the client's answer to :meth:`create_offer`; raises UnsupportedOffer."""
        if self._closed:
            raise UnsupportedOffer("the session's media connection is closed")
        if self._pc.signalingState != "have-local-offer":
            raise UnsupportedOffer("no server offer is waiting for an answer")
        assert self._offered is not None  # have-local-offer: create_offer made one
        check_description(sdp, self.codec, answer_to=self._offered)
        disagreements = self._dtls.disagreements
        try:
            self._dtls.adopt(self._pc)
            remote = await aiortc_internals.set_remote_description(
                self._pc, without_mdns_candidates(sdp), "answer"
            )
            aiortc_internals.extend_negotiation(self._pc, remote, self._publishing_mids())
        except Exception as exc:
            logger.info("peer %s: answer refused by aiortc: %r", self.peer_id, exc)
            raise UnsupportedOffer(f"answer cannot be applied: {exc}") from exc
        if self._dtls.disagreements != disagreements:
            logger.info(
                "peer %s: the client's answer named other DTLS roles on some m-lines; "
                "kept the established role (%s)",
                self.peer_id,
                self._dtls.role,
            )

    async def add_candidate(
        self, candidate: str, sdp_mid: str | None, sdp_mline_index: int | None
    ) -> None:
        """Add a trickled remote ICE candidate; ValueError if it is malformed.

        An empty candidate (end of candidates) and mDNS ``.local`` candidates
        are ignored (see ``negotiation.without_mdns_candidates``).
        """
        if not isinstance(candidate, str):
            raise ValueError("candidate must be a string")
        if sdp_mid is not None and not isinstance(sdp_mid, str):
            raise ValueError("sdpMid must be a string or null")
        if sdp_mline_index is not None and (
            not isinstance(sdp_mline_index, int) or isinstance(sdp_mline_index, bool)
        ):
            raise ValueError("sdpMLineIndex must be an integer or null")
        if sdp_mid is None and sdp_mline_index is None:
            raise ValueError("candidate needs sdpMid or sdpMLineIndex")
        text = candidate.strip()
        if text.startswith("a="):
            text = text[2:]
        if text.startswith("candidate:"):
            text = text[len("candidate:") :]
        if not text or self._closed or is_mdns_candidate(text):
            return
        parsed = aiortc_internals.candidate_from_sdp(text)
        parsed.sdpMid = sdp_mid
        parsed.sdpMLineIndex = sdp_mline_index
        try:
            await self._pc.addIceCandidate(parsed)
        except Exception as exc:
            raise ValueError(f"candidate refused: {exc}") from exc

    # --- forwarding control --------------------------------------------------

    def stop_forwarding(self) -> None:
        """Stop all media from and to this peer, now (synchronous).

        After this returns the relay forwards nothing more from this peer's
        client and sends nothing more to it (a packet already handed to the
        socket is on the wire): the flags the packet path checks per packet
        and per NACK are down, so nothing is retransmitted either.
        Irreversible; ``close()`` follows.
        """
        if not self._forwarding:
            return
        self._forwarding = False
        for transport in self._transports.values():
            transport.stop()
        for uptrack in self._uptracks.values():
            uptrack.set_active(False)
        for subscription in self._subscriptions.values():
            subscription.leg.pause()

    def set_video(self, enabled: bool) -> None:
        """Turn video from and to this peer off or on; audio continues.

        Synchronous like :meth:`stop_forwarding`: video is dropped at the
        packet gates in both directions. When video comes back every video
        leg restarts at a (requested) keyframe.
        """
        self._video = bool(enabled)
        self._apply_gates()

    def hold(self, held: bool) -> None:
        """Hold all media from and to this peer, or let it flow again (a minor
        whose guardian is not in the call): reversible, unlike
        :meth:`stop_forwarding`, and the peer stays wired into its room.

        Synchronous: once this returns nothing more of this peer's client is
        forwarded, and nothing more (nor any retransmission) is sent to it.
        Released, every video leg restarts at a (requested) keyframe; a video
        that :meth:`set_video` turned off stays off.
        """
        self._held = bool(held)
        self._apply_gates()

    def _allows(self, kind: str) -> bool:
        """Does media of ``kind`` flow from and to this peer now?"""
        return self._forwarding and not self._held and (kind == "audio" or self._video)

    def _apply_gates(self) -> None:
        """Open or close the packet gates in both directions as :meth:`_allows` says."""
        if not self._forwarding:
            return
        for kind, uptrack in self._uptracks.items():
            uptrack.set_active(self._allows(kind))
        for subscription in self._subscriptions.values():
            if self._allows(subscription.kind):
                subscription.leg.resume()
            else:
                subscription.leg.pause()

    def _on_connection_state(self) -> None:
        state = self._pc.connectionState
        if state == "connected":
            self._connected_once = True
            self._cancel_setup_timer()
        elif state in ("failed", "closed") and not self._closed:
            self._fail(self._describe_failure())

    def _watch_setup(self) -> None:
        """Media that is not up ``MEDIA_SETUP_SECONDS`` after the first offer fails: a DTLS
        server waiting for a ClientHello that never comes would otherwise wait forever."""
        if self._setup_timer is None and not self._connected_once:
            self._setup_timer = asyncio.get_running_loop().call_later(
                MEDIA_SETUP_SECONDS, self._setup_timed_out
            )

    def _setup_timed_out(self) -> None:
        self._setup_timer = None
        if self._connected_once or self._closed:
            return
        ice, dtls = aiortc_internals.dtls_state(self._pc)
        if ice == "completed" and dtls in ("new", "connecting"):
            cause = (
                f"the DTLS handshake did not complete (the client sent no {self._awaited_hello()})"
            )
        elif self._dtls.failure:
            cause = f"the DTLS handshake failed: {self._dtls.failure}"
        else:
            cause = "no ICE candidate pair between the client and the server answered"
        self._fail(f"media was not established within {MEDIA_SETUP_SECONDS:.0f} s: {cause}")

    def _awaited_hello(self) -> str:
        return "ClientHello" if self._dtls.role == "server" else "ServerHello"

    def _describe_failure(self) -> str:
        ice, dtls = aiortc_internals.dtls_state(self._pc)
        if self._dtls.failure:
            return f"the DTLS handshake failed: {self._dtls.failure}"
        if dtls == "failed":
            return (
                "DTLS failed after the handshake (certificate fingerprint or SRTP profile mismatch)"
            )
        if self._connected_once:
            return "the media connection was lost (the client stopped answering ICE consent checks)"
        if ice == "failed":
            return (
                "ICE failed: no candidate pair between the client and the server answered "
                "(a firewall may block UDP; a TURN server may be needed)"
            )
        return f"the media connection failed (ICE {ice}, DTLS {dtls})"

    def _fail(self, cause: str) -> None:
        if self.failure is None:
            self.failure = cause
        self._cancel_setup_timer()
        self.lost.set()

    def _cancel_setup_timer(self) -> None:
        if self._setup_timer is not None:
            self._setup_timer.cancel()
            self._setup_timer = None

    async def close(self) -> None:
        """Stop forwarding, then close the connection. Idempotent."""
        self.stop_forwarding()
        if not self._closed:
            self._closed = True
            self._cancel_setup_timer()
            for uptrack in self._uptracks.values():
                uptrack.close()
            for subscription in self._subscriptions.values():
                subscription.leg.close()
            for transport in self._transports.values():
                transport.close()
            for task in list(self._tasks):
                task.cancel()
        try:
            await self._pc.close()
        except Exception:
            # aiortc cannot always close a connection a bad offer left half-set.
            logger.exception("peer %s: closing the peer connection failed", self.peer_id)

    # --- wiring (called by Room) ---------------------------------------------

    def subscribe_to(self, publisher: RelayPeer) -> bool:
        """Forward ``publisher``'s tracks to this peer; True if any were new.

        The tracks reach the client after the next :meth:`create_offer`;
        video starts at a keyframe, requested once the leg is negotiated.
        """
        added = False
        for kind in publisher.published_kinds():
            key = (publisher.peer_id, kind)
            if key in self._subscriptions:
                continue
            accepting = self._allows(kind)
            uptrack = publisher.uptrack(kind)
            leg = Leg(uptrack, self.peer_id, self._stat_targets, open=accepting)
            subscription = Subscription(publisher.peer_id, kind, leg)
            self._subscriptions[key] = subscription
            self._unnegotiated.append(subscription)
            uptrack.add_leg(leg)
            added = True
        return added

    def unsubscribe_from(self, publisher_id: str) -> bool:
        """Stop forwarding ``publisher_id``'s tracks here, now.

        True if negotiated tracks were retired (a server offer is needed).
        """
        retired = False
        for kind in MEDIA_KINDS:
            subscription = self._subscriptions.pop((publisher_id, kind), None)
            if subscription is None:
                continue
            subscription.leg.close()
            if subscription in self._unnegotiated:
                self._unnegotiated.remove(subscription)
            elif subscription.transceiver not in self._publishing.values():
                self._departed.append(subscription)  # (a carried one stays, silent: no offer)
                retired = True
        return retired

    # --- internals -----------------------------------------------------------

    def _prepare_transceivers(self, media: list[MediaSection]) -> None:
        """Create, before aiortc sees the offer, a transceiver per new m-line.

        aiortc negotiates codecs inside ``setRemoteDescription`` for the
        transceivers it creates itself, too late for ``setCodecPreferences``;
        it reuses a same-kind transceiver that has no mid yet, so the relay
        creates those first. The first audio and the first video m-line
        publish; any further ones (and all of a receive-only peer) are
        inactive.
        """
        known = {t.mid for t in self._pc.getTransceivers() if t.mid is not None}
        for m in media:
            if m.kind not in MEDIA_KINDS or m.mid in known:
                continue
            publishing = self.publish and m.kind not in self._uptracks
            transceiver = self._pc.addTransceiver(
                m.kind, direction="recvonly" if publishing else "inactive"
            )
            transceiver.setCodecPreferences(self.codec.preferences(m.kind))
            if publishing:
                self._receive(m.kind, transceiver)

    def _receive(self, kind: str, transceiver: RTCRtpTransceiver) -> None:
        uptrack = UpTrack(kind, self.peer_id, self.codec.name, self._clock, self._stat_targets)
        uptrack.active = self._allows(kind)
        self._uptracks[kind] = uptrack
        self._publishing[kind] = transceiver
        aiortc_internals.take_over_receiver(
            transceiver.receiver, partial(self._uptrack_started, uptrack, transceiver)
        )

    def _publishing_mids(self) -> set[str]:
        return {t.mid for t in self._publishing.values() if t.mid is not None}

    def _uptrack_started(
        self, uptrack: UpTrack, transceiver: RTCRtpTransceiver, parameters: Any
    ) -> None:
        """aiortc would start the publishing m-line's receiver now (DTLS is connected)."""
        uptrack.configure(parameters)
        transport = self._transport_for(transceiver)
        if transport is not None:
            transport.add_uptrack(uptrack)

    def _carry(self, media: list[MediaSection]) -> None:
        """Put the first subscription of each kind on the client's own m-line of that kind,
        where the client offered it ``sendrecv``, before the answer is made (module
        docstring). A publishing m-line carries once: it is ``recvonly`` until then."""
        offered = {m.mid: m.direction for m in media}
        for kind, transceiver in self._publishing.items():
            if transceiver.direction != "recvonly" or offered.get(transceiver.mid) != "sendrecv":
                continue
            subscription = next((s for s in self._unnegotiated if s.kind == kind), None)
            if subscription is None:
                continue
            transceiver.direction = "sendrecv"
            self._take_over_sending(subscription, transceiver)
            subscription.transceiver = transceiver
            self._unnegotiated.remove(subscription)

    def _add_sender(self, subscription: Subscription) -> RTCRtpTransceiver:
        transceiver = self._pc.addTransceiver(subscription.kind, direction="sendonly")
        transceiver.setCodecPreferences(self.codec.preferences(subscription.kind))
        self._take_over_sending(subscription, transceiver)
        aiortc_internals.take_over_receiver(transceiver.receiver, _sends_only)
        return transceiver

    def _take_over_sending(
        self, subscription: Subscription, transceiver: RTCRtpTransceiver
    ) -> None:
        """``transceiver``'s sender sends ``subscription``'s leg (msid = its publisher)."""
        aiortc_internals.set_stream_id(transceiver.sender, subscription.publisher_id)
        aiortc_internals.take_over_sender(
            transceiver.sender, partial(self._leg_started, subscription, transceiver)
        )

    def _leg_started(
        self, subscription: Subscription, transceiver: RTCRtpTransceiver, parameters: Any
    ) -> None:
        """aiortc would start the leg's sender now: its m-line is negotiated, DTLS connected."""
        transport = self._transport_for(transceiver)
        if transport is not None:
            ssrcs = aiortc_internals.sender_ssrcs(transceiver.sender)
            subscription.leg.start(parameters, transport, ssrcs)

    def _transport_for(self, transceiver: RTCRtpTransceiver) -> MediaTransport | None:
        """The packet path of ``transceiver``'s DTLS transport, set up on first use.

        Runs in aiortc's connection task: a changed aiortc fails the session (with the
        cause logged) rather than that task.
        """
        if self._closed:
            return None
        try:
            return self._media_transport(transceiver)
        except AiortcInternalsChanged as exc:
            logger.error("peer %s: the packet path is unavailable: %s", self.peer_id, exc)
            self._fail("the server cannot forward media (its aiortc version is not supported)")
            return None

    def _media_transport(self, transceiver: RTCRtpTransceiver) -> MediaTransport:
        dtls = aiortc_internals.dtls_transport_of(transceiver)
        transport = self._transports.get(id(dtls))
        if transport is not None:
            return transport
        first = self._pc.getTransceivers()[0]
        transport = MediaTransport(
            DatagramPath(dtls),
            self.peer_id,
            self._stat_targets,
            rtcp_ssrc=aiortc_internals.sender_ssrcs(first.sender)[0],
            cname=aiortc_internals.local_cname(self._pc),
        )
        self._transports[id(dtls)] = transport
        transport.start(drain=self.DRAIN_SOCKETS)
        if not self._forwarding:
            transport.stop()

        def on_state() -> None:
            if dtls.state in ("closed", "failed"):
                transport.close()

        dtls.on("statechange", on_state)
        return transport


def _sends_only(parameters: Any) -> None:
    """A leg's m-line is sendonly: its receiver is never started, nor wanted."""


def _bundle_setup(media: list[MediaSection]) -> str | None:
    """The ``a=setup`` of an offer's first media section: the BUNDLE transport's."""
    return media[0].dtls_role if media else None
