"""One open appeal per person per directive holds across nodes on PostgreSQL (issue #15,
item 7): 25 concurrent filings of one person, spread over two nodes, and exactly one passes
(the unique partial index decides, not either node's memory)."""

from __future__ import annotations

import asyncio

import pytest

from signaling import keys as K
from tests.cluster.conftest import directive_body
from tests.conftest import make_visit, seed

pytestmark = pytest.mark.cluster

ATTEMPTS = 25


async def test_concurrent_appeals_on_two_nodes_cannot_both_pass(cluster):
    a, b = cluster
    await seed(a)
    visit = await make_visit(a, ["C1"])
    status, directive = await a.api(
        "POST", "/api/v1/directives", directive_body("inmate:I1", action="end")
    )
    assert status == 201
    token = visit["join"]["C1"]["token"]
    answers = await asyncio.gather(
        *(
            node.api("POST", f"/api/v1/directives/{directive['id']}/appeals",
                     {"text": f"try {i}"}, token=token)
            for i, node in enumerate([a, b] * (ATTEMPTS // 2) + [a])
        )
    )  # fmt: skip
    statuses = sorted(status for status, _ in answers)
    assert statuses == [201] + [409] * (ATTEMPTS - 1), statuses
    assert {body["error"]["code"] for status, body in answers if status == 409} == {"appeal-open"}
    appeals = await b.app[K.STORE].list_appeals(directive=directive["id"])
    assert [a.status for a in appeals] == ["open"]
