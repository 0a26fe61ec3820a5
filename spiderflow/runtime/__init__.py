"""How spiderflow's processes are put together and run.

- :mod:`.compose` — the composition root: settings and URLs → queues, databases, components
  (``build_*``), node registration. It only composes.
- :mod:`.signals` — warm/cold stop signals, a stack dump on SIGUSR1, dying with the parent.
- :mod:`.component` — one component in this process (``spiderflow scheduler`` …).
- :mod:`.supervisor` — ``spiderflow all``: every component as a supervised process.
- :mod:`.inprocess` — ``spiderflow one`` and :func:`spiderflow.crawl`.
- :mod:`.scripts` — project scripts: read, check, store.

Commands that operate a running cluster (jobs, remote control, queue operations, devices)
belong in packages of their own beside this one and build on :mod:`.compose`.
"""
