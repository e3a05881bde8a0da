"""`flylead read` and `flylead bus-scan` against simulators: Modbus TCP (pymodbus server),
RTU on a pty and over TCP (tests/test_rtu.py's devices), DL/T 645 on a pty.

Exit codes: 0 success, 1 device or bus failure (one line on stderr), 2 bad arguments.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from typer.testing import CliRunner

from drivers.reading import quantity_unit
from flylead.cli import app
from flylead.clock import SimClock
from simulators.dlt645_meter import Dlt645MeterSim
from simulators.meter import MeterServer, constant_values
from tests.test_rtu import (
    DEVICES,
    FIRE_EXPECTED,
    METER_VALUES,
    PILE_EXPECTED,
    SDM120_EXPECTED,
    START,
    line_sim,
)

pytestmark = pytest.mark.timeout(60)

runner = CliRunner()


def flylead(*args: str):
    return runner.invoke(app, list(args))


def with_units(values: dict[str, float]) -> dict[str, dict[str, object]]:
    return {name: {"value": value, "unit": quantity_unit(name)} for name, value in values.items()}


@contextmanager
def tcp_server(**faults: str) -> Iterator[MeterServer]:
    """The four devices of tests/test_rtu.py behind a Modbus TCP gateway, served from an
    event loop in a thread (the command runs its own loop in this one)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = MeterServer(
        {i: constant_values(DEVICES[i][1]) for i in DEVICES},
        profile={i: DEVICES[i][0] for i in DEVICES},
        clock=SimClock(START, speed=1.0),
    )
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# -- read ---------------------------------------------------------------------------------


