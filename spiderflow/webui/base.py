"""The request handlers' base classes: sessions, authentication, request guards, headers, errors.

Every browser gets a signed session cookie (``spiderflow_session``: a random id, the time
it was issued, a digest of the credentials and, once logged in, the user name; HttpOnly,
SameSite=Lax, and Secure over HTTPS or with ``cookie_secure``); the xsrf token is bound to
that id, and state-changing requests must come from the web UI's own pages (see
:mod:`.guard`). A cookie issued under other credentials, revoked by a logout or older than
``session_max_age`` (when logged in) is ignored (see :class:`~.auth.Sessions`). A wrong
basic-auth password or bearer token counts against the client, which past the limit is
answered 429 with ``Retry-After`` (see :class:`~.auth.LoginLimiter`). :class:`PageHandler` renders
templates (errors as an HTML page, a login redirect when credentials are needed);
:class:`ApiHandler` speaks JSON (errors as ``{"error": message}`` with the status code,
401 when credentials are needed, 415 for a body that is not JSON). Both find the web UI's
components in ``self.state`` (a :class:`~spiderflow.webui.app.WebUIState`).
"""

from __future__ import annotations

import json
import logging
import math
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

import tornado.escape
import tornado.web

from ..exceptions import InvalidProjectName
from ..message import validate_project_name
from ..settings import is_loopback
from . import guard
from .helpers import (
    error_message,
    fail,
    fmt_time,
    json_script,
    path_escape,
    pretty_json,
    safe_href,
)
from .projects import is_locked

if TYPE_CHECKING:
    from .app import WebUIState
    from .auth import Auth

logger = logging.getLogger(__name__)

#: Our pages load scripts and styles only from /static; a debugged page shown in the
#: sandboxed iframe inherits this policy, so it may show remote images and styles but never run a script.
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline' http: https:; "
            "img-src 'self' data: http: https:; font-src 'self' data: http: https:; connect-src 'self'; "
            "object-src 'none'; frame-ancestors 'self'; form-action 'self'")
API_CSP = "default-src 'none'; frame-ancestors 'none'"


SESSION_COOKIE = "spiderflow_session"
#: How long a session without a user (it only carries the xsrf token) lasts.
SESSION_DAYS = 7


