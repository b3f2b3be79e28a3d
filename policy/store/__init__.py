"""The store: one interface, two implementations, chosen at start-up by `open_store`.

- `interface.py`: `Store` (what the domain needs) and `Cluster` (what only a shared store
  offers: the bus and the placement of calls), with the plain records they pass.
- `sql.py`: the schema and the domain's SQL, written once (`SqlStore`).
- `sqlite.py`: `SqliteStore`, the embedded default (one node).
- `postgres.py`: `PostgresStore`, the shared store of a cluster; also its `Cluster`.
"""

from __future__ import annotations

import time
from typing import Any

from policy.store.interface import (
    AuditDraft,
    Cluster,
    Listener,
    Placement,
    Presence,
    Restoration,
    Store,
    StoredState,
)
from policy.store.sqlite import SqliteStore

__all__ = [
    "AuditDraft", "Cluster", "Listener", "Placement", "Presence", "Restoration", "Store", "StoredState",
    "SqliteStore", "open_store",
]  # fmt: skip


def open_store(url: str, clock: Any = time.time, *, read_only: bool = False) -> Store:
    """Choose the implementation from PARLOR_DB: a `postgresql://` URL or a SQLite path.

    `read_only`: the database itself refuses writes (and nothing is created): for auditors.
    PostgreSQL's driver is imported only when a cluster runs.
    """
    if url.startswith(("postgresql://", "postgres://")):
        from policy.store.postgres import PostgresStore

        return PostgresStore(url, clock, read_only=read_only)
    return SqliteStore(url, clock, read_only=read_only)