def test_read_tcp_json():
    with tcp_server() as server:
        result = flylead("read", "--profile", "sdm120", "--tcp", f"127.0.0.1:{server.port}", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {"device": "sdm120-1", "values": with_units(SDM120_EXPECTED)}
    assert result.stdout.count("\n") == 1  # exactly one JSON object


def test_read_serial_text_fire_detector():
    with line_sim("pty") as sim:
        result = flylead("read", "--profile", "fire_detector", "--serial", sim.path, "--device-id", "4")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"fire_detector-4 (serial {sim.path})"
    assert "  model                        FD-R1T4" in lines
    assert "  serial_number                12345678" in lines
    assert "  residual_current             35 mA" in lines
    assert "  cable_temperature.1          41.5 °C" in lines
    assert "  cable_temperature.2          -3.2 °C" in lines
    assert "  alarm_cable_temperature.1    1" in lines
    assert "  temperature_setting          85 °C" in lines
    assert not any(line.split()[0] == "cable_temperature.3" for line in lines[1:])  # not fitted
    assert len(lines) == 1 + 2 + len(FIRE_EXPECTED)


def test_read_rtu_over_tcp_pile_json():
    with line_sim("tcp") as sim:
        result = flylead("read", "--profile", "ebike_pile", "--rtu-tcp", f"127.0.0.1:{sim.port}",
                         "--device-id", "3", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out == {"device": "ebike_pile-3", "values": with_units(PILE_EXPECTED)}
    assert out["values"]["active_power.3"] == {"value": 149.5, "unit": "W"}
    assert out["values"]["energy_import"] == {"value": 123.45, "unit": "kWh"}


def test_read_timeout_is_exit_1_with_one_line():
    with line_sim("pty", ids=(1,)) as sim:
        result = flylead("read", "--profile", "sdm120", "--serial", sim.path, "--device-id", "9",
                         "--timeout", "0.2", "--json")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"sdm120-9 (device id 9 at serial {sim.path} (9600 8N1)): no answer in 0.2 s to "
        "function 4 read of 0x0000 count 76\n"
    )


def test_read_exception_is_exit_1():
    with line_sim("pty", ids=(1,)) as sim:
        sim.set_fault(1, "exception")
        result = flylead("read", "--profile", "sdm120", "--serial", sim.path)
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert "exception 4 (server device failure) to function 4 read of 0x0000 count 76" in result.stderr


def test_read_refused_connection_is_exit_1():
    result = flylead("read", "--profile", "sdm120", "--rtu-tcp", "127.0.0.1:1", "--timeout", "0.2")
    assert result.exit_code == 1
    assert "127.0.0.1:1" in result.stderr and "refused" in result.stderr


def dlt645_meter() -> Dlt645MeterSim:
    return Dlt645MeterSim("000000000161", lambda: dict(METER_VALUES))


# A pty takes no parity (this kernel answers EINVAL to PARENB once the pty has been
# opened), so the DL/T 645 commands run 2400 8N1 here instead of their 8E1 default.


def test_read_dlt645_json():
    with dlt645_meter() as meter:
        result = flylead("read", "--profile", "dlt645", "--serial", meter.path,
                         "--address", "000000000161", "--parity", "N", "--json")
    with dlt645_meter() as meter:
        wildcard = flylead("read", "--profile", "dlt645", "--serial", meter.path, "--parity", "N")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {
        "device": "dlt645-000000000161",
        "values": with_units({
            "voltage": 230.0, "current": 1.5, "active_power": 300.0, "reactive_power": 170.0,
            "apparent_power": 345.0, "power_factor": 0.87, "frequency": 50.0,
            "energy_import": 12.5, "energy_export": 0.25,
        }),
    }
    assert wildcard.exit_code == 0, wildcard.stderr
    assert wildcard.stdout.splitlines()[0] == f"dlt645-AAAAAAAAAAAA (serial {meter.path})"
    assert "  voltage                      230 V" in wildcard.stdout.splitlines()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--profile", "sdm120"], "give exactly one of --tcp"),
        (["--profile", "sdm120", "--tcp", "127.0.0.1:502", "--serial", "/dev/ttyUSB0"], "give exactly one"),
        (["--profile", "sdm999", "--tcp", "127.0.0.1:502"], "unknown profile 'sdm999'"),
        (["--profile", "sdm120", "--tcp", "127.0.0.1"], "--tcp must be HOST:PORT"),
        (["--profile", "sdm120", "--tcp", "127.0.0.1:502", "--address", "000000000161"], "--address is for DL/T 645"),
        (["--profile", "dlt645", "--serial", "/dev/ttyUSB0", "--device-id", "3"], "--device-id is for Modbus"),
        (["--profile", "dlt645", "--serial", "/dev/ttyUSB0", "--address", "12345"], "--address"),
        (["--profile", "sdm120", "--serial", "/dev/ttyUSB0", "--parity", "X"], "--parity must be N, E or O"),
        (["--profile", "sdm120", "--serial", "/dev/ttyUSB0", "--device-id", "248"], "--device-id"),
        (["--profile", "sdm120", "--serial", "/dev/ttyUSB0", "--timeout", "0"], "--timeout"),
        (["--profile", "sdm120", "--serial", "/dev/ttyUSB0", "--timeout", "nan"], "'nan' is not a finite number"),
        (["--profile", "sdm120", "--tcp", "127.0.0.1:502", "--baud", "19200"], "--baud and --parity set a serial port"),
        (["--profile", "sdm120", "--rtu-tcp", "127.0.0.1:502", "--parity", "E"], "--baud and --parity set a serial port"),
        (["--profile", "dlt645", "--tcp", "127.0.0.1:502"], "DL/T 645 is a serial protocol: use --rtu-tcp"),
        (["--profile", "dianchuan", "--tcp", "127.0.0.1:502"], "the Dianchuan protocol is a serial protocol"),
    ],
)
def test_read_bad_arguments_exit_2(args, message):
    result = flylead("read", *args)
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())


# -- bus-scan -----------------------------------------------------------------------------


