"""How a node listens on HTTP: bounded time to send a request, bounded connections per
address, and an access log that never writes query strings.

aiohttp waits as long as a client likes for a request's headers (a keep-alive connection
for an hour), so 300 connections trickling one header byte at a time hold 300 sockets and
their buffers indefinitely (slowloris). Each connection here is wrapped in a
:class:`GuardedConnection`, which

* refuses a new connection from an address that already holds `max_per_ip` of them;
* closes a connection that has not finished a request's headers `header_timeout` seconds
  after it opened or after its previous response (the keep-alive wait is part of that
  budget, so an idle keep-alive connection closes too);
* leaves a connection alone while one of its requests is being handled (a WebSocket call
  lasts an hour; the upgrade request's headers arrived in time).

aiohttp's own keep-alive timer, set to the same value, often closes such a connection
first; the guard does not depend on how aiohttp's timer treats bytes that trickle in.

The request's body is bounded by the `edge` middleware in `signaling.app`: it is read within
`body_timeout` seconds or the request is answered 408.

The access log names method, path, status, size and time: never the query string, where a
careless client may put a token (`?token=…`), and never the Referer or User-Agent.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

log = logging.getLogger("parlor.listener")


@dataclass(frozen=True)
class EdgeLimits:
    header_timeout: float = 10.0
    """Seconds a connection has to deliver a request's headers (from opening, or from the
    previous response)."""
    body_timeout: float = 10.0
    """Seconds a request has to deliver its body."""
    max_per_ip: int = 200
    """Open connections one address may hold (kiosks or families behind one NAT share it)."""


@dataclass(eq=False)
class Connections:
    """The open connections of one node, by address; the middleware reports request starts
    and ends through :meth:`request_started` / :meth:`request_finished`."""

    limits: EdgeLimits = field(default_factory=EdgeLimits)
    by_ip: Counter[str] = field(default_factory=Counter)
    guards: dict[Any, GuardedConnection] = field(default_factory=dict)
    refused: int = 0
    timed_out: int = 0

    def request_started(self, transport: Any) -> None:
        guard = self.guards.get(transport)
        if guard is not None:
            guard.busy()

    def request_finished(self, transport: Any) -> None:
        guard = self.guards.get(transport)
        if guard is not None:
            guard.idle()

    def open(self) -> int:
        return len(self.guards)


class GuardedConnection(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection: counts it, and closes it when it does not
    send a request's headers in time. Everything else goes straight to aiohttp's handler."""

    def __init__(self, inner: asyncio.Protocol, connections: Connections) -> None:
        self._inner = inner
        self._connections = connections
        self._transport: asyncio.Transport | None = None
        self._ip = "unknown"
        self._deadline: asyncio.TimerHandle | None = None
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._ip = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        connections = self._connections
        if connections.by_ip[self._ip] >= connections.limits.max_per_ip:
            connections.refused += 1
            if connections.refused in (1, 10, 100) or connections.refused % 1000 == 0:
                log.warning(
                    "refused a connection from %s: it already holds %d (refused so far: %d)",
                    self._ip, connections.limits.max_per_ip, connections.refused,
                )  # fmt: skip
            transport.abort()
            return
        connections.by_ip[self._ip] += 1
        connections.guards[transport] = self
        self._counted = True
        self._inner.connection_made(transport)
        self.idle()

    def busy(self) -> None:
        """A request's headers arrived: no deadline while it is handled."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def idle(self) -> None:
        """Waiting for a request: it must be sent within the header timeout."""
        self.busy()
        if self._transport is not None and not self._transport.is_closing():
            self._deadline = asyncio.get_running_loop().call_later(
                self._connections.limits.header_timeout, self._expire
            )

    def _expire(self) -> None:
        self._deadline = None
        if self._transport is not None and not self._transport.is_closing():
            self._connections.timed_out += 1
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.busy()
        if not self._counted:
            return
        self._counted = False
        connections = self._connections
        connections.guards.pop(self._transport, None)
        connections.by_ip[self._ip] -= 1
        if connections.by_ip[self._ip] <= 0:
            del connections.by_ip[self._ip]
        self._inner.connection_lost(exc)


SECRET_PATH_PARTS = ("grant",)
"""Route parts that are bearer secrets (a recording's media grant): logged by name only."""


class PathOnlyAccessLogger(AbstractAccessLogger):
    """`GET /api/v1/directives 200 512 0.004s` from 127.0.0.1: no query string, ever, and
    a secret path part as its name (`/recordings/media/{grant}/call`)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        path = request.path
        found = getattr(request, "match_info", None) or {}
        for name in SECRET_PATH_PARTS:
            if value := found.get(name):
                path = path.replace(value, "{" + name + "}")
        self.logger.info(
            '%s "%s %s" %s %s %.4fs',
            request.remote, request.method, path,
            response.status, response.body_length, time,
        )  # fmt: skip


@dataclass
class Listening:
    """A running node's HTTP side: what `listen` started."""

    runner: web.AppRunner
    server: asyncio.Server

    @property
    def port(self) -> int:
        sockets = self.server.sockets
        return int(sockets[0].getsockname()[1]) if sockets else 0

    async def close(self) -> None:
        self.server.close()
        await self.runner.cleanup()


async def listen(
    app: web.Application, host: str, port: int, connections: Connections, *, access_log: bool = True
) -> Listening:
    """Serve ``app`` on ``host:port`` with every connection guarded."""
    runner = web.AppRunner(
        app,
        access_log_class=PathOnlyAccessLogger,
        access_log=logging.getLogger("aiohttp.access") if access_log else None,
        keepalive_timeout=connections.limits.header_timeout,
    )
    await runner.setup()
    handler_factory = runner.server
    assert handler_factory is not None
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: GuardedConnection(handler_factory(), connections), host, port, reuse_address=True
    )
    return Listening(runner=runner, server=server)


async def serve_forever(app: web.Application, host: str, port: int, connections: Connections) -> None:
    """`parlor serve`: listen until SIGINT/SIGTERM, then shut down cleanly."""
    import signal

    listening = await listen(app, host, port, connections)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await listening.close()
