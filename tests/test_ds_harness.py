"""DeepSpeed trainer (``uniclip_plugin.ds``, script ``harness/train.py``) on CPU: ZeRO-1/2/3 exactness,
kill-and-resume, export, bf16, errors.

Multi-rank tests launch 2 CPU ranks with ``deepspeed --num_gpus 2`` (gloo, ``DS_ACCELERATOR=cpu``) in a subprocess.
The exactness checks run in ONE launch of this file as a worker script (``python tests/test_ds_harness.py --out D``
under the launcher), which builds every (loss, stage) engine through the trainer's own functions in turn; the test
process then recomputes each step in one process on the global batch and compares.

Random in-forward views and the 1-vs-2-process comparison: each rank seeds torch with ``1000 + rank`` right before its
forward; the reference runs the model on each rank's half of the batch under the same seed (the views of half r are
then exactly rank r's), concatenates the batch-first outputs and evaluates the loss once on the global batch. The
model has no cross-sample layers (no BatchNorm), so this equals one forward on the global batch with those views.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.ds_launch import REPO, TRAIN, WORLD, env, launch, run, train_args

B_LOCAL = 4
# AdamW's first update is lr·g/(|g|+eps). A parameter whose true gradient is 0 (attention key biases: softmax ignores
# them) gets ~1e-8 of fp32 round-off, whose sign and size depend on the summation order, i.e. on the rank split;
# lr/eps amplifies it (open_clip's eps 1e-6 with lr 1e-3: 2e-5 measured on in_proj_bias). eps = 1e-4 keeps that
# amplification at 10, so max|Δθ| measures the harness, not Adam's conditioning; gradients are compared as well.
LR, WD, EPS = 1e-3, 0.1, 1e-4
VIEW_SEED = 1000
CASES = [("uniclip_mpnce", "UniCLIP-Tiny-32"), ("clip", "CLIP-Tiny-32")]
STAGES = (1, 2, 3)


# ------------------------------------------------------------------------------------------------------------- helpers
def _metrics(run_dir: Path) -> list[dict]:
    rows = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by the SIGKILL
            pass
    return rows


def _step_args(loss: str, model: str) -> argparse.Namespace:
    from uniclip_plugin.ds.cli import build_parser

    return build_parser().parse_args(
        [
            "--model",
            model,
            "--loss",
            loss,
            "--lr",
            str(LR),
            "--wd",
            str(WD),
            "--eps",
            str(EPS),
            "--beta1",
            "0.9",
            "--beta2",
            "0.98",
            "--warmup",
            "1",
            "--seed",
            "0",
        ]
    )


def _global_batch(model: str) -> tuple[torch.Tensor, torch.Tensor]:
    import open_clip

    g = torch.Generator().manual_seed(123)
    images = torch.randn(WORLD * B_LOCAL, 3, 32, 32, generator=g)
    texts = open_clip.get_tokenizer(model)([f"a picture of shape number {i}" for i in range(WORLD * B_LOCAL)])
    return images, texts


def _probe(model: str) -> tuple[torch.Tensor, torch.Tensor]:
    import open_clip

    g = torch.Generator().manual_seed(7)
    return torch.randn(5, 3, 32, 32, generator=g), open_clip.get_tokenizer(model)(
        ["a red circle", "a blue bar", "one cyan ring", "a cross", "a square in black"]
    )


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from uniclip_plugin.testing.synthetic import build_synthetic_pretrain

    # 256 samples, 2 ranks × 8 per rank: 16 steps per epoch.
    return build_synthetic_pretrain(tmp_path_factory.mktemp("ds_data"), n_samples=256, res=32, n_shards=4, seed=0)


# ----------------------------------------------------------------------------------------- worker (run by the launcher)
def _engine_for(loss: str, model_name: str, config: str, rank: int) -> tuple[Any, Any, tuple]:
    """A DeepSpeed engine built through the trainer's own functions, at the full LR for its first step."""
    import deepspeed
    from open_clip_train.scheduler import cosine_lr

    from uniclip_plugin import integration
    from uniclip_plugin.ds.build import build_model, check_model_and_loss, param_groups
    from uniclip_plugin.ds.config import load_config, prepare_config
    from uniclip_plugin.train_hooks import TrainLossAdapter

    args = _step_args(loss, model_name)
    args.name = f"{loss}-{Path(config).stem}"
    check_model_and_loss(args)
    cfg = prepare_config(
        load_config(REPO / "deepspeed_configs" / config),
        world_size=WORLD,
        batch_size=B_LOCAL,
        lr=LR,
        betas=(args.beta1, args.beta2),
        eps=EPS,
        weight_decay=WD,
        on_cpu=True,
    )
    setup = integration.prepare(args, rank=rank, world_size=WORLD, exact_global_loss=True)
    loss_fn = TrainLossAdapter(setup.loss, log_every=10**9, is_master=False)
    model, _, _ = build_model(args, setup)
    groups, layout = param_groups(model, WD)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=groups, config=cfg)
    cosine_lr(engine.optimizer, LR, 1, 10)(0)  # warmup 1: the first step runs at the full LR
    return engine, loss_fn, (args, cfg, layout)


