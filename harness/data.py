"""`python harness/data.py`: the offline data builder; the code is ``uniclip_plugin.data`` (see docs/DATA.md)."""

import sys

from uniclip_plugin.data.cli import main

if __name__ == "__main__":
    sys.exit(main())
