"""2 processes (gloo) with --local-loss --gather-with-grad equal the single-process global-batch loss and gradient."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from uniclip_plugin.losses.mpnce import OBJECTIVES, universal_contrastive_loss

WORLD, B_LOCAL, V, D = 2, 4, 2, 8


def _inputs() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(WORLD * B_LOCAL, V, D, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(WORLD * B_LOCAL, D, generator=g, dtype=torch.float64), dim=-1)
    scales = torch.tensor([6.0, 12.0, 4.0], dtype=torch.float64)
    offsets = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    return img, txt, scales, offsets


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        img, txt, scales, offsets = _inputs()
        results = {}
        for objective in OBJECTIVES:
            part = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
            leaves = [img[part].clone().requires_grad_(), txt[part].clone().requires_grad_(),
                      scales.clone().requires_grad_(), offsets.clone().requires_grad_()]
            loss = universal_contrastive_loss(*leaves, objective=objective, local_loss=True, gather_with_grad=True,
                                              rank=rank, world_size=WORLD)["contrastive_loss"]
            loss.backward()
            results[objective] = [loss.detach()] + [t.grad for t in leaves]
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.multiproc
def test_two_ranks_equal_one_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    img, txt, scales, offsets = _inputs()
    for objective in OBJECTIVES:
        leaves = [t.clone().requires_grad_() for t in (img, txt, scales, offsets)]
        loss = universal_contrastive_loss(*leaves, objective=objective)["contrastive_loss"]
        loss.backward()
        # Global loss = mean of the ranks' local losses (equal pair counts per rank).
        mean_loss = sum(r[objective][0] for r in ranks) / WORLD
        assert torch.allclose(mean_loss, loss.detach(), rtol=1e-5, atol=0)
        # all_gather's backward sums every rank's gradient into the owner; DDP then averages parameter gradients
        # over ranks, so (1/W) × rank r's feature gradient is the global gradient of rank r's samples, and the
        # rank-averaged gradient of the (replicated) scales/offsets is theirs.
        for k, leaf in enumerate(leaves[:2]):
            got = torch.cat([r[objective][1 + k] for r in ranks]) / WORLD
            assert torch.allclose(got, leaf.grad, rtol=1e-5, atol=1e-12), objective
        for k, leaf in enumerate(leaves[2:]):
            got = sum(r[objective][3 + k] for r in ranks) / WORLD
            assert torch.allclose(got, leaf.grad, rtol=1e-5, atol=1e-12), objective
