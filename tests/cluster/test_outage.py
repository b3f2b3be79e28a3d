"""A node that cannot reach the store/bus fails closed and keeps enforcing what it knows
(SPEC §4), then comes back on its own, caught up, before it admits anyone again (SPEC §8).

Three ways to lose the database: PostgreSQL stops (every connection is dropped), a link
is reset (one node cut off while the others carry on), and a link goes silent (only the
heartbeat's timeout can notice).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from signaling import keys as K
from tests.cluster.conftest import (
    client,
    close_all,
    directive_body,
    ended_record,
    in_call,
    ready,
    wait_for,
)
from tests.conftest import Server, make_visit, seed

pytestmark = pytest.mark.cluster

FAIL_CLOSED_WITHIN = 1.0  # seconds from losing the database to refusing admissions


async def refused_as_unavailable(node: Server, visit: dict[str, Any], who: str) -> None:
    c = client(node, visit, who)
    try:
        answer = await c.connect(offer=False)
    finally:
        await c.close()
    assert answer["type"] == "error" and answer["code"] == "unavailable", answer
    assert c.close_code == 4503


async def readyz(node: Server) -> tuple[int, Any]:
    return await node.api("GET", "/readyz", token=None)


async def still_flowing(c: Any, frames: int = 5) -> None:
    before = c.received.frames["video"]
    await wait_for(lambda: c.received.frames["video"] >= before + frames, timeout=5)
    assert not c.closed.is_set()


async def issue_when_possible(
    node: Server, body: dict[str, Any], timeout: float = 10.0
) -> dict[str, Any]:
    """Right after the database returns, a node's first requests may still meet dead connections."""
    deadline = time.monotonic() + timeout
    while True:
        status, answer = await node.api("POST", "/api/v1/directives", body)
        if status == 201:
            return answer
        assert status == 503, answer
        if time.monotonic() > deadline:
            raise TimeoutError(f"could not issue a directive: {answer}")
        await asyncio.sleep(0.02)


async def test_postgresql_stops_a_node_fails_closed_keeps_its_calls_and_recovers(cluster, postgres):
    a, b = cluster
    await seed(a)
    visit = await make_visit(a, ["C1", "C2", "C3"])
    known = await issue_when_possible(b, directive_body("contact:C2"))
    await wait_for(lambda: known["id"] in a.app[K.POLICY].index.by_id, timeout=5)
    kiosk, c1 = await in_call(a, visit, "device", "C1")
    try:
        lost_at = time.monotonic()
        await asyncio.to_thread(postgres.stop, "fast")
        try:
            refused_at = await wait_for(lambda: not ready(a), timeout=2 * FAIL_CLOSED_WITHIN)
            print(f"fail closed {1000 * (refused_at - lost_at):.0f} ms after pg_ctl stop began")
            assert refused_at - lost_at < FAIL_CLOSED_WITHIN
            status, body = await readyz(a)
            assert status == 503 and body["ready"] is False
            await refused_as_unavailable(a, visit, "C3")  # nobody is admitted ...
            await refused_as_unavailable(a, visit, "C2")
            # ... the directives A knows stay in force (never cleared) ...
            assert known["id"] in a.app[K.POLICY].index.by_id
            assert not a.app[K.POLICY].evaluate(("system", "contact:C2")).admitted
            # ... and the call already running goes on: an outage is not a blanket shutdown.
            await still_flowing(kiosk)
            await still_flowing(c1)
            await asyncio.sleep(1.0)
            assert not ready(a)
        finally:
            await asyncio.to_thread(postgres.start)

        # B issues a directive the moment it can: A hears it live, or catches up on it when it
        # reconnects — either way A ends the call, and it admits again on its own.
        directive = await issue_when_possible(b, directive_body("contact:C1"))
        await wait_for(lambda: c1.closed.is_set(), timeout=10)
        assert c1.close_code == 4403 and c1.terminated["directive"]["id"] == directive["id"]
        await wait_for(lambda: ready(a), timeout=10)
        status, body = await readyz(a)
        assert status == 200 and body["ready"] is True
        c3 = client(a, visit, "C3")
        joined = await c3.connect(offer=False)
        await c3.close()
        assert joined["type"] == "joined", joined
        assert not kiosk.closed.is_set()
        assert (
            await ended_record(a, c1.joined["session"])
        ).end_reason == f"directive:{directive['id']}"
        status, chain = await b.api("GET", "/api/v1/audit/verify", token="auditor")
        assert status == 200 and chain["ok"] is True
    finally:
        await close_all([kiosk, c1])


