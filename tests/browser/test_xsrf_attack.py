"""The attack of the issue, from a real browser: a page on another localhost port drives the web UI.

The user has the web UI open (and a session). A page served from a second port of
127.0.0.1 — a local dev server, a local site being crawled — sets the cookie
``_xsrf=V`` (cookies ignore ports), then posts a script to ``/api/debug/p?_xsrf=V`` with
``fetch()`` and with an auto-submitted text/plain form whose body is JSON. Both are refused
and the script never runs; the same script run from the debugger page does.
"""

from __future__ import annotations

import html
import json

import pytest

from spiderflow.settings import Settings
from spiderflow.storage import connect_projectdb, connect_resultdb, connect_taskdb
from spiderflow.webui import WebUIServer, make_app

from hostile_site import HostileSite


def marker_script(path) -> str:
    return ("from spiderflow import *\n\n\nclass Handler(BaseHandler):\n    def on_start(self):\n"
            f"        open({str(path)!r}, 'w').write('the script ran')\n")


def attack_page(ui: str, marker) -> str:
    target = f"{ui}/api/debug/p?_xsrf=V"
    body = {"script": marker_script(marker), "task": {"url": "data:,x", "process": {"callback": "on_start"}}}
    # a text/plain form sends "name=value": the name opens the JSON, the value closes it
    name = json.dumps(body)[:-1] + ', "pad": "'
    return f"""<!DOCTYPE html>
<title>a local page</title>
<form id="attack" method="post" enctype="text/plain" action="{html.escape(target)}">
  <input type="hidden" name="{html.escape(name)}" value='"}}'>
</form>
<script>
document.cookie = "_xsrf=V; path=/";
fetch({json.dumps(target)}, {{method: "POST", mode: "no-cors", credentials: "include",
                              headers: {{"Content-Type": "text/plain"}}, body: {json.dumps(json.dumps(body))}}})
  .finally(() => {{ document.body.dataset.fetched = "yes"; document.getElementById("attack").submit(); }});
</script>
"""


@pytest.fixture
def ui(tmp_path):
    dbs = [connect_projectdb(f"sqlite:///{tmp_path}/p.db"), connect_taskdb(f"sqlite:///{tmp_path}/t.db"),
           connect_resultdb(f"sqlite:///{tmp_path}/r.db")]
    dbs[0].insert("p", script="from spiderflow import *\n\n\nclass Handler(BaseHandler):\n    pass\n")
    app = make_app(Settings(data_dir=str(tmp_path)), projectdb=dbs[0], taskdb=dbs[1], resultdb=dbs[2])
    server = WebUIServer(app).start()
    yield server.url.rstrip("/")
    server.close()
    for db in dbs:
        db.close()


def attack(tab, ui: str, site: HostileSite, host: str) -> tuple[dict, list[int]]:
    """Open the hostile page in *tab*; the web UI's answer to its form, and the statuses of both requests."""
    answers: list[int] = []
    tab.on("response", lambda r: answers.append(r.status) if "/api/debug/p?_xsrf=V" in r.url else None)
    tab.goto(f"http://{host}:{site.port}/")
    tab.wait_for_url(ui + "/api/debug/p?_xsrf=V")        # the form went through to the web UI
    return json.loads(tab.text_content("body")), answers


@pytest.mark.parametrize("hostile_host", ["127.0.0.1", "localhost"])
def test_a_page_on_another_port_cannot_run_a_script(page, ui, tmp_path, hostile_host):
    p = page.page
    pwned = tmp_path / "pwned"
    site = HostileSite(attack_page(ui, pwned))
    try:
        # a browser that has not opened the web UI yet: the page's own _xsrf cookie is the only one
        refusal, answers = attack(p, ui, site, hostile_host)
        assert "cross-origin request refused" in refusal["error"]
        assert f"{hostile_host}:{site.port}" in refusal["error"]
        assert answers == [403, 403]                                  # the fetch() and the form
        assert not pwned.exists()

        # the user debugs a project: the same script runs when the debugger page sends it
        p.goto(ui + "/debug/p")
        p.eval_on_selector("#script", "(t, text) => t.sfEditor.setValue(text)", marker_script(tmp_path / "legit"))
        p.click("#run")
        p.wait_for_selector("#debugger[data-runs='1']")
        assert (tmp_path / "legit").read_text() == "the script ran"

        # and, in another tab, opens the page again: the session is no help to it
        refusal, answers = attack(p.context.new_page(), ui, site, hostile_host)
        assert "cross-origin request refused" in refusal["error"] and answers == [403, 403]
        assert not pwned.exists()
    finally:
        site.close()
    # the debugger tab still works
    p.click("#run")
    p.wait_for_selector("#debugger[data-runs='2']")
    assert p.get_attribute("#run-status", "class") == "ok"
    page.errors[:] = [e for e in page.errors if "403" not in e]
