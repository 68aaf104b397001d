"""`python harness/perf.py`: performance measurements and targets (the code lives in ``uniclip_plugin.perf``)."""

import sys

from uniclip_plugin.perf.cli import main

if __name__ == "__main__":
    sys.exit(main())
