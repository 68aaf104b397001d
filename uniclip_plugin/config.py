"""Typed method configs carried by a marker key in open_clip model JSONs, and the deep merge open_clip lacks."""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, TypeVar

from .errors import PluginError
from .similarity import SIMILARITY_FORMS

T = TypeVar("T")


def from_dict(cls: type[T], values: Mapping[str, Any] | None, where: str) -> T:
    """Build dataclass ``cls`` from ``values``, rejecting unknown keys with the list of valid ones."""
    values = dict(values or {})
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise PluginError(f"unknown key(s) {unknown} in {where}; valid keys: {sorted(names)}")
    for key, val in list(values.items()):
        if isinstance(val, list):
            values[key] = tuple(val)
    return cls(**values)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge (open_clip's ``create_model`` only does a shallow ``update``, factory.py:494)."""
    out = copy.deepcopy(dict(base))
    for key, val in override.items():
        if isinstance(val, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], val)
        else:
            out[key] = copy.deepcopy(val)
    return out


@dataclass(frozen=True)
class UniCLIPCfg:
    """UniCLIP's parts (docs/DESIGN.md, "How the pieces map to the paper"); every switch is an ablation of the paper's
    design."""

    views: int = 2                      # V image views per sample in training; V=1 drops image–image pairs
    view_preset: str = "simclr"         # augmentation strengths (views.VIEW_PRESETS)
    aug_embed: bool = True              # augmentation-aware embedding (False: views embed like plain CLIP)
    aug_fusion: str = "concat"          # "concat": W[h; e(a)]  |  "add": h + e(a)
    aug_hidden: int = 256               # hidden width of the augmentation-encoder MLP
    domain_similarity: bool = True      # one scale and offset per domain pair (II, IT, TT); False: one shared pair
    init_temperature: float = 0.07      # τ at init for every domain pair (scale = 1/τ)
    init_offset: float = 0.0            # offset b at init for every domain pair
    # how scale and offset make a similarity: "shift_scale" s = scale·(cos − b) | "scale_shift" s = scale·cos − b; the
    # loss takes the same value (one flag, --similarity-form, sets both)
    similarity_form: str = "shift_scale"

    def __post_init__(self) -> None:
        if self.views < 1:
            raise PluginError(f"uniclip_cfg.views must be ≥ 1, got {self.views}")
        if self.aug_fusion not in ("concat", "add"):
            raise PluginError(f"uniclip_cfg.aug_fusion must be 'concat' or 'add', got {self.aug_fusion!r}")
        if self.similarity_form not in SIMILARITY_FORMS:
            raise PluginError(f"uniclip_cfg.similarity_form must be one of {SIMILARITY_FORMS}, got "
                              f"{self.similarity_form!r}")
        if not 0 < self.init_temperature:
            raise PluginError(f"uniclip_cfg.init_temperature must be > 0, got {self.init_temperature}")
