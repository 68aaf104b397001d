"""2-rank DDP (gloo) on the UniCLIP model with --local-loss --gather-with-grad: parameter gradients equal the
single-process gradient on the global batch. Identity views ("none" preset) make the forward deterministic."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

WORLD, B_LOCAL = 2, 3
CFG = {"views": 2, "view_preset": "none"}


def _setup() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    import open_clip

    import uniclip_plugin

    uniclip_plugin.register()  # import alone registers nothing
    torch.manual_seed(0)
    model = open_clip.create_model("UniCLIP-Tiny-32", uniclip_cfg=CFG, output_dict=True)
    model.train()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(WORLD * B_LOCAL, 3, 32, 32, generator=g)
    texts = open_clip.get_tokenizer("UniCLIP-Tiny-32")([f"an emoji of thing {i}" for i in range(WORLD * B_LOCAL)])
    return model, images, texts


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    from uniclip_plugin.testing.gloo_group import gloo_group

    with gloo_group(rank, WORLD, init_file):
        from uniclip_plugin.losses.mpnce import UniversalContrastiveLoss

        model, images, texts = _setup()
        ddp = torch.nn.parallel.DistributedDataParallel(model)  # compat's subclass drops CPU device_ids
        part = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
        loss_fn = UniversalContrastiveLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=WORLD)
        loss = loss_fn(**ddp(images[part], texts[part]))
        loss.backward()
        torch.save({"loss": loss.detach(), "grads": _grads(model)}, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.multiproc
def test_ddp_parameter_gradients_equal_single_process(tmp_path: Path) -> None:
    from uniclip_plugin.losses.mpnce import UniversalContrastiveLoss

    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    model, images, texts = _setup()
    loss = UniversalContrastiveLoss()(**model(images, texts))
    loss.backward()
    assert torch.allclose(sum(r["loss"] for r in ranks) / WORLD, loss.detach(), rtol=1e-5)
    for name, grad in _grads(model).items():
        for r in ranks:  # DDP all-reduces (averages) gradients: every rank holds the same one
            assert (r["grads"][name] - grad).norm() <= 1e-5 * grad.norm() + 1e-8, name
