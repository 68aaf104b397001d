"""2 processes (gloo) with --local-loss --gather-with-grad equal the single-process global-batch loss and gradient.

World-size factor. Rank r computes L_r, the mean over its own (anchor, positive) pairs (or anchors) against the
gathered columns; every rank has the same count, so the global loss is L = (1/W) Σ_r L_r. Each rank calls backward on
its L_r; torch.distributed.nn.all_gather's backward sums the column gradients of every rank into the owner, so rank r
receives ∂(Σ_r' L_r')/∂x_r = W · ∂L/∂x_r for its features x_r. DDP then averages parameter gradients over ranks; the
parameters upstream of x_r see W · ∂L/∂x_r / W = ∂L/∂x_r, the global gradient. Hence the checks:
  * features: rank r's gradient / W == the single-process gradient of L w.r.t. rank r's samples;
  * scales/offsets (replicated, not gathered): mean over ranks of ∂L_r/∂θ == ∂L/∂θ (what DDP's average gives).
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

WORLD, B_LOCAL, V, D = 2, 4, 2, 8
OBJECTIVES = ("mpnce", "infonce", "supcon", "milnce")  # = losses.mpnce.OBJECTIVES (asserted below)
CHUNKS = (0, 3)  # unchunked and chunked (3 does not divide the 12 local rows)
# the options that change which pairs count and how they are weighted (per-pair objectives)
PAIR_OPTIONS = (
    {"text_positives": "caption"},
    {"balance": "group", "group_weights": (1.0, 0.4)},
    {"text_positives": "caption", "balance": "group", "group_weights": (0.6, 1.0)},
)


def _inputs() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(WORLD * B_LOCAL, V, D, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(WORLD * B_LOCAL, D, generator=g, dtype=torch.float64), dim=-1)
    scales = torch.tensor([6.0, 12.0, 4.0], dtype=torch.float64)
    offsets = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    return img, txt, scales, offsets


def _run(loss_fn: Any, features: tuple[torch.Tensor, ...], **kw: Any) -> list[torch.Tensor]:
    """Loss and the gradients w.r.t. (image features, text features, scales, offsets)."""
    leaves = [t.clone().requires_grad_() for t in features]
    loss = loss_fn(*leaves, **kw)["contrastive_loss"]
    loss.backward()
    return [loss.detach()] + [t.grad for t in leaves]


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    from uniclip_plugin.testing.gloo_group import gloo_group

    with gloo_group(rank, WORLD, init_file):
        mpnce = importlib.import_module("uniclip_plugin.losses.mpnce")
        img, txt, scales, offsets = _inputs()
        part = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
        local = (img[part], txt[part], scales, offsets)
        results: dict[str, Any] = {"objectives": mpnce.OBJECTIVES}
        for objective in OBJECTIVES:
            for chunk in CHUNKS:
                results[f"{objective}/{chunk}"] = _run(
                    mpnce.universal_contrastive_loss,
                    local,
                    objective=objective,
                    chunk_size=chunk,
                    local_loss=True,
                    gather_with_grad=True,
                    rank=rank,
                    world_size=WORLD,
                )
        for i, options in enumerate(PAIR_OPTIONS):
            for chunk in CHUNKS:
                results[f"options{i}/{chunk}"] = _run(
                    mpnce.universal_contrastive_loss,
                    local,
                    chunk_size=chunk,
                    local_loss=True,
                    gather_with_grad=True,
                    rank=rank,
                    world_size=WORLD,
                    **options,
                )
        # Rows = every gathered element (open_clip without --local-loss): each rank computes the global loss.
        results["global_rows"] = _run(
            mpnce.universal_contrastive_loss,
            local,
            local_loss=False,
            gather_with_grad=True,
            rank=rank,
            world_size=WORLD,
        )
        # Gather without grad: same value; gradients reach the local features only through the live local slice.
        results["no_grad_gather"] = _run(
            mpnce.universal_contrastive_loss,
            local,
            local_loss=True,
            gather_with_grad=False,
            rank=rank,
            world_size=WORLD,
        )
        try:
            mpnce.universal_contrastive_loss(*local, rank=1 - rank, world_size=WORLD)
            results["wrong_rank"] = "no error"
        except RuntimeError as err:
            results["wrong_rank"] = str(err)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """‖got − want‖ / ‖want‖, floored at 1e-9 in the denominator: infonce's offset gradient is exactly 0 in exact
    arithmetic (each of its softmaxes holds one domain pair, so the offset cancels) and only round-off remains."""
    return ((got - want).norm() / want.norm().clamp(min=1e-9)).item()


@pytest.mark.multiproc
def test_two_ranks_equal_one_process(tmp_path: Path) -> None:
    from uniclip_plugin.losses.mpnce import OBJECTIVES as objectives
    from uniclip_plugin.losses.mpnce import universal_contrastive_loss

    assert objectives == OBJECTIVES
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    features = _inputs()
    for objective in OBJECTIVES:
        want = _run(universal_contrastive_loss, features, objective=objective)  # one process, global batch
        for chunk in CHUNKS:
            got = [r[f"{objective}/{chunk}"] for r in ranks]
            assert _rel_err(sum(g[0] for g in got) / WORLD, want[0]) <= 1e-5, (objective, chunk)
            for k in (1, 2):  # image, text features: rank r's gradient / W is the global gradient of its samples
                assert _rel_err(torch.cat([g[k] for g in got]) / WORLD, want[k]) <= 1e-5, (objective, chunk, k)
            for k in (3, 4):  # scales, offsets: DDP's mean over ranks
                assert _rel_err(sum(g[k] for g in got) / WORLD, want[k]) <= 1e-5, (objective, chunk, k)
    for i, options in enumerate(PAIR_OPTIONS):
        want = _run(universal_contrastive_loss, features, **options)
        for chunk in CHUNKS:
            got = [r[f"options{i}/{chunk}"] for r in ranks]
            assert _rel_err(sum(g[0] for g in got) / WORLD, want[0]) <= 1e-5, (options, chunk)
            for k in (1, 2):
                assert _rel_err(torch.cat([g[k] for g in got]) / WORLD, want[k]) <= 1e-5, (options, chunk, k)
            for k in (3, 4):
                assert _rel_err(sum(g[k] for g in got) / WORLD, want[k]) <= 1e-5, (options, chunk, k)
    want = _run(universal_contrastive_loss, features)
    for r in ranks:
        assert _rel_err(r["global_rows"][0], want[0]) <= 1e-5  # every rank: the global loss
        for k in (3, 4):
            assert _rel_err(r["global_rows"][k], want[k]) <= 1e-5  # replicated parameters: the global gradient
    # Without --local-loss every rank backpropagates the whole global loss, and all_gather's backward sums the W
    # copies: the features' gradient is W × the global one (still W × after DDP's mean; open_clip #616 / #894).
    assert _rel_err(torch.cat([r["global_rows"][1] for r in ranks]), want[1] * WORLD) <= 1e-5
    assert _rel_err(sum(r["no_grad_gather"][0] for r in ranks) / WORLD, want[0]) <= 1e-5
    for rank, r in enumerate(ranks):  # the gather's documented semantics: others' columns constant, its own live
        for k, ref in enumerate(_no_grad_gather_reference(features, rank)):
            assert _rel_err(r["no_grad_gather"][k], ref) <= 1e-5, (rank, k)
    assert all("process group says rank" in r["wrong_rank"] for r in ranks)


def _no_grad_gather_reference(features: tuple[torch.Tensor, ...], rank: int) -> list[torch.Tensor]:
    """One process: rank ``rank``'s local-rows loss where the other ranks' columns are constants and its own columns
    are its live features (what a gather without gradient plus the live local slice gives), and its gradients."""
    from unittest import mock

    import uniclip_plugin.losses.mpnce as mpnce

    img, txt, scales, offsets = features
    part = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
    leaves = [t.clone().requires_grad_() for t in (img[part], txt[part], scales, offsets)]

    def gather(i: torch.Tensor, t: torch.Tensor, **_: Any) -> tuple[torch.Tensor, torch.Tensor]:
        blocks = [
            (i, t) if k == rank else (img[k * B_LOCAL : (k + 1) * B_LOCAL], txt[k * B_LOCAL : (k + 1) * B_LOCAL])
            for k in range(WORLD)
        ]
        return torch.cat([b[0] for b in blocks]), torch.cat([b[1] for b in blocks])

    with mock.patch.object(mpnce, "gather_universal", gather):
        loss = mpnce.universal_contrastive_loss(
            *leaves, local_loss=True, gather_with_grad=False, rank=rank, world_size=WORLD
        )["contrastive_loss"]
    loss.backward()
    return [loss.detach()] + [t.grad for t in leaves]
