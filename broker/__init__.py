"""Server side: MQTT ingest into a store, and an embedded broker for the demo.

    from broker import EmbeddedBroker, Ingest, open_store

    with EmbeddedBroker() as mqtt_broker:
        store = open_store("sqlite:///flylead.sqlite")
        with Ingest(store, mqtt_broker.host, mqtt_broker.port) as ingest:
            ...

Deployments run Mosquitto with credentials instead of :class:`EmbeddedBroker`.
"""

from broker.embedded import EmbeddedBroker
from broker.ingest import Ingest
from broker.store import InfluxStore, SqliteStore, Store, StoreError, open_store

__all__ = [
    "EmbeddedBroker",
    "InfluxStore",
    "Ingest",
    "SqliteStore",
    "Store",
    "StoreError",
    "open_store",
]
