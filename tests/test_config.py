import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "example-compound.toml"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flylead.cli", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_example_configuration_is_valid():
    cfg = load_config(EXAMPLE)
    assert cfg.gateway == "gw-sunrise-01"
    assert [d.name for d in cfg.devices] == ["meter-b3-101", "meter-b3-102"]
    assert cfg.buses[0].host_port == ("127.0.0.1", 5020)
    assert cfg.devices[1].profile == "ddsu666" and cfg.devices[1].device_id == 2


def test_check_config_exit_codes(tmp_path):
    ok = run_cli("check-config", str(EXAMPLE))
    assert ok.returncode == 0, ok.stderr
    assert "ok (gateway gw-sunrise-01, 1 bus, 2 devices)" in ok.stdout

    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE.read_text().replace("device_id = 2", "device_id = 300"))
    res = run_cli("check-config", str(bad))
    assert res.returncode == 2
    assert f"{bad}: devices.1.device_id: Input should be less than or equal to 247" in res.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gateway = 'gw1'\nbuses = [\n", "not valid TOML"),
        ("gateway = 'gw 1'\nbuses = []\ndevices = []\n", "gateway: String should match pattern"),
        ("gateway = 'gw1'\nbuses = []\ndevices = [{name='m1', bus='nope', profile='sdm120'}]\n",
         "devices[0] (m1): unknown bus 'nope'"),
        ("gateway = 'gw1'\nbuses = []\ndevices = []\ncolour = 'red'\n", "colour: Extra inputs are not permitted"),
        ("gateway = 'gw1'\ntz = 'Mars/Olympus'\nbuses = []\ndevices = []\n", "unknown time zone 'Mars/Olympus'"),
        ("gateway = 'gw1'\nbuses = [{name='b', tcp='127.0.0.1:502'}]\n"
         "devices = [{name='m1', bus='b', profile='nope'}]\n", "devices[0] (m1): unknown profile 'nope'"),
        ("gateway = 'gw1'\nbuses = [{name='b', tcp='127.0.0.1:502'}]\n"
         "devices = [{name='m1', bus='b', profile='sdm120'}, {name='m2', bus='b', profile='sdm120'}]\n",
         "devices[1] (m2): same bus and device id/address as 'm1'"),
        ("gateway = 'gw1'\nbuses = [{name='b', tcp='127.0.0.1:502', serial='/dev/ttyUSB0'}]\ndevices = []\n",
         "give exactly one of tcp, rtu_tcp, serial"),
        # no silent conversion, no NaN or infinity, no value that would spin the agent
        ("gateway = 'gw1'\nbuses = [{name='b', tcp='127.0.0.1:502'}]\n"
         "devices = [{name='m1', bus='b', profile='sdm120', interval_s='60'}]\n",
         "devices.0.interval_s: Input should be a valid number"),
        ("gateway = 'gw1'\nbuses = [{name='b', tcp='127.0.0.1:502'}]\n"
         "devices = [{name='m1', bus='b', profile='sdm120', interval_s=true}]\n",
         "devices.0.interval_s: Input should be a valid number"),
        ("gateway = 'gw1'\nbuses = [{name='b', tcp='127.0.0.1:502'}]\n"
         "devices = [{name='m1', bus='b', profile='sdm120', device_id='1'}]\n",
         "devices.0.device_id: Input should be a valid integer"),
        ("gateway = 'gw1'\nspread_polls = 1\nbuses = []\ndevices = []\n", "spread_polls: Input should be a valid boolean"),
        ("gateway = 'gw1'\nmax_backoff_s = inf\nbuses = []\ndevices = []\n", "max_backoff_s: Input should be a finite number"),
        ("gateway = 'gw1'\nhealth_interval_s = 1e-300\nbuses = []\ndevices = []\n",
         "health_interval_s: Input should be greater than or equal to 1"),
        ("gateway = 'gw1'\nbuses = [{name='b', tcp='127.0.0.1:99999'}]\ndevices = []\n",
         "buses.0.tcp: port of '127.0.0.1:99999' must be 1-65535"),
        ("gateway = 'gw1'\nbuses = [{name='b', tcp='127.0.0.1:502', baudrate=9600}]\ndevices = []\n",
         "bus 'b': baudrate is for serial lines (rtu_tcp or serial), not tcp"),
        ("gateway = 'gw1'\nbuses = []\ndevices = []\n[mqtt]\nhost = ''\n", "mqtt.host: String should have at least 1"),
        ("gateway = 'gw1'\nbuses = []\ndevices = []\n[mqtt]\nhost = '127.0.0.1:1883'\n",
         "mqtt.host: '127.0.0.1:1883' is not an IP address (the port goes in port)"),
        ("gateway = 'gw1'\nbuses = []\ndevices = []\n[mqtt]\nhost = '999.999.1.1'\n",
         "mqtt.host: '999.999.1.1' is not an IP address"),
        ("gateway = 'gw1'\nbuses = []\ndevices = []\n[outbox]\npath = '/dev/null'\n",
         "outbox.path: /dev/null is not a regular file"),
        ("gateway = 'gw1'\nbuses = [{name='b', tcp='127.0.0.1:502'}]\n"
         "devices = [{name='m1', bus='b', profile='sdm120', residual_setting_ma=300.0}]\n",
         "devices[0] (m1): residual_setting_ma and temperature_setting_c are for fire detectors"),
        ("gateway = 'gw1'\nbuses = [{name='b', tcp='127.0.0.1:502'}]\n"
         "devices = [{name='f1', bus='b', profile='fire_detector', breaker_rating_a=32.0}]\n",
         "devices[0] (f1): breaker_rating_a is for household meters"),
        ("gateway = 'gw1'\nbuses = []\ndevices = []\n[outbox]\npath = ''\n", "outbox.path: String should have at least 1"),
        ("gateway = 'gw1'\nbuses = []\ndevices = []\n[outbox]\npath = '/nonexistent-flylead-dir/o.sqlite'\n",
         "outbox.path: folder /nonexistent-flylead-dir does not exist"),
        ("gateway = 'gw1'\nbuses = []\ndevices = []\n[outbox]\npath = '/tmp'\n", "outbox.path: /tmp is a folder"),
    ],
)
def test_config_errors_name_file_key_and_problem(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)


