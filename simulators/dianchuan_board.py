"""A simulated Dianchuan/Dongjun 10-port e-bike charging board on a pseudo-terminal.

The board owns the master side of a pty and runs in a thread; a client opens
:attr:`DianchuanBoard.path` (the slave side, raw mode) like a serial port.  It speaks the
frames of :mod:`drivers.dianchuan` (same layout constants, so the golden tests of the codec
against field-vectors.md FC-050/051/053 are what ties both to the real board):

* answers 0x01, 0x02, 0x06, 0x07, 0x08, 0x0B, 0x0C, echoing the command's session id;
* ignores 0x24..0x2A as the field board does (FC-053), and any other command;
* charges ports with a :class:`ChargeProfile` over the shared clock's time and finishes
  them with every end reason: bought time used, unplugged, full, port fault (also a 0x0D
  report), over-power (a charger above the maximum power setting, or planned), remote stop;
* sends a 0x05 report for every finished session (and 0x0D for faults) and resends it
  every ``resend_s`` real seconds until the gateway acknowledges it;
* injects faults into its answers: a bad SUM, garbage bytes before the frame, or silence.

Session times are the clock's (UTC epoch s); resend intervals are real seconds, like I/O
timeouts (:mod:`flylead.clock`).  :attr:`DianchuanBoard.sessions` is the ground truth.
"""

from __future__ import annotations

import math
import os
import select
import threading
import time
import tty
from dataclasses import dataclass

from drivers import dianchuan as dc
from drivers.pile import EndReason, PortState
from flylead.clock import Clock

#: Faults :meth:`DianchuanBoard.set_fault` accepts.
FAULTS = (None, "bad_sum", "garbage", "silent")
#: Garbage sent before an answer under the "garbage" fault: stray text as in FC-051's log
#: ("0 2a"), a false EE whose LEN runs past the real answer, and a false 66 with a LEN
#: below the minimum.
GARBAGE = b"\x000 2a\xee\x30\x66\x03\xff"
#: Commands the field board does not answer (FC-053).
IGNORED_COMMANDS = frozenset(range(0x24, 0x2B))
#: Board code of each end reason in its 0x05 report (inverse of dianchuan.END_REASON_CODES);
#: a remote stop is reported as "stopped by user" (code 1).
_REASON_CODE = {reason: code for code, reason in dc.END_REASON_CODES.items()}
_REASON_CODE[EndReason.REMOTE_STOP] = _REASON_CODE[EndReason.USER_STOP]
_STATE_CODE = {state: code for code, state in dc.PORT_STATE_CODES.items()}


@dataclass(frozen=True, slots=True)
class ChargeProfile:
    """Wall power of one charger: constant ``bulk_w`` for ``bulk_s``, then an exponential
    taper (time constant ``taper_s``) towards ``floor_w``.

    Defaults are chosen from domain-facts.md section 2: a lithium charger peaking near
    185 W, lead-acid stage 2 near 60 W.  Units: W, s; energies kWh.
    """

    bulk_w: float = 180.0
    bulk_s: float = 3600.0
    taper_s: float = 1800.0
    floor_w: float = 60.0

    def power_w(self, tau: float) -> float:
        """Power ``tau`` s after the start, W."""
        if tau < 0:
            return 0.0
        if tau < self.bulk_s:
            return self.bulk_w
        decay = math.exp(-(tau - self.bulk_s) / self.taper_s)
        return self.floor_w + (self.bulk_w - self.floor_w) * decay

    def energy_kwh(self, tau: float) -> float:
        """Energy of the first ``tau`` s, kWh (exact integral of :meth:`power_w`)."""
        if tau <= 0:
            return 0.0
        joules = self.bulk_w * min(tau, self.bulk_s)
        if tau > self.bulk_s:
            x = tau - self.bulk_s
            joules += self.floor_w * x + (self.bulk_w - self.floor_w) * self.taper_s * (
                1.0 - math.exp(-x / self.taper_s)
            )
        return joules / 3.6e6


@dataclass(frozen=True, slots=True)
class BoardSession:
    """One finished session as the board knows it (ground truth).

    Attributes:
        port: 1-based port.
        start, end: UTC epoch s (clock time).
        energy_kwh: exact energy of the profile over the session, kWh.
        end_reason: why it ended (``REMOTE_STOP`` after a 0x0B).
        minutes: time bought, min.
        source: ``"gateway"`` (0x02 start) or ``"local"`` (:meth:`DianchuanBoard.plug_in`).
    """

    port: int
    start: float
    end: float
    energy_kwh: float
    end_reason: EndReason
    minutes: int
    source: str


