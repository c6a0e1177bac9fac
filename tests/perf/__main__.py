"""`python -m tests.perf`: run every benchmark and print one table of figures."""

from __future__ import annotations

import sys

from tests.perf.harness import serve_fake


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "fake":
        serve_fake()
        return
    from tests.perf.scenarios import run_all

    only = sys.argv[1:] or None
    run_all(only)


main()