def test_tls_ca_file_is_checked_at_load(tmp_path):
    """A CA bundle that is missing or not PEM is named by check-config (exit 2), not found
    later as a traceback inside paho when the agent connects."""
    base = "gateway = 'gw1'\nbuses = []\ndevices = []\n[mqtt]\ntls = true\nca_file = '{}'\n"
    path = tmp_path / "c.toml"
    path.write_text(base.format(tmp_path / "none.crt"))
    res = run_cli("check-config", str(path))
    assert res.returncode == 2
    assert f"{path}: mqtt.ca_file: no such file: {tmp_path / 'none.crt'}" in res.stderr
    junk = tmp_path / "junk.crt"
    junk.write_text("not a certificate\n")
    path.write_text(base.format(junk))
    with pytest.raises(ConfigError, match=r"mqtt.ca_file: .*junk.crt is not a readable PEM certificate file"):
        load_config(path)
    path.write_text(base.format(tmp_path))
    with pytest.raises(ConfigError, match=r"mqtt.ca_file: .* is a directory, not a CA bundle file"):
        load_config(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config("/nonexistent/flylead.toml")
    with pytest.raises(ConfigError, match=f"{tmp_path}: cannot read: Is a directory"):
        load_config(tmp_path)


def test_duplicate_device_names():
    with pytest.raises(ConfigError, match="device names must be unique"):
        parse_config({"gateway": "g", "buses": [{"name": "b", "tcp": "127.0.0.1:502"}],
                      "devices": [{"name": "m", "bus": "b", "profile": "sdm120"}] * 2})


def test_a_byte_order_mark_is_accepted(tmp_path):
    """Windows editors save UTF-8 with a BOM, which TOML itself refuses at line 1."""
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + EXAMPLE.read_bytes())
    assert load_config(path).gateway == "gw-sunrise-01"


