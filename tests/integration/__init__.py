"""Multi-process tests on the local Redis, RabbitMQ, PostgreSQL and MySQL; see conftest.py.

This file makes the directory a package, so that its ``conftest.py`` is imported as
``integration.conftest`` and does not clash with ``tests/conftest.py`` (imported as
``conftest``, which the modules here import ``require_service`` from).
"""
