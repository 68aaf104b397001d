"""Typed method configs carried by a marker key in open_clip model JSONs, and the deep merge open_clip lacks."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional, TypeVar, Union

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


def merge_options(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A method's options (``uniclip_cfg`` ...) with ``override`` deep-merged over ``base``; one ``view_preset``
    for every view replaces the base's per-view ``view_presets`` unless the override names those too (as the
    ``--view-preset`` flag does)."""
    out = deep_merge(base, override)
    if "view_preset" in override and "view_presets" not in override and "view_presets" in out:
        out["view_presets"] = None
    return out


AUG_FUSIONS = ("concat", "add", "film")
EVAL_AUG_PARAMS = ("identity", "caption_mean")
TT_OFFSETS = ("learned", "fixed")


@dataclass(frozen=True)
class UniCLIPCfg:
    """UniCLIP's parts (docs/METHODS.md §UniCLIP); every switch is an ablation of the paper's design."""

    views: int = 2  # V image views per sample in training; V=1 drops image–image pairs
    view_preset: str = "simclr"  # augmentation strengths of every view (views.VIEW_PRESETS)
    # one preset per view instead, e.g. ("clip", "simclr"): view 0 a caption view, view 1 a strong view; with more
    # views than presets the last one repeats, with fewer the first V are used (views=1: the caption view only)
    view_presets: Optional[tuple[str, ...]] = None
    # side of the image the loader gives for training (resize + centre crop, no random crop); the views are cut from
    # it and rendered at the model's input size. 0: the input size (views re-sampled from the shrunk image)
    source_size: int = 0
    aug_embed: bool = True  # augmentation-aware embedding (False: views embed like plain CLIP)
    # "concat": z = W[h; e(a)] | "add": z = h + e(a) | "film": z = h·(1 + γ(a)) + β(a), [γ; β] = e(a)
    aug_fusion: str = "concat"
    aug_hidden: int = 256  # hidden width of the augmentation-encoder MLP
    # parameters fed to the augmentation embedding at evaluation: the identity view, or the mean parameters of the
    # caption view's preset (view 0's)
    eval_aug_params: str = "identity"
    domain_similarity: bool = True  # one scale and offset per domain pair (II, IT, TT); False: one shared pair
    # τ at init (scale = 1/τ): one value for every domain pair, or three (II, IT, TT)
    init_temperature: Union[float, tuple[float, ...]] = 0.07
    init_offset: float = 0.0  # offset b at init for every domain pair
    offset_bound: float = 0.0  # offsets confined to (−bound, bound) by bound·tanh; 0: unbounded
    # "fixed": the text–text offset stays at init (text–text pairs are never positive, nothing pulls it back)
    tt_offset: str = "learned"
    # how scale and offset make a similarity: "shift_scale" s = scale·(cos − b) | "scale_shift" s = scale·cos − b; the
    # loss takes the same value (one flag, --similarity-form, sets both)
    similarity_form: str = "shift_scale"

    def __post_init__(self) -> None:
        _check_choice("aug_fusion", self.aug_fusion, AUG_FUSIONS)
        _check_choice("similarity_form", self.similarity_form, SIMILARITY_FORMS)
        _check_choice("eval_aug_params", self.eval_aug_params, EVAL_AUG_PARAMS)
        _check_choice("tt_offset", self.tt_offset, TT_OFFSETS)
        if self.views < 1:
            raise PluginError(f"uniclip_cfg.views must be ≥ 1, got {self.views}")
        if self.view_presets is not None and not self.view_presets:
            raise PluginError("uniclip_cfg.view_presets must name at least one preset (or be null)")
        temps = self.temperatures()
        if len(temps) != 3 or min(temps) <= 0:
            raise PluginError(
                f"uniclip_cfg.init_temperature must be one value > 0 or three (II, IT, TT), got {self.init_temperature}"
            )
        if self.source_size < 0 or self.offset_bound < 0:
            raise PluginError("uniclip_cfg.source_size and offset_bound must be ≥ 0 (0: off)")
        if self.offset_bound and abs(self.init_offset) >= self.offset_bound:
            raise PluginError(
                f"uniclip_cfg.init_offset {self.init_offset} must lie inside ±offset_bound {self.offset_bound}"
            )

    def temperatures(self) -> tuple[float, ...]:
        """τ at init per domain pair (II, IT, TT)."""
        t = self.init_temperature
        return (float(t),) * 3 if isinstance(t, (int, float)) else tuple(float(v) for v in t)

    def presets(self) -> tuple[str, ...]:
        """The preset of each of the ``views`` views: ``view_presets`` names the first ones (view 0 the caption
        view) and its last preset repeats for the rest; without it, ``view_preset`` for every view."""
        if not self.view_presets:
            return (self.view_preset,) * self.views
        named = tuple(self.view_presets[: self.views])
        return named + named[-1:] * (self.views - len(named))


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise PluginError(f"uniclip_cfg.{key} must be one of {choices}, got {value!r}")
