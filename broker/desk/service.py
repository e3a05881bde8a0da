"""Running the desk: periodic sync from the store (with notifications) and the web server.

:class:`SyncLoop` takes new alerts from the ingest's SQLite store into the desk every
``interval_s`` real seconds and notifies the new cases; :func:`serve` runs the Flask app
on a threaded WSGI server (werkzeug's), bound to loopback by default.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from broker.desk.db import Case, DeskDB, DeskError, sync_from_store
from broker.desk.registry import Registry

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "SyncLoop", "sync_once", "make_server"]

log = logging.getLogger("flylead.desk")

#: The desk listens on loopback unless told otherwise: expose it through a reverse proxy
#: that terminates TLS.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
#: Real seconds between two syncs: an alert reaches the desk within half a minute, and a
#: sync reads only the alerts table (small: one row per alert message).
DEFAULT_SYNC_S = 30.0


def sync_once(desk: DeskDB, store_path: str | Path, registry: Registry,
              notifier: Any | None = None) -> list[Case]:
    """Create cases for new alerts in the store file, notify them; the new cases.

    Raises:
        StoreError: the store cannot be opened or read (the message names the file).
        DeskError: the desk database cannot be written.
    """
    from broker.store import SqliteStore, StoreError

    if not Path(store_path).exists():
        raise StoreError(f"store {store_path} does not exist (is the ingest writing elsewhere?)")
    store = SqliteStore(store_path, read_only=True)
    try:
        new = sync_from_store(desk, store, registry)
    finally:
        store.close()
    if new:
        log.info("desk: %d new cases from %s", len(new), store_path)
        if notifier is not None:
            notifier.notify(new, registry)
    return new


class SyncLoop:
    """A daemon thread running :func:`sync_once` every ``interval_s`` real seconds.

    Errors are logged and the loop goes on (the store may be briefly locked or missing).
    """

    def __init__(self, desk: DeskDB, store_path: str | Path, registry: Registry,
                 notifier: Any | None = None, interval_s: float = DEFAULT_SYNC_S) -> None:
        if interval_s <= 0:
            raise ValueError(f"sync interval must be > 0 s, got {interval_s}")
        self.desk, self.store_path, self.registry = desk, store_path, registry
        self.notifier, self.interval_s = notifier, interval_s
        self.runs = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="desk-sync", daemon=True)

    def _run(self) -> None:
        from broker.store import StoreError

        while True:
            try:
                sync_once(self.desk, self.store_path, self.registry, self.notifier)
                self.last_error = None
            except (StoreError, DeskError) as exc:
                self.last_error = str(exc)
                log.error("desk sync failed: %s", exc)
            self.runs += 1
            if self._stop.wait(self.interval_s):
                return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10.0)


def make_server(app: Any, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> Any:
    """A threaded werkzeug WSGI server for ``app`` (call ``serve_forever()``; ``port=0``
    picks a free port, read back from ``server.server_port``).

    Raises:
        OSError: the address cannot be bound (the message names host:port).
    """
    from werkzeug.serving import make_server as _make

    try:
        return _make(host, port, app, threaded=True)
    except OSError as exc:
        raise OSError(f"alert desk cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    except SystemExit:  # werkzeug prints why and exits when the address is taken or unknown
        raise OSError(f"alert desk cannot listen on {host}:{port}: the address is in use or not this "
                      "machine's") from None