def _full_params(engine: Any) -> dict[str, torch.Tensor]:
    import deepspeed

    params = list(engine.module.parameters())
    zero3 = engine.zero_optimization_stage() == 3
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=zero3):
        return {n: p.detach().float().clone() for n, p in engine.module.named_parameters()}


def _capture_grads(engine: Any) -> dict[str, torch.Tensor]:
    """Make ``engine.step`` record every full gradient first; returns the dict it fills."""
    grads: dict[str, torch.Tensor] = {}
    real_step = engine.step

    def step_capturing_grads(*a: Any, **kw: Any) -> Any:
        from deepspeed.utils import safe_get_full_grad  # every rank (a collective under ZeRO-1/2/3)

        grads.update({n: safe_get_full_grad(p).detach().float().clone() for n, p in engine.module.named_parameters()})
        return real_step(*a, **kw)

    engine.step = step_capturing_grads
    return grads


def _save_run(engine: Any, out_dir: Path, run: tuple, rank: int) -> None:
    """The checkpoint the export test reads (``ckpt.save_checkpoint`` is a collective: all ranks)."""
    import torch.distributed as dist

    from uniclip_plugin.ds import checkpoint as ckpt
    from uniclip_plugin.ds.setup import run_meta, write_params

    args, cfg, layout = run
    run_dir = out_dir / "runs" / args.name
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_params(run_dir, args)
    dist.barrier()
    state = ckpt.TrainState(step=1, epoch=0, step_in_epoch=1, steps_per_epoch=10, total_steps=10)
    ckpt.save_checkpoint(
        engine,
        run_dir / "checkpoints",
        state,
        run_meta(args, cfg, layout, WORLD),
        rank=rank,
        keep=1,
        barrier=dist.barrier,
    )


def _zero_case(out_dir: Path, loss: str, model_name: str, stage: int, rank: int) -> dict:
    """One step of (loss, ZeRO stage) on this rank's half of the global batch, its checkpoint and eval encodings."""
    from uniclip_plugin.ds.step import train_step

    images, texts = _global_batch(model_name)
    probe_images, probe_texts = _probe(model_name)
    part = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
    engine, loss_fn, run = _engine_for(loss, model_name, f"zero{stage}.json", rank)
    grads = _capture_grads(engine)
    torch.manual_seed(VIEW_SEED + rank)
    t0 = time.time()
    value = train_step(engine, loss_fn, images[part], texts[part], 0)
    step_s = time.time() - t0
    params = _full_params(engine)
    _save_run(engine, out_dir, run, rank)
    engine.eval()
    with torch.no_grad():
        enc = engine(probe_images, probe_texts)
    return {
        "loss": value,
        "params": params,
        "grads": grads,
        "step_s": step_s,
        "image_features": enc["image_features"].float(),
        "text_features": enc["text_features"].float(),
    }


