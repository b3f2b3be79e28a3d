"""The cluster pieces that need no database: URLs, configuration, the embedded bus's choice."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from policy.pgstore import PostgresStore, numbered, postgres_ddl
from policy.store import SCHEMA, SqliteStore
from signaling.bus import REDIRECT, EmbeddedBus, PostgresBus, open_bus, ws_url
from signaling.config import ConfigError, load_config
from signaling.enforcer import Enforcer
from signaling.registry import LiveSessions
from tests.conftest import SECRET, make_config

ENV = {"PARLOR_SECRET": SECRET.decode()}


def test_redirect_close_code_is_outside_spec_codes() -> None:
    assert REDIRECT == 4307


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
        sessions = LiveSessions()
        enforcer = Enforcer(sessions=sessions, policy=policy)
        return open_bus(
            make_config(tmp_path, **config), store, policy, enforcer, sessions, asyncio.Event()
        )

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
