#!/usr/bin/python3
"""A kiosk built on GStreamer's `webrtcbin`, speaking Parlor's signaling (SPEC §5).

An independent WebRTC stack (GStreamer's DTLS, SRTP, libnice ICE) as a Parlor client, so the
suite proves that the relay works with a peer nobody on the project wrote. It runs under
Debian's system Python (`/usr/bin/python3`, which has `gi`); the project's venv cannot import
`gi`, so `tests/harness/gstreamer.py` starts it as a subprocess. It imports only the standard
library and `gi`: the WebSocket client below is a small RFC 6455 client of its own.

What it does, as a kiosk would: joins with a device token (taken from the environment, never
the command line), offers sendrecv VP8 video (`videotestsrc`) and Opus audio
(`audiotestsrc`) with `bundle-policy=max-bundle`, trickles its ICE candidates, answers every
server `offer` (the relay adds other participants' tracks that way), decodes what it receives
and counts decoded frames per kind. ICE gathers on 127.0.0.1 only and uses no STUN server
unless `joined.ice_servers` names one.

It reports on stdout, one JSON object per line, each with `event` and `at`
(`time.monotonic()`, comparable across processes on one host):
  `join-sent`, `joined`, `refused` (the first message was an `error`); `offer-sent`,
  `answer-received`, `offer-received`, `answer-sent` (each with its `sdp`), `candidate-sent`,
  `candidate-dropped` (not on an allowed address), `negotiation-failed` (webrtcbin refused a
  step); `signaling-state`, `ice-gathering-state`, `ice-connection-state`, `connection-state`,
  `connected` (with `since_join`), `dtls-state` (with `client`: the DTLS role);
  `remote-stream` (a new decoded stream), `first-frame` (per kind, with `since_join`),
  `frames` (decoded frames per kind, every `--report-interval`); `pipeline-error`; the
  server's `error`, `terminated` (with `reason` and `directive`), `time-remaining`,
  `participant-joined`, `participant-left` and any other message by its type; `leaving`,
  `closed` (with the close `code`), `exit`.
It exits by itself: after `--seconds` (or on SIGTERM) it sends `leave`; when the socket closes
it stops; a few seconds past `--seconds` it stops whatever happens.

`--check` only verifies that everything it needs is installed and prints one JSON line.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import signal
import socket
import ssl
import struct
import sys
import threading
import time
import urllib.parse
from typing import Any

TOKEN_ENV = "PARLOR_KIOSK_TOKEN"
ELEMENTS = (
    "webrtcbin", "nicesrc", "nicesink", "dtlssrtpenc", "dtlssrtpdec", "videotestsrc", "vp8enc",
    "rtpvp8pay", "audiotestsrc", "opusenc", "rtpopuspay", "decodebin", "vp8dec", "opusdec",
    "videoconvert", "audioconvert", "audioresample", "queue", "fakesink", "capsfilter",
)  # fmt: skip
GI_MODULES = (("Gst", "1.0"), ("GstWebRTC", "1.0"), ("GstSdp", "1.0"), ("Nice", "0.1"))


class Report:
    """Machine-readable events on stdout, one JSON object per line, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __call__(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, "at": time.monotonic(), **fields})
        with self._lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()


# --- RFC 6455 client --------------------------------------------------------------------------

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
NO_STATUS = 1005  # a close frame without a code (RFC 6455 §7.1.5)
ABNORMAL = 1006  # the connection dropped without a close frame