def _bf16_dtypes(engine: Any, loss_fn: Any, images: torch.Tensor, texts: torch.Tensor) -> dict:
    """Six bf16 ZeRO-2 steps: the model runs in bf16, the loss's logits must be fp32."""
    import uniclip_plugin.losses.mpnce as mpnce
    from uniclip_plugin.ds.step import train_step

    seen: dict[str, list[str]] = {"outputs": [], "loss_inputs": [], "logits": []}
    original = mpnce.domain_logits

    def spy_logits(*a: Any, **kw: Any) -> torch.Tensor:
        logits = original(*a, **kw)
        seen["logits"].append(str(logits.dtype))
        return logits

    def spy_outputs(raw: dict, inputs: dict) -> None:
        seen["outputs"].append(str(raw["image_features"].dtype))
        seen["loss_inputs"].append(str(inputs["image_features"].dtype))

    mpnce.domain_logits = spy_logits
    try:
        losses = [train_step(engine, loss_fn, images, texts, s, spy_outputs) for s in range(6)]
    finally:
        mpnce.domain_logits = original
    return {**seen, "losses": losses}


def _overflow(engine: Any, loss_fn: Any, images: torch.Tensor, texts: torch.Tensor) -> dict:
    """Overflowing gradients with a finite loss: DeepSpeed 0.19 skips the step silently (#8415); the trainer's
    SkipWatcher must log each skip and stop on a streak."""
    from uniclip_plugin.ds.errors import HarnessError
    from uniclip_plugin.ds.step import SkipWatcher, train_step

    skipped_before = engine.skipped_steps
    watch = SkipWatcher(max_consecutive=2)
    hook = next(p for p in engine.module.parameters() if p.dim() > 1).register_hook(lambda g: g * float("inf"))
    before = _full_params(engine)
    applied, stop_message = [], None
    for s in range(6, 8):
        train_step(engine, loss_fn, images, texts, s)
        applied.append(engine.was_step_applied())
        try:
            watch.update(engine.was_step_applied(), s)
        except HarnessError as err:
            stop_message = str(err)
    hook.remove()
    unchanged = max((_full_params(engine)[k] - before[k]).abs().max().item() for k in before)
    return {
        "skipped_before_overflow": skipped_before,
        "overflow_applied": applied,
        "overflow_skipped": engine.skipped_steps - skipped_before,
        "overflow_stop": stop_message,
        "overflow_max_change": unchanged,
    }


def _nonfinite(rank: int) -> dict:
    """A NaN image on ONE rank: every rank stops before the optimiser step and the weights stay as they were."""
    from uniclip_plugin.ds.step import NonFiniteLoss, train_step

    engine, loss_fn, _ = _engine_for("uniclip_mpnce", "UniCLIP-Tiny-32", "zero2.json", rank)
    images, texts = _global_batch("UniCLIP-Tiny-32")
    part = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
    before = _full_params(engine)
    bad = images[part].clone()
    if rank == 0:
        bad[0] = float("nan")
    try:
        train_step(engine, loss_fn, bad, texts[part], 41)
        message = None
    except NonFiniteLoss as err:
        message = str(err)
    after = _full_params(engine)
    return {"message": message, "max_change": max((after[k] - before[k]).abs().max().item() for k in before)}


def _worker(out_dir: Path) -> None:
    """Per rank: one optimiser step per (loss, ZeRO stage) through the trainer's functions, plus a checkpoint, the
    engine's eval encodings, a bf16 ZeRO-2 dtype and gradient-overflow probe, and a non-finite-loss probe."""
    import torch.distributed as dist

    import uniclip_plugin
    from uniclip_plugin.ds.distributed import init_distributed

    uniclip_plugin.register()
    init_distributed(no_cpu_shm_comm=True)
    rank = dist.get_rank()
    results: dict[str, Any] = {}
    for loss, model_name in CASES:
        for stage in STAGES:
            results[f"{loss}/zero{stage}"] = _zero_case(out_dir, loss, model_name, stage, rank)
    engine, loss_fn, _ = _engine_for("uniclip_mpnce", "UniCLIP-Tiny-32", "zero2_bf16.json", rank)
    images, texts = _global_batch("UniCLIP-Tiny-32")
    part = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
    results["bf16"] = {
        **_bf16_dtypes(engine, loss_fn, images[part], texts[part]),
        **_overflow(engine, loss_fn, images[part], texts[part]),
    }
    del engine
    results["nonfinite"] = _nonfinite(rank)
    torch.save(results, out_dir / f"worker_rank{rank}.pt")


