"""Browser tests of the web UI (Playwright driving Debian's chromium); see conftest.py."""
