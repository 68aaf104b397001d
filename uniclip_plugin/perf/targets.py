"""The performance targets (docs/PERF.md): each a ratio of two numbers measured in the same run, with its goal.

Targets live here and in ``python harness/perf.py``'s output, never in unit tests.
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional

from .settings import Settings

Target = tuple[str, str, str, Optional[bool]]  # (target, measured, goal, met; None: informational)


def _step_targets(results: dict[str, Any]) -> list[Target]:
    steps, beyond = results["methods"], results["beyond_towers"]
    t_uni, t_clip = steps["uniclip_mpnce"]["step_s"], steps["clip"]["step_s"]
    ratio, bound, batch = t_uni / t_clip, results["step"]["bound"], results["batch"]
    views, aug256 = steps["uniclip_mpnce"]["image_passes"], beyond["views_256_at_64px_s"]
    loss_at_batch, view_share = results["_loss_at_batch_s"], beyond["views_share"]
    worst_chunk = max(results["loss_chunked_over_unchunked"].values())
    linear, extras = results["loss_peak_per_m_last_over_first"], beyond["uniclip"]["extras_s"]
    beyond_clip, beyond_uni_linear = beyond["clip"]["beyond_s"], beyond["uniclip"]["beyond_linear_s"]
    return [
        ("UniCLIP/CLIP step ÷ bound", f"{ratio / bound:.3f}", "≤ 1.10", ratio / bound <= 1.10),
        (
            "MP-NCE fwd+bwd share of the UniCLIP step",
            f"{100 * loss_at_batch / t_uni:.1f}%",
            "≤ 5%",
            loss_at_batch / t_uni <= 0.05,
        ),
        (
            "MP-NCE chunked/unchunked time (largest ratio over B)",
            f"{worst_chunk:.2f}",
            "chunked ≤ 1.3 × unchunked",
            worst_chunk <= 1.3,
        ),
        ("MP-NCE chunked peak memory per row, largest/smallest M", f"{linear:.2f}", "≈ 1 (linear in M)", None),
        (f"views ({batch}·{views} of the step) share", f"{100 * view_share:.1f}%", "≤ 5%", view_share <= 0.05),
        (
            f"256 views at 64 px, share of the B={batch} step",
            f"{100 * aug256 / t_uni:.1f}%",
            "≤ 5% (at B=256)",
            aug256 / t_uni <= 0.05 if batch == 256 else None,
        ),
        (
            "UniCLIP's extras: views + aug-embed + MP-NCE (+ gather: none on 1 process), share of the step",
            f"{100 * extras / t_uni:.1f}%",
            "≤ 10%",
            extras / t_uni <= 0.10,
        ),
        (
            f"UniCLIP step − ({views}·image(B) + text(B)), share (CLIP's own: {100 * beyond_clip / t_clip:.1f}%)",
            f"{100 * beyond_uni_linear / t_uni:.1f}%",
            "info (incl. AdamW, as CLIP's)",
            None,
        ),
        (
            "UniCLIP/CLIP step ÷ tower-exact bound",
            f"{steps['uniclip_mpnce']['ratio_over_exact_bound']:.3f}",
            "≤ 1.10 (diagnostic)",
            steps["uniclip_mpnce"]["ratio_over_exact_bound"] <= 1.10,
        ),
    ]


def _other_targets(results: dict[str, Any]) -> list[Target]:
    loader, eff, steps = results["loader"], results["data_efficiency"], results["methods"]
    accel = results["accelerator"].get("rows")
    return [
        ("loader / training samples/s", f"{loader['ratio']:.1f}", "≥ 3", loader["ratio"] >= 3),
        (
            "uniclip steps to clip's final R@1 / clip's steps",
            "n/a" if eff.get("mean") is None else f"{eff['mean']:.2f}",
            "≤ 0.50",
            None if eff.get("mean") is None else eff["mean"] <= 0.5,
        ),
        ("DeCLIP/CLIP iteration (anchor ≈ 1.5)", f"{steps['declip']['ratio_to_clip']:.2f}", "≈ 1.5 (reference)", None),
        (
            "GPU: ViT-B/32 bf16 B=256, UniCLIP / CLIP step",
            "no GPU on this machine"
            if accel is None
            else f"{accel['uniclip_mpnce']['step_s'] / accel['clip']['step_s']:.2f}",
            "measured",
            None,
        ),
        (
            "GPU: in-forward views free of host syncs",
            "no GPU on this machine" if accel is None else str(accel["uniclip_mpnce"].get("views_sync_free")),
            "no sync",
            None if accel is None else bool(accel["uniclip_mpnce"].get("views_sync_free")),
        ),
    ]


def measure(settings: Settings, results: dict[str, Any]) -> dict[str, Any]:
    """Section 8: every target against its goal, and the run's wall time and end load.

    Args:
        settings: the run's settings (``wall0``).
        results: the whole run (every earlier section).

    Returns:
        ``targets`` (``target``, ``measured``, ``goal``, ``met``), ``wall_s`` and ``load_avg_end``.
    """
    targets = _step_targets(results) + _other_targets(results)
    return {
        "targets": [{"target": t, "measured": m, "goal": g, "met": ok} for t, m, g, ok in targets],
        "wall_s": time.perf_counter() - settings.wall0,
        "load_avg_end": list(os.getloadavg()),
    }
