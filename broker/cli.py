"""Server-side commands of ``flylead``: the alert desk, the half-monthly report and broker
credentials.  :func:`register` adds them to the main typer app (flylead/cli.py calls it).

Heavy libraries (Flask, matplotlib, openpyxl) are imported inside the commands, so
``flylead --help`` stays fast.
"""

from __future__ import annotations

import logging
import sys
from datetime import date
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register"]

desk_app = typer.Typer(no_args_is_help=True, help="The alert desk: web app, users, sync from the store.")
broker_app = typer.Typer(no_args_is_help=True, help="Mosquitto credentials, ACLs and configuration.")

DeskDbOpt = Annotated[Path, typer.Option("--db", "--desk-db", help="The desk's SQLite database (created if missing).")]
RegistryOpt = Annotated[Path, typer.Option("--registry", help="Registry of villages, compounds and households (TOML).")]
StoreOpt = Annotated[str, typer.Option("--store", help="The ingest's SQLite store: a file path or sqlite:///PATH.")]
NotifyAgeOpt = Annotated[float, typer.Option("--notify-max-age", min=0, help="Notify only cases whose alert started within this many hours (0: all).")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(code)


def _store_path(store: str) -> Path:
    if store.startswith("sqlite:///"):
        store = store[len("sqlite:///"):]
    elif "://" in store:
        raise _fail(f"--store {store!r}: the desk reads a SQLite store (a path or sqlite:///PATH)")
    return Path(store)


def _registry(path: Path):  # noqa: ANN202
    from broker.desk.registry import RegistryError, load_registry

    try:
        return load_registry(path)
    except RegistryError as exc:
        raise _fail(str(exc)) from None


def _desk(path: Path):  # noqa: ANN202
    from broker.desk.db import DeskDB, DeskError

    try:
        return DeskDB(path)
    except DeskError as exc:
        raise _fail(str(exc)) from None


def _notifier(notify: Path | None, base_url: str | None, max_age_h: float):  # noqa: ANN202
    if notify is None:
        return None
    from broker.notify import Notifier, load_channels

    try:
        return Notifier(load_channels(notify), base_url=base_url,
                        max_age_s=max_age_h * 3600 if max_age_h > 0 else None)
    except ValueError as exc:
        raise _fail(str(exc)) from None


def _date(text: str | None, what: str) -> date | None:
    if text is None:
        return None
    try:
        d = date.fromisoformat(text)
    except ValueError:
        raise _fail(f"{what} must be a date YYYY-MM-DD, got {text!r}") from None
    from broker.desk.registry import CAMPAIGN_YEARS

    if not CAMPAIGN_YEARS[0] <= d.year <= CAMPAIGN_YEARS[1]:
        raise _fail(f"{what} {text}: the year must be {CAMPAIGN_YEARS[0]}-{CAMPAIGN_YEARS[1]}")
    return d


# -- report ---------------------------------------------------------------------------------


def report(
    out: Annotated[Path, typer.Option("--out", help="Output file: .xlsx or .md.")],
    first: Annotated[str | None, typer.Option("--from", help="First day (YYYY-MM-DD, campaign local time). Default: the last half-month period.")] = None,
    last: Annotated[str | None, typer.Option("--to", help="Last day, included (YYYY-MM-DD).")] = None,
    desk_db: Annotated[Path, typer.Option("--db", "--desk-db", help="The desk's SQLite database (must exist).")] = Path("desk.sqlite"),
    registry: Annotated[Path | None, typer.Option("--registry", help="Registry (TOML): lists every village, with zeros, and sets the time zone.")] = None,
) -> None:
    """Half-monthly report per village: alerts, rebounds, dispatched, verified, rectified,
    re-checked, closed and outstanding cases (XLSX or Markdown by the extension of --out).

    Without --from/--to: the period ending on the latest cut-off (the 14th or the 29th,
    or the month's last day if shorter) on or before today."""
    from datetime import datetime

    from broker.report import build_report, campaign_period, write_report

    if out.suffix.lower() not in (".xlsx", ".md"):
        raise _fail(f"--out {out}: the extension must be .xlsx or .md")
    d0, d1 = _date(first, "--from"), _date(last, "--to")
    if (d0 is None) != (d1 is None):
        raise _fail("give both --from and --to, or neither (the last half-month period)")
    if not desk_db.exists():
        raise _fail(f"desk database {desk_db} does not exist")
    reg = _registry(registry) if registry is not None else None
    if d0 is None or d1 is None:
        tz = reg.zone if reg is not None else None
        from zoneinfo import ZoneInfo

        from broker.desk.registry import DEFAULT_TZ

        today = datetime.now(tz or ZoneInfo(DEFAULT_TZ)).date()
        p0, p1 = campaign_period(d1 or today)
        d0, d1 = d0 or p0, d1 or p1
    try:
        rep = build_report(_desk(desk_db), d0, d1, reg)
        write_report(rep, out)
    except (ValueError, OSError) as exc:
        raise _fail(f"report: {exc}") from None
    typer.echo(f"{out}: {d0} to {d1}, {len(rep.rows)} villages, {rep.total['alerts']} alerts, "
               f"{rep.total['outstanding']} outstanding")


# -- desk -------------------------------------------------------------------------------------


@desk_app.command("serve")
def desk_serve(
    registry: RegistryOpt,
    store: StoreOpt,
    db: DeskDbOpt = Path("desk.sqlite"),
    host: Annotated[str, typer.Option(help="Listen address (loopback by default; expose it through a TLS reverse proxy).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0: any free port).")] = 8080,
    sync_every: Annotated[float, typer.Option("--sync-every", min=1, help="Seconds between syncs from the store.")] = 30.0,
    notify: Annotated[Path | None, typer.Option("--notify", help="Notification channels (TOML: wecom, dingtalk, email).")] = None,
    base_url: Annotated[str | None, typer.Option("--base-url", help="Public URL of the desk, for links in notifications.")] = None,
    notify_max_age: NotifyAgeOpt = 24.0,
    mqtt: Annotated[str | None, typer.Option("--mqtt", help="MQTT broker HOST:PORT to send acknowledgements of latched hazard alerts to the gateways (without it they stay queued).")] = None,
    mqtt_user: Annotated[str | None, typer.Option("--mqtt-user", help="Broker user with role desk (writes flylead/v1/+/cmd/#).")] = None,
    mqtt_password_env: Annotated[str, typer.Option("--mqtt-password-env", help="Environment variable holding that user's password.")] = "FLYLEAD_DESK_MQTT_PASSWORD",
    mqtt_ca: Annotated[Path | None, typer.Option("--mqtt-ca", help="CA certificate (PEM): connect with TLS trusting it.")] = None,
    secure_cookies: Annotated[bool, typer.Option("--secure-cookies", help="Mark the session cookie Secure (browsers send it over HTTPS only): set it behind the TLS reverse proxy. Default: FLYLEAD_DESK_SECURE_COOKIES=1 in the environment, else off (the desk itself serves plain HTTP on loopback).")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the alert desk web app, taking new alerts from the store every --sync-every s
    and, with --mqtt, sending acknowledgements of rectified latched alerts to the gateways."""
    import os

    from broker.desk.app import create_app
    from broker.desk.service import SyncLoop, make_server

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    reg, desk, store_path = _registry(registry), _desk(db), _store_path(store)
    notifier = _notifier(notify, base_url, notify_max_age)
    sender = None
    if mqtt is not None:
        from broker.desk.acks import AckSender

        mhost, _, mport = mqtt.rpartition(":")
        if not mhost or not mport.isdigit() or not 0 < int(mport) < 65536:
            raise _fail(f"--mqtt must be HOST:PORT, got {mqtt!r}")
        if mqtt_ca is not None:
            from agent.config import ca_file_problem

            problem = ca_file_problem(mqtt_ca)
            if problem:
                raise _fail(f"--mqtt-ca: {problem}")
        password = os.environ.get(mqtt_password_env) if mqtt_user else None
        if mqtt_user and not password:
            raise _fail(f"--mqtt-user {mqtt_user}: set its password in the environment variable {mqtt_password_env}")
        sender = AckSender(desk, mhost.strip("[]"), int(mport), username=mqtt_user, password=password,
                           tls=mqtt_ca is not None, ca_file=str(mqtt_ca) if mqtt_ca else None)
    app = create_app(desk, reg, store_path=store_path, ack_sender=sender, secure_cookies=secure_cookies or None)
    try:
        server = make_server(app, host, port)
    except OSError as exc:
        raise _fail(str(exc), 1) from None
    sync = SyncLoop(desk, store_path, reg, notifier, sync_every)
    sync.start()
    if sender is not None:
        sender.start()
    typer.echo(f"alert desk on http://{host}:{server.server_port}/ (desk {db}, store {store_path}"
               + (f", acknowledgements to {mqtt})" if sender else ", acknowledgements queued: no --mqtt)"))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        sync.stop()
        if sender is not None:
            sender.stop()
        server.server_close()


@desk_app.command("add-user")
def desk_add_user(
    name: Annotated[str, typer.Argument(help="Login name.")],
    role: Annotated[str, typer.Option(help="office (sees every village) or village.")],
    village: Annotated[str | None, typer.Option(help="The village id, for role village.")] = None,
    db: DeskDbOpt = Path("desk.sqlite"),
    registry: Annotated[Path | None, typer.Option("--registry", help="Check --village against this registry.")] = None,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from the first line of standard input instead of prompting.")] = False,
    replace: Annotated[bool, typer.Option("--replace", help="Update an existing user (new password, role, village).")] = False,
) -> None:
    """Create a desk user (the password is stored argon2id-hashed)."""
    from broker.desk.db import DeskError

    if registry is not None and village is not None and village not in _registry(registry).villages:
        raise _fail(f"village {village!r} is not in registry {registry}")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        user = _desk(db).add_user(name, password, role, village, replace=replace)
    except DeskError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"user {user.username} ({user.role}{', ' + user.village if user.village else ''}) saved in {db}")


@desk_app.command("sync")
def desk_sync(
    registry: RegistryOpt,
    store: StoreOpt,
    db: DeskDbOpt = Path("desk.sqlite"),
    notify: Annotated[Path | None, typer.Option("--notify", help="Notification channels (TOML).")] = None,
    base_url: Annotated[str | None, typer.Option("--base-url", help="Public URL of the desk, for links in notifications.")] = None,
    notify_max_age: NotifyAgeOpt = 24.0,
) -> None:
    """Create a case for each new alert in the store once (idempotent), notify them."""
    from broker.desk.db import DeskError
    from broker.desk.service import sync_once
    from broker.store import StoreError

    notifier = _notifier(notify, base_url, notify_max_age)
    try:
        new = sync_once(_desk(db), _store_path(store), _registry(registry), notifier)
    except (StoreError, DeskError) as exc:
        raise _fail(str(exc), 1) from None
    failed = len(notifier.failures) if notifier else 0
    skipped = len(notifier.skipped) if notifier else 0
    typer.echo(f"{len(new)} new cases" + (f", {skipped} too old to notify" if skipped else "")
               + (f", {failed} notifications failed" if failed else ""))
    if failed:
        raise typer.Exit(1)


# -- broker -----------------------------------------------------------------------------------


PasswdOpt = Annotated[Path, typer.Option("--passwd-file", help="Mosquitto password_file (created if missing).")]
AclOpt = Annotated[Path, typer.Option("--acl-file", help="Mosquitto acl_file (created if missing).")]


@broker_app.command("add-gateway")
def broker_add_gateway(
    name: Annotated[str, typer.Argument(help="Gateway id (its MQTT user name and topic prefix).")],
    passwd_file: PasswdOpt,
    acl_file: AclOpt,
    rotate: Annotated[bool, typer.Option("--rotate", help="Give an existing gateway a new password.")] = False,
) -> None:
    """Add a gateway: a random password (printed once, on the last line) and an ACL that
    lets it publish its own status, telemetry, alert and health topics and read only its
    own commands (flylead/v1/NAME/cmd/#).  Reload mosquitto afterwards (SIGHUP)."""
    from broker.credentials import CredentialsError, add_gateway

    try:
        password = add_gateway(name, passwd_file, acl_file, replace=rotate)
    except CredentialsError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"gateway {name}: user and ACL written to {passwd_file} and {acl_file}; "
               "put this password in the gateway's [mqtt] password, then reload mosquitto:", err=True)
    typer.echo(password)


@broker_app.command("add-user")
def broker_add_user(
    name: Annotated[str, typer.Argument(help="User name.")],
    role: Annotated[str, typer.Option(help="ingest (reads telemetry, alerts, status), monitor (reads everything) or desk (writes flylead/v1/+/cmd/#: acknowledgements).")],
    passwd_file: PasswdOpt,
    acl_file: AclOpt,
    rotate: Annotated[bool, typer.Option("--rotate", help="Give an existing user a new password.")] = False,
) -> None:
    """Add a server-side broker user (ingest and monitor read only; desk writes commands
    only); the password is printed on the last line."""
    from broker.credentials import ROLES, CredentialsError, add_user

    if role not in ROLES:
        raise _fail(f"--role must be one of {sorted(ROLES)}, got {role!r}")
    try:
        password = add_user(name, role, passwd_file, acl_file, replace=rotate)
    except CredentialsError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"user {name} ({role}) written to {passwd_file} and {acl_file}; reload mosquitto:", err=True)
    typer.echo(password)


@broker_app.command("render-config")
def broker_render_config(
    out: Annotated[Path, typer.Option("--out", help="mosquitto.conf to write.")],
    passwd_file: PasswdOpt,
    acl_file: AclOpt,
    cafile: Annotated[Path, typer.Option("--cafile", help="CA certificate (PEM) for the TLS listener.")],
    certfile: Annotated[Path, typer.Option("--certfile", help="Server certificate (PEM).")],
    keyfile: Annotated[Path, typer.Option("--keyfile", help="Server key (PEM).")],
    port: Annotated[int, typer.Option(help="Plain listener port (loopback only).")] = 1883,
    tls_host: Annotated[str, typer.Option(help="TLS listener address (the gateways' side).")] = "0.0.0.0",
    tls_port: Annotated[int, typer.Option(help="TLS listener port.")] = 8883,
    data_dir: Annotated[Path, typer.Option(help="Persistence directory.")] = Path("/var/lib/mosquitto"),
    log_file: Annotated[Path, typer.Option(help="Log file.")] = Path("/var/log/mosquitto/mosquitto.log"),
    run_user: Annotated[str, typer.Option(help="User mosquitto switches to when started as root.")] = "mosquitto",
) -> None:
    """Write a mosquitto.conf from flylead's template (docs/broker.md)."""
    from broker.credentials import CredentialsError, render_config

    try:
        text = render_config(host="127.0.0.1", port=port, tls_host=tls_host, tls_port=tls_port,
                             cafile=cafile, certfile=certfile, keyfile=keyfile, passwd_file=passwd_file,
                             acl_file=acl_file, persistence="true", data_dir=data_dir,
                             log_file=log_file, run_user=run_user)
        out.write_text(text, encoding="utf-8")
    except (CredentialsError, OSError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"{out} written")


def register(app: typer.Typer) -> None:
    """Add ``report`` and the ``desk``, ``broker`` and ``piles`` groups to the ``flylead`` app."""
    from broker.piles_cli import piles_app

    app.command("report")(report)
    app.add_typer(desk_app, name="desk")
    app.add_typer(broker_app, name="broker")
    app.add_typer(piles_app, name="piles")
