"""The training data: open_clip_train's webdataset pipeline, rebuilt identically per epoch so a resume can
fast-forward it."""

from __future__ import annotations

import argparse
from typing import Any

import torch


def wds_namespace(args: argparse.Namespace, batch_size: int, world_size: int) -> argparse.Namespace:
    """The fields ``open_clip_train.data.get_wds_dataset`` reads."""
    return argparse.Namespace(
        train_data=args.train_data,
        train_num_samples=args.train_num_samples,
        dataset_resampled=args.dataset_resampled,
        train_data_upsampling_factors=args.train_data_upsampling_factors,
        seed=args.seed,
        batch_size=batch_size,
        workers=args.workers,
        world_size=world_size,
    )


def epoch_loader(
    args: argparse.Namespace, preprocess: Any, tokenizer: Any, epoch: int, rank: int, batch_size: int, world_size: int
) -> Any:
    """open_clip_train's webdataset loader for one epoch, with the dataloader's worker seeds fixed by
    (seed, rank, epoch) so that a resumed run can rebuild the identical stream and fast-forward it.

    Args:
        args: the trainer's arguments (data flags and ``--seed``).
        preprocess: the training image transform.
        tokenizer: the (possibly method-wrapped) tokenizer.
        epoch: the epoch (shard shuffling and worker seeds depend on it).
        rank: global rank.
        batch_size: per-rank batch.
        world_size: number of ranks.

    Returns:
        The loader (``num_batches`` batches per rank).
    """
    from open_clip_train.data import get_wds_dataset
    from torch.utils.data import DataLoader

    info = get_wds_dataset(
        wds_namespace(args, batch_size, world_size), preprocess, True, epoch=epoch, tokenizer=tokenizer
    )
    loader = info.dataloader
    stages = [loader] + list(getattr(loader, "pipeline", []))
    torch_loader = next(s for s in stages if isinstance(s, DataLoader))
    # Without a generator the loader draws its worker base seed from the global torch RNG, which differs after a resume.
    torch_loader.generator = torch.Generator().manual_seed((args.seed * 1_000_003 + rank * 10_007 + epoch) % 2**62)
    return loader


def count_shards(pattern: str) -> int:
    """Shards named by a brace pattern (``::``-separated sources summed)."""
    import braceexpand

    return sum(len(list(braceexpand.braceexpand(p))) for p in pattern.split("::"))
