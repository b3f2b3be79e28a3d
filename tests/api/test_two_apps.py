"""Two apps (two nodes, two databases) in one process: no module-level state leaks between them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from policy.rfc3339 import format_time
from signaling import keys as K
from tests.conftest import Server, make_config, start_server, stop_server

OTHER_SECRET = b"second-node-secret-that-is-long-enough-0123456789"


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Server, Server]]:
    a = await start_server(make_config(tmp_path / "a", node_id="node-a"))
    b = await start_server(make_config(tmp_path / "b", node_id="node-b", secret=OTHER_SECRET))
    try:
        yield a, b
    finally:
        await asyncio.gather(stop_server(a), stop_server(b))


async def roster(srv: Server, facility: str, contact: str) -> None:
    for path, body in (
        ("/api/v1/facilities", {"id": facility, "name": facility}),
        ("/api/v1/devices", {"id": f"K-{facility}", "facility": facility}),
        ("/api/v1/inmates", {"id": f"I-{facility}", "facility": facility, "name": "x"}),
        ("/api/v1/contacts", {"id": contact, "name": contact}),
    ):
        status, answer = await srv.api("POST", path, body)
        assert status == 201, answer
    status, _ = await srv.api(
        "POST",
        f"/api/v1/contacts/{contact}/approvals",
        {"inmate": f"I-{facility}", "status": "approved"},
    )
    assert status == 200


async def test_two_apps_serve_at_once_without_sharing_data(pair):
    a, b = pair
    assert a.url != b.url
    assert a.app[K.CONFIG].db != b.app[K.CONFIG].db
    assert a.app[K.STORE] is not b.app[K.STORE] and a.app[K.POLICY] is not b.app[K.POLICY]

    # Both serve at the same moment, each writing its own roster.
    await asyncio.gather(roster(a, "FA", "CA"), roster(b, "FB", "CB"))

    for srv, mine, theirs in ((a, "FA", "FB"), (b, "FB", "FA")):
        _, facilities = await srv.api("GET", "/api/v1/facilities")
        assert [f["id"] for f in facilities] == [mine]
        status, answer = await srv.api("POST", "/api/v1/devices", {"id": "K-x", "facility": theirs})
        assert status == 404, answer
        _, health = await srv.api("GET", "/healthz", token=None)
        assert health["node"] == srv.app[K.CONFIG].node_id

    # Each audit chain holds only its own app's events and verifies on its own.
    for srv, f, c in ((a, "FA", "CA"), (b, "FB", "CB")):
        _, events = await srv.api("GET", "/api/v1/audit", token="auditor")
        assert [e["seq"] for e in events] == [1, 2, 3, 4, 5]
        assert [e["subject"] for e in events] == [
            f"facility:{f}",
            f"device:K-{f}",
            f"inmate:I-{f}",
            f"contact:{c}",
            f"pair:I-{f}:{c}",
        ]
        _, report = await srv.api("GET", "/api/v1/audit/verify", token="auditor")
        assert (report["ok"], report["events"], report["first_bad"]) == (True, len(events), None)


async def test_a_directive_on_one_app_does_not_reach_the_other(pair):
    a, b = pair
    await asyncio.gather(roster(a, "F1", "C1"), roster(b, "F1", "C1"))  # the same ids on both
    body = {"scope": "contact:C1", "action": "suspend", "reason": "r", "legal_basis": "b",
            "expires_at": format_time(time.time() + 600)}  # fmt: skip
    status, directive = await a.api("POST", "/api/v1/directives", body)
    assert status == 201, directive

    visit = {"inmate": "I-F1", "device": "K-F1", "contacts": ["C1"],
             "starts_at": format_time(time.time()), "ends_at": format_time(time.time() + 600)}  # fmt: skip
    status, answer = await a.api("POST", "/api/v1/visits", visit)
    assert status == 409 and answer["error"]["code"] == "suspended"
    status, answer = await b.api("POST", "/api/v1/visits", visit)
    assert status == 201, answer
    _, listed = await b.api("GET", "/api/v1/directives")
    assert listed == []
    assert b.app[K.POLICY].index.active() == []


async def test_each_app_trusts_only_its_own_tokens(pair):
    a, b = pair
    token_a = a.token("operator:alice", "operator")
    assert (await a.api("GET", "/api/v1/facilities", token=token_a))[0] == 200
    status, answer = await b.api("GET", "/api/v1/facilities", token=token_a)
    assert status == 401 and answer["error"]["code"] == "bad-token"


async def test_stopping_one_app_leaves_the_other_serving(tmp_path):
    a = await start_server(make_config(tmp_path / "a"))
    b = await start_server(make_config(tmp_path / "b"))
    try:
        await stop_server(a)
        status, ready = await b.api("GET", "/readyz", token=None)
        assert status == 200 and ready["ready"] is True
        status, _ = await b.api("POST", "/api/v1/facilities", {"id": "F1", "name": "x"})
        assert status == 201
    finally:
        await stop_server(b)
