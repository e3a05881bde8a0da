"""The alert desk web app (Flask 3): the emergency office and the villages work alerts
to closure here.

Pages (all but the login page need a logged-in user):

    GET  /login, POST /login         log in (username, password; CSRF token)
    POST /logout                     log out
    GET  /                           cases by village and compound (?show=open|closed|all)
    GET  /case/<id>                  one case: alert, load plot, history, the next action
    GET  /case/<id>/plot.png         the household's active power around the alert
    POST /case/<id>/action           apply the next lifecycle action (CSRF token)
    GET  /piles                      pile utilisation per compound, pile and port
                                     (?from=YYYY-MM-DD&to=YYYY-MM-DD, local days, both
                                     included; default the last 7 days); a village user
                                     sees its own village's compounds only

``rectify`` of a case whose latched hazard alert is still open queues an acknowledgement
for its gateway (broker/desk/db.py); the :class:`~broker.desk.acks.AckSender` given to
:func:`create_app` is woken to publish it at once, and the case page shows its state.

Roles: ``office`` sees and works every case; ``village`` only its village's cases: any
other case answers 404, so a village user cannot even learn which case ids exist.

Security: passwords are argon2id hashes (see :mod:`broker.desk.db`); every POST needs the
form's CSRF token (Flask-WTF); the session cookie is HttpOnly and SameSite=Lax, and Secure
with ``secure_cookies`` (behind a TLS proxy); the session holds the user's session token,
checked on every request, which a password change (``add-user --replace``) or a logout
replaces, ending every session of the user (a saved copy of the cookie is then worthless);
pages send a Content-Security-Policy allowing nothing but this origin.  :func:`serve` binds
127.0.0.1 unless told otherwise: put a TLS-terminating reverse proxy in front of it to
expose it.
"""

from __future__ import annotations

import os
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

from flask import Flask, Response, abort, flash, redirect, render_template, request, url_for
from flask_login import LoginManager, UserMixin, current_user, login_required, login_user, logout_user
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFProtect
from wtforms import HiddenField, PasswordField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length, Optional, ValidationError

from broker.desk.db import (ACK_ACTIONS, ACTIONS, KIND_LABELS, MAX_NOTE, MAX_WORKER, NOTE_FORBIDDEN, STATES,
                            WORKER_FORBIDDEN, Case, DeskDB, DeskError, User)
from broker.desk.plot import active_power, plot_window, render_plot
from broker.desk.registry import CAMPAIGN_YEARS, UNASSIGNED, Registry

__all__ = ["SECURE_COOKIES_ENV", "create_app"]

#: Environment variable that turns on ``secure_cookies`` when :func:`create_app` is not
#: told either way ("1", "true", "yes", "on").
SECURE_COOKIES_ENV = "FLYLEAD_DESK_SECURE_COOKIES"

#: Button labels of the lifecycle actions.
ACTION_LABELS = {
    "dispatch": "Dispatch to grid worker",
    "verify": "Verified on site",
    "rectify": "Rectified",
    "recheck": "Re-checked (look back)",
    "close": "Close case",
}


class _LoginUser(UserMixin):
    """The logged-in user; its id, kept in the session, is ``username:session token``."""

    def __init__(self, user: User, token: str) -> None:
        self.user = user
        self.id = f"{user.username}:{token}"


def _no_control(pattern: Any, what: str) -> Any:
    def check(form: FlaskForm, field: Any) -> None:
        if field.data and pattern.search(field.data):
            raise ValidationError(f"{what} must not contain control characters")
    return check


class LoginForm(FlaskForm):
    username = StringField("User", validators=[DataRequired(), Length(max=64)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=200)])


class ActionForm(FlaskForm):
    action = HiddenField(validators=[DataRequired()])
    worker = StringField("Grid worker", validators=[Optional(), Length(max=MAX_WORKER),
                                                    _no_control(WORKER_FORBIDDEN, "the name")])
    note = TextAreaField("Note", validators=[Optional(), Length(max=MAX_NOTE),
                                             _no_control(NOTE_FORBIDDEN, "the note (line breaks and tabs are fine)")])


class LogoutForm(FlaskForm):
    pass


