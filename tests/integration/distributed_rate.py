"""Measure the distributed-mode crawl rate: the link farm crawled by one scheduler, 2 fetchers,
2 processors and 1 result worker as separate processes, on redis:// + PostgreSQL and on
amqp:// + MySQL (the local services tests/conftest.py names). Not a pytest module.

    python tests/integration/distributed_rate.py [--backend redis-postgresql|amqp-mysql|both|all|...]
        [--total 5000] [--show 10] [--fetchers 2] [--processors 2] [--result-workers 1]
        [--budget 180]

The test server runs in a process of its own. The clock starts when ``spiderflow project
run`` returns (every component is up by then) and stops when resultdb holds one result per
reachable page and taskdb has no ACTIVE task left; the rate is pages per second over that
time (also given from the first result to the last). Every process is stopped and every row
and queue the run made is removed afterwards. The whole run is bounded by --budget seconds.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: conftest, integration

from integration.conftest import (
    BACKENDS,
    Cluster,
    ProcessGroup,
    open_backend,
    project_name,
)
from spiderflow.testing import link_farm_reachable, link_farm_url


def start_test_server(procs: ProcessGroup, timeout: float = 20.0) -> str:
    proc = procs.start("testserver", [sys.executable, "-m", "spiderflow.testing", "--port", "0"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"listening on (http://\S+)", proc.log.read_text(errors="replace"))
        if found:
            return found.group(1).rstrip("/")
        if proc.popen.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"the test server did not start:\n{procs.tail(proc)}")


def measure(name: str, base_url: str, args: argparse.Namespace, work: Path, deadline: float) -> dict:
    try:
        backend = open_backend(name)
    except (pytest.skip.Exception, pytest.fail.Exception) as exc:  # a service is down
        return {"backend": name, "error": f"skipped: {exc}"}
    procs = ProcessGroup(work / name / "logs")
    cluster = Cluster(procs, backend, work / name / "data")
    project = project_name("rate")
    expected = len(link_farm_reachable(args.total, args.show))
    out: dict = {"backend": name, "pages": expected}
    try:
        cluster.add_project(project, base_url + link_farm_url(args.total, args.show, 0), rate=100_000, burst=100_000)
        cluster.start_all(fetchers=args.fetchers, processors=args.processors, result_workers=args.result_workers)
        cluster.run_project(project)
        started = time.monotonic()
        first = None
        done = False
        while time.monotonic() < deadline:
            cluster.check_alive()
            results = cluster.result_count(project)
            if results and first is None:
                first = time.monotonic()
            if results >= expected and cluster.active_count(project) == 0:
                done = True
                break
            time.sleep(0.1)
        ended = time.monotonic()
        results = cluster.result_count(project)
        out.update(results=results, seconds=round(ended - started, 2), done=done,
                   rate=round(results / (ended - started), 1))
        if first is not None and ended > first:
            out["rate_first_to_last"] = round(results / (ended - first), 1)
        if not done:
            out["error"] = f"stopped by the time budget with {results} of {expected} results"
        nodes = cluster.nodes(include_offline=False)
        out["cpu_s"] = {n["kind"]: round(sum(m["cpu"] or 0 for m in nodes if m["kind"] == n["kind"]), 1)
                        for n in nodes}
    except Exception as exc:  # noqa: BLE001 - reported with the logs; the next backend still runs
        out["error"] = f"{type(exc).__name__}: {exc}"
        print(procs.report(15), file=sys.stderr)
    finally:
        cluster.cleanup()
        backend.clean_queues()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=[*BACKENDS, "both", "all"], default="both",
                        help="both: redis-postgresql and amqp-mysql; all: every pair")
    parser.add_argument("--total", type=int, default=5000)
    parser.add_argument("--show", type=int, default=10)
    parser.add_argument("--fetchers", type=int, default=2)
    parser.add_argument("--processors", type=int, default=2)
    parser.add_argument("--result-workers", type=int, default=1)
    parser.add_argument("--budget", type=float, default=180.0, help="seconds for the whole run")
    args = parser.parse_args()
    names = {"both": list(BACKENDS)[:2], "all": list(BACKENDS)}.get(args.backend, [args.backend])
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="spiderflow-rate-") as tmp:
        work = Path(tmp)
        server = ProcessGroup(work / "server")
        try:
            base_url = start_test_server(server)
            print(f"test server {base_url}; link farm total={args.total} show={args.show} "
                  f"({len(link_farm_reachable(args.total, args.show))} reachable pages); "
                  f"{args.fetchers} fetchers, {args.processors} processors, {args.result_workers} result "
                  f"worker(s); {os.cpu_count()} CPUs", flush=True)
            outcomes = []
            for i, name in enumerate(names):
                # leave each remaining backend its share of the budget (and 15 s to stop and clean)
                left = args.budget - (time.monotonic() - started)
                deadline = time.monotonic() + left / (len(names) - i) - 15
                outcome = measure(name, base_url, args, work, deadline)
                outcomes.append(outcome)
                print(outcome, flush=True)
        finally:
            server.stop_all()
    for o in outcomes:
        if "rate" in o:
            print(f"{o['backend']}: {o['results']} pages in {o['seconds']} s = {o['rate']} pages/s "
                  f"({o.get('rate_first_to_last', '-')} pages/s from the first result){'' if o['done'] else ' INCOMPLETE'}")
        else:
            print(f"{o['backend']}: {o.get('error')}")
    return 0 if all(o.get("done") for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
