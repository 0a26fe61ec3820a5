"""The attack of the issue, from a real browser: a page on another port of 127.0.0.1 posts
tasks to the scheduler's control port.

The page tries every way a page has to send a request there: ``fetch()`` without CORS
(text/plain JSON, which needs no preflight), ``fetch()`` with ``Content-Type:
application/json`` and with a guessed token (which need a preflight), ``sendBeacon`` and
auto-submitted text/plain forms whose bodies are JSON, to ``/api/newtask`` and to
``/api/send_task``, for a RUNNING and for a STOP project. The control port (with the token
it made, as ``spiderflow scheduler`` runs by default) refuses every one: the scheduler
receives nothing, while the local command-line client, which reads the token from the data
directory, still gets through.
"""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from test_scheduler import Harness

from spiderflow.runtime.compose import control_client
from spiderflow.scheduler import ThreadedScheduler
from spiderflow.scheduler.control import serve_control
from spiderflow.settings import Settings

from hostile_site import HostileSite

ATTACK_URL = "http://attacker.example/"


def attack_page(control: str) -> str:
    newtask = {"project": "p", "url": ATTACK_URL + "newtask"}
    sends = [{"project": "p", "url": ATTACK_URL + "send"}, {"project": "stopped", "url": ATTACK_URL + "stopped"}]

    def form(i: int, path: str, body: dict) -> str:
        name = json.dumps(body)[:-1] + ', "pad": "'          # "name=value" of a text/plain form is JSON
        return (f'<form id="f{i}" method="post" enctype="text/plain" action="{control}/api/{path}" '
                f'target="frame{i}"><input type="hidden" name=\'{name}\' value=\'"}}\'></form>'
                f'<iframe name="frame{i}" id="frame{i}"></iframe>')

    forms = [form(0, "newtask", newtask)] + [form(i + 1, "send_task", body) for i, body in enumerate(sends)]
    return f"""<!DOCTYPE html>
<title>a local page</title>
{"".join(forms)}
<script>
const control = {json.dumps(control)};
const attempts = [["newtask", {json.dumps(newtask)}]].concat({json.dumps(sends)}.map(t => ["send_task", t]));
const results = {{}};
function attempt(name, url, init) {{
  return fetch(url, init).then(r => {{ results[name] = r.type === "opaque" ? "opaque" : "status " + r.status; }},
                               e => {{ results[name] = "failed"; }});
}}
const fetches = [];
attempts.forEach(([path, task], i) => {{
  const url = control + "/api/" + path, body = JSON.stringify(task);
  fetches.push(attempt(path + i + " no-cors", url, {{method: "POST", mode: "no-cors", body,
                                                   headers: {{"Content-Type": "text/plain"}}}}));
  fetches.push(attempt(path + i + " json", url, {{method: "POST", body, headers: {{"Content-Type": "application/json"}}}}));
  fetches.push(attempt(path + i + " token", url, {{method: "POST", body,
      headers: {{"Content-Type": "application/json", "Authorization": "Bearer guessed"}}}}));
  results[path + i + " beacon"] = navigator.sendBeacon(url, body) ? "queued" : "refused";
}});
Promise.allSettled(fetches).then(() => {{
  const frames = Array.from(document.querySelectorAll("iframe"));
  return Promise.all(frames.map((frame, i) => new Promise(done => {{
    frame.addEventListener("load", done, {{once: true}});
    document.getElementById("f" + i).submit();
  }})));
}}).then(() => {{ document.body.dataset.results = JSON.stringify(results); document.body.dataset.done = "yes"; }});
</script>
"""


@pytest.fixture
def scheduler(tmp_path):
    """A scheduler with a RUNNING and a STOP project, its control port served as by default (no token set)."""
    h = Harness(tmp_path, cls=ThreadedScheduler)
    h.add_project("p")
    h.add_project("stopped", status="STOP")
    h.start("p")
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def serve():
        h.server, h.port = serve_control(h.scheduler, host="127.0.0.1", port=0)
        ready.set()

    def run():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(serve())
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(5)
    yield h

    async def stop():
        h.server.stop()

    asyncio.run_coroutine_threadsafe(stop(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()
    h.close()


@pytest.fixture
def tab(browser):
    """A page of its own (not conftest's ``page``: the refused requests log console errors, as they should)."""
    context = browser.new_context()
    context.set_default_timeout(10_000)
    yield context.new_page()
    context.close()


@pytest.mark.parametrize("hostile_host", ["127.0.0.1", "localhost"])
def test_a_page_on_another_port_cannot_reach_the_control_port(tab, scheduler, hostile_host):
    h = scheduler
    control = f"http://127.0.0.1:{h.port}"
    site = HostileSite(attack_page(control))
    answers: list[tuple[str, int]] = []
    tab.on("response", lambda r: answers.append((r.request.method, r.status)) if r.url.startswith(control) else None)
    try:
        tab.goto(f"http://{hostile_host}:{site.port}/")
        tab.wait_for_selector("body[data-done='yes']", state="attached")
        results = json.loads(tab.get_attribute("body", "data-results"))
    finally:
        site.close()
    for attempt in ("newtask0", "send_task1", "send_task2"):
        assert results[f"{attempt} json"] == results[f"{attempt} token"] == "failed"   # the preflight was refused
    # the others reached the port (3 no-cors fetches, 3 beacons, 3 forms) and were refused there
    assert len(answers) == 9 and set(answers) == {("POST", 403)}, answers

    h.run(3)                                    # whatever had arrived would now be stored or dispatched
    assert h.scheduler.size() == 0
    assert h.taskdb.count("p") == 0 and h.taskdb.count("stopped") == 0
    assert [t.url for t in h.sent_normal()] == []

    # the command line on this machine, with the scheduler's data directory, is let in
    client = control_client(Settings(data_dir=h.settings.data_dir, scheduler_port=h.port))
    assert client.newtask({"project": "p", "url": "http://example.com/legit"}) == 1
    h.run()
    assert h.scheduler.size() == 1