def _config(buses: str, devices: str = "[]") -> str:
    return f"gateway = 'gw1'\nbuses = {buses}\ndevices = {devices}\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_config("[{name='a', serial='/dev/pts/0'}, {name='b', serial='/dev/pts/0'}]"),
         "bus 'b': serial = '/dev/pts/0' is the line of bus 'a' (serial = '/dev/pts/0'); two buses on one "
         "line send requests over each other: one line takes one bus, and one protocol"),
        (_config("[{name='mb', serial='/dev/ttyUSB0'}, {name='x', tcp='10.0.0.9:502'}, "
                 "{name='dlt', protocol='dlt645', serial='/dev/ttyUSB0'}]"),
         "bus 'dlt': serial = '/dev/ttyUSB0' is the line of bus 'mb' (serial = '/dev/ttyUSB0')"),
        (_config("[{name='a', rtu_tcp='192.168.1.20:502'}, {name='b', rtu_tcp='192.168.1.20:502'}]"),
         "bus 'b': rtu_tcp = '192.168.1.20:502' is the line of bus 'a' (rtu_tcp = '192.168.1.20:502')"),
        (_config("[{name='a', tcp='GW.local:502'}, {name='b', rtu_tcp='gw.local:502'}]"),
         "bus 'b': rtu_tcp = 'gw.local:502' is the line of bus 'a' (tcp = 'GW.local:502')"),
        (_config("[{name='a', tcp='127.0.0.1:502'}]",
                 "[{name='m1', bus='a', profile='sdm120', household='h1'}, "
                 "{name='fd1', bus='a', profile='fire_detector', device_id=3, household='h1'}, "
                 "{name='m2', bus='a', profile='ddsu666', device_id=2, household='h1'}]"),
         "devices[2] (m2): household 'h1' is already measured by 'm1'; one household has one meter "
         "(both would feed one charging detector, which drops readings older than its last)"),
    ],
)
def test_one_line_one_bus_and_one_meter_per_household(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: {message}")


def test_buses_may_share_a_modbus_tcp_gateway_and_detectors_a_household():
    """A Modbus TCP gateway routes each connection's requests by unit id (a multi-port
    gateway: one bus per serial port behind it); a fire detector reads no power."""
    cfg = parse_config({
        "gateway": "g",
        "buses": [{"name": "port1", "tcp": "10.0.0.5:502"}, {"name": "port2", "tcp": "10.0.0.5:502"}],
        "devices": [{"name": "m1", "bus": "port1", "profile": "sdm120", "household": "h1"},
                    {"name": "fd1", "bus": "port2", "profile": "fire_detector", "device_id": 9, "household": "h1"}],
    })
    assert [b.name for b in cfg.buses] == ["port1", "port2"]


ONE_METER = ("gateway = 'gw1'\nbuses = [{name = 'b', tcp = '127.0.0.1:502'}]\n"
             "devices = [{name = 'm1', bus = 'b', profile = 'sdm120'}]\n")


def test_outbox_folder_on_a_read_only_file_system(tmp_path):
    """check-config refuses an outbox whose folder cannot be written.  As root (who writes
    anywhere else) the folder is a read-only bind mount, and the message says so; as
    another user a folder without write permission."""
    import os
    import stat

    src, ro = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    ro.mkdir()
    (src / "o.sqlite").write_bytes(b"")
    root = os.geteuid() == 0
    if root:
        mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(src), str(ro)], capture_output=True, text=True)
        assert mounted.returncode == 0, f"root could not make a read-only bind mount: {mounted.stderr.strip()}"
        why = ": a read-only file system"
    else:
        (ro / "o.sqlite").write_bytes(b"")
        (ro / "o.sqlite").chmod(stat.S_IRUSR)
        ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
        why = ""
    try:
        path = tmp_path / "c.toml"
        for outbox, problem in [
            (ro / "new.sqlite", f"outbox.path: folder {ro} is not writable{why} "
                                "(the outbox writes new.sqlite and its -wal and -shm files there)"),
            (ro / "o.sqlite", f"outbox.path: folder {ro} is not writable{why}"),
        ]:
            path.write_text(f"{ONE_METER}[outbox]\npath = '{outbox}'\n")
            res = run_cli("check-config", str(path))
            assert res.returncode == 2, res.stdout
            assert f"{path}: {problem}" in res.stderr
        path.write_text(f"{ONE_METER}[outbox]\npath = '{src / 'o.sqlite'}'\n")
        assert run_cli("check-config", str(path)).returncode == 0
    finally:
        if root:
            subprocess.run(["umount", str(ro)], check=True)
        else:
            ro.chmod(stat.S_IRWXU)
