"""Performance benchmarks (targets live here, never in unit tests; issue 9, and issue 7's per-iteration comparison).

    python harness/perf.py --quick                       # ≤ 2 minutes on a 2-core CPU (batch 64)
    python harness/perf.py --json docs/perf.json         # the full run (batch 256, M up to 3 × 16384, torch.compile)
    python harness/perf.py --quick --default-malloc      # the same under glibc's default malloc settings (A/B)

Prints, in one run on one machine (every target as a ratio of two numbers measured in this run):
  1. tower costs: forward+backward of the image tower on B images and of the text tower on B texts, and ONE pass over
     k·B images / texts for each concatenated pass a method runs (on this CPU a tower is not linear in its batch);
  2. the optimiser-step time (forward, loss, backward, AdamW step) of ``--loss clip``, ``slip``, ``declip`` and
     ``uniclip_mpnce`` on the same tiny towers and batch, each with its ratio to clip, its forward-count bound
     (image passes · I + text rows · T) / (I + T) and its tower-exact bound (its actual passes' measured cost over
     I + T). Towers, steps and the step parts of 3 are timed round-robin in the same rounds, so load drift during a
     run cannot bias one method against another;
  3. UniCLIP's step beyond its towers: in-forward views, augmentation-aware embedding, loss, AdamW step and the rest,
     each as % of the step; the view share for 256 views at 64 px;
  4. open_clip_train's own webdataset loader (2 workers) on generated 64 px shards against the samples/s that the
     UniCLIP step consumes;
  5. options open_clip users expect: ``--grad-checkpointing``, bf16 autocast, ``--torchcompile`` (full run only),
     ``--local-loss --gather-with-grad`` (a 2-process gloo run of the loss and its gather, full run only);
  6. MP-NCE forward+backward time and peak extra memory against M = (V+1)·B, chunked and unchunked;
  7. data efficiency from the study's curves (``results/<profile>/curves.json``, written by harness/reproduce.py);
  0. first, when CUDA is available: ViT-B/32 at batch 256 under bf16 autocast, stock open_clip CLIP against UniCLIP
     (samples/s, peak allocated memory, views under CUDA's sync debug mode); ``--gpu-only`` runs just this;
  8. a table of the targets; the LAST line is ``step-cost ratio uniclip/clip = …; bound = …; ratio / bound = …``.
The load average at start (and end) and the allocator are printed: on 2 cores a load above 1.5 means another job
shared the machine. Like the training launchers, perf.py sets glibc to keep freed memory
(``uniclip_plugin/cpu_malloc.py``) unless ``--default-malloc`` is given or the environment chooses an allocator.
Times are CPU times of one thread (run with OMP_NUM_THREADS=1).
Peak memory is measured in a fresh subprocess per point: a thread samples the resident set (/proc/self/statm) every
0.2 ms while glibc returns large frees to the OS at once (MALLOC_MMAP_THRESHOLD_), so the peak above the inputs is the
loss's working memory; the bytes autograd keeps for backward are counted exactly with saved-tensor hooks. Subprocesses
load the loss module without the package ``__init__`` (which imports open_clip: ~5 s per process on 2 cores).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

ROOT = Path(__file__).resolve().parents[2]  # the checkout (repo root)
from uniclip_plugin.bench.report import write_text_atomic
import importlib

METHODS = ("clip", "slip", "declip", "uniclip_mpnce")
MODEL_PREFIX = {"clip": "CLIP", "slip": "SLIP", "declip": "DeCLIP", "uniclip_mpnce": "UniCLIP"}
LOAD_CONTAMINATED = 1.5  # 1-minute load average above which the machine was shared (2 cores) during the run
CAPTIONS = ("a red circle on a light background", "a picture of a blue square", "one small green triangle",
            "a yellow cross in the middle of the image", "a purple ring", "an orange bar lying flat")


def _median_time(fn: Callable[[], None], iters: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _round_robin(fns: dict[str, Callable[[], None]], iters: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds of each callable, timed in rounds (one call of each per round): a change of machine load
    during the run shifts every entry alike instead of biasing the ratios between them."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(warmup + iters):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def _batch(model_name: str, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    import open_clip
    size = open_clip.get_model_config(model_name)["vision_cfg"]["image_size"]
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g)
    texts = open_clip.get_tokenizer(model_name)([f"an emoji of thing number {i}" for i in range(batch)])
    return images, texts


def _loss_args(model_name: str, **loss_kw: object) -> argparse.Namespace:
    """The fields open_clip_train's args carry that the loss builders and wrap_tokenizer read (one process)."""
    base = dict(distill=False, model=model_name, siglip=False, local_loss=False, gather_with_grad=False, rank=0,
                world_size=1, horovod=False, loss_dist_impl=None, seed=0)
    base.update(loss_kw)
    return argparse.Namespace(**base)


