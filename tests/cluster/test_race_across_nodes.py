"""Admissions racing a directive across two nodes (SPEC §4, §8): joins of one contact land on
both nodes while the directive is issued on B.

B (the issuing node) has no matching session live the moment it answers; A learns the
directive from the bus just after, and from then on has none either: every session that
started on either node was ended by the directive, and the two nodes' counts add up to them
(tests/harness/race.py checks the rest).
"""

from __future__ import annotations

import pytest

from signaling import keys as K
from signaling.ratelimit import Rate
from tests.cluster.conftest import start_node, wait_for
from tests.conftest import stop_server
from tests.harness.race import Join, Outcome, run_rounds, seed_race

pytestmark = pytest.mark.cluster

JOINS = 20  # 10 visits on each node
# The last offset lets joins in first on a busy machine too (all refused is no race).
OFFSETS = (0.0, 0.005, 0.010, 0.020, 0.035, 0.150)
REPEATS = 2

LIMITS = {
    "join_rate_per_ip": Rate(100_000, 10_000),
    "join_rate_per_identity": Rate(100_000, 10_000),
    "api_rate_per_identity": Rate(100_000, 10_000),
    "max_sessions_per_subject": JOINS * 2,
}


async def test_joins_on_two_nodes_racing_a_suspension_issued_on_one(tmp_path, pg_url):
    a = await start_node(tmp_path, pg_url, "A", **LIMITS)
    b = await start_node(tmp_path, pg_url, "B", **LIMITS)
    try:
        visits = await seed_race(b, JOINS)
        joins = [
            Join(a if n % 2 == 0 else b, v["join"]["CR"]["token"], v["id"])
            for n, v in enumerate(visits)
        ]
        for join in joins:  # each visit's call is placed on the node its joins go to
            first = join.node.client(join.token, join.visit, video=None, audio=False)
            assert (await first.connect(offer=False))["type"] == "joined"
            await first.leave()

        async def settle(outcome: Outcome) -> None:
            if outcome.status != 201:
                return
            directive = outcome.directive["id"]
            await wait_for(lambda: directive in a.app[K.DIRECTIVES].stopped, timeout=10)
            await a.app[K.DIRECTIVES].drain(10)  # A's count of what it ended there

        async def lifted(directive: str) -> None:
            await wait_for(lambda: directive not in a.app[K.POLICY].index.by_id, timeout=10)

        outcomes, problems = await run_rounds(
            [a, b], joins, issue_on=b, scope="contact:CR", subjects=frozenset({"contact:CR"}),
            offsets=OFFSETS, repeats=REPEATS, answering=[b], settle=settle, lifted=lifted,
        )  # fmt: skip
        assert problems == [], problems[:20]
        assert sum(o.joined for o in outcomes) > 0 and sum(o.refused for o in outcomes) > 0
    finally:
        await stop_server(b)
        await stop_server(a)
