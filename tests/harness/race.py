"""An attacker's race: many admissions of one subject in flight while a directive on it is issued.

SPEC §4: "every admission still in flight when [a directive] is issued is refused or ended by
it: once the directive has answered, no matching session is live." `race_round` opens N
joins at once over real WebSockets (each a `ParlorClient` that does not offer: admission is
what races, not media), issues the directive `offset` seconds after the first join started,
and returns what every side saw; `stragglers` lists every way the outcome contradicts the
directive. The suites (tests/integration, tests/cluster) run rounds at several offsets and
assert that the list stays empty.

Nothing here imports a suite's fixtures: a node is anything with `url`, `app` and an
`api(method, path, body)` coroutine (tests/conftest.py's `Server`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from policy.rfc3339 import format_time
from signaling import keys as K
from signaling.kiosk import ParlorClient

SETTLE_SECONDS = 10.0  # how long every join may take to be answered, and every joined one closed


@dataclass(frozen=True)
class Join:
    """One admission to race: where, with which token, to which visit, as what."""

    node: Any
    token: str
    visit: str
    mode: str = "participant"


@dataclass
class Outcome:
    """What one round produced, from every side."""

    offset: float
    scope: str
    subjects: frozenset[str]  # whose sessions the directive must end (e.g. contact:C1)
    status: int  # the directive's HTTP status
    directive: dict[str, Any]
    live_at_answer: list[str]  # matching sessions in the live indexes right after the answer
    clients: list[ParlorClient] = field(default_factory=list)
    first: list[dict[str, Any]] = field(default_factory=list)  # each join's first message
    live_after: list[str] = field(
        default_factory=list
    )  # matching sessions in the live indexes, settled
    listed: list[str] = field(default_factory=list)  # GET /sessions (every node) of the subject
    started: list[str] = field(default_factory=list)  # session.started of the subject this round
    ended: dict[str, str] = field(default_factory=dict)  # session -> end reason, this round
    ended_first: list[str] = field(default_factory=list)  # session.ended before session.started
    sessions_ended: int = 0  # the directive's stored count, settled

    @property
    def joined(self) -> int:
        return sum(1 for m in self.first if m.get("type") == "joined")

    @property
    def refused(self) -> int:
        return sum(
            1 for m in self.first if m.get("type") == "error" and m.get("code") == "suspended"
        )


def live_matching(nodes: Sequence[Any], scope: str) -> list[str]:
    """The live sessions the scope matches in the nodes' live-session indexes."""
    return [s.id for node in nodes for s in node.app[K.SESSIONS].matching(scope) if not s.ended]


async def audit_head(node: Any) -> int:
    return int(node.app[K.STORE].head_seq)


