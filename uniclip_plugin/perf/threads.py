"""The study's thread check (``--train-threads``): ``open_clip train`` steps at each OMP thread count, 1 loader
worker, fp32 on CPU, timed from the run's own log (``uniclip_plugin.runs.RunDir.step_seconds``)."""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from uniclip_plugin.runs import RunDir

from ..cli import train_argv
from .settings import Settings

TRAIN_THREAD_CONFIGS = (
    ("clip", "CLIP-Tiny-32", 128),
    ("uniclip_mpnce", "UniCLIP-Tiny-32", 128),
    ("declip", "DeCLIP-Tiny-32", 128),
    ("clip", "CLIP-Tiny-64", 256),
)


def _train_command(loss: str, model: str, batch: int, steps: int, train_data: str, logs: Path) -> list[str]:
    return train_argv(
        loss,
        model,
        train_data=train_data,
        dataset_type="webdataset",
        dataset_resampled=True,
        train_num_samples=batch * steps,
        batch_size=batch,
        epochs=1,
        lr="1e-3",
        warmup=5,
        precision="fp32",
        device="cpu",
        workers=1,
        seed=0,
        logs=logs,
        name="r",
        save_frequency=0,
        zeroshot_frequency=0,
        log_every_n_steps=2,
    )


def _timed_run(cmd: list[str], threads: int, logs: Path, model: str) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)  # the caller's cwd: relative --train-data
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(
            f"perf.py: training {model} with {threads} threads failed: "
            + (proc.stderr.strip().splitlines() or ["no output"])[-1]
        )
    run = RunDir(logs / "r")
    step_s = run.step_seconds()[1:]  # the first logged step is warm-up
    data_s = run.step_seconds("Data")[1:]
    return {
        "step_s": statistics.median(step_s),
        "data_s": statistics.median(data_s),
        "wall_s": wall,
        "logged_steps": len(step_s),
    }


def train_threads(
    configs: tuple[tuple[str, str, int], ...] = TRAIN_THREAD_CONFIGS,
    steps: int = 20,
    train_data: Optional[str] = None,
    thread_counts: Optional[tuple[int, ...]] = None,
) -> list[dict[str, Any]]:
    """``open_clip train`` as the study runs it for ``steps`` steps of each (loss, model, batch), per thread count.

    Args:
        configs: ``(loss, model, batch)`` triples.
        steps: training steps per run.
        train_data: a shard pattern (default: generated 64 px shards).
        thread_counts: OMP thread counts (default: 1 and all cores).

    Returns:
        A row per config: ``loss``, ``model``, ``batch`` and ``threads_<n>``: the median logged step time
        (``step_s``, the first, warm-up, log line excluded), its wait for data (``data_s``), the process's wall
        time and the logged steps.
    """
    counts = thread_counts or tuple(sorted({1, os.cpu_count() or 1}))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if train_data is None:
            from uniclip_plugin.testing.synthetic import build_synthetic_pretrain

            train_data = build_synthetic_pretrain(Path(tmp) / "pretrain", 2048, 64, 4)["pattern"]
        for loss, model, batch in configs:
            row: dict[str, Any] = {"loss": loss, "model": model, "batch": batch}
            for threads in counts:
                logs = Path(tmp) / f"{loss}-{model}-{threads}"
                row[f"threads_{threads}"] = _timed_run(
                    _train_command(loss, model, batch, steps, train_data, logs), threads, logs, model
                )
            rows.append(row)
    return rows


def measure(settings: Settings, results: dict[str, Any]) -> dict[str, Any]:
    """The ``--train-threads`` mode: ``train_threads``' rows for ``settings.train_data``."""
    return {"train_threads": train_threads(train_data=settings.train_data)}
