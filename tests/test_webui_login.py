"""Logins under attack: the guess limit, sessions that die on logout and password change, TLS, secret files.

Real web UI servers on port 0; clients connect from several loopback addresses
(127.0.0.2, 127.0.0.3, ...: all of 127/8 is this machine) to be several clients.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

import spiderflow
from spiderflow.cli.all import all_command
from spiderflow.cli.webui import webui as webui_command
from spiderflow.exceptions import ConfigError
from spiderflow.settings import Settings
from spiderflow.webui import WebUIServer, auth, build_webui, check_webui_settings, make_app
import test_webui
from test_webui import add_project

# the web UI fixtures of test_webui, shared
dbs = test_webui.dbs

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
SECRET = "a-fixed-cookie-secret-from-the-config"


@pytest.fixture
def ui(dbs, tmp_path):
    """``ui(cookie_secret=None, **settings) -> WebUIServer`` on 127.0.0.1 port 0."""
    servers = []

    def start(cookie_secret=None, **settings):
        settings.setdefault("data_dir", str(tmp_path / "data"))
        app = make_app(Settings(**settings), projectdb=dbs.projectdb, taskdb=dbs.taskdb, resultdb=dbs.resultdb,
                       cookie_secret=cookie_secret)
        server = WebUIServer(app, "127.0.0.1", 0).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def call(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
         source: str = "127.0.0.1", context: ssl.SSLContext | None = None) -> SimpleNamespace:
    """One request from the loopback address *source*, with exactly these headers."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=30, source_address=(source, 0),
                                           context=context)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30, source_address=(source, 0))
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        text = response.read().decode("utf-8", "replace")
    finally:
        conn.close()
    return SimpleNamespace(status=response.status, headers=response.headers, text=text)


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def session_cookie(answer: SimpleNamespace) -> str:
    """``name=value`` of the session cookie an answer sets."""
    for header in answer.headers.get_all("Set-Cookie") or []:
        if header.startswith("spiderflow_session="):
            return header.split(";", 1)[0]
    raise AssertionError(f"no session cookie in {answer.headers}")


class Browser:
    """A cookie and its xsrf token, from one loopback address."""

    def __init__(self, url: str, source: str = "127.0.0.1", context: ssl.SSLContext | None = None):
        self.url, self.source, self.context = url.rstrip("/"), source, context
        answer = self.request("GET", "/api/xsrf")
        self.cookie, self.xsrf = session_cookie(answer), json.loads(answer.text)["xsrf"]

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        headers = dict(headers or {})
        if getattr(self, "cookie", None):
            headers.setdefault("Cookie", self.cookie)
        return call(self.url, method, path, body, headers, self.source, self.context)

    def login(self, password: str, user: str = "admin") -> SimpleNamespace:
        form = urllib.parse.urlencode({"username": user, "password": password, "next": "/nodes", "_xsrf": self.xsrf})
        answer = self.request("POST", "/login", form.encode(), FORM)
        if answer.status == 302:
            self.cookie = session_cookie(answer)
            self.xsrf = json.loads(self.request("GET", "/api/xsrf").text)["xsrf"]
        return answer

    def logout(self) -> SimpleNamespace:
        return self.request("POST", "/logout", urllib.parse.urlencode({"_xsrf": self.xsrf}).encode(), FORM)


# -- the guess limit ---------------------------------------------------------------------------------

def test_300_guesses_at_the_login_form_are_mostly_refused(ui, caplog):
    caplog.set_level(logging.INFO)
    server = ui(username="admin", password="right-password", login_lockout=60)
    attacker = Browser(server.url)
    started = time.monotonic()
    answers = [attacker.login(f"guess-{i}") for i in range(300)]
    elapsed = time.monotonic() - started
    statuses = [a.status for a in answers]
    assert statuses[:5] == [403] * 5 and "Wrong user name or password" in answers[0].text
    assert statuses[5:] == [429] * 295                     # refused without a look at the password
    for answer in answers[5:]:
        assert 55 <= int(answer.headers["Retry-After"]) <= 60
    assert "Too many failed logins from your address: try again in" in answers[-1].text
    assert elapsed < 60
    assert len(server.state.auth.limiter) == 1
    # the lockout is logged once, without the passwords
    lockouts = [r.getMessage() for r in caplog.records if "failed logins" in r.getMessage()]
    assert lockouts == ["web UI: 5 failed logins from 127.0.0.1 (last by the login form): it must wait 60 s"]
    assert not any("guess-" in r.getMessage() or "right-password" in r.getMessage() for r in caplog.records)
    # the right password: refused from the locked address, accepted from another one
    assert attacker.login("right-password").status == 429
    user = Browser(server.url, source="127.0.0.2")
    answer = user.login("right-password")
    assert answer.status == 302 and answer.headers["Location"] == "/nodes"
    assert user.request("GET", "/nodes").status == 200


