"""`parlor`: serve, mint tokens, seed a demo, verify the audit chain, and operate a running server.

A bad flag or environment value stops with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any, NoReturn

from policy import replay
from policy.actor import ROLES, Actor
from policy.errors import PolicyError
from policy.rfc3339 import format_time, parse_duration
from policy.schedule import Schedule
from policy.service import Policy
from policy.store import open_store
from signaling.config import Config, ConfigError, ensure_demo_secret, load_config

DEMO_ACTOR = Actor(sub="operator:demo", role="operator")


class Usage(Exception):
    """A usage error: printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse, except that a bad flag is one line on stderr (exit 2) like every other refusal,
    not a usage block; subcommand parsers inherit this class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def _config(args: argparse.Namespace) -> Config:
    flags = {
        name: getattr(args, name, None)
        for name in (
            "host",
            "port",
            "db",
            "ice_addresses",
            "public_url",
            "codec",
            "node_id",
            "accept_store_state",
            "recordings",
        )
    }
    return load_config(os.environ, **flags)


def cmd_serve(args: argparse.Namespace) -> int:
    config = _config(args)  # before the slow imports (aiortc, av): a bad value fails at once
    from signaling import keys as K
    from signaling.app import create_app
    from signaling.listener import serve_forever
    from signaling.logs import configure
    from signaling.memory import collect_garbage_less_often

    configure(
        os.environ.get("PARLOR_LOG_LEVEL", "INFO"), os.environ.get("PARLOR_LOG_FORMAT", "json")
    )
    app = create_app(config)
    collect_garbage_less_often()
    print(
        f"Parlor listening on http://{config.host}:{config.port}  (node {config.node_id}, store {_store_label(config.db)})",
        flush=True,
    )
    asyncio.run(serve_forever(app, config.host, config.port, app[K.CONNECTIONS]))
    return 0


def _store_label(db: str) -> str:
    return "postgresql" if db.startswith(("postgresql://", "postgres://")) else f"sqlite:{db}"


