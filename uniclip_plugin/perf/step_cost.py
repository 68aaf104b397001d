"""Sections 1–3: tower costs, each method's step and UniCLIP's step beyond its towers.

Towers, method steps and step parts are timed round-robin in the SAME rounds (``steps.method_steps``), so load drift
during a run cannot bias one against another; that is why they are one measurement here and three tables in the
report.
"""

from __future__ import annotations

from typing import Any

from .settings import Settings
from .steps import augment_time, method_steps, part_passes


def measure_steps(settings: Settings, results: dict[str, Any]) -> dict[str, Any]:
    """Sections 1–2: tower passes, the four methods' steps and the step parts, in one set of rounds.

    Args:
        settings: the run's settings (``size``, ``batch``, ``main_iters``, ``warmup``).
        results: the run so far (unused).

    Returns:
        ``step`` (tower seconds, UniCLIP's bound, the clip and uniclip steps, ``<pass>_tower_s`` per tower pass),
        ``methods`` (``method_steps``'s rows) and ``_parts`` (the step parts' medians of uniclip and clip, for
        section 3).
    """
    size, batch = settings.size, settings.batch
    extra = {f"uniclip:{k}": f for k, f in part_passes("uniclip_mpnce", f"UniCLIP-{size}", batch).items()}
    extra.update({f"clip:{k}": f for k, f in part_passes("clip", f"CLIP-{size}", batch).items()})
    steps, medians = method_steps(size, batch, settings.main_iters, None, settings.warmup, extra=extra)
    del extra  # the part models: free before the next sections
    step = {
        "image_tower_s": medians["image"],
        "text_tower_s": medians["text"],
        "bound": steps["uniclip_mpnce"]["bound"],
        "clip_step_s": steps["clip"]["step_s"],
        "uniclip_step_s": steps["uniclip_mpnce"]["step_s"],
    }
    step.update({f"{key}_tower_s": sec for key, sec in medians.items() if key.startswith(("image", "text"))})
    parts = {
        prefix: {k.split(":", 1)[1]: v for k, v in medians.items() if k.startswith(f"{prefix}:")}
        for prefix in ("uniclip", "clip")
    }
    return {"step": step, "methods": steps, "_parts": parts}


def measure_beyond_towers(settings: Settings, results: dict[str, Any]) -> dict[str, Any]:
    """Section 3: the step beyond its towers, part by part, and the view share at 256 views of 64 px.

    Args:
        settings: the run's settings (``iters``).
        results: the run so far (``step``, ``methods``, ``_parts``).

    Returns:
        ``beyond_towers``: per method its parts, towers as run, the rest and the shares; the view shares.
    """
    image, text = results["step"]["image_tower_s"], results["step"]["text_tower_s"]
    uni, t_clip = results["methods"]["uniclip_mpnce"], results["methods"]["clip"]["step_s"]
    uni_parts, clip_parts = results["_parts"]["uniclip"], results["_parts"]["clip"]
    t_uni = uni["step_s"]
    towers_uni_linear = uni["image_passes"] * image + text
    towers_uni, towers_clip = uni["towers_s"], image + text
    aug256 = augment_time(128, 2, 64, settings.iters)
    beyond_uni, beyond_clip = t_uni - towers_uni, t_clip - towers_clip
    beyond_uni_linear = t_uni - towers_uni_linear
    extras = uni_parts["views"] + uni_parts.get("aug_embed", 0.0) + uni_parts["loss"]
    return {
        "beyond_towers": {
            "uniclip": {
                **uni_parts,
                "towers_s": towers_uni,
                "beyond_s": beyond_uni,
                "rest_s": beyond_uni - sum(uni_parts.values()),
                "beyond_share": beyond_uni / t_uni,
                "towers_linear_s": towers_uni_linear,
                "beyond_linear_s": beyond_uni_linear,
                "beyond_linear_share": beyond_uni_linear / t_uni,
                "extras_s": extras,
            },
            "clip": {
                **clip_parts,
                "towers_s": towers_clip,
                "beyond_s": beyond_clip,
                "rest_s": beyond_clip - sum(clip_parts.values()),
                "beyond_share": beyond_clip / t_clip,
            },
            "views_share": uni_parts["views"] / t_uni,
            "views_256_at_64px_s": aug256,
            "views_256_at_64px_share": aug256 / t_uni,
        }
    }
