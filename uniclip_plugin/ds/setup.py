"""Everything before the first step: the checks that need no process group, the run directory, the resume decision
and the logs, gathered in a :class:`RunPlan` that is identical on every rank.

Rank 0 decides whatever could fail (the run directory, ``--resume``) and broadcasts the verdict, so a problem stops
every rank with the same one-line error instead of leaving the others waiting in a collective (D6, docs/UPSTREAM.md).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from uniclip_plugin import integration, registry
from uniclip_plugin.ds import checkpoint as ckpt
from uniclip_plugin.ds import distributed
from uniclip_plugin.ds.build import check_model_and_loss
from uniclip_plugin.ds.config import load_config, precision_of, prepare_config, zero_stage_of
from uniclip_plugin.ds.data import count_shards
from uniclip_plugin.ds.errors import HarnessError
from uniclip_plugin.ds.metrics import fill_monitor_paths
from uniclip_plugin.errors import PluginError
from uniclip_plugin.io import write_json_atomic, write_text_atomic

DEFAULT_BATCH_SIZE = 64  # open_clip_train's --batch-size default (per rank)


@dataclass
class RunPlan:
    """What the set-up decided; the same on every rank.

    Attributes:
        rank: global rank of this process.
        world_size: number of ranks.
        cfg: the complete DeepSpeed config (``"auto"`` fields filled).
        run_dir: ``<logs>/<name>``.
        resume_from: (checkpoint dir, tag) to resume from, or None to start at step 0.
    """

    rank: int
    world_size: int
    cfg: dict
    run_dir: Path
    resume_from: Optional[tuple[Path, str]]

    @property
    def ckpt_dir(self) -> Path:
        """``<run_dir>/checkpoints``."""
        return self.run_dir / "checkpoints"

    @property
    def micro_batch(self) -> int:
        """The per-rank batch."""
        return self.cfg["train_micro_batch_size_per_gpu"]


# ---------------------------------------------------------------------------------------------------------- preflight
def _fill_optimiser_defaults(args: argparse.Namespace) -> None:
    from open_clip_train.params import get_default_params

    defaults = get_default_params(args.model)
    args.lr = defaults["lr"] if args.lr is None else args.lr
    args.beta1 = defaults["beta1"] if args.beta1 is None else args.beta1
    args.beta2 = defaults["beta2"] if args.beta2 is None else args.beta2
    args.eps = defaults["eps"] if args.eps is None else args.eps


def preflight(args: argparse.Namespace, world_size: int) -> dict:
    """Every check that needs no process group, so misconfiguration fails fast as one line on rank 0.

    Fills ``args``' open_clip_train defaults (``--lr``, ``--beta1/2``, ``--eps``, ``--batch-size``).

    Args:
        args: the parsed arguments.
        world_size: the launcher's world size.

    Returns:
        The complete DeepSpeed config.

    Raises:
        PluginError: a one-line description of the problem and its fix.
    """
    if not args.deepspeed_config:
        raise HarnessError("--deepspeed_config is required (e.g. deepspeed_configs/zero2.json)")
    raw = load_config(args.deepspeed_config)
    if not args.train_data:
        raise HarnessError("--train-data is required (webdataset shards, e.g. 'shards/{000000..000099}.tar')")
    from deepspeed.accelerator import get_accelerator

    on_cpu = get_accelerator().device_name() == "cpu"
    check_model_and_loss(args)
    _fill_optimiser_defaults(args)
    batch_auto = all(raw.get(k, "auto") == "auto" for k in ("train_batch_size", "train_micro_batch_size_per_gpu"))
    if args.batch_size is None and args.global_batch_size is None and batch_auto:
        args.batch_size = DEFAULT_BATCH_SIZE
    cfg = prepare_config(
        raw,
        world_size=world_size,
        batch_size=args.batch_size,
        global_batch_size=args.global_batch_size,
        lr=args.lr,
        betas=(args.beta1, args.beta2),
        eps=args.eps,
        weight_decay=args.wd,
        grad_clip_norm=args.grad_clip_norm,
        on_cpu=on_cpu,
    )
    integration.check_train_data(args.train_data)
    if not args.dataset_resampled and count_shards(args.train_data) < max(1, args.workers) * world_size:
        raise HarnessError(
            f"{count_shards(args.train_data)} shards cannot feed {world_size} ranks × "
            f"{max(1, args.workers)} workers; lower --workers or use --dataset-resampled"
        )
    if args.epochs < 1:
        raise HarnessError("--epochs must be ≥ 1")
    _check_val_and_timeout(args)
    return cfg


def _check_val_and_timeout(args: argparse.Namespace) -> None:
    if args.val_data:
        try:
            integration.check_train_data(args.val_data)
        except PluginError as err:  # the check names --train-data
            raise HarnessError(str(err).replace("--train-data", "--val-data", 1)) from None
    if args.val_frequency < 0 or (args.val_num_samples is not None and args.val_num_samples < 1):
        raise HarnessError("--val-frequency must be ≥ 0 and --val-num-samples ≥ 1")
    if args.dist_timeout <= 0:
        raise HarnessError("--dist-timeout must be a positive number of seconds")


# ------------------------------------------------------------------------------------------------ run dir and resume
def _claim_run_dir(run_dir: Path, resume: Optional[str], rank: int) -> None:
    """Create the run directory (rank 0) unless it exists without ``--resume``; remove half-written checkpoints."""
    verdict = None
    if rank == 0:
        if run_dir.exists() and resume is None:
            verdict = f"run directory {run_dir} already exists; pass --resume latest to continue it, or a new --name"
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            ckpt_dir = run_dir / "checkpoints"
            removed = ckpt.clean_stale(ckpt_dir) if ckpt_dir.is_dir() else []
            if removed:
                print(f"removed incomplete checkpoints {removed}", flush=True)
    verdict = distributed.broadcast(verdict)
    if verdict:
        raise distributed.agreed(HarnessError(verdict))


def _resume_source(resume: Optional[str], run_dir: Path, rank: int) -> tuple[Optional[tuple[Path, str]], list[str]]:
    """``--resume`` resolved on rank 0 (one rank decides, and fails, for all) and broadcast, with the notes on
    damaged checkpoints it set aside (logged once the log exists)."""
    if resume is None:
        return None, []
    resume_from, problem, notes = None, None, []
    if rank == 0:
        try:
            resume_from = ckpt.resolve_resume(resume, run_dir, notes)
        except ckpt.CheckpointError as err:
            problem = str(err)
    resume_from, problem, notes = distributed.broadcast((resume_from, problem, notes))
    if problem:
        raise distributed.agreed(ckpt.CheckpointError(problem))
    return resume_from, notes


def plan_run(args: argparse.Namespace) -> RunPlan:
    """Check the arguments, join the process group, claim the run directory, decide the resume and start the logs.

    Args:
        args: the parsed arguments (``--name`` is filled in when absent; open_clip_train defaults are filled).

    Returns:
        The :class:`RunPlan`.

    Raises:
        PluginError: one line, the same on every rank.
    """
    rank, world_size, local_rank = distributed.dist_env(args)
    cfg = preflight(args, world_size)
    rank, world_size = distributed.start(args.no_cpu_shm_comm, rank, local_rank, args.dist_timeout)
    if args.name is None:
        args.name = distributed.broadcast(f"{time.strftime('%Y_%m_%d-%H_%M_%S')}-{args.model}-{args.loss}")
    run_dir = Path(args.logs) / args.name
    _claim_run_dir(run_dir, args.resume, rank)
    resume_from, notes = _resume_source(args.resume, run_dir, rank)
    setup_logging(run_dir / "out.log" if rank == 0 else None, rank)
    for note in notes:
        logging.warning(note)
    monitors = fill_monitor_paths(cfg, run_dir)
    if monitors:
        logging.info(f"DeepSpeed monitor: {', '.join(monitors)} (train_loss, lr and validation metrics)")
    if rank == 0:
        write_params(run_dir, args)
        write_json_atomic(run_dir / "ds_config.json", cfg, indent=2)
    plan = RunPlan(rank=rank, world_size=world_size, cfg=cfg, run_dir=run_dir, resume_from=resume_from)
    _log_plan(plan, args.loss)
    return plan


def _log_plan(plan: RunPlan, loss: str) -> None:
    from deepspeed.accelerator import get_accelerator

    cfg = plan.cfg
    logging.info(
        f"{plan.world_size} ranks on {get_accelerator().device_name()}, {precision_of(cfg)} "
        f"ZeRO-{zero_stage_of(cfg)}, batch {plan.micro_batch}/rank ({cfg['train_batch_size']} global), "
        f"gradient_clipping {cfg['gradient_clipping']}, --loss {loss}, run dir {plan.run_dir}"
    )


# --------------------------------------------------------------------------------------------------- run files, logs
def write_params(run_dir: Path, args: argparse.Namespace) -> None:
    """``params.txt`` in open_clip_train's ``name: value`` format (the bench reads its ``model:`` line)."""
    lines = [f"{name}: {getattr(args, name)}" for name in sorted(vars(args))]
    write_text_atomic(run_dir / "params.txt", "\n".join(lines) + "\n")


