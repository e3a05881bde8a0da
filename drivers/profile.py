"""Device profiles: one TOML file per device model, validated once at load.

A profile says which registers of a model hold which value and how to decode them.  The
bundled files live in ``drivers/profiles/<name>.toml``; each cites the source of its map
(``docs/profiles.md`` documents the format and the project's reference maps for devices
without a public map).  Adding a model is adding a file.

File format (addresses are 0-based PDU addresses, C-06)::

    [device]
    model = "SDM120"            # text
    manufacturer = "Eastron"    # text
    function_code = 4           # default of the registers: 3 holding, 4 input registers
    word_order = "ABCD"         # optional default order: ABCD, CDAB, BADC or DCBA
    max_gap = 38                # optional, registers: largest unused run a read may span (0)
    source = "..."              # where the map comes from

    [[register]]
    quantity = "active_power"   # value name (drivers.reading.quantity_unit), once per file
    address = 0x000C            # or: reference = 30013 (3xxxx input, 4xxxx holding, 1-based)
    type = "float32"            # see RegisterType
    unit = "W"                  # must equal quantity_unit(quantity)
    scale = 1.0                 # optional: value = wire x scale + offset
    offset = 0.0                # optional
    order = "CDAB"              # optional, overrides word_order for this register
    function_code = 3           # optional, overrides the device's
    sentinels = [0xFFFF]        # optional: raw wire values meaning "not available" (dropped)
    channels = 4                # optional: N copies named quantity.1 .. quantity.N ...
    stride = 1                  # ... each `stride` registers after the previous (default width)

    [[register]]                # a bit field: one register of flags -> named 0/1 values
    address = 0x0005
    type = "uint16"             # uint16 or uint32
    bits = { alarm_residual_current = 0, "alarm_cable_temperature.1" = 1 }
    # channels/stride/order/function_code/sentinels as above; flag names get ".N" per channel

    [[info]]                    # identification, read on demand (not polled)
    name = "model"
    address = 0x0200
    type = "string"
    length = 8                  # registers (strings only)

Byte and word orders name the four bytes of a 32-bit value A (most significant) .. D as
they arrive: ``ABCD`` big-endian (Eastron, CHINT: C-06), ``CDAB`` low word first, ``BADC``
bytes swapped in each word, ``DCBA`` little-endian.  For 64-bit values ``CDAB`` reverses
the four words; for 16-bit values only the byte swap (``BADC``, ``DCBA``) matters; strings
take the byte swap only (their words are in reading order).

Decoding is prepared at load and a read plan is computed by :meth:`Profile.plan` once
per device, so the polling loop only slices and unpacks.  NaN and infinite floats and the
declared sentinels are dropped, never passed on.
"""

from __future__ import annotations

import enum
import math
import os
import re
import struct
import tomllib
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from drivers.reading import FLAG_PREFIXES, MAX_CHANNEL, DecodeError, quantity_unit

#: Most registers one FC3/FC4 read may return (Modbus application protocol v1.1b3 §6.3/6.4;
#: domain-facts.md §5 "At most 125 registers per read").
MAX_READ_REGISTERS = 125

#: Function codes a profile may use: 3 = read holding registers, 4 = read input registers
#: (Modbus application protocol v1.1b3 §6.3, §6.4).
FUNCTION_CODES = (3, 4)

#: Byte and word orders (see the module docstring; field-vectors.md C-06).
ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")
#: Former name of :data:`ORDERS` (the first profiles had word orders only).
WORD_ORDERS = ORDERS

_DEVICE_KEYS = {"model", "manufacturer", "function_code", "word_order", "max_gap", "source"}
_DEVICE_REQUIRED = ("model", "manufacturer", "function_code", "source")
_REGISTER_KEYS = {
    "quantity", "address", "reference", "type", "scale", "offset", "unit", "order",
    "function_code", "sentinels", "channels", "stride", "bits",
}
_BITS_FORBIDDEN = ("quantity", "unit", "scale", "offset")
_INFO_KEYS = {"name", "address", "reference", "type", "length", "function_code", "order"}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_INFO_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class ProfileError(ValueError):
    """A profile file is missing, unreadable or invalid; the message names file and entry."""


