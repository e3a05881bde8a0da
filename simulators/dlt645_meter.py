"""A simulated DL/T 645-2007 meter on a pseudo-terminal, with injectable faults.

The meter owns the master side of a pty (:func:`os.openpty`); a client opens
:attr:`Dlt645MeterSim.path` (the slave side) like a serial port.  Line settings (2400 8E1)
are accepted and ignored by the pty; ``byte_time_s`` can pace the reply byte by byte like
a real line (2400 baud, 11 bits per byte: 4.6 ms).

The meter answers, with ``FE`` x ``reply_preamble`` in front of each reply:

* C = 0x11 read, to its address or a wildcard (``AA``) address: the data items of
  :data:`drivers.dlt645.DATA_ITEMS` and the 0001FF00 energy block from the live values;
  any other DI gets error reply D1 with error byte 0x02, "no requested data" (FC-013);
* C = 0x12 read follow-up for the second half of a split 0001FF00 block (``follow_on``);
* C = 0x13 read address, to ``AAAAAAAAAAAA`` only: C = 0x93 with its address (FC-002);
* nothing to other addresses, to the broadcast address 999999999999, or to other codes.

Replies are built with :func:`drivers.dlt645.encode_frame` and the request parsed with
:class:`drivers.dlt645.FrameScanner`; both are checked byte for byte against the captured
frames of field-vectors.md section A in ``tests/test_dlt645.py``, so the simulator does
not hide a codec fault behind a matching one.
"""

from __future__ import annotations

import os
import select
import threading
import time
import tty
from collections.abc import Callable

from drivers.dlt645 import (
    C_FOLLOW_ERROR,
    C_FOLLOW_REPLY,
    C_READ,
    C_READ_ADDRESS,
    C_READ_ADDRESS_REPLY,
    C_READ_ERROR,
    C_READ_FOLLOW,
    C_READ_REPLY,
    C_READ_REPLY_MORE,
    DATA_ITEMS,
    ENERGY_BLOCK_DI,
    WILDCARD_ADDRESS,
    Frame,
    FrameScanner,
    address_to_wire,
    di_to_wire,
    encode_energy_block,
    encode_frame,
    encode_value,
)
from flylead.clock import Clock
from simulators.trace import LoadTrace

#: Faults :meth:`Dlt645MeterSim.set_fault` accepts.
#:
#: * ``None``: healthy;
#: * ``"silent"``: no reply at all;
#: * ``"bad_checksum"``: the reply's checksum byte + 1;
#: * ``"garbage"``: :data:`GARBAGE` before the reply;
#: * ``"doubled_68"``: the reply starts ``68 68`` (FC-020, C-02);
#: * ``"slow"``: the reply after ``delay_s`` real seconds;
#: * ``"echo"``: the request is sent back first, as an RS-485 adapter that hears itself;
#: * ``"other_address"``: the reply comes from :data:`OTHER_ADDRESS`;
#: * ``"other_di"``: a read is answered for :data:`OTHER_DI` (voltage, or frequency when
#:   voltage was asked for).
FAULTS = (
    None,
    "silent",
    "bad_checksum",
    "garbage",
    "doubled_68",
    "slow",
    "echo",
    "other_address",
    "other_di",
)

#: Address of the ``"other_address"`` fault's reply.
OTHER_ADDRESS = "999999999998"

#: DI of the ``"other_di"`` fault's reply (:data:`OTHER_DI_ALT` if that one was asked for).
OTHER_DI, OTHER_DI_ALT = "02010100", "02800002"

#: Line noise sent by the ``"garbage"`` fault: includes stray ``68`` and ``16`` bytes and
#: a false header (``68`` with ``68`` seven bytes later and an impossible length).
GARBAGE = bytes.fromhex("00 68 13 FF 16 55 68 01 02 03 04 05 06 68 91 F0 16")

#: Error byte for an unknown DI: bit 1, "no requested data" (FC-013).
ERR_NO_DATA = 0x02

#: Tariff shares of the total in the 0001FF00 block, T1..T4 (arbitrary but fixed).
TARIFF_SHARES = (0.5, 0.25, 0.25, 0.0)


