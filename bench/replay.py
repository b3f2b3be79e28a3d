"""How fast the store's state is replayed from its audit chain (policy/replay.py): what
`parlor audit verify` and every node's start-up check cost on a large chain.

It writes a chain of `--events` events (default 100,000) through the real `SqliteStore`
(in memory: generating 100,000 fsynced commits would take minutes and measure the disk, not
the replay) shaped like a busy deployment: visits with their sessions starting and ending,
approvals, and directives issued, enforced, confirmed, lifted and expired. Then, each
`--rounds` times, it measures reading the chain and the rows in one snapshot
(`Store.state`), folding the events (`replay.project`) and comparing the rows
(`replay.compare`). The baseline, in the same run, is recomputing the chain's hashes over the
same events (`verify_chain`), which `audit verify` did before. JSON to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

from policy import replay  # noqa: E402
from policy.audit import verify_chain  # noqa: E402
from policy.directive import Directive  # noqa: E402
from policy.roster import Contact, Device, Facility, Inmate  # noqa: E402
from policy.session import SessionRecord  # noqa: E402
from policy.store import AuditDraft, SqliteStore  # noqa: E402
from policy.visit import Visit  # noqa: E402

T0 = 1_800_000_000.0
OP = "operator:bench"


def draft(action: str, subject: str, data: dict) -> AuditDraft:
    return AuditDraft(OP, action, subject, data)


async def build(store: SqliteStore, events: int) -> dict[str, int]:
    """Write about `events` events; return how many of each kind."""
    kinds: dict[str, int] = {}

    def counted(action: str) -> str:
        kinds[action] = kinds.get(action, 0) + 1
        return action

    await store.add_facility(
        Facility("F1", "North"), draft(counted("facility.created"), "facility:F1", {})
    )
    await store.add_device(Device("K1", "F1"), draft(counted("device.created"), "device:K1", {}))
    await store.add_inmate(
        Inmate("I1", "F1", "Sam"), draft(counted("inmate.created"), "inmate:I1", {})
    )
    for c in range(50):
        await store.add_contact(
            Contact(f"C{c}", f"C{c}", False, {}),
            draft(counted("contact.created"), f"contact:C{c}", {}),
        )
        await store.set_approval(
            f"C{c}",
            "I1",
            "approved",
            draft(counted("approval.set"), f"pair:I1:C{c}", {"status": "approved"}),
        )
    n = 0
    while sum(kinds.values()) < events:
        n += 1
        at = T0 + n * 60
        contact = f"C{n % 50}"
        visit = Visit(f"V{n}", "F1", "I1", "K1", (contact,), at, at + 1800, "social", OP, at - 600)
        await store.add_visit(
            visit, draft(counted("visit.created"), f"visit:{visit.id}", visit.to_json())
        )
        for who in ("device:K1", f"contact:{contact}"):
            record = SessionRecord(
                f"S{n}-{who}", visit.id, who, "family", "participant", "A", ("system",), at
            )
            await store.session_started(
                record,
                draft(counted("session.started"), f"visit:{visit.id}", {"session": record.id}),
            )
            await store.session_ended(
                record.id,
                at + 1700,
                "left",
                draft(counted("session.ended"), f"visit:{visit.id}", {"session": record.id}),
            )
        if n % 10 == 0:  # a directive every tenth visit: issued, enforced, then lifted or expired
            d = Directive(
                f"D{n}", f"contact:{contact}", "suspend", "r", "Rule 1", OP, at, at, at + 3600
            )
            await store.add_directive(
                d, draft(counted("directive.issued"), f"directive:{d.id}", d.to_json())
            )
            await store.count_enforcement(
                d.id,
                1,
                draft(counted("directive.enforced"), f"directive:{d.id}", {"sessions": [f"S{n}"]}),
            )
            status = "lifted" if n % 20 == 0 else "expired"
            closed = d.with_changes(
                status=status,
                closed_at=at + 600,
                closed_by=OP,
                close_reason="done",
                sessions_ended=1,
            )
            await store.update_directive(
                closed,
                draft(
                    counted(f"directive.{status}"),
                    f"directive:{d.id}",
                    {"reason": "done", "closed_at": closed.to_json()["closed_at"]},
                ),
            )
    return kinds


def timed(fn, *args):
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


async def run(events: int, rounds: int) -> dict[str, object]:
    store = SqliteStore(":memory:")
    await store.open()
    try:
        started = time.perf_counter()
        kinds = await build(store, events)
        built = time.perf_counter() - started
        reads, projects, compares, chains = [], [], [], []
        for _ in range(rounds):
            started = time.perf_counter()
            stored = await store.state()
            reads.append(time.perf_counter() - started)
            seconds, projection = timed(replay.project, stored.events)
            projects.append(seconds)
            seconds, found = timed(replay.compare, projection, stored)
            compares.append(seconds)
            assert found == [], found[:3]
            seconds, chain = timed(verify_chain, stored.events, stored.head)
            chains.append(seconds)
            assert chain.ok
    finally:
        await store.close()
    replayed = [p + c for p, c in zip(projects, compares, strict=True)]
    median = statistics.median
    return {
        "events": sum(kinds.values()),
        "by_action": kinds,
        "rows": {
            "directives": len(projection.directives),
            "visits": len(projection.visits),
            "approvals": len(projection.approvals),
        },  # fmt: skip
        "built_seconds": round(built, 1),
        "rounds": rounds,
        "median_seconds": {
            "read_state": round(median(reads), 3),
            "project": round(median(projects), 3),
            "compare": round(median(compares), 3),
            "replay_total": round(median(replayed), 3),
            "read_and_replay": round(median(reads) + median(replayed), 3),
            "baseline_verify_chain": round(median(chains), 3),
        },
        "replay_events_per_second": round(sum(kinds.values()) / median(replayed)),
        "replay_vs_hash_chain": round(median(replayed) / median(chains), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.events, args.rounds)), indent=2))


if __name__ == "__main__":
    main()