class RegisterType(enum.Enum):
    """Wire type of one value (Modbus registers are 16-bit words)."""

    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    BCD16 = "bcd16"  # 4 decimal digits, one nibble each
    BCD32 = "bcd32"  # 8 decimal digits
    STRING = "string"  # `length` registers of text, 2 characters per register

    @property
    def width(self) -> int:
        """Registers the value occupies (0 for strings: their length is set per register)."""
        return _WIDTHS[self.value]

    @property
    def is_float(self) -> bool:
        return self in (RegisterType.FLOAT32, RegisterType.FLOAT64)

    @property
    def is_bcd(self) -> bool:
        return self in (RegisterType.BCD16, RegisterType.BCD32)

    @property
    def signed(self) -> bool:
        return self in (RegisterType.INT16, RegisterType.INT32, RegisterType.INT64)


_WIDTHS = {
    "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "uint64": 4,
    "float32": 2, "float64": 4, "bcd16": 1, "bcd32": 2, "string": 0,
}
_FLOAT_STRUCTS = {2: struct.Struct(">f"), 4: struct.Struct(">d")}


# -- the value codec ---------------------------------------------------------------------


def _canonical(data: bytes, order: str, words: bool = True) -> bytes:
    """Bytes as received -> big-endian, high word first (the order is an involution, so
    the same call turns big-endian bytes into the wire order)."""
    if order in ("BADC", "DCBA"):
        swapped = bytearray(len(data))
        swapped[0::2] = data[1::2]
        swapped[1::2] = data[0::2]
        data = bytes(swapped)
    if words and order in ("CDAB", "DCBA") and len(data) > 2:
        data = b"".join(data[i : i + 2] for i in range(len(data) - 2, -1, -2))
    return data


def _bcd_digits(data: bytes) -> int | None:
    value = 0
    for byte in data:
        hi, lo = byte >> 4, byte & 0x0F
        if hi > 9 or lo > 9:
            return None
        value = value * 100 + hi * 10 + lo
    return value


