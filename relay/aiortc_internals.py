"""Every use of aiortc's, aioice's and asyncio's private internals, in one place.

aiortc (pinned ``>=1.16,<1.17``) keeps ICE, the DTLS handshake, the SRTP keys, SDP and
the transceivers for Parlor, but has no public API for what an SFU does with them:

* a **packet fast path** below aioice's queue (:class:`DatagramPath`): once a transport's
  DTLS is connected, every SRTP/SRTCP datagram is taken from the nominated pair's socket
  in a callback, unprotected with the transport's own SRTP session and handed to the relay
  synchronously; the relay protects what it sends with the same transport's session and
  ``sendto``-s it on the nominated pair. No task wake-up, no ``RtpPacket`` object;
* keeping aiortc's own RTP machinery **idle** (:func:`take_over_sender`,
  :func:`take_over_receiver`): senders and receivers are never started, so no jitter
  buffer, decoder thread, NACK generator, sender report or retransmission of aiortc's runs,
  while their SSRCs (the ones the SDP declares) stay the legs' SSRCs;
* negotiating what aiortc's fixed local lists lack, **per transceiver**
  (:func:`extend_negotiation`, :func:`create_offer`): transport-wide congestion control on
  the publisher-side m-lines and Opus in-band FEC, while the aiortc of test clients in the
  same process stays stock;
* restricting ICE to chosen local addresses, keeping a client's RTP numbering in server
  offers (see ``create_offer``) and fixing the DTLS role (:class:`DtlsRole`).

Each workaround names the private attribute it relies on, checks that the attribute is
there before touching it and raises :class:`AiortcInternalsChanged` otherwise, so an aiortc
upgrade fails loudly (``tests/relay/test_aiortc_internals.py``) instead of silently
decoding, stalling or sending garbage.

Nothing outside this module touches a name-mangled attribute, an underscore method of
aiortc, aioice or asyncio, or aiortc's undocumented modules (``aiortc.sdp``,
``aiortc.codecs``, ``aiortc.rtcpeerconnection``).
"""

from __future__ import annotations

