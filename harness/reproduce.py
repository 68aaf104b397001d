"""`python harness/reproduce.py`: the study (train every method at equal budget, benchmark, write the report).

The code lives in ``uniclip_plugin.study``; installed as `uniclip-study`.
"""

import sys

from uniclip_plugin.study.cli import main

if __name__ == "__main__":
    sys.exit(main())
