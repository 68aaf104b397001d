"""The settings of one perf run, derived once from the command line and read by every section."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class Settings:
    """What a run measures and at which sizes.

    Attributes:
        quick: the ``--quick`` sizes (batch 64, fewer rounds, no 2-process or compile measurement).
        size: the tiny config suffix, ``<CLIP|SLIP|DeCLIP|UniCLIP>-<size>``.
        batch: the training batch.
        iters: timed repetitions of the single measurements.
        warmup: untimed repetitions first.
        main_iters: rounds of the shared timing of towers, method steps and step parts.
        curves: the study's curves file (None: look under ``results/``).
        train_data: the shard pattern of ``--train-threads`` (None: generated shards).
        wall0: ``time.perf_counter()`` at the start of the run.
    """

    quick: bool = False
    size: str = "Tiny-64"
    batch: int = 256
    iters: int = 5
    warmup: int = 2
    main_iters: int = 5
    curves: Optional[str] = None
    train_data: Optional[str] = None
    wall0: float = field(default_factory=lambda: time.perf_counter())

    @property
    def full(self) -> bool:
        """The full run (not ``--quick``)."""
        return not self.quick

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Settings":
        """The settings of the parsed command line (``--quick``, ``--model``, ``--batch``, ``--curves``, ...)."""
        full = not args.quick
        iters, warmup = (5, 2) if full else (3, 1)
        return cls(
            quick=args.quick,
            size=args.model,
            batch=args.batch or (256 if full else 64),
            iters=iters,
            warmup=warmup,
            main_iters=5 if full else 4,
            curves=args.curves,
            train_data=args.train_data,
        )