def create_app(db: DeskDB | str | Path, registry: Registry, *, store_path: str | Path | None = None,
               secret_key: str | None = None, config: dict[str, Any] | None = None,
               ack_sender: Any | None = None, secure_cookies: bool | None = None) -> Flask:
    """The desk's Flask app.

    Args:
        db: the desk database (or its file path).
        registry: villages, compounds, households (:func:`broker.desk.registry.load_registry`).
        store_path: the ingest's SQLite store file, read for load plots and pile
            utilisation (None: neither).
        ack_sender: a started :class:`broker.desk.acks.AckSender` (None: acknowledgements
            stay queued in the desk database).
        secret_key: session signing key (default: kept in the desk database).
        config: extra Flask config (tests set e.g. ``WTF_CSRF_ENABLED``).
        secure_cookies: mark the session cookie ``Secure`` (sent over HTTPS only): for a
            desk reached through a TLS-terminating proxy.  None: on if the environment
            variable :data:`SECURE_COOKIES_ENV` says so, else off (the desk itself serves
            plain HTTP on loopback).
    """
    if secure_cookies is None:
        secure_cookies = os.environ.get(SECURE_COOKIES_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    desk = db if isinstance(db, DeskDB) else DeskDB(db)
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secret_key or desk.secret_key(),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=secure_cookies,
        REMEMBER_COOKIE_HTTPONLY=True,
        REMEMBER_COOKIE_SECURE=secure_cookies,
        # a session lasts a working shift (seconds)
        PERMANENT_SESSION_LIFETIME=12 * 3600,
        MAX_CONTENT_LENGTH=64 * 1024,
        DESK=desk,
        REGISTRY=registry,
        STORE_PATH=str(store_path) if store_path else None,
        ACK_SENDER=ack_sender,
    )
    if config:
        app.config.update(config)
    CSRFProtect(app)
    login = LoginManager(app)
    login.login_view = "login"
    login.session_protection = "strong"

    @login.user_loader
    def load_user(user_id: str) -> _LoginUser | None:
        # checked on every request: a password change or a logout since ends the session
        username, sep, token = user_id.partition(":")
        user = desk.session_user(username, token) if sep and token else None
        return _LoginUser(user, token) if user else None

    tz = registry.zone

    @app.template_filter("localtime")
    def localtime(ts: float | None) -> str:
        if ts is None:
            return "—"
        return datetime.fromtimestamp(ts, tz).strftime("%Y-%m-%d %H:%M %Z")

    @app.context_processor
    def helpers() -> dict[str, Any]:
        return dict(registry=registry, kind_label=lambda k: KIND_LABELS.get(k, k),
                    action_labels=ACTION_LABELS, states=STATES, logout_form=LogoutForm())

    @app.after_request
    def headers(resp: Response) -> Response:
        resp.headers["Content-Security-Policy"] = "default-src 'self'; img-src 'self'; frame-ancestors 'none'"
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Referrer-Policy"] = "same-origin"
        return resp

    def me() -> User:
        return current_user.user  # type: ignore[no-any-return]

    def visible_case(case_id: int) -> Case:
        case = desk.case(case_id)
        if case is None or not me().can_see(case.village):
            abort(404)  # the same answer for "not yours" and "does not exist"
        return case

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok\n", mimetype="text/plain")

    @app.route("/login", methods=["GET", "POST"], endpoint="login")
    def login_page() -> Any:
        form = LoginForm()
        if form.validate_on_submit():
            found = desk.login(form.username.data or "", form.password.data or "")
            if found is not None:
                login_user(_LoginUser(*found))
                return redirect(url_for("index"))
            flash("Wrong user name or password.", "error")
        return render_template("login.html", form=form), (401 if request.method == "POST" else 200)

    @app.post("/logout")
    @login_required
    def logout() -> Any:
        if LogoutForm().validate_on_submit():
            desk.end_sessions(me().username)  # a saved copy of the cookie no longer works
            logout_user()
        return redirect(url_for("login"))

    @app.get("/")
    @login_required
    def index() -> Any:
        user = me()
        show = request.args.get("show", "open")
        states = {"open": STATES[:-1], "closed": ("closed",), "all": STATES}.get(show)
        if states is None:
            abort(400)
        villages = None if user.role == "office" else [user.village or ""]
        cases = desk.cases(villages, states)
        groups: dict[str, dict[str | None, list[Case]]] = {}
        for c in cases:
            groups.setdefault(c.village, {}).setdefault(c.compound, []).append(c)
        order = sorted(groups, key=lambda v: (v == UNASSIGNED, registry.village_name(v)))
        return render_template("cases.html", groups=groups, village_order=order, show=show,
                               count=len(cases), user=user)

    @app.get("/case/<int:case_id>")
    @login_required
    def case_page(case_id: int) -> Any:
        case = visible_case(case_id)
        form = ActionForm(action=case.next_action)
        return render_template("case.html", case=case, events=desk.events(case_id), form=form,
                               has_plot=app.config["STORE_PATH"] is not None,
                               acks=desk.acks(case_id),
                               rebound=desk.case(case.rebound_of) if case.rebound_of else None)

    @app.get("/case/<int:case_id>/plot.png")
    @login_required
    def case_plot(case_id: int) -> Response:
        case = visible_case(case_id)
        store_path = app.config["STORE_PATH"]
        if store_path is None:
            abort(404)
        t0, t1 = plot_window(case.alert_start, case.alert_end)
        try:
            points = active_power(store_path, case.gateway, case.device, t0, t1)
        except sqlite3.Error as exc:
            app.logger.error("load plot of case %d: cannot read store %s: %s", case_id, store_path, exc)
            abort(503)
        title = f"{case.household} ({case.device}, {case.gateway})"
        png = render_plot(points, case.alert_start, case.alert_end, tz, title)
        resp = Response(png, mimetype="image/png")
        resp.headers["Cache-Control"] = "private, max-age=60"
        return resp

    @app.get("/piles")
    @login_required
    def piles() -> Any:
        from datetime import date, timedelta

        from broker.piles import LOOKBACK_S, pile_polls_sqlite, pile_utilisation
        from broker.store import StoreError

        store_path = app.config["STORE_PATH"]
        if store_path is None:
            abort(404)
        today = datetime.now(tz).date()
        try:
            last = date.fromisoformat(request.args.get("to") or today.isoformat())
            first = date.fromisoformat(request.args.get("from") or (last - timedelta(days=6)).isoformat())
        except ValueError:
            abort(400)
        lo, hi = CAMPAIGN_YEARS
        if first > last or (last - first).days > 366 or not lo <= first.year <= last.year <= hi:
            abort(400)
        start = datetime(first.year, first.month, first.day, tzinfo=tz).timestamp()
        stop = last + timedelta(days=1)
        end = datetime(stop.year, stop.month, stop.day, tzinfo=tz).timestamp()
        try:
            polls = pile_polls_sqlite(store_path, start - LOOKBACK_S, end)
        except StoreError as exc:
            app.logger.error("pile utilisation: %s", exc)
            abort(503)
        user = me()
        compounds = [c for c in pile_utilisation(polls, start, end, registry)
                     if (c.village is None and user.role == "office")
                     or (c.village is not None and user.can_see(c.village))]
        return render_template("piles.html", compounds=compounds, first=first, last=last, user=user)

    @app.post("/case/<int:case_id>/action")
    @login_required
    def case_action(case_id: int) -> Any:
        case = visible_case(case_id)
        form = ActionForm()
        if not form.validate_on_submit():
            if "csrf_token" in form.errors or "action" in form.errors:
                abort(400)
            # the case page again, naming the field and what is wrong with it
            for name, errors in form.errors.items():
                flash(f"{form[name].label.text}: {'; '.join(errors)}", "error")
            return case_page(case_id), 400
        action = form.action.data or ""
        if action not in ACTIONS:
            abort(400)
        try:
            desk.transition(case.id, action, me().username, note=form.note.data or "",
                            worker=form.worker.data)
        except DeskError as exc:  # TransitionError too: e.g. someone else moved it on
            flash(str(exc), "error")
            return redirect(url_for("case_page", case_id=case_id), code=303)
        flash(f"Case {case_id}: {ACTION_LABELS[action].lower()}.", "ok")
        sender = app.config["ACK_SENDER"]
        if sender is not None and action in ACK_ACTIONS:
            sender.wake()
        return redirect(url_for("case_page", case_id=case_id), code=303)

    return app
