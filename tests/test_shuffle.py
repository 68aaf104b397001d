"""The train pipeline's sample shuffle is seeded from (--seed, epoch, rank, worker): a new order every epoch, also with
open_clip_train's persistent dataloader workers, and the same order for the same (seed, epoch) in a fresh loader."""

from __future__ import annotations

import argparse
import hashlib

import pytest
import torch

import uniclip_plugin
from uniclip_plugin import compat

uniclip_plugin.register()  # import alone registers nothing

N_SAMPLES, N_SHARDS, BATCH = 64, 2, 4


def _fingerprint(image: object) -> torch.Tensor:
    # stands in for the image transform: a deterministic id of the decoded image, so an epoch reads as an order
    return torch.tensor(list(hashlib.sha1(image.tobytes()).digest()[:8]), dtype=torch.uint8)


def _no_tokens(text: str) -> torch.Tensor:
    return torch.zeros(1, 4, dtype=torch.long)


def _args(pattern: str, seed: int, workers: int, rank: int = 0) -> argparse.Namespace:
    return argparse.Namespace(
        train_data=pattern,
        train_num_samples=N_SAMPLES,
        train_data_upsampling_factors=None,
        dataset_resampled=False,
        seed=seed,
        batch_size=BATCH,
        workers=workers,
        world_size=1,
        rank=rank,
    )


def _orders(pattern: str, seed: int, epochs: list[int], workers: int) -> list[list[bytes]]:
    """Each epoch's sample order from one open_clip_train loader, set_epoch'd as ``train_one_epoch`` does."""
    from open_clip_train.data import get_wds_dataset

    torch.manual_seed(seed)  # main.py's random_seed(args.seed, rank) precedes the loader
    info = get_wds_dataset(
        _args(pattern, seed, workers), _fingerprint, is_train=True, epoch=epochs[0], tokenizer=_no_tokens
    )
    loader = info.dataloader.pipeline[0]  # the torch DataLoader inside open_clip_train's WebLoader
    assert loader.persistent_workers == (workers > 0)
    orders = []
    for epoch in epochs:
        info.set_epoch(epoch)
        orders.append([bytes(fp.tolist()) for images, _ in info.dataloader for fp in images])
    return orders


def _same_shard_order_in_epochs_0_and_1(pattern: str) -> int:
    """A seed for which detshuffle2 hands each worker the same shard in epochs 0 and 1: the case where a sample
    shuffle seeded without the epoch repeats its order."""
    import braceexpand
    from open_clip_train.data import SharedEpoch, detshuffle2

    urls = [{"url": u} for u in braceexpand.braceexpand(pattern)]

    def order(seed: int, epoch: int) -> list[str]:
        stage = detshuffle2(bufsize=2000, initial=500, seed=seed, epoch=SharedEpoch(epoch))
        return [s["url"] for s in stage.run(iter([dict(u) for u in urls]))]

    return next(seed for seed in range(20) if order(seed, 0) == order(seed, 1))


@pytest.fixture(scope="module")
def pattern(tmp_path_factory: pytest.TempPathFactory) -> str:
    from uniclip_plugin.testing.synthetic import build_synthetic_pretrain

    info = build_synthetic_pretrain(
        tmp_path_factory.mktemp("shards"), n_samples=N_SAMPLES, res=16, n_shards=N_SHARDS, seed=0
    )
    return info["pattern"]


@pytest.mark.parametrize("workers", [2, 0])
def test_sample_order_depends_on_epoch_and_seed(pattern: str, workers: int) -> None:
    seed = _same_shard_order_in_epochs_0_and_1(pattern)
    epoch0, epoch1 = _orders(pattern, seed, [0, 1], workers)
    assert sorted(epoch0) == sorted(epoch1) and len(set(epoch0)) == N_SAMPLES  # every sample once per epoch
    assert epoch0 != epoch1  # the same worker reads the same shard, yet in a new order
    assert _orders(pattern, seed, [1], workers) == [epoch1]  # same (seed, epoch), fresh loader: same order
    assert _orders(pattern, seed, [0], workers) == [epoch0]
    assert _orders(pattern, seed + 1, [0], workers) != [epoch0]  # another seed: another order


def test_order_depends_on_rank_and_worker() -> None:
    stage = compat.EpochSeededShuffle(bufsize=50, initial=50)
    orders = set()
    for rank in (0, 1):
        stage.bind(seed=0, rank=rank, epoch=3)
        orders.add(tuple(stage(iter(range(50)))))
        orders.add(tuple(stage(iter(range(50)))))  # a second pass with the same inputs repeats the order
    assert len(orders) == 2
    seeds = {str(compat.EpochSeededShuffle().rng().random()) for _ in range(2)}  # unbound: worker seed fallback
    assert len(seeds) == 1


def test_open_clip_train_get_data_binds_the_shuffle(pattern: str) -> None:
    """``main.py`` reaches get_wds_dataset through ``get_data`` → ``get_dataset_fn`` (a module-global lookup)."""
    from open_clip_train.data import get_data

    args = _args(pattern, 7, 0, rank=1)
    for name, value in dict(dataset_type="webdataset", val_data=None, imagenet_val=None, imagenet_v2=None).items():
        setattr(args, name, value)
    data = get_data(args, (_fingerprint, _fingerprint), epoch=2, tokenizer=_no_tokens)
    stages = compat._shuffle_stages(data["train"].dataloader)
    assert len(stages) == 1 and (stages[0].seed, stages[0].rank) == (7, 1)
    assert stages[0].epoch.get_value() == 2
    data["train"].set_epoch(5)
    assert stages[0].epoch.get_value() == 5


def test_rank_without_args_rank_comes_from_the_launcher(pattern: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The DeepSpeed trainer's namespace has no ``rank``: torchrun's RANK keeps ranks' shuffles apart."""
    from open_clip_train.data import get_wds_dataset

    monkeypatch.setenv("RANK", "3")
    args = _args(pattern, 0, 0)
    del args.rank
    info = get_wds_dataset(args, _fingerprint, is_train=True, epoch=0, tokenizer=_no_tokens)
    assert [stage.rank for stage in compat._shuffle_stages(info.dataloader)] == [3]
