"""The debugger's script editor in a real browser: CodeMirror vendored into the package.

Highlighting, bracket matching, search, Tab and Esc, and the lines a Save or a Run names in
an error marked in the gutter; every request goes to the web UI itself. Without CodeMirror
(its files blocked) the plain textarea still edits, saves and marks errors. The vendored
files are package data (built here with ``build_py``, as a wheel build does).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from spiderflow.settings import Settings
from spiderflow.storage import connect_projectdb, connect_resultdb, connect_taskdb
from spiderflow.webui import WebUIServer, make_app
from spiderflow.webui.editor import STATIC, VENDOR, vendored_editor

ROOT = Path(__file__).resolve().parents[2]
HEAD = "from spiderflow import *\n\n\nclass Handler(BaseHandler):\n    def on_start(self):\n"
GOOD = HEAD + '        self.crawl("data:,x", callback=self.index_page)\n\n    def index_page(self, response):\n' \
              '        return {"url": response.url, "pages": [1, 2, 3]}\n'
SYNTAX_ERROR_LINE = 6
SYNTAX_ERROR = HEAD + "        total = (1 +\n        return total\n"           # '(' never closed, on line 6
RUNTIME_ERROR_LINE = 7
RUNTIME_ERROR = HEAD + '        found = {"a": 1}\n        return found["missing"]\n'  # KeyError on line 7


@pytest.fixture
def ui(tmp_path):
    dbs = [connect_projectdb(f"sqlite:///{tmp_path}/p.db"), connect_taskdb(f"sqlite:///{tmp_path}/t.db"),
           connect_resultdb(f"sqlite:///{tmp_path}/r.db")]
    dbs[0].insert("demo", script=GOOD)
    app = make_app(Settings(data_dir=str(tmp_path)), projectdb=dbs[0], taskdb=dbs[1], resultdb=dbs[2])
    server = WebUIServer(app, "127.0.0.1", 0).start()
    yield server.url.rstrip("/"), dbs[0]
    server.close()
    for db in dbs:
        db.close()


def set_script(p, text: str) -> None:
    p.eval_on_selector("#script", "(t, text) => t.sfEditor.setValue(text)", text)


def editor_eval(p, body: str):
    """Run *body* with ``cm``, the page's CodeMirror, and return its value."""
    return p.eval_on_selector("#script", f"(t) => {{ const cm = t.sfEditor.cm; {body} }}")


def open_debugger(page, url: str, kind: str) -> list[str]:
    requests: list[str] = []
    page.page.on("request", lambda request: requests.append(request.url))
    page.page.goto(url + "/debug/demo")
    page.page.wait_for_selector(f"#debugger[data-editor='{kind}']")
    return requests


