"""An MQTT broker inside the process, for the demo and the tests.

:class:`EmbeddedBroker` runs an amqtt broker (MQTT 3.1.1 only) in its own thread with its
own asyncio loop, so the caller may be synchronous, threaded or run a different asyncio
loop.  It listens on loopback and allows anonymous clients: that is the demo default only.
A deployment uses Mosquitto with per-gateway credentials, ACLs and TLS instead; nothing
in flylead depends on the broker being embedded.

Behaviour of amqtt 0.12 worth knowing:

* QoS 1, retained messages and last wills work as MQTT 3.1.1 specifies (checked in
  tests/test_embedded_broker.py).
* Anonymous sessions are not persistent: amqtt drops an anonymous client's session
  when it disconnects and queues nothing for it, whatever its clean session flag.  So
  an ingest that reconnects misses what was published in between; with Mosquitto it
  does not.
* It waits 5 s for a subscriber's PUBACK, then gives up on that message (no resend).
* MQTT 5 clients are refused; connect with MQTT 3.1.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from types import TracebackType
from typing import Any

from amqtt.broker import Broker

__all__ = ["EmbeddedBroker"]

_log = logging.getLogger("flylead.broker")

#: amqtt logs every connection and packet at INFO/DEBUG; the demo's console stays readable.
_QUIET_LOGGERS = ("amqtt", "transitions")
#: Real seconds start() waits for amqtt to bind (it takes ~20 ms).
START_TIMEOUT_S = 10.0
#: Real seconds stop() waits for amqtt to close its sessions and listener.
STOP_TIMEOUT_S = 10.0
#: Attempts to bind a port picked with port=0: another process may take the free port
#: between picking and binding (the window is a few ms, so three tries are plenty).
_PICK_ATTEMPTS = 3


def _free_port(host: str) -> int:
    """A TCP port free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """amqtt broker in a background thread.

    Use as a context manager (``with EmbeddedBroker() as b: ... b.host, b.port``) or
    call :meth:`start` and :meth:`stop`.

    Args:
        host: address to listen on (IPv4 or a name; default loopback only).
        port: TCP port; 0 picks a free one, readable from :attr:`port` after start.  A
            broker started again after :meth:`stop` reuses the port of its first start,
            so clients can reconnect to it.

    Attributes:
        host: the listen address.
        port: the real listen port once started (0 before, if 0 was asked for).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"EmbeddedBroker port must be 0..65535, got {port!r}")
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: Broker | None = None
        self._thread: threading.Thread | None = None
        for name in _QUIET_LOGGERS:
            # amqtt warns per message when a late PUBACK arrives after its own 5 s
            # retry window; the ingest deduplicates, so these are noise in the demo
            logging.getLogger(name).setLevel(logging.ERROR)

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Start the broker and return once its port accepts TCP connections.

        amqtt's start returns after its listening socket is bound and listening, so no
        probe connection is made (amqtt would log one as an error).

        Raises:
            RuntimeError: already running, or the broker did not come up within
                :data:`START_TIMEOUT_S` (the message names host:port and the cause).
        """
        if self._thread is not None:
            raise RuntimeError(f"EmbeddedBroker on {self.host}:{self.port} is already running")
        attempts = _PICK_ATTEMPTS if self.port == 0 else 1
        error: BaseException | None = None
        for _ in range(attempts):
            port = self.port or _free_port(self.host)
            try:
                self._start_on(port)
                break
            except RuntimeError as exc:
                error = exc
        else:
            assert error is not None
            raise error
        _log.info("embedded MQTT broker listening on %s:%d (anonymous, MQTT 3.1.1)",
                  self.host, self.port)

    def _start_on(self, port: int) -> None:
        """Run the loop thread and start amqtt on ``port``; RuntimeError if it fails."""
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        async def boot() -> None:
            try:
                self._broker = Broker(self._config(port), loop=loop)
                await self._broker.start()
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
            finally:
                started.set()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.set_exception_handler(self._loop_exception)
            loop.create_task(boot())
            loop.run_forever()
            # stop() has stopped the loop; cancel leftovers so close() is clean.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

        thread = threading.Thread(target=run, name=f"amqtt-{self.host}:{port}", daemon=True)
        thread.start()
        if not started.wait(START_TIMEOUT_S) or failure:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(STOP_TIMEOUT_S)
            self._broker = None
            cause = failure[0] if failure else "timeout"
            raise RuntimeError(f"embedded MQTT broker failed to start on {self.host}:{port}: {cause}")
        self._loop, self._thread, self.port = loop, thread, port

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """One line instead of asyncio's traceback for errors amqtt leaves unhandled.

        amqtt 0.12 lets socket errors of clients that vanish mid-handshake (e.g. an MQTT 5
        CONNECT it refuses) escape its connection callback; they are harmless to others.
        """
        exc = context.get("exception")
        _log.warning("embedded MQTT broker on %s:%d: %s%s", self.host, self.port,
                     context.get("message", "error"), f": {exc!r}" if exc else "")

    def _config(self, port: int) -> dict[str, Any]:
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{port}"}},
            # Only anonymous auth: no $SYS publisher, no packet/event logging plugins.
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }

    def stop(self) -> None:
        """Disconnect all clients, close the listener and end the thread.  Idempotent.

        Wills of still-connected clients are not published (the broker goes away).
        """
        loop, thread, broker = self._loop, self._thread, self._broker
        if thread is None or loop is None:
            return
        if broker is not None and loop.is_running():
            future = asyncio.run_coroutine_threadsafe(broker.shutdown(), loop)
            try:
                future.result(STOP_TIMEOUT_S)
            except Exception as exc:  # shutting down anyway; say why it was not clean
                _log.warning("embedded MQTT broker on %s:%d: unclean shutdown: %r",
                             self.host, self.port, exc)
        with contextlib.suppress(RuntimeError):  # loop already closed
            loop.call_soon_threadsafe(loop.stop)
        thread.join(STOP_TIMEOUT_S)
        self._loop = self._thread = self._broker = None

    @property
    def running(self) -> bool:
        """True between a successful :meth:`start` and :meth:`stop`."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"EmbeddedBroker({self.host}:{self.port}, {state})"
