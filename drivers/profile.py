"""Device profiles: one TOML file per meter model, validated once at load.

A profile says which registers of a model hold which quantity (names and units from
:data:`drivers.reading.UNITS`) and how to decode them.  The bundled files live in
``drivers/profiles/<name>.toml``; their register maps come from
``domain-facts.md`` §5 and ``field-vectors.md`` FC-046 (each file cites its sources).

File format::

    [device]
    model = "SDM120"            # text
    manufacturer = "Eastron"    # text
    function_code = 4           # 3 (holding registers) or 4 (input registers)
    word_order = "ABCD"         # optional: "ABCD" (high word first, default) or "CDAB"
    max_gap = 38                # optional, registers: largest unused run a read may span (0)
    source = "..."              # where the map comes from

    [[register]]
    quantity = "active_power"   # a key of UNITS, at most once per file
    address = 0x000C            # 0-based PDU address (C-06: "30013" is 0x000C)
    type = "float32"            # float32, int16, uint16, int32, uint32
    scale = 1.0                 # optional: value on the wire x scale = value in unit
    unit = "W"                  # must equal UNITS[quantity]

Decoding is prepared at load (one :class:`struct.Struct` per register) and a read plan is
computed by :meth:`Profile.plan`, so the polling loop only slices and unpacks.
"""

from __future__ import annotations

import enum
import math
import os
import re
import struct
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from drivers.reading import UNITS, DecodeError

#: Most registers one FC3/FC4 read may return (Modbus application protocol v1.1b3 §6.3/6.4;
#: domain-facts.md §5 "At most 125 registers per read").
MAX_READ_REGISTERS = 125

#: Function codes a profile may use: 3 = read holding registers, 4 = read input registers.
FUNCTION_CODES = (3, 4)

#: Word orders of 32-bit values: "ABCD" high word first (Eastron, CHINT: C-06), "CDAB" swapped.
WORD_ORDERS = ("ABCD", "CDAB")

_DEVICE_KEYS = {"model", "manufacturer", "function_code", "word_order", "max_gap", "source"}
_DEVICE_REQUIRED = ("model", "manufacturer", "function_code", "source")
_REGISTER_KEYS = {"quantity", "address", "type", "scale", "unit"}
_REGISTER_REQUIRED = ("quantity", "address", "type", "unit")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


class ProfileError(ValueError):
    """A profile file is missing, unreadable or invalid; the message names file and entry."""


class RegisterType(enum.Enum):
    """Wire type of one value (big-endian within each 16-bit register)."""

    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    FLOAT32 = "float32"

    @property
    def width(self) -> int:
        """Registers (16-bit words) the value occupies."""
        return 1 if self in (RegisterType.INT16, RegisterType.UINT16) else 2

    @property
    def code(self) -> str:
        """:mod:`struct` format character."""
        return {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f"}[
            self.value
        ]


