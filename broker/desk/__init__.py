"""The alert desk: where the township emergency office and the village grid workers work
alerts to closure (web app, case database, registry of villages and compounds).

    from broker.desk import DeskDB, create_app, load_registry, sync_from_store

    desk = DeskDB("desk.sqlite")
    registry = load_registry("registry.toml")
    sync_from_store(desk, SqliteStore("flylead.sqlite"), registry)   # a case per new alert
    app = create_app(desk, registry, store_path="flylead.sqlite")

Flask is imported only when :func:`create_app` is first used, so the case database and
the report can be used without the web stack loaded.  See docs/desk.md.
"""

from __future__ import annotations

from typing import Any

from broker.desk.db import ACTIONS, STATES, Case, DeskDB, DeskError, Event, TransitionError, User, sync_from_store
from broker.desk.registry import UNASSIGNED, Registry, RegistryError, load_registry

__all__ = [
    "ACTIONS",
    "STATES",
    "UNASSIGNED",
    "Case",
    "DeskDB",
    "DeskError",
    "Event",
    "Registry",
    "RegistryError",
    "TransitionError",
    "User",
    "create_app",
    "load_registry",
    "sync_from_store",
]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from broker.desk.app import create_app

        return create_app
    raise AttributeError(f"module 'broker.desk' has no attribute {name!r}")
