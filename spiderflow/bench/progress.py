"""The live display of a bench run: one line a second, per component, that a person can watch.

::

    [bench  3.0s] scheduler tasks=41,203 in-flight=180 done=2,980 | fetcher 3,011 | processor 2,990 | result 2,980 | 59,600 pages/min (now 61,200)

``done`` counts tasks the scheduler recorded done, ``result`` the results stored; pages/min
is over the whole run so far, ``now`` over the last second.
"""

from __future__ import annotations

from typing import TextIO

INTERVAL = 1.0
_SHORT = {"newtask_queue": "new", "status_queue": "status", "scheduler2fetcher": "s2f",
          "fetcher2processor": "f2p", "processor2result": "p2r"}


class Progress:
    def __init__(self, out: TextIO, interval: float = INTERVAL):
        self.out = out
        self.interval = interval
        self.t0 = 0.0
        self._next = 0.0
        self._last: tuple[float, int] = (0.0, 0)

    def start(self, t0: float) -> None:
        self.t0 = t0
        self._next = t0 + self.interval
        self._last = (t0, 0)

    def due(self, now: float) -> bool:
        return now >= self._next

    def line(self, now: float, counts: dict[str, dict[str, float]], saved: int) -> None:
        self._next = max(self._next + self.interval, now + self.interval / 2)
        elapsed = max(now - self.t0, 1e-9)
        last_t, last_saved = self._last
        now_rate = (saved - last_saved) / max(now - last_t, 1e-9) * 60
        self._last = (now, saved)
        s, f, p = (counts.get(k, {}) for k in ("scheduler", "fetcher", "processor"))
        text = (f"[bench {elapsed:5.1f}s] scheduler tasks={s.get('tasks', 0):,.0f} "
                f"in-flight={s.get('in_flight', 0):,.0f} done={s.get('done', 0):,.0f} | "
                f"fetcher {f.get('fetched', 0):,.0f} | processor {p.get('processed', 0):,.0f} | "
                f"result {saved:,} | {saved / elapsed * 60:,.0f} pages/min (now {now_rate:,.0f})")
        queues = counts.get("queues")
        if queues:
            text += " | queues " + " ".join(f"{_SHORT.get(k, k)}={v:.0f}" for k, v in queues.items())
        print(text, file=self.out, flush=True)
