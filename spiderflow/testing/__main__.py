"""``python -m spiderflow.testing [--host 127.0.0.1] [--port 0]``: serve the test HTTP server."""

from __future__ import annotations

import sys

from spiderflow.testing.server import main

if __name__ == "__main__":
    sys.exit(main())