async def race_round(
    nodes: Sequence[Any],
    joins: Sequence[Join],
    issue: Callable[[], Awaitable[tuple[int, dict[str, Any]]]],
    *,
    scope: str,
    subjects: frozenset[str],
    offset: float,
    answering: Sequence[Any] | None = None,
    settle: Callable[[Outcome], Awaitable[None]] | None = None,
) -> Outcome:
    """Start every join at once, issue the directive `offset` s later, settle, and gather.

    `issue()` sends the directive and answers (status, body). `answering`: the nodes on which
    no matching session may be live the moment the answer arrives (default: all; in a
    cluster, the issuing node: the others learn the directive from the bus just after).
    `settle(outcome)` waits for whatever must happen after the answer before the record is
    read (in a cluster: the other nodes applying the directive); by default nothing.
    """
    since = max([await audit_head(node) for node in nodes])
    clients = [j.node.client(j.token, j.visit, mode=j.mode, video=None, audio=False) for j in joins]
    connecting = [
        asyncio.ensure_future(c.connect(offer=False, timeout=SETTLE_SECONDS)) for c in clients
    ]
    await asyncio.sleep(offset)
    status, directive = await issue()
    outcome = Outcome(
        offset=offset, scope=scope, subjects=subjects, status=status, directive=directive,
        live_at_answer=live_matching(answering or nodes, scope), clients=clients,
    )  # fmt: skip
    firsts = await asyncio.gather(*connecting, return_exceptions=True)
    outcome.first = [
        f if isinstance(f, dict) else {"type": "exception", "error": repr(f)} for f in firsts
    ]
    if settle is not None:
        await settle(outcome)
    # A joined client the directive ended is told and closed; give each a moment.
    deadline = time.monotonic() + SETTLE_SECONDS
    for client in clients:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(client.closed.wait(), max(0.05, deadline - time.monotonic()))
    outcome.live_after = live_matching(nodes, scope)
    for node in nodes:
        _, listed = await node.api("GET", "/api/v1/sessions")
        outcome.listed += [s["id"] for s in listed if s["sub"] in subjects]
    _, events = await nodes[0].api("GET", f"/api/v1/audit?after={since}&limit=5000")
    for event in events:
        if event["actor"] not in subjects:
            continue
        if event["action"] == "session.started":
            outcome.started.append(event["data"]["session"])
        elif event["action"] == "session.ended":
            outcome.ended[event["data"]["session"]] = event["data"]["reason"]
    # The log is in order: an end read before its session's start was written before it. (An
    # end with no start here is an earlier session's, e.g. one that left just before.)
    ends_seen: set[str] = set()
    for event in events:
        session = event["data"].get("session")
        if event["actor"] in subjects and event["action"] == "session.ended":
            ends_seen.add(session)
        elif (
            event["actor"] in subjects
            and event["action"] == "session.started"
            and session in ends_seen
        ):
            outcome.ended_first.append(session)
    if status == 201:
        _, stored = await nodes[0].api("GET", f"/api/v1/directives/{directive['id']}")
        outcome.sessions_ended = stored["sessions_ended"]
    return outcome


def stragglers(outcome: Outcome) -> list[str]:
    """Every way the round contradicts the directive; empty when SPEC §4 held."""
    problems = []
    if outcome.status != 201:
        return [f"the directive was refused: {outcome.status} {outcome.directive}"]
    reason = f"directive:{outcome.directive['id']}"
    problems += [f"{s} live in the index at the answer" for s in outcome.live_at_answer]
    problems += [f"{s} live in the index afterwards" for s in outcome.live_after]
    problems += [f"{s} listed by GET /sessions" for s in outcome.listed]
    problems += [
        f"{s} has its session.ended before its session.started" for s in outcome.ended_first
    ]
    for session in outcome.started:
        if session not in outcome.ended:
            problems.append(f"{session} started and never ended")
        elif outcome.ended[session] != reason:
            problems.append(f"{session} ended for {outcome.ended[session]}, not {reason}")
    if outcome.sessions_ended != len(outcome.started):
        problems.append(
            f"sessions_ended is {outcome.sessions_ended}, {len(outcome.started)} had started"
        )
    for n, (client, first) in enumerate(zip(outcome.clients, outcome.first, strict=True)):
        if first.get("type") == "joined":
            told = client.terminated or {}
            if (
                not client.closed.is_set()
                or (told.get("directive") or {}).get("id") != outcome.directive["id"]
            ):
                problems.append(f"join {n} joined and was not ended by the directive")
        elif first.get("type") != "error" or first.get("code") != "suspended":
            problems.append(f"join {n} answered {first}")
        elif (first.get("directive") or {}).get("id") != outcome.directive[
            "id"
        ] or client.close_code != 4403:
            problems.append(f"join {n} was refused without the directive's notice or 4403: {first}")
        if any(m.get("type") == "participant-joined" for m in client.messages):
            problems.append(f"join {n} heard of a participant joining")
    return problems