def test_bus_scan_serial_json():
    with line_sim("pty") as sim:
        result = flylead("bus-scan", "--serial", sim.path, "--ids", "1-5", "--timeout", "0.1", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["protocol"] == "modbus" and out["bus"] == f"serial {sim.path}"
    assert [(d["device_id"], d["profile"]) for d in out["devices"]] == [
        (1, "sdm120"), (2, "ddsu666"), (3, "ebike_pile"), (4, "fire_detector"),
    ]
    assert out["devices"][0]["values"] == SDM120_EXPECTED
    assert out["devices"][3]["values"] == FIRE_EXPECTED
    assert out["devices"][1]["profiles"]["sdm120"]["plausible"] is False


def test_bus_scan_tcp_text():
    with tcp_server() as server:
        result = flylead("bus-scan", "--tcp", f"127.0.0.1:{server.port}", "--ids", "1,4,9", "--timeout", "0.2")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2  # id 9: the gateway answers exception 11, nobody there
    assert lines[0].startswith("id 1: sdm120 (10 values plausible: voltage=230, current=1.5,")
    assert lines[1].startswith("id 4: fire_detector (3 values plausible: residual_current=35,")


def test_bus_scan_nothing_answers():
    with line_sim("pty", ids=(1,)) as sim:
        result = flylead("bus-scan", "--serial", sim.path, "--ids", "2-3", "--timeout", "0.05")
    assert result.exit_code == 0
    assert result.stdout == f"no Modbus device answered ids 2-3 (serial {sim.path})\n"


def test_bus_scan_dlt645():
    with dlt645_meter() as meter:
        result = flylead("bus-scan", "--serial", meter.path, "--protocol", "dlt645", "--parity", "N", "--json")
        text = flylead("bus-scan", "--serial", meter.path, "--protocol", "dlt645", "--parity", "N")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {
        "protocol": "dlt645", "bus": f"serial {meter.path}",
        "devices": [{"address": "000000000161", "profile": "dlt645"}],
    }
    assert text.stdout == f"DL/T 645 meter at address 000000000161 (serial {meter.path})\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--serial", "/dev/ttyUSB0", "--ids", "0-5"], "--ids must lie in 1..247"),
        (["--serial", "/dev/ttyUSB0", "--ids", "5-1"], "--ids must lie in 1..247"),
        (["--serial", "/dev/ttyUSB0", "--ids", "a"], "--ids must look like"),
        (["--serial", "/dev/ttyUSB0", "--protocol", "bacnet"], "--protocol must be modbus or dlt645"),
        (["--ids", "1"], "give exactly one of --tcp"),
        (["--serial", "/dev/ttyUSB0", "--protocol", "dlt645", "--ids", "1-3"], "--ids is for Modbus"),
        (["--tcp", "127.0.0.1:502", "--protocol", "dlt645"], "DL/T 645 is a serial protocol: use --rtu-tcp"),
        (["--tcp", "127.0.0.1:502", "--baud", "19200"], "--baud and --parity set a serial port"),
    ],
)
def test_bus_scan_bad_arguments_exit_2(args, message):
    result = flylead("bus-scan", *args)
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())


def test_read_dianchuan_board_json():
    """Issue 8: every port's state and power from the 10-port board on a pty."""
    from drivers.pile import PortState
    from simulators.dianchuan_board import ChargeProfile, DianchuanBoard

    clock = SimClock(1_800_000_000.0, speed=1.0)
    board = DianchuanBoard(clock=clock).start()
    try:
        board.plug_in(3, 120, profile=ChargeProfile(bulk_w=150.0, bulk_s=7200.0))
        board.set_port(7, PortState.DISABLED)
        result = flylead("read", "--profile", "dianchuan", "--serial", board.path, "--json")
    finally:
        board.stop()
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    values = {k: v["value"] for k, v in out["values"].items()}
    assert out["device"] == "dianchuan"
    assert len([k for k in values if k.startswith("port_state.")]) == 10
    assert values["port_state.3"] == 2.0 and values["port_state.7"] == 3.0 and values["port_state.1"] == 1.0
    assert values["active_power.3"] == pytest.approx(150.0, abs=0.1)
    assert values["active_power.1"] == 0.0
    assert 7000 <= values["remaining_time.3"] <= 7200
    assert out["values"]["remaining_time.3"]["unit"] == "s"
    assert out["values"]["active_power.3"]["unit"] == "W"