import copy
import functools
import socket
import struct
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aioice.ice
import aiortc
from aiortc import (
    RTCCertificate,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpCodecCapability,
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc import rtcpeerconnection as aiortc_peerconnection
from aiortc import rtcrtpreceiver as aiortc_receiver
from aiortc import sdp as aiortc_sdp
from aiortc.codecs import CODECS
from aiortc.rtcrtpparameters import RTCRtcpFeedback
from OpenSSL import SSL
from pylibsrtp._binding import ffi as srtp_ffi

SUPPORTED_AIORTC = ("1.16.",)

# Private names this module relies on (name-mangled attributes and methods).
RECEIVER_DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"
RECEIVER_DECODER_THREAD = "_RTCRtpReceiver__decoder_thread"
RECEIVER_STARTED = "_RTCRtpReceiver__started"
RECEIVER_SEND_PLI = "_send_rtcp_pli"
SENDER_SEND_KEYFRAME = "_send_keyframe"
SENDER_HANDLE_RTCP = "_handle_rtcp_packet"
SENDER_STREAM_ID = "_stream_id"
SENDER_RTP_HISTORY = "_RTCRtpSender__rtp_history"
SENDER_ENCODER = "_RTCRtpSender__encoder"
WRAP_DESCRIPTION = "wrap_session_description"  # createOffer/createAnswer call it last
TRANSCEIVER_CODECS = "_codecs"  # what the transceiver's sender/receiver start with
TRANSCEIVER_HEADER_EXTENSIONS = "_headerExtensions"
RECEIVER_BITRATE_ESTIMATOR = "_RTCRtpReceiver__remote_bitrate_estimator"
RECEIVER_NACK_GENERATOR = "_RTCRtpReceiver__nack_generator"
REMOTE_TRACK_QUEUE = "_queue"  # RemoteStreamTrack's asyncio.Queue of decoded frames

# The function aioice calls to list local addresses; captured once so that
# unpinning can restore it.
ORIGINAL_GET_HOST_ADDRESSES: Callable[[bool, bool], list[str]] = aioice.ice.get_host_addresses
# aiortc's SDP parser, captured once (see _Handover).
ORIGINAL_PARSE: Callable[[str], Any] = aiortc_sdp.SessionDescription.parse
# The REMB estimator class aiortc's receivers build; captured once (see defer_bitrate_estimators).
RECEIVER_ESTIMATOR_CLASS = "RemoteBitrateEstimator"
ORIGINAL_BITRATE_ESTIMATOR: type = getattr(aiortc_receiver, RECEIVER_ESTIMATOR_CLASS)

EncodedFrameHandler = Callable[[RTCRtpCodecParameters, bytes, int], None]
HostAddressProvider = Callable[[bool, bool], list[str]]


class AiortcInternalsChanged(RuntimeError):
    """aiortc/aioice no longer has the private shape this relay depends on."""


def _require(obj: object, name: str) -> None:
    if not hasattr(obj, name):
        raise AiortcInternalsChanged(
            f"aiortc {aiortc.__version__}: {type(obj).__name__} has no attribute "
            f"{name!r}; relay/aiortc_internals.py must be updated for this aiortc "
            f"version (supported: {', '.join(SUPPORTED_AIORTC)}x)"
        )


def version_supported() -> bool:
    """True when the installed aiortc is one this module was written against."""
    return aiortc.__version__.startswith(SUPPORTED_AIORTC)


# --- receiving encoded frames -------------------------------------------------


class _EncodedFrameSink:
    """Stands in for the receiver's decoder queue.

    ``RTCRtpReceiver._handle_rtp_packet`` puts ``(codec, JitterFrame)`` on its
    decoder queue for a decoder thread. This object takes that place: ``put``
    hands the still-encoded frame straight to the relay on the event loop, and
    ``get`` (called by the decoder thread aiortc starts in ``receive()``)
    returns ``None`` at once, so that thread exits before creating a decoder.
    """

    def __init__(self, on_frame: EncodedFrameHandler, on_end: Callable[[], None]) -> None:
        self._on_frame = on_frame
        self._on_end = on_end
        self._ended = False

    def put(self, item: Any) -> None:
        if item is None:
            if not self._ended:
                self._ended = True
                self._on_end()
            return
        codec, frame = item
        self._on_frame(codec, frame.data, frame.timestamp)

    def get(self, block: bool = True, timeout: float | None = None) -> None:
        return None


def install_encoded_frame_sink(
    receiver: RTCRtpReceiver, on_frame: EncodedFrameHandler, on_end: Callable[[], None]
) -> None:
    """Make ``receiver`` hand complete encoded frames to ``on_frame``, undecoded.

    Must be called before aiortc starts the receiver (before negotiation
    completes). ``on_frame(codec, data, timestamp)`` runs on the event loop
    for every frame the jitter buffer completes; ``timestamp`` is the RTP
    timestamp re-based to start at 0. ``on_end`` runs when the receiver stops.
    """
    _require(receiver, RECEIVER_DECODER_QUEUE)
    _require(receiver, RECEIVER_DECODER_THREAD)
    _require(receiver, RECEIVER_STARTED)
    if getattr(receiver, RECEIVER_STARTED):
        raise RuntimeError("the receiver has already started decoding")
    setattr(receiver, RECEIVER_DECODER_QUEUE, _EncodedFrameSink(on_frame, on_end))


def decoder_running(receiver: RTCRtpReceiver) -> bool:
    """True when aiortc's decoder thread for ``receiver`` is alive."""
    _require(receiver, RECEIVER_DECODER_THREAD)
    thread = getattr(receiver, RECEIVER_DECODER_THREAD)
    return isinstance(thread, threading.Thread) and thread.is_alive()


def decoded_frames_queued(receiver: RTCRtpReceiver) -> int:
    """Decoded frames waiting on ``receiver``'s track (the end marker aside)."""
    track = receiver.track
    if track is None:
        return 0
    _require(track, REMOTE_TRACK_QUEUE)
    queue = getattr(track, REMOTE_TRACK_QUEUE)
    items = list(getattr(queue, "_queue", ()))  # asyncio.Queue keeps a deque
    return sum(1 for item in items if item is not None)


def request_picture_loss(receiver: RTCRtpReceiver) -> Awaitable[None] | None:
    """An RTCP PLI to the remote sender of each SSRC ``receiver`` hears.

    Returns the coroutine that sends it, or None while no packet has arrived
    (then the first frame to come is a keyframe anyway).
    ``getSynchronizationSources`` may include the RTX SSRC; a PLI naming it
    is ignored by the remote, so sending to every active SSRC is harmless.
    """
    _require(receiver, RECEIVER_SEND_PLI)
    send_pli = getattr(receiver, RECEIVER_SEND_PLI)
    ssrcs = [source.source for source in receiver.getSynchronizationSources()]
    if not ssrcs:
        return None

    async def send() -> None:
        for ssrc in ssrcs:
            await send_pli(ssrc)

    return send()


# --- sending encoded frames ---------------------------------------------------


def route_keyframe_requests(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Call ``callback`` when the remote end of ``sender`` asks for a keyframe.

    aiortc's sender answers an RTCP PLI or FIR by calling its own
    ``_send_keyframe``, which only flags its encoder; in passthrough the
    encoder is never used, so the request would be lost.
    """
    _require(sender, SENDER_SEND_KEYFRAME)
    _require(sender, SENDER_HANDLE_RTCP)
    setattr(sender, SENDER_SEND_KEYFRAME, callback)


def set_stream_id(sender: RTCRtpSender, stream_id: str) -> None:
    """Set the msid stream id that ``sender``'s m-line will carry.

    Browsers group received tracks by this id (``event.streams[0].id``); the
    relay sets it to the publisher's id so audio and video of one participant
    land in one MediaStream.
    """
    _require(sender, SENDER_STREAM_ID)
    setattr(sender, SENDER_STREAM_ID, stream_id)


def forget_sent_packets(sender: RTCRtpSender) -> None:
    """Drop ``sender``'s retransmission history, so a NACK resends nothing."""
    _require(sender, SENDER_RTP_HISTORY)
    history = getattr(sender, SENDER_RTP_HISTORY)
    if not isinstance(history, dict):
        raise AiortcInternalsChanged(f"{SENDER_RTP_HISTORY} is no longer a dict")
    history.clear()


def encoding_context(sender: RTCRtpSender) -> object | None:
    """The codec context ``sender``'s encoder has opened, or None.

    aiortc opens a libvpx/libx264 context only when it encodes a decoded
    frame; in passthrough this stays None for video.
    """
    _require(sender, SENDER_ENCODER)
    encoder = getattr(sender, SENDER_ENCODER)
    return None if encoder is None else getattr(encoder, "codec", None)


# --- the packet path ----------------------------------------------------------

ICE_CONNECTION = "_connection"  # RTCIceTransport -> aioice.ice.Connection
ICE_NOMINATED = "_nominated"  # Connection: {component: CandidatePair}
ICE_PROTOCOLS = "_protocols"  # Connection: [StunProtocol], one per local candidate
DTLS_RX_SRTP = "_rx_srtp"  # RTCDtlsTransport: pylibsrtp.Session for what arrives
DTLS_TX_SRTP = "_tx_srtp"  # RTCDtlsTransport: pylibsrtp.Session for what is sent
DATAGRAM_SOCKET = "_sock"  # asyncio's selector datagram transport: its socket
DATAGRAM_CONN_LOST = "_conn_lost"
LOOP_ADD_READER = "_add_reader"  # asyncio selector loop: (re)register a transport's reader
LOOP_REMOVE_READER = "_remove_reader"
SRTP_BUFFER = "_cdata"  # pylibsrtp.Session: the one buffer every (un)protect goes through
SRTP_VIEW = "_buffer"
SRTP_BUFFER_BYTES = 4096
"""pylibsrtp's buffer is 1500 bytes and ``protect`` keeps 144 of them for a trailer, so a
packet over 1356 bytes cannot be protected ("packet is too long"). aiortc's packetizer
never makes one (1300), but a forwarder carries what publishers made: GStreamer's
``rtpvp8pay`` fills a 1400-byte MTU, and the leg's header extension adds to it."""
SENDER_SSRC = "_ssrc"
SENDER_RTX_SSRC = "_rtx_ssrc"
RTP_COMPONENT = 1
DRAIN_BATCH = 64
"""Datagrams read from one socket per readiness callback, at most (fairness)."""

SO_TIMESTAMPNS = 35 if sys.platform == "linux" else 0
"""Linux's socket option (and control message type, ``SCM_TIMESTAMPNS``) by which the
kernel stamps each datagram with the time it was received (a ``struct timespec`` on
CLOCK_REALTIME); Python's socket module does not name it."""
_TIMESPEC = struct.Struct("@qq")
_ANCILLARY_BYTES = 64
MAX_ARRIVAL_AGE_NS = 2_000_000_000
"""A kernel stamp older than this (or in the future) means the wall clock was set: the
datagram is stamped with the time it is read instead."""

SrtpHandler = Callable[[bytes, int], None]
"""``handler(datagram, arrival_us)``: the arrival on the monotonic clock, in µs."""


class DatagramPath:
    """SRTP and SRTCP of one DTLS transport, below aioice's queue.

    aioice hands every datagram to the DTLS transport through an ``asyncio.Queue`` that a
    task awaits, and aiortc's send path awaits a chain of coroutines: task wake-ups on both
    hops of every packet, the bulk of a relay's cost. Once the transport is ``connected``:

    * :meth:`intercept` takes every datagram whose first byte is 128–191 (RTP/RTCP by
      RFC 7983) off the transport's sockets and calls ``handler(datagram)`` synchronously,
      still protected; STUN (0–3) and DTLS (20–63) go on to aioice as before. With
      ``drain`` (the default) the socket's asyncio reader is replaced by one that reads
      until the socket would block (at most :data:`DRAIN_BATCH`), so one event-loop
      iteration serves every datagram that arrived meanwhile; without it aioice's
      ``StunProtocol.datagram_received`` is wrapped (one datagram per iteration). The
      handler also gets the datagram's arrival time: with ``drain`` on Linux the kernel's
      own receive stamp (``SO_TIMESTAMPNS``), so a busy event loop does not shift it (the
      transport-cc feedback a browser's congestion control runs on reports the network's
      timing, not the server's); otherwise the time it is read.
    * :attr:`rx` and :attr:`tx` are the transport's own SRTP sessions (``unprotect``,
      ``unprotect_rtcp``, ``protect``, ``protect_rtcp``): using the same session as aiortc
      keeps one SRTCP index and replay window per direction.
    * :meth:`send` puts a protected datagram on the nominated pair, read again on every
      call so that a pair aioice nominates later is followed.
    """

    def __init__(self, dtls_transport: Any) -> None:
        for name in (DTLS_RX_SRTP, DTLS_TX_SRTP):
            _require(dtls_transport, name)
        ice = dtls_transport.transport
        _require(ice, ICE_CONNECTION)
        connection = getattr(ice, ICE_CONNECTION)
        for name in (ICE_NOMINATED, ICE_PROTOCOLS):
            _require(connection, name)
        self._dtls = dtls_transport
        self._nominated: dict[int, Any] = getattr(connection, ICE_NOMINATED)
        self._protocols: list[Any] = getattr(connection, ICE_PROTOCOLS)
        self._pair: Any = None
        self._send_to: Callable[[bytes, Any], None] | None = None
        self._address: Any = None
        self._restore: list[Callable[[], None]] = []

    @property
    def rx(self) -> Any:
        """The SRTP session that unprotects what the remote peer sends (None before DTLS)."""
        return getattr(self._dtls, DTLS_RX_SRTP)

    @property
    def tx(self) -> Any:
        """The SRTP session that protects what the relay sends (None before DTLS)."""
        return getattr(self._dtls, DTLS_TX_SRTP)

    def send(self, datagram: bytes) -> bool:
        """Send one protected datagram on the nominated pair; False when there is none."""
        pair = self._nominated.get(RTP_COMPONENT)
        if pair is not self._pair:
            if pair is None:
                return False
            self._pair = pair
            self._send_to = pair.protocol.transport.sendto
            self._address = pair.remote_addr
        assert self._send_to is not None
        self._send_to(datagram, self._address)
        return True

    def intercept(self, handler: SrtpHandler, *, drain: bool = True) -> None:
        """Hand every SRTP/SRTCP datagram arriving on the transport's sockets to ``handler``.

        Call once the DTLS transport is connected (before, the datagrams are aiortc's to
        handshake with). Idempotent; :meth:`release` undoes it.
        """
        if self._restore:
            return
        for session in (self.rx, self.tx):
            if session is not None:
                widen_srtp_buffer(session)
        for protocol in self._protocols:
            transport = getattr(protocol, "transport", None)
            if drain and _drainable(transport):
                self._restore.append(_drain_reader(protocol, transport, handler))
            else:
                self._restore.append(_wrap_datagram_received(protocol, handler))

    def release(self) -> None:
        """Give the sockets back to aioice as they were."""
        restore, self._restore = self._restore, []
        for undo in restore:
            undo()


def widen_srtp_buffer(session: Any) -> None:
    """Let ``session`` (a ``pylibsrtp.Session``) protect packets up to ~3.9 kB."""
    _require(session, SRTP_BUFFER)
    _require(session, SRTP_VIEW)
    if len(getattr(session, SRTP_BUFFER)) >= SRTP_BUFFER_BYTES:
        return
    buffer = srtp_ffi.new("char[]", SRTP_BUFFER_BYTES)
    setattr(session, SRTP_BUFFER, buffer)
    setattr(session, SRTP_VIEW, srtp_ffi.buffer(buffer))


def _drainable(transport: Any) -> bool:
    loop = getattr(transport, "_loop", None)
    return (
        transport is not None
        and hasattr(transport, DATAGRAM_SOCKET)
        and hasattr(transport, DATAGRAM_CONN_LOST)
        and hasattr(loop, LOOP_ADD_READER)
        and hasattr(loop, LOOP_REMOVE_READER)
    )


def _wrap_datagram_received(protocol: Any, handler: SrtpHandler) -> Callable[[], None]:
    _require(protocol, "datagram_received")
    original = protocol.datagram_received

    def datagram_received(data: bytes, addr: tuple[Any, ...]) -> None:
        if data and 127 < data[0] < 192:
            handler(data, time.monotonic_ns() // 1000)
        else:
            original(data, addr)

    protocol.datagram_received = datagram_received

    def undo() -> None:
        if protocol.datagram_received is datagram_received:
            del protocol.datagram_received

    return undo


def _drain_reader(protocol: Any, transport: Any, handler: SrtpHandler) -> Callable[[], None]:
    """Replace asyncio's one-datagram reader of ``transport``'s socket with a draining one."""
    sock = getattr(transport, DATAGRAM_SOCKET)
    loop = transport._loop
    fd = sock.fileno()
    original = transport._read_ready
    max_size = transport.max_size
    stamped = _stamp_arrivals(sock)
    recvfrom = sock.recvfrom
    recvmsg = sock.recvmsg

    def read_ready() -> None:
        now_ns = time.monotonic_ns()
        offset_ns = now_ns - time.time_ns() if stamped else 0  # CLOCK_REALTIME -> monotonic
        for _ in range(DRAIN_BATCH):
            if getattr(transport, DATAGRAM_CONN_LOST):
                return
            arrival_ns = now_ns
            try:
                if stamped:
                    data, ancillary, _flags, addr = recvmsg(max_size, _ANCILLARY_BYTES)
                    for level, kind, value in ancillary:
                        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                            seconds, nanoseconds = _TIMESPEC.unpack_from(value)
                            kernel_ns = seconds * 1_000_000_000 + nanoseconds + offset_ns
                            if 0 <= now_ns - kernel_ns <= MAX_ARRIVAL_AGE_NS:
                                arrival_ns = kernel_ns
                else:
                    data, addr = recvfrom(max_size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                protocol.error_received(exc)
                return
            if data and 127 < data[0] < 192:
                handler(data, arrival_ns // 1000)
            else:
                protocol.datagram_received(data, addr)

    getattr(loop, LOOP_REMOVE_READER)(fd)
    getattr(loop, LOOP_ADD_READER)(fd, read_ready)

    def undo() -> None:
        if not getattr(transport, DATAGRAM_CONN_LOST) and sock.fileno() == fd:
            getattr(loop, LOOP_REMOVE_READER)(fd)
            getattr(loop, LOOP_ADD_READER)(fd, original)

    return undo


def _stamp_arrivals(sock: socket.socket) -> bool:
    """Ask the kernel to stamp what ``sock`` receives; False where it cannot."""
    if not SO_TIMESTAMPNS:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


def sender_ssrcs(sender: RTCRtpSender) -> tuple[int, int]:
    """(media SSRC, RTX SSRC) the SDP declares for ``sender``'s m-line (``a=ssrc``)."""
    _require(sender, SENDER_SSRC)
    _require(sender, SENDER_RTX_SSRC)
    return int(getattr(sender, SENDER_SSRC)), int(getattr(sender, SENDER_RTX_SSRC))


def take_over_sender(
    sender: RTCRtpSender, started: Callable[[aiortc.RTCRtpSendParameters], None]
) -> None:
    """Keep ``sender`` idle and call ``started(parameters)`` when aiortc would start it.

    aiortc calls ``sender.send(parameters)`` once the transport is connected and the
    m-line negotiated, with the codecs, header extensions, mid and CNAME the relay must
    send with. Started, the sender would run an RTP task reading a track and an RTCP task
    sending sender reports with its own (zero) counts for the SSRC the relay uses; never
    started, it sends nothing and its ``stop`` does nothing. Call before negotiation.
    """
    _require(sender, "send")

    async def send(parameters: aiortc.RTCRtpSendParameters) -> None:
        started(parameters)

    sender.send = send  # type: ignore[method-assign]


def take_over_receiver(
    receiver: RTCRtpReceiver, started: Callable[[aiortc.RTCRtpReceiveParameters], None]
) -> None:
    """Keep ``receiver`` idle and call ``started(parameters)`` when aiortc would start it.

    The parameters carry the negotiated codecs and header extensions and the remote
    SSRCs the SDP declares (``encodings``, with their RTX SSRC). Never started, the
    receiver runs no decoder thread, jitter buffer, NACK generator or RTCP task: the relay
    receives its packets below aiortc (:class:`DatagramPath`). What a video receiver
    allocates for them up front (a REMB estimator's rate buckets, ~100 kB) is let go.
    """
    _require(receiver, "receive")
    for name in (RECEIVER_BITRATE_ESTIMATOR, RECEIVER_NACK_GENERATOR):
        _require(receiver, name)
        setattr(receiver, name, None)  # aiortc checks both for None before use

    async def receive(parameters: aiortc.RTCRtpReceiveParameters) -> None:
        started(parameters)

    receiver.receive = receive  # type: ignore[method-assign]


def take_over_transceivers(
    pc: RTCPeerConnection,
    taken: set[int],
    sender_started: Callable[[aiortc.RTCRtpTransceiver, Any], None],
    receiver_started: Callable[[aiortc.RTCRtpTransceiver, Any], None],
) -> None:
    """:func:`take_over_sender` and :func:`take_over_receiver` on every transceiver of ``pc``
    not yet in ``taken`` (ids, updated), each told its transceiver when aiortc starts it."""
    for transceiver in pc.getTransceivers():
        if id(transceiver) in taken:
            continue
        taken.add(id(transceiver))
        take_over_sender(transceiver.sender, functools.partial(sender_started, transceiver))
        take_over_receiver(transceiver.receiver, functools.partial(receiver_started, transceiver))


class DeferredBitrateEstimator:
    """aiortc's REMB estimator, built when its receiver first uses it rather than with it.

    Every transceiver aiortc makes has a receiver, and every video receiver builds a
    ``RemoteBitrateEstimator`` in its constructor: a thousand rate buckets, ~0.1 ms and
    ~100 kB, and more when the cyclic garbage collector runs in the middle of the thousand
    allocations (it does, in a node holding hundreds of calls). A relay leg's receiver and
    a load participant's never receive: this stand-in costs nothing until ``add``, the one
    method aiortc calls on it, and then is the real estimator.
    """

    __slots__ = ("_estimator",)

    def __init__(self) -> None:
        self._estimator: Any = None

    def add(self, *args: Any, **kwargs: Any) -> Any:
        if self._estimator is None:
            self._estimator = ORIGINAL_BITRATE_ESTIMATOR()
        return self._estimator.add(*args, **kwargs)


def defer_bitrate_estimators() -> None:
    """Make every video receiver built from now on in this process build its REMB estimator
    when it first receives (:class:`DeferredBitrateEstimator`). Process-wide, as the class
    aiortc's receiver module instantiates is replaced; idempotent. A receiver aiortc starts
    computes REMB exactly as before."""
    _require(aiortc_receiver, RECEIVER_ESTIMATOR_CLASS)
    _require(ORIGINAL_BITRATE_ESTIMATOR, "add")
    setattr(aiortc_receiver, RECEIVER_ESTIMATOR_CLASS, DeferredBitrateEstimator)


PC_CNAME = "_RTCPeerConnection__cname"


def local_cname(pc: RTCPeerConnection) -> str:
    """The CNAME ``pc``'s SDP declares for its SSRCs (``a=ssrc:... cname:``)."""
    _require(pc, PC_CNAME)
    return str(getattr(pc, PC_CNAME))


def dtls_transport_of(transceiver: aiortc.RTCRtpTransceiver) -> aiortc.RTCDtlsTransport:
    """The DTLS transport ``transceiver`` uses now (the BUNDLE one once negotiated)."""
    return transceiver.receiver.transport


# --- negotiating what aiortc's local lists lack --------------------------------

TRANSPORT_CC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
TRANSPORT_CC_FEEDBACK = "transport-cc"
OPUS_FEC = {"useinbandfec": 1}


class _Parses:
    """Descriptions parsed once for every *reading* of them (an offer is checked, its
    numbering taken and its extensions adopted: three reads of one string); any failure ->
    ValueError. Readers never change what they get: one that edits a description parses its
    own, and one handed to aiortc (:func:`set_remote_description`) leaves the cache, since
    aiortc keeps it and adds trickled candidates to it.

    The reads of one description are apart by awaits (aiortc applying it), during which a
    join storm's other admissions — a hundred in flight — read theirs: room for all of them,
    or every read past the first parses again."""

    SIZE = 128

    def __init__(self) -> None:
        self._parsed: OrderedDict[str, aiortc_sdp.SessionDescription] = OrderedDict()

    def read(self, sdp: str) -> aiortc_sdp.SessionDescription:
        description = self._parsed.get(sdp)
        if description is None:
            description = self._parsed[sdp] = _parse(sdp)
            if len(self._parsed) > self.SIZE:
                self._parsed.popitem(last=False)
        else:
            self._parsed.move_to_end(sdp)
        return description

    def take(self, sdp: str) -> aiortc_sdp.SessionDescription:
        """The parse of ``sdp`` for a caller that keeps it (no other reader sees it again)."""
        description = self._parsed.pop(sdp, None)
        return description if description is not None else _parse(sdp)


def _parse(sdp: str) -> aiortc_sdp.SessionDescription:
    try:
        return ORIGINAL_PARSE(sdp)
    except Exception as exc:  # aiortc's parser raises whatever it trips on
        raise ValueError(f"malformed SDP: {exc!r}") from exc


_PARSES = _Parses()
_read = _PARSES.read


class _Handover:
    """aiortc's ``SessionDescription.parse``, taking a description already parsed for it.

    ``RTCPeerConnection.setRemoteDescription`` parses the SDP it is given before its first
    await; :func:`set_remote_description` puts the relay's parse of that very string here
    just before, so aiortc does not parse it a second time. Any other string (aiortc's own
    local descriptions, test clients in the same process) is parsed as before."""

    def __init__(self) -> None:
        self.waiting: dict[str, aiortc_sdp.SessionDescription] = {}

    def parse(self, sdp: str) -> aiortc_sdp.SessionDescription:
        description = self.waiting.pop(sdp, None)
        return description if description is not None else ORIGINAL_PARSE(sdp)


_HANDOVER = _Handover()


class _CodecCopies:
    """What aiortc's ``rtcpeerconnection`` module sees as ``copy``: its ``find_common_codecs``
    deep-copies every codec it keeps, for every m-line of every description it applies (and
    the relay's own checks ask it the same), and ``copy.deepcopy`` of a codec walks its
    dataclass fields generically, at a twentieth of a millisecond each; a join storm spent
    6 % of the node's time there. A codec is copied field by field instead (its lists and
    parameters too, so nothing is shared); anything else goes to ``copy`` as before."""

    def __getattr__(self, name: str) -> Any:
        return getattr(copy, name)

    @staticmethod
    def deepcopy(value: Any, memo: Any = None) -> Any:
        if type(value) is RTCRtpCodecParameters:
            return _codec_copy(value)
        return copy.deepcopy(value, memo)


def _install_codec_copies() -> None:
    _require(aiortc_peerconnection, "copy")
    if not isinstance(aiortc_peerconnection.copy, _CodecCopies):
        setattr(aiortc_peerconnection, "copy", _CodecCopies())  # noqa: B010 - a module's name


def _install_handover() -> None:
    _install_codec_copies()
    _require(aiortc_sdp.SessionDescription, "parse")
    if getattr(aiortc_sdp.SessionDescription.parse, "_parlor_handover", False):
        return

    def parse(sdp: str) -> aiortc_sdp.SessionDescription:
        return _HANDOVER.parse(sdp)

    parse._parlor_handover = True  # type: ignore[attr-defined]
    aiortc_sdp.SessionDescription.parse = staticmethod(parse)  # type: ignore[method-assign,assignment]


async def set_remote_description(
    pc: RTCPeerConnection, sdp: str, kind: str
) -> aiortc_sdp.SessionDescription:
    """``pc.setRemoteDescription`` with the relay's parse of ``sdp`` (see :class:`_Handover`);
    returns that parse, for :func:`extend_negotiation` (which reads only its codecs and
    header extensions, which aiortc leaves alone)."""
    _install_handover()
    description = _PARSES.take(sdp)
    _HANDOVER.waiting[sdp] = description
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
    finally:
        _HANDOVER.waiting.pop(sdp, None)
    return description


def extend_negotiation(
    pc: RTCPeerConnection, sdp: str | aiortc_sdp.SessionDescription, publishing: set[str]
) -> None:
    """Add what the remote description ``sdp`` offers and aiortc's lists lack.

    Call right after ``setRemoteDescription(sdp)``, before anything awaits: aiortc
    intersects each m-line with its process-wide ``CODECS``/``HEADER_EXTENSIONS``, which
    have no transport-wide congestion control and no Opus FEC, and the connection task
    that starts senders and receivers reads the result when it next runs. For the
    transceivers whose mid is in ``publishing`` (the client sends there, the relay
    receives) the remote's ``transport-wide-cc`` extension and ``rtcp-fb transport-cc``
    are kept, so browsers number their packets for the relay's transport-cc feedback;
    every Opus codec gets ``useinbandfec=1``. The answer (or the next offer) then carries
    them. ``sdp`` may be given parsed (what :func:`set_remote_description` returns).
    """
    description = _read(sdp) if isinstance(sdp, str) else sdp
    remote = {media.rtp.muxId: media for media in description.media}
    for transceiver in pc.getTransceivers():
        media = remote.get(transceiver.mid)
        if media is None:
            continue
        _require(transceiver, TRANSCEIVER_CODECS)
        _require(transceiver, TRANSCEIVER_HEADER_EXTENSIONS)
        codecs: list[RTCRtpCodecParameters] = getattr(transceiver, TRANSCEIVER_CODECS)
        if transceiver.mid in publishing:
            extensions = getattr(transceiver, TRANSCEIVER_HEADER_EXTENSIONS)
            offered = next(
                (e for e in media.rtp.headerExtensions if e.uri == TRANSPORT_CC_URI), None
            )
            if offered is not None and all(e.uri != TRANSPORT_CC_URI for e in extensions):
                extensions.append(RTCRtpHeaderExtensionParameters(id=offered.id, uri=offered.uri))
            remote_codecs = {c.payloadType: c for c in media.rtp.codecs}
            for codec in codecs:
                theirs = remote_codecs.get(codec.payloadType)
                if theirs is None or is_rtx_codec(codec):
                    continue
                if any(f.type == TRANSPORT_CC_FEEDBACK for f in theirs.rtcpFeedback) and not any(
                    f.type == TRANSPORT_CC_FEEDBACK for f in codec.rtcpFeedback
                ):
                    codec.rtcpFeedback.append(RTCRtcpFeedback(type=TRANSPORT_CC_FEEDBACK))
        for codec in codecs:
            _with_opus_fec(codec)


def _with_opus_fec(codec: RTCRtpCodecParameters) -> None:
    if codec.mimeType.lower() == "audio/opus":
        codec.parameters.update(OPUS_FEC)


# --- SDP and codecs -----------------------------------------------------------


@dataclass(frozen=True)
class MediaSection:
    """One m-line of a session description, as far as the relay cares."""

    kind: str
    mid: str | None
    direction: str | None
    codecs: list[RTCRtpCodecParameters]
    port: int
    has_ice_credentials: bool
    rtcp_mux: bool
    has_fingerprint: bool
    dtls_role: str | None
    """"client"/"server" from ``a=setup``, "auto" for actpass, None if absent."""


@dataclass(frozen=True)
class DescriptionSummary:
    """What the relay checks in a session description before applying it."""

    media: list[MediaSection]
    bundle: list[str] | None
    """The mids of the first BUNDLE group, None without one."""


def parse_description(sdp: str) -> DescriptionSummary:
    """Parse ``sdp`` with aiortc's own parser (any failure -> ValueError)."""
    return summarize(_read(sdp))


def summarize(description: aiortc_sdp.SessionDescription) -> DescriptionSummary:
    """What the relay checks in a parsed description (e.g. one :func:`create_offer` made)."""
    bundle = next((g for g in description.group if g.semantic == "BUNDLE"), None)
    media = [
        MediaSection(
            kind=media.kind,
            mid=media.rtp.muxId,
            direction=media.direction,
            codecs=list(media.rtp.codecs),
            port=media.port,
            has_ice_credentials=bool(
                media.ice and media.ice.usernameFragment and media.ice.password
            ),
            rtcp_mux=media.rtcp_mux,
            has_fingerprint=bool(media.dtls and media.dtls.fingerprints),
            dtls_role=media.dtls.role if media.dtls else None,
        )
        for media in description.media
    ]
    return DescriptionSummary(
        media=media, bundle=None if bundle is None else [str(mid) for mid in bundle.items]
    )


def common_codecs(
    kind: str,
    remote: list[RTCRtpCodecParameters],
    preferences: list[RTCRtpCodecCapability],
) -> list[RTCRtpCodecParameters]:
    """The codecs aiortc would negotiate for an m-line, exactly as it does.

    Empty means ``setRemoteDescription`` would raise ``OperationError``.
    """
    _install_codec_copies()
    try:
        common = aiortc_peerconnection.find_common_codecs(CODECS[kind], remote)
        return aiortc_peerconnection.filter_preferred_codecs(common, preferences)
    except AttributeError as exc:
        raise AiortcInternalsChanged(f"aiortc codec negotiation moved: {exc}") from exc


# --- RTP numbering of server offers -------------------------------------------

# Applying an answer, aiortc adopts the answer's numbering: in
# ``setRemoteDescription`` ``find_common_header_extensions`` keeps the remote
# extension entries and ``find_common_codecs`` the remote dynamic payload
# types, and each new sender is started with those. So rewriting the numbers
# of aiortc's own offer before ``setLocalDescription`` is enough; checked by
# tests/relay/test_aiortc_internals.py.
FIRST_DYNAMIC_PAYLOAD_TYPE = 96
LAST_DYNAMIC_PAYLOAD_TYPE = 127


@dataclass(frozen=True)
class RtpNumbering:
    """The RTP header-extension ids and payload types a client's offer set up.

    With BUNDLE every m-line shares one extension-id space and one
    payload-type space, and a browser refuses an offer that gives an id
    already in use a new meaning (Chromium: "RTP extension ID reassignment
    not supported"). aiortc's ``createOffer`` ignores what was negotiated and
    writes its own fixed numbers; :func:`renumber_offer` puts the client's
    back.
    """

    extensions: dict[str, int]
    """URI -> id, over all the client's m-lines (the first id seen wins)."""
    sections: list[tuple[str, str | None, list[RTCRtpCodecParameters]]]
    """(kind, mid, codecs) of each of the client's audio/video m-lines."""

    def codecs_for(self, kind: str, mid: str | None) -> list[RTCRtpCodecParameters]:
        """The client's codecs for an m-line: its own first, then same-kind ones."""
        same = [codecs for k, m, codecs in self.sections if k == kind and m == mid]
        other = [codecs for k, m, codecs in self.sections if k == kind and m != mid]
        return [codec for codecs in same + other for codec in codecs]

    def payload_types(self) -> set[int]:
        return {
            codec.payloadType
            for _, _, codecs in self.sections
            for codec in codecs
            if codec.payloadType is not None
        }


async def create_offer(
    pc: RTCPeerConnection, numbering: RtpNumbering | None, dtls_role: str | None = None
) -> tuple[RTCSessionDescription, aiortc_sdp.SessionDescription]:
    """``pc.createOffer()`` in the client's numbering, without its side effect.

    aiortc's ``createOffer`` also resets every transceiver's codecs and
    header extensions to its own defaults, and a sender is started with
    whatever they are when aiortc gets round to it: a sender whose answer was
    applied but which had not started yet (``setRemoteDescription`` starts
    senders in a task) would then send with aiortc's ids and payload types,
    which the client does not use for them, and which collide on the shared
    BUNDLE transport (aiortc's transport then dies parsing a client packet).
    So transceivers already negotiated get their negotiated values back
    (``createOffer`` does not await, so nothing runs in between), and the
    offer is rewritten with :func:`renumber_offer` when ``numbering`` is set.
    ``dtls_role`` ("client"/"server"), when set, replaces ``a=setup:actpass``
    on every m-line (:attr:`DtlsRole.role`, so the answerer cannot flip it).

    Returns the offer and its description, edited as aiortc made it (not parsed back
    from its text); apply both with :func:`set_local_description`.
    """
    saved = []
    for transceiver in pc.getTransceivers():
        _require(transceiver, TRANSCEIVER_CODECS)
        _require(transceiver, TRANSCEIVER_HEADER_EXTENSIONS)
        saved.append(
            (
                transceiver,
                list(getattr(transceiver, TRANSCEIVER_CODECS)),
                list(getattr(transceiver, TRANSCEIVER_HEADER_EXTENSIONS)),
            )
        )
    _, description = await _created(pc.createOffer)
    negotiated = {}
    for transceiver, codecs, extensions in saved:
        if codecs:  # negotiated before (a new transceiver has none yet)
            setattr(transceiver, TRANSCEIVER_CODECS, codecs)
            setattr(transceiver, TRANSCEIVER_HEADER_EXTENSIONS, extensions)
            negotiated[transceiver.mid] = (codecs, extensions)
    _as_negotiated(description, negotiated)
    if numbering is not None:
        _renumber(description, numbering)
    if dtls_role is not None:
        for media in description.media:
            if media.dtls is not None and media.dtls.role == "auto":
                media.dtls.role = dtls_role
    return RTCSessionDescription(sdp=str(description), type="offer"), description


async def _created(
    make: Callable[[], Awaitable[RTCSessionDescription]],
) -> tuple[RTCSessionDescription, aiortc_sdp.SessionDescription]:
    """``await pc.createOffer()`` or ``createAnswer()``, with the description object aiortc
    wrote its text from (caught at ``wrap_session_description``, which both call last;
    neither awaits, so no other code runs meanwhile)."""
    _require(aiortc_peerconnection, WRAP_DESCRIPTION)
    original = getattr(aiortc_peerconnection, WRAP_DESCRIPTION)
    made: list[aiortc_sdp.SessionDescription] = []

    def keep(description: aiortc_sdp.SessionDescription | None) -> Any:
        if description is not None:
            made.append(description)
        return original(description)

    setattr(aiortc_peerconnection, WRAP_DESCRIPTION, keep)
    try:
        wrapped = await make()
    finally:
        setattr(aiortc_peerconnection, WRAP_DESCRIPTION, original)
    if len(made) != 1:
        raise AiortcInternalsChanged(
            f"aiortc {aiortc.__version__}: createOffer/createAnswer no longer return "
            "wrap_session_description(description); relay/aiortc_internals.py must be updated"
        )
    return wrapped, made[0]


async def set_local_description(
    pc: RTCPeerConnection,
    description: RTCSessionDescription,
    parsed: aiortc_sdp.SessionDescription,
) -> None:
    """``pc.setLocalDescription(description)`` given ``parsed``, the object its text was
    written from, so that aiortc does not parse back the text it (or the relay) just wrote
    (see :class:`_Handover`). ``parsed`` is aiortc's from then on."""
    _install_handover()
    _HANDOVER.waiting[description.sdp] = parsed
    try:
        await pc.setLocalDescription(description)
    finally:
        _HANDOVER.waiting.pop(description.sdp, None)


async def set_local_answer(pc: RTCPeerConnection) -> None:
    """``pc.setLocalDescription(await pc.createAnswer())`` without aiortc parsing back the
    answer it just wrote."""
    await _set_created(pc, pc.createAnswer)


async def set_local_offer(pc: RTCPeerConnection) -> None:
    """``pc.setLocalDescription(await pc.createOffer())`` without aiortc parsing back the
    offer it just wrote (a client's; the relay's offers go through :func:`create_offer`)."""
    await _set_created(pc, pc.createOffer)


async def _set_created(
    pc: RTCPeerConnection, make: Callable[[], Awaitable[RTCSessionDescription]]
) -> None:
    made, description = await _created(make)
    _own_lists(description)
    await set_local_description(pc, made, description)


def _own_lists(description: aiortc_sdp.SessionDescription) -> None:
    """Give each m-line copies of its codecs and header extensions: aiortc writes the
    transceivers' own lists into the descriptions it makes, which a parse would not share."""
    for media in description.media:
        media.rtp.codecs = [_codec_copy(codec) for codec in media.rtp.codecs]
        media.rtp.headerExtensions = list(media.rtp.headerExtensions)


def _codec_copy(codec: RTCRtpCodecParameters) -> RTCRtpCodecParameters:
    return RTCRtpCodecParameters(
        mimeType=codec.mimeType,
        clockRate=codec.clockRate,
        channels=codec.channels,
        payloadType=codec.payloadType,
        rtcpFeedback=list(codec.rtcpFeedback),
        parameters=dict(codec.parameters),
    )


def _as_negotiated(
    description: aiortc_sdp.SessionDescription,
    negotiated: dict[str | None, tuple[list[RTCRtpCodecParameters], list[Any]]],
) -> None:
    """Make an offer's negotiated m-lines list what was negotiated (with what
    :func:`extend_negotiation` added, e.g. transport-cc, which aiortc's own offer would drop
    and the client's answer then with it), and its Opus ask for in-band FEC."""
    for media in description.media:
        if media.rtp.muxId in negotiated:
            media.rtp.codecs, media.rtp.headerExtensions = negotiated[media.rtp.muxId]
            media.fmt = [codec.payloadType for codec in media.rtp.codecs]
    _own_lists(description)  # before the codecs are edited: they are the transceivers'
    for media in description.media:
        for codec in media.rtp.codecs:
            _with_opus_fec(codec)


def rtp_numbering(sdp: str) -> RtpNumbering:
    """The header-extension ids and payload types of a client's offer (ValueError)."""
    description = _read(sdp)
    extensions: dict[str, int] = {}
    sections: list[tuple[str, str | None, list[RTCRtpCodecParameters]]] = []
    for media in description.media:
        if media.kind not in CODECS:
            continue
        for extension in media.rtp.headerExtensions:
            extensions.setdefault(extension.uri, extension.id)
        sections.append((media.kind, media.rtp.muxId, list(media.rtp.codecs)))
    return RtpNumbering(extensions=extensions, sections=sections)


def renumber_offer(sdp: str, numbering: RtpNumbering) -> str:
    """Rewrite an offer aiortc made so that it keeps the client's RTP numbering.

    Every ``a=extmap`` takes the id the client gave its URI; an extension the
    client never offered is dropped. Every codec takes the payload type of
    the client's matching codec (that m-line's own first, so a negotiated
    m-line keeps exactly what it had; RTX follows its base codec). A codec
    the client does not know gets a dynamic payload type no client codec
    uses, the same one on every m-line. Apply the result with
    ``setLocalDescription``: aiortc then starts each new sender with the
    numbers of the client's answer, which are these.
    """
    description = _parse(sdp)
    _renumber(description, numbering)
    return str(description)


def _renumber(description: aiortc_sdp.SessionDescription, numbering: RtpNumbering) -> None:
    """:func:`renumber_offer` on a parsed description, in place."""
    taken = numbering.payload_types()
    allocated: dict[tuple[Any, ...], int] = {}

    def allocate(key: tuple[Any, ...]) -> int:
        if key not in allocated:
            used = taken | set(allocated.values())
            free = [
                pt
                for pt in range(FIRST_DYNAMIC_PAYLOAD_TYPE, LAST_DYNAMIC_PAYLOAD_TYPE + 1)
                if pt not in used
            ]
            if not free:
                raise ValueError("no free RTP payload type left for the offer")
            allocated[key] = free[0]
        return allocated[key]

    for media in description.media:
        if media.kind not in CODECS:
            continue
        media.rtp.headerExtensions = [
            RTCRtpHeaderExtensionParameters(id=numbering.extensions[ext.uri], uri=ext.uri)
            for ext in media.rtp.headerExtensions
            if ext.uri in numbering.extensions
        ]
        client = numbering.codecs_for(media.kind, media.rtp.muxId)
        renumbered: dict[int, int] = {}  # aiortc's payload type -> the client's
        kept: list[RTCRtpCodecParameters] = []
        for codec in media.rtp.codecs:
            old = codec.payloadType
            if old is None or is_rtx_codec(codec):
                continue
            match = next((c for c in client if _compatible(codec, c)), None)
            if match is not None and match.payloadType is not None:
                payload_type = match.payloadType
            elif old < FIRST_DYNAMIC_PAYLOAD_TYPE:
                payload_type = old  # static: means the same everywhere
            else:
                payload_type = allocate((media.kind, *_codec_key(codec)))
            if payload_type in renumbered.values():
                continue  # two of aiortc's codecs match one of the client's: keep one
            renumbered[old] = payload_type
            codec.payloadType = payload_type
            kept.append(codec)
        for rtx in media.rtp.codecs:
            base = rtx.parameters.get("apt") if is_rtx_codec(rtx) else None
            if not isinstance(base, int) or base not in renumbered:
                continue
            new_base = renumbered[base]
            match = next(
                (
                    c
                    for c in client
                    if is_rtx_codec(c)
                    and c.parameters.get("apt") == new_base
                    and c.clockRate == rtx.clockRate
                ),
                None,
            )
            if match is not None and match.payloadType is not None:
                rtx.payloadType = match.payloadType
            else:
                rtx.payloadType = allocate((media.kind, "rtx", rtx.clockRate, new_base))
            rtx.parameters["apt"] = new_base
            kept.append(rtx)
        media.rtp.codecs = kept
        media.fmt = [codec.payloadType for codec in kept]


def is_rtx_codec(codec: RTCRtpCodecParameters) -> bool:
    return codec.mimeType.lower().endswith("/rtx")


def _compatible(ours: RTCRtpCodecParameters, theirs: RTCRtpCodecParameters) -> bool:
    try:
        return bool(aiortc_peerconnection.is_codec_compatible(ours, theirs))
    except AttributeError as exc:
        raise AiortcInternalsChanged(f"aiortc codec negotiation moved: {exc}") from exc


def _codec_key(codec: RTCRtpCodecParameters) -> tuple[Any, ...]:
    return (
        codec.mimeType.lower(),
        codec.clockRate,
        codec.channels,
        tuple(sorted((str(k), str(v)) for k, v in codec.parameters.items())),
    )


def candidate_from_sdp(line: str) -> aiortc.RTCIceCandidate:
    """Parse an ``a=candidate`` value (without the ``candidate:`` prefix)."""
    try:
        return aiortc_sdp.candidate_from_sdp(line)
    except Exception as exc:
        raise ValueError(f"malformed ICE candidate: {line!r}") from exc


# --- DTLS ---------------------------------------------------------------------

# aiortc's DTLS context offers only ECDHE-ECDSA suites. That is enough while aiortc is the
# DTLS *server* (the suite follows the server's own ECDSA certificate; the client's RSA
# certificate only signs CertificateVerify), but as a client it cannot meet a server whose
# certificate is RSA (GStreamer's DTLS element: "no shared cipher"). Both families, strongest
# and cheapest first.
DTLS_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA"
)
PC_CERTIFICATES = "_RTCPeerConnection__certificates"
PC_CERTIFICATE_CLASS = "RTCCertificate"  # the name RTCPeerConnection.__init__ calls
CERTIFICATE_SSL_CONTEXT = "_create_ssl_context"
CERTIFICATE_FINGERPRINTS = "getFingerprints"
DTLS_ROLE = "_role"
DTLS_SET_ROLE = "_set_role"
DTLS_HANDSHAKE = "_do_handshake"
DTLS_SSL = "_ssl"
DTLS_ROLES = ("client", "server")


def accept_rsa_and_ecdsa_peers(pc: RTCPeerConnection) -> None:
    """Let ``pc``'s DTLS meet peers with ECDSA *and* RSA certificates, in either role.

    aiortc makes each transport's SSL context from the connection's certificate; the
    certificate's context factory is wrapped to widen the cipher list, and to note the TLS
    alerts each handshake exchanges (a failed handshake's only cause on the side that did not
    fail first; see :func:`describe_ssl_error`). Call before the connection negotiates.
    (:class:`DtlsCertificate` makes certificates that do this already.)
    """
    _require(pc, PC_CERTIFICATES)
    for certificate in getattr(pc, PC_CERTIFICATES):
        _widen_ssl_contexts(certificate)


def cache_fingerprints(pc: RTCPeerConnection) -> None:
    """Compute the fingerprints of ``pc``'s certificate once, not for every m-line it writes.

    aiortc's ``RTCCertificate.getFingerprints`` hashes the certificate three times (SHA-256,
    -384, -512) and formats each digest byte by byte, and its description code asks for them
    on every m-line of every offer and answer: a sizeable share of what admitting a
    participant costs the node (and a load participant its generator). The certificate never
    changes, so neither do they. Call before the connection negotiates. (:class:`DtlsCertificate`
    makes certificates that do this already.)
    """
    _require(pc, PC_CERTIFICATES)
    for certificate in getattr(pc, PC_CERTIFICATES):
        _cache_fingerprints(certificate)


def _widen_ssl_contexts(certificate: RTCCertificate) -> None:
    """Wrap ``certificate``'s SSL context factory: both cipher families, the alerts noted, and
    one context per set of SRTP profiles (an OpenSSL context serves any number of
    connections; making one costs about a third of a millisecond)."""
    _require(certificate, CERTIFICATE_SSL_CONTEXT)
    original = getattr(certificate, CERTIFICATE_SSL_CONTEXT)
    if getattr(original, "_parlor_wide_ciphers", False):
        return
    contexts: dict[tuple[Any, ...], Any] = {}

    def create_ssl_context(*args: Any, **kwargs: Any) -> Any:
        profiles = kwargs.get("srtp_profiles", args[0] if args else ())
        key = tuple(getattr(profile, "openssl_profile", profile) for profile in profiles)
        context = contexts.get(key)
        if context is None:
            context = original(*args, **kwargs)
            context.set_cipher_list(DTLS_CIPHERS)
            context.set_info_callback(_note_alerts)
            contexts[key] = context
        return context

    create_ssl_context._parlor_wide_ciphers = True  # type: ignore[attr-defined]
    setattr(certificate, CERTIFICATE_SSL_CONTEXT, create_ssl_context)


def _cache_fingerprints(certificate: RTCCertificate) -> None:
    _require(certificate, CERTIFICATE_FINGERPRINTS)
    if getattr(certificate.getFingerprints, "_parlor_cached", False):
        return
    fingerprints = certificate.getFingerprints()

    def cached(_fingerprints: list[Any] = fingerprints) -> list[Any]:
        return list(_fingerprints)

    cached._parlor_cached = True  # type: ignore[attr-defined]
    setattr(certificate, CERTIFICATE_FINGERPRINTS, cached)


class DtlsCertificate:
    """One DTLS certificate for every peer connection a process makes, renewed before it
    expires (mediasoup gives each worker one certificate, Janus each instance).

    aiortc makes a new ECDSA key and self-signed certificate for every ``RTCPeerConnection``,
    then a new SSL context for every DTLS transport and hashes the certificate three times
    for its fingerprints: about half a millisecond of CPU for each participant a node
    admits, and as much again for each load participant. A WebRTC peer authenticates the
    other by the fingerprint in the signed-in signaling channel, not by the certificate's
    name or issuer, so one certificate per process identifies the node's connections as
    well as one per connection; a new process (a restart) has a new one. The certificate is
    widened for RSA peers and its fingerprints cached (:func:`accept_rsa_and_ecdsa_peers`,
    :func:`cache_fingerprints`).
    """

    RENEW_BEFORE_SECONDS = 86400.0
    """aiortc's certificates are valid for 30 days; one is replaced a day before."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._certificate: RTCCertificate | None = None
        self._renew_at = 0.0

    def current(self) -> RTCCertificate:
        """The certificate new connections get (a new one a day before the last expires)."""
        if self._certificate is None or self._clock() >= self._renew_at:
            certificate = RTCCertificate.generateCertificate()
            _widen_ssl_contexts(certificate)
            _cache_fingerprints(certificate)
            self._certificate = certificate
            self._renew_at = certificate.expires.timestamp() - self.RENEW_BEFORE_SECONDS
        return self._certificate

    def peer_connection(self, configuration: RTCConfiguration | None = None) -> RTCPeerConnection:
        """A new ``RTCPeerConnection`` with :meth:`current` as its certificate.

        aiortc's constructor calls ``RTCCertificate.generateCertificate()`` through its
        module's name; that name is pointed at this certificate for the (synchronous)
        construction, so no throw-away key is made.
        """
        _require(aiortc_peerconnection, PC_CERTIFICATE_CLASS)
        certificate = self.current()
        made = getattr(aiortc_peerconnection, PC_CERTIFICATE_CLASS)

        class Issued:
            @staticmethod
            def generateCertificate() -> RTCCertificate:  # noqa: N802 - aiortc's name
                return certificate

        setattr(aiortc_peerconnection, PC_CERTIFICATE_CLASS, Issued)
        try:
            pc = RTCPeerConnection(configuration)
        finally:
            setattr(aiortc_peerconnection, PC_CERTIFICATE_CLASS, made)
        _require(pc, PC_CERTIFICATES)
        if getattr(pc, PC_CERTIFICATES) != [certificate]:
            raise AiortcInternalsChanged(
                f"aiortc {aiortc.__version__}: RTCPeerConnection no longer takes its "
                "certificate from RTCCertificate.generateCertificate(); "
                "relay/aiortc_internals.py must be updated"
            )
        return pc


class DtlsRole:
    """The DTLS role of one peer connection: chosen once, then never flipped.

    Under BUNDLE one DTLS transport carries every m-line, but aiortc's
    ``setRemoteDescription(answer)`` sets its role again from *each* m-line's
    ``a=setup``, so the last one wins. Firefox answers a re-offer with mixed roles per
    m-line (``passive, passive, active, active``): the transport flipped mid-handshake,
    SRTP keys came out for the wrong role and the call had no media. RFC 8842 §5.5 and
    RFC 8829 §5.2.2/§5.3.2 keep an established DTLS association's role; so does this:

    * :meth:`choose` sets the role when the server answers a client's first offer:
      ``server`` (``a=setup:passive``) unless the client insists on being the server
      (``a=setup:passive`` in its offer). As DTLS server the relay's ECDSA certificate
      picks the suite, so peers with RSA certificates (GStreamer) connect too; and an
      SFU answering ``passive`` is what mediasoup and Janus do.
    * :meth:`adopt` wraps every transport of the connection so that once its role is
      ``client`` or ``server``, a later answer that disagrees changes nothing (it is
      counted in :attr:`disagreements` and logged once by the caller).
    * the server's re-offers state the established role (:func:`create_offer` is given
      :attr:`role`: ``a=setup:passive``/``active``, not ``actpass``), so the answerer
      cannot pick.

    The same wrapping records why a handshake failed (:attr:`failure`), which aiortc
    only writes to its debug log.
    """

    def __init__(self) -> None:
        self.role: str | None = None
        """``client``/``server`` once chosen (or set by the first negotiation)."""
        self.disagreements = 0
        """Later descriptions whose ``a=setup`` disagreed with the role (ignored)."""
        self.failure: str | None = None
        """Why the DTLS handshake failed, in OpenSSL's words; None if it did not."""

    def adopt(self, pc: RTCPeerConnection) -> None:
        """Guard every DTLS transport of ``pc`` not guarded yet; call before each
        ``setRemoteDescription``/``setLocalDescription``."""
        for transport in _dtls_transports(pc):
            if getattr(getattr(transport, DTLS_SET_ROLE), "guard", None) is self:
                continue
            for name in (DTLS_ROLE, DTLS_SET_ROLE, DTLS_HANDSHAKE):
                _require(transport, name)
            self._guard_role(transport)
            self._record_failures(transport)

    def choose(self, pc: RTCPeerConnection, remote_setup: str | None) -> str:
        """Fix the role before answering a client's offer; return it.

        ``remote_setup`` is the offer's ``a=setup`` as :class:`MediaSection` gives it
        (``auto`` for actpass, ``client`` for active, ``server`` for passive).
        """
        if self.role is None:
            self.role = "client" if remote_setup == "server" else "server"
        self.adopt(pc)
        for transport in _dtls_transports(pc):
            if getattr(transport, DTLS_ROLE) not in DTLS_ROLES:
                getattr(transport, DTLS_SET_ROLE).original(self.role)
        return self.role

    def _guard_role(self, transport: Any) -> None:
        original = getattr(transport, DTLS_SET_ROLE)

        def set_role(role: str) -> None:
            current = getattr(transport, DTLS_ROLE)
            if current in DTLS_ROLES and role != current:
                self.disagreements += 1
                return
            original(role)
            if role in DTLS_ROLES and self.role is None:
                self.role = role

        set_role.original = original  # type: ignore[attr-defined]
        set_role.guard = self  # type: ignore[attr-defined]
        setattr(transport, DTLS_SET_ROLE, set_role)

    def _record_failures(self, transport: Any) -> None:
        original = getattr(transport, DTLS_HANDSHAKE)

        async def do_handshake() -> None:
            _require(transport, DTLS_SSL)
            connection = getattr(transport, DTLS_SSL)
            step = connection.do_handshake

            def recorded_step() -> Any:
                try:
                    return step()
                except SSL.WantReadError:
                    raise
                except SSL.Error as exc:
                    self.failure = describe_ssl_error(exc, connection)
                    raise

            connection.do_handshake = recorded_step
            await original()
            if getattr(transport, "state", None) == "failed" and self.failure is None:
                self.failure = "the transport closed during the handshake"

        setattr(transport, DTLS_HANDSHAKE, do_handshake)


# TLS alert descriptions (RFC 8446 §6) a failed WebRTC handshake is likely to carry.
TLS_ALERTS = {
    10: "unexpected message",
    20: "bad record MAC",
    40: "handshake failure (no cipher suite both sides accept)",
    42: "bad certificate",
    43: "unsupported certificate",
    46: "certificate unknown",
    47: "illegal parameter",
    48: "unknown CA",
    50: "decode error",
    51: "decrypt error",
    70: "protocol version",
    71: "insufficient security",
    80: "internal error",
    110: "unsupported extension",
}
ALERTS_SEEN = "_parlor_alerts"


def _note_alerts(connection: Any, where: int, value: int) -> None:
    """OpenSSL's info callback: keep the alerts a connection sends and receives, which are
    all a failed handshake says about its cause on the side that did not fail first."""
    if where & SSL.SSL_CB_ALERT and value & 0xFF:
        direction = "received" if where & SSL.SSL_CB_READ else "sent"
        name = TLS_ALERTS.get(value & 0xFF, f"alert {value & 0xFF}")
        seen = getattr(connection, ALERTS_SEEN, None)
        if seen is None:
            seen = []
            setattr(connection, ALERTS_SEEN, seen)
        seen.append(f"{direction} {name}")


def describe_ssl_error(exc: Exception, connection: Any = None) -> str:
    """OpenSSL's reasons in an ``SSL.Error`` (e.g. ``no shared cipher``), else the alerts
    the connection exchanged (e.g. ``received handshake failure``)."""
    reasons = []
    for entry in exc.args[0] if exc.args and isinstance(exc.args[0], list) else []:
        if isinstance(entry, tuple) and entry:
            reasons.append(str(entry[-1]))
    reasons += getattr(connection, ALERTS_SEEN, None) or []
    return "; ".join(dict.fromkeys(reason for reason in reasons if reason)) or repr(exc)


def _dtls_transports(pc: RTCPeerConnection) -> list[Any]:
    transports: dict[int, Any] = {}
    for transceiver in pc.getTransceivers():
        transport = transceiver.receiver.transport
        transports.setdefault(id(transport), transport)
    return list(transports.values())


def dtls_role(pc: RTCPeerConnection) -> str:
    """The role ``pc``'s first DTLS transport has now: ``client``, ``server`` or ``auto``."""
    transports = _dtls_transports(pc)
    if not transports:
        return "auto"
    _require(transports[0], DTLS_ROLE)
    return str(getattr(transports[0], DTLS_ROLE))


def dtls_state(pc: RTCPeerConnection) -> tuple[str, str]:
    """(ICE transport state, DTLS transport state) of ``pc``'s first transport."""
    transports = _dtls_transports(pc)
    if not transports:
        return ("new", "new")
    transport = transports[0]
    return (str(transport.transport.state), str(transport.state))


# --- ICE ----------------------------------------------------------------------


def set_host_address_provider(provider: HostAddressProvider | None) -> None:
    """Replace the function aioice uses to list local host addresses.

    aioice gathers on every interface except loopback and offers no option to
    choose; ``provider(use_ipv4, use_ipv6)`` answers instead. ``None``
    restores aioice's own function.
    """
    _require(aioice.ice, "get_host_addresses")
    if provider is None:
        aioice.ice.get_host_addresses = ORIGINAL_GET_HOST_ADDRESSES  # type: ignore[assignment]
        return

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return provider(use_ipv4, use_ipv6)

    aioice.ice.get_host_addresses = get_host_addresses


def host_addresses(use_ipv4: bool = True, use_ipv6: bool = True) -> list[str]:
    """The addresses aioice would gather host candidates on right now."""
    return aioice.ice.get_host_addresses(use_ipv4, use_ipv6)