def withdrawal_stragglers(outcome: Outcome) -> list[str]:
    """Every way a round whose "directive" was an approval withdrawn (`issue` denied the
    contact) contradicts SPEC §4; empty when it held: no matching session live after the
    answer, each started one ended `approval-withdrawn`, each join joined-then-ended (4403)
    or refused `not-approved` (4403)."""
    if outcome.status != 200:
        return [f"the denial was refused: {outcome.status} {outcome.directive}"]
    problems = [f"{s} live in the index at the answer" for s in outcome.live_at_answer]
    problems += [f"{s} live in the index afterwards" for s in outcome.live_after]
    problems += [f"{s} listed by GET /sessions" for s in outcome.listed]
    problems += [
        f"{s} has its session.ended before its session.started" for s in outcome.ended_first
    ]
    for session in outcome.started:
        reason = outcome.ended.get(session)
        if reason != "approval-withdrawn":
            problems.append(f"{session} ended for {reason}, not approval-withdrawn")
    for n, (client, first) in enumerate(zip(outcome.clients, outcome.first, strict=True)):
        if first.get("type") == "joined":
            told = client.terminated or {}
            if not client.closed.is_set() or told.get("reason") != "approval-withdrawn":
                problems.append(f"join {n} joined and was not ended by the withdrawal: {told}")
            elif client.close_code != 4403:
                problems.append(f"join {n} was ended with close {client.close_code}, not 4403")
        elif first.get("type") != "error" or first.get("code") != "not-approved":
            problems.append(f"join {n} answered {first}")
        elif client.close_code != 4403:
            problems.append(f"join {n} was refused with close {client.close_code}, not 4403")
        if any(m.get("type") == "participant-joined" for m in client.messages):
            problems.append(f"join {n} heard of a participant joining")
    return problems


async def close_all(outcome: Outcome) -> None:
    await asyncio.gather(*(c.close() for c in outcome.clients), return_exceptions=True)


def straggling(outcome: Outcome) -> set[str]:
    """The sessions still live, anywhere, after the directive answered (or never ended by it)."""
    reason = f"directive:{outcome.directive.get('id')}"
    late = {s for s in outcome.started if outcome.ended.get(s) != reason}
    return late | set(outcome.live_at_answer) | set(outcome.live_after) | set(outcome.listed)


