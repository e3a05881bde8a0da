"""Simulated Modbus RTU devices on a pseudo-terminal or a TCP socket, with wire faults.

:class:`RtuSim` is one RS-485 line with one or more devices on it, answering in a
background thread.  With ``transport="pty"`` it owns the master side of a pty
(:func:`os.openpty`) and a client opens :attr:`RtuSim.path` like a serial port; with
``transport="tcp"`` it listens like a transparent RS-485 to Ethernet gateway (RTU frames
over TCP, one client at a time).

pymodbus's serial server does run on a pty path (checked with pymodbus 3.16), but it
cannot corrupt a CRC, send garbage or pace bytes, so this responder frames the line
itself with :mod:`drivers.rtu` (checked byte for byte against the captured frames of
field-vectors.md section B and against pymodbus's CRC in ``tests/test_rtu.py``) and
takes its registers from :class:`simulators.meter.DeviceModel`, like the TCP server.

Timing (``byte_time_s`` > 0): a request is taken as complete ``len(request) + 3.5``
byte times after its first byte arrived (its time on the line plus the end-of-frame
silence, Modbus over serial line v1.02 §2.5.1.1), then after ``reply_delay_s`` the reply
goes out one byte every ``byte_time_s`` (11 bits at 9600 baud: 1.146 ms).
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
import tty
from collections.abc import Mapping

from drivers.rtu import (
    FunctionCodeError,
    RtuFrameError,
    decode_request,
    encode_exception,
    encode_response,
    request_length,
)
from flylead.clock import Clock
from drivers.profile import load_profile
from simulators.meter import DeviceModel, FaultSwitch, ValueSource

#: Faults :meth:`RtuSim.set_fault` accepts:
#:
#: * ``None``: healthy;
#: * ``"silent"``: no reply;
#: * ``"exception"``: exception 4, server device failure;
#: * ``"bad_crc"``: the reply's last CRC byte XOR 0xFF;
#: * ``"garbage"``: :data:`GARBAGE` before the reply;
#: * ``"slow"``: the reply after ``delay_s`` real seconds (a late reply when the client's
#:   timeout is shorter);
#: * ``"short"``: a valid reply with one register fewer than asked (wrong byte count);
#: * ``"other_id"``: the reply comes from device id + 1.
FAULTS = (None, "silent", "exception", "bad_crc", "garbage", "slow", "short", "other_id")

#: Line noise of the ``"garbage"`` fault: a zero, 0xFF, and a false start (device id 1,
#: function 4, an impossible byte count) before the real reply.
GARBAGE = bytes.fromhex("00 FF 01 04 FB 55 AA")


class RtuSim(FaultSwitch):
    """RTU devices (device id -> values) on a pty or a TCP port, in a daemon thread.

    Args:
        meters: device id (1..247) -> :data:`simulators.meter.ValueSource`.
        profile: profile name or path for every device, or device id -> profile.
        clock: the shared clock.
        transport: ``"pty"`` or ``"tcp"``.
        host, port: TCP listening address (``port`` 0 picks a free one).
        byte_time_s: seconds per byte on the line (0: no pacing).
        reply_delay_s: device turnaround before replying, real s.
        delay_s: reply delay of the ``"slow"`` fault, real s.
        echo: behave as an adapter that echoes the master's transmission (the request
            bytes come back before any reply).

    Attributes:
        path: the pty slave path to open as the serial port (``transport="pty"``).
        port: the TCP port once started (``transport="tcp"``).
        requests: device id -> requests received (faulted ones included).
        frames: every valid request frame received, oldest first (all device ids).

    Raises:
        ValueError: no meters, a device id outside 1..247, a bad transport or timing.
        drivers.profile.ProfileError: invalid profile.
    """

    fault_names = FAULTS
    unknown_id = "no device with id {}"

    def __init__(
        self,
        meters: Mapping[int, ValueSource],
        *,
        profile: str | Mapping[int, str] = "sdm120",
        clock: Clock,
        transport: str = "pty",
        host: str = "127.0.0.1",
        port: int = 0,
        byte_time_s: float = 0.0,
        reply_delay_s: float = 0.0,
        delay_s: float = 1.0,
        echo: bool = False,
    ) -> None:
        if not meters:
            raise ValueError("RtuSim needs at least one device")
        for device_id in meters:
            if not 1 <= device_id <= 247:
                raise ValueError(f"device id must be 1..247, got {device_id}")
        if transport not in ("pty", "tcp"):
            raise ValueError(f"transport must be 'pty' or 'tcp', got {transport!r}")
        if byte_time_s < 0 or reply_delay_s < 0 or delay_s < 0:
            raise ValueError("byte_time_s, reply_delay_s and delay_s must be >= 0")
        profiles = {i: profile for i in meters} if isinstance(profile, str) else dict(profile)
        self._models = {i: DeviceModel(load_profile(profiles[i]), src, clock) for i, src in meters.items()}
        self.transport = transport
        self.host = host
        self.port = port
        self.byte_time_s = byte_time_s
        self.reply_delay_s = reply_delay_s
        self.delay_s = delay_s
        self.echo = echo
        self.requests: dict[int, int] = {i: 0 for i in meters}
        self.frames: list[bytes] = []
        self._faults: dict[int, str | None] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: socket.socket | None = None
        self._conn: socket.socket | None = None
        self.path = ""
        self._master = self._slave = -1
        if transport == "pty":
            self._master, self._slave = os.openpty()
            tty.setraw(self._slave)  # no echo, no line editing, no CR/LF translation
            tty.setraw(self._master)
            self.path = os.ttyname(self._slave)

    def start(self) -> None:
        """Start answering in a daemon thread (and listening, for TCP).

        Raises:
            RuntimeError: already started or stopped.
        """
        if self._thread is not None or self._stop.is_set():
            raise RuntimeError("RtuSim already started or stopped")
        if self.transport == "tcp":
            listener = socket.create_server((self.host, self.port))
            listener.setblocking(False)
            self.port = listener.getsockname()[1]
            self._listener = listener
        self._thread = threading.Thread(target=self._run, name=f"rtu-sim {self.path or self.port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop answering and close the pty / sockets."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for sock in (self._conn, self._listener):
            if sock is not None:
                sock.close()
        for fd in (self._master, self._slave):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = -1

    def __enter__(self) -> RtuSim:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- the line ----------------------------------------------------------------------

    def _fd(self) -> int | None:
        if self.transport == "pty":
            return self._master
        return self._conn.fileno() if self._conn is not None else None

    def _write(self, data: bytes) -> None:
        try:
            if self.transport == "pty":
                os.write(self._master, data)
            elif self._conn is not None:
                self._conn.sendall(data)
        except OSError:
            pass  # the client went away; the next request (if any) will tell

    def _run(self) -> None:
        buf = bytearray()
        first_byte_at = 0.0
        while not self._stop.is_set():
            fds = [fd for fd in (self._fd(), self._listener.fileno() if self._listener else None) if fd is not None]
            ready, _, _ = select.select(fds, [], [], 0.05)
            if not ready:
                continue
            if self._listener is not None and self._listener.fileno() in ready:
                self._accept()
                buf.clear()
                continue
            try:
                if self.transport == "pty":
                    data = os.read(self._master, 4096)
                else:
                    data = self._conn.recv(4096) if self._conn is not None else b""
            except OSError:
                data = b""
            if not data:
                if self.transport == "tcp":
                    self._drop_conn()
                    buf.clear()
                    continue
                time.sleep(0.01)  # pty slave not open yet
                continue
            if not buf:
                first_byte_at = time.monotonic()
            buf += data
            while buf:
                try:
                    length = request_length(buf)
                except FunctionCodeError:
                    del buf[0]  # not a request start we know: hunt
                    continue
                if length is None or len(buf) < length:
                    break
                frame, buf[:] = bytes(buf[:length]), buf[length:]
                self._serve(frame, first_byte_at)
                first_byte_at = time.monotonic()

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        self._drop_conn()  # a transparent gateway talks to one client at a time
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._conn = conn

    def _drop_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _serve(self, frame: bytes, first_byte_at: float) -> None:
        if self.echo:
            self._write(frame)
        try:
            request = decode_request(frame)
        except RtuFrameError:
            return  # a corrupt request is ignored, as on the line
        self.frames.append(frame)
        model = self._models.get(request.device_id)
        if model is None:
            return  # nobody with that id on the line
        self.requests[request.device_id] += 1
        fault = self._faults.get(request.device_id)
        if fault == "silent":
            return
        fc = request.function_code
        if fault == "exception":
            reply = encode_exception(request.device_id, fc, 4)
        else:
            answer = model.read(fc, request.address, request.count)
            if isinstance(answer, int):
                reply = encode_exception(request.device_id, fc, answer)
            elif fault == "short":
                reply = encode_response(request.device_id, fc, answer[:-1])
            elif fault == "other_id":
                reply = encode_response(request.device_id % 247 + 1, fc, answer)
            else:
                reply = encode_response(request.device_id, fc, answer)
        if fault == "bad_crc":
            reply = reply[:-1] + bytes([reply[-1] ^ 0xFF])
        if fault == "garbage":
            reply = GARBAGE + reply
        bt = self.byte_time_s
        start = first_byte_at + (len(frame) + 3.5) * bt + self.reply_delay_s
        if fault == "slow":
            start += self.delay_s
        self._sleep_until(start)
        if bt <= 0:
            self._write(reply)
            return
        for i in range(len(reply)):
            self._sleep_until(start + (i + 1) * bt)
            self._write(reply[i : i + 1])

    def _sleep_until(self, when: float) -> None:
        while not self._stop.is_set():
            left = when - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.05))
