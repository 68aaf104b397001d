"""Entry point of the study (train every method at equal budget, benchmark, write the report) (console script `uniclip-study`, thin script `harness/reproduce.py`)."""
from __future__ import annotations

from .reproduce import main

__all__ = ["main"]
