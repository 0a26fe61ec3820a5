"""Measure fetch throughput: the raw tornado curl client vs Fetcher.run, against the link farm.

Not a pytest module (no ``test_`` prefix): run it by hand::

    python tests/fetcher_throughput.py [--requests 2000] [--rounds 10] [--concurrency 100] [--time-limit 60]

The test server runs in its own process (``spiderflow.testing.serve_in_process``), so the CPU
figures are this process's alone (``time.process_time``). Both runs fetch the same distinct
``/links`` pages with the same concurrency; the fetcher's run goes through memory queues
(tasks in, ``(task, FetchResult)`` out) exactly as in ``spiderflow one`` (making the tasks is
not timed). Rounds alternate raw and fetcher, so that a busy machine weighs on both alike;
the overhead figure is the ratio of total CPU per page.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from tornado.curl_httpclient import CurlAsyncHTTPClient

from spiderflow.fetcher import Fetcher
from spiderflow.message import Task
from spiderflow.queues import connect_queue
from spiderflow.settings import Settings
from spiderflow.testing import serve_in_process


def urls(base: str, count: int, offset: int) -> list[str]:
    total = 10**9
    return [f"{base}/links?total={total}&show=10&n={offset + i}" for i in range(count)]


async def raw_curl(targets: list[str], concurrency: int, time_limit: float) -> tuple[int, int]:
    """Fetch *targets* with a bare CurlAsyncHTTPClient; return (pages fetched, errors)."""
    client = CurlAsyncHTTPClient(force_instance=True, max_clients=concurrency)
    deadline = time.monotonic() + time_limit
    it = iter(targets)
    done = errors = 0

    async def worker() -> None:
        nonlocal done, errors
        for url in it:
            if time.monotonic() > deadline:
                return
            response = await client.fetch(url, raise_error=False)
            done += 1
            errors += response.code != 200
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        client.close()
    return done, errors


def prepare_fetcher(targets: list[str], concurrency: int):
    """The fetcher and its queues, loaded with tasks (not part of the measured time)."""
    inq = connect_queue("memory://", "scheduler2fetcher")
    outq = connect_queue("memory://", "fetcher2processor")
    for url in targets:
        inq.put(Task.create("bench", url))
    return Fetcher(inq, outq, Settings(poolsize=concurrency)), inq, outq


async def through_fetcher(prepared, time_limit: float) -> None:
    """Run Fetcher.run(burst=True) over memory queues (the results stay on the outqueue)."""
    fetcher, _inq, _outq = prepared
    stopper = asyncio.get_running_loop().call_later(time_limit, fetcher.stop)
    try:
        await fetcher.run(burst=True)
    finally:
        stopper.cancel()


def measure(name: str, targets: list[str], concurrency: int, time_limit: float) -> dict:
    """Time one run; the fetcher's results are taken off its outqueue after the clock stops."""
    prepared = prepare_fetcher(targets, concurrency) if name == "fetcher" else None
    wall, cpu = time.perf_counter(), time.process_time()
    if prepared is None:
        done, errors = asyncio.run(raw_curl(targets, concurrency, time_limit))
    else:
        asyncio.run(through_fetcher(prepared, time_limit))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if prepared is not None:
        outq = prepared[2]
        results = outq.get_many(outq.qsize())
        done, errors = len(results), sum(r.status_code != 200 for _, r in results)
    row = {"name": name, "pages": done, "errors": errors, "wall": wall, "cpu": cpu,
           "pages/s": done / wall, "cpu_us/page": 1e6 * cpu / max(done, 1)}
    print(f"{name:8s} {done:6d} pages ({errors} errors) in {wall:6.2f}s: {row['pages/s']:7.0f} pages/s, "
          f"{row['cpu_us/page']:6.1f} us CPU/page", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=2_000, help="per round and client")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--time-limit", type=float, default=60.0, help="per run, seconds")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with serve_in_process() as server:
        print(f"server {server.url} (pid {server.pid}); {args.requests} requests, concurrency {args.concurrency}")
        measure("warmup", urls(server.url, 1000, 10**8), args.concurrency, args.time_limit)
        rows: dict[str, list[dict]] = {"raw": [], "fetcher": []}
        for r in range(args.rounds):
            for name in ("raw", "fetcher"):
                offset = (2 * r + (name == "fetcher")) * args.requests
                rows[name].append(measure(name, urls(server.url, args.requests, offset), args.concurrency,
                                          args.time_limit))
    # The machine may be shared: short alternating rounds see the same average conditions, so
    # the ratio of the totals is the overhead figure; per-round ratios show the spread.
    total = {name: {k: sum(row[k] for row in rows[name]) for k in ("pages", "wall", "cpu")} for name in rows}
    for name in ("raw", "fetcher"):
        t = total[name]
        print(f"{name:8s} total {t['pages']} pages: {t['pages'] / t['wall']:6.0f} pages/s, "
              f"{1e6 * t['cpu'] / t['pages']:6.1f} us CPU/page (median round "
              f"{statistics.median(row['pages/s'] for row in rows[name]):.0f} pages/s, "
              f"{statistics.median(row['cpu_us/page'] for row in rows[name]):.1f} us CPU/page)")
    raw, fet = total["raw"], total["fetcher"]
    ratios = sorted(f["cpu_us/page"] / r["cpu_us/page"] for r, f in zip(rows["raw"], rows["fetcher"]))
    print(f"fetcher/raw: CPU per page x{(fet['cpu'] / fet['pages']) / (raw['cpu'] / raw['pages']):.2f}, "
          f"pages/s x{(fet['pages'] / fet['wall']) / (raw['pages'] / raw['wall']):.2f} "
          f"(per-round CPU ratios: median x{statistics.median(ratios):.2f}, range x{ratios[0]:.2f}-x{ratios[-1]:.2f})")


if __name__ == "__main__":
    main()
