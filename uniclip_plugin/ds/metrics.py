"""Rank 0's per-step metrics log (``metrics.jsonl`` and TensorBoard)."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path


class Metrics:
    """Rank 0's per-step log: ``metrics.jsonl`` (one JSON line per step) and TensorBoard when it is installed.

    Lines are appended as steps finish (not written atomically): a killed run keeps every finished step, and each
    process tags its lines with a ``session`` so a resumed run's lines can be told apart.
    """

    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.session = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
        self.file = None
        if enabled:
            path = run_dir / "metrics.jsonl"
            self.file = open(path, "a")
            if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
                self.file.write("\n")  # a line cut by a killed run stays on its own line
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                logging.info("tensorboard is not installed: skipping TensorBoard logging (pip install tensorboard)")

    def log(self, step: int, values: dict) -> None:
        """Append one step's values (numbers also go to TensorBoard as ``train/<key>``).

        Args:
            step: the step count after this step.
            values: JSON-serialisable values of the step.
        """
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, "session": self.session, **values}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.tb.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        """Close the file and the TensorBoard writer."""
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()
