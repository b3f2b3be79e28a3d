"""A kiosk's presence (SPEC §5: "a kiosk holds a presence connection on /ws while it has no
live call, so staff see it online").

The conversation, on `/ws` (names in signaling/protocol.py, `Message`):

    kiosk:  {"type": "presence", "token": "<device token>"}            (first frame)
    server: {"type": "present", "device": "K1", "heartbeat_seconds": 10, "timeout_seconds": 25}
    kiosk:  {"type": "heartbeat"}                                      (every heartbeat_seconds)
    server: {"type": "heartbeat"}                                      (the echo: "I hear you")

A refused presence gets an `error` and a close, as a refused join does (4401 bad token, 4403
not a kiosk or no such kiosk, 4503 the store cannot be reached). A second presence connection
of the same kiosk replaces the first (4409). No heartbeat for `timeout_seconds` (2.5 beats)
closes the connection (`heartbeat-missed`, 4400).

What is stored and audited: the transitions, not the heartbeats. `device.online` when a kiosk
that was not online connects; `device.offline` when its connection is gone — at once after a
missed heartbeat (it has been silent for `timeout_seconds` already), or one heartbeat interval
after a close, so a kiosk that reconnects at once (a reload, a network blip) writes nothing.
A kiosk going offline therefore shows in the console (which hears the audit event on the
staff event stream) within `timeout_seconds` of its last heartbeat, 25 s by default.
Transitions are audited because they answer questions an auditor asks ("was the kiosk up
when the visit was missed?") and because audit events are what the cluster bus and the
event stream carry: every node and console sees them without another channel. A flapping
kiosk costs two events per flap; a heartbeat costs nothing.

The row (`device_presence`) names the node that holds the kiosk. An offline transition is
written only while that node still holds it (a kiosk that moved to another node is online
there); a node that starts marks the kiosks its previous run held offline, and in a cluster
every node marks offline the kiosks of a node whose heartbeat stopped (`sweep`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from policy.errors import Conflict, PolicyError
from policy.roster import Device
from policy.service import Policy
from policy.store import Cluster
from signaling import protocol as P
from signaling.protocol import Close, Message, Problem
from signaling.tokens import TokenError, Tokens

log = logging.getLogger("parlor.presence")

TIMEOUT_BEATS = 2.5  # missed heartbeats before the connection is given up
SWEEP_EVERY_SECONDS = 10.0
MAX_ERRORS = 20


@dataclass(eq=False)
class Held:
    """One kiosk's presence connection on this node."""

    device: Device
    ws: web.WebSocketResponse
    last_beat: float  # policy clock