def _reference_step(
    loss: str, model_name: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor], float, torch.Tensor]:
    """One AdamW step in one process on the global batch, with rank r's views on half r (see the module docstring)."""
    import uniclip_plugin
    from uniclip_plugin import integration
    from uniclip_plugin.ds.build import build_model, check_model_and_loss, param_groups
    from uniclip_plugin.ds.step import loss_inputs

    uniclip_plugin.register()
    args = _step_args(loss, model_name)
    check_model_and_loss(args)
    setup = integration.prepare(args, rank=0, world_size=1, exact_global_loss=True)
    loss_fn = setup.loss
    model, _, _ = build_model(args, setup)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    groups, _ = param_groups(model, WD)
    opt = torch.optim.AdamW(groups, lr=LR, betas=(args.beta1, args.beta2), eps=EPS)
    images, texts = _global_batch(model_name)
    halves = []
    for r in range(WORLD):
        torch.manual_seed(VIEW_SEED + r)
        halves.append(
            loss_inputs(model(images[r * B_LOCAL : (r + 1) * B_LOCAL], texts[r * B_LOCAL : (r + 1) * B_LOCAL]))
        )
    # open_clip's batch-first contract: every key but logit_scale/logit_bias is per sample.
    merged = {
        k: (v if k in ("logit_scale", "logit_bias") else torch.cat([h[k] for h in halves]))
        for k, v in halves[0].items()
    }
    out = loss_fn(**merged, output_dict=True)
    total = sum(v for k, v in out.items() if k.endswith("_loss"))
    opt.zero_grad()
    total.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    after = {n: p.detach().clone() for n, p in model.named_parameters()}
    return before, after, grads, total.item(), merged.get("aug_params", torch.zeros(1))


# --------------------------------------------------------------------------------------------------- fast unit checks
def test_config_fills_auto_and_checks_batch_arithmetic() -> None:
    from uniclip_plugin.ds.config import ConfigError, load_config, prepare_config

    raw = load_config(REPO / "deepspeed_configs" / "zero2_bf16.json")
    cfg = prepare_config(raw, world_size=4, batch_size=8, lr=5e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)
    assert (cfg["train_micro_batch_size_per_gpu"], cfg["train_batch_size"]) == (8, 32)
    assert cfg["optimizer"]["params"] == {
        "lr": 5e-4,
        "betas": [0.9, 0.98],
        "eps": 1e-6,
        "weight_decay": 0.2,
        "torch_adam": True,
    }
    assert cfg["gradient_clipping"] == 0.0 and cfg["bf16"]["enabled"] is True and "_comment" not in cfg
    cfg = prepare_config(raw, world_size=4, global_batch_size=32, lr=1, betas=(0.9, 0.9), eps=1, weight_decay=0)
    assert cfg["train_micro_batch_size_per_gpu"] == 8
    with pytest.raises(ConfigError, match="not divisible by the world size 3"):
        prepare_config(raw, world_size=3, global_batch_size=32, lr=1, betas=(0.9, 0.9), eps=1, weight_decay=0)
    no_clip = {k: v for k, v in raw.items() if k != "gradient_clipping"}
    with pytest.raises(ConfigError, match="gradient_clipping explicitly"):
        prepare_config(no_clip, world_size=1, batch_size=8, lr=1, betas=(0.9, 0.9), eps=1, weight_decay=0)
    assert (
        prepare_config(
            no_clip, world_size=1, batch_size=8, lr=1, betas=(0.9, 0.9), eps=1, weight_decay=0, grad_clip_norm=1.0
        )["gradient_clipping"]
        == 1.0
    )
    for stage in STAGES:  # every shipped config: explicit clipping, AdamW, the stage its name says
        for suffix in ("", "_bf16"):
            shipped = load_config(REPO / "deepspeed_configs" / f"zero{stage}{suffix}.json")
            assert shipped["gradient_clipping"] == 0.0 and shipped["optimizer"]["type"] == "AdamW"
            assert shipped["zero_optimization"]["stage"] == stage and shipped["bf16"]["enabled"] == (suffix != "")


