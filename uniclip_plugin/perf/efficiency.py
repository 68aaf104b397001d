"""Data efficiency from the study's curves (``results/<profile>/curves.json``, written by harness/reproduce.py).

Not a copy of the study's computation: the interpolation and the per-seed rows are
``uniclip_plugin.study.analysis.data_efficiency``; this module only finds the curves file and turns the study's rows
into the report's JSON (None instead of nan where the target is never reached, a mean only when every seed reached it).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Optional

from .settings import Settings

PROFILES = ("full-tuned", "full", "quick-tuned", "quick")  # reproduce.py's result folders, longest first


def data_efficiency(
    curves: dict[str, dict[str, list[dict]]], method: str = "uniclip", base: str = "clip"
) -> dict[str, Any]:
    """Per seed: steps for ``method`` to reach ``base``'s final val_r1, as a fraction of ``base``'s final step count.

    Args:
        curves: the study's curves, ``{method: {seed: [{"step", "val_r1", ...}]}}``.
        method: the method measured.
        base: the baseline whose final val_r1 is the target.

    Returns:
        ``seeds``: per seed ``target_r1``, ``base_steps``, ``steps`` and ``fraction`` (None where never reached);
        ``mean`` over seeds (None unless every seed reached it); a ``note`` when a method's curves are missing.
    """
    from uniclip_plugin.study import analysis as study

    if method not in curves or base not in curves:
        return {"seeds": {}, "mean": None, "note": f"curves lack {method!r} or {base!r}"}
    seeds: dict[str, dict[str, Any]] = {}
    for row in study.data_efficiency(curves, method=method, baseline=base):
        reached = not math.isnan(row["steps_to_reach"])
        seeds[row["seed"]] = {
            "target_r1": row["target_val_r1"],
            "base_steps": row["baseline_steps"],
            "steps": row["steps_to_reach"] if reached else None,
            "fraction": row["fraction"] if reached else None,
        }
    fractions = [s["fraction"] for s in seeds.values()]
    mean = statistics.mean(fractions) if fractions and None not in fractions else None
    return {"seeds": seeds, "mean": mean}


def find_curves(explicit: Optional[str], root: Optional[Path] = None) -> Optional[Path]:
    """The curves file to read.

    Args:
        explicit: a path given on the command line (``--curves``), returned as is.
        root: the folder holding ``results/`` (default: the working directory, where reproduce.py writes it).

    Returns:
        ``explicit``, else the first existing ``results/<profile>/curves.json``, else None.
    """
    if explicit:
        return Path(explicit)
    for profile in PROFILES:
        path = (root or Path.cwd()) / "results" / profile / "curves.json"
        if path.exists():
            return path
    return None


def measure(settings: Settings, results: dict[str, Any]) -> dict[str, Any]:
    """Section 7: ``data_efficiency`` of the study's curves (``path`` and the result, or ``path`` and a ``note`` when
    there is no curves file)."""
    path = find_curves(settings.curves)
    eff: dict[str, Any] = {"path": _shown(path) if path else None}
    if path is None or not path.exists():
        eff["note"] = "no curves file"
    else:
        eff.update(data_efficiency(json.loads(path.read_text())))
    return {"data_efficiency": eff}


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (no machine paths in the JSON)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