class Dlt645MeterSim:
    """One DL/T 645-2007 meter answering on a pty, in a background thread.

    Args:
        address: 12-digit meter address, e.g. ``"000000000161"``.
        values_fn: returns quantity -> SI value (as :meth:`LoadTrace.at`); missing
            ``energy_export`` is 0.  Give this or ``trace`` and ``clock``.
        trace, clock: serve ``trace.at(clock.now())``.
        reply_preamble: ``FE`` bytes before each reply, >= 0.
        byte_time_s: pause after each reply byte, real s (0: the whole reply at once).
        follow_on: answer 0001FF00 in two frames (C = 0xB1, then 0x92 after the master's
            C = 0x12 follow-up request with sequence number 1).
        delay_s: reply delay of the ``"slow"`` fault, real s.

    Attributes:
        path: the pty slave path to open as the serial port.
        requests: every frame received, oldest first.

    Raises:
        ValueError: bad address, or neither ``values_fn`` nor ``trace`` and ``clock``.
    """

    def __init__(
        self,
        address: str,
        values_fn: Callable[[], dict[str, float]] | None = None,
        *,
        trace: LoadTrace | None = None,
        clock: Clock | None = None,
        reply_preamble: int = 4,
        byte_time_s: float = 0.0,
        follow_on: bool = False,
        delay_s: float = 1.0,
    ) -> None:
        address_to_wire(address)
        if values_fn is None:
            if trace is None or clock is None:
                raise ValueError("Dlt645MeterSim needs values_fn, or trace and clock")
            values_fn = lambda: trace.at(clock.now())  # noqa: E731
        if reply_preamble < 0 or byte_time_s < 0 or delay_s < 0:
            raise ValueError("reply_preamble, byte_time_s and delay_s must be >= 0")
        self.address = address.upper()
        self.reply_preamble = reply_preamble
        self.byte_time_s = byte_time_s
        self.follow_on = follow_on
        self.delay_s = delay_s
        self.requests: list[Frame] = []
        self._values_fn = values_fn
        self._fault: str | None = None
        self._pending_follow: dict[str, bytes] = {}
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line editing, no CR/LF translation
        self.path = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start answering in a daemon thread.

        Raises:
            RuntimeError: already started or stopped.
        """
        if self._thread is not None or self._stop.is_set():
            raise RuntimeError(f"meter {self.address} on {self.path} already started or stopped")
        self._thread = threading.Thread(
            target=self._run, name=f"dlt645-{self.address}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop answering and close the pty (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass
        self._master = self._slave = -1

    def __enter__(self) -> Dlt645MeterSim:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def set_fault(self, fault: str | None) -> None:
        """Inject a fault from :data:`FAULTS` (``None`` heals).

        Raises:
            ValueError: unknown fault.
        """
        if fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, got {fault!r}")
        self._fault = fault

    # -- internals ---------------------------------------------------------------------

    def _run(self) -> None:
        scanner = FrameScanner()
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._master], [], [], 0.05)
                if not ready:
                    continue
                data = os.read(self._master, 4096)
            except OSError:  # the client side hung up; keep serving the next open
                time.sleep(0.05)
                continue
            for frame in scanner.feed(data):
                if frame.is_reply:
                    continue
                self.requests.append(frame)
                reply = self._answer(frame)
                if reply is not None:
                    self._send(frame, reply)

    def _answer(self, request: Frame) -> bytes | None:
        """Reply wire bytes (without preamble or faults), or None for no reply."""
        if request.control == C_READ_ADDRESS:
            if request.address != WILDCARD_ADDRESS:
                return None
            return encode_frame(self.address, C_READ_ADDRESS_REPLY, address_to_wire(self.address))
        if not self._addressed(request.address):
            return None
        if request.control == C_READ and len(request.data) == 4:
            di = request.data[3::-1].hex().upper()
            if self._fault == "other_di":
                di = OTHER_DI_ALT if di == OTHER_DI else OTHER_DI
            return self._read(di)
        if request.control == C_READ_FOLLOW and len(request.data) == 5:
            di = request.data[3::-1].hex().upper()
            rest = self._pending_follow.pop(di, None)
            if rest is None or request.data[4] != 1:
                return encode_frame(self.address, C_FOLLOW_ERROR, bytes((ERR_NO_DATA,)))
            return encode_frame(self.address, C_FOLLOW_REPLY, di_to_wire(di) + rest + b"\x01")
        return None

    def _addressed(self, address: str) -> bool:
        return all(
            address[i : i + 2] in ("AA", self.address[i : i + 2]) for i in range(0, 12, 2)
        )

    def _read(self, di: str) -> bytes:
        values = dict(self._values_fn())
        values.setdefault("energy_export", 0.0)
        if di == ENERGY_BLOCK_DI:
            total = values["energy_import"]
            # tariffs rounded down to the 0.01 kWh the meter shows, so they never exceed the total
            tariffs = [int(total * share * 100) / 100 for share in TARIFF_SHARES]
            block = encode_energy_block(total, tariffs)
            if self.follow_on:
                self._pending_follow[di] = block[8:]
                return encode_frame(self.address, C_READ_REPLY_MORE, di_to_wire(di) + block[:8])
            return encode_frame(self.address, C_READ_REPLY, di_to_wire(di) + block)
        item = DATA_ITEMS.get(di)
        if item is None or item.quantity not in values:
            return encode_frame(self.address, C_READ_ERROR, bytes((ERR_NO_DATA,)))
        value = encode_value(di, values[item.quantity])
        return encode_frame(self.address, C_READ_REPLY, di_to_wire(di) + value)

    def _send(self, request: Frame, reply: bytes) -> None:
        fault = self._fault
        if fault == "silent":
            return
        if fault == "slow" and self._stop.wait(self.delay_s):
            return
        if fault == "bad_checksum":
            reply = reply[:-2] + bytes(((reply[-2] + 1) & 0xFF, reply[-1]))
        elif fault == "other_address":
            body = reply[:1] + address_to_wire(OTHER_ADDRESS) + reply[7:-2]
            reply = body + bytes((sum(body) & 0xFF, reply[-1]))
        wire = b"\xfe" * self.reply_preamble + reply
        if fault == "garbage":
            wire = GARBAGE + wire
        elif fault == "doubled_68":
            wire = b"\x68" + reply
        elif fault == "echo":
            wire = request.raw + wire
        try:
            if self.byte_time_s > 0:
                for b in wire:
                    os.write(self._master, bytes((b,)))
                    time.sleep(self.byte_time_s)
            else:
                os.write(self._master, wire)
        except OSError:
            pass
