"""What a measurement runs: the method batch, one training step per method, tower passes, step parts, their bounds.

Everything here builds callables (or times them with ``timing``); the sections decide what to time together.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
from typing import Any, Callable, Optional

import torch

import uniclip_plugin

from .timing import median_time, round_robin

METHODS = ("clip", "slip", "declip", "uniclip_mpnce")
MODEL_PREFIX = {"clip": "CLIP", "slip": "SLIP", "declip": "DeCLIP", "uniclip_mpnce": "UniCLIP"}
CAPTIONS = (
    "a red circle on a light background",
    "a picture of a blue square",
    "one small green triangle",
    "a yellow cross in the middle of the image",
    "a purple ring",
    "an orange bar lying flat",
)

Fns = dict[str, Callable[[], None]]


def create_plugin_model(model_name: str, **kwargs: Any) -> tuple[torch.nn.Module, Any, Any]:
    """``open_clip.create_model_and_transforms`` as ``open_clip train`` calls it through the plugin.

    Models that sample views in forward get the whole image as training preprocess (not open_clip's random crop).

    Args:
        model_name: an open_clip or plugin model config.
        **kwargs: passed to ``create_model_and_transforms``.

    Returns:
        ``(model, preprocess_train, preprocess_val)``.
    """
    # glue: the plugin's training integration (uniclip_plugin.integration); the one call perf makes into it
    from uniclip_plugin import integration

    return integration.create_model_and_transforms(model_name, **kwargs)


def _tower_batch(model_name: str, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    import open_clip

    size = open_clip.get_model_config(model_name)["vision_cfg"]["image_size"]
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g)
    texts = open_clip.get_tokenizer(model_name)([f"an emoji of thing number {i}" for i in range(batch)])
    return images, texts


def loss_args(model_name: str, **loss_kw: object) -> argparse.Namespace:
    """The fields of open_clip_train's args that the loss builders and ``wrap_tokenizer`` read (one process).

    Args:
        model_name: the model config.
        **loss_kw: fields to override (e.g. ``chunk_size``).

    Returns:
        The args namespace.
    """
    base = dict(
        distill=False,
        model=model_name,
        siglip=False,
        local_loss=False,
        gather_with_grad=False,
        rank=0,
        world_size=1,
        horovod=False,
        loss_dist_impl=None,
        seed=0,
    )
    base.update(loss_kw)
    return argparse.Namespace(**base)


def method_batch(loss_name: str, model_name: str, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and the training text as the method's data pipeline makes them.

    Args:
        loss_name: the ``--loss`` name.
        model_name: the model config.
        batch: B.
        seed: the images' generator seed.

    Returns:
        Images ``[B, 3, S, S]`` (normalised space) and texts ``[B, ctx]``, or ``[B, 2, ctx]`` for DeCLIP (caption +
        EDA caption via ``MethodSpec.wrap_tokenizer``).
    """
    import open_clip

    from uniclip_plugin import registry

    uniclip_plugin.register()
    spec = registry.get_method(loss_name)
    size = open_clip.get_model_config(model_name)["vision_cfg"]["image_size"]
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g)
    tokenizer = open_clip.get_tokenizer(model_name)
    if spec.wrap_tokenizer is not None:
        tokenizer = spec.wrap_tokenizer(tokenizer, loss_args(model_name, seed=seed))
    texts = tokenizer([f"{CAPTIONS[i % len(CAPTIONS)]} number {i}" for i in range(batch)])
    return images, texts


def tower_passes(
    model_name: str, batch: int, image_multiples: tuple[int, ...] = (), text_multiples: tuple[int, ...] = ()
) -> Fns:
    """Forward+backward passes of the towers, each from fresh gradients as in a training step.

    Args:
        model_name: the (CLIP) model config whose towers run.
        batch: B.
        image_multiples: k for each ONE pass over k·B images to add (the concatenated passes the methods run).
        text_multiples: k for each ONE pass over k·B texts to add.

    Returns:
        ``image`` (B images), ``text`` (B texts), ``image_x<k>`` and ``text_x<k>`` for each k > 1 given.
    """
    import open_clip

    uniclip_plugin.register()  # the tiny configs
    model = open_clip.create_model(model_name)
    model.train()
    biggest = max((1, *image_multiples, *text_multiples))
    images, texts = _tower_batch(model_name, batch * biggest)

    def image_pass(n: int) -> Callable[[], None]:
        def run() -> None:
            model.zero_grad(set_to_none=True)
            model.visual(images[:n]).sum().backward()

        return run

    def text_pass(n: int) -> Callable[[], None]:
        def run() -> None:
            model.zero_grad(set_to_none=True)
            model.encode_text(texts[:n]).sum().backward()

        return run

    fns = {"image": image_pass(batch), "text": text_pass(batch)}
    fns.update({f"image_x{k}": image_pass(k * batch) for k in sorted(set(image_multiples)) if k > 1})
    fns.update({f"text_x{k}": text_pass(k * batch) for k in sorted(set(text_multiples)) if k > 1})
    return fns


