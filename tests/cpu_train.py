"""The ``open_clip train`` command the SLIP and DeCLIP end-to-end tests run: CPU, fp32, resampled webdataset shards,
one loader worker, no zero-shot evaluation."""

from __future__ import annotations

from pathlib import Path

from uniclip_plugin.cli import train_argv


def cpu_train_argv(loss: str, model: str, pattern: str, logs: Path, name: str, **overrides: object) -> list[str]:
    """``train_argv`` with the tests' shared settings; ``overrides`` (open_clip_train flags as keywords) win."""
    settings: dict[str, object] = {
        "train_data": pattern,
        "dataset_type": "webdataset",
        "dataset_resampled": True,
        "lr": "2e-3",
        "wd": "0.1",
        "warmup": "5",
        "precision": "fp32",
        "device": "cpu",
        "workers": "1",
        "seed": "0",
        "logs": str(logs),
        "name": name,
        "log_every_n_steps": "4",
        "zeroshot_frequency": "0",
    }
    return train_argv(loss, model, **{**settings, **overrides})
