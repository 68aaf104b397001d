"""Entry point of the offline data builder (console script `uniclip-data`, thin script `harness/data.py`)."""
from __future__ import annotations

from .build import main

__all__ = ["main"]