def tower_costs(model_name: str, batch: int, iters: int, warmup: int = 2) -> dict[str, float]:
    """Forward+backward seconds of the image tower on B images and of the text tower on B texts.

    Args:
        model_name: the (CLIP) model config.
        batch: B.
        iters: timed rounds.
        warmup: untimed rounds.

    Returns:
        ``{"image": seconds, "text": seconds}``.
    """
    return round_robin(tower_passes(model_name, batch), iters, warmup)


def build_step(
    loss_name: str,
    model_name: str,
    batch: int,
    *,
    grad_checkpointing: bool = False,
    autocast_dtype: Optional[torch.dtype] = None,
    compile_model: bool = False,
    device: torch.device | str = "cpu",
    **loss_kw: object,
) -> tuple[Callable[[], None], dict[str, Any]]:
    """One training step as open_clip_train runs it.

    ``zero_grad``; forward and loss (under autocast when given); backward of the sum of the ``*_loss`` terms; AdamW
    step (fused on CUDA), all on ``device``.

    Args:
        loss_name: the ``--loss`` name.
        model_name: the model config.
        batch: B.
        grad_checkpointing: as ``--grad-checkpointing``.
        autocast_dtype: autocast to this dtype (None: no autocast).
        compile_model: ``torch.compile`` the model (as ``--torchcompile``).
        device: where the step runs.
        **loss_kw: fields of the loss args.

    Returns:
        ``(step, parts)``: parts hold the model, loss, optimiser, batch and the forward-pass counts
        (``image_passes``, ``text_rows``).
    """
    import open_clip

    from uniclip_plugin import registry

    uniclip_plugin.register()
    dev = torch.device(device)
    torch.manual_seed(0)
    model = open_clip.create_model(model_name, output_dict=True, device=dev)
    model.train()
    if grad_checkpointing:
        model.set_grad_checkpointing(True)
    loss = registry.get_method(loss_name).build_loss(loss_args(model_name, **loss_kw))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **({"fused": True} if dev.type == "cuda" else {}))
    images, texts = (t.to(dev) for t in method_batch(loss_name, model_name, batch))
    forward = torch.compile(model) if compile_model else model
    amp = (
        (lambda: torch.autocast(dev.type, dtype=autocast_dtype))
        if autocast_dtype is not None
        else contextlib.nullcontext
    )

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with amp():
            out = forward(images, texts)
            losses = loss(**out, output_dict=True)
            total = sum(v for k, v in losses.items() if k.endswith("_loss"))
        total.backward()
        opt.step()

    image_passes, text_rows = forward_counts(model, texts)
    return step, {
        "model": model,
        "loss": loss,
        "opt": opt,
        "images": images,
        "texts": texts,
        "image_passes": image_passes,
        "text_rows": text_rows,
    }


def forward_counts(model: torch.nn.Module, texts: torch.Tensor) -> tuple[int, int]:
    """Forward-pass counts of one training forward of ``model``.

    Args:
        model: a plugin or stock CLIP model.
        texts: its training text batch (``[B, rows, ctx]`` for DeCLIP's caption + EDA caption).

    Returns:
        (image-tower passes, text-tower rows) per sample.
    """
    if hasattr(model, "uniclip_cfg"):
        return int(model.uniclip_cfg.views), 1
    if hasattr(model, "slip_cfg"):
        return 1 + int(model.slip_cfg.ssl_views), 1
    if hasattr(model, "declip_cfg"):
        from uniclip_plugin.model.declip import IMAGE_VIEWS

        cfg = model.declip_cfg
        rows = texts.shape[1] if texts.dim() == 3 else 1
        return IMAGE_VIEWS, rows + int(cfg.mlm and not cfg.mlm_text_embedding_from_masked)
    return 1, 1


def step_time(loss_name: str, model_name: str, batch: int, iters: int, warmup: int = 2, **kw: Any) -> float:
    """Median seconds of one training step (``build_step``; ``kw`` are its options)."""
    step, _ = build_step(loss_name, model_name, batch, **kw)
    return median_time(step, iters, warmup)


def bound_of(image_passes: int, text_rows: int, costs: dict[str, float]) -> float:
    """Forward-count bound of a method's step against CLIP's: (passes · I + rows · T) / (I + T)."""
    return (image_passes * costs["image"] + text_rows * costs["text"]) / (costs["image"] + costs["text"])


def exact_towers(image_passes: int, text_rows: int, medians: dict[str, float]) -> Optional[float]:
    """Seconds of a method's actual tower passes, None when they were not measured.

    Args:
        image_passes: image passes per sample (one pass over passes·B images).
        text_rows: text rows per sample (one pass over rows·B texts).
        medians: the tower medians (``image``, ``text``, ``image_x<k>``, ``text_x<k>``).

    Returns:
        The image pass's plus the text pass's seconds.
    """
    image = medians["image"] if image_passes == 1 else medians.get(f"image_x{image_passes}")
    text = medians["text"] if text_rows == 1 else medians.get(f"text_x{text_rows}")
    return None if image is None or text is None else image + text


