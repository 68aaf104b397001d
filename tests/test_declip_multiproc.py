"""DeCLIP on 2 gloo processes equals 1 process: MVS and NNS (values and feature gradients, --local-loss on and off),
identical NNS queues on both ranks (= the single-process queue), and DDP skipping the queue in its buffer broadcast.

Light imports only: spawned children re-import this module, and importing open_clip costs ~10 s per process here.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

F64 = torch.float64


def _features(seed: int, b: int, r: int, d: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    unit = lambda *shape: F.normalize(torch.randn(*shape, generator=g, dtype=F64), dim=-1)  # noqa: E731
    return {
        "image_features": unit(b, 2, d),
        "text_features": unit(b, r, d),
        "text_nn": unit(b, r, d),
        "logit_scale": torch.tensor(3.0 + seed, dtype=F64),
    }


WORLD, B_LOCAL = 2, 3


def _global_features() -> dict[str, torch.Tensor]:
    return _features(11, b=WORLD * B_LOCAL, r=2, d=5)


def _loss_and_grads(loss_fn: Any, f: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    img = f["image_features"].clone().requires_grad_()
    txt = f["text_features"].clone().requires_grad_()
    out = loss_fn(img, txt, f["logit_scale"], text_nn=f["text_nn"])
    (out["mvs_loss"] + out["nns_loss"]).backward()
    return {"mvs": out["mvs_loss"].detach(), "nns": out["nns_loss"].detach(), "img": img.grad, "txt": txt.grad}


def _steps() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randn(WORLD * B_LOCAL, 2, 4, generator=g) for _ in range(3)]


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    from uniclip_plugin.testing.gloo_group import gloo_group

    with gloo_group(rank, WORLD, init_file):
        losses = importlib.import_module("uniclip_plugin.losses.declip")
        nns = importlib.import_module("uniclip_plugin.nns")
        part = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
        f = {k: (v[part] if v.dim() else v) for k, v in _global_features().items()}
        results: dict[str, Any] = {}
        for local in (True, False):
            fn = losses.DeCLIPLoss(1.0, 0, 0, 1.0, local_loss=local, rank=rank, world_size=WORLD)
            results[f"local={local}"] = _loss_and_grads(fn, f)
        torch.manual_seed(0)
        bank = nns.NNMemoryBank(8, 4)  # 3 steps × 12 rows: wraps around
        for step in _steps():
            bank.enqueue(step[part])
        results["queue"], results["ptr"] = bank.queue.clone(), bank.ptr.clone()

        class Holder(nn.Module):  # DDP honours _ddp_params_and_buffers_to_ignore (DeCLIP sets it for nns.*)
            def __init__(self) -> None:
                super().__init__()
                self.lin = nn.Linear(4, 4)
                self.nns = nns.NNMemoryBank(8, 4)
                self.register_buffer("shared", torch.zeros(3))
                self._ddp_params_and_buffers_to_ignore = ["nns.queue", "nns.ptr"]

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.lin(x)

        holder = Holder()
        holder.nns.queue.fill_(rank + 1.0)
        holder.shared.fill_(rank + 1.0)
        ddp = nn.parallel.DistributedDataParallel(holder, broadcast_buffers=True)
        ddp(torch.randn(2, 4)).sum().backward()
        results["ddp_queue"], results["ddp_shared"] = holder.nns.queue.clone(), holder.shared.clone()
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.multiproc
def test_two_ranks_equal_one_process(tmp_path: Path) -> None:
    from uniclip_plugin.losses.declip import DeCLIPLoss
    from uniclip_plugin.nns import NNMemoryBank

    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    want = _loss_and_grads(DeCLIPLoss(1.0, 0, 0, 1.0), _global_features())

    def close(a: torch.Tensor, b: torch.Tensor) -> bool:
        return float((a - b).norm() / b.norm().clamp(min=1e-12)) <= 1e-5

    for local in (True, False):
        got = [r[f"local={local}"] for r in ranks]
        for term in ("mvs", "nns"):
            value = sum(g[term] for g in got) / WORLD if local else got[0][term]
            assert close(value, want[term]), (local, term)
            if not local:
                assert close(got[1][term], want[term])
        for key in ("img", "txt"):  # rank r's gradient / W = the global gradient of its samples
            assert close(torch.cat([g[key] for g in got]) / WORLD, want[key]), (local, key)
    torch.manual_seed(0)
    single = NNMemoryBank(8, 4)
    for step in _steps():
        single.enqueue(step)
    for r in ranks:
        assert torch.equal(r["queue"], ranks[0]["queue"]) and torch.allclose(r["queue"], single.queue)
        assert int(r["ptr"]) == int(single.ptr)
    for rank, r in enumerate(ranks):
        assert torch.all(r["ddp_queue"] == rank + 1.0)  # ignored: kept per rank
        assert torch.all(r["ddp_shared"] == 1.0)  # others: rank 0's, broadcast
