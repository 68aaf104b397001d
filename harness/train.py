"""`python harness/train.py` / `deepspeed harness/train.py`: the DeepSpeed trainer and export (the code lives in
``uniclip_plugin.ds``)."""

import sys

from uniclip_plugin.ds.cli import main

if __name__ == "__main__":
    sys.exit(main())
