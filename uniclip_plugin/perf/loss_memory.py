"""MP-NCE time and memory against M = (V+1)·B, chunked and unchunked, and its 2-process ``--local-loss`` gather.

Every point runs in a fresh interpreter that imports just this module and the loss (``timing.in_fresh_process``): the
peak resident set then belongs to the loss alone, and the gloo ranks start from a clean parent.
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..testing.memory import saved_tensor_bytes
from .settings import Settings
from .timing import RssPeak, in_fresh_process, median_time

MODULE = "uniclip_plugin.perf.loss_memory"
DIM = 128  # embedding width of every point


def _unit_embeddings(batch: int, views: int, dim: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(batch, views, dim, generator=g), dim=-1).requires_grad_()
    txt = torch.nn.functional.normalize(torch.randn(batch, dim, generator=g), dim=-1).requires_grad_()
    scales = torch.full((3,), 14.0, requires_grad=True)
    offsets = torch.zeros(3, requires_grad=True)
    return img, txt, scales, offsets


def loss_point(batch: int, views: int, dim: int, chunk: int, iters: int) -> dict[str, float]:
    """MP-NCE fwd+bwd time, autograd-saved bytes and peak extra RSS for one (B, chunk) point (run in a subprocess).

    Args:
        batch: B.
        views: V image views per sample.
        dim: embedding width.
        chunk: the loss's ``chunk_size`` (0: unchunked).
        iters: timed repetitions.

    Returns:
        ``seconds`` (median fwd+bwd), ``saved_bytes`` (what autograd keeps for backward, counted with saved-tensor
        hooks), ``peak_extra_bytes`` (resident-set growth of one fwd+bwd).
    """
    universal_contrastive_loss = importlib.import_module("uniclip_plugin.losses.mpnce").universal_contrastive_loss
    img, txt, scales, offsets = _unit_embeddings(batch, views, dim, 0)
    saved = saved_tensor_bytes(lambda: universal_contrastive_loss(img, txt, scales, offsets, chunk_size=chunk))
    with RssPeak() as peak:
        universal_contrastive_loss(img, txt, scales, offsets, chunk_size=chunk)["contrastive_loss"].backward()

    def run() -> None:
        universal_contrastive_loss(img, txt, scales, offsets, chunk_size=chunk)["contrastive_loss"].backward()

    seconds = median_time(run, iters, warmup=0)
    return {"seconds": seconds, "saved_bytes": saved, "peak_extra_bytes": peak.extra}


def loss_point_subprocess(batch: int, views: int, dim: int, chunk: int, iters: int) -> dict[str, float]:
    """``loss_point`` in a fresh interpreter where glibc returns large frees to the OS at once.

    Args:
        batch: B.
        views: V.
        dim: embedding width.
        chunk: ``chunk_size`` (0: unchunked).
        iters: timed repetitions.

    Returns:
        ``loss_point``'s result.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # whatever the caller's allocator
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"  # large frees go back to the OS at once: RSS tracks live memory
    return in_fresh_process(MODULE, f"loss_point({batch}, {views}, {dim}, {chunk}, {iters})", env)


def _gather_worker(
    rank: int, world: int, init_file: str, out_file: str, batch: int, views: int, dim: int, iters: int
) -> None:
    import torch.distributed as dist

    from uniclip_plugin.testing.gloo_group import gloo_group

    with gloo_group(rank, world, init_file):
        mpnce = importlib.import_module("uniclip_plugin.losses.mpnce")
        local = batch // world
        img, txt, scales, offsets = _unit_embeddings(local, views, dim, rank)

        def run() -> None:
            dist.barrier()
            mpnce.universal_contrastive_loss(
                img, txt, scales, offsets, local_loss=True, gather_with_grad=True, rank=rank, world_size=world
            )["contrastive_loss"].backward()

        seconds = median_time(run, iters, 2)
        if rank == 0:
            Path(out_file).write_text(json.dumps({"seconds": seconds}))


def gather_loss_time(batch: int, views: int, dim: int, iters: int, world: int = 2) -> float:
    """Median seconds of MP-NCE fwd+bwd with ``--local-loss --gather-with-grad`` on ``world`` gloo processes.

    Args:
        batch: the global batch, split evenly over the ranks.
        views: V.
        dim: embedding width.
        iters: timed steps (each starts at a barrier).
        world: processes.

    Returns:
        Rank 0's median seconds.
    """
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.json")
        mp.spawn(
            _gather_worker,
            args=(world, os.path.join(tmp, "init"), out, batch, views, dim, iters),
            nprocs=world,
            join=True,
        )
        return float(json.loads(Path(out).read_text())["seconds"])


def gather_loss_time_subprocess(batch: int, views: int, dim: int, iters: int) -> float:
    """``gather_loss_time`` in a fresh interpreter: the spawned ranks then start from a clean parent (the full run
    has compiled a model and holds its inductor workers by then)."""
    return float(in_fresh_process(MODULE, f"gather_loss_time({batch}, {views}, {dim}, {iters})"))


def loss_sizes(settings: Settings) -> list[int]:
    """The batches B of the MP-NCE curve."""
    return [256, 1024] if settings.quick else [256, 1024, 4096, 16384]


def measure(settings: Settings, results: dict[str, Any]) -> dict[str, Any]:
    """Section 6: MP-NCE fwd+bwd against M, chunked (256) and unchunked, one fresh process per point.

    Args:
        settings: the run's settings.
        results: the run so far (``methods``; ``_loss_at_batch_s`` from the options section).

    Returns:
        ``loss`` (the points), ``loss_share_of_step``, ``loss_chunked_over_unchunked`` (by B) and
        ``loss_peak_per_m_last_over_first``.
    """
    views = results["methods"]["uniclip_mpnce"]["image_passes"]
    sizes = loss_sizes(settings)
    rows = []
    for b in sizes:
        for chunk in (0, 256):
            if chunk == 0 and b > 4096:
                continue  # unchunked M × M logits at M = 49152 need > 9 GiB per matrix
            r = loss_point_subprocess(b, views, DIM, chunk, 1 if b > 1024 else settings.iters)
            rows.append({"B": b, "M": (views + 1) * b, "chunk": chunk, **r})
    by_b = {(r["B"], r["chunk"]): r["seconds"] for r in rows}
    chunk_ratios = {b: by_b[(b, 256)] / by_b[(b, 0)] for b in sizes if (b, 0) in by_b and (b, 256) in by_b}
    per_m = [r["peak_extra_bytes"] / r["M"] for r in rows if r["chunk"]]
    return {
        "loss": rows,
        "loss_share_of_step": results["_loss_at_batch_s"] / results["methods"]["uniclip_mpnce"]["step_s"],
        "loss_chunked_over_unchunked": chunk_ratios,
        "loss_peak_per_m_last_over_first": per_m[-1] / per_m[0] if per_m[0] > 0 else float("nan"),
    }