def model_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The plugin model-config options the method flags set, keyed by marker (``{"uniclip_cfg": {"views": 1}}``; empty
    without such flags): the run meta's ``model_overrides``, which the export rebuilds the model with."""
    markers = set(registry.markers())
    return {k: v for k, v in integration.prepare(args).model_kwargs.items() if k in markers}


def run_meta(args: argparse.Namespace, cfg: dict, layout: list[list[str]], world_size: int) -> dict:
    """Run facts saved with every checkpoint: checked on resume (D5) and read by ``--export``.

    Args:
        args: the trainer's arguments.
        cfg: the complete DeepSpeed config.
        layout: the parameter names of each optimiser group (``build.param_groups``).
        world_size: number of ranks.

    Returns:
        The meta dict (``model_overrides`` holds the plugin model-config overrides the export rebuilds with).
    """
    return {
        "world_size": world_size,
        "zero_stage": zero_stage_of(cfg),
        "precision": precision_of(cfg),
        "model": args.model,
        "loss": args.loss,
        "param_groups": layout,
        "seed": args.seed,
        "global_batch_size": cfg["train_batch_size"],
        "model_overrides": model_overrides(args),
        "name": args.name,
        "workers": args.workers,
        "dataset_resampled": args.dataset_resampled,
    }


def setup_logging(log_file: Optional[Path], rank: int) -> None:
    """Rank 0 logs INFO to stdout and ``out.log``; other ranks log warnings only (with their rank)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    fmt = logging.Formatter(f"%(asctime)s | rank {rank} | %(levelname)s | %(message)s", "%Y-%m-%d,%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file))
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    try:
        from deepspeed.utils import logger as ds_logger

        ds_logger.setLevel(logging.WARNING)  # DeepSpeed's per-step INFO lines drown the progress log
    except ImportError:
        pass
