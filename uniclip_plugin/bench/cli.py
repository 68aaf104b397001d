"""Entry point of the benchmark (clip_benchmark zero-shot and retrieval, CPU linear probe, report) (console script `uniclip-bench`, thin script `harness/bench.py`)."""
from __future__ import annotations

from .evaluate import main

__all__ = ["main"]
