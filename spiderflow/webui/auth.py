"""Who may use the web UI: credentials, the bind-address rule, and the login pages.

Without credentials the UI serves only loopback (127.0.0.1 by default) and everyone who
reaches it may use it; a project in group ``lock`` is then read-only. With
``username``/``password`` or ``token`` configured every page and API call needs one of:

* the session cookie, once ``POST /login`` has put the user in it (a signed cookie with a
  new session id; the password field also accepts the token),
* HTTP basic auth with the username and password,
* ``Authorization: Bearer <token>`` (scripts; such requests need no xsrf token, because a
  browser never adds that header on its own).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import urllib.parse
from dataclasses import dataclass

from ..exceptions import ConfigError
from ..settings import Settings, is_loopback
from .base import PageHandler


def check_webui_settings(settings: Settings) -> None:
    """Raise ConfigError unless the web UI may start with *settings* (call before binding)."""
    if bool(settings.username) != bool(settings.password):
        raise ConfigError("the web UI needs both --username and --password (or neither)")
    if not is_loopback(settings.webui_host) and not (settings.password or settings.token):
        raise ConfigError(
            f"the web UI on {settings.webui_host!r} would be open to the network: give --username and "
            "--password or --token (SPIDERFLOW_USERNAME/PASSWORD/TOKEN), or bind it to 127.0.0.1")


def _same(given: str | None, expected: str | None) -> bool:
    return bool(expected) and given is not None and hmac.compare_digest(given.encode(), expected.encode())


@dataclass(frozen=True)
class Auth:
    """The credentials of one web UI; ``enabled`` when any are configured."""

    username: str | None = None
    password: str | None = None
    token: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Auth:
        return cls(settings.username or None, settings.password or None, settings.token or None)

    @property
    def enabled(self) -> bool:
        return bool(self.password or self.token)

    def login(self, username: str, password: str) -> str | None:
        """The user name for a login form, or None."""
        if self.password and _same(username, self.username) and _same(password, self.password):
            return username
        if self.token and _same(password, self.token):
            return username or "token"
        return None

    def bearer(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and _same(value.strip(), self.token)

    def basic(self, header: str) -> str | None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic" or not self.password:
            return None
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        username, sep, password = decoded.partition(":")
        if sep and _same(username, self.username) and _same(password, self.password):
            return username
        return None


def safe_next(target: str | None) -> str:
    """A local path to go to after logging in (never another site)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urllib.parse.urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


class LoginHandler(PageHandler):
    public = True

    def get(self) -> None:
        if not self.auth.enabled or self.current_user:
            self.redirect(safe_next(self.get_query_argument("next", None)))
            return
        self.render("login.html", next=safe_next(self.get_query_argument("next", None)), failed=False)

    def post(self) -> None:
        target = safe_next(self.get_body_argument("next", None))
        if not self.auth.enabled:
            self.redirect(target)
            return
        user = self.auth.login(self.get_body_argument("username", ""), self.get_body_argument("password", ""))
        if user is None:
            self.set_status(403)
            self.render("login.html", next=target, failed=True)
            return
        self.start_session(user)       # a new id: an xsrf token learned before the login is worthless
        self.redirect(target)


class LogoutHandler(PageHandler):
    public = True

    def post(self) -> None:
        self.end_session()
        self.redirect("/login" if self.auth.enabled else "/")