def test_param_groups_follow_open_clip_train_and_no_zero_dim_params() -> None:
    import uniclip_plugin
    from uniclip_plugin import integration
    from uniclip_plugin.ds.build import build_model, param_groups

    uniclip_plugin.register()
    args = _step_args("clip", "CLIP-Tiny-32")
    model, _, _ = build_model(args, integration.prepare(args))
    assert model.logit_scale.shape == (1,)  # stock CLIP's 0-dim scale reshaped for DeepSpeed (D1)
    assert all(p.dim() > 0 for p in model.parameters())
    groups, (no_decay, decay) = param_groups(model, 0.2)
    assert [g["weight_decay"] for g in groups] == [0.0, 0.2]
    assert "logit_scale" in no_decay and "positional_embedding" in decay and "token_embedding.weight" in decay
    assert all("bias" not in n and "ln" not in n for n in decay)
    assert len(no_decay) + len(decay) == len(list(model.parameters()))


def test_rng_and_extra_state_round_trip() -> None:
    import random

    import numpy as np
    from torch import nn

    from uniclip_plugin.ds import checkpoint as ckpt

    class Queue(nn.Module):  # what a DeCLIP-style feature queue looks like to the generic hook
        def __init__(self) -> None:
            super().__init__()
            self.items = torch.zeros(3)

        def get_extra_state(self) -> Any:
            return {"items": self.items.clone()}

        def set_extra_state(self, state: Any) -> None:
            self.items = state["items"].clone()

    model = nn.Sequential(nn.Linear(2, 2), Queue())
    model[1].items += 5
    saved, extra = ckpt.capture_rng_state(), ckpt.capture_extra_state(model)
    expected = (random.random(), np.random.rand(), torch.rand(2))
    model[1].items.zero_()
    ckpt.restore_rng_state(saved)
    assert ckpt.restore_extra_state(model, extra) == ["1"]
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(2), expected[2])
    assert torch.equal(model[1].items, torch.full((3,), 5.0))


def test_an_incomplete_checkpoint_is_never_latest(tmp_path: Path) -> None:
    from uniclip_plugin.ds import checkpoint as ckpt

    good = tmp_path / ckpt.tag_of(3)
    good.mkdir()
    (good / ckpt.META_FILE).write_text("{}")
    (tmp_path / ckpt.LATEST).write_text(good.name + "\n")
    half = tmp_path / (ckpt.tag_of(6) + ckpt.TMP_SUFFIX)  # what a run killed while saving leaves behind
    half.mkdir()
    (half / "mp_rank_00_model_states.pt").write_bytes(b"truncated")
    assert ckpt.read_latest(tmp_path) == good.name
    assert ckpt.resolve_resume(str(tmp_path), tmp_path) == (tmp_path, good.name)
    with pytest.raises(ckpt.CheckpointError, match="no complete checkpoint"):
        ckpt.resolve_resume(str(tmp_path / "nope"), tmp_path)
    assert ckpt.clean_stale(tmp_path) == [half.name] and not half.exists() and good.exists()
    (tmp_path / ckpt.LATEST).write_text(ckpt.tag_of(9) + "\n")  # a pointer to a directory without its meta file
    assert ckpt.read_latest(tmp_path) is None


def test_skip_watcher_logs_each_skip_and_stops_on_a_streak(caplog: pytest.LogCaptureFixture) -> None:
    from uniclip_plugin.ds.errors import HarnessError
    from uniclip_plugin.ds.step import SkipWatcher

    watch = SkipWatcher(max_consecutive=3)
    for step, applied in enumerate([True, False, False, True, False, False]):
        watch.update(applied, step)
    assert watch.total == 4 and sum("skipped optimiser step" in r.message for r in caplog.records) == 4
    with pytest.raises(HarnessError, match="skipped the last 3 optimiser steps"):
        watch.update(False, 6)