@dataclass
class KioskPresence:
    policy: Policy
    tokens: Tokens
    node_id: str
    heartbeat_seconds: float = 10.0
    held: dict[str, Held] = field(default_factory=dict)  # device id -> its connection here
    _going: dict[str, asyncio.TimerHandle] = field(default_factory=dict)  # offline after grace
    _writes: set[asyncio.Task[None]] = field(default_factory=set)
    _swept: float = field(default=0.0, init=False)

    @property
    def timeout_seconds(self) -> float:
        return self.heartbeat_seconds * TIMEOUT_BEATS

    def online_here(self, device_id: str) -> bool:
        return device_id in self.held or device_id in self._going

    # -- one connection ---------------------------------------------------------------------
    async def hold(self, ws: web.WebSocketResponse, frame: dict[str, Any], ready: bool) -> None:
        """Serve a presence connection whose first frame was `frame`, until it ends."""
        device = await self._identify(ws, frame, ready)
        if device is None:
            return
        previous = self.held.get(device.id)
        mine = Held(device, ws, self.policy.clock())
        self.held[device.id] = mine
        waiting = self._going.pop(device.id, None)
        if waiting is not None:
            waiting.cancel()  # back within the grace: it never went offline
        elif previous is None:
            await self._write_online(device)
        if previous is not None:
            await _refuse(previous.ws, P.PRESENCE_REPLACED.frame(), Close.REPLACED)
        missed = False
        try:
            await ws.send_json({
                "type": Message.PRESENT, "device": device.id,
                "heartbeat_seconds": self.heartbeat_seconds,
                "timeout_seconds": self.timeout_seconds,
            })  # fmt: skip
            missed = await self._beats(mine)
        except (ConnectionError, RuntimeError):
            pass
        finally:
            if self.held.get(device.id) is mine:
                del self.held[device.id]
                if missed:
                    self._gone(mine, "heartbeat-missed")
                else:
                    self._going_soon(mine)

    async def _identify(
        self, ws: web.WebSocketResponse, frame: dict[str, Any], ready: bool
    ) -> Device | None:
        if not ready:
            await _refuse(ws, P.STORE_UNREACHABLE.frame(), Close.UNAVAILABLE)
            return None
        try:
            actor = self.tokens.verify(frame.get("token")).actor
        except TokenError as exc:
            error = {"type": Message.ERROR, "code": exc.code, "message": exc.message}
            await _refuse(ws, error, Close.BAD_TOKEN)
            return None
        if actor.role != "kiosk":
            await _refuse(ws, P.PRESENCE_KIOSKS_ONLY.frame(), Close.REFUSED)
            return None
        try:
            device = await self.policy.store.get_device(actor.subject_id)
        except PolicyError:
            await _refuse(ws, P.STORE_UNREACHABLE.frame(), Close.UNAVAILABLE)
            return None
        if device is None:
            problem = P.PRESENCE_UNKNOWN_DEVICE
            await _refuse(ws, problem.frame(device=actor.subject_id), Close.REFUSED)
            return None
        return device

    async def _beats(self, held: Held) -> bool:
        """Answer heartbeats until the connection closes (False) or falls silent (True)."""
        ws, errors = held.ws, 0
        while not ws.closed:
            try:
                msg = await ws.receive(timeout=self.timeout_seconds)
            except TimeoutError:
                problem = P.HEARTBEAT_MISSED
                await _refuse(ws, problem.frame(seconds=self.timeout_seconds), Close.PROTOCOL_ERROR)
                return True
            if msg.type != WSMsgType.TEXT:
                return False
            held.last_beat = self.policy.clock()
            if _type(msg.data) == Message.HEARTBEAT:
                await ws.send_json({"type": Message.HEARTBEAT})
                continue
            problem: Problem = P.PRESENCE_ONLY
            errors += 1
            await ws.send_json(problem.frame())
            if errors >= MAX_ERRORS:
                await _refuse(ws, {"type": Message.ERROR, "code": problem.code,
                                   "message": P.TOO_MANY_ERRORS}, Close.PROTOCOL_ERROR)  # fmt: skip
                return False
        return False

    # -- transitions ----------------------------------------------------------------------
    def _going_soon(self, held: Held) -> None:
        """A closed connection: offline after one heartbeat interval, unless it comes back."""
        loop = asyncio.get_running_loop()
        device_id = held.device.id

        def expire() -> None:
            if self._going.pop(device_id, None) is not None and device_id not in self.held:
                self._gone(held, "closed")

        self._going[device_id] = loop.call_later(self.heartbeat_seconds, expire)

    def _gone(self, held: Held, why: str) -> None:
        task = asyncio.ensure_future(self._write_offline(held.device, held.last_beat, why))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write_online(self, device: Device) -> None:
        try:
            await self.policy.device_online(device, self.node_id)
        except PolicyError as exc:
            log.warning("kiosk %s is online, but it could not be recorded: %s", device.id, exc)

    async def _write_offline(self, device: Device, last_seen: float, why: str) -> None:
        try:
            await self.policy.device_offline(device, self.node_id, last_seen, why)
        except Conflict:
            pass  # it is online on another node now: that node's row stands
        except PolicyError as exc:
            log.warning("kiosk %s is offline, but it could not be recorded: %s", device.id, exc)

    # -- the node's life ------------------------------------------------------------------
    async def start(self) -> None:
        """Kiosks this node's previous run held went away with it."""
        await self._mark_offline(
            [p for p in await self.policy.store.list_presence(node=self.node_id)],
            "node-restarted",
        )

    async def sweep_due(self, cluster: Cluster | None, stale_after: float) -> None:
        """Every few seconds, in a cluster: `sweep` with the nodes still beating."""
        now = time.monotonic()
        if cluster is None or now - self._swept < SWEEP_EVERY_SECONDS:
            return
        self._swept = now
        await self.sweep(await cluster.live_nodes(stale_after))

    async def sweep(self, live_nodes: set[str]) -> None:
        """Cluster: the kiosks held by nodes that stopped beating are offline."""
        rows = await self.policy.store.list_presence()
        await self._mark_offline(
            [p for p in rows if p.state == "online" and p.node not in live_nodes],
            "node-lost",
        )

    async def _mark_offline(self, rows: list[Any], why: str) -> None:
        for row in rows:
            if row.state != "online" or row.device in self.held:
                continue
            device = await self.policy.store.get_device(row.device)
            if device is None:
                continue
            try:
                await self.policy.device_offline(device, row.node, row.last_seen, why)
            except Conflict:
                continue

    async def stop(self) -> None:
        """Shutting down: the kiosks held here lose their connection now."""
        for handle in self._going.values():
            handle.cancel()
        going = list(self.held.values())
        self.held.clear()
        self._going.clear()
        for held in going:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await held.ws.close(code=Close.GOING_AWAY, message=b"server stopping")
            await self._write_offline(held.device, held.last_beat, "node-stopped")
        if self._writes:
            await asyncio.wait(self._writes, timeout=2.0)


def _type(text: str) -> str | None:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    kind = data.get("type") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else None


async def _refuse(ws: web.WebSocketResponse, error: dict[str, Any], code: int) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        if not ws.closed:
            await ws.send_json(error)
            await ws.close(code=code, message=str(error.get("code", "")).encode())
