"""Options open_clip users expect, as ratios to the plain UniCLIP step: ``--grad-checkpointing``, bf16 autocast,
``--torchcompile`` (full run) and ``--local-loss --gather-with-grad`` (a 2-process gloo run of the loss, full run)."""

from __future__ import annotations

import time
from typing import Any

import torch

from .loss_memory import DIM, gather_loss_time_subprocess, loss_point_subprocess
from .settings import Settings
from .steps import build_step, step_time
from .timing import median_time

GATHER = "local_loss_gather_with_grad"  # the options row of the 2-process loss


def option_steps(
    model_name: str, batch: int, iters: int, plain_s: float, full: bool, warmup: int = 2
) -> dict[str, dict[str, Any]]:
    """UniCLIP step with each option, as a ratio to the plain step.

    Args:
        model_name: the UniCLIP config.
        batch: B.
        iters: timed steps.
        plain_s: the plain step's seconds.
        full: also ``torch.compile`` (too slow for ``--quick``).
        warmup: untimed steps.

    Returns:
        ``grad_checkpointing``, ``bf16_autocast``, ``torchcompile``: ``step_s`` and ``ratio_to_plain``, or a ``note``.
    """
    rows: dict[str, dict[str, Any]] = {}
    for name, kw in (
        ("grad_checkpointing", {"grad_checkpointing": True}),
        ("bf16_autocast", {"autocast_dtype": torch.bfloat16}),
    ):
        seconds = step_time("uniclip_mpnce", model_name, batch, iters, warmup, **kw)
        rows[name] = {"step_s": seconds, "ratio_to_plain": seconds / plain_s}
    if not full:
        rows["torchcompile"] = {
            "note": "not measured in --quick: compiling the step (inductor, C++ on 2 cores) "
            "takes longer than the whole quick budget"
        }
        return rows
    try:
        step, _ = build_step("uniclip_mpnce", model_name, batch, compile_model=True)
        t0 = time.perf_counter()
        step()
        first = time.perf_counter() - t0
        seconds = median_time(step, iters, 1)
        rows["torchcompile"] = {"step_s": seconds, "ratio_to_plain": seconds / plain_s, "first_step_s": first}
    except Exception as err:  # noqa: BLE001 - a failed compile is a measured outcome, not a crash of the benchmark
        rows["torchcompile"] = {"note": f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}"}
    return rows


def _gather_row(settings: Settings, views: int, loss_at_batch: float) -> dict[str, Any]:
    if settings.quick:
        return {"note": "not measured in --quick (2 spawned processes)"}
    try:
        gather_s = gather_loss_time_subprocess(settings.batch, views, DIM, settings.iters)
    except Exception as err:  # noqa: BLE001 - reported, the rest of the run goes on
        return {"note": f"failed: {err}"}
    return {"two_process_loss_s": gather_s, "one_process_loss_s": loss_at_batch, "ratio": gather_s / loss_at_batch}


def measure(settings: Settings, results: dict[str, Any]) -> dict[str, Any]:
    """Section 5: the options, and MP-NCE at the training batch (1 process; 2 gloo processes in the full run).

    Args:
        settings: the run's settings.
        results: the run so far (``methods``).

    Returns:
        ``options`` (a row per option) and ``_loss_at_batch_s`` (MP-NCE fwd+bwd at B, kept for the loss section).
    """
    uni = results["methods"]["uniclip_mpnce"]
    opts = option_steps(
        f"UniCLIP-{settings.size}",
        settings.batch,
        settings.iters if settings.full else 2,
        uni["step_s"],
        settings.full,
        settings.warmup,
    )
    loss_at_batch = loss_point_subprocess(settings.batch, uni["image_passes"], DIM, 0, settings.iters)["seconds"]
    opts[GATHER] = _gather_row(settings, uni["image_passes"], loss_at_batch)
    return {"options": opts, "_loss_at_batch_s": loss_at_batch}