def figures(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """The round-by-round summary a report quotes."""
    return {
        "rounds": len(outcomes),
        "joins_per_round": len(outcomes[0].clients) if outcomes else 0,
        "offsets_ms": sorted({round(o.offset * 1000, 1) for o in outcomes}),
        "rounds_failed": sum(1 for o in outcomes if stragglers(o)),
        "failed_at_offsets_ms": [round(o.offset * 1000, 1) for o in outcomes if stragglers(o)],
        "stragglers": sum(len(straggling(o)) for o in outcomes),
        "joined_then_ended": sum(o.joined for o in outcomes),
        "refused": sum(o.refused for o in outcomes),
        # registered, then ended by the directive before they were told `joined`
        "refused_after_registering": sum(max(0, len(o.started) - o.joined) for o in outcomes),
    }


def suspension(scope: str) -> dict[str, Any]:
    return {
        "scope": scope, "action": "suspend", "reason": "Threats made on a call",
        "legal_basis": "Rule 51(4) Prison Rules", "expires_at": format_time(time.time() + 3600),
    }  # fmt: skip


async def run_rounds(
    nodes: Sequence[Any],
    joins: Sequence[Join],
    *,
    issue_on: Any,
    scope: str,
    subjects: frozenset[str],
    offsets: Sequence[float],
    repeats: int,
    answering: Sequence[Any] | None = None,
    settle: Callable[[Outcome], Awaitable[None]] | None = None,
    lifted: Callable[[str], Awaitable[None]] | None = None,
) -> tuple[list[Outcome], list[str]]:
    """`repeats` rounds at each offset, the directive lifted after each (and `lifted(id)`
    awaited: every node must know before the next round); every client closed. Returns the
    outcomes and every problem found, and prints the figures (JSON)."""
    outcomes: list[Outcome] = []
    problems: list[str] = []
    for offset in offsets:
        for _ in range(repeats):

            async def issue() -> tuple[int, Any]:
                return await issue_on.api("POST", "/api/v1/directives", suspension(scope))  # type: ignore[no-any-return]

            outcome = await race_round(
                nodes, joins, issue, scope=scope, subjects=subjects, offset=offset,
                answering=answering, settle=settle,
            )  # fmt: skip
            try:
                problems += [f"offset {offset * 1000:g} ms: {p}" for p in stragglers(outcome)]
                outcomes.append(outcome)
                if outcome.status == 201:
                    directive = outcome.directive["id"]
                    status, body = await issue_on.api(
                        "POST", f"/api/v1/directives/{directive}/lift", {"reason": "next round"}
                    )
                    assert status == 200, body
                    if lifted is not None:
                        await lifted(directive)
            finally:
                await close_all(outcome)
    print(json.dumps({"race": scope.split(":")[0], "nodes": len(nodes), **figures(outcomes)}))
    return outcomes, problems


async def seed_race(
    node: Any, visits: int, *, contact: str = "CR", facility: str = "FR"
) -> list[dict[str, Any]]:
    """A facility; per visit its own kiosk and inmate; one contact approved for all of them,
    and a visit open now for each. Returns the visits as `POST /visits` answered them."""

    async def ok(path: str, body: Any, status: int = 201) -> Any:
        got, answer = await node.api("POST", path, body)
        assert got == status, (path, got, answer)
        return answer

    await ok("/api/v1/facilities", {"id": facility, "name": "Race"})
    await ok("/api/v1/contacts", {"id": contact, "name": "Racer", "minor": False})
    now = time.time()
    out = []
    for n in range(visits):
        device, inmate = f"K{facility}{n}", f"I{facility}{n}"
        await ok("/api/v1/devices", {"id": device, "facility": facility})
        await ok("/api/v1/inmates", {"id": inmate, "facility": facility, "name": f"Inmate {n}"})
        await ok(
            f"/api/v1/contacts/{contact}/approvals", {"inmate": inmate, "status": "approved"}, 200
        )
        out.append(await ok("/api/v1/visits", {
            "inmate": inmate, "device": device, "contacts": [contact], "kind": "social",
            "starts_at": format_time(now - 1), "ends_at": format_time(now + 3600)}))  # fmt: skip
    return out


async def seed_pair_race(
    node: Any, visits: int, *, contact: str = "CR", companion: str = "CS", facility: str = "FP"
) -> list[dict[str, Any]]:
    """A facility and one inmate; per visit its own kiosk; `contact` and `companion` both
    approved for the inmate and on every visit, open now. (The companion never joins: with
    an approved contact left, withdrawing `contact`'s approval cancels no visit, so the same
    visits serve every round.) Returns the visits as `POST /visits` answered them."""

    async def ok(path: str, body: Any, status: int = 201) -> Any:
        got, answer = await node.api("POST", path, body)
        assert got == status, (path, got, answer)
        return answer

    inmate = f"I{facility}"
    await ok("/api/v1/facilities", {"id": facility, "name": "Pair race"})
    await ok("/api/v1/inmates", {"id": inmate, "facility": facility, "name": "Inmate"})
    for who in (contact, companion):
        await ok("/api/v1/contacts", {"id": who, "name": who, "minor": False})
        await ok(f"/api/v1/contacts/{who}/approvals", {"inmate": inmate, "status": "approved"}, 200)
    now = time.time()
    out = []
    for n in range(visits):
        device = f"K{facility}{n}"
        await ok("/api/v1/devices", {"id": device, "facility": facility})
        out.append(await ok("/api/v1/visits", {
            "inmate": inmate, "device": device, "contacts": [contact, companion], "kind": "social",
            "starts_at": format_time(now - 1), "ends_at": format_time(now + 3600)}))  # fmt: skip
    return out