def cmd_token(args: argparse.Namespace) -> int:
    from signaling.tokens import Tokens

    config = _config(args)
    if args.role not in ROLES:
        raise Usage(f"--role must be one of {', '.join(ROLES)}")
    try:
        print(Tokens(config.secret).issue(args.sub, args.role, args.ttl, visit=args.visit))
    except ValueError as exc:
        raise Usage(str(exc)) from None
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Seed a demo facility, kiosk, inmate, approved contact and a visit happening now."""
    from signaling.api import join_links

    db = args.db or os.environ.get("PARLOR_DB") or "./var/parlor.db"
    if "PARLOR_SECRET" not in os.environ:
        ensure_demo_secret(db)
    config = _config(args)
    links = asyncio.run(_seed_demo(config, join_links))
    print(json.dumps(links, indent=2) if args.json else _demo_text(links))
    return 0


async def _seed_demo(config: Config, join_links: Any) -> dict[str, Any]:
    from signaling.tokens import Tokens

    store = open_store(config.db)
    await store.open()
    try:
        policy = Policy(store=store, rules=config.rules)
        await policy.load()
        for create, body in (
            (policy.create_facility, {"id": "F-DEMO", "name": "Demo Correctional Facility"}),
            (policy.create_device, {"id": "K-DEMO", "facility": "F-DEMO"}),
            (policy.create_inmate, {"id": "I-DEMO", "facility": "F-DEMO", "name": "Sam Rivera"}),
            (policy.create_contact, {"id": "C-DEMO", "name": "Alex Rivera", "minor": False}),
        ):
            if await _exists(store, create.__name__, body["id"]) is None:
                await create(DEMO_ACTOR, body)
        contact = await store.get_contact("C-DEMO")
        if contact is not None and contact.approvals.get("I-DEMO") != "approved":
            await policy.set_approval(
                DEMO_ACTOR, "C-DEMO", {"inmate": "I-DEMO", "status": "approved"}
            )
        now = float(int(time.time()))  # whole seconds: the printed times read cleanly
        schedule = Schedule(policy)
        # A demo run again: the kiosk's earlier demo visits make way for the new one.
        for earlier in await store.overlapping("K-DEMO", now - 3600, now + 7200):
            await schedule.cancel(
                DEMO_ACTOR, earlier.id, {"reason": "other", "note": "a new demo visit"}
            )
        visit = await schedule.create(
            DEMO_ACTOR,
            {"inmate": "I-DEMO", "device": "K-DEMO", "contacts": ["C-DEMO"],
             "starts_at": format_time(now), "ends_at": format_time(now + 3600), "kind": "social"},
        )  # fmt: skip

        links = join_links(
            Tokens(config.secret), config.base_url, visit, config.join_link_grace_seconds
        )
        operator = Tokens(config.secret).issue("operator:demo", "operator", 12 * 3600)
        return {
            "visit": visit.id,
            "ends_at": format_time(visit.ends_at),
            "family": links["C-DEMO"]["url"],
            "kiosk": links["device"]["url"],
            "console": f"{config.base_url}/console#token={operator}",
        }
    finally:
        await store.close()


async def _exists(store: Any, create_name: str, ident: str) -> Any:
    getter = {"create_facility": store.get_facility, "create_device": store.get_device,
              "create_inmate": store.get_inmate, "create_contact": store.get_contact}[create_name]  # fmt: skip
    return await getter(ident)


def _demo_text(links: dict[str, Any]) -> str:
    return (
        f"Demo visit {links['visit']} is open until {links['ends_at']}.\n"
        f"  Family (open in a browser):  {links['family']}\n"
        f"  Kiosk (second window):       {links['kiosk']}\n"
        f"  Operator console:            {links['console']}\n"
    )


def cmd_audit(args: argparse.Namespace) -> int:
    # Only the database is needed: an auditor must not need the secret that signs tokens, and a
    # mistyped path must not be created and reported as an empty chain that verifies.
    db = args.db or os.environ.get("PARLOR_DB") or "./var/parlor.db"
    if not db.startswith(("postgresql://", "postgres://")) and not os.path.exists(db):
        raise Usage(f"no database at {db} (set PARLOR_DB or pass --db)")

    anchors: dict[int, str] = {}
    for text in args.anchor or []:
        seq, _, digest = text.partition(":")
        if not seq.isdigit() or int(seq) < 1 or len(digest) != 64:
            raise Usage(f"--anchor takes SEQ:HASH as printed in a report's head, got {text!r}")
        anchors[int(seq)] = digest.lower()

    async def verify() -> replay.Verification:
        store = open_store(db, read_only=True)  # the database itself refuses any write
        await store.open()
        try:  # the chain's seals, and every row replayed from it (policy/replay.py)
            return replay.verify(await store.state(), anchors)
        finally:
            await store.close()

    report = asyncio.run(verify())
    print(json.dumps(report.to_json()))
    for disagreement in report.state.disagreements:
        print(f"parlor: disagrees: {disagreement}", file=sys.stderr)
    return 0 if report.ok else 1


# -- commands that talk to a running server ---------------------------------------------
def _operator_token(args: argparse.Namespace, ttl: float = 300) -> str:
    """--token, else PARLOR_TOKEN, else one minted from the local secret for --as."""
    token = args.token or os.environ.get("PARLOR_TOKEN")
    if token:
        return str(token)
    from signaling.tokens import Tokens

    return Tokens(_config(args).secret).issue(args.as_sub, args.as_role, ttl)


def _api(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    token = _operator_token(args)
    request = urllib.request.Request(
        args.server.rstrip("/") + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read())["error"]
            raise Usage(f"{exc.code} {error['code']}: {error['message']}") from None
        except (ValueError, KeyError, TypeError):
            raise Usage(f"HTTP {exc.code} from the server") from None
    except urllib.error.URLError as exc:
        raise Usage(f"cannot reach {args.server}: {exc.reason}") from None


def cmd_suspend(args: argparse.Namespace) -> int:
    try:
        seconds = parse_duration(args.for_)
    except PolicyError as exc:
        raise Usage(exc.message) from None
    body = {
        "scope": args.scope, "action": args.action, "reason": args.reason,
        "legal_basis": args.legal_basis, "expires_at": format_time(time.time() + seconds),
    }  # fmt: skip
    directive = _api(args, "POST", "/api/v1/directives", body)
    print(json.dumps(directive, indent=2))
    return 0


def cmd_lift(args: argparse.Namespace) -> int:
    print(
        json.dumps(
            _api(args, "POST", f"/api/v1/directives/{args.id}/lift", {"reason": args.reason}),
            indent=2,
        )
    )
    return 0


def cmd_directives(args: argparse.Namespace) -> int:
    query = "" if args.all else "?status=active"
    for d in _api(args, "GET", f"/api/v1/directives{query}"):
        print(
            f"{d['id']}  {d['status']:<8} {d['action']:<10} {d['scope']:<24} until {d['expires_at']}  {d['reason']}"
        )
    return 0


def cmd_sessions(args: argparse.Namespace) -> int:
    for s in _api(args, "GET", "/api/v1/sessions"):
        print(
            f"{s['id']}  {s['visit']:<14} {s['sub']:<20} {s['role']:<8} {s['mode']:<11} since {s['started_at']}  node {s['node']}"
        )
    return 0


def cmd_kiosk(args: argparse.Namespace) -> int:
    from signaling.kiosk import run_kiosk

    return asyncio.run(run_kiosk(args))


def cmd_load(args: argparse.Namespace) -> int:
    """Hold --calls simulated calls on a node for --seconds; exit 1 unless every participant
    joined and still received audio and video at the end."""
    from signaling.loadgen import check_arguments, run_load, summary_text

    problem = check_arguments(args)
    if problem:
        raise Usage(problem)
    token = "" if args.visits else _operator_token(args)
    try:
        result = asyncio.run(run_load(args, token))
    except (OSError, ValueError, RuntimeError) as exc:
        raise Usage(f"load: {exc}") from None
    print(json.dumps(result, indent=2) if args.json else summary_text(result))
    everyone = result["participants"]
    held = result.get("held", {}).get("receiving_audio_and_video") == everyone
    return 0 if held and result.get("joined") == f"{everyone}/{everyone}" else 1


def parser() -> argparse.ArgumentParser:
    top = Parser(prog="parlor", description="Parlor video visitation server")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def store_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--db", help="SQLite path or postgresql:// URL (env PARLOR_DB)")

    serve = commands.add_parser(
        "serve", help="run the server", description="Run the Parlor server."
    )
    serve.add_argument("--host", help="address to bind (default 127.0.0.1; env PARLOR_HOST)")
    serve.add_argument("--port", type=int, help="port (default 8080; env PARLOR_PORT)")
    serve.add_argument(
        "--ice-addresses",
        help="comma-separated local addresses for the relay's ICE (env PARLOR_ICE_ADDRESSES)",
    )
    serve.add_argument("--public-url", help="public base URL used in links (env PARLOR_PUBLIC_URL)")
    serve.add_argument("--codec", help="video codec for every call: VP8 or H264 (env PARLOR_CODEC)")
    serve.add_argument("--node-id", help="this node's id in a cluster (env PARLOR_NODE_ID)")
    serve.add_argument(
        "--recordings",
        help="directory for recordings, default ./var/recordings; in a cluster, storage every "
        "node reaches (env PARLOR_RECORDINGS)",
    )
    serve.add_argument(
        "--accept-store-state", action="store_true", default=None,
        help="start although the store disagrees with its audit chain: the disagreeing rows are "
        "restored to what the chain implies, recorded as the audit event store.state-accepted",
    )  # fmt: skip
    store_flags(serve)
    serve.set_defaults(run=cmd_serve)

    token = commands.add_parser(
        "token", help="print a signed token", description="Print a signed JWT."
    )
    token.add_argument(
        "--sub", required=True, help="subject, e.g. operator:alice, contact:C1, device:K1"
    )
    token.add_argument("--role", required=True, help=f"one of {', '.join(ROLES)}")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    token.add_argument("--visit", help="visit id (family tokens)")
    store_flags(token)
    token.set_defaults(run=cmd_token)

    demo = commands.add_parser("demo", help="seed a demo visit happening now and print its links")
    demo.add_argument("--json", action="store_true", help="print the links as JSON")
    demo.add_argument("--public-url", help="base URL for the printed links")
    demo.add_argument("--host", help="host used in the printed links (default 127.0.0.1)")
    demo.add_argument("--port", type=int, help="port used in the printed links (default 8080)")
    store_flags(demo)
    demo.set_defaults(run=cmd_demo)

    audit = commands.add_parser("audit", help="audit chain tools")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = audit_commands.add_parser(
        "verify",
        help="recompute the hash chain and replay it against the store's rows, read-only; print its "
        "head (record it elsewhere) and every row that disagrees; exit 1 on either",
    )
    verify.add_argument(
        "--anchor", action="append", metavar="SEQ:HASH",
        help="an event's hash recorded outside the database (a previous run's head): "
        "catches a history rewritten and sealed again; repeatable",
    )  # fmt: skip
    store_flags(verify)
    verify.set_defaults(run=cmd_audit)

    def remote(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--server",
            default=os.environ.get("PARLOR_SERVER", "http://127.0.0.1:8080"),
            help="server URL",
        )
        p.add_argument(
            "--token", help="operator token (env PARLOR_TOKEN; else minted from the local secret)"
        )
        p.add_argument(
            "--as", dest="as_sub", default="operator:cli", help="subject for a locally minted token"
        )
        p.add_argument("--as-role", default="operator", help="role for a locally minted token")
        store_flags(p)

    suspend = commands.add_parser("suspend", help="issue a directive against a scope")
    suspend.add_argument(
        "scope", help="system, facility:F, device:K, inmate:I, contact:C, pair:I:C or visit:V"
    )
    suspend.add_argument("--reason", required=True)
    suspend.add_argument("--legal-basis", required=True)
    suspend.add_argument("--for", dest="for_", required=True, help="duration, e.g. 30m, 2h, 7d")
    suspend.add_argument("--action", default="suspend", choices=["suspend", "end", "audio-only"])
    remote(suspend)
    suspend.set_defaults(run=cmd_suspend)

    lift = commands.add_parser("lift", help="lift a directive")
    lift.add_argument("id")
    lift.add_argument("--reason", required=True)
    remote(lift)
    lift.set_defaults(run=cmd_lift)

    directives = commands.add_parser("directives", help="list active directives")
    directives.add_argument("--all", action="store_true", help="include lifted, expired and lapsed")
    remote(directives)
    directives.set_defaults(run=cmd_directives)

    sessions = commands.add_parser("sessions", help="list live sessions")
    remote(sessions)
    sessions.set_defaults(run=cmd_sessions)

    kiosk = commands.add_parser(
        "kiosk", help="headless aiortc kiosk: holds its presence, joins its visits as they open"
    )
    kiosk.add_argument("--server", required=True, help="server URL, e.g. http://127.0.0.1:8080")
    kiosk.add_argument(
        "--token", required=True, help="device token (or a family token with --visit)"
    )
    kiosk.add_argument(
        "--visit", help="join this visit only (default: every visit of this kiosk as it opens)"
    )
    kiosk.add_argument(
        "--video", default="testsrc", help="a media file, or 'testsrc' for a test pattern"
    )
    kiosk.add_argument(
        "--seconds",
        type=float,
        default=0,
        help="stop after this many seconds (0: until the visit ends; without --visit, for ever)",
    )
    kiosk.set_defaults(run=cmd_kiosk)

    from signaling.loadgen import add_arguments as load_arguments

    load = commands.add_parser(
        "load", help="hold N simulated calls on a node and report what they received and cost",
        description="Hold N simulated 1:1 calls (real WebSockets and peer connections, pre-packetized "
        "VP8 + Opus) on a node, in worker processes; creates the visits through the API as an operator "
        "unless --visits gives them.",
    )  # fmt: skip
    remote(load)
    load_arguments(load)
    load.set_defaults(run=cmd_load)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (ConfigError, Usage, PolicyError) as exc:
        print(f"parlor: {getattr(exc, 'message', None) or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