def test_codemirror_highlights_matches_brackets_finds_and_works_offline(page, ui, tmp_path):
    url, _projectdb = ui
    p = page.page
    requests = open_debugger(page, url, "codemirror")
    assert p.is_hidden("#script") and p.is_hidden("#gutter") and p.is_visible(".editor .CodeMirror")

    # -- Python highlighting, styled by the vendored stylesheet ---------------------------------------
    keywords = p.locator(".CodeMirror-code span.cm-keyword")
    assert {"def", "class", "from", "import", "return"} <= set(keywords.all_text_contents())
    assert p.locator(".CodeMirror-code span.cm-def", has_text="index_page").count() == 1
    assert p.locator(".CodeMirror-code span.cm-string", has_text='"data:,x"').count() == 1
    color = keywords.first.evaluate("e => getComputedStyle(e).color")
    assert color == "rgb(119, 0, 136)"                          # codemirror.css: .cm-keyword #708

    # -- bracket matching: the cursor after "[" marks it and its "]" ------------------------------------
    line = GOOD.splitlines().index('        return {"url": response.url, "pages": [1, 2, 3]}')
    column = GOOD.splitlines()[line].index("[") + 1
    editor_eval(p, f"cm.focus(); cm.setCursor({{line: {line}, ch: {column}}});")
    brackets = p.locator(".CodeMirror-code .CodeMirror-matchingbracket")
    assert brackets.all_text_contents() == ["[", "]"]
    editor_eval(p, f"cm.setCursor({{line: {line}, ch: 0}});")
    assert brackets.count() == 0
    assert p.locator(".CodeMirror-activeline .CodeMirror-linenumber").text_content() == str(line + 1)

    # -- search: Ctrl-F opens the dialog, Enter finds, Ctrl-G finds the next ----------------------------
    editor_eval(p, "cm.focus(); cm.setCursor({line: 0, ch: 0});")
    p.keyboard.press("Control+F")
    field = p.locator(".CodeMirror-dialog input")
    field.wait_for()
    field.type("index_page")
    p.keyboard.press("Enter")
    first = editor_eval(p, "return [cm.getSelection(), cm.getCursor().line];")
    assert first == ["index_page", 5]                            # callback=self.index_page
    assert p.locator(".CodeMirror-code .cm-searching").count() == 2
    page.shot("editor-search")
    p.keyboard.press("Control+G")
    assert editor_eval(p, "return [cm.getSelection(), cm.getCursor().line];") == ["index_page", 7]
    p.keyboard.press("Shift+F3")
    assert editor_eval(p, "return cm.getCursor().line;") == 5

    # -- Tab indents, Esc then Tab leaves the editor -----------------------------------------------------
    editor_eval(p, "cm.focus(); cm.setCursor({line: 1, ch: 0});")
    p.keyboard.press("Tab")
    assert editor_eval(p, "return cm.getLine(1);") == "    "
    assert p.input_value("#script").startswith("from spiderflow import *\n    \n")   # the textarea follows
    assert p.text_content("#save-status") == "unsaved changes"
    p.keyboard.press("Control+Z")
    assert editor_eval(p, "return cm.getValue();") == GOOD
    p.keyboard.press("Escape")
    p.keyboard.press("Tab")
    assert p.evaluate("document.activeElement.closest('.CodeMirror') === null")
    assert editor_eval(p, "return cm.getValue();") == GOOD

    shot = tmp_path / "editor.png"
    p.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and shot.stat().st_size > 10_000

    # -- everything came from the web UI, the vendored CodeMirror included ------------------------------
    origin = urlsplit(url)
    assert urlsplit(url).hostname == "127.0.0.1"
    outside = [r for r in requests if urlsplit(r)[:2] != origin[:2]]
    assert not outside, outside
    vendored = {urlsplit(r).path for r in requests if "/static/vendor/" in r}
    assert vendored == {f"/static/{path}" for path in vendored_editor()["scripts"] + vendored_editor()["styles"]}


def test_save_and_run_mark_the_error_line_and_the_next_run_clears_it(page, ui):
    url, projectdb = ui
    p = page.page
    open_debugger(page, url, "codemirror")
    markers = p.locator(".CodeMirror .sf-error-marker")
    assert markers.count() == 0

    # Save: the script is stored, and its SyntaxError's line is marked
    set_script(p, SYNTAX_ERROR)
    p.click("#save")
    p.wait_for_selector(f"#debugger[data-error-lines='{SYNTAX_ERROR_LINE}']")
    assert projectdb.get("demo")["script"] == SYNTAX_ERROR
    assert p.locator(".sf-error-line .CodeMirror-linenumber").all_text_contents() == [str(SYNTAX_ERROR_LINE)]
    assert "was never closed" in markers.get_attribute("title")
    page.shot("editor-syntax-error")

    # Run: a traceback's innermost line of the script is marked, the earlier mark is gone
    set_script(p, RUNTIME_ERROR)
    p.click("#run")
    p.wait_for_selector("#debugger[data-runs='1']")
    assert "KeyError" in p.text_content("#exception-text")
    assert p.get_attribute("#debugger", "data-error-lines") == str(RUNTIME_ERROR_LINE)
    assert p.locator(".sf-error-line .CodeMirror-linenumber").all_text_contents() == [str(RUNTIME_ERROR_LINE)]
    assert markers.count() == 1 and "KeyError" in markers.get_attribute("title")

    # Run (Ctrl-Enter in the editor) with the SyntaxError: the run reports it, its line is marked
    set_script(p, SYNTAX_ERROR)
    editor_eval(p, "cm.focus();")
    p.keyboard.press("Control+Enter")
    p.wait_for_selector("#debugger[data-runs='2']")
    assert "SyntaxError" in p.text_content("#exception-text")
    assert p.get_attribute("#debugger", "data-error-lines") == str(SYNTAX_ERROR_LINE)

    # a run that works clears the marks
    set_script(p, GOOD)
    p.click("#run")
    p.wait_for_selector("#debugger[data-runs='3']")
    assert p.is_hidden("#exception")
    assert p.get_attribute("#debugger", "data-error-lines") == ""
    assert markers.count() == 0 and p.locator(".sf-error-line").count() == 0
    # and Ctrl-S in the editor saves it
    editor_eval(p, "cm.focus();")
    p.keyboard.press("Control+S")
    p.wait_for_selector("#save-status:has-text('saved')")
    assert projectdb.get("demo")["script"] == GOOD


