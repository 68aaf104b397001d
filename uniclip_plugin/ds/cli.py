"""Entry point of the DeepSpeed trainer and export (console script `uniclip-deepspeed`, thin script `harness/train.py`)."""
from __future__ import annotations

from .train import main

__all__ = ["main"]
