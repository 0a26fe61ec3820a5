"""The spiderflow stress test: ``python bench.py [options]`` is ``spiderflow bench [options]``.

    python bench.py                              # pyspider-style: 10,000-page link farm, processes
    python bench.py --workload scrapy            # scrapy-style: growing tree for 10 s
    python bench.py --null-fetcher --in-process  # no HTTP, one event loop
    python bench.py --micro                      # taskdb, queue and message micro benches

See docs/benchmarks.md for what is measured and the figures on the reference machine.
"""

import sys

from spiderflow.cli import main

if __name__ == "__main__":
    main(["bench", *sys.argv[1:]], prog_name="bench.py")
