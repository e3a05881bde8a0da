"""Device profiles: every bundled file loads, plans and decodes the field vectors.

Golden values: field-vectors.md FC-030, FC-031, FC-033, FC-041, FC-042, C-06; register maps
domain-facts.md §5; the pile and fire-detector reference maps docs/profiles.md.
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
    decode_words,
    encode_words,
    list_profiles,
    load_profile,
    reference_to_address,
)
from drivers.reading import DecodeError, quantity_unit


def words(value: float) -> list[int]:
    """float32 ABCD -> two registers."""
    return list(struct.unpack(">2H", struct.pack(">f", value)))


def f32(value: float) -> float:
    return struct.unpack(">f", struct.pack(">f", value))[0]


# -- every bundled profile ------------------------------------------------------------------


def test_bundled_profiles_are_listed():
    assert list_profiles() == ["ddsu666", "ebike_pile", "fire_detector", "sdm120"]


def sample_value(name: str) -> float:
    """A value every register type of the bundled profiles can carry exactly enough."""
    if name.startswith(("alarm_", "fault_")):
        return 1.0
    return {"port_state": 2.0}.get(name.partition(".")[0], 12.0)


@pytest.mark.parametrize("name", list_profiles())
def test_every_profile_loads_and_plans(name):
    profile = load_profile(name)
    assert profile.name == name
    assert profile.function_code in (3, 4)
    assert profile.source.strip()
    assert profile.registers
    for reg in profile.registers:
        for value_name in reg.names:
            assert reg.unit == quantity_unit(value_name) or reg.bits
    plan = profile.plan()
    assert all(1 <= r.count <= MAX_READ_REGISTERS for r in plan)
    for reg in profile.registers:  # every register lies wholly inside one read of its fc
        assert any(
            r.function_code == reg.function_code and r.address <= reg.address and reg.end <= r.address + r.count
            for r in plan
        )
    # round trip through the wire encoding, blocks keyed (function code, address)
    values = {q: sample_value(q) for q in profile.quantities}
    blocks = {(r.function_code, r.address): [0] * r.count for r in plan}
    for (fc, address), regs in profile.encode(values).items():
        for (bfc, start), block in blocks.items():
            if bfc == fc and start <= address < start + len(block):
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
        (GOOD_DEVICE + reg(type_="float128"), r"register #1 \(voltage\): unknown type 'float128'"),
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
    with pytest.raises(ProfileError, match=r"unknown profile 'sdm999'.*ddsu666, ebike_pile, fire_detector, sdm120"):
        load_profile("sdm999")
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile("/nonexistent/meter.toml")


# -- value names (drivers.reading.quantity_unit) -------------------------------------------


@pytest.mark.parametrize(
    ("name", "unit"),
    [
        ("voltage", "V"),
        ("energy_import", "kWh"),
        ("active_power.3", "W"),
        ("cable_temperature.2", "°C"),
        ("residual_current", "mA"),
        ("residual_current_setting", "mA"),
        ("temperature_setting", "°C"),
        ("port_state.10", ""),
        ("alarm_residual_current", ""),
        ("fault_relay.7", ""),
        ("voltage.999", "V"),
    ],
)
def test_quantity_unit(name, unit):
    assert quantity_unit(name) == unit


@pytest.mark.parametrize(
    "name",
    ["power", "Voltage", "voltage.0", "voltage.01", "voltage.1000", "port3.active_power",
     "voltage.", ".voltage", "alarm_", "fault", "active_power.3.1", "", "voltage_", "cable temp"],
)
def test_quantity_unit_rejects(name):
    with pytest.raises(ValueError, match="quantity"):
        quantity_unit(name)


def test_reading_and_telemetry_validate_with_the_rule():
    from agent.schema import TelemetryMsg
    from drivers.reading import Reading

    values = {"active_power.3": 150.0, "alarm_cable_temperature.2": 1.0, "residual_current": 35.0}
    assert Reading("pile-1", 0.0, values).values == values
    with pytest.raises(ValueError, match="unknown quantity 'power'"):
        Reading("pile-1", 0.0, {"power": 1.0})
    msg = dict(msg_id="gw:1", gateway="gw", device="pile-1", ts=1_768_478_400.0)
    assert TelemetryMsg(**msg, values=values).values == values
    with pytest.raises(ValueError, match=r"unknown quantities \['port3.active_power'\]"):
        TelemetryMsg(**msg, values={"port3.active_power": 1.0})


# -- data types, byte and word orders (drivers.profile.decode_words) --------------------------


@pytest.mark.parametrize(
    ("words", "rtype", "order", "expected"),
    [
        # C-06: 0x4368 0x0000 is 232.0 high word first; read low word first it is nonsense
        ([0x4368, 0x0000], "float32", "ABCD", 232.0),
        ([0x0000, 0x4368], "float32", "CDAB", 232.0),
        ([0x6843, 0x0000], "float32", "BADC", 232.0),
        ([0x0000, 0x6843], "float32", "DCBA", 232.0),
        ([0x4360, 0x2588], "float32", "ABCD", struct.unpack(">f", bytes.fromhex("43602588"))[0]),  # FC-030
        ([0x426F, 0xFC67], "float32", "ABCD", struct.unpack(">f", bytes.fromhex("426FFC67"))[0]),  # FC-042
        ([0x08D9], "uint16", "ABCD", 2265),  # FC-041 (x 0.1 = 226.5 V)
        ([0xD908], "uint16", "BADC", 2265),
        ([0xD908], "uint16", "DCBA", 2265),
        ([0x08D9], "uint16", "CDAB", 2265),  # word order means nothing for one register
        ([0xFF38], "int16", "ABCD", -200),
        ([0x0000, 0x058D], "uint32", "ABCD", 1421),  # FC-041 (x 0.01 = 14.21)
        ([0x058D, 0x0000], "uint32", "CDAB", 1421),
        ([0x0000, 0x8D05], "uint32", "BADC", 1421),
        ([0x8D05, 0x0000], "uint32", "DCBA", 1421),
        ([0xFFFF, 0xFFFE], "int32", "ABCD", -2),
        ([0xFFFE, 0xFFFF], "int32", "CDAB", -2),
        ([0x0001, 0x0002, 0x0003, 0x0004], "uint64", "ABCD", 0x0001000200030004),
        ([0x0004, 0x0003, 0x0002, 0x0001], "uint64", "CDAB", 0x0001000200030004),
        ([0x0100, 0x0200, 0x0300, 0x0400], "uint64", "BADC", 0x0001000200030004),
        ([0x0400, 0x0300, 0x0200, 0x0100], "uint64", "DCBA", 0x0001000200030004),
        ([0xFFFF, 0xFFFF, 0xFFFF, 0xFF85], "int64", "ABCD", -123),
        ([0x406C, 0xD000, 0x0000, 0x0000], "float64", "ABCD", 230.5),
        ([0x0000, 0x0000, 0xD000, 0x406C], "float64", "CDAB", 230.5),
        ([0x0000, 0x0000, 0x00D0, 0x6C40], "float64", "DCBA", 230.5),
        ([0x1234], "bcd16", "ABCD", 1234),
        ([0x3412], "bcd16", "BADC", 1234),
        ([0x0012, 0x3456], "bcd32", "ABCD", 123456),
        ([0x3456, 0x0012], "bcd32", "CDAB", 123456),
        ([0x5344, 0x4D31, 0x3230, 0x0000], "string", "ABCD", "SDM120"),
        ([0x4453, 0x314D, 0x3032, 0x0000], "string", "BADC", "SDM120"),
        ([0x5344, 0x4D31, 0x3230, 0x2020], "string", "CDAB", "SDM120"),  # words stay in order
    ],
)
def test_decode_words(words, rtype, order, expected):
    assert decode_words(words, rtype, order) == expected
    length = len(words) if rtype == "string" else 0
    again = encode_words(expected, rtype, order, length)
    assert decode_words(again, rtype, order) == expected


def test_c06_cdab_nonsense_value():
    assert decode_words([0x4368, 0x0000], "float32", "CDAB") == pytest.approx(2.418e-41, rel=1e-3)


@pytest.mark.parametrize(
    ("words", "rtype", "pattern"),
    [
        ([0x12A4], "bcd16", r"bcd16 registers 0x12A4 are not BCD digits"),
        ([0x0000, 0xF000], "bcd32", r"not BCD digits"),
        ([0x4368], "float32", r"float32 needs 2 register\(s\), got 1"),
        ([0x10000], "uint16", r"outside 0..65535"),
        ([-1], "int16", r"outside 0..65535"),
        ([0xC3A9], "string", r"not ASCII text"),
        ([], "string", r"needs at least 1 register"),
    ],
)
def test_decode_words_errors(words, rtype, pattern):
    with pytest.raises(DecodeError, match=pattern):
        decode_words(words, rtype)


def test_encode_words_errors():
    with pytest.raises(ValueError, match="does not fit int16"):
        encode_words(40000, "int16")
    with pytest.raises(ValueError, match="does not fit bcd16"):
        encode_words(-1, "bcd16")
    with pytest.raises(ValueError, match="does not fit bcd16"):
        encode_words(10000, "bcd16")
    with pytest.raises(ValueError, match="longer than 4 characters"):
        encode_words("SDM120", "string", length=2)
    with pytest.raises(ValueError, match="does not fit uint16"):
        encode_words(float("nan"), "uint16")


def test_reference_numbers_c06():
    assert reference_to_address(30001) == (4, 0x0000)
    assert reference_to_address(30013) == (4, 0x000C)  # SDM120 active power
    assert reference_to_address(40001) == (3, 0x0000)
    assert reference_to_address(408193) == (3, 0x2000)  # DDSU666 voltage
    assert reference_to_address(365536) == (4, 0xFFFF)
    for bad in (30000, 10001, 365537, 50001, True):
        with pytest.raises(ValueError):
            reference_to_address(bad)


# -- profile features: scale, offset, sentinels, bit fields, channels, functions --------------

FEATURES = GOOD_DEVICE + """
[[register]]
quantity = "cable_temperature"
address = 0x0010
channels = 3
stride = 2
type = "int16"
scale = 0.1
offset = -40.0
unit = "°C"
sentinels = [0x7FFF, 0x8000]

