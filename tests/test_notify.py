"""Notifications against real receivers on loopback: an HTTP server standing in for the
WeCom and DingTalk robot endpoints (it checks DingTalk's signature itself), and an
aiosmtpd SMTP server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from email import message_from_bytes
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from broker.notify import (
    DingTalkRobot,
    Message,
    Notifier,
    NotifyError,
    SmtpMailer,
    WeComRobot,
    case_message,
    load_channels,
)

FAST = {"retry_wait_s": 0.01, "timeout_s": 5.0}
SECRET = "SEC0123456789abcdef"
MSG = Message("e-bike charging, East Village", "- household: e101\n- since: 2026-01-15 20:00 CST")


class Receiver:
    """An HTTP server on 127.0.0.1 that records POSTs and answers from a script:
    ``answers`` is a list of (status, JSON body); the last one repeats."""

    def __init__(self, answers: list[tuple[int, dict]] | None = None) -> None:
        self.answers = answers or [(200, {"errcode": 0, "errmsg": "ok"})]
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                parts = urllib.parse.urlsplit(self.path)
                outer.requests.append({"path": parts.path, "query": urllib.parse.parse_qs(parts.query),
                                       "raw_query": parts.query,
                                       "content_type": self.headers["Content-Type"], "json": json.loads(body)})
                status, answer = outer.answers[min(len(outer.requests), len(outer.answers)) - 1]
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_wecom_markdown_payload(receiver: Receiver) -> None:
    WeComRobot(f"{receiver.url}/cgi-bin/webhook/send?key=abc", **FAST).send(MSG)
    (req,) = receiver.requests
    assert req["path"] == "/cgi-bin/webhook/send" and req["query"] == {"key": ["abc"]}
    assert req["content_type"] == "application/json; charset=utf-8"
    assert req["json"] == {"msgtype": "markdown", "markdown": {"content": (
        "**e-bike charging, East Village**\n\n- household: e101\n- since: 2026-01-15 20:00 CST")}}


def test_dingtalk_signed_markdown_payload(receiver: Receiver) -> None:
    robot = DingTalkRobot(f"{receiver.url}/robot/send?access_token=tok", SECRET,
                          clock=lambda: 1_768_478_400.123, **FAST)
    robot.send(MSG)
    (req,) = receiver.requests
    assert req["query"]["access_token"] == ["tok"] and req["query"]["timestamp"] == ["1768478400123"]
    # the receiver checks the signature as DingTalk documents it
    expected = base64.b64encode(hmac.new(SECRET.encode(), f"1768478400123\n{SECRET}".encode(),
                                         hashlib.sha256).digest()).decode()
    assert req["query"]["sign"] == [expected]
    assert "sign=" + urllib.parse.quote_plus(expected) in req["raw_query"]
    assert req["json"] == {"msgtype": "markdown", "markdown": {
        "title": "e-bike charging, East Village",
        "text": "### e-bike charging, East Village\n\n- household: e101\n- since: 2026-01-15 20:00 CST"}}
    unsigned = Receiver()
    try:
        DingTalkRobot(f"{unsigned.url}/robot/send?access_token=tok", **FAST).send(MSG)
        assert unsigned.requests[0]["query"] == {"access_token": ["tok"]}
    finally:
        unsigned.close()


def test_transient_failures_are_retried() -> None:
    r = Receiver([(503, {}), (200, {"errcode": 45009, "errmsg": "api freq out of limit"}),
                  (200, {"errcode": 0, "errmsg": "ok"})])
    try:
        WeComRobot(f"{r.url}/send?key=k", **FAST).send(MSG)
        assert len(r.requests) == 3
    finally:
        r.close()


def test_permanent_failures_are_not_retried_and_name_the_channel() -> None:
    r = Receiver([(200, {"errcode": 310000, "errmsg": "sign not match"})])
    try:
        with pytest.raises(NotifyError, match=r"dingtalk http://127\.0\.0\.1:\d+/robot/send\?…: errcode 310000: sign not match"):
            DingTalkRobot(f"{r.url}/robot/send?access_token=secret-token", SECRET, **FAST).send(MSG)
        assert len(r.requests) == 1
    finally:
        r.close()
    r = Receiver([(404, {})])
    try:
        with pytest.raises(NotifyError, match="HTTP 404"):
            WeComRobot(f"{r.url}/send?key=k", **FAST).send(MSG)
        assert len(r.requests) == 1
    finally:
        r.close()


def test_gives_up_after_three_attempts() -> None:
    r = Receiver([(200, {"errcode": 130101, "errmsg": "send too fast"})])
    try:
        with pytest.raises(NotifyError, match="errcode 130101"):
            DingTalkRobot(f"{r.url}/robot/send?access_token=t", **FAST).send(MSG)
        assert len(r.requests) == 3
    finally:
        r.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    with pytest.raises(NotifyError, match=f"wecom http://127.0.0.1:{port}/send"):
        WeComRobot(f"http://127.0.0.1:{port}/send?key=k", **FAST).send(MSG)


# -- e-mail -------------------------------------------------------------------------------


class MailHandler:
    """aiosmtpd handler: records envelopes; answers 451 to the first ``fail`` DATA commands."""

    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.attempts = 0
        self.mails: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: ANN001, N802
        self.attempts += 1
        if self.attempts <= self.fail:
            return "451 4.3.0 try again later"
        self.mails.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[int, MailHandler]]:
    from aiosmtpd.controller import Controller

    handler = MailHandler(fail=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, handler
    finally:
        controller.stop()


def test_email_is_delivered_after_a_temporary_refusal(smtp: tuple[int, MailHandler]) -> None:
    port, handler = smtp
    SmtpMailer("127.0.0.1", port, "desk@flylead.test", ["office@flylead.test", "east@flylead.test"],
               **FAST).send(MSG)
    assert handler.attempts == 2
    ((sender, rcpts, content),) = handler.mails
    assert sender == "desk@flylead.test" and rcpts == ["office@flylead.test", "east@flylead.test"]
    mail = message_from_bytes(content, policy=default_policy)
    assert mail["Subject"] == "e-bike charging, East Village"
    assert mail["To"] == "office@flylead.test, east@flylead.test"
    assert mail.get_content().replace("\r\n", "\n") == "- household: e101\n- since: 2026-01-15 20:00 CST\n"


# -- new cases to channels ------------------------------------------------------------------


def test_new_cases_go_to_their_villages_channels(tmp_path: Path, smtp: tuple[int, MailHandler],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`flylead desk sync --notify`: 4 new cases; the East robot gets East's two, the
    office robot and the mailbox get all four, a robot that refuses fails alone."""
    from typer.testing import CliRunner

    from broker.desk import load_registry
    from flylead.cli import app
    from tests.test_desk import build_scenario

    port, handler = smtp
    handler.fail = 0
    sc = build_scenario(tmp_path)
    east, office = Receiver(), Receiver()
    broken = Receiver([(200, {"errcode": 300001, "errmsg": "token is not exist"})])  # refused for good
    monkeypatch.setenv("FLYLEAD_TEST_DINGTALK_SECRET", SECRET)
    conf = tmp_path / "notify.toml"
    conf.write_text(f"""
[[wecom]]
url = "{east.url}/east?key=e"
villages = ["east"]

[[dingtalk]]
url = "{office.url}/office?access_token=o"
secret_env = "FLYLEAD_TEST_DINGTALK_SECRET"

[[dingtalk]]
url = "{broken.url}/broken?access_token=d"

[[email]]
host = "127.0.0.1"
port = {port}
sender = "desk@flylead.test"
to = ["office@flylead.test"]
""")
    try:
        channels = load_channels(conf, **FAST)
        assert [c.name.split(" ")[0] for c in channels] == ["wecom", "dingtalk", "dingtalk", "email"]
        result = CliRunner().invoke(app, ["desk", "sync", "--db", str(tmp_path / "n.sqlite"),
                                          "--registry", str(sc.registry_path), "--store", str(sc.store_path),
                                          "--notify", str(conf), "--base-url", "https://desk.example/",
                                          "--notify-max-age", "0"])
        assert result.exit_code == 1, result.output
        assert result.stdout.strip() == "4 new cases, 4 notifications failed"
        titles = [r["json"]["markdown"]["content"].split("\n")[0] for r in east.requests]
        assert titles == ["**e-bike charging (flying lead), East Village**", "**overload, East Village**"]
        assert len(office.requests) == 4 and all(r["query"]["sign"] for r in office.requests)
        assert "[Case #1](https://desk.example/case/1)" in office.requests[0]["json"]["markdown"]["text"]
        assert len(handler.mails) == 4
        assert len(broken.requests) == 4  # one attempt per case: not worth retrying
    finally:
        east.close()
        office.close()
        broken.close()
    reg = load_registry(sc.registry_path)
    rebound = sc.desk.case(sc.cases["w201"])
    msg = case_message(rebound, reg, None)
    assert msg.title == "e-bike charging (flying lead), West Village"
    assert msg.text.splitlines()[:3] == ["- village: West Village", "- compound: Willow Court",
                                         "- household: w201 (meter meter-w201)"]


