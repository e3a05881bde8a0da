"""Which village and compound a household belongs to: the desk's registry file (TOML).

Format (see docs/desk.md)::

    tz = "Asia/Shanghai"            # optional: the campaign's local time (report dates)

    [villages.east]                 # village id: a name (NAME_PATTERN)
    name = "East Village"           # display name (any text)

    [compounds.sunrise]             # compound id: a name
    name = "Sunrise Garden"
    village = "east"                # must be a village above
    gateways = ["gw-sunrise-01"]    # gateways installed in the compound
    households = ["b3-101", "b3-102"]

An alert names a gateway and a household; the household is looked up among the
compounds that list the alert's gateway.  Household ids need only be unique per gateway.
An alert whose (gateway, household) is not registered is filed under the pseudo-village
:data:`UNASSIGNED`, visible to the emergency office only.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agent.schema import NAME_PATTERN

__all__ = ["UNASSIGNED", "Compound", "Registry", "RegistryError", "Village", "load_registry"]

#: Village id of alerts whose household is not in the registry (office only).
UNASSIGNED = "_unassigned"
#: Campaign time zone when the registry names none: the campaign runs in China
#: (China Standard Time, UTC+8, no daylight saving).
DEFAULT_TZ = "Asia/Shanghai"
#: Years the reports, queries and the desk take dates in (the years either side overflow the
#: period arithmetic and mean a typo).
CAMPAIGN_YEARS = (2000, 2099)

_NAME = re.compile(NAME_PATTERN)


class RegistryError(ValueError):
    """The registry file is unreadable or inconsistent; the message names file and entry."""


@dataclass(frozen=True, slots=True)
class Village:
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class Compound:
    id: str
    name: str
    village: str
    gateways: tuple[str, ...]
    households: tuple[str, ...]


@dataclass(slots=True)
class Registry:
    """Villages, compounds and the (gateway, household) → compound map."""

    villages: dict[str, Village] = field(default_factory=dict)
    compounds: dict[str, Compound] = field(default_factory=dict)
    tz: str = DEFAULT_TZ
    _where: dict[tuple[str, str], str] = field(default_factory=dict)

    def locate(self, gateway: str, household: str) -> tuple[str, str | None]:
        """(village id, compound id) of a household; (:data:`UNASSIGNED`, None) if unknown."""
        compound = self._where.get((gateway, household))
        if compound is None:
            return UNASSIGNED, None
        return self.compounds[compound].village, compound

    def village_name(self, village: str) -> str:
        if village == UNASSIGNED:
            return "(not in registry)"
        v = self.villages.get(village)
        return v.name if v else village

    def compound_name(self, compound: str | None) -> str:
        if compound is None:
            return "(unknown compound)"
        c = self.compounds.get(compound)
        return c.name if c else compound

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)


def _text(entry: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = entry.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise RegistryError(f"{where}: {key!r} must be a non-empty string, got {value!r}")
    return value


def _names(entry: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = entry.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and _NAME.match(v) for v in value):
        raise RegistryError(f"{where}: {key!r} must be a list of names matching {NAME_PATTERN}, got {value!r}")
    return tuple(value)


def parse_registry(data: dict[str, Any], source: str = "<registry>") -> Registry:
    """A :class:`Registry` from parsed TOML; RegistryError names ``source`` and the entry."""
    unknown = set(data) - {"tz", "villages", "compounds"}
    if unknown:
        raise RegistryError(f"{source}: unknown keys {sorted(unknown)}")
    tz = data.get("tz", DEFAULT_TZ)
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise RegistryError(f"{source}: tz {tz!r} is not a known time zone") from exc
    reg = Registry(tz=tz)
    for vid, entry in (data.get("villages") or {}).items():
        where = f"{source}: villages.{vid}"
        if not _NAME.match(vid) or vid == UNASSIGNED:
            raise RegistryError(f"{where}: village id must match {NAME_PATTERN}")
        if not isinstance(entry, dict):
            raise RegistryError(f"{where}: must be a table")
        reg.villages[vid] = Village(vid, _text(entry, "name", where, vid))
    for cid, entry in (data.get("compounds") or {}).items():
        where = f"{source}: compounds.{cid}"
        if not _NAME.match(cid):
            raise RegistryError(f"{where}: compound id must match {NAME_PATTERN}")
        if not isinstance(entry, dict):
            raise RegistryError(f"{where}: must be a table")
        village = _text(entry, "village", where)
        if village not in reg.villages:
            raise RegistryError(f"{where}: village {village!r} is not defined under [villages]")
        gateways, households = _names(entry, "gateways", where), _names(entry, "households", where)
        if not gateways:
            raise RegistryError(f"{where}: 'gateways' must list at least one gateway")
        comp = Compound(cid, _text(entry, "name", where, cid), village, gateways, households)
        for gw in gateways:
            for hh in households:
                other = reg._where.get((gw, hh))
                if other is not None:
                    raise RegistryError(f"{where}: household {hh!r} of gateway {gw!r} is already in compound {other!r}")
                reg._where[(gw, hh)] = cid
        reg.compounds[cid] = comp
    return reg


def load_registry(path: str | Path) -> Registry:
    """Read a registry file.

    Raises:
        RegistryError: missing or unreadable file, bad TOML, or inconsistent entries
            (the message names the file and the entry).
    """
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise RegistryError(f"cannot read registry {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"registry {path} is not valid TOML: {exc}") from exc
    return parse_registry(data, str(path))
