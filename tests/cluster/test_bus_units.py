"""The cluster pieces that need no database: URLs, configuration, the embedded bus's choice."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from policy.audit import AuditEvent
from policy.directive import Directive
from policy.store import SqliteStore
from policy.store.postgres import PostgresStore, announced, announcement, numbered, postgres_ddl
from policy.store.sql import SCHEMA
from signaling.bus import EmbeddedBus, PostgresBus, open_bus, ws_url
from signaling.config import ConfigError, load_config
from signaling.directives import Directives
from signaling.enforcer import Enforcer
from signaling.protocol import Close
from signaling.registry import LiveSessions
from tests.conftest import SECRET, make_config

ENV = {"PARLOR_SECRET": SECRET.decode()}


def test_redirect_close_code_is_outside_spec_codes() -> None:
    assert Close.REDIRECT == 4307


def test_ws_url_of_a_node() -> None:
    assert ws_url("http://10.0.0.5:8080") == "ws://10.0.0.5:8080/ws"
    assert ws_url("https://node-b.visits.example.org/") == "wss://node-b.visits.example.org/ws"


def test_node_url_comes_from_the_environment_or_a_flag() -> None:
    assert load_config(ENV).node_url is None
    assert (
        load_config({**ENV, "PARLOR_NODE_URL": "http://10.0.0.5:8080"}).node_url
        == "http://10.0.0.5:8080"
    )
    assert load_config(ENV, node_url="https://b.example.org").node_url == "https://b.example.org"
    with pytest.raises(ConfigError, match="PARLOR_NODE_URL"):
        load_config({**ENV, "PARLOR_NODE_URL": "10.0.0.5:8080"})


def test_the_store_chooses_the_bus(tmp_path: Path) -> None:
    def bus_for(store, **config):
        from policy.service import Policy

        policy = Policy(store=store)
        enforcer = Enforcer(sessions=LiveSessions(), policy=policy)
        directives = Directives(policy=policy, enforcer=enforcer, node_id="A")
        return open_bus(make_config(tmp_path, **config), store, directives, asyncio.Event())

    assert isinstance(bus_for(SqliteStore(tmp_path / "p.db")), EmbeddedBus)
    pg = bus_for(PostgresStore("postgresql://x@127.0.0.1:1/db"), node_id="B", port=8081)
    assert isinstance(pg, PostgresBus) and pg.url == "ws://127.0.0.1:8081/ws"
    pg = bus_for(PostgresStore("postgresql://x@127.0.0.1:1/db"), node_url="https://b.example.org")
    assert isinstance(pg, PostgresBus) and pg.url == "wss://b.example.org/ws"


async def test_the_embedded_bus_places_every_visit_here() -> None:
    bus = EmbeddedBus()
    await bus.start()
    assert await bus.place(object()) is None  # type: ignore[arg-type]
    await bus.stop()


def test_placeholders_are_numbered_outside_quotes() -> None:
    assert numbered("SELECT * FROM t WHERE a = ? AND b = '?' AND c = ?") == (
        "SELECT * FROM t WHERE a = $1 AND b = '?' AND c = $2"
    )
    assert numbered("UPDATE \"we?rd\" SET x = ? WHERE y = 'it''s?' AND z = ?") == (
        "UPDATE \"we?rd\" SET x = $1 WHERE y = 'it''s?' AND z = $2"
    )


def test_postgres_types_keep_sqlites_widths() -> None:
    ddl = [postgres_ddl(d) for d in SCHEMA]
    assert not any(" REAL" in d or " INTEGER" in d for d in ddl)
    assert any("seq BIGINT PRIMARY KEY" in d for d in ddl)
    assert any("expires_at DOUBLE PRECISION NOT NULL" in d for d in ddl)


# -- announcements: the event rides in its notification ----------------------------------------
def _event(seq: int, action: str = "session.started", data: dict | None = None) -> AuditEvent:
    subject = f"directive:{data['id']}" if data and "id" in data else f"session:S{seq}"
    return AuditEvent(seq, "2026-01-01T00:00:00.000000Z", "operator:alice", action, subject,
                      data or {}, "0" * 64, f"{seq:064x}")  # fmt: skip


def test_an_event_is_announced_whole_and_read_back() -> None:
    event = _event(42, "directive.issued", {"reason": "menaces — «threats»", "n": [1, 2]})
    assert announced(announcement(event)) == (42, event)


def test_an_event_too_large_for_a_notification_is_announced_by_number() -> None:
    # 3,000 characters but 9,000 bytes: PostgreSQL's limit is in bytes
    event = _event(43, data={"text": "€" * 3000})
    assert announcement(event) == "43"
    assert announced("43") == (43, None)


@pytest.mark.parametrize("payload", ["", "{", "[]", '{"seq": 1}', "null", '{"seq": "7"}'])
def test_an_unreadable_announcement_means_read_the_log(payload: str) -> None:
    assert announced(payload) == (0, None)


class LogOnly:
    """A store that only has an audit log and directives, and counts the reads."""

    def __init__(self, events: list[AuditEvent], directives: dict) -> None:
        self.events, self.directives = events, directives
        self.reads: list[str] = []
        self.head_seq = 0

    def noticed(self, seq: int) -> None:
        self.head_seq = max(self.head_seq, seq)

    async def audit_events(self, *, after: int = 0, limit: int | None = None) -> list[AuditEvent]:
        self.reads.append(f"log>{after}")
        return [e for e in self.events if e.seq > after][:limit]

    async def get_directive(self, directive_id: str):
        self.reads.append(f"directive:{directive_id}")
        return self.directives.get(directive_id)


def _bus(tmp_path: Path, store: LogOnly) -> tuple[PostgresBus, Directives]:
    from policy.service import Policy

    policy = Policy(store=store)  # type: ignore[arg-type]
    enforcer = Enforcer(sessions=LiveSessions(), policy=policy)
    directives = Directives(policy=policy, enforcer=enforcer, node_id="A")
    bus = PostgresBus(store, store, directives, asyncio.Event(), node_id="A", url="ws://a")  # type: ignore[arg-type]
    return bus, directives


def _suspension(id: str) -> Directive:
    now = time.time()
    return Directive(id=id, scope="contact:C1", action="suspend", reason="threats",
                     legal_basis="Rule 7.1", issued_by="operator:bob", issued_at=now - 1,
                     starts_at=now - 1, expires_at=now + 3600)  # fmt: skip


async def test_the_next_announced_directive_is_enforced_without_reading_the_database(
    tmp_path,
) -> None:
    directive = _suspension("D1")
    issued = _event(6, "directive.issued", directive.to_json())
    store = LogOnly([issued], {})  # the directive is not even readable: the payload is enough
    bus, directives = _bus(tmp_path, store)
    bus.cursor = 5
    bus._notified(6, issued)
    await bus._catch_up()
    assert store.reads == []
    assert bus.cursor == 6 and "D1" in directives.stopped
    assert (
        directives.policy.index.by_id["D1"].to_json() == directive.to_json()
    )  # to the microsecond


async def test_a_gap_or_a_bare_number_is_read_from_the_log(tmp_path) -> None:
    d2, d3 = _suspension("D2"), _suspension("D3")
    events = [
        _event(6),
        _event(7, "directive.issued", d2.to_json()),
        _event(8, "directive.issued", d3.to_json()),
    ]
    store = LogOnly(events, {"D2": d2, "D3": d3})
    bus, directives = _bus(tmp_path, store)
    bus.cursor = 5
    bus._notified(8, events[2])  # 6 and 7 were never announced here
    await bus._catch_up()
    assert store.reads[0] == "log>5" and bus.cursor == 8
    assert {"D2", "D3"} <= directives.stopped
    # from the log, a directive's *current* state is read: a later event may have changed it
    assert "directive:D2" in store.reads
    store.reads.clear()
    store.events.append(_event(9))
    bus._notified(9, None)  # too large to carry: announced by number
    await bus._catch_up()
    assert store.reads == ["log>8"] and bus.cursor == 9


async def test_an_event_seen_already_is_not_applied_again(tmp_path) -> None:
    store = LogOnly([], {})
    bus, _ = _bus(tmp_path, store)
    bus.cursor = 10
    bus._notified(9, _event(9))
    bus._notified(10, _event(10))
    await bus._catch_up()
    assert store.reads == [] and bus.cursor == 10 and not bus._announced


async def test_an_event_this_node_wrote_only_moves_the_cursor(tmp_path) -> None:
    """The API handler that issued it enforces it and counts what it ended; the bus must not
    race it (it would win: its path has no database round trip)."""
    directive = _suspension("D4")
    issued = _event(6, "directive.issued", directive.to_json())
    store = LogOnly([issued], {})
    bus, directives = _bus(tmp_path, store)
    bus.cursor = 5
    bus._notified(6, issued, True)
    await bus._catch_up()
    assert store.reads == [] and bus.cursor == 6 and store.head_seq == 6
    assert "D4" not in directives.stopped and "D4" not in directives.policy.index.by_id
