"""Command line of the DeepSpeed trainer and export: the parser, the ``--export`` dispatch and :func:`main`
(called by the thin script ``harness/train.py``, so ``deepspeed harness/train.py ...`` launches it)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn, Optional

from uniclip_plugin import integration
from uniclip_plugin.ds import distributed
from uniclip_plugin.ds.distributed import env_rank
from uniclip_plugin.ds.errors import PROG
from uniclip_plugin.ds.export import export_run
from uniclip_plugin.ds.setup import DEFAULT_BATCH_SIZE
from uniclip_plugin.ds.trainer import train
from uniclip_plugin.errors import PluginError


def _print_error(message: str) -> None:
    if env_rank() == 0:  # one line for the whole job, not one per rank
        print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports errors as a single ``train.py: error: ...`` line (rank 0 only) and exits 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``message`` as one line (rank 0) and exit with 2."""
        _print_error(message)
        sys.exit(2)


def _add_deepspeed_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("DeepSpeed")
    g.add_argument(
        "--deepspeed_config",
        "--deepspeed-config",
        dest="deepspeed_config",
        default=None,
        help="DeepSpeed JSON config (deepspeed_configs/*.json)",
    )
    g.add_argument("--deepspeed", action="store_true", help=argparse.SUPPRESS)  # accepted for DeepSpeed habits
    g.add_argument(
        "--local_rank",
        "--local-rank",
        dest="local_rank",
        type=int,
        default=int(os.environ.get("LOCAL_RANK", "0")),
        help="set by the deepspeed launcher",
    )
    g.add_argument(
        "--no-cpu-shm-comm",
        action="store_true",
        help="CPU only: skip DeepSpeed's shared-memory allreduce op (its JIT build takes ~44 s cold) and "
        "use plain gloo collectives",
    )
    g.add_argument(
        "--max-skipped-steps",
        type=int,
        default=10,
        help="stop when DeepSpeed skipped this many optimiser steps in a row (bf16 overflow, #8415)",
    )
    g.add_argument(
        "--dist-timeout",
        type=float,
        default=600.0,
        help="seconds a collective may wait for the other ranks before this rank stops with an error "
        "(a dead or hung peer); DeepSpeed's default is 600",
    )


def _add_model_and_data_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data (open_clip_train names)")
    g.add_argument("--model", default=None, help="open_clip or plugin model config, e.g. UniCLIP-ViT-B-32")
    g.add_argument("--train-data", default=None, help="webdataset shards, e.g. 'shards/{000000..000999}.tar'")
    g.add_argument("--train-num-samples", type=int, default=None, help="samples per epoch (else sizes.json)")
    g.add_argument("--train-data-upsampling-factors", default=None)
    g.add_argument("--dataset-resampled", action="store_true", help="sample shards with replacement")
    g.add_argument("--workers", type=int, default=1, help="dataloader workers per rank")
    g.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"batch per rank (open_clip_train's meaning; {DEFAULT_BATCH_SIZE} when neither the config nor "
        f"--global-batch-size sets one)",
    )
    g.add_argument("--global-batch-size", type=int, default=None, help="batch per step over all ranks")
    g.add_argument(
        "--pretrained",
        default=None,
        help="initial weights: a checkpoint file or a pretrained tag, passed to model creation",
    )
    g.add_argument(
        "--grad-checkpointing",
        action="store_true",
        help="recompute activations in backward (open_clip's model.set_grad_checkpointing())",
    )
    g.add_argument("--val-data", default=None, help="webdataset shards evaluated during training (retrieval R@k)")
    g.add_argument("--val-num-samples", type=int, default=None, help="evaluate at most this many validation samples")
    g.add_argument("--val-frequency", type=int, default=1, help="evaluate every N epochs (and after the last)")


def _add_optimisation_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("optimisation (open_clip_train names and defaults)")
    g.add_argument("--epochs", type=int, default=32)
    g.add_argument("--lr", type=float, default=None, help="default: open_clip_train's for the model")
    g.add_argument("--beta1", type=float, default=None)
    g.add_argument("--beta2", type=float, default=None)
    g.add_argument("--eps", type=float, default=None)
    g.add_argument("--wd", type=float, default=0.2)
    g.add_argument("--warmup", type=int, default=10000)
    g.add_argument("--lr-scheduler", default="cosine", choices=["cosine", "const"])
    g.add_argument("--grad-clip-norm", type=float, default=None, help="overrides the config's gradient_clipping")
    g.add_argument("--seed", type=int, default=0)


def _add_run_and_export_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("logs and checkpoints")
    g.add_argument("--logs", default="./logs/", help="root of run directories")
    g.add_argument("--name", default=None, help="run name (default: date-model-loss)")
    g.add_argument(
        "--resume",
        default=None,
        help="'latest' (this run; starts fresh when it has no checkpoint), a run dir, or a checkpoint dir",
    )
    g.add_argument("--log-every-n-steps", type=int, default=100)
    g.add_argument("--save-every-n-steps", type=int, default=1000, help="step checkpoints (0: epoch ends only)")
    g.add_argument("--keep-checkpoints", type=int, default=2, help="complete checkpoints kept (≤0: all)")
    g = p.add_argument_group("export (no training)")
    g.add_argument("--export", default=None, metavar="RUN_DIR", help="write the consolidated fp32 weights of a run")
    g.add_argument("--out", default=None, help="export file; a bare file name goes to RUN_DIR/export/")
    g.add_argument("--tag", default=None, help="checkpoint to export (default: LATEST)")


def build_parser() -> argparse.ArgumentParser:
    """The trainer's argument parser: open_clip_train's names for shared flags, plus the plugin flags of
    ``open_clip train`` (``--loss``, ``--views``, ...).

    Returns:
        The parser (errors are one ``train.py: error:`` line and exit code 2).
    """
    p = OneLineParser(
        prog=PROG,
        allow_abbrev=False,
        description="DeepSpeed trainer for open_clip / uniclip-plugin models (docs/DEEPSPEED.md).",
    )
    integration.add_method_arguments(p)
    _add_deepspeed_arguments(p)
    _add_model_and_data_arguments(p)
    _add_optimisation_arguments(p)
    _add_run_and_export_arguments(p)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    """Train, or export a run with ``--export``.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit code. User errors print one ``train.py: error:`` line (rank 0) and return 2.
    """
    import uniclip_plugin

    uniclip_plugin.register()  # plugin models, losses and the upstream fixes, before any flag is read
    args = build_parser().parse_args(argv)
    try:
        if args.export:
            path = export_run(Path(args.export), args.out, args.tag)
            print(
                f"wrote {path} (loads with open_clip.create_model_and_transforms(..., pretrained=...) after "
                f"`import uniclip_plugin`)"
            )
            return 0
        return train(args)
    except PluginError as err:  # HarnessError, ConfigError, CheckpointError and the plugin's own
        _print_error(str(err))
        if getattr(err, "every_rank", False):
            distributed.leave_together()
        return 2
