"""Entry point of performance measurements and targets (console script `uniclip-perf`, thin script `harness/perf.py`)."""
from __future__ import annotations

from .perf import main

__all__ = ["main"]
