"""Admissions racing a directive (SPEC §4): once the directive has answered, no matching
session is live, whatever was in flight when it was issued.

Each round opens 20 joins of one subject at once and issues a directive on that subject a few
milliseconds later (several offsets, each repeated); tests/harness/race.py says what is
checked. Between rounds the directive is lifted and every client closed, so the next round
starts from a clean slate on the same visits. Against the code before signaling/admission.py
(evaluate, await the store, then register) these rounds left every join of a round live after
the directive's answer in 5 to 12 of the 21 rounds of each run.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from signaling.ratelimit import Rate
from tests.conftest import make_config, start_server, stop_server
from tests.harness.race import Join, run_rounds, seed_race

JOINS = 20
OFFSETS = (0.0, 0.002, 0.005, 0.010, 0.020, 0.035, 0.050)
REPEATS = 3  # rounds per offset


def racing_config(tmp_path: Any, **overrides: Any) -> Any:
    """Limits that let one person join 20 calls at once, round after round."""
    return replace(
        make_config(tmp_path, **overrides),
        join_rate_per_ip=Rate(100_000, 10_000),
        join_rate_per_identity=Rate(100_000, 10_000),
        api_rate_per_identity=Rate(100_000, 10_000),
        max_sessions_per_subject=JOINS * 2,
    )


async def race(node: Any, joins: list[Join], scope: str, subjects: frozenset[str]) -> None:
    outcomes, problems = await run_rounds(
        [node],
        joins,
        issue_on=node,
        scope=scope,
        subjects=subjects,
        offsets=OFFSETS,
        repeats=REPEATS,
    )
    assert problems == [], problems[:20]
    # The rounds raced for real: some joins got in before the directive, some after it.
    assert sum(o.joined for o in outcomes) > 0 and sum(o.refused for o in outcomes) > 0


async def test_joins_of_one_contact_racing_its_suspension_are_all_refused_or_ended(tmp_path):
    node = await start_server(racing_config(tmp_path))
    try:
        visits = await seed_race(node, JOINS)
        joins = [Join(node, v["join"]["CR"]["token"], v["id"]) for v in visits]
        await race(node, joins, "contact:CR", frozenset({"contact:CR"}))
    finally:
        await stop_server(node)


async def test_monitor_joins_racing_a_visit_directive_are_all_refused_or_ended(tmp_path):
    node = await start_server(racing_config(tmp_path))
    try:
        (visit,) = await seed_race(node, 1)
        operators = [f"operator:watch-{n}" for n in range(JOINS)]
        joins = [
            Join(node, node.token(s, "operator"), visit["id"], mode="monitor") for s in operators
        ]
        await race(node, joins, f"visit:{visit['id']}", frozenset(operators))
    finally:
        await stop_server(node)
