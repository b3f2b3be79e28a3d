"""Shared fixtures: a real Parlor app on 127.0.0.1 with its own database, and a seeded roster."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from policy.rfc3339 import format_time
from relay import pin_ice_addresses
from signaling import keys as K
from signaling.app import create_app
from signaling.config import Config
from signaling.kiosk import ParlorClient
from signaling.listener import Listening, listen
from tests.harness import system
from tests.harness.ports import free_port

SECRET = b"test-secret-that-is-long-enough-for-hs256-0123456789"

pin_ice_addresses(["127.0.0.1"])


# Suites that need system software say so with tests/harness/system.py's `require(...)`.
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{system.MARKER}(*names): needs system software")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    system.check_marks(item)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    lines = system.summary_lines(terminalreporter.stats.get("skipped", []))
    if lines:
        terminalreporter.section("suites skipped: system software missing", yellow=True, bold=True)
        for line in lines:
            terminalreporter.line(line)


def make_config(tmp_path: Path, **overrides: Any) -> Config:
    values: dict[str, Any] = {
        "secret": SECRET,
        "db": str(tmp_path / "parlor.db"),
        "recordings": str(tmp_path / "recordings"),
        "host": "127.0.0.1",
        "port": 0,
        "ice_addresses": ["127.0.0.1"],
        "tick_seconds": 0.1,
        # The clients share the test's event loop: its lag says nothing about the server's
        # load, so admission control by lag is off unless a test turns it on.
        "overload_lag_seconds": 3600.0,
        **overrides,
    }
    return Config(**values)


@dataclass
class Server:
    app: web.Application
    listening: Listening
    url: str
    http: aiohttp.ClientSession

    @property
    def tokens(self) -> Any:
        return self.app[K.TOKENS]

    def token(
        self, sub: str = "operator:alice", role: str = "operator", ttl: float = 3600, **kw: Any
    ) -> str:
        return self.tokens.issue(sub, role, ttl, **kw)

    async def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = "operator",
        raw: bytes | None = None,
    ) -> tuple[int, Any]:
        """Call the API; `token` is a token, or a role name for a default staff token."""
        headers = {}
        if token in ("operator", "supervisor", "auditor"):
            token = self.token(
                f"operator:{token}-default" if token != "auditor" else "auditor:default", token
            )
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = (
            raw
            if raw is not None
            else (None if body is None else __import__("json").dumps(body).encode())
        )
        if data is not None:
            headers["Content-Type"] = "application/json"
        async with self.http.request(
            method, self.url + path, data=data, headers=headers
        ) as response:
            try:
                payload = await response.json(content_type=None)
            except ValueError:
                payload = await response.text()
            return response.status, payload

    def client(self, token: str, visit: str, **kw: Any) -> ParlorClient:
        return ParlorClient(self.url, token, visit, **kw)


async def start_server(config: Config, *, clock: Any = time.time) -> Server:
    """Start an app (on `clock`); a config with port 0 gets a free port first, so the links it
    writes work."""
    if config.port == 0:
        from dataclasses import replace

        config = replace(config, port=free_port())
    app = create_app(config, clock=clock)
    listening = await listen(app, "127.0.0.1", config.port, app[K.CONNECTIONS], access_log=False)
    port = config.port
    return Server(
        app=app, listening=listening, url=f"http://127.0.0.1:{port}", http=aiohttp.ClientSession()
    )


async def stop_server(server: Server) -> None:
    await server.http.close()
    await server.listening.close()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    srv = await start_server(make_config(tmp_path))
    try:
        yield srv
    finally:
        await stop_server(srv)


async def seed(srv: Server, contacts: int = 4) -> None:
    """Facility F1 with kiosk K1 and inmate I1; contacts C1..Cn approved for I1.
    Facility F2 with kiosk K2, inmate I2, contact D1 approved for I2."""
    calls = [
        ("/api/v1/facilities", {"id": "F1", "name": "North"}),
        ("/api/v1/facilities", {"id": "F2", "name": "South"}),
        ("/api/v1/devices", {"id": "K1", "facility": "F1"}),
        ("/api/v1/devices", {"id": "K2", "facility": "F2"}),
        ("/api/v1/devices", {"id": "K3", "facility": "F1"}),
        ("/api/v1/inmates", {"id": "I1", "facility": "F1", "name": "Sam"}),
        ("/api/v1/inmates", {"id": "I2", "facility": "F2", "name": "Jo"}),
        ("/api/v1/inmates", {"id": "I3", "facility": "F1", "name": "Lee"}),
        ("/api/v1/contacts", {"id": "D1", "name": "Dana", "minor": False}),
    ]
    calls += [
        ("/api/v1/contacts", {"id": f"C{i}", "name": f"Contact {i}", "minor": False})
        for i in range(1, contacts + 1)
    ]
    for path, body in calls:
        status, answer = await srv.api("POST", path, body)
        assert status == 201, (path, answer)
    approvals = [(f"C{i}", "I1") for i in range(1, contacts + 1)] + [("D1", "I2"), ("C1", "I3")]
    for contact, inmate in approvals:
        status, answer = await srv.api(
            "POST",
            f"/api/v1/contacts/{contact}/approvals",
            {"inmate": inmate, "status": "approved"},
        )
        assert status == 200, answer


async def recordings_done(srv: Server, visit: str, timeout: float = 60) -> list[dict[str, Any]]:
    """The visit's recordings once none is still being recorded or finished: a call's
    recording is finished after the call, in the background, with audit events of its own."""
    deadline = time.monotonic() + timeout
    while True:
        status, found = await srv.api("GET", f"/api/v1/recordings?visit={visit}", token="auditor")
        assert status == 200, found
        if all(r["status"] != "recording" for r in found):
            return found  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"recordings of {visit} not done: {found}"
        await asyncio.sleep(0.1)


async def add_minor(srv: Server, contact: str, name: str, *, guardians: list[str]) -> None:
    """A minor approved for I1 (of `seed`), with `guardians` (adult contacts) set, if any."""
    status, answer = await srv.api(
        "POST", "/api/v1/contacts", {"id": contact, "name": name, "minor": True}
    )
    assert status == 201, answer
    status, answer = await srv.api(
        "POST", f"/api/v1/contacts/{contact}/approvals", {"inmate": "I1", "status": "approved"}
    )
    assert status == 200, answer
    if guardians:
        status, answer = await srv.api(
            "PUT", f"/api/v1/contacts/{contact}/guardians", {"guardians": guardians}
        )
        assert status == 200 and answer["guardians"] == guardians, answer


async def make_visit(
    srv: Server,
    contacts: list[str],
    *,
    inmate: str = "I1",
    device: str = "K1",
    kind: str = "social",
    starts_in: float = -1,
    length: float = 3600,
) -> dict[str, Any]:
    now = time.time()
    status, visit = await srv.api(
        "POST", "/api/v1/visits",
        {"inmate": inmate, "device": device, "contacts": contacts, "kind": kind,
         "starts_at": format_time(now + starts_in), "ends_at": format_time(now + starts_in + length)},
    )  # fmt: skip
    assert status == 201, visit
    return visit


async def use_up_unconfirmed_time(srv: Server, scope: str, token: str = "operator") -> None:
    """Spend some of a broad scope's unconfirmed time for today (SPEC §4): a stop issued and
    lifted at once. With a confirmation window of a minute or less, what is left is too short
    for a second supervisor to act, so a new unconfirmed broad directive on `scope` is refused
    `confirmation-required` (policy/coverage.py)."""
    body = {"scope": scope, "action": "suspend", "reason": "Disturbance", "legal_basis": "Rule 1",
            "expires_at": format_time(time.time() + 3600)}  # fmt: skip
    status, first = await srv.api("POST", "/api/v1/directives", body, token=token)
    assert status == 201, first
    status, lifted = await srv.api(
        "POST", f"/api/v1/directives/{first['id']}/lift", {"reason": "a false alarm"}, token=token
    )
    assert status == 200, lifted


async def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)
