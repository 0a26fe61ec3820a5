"""Cross-site request defences of the web UI: the origin rule, the session-bound xsrf token, JSON bodies.

A page of another site — or of another port of 127.0.0.1, which shares the web UI's
cookies — must not make the user's browser change anything. Three rules, checked before
any state-changing request (anything but GET, HEAD and OPTIONS) reaches its handler:

* **Origin.** A browser names the page that sent a request in ``Origin`` (else
  ``Referer``); its host and port must be those of the request's ``Host``. A request
  with neither comes from a non-browser client (curl, a script) and passes this rule.
  ``Sec-Fetch-Site: same-site`` or ``cross-site`` is refused too.
* **The xsrf token** is an HMAC of the session id held in the signed session cookie, so
  only the web UI can make a matching pair; a cookie set by another page is not signed
  and is ignored. It comes in the ``X-XSRFToken`` header (the API) or a form's ``_xsrf``
  field (login, logout), never in the query string.
* **JSON bodies.** The API takes a request body only as ``Content-Type:
  application/json``, which a plain HTML form cannot send.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import urllib.parse
from collections.abc import Mapping

#: Methods that change nothing and are never checked.
SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))
#: ``Sec-Fetch-Site`` values a state-changing request may carry.
OWN_FETCH_SITES = frozenset(("same-origin", "none"))
JSON_TYPE = "application/json"
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def origin_netloc(url: str) -> str | None:
    """The ``host[:port]`` of an http(s) *url* (lower case, default port dropped), or None."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.netloc:
        return None
    return _strip_port(parts.netloc.rpartition("@")[2].lower(), parts.scheme)


def host_netloc(host: str, scheme: str) -> str:
    """The request's ``Host`` header as :func:`origin_netloc` spells it."""
    return _strip_port(host.strip().lower(), scheme)


def _strip_port(netloc: str, scheme: str) -> str:
    default = _DEFAULT_PORTS.get(scheme, "")
    return netloc[: -len(default)] if default and netloc.endswith(default) else netloc


def foreign_origin(headers: Mapping[str, str], host: str, scheme: str) -> str | None:
    """Why a state-changing request does not come from the web UI's own pages, or None if it may.

    *headers* is the request's header mapping, *host* its ``Host`` header, *scheme* the
    protocol it arrived on. Requests without ``Origin`` and ``Referer`` pass.
    """
    get = headers.get
    own = host_netloc(host, scheme)
    site = (get("Sec-Fetch-Site") or "").strip().lower()
    if site and site not in OWN_FETCH_SITES:
        return (f"cross-origin request refused: the browser says it comes from another site "
                f"(Sec-Fetch-Site: {site}, Origin: {get('Origin') or 'none'}); this web UI accepts "
                f"changes only from its own pages at {scheme}://{own}")
    for header in ("Origin", "Referer"):
        value = get(header)
        if value is None:
            continue
        if origin_netloc(value) != own:
            return (f"cross-origin request refused: {header} {value!r} is not this web UI "
                    f"({scheme}://{own}); it accepts changes only from its own pages")
        return None
    return None   # no Origin and no Referer: not a browser


def new_session_id() -> str:
    return secrets.token_hex(16)


def xsrf_token(secret: str | bytes, session_id: str) -> str:
    """The xsrf token of *session_id*: only a holder of the cookie secret can compute it."""
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, b"spiderflow-xsrf:" + session_id.encode(), hashlib.sha256).hexdigest()


def same_token(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.strip().encode(), expected.encode())


def non_json_body(content_type: str | None, body: bytes) -> str | None:
    """Why a request body is refused (it is not declared as JSON), or None; an empty body always passes."""
    if not body:
        return None
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == JSON_TYPE:
        return None
    return (f"the API accepts request bodies only as Content-Type: {JSON_TYPE}, not {media or 'none'!r} "
            f"(curl: --json, or -H 'Content-Type: {JSON_TYPE}')")
