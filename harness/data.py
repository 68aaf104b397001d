"""`python harness/data.py`: the offline data builder (the code lives in ``uniclip_plugin.data``; installed as `uniclip-data`)."""
import sys

from uniclip_plugin.data.cli import main

if __name__ == "__main__":
    sys.exit(main())