def test_the_wait_grows_and_a_login_after_it_resets_the_count(ui):
    server = ui(username="admin", password="pw", login_lockout=2, login_lockout_max=4)
    browser = Browser(server.url)
    assert [browser.login("wrong").status for _ in range(5)] == [403] * 5
    refused = browser.login("pw")
    assert refused.status == 429 and refused.headers["Retry-After"] == "2"
    time.sleep(2.2)
    assert browser.login("wrong").status == 403              # one more failure: a wait twice as long
    refused = browser.login("pw")
    assert refused.status == 429 and refused.headers["Retry-After"] == "4"
    time.sleep(4.2)
    assert browser.login("pw").status == 302                 # the lock window is over
    assert [browser.login("wrong").status for _ in range(4)] == [403] * 4   # counted from zero again
    assert browser.request("GET", "/nodes").status == 200


def test_basic_auth_and_bearer_guesses_are_limited(ui, dbs):
    add_project(dbs, "p")
    server = ui(username="admin", password="pw", token="tok", login_lockout=60)
    answers = [call(server.url, "GET", "/api/projects", headers=basic("admin", f"guess-{i}")) for i in range(300)]
    statuses = [a.status for a in answers]
    assert statuses[:5] == [401] * 5 and statuses[5:] == [429] * 295
    assert int(answers[-1].headers["Retry-After"]) > 50
    assert "too many failed logins" in json.loads(answers[-1].text)["error"]
    assert call(server.url, "GET", "/api/projects", headers=basic("admin", "pw")).status == 429
    assert call(server.url, "GET", "/", headers=basic("admin", "pw")).status == 429      # pages too
    ok = call(server.url, "GET", "/api/projects", headers=basic("admin", "pw"), source="127.0.0.2")
    assert ok.status == 200 and json.loads(ok.text)["projects"][0]["name"] == "p"
    # bearer tokens, from another address
    bearer = [call(server.url, "GET", "/api/projects", headers={"Authorization": f"Bearer t{i}"}, source="127.0.0.3")
              for i in range(6)]
    assert [a.status for a in bearer] == [401] * 5 + [429]
    right = {"Authorization": "Bearer tok"}
    assert call(server.url, "GET", "/api/projects", headers=right, source="127.0.0.3").status == 429
    assert call(server.url, "GET", "/api/projects", headers=right, source="127.0.0.4").status == 200


def test_many_addresses_together_are_slowed_too(ui):
    server = ui(username="admin", password="pw", login_global_failures=10, login_lockout=60)
    assert call(server.url, "GET", "/api/projects", headers=basic("admin", "pw")).status == 200   # a known client
    for i in range(10):
        wrong = call(server.url, "GET", "/api/projects", headers=basic("admin", "guess"), source=f"127.0.0.{10 + i}")
        assert wrong.status == 401
    new = call(server.url, "GET", "/api/projects", headers=basic("admin", "pw"), source="127.0.0.30")
    assert new.status == 429 and int(new.headers["Retry-After"]) > 50
    assert call(server.url, "GET", "/api/projects", headers=basic("admin", "pw")).status == 200