def _method_row(batch: int, seconds: float, parts: dict[str, Any], medians: dict[str, float]) -> dict[str, float]:
    row = {
        "step_s": seconds,
        "samples_per_s": batch / seconds,
        "image_passes": parts["image_passes"],
        "text_rows": parts["text_rows"],
        "bound": bound_of(parts["image_passes"], parts["text_rows"], medians),
    }
    towers = exact_towers(parts["image_passes"], parts["text_rows"], medians)
    if towers is not None:
        row["towers_s"] = towers
        row["exact_bound"] = towers / (medians["image"] + medians["text"])
    return row


def method_steps(
    size: str,
    batch: int,
    iters: int,
    costs: Optional[dict[str, float]] = None,
    warmup: int = 2,
    methods: tuple[str, ...] = METHODS,
    extra: Optional[Fns] = None,
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Per-iteration step time of each method on the same towers and batch, its ratio to clip and its bounds.

    Everything is timed in the same rounds (``round_robin``): the methods' steps, the tower passes on the CLIP config
    of ``size`` (unless ``costs`` is given) and the ``extra`` callables.

    Args:
        size: the config suffix (``<CLIP|SLIP|DeCLIP|UniCLIP>-<size>``).
        batch: B.
        iters: timed rounds.
        costs: tower costs measured elsewhere (then the towers are not timed here).
        warmup: untimed rounds.
        methods: the losses; the first is the ratios' reference.
        extra: more callables timed in the same rounds.

    Returns:
        ``(rows, medians)``: a row per method; ``medians`` holds ``image``, ``text`` (the tower costs used), the
        measured ``image_x<k>`` / ``text_x<k>`` passes and the ``extra`` medians.
    """
    built = {name: build_step(name, f"{MODEL_PREFIX[name]}-{size}", batch) for name in methods}
    fns: Fns = {}
    if costs is None:
        fns = tower_passes(
            f"CLIP-{size}",
            batch,
            tuple(p["image_passes"] for _, p in built.values()),
            tuple(p["text_rows"] for _, p in built.values()),
        )
    fns.update({f"step:{name}": step for name, (step, _) in built.items()})
    fns.update(extra or {})
    medians = round_robin(fns, iters, warmup)
    if costs is not None:
        medians.update(costs)
    rows = {name: _method_row(batch, medians.pop(f"step:{name}"), parts, medians) for name, (_, parts) in built.items()}
    del built
    base = rows[methods[0]]["step_s"]
    for r in rows.values():
        r["ratio_to_clip"] = r["step_s"] / base
        r["ratio_over_bound"] = r["ratio_to_clip"] / r["bound"]
        if "exact_bound" in r:
            r["ratio_over_exact_bound"] = r["ratio_to_clip"] / r["exact_bound"]
    return rows, medians


def augment_time(n_images: int, views: int, res: int, iters: int, preset: str = "simclr", warmup: int = 1) -> float:
    """Seconds to sample and render ``n_images · views`` views at ``res`` px (``MultiViewAugment``, no grad)."""
    views_mod = importlib.import_module("uniclip_plugin.views")
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    aug = views_mod.MultiViewAugment(views_mod.VIEW_PRESETS[preset], OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
    images = torch.randn(n_images, 3, res, res, generator=torch.Generator().manual_seed(0))
    return median_time(lambda: aug(images, views), iters, warmup)


def part_passes(loss_name: str, model_name: str, batch: int) -> Fns:
    """The parts of a step beyond the towers, each alone; parts a method lacks are absent.

    Args:
        loss_name: the ``--loss`` name.
        model_name: the model config.
        batch: B.

    Returns:
        ``views`` (``InForwardViews`` on the B images, the model's V and resolution), ``aug_embed``
        (augmentation-aware embedding fwd+bwd on the B·V features), ``loss`` (fwd+bwd on the model's outputs),
        ``optimizer`` (the AdamW step, with gradients present).
    """
    step, parts = build_step(loss_name, model_name, batch)
    model, loss, opt, images, texts = (parts[k] for k in ("model", "loss", "opt", "images", "texts"))
    step()  # gradients exist, so the optimiser step below does its full work
    fns: Fns = {}
    cfg = getattr(model, "uniclip_cfg", None)
    if cfg is not None:
        fns["views"] = lambda: model.views(images, cfg.views, model.visual)
        if model.aug_embed is not None:
            g = torch.Generator().manual_seed(0)
            h = torch.randn(batch * cfg.views, model.aug_embed.embed_dim, generator=g)
            h.requires_grad_()
            params = model.views(images, cfg.views, model.visual)[1].flatten(0, 1)
            fns["aug_embed"] = lambda: model.aug_embed(h, params).sum().backward()
    with torch.no_grad():
        raw = model(images, texts)
    leaves = {
        k: (v.detach().clone().requires_grad_(v.is_floating_point()) if torch.is_tensor(v) else v)
        for k, v in raw.items()
    }

    def loss_pass() -> None:
        losses = loss(**leaves, output_dict=True)
        sum(v for k, v in losses.items() if k.endswith("_loss")).backward()

    fns["loss"] = loss_pass
    fns["optimizer"] = opt.step
    return fns


def step_parts(loss_name: str, model_name: str, batch: int, iters: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each of ``part_passes``."""
    return round_robin(part_passes(loss_name, model_name, batch), iters, warmup)
