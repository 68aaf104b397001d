"""Rank 0's per-step metrics: ``metrics.jsonl`` (read by ``uniclip_plugin.runs`` for loss curves) and DeepSpeed's
Monitor (the config's ``tensorboard`` / ``csv_monitor`` / ``wandb`` / ``comet`` sections).

DeepSpeed's engine already writes ``Train/Samples/lr`` to its monitor at every step; the trainer adds its own values
through the same ``engine.monitor.write_events`` (``Train/Samples/train_loss``, ``Val/Samples/<metric>``), with
DeepSpeed's x-axis, the number of samples seen. :func:`fill_monitor_paths` puts the monitor's output under the run
directory unless the config names a place.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Optional

# The file-writing monitor sections and the folder each gets in the run directory when the config names none.
MONITOR_SECTIONS = ("tensorboard", "csv_monitor")


def fill_monitor_paths(cfg: dict, run_dir: Path) -> list[str]:
    """Point each enabled file-writing monitor section without an ``output_path`` at the run directory
    (``<run>/tensorboard/``, ``<run>/csv_monitor/``); DeepSpeed's default is the working directory.

    Args:
        cfg: the DeepSpeed config (modified in place).
        run_dir: the run directory.

    Returns:
        The names of the enabled monitor sections (``wandb`` and ``comet`` included).
    """
    enabled = []
    for name in (*MONITOR_SECTIONS, "wandb", "comet"):
        section = cfg.get(name)
        if not isinstance(section, dict) or section.get("enabled") is not True:
            continue
        enabled.append(name)
        if name in MONITOR_SECTIONS and not section.get("output_path"):
            section["output_path"] = str(run_dir) + os.sep
            section.setdefault("job_name", name)
    return enabled


class Metrics:
    """Rank 0's per-step log: ``metrics.jsonl`` (one JSON line per step) and DeepSpeed's monitor when the config
    enables one.

    Lines are appended as steps finish (not written atomically): a killed run keeps every finished step, and each
    process tags its lines with a ``session`` so a resumed run's lines can be told apart.
    """

    def __init__(self, run_dir: Path, enabled: bool, monitor: Optional[Any] = None):
        self.enabled = enabled
        self.session = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
        self.file = None
        self.monitor = monitor if monitor is not None and getattr(monitor, "enabled", False) else None
        if enabled:
            path = run_dir / "metrics.jsonl"
            self.file = open(path, "a")
            if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
                self.file.write("\n")  # a line cut by a killed run stays on its own line

    def log(self, step: int, values: dict, samples: Optional[int] = None) -> None:
        """Append one step's values; the loss also goes to DeepSpeed's monitor as ``Train/Samples/train_loss``.

        Args:
            step: the step count after this step.
            values: JSON-serialisable values of the step.
            samples: samples seen so far (the monitor's x-axis; DeepSpeed's ``engine.global_samples``).
        """
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, "session": self.session, **values}) + "\n")
        self.file.flush()
        if self.monitor is not None and "loss" in values:
            # lr is written by the engine itself at every step (Train/Samples/lr).
            self.monitor.write_events([("Train/Samples/train_loss", float(values["loss"]), samples or step)])

    def log_validation(self, metrics: dict, samples: int) -> None:
        """Send the numeric validation metrics to DeepSpeed's monitor as ``Val/Samples/<name>``."""
        if self.enabled and self.monitor is not None:
            self.monitor.write_events(
                [
                    (f"Val/Samples/{k}", float(v), samples)
                    for k, v in metrics.items()
                    if isinstance(v, (int, float)) and k not in ("epoch", "num_samples")
                ]
            )

    def close(self) -> None:
        """Close the file (the monitor belongs to the engine)."""
        if self.file is not None:
            self.file.close()