class BaseHandler(tornado.web.RequestHandler):
    #: True: usable without logging in (the login page itself)
    public = False
    _bearer = False
    _session: Any = False      # (id, user, issued), None, or False: not read yet
    #: seconds for ``Retry-After`` (set before answering 429; kept by send_error, which calls set_default_headers)
    retry_after = 0

    @property
    def state(self) -> WebUIState:
        return self.application.settings["spiderflow"]

    @property
    def auth(self) -> Auth:
        return self.state.auth

    # -- the session -------------------------------------------------------------------------
    def session(self) -> tuple[str, str, int] | None:
        """``(session id, user, issued)`` from the signed session cookie (user ``""`` when not logged
        in), or None: also for a cookie of other credentials, revoked, or past its age."""
        if self._session is False:
            self._session = None
            sessions = self.auth.sessions
            days = max(SESSION_DAYS, sessions.max_age / 86400)
            value = self.get_signed_cookie(SESSION_COOKIE, max_age_days=days)
            parts = value.decode("utf-8", "replace").split(":", 3) if value else []
            if len(parts) == 4 and len(parts[0]) == 32 and parts[1].isdigit():
                sid, issued, binding, user = parts
                if (guard.same_token(binding, sessions.binding(self.application.settings["cookie_secret"]))
                        and sessions.valid(sid, int(issued), bool(user))):
                    self._session = (sid, user, int(issued))
        return self._session

    def start_session(self, user: str = "") -> str:
        """A new session (for *user*, after a login) in a new signed cookie; its id."""
        sessions = self.auth.sessions
        sid, issued = guard.new_session_id(), int(time.time())
        binding = sessions.binding(self.application.settings["cookie_secret"])
        secure = self.request.protocol == "https" or self.state.settings.cookie_secure
        self.set_signed_cookie(SESSION_COOKIE, f"{sid}:{issued}:{binding}:{user}",
                               expires_days=sessions.max_age / 86400 if user else SESSION_DAYS,
                               httponly=True, samesite="Lax", secure=secure)
        self._session = (sid, user, issued)
        return sid

    def end_session(self) -> None:
        """Log out: the session's id is revoked here, so a copy of its cookie is worthless too."""
        session = self.session()
        if session:
            self.auth.sessions.revoke(session[0], session[2])
        self.clear_cookie(SESSION_COOKIE)
        self._session = None

    @property
    def xsrf_token(self) -> bytes:
        """The token of this browser's session (starting one if it has none): an HMAC of the session id."""
        session = self.session()
        sid = session[0] if session else self.start_session()
        return guard.xsrf_token(self.application.settings["cookie_secret"], sid).encode()

    # -- who is asking ---------------------------------------------------------------------
    def get_current_user(self) -> str | None:
        """The logged-in user, or None (always None when no credentials are configured)."""
        auth = self.auth
        if not auth.enabled:
            return None
        header = self.request.headers.get("Authorization", "")
        if header:
            user = self.authorize(header)
            if user:
                return user
        session = self.session()
        return session[1] if session and session[1] else None

    def authorize(self, header: str) -> str | None:
        """The user of a basic-auth or bearer *header*, or None; every wrong one counts against the
        client, which past the limit is refused (429) without a look at what it sent."""
        scheme = header.partition(" ")[0].lower()
        if scheme not in ("basic", "bearer"):
            return None
        auth, address = self.auth, self.request.remote_ip
        wait = auth.limiter.wait(address)
        if wait:
            self._current_user = None          # the error page asks again
            self.retry_after = math.ceil(wait)
            raise fail(429, f"too many failed logins from your address: try again in {self.retry_after} s")
        if scheme == "bearer" and auth.bearer(header):
            self._bearer = True
            user = "token"
        else:
            user = auth.basic(header) if scheme == "basic" else None
        if user:
            auth.limiter.succeeded(address)
            return user
        auth.limiter.failed(address, "basic auth" if scheme == "basic" else "a bearer token")
        return None

    @property
    def authenticated(self) -> bool:
        return self.current_user is not None

    # -- request guards ------------------------------------------------------------------------
    def check_host(self) -> None:
        """Without credentials answer only to loopback names: a page of another site whose name
        was made to resolve to 127.0.0.1 (DNS rebinding) still sends its own name."""
        if not self.auth.enabled:
            host = self.request.host_name.strip("[]")
            if not is_loopback(host):
                raise fail(403, f"this web UI has no credentials and answers only to a loopback host name "
                                f"(localhost, 127.0.0.1), not {host!r}")

    def check_xsrf_cookie(self) -> None:
        """Tornado calls this before prepare() for every state-changing request: the host, the
        origin rule, then the session's xsrf token (a valid bearer token stands in for it)."""
        self.check_host()
        why = guard.foreign_origin(self.request.headers, self.request.host, self.request.protocol)
        if why:
            logger.warning("web UI: refused %s %s: %s", self.request.method, self.request.path, why)
            raise fail(403, why)
        if self.auth.enabled and self.current_user and self._bearer:
            return
        token = (self.request.headers.get("X-XSRFToken") or self.request.headers.get("X-CSRFToken")
                 or self.get_body_argument("_xsrf", None))
        if not token:
            raise fail(403, f"'_xsrf' form field or X-XSRFToken header missing from {self.request.method}: "
                            "reload the page (scripts: GET /api/xsrf, keep its cookie, send X-XSRFToken)")
        session = self.session()
        expected = guard.xsrf_token(self.application.settings["cookie_secret"], session[0]) if session else ""
        if not session or not guard.same_token(token, expected):
            raise fail(403, "the _xsrf token does not belong to this browser's session "
                            "(its session cookie is missing, expired or not signed by this web UI): reload the page")

    def prepare(self) -> None:
        self.check_host()
        if self.auth.enabled and not self.public and not self.current_user:
            self.deny()

    def deny(self) -> None:
        raise tornado.web.HTTPError(401, "log in first")

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("X-Frame-Options", "SAMEORIGIN")
        if self.retry_after:
            self.set_header("Retry-After", str(self.retry_after))

    # -- projects ----------------------------------------------------------------------------
    def project_name(self, name: str) -> str:
        try:
            return validate_project_name(name)
        except InvalidProjectName as exc:
            raise fail(400, str(exc)) from None

    def get_project(self, name: str, fields: list[str] | None = None) -> dict[str, Any]:
        """The project row of a valid *name*, or 404."""
        row = self.state.projectdb.get(self.project_name(name), fields)
        if row is None:
            raise fail(404, f"no project named {name!r}")
        return row

    def can_edit(self, row: dict[str, Any]) -> bool:
        return not is_locked(row) or self.authenticated

    def require_editable(self, row: dict[str, Any]) -> None:
        if not self.can_edit(row):
            how = ("log in to change, run or debug it" if self.auth.enabled else
                   "locked projects are read-only (no changes, runs or debug runs) while the web UI has "
                   "no credentials (--username/--password or --token)")
            raise fail(403, f"project {row['name']!r} is locked (group 'lock'); {how}")

    def int_arg(self, name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
        raw = self.get_query_argument(name, None)
        if raw in (None, ""):
            return default
        try:
            value = int(raw)
        except ValueError:
            raise fail(400, f"{name} must be an integer, not {raw!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            limit = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            raise fail(400, f"{name} must be {limit}, not {value}")
        return value

    def str_arg(self, name: str) -> str | None:
        return self.get_query_argument(name, None) or None


class PageHandler(BaseHandler):
    """An HTML page."""

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Content-Security-Policy", PAGE_CSP)

    def deny(self) -> None:
        if self.request.method in ("GET", "HEAD"):
            self.redirect(self.get_login_url() + "?" + urllib.parse.urlencode({"next": self.request.uri}))
            raise tornado.web.Finish()
        raise tornado.web.HTTPError(401, "log in first")

    def get_template_namespace(self) -> dict[str, Any]:
        ns = super().get_template_namespace()
        ns.update(user=self.current_user, auth_enabled=self.auth.enabled, safe_href=safe_href, path_escape=path_escape,
                  fmt_time=fmt_time, pretty_json=pretty_json, json_script=json_script,
                  scheduler=getattr(self, "scheduler_status", None), xsrf_token=self.xsrf_token.decode())
        return ns

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        message = error_message(status_code, kwargs.get("exc_info"), self._reason)
        try:
            self.render("error.html", status_code=status_code, message=message)
        except Exception:  # the error page must not fail
            logger.exception("cannot render the error page")
            self.finish(tornado.escape.xhtml_escape(f"{status_code}: {message}"))


class ApiHandler(BaseHandler):
    """A JSON endpoint under /api/."""

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Security-Policy", API_CSP)

    def prepare(self) -> None:
        super().prepare()
        if self.request.method not in guard.SAFE_METHODS:
            why = guard.non_json_body(self.request.headers.get("Content-Type"), self.request.body)
            if why:
                raise fail(415, why)

    def deny(self) -> None:
        raise tornado.web.HTTPError(401, "authentication required: log in, or send basic auth or a bearer token")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 401 and self.request.headers.get("X-Requested-With") != "spiderflow":
            # not our own pages' fetch(): let curl and browsers offer basic auth
            self.set_header("WWW-Authenticate", 'Basic realm="spiderflow"')
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({"error": error_message(status_code, kwargs.get("exc_info"), self._reason)}))

    def reply(self, value: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json_text(value))

    def body(self) -> Any:
        try:
            value = json.loads(self.request.body or b"null", parse_constant=_no_constant)
        except ValueError as exc:
            raise fail(400, f"the request body is not JSON: {exc}") from None
        if b"\\u" in self.request.body:   # only an escape can make a lone surrogate
            try:
                json.dumps(value, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError as exc:
                raise fail(400, f"the request body holds text that is not valid Unicode ({exc.reason}: "
                                f"{exc.object[exc.start:exc.end]!r}); send UTF-8 text") from None
        return value

    def body_object(self) -> dict[str, Any]:
        body = self.body()
        if body is None:
            return {}
        if not isinstance(body, dict):
            raise fail(400, "send a JSON object")
        return body


class NotFoundHandler(PageHandler):
    public = True

    def prepare(self) -> None:
        raise fail(404, f"no such page: {self.request.path}")


class ApiNotFoundHandler(ApiHandler):
    public = True

    def prepare(self) -> None:
        raise fail(404, f"no such endpoint: {self.request.path}")


def json_text(value: Any) -> bytes:
    """*value* as strict JSON in UTF-8, for any value a database may hold: a non-finite number
    (a row written by an old version) is ``null``, not ``Infinity`` that browsers cannot parse,
    and text with a lone surrogate is escaped, not a UnicodeEncodeError."""
    try:
        return json.dumps(value, ensure_ascii=False, default=str, allow_nan=False).encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        return json.dumps(_finite(value), default=str, allow_nan=False).encode("ascii")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (give a finite number)")