async def test_a_cut_off_node_catches_up_on_what_it_missed_before_admitting_again(cut_off):
    a, b, proxy = cut_off
    await seed(a)
    visit = await make_visit(a, ["C1", "C2"])
    kiosk, c1 = await in_call(a, visit, "device", "C1")
    try:
        lost_at = time.monotonic()
        proxy.cut()
        refused_at = await wait_for(lambda: not ready(a), timeout=2 * FAIL_CLOSED_WITHIN)
        assert refused_at - lost_at < FAIL_CLOSED_WITHIN
        await refused_as_unavailable(a, visit, "C2")

        # B, still on the database, suspends C1. A cannot hear it while cut off, so the call
        # goes on there for now (the partition's cost), and A admits no one meanwhile.
        missed = await issue_when_possible(b, directive_body("contact:C1"))
        await asyncio.sleep(0.5)
        assert not c1.closed.is_set() and not ready(a)

        # When the link returns, A reads the log from its cursor, enforces what it missed,
        # and only then sets READY.
        state_when_ready: dict[str, Any] = {}
        event = a.app[K.READY]
        original_set = event.set

        def observed_set() -> None:
            state_when_ready["c1_live"] = c1.joined["session"] in a.app[K.SESSIONS].by_id
            state_when_ready["knows"] = missed["id"] in a.app[K.POLICY].index.by_id
            state_when_ready["cursor"] = a.app[K.BUS].cursor
            original_set()

        event.set = observed_set  # type: ignore[method-assign]
        proxy.restore()
        await wait_for(lambda: ready(a), timeout=10)
        head = await b.app[K.STORE].audit_head()
        assert state_when_ready["c1_live"] is False
        assert state_when_ready["knows"] is True
        assert state_when_ready["cursor"] >= [e.seq for e in await b.app[K.STORE].audit_events()
                                               if e.subject == f"directive:{missed['id']}"][0]  # fmt: skip
        assert state_when_ready["cursor"] <= head
        await wait_for(lambda: c1.closed.is_set(), timeout=5)
        assert c1.close_code == 4403 and c1.terminated["directive"]["id"] == missed["id"]
        assert not kiosk.closed.is_set()

        c2 = client(a, visit, "C2")
        joined = await c2.connect(offer=False)
        await c2.close()
        assert joined["type"] == "joined", joined
    finally:
        await close_all([kiosk, c1])


async def test_a_silent_link_is_noticed_by_the_heartbeat_within_a_second(cut_off):
    a, b, proxy = cut_off
    await seed(a)
    visit = await make_visit(a, ["C1"])
    lost_at = time.monotonic()
    proxy.hang()  # no reset, no error: only the heartbeat's timeout can tell
    refused_at = await wait_for(lambda: not ready(a), timeout=2 * FAIL_CLOSED_WITHIN)
    print(f"silent link noticed after {1000 * (refused_at - lost_at):.0f} ms")
    assert refused_at - lost_at < FAIL_CLOSED_WITHIN
    status, _ = await readyz(a)
    assert status == 503
    await refused_as_unavailable(a, visit, "C1")
    assert ready(b)  # B is fine: only A's link is down

    proxy.restore()
    await wait_for(lambda: ready(a), timeout=10)
    c1 = client(a, visit, "C1")
    joined = await c1.connect(offer=False)
    await c1.close()
    assert joined["type"] == "joined", joined
