"""Device profiles: every bundled file loads, plans and decodes the field vectors.

Golden values: field-vectors.md FC-030, FC-031, FC-033, C-06; register maps domain-facts.md §5.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest

from drivers.profile import (
    MAX_READ_REGISTERS,
    ProfileError,
    ReadRequest,
    list_profiles,
    load_profile,
)
from drivers.reading import UNITS, DecodeError


def words(value: float) -> list[int]:
    """float32 ABCD -> two registers."""
    return list(struct.unpack(">2H", struct.pack(">f", value)))


def f32(value: float) -> float:
    return struct.unpack(">f", struct.pack(">f", value))[0]


# -- every bundled profile ------------------------------------------------------------------


def test_bundled_profiles_are_listed():
    assert list_profiles() == ["ddsu666", "sdm120"]


@pytest.mark.parametrize("name", list_profiles())
def test_every_profile_loads_and_plans(name):
    profile = load_profile(name)
    assert profile.name == name
    assert profile.function_code in (3, 4)
    assert profile.source.strip()
    assert profile.registers
    for reg in profile.registers:
        assert reg.unit == UNITS[reg.quantity]
    plan = profile.plan()
    covered = {(r.address, r.count) for r in plan}
    assert all(1 <= count <= MAX_READ_REGISTERS for _, count in covered)
    for reg in profile.registers:  # every register lies wholly inside one read
        assert any(a <= reg.address and reg.end <= a + c for a, c in covered)
    # round trip through the wire encoding
    values = {reg.quantity: 1.5 for reg in profile.registers}
    blocks = {r.address: [0] * r.count for r in plan}
    for address, regs in profile.encode(values).items():
        for start, block in blocks.items():
            if start <= address < start + len(block):
                block[address - start : address - start + len(regs)] = regs
    assert profile.decode(blocks) == pytest.approx(values, rel=1e-6)


def test_load_by_path_is_the_same_profile():
    by_name = load_profile("sdm120")
    by_path = load_profile(by_name.path)
    assert by_path.registers == by_name.registers


# -- plans ----------------------------------------------------------------------------------


def test_sdm120_plan_is_two_reads():
    # 0x0000..0x004B in one read (gaps <= 38 registers, FC-033), energy_total apart.
    assert load_profile("sdm120").plan() == [
        ReadRequest(function_code=4, address=0x0000, count=76),
        ReadRequest(function_code=4, address=0x0156, count=2),
    ]


def test_sdm120_plan_without_gaps_splits_at_every_hole():
    assert load_profile("sdm120").plan(max_gap=0) == [
        ReadRequest(4, 0x0000, 2),
        ReadRequest(4, 0x0006, 2),
        ReadRequest(4, 0x000C, 2),
        ReadRequest(4, 0x0012, 2),
        ReadRequest(4, 0x0018, 2),
        ReadRequest(4, 0x001E, 2),
        ReadRequest(4, 0x0046, 6),
        ReadRequest(4, 0x0156, 2),
    ]


def test_plan_respects_max_regs():
    plan = load_profile("sdm120").plan(max_regs=20, max_gap=100)
    assert plan == [
        ReadRequest(4, 0x0000, 20),
        ReadRequest(4, 0x0018, 8),
        ReadRequest(4, 0x0046, 6),
        ReadRequest(4, 0x0156, 2),
    ]
    with pytest.raises(ValueError):
        load_profile("sdm120").plan(max_regs=126)


def test_ddsu666_plan_splits_at_every_hole():
    assert load_profile("ddsu666").plan() == [
        ReadRequest(3, 0x2000, 8),
        ReadRequest(3, 0x200A, 2),
        ReadRequest(3, 0x200E, 2),
        ReadRequest(3, 0x4000, 2),
        ReadRequest(3, 0x400A, 2),
    ]


# -- decoding the field vectors ------------------------------------------------------------


def test_fc030_sdm_voltage():
    values = load_profile("sdm120").decode({0x0000: [0x4360, 0x2588]})
    assert values == {"voltage": pytest.approx(224.1466, abs=1e-4)}


def test_fc031_sdm_voltage():
    values = load_profile("sdm120").decode({0x0000: [0x4367, 0xAF55]})
    assert round(values["voltage"], 2) == 231.68


def test_fc033_sdm230_block():
    block = [0] * 72  # 0x0000..0x0047, every register not listed in FC-033 is 0
    for address, hi, lo in [
        (0, 0x436C, 0x7E6E),
        (6, 0x3DFF, 0xA634),
        (12, 0x41A7, 0x18C3),
        (18, 0x41B6, 0x35EA),
        (24, 0xC111, 0x4E2F),
        (30, 0x3F6A, 0xC3F9),
        (70, 0x4248, 0x0000),
    ]:
        block[address : address + 2] = [hi, lo]
    values = load_profile("sdm120").decode({0x0000: block})
    assert values == {
        "voltage": pytest.approx(236.494, abs=5e-4),
        "current": pytest.approx(0.125, abs=5e-4),
        "active_power": pytest.approx(20.887, abs=5e-4),
        "apparent_power": pytest.approx(22.776, abs=5e-4),
        "reactive_power": pytest.approx(-9.082, abs=5e-4),
        "power_factor": pytest.approx(0.917, abs=5e-4),
        "frequency": 50.0,
    }  # energy_import at 0x0048 lies outside the block: absent, not guessed


def test_ddsu666_active_power_kw_to_w():
    profile = load_profile("ddsu666")
    values = profile.decode({0x2004: words(1.2345), 0x2006: words(-0.25)})
    assert values["active_power"] == f32(1.2345) * 1000.0
    assert values["active_power"] == pytest.approx(1234.5, abs=1e-3)
    assert values["reactive_power"] == -250.0
    assert {r.quantity: r.unit for r in profile.registers}["active_power"] == "W"


def test_c06_word_order(tmp_path):
    assert load_profile("sdm120").decode({0: [0x4368, 0x0000]})["voltage"] == 232.0
    text = (Path(load_profile("sdm120").path).read_text()).replace(
        'word_order = "ABCD"', 'word_order = "CDAB"'
    )
    swapped = tmp_path / "sdm120_cdab.toml"
    swapped.write_text(text)
    value = load_profile(swapped).decode({0: [0x4368, 0x0000]})["voltage"]
    assert value == pytest.approx(2.418e-41, rel=1e-3)  # the nonsense C-06 describes
    assert load_profile(swapped).decode({0: [0x0000, 0x4368]})["voltage"] == 232.0


def test_nan_and_inf_are_dropped():
    block = words(230.0) + [0] * 4 + [0x7FC0, 0x0000] + [0] * 4 + [0x7F80, 0x0000]
    values = load_profile("sdm120").decode({0: block})
    assert values["voltage"] == 230.0
    assert "current" not in values and "active_power" not in values
    assert all(math.isfinite(v) for v in values.values())


def test_short_block_names_device_and_register():
    with pytest.raises(DecodeError, match=r"meter-h01.*voltage at 0x0000"):
        load_profile("sdm120").decode({0x0000: [0x4360]}, device="meter-h01")
    with pytest.raises(DecodeError, match=r"energy_export at 0x004A"):
        load_profile("sdm120").decode({0x0000: [0] * 75}, device="meter-h01")


# -- bad profile files ----------------------------------------------------------------------

GOOD_DEVICE = """
[device]
model = "X1"
manufacturer = "Acme"
function_code = 4
source = "test"
"""


def reg(quantity="voltage", address="0x0000", type_="float32", unit="V", extra=""):
    return f"""