def test_without_codemirror_the_plain_textarea_edits_saves_and_marks_errors(page, ui):
    url, projectdb = ui
    p = page.page
    p.route("**/static/vendor/**", lambda route: route.abort())
    open_debugger(page, url, "textarea")
    page.errors[:] = [e for e in page.errors if "Failed to load resource" not in e]
    assert p.evaluate("typeof window.CodeMirror") == "undefined"
    assert p.is_visible("#script") and p.is_visible("#gutter")
    p.fill("#script", SYNTAX_ERROR.rstrip())
    p.click("#script")
    p.keyboard.press("Control+End")
    p.keyboard.press("Enter")
    p.keyboard.type("x = 1")
    assert p.input_value("#script").endswith("\n        x = 1")
    p.keyboard.press("Control+S")
    p.wait_for_selector(f"#debugger[data-error-lines='{SYNTAX_ERROR_LINE}']")
    assert projectdb.get("demo")["script"] == p.input_value("#script")
    assert p.text_content("#gutter .sf-error-gutter").strip() == str(SYNTAX_ERROR_LINE)
    p.fill("#script", GOOD)
    p.click("#run")
    p.wait_for_selector("#debugger[data-runs='1']")
    assert p.get_attribute("#debugger", "data-error-lines") == ""
    assert p.locator("#gutter .sf-error-gutter").count() == 0
    p.click("#script")
    p.keyboard.press("Escape")
    p.keyboard.press("Tab")
    assert p.evaluate("document.activeElement.id") != "script"


def _vendor_script():
    path = ROOT / ".ci" / "vendor-editor"
    loader = importlib.machinery.SourceFileLoader("vendor_editor", str(path))
    spec = importlib.util.spec_from_loader("vendor_editor", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_the_vendored_editor_is_recorded_and_shipped_as_package_data(tmp_path):
    script = _vendor_script()
    dirs = sorted(VENDOR.glob("codemirror-*"))
    assert [d.name for d in dirs] == [f"codemirror-{script.VERSION}"]
    record = json.loads((dirs[0] / "VENDORED.json").read_text())
    assert record["package"] == "codemirror" and record["version"] == script.VERSION
    assert record["files"] == list(script.FILES)
    assert re.fullmatch(r"sha512-[A-Za-z0-9+/]{86}==", record["integrity"])
    assert record["tarball"] == f"https://registry.npmjs.org/codemirror/-/codemirror-{script.VERSION}.tgz"
    assert "MIT License" in (dirs[0] / "LICENSE").read_text()
    vendored = sorted(str(p.relative_to(STATIC)) for p in dirs[0].rglob("*") if p.is_file())
    assert vendored == sorted(str((dirs[0] / name).relative_to(STATIC))
                              for name in ["LICENSE", "VENDORED.json", *script.FILES])
    info = vendored_editor()
    assert info["scripts"][0].endswith("/lib/codemirror.js") and info["styles"][0].endswith("/lib/codemirror.css")

    # build_py (what a wheel holds) from a copy of the source: every vendored file is in it
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "spiderflow", source / "spiderflow", ignore=shutil.ignore_patterns("__pycache__"))
    build = tmp_path / "build"
    subprocess.run([sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py",
                    "--build-lib", str(build)], cwd=source, check=True, capture_output=True)
    built = build / "spiderflow" / "webui" / "static"
    missing = [name for name in vendored if not (built / name).is_file()]
    assert not missing, f"not package data: {missing}"
    assert (built / "editor.js").is_file() and (build / "spiderflow" / "webui" / "editor.py").is_file()