def test_channel_config_errors_name_the_entry(tmp_path: Path) -> None:
    conf = tmp_path / "n.toml"
    conf.write_text('[[dingtalk]]\nurl = "http://127.0.0.1:1/x"\nsecret_env = "FLYLEAD_UNSET_VARIABLE"\n')
    with pytest.raises(ValueError, match=r"\[\[dingtalk\]\] #1: environment variable 'FLYLEAD_UNSET_VARIABLE'"):
        load_channels(conf)
    conf.write_text('[[email]]\nhost = "h"\nsender = "a@b"\n')
    with pytest.raises(ValueError, match=r"\[\[email\]\] #1: missing 'to'"):
        load_channels(conf)
    conf.write_text('[[slack]]\nurl = "x"\n')
    with pytest.raises(ValueError, match=r"unknown sections \['slack'\]"):
        load_channels(conf)
    # strict types: a string is not read as a list of its letters, nor "false" as true
    for body, message in (('to = "c@d"\n', r"\[\[email\]\] #1: to: Input should be a valid list"),
                          ('to = ["c@d"]\nvillages = "east"\n', r"#1: villages: Input should be a valid list"),
                          ('to = ["c@d"]\nssl = "false"\n', r"#1: ssl: Input should be a valid boolean"),
                          ('to = ["c@d"]\nport = 99999\n', r"#1: port: Input should be less than or equal to 65535"),
                          ('to = ["c@d"]\nport = "abc"\n', r"#1: port: Input should be a valid integer"),
                          ('to = ["c@d"]\nwecom = "x"\n', r"#1: unknown key 'wecom'")):
        conf.write_text('[[email]]\nhost = "h"\nsender = "a@b"\n' + body)
        with pytest.raises(ValueError, match=message):
            load_channels(conf)
    assert Notifier([]).notify([], None) == 0


def test_old_cases_are_not_sent(tmp_path: Path, receiver: Receiver) -> None:
    """A first sync of a store full of old alerts does not flood the group chat."""
    from broker.desk import load_registry
    from tests.conftest import T0
    from tests.test_desk import build_scenario

    sc = build_scenario(tmp_path)
    cases = sc.desk.cases()
    notifier = Notifier([WeComRobot(f"{receiver.url}/send?key=k", **FAST)])  # max age: a day
    assert notifier.notify(cases, load_registry(sc.registry_path), now=T0 + 86400 + 1000) == 0
    # started T0 .. T0+1800: only those within the day before now are sent
    assert sorted(notifier.skipped) == sorted(c.id for c in cases if c.alert_start < T0 + 1000)
    assert len(receiver.requests) == len(notifier.sent) == 2