@pytest.mark.parametrize("case", ["missing_config", "fp16_on_cpu"])
def test_misconfiguration_is_one_line(case: str, tmp_path: Path, shards: dict) -> None:
    config = str(tmp_path / "nope.json")
    if case == "fp16_on_cpu":
        cfg = json.loads((REPO / "deepspeed_configs" / "zero2.json").read_text())
        cfg.pop("bf16")
        cfg["fp16"] = {"enabled": True}
        Path(config).write_text(json.dumps(cfg))
    proc = subprocess.run(
        [
            sys.executable,
            TRAIN,
            "--deepspeed_config",
            config,
            "--model",
            "UniCLIP-Tiny-32",
            "--loss",
            "uniclip_mpnce",
            "--train-data",
            shards["pattern"],
            "--batch-size",
            "8",
            "--logs",
            str(tmp_path / "runs"),
        ],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr + proc.stdout
    assert len(lines) == 1 and lines[0].startswith("train.py: error: "), proc.stderr
    assert ("no such file" in lines[0]) if case == "missing_config" else ("fp16 is not supported" in lines[0])
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------------------ multi-process
@pytest.mark.multiproc
def test_world_size_that_does_not_divide_the_batch_is_one_line(tmp_path: Path, shards: dict) -> None:
    args = train_args(shards["pattern"], tmp_path / "runs", "bad", "zero2.json", log_every=4)
    args[args.index("--batch-size") : args.index("--batch-size") + 2] = ["--global-batch-size", "15"]
    rc, out = run(args, timeout=120)
    errors = [ln for ln in out.splitlines() if "train.py: error: " in ln]
    assert rc != 0 and "Traceback" not in out, out[-3000:]
    assert len(errors) == 1 and errors[0].startswith("train.py: error: "), out[-3000:]
    assert "not divisible by the world size 2" in errors[0]


@pytest.fixture(scope="module")
def worker_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    out_dir = tmp_path_factory.mktemp("ds_worker")
    rc, out = run([str(Path(__file__).resolve()), "--out", str(out_dir)], timeout=400)
    assert rc == 0, out[-6000:]
    return out_dir, [torch.load(out_dir / f"worker_rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.multiproc
@pytest.mark.parametrize("loss,model_name", CASES)
def test_one_step_under_zero_1_2_3_equals_single_process(
    loss: str, model_name: str, worker_results: tuple[Path, list[dict]]
) -> None:
    _, ranks = worker_results
    before, after, ref_grads, ref_loss, aug_params = _reference_step(loss, model_name)
    if loss == "uniclip_mpnce":  # the views really are random (else the 1-vs-2 comparison would be trivial)
        assert aug_params[..., 2].std() > 0.05 and aug_params[..., 2].min() < 0.9
    update = max((after[n] - before[n]).abs().max().item() for n in before)
    assert update > 5e-4  # the step moves weights by ~lr, 50× the tolerance below
    report = []
    for stage in STAGES:
        res = ranks[0][f"{loss}/zero{stage}"]
        assert ranks[1][f"{loss}/zero{stage}"]["loss"] == pytest.approx(res["loss"], abs=0)
        assert res["loss"] == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)
        delta = max(
            (res["params"][n] - after[n].float().reshape(res["params"][n].shape)).abs().max().item() for n in after
        )
        grad_err = max(
            ((res["grads"][n].reshape(g.shape) - g).norm() / (g.norm() + 1e-12)).item()
            for n, g in ref_grads.items()
            if g.norm() > 1e-6
        )
        report.append(
            f"ZeRO-{stage}: max|Δθ| {delta:.2e}, worst per-tensor grad rel. err {grad_err:.1e}, loss "
            f"{res['loss']:.6f} vs {ref_loss:.6f}"
        )
        assert delta <= 1e-5 and grad_err <= 1e-4, report[-1]
    print(f"\n{loss}: max update {update:.2e}; " + "; ".join(report))


@pytest.mark.multiproc
def test_export_loads_in_stock_open_clip_and_encodes_like_the_engine(worker_results: tuple[Path, list[dict]]) -> None:
    import open_clip

    import uniclip_plugin
    from uniclip_plugin.ds.export import export_run

    uniclip_plugin.register()
    out_dir, ranks = worker_results
    worst = 0.0
    for loss, model_name in CASES:
        probe_images, probe_texts = _probe(model_name)
        for stage in STAGES:
            run_dir = out_dir / "runs" / f"{loss}-zero{stage}"
            if (loss, stage) == ("uniclip_mpnce", 3):  # the CLI route once (ZeRO-3: partitioned weights)
                proc = subprocess.run(
                    [sys.executable, TRAIN, "--export", str(run_dir), "--out", "model.pt"],
                    cwd=REPO,
                    env=env(),
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                assert proc.returncode == 0, proc.stderr[-3000:]
                path = run_dir / "export" / "model.pt"
                assert path.is_file()
            else:
                path = export_run(run_dir)
                assert path == run_dir / "export" / f"{loss}-zero{stage}.pt"
            model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=str(path))
            model.eval()
            with torch.no_grad():
                img = model.encode_image(probe_images, normalize=True)
                txt = model.encode_text(probe_texts, normalize=True)
            engine_out = ranks[0][f"{loss}/zero{stage}"]
            diff = max(
                (img - engine_out["image_features"]).abs().max().item(),
                (txt - engine_out["text_features"]).abs().max().item(),
            )
            worst = max(worst, diff)
            assert diff <= 1e-5, f"{loss} ZeRO-{stage}: export encodes {diff:.2e} away from the engine"
            assert torch.load(path, weights_only=True)["state_dict"]["logit_scale"].shape == model.logit_scale.shape
    print(f"\nexport vs engine encodings: max |Δ| {worst:.2e} over 6 runs")


@pytest.mark.multiproc
def test_bf16_zero2_fp32_logits_skipped_steps_and_nonfinite_loss_stop(worker_results: tuple[Path, list[dict]]) -> None:
    _, ranks = worker_results
    for res in ranks:
        bf16 = res["bf16"]
        assert set(bf16["outputs"]) == {"torch.bfloat16"} and set(bf16["loss_inputs"]) == {"torch.float32"}
        assert bf16["logits"] and set(bf16["logits"]) == {"torch.float32"}
        assert bf16["losses"][-1] < bf16["losses"][0] and bf16["skipped_before_overflow"] == 0
        assert bf16["overflow_applied"] == [False, False] and bf16["overflow_skipped"] == 2
        assert bf16["overflow_max_change"] == 0.0 and "skipped the last 2 optimiser steps" in bf16["overflow_stop"]
        bad = res["nonfinite"]
        # The NaN sample sits on rank 0, but its features reach rank 1's loss through the gather: both see it.
        assert bad["message"] and "non-finite loss at step 41 (on 2 of 2 ranks)" in bad["message"]
        assert bad["max_change"] == 0.0
    print(f"\nbf16 ZeRO-2 fixed-batch losses: {[round(v, 3) for v in ranks[0]['bf16']['losses']]}")


@pytest.fixture(scope="module")
def bf16_runs(tmp_path_factory: pytest.TempPathFactory, shards: dict) -> dict:
    """The issue's default setting (ZeRO-2 bf16, uniclip_mpnce) through the CLI: an uninterrupted run and, at the same
    time (independent processes, fewer minutes), a run SIGKILLed right after its first mid-epoch checkpoint; then
    that run resumed with ``--resume latest``."""
    from uniclip_plugin.ds import checkpoint as ckpt

    logs = tmp_path_factory.mktemp("ds_runs")
    config = "zero2_bf16.json"
    reference = launch(train_args(shards["pattern"], logs, "ref", config, "--save-every-n-steps", "0", log_every=4))
    killed_dir = logs / "killed"
    victim = launch(train_args(shards["pattern"], logs, "killed", config, "--save-every-n-steps", "3", log_every=4))
    deadline = time.time() + 300
    while time.time() < deadline and victim.poll() is None:
        tag = ckpt.read_latest(killed_dir / "checkpoints") if (killed_dir / "checkpoints").is_dir() else None
        if tag and int(tag[len(ckpt.TAG_PREFIX) :]) >= 3:
            break
        time.sleep(0.02)
    still_running = victim.poll() is None
    try:
        os.killpg(victim.pid, signal.SIGKILL)  # no clean exit: launcher, ranks and dataloader workers die at once
    except ProcessLookupError:  # it already ended (the assertion below reports why)
        pass
    victim_out, _ = victim.communicate()
    assert still_running, f"the run ended before it could be killed:\n{victim_out[-3000:]}"
    try:
        ref_out, _ = reference.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(reference.pid, signal.SIGKILL)
        raise
    assert reference.returncode == 0, ref_out[-4000:]
    tag = ckpt.read_latest(killed_dir / "checkpoints")
    state = ckpt.read_meta(killed_dir / "checkpoints", tag)["train_state"]
    logged_before = _metrics(killed_dir)
    rc, out = run(
        train_args(
            shards["pattern"], logs, "killed", config, "--save-every-n-steps", "3", "--resume", "latest", log_every=4
        )
    )
    assert rc == 0, out[-4000:]
    return {"logs": logs, "state": state, "logged_before": logged_before, "resume_out": out}


@pytest.mark.multiproc
def test_bf16_zero2_cli_run_trains(bf16_runs: dict) -> None:
    run_dir = bf16_runs["logs"] / "ref"
    rows = _metrics(run_dir)
    losses = [m["loss"] for m in rows]
    assert len(losses) == 16 and all(m["skipped_steps"] == 0 for m in rows)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.6 * first, losses
    log = (run_dir / "out.log").read_text()
    assert "Model outputs: image_features bfloat16" in log and "-> loss inputs: image_features float32" in log
    assert "model: UniCLIP-Tiny-32" in (run_dir / "params.txt").read_text().splitlines()
    print(f"\nbf16 ZeRO-2 CLI: loss {first:.3f} (mean of the first 3 steps) -> {last:.3f} (last 3)")


@pytest.mark.multiproc
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(bf16_runs: dict) -> None:
    from uniclip_plugin.ds import checkpoint as ckpt

    logs, state = bf16_runs["logs"], bf16_runs["state"]
    assert 0 < state["step_in_epoch"] < state["steps_per_epoch"], state  # killed mid-epoch
    assert "Resuming from" in bf16_runs["resume_out"]
    reference = {m["step"]: m["loss"] for m in _metrics(logs / "ref")}
    sessions = {m["session"] for m in bf16_runs["logged_before"]}
    resumed = [m for m in _metrics(logs / "killed") if m["session"] not in sessions]
    assert resumed[0]["step"] == state["step"] + 1 and resumed[-1]["step"] == 16
    for m in resumed:
        assert m["loss"] == pytest.approx(reference[m["step"]], rel=1e-6, abs=1e-7), (m, reference[m["step"]])
    exact = sum(m["loss"] == reference[m["step"]] for m in resumed)
    final_ref = ckpt.consolidated_fp32_state_dict(logs / "ref" / "checkpoints", ckpt.tag_of(16))
    final_resumed = ckpt.consolidated_fp32_state_dict(logs / "killed" / "checkpoints", ckpt.tag_of(16))
    delta = max(
        (final_ref[k] - final_resumed[k]).abs().max().item() for k in final_ref if torch.is_tensor(final_ref[k])
    )
    assert delta <= 1e-6
    print(
        f"\nkilled after checkpoint step {state['step']} (batch {state['step_in_epoch']}/{state['steps_per_epoch']}"
        f", {len(bf16_runs['logged_before'])} steps logged before the kill); resumed steps {resumed[0]['step']}..16:"
        f" next-step loss {resumed[0]['loss']:.7f} vs {reference[resumed[0]['step']]:.7f}; {exact}/{len(resumed)} "
        f"losses bit-identical; final fp32 weights max|Δθ| {delta:.1e}"
    )


if __name__ == "__main__":  # worker mode, started by the deepspeed launcher in worker_results
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--local_rank", type=int, default=0)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    _worker(Path(parser.parse_args().out))


@pytest.mark.multiproc
def test_cpu_run_sets_the_allocator(bf16_runs: dict) -> None:
    """harness/train.py on CPU sets glibc to keep freed memory (uniclip_plugin/cpu_malloc.py), as open_clip train."""
    out = bf16_runs["resume_out"]
    from uniclip_plugin.cpu_malloc import allocator_env

    expected = "allocator left as the environment" if allocator_env() else "malloc keeps freed memory"
    assert "train.py: " in out and expected in out, out[-3000:]
