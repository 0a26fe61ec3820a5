"""``python -m spiderflow.cli``: the same as the ``spiderflow`` command."""

from spiderflow.cli import main

if __name__ == "__main__":
    main()
