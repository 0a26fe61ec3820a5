"""spiderflow: a crawl pipeline of scheduler, fetchers, processors and result workers.

The public API lives here; everything else is private to the package.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