def test_the_limiter_is_bounded_and_backs_off():
    now = [1000.0]
    limiter = auth.LoginLimiter(max_failures=3, global_failures=1_000_000, lockout=10, lockout_max=40, window=100,
                           max_addresses=500, clock=lambda: now[0])
    # an attacker rotating addresses does not grow the table past its bound
    for i in range(20_000):
        limiter.failed(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", "basic auth")
    assert len(limiter) == 500
    # one client: 10, 20, 40, 40 s
    waits = [limiter.failed("192.0.2.1", "the login form") for _ in range(6)]
    assert waits == [0, 0, 10, 20, 40, 40]
    assert limiter.wait("192.0.2.1") == 40 and limiter.wait("192.0.2.2") == 0
    now[0] += 40.5
    assert limiter.wait("192.0.2.1") == 0
    assert limiter.failed("192.0.2.1", "the login form") == 40            # still counted
    now[0] += 40 + 101
    assert limiter.failed("192.0.2.1", "the login form") == 0             # forgotten after the window
    limiter.succeeded("192.0.2.1")
    assert [limiter.failed("192.0.2.1", "basic auth") for _ in range(3)] == [0, 0, 10]
    # an IPv6 host holds a /64: its addresses count together
    assert auth.client_key("2001:db8::1") == auth.client_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert auth.client_key("::ffff:192.0.2.7") == "192.0.2.7"
    for i in range(3):
        limiter.failed(f"2001:db8::{i + 1}", "basic auth")
    assert limiter.wait("2001:db8::abcd") == 10 and limiter.wait("2001:db8:0:1::1") == 0
    # from all addresses together
    together = auth.LoginLimiter(max_failures=5, global_failures=4, lockout=10, clock=lambda: now[0])
    together.succeeded("192.0.2.100")
    assert [together.failed(f"198.51.100.{i}", "basic auth") for i in range(4)] == [0, 0, 0, 10]
    assert together.wait("203.0.113.9") == 10 and together.wait("192.0.2.100") == 0


# -- sessions ----------------------------------------------------------------------------------------

def test_a_cookie_captured_before_logout_is_refused_after_it(ui):
    server = ui(username="admin", password="pw")
    user = Browser(server.url)
    assert user.login("pw").status == 302
    captured = (user.cookie, user.xsrf)
    assert user.request("GET", "/nodes").status == 200
    out = user.logout()
    assert out.status == 302 and out.headers["Location"] == "/login"
    stolen = Browser.__new__(Browser)
    stolen.url, stolen.source, stolen.context = user.url, "127.0.0.2", None
    stolen.cookie, stolen.xsrf = captured
    page = stolen.request("GET", "/nodes")
    assert page.status == 302 and page.headers["Location"].startswith("/login")
    assert stolen.request("GET", "/api/projects").status == 401
    change = stolen.request("POST", "/api/projects", b'{"name": "q"}',
                            {"Content-Type": "application/json", "X-XSRFToken": stolen.xsrf})
    assert change.status == 403
    again = Browser(server.url)                  # the logout cleared the cookie: a new one, a new login
    assert again.login("pw").status == 302 and again.request("GET", "/nodes").status == 200


def test_a_new_password_refuses_the_old_cookies(ui):
    old = ui(username="admin", password="password-A", token="tok-A", cookie_secret=SECRET)
    user = Browser(old.url)
    assert user.login("password-A").status == 302
    same = ui(username="admin", password="password-A", token="tok-A", cookie_secret=SECRET)
    new = ui(username="admin", password="password-B", token="tok-A", cookie_secret=SECRET)
    new_token = ui(username="admin", password="password-A", token="tok-B", cookie_secret=SECRET)
    for server, works in ((same, True), (new, False), (new_token, False)):
        user.url = server.url.rstrip("/")
        page = user.request("GET", "/nodes")
        assert (page.status == 200) is works, server.url
        assert (user.request("GET", "/api/projects").status == 200) is works


def test_a_login_lasts_session_max_age(ui):
    server = ui(username="admin", password="pw", session_max_age=2)     # issued in whole seconds
    user = Browser(server.url)
    answer = user.login("pw")
    assert answer.status == 302 and user.request("GET", "/nodes").status == 200
    time.sleep(3.2)
    assert user.request("GET", "/nodes").status == 302
    with pytest.raises(ConfigError, match="session_max_age"):
        check_webui_settings(Settings(session_max_age=0))


def test_session_cookies_are_httponly_samesite_and_secure_when_asked(ui):
    plain = Browser(ui(username="admin", password="pw").url)
    login = plain.login("pw")
    header = next(h for h in login.headers.get_all("Set-Cookie") if h.startswith("spiderflow_session="))
    assert "HttpOnly" in header and "SameSite=Lax" in header and "Secure" not in header
    proxied = Browser(ui(username="admin", password="pw", cookie_secure=True).url)
    header = next(h for h in proxied.login("pw").headers.get_all("Set-Cookie")
                  if h.startswith("spiderflow_session="))
    assert "HttpOnly" in header and "SameSite=Lax" in header and "; Secure" in header


# -- TLS -----------------------------------------------------------------------------------------------

def key_pair(tmp_path, name: str = "ui", encrypted: bool = False) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and its key: with ``cryptography`` if installed, else openssl."""
    cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    try:
        import cryptography  # noqa: F401
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("neither the cryptography package nor the openssl command is installed")
        subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-keyout", str(key), "-out", str(cert),
                        "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        *(["-passout", "pass:secret"] if encrypted else ["-nodes"])],
                       check=True, capture_output=True)
        return str(cert), str(key)
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name_ = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name_).issuer_name(name_).public_key(private.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(private, hashes.SHA256()))
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    protection = (serialization.BestAvailableEncryption(b"secret") if encrypted else serialization.NoEncryption())
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, protection))
    return str(cert), str(key)


def test_https_with_a_certificate(tmp_path, dbs):
    add_project(dbs, "p")
    cert, key = key_pair(tmp_path)
    settings = Settings(data_dir=str(tmp_path / "data"), webui_port=0, username="admin", password="pw",
                        webui_certfile=cert, webui_keyfile=key)
    server = build_webui(settings, control=None, databases=dbs).start()
    try:
        assert server.url.startswith("https://127.0.0.1:")
        trusting = ssl.create_default_context(cafile=cert)
        assert "; Secure" in call(server.url, "GET", "/api/xsrf", context=trusting).headers["Set-Cookie"]
        user = Browser(server.url, context=trusting)
        login = user.login("pw")
        assert login.status == 302
        header = next(h for h in login.headers.get_all("Set-Cookie") if h.startswith("spiderflow_session="))
        assert "; Secure" in header and "HttpOnly" in header and "SameSite=Lax" in header
        assert user.request("GET", "/nodes").status == 200
        with pytest.raises(ssl.SSLCertVerificationError):
            call(server.url, "GET", "/login", context=ssl.create_default_context())
        with pytest.raises((http.client.HTTPException, OSError)):
            call(server.url.replace("https:", "http:"), "GET", "/login")
    finally:
        server.close()


def test_unusable_tls_files_are_clear_config_errors(tmp_path):
    cert, key = key_pair(tmp_path, "a")
    other_cert, other_key = key_pair(tmp_path, "b")
    _enc_cert, encrypted = key_pair(tmp_path, "c", encrypted=True)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    combined = tmp_path / "both.pem"
    combined.write_text(open(cert).read() + open(key).read())
    assert auth.server_tls(Settings()) is None
    assert isinstance(auth.server_tls(Settings(webui_certfile=cert, webui_keyfile=key)), ssl.SSLContext)
    assert isinstance(auth.server_tls(Settings(webui_certfile=str(combined))), ssl.SSLContext)
    for settings, message in (
            (Settings(webui_certfile=str(tmp_path / "missing.crt"), webui_keyfile=key), "cannot read it"),
            (Settings(webui_certfile=cert, webui_keyfile=str(tmp_path / "missing.key")), "cannot read it"),
            (Settings(webui_keyfile=key), "--keyfile needs --certfile"),
            (Settings(webui_certfile=cert, webui_keyfile=other_key), "does not match the certificate"),
            (Settings(webui_certfile=other_cert, webui_keyfile=key), "does not match the certificate"),
            (Settings(webui_certfile=str(junk), webui_keyfile=key), "holds no PEM certificate"),
            (Settings(webui_certfile=cert, webui_keyfile=str(junk)), "holds no PEM private key"),
            (Settings(webui_certfile=cert), "give it with --keyfile"),
            (Settings(webui_certfile=cert, webui_keyfile=encrypted), "encrypted")):
        with pytest.raises(ConfigError, match=message):
            check_webui_settings(settings)
    result = CliRunner().invoke(webui_command, ["--port", "0", "--certfile", cert, "--keyfile", other_key,
                                                "--projectdb", f"sqlite:///{tmp_path}/p.db"])
    assert result.exit_code == 1 and "does not match the certificate" in result.output
    result = CliRunner().invoke(all_command, ["--certfile", str(tmp_path / "nope.crt"),
                                              "--projectdb", f"sqlite:///{tmp_path}/p.db"])
    assert result.exit_code == 1 and "nope.crt" in result.output and "cannot read it" in result.output


# -- secrets from files ----------------------------------------------------------------------------------

def test_secret_files_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n  \nsecond line\n")
    given = tmp_path / "pw"
    given.write_text("pw\n")
    db = ["--port", "0", "--projectdb", f"sqlite:///{tmp_path}/p.db"]
    for args, message in (
            (["--password-file", str(tmp_path / "missing")], "--password-file"),
            (["--username", "admin", "--password-file", str(empty)], "first line is empty"),
            (["--token-file", str(tmp_path)], "cannot read it"),
            (["--password", "x", "--password-file", str(given)], "give --password or --password-file, not both"),
            (["--scheduler-token-file", str(empty)], "--scheduler-token-file")):
        result = CliRunner().invoke(webui_command, args + db)
        assert result.exit_code == 1 and message in result.output, (args, result.output)
        assert "Traceback" not in result.output
    result = CliRunner().invoke(all_command, ["--token-file", str(empty), "--projectdb", f"sqlite:///{tmp_path}/p.db"])
    assert result.exit_code == 1 and "--token-file" in result.output and "first line is empty" in result.output
    help_text = CliRunner().invoke(webui_command, ["--help"]).output
    assert "SPIDERFLOW_PASSWORD" in help_text and "--password-file" in help_text and "ps" in help_text


def test_the_password_and_token_come_from_files_not_argv(tmp_path):
    (tmp_path / "password").write_text("  from-a-file  \nignored\n")
    (tmp_path / "token").write_text("tok-from-file\n")
    code = "from spiderflow.cli.webui import webui; webui()"
    proc = subprocess.Popen([sys.executable, "-c", code, "--port", "0", "--scheduler-port", "1", "--username", "admin",
                             "--password-file", str(tmp_path / "password"), "--token-file", str(tmp_path / "token")],
                            cwd=tmp_path, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "SPIDERFLOW_DATA_DIR": str(tmp_path / "data"),
                                 "PYTHONPATH": os.path.dirname(os.path.dirname(spiderflow.__file__))})
    try:
        lines = []
        while not any("spiderflow web UI on " in line for line in lines):
            lines.append(proc.stderr.readline())
            assert lines[-1], "".join(lines)          # EOF: it exited
        url = next(line for line in lines if "spiderflow web UI on " in line).split(" on ", 1)[1].strip()
        assert call(url, "GET", "/api/projects", headers=basic("admin", "from-a-file")).status == 200
        assert call(url, "GET", "/api/projects", headers=basic("admin", "  from-a-file  ")).status == 401
        assert call(url, "GET", "/api/projects", headers={"Authorization": "Bearer tok-from-file"}).status == 200
        with open(f"/proc/{proc.pid}/cmdline", "rb") as fh:
            argv = fh.read()
        assert b"from-a-file" not in argv and b"tok-from-file" not in argv
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stderr.close()


def test_all_serves_the_web_ui_over_https_with_the_password_of_a_file(tmp_path):
    cert, key = key_pair(tmp_path)
    (tmp_path / "password").write_text("pw-of-all\n")
    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    root = os.path.dirname(os.path.dirname(spiderflow.__file__))
    proc = subprocess.Popen([sys.executable, "-m", "spiderflow.cli", "--data-dir", str(tmp_path / "data"), "all",
                             "--webui-port", str(ports[0]), "--scheduler-port", str(ports[1]), "--username", "admin",
                             "--password-file", str(tmp_path / "password"), "--certfile", cert, "--keyfile", key],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": root})
    url, trusting = f"https://127.0.0.1:{ports[0]}", ssl.create_default_context(cafile=cert)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = call(url, "GET", "/api/projects", headers=basic("admin", "pw-of-all"), context=trusting)
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "the web UI of all did not start"
                time.sleep(0.3)
        assert answer.status == 200 and json.loads(answer.text)["projects"] == []
        assert call(url, "GET", "/api/projects", headers=basic("admin", "pw"), context=trusting).status == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    assert f"web UI on {url}/" in err
