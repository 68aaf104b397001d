"""`python harness/bench.py`: the benchmark (clip_benchmark zero-shot and retrieval, CPU linear probe, report).

The code lives in ``uniclip_plugin.bench``; installed as `uniclip-bench`.
"""

import sys

from uniclip_plugin.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