def method_batch(loss_name: str, model_name: str, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[B, 3, S, S]`` (normalised space) and the training text as the method's data pipeline makes it:
    ``[B, ctx]``, or ``[B, 2, ctx]`` for DeCLIP (caption + EDA caption via ``LossSpec.wrap_tokenizer``)."""
    import open_clip

    import uniclip_plugin  # noqa: F401
    from uniclip_plugin import registry
    spec = registry.get_loss(loss_name)
    size = open_clip.get_model_config(model_name)["vision_cfg"]["image_size"]
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g)
    tokenizer = open_clip.get_tokenizer(model_name)
    if spec.wrap_tokenizer is not None:
        tokenizer = spec.wrap_tokenizer(tokenizer, _loss_args(model_name, seed=seed))
    texts = tokenizer([f"{CAPTIONS[i % len(CAPTIONS)]} number {i}" for i in range(batch)])
    return images, texts


def tower_passes(model_name: str, batch: int, image_multiples: tuple[int, ...] = (),
                 text_multiples: tuple[int, ...] = ()) -> dict[str, Callable[[], None]]:
    """Forward+backward of the image tower on B images (``image``) and of the text tower on B texts (``text``), each
    from fresh gradients as in a training step; plus ONE pass over k·B images (``image_x<k>``) or k·B texts
    (``text_x<k>``) for each k given: the concatenated passes the methods actually run."""
    import open_clip

    import uniclip_plugin  # noqa: F401  (registers the tiny configs)
    model = open_clip.create_model(model_name)
    model.train()
    biggest = max((1, *image_multiples, *text_multiples))
    images, texts = _batch(model_name, batch * biggest)

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
    """Forward+backward seconds of the image tower on B images and of the text tower on B texts."""
    return _round_robin(tower_passes(model_name, batch), iters, warmup)


def build_step(loss_name: str, model_name: str, batch: int, *, grad_checkpointing: bool = False,
               autocast_dtype: Optional[torch.dtype] = None, compile_model: bool = False,
               device: torch.device | str = "cpu", **loss_kw: object) -> tuple[Callable[[], None], dict[str, Any]]:
    """One training step as open_clip_train runs it: ``zero_grad``; forward and loss (under autocast when given);
    backward of the sum of the ``*_loss`` terms; AdamW step (fused on CUDA), all on ``device``. Returns ``(step,
    parts)`` with the model, loss, optimiser, batch and the forward-pass counts (``image_passes``, ``text_rows``)."""
    import open_clip

    import uniclip_plugin  # noqa: F401
    from uniclip_plugin import registry
    dev = torch.device(device)
    torch.manual_seed(0)
    model = open_clip.create_model(model_name, output_dict=True, device=dev)
    model.train()
    if grad_checkpointing:
        model.set_grad_checkpointing(True)
    loss = registry.get_loss(loss_name).build(_loss_args(model_name, **loss_kw))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **({"fused": True} if dev.type == "cuda" else {}))
    images, texts = (t.to(dev) for t in method_batch(loss_name, model_name, batch))
    forward = torch.compile(model) if compile_model else model
    amp = ((lambda: torch.autocast(dev.type, dtype=autocast_dtype)) if autocast_dtype is not None
           else contextlib.nullcontext)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with amp():
            out = forward(images, texts)
            losses = loss(**out, output_dict=True)
            total = sum(v for k, v in losses.items() if k.endswith("_loss"))
        total.backward()
        opt.step()

    image_passes, text_rows = forward_counts(model, texts)
    return step, {"model": model, "loss": loss, "opt": opt, "images": images, "texts": texts,
                  "image_passes": image_passes, "text_rows": text_rows}


def forward_counts(model: torch.nn.Module, texts: torch.Tensor) -> tuple[int, int]:
    """(image-tower passes, text-tower rows) per sample in one training forward of ``model``."""
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


def step_time(loss_name: str, model_name: str, batch: int, iters: int, warmup: int = 2, **kw: object) -> float:
    """Median seconds of one training step (``build_step``)."""
    step, _ = build_step(loss_name, model_name, batch, **kw)
    return _median_time(step, iters, warmup)


def bound_of(image_passes: int, text_rows: int, costs: dict[str, float]) -> float:
    """Forward-count bound of a method's step against CLIP's: (passes · I + rows · T) / (I + T)."""
    return (image_passes * costs["image"] + text_rows * costs["text"]) / (costs["image"] + costs["text"])


def method_steps(size: str, batch: int, iters: int, costs: Optional[dict[str, float]] = None, warmup: int = 2,
                 methods: tuple[str, ...] = METHODS, extra: Optional[dict[str, Callable[[], None]]] = None
                 ) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Per-iteration step time of each method on the same towers and batch, its ratio to the first method (clip)
    and its own bound from the tower costs.

    Everything is timed in the same rounds (``_round_robin``): the methods' steps, the two tower passes on the
    CLIP config of ``size`` (unless ``costs`` is given) and the ``extra`` callables. Returns ``(rows, medians)``;
    ``medians`` holds ``image``, ``text`` (the tower costs used) and the ``extra`` medians."""
    built = {name: build_step(name, f"{MODEL_PREFIX[name]}-{size}", batch) for name in methods}
    fns: dict[str, Callable[[], None]] = {}
    if costs is None:
        fns = tower_passes(f"CLIP-{size}", batch, tuple(p["image_passes"] for _, p in built.values()),
                           tuple(p["text_rows"] for _, p in built.values()))
    fns.update({f"step:{name}": step for name, (step, _) in built.items()})
    fns.update(extra or {})
    medians = _round_robin(fns, iters, warmup)
    if costs is not None:
        medians.update(costs)
    rows: dict[str, dict[str, float]] = {}
    for name, (_, parts) in built.items():
        seconds = medians.pop(f"step:{name}")
        rows[name] = {"step_s": seconds, "samples_per_s": batch / seconds, "image_passes": parts["image_passes"],
                      "text_rows": parts["text_rows"],
                      "bound": bound_of(parts["image_passes"], parts["text_rows"], medians)}
        towers = exact_towers(parts["image_passes"], parts["text_rows"], medians)
        if towers is not None:
            rows[name]["towers_s"] = towers
            rows[name]["exact_bound"] = towers / (medians["image"] + medians["text"])
    del built
    base = rows[methods[0]]["step_s"]
    for r in rows.values():
        r["ratio_to_clip"] = r["step_s"] / base
        r["ratio_over_bound"] = r["ratio_to_clip"] / r["bound"]
        if "exact_bound" in r:
            r["ratio_over_exact_bound"] = r["ratio_to_clip"] / r["exact_bound"]
    return rows, medians


def exact_towers(image_passes: int, text_rows: int, medians: dict[str, float]) -> Optional[float]:
    """Seconds of a method's actual tower passes (one image pass over passes·B images, one text pass over rows·B
    texts) from ``medians``; None when they were not measured."""
    image = medians["image"] if image_passes == 1 else medians.get(f"image_x{image_passes}")
    text = medians["text"] if text_rows == 1 else medians.get(f"text_x{text_rows}")
    return None if image is None or text is None else image + text


def accelerator_compare(device: str = "cuda", models: tuple[tuple[str, str], ...] = (
                            ("clip", "ViT-B-32"), ("uniclip_mpnce", "UniCLIP-ViT-B-32")),
                        batch: int = 256, iters: int = 10, warmup: int = 3,
                        dtype: Optional[torch.dtype] = torch.bfloat16) -> dict[str, dict[str, Any]]:
    """Training step on an accelerator for each ``(loss, model config)``: samples/s over ``iters`` steps after
    ``warmup``, and peak allocated memory (``torch.cuda.max_memory_allocated``; None off CUDA). The default pair is
    stock open_clip ViT-B/32 CLIP against UniCLIP on the same tower, bf16 autocast, fused AdamW on CUDA.

    On CUDA each UniCLIP model's in-forward views also run under ``torch.cuda.set_sync_debug_mode("error")``, which
    raises on any host synchronisation (``views_sync_free``). Runs on CPU too (the unit test's path)."""
    import uniclip_plugin  # noqa: F401  (registers the plugin configs)
    rows: dict[str, dict[str, Any]] = {}
    for loss_name, model_name in models:
        rows[loss_name] = _accelerator_row(loss_name, model_name, torch.device(device), batch, iters, warmup, dtype)
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()  # the next model starts from an empty cache (its peak is its own)
    return rows


def _accelerator_row(loss_name: str, model_name: str, dev: torch.device, batch: int, iters: int, warmup: int,
                     dtype: Optional[torch.dtype]) -> dict[str, Any]:
    cuda = dev.type == "cuda"
    step, parts = build_step(loss_name, model_name, batch, autocast_dtype=dtype, device=dev)
    model, images = parts["model"], parts["images"]

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    for _ in range(warmup):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    seconds = (time.perf_counter() - t0) / iters
    row: dict[str, Any] = {"model": model_name, "step_s": seconds, "samples_per_s": batch / seconds,
                           "peak_allocated_bytes": torch.cuda.max_memory_allocated(dev) if cuda else None}
    views_mod = getattr(model, "views", None)
    if cuda and isinstance(views_mod, torch.nn.Module) and hasattr(model, "uniclip_cfg"):
        try:
            torch.cuda.set_sync_debug_mode("error")
            with torch.no_grad():
                views_mod(images, int(model.uniclip_cfg.views), model.visual)
            row["views_sync_free"] = True
        except RuntimeError as err:  # the sync debug mode raises RuntimeError naming the synchronising op
            row["views_sync_free"] = False
            row["views_sync_error"] = str(err).splitlines()[0]
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return row


def print_accelerator(rows: dict[str, dict[str, Any]], device_name: str, batch: int, dtype_name: str) -> None:
    print(f"\n## Accelerator: {device_name}, batch {batch}, {dtype_name} autocast, fused AdamW")
    print("| loss | model | step (s) | samples/s | peak allocated | views sync-free |\n|---|---|---|---|---|---|")
    for name, r in rows.items():
        peak = "–" if r["peak_allocated_bytes"] is None else _fmt_bytes(r["peak_allocated_bytes"])
        sync = {True: "yes", False: f"NO ({r.get('views_sync_error', '')})"}.get(r.get("views_sync_free"), "–")
        print(f"| {name} | {r['model']} | {r['step_s']:.4f} | {r['samples_per_s']:.0f} | {peak} | {sync} |")
    if "clip" in rows and "uniclip_mpnce" in rows:
        print(f"UniCLIP / CLIP step time on {device_name}: "
              f"{rows['uniclip_mpnce']['step_s'] / rows['clip']['step_s']:.2f}")


def augment_time(n_images: int, views: int, res: int, iters: int, preset: str = "simclr", warmup: int = 1) -> float:
    """Seconds to sample and render ``n_images · views`` views at ``res`` px (``MultiViewAugment``, no grad)."""
    views_mod = importlib.import_module("uniclip_plugin.views")
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    aug = views_mod.MultiViewAugment(views_mod.VIEW_PRESETS[preset], OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
    images = torch.randn(n_images, 3, res, res, generator=torch.Generator().manual_seed(0))
    return _median_time(lambda: aug(images, views), iters, warmup)


def part_passes(loss_name: str, model_name: str, batch: int) -> dict[str, Callable[[], None]]:
    """The parts of a step beyond the towers, each alone: in-forward views (``InForwardViews`` on the B images, the
    model's V and resolution), augmentation-aware embedding fwd+bwd on the B·V features, the loss fwd+bwd on the
    model's outputs, the AdamW step (with gradients present). Parts a method lacks are absent."""
    step, parts = build_step(loss_name, model_name, batch)
    model, loss, opt, images, texts = (parts[k] for k in ("model", "loss", "opt", "images", "texts"))
    step()  # gradients exist, so the optimiser step below does its full work
    fns: dict[str, Callable[[], None]] = {}
    cfg = getattr(model, "uniclip_cfg", None)
    if cfg is not None:
        fns["views"] = lambda: model.views(images, cfg.views, model.visual)
        if model.aug_embed is not None:
            g = torch.Generator().manual_seed(0)
            h = torch.randn(batch * cfg.views, model.aug_embed.encoder[-1].out_features, generator=g)
            h.requires_grad_()
            params = model.views(images, cfg.views, model.visual)[1].flatten(0, 1)
            fns["aug_embed"] = lambda: model.aug_embed(h, params).sum().backward()
    with torch.no_grad():
        raw = model(images, texts)
    leaves = {k: (v.detach().clone().requires_grad_(v.is_floating_point()) if torch.is_tensor(v) else v)
              for k, v in raw.items()}

    def loss_pass() -> None:
        losses = loss(**leaves, output_dict=True)
        sum(v for k, v in losses.items() if k.endswith("_loss")).backward()

    fns["loss"] = loss_pass
    fns["optimizer"] = opt.step
    return fns


def step_parts(loss_name: str, model_name: str, batch: int, iters: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each of ``part_passes``."""
    return _round_robin(part_passes(loss_name, model_name, batch), iters, warmup)


def option_steps(model_name: str, batch: int, iters: int, plain_s: float, full: bool, warmup: int = 2
                 ) -> dict[str, dict[str, Any]]:
    """UniCLIP step with ``--grad-checkpointing``, bf16 autocast and (full run) ``torch.compile``, each as a ratio
    to the plain step ``plain_s``."""
    rows: dict[str, dict[str, Any]] = {}
    for name, kw in (("grad_checkpointing", {"grad_checkpointing": True}),
                     ("bf16_autocast", {"autocast_dtype": torch.bfloat16})):
        seconds = step_time("uniclip_mpnce", model_name, batch, iters, warmup, **kw)
        rows[name] = {"step_s": seconds, "ratio_to_plain": seconds / plain_s}
    if not full:
        rows["torchcompile"] = {"note": "not measured in --quick: compiling the step (inductor, C++ on 2 cores) "
                                        "takes longer than the whole quick budget"}
        return rows
    try:
        step, _ = build_step("uniclip_mpnce", model_name, batch, compile_model=True)
        t0 = time.perf_counter()
        step()
        first = time.perf_counter() - t0
        seconds = _median_time(step, iters, 1)
        rows["torchcompile"] = {"step_s": seconds, "ratio_to_plain": seconds / plain_s, "first_step_s": first}
    except Exception as err:  # noqa: BLE001 - a failed compile is a measured outcome, not a crash of the benchmark
        rows["torchcompile"] = {"note": f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}"}
    return rows


# ------------------------------------------------------------------------------------------ --local-loss, 2 processes
def _gather_worker(rank: int, world: int, init_file: str, out_file: str, batch: int, views: int, dim: int,
                   iters: int) -> None:
    import torch.distributed as dist

    from uniclip_plugin.testing.gloo_group import gloo_group
    with gloo_group(rank, world, init_file):
        mpnce = importlib.import_module("uniclip_plugin.losses.mpnce")
        local = batch // world
        g = torch.Generator().manual_seed(rank)
        img = torch.nn.functional.normalize(torch.randn(local, views, dim, generator=g), dim=-1).requires_grad_()
        txt = torch.nn.functional.normalize(torch.randn(local, dim, generator=g), dim=-1).requires_grad_()
        scales = torch.full((3,), 14.0, requires_grad=True)
        offsets = torch.zeros(3, requires_grad=True)

        def run() -> None:
            dist.barrier()
            mpnce.universal_contrastive_loss(img, txt, scales, offsets, local_loss=True, gather_with_grad=True,
                                             rank=rank, world_size=world)["contrastive_loss"].backward()

        seconds = _median_time(run, iters, 2)
        if rank == 0:
            Path(out_file).write_text(json.dumps({"seconds": seconds}))


def _in_fresh_process(call: str, env: Optional[dict[str, str]] = None) -> Any:
    """``uniclip_plugin.perf.perf.<call>`` evaluated in a fresh interpreter; its JSON-encoded result. A failure raises
    RuntimeError with the child's last stderr line."""
    code = f"import json, uniclip_plugin.perf.perf as p; print(json.dumps(p.{call}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT), env=env)
    if out.returncode != 0:
        raise RuntimeError((out.stderr.strip().splitlines() or ["no output"])[-1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _gather_loss_time_subprocess(batch: int, views: int, dim: int, iters: int) -> float:
    """``gather_loss_time`` in a fresh interpreter: the spawned ranks then start from a clean parent (the full run
    has compiled a model and holds its inductor workers by then)."""
    return float(_in_fresh_process(f"gather_loss_time({batch}, {views}, {dim}, {iters})"))


def gather_loss_time(batch: int, views: int, dim: int, iters: int, world: int = 2) -> float:
    """Median seconds of MP-NCE fwd+bwd with ``--local-loss --gather-with-grad`` on ``world`` gloo processes, the
    global batch ``batch`` split evenly (rank 0's time; each step starts at a barrier)."""
    import torch.multiprocessing as mp
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.json")
        mp.spawn(_gather_worker, args=(world, os.path.join(tmp, "init"), out, batch, views, dim, iters),
                 nprocs=world, join=True)
        return float(json.loads(Path(out).read_text())["seconds"])


# ------------------------------------------------------------------------------------------------------- data loader
def loader_throughput(model_name: str, batch: int, n_samples: int, workers: int = 2, res: int = 64,
                      shards: int = 4, tmp_dir: Optional[str] = None) -> dict[str, float]:
    """samples/s of ``open_clip_train.data.get_wds_dataset`` (the training pipeline: shard shuffle, sample shuffle,
    decode, the model's training preprocess, tokenizer, batching; ``workers`` processes) over generated ``res`` px
    shards. Epoch 0 includes starting the workers; epoch 1 (persistent workers) is the steady state."""
    import open_clip

    import uniclip_plugin  # noqa: F401  (compat: webdataset 1.0.2's end-of-shard marker)
    from open_clip_train.data import get_wds_dataset
    from uniclip_plugin.cli import _whole_image_train_transform

    from uniclip_plugin.testing.synthetic import build_synthetic_pretrain
    with tempfile.TemporaryDirectory(dir=tmp_dir) as tmp:
        info = build_synthetic_pretrain(Path(tmp) / "pretrain", n_samples, res, shards)
        create = _whole_image_train_transform(open_clip.create_model_and_transforms)
        _, preprocess, _ = create(model_name)
        tokenizer = open_clip.get_tokenizer(model_name)
        args = argparse.Namespace(train_data=info["pattern"], train_num_samples=n_samples, dataset_resampled=False,
                                  train_data_upsampling_factors=None, seed=0, batch_size=batch, workers=workers,
                                  world_size=1)
        data = get_wds_dataset(args, preprocess, True, epoch=0, tokenizer=tokenizer)
        result: dict[str, float] = {}
        for epoch in (0, 1):
            data.set_epoch(epoch)
            count, t0 = 0, time.perf_counter()
            for images, texts in data.dataloader:
                count += images.shape[0]
            seconds = time.perf_counter() - t0
            result[f"epoch{epoch}_samples_per_s"] = count / seconds
            result[f"epoch{epoch}_samples"] = count
        del data
    result["samples_per_s"] = result["epoch1_samples_per_s"]
    return result


# ------------------------------------------------------------------------------------------------------ MP-NCE curve
def loss_point(batch: int, views: int, dim: int, chunk: int, iters: int) -> dict[str, float]:
    """MP-NCE fwd+bwd time, autograd-saved bytes and peak extra RSS for one (B, chunk) point (run in a subprocess)."""
    universal_contrastive_loss = importlib.import_module("uniclip_plugin.losses.mpnce").universal_contrastive_loss
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(batch, views, dim, generator=g), dim=-1).requires_grad_()
    txt = torch.nn.functional.normalize(torch.randn(batch, dim, generator=g), dim=-1).requires_grad_()
    scales = torch.full((3,), 14.0, requires_grad=True)
    offsets = torch.zeros(3, requires_grad=True)
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = universal_contrastive_loss(img, txt, scales, offsets, chunk_size=chunk)
    del out
    with _RssPeak() as peak:
        universal_contrastive_loss(img, txt, scales, offsets, chunk_size=chunk)["contrastive_loss"].backward()

    def run() -> None:
        universal_contrastive_loss(img, txt, scales, offsets, chunk_size=chunk)["contrastive_loss"].backward()

    seconds = _median_time(run, iters, warmup=0)
    return {"seconds": seconds, "saved_bytes": sum(saved.values()), "peak_extra_bytes": peak.extra}


class _RssPeak:
    """Context manager: peak resident-set growth over the block, sampled from /proc/self/statm."""

    def __init__(self, interval: float = 2e-4):
        self.interval, self.extra, self._stop = interval, 0, threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.extra = max(self.extra, self._rss() - self.base)
            time.sleep(self.interval)

    def __enter__(self) -> "_RssPeak":
        self.base = self._rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.extra = max(self.extra, self._rss() - self.base)


def _loss_point_subprocess(batch: int, views: int, dim: int, chunk: int, iters: int) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # whatever the caller's allocator
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"  # large frees go back to the OS at once: RSS tracks live memory
    return _in_fresh_process(f"loss_point({batch}, {views}, {dim}, {chunk}, {iters})", env)


# -------------------------------------------------------------------------------------------------- allocator A/B
def malloc_child(tuned: bool, size: str, batch: int, iters: int, methods: tuple[str, ...]) -> dict[str, Any]:
    """In a fresh process: optionally ``keep_freed_memory()``, then each method's step (round-robin medians) and the
    process's minor page faults over the timed rounds."""
    import resource

    import uniclip_plugin  # noqa: F401  (registers the plugin configs before build_step)
    from uniclip_plugin.cpu_malloc import keep_freed_memory
    status = keep_freed_memory() if tuned else "glibc defaults"
    built = {name: build_step(name, f"{MODEL_PREFIX[name]}-{size}", batch)[0] for name in methods}
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    medians = _round_robin(built, iters, warmup=2)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
    return {"allocator": status, "step_s": medians, "minor_faults": faults}


def malloc_ab(size: str, batch: int, iters: int, methods: tuple[str, ...] = ("clip", "slip", "uniclip_mpnce")
              ) -> dict[str, Any]:
    """The same steps in two fresh processes, glibc defaults vs ``cpu_malloc.keep_freed_memory`` (as the training
    launchers set it); the caller's MALLOC_* variables are removed from both."""
    from uniclip_plugin.cpu_malloc import OPT_OUT_ENV, allocator_env
    chosen = allocator_env()
    env = {k: v for k, v in os.environ.items() if k not in chosen and k != OPT_OUT_ENV}
    return {"tuned" if tuned else "default":
            _in_fresh_process(f"malloc_child({tuned}, {size!r}, {batch}, {iters}, {tuple(methods)!r})", env)
            for tuned in (False, True)}


# ------------------------------------------------------------------------------------- training threads (the study's)
TRAIN_THREAD_CONFIGS = (("clip", "CLIP-Tiny-32", 128), ("uniclip_mpnce", "UniCLIP-Tiny-32", 128),
                        ("declip", "DeCLIP-Tiny-32", 128), ("clip", "CLIP-Tiny-64", 256))


def _logged_step_seconds(log: Path, field: str = "Batch") -> list[float]:
    """open_clip_train's ``Batch (t)`` values (seconds of the logged step, data wait included), or with ``field="Data"``
    its ``Data (t)`` values (the wait for the loader), in log order."""
    import re
    return [float(v) for v in re.findall(field + r" \(t\): ([0-9.]+)", log.read_text())]


def train_threads(configs: tuple[tuple[str, str, int], ...] = TRAIN_THREAD_CONFIGS, steps: int = 20,
                  train_data: Optional[str] = None, thread_counts: Optional[tuple[int, ...]] = None
                  ) -> list[dict[str, Any]]:
    """``open_clip train`` as the study runs it (1 loader worker, fp32, CPU) for ``steps`` steps of each (loss, model,
    batch), once per OMP thread count: the median logged step time (the first, warm-up, log line excluded) and the
    process's wall time. ``train_data``: a shard pattern (default: generated 64 px shards)."""
    counts = thread_counts or tuple(sorted({1, os.cpu_count() or 1}))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if train_data is None:
            from uniclip_plugin.testing.synthetic import build_synthetic_pretrain
            train_data = build_synthetic_pretrain(Path(tmp) / "pretrain", 2048, 64, 4)["pattern"]
        for loss, model, batch in configs:
            row: dict[str, Any] = {"loss": loss, "model": model, "batch": batch}
            for threads in counts:
                logs = Path(tmp) / f"{loss}-{model}-{threads}"
                cmd = [sys.executable, "-m", "uniclip_plugin.cli", "train", "--loss", loss, "--model", model,
                       "--train-data", train_data, "--dataset-type", "webdataset", "--dataset-resampled",
                       "--train-num-samples", str(batch * steps), "--batch-size", str(batch), "--epochs", "1",
                       "--lr", "1e-3", "--warmup", "5", "--precision", "fp32", "--device", "cpu", "--workers", "1",
                       "--seed", "0", "--logs", str(logs), "--name", "r", "--save-frequency", "0",
                       "--zeroshot-frequency", "0", "--log-every-n-steps", "2"]
                env = dict(os.environ, OMP_NUM_THREADS=str(threads))
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True)
                wall = time.perf_counter() - t0
                if proc.returncode != 0:
                    raise RuntimeError(f"perf.py: training {model} with {threads} threads failed: "
                                       + (proc.stderr.strip().splitlines() or ["no output"])[-1])
                step_s = _logged_step_seconds(logs / "r" / "out.log")[1:]
                data_s = _logged_step_seconds(logs / "r" / "out.log", "Data")[1:]
                row[f"threads_{threads}"] = {"step_s": statistics.median(step_s), "data_s": statistics.median(data_s),
                                             "wall_s": wall, "logged_steps": len(step_s)}
            rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------- data efficiency
def data_efficiency(curves: dict[str, dict[str, list[dict]]], method: str = "uniclip", base: str = "clip"
                    ) -> dict[str, Any]:
    """Per seed: steps for ``method`` to reach ``base``'s final val_r1 (linear interpolation between evaluation
    points; ``uniclip_plugin.study.analysis.first_reach``, the study's own definition), as a fraction of ``base``'s final step count;
    ``None`` where it is never reached. ``mean`` over seeds (None unless every seed reached it)."""
    from uniclip_plugin.study import analysis as study
    if method not in curves or base not in curves:
        return {"seeds": {}, "mean": None, "note": f"curves lack {method!r} or {base!r}"}
    seeds: dict[str, dict[str, Any]] = {}
    for row in study.data_efficiency(curves, method=method, baseline=base):
        reached = not math.isnan(row["steps_to_reach"])
        seeds[row["seed"]] = {"target_r1": row["target_val_r1"], "base_steps": row["baseline_steps"],
                              "steps": row["steps_to_reach"] if reached else None,
                              "fraction": row["fraction"] if reached else None}
    fractions = [s["fraction"] for s in seeds.values()]
    mean = statistics.mean(fractions) if fractions and None not in fractions else None
    return {"seeds": seeds, "mean": mean}


def find_curves(explicit: Optional[str]) -> Optional[Path]:
    if explicit:
        return Path(explicit)
    for profile in ("full-tuned", "full", "quick-tuned", "quick"):  # reproduce.py's result folders, longest first
        path = ROOT / "results" / profile / "curves.json"
        if path.exists():
            return path
    return None


# -------------------------------------------------------------------------------------------------------- reporting
def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%"


def _verdict(ok: Optional[bool]) -> str:
    return "n/a" if ok is None else ("yes" if ok else "NO")


def run_accelerator_section(results: dict[str, Any], json_path: Optional[str]) -> Optional[dict[str, dict]]:
    """The GPU comparison when CUDA is available (else a note); writes ``results["accelerator"]``."""
    if not torch.cuda.is_available():
        results["accelerator"] = {"note": "no GPU on this machine: the ViT-B/32 bf16 comparison was not measured"}
        print("\n## Accelerator: no GPU on this machine (torch.cuda.is_available() is False); not measured")
        return None
    name = torch.cuda.get_device_name(0)
    rows = accelerator_compare("cuda")
    results["accelerator"] = {"device": name, "batch": 256, "dtype": "bfloat16", "rows": rows}
    print_accelerator(rows, name, 256, "bf16")
    if json_path:
        write_text_atomic(Path(json_path), json.dumps(results, indent=2))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, ≤ 2 minutes on 2 cores")
    parser.add_argument("--model", default="Tiny-64", help="tiny config suffix: <CLIP|SLIP|DeCLIP|UniCLIP>-<x>")
    parser.add_argument("--batch", type=int, default=None, help="training batch (default 256; --quick 64)")
    parser.add_argument("--curves", default=None, help="study curves (default: the first of "
                        "results/{full-tuned,full,quick-tuned,quick}/curves.json)")
    parser.add_argument("--json", default=None, help="also write every number to this JSON file")
    parser.add_argument("--gpu-only", action="store_true",
                        help="only the accelerator section (ViT-B/32, batch 256, bf16: UniCLIP vs stock CLIP)")
    parser.add_argument("--malloc-ab", action="store_true",
                        help="only the allocator A/B: clip, slip and uniclip steps in two fresh processes, glibc "
                             "defaults vs the launchers' setting (batch --batch, default 256)")
    parser.add_argument("--train-threads", action="store_true",
                        help="only the study's thread check: `open_clip train` steps at 1 OMP thread and at all "
                             "cores, 1 loader worker (Tiny-32 clip / uniclip / declip at batch 128, Tiny-64 clip)")
    parser.add_argument("--train-data", default=None,
                        help="--train-threads: shard pattern to train on (default: generated 64 px shards)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="keep glibc's default malloc settings (the training launchers tune them on CPU)")
    args = parser.parse_args(argv)
    import uniclip_plugin  # noqa: F401  (registers the plugin configs)
    from uniclip_plugin.cpu_malloc import allocator_env, keep_freed_memory
    malloc_status = "default allocator (--default-malloc)" if args.default_malloc else keep_freed_memory()
    wall0 = time.perf_counter()
    full = not args.quick
    batch = args.batch or (256 if full else 64)
    iters, warmup = (5, 2) if full else (3, 1)
    main_iters = 5 if full else 4  # rounds of the shared timing of towers, method steps and step parts
    load = os.getloadavg()
    results: dict[str, Any] = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                               "torch": torch.__version__, "threads": torch.get_num_threads(), "batch": batch,
                               "quick": args.quick, "iters": iters, "load_avg_start": list(load)}
    print(f"# perf.py on {results['machine']}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'--quick' if args.quick else 'full run'}")
    flag = (f" — above {LOAD_CONTAMINATED}: the machine is shared, times are contaminated"
            if load[0] > LOAD_CONTAMINATED else "")
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}{flag}")
    allocator = allocator_env()
    results["allocator_env"] = allocator
    results["allocator"] = malloc_status
    print(f"allocator: {malloc_status}" + (f"; environment {allocator}" if allocator else ""))

    if args.train_threads:
        rows = train_threads(train_data=args.train_data)
        counts = sorted(int(k.split("_")[1]) for k in rows[0] if k.startswith("threads_"))
        print("\n## open_clip train step time by OMP thread count (1 loader worker; median logged step and, in "
              "brackets, its wait for data; s)")
        print("| loss | model | batch | " + " | ".join(f"{c} thread(s)" for c in counts) + " | ratio |")
        print("|---|---|---|" + "---|" * (len(counts) + 1))
        for r in rows:
            cells = [r[f"threads_{c}"] for c in counts]
            print(f"| {r['loss']} | {r['model']} | {r['batch']} | "
                  + " | ".join(f"{c['step_s']:.3f} ({c['data_s']:.3f})" for c in cells)
                  + f" | {cells[-1]['step_s'] / cells[0]['step_s']:.2f} |")
        results["train_threads"] = rows
        if args.json:
            write_text_atomic(Path(args.json), json.dumps(results, indent=2))
        return 0

    if args.malloc_ab:
        ab = malloc_ab(args.model, batch, iters)
        print(f"\n## Allocator A/B: {args.model}, batch {batch}, {iters} rounds, fresh process each")
        print("| method | glibc defaults (s) | keep freed memory (s) | change |\n|---|---|---|---|")
        for name, sec in ab["default"]["step_s"].items():
            new = ab["tuned"]["step_s"][name]
            print(f"| {name} | {sec:.3f} | {new:.3f} | {100 * (new / sec - 1):+.0f} % |")
        d, t = ab["default"]["step_s"], ab["tuned"]["step_s"]
        ratio_d, ratio_t = d["uniclip_mpnce"] / d["clip"], t["uniclip_mpnce"] / t["clip"]
        print(f"| uniclip_mpnce / clip | {ratio_d:.3f} | {ratio_t:.3f} | |")
        print(f"| minor page faults | {ab['default']['minor_faults']:,} | {ab['tuned']['minor_faults']:,} | |")
        print(f"tuned process: {ab['tuned']['allocator']}")
        results["malloc_ab"] = ab
        if args.json:
            write_text_atomic(Path(args.json), json.dumps(results, indent=2))
        return 0
    accel = run_accelerator_section(results, args.json if args.gpu_only else None)
    if args.gpu_only:
        return 0 if accel is not None else 1
    size = args.model
    clip_name, uni_name = f"CLIP-{size}", f"UniCLIP-{size}"

    # 1-2. towers, per-method steps
    extra = {f"uniclip:{k}": f for k, f in part_passes("uniclip_mpnce", uni_name, batch).items()}
    extra.update({f"clip:{k}": f for k, f in part_passes("clip", clip_name, batch).items()})
    steps, medians = method_steps(size, batch, main_iters, None, warmup, extra=extra)
    del extra
    costs = {"image": medians["image"], "text": medians["text"]}
    uni_parts = {k.split(":", 1)[1]: v for k, v in medians.items() if k.startswith("uniclip:")}
    clip_parts = {k.split(":", 1)[1]: v for k, v in medians.items() if k.startswith("clip:")}
    t_clip, t_uni = steps["clip"]["step_s"], steps["uniclip_mpnce"]["step_s"]
    views = steps["uniclip_mpnce"]["image_passes"]
    bound = steps["uniclip_mpnce"]["bound"]
    results["step"] = {"image_tower_s": costs["image"], "text_tower_s": costs["text"], "bound": bound,
                       "clip_step_s": t_clip, "uniclip_step_s": t_uni}
    results["methods"] = steps
    print(f"\n## Tower costs, batch {batch}, {size} (forward+backward; towers, steps and parts below timed in the "
          f"same {main_iters} rounds, medians)")
    print("| tower pass | seconds | / (k × the B pass) |\n|---|---|---|")
    for key, sec in medians.items():
        if key.startswith(("image", "text")):
            k = int(key.split("_x")[1]) if "_x" in key else 1
            kind = key.split("_")[0]
            print(f"| {kind}, {k}·B = {k * batch} {kind}s in one pass | {sec:.3f} | {sec / (k * medians[kind]):.2f} |")
            results["step"][f"{key}_tower_s"] = sec
    print(f"\n## Step time per method: forward, loss, backward, AdamW step; batch {batch}, {size} towers "
          f"(median of {main_iters})")
    print("| loss | image passes + text rows | step (s) | samples/s | / clip | bound | (/ clip) / bound | "
          "tower-exact bound | (/ clip) / exact |\n|---|---|---|---|---|---|---|---|---|")
    for name, r in steps.items():
        print(f"| {name} | {r['image_passes']} + {r['text_rows']} | {r['step_s']:.3f} | {r['samples_per_s']:.0f} | "
              f"{r['ratio_to_clip']:.2f} | {r['bound']:.2f} | {r['ratio_over_bound']:.2f} | "
              f"{r['exact_bound']:.2f} | {r['ratio_over_exact_bound']:.2f} |")
    print("bound: the forward-count bound, passes × the per-B tower costs (the target's definition); tower-exact: the "
          "measured cost of the method's actual concatenated passes (one image pass over passes·B images, one text "
          "pass over rows·B texts) over CLIP's I + T; the gap between them is the towers' own non-linearity in batch.")
    print("Published anchor (DeCLIP paper): one DeCLIP iteration ≈ 1.5 × a CLIP iteration "
          f"(here {steps['declip']['ratio_to_clip']:.2f} ×).")

    # 3. beyond the towers
    towers_uni_linear = views * costs["image"] + costs["text"]
    towers_uni = steps["uniclip_mpnce"]["towers_s"]
    towers_clip = costs["image"] + costs["text"]
    aug256 = augment_time(128, 2, 64, iters)
    beyond_uni, beyond_clip = t_uni - towers_uni, t_clip - towers_clip
    beyond_uni_linear = t_uni - towers_uni_linear
    results["beyond_towers"] = {
        "uniclip": {**uni_parts, "towers_s": towers_uni, "beyond_s": beyond_uni,
                    "rest_s": beyond_uni - sum(uni_parts.values()), "beyond_share": beyond_uni / t_uni,
                    "towers_linear_s": towers_uni_linear, "beyond_linear_s": beyond_uni_linear,
                    "beyond_linear_share": beyond_uni_linear / t_uni},
        "clip": {**clip_parts, "towers_s": towers_clip, "beyond_s": beyond_clip,
                 "rest_s": beyond_clip - sum(clip_parts.values()), "beyond_share": beyond_clip / t_clip},
        "views_share": uni_parts["views"] / t_uni, "views_256_at_64px_s": aug256,
        "views_256_at_64px_share": aug256 / t_uni}
    print(f"\n## Beyond the towers: each part timed alone, as % of its step (batch {batch})")
    print("| part | uniclip_mpnce (s) | % of step | clip (s) | % of step |\n|---|---|---|---|---|")
    rows = [(f"towers as run: image over {views}·B + text over B (clip: B + B)", towers_uni, towers_clip),
            (f"in-forward views ({batch}·{views} at the model's px)", uni_parts.get("views"), None),
            ("aug-aware embedding fwd+bwd", uni_parts.get("aug_embed"), None),
            ("loss fwd+bwd", uni_parts["loss"], clip_parts["loss"]),
            ("AdamW step", uni_parts["optimizer"], clip_parts["optimizer"]),
            ("rest (normalise, gather, autograd glue, timing noise)",
             results["beyond_towers"]["uniclip"]["rest_s"], results["beyond_towers"]["clip"]["rest_s"]),
            ("**step − towers as run**", beyond_uni, beyond_clip),
            (f"step − ({views}·image(B) + text(B)), the forward-count definition", beyond_uni_linear, beyond_clip)]
    for label, u, c in rows:
        us = f"{u:.4f} | {_pct(u, t_uni)}" if u is not None else "– | –"
        cs = f"{c:.4f} | {_pct(c, t_clip)}" if c is not None else "– | –"
        print(f"| {label} | {us} | {cs} |")
    print(f"View share: the step's {batch}·{views} views = {_pct(uni_parts['views'], t_uni)} of the UniCLIP step; "
          f"256 views at 64 px (128 images × 2, simclr) = {aug256:.4f} s = {_pct(aug256, t_uni)} of it.")

    # 4. data loader (before torch.compile: its workers fork this process)
    n_samples = 4096 if full else 1024
    loader = loader_throughput(uni_name, batch, n_samples)
    consumed = batch / t_uni
    loader["training_samples_per_s"] = consumed
    loader["ratio"] = loader["samples_per_s"] / consumed
    results["loader"] = loader
    print(f"\n## Data: open_clip_train get_wds_dataset, 2 workers, {n_samples} generated 64 px samples, {uni_name} "
          f"training preprocess, batch {batch}")
    print(f"| measure | samples/s |\n|---|---|\n| loader, epoch 0 (incl. worker start) | "
          f"{loader['epoch0_samples_per_s']:.0f} |\n| loader, epoch 1 (persistent workers) | "
          f"{loader['samples_per_s']:.0f} |\n| UniCLIP step consumes | {consumed:.0f} |")
    print(f"loader / training = {loader['ratio']:.1f} × (goal ≥ 3; measured alone: in training the 2 workers share "
          f"the 2 cores with the step)")

    # 5. options
    opts = option_steps(uni_name, batch, iters if full else 2, t_uni, full, warmup)
    print(f"\n## Options: UniCLIP step with each option, ratio to the plain step ({t_uni:.3f} s)")
    print("| option | step (s) | / plain |\n|---|---|---|")
    labels = {"grad_checkpointing": "--grad-checkpointing (model.set_grad_checkpointing)",
              "bf16_autocast": "bf16 autocast (torch.autocast('cpu', bfloat16))", "torchcompile": "--torchcompile"}
    for name, r in opts.items():
        if "step_s" in r:
            extra = f" (first step incl. compile {r['first_step_s']:.1f} s)" if "first_step_s" in r else ""
            print(f"| {labels[name]} | {r['step_s']:.3f}{extra} | {r['ratio_to_plain']:.2f} |")
        else:
            print(f"| {labels[name]} | {r['note']} | – |")
    loss_at_batch = _loss_point_subprocess(batch, views, 128, 0, iters)["seconds"]
    if full:
        label = (f"--local-loss --gather-with-grad: MP-NCE fwd+bwd + all_gather, 2 gloo processes × {batch // 2} "
                 f"(rank 0) vs 1 process × {batch}")
        try:
            gather_s = _gather_loss_time_subprocess(batch, views, 128, iters)
            opts["local_loss_gather_with_grad"] = {"two_process_loss_s": gather_s,
                                                   "one_process_loss_s": loss_at_batch,
                                                   "ratio": gather_s / loss_at_batch}
            print(f"| {label} | {gather_s:.4f} vs {loss_at_batch:.4f} | {gather_s / loss_at_batch:.2f} |")
        except Exception as err:  # noqa: BLE001 - reported, the rest of the run goes on
            opts["local_loss_gather_with_grad"] = {"note": f"failed: {err}"}
            print(f"| {label} | failed: {err} | – |")
    else:
        opts["local_loss_gather_with_grad"] = {"note": "not measured in --quick (2 spawned processes)"}
        print("| --local-loss --gather-with-grad | not measured in --quick (2 spawned processes) | – |")
    print("--local-loss --gather-with-grad are no-ops on one process (world_size 1: no gather); equality of the "
          "2-process loss and gradients with the 1-process global batch is proved by tests/test_distributed_loss.py "
          "(MP-NCE, every objective, chunked and not), tests/test_slip.py::test_two_ranks_equal_one_process and "
          "tests/test_declip_multiproc.py.")
    results["options"] = opts

    # 6. MP-NCE curves
    print(f"\n## MP-NCE forward+backward against M = (V+1)·B (V={views}, D=128), fresh process per point")
    print("| B | M | chunk | time (s) | autograd-saved | peak extra RSS | peak / M |\n|---|---|---|---|---|---|---|")
    sizes = [256, 1024] if args.quick else [256, 1024, 4096, 16384]
    loss_rows = []
    for b in sizes:
        for chunk in (0, 256):
            if chunk == 0 and b > 4096:
                continue  # unchunked M × M logits at M = 49152 need > 9 GiB per matrix
            r = _loss_point_subprocess(b, views, 128, chunk, 1 if b > 1024 else iters)
            m = (views + 1) * b
            loss_rows.append({"B": b, "M": m, "chunk": chunk, **r})
            print(f"| {b} | {m} | {chunk or 'none'} | {r['seconds']:.3f} | {_fmt_bytes(r['saved_bytes'])} | "
                  f"{_fmt_bytes(r['peak_extra_bytes'])} | {_fmt_bytes(r['peak_extra_bytes'] / m)} |")
    results["loss"] = loss_rows
    results["loss_share_of_step"] = loss_at_batch / t_uni
    by_b = {(r["B"], r["chunk"]): r["seconds"] for r in loss_rows}
    chunk_ratios = {b: by_b[(b, 256)] / by_b[(b, 0)] for b in sizes if (b, 0) in by_b and (b, 256) in by_b}
    worst_chunk = max(chunk_ratios.values())
    results["loss_chunked_over_unchunked"] = chunk_ratios
    chunked = [r for r in loss_rows if r["chunk"]]
    per_m = [r["peak_extra_bytes"] / r["M"] for r in chunked]
    linear = per_m[-1] / per_m[0] if per_m[0] > 0 else float("nan")
    results["loss_peak_per_m_last_over_first"] = linear
    print(f"\nMP-NCE fwd+bwd at the training batch B={batch}: {loss_at_batch:.4f} s = "
          f"{100 * loss_at_batch / t_uni:.1f}% of a UniCLIP step; chunked / unchunked time: "
          + ", ".join(f"B={b}: {v:.2f}" for b, v in chunk_ratios.items())
          + f"; chunked peak per row, M={chunked[-1]['M']} over M={chunked[0]['M']}: {linear:.2f} (1 = linear)")

    # 7. data efficiency
    curves_path = find_curves(args.curves)
    print("\n## Data efficiency (held-out val R@1 curves of the study)")
    eff: dict[str, Any] = {"path": str(curves_path) if curves_path else None}
    if curves_path is None or not curves_path.exists():
        eff["note"] = "no curves file"
        print(f"No curves file ({curves_path or 'results/{full,quick}/curves.json'}): it comes from the study, "
              f"`python harness/reproduce.py` (then `--curves PATH`).")
    else:
        eff.update(data_efficiency(json.loads(curves_path.read_text())))
        print(f"From {curves_path}: steps for uniclip to reach clip's final val R@1, as a fraction of clip's steps")
        print("| seed | clip final R@1 | clip steps | uniclip steps | fraction |\n|---|---|---|---|---|")
        for seed, s in eff["seeds"].items():
            st = "not reached" if s["steps"] is None else f"{s['steps']:.0f}"
            fr = "not reached" if s["fraction"] is None else f"{s['fraction']:.2f}"
            print(f"| {seed} | {s['target_r1']:.2f} | {s['base_steps']} | {st} | {fr} |")
        mean = "n/a (not reached on every seed)" if eff["mean"] is None else f"{eff['mean']:.2f}"
        print(f"mean fraction: {mean}" if eff["seeds"] else f"no common seeds: {eff.get('note', '')}")
    results["data_efficiency"] = eff

    # 8. targets
    ratio = t_uni / t_clip
    view_share = uni_parts["views"] / t_uni
    extras = uni_parts["views"] + uni_parts.get("aug_embed", 0.0) + uni_parts["loss"]
    results["beyond_towers"]["uniclip"]["extras_s"] = extras
    targets = [
        ("UniCLIP/CLIP step ÷ bound", f"{ratio / bound:.3f}", "≤ 1.10", ratio / bound <= 1.10),
        ("MP-NCE fwd+bwd share of the UniCLIP step", f"{100 * loss_at_batch / t_uni:.1f}%", "≤ 5%",
         loss_at_batch / t_uni <= 0.05),
        ("MP-NCE chunked/unchunked time (largest ratio over B)", f"{worst_chunk:.2f}", "chunked ≤ 1.3 × unchunked",
         worst_chunk <= 1.3),
        ("MP-NCE chunked peak memory per row, largest/smallest M", f"{linear:.2f}", "≈ 1 (linear in M)", None),
        (f"views ({batch}·{views} of the step) share", f"{100 * view_share:.1f}%", "≤ 5%", view_share <= 0.05),
        (f"256 views at 64 px, share of the B={batch} step", f"{100 * aug256 / t_uni:.1f}%", "≤ 5% (at B=256)",
         aug256 / t_uni <= 0.05 if batch == 256 else None),
        ("UniCLIP's extras: views + aug-embed + MP-NCE (+ gather: none on 1 process), share of the step",
         f"{100 * extras / t_uni:.1f}%", "≤ 10%", extras / t_uni <= 0.10),
        (f"UniCLIP step − ({views}·image(B) + text(B)), share (CLIP's own: {100 * beyond_clip / t_clip:.1f}%)",
         f"{100 * beyond_uni_linear / t_uni:.1f}%", "info (incl. AdamW, as CLIP's)", None),
        ("UniCLIP/CLIP step ÷ tower-exact bound", f"{steps['uniclip_mpnce']['ratio_over_exact_bound']:.3f}",
         "≤ 1.10 (diagnostic)", steps["uniclip_mpnce"]["ratio_over_exact_bound"] <= 1.10),
        ("loader / training samples/s", f"{loader['ratio']:.1f}", "≥ 3", loader["ratio"] >= 3),
        ("uniclip steps to clip's final R@1 / clip's steps",
         "n/a" if eff.get("mean") is None else f"{eff['mean']:.2f}", "≤ 0.50",
         None if eff.get("mean") is None else eff["mean"] <= 0.5),
        ("DeCLIP/CLIP iteration (anchor ≈ 1.5)", f"{steps['declip']['ratio_to_clip']:.2f}", "≈ 1.5 (reference)",
         None),
        ("GPU: ViT-B/32 bf16 B=256, UniCLIP / CLIP step",
         "no GPU on this machine" if accel is None else
         f"{accel['uniclip_mpnce']['step_s'] / accel['clip']['step_s']:.2f}", "measured", None),
        ("GPU: in-forward views free of host syncs", "no GPU on this machine" if accel is None else
         str(accel["uniclip_mpnce"].get("views_sync_free")), "no sync",
         None if accel is None else bool(accel["uniclip_mpnce"].get("views_sync_free"))),
    ]
    results["targets"] = [{"target": t, "measured": m, "goal": g, "met": ok} for t, m, g, ok in targets]
    wall = time.perf_counter() - wall0
    end_load = os.getloadavg()
    results["wall_s"], results["load_avg_end"] = wall, list(end_load)
    print(f"\n## Targets (wall time {wall:.0f} s; load average at end {end_load[0]:.2f})")
    print("| target | measured | goal | met |\n|---|---|---|---|")
    for t, m, g, ok in targets:
        print(f"| {t} | {m} | {g} | {_verdict(ok)} |")
    if args.json:
        write_text_atomic(Path(args.json), json.dumps(results, indent=2))
    print(f"\nstep-cost ratio uniclip/clip = {ratio:.3f}; bound = {bound:.3f}; ratio / bound = {ratio / bound:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