@dataclass(frozen=True, slots=True)
class Register:
    """One quantity of a profile.

    Attributes:
        quantity: key of :data:`drivers.reading.UNITS`.
        address: 0-based PDU address of the first register.
        type: wire type.
        scale: wire value x ``scale`` = value in ``unit`` (e.g. 1000 for kW -> W).
        unit: SI unit of the scaled value, equal to ``UNITS[quantity]``.
    """

    quantity: str
    address: int
    type: RegisterType
    scale: float
    unit: str
    _struct: struct.Struct = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_struct", struct.Struct(">" + self.type.code))

    @property
    def end(self) -> int:
        """Address just after the value."""
        return self.address + self.type.width


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One Modbus read: ``count`` registers from ``address`` with ``function_code``."""

    function_code: int
    address: int
    count: int


@dataclass(frozen=True, slots=True)
class Profile:
    """A validated device profile (see the module docstring for the file format).

    Attributes:
        name: file stem, e.g. ``"sdm120"``.
        path: file it was loaded from.
        model, manufacturer, source: from ``[device]``.
        function_code: 3 or 4.
        word_order: ``"ABCD"`` or ``"CDAB"``.
        max_gap: default for :meth:`plan` (registers).
        registers: sorted by address, non-overlapping.
    """

    name: str
    path: Path
    model: str
    manufacturer: str
    function_code: int
    word_order: str
    max_gap: int
    source: str
    registers: tuple[Register, ...]

    def plan(
        self, max_regs: int = MAX_READ_REGISTERS, max_gap: int | None = None
    ) -> list[ReadRequest]:
        """Merge the registers into as few reads as possible (call once per device).

        Registers are taken in address order; a register joins the current read when the
        unused run before it is at most ``max_gap`` registers and the read stays within
        ``max_regs`` registers.

        Args:
            max_regs: largest read, 1..125 registers.
            max_gap: largest unused run inside one read (registers); ``None`` uses the
                profile's ``max_gap``.

        Raises:
            ValueError: ``max_regs`` outside 1..125 or smaller than a register, or
                ``max_gap`` negative.
        """
        gap = self.max_gap if max_gap is None else max_gap
        if not 1 <= max_regs <= MAX_READ_REGISTERS:
            raise ValueError(f"max_regs must be 1..{MAX_READ_REGISTERS}, got {max_regs}")
        if gap < 0:
            raise ValueError(f"max_gap must be >= 0, got {gap}")
        requests: list[ReadRequest] = []
        start = end = -1
        for reg in self.registers:
            if reg.type.width > max_regs:
                raise ValueError(f"max_regs {max_regs} is smaller than {reg.quantity}")
            if start >= 0 and reg.address - end <= gap and reg.end - start <= max_regs:
                end = reg.end
                continue
            if start >= 0:
                requests.append(ReadRequest(self.function_code, start, end - start))
            start, end = reg.address, reg.end
        if start >= 0:
            requests.append(ReadRequest(self.function_code, start, end - start))
        return requests

    def decode(self, blocks: dict[int, list[int]], *, device: str = "") -> dict[str, float]:
        """Decode register blocks into quantities.

        Args:
            blocks: start address -> registers read from there (ints 0..65535).
            device: name used in error messages (defaults to the profile name).

        Returns:
            quantity -> value in ``UNITS[quantity]``, for every register lying in a block.
            Registers outside every block are absent; NaN and infinite values (meters'
            "no value" markers) are dropped, never passed on.

        Raises:
            DecodeError: a block ends inside a register (short block) or holds a word
                outside 0..65535; the message names the device and the register.
        """
        who = device or f"profile {self.name}"
        raw: list[tuple[int, int, bytes]] = []
        for start, words in blocks.items():
            try:
                data = struct.pack(f">{len(words)}H", *words)
            except struct.error as exc:
                raise DecodeError(
                    f"{who}: block at 0x{start:04X} holds a word outside 0..65535 ({exc})"
                ) from None
            raw.append((start, start + len(words), data))
        values: dict[str, float] = {}
        swap = self.word_order == "CDAB"
        for reg in self.registers:
            for start, stop, data in raw:
                if not start <= reg.address < stop:
                    continue
                if reg.end > stop:
                    raise DecodeError(
                        f"{who}: short block at 0x{start:04X} ({stop - start} registers): "
                        f"{reg.quantity} at 0x{reg.address:04X} needs registers up to "
                        f"0x{reg.end - 1:04X}"
                    )
                offset = 2 * (reg.address - start)
                chunk = data[offset : offset + 2 * reg.type.width]
                if swap and reg.type.width == 2:
                    chunk = chunk[2:] + chunk[:2]
                value = reg._struct.unpack(chunk)[0] * reg.scale
                if math.isfinite(value):
                    values[reg.quantity] = float(value)
                break
        return values

    def encode(self, values: dict[str, float]) -> dict[int, list[int]]:
        """Inverse of :meth:`decode`: registers for each quantity in both ``values`` and
        the profile (used by the meter simulator).

        Args:
            values: quantity -> value in ``UNITS[quantity]``.

        Returns:
            address -> registers (1 or 2 words) holding value / scale.

        Raises:
            ValueError: a value does not fit its wire type.
        """
        out: dict[int, list[int]] = {}
        swap = self.word_order == "CDAB"
        for reg in self.registers:
            if reg.quantity not in values:
                continue
            wire: float | int = values[reg.quantity] / reg.scale
            if reg.type is not RegisterType.FLOAT32:
                wire = round(wire)
            try:
                data = reg._struct.pack(wire)
            except (struct.error, OverflowError) as exc:
                raise ValueError(
                    f"profile {self.name}: {reg.quantity}={values[reg.quantity]!r} does not "
                    f"fit {reg.type.value} at 0x{reg.address:04X} ({exc})"
                ) from None
            if swap and reg.type.width == 2:
                data = data[2:] + data[:2]
            out[reg.address] = list(struct.unpack(f">{reg.type.width}H", data))
        return out


def list_profiles() -> list[str]:
    """Names of the bundled profiles (``drivers/profiles/*.toml``), sorted."""
    folder = resources.files("drivers") / "profiles"
    return sorted(
        entry.name[: -len(".toml")] for entry in folder.iterdir() if entry.name.endswith(".toml")
    )


def load_profile(name_or_path: str | os.PathLike[str]) -> Profile:
    """Load and validate a profile.

    Args:
        name_or_path: a bundled profile name (``"sdm120"``, see :func:`list_profiles`) or
            the path of a ``.toml`` file.

    Raises:
        ProfileError: unknown name, unreadable file, invalid TOML, or an invalid entry
            (missing or unknown key, unknown quantity/type/unit, function code not 3/4,
            address out of range, overlapping registers, quantity listed twice); the
            message names the file and the entry.
    """
    text = os.fspath(name_or_path)
    is_path = isinstance(name_or_path, os.PathLike) or text.endswith(".toml")
    if is_path or os.sep in text or "/" in text:
        path = Path(text)
    else:
        if not _NAME.match(text):
            raise ProfileError(f"invalid profile name {text!r}")
        path = Path(str(resources.files("drivers") / "profiles" / f"{text}.toml"))
        if not path.is_file():
            raise ProfileError(f"unknown profile {text!r}; bundled: {', '.join(list_profiles())}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: not valid TOML ({exc})") from None
    return _parse(data, path)


def _parse(data: dict[str, Any], path: Path) -> Profile:
    unknown = set(data) - {"device", "register"}
    if unknown:
        raise ProfileError(
            f"{path}: unknown table(s) {sorted(unknown)}; expected [device], [[register]]"
        )
    device = data.get("device")
    if not isinstance(device, dict):
        raise ProfileError(f"{path}: missing [device] table")
    where = f"{path}: [device]"
    _check_keys(device, _DEVICE_KEYS, _DEVICE_REQUIRED, where)
    for key in ("model", "manufacturer", "source"):
        if not isinstance(device[key], str) or not device[key].strip():
            raise ProfileError(f"{where} {key}: must be non-empty text, got {device[key]!r}")
    fc = device["function_code"]
    if not _is_int(fc) or fc not in FUNCTION_CODES:
        raise ProfileError(f"{where} function_code: must be 3 or 4, got {fc!r}")
    word_order = device.get("word_order", "ABCD")
    if word_order not in WORD_ORDERS:
        raise ProfileError(f"{where} word_order: must be one of {WORD_ORDERS}, got {word_order!r}")
    max_gap = device.get("max_gap", 0)
    if not _is_int(max_gap) or not 0 <= max_gap < MAX_READ_REGISTERS:
        raise ProfileError(f"{where} max_gap: must be an integer 0..124, got {max_gap!r}")

    entries = data.get("register")
    if not isinstance(entries, list) or not entries:
        raise ProfileError(f"{path}: no [[register]] entries")
    registers: list[tuple[Register, str]] = []
    seen: dict[str, str] = {}
    for i, entry in enumerate(entries, start=1):
        label = f"{path}: register #{i}"
        if not isinstance(entry, dict):
            raise ProfileError(f"{label}: must be a table")
        if isinstance(entry.get("quantity"), str):
            label += f" ({entry['quantity']})"
        reg = _parse_register(entry, label)
        if reg.quantity in seen:
            raise ProfileError(
                f"{label}: quantity {reg.quantity!r} already defined by {seen[reg.quantity]}"
            )
        seen[reg.quantity] = label
        registers.append((reg, label))
    registers.sort(key=lambda pair: pair[0].address)
    for (prev, prev_label), (reg, label) in zip(registers, registers[1:]):
        if reg.address < prev.end:
            raise ProfileError(
                f"{label}: 0x{reg.address:04X}..0x{reg.end - 1:04X} overlaps "
                f"{prev_label.split(': ', 1)[1]} at 0x{prev.address:04X}..0x{prev.end - 1:04X}"
            )
    return Profile(
        name=path.stem,
        path=path,
        model=device["model"],
        manufacturer=device["manufacturer"],
        function_code=fc,
        word_order=word_order,
        max_gap=max_gap,
        source=device["source"],
        registers=tuple(reg for reg, _ in registers),
    )


def _parse_register(entry: dict[str, Any], label: str) -> Register:
    _check_keys(entry, _REGISTER_KEYS, _REGISTER_REQUIRED, label)
    quantity = entry["quantity"]
    if quantity not in UNITS:
        raise ProfileError(f"{label}: unknown quantity {quantity!r}; known: {', '.join(UNITS)}")
    try:
        rtype = RegisterType(entry["type"])
    except ValueError:
        known = ", ".join(t.value for t in RegisterType)
        raise ProfileError(f"{label}: unknown type {entry['type']!r}; known: {known}") from None
    address = entry["address"]
    if not _is_int(address) or not 0 <= address <= 0xFFFF - (rtype.width - 1):
        raise ProfileError(
            f"{label}: address must be an integer 0..0x{0x10000 - rtype.width:04X}, "
            f"got {address!r}"
        )
    scale = entry.get("scale", 1.0)
    if _is_bad_number(scale) or scale == 0:
        raise ProfileError(f"{label}: scale must be a finite non-zero number, got {scale!r}")
    unit = entry["unit"]
    if unit != UNITS[quantity]:
        raise ProfileError(
            f"{label}: unit {unit!r} is not the unit of {quantity} ({UNITS[quantity]!r}); "
            "set scale to convert"
        )
    return Register(quantity, address, rtype, float(scale), unit)


def _check_keys(
    table: dict[str, Any], allowed: set[str], required: tuple[str, ...], where: str
) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise ProfileError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    missing = [key for key in required if key not in table]
    if missing:
        raise ProfileError(f"{where}: missing key(s) {missing}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_bad_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return True
    return not math.isfinite(value)
