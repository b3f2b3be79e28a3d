"""Clean refusals when the store is unavailable (issue #15, item 5).

Another process holds the SQLite database's write lock (`BEGIN EXCLUSIVE`, a real second
process: tests/harness/sqlite_lock.py). Before: a join closed 1011 with no message, and
`POST /directives` answered 500 with `sqlite3.OperationalError: database is locked` logged as
a traceback. Now every path says `unavailable` — REST 503 with `Retry-After`, WebSocket
`error` `unavailable` and close 4503 — each with a warning in the log and no traceback, the
event loop keeps running while the store waits for the lock, and nothing acknowledged is
lost: the end of a session that ended meanwhile, and a directive that expired meanwhile,
are written once the lock is released. (In WAL mode readers still read: reads and token
refreshes keep answering 200.)
"""

from __future__ import annotations

import asyncio
import logging
import time

from policy.rfc3339 import format_time, parse_time
from signaling import keys as K
from tests.cluster.conftest import directive_body
from tests.conftest import make_visit, seed
from tests.hardening.wire import exchange, join
from tests.harness.sqlite_lock import held_write_lock


async def _post(server, path: str, body: dict) -> tuple[int, dict, dict]:
    headers = {"Authorization": f"Bearer {server.token()}"}
    async with server.http.post(server.url + path, json=body, headers=headers) as response:
        return response.status, dict(response.headers), await response.json()


async def _largest_loop_gap(until: asyncio.Future, step: float = 0.02) -> float:
    """How late the event loop woke a sleeper at worst while `until` was pending."""
    loop, gap = asyncio.get_running_loop(), 0.0
    while not until.done():
        started = loop.time()
        await asyncio.sleep(step)
        gap = max(gap, loop.time() - started - step)
    return gap


async def test_a_write_locked_store_is_refused_cleanly_and_loses_nothing(open_server, caplog):
    server = open_server
    caplog.set_level(logging.INFO)
    await seed(server)
    visit = await make_visit(server, ["C1", "C2"])
    kiosk = server.client(visit["join"]["device"]["token"], visit["id"], video=None)
    assert (await kiosk.connect(offer=False))["type"] == "joined"
    status, expiring = await server.api(
        "POST", "/api/v1/directives",
        {**directive_body("contact:C2"), "expires_at": format_time(time.time() + 1.5)},
    )  # fmt: skip
    assert status == 201
    store = server.app[K.STORE]
    db = server.app[K.CONFIG].db

    with held_write_lock(db):
        # REST write: 503 `unavailable`, Retry-After; the loop went on while the store waited.
        post = asyncio.ensure_future(
            _post(server, "/api/v1/directives", directive_body("inmate:I1"))
        )
        gap = await _largest_loop_gap(post)
        status, headers, body = await post
        assert (status, body["error"]["code"]) == (503, "unavailable"), body
        assert int(headers["Retry-After"]) >= 1
        assert "database is locked" not in body["error"]["message"]
        assert gap < 0.5, f"the event loop stalled {gap:.2f} s while the store waited"

        # A join: `error` `unavailable`, close 4503 (retry later), not 1011.
        messages, code = await exchange(server, [join(visit["join"]["C1"]["token"], visit["id"])])
        assert [(m["type"], m["code"]) for m in messages] == [("error", "unavailable")]
        assert code == 4503

        # Reads and refreshes still work in WAL mode: the store is only write-locked.
        status, listed = await server.api("GET", "/api/v1/directives")
        assert status == 200 and [d["scope"] for d in listed] == ["contact:C2"]
        status, refreshed = await server.api(
            "POST", "/api/v1/tokens/refresh", {}, token=visit["join"]["C1"]["token"]
        )
        assert status == 200 and refreshed["token"]

        # A session ends meanwhile, and a directive reaches its expiry: the call is over and
        # the directive no longer applies, whatever the store says.
        left_at = time.time()
        await kiosk.close()
        expires_at = parse_time(expiring["expires_at"], "expires_at")
        await asyncio.sleep(max(0.0, expires_at - time.time()) + 0.3)
        assert server.app[K.POLICY].evaluate(("contact:C2",)).admitted
        assert (await store.get_session(kiosk.joined["session"])).ended_at is None

    # Once the lock is gone: the kept records are written, with what really happened.
    async def ended():
        return (await store.get_session(kiosk.joined["session"])).ended_at is not None

    await _eventually(ended, timeout=10)
    record = await store.get_session(kiosk.joined["session"])
    assert record.end_reason == "left" and abs(record.ended_at - left_at) < 1.0
    await _eventually(lambda: _status(store, expiring["id"], "expired"), timeout=10)
    # Nothing half-done: the refused directive does not exist; the next one is durable.
    assert [d.scope for d in await store.list_directives()] == ["contact:C2"]
    status, issued = await server.api("POST", "/api/v1/directives", directive_body("inmate:I1"))
    assert status == 201 and (await store.get_directive(issued["id"])) is not None
    status, chain = await server.api("GET", "/api/v1/audit/verify")
    assert chain["ok"] is True

    problems = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert problems == [], [r.getMessage() for r in problems]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("POST /api/v1/directives: store unavailable" in w for w in warned), warned
    assert any("join refused: store unavailable" in w for w in warned), warned
    assert any(f"the end of session {record.id}" in w for w in warned), warned


async def _status(store, directive_id: str, status: str) -> bool:
    directive = await store.get_directive(directive_id)
    return directive is not None and directive.status == status


async def _eventually(check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "not written in time"
        await asyncio.sleep(0.1)
