"""Who may use the web UI: credentials, TLS, the bind-address rule, sessions, the login limit and pages.

Without credentials the UI serves only loopback (127.0.0.1 by default) and everyone who
reaches it may use it; a project in group ``lock`` is then read-only. With
``username``/``password`` or ``token`` configured every page and API call needs one of:

* the session cookie, once ``POST /login`` has put the user in it (a signed cookie with a
  new session id; the password field also accepts the token). It is bound to the
  credentials (another password refuses it), lasts ``session_max_age`` seconds, and
  ``POST /logout`` revokes it in this process (:class:`Sessions`),
* HTTP basic auth with the username and password,
* ``Authorization: Bearer <token>`` (scripts; such requests need no xsrf token, because a
  browser never adds that header on its own).

Every wrong password or token counts against the client's address and against all
addresses together (:class:`LoginLimiter`); past the limit the client waits, answered 429
with ``Retry-After``. ``webui_certfile``/``webui_keyfile`` make the UI serve HTTPS
(:func:`server_tls`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import math
import ssl
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from ..exceptions import ConfigError
from ..settings import FIELDS, Settings, is_loopback
from .base import PageHandler

logger = logging.getLogger(__name__)


def check_webui_settings(settings: Settings) -> None:
    """Raise ConfigError unless the web UI may start with *settings* (call before binding)."""
    if bool(settings.username) != bool(settings.password):
        raise ConfigError("the web UI needs both --username and --password (or neither)")
    if not is_loopback(settings.webui_host) and not (settings.password or settings.token):
        raise ConfigError(
            f"the web UI on {settings.webui_host!r} would be open to the network: give --username and "
            "--password or --token (SPIDERFLOW_USERNAME/PASSWORD/TOKEN), or bind it to 127.0.0.1")
    if settings.session_max_age <= 0:
        raise ConfigError(f"session_max_age must be a positive number of seconds, not {settings.session_max_age!r}")
    server_tls(settings)


# -- TLS -------------------------------------------------------------------------------------------

def _read_pem(option: str, path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read()
    except OSError as exc:
        raise ConfigError(f"web UI {option} {path!r}: cannot read it: {exc.strerror or exc}") from exc


def _no_password() -> bytes:
    return b""      # never OpenSSL's prompt on the terminal


def server_tls(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of ``webui_certfile``/``webui_keyfile``, or None (plain HTTP); ConfigError if unusable."""
    certfile, keyfile = settings.webui_certfile, settings.webui_keyfile
    if not certfile:
        if keyfile:
            raise ConfigError("web UI --keyfile needs --certfile (webui_certfile): the certificate of that key")
        return None
    if "-----BEGIN CERTIFICATE-----" not in _read_pem("--certfile", certfile):
        raise ConfigError(f"web UI --certfile {certfile!r} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    key_option, key_path = ("--keyfile", keyfile) if keyfile else ("--certfile", certfile)
    key = _read_pem(key_option, key_path)
    if "PRIVATE KEY-----" not in key:
        raise ConfigError(f"web UI {key_option} {key_path!r} holds no PEM private key"
                          + ("" if keyfile else " (give it with --keyfile)"))
    if "ENCRYPTED" in key:
        raise ConfigError(f"web UI {key_option} {key_path!r}: the private key is encrypted; give it unencrypted, "
                          "in a file only this user can read")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile, keyfile, password=_no_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(f"web UI: the private key in {key_path!r} does not match the certificate "
                              f"in {certfile!r}") from exc
        raise ConfigError(f"web UI: cannot load the certificate {certfile!r} and key {key_path!r}: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"web UI: cannot read {certfile!r} or {key_path!r}: {exc.strerror or exc}") from exc
    return context


# -- the login limit -------------------------------------------------------------------------------

def client_key(address: str) -> str:
    """Whose failures an *address* counts as: itself, or its /64 network for IPv6 (one host holds a /64)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass(slots=True)
class _Failures:
    count: int = 0
    last: float = 0.0
    until: float = 0.0          # must wait until then


class LoginLimiter:
    """Failed logins per client (:func:`client_key`) and in all; who must wait, and how long.

    After *max_failures* failures a client waits *lockout* seconds, doubled by each further
    failure up to *lockout_max*; a client's failures are forgotten *window* seconds after its
    last failure or wait, and a login resets them. After *global_failures* failures from all
    clients together, every client waits the same way, except those that logged in before
    (the last *max_addresses* of them): an attack from many addresses is slowed down too,
    and the user can still log in. At most *max_addresses* clients are remembered (the
    longest-untouched are forgotten first). Used on the web UI's event loop only.
    """

    def __init__(self, max_failures: int = 5, global_failures: int = 100, lockout: float = 60.0,
                 lockout_max: float = 900.0, window: float = 900.0, max_addresses: int = 10_000,
                 clock: Callable[[], float] = time.monotonic):
        self.max_failures = max(1, max_failures)
        self.global_failures = max(1, global_failures)
        self.lockout = lockout
        self.lockout_max = max(lockout, lockout_max)
        self.window = window
        self.max_addresses = max(1, max_addresses)
        self.clock = clock
        self._clients: OrderedDict[str, _Failures] = OrderedDict()
        self._all = _Failures()
        self._known: OrderedDict[str, None] = OrderedDict()     # clients that logged in

    @classmethod
    def from_settings(cls, settings: Settings) -> LoginLimiter:
        return cls(settings.login_max_failures, settings.login_global_failures, settings.login_lockout,
                   settings.login_lockout_max, settings.login_window)

    def __len__(self) -> int:
        return len(self._clients)

    def wait(self, address: str) -> float:
        """Seconds the client at *address* must wait before its next try (0: it may try now)."""
        key, now = client_key(address), self.clock()
        failures = self._get(key, now)
        own = failures.until - now if failures else 0.0
        everyone = self._all.until - now if key not in self._known else 0.0
        return max(own, everyone, 0.0)

    def failed(self, address: str, how: str) -> float:
        """Count a wrong password or token (*how*: login form, basic auth, bearer token) from *address*;
        the seconds it must now wait (0: none yet)."""
        key, now = client_key(address), self.clock()
        failures = self._get(key, now)
        if failures is None:
            while len(self._clients) >= self.max_addresses:
                self._clients.popitem(last=False)
            failures = self._clients[key] = _Failures()
        self._clients.move_to_end(key)
        if self._forgotten(self._all, now):
            self._all = _Failures()
        wait = self._count(failures, self.max_failures, now)
        if wait:
            logger.warning("web UI: %d failed logins from %s (last by %s): it must wait %.0f s",
                           failures.count, key, how, wait)
        everyone = self._count(self._all, self.global_failures, now)
        if everyone:
            logger.warning("web UI: %d failed logins from all addresses within %.0f s: addresses that have "
                           "not logged in before must wait %.0f s", self._all.count, self.window, everyone)
        return max(wait, everyone if key not in self._known else 0.0)

    def succeeded(self, address: str) -> None:
        """A login from *address*: its failures are forgotten, and it is known from now on."""
        key = client_key(address)
        self._clients.pop(key, None)
        self._known[key] = None
        self._known.move_to_end(key)
        while len(self._known) > self.max_addresses:
            self._known.popitem(last=False)

    def _count(self, failures: _Failures, limit: int, now: float) -> float:
        failures.count += 1
        failures.last = now
        if failures.count < limit:
            return 0.0
        wait = min(self.lockout * 2.0 ** min(failures.count - limit, 32), self.lockout_max)
        failures.until = now + wait
        return wait

    def _forgotten(self, failures: _Failures, now: float) -> bool:
        return now - max(failures.last, failures.until) > self.window

    def _get(self, key: str, now: float) -> _Failures | None:
        failures = self._clients.get(key)
        if failures is not None and self._forgotten(failures, now):
            del self._clients[key]
            return None
        return failures


# -- sessions ------------------------------------------------------------------------------------

class Sessions:
    """The server side of the session cookies: their binding to the credentials, their age, revocations.

    A revoked session id is remembered until its cookie would have expired anyway; when
    *max_revoked* are remembered at once, every session issued until then is ended instead.
    Revocations live in this process: a restart with a fixed ``cookie_secret`` forgets them.
    """

    def __init__(self, credentials: str, max_age: float, max_revoked: int = 100_000,
                 clock: Callable[[], float] = time.time):
        self.credentials = credentials.encode("utf-8")
        self.max_age = max_age
        self.max_revoked = max_revoked
        self.clock = clock
        self.not_before = 0.0
        self._revoked: dict[str, float] = {}         # session id → when its cookie expires

    def binding(self, secret: str | bytes) -> str:
        """A digest of the credentials keyed with the cookie secret: a new password makes every cookie stale."""
        key = secret.encode() if isinstance(secret, str) else secret
        return hmac.new(key, b"spiderflow-session:" + self.credentials, hashlib.sha256).hexdigest()[:32]

    def valid(self, sid: str, issued: float, logged_in: bool) -> bool:
        """Whether a session *issued* at that time is still good (a login's lasts ``max_age``)."""
        now = self.clock()
        if issued < self.not_before or sid in self._revoked:
            return False
        return not logged_in or now - issued <= self.max_age

    def revoke(self, sid: str, issued: float) -> None:
        now = self.clock()
        if len(self._revoked) >= self.max_revoked:
            self._revoked = {s: t for s, t in self._revoked.items() if t > now}
            if len(self._revoked) >= self.max_revoked:
                logger.warning("web UI: %d sessions revoked at once: ending every session", len(self._revoked))
                self.not_before = now
                self._revoked = {}
        self._revoked[sid] = issued + self.max_age


# -- credentials -----------------------------------------------------------------------------------

def _same(given: str | None, expected: str | None) -> bool:
    return bool(expected) and given is not None and hmac.compare_digest(given.encode(), expected.encode())


@dataclass(frozen=True)
class Auth:
    """The credentials of one web UI (``enabled`` when any are configured), its login limit and sessions."""

    username: str | None = None
    password: str | None = None
    token: str | None = None
    limiter: LoginLimiter = field(default_factory=LoginLimiter, compare=False, repr=False)
    sessions: Sessions | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.sessions is None:
            credentials = "\0".join((self.username or "", self.password or "", self.token or ""))
            object.__setattr__(self, "sessions", Sessions(credentials, FIELDS["session_max_age"].default))

    @classmethod
    def from_settings(cls, settings: Settings) -> Auth:
        auth = cls(settings.username or None, settings.password or None, settings.token or None,
                   LoginLimiter.from_settings(settings))
        auth.sessions.max_age = settings.session_max_age
        return auth

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

    def bearer(self, header: str) -> bool | None:
        """True for the right bearer token, False for a wrong one, None if *header* is no bearer token."""
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        return _same(value.strip(), self.token)

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
        self.render("login.html", next=safe_next(self.get_query_argument("next", None)), failed=False, wait=0)

    def post(self) -> None:
        target = safe_next(self.get_body_argument("next", None))
        if not self.auth.enabled:
            self.redirect(target)
            return
        limiter, address = self.auth.limiter, self.request.remote_ip
        wait = limiter.wait(address)
        if wait:
            self.refuse_login(wait, target)
            return
        user = self.auth.login(self.get_body_argument("username", ""), self.get_body_argument("password", ""))
        if user is None:
            wait = limiter.failed(address, "the login form")
            self.set_status(403)
            self.render("login.html", next=target, failed=True, wait=math.ceil(wait))
            return
        limiter.succeeded(address)
        self.start_session(user)       # a new id: an xsrf token learned before the login is worthless
        self.redirect(target)

    def refuse_login(self, wait: float, target: str) -> None:
        self.retry_after = math.ceil(wait)
        self.set_header("Retry-After", str(self.retry_after))
        self.set_status(429)
        self.render("login.html", next=target, failed=False, wait=self.retry_after)


class LogoutHandler(PageHandler):
    public = True

    def post(self) -> None:
        self.end_session()
        self.redirect("/login" if self.auth.enabled else "/")
