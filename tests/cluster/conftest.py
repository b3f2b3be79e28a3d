"""Cluster fixtures: one throwaway PostgreSQL server per test session, one database per test,
and Parlor nodes (in-process apps, each on its own 127.0.0.1 port) sharing that database."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from policy.rfc3339 import format_time
from signaling import keys as K
from signaling.kiosk import ParlorClient
from tests.cluster.proxy import Proxy
from tests.conftest import Server, make_config, start_server, stop_server
from tests.harness.pg import PostgresServer, start_postgres
from tests.harness.ports import free_port
from tests.harness.system import need


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    need("postgresql")  # skipped without it, failed under CI=true
    server = start_postgres()
    assert server is not None
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
async def pg_url(postgres: PostgresServer) -> AsyncIterator[str]:
    """A fresh database on the shared server, dropped afterwards."""
    name = await postgres.create_database()
    try:
        yield postgres.url(name)
    finally:
        postgres.ensure_running()  # an outage test that failed half-way may have left it stopped
        await postgres.drop_database(name)


async def start_node(tmp_path: Path, db: str, node_id: str, **overrides: Any) -> Server:
    """A Parlor node on its own port, so its URL (and the redirect to it) is known up front."""
    node_dir = tmp_path / node_id
    node_dir.mkdir(exist_ok=True)
    return await start_server(
        make_config(node_dir, db=db, node_id=node_id, port=free_port(), **overrides)
    )


@pytest.fixture
async def cluster(tmp_path: Path, pg_url: str) -> AsyncIterator[tuple[Server, Server]]:
    """Nodes A and B on one database."""
    a = await start_node(tmp_path, pg_url, "A")
    b = await start_node(tmp_path, pg_url, "B")
    try:
        yield a, b
    finally:
        await stop_server(b)
        await stop_server(a)


@pytest.fixture
async def cut_off(tmp_path, postgres, pg_url) -> AsyncIterator[tuple[Server, Server, Proxy]]:
    """Node A reaches the database through a proxy the test can cut; node B directly."""
    proxy = Proxy(postgres.port)
    await proxy.start()
    database = pg_url.rsplit("/", 1)[1]
    a = await start_node(tmp_path, proxy.url(database), "A")
    b = await start_node(tmp_path, pg_url, "B")
    try:
        yield a, b, proxy
    finally:
        proxy.restore()
        await stop_server(b)
        await stop_server(a)
        await proxy.close()


def directive_body(scope: str, action: str = "suspend", **extra: Any) -> dict[str, Any]:
    return {
        "scope": scope, "action": action, "reason": "Threats made on the call",
        "legal_basis": "Rule 51(4) Prison Rules", "expires_at": format_time(time.time() + 3600), **extra,
    }  # fmt: skip


def client(node: Server, visit: dict[str, Any], who: str) -> ParlorClient:
    """`who` is a contact id or "device"; small, slow video keeps two nodes cheap."""
    return node.client(visit["join"][who]["token"], visit["id"], size=(160, 120), fps=10)


async def in_call(node: Server, visit: dict[str, Any], *who: str) -> list[ParlorClient]:
    """Join each participant on `node` and wait until media flows between all of them."""
    clients = []
    for name in who:
        c = client(node, visit, name)
        joined = await c.connect()
        assert joined["type"] == "joined", joined
        clients.append(c)
    for c in clients:
        await c.wait_frames("video", 5, timeout=15)
    return clients


async def close_all(clients: list[ParlorClient]) -> None:
    for c in clients:
        with contextlib.suppress(Exception):
            await c.close()


async def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.01) -> float:
    """Poll until `predicate()` is true; return when (time.monotonic()) it became true."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)


async def counted(node: Server, directive_id: str, sessions: int, timeout: float = 5.0) -> None:
    """Wait until the stored directive counts `sessions` ended sessions (each node adds its
    own, some of them in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        stored = await node.app[K.STORE].get_directive(directive_id)
        if stored is not None and stored.sessions_ended == sessions:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"sessions_ended is {stored and stored.sessions_ended}, not {sessions}"
            )
        await asyncio.sleep(0.02)


async def ended_record(node: Server, session_id: str, timeout: float = 5.0) -> Any:
    """The session's stored record once its end is recorded (after its socket and peer close)."""
    deadline = time.monotonic() + timeout
    while True:
        record = await node.app[K.STORE].get_session(session_id)
        if record is not None and record.ended_at is not None:
            return record
        if time.monotonic() > deadline:
            raise TimeoutError(f"session {session_id} has no recorded end")
        await asyncio.sleep(0.01)


def ready(node: Server) -> bool:
    return node.app[K.READY].is_set()