class WebSocketError(Exception):
    """The server broke the protocol; `code` is the close code to send (RFC 6455 §7.4.1)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class WebSocket:
    """A blocking WebSocket client: masked frames, text messages, ping/pong, close codes.

    `send_text` and `close` may be called from any thread; `receive` from one reader thread.
    """

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("ws", "wss"):
            raise ValueError(f"not a WebSocket URL: {url}")
        secure = parts.scheme == "wss"
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if secure else 80)
        raw = socket.create_connection((host, port), timeout=timeout)
        self._sock: socket.socket = (
            ssl.create_default_context().wrap_socket(raw, server_hostname=host) if secure else raw
        )
        self._send_lock = threading.Lock()
        self._buffer = b""
        self.close_sent = False
        self._handshake(
            parts.netloc, (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        )
        self._sock.settimeout(None)

    def _handshake(self, netloc: str, path: str) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self._sock.sendall(request.encode())
        while b"\r\n\r\n" not in self._buffer:
            chunk = self._sock.recv(4096)
            if not chunk:
                raise WebSocketError(ABNORMAL, "connection closed during the WebSocket handshake")
            self._buffer += chunk
            if len(self._buffer) > 65536:
                raise WebSocketError(ABNORMAL, "handshake response too large")
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split(" ", 2)
        if len(status) < 2 or status[1] != "101":
            raise WebSocketError(ABNORMAL, f"WebSocket handshake refused: {lines[0]}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        expected = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        if headers.get("sec-websocket-accept") != expected:
            raise WebSocketError(ABNORMAL, "bad Sec-WebSocket-Accept in the handshake")
        if headers.get("upgrade", "").lower() != "websocket":
            raise WebSocketError(ABNORMAL, "the server did not upgrade to websocket")

    # sending
    def _send_frame(self, opcode: int, payload: bytes) -> None:
        header = bytes([0x80 | opcode])
        length = len(payload)
        if length < 126:
            header += bytes([0x80 | length])
        elif length < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", length)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", length)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        with self._send_lock:
            self._sock.sendall(header + mask + masked)

    def send_text(self, text: str) -> None:
        if self.close_sent:
            return
        self._send_frame(OP_TEXT, text.encode("utf-8"))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame (once); the server then closes the TCP connection."""
        if self.close_sent:
            return
        self.close_sent = True
        payload = b"" if code == NO_STATUS else struct.pack("!H", code) + reason.encode()[:123]
        try:
            self._send_frame(OP_CLOSE, payload)
        except OSError:
            pass

    def shutdown(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    # receiving
    def _read(self, count: int) -> bytes:
        while len(self._buffer) < count:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self._buffer += chunk
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def _read_frame(self) -> tuple[bool, int, bytes]:
        first, second = self._read(2)
        if first & 0x70:
            raise WebSocketError(1002, "reserved bits set without a negotiated extension")
        if second & 0x80:
            raise WebSocketError(1002, "server frames must not be masked")
        fin, opcode, length = bool(first & 0x80), first & 0x0F, second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._read(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read(8))
        if opcode >= 0x8 and (not fin or length > 125):
            raise WebSocketError(1002, "control frames must be final and at most 125 bytes")
        if length > 16 * 1024 * 1024:
            raise WebSocketError(1009, "message too large")
        return fin, opcode, self._read(length)

    def receive(self) -> tuple[str, Any]:
        """The next message: ("text", str) or ("close", (code, reason)).

        Pings are answered and binary messages skipped on the way. A close frame from the
        server is answered with the same code.
        """
        message: bytearray | None = None
        kind = OP_TEXT
        while True:
            fin, opcode, payload = self._read_frame()
            if opcode == OP_PING:
                self._send_frame(OP_PONG, payload)
                continue
            if opcode == OP_PONG:
                continue
            if opcode == OP_CLOSE:
                if len(payload) == 1:
                    raise WebSocketError(1002, "a close payload cannot be one byte")
                code = struct.unpack("!H", payload[:2])[0] if payload else NO_STATUS
                reason = payload[2:].decode("utf-8", "replace")
                self.close(code if code != NO_STATUS else 1000)
                return "close", (code, reason)
            if opcode in (OP_TEXT, OP_BINARY):
                if message is not None:
                    raise WebSocketError(1002, "a new message started inside a fragmented one")
                message, kind = bytearray(payload), opcode
            elif opcode == OP_CONTINUATION:
                if message is None:
                    raise WebSocketError(1002, "continuation frame without a message")
                message += payload
            else:
                raise WebSocketError(1002, f"unknown opcode {opcode}")
            if fin:
                data, message = bytes(message), None
                if kind == OP_BINARY:
                    continue
                try:
                    return "text", data.decode("utf-8")
                except UnicodeDecodeError:
                    raise WebSocketError(1007, "text message is not UTF-8") from None


# --- the kiosk ---------------------------------------------------------------------------------


def check() -> dict[str, Any]:
    """What this script needs, and what of it is missing."""
    missing: list[str] = []
    try:
        import gi
    except ImportError:
        return {"ok": False, "missing": ["python3-gi (the gi module)"]}
    for name, version in GI_MODULES:
        try:
            gi.require_version(name, version)
            __import__("gi.repository", fromlist=[name])
        except (ValueError, ImportError):
            missing.append(f"gi {name}-{version}")
    if not missing:
        from gi.repository import Gst

        Gst.init(None)
        missing += [
            f"GStreamer element {e}" for e in ELEMENTS if Gst.ElementFactory.find(e) is None
        ]
        version = Gst.version_string()
    else:
        version = None
    return {"ok": not missing, "missing": missing, "gstreamer": version}


class Kiosk:
    """One call: the WebSocket, the webrtcbin pipeline and the counts."""

    def __init__(self, args: argparse.Namespace, token: str, report: Report) -> None:
        import gi

        for name, version in GI_MODULES:
            gi.require_version(name, version)
        from gi.repository import GLib, Gst, GstSdp, GstWebRTC, Nice

        self.GLib, self.Gst, self.GstSdp, self.GstWebRTC, self.Nice = (
            GLib,
            Gst,
            GstSdp,
            GstWebRTC,
            Nice,
        )
        Gst.init(None)
        self.args, self.token, self.report = args, token, report
        self.loop = GLib.MainLoop()
        self.ws: WebSocket | None = None
        self.pipeline: Any = None
        self.webrtc: Any = None
        self.joined_at: float | None = None
        self.offering = False
        self.offer_sent = False
        self.pending_candidates: list[tuple[int, str]] = []
        self.local_mids: list[str] = []
        self.frames: dict[str, int] = {"audio": 0, "video": 0}
        self.streams: dict[str, int] = {"audio": 0, "video": 0}
        self.counts_lock = threading.Lock()
        self.dtls_transport: Any = None
        self.close_code: int | None = None
        self.leaving = False
        self.exit_status = 0
        self._ice_objects: tuple[Any, ...] = ()

    # signaling ---------------------------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        if self.ws is not None:
            try:
                self.ws.send_text(json.dumps(message))
            except OSError as exc:
                self.report("send-failed", type=message.get("type"), error=str(exc))

    def run(self) -> int:
        url = urllib.parse.urlsplit(self.args.server)
        scheme = {"http": "ws", "https": "wss"}.get(url.scheme, url.scheme)
        ws_url = urllib.parse.urlunsplit((scheme, url.netloc, url.path.rstrip("/") + "/ws", "", ""))
        try:
            self.ws = WebSocket(ws_url)
        except (OSError, WebSocketError) as exc:
            self.report("closed", code=ABNORMAL, reason=f"cannot connect: {exc}")
            return 2
        self.send({"type": "join", "token": self.token, "visit": self.args.visit})
        self.report("join-sent", visit=self.args.visit)
        threading.Thread(target=self._read_socket, name="ws-reader", daemon=True).start()
        self.GLib.timeout_add(int(self.args.report_interval * 1000), self._report_frames)
        self.GLib.timeout_add(int(self.args.seconds * 1000), self.leave, "time limit")
        # A hard bound: whatever happens, the process ends a few seconds after --seconds.
        self.GLib.timeout_add(int((self.args.seconds + 5) * 1000), self._give_up)
        for number, name in ((signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")):
            self.GLib.unix_signal_add(self.GLib.PRIORITY_DEFAULT, number, self._on_signal, name)
        self.loop.run()
        if self.pipeline is not None:
            self.pipeline.set_state(self.Gst.State.NULL)
        self._report_frames()
        self.report("exit", status=self.exit_status, close_code=self.close_code)
        return self.exit_status

    def _read_socket(self) -> None:
        assert self.ws is not None
        code, reason = ABNORMAL, "connection lost"
        try:
            while True:
                kind, data = self.ws.receive()
                if kind == "close":
                    code, reason = data
                    break
                self.GLib.idle_add(self._on_text, data)
        except WebSocketError as exc:
            code, reason = exc.code, str(exc)
            self.ws.close(exc.code, str(exc))
        except (OSError, ConnectionError) as exc:
            reason = f"connection lost: {exc}"
        self.GLib.idle_add(self._on_closed, code, reason)

    def _on_text(self, text: str) -> bool:
        try:
            message = json.loads(text)
        except ValueError:
            self.report("bad-message", text=text[:200])
            return False
        kind = message.get("type")
        if kind == "joined":
            self.joined_at = time.monotonic()
            self.report(
                "joined", **{k: v for k, v in message.items() if k not in ("type", "ice_servers")}
            )
            self._start_media(message.get("ice_servers") or [])
        elif kind == "answer":
            self.report("answer-received", sdp=message.get("sdp"))
            self._set_remote("answer", message.get("sdp", ""), None)
        elif kind == "offer":
            self.report("offer-received", sdp=message.get("sdp"))
            self._set_remote("offer", message.get("sdp", ""), self._create_answer)
        elif kind == "candidate":
            candidate = message.get("candidate")
            if candidate and self.webrtc is not None:
                self.webrtc.emit(
                    "add-ice-candidate", int(message.get("sdpMLineIndex") or 0), candidate
                )
        elif kind == "error" and self.joined_at is None:
            self.report("refused", code=message.get("code"), message=message.get("message"),
                        directive=message.get("directive"))  # fmt: skip
        elif kind == "error":
            self.report("error", code=message.get("code"), message=message.get("message"))
        elif kind == "terminated":
            self.report("terminated", reason=message.get("reason"), directive=message.get("directive"),
                        message=message.get("message"))  # fmt: skip
        else:
            fields = {k: v for k, v in message.items() if k not in ("type", "event", "at")}
            self.report(str(kind), **fields)
        return False

    def _on_closed(self, code: int, reason: str) -> bool:
        self.close_code = code
        self.report("closed", code=code, reason=reason)
        if self.ws is not None:
            self.ws.shutdown()
        self.loop.quit()
        return False

    def _on_signal(self, name: str) -> bool:
        self.leave(name)
        return True  # keep the handler: a second signal must not kill the kiosk mid-leave

    def leave(self, why: str) -> bool:
        """Say `leave` and wait for the server to close (the hard bound still applies)."""
        if not self.leaving:
            self.leaving = True
            self.report("leaving", why=why)
            self.send({"type": "leave"})
            self.GLib.timeout_add(3000, self._close_now)
        return False

    def _close_now(self) -> bool:
        if self.ws is not None:
            self.ws.close(1000)
        return False

    def _give_up(self) -> bool:
        self.report("closed", code=ABNORMAL, reason="the server did not close the socket in time")
        self.exit_status = 3
        self.loop.quit()
        return False

    # media -------------------------------------------------------------------------------------
    def _start_media(self, ice_servers: list[dict[str, Any]]) -> None:
        Gst, a = self.Gst, self.args
        self.pipeline = Gst.parse_launch(
            "webrtcbin name=webrtc bundle-policy=max-bundle latency=100 "
            f"videotestsrc is-live=true pattern=ball ! video/x-raw,width={a.width},height={a.height},"
            f"framerate={a.fps}/1 ! videoconvert ! queue max-size-buffers=2 leaky=downstream ! "
            f"vp8enc deadline=1 cpu-used=8 threads=1 error-resilient=partitions "
            f"keyframe-max-dist={a.fps * 2} target-bitrate=300000 ! rtpvp8pay pt=96 ! "
            "application/x-rtp,media=video,encoding-name=VP8,clock-rate=90000,payload=96 ! webrtc. "
            "audiotestsrc is-live=true wave=sine volume=0.05 ! audioconvert ! audioresample ! "
            "queue max-size-buffers=4 leaky=downstream ! opusenc ! rtpopuspay pt=111 ! "
            "application/x-rtp,media=audio,encoding-name=OPUS,clock-rate=48000,payload=111 ! webrtc. "
        )
        webrtc = self.pipeline.get_by_name("webrtc")
        self.webrtc = webrtc
        self._pin_ice(webrtc, ice_servers)
        webrtc.connect("on-negotiation-needed", self._on_negotiation_needed)
        webrtc.connect("on-ice-candidate", self._on_ice_candidate)
        webrtc.connect("pad-added", self._on_pad_added)
        for name in (
            "signaling-state",
            "ice-gathering-state",
            "ice-connection-state",
            "connection-state",
        ):
            webrtc.connect(f"notify::{name}", self._on_state, name)
        bus = self.pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self._on_bus_error)
        self.pipeline.set_state(Gst.State.PLAYING)

    def _pin_ice(self, webrtc: Any, ice_servers: list[dict[str, Any]]) -> None:
        """Gather on 127.0.0.1 only (libnice skips loopback by default and would use every other
        interface), UDP only, no STUN/TURN unless the server hands some out."""
        ice = webrtc.get_property("ice-agent")
        agent = ice.get_property("agent")
        # PyGObject drops a reference it was never given when these go out of scope (the
        # getter's transfer annotation): keep them for the life of the pipeline.
        self._ice_objects = (ice, agent)
        ice.set_property("ice-tcp", False)
        agent.set_property("upnp", False)
        for address in self.args.ice_address:
            nice_address = self.Nice.Address.new()
            if not nice_address.set_from_string(address):
                raise ValueError(f"not an IP address: {address}")
            agent.add_local_address(nice_address)
        for server in ice_servers:
            urls = server.get("urls", [])
            for url in [urls] if isinstance(urls, str) else urls:
                if url.startswith("stun:"):
                    webrtc.set_property("stun-server", "stun://" + url[len("stun:") :])
                elif url.startswith(("turn:", "turns:")):
                    scheme, _, rest = url.partition(":")
                    user = urllib.parse.quote(server.get("username", ""), safe="")
                    secret = urllib.parse.quote(server.get("credential", ""), safe="")
                    webrtc.emit("add-turn-server", f"{scheme}://{user}:{secret}@{rest}")

    def _on_state(self, webrtc: Any, _spec: Any, name: str) -> None:
        value = webrtc.get_property(name)
        self.report(name, state=value.value_nick)
        if name == "connection-state" and value.value_nick == "connected":
            self.report("connected", since_join=self._since_join())

    def _on_bus_error(self, _bus: Any, message: Any) -> None:
        error, debug = message.parse_error()
        self.report("pipeline-error", message=error.message, debug=debug)

    def _on_negotiation_needed(self, webrtc: Any) -> None:
        # Only the first one is ours (webrtcbin may signal once per linked pad); later changes
        # come from the server's offers, which the kiosk answers.
        if self.offering:
            return
        self.offering = True
        promise = self.Gst.Promise.new_with_change_func(self._on_offer_created, webrtc, None)
        webrtc.emit("create-offer", None, promise)

    # Every webrtcbin step is asynchronous: its promise's change function runs on webrtcbin's
    # thread, and the next step is scheduled on the main loop with the SDP as text (a
    # description taken from a reply does not outlive the promise).
    def _reply(self, promise: Any, what: str, wanted: str | None = None) -> str | bool:
        """The SDP text of the reply's `wanted` description, or True for a step without one;
        False, and a `negotiation-failed` event, if webrtcbin refused the step."""
        result = promise.wait()
        reply = promise.get_reply()
        error = None
        if result != self.Gst.PromiseResult.REPLIED:
            error = f"promise {result.value_nick}"
        elif reply is not None and reply.has_field("error"):
            error = reply.get_value("error").message
        elif wanted is not None and (reply is None or not reply.has_field(wanted)):
            error = f"no {wanted} in the reply"
        if error is not None:
            self.report("negotiation-failed", step=what, error=error)
            return False
        return reply.get_value(wanted).sdp.as_text() if wanted is not None else True

    def _description(self, kind: str, sdp: str) -> Any:
        GstSdp, GstWebRTC = self.GstSdp, self.GstWebRTC
        result, message = GstSdp.SDPMessage.new_from_text(sdp)
        if result != GstSdp.SDPResult.OK:
            self.report("negotiation-failed", step=f"parse-{kind}", error=result.value_nick)
            return None
        sdp_type = (
            GstWebRTC.WebRTCSDPType.OFFER if kind == "offer" else GstWebRTC.WebRTCSDPType.ANSWER
        )
        return GstWebRTC.WebRTCSessionDescription.new(sdp_type, message)

    def _apply(self, step: str, kind: str, sdp: str, then: Any = None) -> None:
        """`set-local-description` or `set-remote-description` of `sdp`; then `then()`."""
        description = self._description(kind, sdp)
        if description is None:
            return

        def applied(promise: Any, _webrtc: Any, _data: Any) -> None:
            if self._reply(promise, f"{step}-{kind}"):
                self.GLib.idle_add(self._watch_dtls)
                if then is not None:
                    self.GLib.idle_add(then)

        promise = self.Gst.Promise.new_with_change_func(applied, self.webrtc, None)
        self.webrtc.emit(f"{step}-description", description, promise)

    def _on_offer_created(self, promise: Any, _webrtc: Any, _data: Any) -> None:
        sdp = self._reply(promise, "create-offer", "offer")
        if sdp:
            self.GLib.idle_add(self._send_offer, sdp)

    def _send_offer(self, sdp: str) -> bool:
        self._apply("set-local", "offer", sdp)
        self.local_mids = self._mids(sdp)
        self.send({"type": "offer", "sdp": sdp})
        self.offer_sent = True
        self.report("offer-sent", sdp=sdp)
        for index, candidate in self.pending_candidates:
            self._send_candidate(index, candidate)
        self.pending_candidates.clear()
        return False

    @staticmethod
    def _mids(sdp: str) -> list[str]:
        mids: list[str] = []
        for line in sdp.splitlines():
            if line.startswith("m="):
                mids.append("")
            elif line.startswith("a=mid:") and mids:
                mids[-1] = line[len("a=mid:") :].strip()
        return mids

    def _set_remote(self, kind: str, sdp: str, then: Any) -> None:
        if self.webrtc is None:
            self.report("negotiation-failed", step=f"set-remote-{kind}", error="no media yet")
            return
        if kind == "offer":
            self.local_mids = self._mids(sdp)
        self._apply("set-remote", kind, sdp, then)

    def _create_answer(self) -> bool:
        def created(promise: Any, _webrtc: Any, _data: Any) -> None:
            sdp = self._reply(promise, "create-answer", "answer")
            if sdp:
                self.GLib.idle_add(self._send_answer, sdp)

        promise = self.Gst.Promise.new_with_change_func(created, self.webrtc, None)
        self.webrtc.emit("create-answer", None, promise)
        return False

    def _send_answer(self, sdp: str) -> bool:
        self._apply("set-local", "answer", sdp)
        self.send({"type": "answer", "sdp": sdp})
        self.report("answer-sent", sdp=sdp)
        return False

    def _on_ice_candidate(self, _webrtc: Any, index: int, candidate: str) -> None:
        self.GLib.idle_add(self._queue_candidate, index, candidate)

    def _queue_candidate(self, index: int, candidate: str) -> bool:
        if not self.offer_sent:
            self.pending_candidates.append((index, candidate))
        else:
            self._send_candidate(index, candidate)
        return False

    def _send_candidate(self, index: int, candidate: str) -> None:
        text = candidate[2:] if candidate.startswith("a=") else candidate
        bits = text.split()
        address = bits[4] if len(bits) > 4 else ""
        if text and address not in self.args.ice_address:
            self.report("candidate-dropped", candidate=text)  # never offer another address
            return
        message: dict[str, Any] = {"type": "candidate", "candidate": text, "sdpMLineIndex": index}
        if index < len(self.local_mids) and self.local_mids[index]:
            message["sdpMid"] = self.local_mids[index]
        self.send(message)
        self.report("candidate-sent", candidate=text, sdpMLineIndex=index)

    def _watch_dtls(self) -> bool:
        """Report the DTLS transport's state changes. Under max-bundle there is one transport,
        the first transceiver's, once a description has been applied."""
        if self.dtls_transport is not None:
            return False
        transceiver = self.webrtc.emit("get-transceiver", 0)
        receiver = transceiver.get_property("receiver") if transceiver is not None else None
        transport = receiver.get_property("transport") if receiver is not None else None
        if transport is not None:
            self.dtls_transport = transport
            transport.connect("notify::state", self._on_dtls_state)
        return False

    def _on_dtls_state(self, transport: Any, _spec: Any) -> None:
        self.report("dtls-state", state=transport.get_property("state").value_nick,
                    client=bool(transport.get_property("client")))  # fmt: skip

    # receiving ---------------------------------------------------------------------------------
    def _on_pad_added(self, _webrtc: Any, pad: Any) -> None:
        if pad.get_direction() != self.Gst.PadDirection.SRC:
            return
        decode = self.Gst.ElementFactory.make("decodebin")
        decode.connect("pad-added", self._on_decoded_pad)
        self.pipeline.add(decode)
        decode.sync_state_with_parent()
        pad.link(decode.get_static_pad("sink"))

    def _on_decoded_pad(self, _decode: Any, pad: Any) -> None:
        caps = pad.get_current_caps() or pad.query_caps(None)
        name = caps.get_structure(0).get_name()
        kind = (
            "video" if name.startswith("video/") else "audio" if name.startswith("audio/") else None
        )
        if kind is None:
            return
        queue = self.Gst.ElementFactory.make("queue")
        sink = self.Gst.ElementFactory.make("fakesink")
        sink.set_property("sync", False)
        sink.set_property("async", False)
        self.pipeline.add(queue)
        self.pipeline.add(sink)
        queue.link(sink)
        queue.sync_state_with_parent()
        sink.sync_state_with_parent()
        pad.link(queue.get_static_pad("sink"))
        with self.counts_lock:
            self.streams[kind] += 1
            number = self.streams[kind]
        self.report("remote-stream", kind=kind, number=number)
        pad.add_probe(self.Gst.PadProbeType.BUFFER, self._on_frame, kind)

    def _on_frame(self, pad: Any, _info: Any, kind: str) -> Any:
        with self.counts_lock:
            self.frames[kind] += 1
            first = self.frames[kind] == 1
        if first:
            fields: dict[str, Any] = {"kind": kind, "since_join": self._since_join()}
            caps = pad.get_current_caps()
            if kind == "video" and caps is not None:
                structure = caps.get_structure(0)
                fields["width"] = structure.get_int("width")[1]
                fields["height"] = structure.get_int("height")[1]
            self.report("first-frame", **fields)
        return self.Gst.PadProbeReturn.OK

    def _since_join(self) -> float | None:
        return None if self.joined_at is None else round(time.monotonic() - self.joined_at, 4)

    def _report_frames(self) -> bool:
        with self.counts_lock:
            frames, streams = dict(self.frames), dict(self.streams)
        self.report("frames", frames=frames, streams=streams)
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="verify the installation and exit")
    parser.add_argument("--server", help="the server's base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--visit", help="the visit id to join")
    parser.add_argument("--seconds", type=float, default=30.0, help="leave after this long")
    parser.add_argument(
        "--report-interval", type=float, default=0.5, help="seconds between frame counts"
    )
    parser.add_argument(
        "--ice-address", action="append", default=None, help="local ICE address (repeatable)"
    )
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=15)
    args = parser.parse_args(argv)
    if args.check:
        result = check()
        print(json.dumps(result), flush=True)
        return 0 if result["ok"] else 1
    if not args.server or not args.visit:
        parser.error("--server and --visit are required")
    token = os.environ.get(TOKEN_ENV)
    if not token:
        parser.error(f"the device token goes in the environment variable {TOKEN_ENV}")
    args.ice_address = args.ice_address or ["127.0.0.1"]
    return Kiosk(args, token, Report()).run()


if __name__ == "__main__":
    sys.exit(main())