[[register]]
address = 0x0020
type = "uint16"
order = "BADC"
bits = { alarm_residual_current = 0, fault_internal = 15 }

[[register]]
reference = 40101         # holding register 0x0064
quantity = "residual_current_setting"
type = "uint32"
order = "CDAB"
unit = "mA"

[[register]]
quantity = "energy_import"
address = 0x0030
type = "bcd32"
scale = 0.01
unit = "kWh"
sentinels = 0xFFFFFFFF

[[info]]
name = "model"
address = 0x0040
type = "string"
length = 4
"""


def test_profile_features(tmp_path):
    path = tmp_path / "features.toml"
    path.write_text(FEATURES)
    profile = load_profile(path)
    assert [(r.quantity, r.address) for r in profile.registers[:3]] == [
        ("cable_temperature.1", 0x0010), ("cable_temperature.2", 0x0012), ("cable_temperature.3", 0x0014),
    ]
    assert profile.plan(max_gap=0) == [
        ReadRequest(4, 0x0010, 1), ReadRequest(4, 0x0012, 1), ReadRequest(4, 0x0014, 1),
        ReadRequest(4, 0x0020, 1), ReadRequest(4, 0x0030, 2), ReadRequest(3, 0x0064, 2),
    ]
    assert profile.plan(max_gap=16) == [ReadRequest(4, 0x0010, 34), ReadRequest(3, 0x0064, 2)]
    assert profile.plan(info=True) == [ReadRequest(4, 0x0040, 4)]
    block = [0] * 34
    block[0] = 615  # 61.5 - 40 = 21.5 °C
    block[2] = 0x7FFF  # sensor not fitted
    block[4] = 0xFF9C  # -100: -10.0 - 40 = -50 °C
    block[0x10] = 0x0180  # BADC: 0x8001 -> bits 0 and 15
    block[0x20:0x22] = [0x0012, 0x3456]  # BCD 00123456 x 0.01
    values = profile.decode({(4, 0x0010): block, (3, 0x0064): [0x012C, 0x0000]})
    assert values == {
        "cable_temperature.1": 21.5,
        "cable_temperature.3": -50.0,
        "alarm_residual_current": 1.0,
        "fault_internal": 1.0,
        "residual_current_setting": 300.0,
        "energy_import": 1234.56,
    }
    # the same address under the other function code is another register space
    assert profile.decode({(3, 0x0010): block}) == {}
    # the energy sentinel and an int key (the default function code)
    block[0x20:0x22] = [0xFFFF, 0xFFFF]
    assert "energy_import" not in profile.decode({0x0010: block})
    # identification
    info = profile.decode_info({(4, 0x0040): [0x4644, 0x2D52, 0x3100, 0x0000]})
    assert info == {"model": "FD-R1"}
    # encode is the inverse, NaN -> the lowest sentinel
    words = profile.encode({"cable_temperature.2": float("nan"), "fault_internal": 1.0, "model": "X"})
    assert words == {(4, 0x0012): [0x7FFF], (4, 0x0020): [0x0080], (4, 0x0040): [0x5800, 0, 0, 0]}


def test_bcd_garbage_names_device_and_register(tmp_path):
    path = tmp_path / "features.toml"
    path.write_text(FEATURES)
    with pytest.raises(DecodeError, match=r"det-1: energy_import at 0x0030 \(function 4\): registers 0x00A0 0x0000 are not BCD"):
        load_profile(path).decode({(4, 0x0030): [0x00A0, 0x0000]}, device="det-1")


def test_fire_detector_map():
    profile = load_profile("fire_detector")
    assert profile.plan() == [ReadRequest(4, 0x0000, 7), ReadRequest(3, 0x0100, 2)]
    values = profile.decode({
        (4, 0x0000): [35, 415, 0xFFE0, 0x7FFF, 0x7FFF, 0b00011, 0b100001000],
        (3, 0x0100): [300, 85],
    })
    assert values == {
        "residual_current": 35.0,
        "cable_temperature.1": 41.5,
        "cable_temperature.2": -3.2,
        # sensors 3 and 4 not fitted (0x7FFF): absent
        "alarm_residual_current": 1.0,
        "alarm_cable_temperature.1": 1.0,
        "alarm_cable_temperature.2": 0.0,
        "alarm_cable_temperature.3": 0.0,
        "alarm_cable_temperature.4": 0.0,
        "fault_residual_sensor": 0.0,
        "fault_temperature_sensor.1": 0.0,
        "fault_temperature_sensor.2": 0.0,
        "fault_temperature_sensor.3": 1.0,
        "fault_temperature_sensor.4": 0.0,
        "fault_internal": 1.0,
        "residual_current_setting": 300.0,
        "temperature_setting": 85.0,
    }
    assert "residual_current" not in profile.decode({(4, 0x0000): [0xFFFF]})


def test_ebike_pile_map():
    profile = load_profile("ebike_pile")
    # 10 port blocks of 16 registers: 2 reads within the 125-register limit
    assert profile.plan() == [ReadRequest(4, 0x0000, 0x77), ReadRequest(4, 0x0080, 0x27)]
    assert len(profile.plan(max_gap=0)) == 11
    assert len(profile.quantities) == 5 + 2 + 10 * 9  # pile, pile flags, per port
    first, second = [0] * 0x77, [0] * 0x27
    first[0:8] = [2265, 5001, 0x00C8, 0x0000, 0x0001, 0x2345, 0b010, 0]  # CDAB power, BCD energy
    port3 = 0x30  # port 3 block
    first[port3 : port3 + 7] = [2, 2261, 659, 1495, 0x3039, 0x0000, 0b0010]
    second[0x20 : 0x20 + 7] = [4, 0, 0, 0, 0x5678, 0x0001, 0b1001]  # port 10 at 0x00A0
    values = profile.decode({(4, 0x0000): first, (4, 0x0080): second})
    assert values["voltage"] == 226.5
    assert values["frequency"] == 50.01
    assert values["active_power"] == 200.0
    assert values["energy_import"] == 123.45  # BCD 00012345 x 0.01
    assert values["fault_supply"] == 1.0 and values["fault_meter"] == 0.0
    assert values["port_state.3"] == 2.0
    assert values["voltage.3"] == 226.1
    assert values["current.3"] == 0.659
    assert values["active_power.3"] == 149.5
    assert values["energy_import.3"] == 12.345  # uint32 CDAB 0x00003039 x 0.001
    assert values["fault_over_power.3"] == 1.0
    assert values["port_state.10"] == 4.0
    assert values["energy_import.10"] == 0x00015678 / 1000
    assert values["fault_over_current.10"] == 1.0 and values["fault_relay.10"] == 1.0
    assert values["port_state.1"] == 0.0  # all registers 0: a port that reads 0 is 0


BITS = GOOD_DEVICE.replace('source = "test"', 'source = "test"\n') + """
[[register]]
address = 0x0000
type = "uint16"
"""


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        ('bits = { alarm_x = 16 }', r"bit of 'alarm_x' must be 0..15"),
        ('bits = { alarm_x = 1, fault_y = 1 }', r"bit 1 used by 'alarm_x' and 'fault_y'"),
        ('bits = { voltage = 1 }', r"flag 'voltage' must start with alarm_ or fault_"),
        ('bits = {}', r"bits must be a non-empty table"),
        ('bits = { alarm_x = 0 }\nunit = ""', r"a bit field has no unit"),
        ('bits = { "alarm_x.1" = 0 }\nchannels = 2', r"flag 'alarm_x.1' already has a channel"),
    ],
)
def test_bad_bit_fields(tmp_path, extra, pattern):
    path = tmp_path / "bits.toml"
    path.write_text(BITS + extra + "\n")
    with pytest.raises(ProfileError, match=pattern):
        load_profile(path)


@pytest.mark.parametrize(
    ("body", "pattern"),
    [
        (GOOD_DEVICE + reg(extra="channels = 0"), r"channels must be an integer 1..999"),
        (GOOD_DEVICE + reg(extra="channels = 2\nstride = 1"), r"stride must be an integer >= the width 2"),
        (GOOD_DEVICE + reg(extra="stride = 4"), r"stride needs channels"),
        (GOOD_DEVICE + reg(quantity="voltage.1", extra="channels = 2"), r"already has a channel"),
        (GOOD_DEVICE + reg(address="0xFFF0", extra="channels = 9"), r"channel 9 at 0x10000 lies beyond 0xFFFF"),
        (GOOD_DEVICE + reg(extra="sentinels = [0x100000000]"), r"sentinels must be raw wire values 0..0xFFFFFFFF"),
        (GOOD_DEVICE + reg(extra='order = "BACD"'), r"order must be one of"),
        (GOOD_DEVICE + reg(extra="function_code = 6"), r"function_code must be 3 or 4"),
        (GOOD_DEVICE + reg(type_="string"), r"strings are identification, put them in \[\[info\]\]"),
        (GOOD_DEVICE + reg(extra="reference = 30001"), r"give exactly one of address \(0-based\) and reference"),
        (GOOD_DEVICE + reg(extra="offset = nan"), r"offset must be a finite number"),
        (GOOD_DEVICE + reg() + '[[info]]\nname = "model"\naddress = 0\ntype = "string"\n', r"a string needs length"),
        (GOOD_DEVICE + reg() + '[[info]]\nname = "Model"\naddress = 0\ntype = "uint16"\n', r"name must match"),
        (GOOD_DEVICE + reg() + reg("current", "0x0000", unit="A", extra="function_code = 3"), None),
    ],
)
def test_bad_profile_features(tmp_path, body, pattern):
    path = tmp_path / "bad_features.toml"
    path.write_text(body)
    if pattern is None:  # the same address under another function code is fine
        assert len(load_profile(path).plan()) == 2
        return
    with pytest.raises(ProfileError, match=pattern):
        load_profile(path)
