"""On PostgreSQL too, the store's state is a projection of the audit chain (issue #15, item 3):
a directive lifted in the database by hand is named by `parlor audit verify`, a node refuses
to start on it, and a node started with `--accept-store-state` restores the chain's values
(the other node, running all along, hears the restoration and reloads)."""

from __future__ import annotations

import json

import asyncpg
import pytest

from policy.replay import StateDisagrees
from signaling import keys as K
from tests.api.test_cli import parlor
from tests.cluster.conftest import client, directive_body, start_node
from tests.conftest import make_visit, seed, stop_server

pytestmark = pytest.mark.cluster


async def test_a_directive_lifted_in_postgresql_is_caught_and_stays_enforced(tmp_path, pg_url):
    b = await start_node(tmp_path, pg_url, "B")
    try:
        a = await start_node(tmp_path, pg_url, "A")
        try:
            await seed(a)
            visit = await make_visit(a, ["C1"])
            status, directive = await a.api(
                "POST", "/api/v1/directives", directive_body("contact:C1")
            )
            assert status == 201
        finally:
            await stop_server(a)
        conn = await asyncpg.connect(pg_url)
        try:
            done = await conn.execute(
                "UPDATE directives SET status = 'lifted' WHERE id = $1", directive["id"]
            )
            assert done == "UPDATE 1"
        finally:
            await conn.close()

        verified = parlor("audit", "verify", "--db", pg_url, cwd=tmp_path)
        assert verified.returncode == 1, verified
        assert json.loads(verified.stdout)["state"]["disagreements"] == [
            {"table": "directives", "id": directive["id"], "field": "status",
             "stored": "lifted", "implied": "active"},
        ]  # fmt: skip
        with pytest.raises(StateDisagrees, match=f"directives {directive['id']} status"):
            await start_node(tmp_path, pg_url, "A")

        a = await start_node(tmp_path, pg_url, "A", accept_store_state=True)
        try:
            c1 = client(a, visit, "C1")
            refused = await c1.connect(offer=False)
            await c1.close()
            assert (refused["code"], c1.close_code) == ("suspended", 4403), refused
            stored = await a.app[K.STORE].get_directive(directive["id"])
            assert stored is not None and stored.status == "active"
            events = [e.action for e in await b.app[K.STORE].audit_events()]
            assert events[-1] == "store.state-accepted"
            assert directive["id"] in b.app[K.POLICY].index.by_id
        finally:
            await stop_server(a)
        assert parlor("audit", "verify", "--db", pg_url, cwd=tmp_path).returncode == 0
    finally:
        await stop_server(b)