def _value(canonical: bytes, rtype: RegisterType) -> int | float | str | None:
    """Value of canonical (big-endian) bytes; None for a malformed BCD or text."""
    if rtype.is_float:
        return _FLOAT_STRUCTS[len(canonical) // 2].unpack(canonical)[0]
    if rtype.is_bcd:
        return _bcd_digits(canonical)
    if rtype is RegisterType.STRING:
        text = canonical.split(b"\x00", 1)[0].rstrip(b" ")
        try:
            return text.decode("ascii")
        except UnicodeDecodeError:
            return None
    return int.from_bytes(canonical, "big", signed=rtype.signed)


def decode_words(words: Sequence[int], rtype: RegisterType | str, order: str = "ABCD") -> int | float | str:
    """Decode the registers of one value (no scale, no sentinels).

    Args:
        words: the registers as read, each 0..65535; as many as the type's width (any
            number >= 1 for strings).
        rtype: wire type.
        order: one of :data:`ORDERS`.

    Returns:
        int for integer and BCD types, float for floats (NaN and infinities included), str
        for strings (cut at the first NUL, trailing spaces removed).

    Raises:
        DecodeError: wrong number of words, a word outside 0..65535, a BCD nibble above 9,
            or text that is not ASCII.
        ValueError: unknown type or order (a programming error, not wire data).
    """
    rtype = RegisterType(rtype)
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    width = rtype.width
    if (width and len(words) != width) or not words:
        raise DecodeError(
            f"{rtype.value} needs {width or 'at least 1'} register(s), got {len(words)}"
        )
    try:
        data = struct.pack(f">{len(words)}H", *words)
    except struct.error as exc:
        raise DecodeError(f"{rtype.value}: a word outside 0..65535 in {list(words)!r} ({exc})") from None
    canonical = _canonical(data, order, words=rtype is not RegisterType.STRING)
    value = _value(canonical, rtype)
    if value is None:
        what = "BCD digits" if rtype.is_bcd else "ASCII text"
        raise DecodeError(f"{rtype.value} registers {_hex_words(words)} are not {what}")
    return value


def encode_words(
    value: int | float | str, rtype: RegisterType | str, order: str = "ABCD", length: int = 0
) -> list[int]:
    """Inverse of :func:`decode_words`: the registers that carry ``value``.

    Args:
        value: integer (rounded if a float), float, or text for strings.
        rtype: wire type.
        order: one of :data:`ORDERS`.
        length: registers of a string (padded with NULs); ignored for other types.

    Raises:
        ValueError: the value does not fit the type (range, negative BCD, non-ASCII or too
            long text, NaN for an integer type).
    """
    rtype = RegisterType(rtype)
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    width = rtype.width or length
    if width < 1:
        raise ValueError("a string needs length >= 1 register")
    nbytes = 2 * width
    if rtype is RegisterType.STRING:
        try:
            text = str(value).encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(f"{value!r} is not ASCII") from None
        if len(text) > nbytes:
            raise ValueError(f"{value!r} is longer than {nbytes} characters")
        canonical = text.ljust(nbytes, b"\x00")
    elif rtype.is_float:
        canonical = _FLOAT_STRUCTS[width].pack(float(value))
    else:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{value!r} does not fit {rtype.value}")
        number = int(round(value))
        if rtype.is_bcd:
            if not 0 <= number < 10 ** (2 * nbytes):
                raise ValueError(f"{value!r} does not fit {rtype.value} (0..{10 ** (2 * nbytes) - 1})")
            canonical = bytes.fromhex(f"{number:0{2 * nbytes}d}")
        else:
            try:
                canonical = number.to_bytes(nbytes, "big", signed=rtype.signed)
            except OverflowError:
                raise ValueError(f"{value!r} does not fit {rtype.value}") from None
    data = _canonical(canonical, order, words=rtype is not RegisterType.STRING)
    return list(struct.unpack(f">{width}H", data))


def reference_to_address(reference: int) -> tuple[int, int]:
    """A Modicon reference number -> (function code, 0-based PDU address) (C-06).

    ``3xxxx``/``3xxxxx`` are input registers (function 4), ``4xxxx``/``4xxxxx`` holding
    registers (function 3), both 1-based: ``30001`` is input register 0, ``30013`` is
    0x000C (SDM120 active power), ``40001`` is holding register 0, ``408193`` is 0x2000.

    Raises:
        ValueError: not a 5- or 6-digit 3xxxx/4xxxx reference, or its offset is 0 or
            above 65536.
    """
    if isinstance(reference, bool) or not isinstance(reference, int):
        raise ValueError(f"reference must be an integer, got {reference!r}")
    for base in (300000, 400000, 30000, 40000):
        span = 100000 if base >= 300000 else 10000
        if base < reference < base + span:
            offset = reference - base
            if offset > 65536:
                break
            return (4 if base in (30000, 300000) else 3), offset - 1
    raise ValueError(
        f"reference {reference} is not 30001..39999, 40001..49999, 300001..365536 or "
        "400001..465536"
    )


def _hex_words(words: Sequence[int]) -> str:
    return " ".join(f"0x{w:04X}" if isinstance(w, int) and 0 <= w <= 0xFFFF else repr(w) for w in words)


# -- profiles ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Register:
    """One value (or one bit field) of a profile.

    Attributes:
        quantity: value name (:func:`drivers.reading.quantity_unit`), ``""`` for a bit field.
        address: 0-based PDU address of the first register.
        type: wire type.
        scale, offset: value = wire x ``scale`` + ``offset`` (in ``unit``).
        unit: unit of the value, ``quantity_unit(quantity)`` (``""`` for bit fields).
        function_code: 3 or 4.
        order: one of :data:`ORDERS`.
        sentinels: raw wire values (the unsigned integer of the value's big-endian bytes)
            meaning "not available"; such values are dropped.
        bits: (flag name, bit number) pairs of a bit field, bit 0 the least significant.
        length: registers of a string (0 for other types).
        raw: an ``[[info]]`` entry: the value as decoded (int, float or str), unscaled.
    """

    quantity: str
    address: int
    type: RegisterType
    scale: float = 1.0
    unit: str = ""
    function_code: int = 4
    order: str = "ABCD"
    offset: float = 0.0
    sentinels: frozenset[int] = frozenset()
    bits: tuple[tuple[str, int], ...] = ()
    length: int = 0
    raw: bool = False
    _text: bool = field(init=False, repr=False, compare=False)
    _divisor: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_text", self.type is RegisterType.STRING)
        # a decimal scale (0.1, 0.01, 0.001) is applied as a division of the integer, so
        # 415 x 0.1 gives 41.5 exactly as printed, not 41.50000000000001
        divisor = 0
        if not self.type.is_float and 0 < abs(self.scale) < 1:
            inverse = 1 / self.scale
            if abs(inverse - round(inverse)) < 1e-9 * abs(inverse):
                divisor = round(inverse)
        object.__setattr__(self, "_divisor", divisor)

    @property
    def width(self) -> int:
        """Registers the value occupies."""
        return self.length if self._text else self.type.width

    @property
    def end(self) -> int:
        """Address just after the value."""
        return self.address + self.width

    @property
    def names(self) -> tuple[str, ...]:
        """Value names this register yields (the flags of a bit field)."""
        return tuple(name for name, _ in self.bits) if self.bits else (self.quantity,)

    def label(self) -> str:
        what = self.quantity or "bits " + ",".join(self.names)
        return f"{what} at 0x{self.address:04X} (function {self.function_code})"

    def _decode(self, data: bytes, out: dict[str, Any], who: str) -> None:
        """Decode this register's bytes (as received) into ``out``."""
        canonical = _canonical(data, self.order, words=not self._text)
        if self.sentinels and int.from_bytes(canonical, "big") in self.sentinels:
            return
        value = _value(canonical, self.type)
        if value is None:
            what = "BCD digits" if self.type.is_bcd else "ASCII text"
            words = struct.unpack(f">{len(data) // 2}H", data)
            raise DecodeError(f"{who}: {self.label()}: registers {_hex_words(words)} are not {what}")
        if self.bits:
            for name, bit in self.bits:
                out[name] = float((value >> bit) & 1)
        elif self.raw:
            if not (isinstance(value, float) and not math.isfinite(value)):
                out[self.quantity] = value
        else:
            number = (value / self._divisor if self._divisor else value * self.scale) + self.offset
            if math.isfinite(number):
                out[self.quantity] = float(number)

    def _encode(self, values: Mapping[str, Any], profile: str) -> list[int] | None:
        if self.bits:
            if not any(name in values for name, _ in self.bits):
                return None
            raw = sum(1 << bit for name, bit in self.bits if values.get(name))
            return encode_words(raw, self.type, self.order)
        if self.quantity not in values:
            return None
        value = values[self.quantity]
        try:
            if self.raw:
                return encode_words(value, self.type, self.order, self.length)
            if isinstance(value, float) and math.isnan(value) and self.sentinels:
                raw = min(self.sentinels)
                return encode_words(raw, _unsigned(self.type), self.order)
            wire = (value - self.offset) * self._divisor if self._divisor else (value - self.offset) / self.scale
            return encode_words(wire, self.type, self.order)
        except ValueError as exc:
            raise ValueError(
                f"profile {profile}: {self.quantity}={value!r} does not fit "
                f"{self.type.value} at 0x{self.address:04X} ({exc})"
            ) from None


def _unsigned(rtype: RegisterType) -> RegisterType:
    return {1: RegisterType.UINT16, 2: RegisterType.UINT32, 4: RegisterType.UINT64}[rtype.width]


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One Modbus read: ``count`` registers from ``address`` with ``function_code``."""

    function_code: int
    address: int
    count: int


Blocks = Mapping[int | tuple[int, int], Sequence[int]]


@dataclass(frozen=True, slots=True)
class Profile:
    """A validated device profile (see the module docstring for the file format).

    Attributes:
        name: file stem, e.g. ``"sdm120"``.
        path: file it was loaded from.
        model, manufacturer, source: from ``[device]``.
        function_code: default function code, 3 or 4.
        word_order: default order, one of :data:`ORDERS`.
        max_gap: default for :meth:`plan` (registers).
        registers: polled values, sorted by function code (the default first) and address,
            non-overlapping.
        info: identification entries (``[[info]]``), read with :meth:`plan` ``info=True``.
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
    info: tuple[Register, ...] = ()

    @property
    def quantities(self) -> tuple[str, ...]:
        """Every value name a full read can yield, in register order."""
        return tuple(name for reg in self.registers for name in reg.names)

    def plan(
        self, max_regs: int = MAX_READ_REGISTERS, max_gap: int | None = None, *, info: bool = False
    ) -> list[ReadRequest]:
        """Merge the registers into as few reads as possible (call once per device).

        Registers are taken by function code (the profile's default first), then address;
        a register joins the current read when it has the same function code, the unused
        run before it is at most ``max_gap`` registers and the read stays within
        ``max_regs`` registers (125: Modbus application protocol §6.3, §6.4).

        Args:
            max_regs: largest read, 1..125 registers.
            max_gap: largest unused run inside one read (registers); ``None`` uses the
                profile's ``max_gap``.
            info: plan the ``[[info]]`` entries instead of the polled registers.

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
        fc = start = end = -1
        for reg in self.info if info else self.registers:
            if reg.width > max_regs:
                raise ValueError(f"max_regs {max_regs} is smaller than {reg.label()}")
            if (
                start >= 0
                and reg.function_code == fc
                and reg.address - end <= gap
                and reg.end - start <= max_regs
            ):
                end = max(end, reg.end)
                continue
            if start >= 0:
                requests.append(ReadRequest(fc, start, end - start))
            fc, start, end = reg.function_code, reg.address, reg.end
        if start >= 0:
            requests.append(ReadRequest(fc, start, end - start))
        return requests

    def decode(self, blocks: Blocks, *, device: str = "") -> dict[str, float]:
        """Decode register blocks into values.

        Args:
            blocks: start -> registers read from there (ints 0..65535); the start is
                ``(function_code, address)`` or, for the profile's default function code,
                just the address.
            device: name used in error messages (defaults to the profile name).

        Returns:
            value name -> value in its unit, for every register lying in a block.
            Registers outside every block are absent; NaN and infinite values and declared
            sentinels ("not available") are dropped, never passed on; flags are 0.0 or 1.0.

        Raises:
            DecodeError: a block ends inside a register (short block), holds a word outside
                0..65535, or a BCD register holds a nibble above 9; the message names the
                device and the register.
        """
        return self._decode(self.registers, blocks, device)

    def decode_info(self, blocks: Blocks, *, device: str = "") -> dict[str, str | int | float]:
        """Decode the ``[[info]]`` entries (strings as text, integers and BCD as int,
        floats as float, unscaled) from blocks read with ``plan(info=True)``.

        Raises:
            DecodeError: as :meth:`decode`, or text that is not ASCII.
        """
        return self._decode(self.info, blocks, device)

    def _decode(self, registers: Sequence[Register], blocks: Blocks, device: str) -> dict[str, Any]:
        who = device or f"profile {self.name}"
        by_fc: dict[int, list[tuple[int, int, bytes]]] = {}
        for key, words in blocks.items():
            fc, start = key if isinstance(key, tuple) else (self.function_code, key)
            try:
                data = struct.pack(f">{len(words)}H", *words)
            except struct.error as exc:
                raise DecodeError(
                    f"{who}: block at 0x{start:04X} (function {fc}) holds a word outside "
                    f"0..65535 ({exc})"
                ) from None
            by_fc.setdefault(fc, []).append((start, start + len(words), data))
        starts: dict[int, list[int]] = {}
        for fc, spans in by_fc.items():
            spans.sort()
            starts[fc] = [span[0] for span in spans]
        values: dict[str, Any] = {}
        for reg in registers:
            spans = by_fc.get(reg.function_code)
            if not spans:
                continue
            i = bisect_right(starts[reg.function_code], reg.address) - 1
            if i < 0:
                continue
            start, stop, data = spans[i]
            if reg.address >= stop:
                continue
            if reg.end > stop:
                raise DecodeError(
                    f"{who}: short block at 0x{start:04X} ({stop - start} registers): "
                    f"{reg.label()} needs registers up to 0x{reg.end - 1:04X}"
                )
            offset = 2 * (reg.address - start)
            reg._decode(data[offset : offset + 2 * reg.width], values, who)
        return values

    def encode(self, values: Mapping[str, Any]) -> dict[tuple[int, int], list[int]]:
        """Inverse of :meth:`decode` (and :meth:`decode_info`): the registers of each
        value, flag and info entry present in ``values`` (used by the simulators).

        A NaN value of a register with sentinels is encoded as its lowest sentinel; the
        flags of a bit field absent from ``values`` are 0 (when at least one is present).

        Returns:
            (function code, address) -> registers (``width`` words).

        Raises:
            ValueError: a value does not fit its wire type.
        """
        out: dict[tuple[int, int], list[int]] = {}
        for reg in (*self.registers, *self.info):
            words = reg._encode(values, self.name)
            if words is not None:
                out[(reg.function_code, reg.address)] = words
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
            (missing or unknown key, unknown quantity/type/unit/order, function code not
            3/4, address out of range, overlapping registers, a name listed twice, bad bit
            field, channels or sentinels); the message names the file and the entry.
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
    unknown = set(data) - {"device", "register", "info"}
    if unknown:
        raise ProfileError(
            f"{path}: unknown table(s) {sorted(unknown)}; expected [device], [[register]], [[info]]"
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
    if word_order not in ORDERS:
        raise ProfileError(f"{where} word_order: must be one of {ORDERS}, got {word_order!r}")
    max_gap = device.get("max_gap", 0)
    if not _is_int(max_gap) or not 0 <= max_gap < MAX_READ_REGISTERS:
        raise ProfileError(f"{where} max_gap: must be an integer 0..124, got {max_gap!r}")
    defaults = (fc, word_order)

    entries = data.get("register")
    if not isinstance(entries, list) or not entries:
        raise ProfileError(f"{path}: no [[register]] entries")
    registers: list[tuple[Register, str]] = []
    for i, entry in enumerate(entries, start=1):
        label = f"{path}: register #{i}"
        if not isinstance(entry, dict):
            raise ProfileError(f"{label}: must be a table")
        if isinstance(entry.get("quantity"), str):
            label += f" ({entry['quantity']})"
        registers.extend(_parse_register(entry, label, defaults))
    infos: list[tuple[Register, str]] = []
    info_entries = data.get("info", [])
    if not isinstance(info_entries, list):
        raise ProfileError(f"{path}: info must be an array of tables [[info]]")
    for i, entry in enumerate(info_entries, start=1):
        label = f"{path}: info #{i}"
        if not isinstance(entry, dict):
            raise ProfileError(f"{label}: must be a table")
        if isinstance(entry.get("name"), str):
            label += f" ({entry['name']})"
        infos.append(_parse_info(entry, label, defaults))

    seen: dict[str, str] = {}
    tagged = [(reg, label, "quantity") for reg, label in registers]
    tagged += [(reg, label, "info") for reg, label in infos]
    for reg, label, kind in tagged:
        kind = "flag" if reg.bits else kind
        for name in reg.names:
            if name in seen:
                raise ProfileError(f"{label}: {kind} {name!r} already defined by {seen[name]}")
            seen[name] = label.split(": ", 1)[1]
    for group in (registers, infos):
        # the default function code first: a reading is stamped at its first request
        group.sort(key=lambda p: (p[0].function_code != fc, p[0].function_code, p[0].address))
        for (prev, prev_label), (reg, label) in zip(group, group[1:]):
            if reg.function_code == prev.function_code and reg.address < prev.end:
                raise ProfileError(
                    f"{label}: 0x{reg.address:04X}..0x{reg.end - 1:04X} overlaps "
                    f"{prev_label.split(': ', 1)[1]} at 0x{prev.address:04X}..0x{prev.end - 1:04X}"
                    f" (function {reg.function_code})"
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
        info=tuple(reg for reg, _ in infos),
    )


def _parse_location(
    entry: dict[str, Any], label: str, defaults: tuple[int, str], width: int
) -> tuple[int, int, str]:
    """(function code, address, order) of an entry; ``reference`` or ``address``."""
    fc, order = entry.get("function_code", defaults[0]), entry.get("order", defaults[1])
    if not _is_int(fc) or fc not in FUNCTION_CODES:
        raise ProfileError(f"{label}: function_code must be 3 or 4, got {fc!r}")
    if order not in ORDERS:
        raise ProfileError(f"{label}: order must be one of {ORDERS}, got {order!r}")
    if ("address" in entry) == ("reference" in entry):
        raise ProfileError(f"{label}: give exactly one of address (0-based) and reference")
    if "reference" in entry:
        try:
            ref_fc, address = reference_to_address(entry["reference"])
        except ValueError as exc:
            raise ProfileError(f"{label}: {exc}") from None
        if "function_code" in entry and fc != ref_fc:
            raise ProfileError(
                f"{label}: reference {entry['reference']} is function {ref_fc}, "
                f"not function_code {fc}"
            )
        fc = ref_fc
    else:
        address = entry["address"]
    if not _is_int(address) or not 0 <= address <= 0x10000 - width:
        raise ProfileError(
            f"{label}: address must be an integer 0..0x{0x10000 - width:04X}, got {address!r}"
        )
    return fc, address, order


def _parse_register(
    entry: dict[str, Any], label: str, defaults: tuple[int, str]
) -> list[tuple[Register, str]]:
    is_bits = "bits" in entry
    required = ("type",) if is_bits else ("quantity", "type", "unit")
    _check_keys(entry, _REGISTER_KEYS, required, label)
    rtype = _parse_type(entry["type"], label)
    if rtype is RegisterType.STRING:
        raise ProfileError(f"{label}: strings are identification, put them in [[info]]")
    width = rtype.width
    fc, address, order = _parse_location(entry, label, defaults, width)

    channels = entry.get("channels")
    stride = entry.get("stride", width)
    if channels is not None and (not _is_int(channels) or not 1 <= channels <= MAX_CHANNEL):
        raise ProfileError(f"{label}: channels must be an integer 1..{MAX_CHANNEL}, got {channels!r}")
    if "stride" in entry and channels is None:
        raise ProfileError(f"{label}: stride needs channels")
    if not _is_int(stride) or stride < width:
        raise ProfileError(f"{label}: stride must be an integer >= the width {width}, got {stride!r}")
    count = channels or 1
    last = address + (count - 1) * stride
    if last + width > 0x10000:
        raise ProfileError(f"{label}: channel {count} at 0x{last:04X} lies beyond 0xFFFF")

    sentinels = entry.get("sentinels", [])
    if _is_int(sentinels):
        sentinels = [sentinels]
    limit = 1 << (16 * width)
    if not isinstance(sentinels, list) or not all(_is_int(s) and 0 <= s < limit for s in sentinels):
        raise ProfileError(
            f"{label}: sentinels must be raw wire values 0..0x{limit - 1:X}, got {entry['sentinels']!r}"
        )

    if is_bits:
        for key in _BITS_FORBIDDEN:
            if key in entry:
                raise ProfileError(f"{label}: a bit field has no {key} (each flag is 0 or 1)")
        if rtype not in (RegisterType.UINT16, RegisterType.UINT32):
            raise ProfileError(f"{label}: a bit field must be uint16 or uint32, got {rtype.value}")
        bits = _parse_bits(entry["bits"], label, 16 * width, channels is not None)
        out = []
        for n in range(1, count + 1):
            suffix = f".{n}" if channels else ""
            named = tuple((name + suffix, bit) for name, bit in bits)
            reg = Register("", address + (n - 1) * stride, rtype, 1.0, "", fc, order,
                           0.0, frozenset(sentinels), named)
            out.append((reg, f"{label} (bits {', '.join(name for name, _ in named)})"))
        return out

    quantity = entry["quantity"]
    try:
        unit = quantity_unit(quantity)
    except ValueError as exc:
        raise ProfileError(f"{label}: {exc}") from None
    if channels is not None and "." in quantity:
        raise ProfileError(f"{label}: quantity {quantity!r} already has a channel; drop channels")
    scale = entry.get("scale", 1.0)
    if _is_bad_number(scale) or scale == 0:
        raise ProfileError(f"{label}: scale must be a finite non-zero number, got {scale!r}")
    offset = entry.get("offset", 0.0)
    if _is_bad_number(offset):
        raise ProfileError(f"{label}: offset must be a finite number, got {offset!r}")
    if entry["unit"] != unit:
        raise ProfileError(
            f"{label}: unit {entry['unit']!r} is not the unit of {quantity} ({unit!r}); "
            "set scale to convert"
        )
    out = []
    for n in range(1, count + 1):
        name = f"{quantity}.{n}" if channels else quantity
        reg = Register(name, address + (n - 1) * stride, rtype, float(scale), unit, fc, order,
                       float(offset), frozenset(sentinels))
        out.append((reg, label if not channels else f"{label.rsplit(' (', 1)[0]} ({name})"))
    return out


def _parse_bits(bits: Any, label: str, nbits: int, channels: bool) -> list[tuple[str, int]]:
    if not isinstance(bits, dict) or not bits:
        raise ProfileError(f"{label}: bits must be a non-empty table of flag name = bit number")
    used: dict[int, str] = {}
    out = []
    for name, bit in bits.items():
        if not name.startswith(FLAG_PREFIXES):
            raise ProfileError(
                f"{label}: flag {name!r} must start with {' or '.join(FLAG_PREFIXES)}"
            )
        try:
            quantity_unit(name)
        except ValueError as exc:
            raise ProfileError(f"{label}: {exc}") from None
        if channels and "." in name:
            raise ProfileError(f"{label}: flag {name!r} already has a channel; drop channels")
        if not _is_int(bit) or not 0 <= bit < nbits:
            raise ProfileError(f"{label}: bit of {name!r} must be 0..{nbits - 1}, got {bit!r}")
        if bit in used:
            raise ProfileError(f"{label}: bit {bit} used by {used[bit]!r} and {name!r}")
        used[bit] = name
        out.append((name, bit))
    return out


def _parse_info(entry: dict[str, Any], label: str, defaults: tuple[int, str]) -> tuple[Register, str]:
    _check_keys(entry, _INFO_KEYS, ("name", "type"), label)
    name = entry["name"]
    if not isinstance(name, str) or not _INFO_NAME.match(name):
        raise ProfileError(f"{label}: name must match {_INFO_NAME.pattern}, got {name!r}")
    rtype = _parse_type(entry["type"], label)
    length = 0
    if rtype is RegisterType.STRING:
        length = entry.get("length")
        if not _is_int(length) or not 1 <= length <= MAX_READ_REGISTERS:
            raise ProfileError(f"{label}: a string needs length = 1..125 registers, got {length!r}")
    elif "length" in entry:
        raise ProfileError(f"{label}: length is for strings only")
    fc, address, order = _parse_location(entry, label, defaults, length or rtype.width)
    return Register(name, address, rtype, 1.0, "", fc, order, length=length, raw=True), label


def _parse_type(text: Any, label: str) -> RegisterType:
    try:
        return RegisterType(text)
    except ValueError:
        known = ", ".join(t.value for t in RegisterType)
        raise ProfileError(f"{label}: unknown type {text!r}; known: {known}") from None


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