@dataclass(slots=True)
class _Plan:
    reason: EndReason | None = None
    after_s: float | None = None
    profile: ChargeProfile | None = None


@dataclass(slots=True)
class _Port:
    state: PortState = PortState.IDLE
    start: float = 0.0
    minutes: int = 0
    profile: ChargeProfile = ChargeProfile()
    end_at: float = 0.0
    end_reason: EndReason = EndReason.TIME_USED
    source: str = "gateway"


@dataclass(slots=True)
class _Pending:
    frame: bytes
    session_id: bytes
    cmd: int
    last_sent: float = float("-inf")


class DianchuanBoard:
    """A 10-port board on a pty, in a thread.

    Args:
        clock: the shared clock (session times, charging profiles).
        ports: number of ports, 1..254 (the field board has 10, FC-051).
        settings: the 9-byte settings block (default FC-051's, max power 500 W).
        resend_s: real seconds between resends of an unacknowledged report.
        over_power_detect_s: clock seconds from a start until the board cuts a charger
            drawing more than the maximum power (chosen; no field figure).
        report_remote_stop: also send a 0x05 report (code 1) after a 0x0B stop.

    Attributes:
        path: slave side of the pty once started, e.g. ``"/dev/pts/5"``.
        sessions: finished sessions, oldest first (ground truth).
        received: every valid frame received, oldest first.
        acks: acknowledgements received for pending reports.
        reports_sent: report frames written, resends included.
        ignored: commands received and not answered (0x24..0x2A, unknown, silent fault).

    Raises:
        ValueError: ports out of range or a settings block that is not 9 bytes.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        ports: int = dc.DEFAULT_PORTS,
        settings: bytes = dc.FC051_SETTINGS,
        resend_s: float = 0.5,
        over_power_detect_s: float = 10.0,
        report_remote_stop: bool = True,
    ) -> None:
        if not 1 <= ports <= 0xFE:
            raise ValueError(f"ports must be 1..254, got {ports}")
        self.settings = dc.Settings(settings)
        self.path = ""
        self.sessions: list[BoardSession] = []
        self.received: list[dc.Frame] = []
        self.acks = 0
        self.reports_sent = 0
        self.ignored = 0
        self._clock = clock
        self._resend_s = resend_s
        self._detect_s = over_power_detect_s
        self._report_remote_stop = report_remote_stop
        self._ports = [_Port() for _ in range(ports)]
        self._plans: dict[int, _Plan] = {}
        self._pending: list[_Pending] = []
        self._report_no = 0
        self._fault: str | None = None
        self._fault_count: int | None = None
        self._scanner = dc.FrameScanner()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._master = self._slave = -1

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> DianchuanBoard:
        """Open the pty and start the board thread; afterwards :attr:`path` is set.

        Raises:
            RuntimeError: already started.
        """
        if self._thread is not None:
            raise RuntimeError(f"board on {self.path} already started")
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"dianchuan-board {self.path}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and close the pty."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout=5)
        for fd in (self._master, self._slave):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1

    def __enter__(self) -> DianchuanBoard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- scenario -----------------------------------------------------------------------------

    @property
    def max_power_w(self) -> int:
        """Maximum power per port of the current settings, W."""
        return self.settings.max_power_w

    @property
    def pending_reports(self) -> int:
        """Reports sent and not yet acknowledged."""
        with self._lock:
            return len(self._pending)

    def port_state(self, port: int) -> PortState:
        """State of ``port`` now."""
        with self._lock:
            return self._port(port).state

    def plan(
        self,
        port: int,
        *,
        reason: EndReason | None = None,
        after_s: float | None = None,
        profile: ChargeProfile | None = None,
    ) -> None:
        """Decide how the next session on ``port`` goes: it ends with ``reason`` ``after_s``
        clock seconds after its start (unless the bought time runs out first), drawing
        ``profile``.  Without a reason it runs until the time is used.

        Raises:
            ValueError: unknown port, a reason without ``after_s`` (or the reverse).
        """
        self._port(port)
        if (reason is None) != (after_s is None):
            raise ValueError("plan needs both reason and after_s, or neither")
        with self._lock:
            self._plans[port] = _Plan(reason, after_s, profile)

    def plug_in(self, port: int, minutes: int, **plan: object) -> None:
        """Start a local session (coin or card at the board), not via the gateway;
        keyword arguments as :meth:`plan`.

        Raises:
            ValueError: unknown port, port not idle, or minutes < 1.
        """
        if plan:
            self.plan(port, **plan)  # type: ignore[arg-type]
        with self._lock:
            if not self._begin(port, minutes, "local"):
                state = self._port(port).state
                raise ValueError(f"port {port} cannot start: {state}, {minutes} min")

    def unplug(self, port: int) -> None:
        """The user pulls the plug now: the session ends with ``USER_STOP``.

        Raises:
            ValueError: unknown port or port not charging.
        """
        with self._lock:
            if self._port(port).state is not PortState.CHARGING:
                raise ValueError(f"port {port} is not charging")
            self._finish(port, self._clock.now(), EndReason.USER_STOP)

    def set_port(self, port: int, state: PortState) -> None:
        """Force an idle port's state (``DISABLED``, ``FAULT`` or back to ``IDLE``).

        Raises:
            ValueError: unknown port, a charging port, or ``state`` CHARGING.
        """
        with self._lock:
            p = self._port(port)
            if p.state is PortState.CHARGING or state is PortState.CHARGING:
                raise ValueError(f"port {port}: use plug_in/unplug for charging sessions")
            p.state = PortState(state)

    def report_fault(self, port: int | None, code: int) -> None:
        """Send an unsolicited 0x0D fault report (``port`` None = whole board), resent
        until acknowledged."""
        with self._lock:
            target = dc.FAULT_WHOLE_BOARD if port is None else port
            self._queue_report(dc.Cmd.FAULT_REPORT, dc.FAULT_FORMAT.pack(target, code))

    def set_fault(self, fault: str | None, count: int | None = None) -> None:
        """Inject a fault into the next ``count`` answers (``None``: until cleared):
        ``"bad_sum"`` (SUM inverted), ``"garbage"`` (:data:`GARBAGE` before the frame),
        ``"silent"`` (no answer); ``None`` clears.

        Raises:
            ValueError: unknown fault.
        """
        if fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, got {fault!r}")
        with self._lock:
            self._fault, self._fault_count = fault, count

    # -- board logic (under self._lock) -----------------------------------------------------

    def _port(self, port: int) -> _Port:
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= len(self._ports):
            raise ValueError(f"no port {port!r} (board has {len(self._ports)})")
        return self._ports[port - 1]

    def _begin(self, port: int, minutes: int, source: str) -> bool:
        p = self._port(port)
        if p.state is not PortState.IDLE or minutes < 1:
            return False
        plan = self._plans.pop(port, _Plan())
        now = self._clock.now()
        p.state, p.start, p.minutes, p.source = PortState.CHARGING, now, minutes, source
        p.profile = plan.profile or ChargeProfile()
        p.end_at, p.end_reason = now + minutes * 60.0, EndReason.TIME_USED
        if plan.reason is not None and plan.after_s is not None and now + plan.after_s < p.end_at:
            p.end_at, p.end_reason = now + plan.after_s, plan.reason
        if p.profile.bulk_w > self.max_power_w and now + self._detect_s < p.end_at:
            p.end_at, p.end_reason = now + self._detect_s, EndReason.OVER_POWER
        return True

    def _remaining_min(self, p: _Port, t: float) -> int:
        if p.state is not PortState.CHARGING:
            return 0
        return min(0xFFFF, max(0, math.ceil((p.start + p.minutes * 60.0 - t) / 60.0 - 1e-9)))

    def _finish(self, port: int, t: float, reason: EndReason) -> None:
        p = self._port(port)
        remaining = self._remaining_min(p, t)
        self.sessions.append(BoardSession(
            port, p.start, t, p.profile.energy_kwh(t - p.start), reason, p.minutes, p.source))
        p.state = PortState.FAULT if reason is EndReason.PORT_FAULT else PortState.IDLE
        if reason is EndReason.PORT_FAULT:
            self._queue_report(dc.Cmd.FAULT_REPORT, dc.FAULT_FORMAT.pack(port, 1))
        if reason is not EndReason.REMOTE_STOP or self._report_remote_stop:
            data = dc.FINISH_FORMAT.pack(port, remaining, _REASON_CODE.get(reason, 0xFE))
            self._queue_report(dc.Cmd.CHARGE_FINISHED, data)

    def _queue_report(self, cmd: int, data: bytes) -> None:
        self._report_no += 1
        session_id = self._report_no.to_bytes(dc.SESSION_ID_LEN, "big")
        frame = dc.Frame.command(cmd, data, session_id)
        self._pending.append(_Pending(frame.encode(), session_id, cmd))

    def _tick(self) -> None:
        now = self._clock.now()
        for index, p in enumerate(self._ports):
            if p.state is PortState.CHARGING and now >= p.end_at:
                self._finish(index + 1, p.end_at, p.end_reason)
        real = time.monotonic()
        for pending in self._pending:
            if real - pending.last_sent >= self._resend_s:
                self._write(pending.frame)
                pending.last_sent = real
                self.reports_sent += 1

    def _handle(self, frame: dc.Frame) -> None:
        self.received.append(frame)
        if frame.cmd in dc.REPORT_COMMANDS:  # an ack (SOP 66, or EE as some gateways send)
            for pending in self._pending:
                if pending.cmd == frame.cmd and pending.session_id == frame.session_id:
                    if frame.data == dc.ACK_DATA:
                        self._pending.remove(pending)
                        self.acks += 1
                    break
            return
        if frame.is_answer:
            return
        data = self._answer_data(frame)
        if data is None:
            self.ignored += 1
            return
        self._send_answer(dc.Frame.answer(frame.cmd, data, frame.session_id))

    def _answer_data(self, frame: dc.Frame) -> bytes | None:
        """DATA of the answer to a command, or None to stay silent."""
        cmd, data, now = frame.cmd, frame.data, self._clock.now()
        if cmd in IGNORED_COMMANDS:
            return None
        if cmd == dc.Cmd.ALL_PORT_STATUS:
            return bytes([len(self._ports)] + [_STATE_CODE[p.state] for p in self._ports])
        if cmd == dc.Cmd.PORT_STATUS:
            if len(data) != 1 or not 1 <= data[0] <= len(self._ports):
                return None
            p = self._ports[data[0] - 1]
            power = p.profile.power_w(now - p.start) if p.state is PortState.CHARGING else 0.0
            raw_power = min(0xFFFF, round(power / dc.POWER_UNIT_W))
            return dc.PORT_STATUS_FORMAT.pack(data[0], self._remaining_min(p, now), raw_power)
        if cmd == dc.Cmd.START:
            if len(data) != dc.START_FORMAT.size:
                return None
            port, _tier, minutes = dc.START_FORMAT.unpack(data)
            ok = 1 <= port <= len(self._ports) and self._begin(port, minutes, "gateway")
            return dc.START_ANSWER_FORMAT.pack(port, dc.RESULT_OK if ok else 0x02)
        if cmd == dc.Cmd.STOP:
            if len(data) != dc.STOP_FORMAT.size or not 1 <= data[0] <= len(self._ports):
                return None
            p = self._ports[data[0] - 1]
            remaining = self._remaining_min(p, now)
            if p.state is PortState.CHARGING:
                self._finish(data[0], now, EndReason.REMOTE_STOP)
            return dc.STOP_ANSWER_FORMAT.pack(data[0], remaining)
        if cmd == dc.Cmd.TOTAL_CONSUMPTION:
            return dc.TOTAL_FORMAT.pack(0, 0)
        if cmd == dc.Cmd.SET_SETTINGS:
            if len(data) != dc.SETTINGS_LEN or dc.Settings(data).max_power_w == 0:
                return b"\x00"
            self.settings = dc.Settings(data)
            return bytes((dc.RESULT_OK,))
        if cmd == dc.Cmd.READ_SETTINGS:
            return self.settings.raw
        return None

    def _send_answer(self, frame: dc.Frame) -> None:
        fault = self._fault
        if fault is not None and self._fault_count is not None:
            self._fault_count -= 1
            if self._fault_count <= 0:
                self._fault, self._fault_count = None, None
        raw = bytearray(frame.encode())
        if fault == "silent":
            self.ignored += 1
            return
        if fault == "bad_sum":
            raw[-1] ^= 0xFF
        if fault == "garbage":
            raw[:0] = GARBAGE
        self._write(bytes(raw))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._master, view)
            except BlockingIOError:
                return  # nobody reads: the bytes are lost, as on a bus
            except OSError:
                return
            view = view[n:]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._master], [], [], 0.005)
            except (OSError, ValueError):
                return
            with self._lock:
                if ready:
                    try:
                        chunk = os.read(self._master, 4096)
                    except (BlockingIOError, InterruptedError):
                        chunk = b""
                    except OSError:
                        chunk = b""
                    for frame in self._scanner.feed(chunk):
                        self._handle(frame)
                self._tick()
