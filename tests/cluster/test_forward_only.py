"""A directive's state only moves forward on every node (issue #15, the gap found in review).

Node B's bus delivers another node's `directive.issued` with the directive's state as it was
committed (the copy in the notification). If B lifts or confirms that directive before its
bus gets to the announcement, the older copy must not undo it: before, a lift on B was
undone (the directive back in B's index as active: the contact refused on B until expiry),
and a confirmation on B was undone too (B then lapsed the confirmed directive in the store).

B's bus is made slow at one point only: its receiver holds back `directive.issued` until the
test lets it go, as a busy node would. Everything else is real: two nodes, PostgreSQL, the
notification's payload, the API.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from policy.audit import AuditEvent
from policy.service import Rules
from signaling import keys as K
from tests.cluster.conftest import client, directive_body, start_node, wait_for
from tests.conftest import make_visit, seed, stop_server

pytestmark = pytest.mark.cluster


class HeldIssues:
    """A bus receiver that holds back `directive.issued` events until `release` is set."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.release = asyncio.Event()
        self.holding = asyncio.Event()
        self.delivered = asyncio.Event()
        self.announced: bool | None = None

    async def heard(self, event: AuditEvent, *, announced: bool) -> None:
        if event.action == "directive.issued":
            self.announced = announced
            self.holding.set()
            await self.release.wait()
        await self.inner.heard(event, announced=announced)
        if event.action == "directive.issued":
            self.delivered.set()

    def __getattr__(self, name: str) -> Any:  # reload, cut_off, rejoined
        return getattr(self.inner, name)


def hold_issues(node) -> HeldIssues:
    bus = node.app[K.BUS]
    held = HeldIssues(bus.receiver)
    bus.receiver = held
    return held


async def test_a_lift_before_the_bus_delivers_the_issue_stays_lifted(cluster):
    a, b = cluster
    await seed(a)
    visit = await make_visit(a, ["C1"])
    held = hold_issues(b)
    status, directive = await a.api("POST", "/api/v1/directives", directive_body("contact:C1"))
    assert status == 201, directive
    await asyncio.wait_for(held.holding.wait(), 5)
    assert held.announced is True  # the copy came in the notification

    status, lifted = await b.api(
        "POST", f"/api/v1/directives/{directive['id']}/lift", {"reason": "issued in error"}
    )
    assert status == 200 and lifted["status"] == "lifted", lifted
    held.release.set()
    await asyncio.wait_for(held.delivered.wait(), 5)

    assert directive["id"] not in b.app[K.POLICY].index.by_id
    c1 = client(b, visit, "C1")  # the call is placed on B: its first participant joins there
    try:
        joined = await c1.connect(offer=False)
        assert joined["type"] == "joined", joined
    finally:
        await c1.close()


async def test_a_confirmation_before_the_bus_delivers_the_issue_is_not_lapsed(tmp_path, pg_url):
    short = {"rules": replace(Rules(), confirm_window_seconds=2.0)}
    a = await start_node(tmp_path, pg_url, "A", **short)
    b = await start_node(tmp_path, pg_url, "B", **short)
    try:
        await seed(a)
        held = hold_issues(b)
        sue = a.token("operator:sue", "supervisor")
        status, directive = await a.api(
            "POST", "/api/v1/directives", directive_body("facility:F1"), token=sue
        )
        assert status == 201, directive
        await asyncio.wait_for(held.holding.wait(), 5)
        status, confirmed = await b.api(
            "POST", f"/api/v1/directives/{directive['id']}/confirm", {},
            token=b.token("operator:sam", "supervisor"),
        )  # fmt: skip
        assert status == 200 and confirmed["confirmed_by"] == "operator:sam", confirmed
        held.release.set()
        await asyncio.wait_for(held.delivered.wait(), 5)

        # Past the confirmation deadline, on both nodes' clocks, with their schedulers running.
        store = b.app[K.STORE]
        await asyncio.sleep(2.5)
        stored = await store.get_directive(directive["id"])
        assert stored is not None
        assert (stored.status, stored.confirmed_by) == ("active", "operator:sam")
        assert "directive.lapsed" not in [e.action for e in await store.audit_events()]
        kept = b.app[K.POLICY].index.by_id.get(directive["id"])
        assert kept is not None and kept.confirmed_by == "operator:sam"
        await wait_for(lambda: directive["id"] in a.app[K.POLICY].index.by_id, timeout=1)
    finally:
        await stop_server(b)
        await stop_server(a)
