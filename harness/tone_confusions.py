"""`python harness/tone_confusions.py`: retrieval top-1 split into hit / same emoji in another skin tone / other miss
(the code lives in ``uniclip_plugin.bench.tone_confusions``)."""

import sys

from uniclip_plugin.bench.tone_confusions import main

if __name__ == "__main__":
    sys.exit(main())
