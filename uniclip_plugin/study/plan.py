"""What the study trains: the budget profiles, the methods and ablations, and the learning-rate grid.

Every method trains with ``open_clip train`` on the same tiny towers, data, epochs, batch, optimiser and schedule;
a profile fixes those. The method table names each method's ``--loss``, model family and flags (the study keeps its
own table; the method registry ``uniclip_plugin.methods`` is the plugin's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

__all__ = ["Profile", "PROFILES", "TUNE_LRS", "Method", "METHODS", "ABLATIONS", "available", "profile_samples"]


@dataclass(frozen=True)
class Profile:
    """One training budget, the same for every method."""

    size: str  # tiny config suffix: CLIP-<size>, UniCLIP-<size>
    epochs: int
    batch: int
    lr: float
    warmup: int
    samples: Optional[int] = None  # --train-num-samples per epoch (None: the data's sizes.json)
    epoch_fraction: float = 1.0  # an "epoch" is this fraction of the data (more validation points per pass)
    probe_max_train: int = 10000  # linear-probe training samples (Fashion-MNIST's probe dominates the bench)
    threads: Optional[int] = None  # OMP threads per training process (None: all cores)


PROFILES = {
    "smoke": Profile("Tiny-32", 2, 32, 1e-3, 2, samples=64),
    "quick": Profile("Tiny-32", 6, 128, 1e-3, 50, epoch_fraction=0.5, probe_max_train=5000),  # 3 passes, 6 val points
    # 20 passes, 40 val points. Tiny-32 at one thread: on 2 cores the loader worker needs the other core, and 2 OMP
    # threads beside it made each step 1.1-1.45x slower (docs/PERF.md); Tiny-64 would allow ~6 passes in 90 min.
    "full": Profile("Tiny-32", 40, 128, 1e-3, 200, epoch_fraction=0.5, threads=1),
    # a third of full (602 of 1,720 steps), warm-up scaled alike: issue 18's decisions and lr search
    "third": Profile("Tiny-32", 14, 128, 1e-3, 70, epoch_fraction=0.5, threads=1),
}
TUNE_LRS = (5e-4, 1e-3, 2e-3, 4e-3, 8e-3)  # the same grid, seeds and budget for every method


@dataclass(frozen=True)
class Method:
    """One row of the study: a ``--loss``, a model family and extra training flags."""

    name: str
    loss: str
    model: str  # "{size}" is replaced by the profile's size
    flags: tuple[str, ...] = field(default_factory=tuple)
    note: str = ""
    lr: Optional[float] = None  # a fixed lr (reference rows); None: the tuned one (ablations: UniCLIP's)


METHODS = [
    Method("clip", "clip", "CLIP-{size}", note="open_clip ClipLoss, open_clip's train transform"),
    Method(
        "clip-aug",
        "uniclip_mpnce",
        "UniCLIP-{size}",
        ("--view-presets", "simclr", "--no-aug-embed", "--no-domain-similarity", "--mpnce-objective", "infonce"),
        "control: CLIP loss on one UniCLIP-strength view (= ClipLoss with UniCLIP's strong augmentations)",
    ),
    Method("slip", "slip", "SLIP-{size}", note="SLIP: CLIP loss on a weak view + SimCLR on two strong views"),
    Method("declip", "declip", "DeCLIP-{size}", note="DeCLIP: 0.4 MVS + 0.2 SimSiam + 0.2 MLM + 0.2 NNS"),
    Method(
        "uniclip",
        "uniclip_mpnce",
        "UniCLIP-{size}",
        note="UniCLIP: a caption view + a strong view, FiLM aug-aware embedding, MP-NCE, domain sim",
    ),
]
ABLATIONS = [
    Method(
        "uniclip-no-aug-embed",
        "uniclip_mpnce",
        "UniCLIP-{size}",
        ("--no-aug-embed",),
        "without the augmentation-aware image embedding",
    ),
    Method(
        "uniclip-infonce",
        "uniclip_mpnce",
        "UniCLIP-{size}",
        ("--mpnce-objective", "infonce"),
        "MP-NCE replaced by InfoNCE on the universal space",
    ),
    Method(
        "uniclip-supcon",
        "uniclip_mpnce",
        "UniCLIP-{size}",
        ("--mpnce-objective", "supcon"),
        "MP-NCE replaced by SupCon",
    ),
    Method(
        "uniclip-milnce",
        "uniclip_mpnce",
        "UniCLIP-{size}",
        ("--mpnce-objective", "milnce"),
        "MP-NCE replaced by MIL-NCE",
    ),
    Method(
        "uniclip-shared-sim",
        "uniclip_mpnce",
        "UniCLIP-{size}",
        ("--no-domain-similarity",),
        "one shared temperature and offset for all domain pairs instead of one per pair",
    ),
    Method(
        "uniclip-v1",
        "uniclip_mpnce",
        "UniCLIP-{size}",
        ("--view-presets", "clip"),
        "V = 1: the caption view only, no image–image pairs",
    ),
    # not paper ablations: the strength of the second view
    Method(
        "uniclip-mocov2-views",
        "uniclip_mpnce",
        "UniCLIP-{size}",
        ("--view-presets", "clip,mocov2"),
        "diagnostic: a MoCo-v2 second view (crop area ≥ 0.2 instead of ≥ 0.08)",
    ),
    Method(
        "uniclip-weak-views",
        "uniclip_mpnce",
        "UniCLIP-{size}",
        ("--view-presets", "clip,clip_weak"),
        "diagnostic: SLIP's weak CLIP view as the second view (crop area ≥ 0.5, no flip, jitter, grayscale or blur)",
    ),
    # a reference row, not an ablation: CLIP at the lr the earlier quick-profile search chose for it
    Method(
        "clip-lr2e-3",
        "clip",
        "CLIP-{size}",
        note="reference: CLIP at lr 2e-3, its lr in the study before issue 18 (chosen on the quick profile)",
        lr=2e-3,
    ),
    Method(
        "uniclip-paper-views",
        "uniclip_mpnce",
        "UniCLIP-{size}",
        ("--view-presets", "simclr,simclr", "--aug-fusion", "concat", "--view-source-size", "0"),
        "before issue 18: two SimCLR views re-sampled from the 32-px image, concat fusion after the projection",
    ),
]


def available(method: Method, size: str) -> bool:
    """Whether this version registers ``method``'s loss and its model config at ``size``."""
    import open_clip

    import uniclip_plugin
    from uniclip_plugin import registry

    uniclip_plugin.register()
    return method.loss in registry.list_methods() and method.model.format(size=size) in open_clip.list_models()


def profile_samples(prof: Profile, data_samples: int) -> int:
    """Samples per epoch (``--train-num-samples``) of ``prof`` on a dataset of ``data_samples`` pairs."""
    return prof.samples or max(prof.batch, int(data_samples * prof.epoch_fraction))
