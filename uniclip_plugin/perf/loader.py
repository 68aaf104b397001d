"""Loader throughput: open_clip_train's own webdataset pipeline on generated shards, against what the step consumes.

Measured before ``torch.compile`` in a run: the loader's workers fork this process.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import uniclip_plugin

from .settings import Settings
from .steps import create_plugin_model


def loader_throughput(
    model_name: str,
    batch: int,
    n_samples: int,
    workers: int = 2,
    res: int = 64,
    shards: int = 4,
    tmp_dir: Optional[str] = None,
) -> dict[str, float]:
    """samples/s of ``open_clip_train.data.get_wds_dataset`` over generated ``res`` px shards.

    The training pipeline: shard shuffle, sample shuffle, decode, the model's training preprocess, tokenizer,
    batching, ``workers`` processes. Epoch 0 includes starting the workers; epoch 1 (persistent workers) is the
    steady state.

    Args:
        model_name: the model whose training preprocess and tokenizer run.
        batch: B.
        n_samples: samples per epoch.
        workers: loader processes.
        res: the generated images' side.
        shards: the generated shards.
        tmp_dir: where to write the shards (default: the system's temp folder).

    Returns:
        ``epoch<k>_samples_per_s`` and ``epoch<k>_samples`` for epochs 0 and 1, ``samples_per_s`` (epoch 1).
    """
    import open_clip

    uniclip_plugin.register()  # compat first: webdataset 1.0.2's end-of-shard marker
    from open_clip_train.data import get_wds_dataset

    from uniclip_plugin.testing.synthetic import build_synthetic_pretrain

    with tempfile.TemporaryDirectory(dir=tmp_dir) as tmp:
        info = build_synthetic_pretrain(Path(tmp) / "pretrain", n_samples, res, shards)
        _, preprocess, _ = create_plugin_model(model_name)
        tokenizer = open_clip.get_tokenizer(model_name)
        args = argparse.Namespace(
            train_data=info["pattern"],
            train_num_samples=n_samples,
            dataset_resampled=False,
            train_data_upsampling_factors=None,
            seed=0,
            batch_size=batch,
            workers=workers,
            world_size=1,
        )
        data = get_wds_dataset(args, preprocess, True, epoch=0, tokenizer=tokenizer)
        result: dict[str, float] = {}
        for epoch in (0, 1):
            data.set_epoch(epoch)
            count, t0 = 0, time.perf_counter()
            for images, _texts in data.dataloader:
                count += images.shape[0]
            seconds = time.perf_counter() - t0
            result[f"epoch{epoch}_samples_per_s"] = count / seconds
            result[f"epoch{epoch}_samples"] = count
        del data
    result["samples_per_s"] = result["epoch1_samples_per_s"]
    return result


def loader_samples(settings: Settings) -> int:
    """Generated samples per epoch of the loader section."""
    return 4096 if settings.full else 1024


def measure(settings: Settings, results: dict[str, Any]) -> dict[str, Any]:
    """Section 4: the loader on 2 workers against the samples/s of the UniCLIP step.

    Args:
        settings: the run's settings.
        results: the run so far (``methods``).

    Returns:
        ``loader``: ``loader_throughput``'s result plus ``training_samples_per_s`` and ``ratio`` (loader / step).
    """
    loader = loader_throughput(f"UniCLIP-{settings.size}", settings.batch, loader_samples(settings))
    consumed = settings.batch / results["methods"]["uniclip_mpnce"]["step_s"]
    loader["training_samples_per_s"] = consumed
    loader["ratio"] = loader["samples_per_s"] / consumed
    return {"loader": loader}