[[register]]
quantity = "{quantity}"
address = {address}
type = "{type_}"
unit = "{unit}"
{extra}
"""


FC6_DEVICE = GOOD_DEVICE.replace("function_code = 4", "function_code = 6")
NO_SOURCE_DEVICE = GOOD_DEVICE.replace('source = "test"', "")


@pytest.mark.parametrize(
    ("body", "pattern"),
    [
        (
            GOOD_DEVICE + reg(quantity="power", unit="W"),
            r"register #1 \(power\): unknown quantity 'power'",
        ),
        (GOOD_DEVICE + reg(type_="float64"), r"register #1 \(voltage\): unknown type 'float64'"),
        (
            GOOD_DEVICE + reg() + reg("current", "0x0001", unit="A"),
            r"register #2 \(current\): 0x0001..0x0002 overlaps register #1 \(voltage\)",
        ),
        (FC6_DEVICE + reg(), r"\[device\] function_code: must be 3 or 4"),
        (GOOD_DEVICE + reg(unit="kV"), r"register #1 \(voltage\): unit 'kV'"),
        (
            GOOD_DEVICE + reg() + reg(address="0x0010"),
            r"register #2 \(voltage\): quantity 'voltage' already defined",
        ),
        (
            GOOD_DEVICE + reg(extra="scal = 2"),
            r"register #1 \(voltage\): unknown key\(s\) \['scal'\]",
        ),
        (GOOD_DEVICE + reg(extra="scale = 0"), r"register #1 \(voltage\): scale must be"),
        (GOOD_DEVICE + reg(address="0x10000"), r"register #1 \(voltage\): address must be"),
        (NO_SOURCE_DEVICE + reg(), r"\[device\]: missing key\(s\) \['source'\]"),
        (GOOD_DEVICE, r"no \[\[register\]\] entries"),
        (GOOD_DEVICE + "[[register]\n", r"not valid TOML"),
    ],
)
def test_bad_profile_names_file_and_entry(tmp_path, body, pattern):
    path = tmp_path / "bad_meter.toml"
    path.write_text(body)
    with pytest.raises(ProfileError, match=pattern) as info:
        load_profile(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_unknown_profile_name_lists_bundled():
    with pytest.raises(ProfileError, match=r"unknown profile 'sdm999'.*ddsu666, sdm120"):
        load_profile("sdm999")
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile("/nonexistent/meter.toml")
