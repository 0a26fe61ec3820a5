"""The example projects compile, and the local ones crawl the demo site."""

from __future__ import annotations

import glob
import os

import pytest

import spiderflow
from spiderflow.processor import load_project
from spiderflow.runtime.scripts import read_script
from spiderflow.testing import link_farm_links, link_farm_reachable

EXAMPLES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "examples", "*.py")))


def test_there_are_examples():
    names = {os.path.basename(p) for p in EXAMPLES}
    assert {"quickstart.py", "periodic.py", "public_site.py"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_example_compiles(path):
    name, script = read_script(path)
    project = load_project(name, script)
    assert project.handler is not None


@pytest.mark.parametrize("example, total, show", [("quickstart.py", 200, 5), ("periodic.py", 50, 3)])
def test_local_examples_crawl_the_demo_site(httpbin, monkeypatch, example, total, show):
    monkeypatch.setenv("DEMO_SITE", httpbin.url)
    path = os.path.join(os.path.dirname(__file__), "..", "examples", example)
    results = spiderflow.crawl(path, rate=1000, burst=1000)
    pages = {r["result"]["url"] for r in results}
    assert len(pages) == len(results)
    if example == "periodic.py":       # the index page's links are detail pages that follow nothing
        expected = set(link_farm_links(total, show, 0)) - {0}
    else:
        expected = link_farm_reachable(total, show)
    assert len(results) == len(expected)
