"""``--loss uniclip_mpnce`` with world size > 1 is the exact global-batch loss by default: built through
``integration.prepare`` WITHOUT ``--local-loss --gather-with-grad``, 2 gloo ranks equal one process on the global
batch (loss value; rank r's feature gradient / W == the global gradient of its samples; see
tests/test_distributed_loss.py for the world-size factor), and one log line says so."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

WORLD, B_LOCAL, V, D = 2, 4, 2, 8


def _args() -> argparse.Namespace:
    from uniclip_plugin import cli

    return cli.plugin_parser().parse_args(["--loss", "uniclip_mpnce"])  # no --local-loss / --gather-with-grad


def _inputs() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(WORLD * B_LOCAL, V, D, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(WORLD * B_LOCAL, D, generator=g, dtype=torch.float64), dim=-1)
    bias = torch.tensor([[6.0, 12.0, 4.0], [0.1, -0.2, 0.3]], dtype=torch.float64)
    return img, txt, bias


def _run(loss_fn: Any, img: torch.Tensor, txt: torch.Tensor, bias: torch.Tensor) -> list[torch.Tensor]:
    leaves = [t.clone().requires_grad_() for t in (img, txt, bias)]
    out = loss_fn(
        image_features=leaves[0],
        text_features=leaves[1],
        logit_scale=leaves[2][0, 1],
        logit_bias=leaves[2],
        output_dict=True,
    )
    loss = sum(v for k, v in out.items() if k.endswith("_loss"))
    loss.backward()
    return [loss.detach()] + [t.grad for t in leaves]


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    from uniclip_plugin import integration
    from uniclip_plugin.testing.gloo_group import gloo_group

    with gloo_group(rank, WORLD, init_file):
        setup = integration.prepare(_args(), rank=rank, world_size=WORLD)
        img, txt, bias = _inputs()
        part = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
        result = _run(setup.loss, img[part], txt[part], bias)
        torch.save(
            {"result": result, "local_loss": setup.loss.local_loss, "gather_with_grad": setup.loss.gather_with_grad},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).norm() / want.norm().clamp(min=1e-9)).item()


@pytest.mark.multiproc
def test_two_ranks_without_flags_equal_one_process(tmp_path: Path) -> None:
    from uniclip_plugin import integration

    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    assert all(r["local_loss"] and r["gather_with_grad"] for r in ranks)
    want = _run(integration.prepare(_args(), rank=0, world_size=1).loss, *_inputs())  # one process, global batch
    got = [r["result"] for r in ranks]
    assert _rel_err(sum(g[0] for g in got) / WORLD, want[0]) <= 1e-10
    for k in (1, 2):  # image, text features: rank r's gradient / W is the global gradient of its samples
        assert _rel_err(torch.cat([g[k] for g in got]) / WORLD, want[k]) <= 1e-10, k
    assert _rel_err(sum(g[3] for g in got) / WORLD, want[3]) <= 1e-10  # scales / offsets: DDP's mean over ranks


def test_one_log_line_at_loss_creation_with_world_size_over_one(caplog: pytest.LogCaptureFixture) -> None:
    from uniclip_plugin import integration

    setup = integration.prepare(_args())
    with caplog.at_level(logging.INFO):
        loss = setup.build_loss(argparse.Namespace(rank=0, world_size=2))
    assert loss.local_loss and loss.gather_with_grad
    lines = [r.getMessage() for r in caplog.records if "exact global-batch loss" in r.getMessage()]
    assert lines == [
        "uniclip_mpnce: exact global-batch loss (local rows × all gathered columns, gathered with "
        "gradient; --local-loss/--gather-with-grad not needed)"
    ]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        single = setup.build_loss(argparse.Namespace(rank=0, world_size=1))
    assert not single.local_loss and "exact global-batch" not in caplog.text  # one process: nothing to gather
