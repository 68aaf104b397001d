"""`python harness/mutation.py`: mutation testing by a curated list of realistic bugs (the code lives in
``uniclip_plugin.testing.mutation``; run from the checkout root; not part of CI)."""

import sys

from uniclip_plugin.testing.mutation import main

if __name__ == "__main__":
    sys.exit(main())
