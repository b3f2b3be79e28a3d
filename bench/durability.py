"""Durability under kill -9: an acknowledged directive survives the server's sudden death (SPEC §4:
"a directive is durable (committed to the store) before the API answers").

Each round starts `parlor serve` (SQLite, its own process) on the same database, issues one
`suspend` directive for a contact of its own through the REST API, and sends SIGKILL the
moment the 201 has been read: no shutdown hook, no flush. A last start then checks, for every
acknowledged directive, that it is
  present   listed by `GET /api/v1/directives`,
  active    still `active` (not lost, not closed as an orphan),
  enforced  a join by the contact it names is refused (4403, `suspended`, with its id), over
            the real signaling socket (`ParlorClient`),
and that the audit hash chain verifies.

JSON to stdout ({rounds, acknowledged, present, active, enforced, chain_ok, seconds}),
progress to stderr. `--rounds` (default 100). tests/hardening/test_durability.py runs 10.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# Run as a script: import `bench` and the project's packages from the repository root.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

from bench.harness import (  # noqa: E402
    ServerProcess,
    api_ok,
    progress,
    seed_visit,
    workdir,
)
from policy.rfc3339 import format_time  # noqa: E402
from tests.harness.ports import free_port  # noqa: E402

VISIT_HOURS = 3.5  # visits last at most 4 hours; every round's contact has one open now


def directive_body(contact: str) -> dict[str, Any]:
    return {"scope": f"contact:{contact}", "action": "suspend", "reason": "Durability round",
            "legal_basis": "Rule 51(4) Prison Rules", "expires_at": format_time(time.time() + 6 * 3600)}  # fmt: skip


async def _seed(server: ServerProcess, contacts: list[str]) -> dict[str, dict[str, str]]:
    """Facility and inmate; per round a kiosk (one kiosk has one visit at a time), a contact
    approved for the inmate and a visit open now (before any directive: a suspended contact
    cannot be put on a visit)."""
    await api_ok(server, "POST", "/api/v1/facilities", {"id": "F1", "name": "North"}, 201)
    await api_ok(
        server, "POST", "/api/v1/inmates", {"id": "I1", "facility": "F1", "name": "Sam"}, 201
    )
    visits = {}
    now = time.time()
    for contact in contacts:
        device = f"K-{contact}"
        await api_ok(server, "POST", "/api/v1/devices", {"id": device, "facility": "F1"}, 201)
        visit = await seed_visit(
            server,
            inmate="I1",
            device=device,
            contact=contact,
            name=f"Contact {contact}",
            hours=VISIT_HOURS,
            now=now,
        )
        visits[contact] = {"visit": visit["id"], "token": visit["join"][contact]["token"]}
    return visits


async def _kill(server: ServerProcess) -> None:
    os.kill(server.pid, signal.SIGKILL)
    assert server.process is not None
    await server.process.wait()
    await server.stop()  # closes the HTTP session; the process is already gone


async def _refused(url: str, contact: dict[str, str], directive: str) -> tuple[bool, Any]:
    from signaling.kiosk import ParlorClient

    client = ParlorClient(url, contact["token"], contact["visit"])
    try:
        answer = await client.connect(offer=False)
    finally:
        await client.close()
    ok = (answer.get("type") == "error" and answer.get("code") == "suspended" and client.close_code == 4403
          and (answer.get("directive") or {}).get("id") == directive)  # fmt: skip
    return ok, {
        "answer": {k: answer.get(k) for k in ("type", "code")},
        "close_code": client.close_code,
    }


async def run(rounds: int, root: Path) -> dict[str, Any]:
    """Run `rounds` kill -9 rounds in `root`; return the figures and every id checked."""
    started = time.monotonic()
    secret, port = secrets.token_urlsafe(48), free_port()
    contacts = [f"C{n:03d}" for n in range(rounds)]
    acknowledged: dict[str, str] = {}  # contact -> directive id answered with 201
    refusals: list[str] = []  # rounds whose directive was not acknowledged (should be none)
    visits: dict[str, dict[str, str]] = {}
    for n, contact in enumerate(contacts):
        server = ServerProcess(root, port=port, secret=secret)
        await server.start()
        try:
            if n == 0:
                visits = await _seed(server, contacts)
            status, answer, _, _ = await server.api(
                "POST", "/api/v1/directives", directive_body(contact)
            )
            if status == 201:
                acknowledged[contact] = answer["id"]
            else:
                refusals.append(f"{contact}: {status} {answer}")
        finally:
            await _kill(server)  # right after the answer was read
        if (n + 1) % 10 == 0:
            progress(f"round {n + 1}/{rounds}: {len(acknowledged)} acknowledged")

    server = ServerProcess(root, port=port, secret=secret)
    await server.start()
    try:
        listed = {d["id"]: d for d in await api_ok(server, "GET", "/api/v1/directives", None, 200)}
        present = [c for c, d in acknowledged.items() if d in listed]
        active = [c for c, d in acknowledged.items() if listed.get(d, {}).get("status") == "active"]
        checks = await asyncio.gather(
            *(_refused(server.url, visits[c], d) for c, d in acknowledged.items())
        )
        enforced = [c for (c, _), (ok, _) in zip(acknowledged.items(), checks, strict=True) if ok]
        not_enforced = {
            c: detail
            for (c, _), (ok, detail) in zip(acknowledged.items(), checks, strict=True)
            if not ok
        }
        verify = await api_ok(server, "GET", "/api/v1/audit/verify", None, 200)
        problems = server.problems()
    finally:
        await server.stop()
    return {
        "rounds": rounds,
        "acknowledged": len(acknowledged),
        "present": len(present),
        "active": len(active),
        "enforced": len(enforced),
        "chain_ok": verify["ok"],
        "audit_events": verify["events"],
        "seconds": round(time.monotonic() - started, 1),
        "missing": sorted(set(acknowledged) - set(present)),
        "not_active": sorted(set(acknowledged) - set(active)),
        "not_enforced": not_enforced,
        "refused": refusals,
        "server_log_problems": problems["count"],
        "server_log": problems["log"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=100, help="kill -9 rounds (default 100)")
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 1000:
        parser.error("--rounds must be between 1 and 1000")
    result = asyncio.run(run(args.rounds, workdir("parlor-durability-")))
    print(json.dumps(result, indent=2))
    ok = (
        result["acknowledged"]
        == result["present"]
        == result["active"]
        == result["enforced"]
        == args.rounds
    )
    return 0 if ok and result["chain_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
