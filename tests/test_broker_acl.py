"""Mosquitto with flylead's credentials, ACLs and TLS: a private broker per test module.

The broker is the real /usr/sbin/mosquitto, started on free loopback ports with a config
rendered from broker/mosquitto/flylead.conf.template, a password file and an ACL file
written by broker.credentials, and a throwaway CA and server certificate made here with
the ``cryptography`` package.  Clients are paho-mqtt 2.x, MQTT 5 (so a denied publish
comes back as a PUBACK with reason code 135, "Not authorized").
"""

from __future__ import annotations

import datetime as dt
import getpass
import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from broker.credentials import add_gateway, add_user, render_config

MOSQUITTO = "/usr/sbin/mosquitto"
WAIT_S = 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_ca_and_server_cert(directory: Path, name: str = "flylead-test") -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost signed by it
    (EC P-256, valid one day); (ca.crt, server.crt, server.key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / f"{name}-ca.crt", directory / f"{name}-server.crt", directory / f"{name}-server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


class PrivateMosquitto:
    """A real mosquitto on free loopback ports with flylead's template, users and TLS.

    ``users`` maps user name -> role (``gateway``, ``ingest``, ``monitor``); passwords are
    generated and kept in :attr:`passwords`.  :meth:`restart` keeps the ports.
    """

    def __init__(self, directory: Path, users: dict[str, str], *, persistence: bool = False) -> None:
        if not Path(MOSQUITTO).exists():
            pytest.fail(f"{MOSQUITTO} missing: run .ci/services.sh (installs mosquitto)")
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port, self.tls_port = _free_port(), _free_port()
        self.passwd, self.acl = directory / "passwd", directory / "acl"
        self.passwords = {name: add_user(name, role, self.passwd, self.acl)
                          for name, role in users.items() if role != "gateway"}
        self.passwords |= {name: add_gateway(name, self.passwd, self.acl)
                           for name, role in users.items() if role == "gateway"}
        self.ca, cert, key = make_ca_and_server_cert(directory)
        self.log = directory / "mosquitto.log"
        (directory / "data").mkdir(exist_ok=True)
        self.conf = directory / "mosquitto.conf"
        self.conf.write_text(render_config(
            host=self.host, port=self.port, tls_host=self.host, tls_port=self.tls_port,
            cafile=self.ca, certfile=cert, keyfile=key, passwd_file=self.passwd, acl_file=self.acl,
            persistence="true" if persistence else "false", data_dir=directory / "data",
            log_file=self.log, run_user=getpass.getuser()))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + WAIT_S
        for port in (self.port, self.tls_port):
            while True:
                try:
                    socket.create_connection((self.host, port), timeout=0.5).close()
                    break
                except OSError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        err = self.proc.stderr.read().decode() if self.proc.poll() is not None else ""
                        log = self.log.read_text() if self.log.exists() else ""
                        self.stop()
                        pytest.fail(f"private mosquitto ({self.conf}) not listening on {self.host}:{port}: {err}{log}")
                    time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WAIT_S)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> PrivateMosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Client:
    """A paho 2.x MQTT 5 client logged in as ``user`` of a :class:`PrivateMosquitto`.

    Attributes: ``connect_rc`` (CONNACK reason code value), ``messages`` ((topic,
    payload) received), ``acks`` (mid -> PUBACK reason code value).
    """

    def __init__(self, broker: PrivateMosquitto, user: str | None, *, password: str | None = None,
                 tls: bool = False, ca: Path | None = None, expect_ok: bool = True) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.acks: dict[int, int] = {}
        self.suback: list[int] = []
        self.connect_rc: int | None = None
        self._connected = threading.Event()
        self._acked = threading.Condition()
        self._subscribed = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{user or 'anon'}-{time.monotonic_ns()}",
                        protocol=MQTTProtocolVersion.MQTTv5)
        if user is not None:
            c.username_pw_set(user, password if password is not None else broker.passwords[user])
        if tls:
            c.tls_set(ca_certs=str(ca or broker.ca))
        c.on_connect = self._on_connect
        c.on_message = lambda cl, ud, m: self.messages.append((m.topic, m.payload))
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        self.client = c
        c.connect(broker.host, broker.tls_port if tls else broker.port, keepalive=10)
        c.loop_start()
        assert self._connected.wait(WAIT_S), f"no CONNACK for {user}"
        if expect_ok:
            assert self.connect_rc == 0, f"{user} refused: reason code {self.connect_rc}"

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:  # noqa: ANN001
        self.connect_rc = reason.value
        self._connected.set()
        if reason.is_failure:
            client.disconnect()  # no reconnect attempts with bad credentials

    def _on_publish(self, client, userdata, mid, reason, properties) -> None:  # noqa: ANN001
        with self._acked:
            self.acks[mid] = reason.value
            self._acked.notify_all()

    def _on_subscribe(self, client, userdata, mid, reasons, properties) -> None:  # noqa: ANN001
        self.suback = [r.value for r in reasons]
        self._subscribed.set()

    def publish(self, topic: str, payload: bytes = b"{}", *, retain: bool = False) -> int:
        """Publish at QoS 1; the PUBACK reason code (0 ok, 135 not authorized)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        with self._acked:
            assert self._acked.wait_for(lambda: info.mid in self.acks, WAIT_S), f"no PUBACK for {topic}"
            return self.acks[info.mid]

    def subscribe(self, topic: str) -> list[int]:
        """Subscribe at QoS 1; the SUBACK reason codes."""
        self._subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self._subscribed.wait(WAIT_S), f"no SUBACK for {topic}"
        return self.suback

    def wait_messages(self, n: int) -> list[tuple[str, bytes]]:
        deadline = time.monotonic() + WAIT_S
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


NOT_AUTHORIZED = 135  # MQTT 5 reason code 0x87
BAD_CREDENTIALS = 134  # MQTT 5 reason code 0x86, "Bad User Name or Password"
USERS = {"gw-a": "gateway", "gw-b": "gateway", "flylead-ingest": "ingest", "ops": "monitor"}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateMosquitto]:
    with PrivateMosquitto(tmp_path_factory.mktemp("mosquitto"), USERS) as b:
        yield b


def test_gateway_publishes_only_under_its_own_prefix(broker: PrivateMosquitto) -> None:
    ops = Client(broker, "ops")
    gw = Client(broker, "gw-a")
    try:
        assert ops.subscribe("flylead/v1/#") == [1]
        assert gw.publish("flylead/v1/gw-a/telemetry/meter-1", b"own") == 0
        assert gw.publish("flylead/v1/gw-a/alert/h01", b"own alert") == 0
        # into another gateway's prefix, outside the scheme, a wildcard-looking root
        assert gw.publish("flylead/v1/gw-b/alert/h01", b"forged alert") == NOT_AUTHORIZED
        assert gw.publish("flylead/v1/gw-b/status", b'{"state":"offline"}', retain=True) == NOT_AUTHORIZED
        assert gw.publish("flylead/v1/gw-ab/telemetry/meter-1", b"prefix trick") == NOT_AUTHORIZED
        assert gw.publish("flylead/v2/gw-a/telemetry/meter-1", b"other version") == NOT_AUTHORIZED
        assert gw.publish("$SYS/broker/forged", b"x") == NOT_AUTHORIZED
        # a marker after the denied ones: once it arrives, anything forged would have too
        assert gw.publish("flylead/v1/gw-a/status", b"marker") == 0
        got = ops.wait_messages(3)
        time.sleep(0.2)
        assert ops.messages == got == [("flylead/v1/gw-a/telemetry/meter-1", b"own"),
                                       ("flylead/v1/gw-a/alert/h01", b"own alert"),
                                       ("flylead/v1/gw-a/status", b"marker")]
    finally:
        gw.close()
        ops.close()


def test_gateway_reads_nothing(broker: PrivateMosquitto) -> None:
    ops = Client(broker, "ops")
    spy = Client(broker, "gw-a")
    other = Client(broker, "gw-b")
    try:
        for topic in ("flylead/v1/#", "flylead/v1/+/alert/+", "flylead/v1/gw-a/#", "#"):
            spy.subscribe(topic)  # granted or not, nothing may be delivered
        ops.subscribe("flylead/v1/#")
        assert other.publish("flylead/v1/gw-b/alert/h07", b"alert of b") == 0
        assert spy.publish("flylead/v1/gw-a/alert/h01", b"alert of a") == 0
        assert other.publish("flylead/v1/gw-b/status", b"online", retain=True) == 0
        assert len(ops.wait_messages(3)) == 3
        time.sleep(0.3)
        assert spy.messages == []
        # a retained message is not handed out to a new gateway subscription either
        late = Client(broker, "gw-a")
        late.subscribe("flylead/v1/gw-b/status")
        time.sleep(0.3)
        assert late.messages == []
        late.close()
        assert other.publish("flylead/v1/gw-b/status", b"", retain=True) == 0  # clear it
    finally:
        for c in (ops, spy, other):
            c.close()


def test_bad_credentials_and_anonymous_are_refused(broker: PrivateMosquitto) -> None:
    wrong = Client(broker, "gw-a", password="not-the-password", expect_ok=False)
    assert wrong.connect_rc in (BAD_CREDENTIALS, NOT_AUTHORIZED)
    wrong.close()
    impostor = Client(broker, "gw-b", password=broker.passwords["gw-a"], expect_ok=False)
    assert impostor.connect_rc in (BAD_CREDENTIALS, NOT_AUTHORIZED)
    impostor.close()
    anonymous = Client(broker, None, expect_ok=False)
    assert anonymous.connect_rc in (BAD_CREDENTIALS, NOT_AUTHORIZED)
    anonymous.close()


def test_ingest_user_reads_through_the_acl_and_cannot_write(broker: PrivateMosquitto, tmp_path: Path) -> None:
    from agent.schema import alert_topic, telemetry_topic
    from broker import Ingest, SqliteStore
    from tests.conftest import MsgFactory

    store = SqliteStore(tmp_path / "acl.sqlite")
    ingest = Ingest(store, broker.host, broker.port, client_id="ingest-acl", protocol="5",
                    username="flylead-ingest", password=broker.passwords["flylead-ingest"],
                    session_expiry_s=10)
    ingest.start()
    gw = Client(broker, "gw-a")
    writer = Client(broker, "flylead-ingest")
    try:
        m = MsgFactory("gw-a")
        tel, alert = m.telemetry(), m.alert("gw-a:h1:1", household="h1")
        assert gw.publish(telemetry_topic("gw-a", tel.device), tel.model_dump_json().encode()) == 0
        assert gw.publish(alert_topic("gw-a", "h1"), alert.model_dump_json().encode()) == 0
        assert ingest.wait_for(lambda: ingest.stored == 2), ingest
        assert store.alerts() == [alert] and store.telemetry_count() == 1
        # the ingest's credentials cannot inject alerts
        forged = m.alert("forged", household="h1")
        assert writer.publish(alert_topic("gw-a", "h1"), forged.model_dump_json().encode()) == NOT_AUTHORIZED
        time.sleep(0.2)
        assert ingest.accepted == 2
    finally:
        ingest.stop()
        gw.close()
        writer.close()
        store.close()


def test_tls_listener(broker: PrivateMosquitto, tmp_path: Path) -> None:
    ops = Client(broker, "ops")
    ops.subscribe("flylead/v1/+/telemetry/+")
    gw = Client(broker, "gw-a", tls=True)
    try:
        assert gw.client.socket() is not None and isinstance(gw.client.socket(), ssl.SSLSocket)
        assert gw.publish("flylead/v1/gw-a/telemetry/meter-1", b"over tls") == 0
        assert gw.publish("flylead/v1/gw-b/telemetry/meter-1", b"forged over tls") == NOT_AUTHORIZED
        assert ops.wait_messages(1) == [("flylead/v1/gw-a/telemetry/meter-1", b"over tls")]
    finally:
        gw.close()
        ops.close()
    # a client that does not trust the broker's CA cannot connect
    other_ca, _, _ = make_ca_and_server_cert(tmp_path, "stranger")
    with pytest.raises(ssl.SSLCertVerificationError):
        Client(broker, "gw-a", tls=True, ca=other_ca)


def test_add_gateway_command_and_reload(broker: PrivateMosquitto, tmp_path: Path) -> None:
    """`flylead broker add-gateway` on the live files, then SIGHUP: the new gateway
    connects and is confined like the others; adding it again fails until --rotate."""
    import signal

    from typer.testing import CliRunner

    from flylead.cli import app

    runner = CliRunner()
    args = ["broker", "add-gateway", "gw-new", "--passwd-file", str(broker.passwd),
            "--acl-file", str(broker.acl)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    password = result.stdout.strip().splitlines()[-1]
    assert len(password) == 32
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "already in" in again.output
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGHUP)  # mosquitto reloads password and ACL files
    deadline = time.monotonic() + WAIT_S
    while True:
        c = Client(broker, "gw-new", password=password, expect_ok=False)
        if c.connect_rc == 0 or time.monotonic() > deadline:
            break
        c.close()
        time.sleep(0.1)
    try:
        assert c.connect_rc == 0
        assert c.publish("flylead/v1/gw-new/status", b"online") == 0
        assert c.publish("flylead/v1/gw-a/status", b"offline") == NOT_AUTHORIZED
    finally:
        c.close()
    rotated = runner.invoke(app, [*args, "--rotate"])
    assert rotated.exit_code == 0, rotated.output
    assert rotated.stdout.strip().splitlines()[-1] != password


def test_password_hash_matches_mosquitto_passwd(tmp_path: Path) -> None:
    """The hash format written by broker.credentials is what mosquitto_passwd writes."""
    from broker.credentials import hash_password, verify_password

    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not Path(tool).exists():
        pytest.fail("mosquitto_passwd missing: run .ci/services.sh (installs mosquitto)")
    subprocess.run([tool, "-c", "-b", str(tmp_path / "p"), "someone", "s3cret:pw"], check=True)
    encoded = (tmp_path / "p").read_text().strip().split(":", 1)[1]
    assert encoded.startswith("$7$101$")
    assert verify_password("s3cret:pw", encoded) and not verify_password("s3cret", encoded)
    mine = hash_password("pw", salt=b"\x00" * 12)
    assert mine == hash_password("pw", salt=b"\x00" * 12) and verify_password("pw", mine)


def test_credential_and_config_files_are_checked_before_writing(tmp_path: Path) -> None:
    """No folder is created for a mistyped path, one file cannot be both the password and
    the ACL file, and the rendered mosquitto.conf takes no line break, bad or shared port,
    or empty TLS host (each would give a file mosquitto refuses, or lines nobody wrote)."""
    from typer.testing import CliRunner

    from broker.credentials import CredentialsError, add_gateway, render_config
    from flylead.cli import app

    with pytest.raises(CredentialsError, match="folder .*nonexistent-dir does not exist"):
        add_gateway("gw-1", tmp_path / "nonexistent-dir" / "passwd", tmp_path / "acl")
    assert not (tmp_path / "nonexistent-dir").exists() and not (tmp_path / "acl").exists()
    with pytest.raises(CredentialsError, match="both .*same; give two files"):
        add_gateway("gw-1", tmp_path / "same", tmp_path / "same")
    assert not (tmp_path / "same").exists()
    base = dict(host="127.0.0.1", port=1883, tls_host="0.0.0.0", tls_port=8883, cafile="ca", certfile="c",
                keyfile="k", passwd_file="p", acl_file="a", persistence="true", data_dir="d", log_file="l",
                run_user="mosquitto")
    assert "listener 8883 0.0.0.0" in render_config(**base)
    for change, message in ((dict(port=99999), "port must be 1-65535"), (dict(tls_port=-1), "tls_port must be"),
                            (dict(tls_port=1883), "both 1883"), (dict(tls_host=""), "tls_host must not be empty"),
                            (dict(run_user="mosquitto\ninclude_dir /tmp"), "run_user: .* line break")):
        with pytest.raises(CredentialsError, match=message):
            render_config(**(base | change))
    out = tmp_path / "m.conf"
    res = CliRunner().invoke(app, ["broker", "render-config", "--out", str(out), "--passwd-file", "p",
                                   "--acl-file", "a", "--cafile", "ca", "--certfile", "c", "--keyfile", "k",
                                   "--port", "99999"])
    assert res.exit_code != 0 and "port must be 1-65535" in res.output and not out.exists()
