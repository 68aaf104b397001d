"""DeepSpeed (ZeRO-1/2/3, fp32 or bf16) trainer for open_clip and plugin models, and export to a plain checkpoint.

    deepspeed --num_gpus 8 harness/train.py --deepspeed_config deepspeed_configs/zero2_bf16.json \\
        --model UniCLIP-ViT-B-32 --loss uniclip_mpnce --train-data 'shards/{000000..000999}.tar' \\
        --train-num-samples N --batch-size 256 --epochs 30 --lr 5e-4 --warmup 2000 --logs runs/ --name uniclip-b32
    deepspeed --hostfile hosts harness/train.py ...                          # several nodes
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 harness/train.py ... --no-cpu-shm-comm   # CPU ranks (gloo)
    python harness/train.py --export runs/uniclip-b32 --out uniclip-b32.pt  # -> runs/uniclip-b32/export/

Same models, ``--loss`` registry, webdataset pipeline (``open_clip_train.data.get_wds_dataset``) and LR schedule
(``open_clip_train.scheduler``) as ``open_clip train``; the loss is always built with ``local_loss`` +
``gather_with_grad`` (the exact global-batch gradient, open_clip #616/#894). DeepSpeed pitfalls (ECOSYSTEM.md §4):

* D1 0-dim parameters (stock CLIP's ``logit_scale``) are reshaped to ``[1]`` before ``deepspeed.initialize``; the
  export reshapes them back.
* D2 ``gradient_clipping`` must be explicit in the config (``harness/ds_config.py``).
* D3 scale clamps happen inside forward (plugin models) and, for every model, on the ``logit_scale`` output before the
  loss (``exp`` range [1, 100] = open_clip_train's post-step clamp of the log-scale to [0, ln 100]).
* D4 images are cast to the engine dtype; every floating model output is cast to fp32 before the loss (fp32 logits).
* D5 the parameter-group layout is saved and compared on resume; D6 saves and the per-step loss/finite all-reduce run
  on every rank.
* One forward per step (DeepSpeed #5321); bf16 steps skipped by DeepSpeed (#8415) are logged, and training stops when
  ``--max-skipped-steps`` steps in a row were skipped; a non-finite loss stops before ``backward``/``step``.

Resume is exact mid-epoch: checkpoints carry the data position and every rank's RNG states; the epoch's data
pipeline is rebuilt with the same seeds and fast-forwarded (the skipped batches are decoded, not trained on).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional


import torch
from torch import nn

from uniclip_plugin.ds import checkpoint as ckpt
from uniclip_plugin.ds.config import ConfigError, load_config, precision_of, prepare_config, zero_stage_of

PROG = "train.py"
DEFAULT_BATCH_SIZE = 64  # open_clip_train's --batch-size default (per rank)
LN_100 = math.log(100.0)


class HarnessError(Exception):
    """A problem the user can fix; printed as one ``train.py: error:`` line."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports errors as a single ``train.py: error: ...`` line (rank 0 only) and exits 2."""

    def error(self, message: str) -> NoReturn:
        _print_error(message)
        sys.exit(2)


def _env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _print_error(message: str) -> None:
    if _env_rank() == 0:  # one line for the whole job, not one per rank
        print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------------------- the CLI
def build_parser() -> argparse.ArgumentParser:
    """The harness's argument parser: open_clip_train's names for shared flags, plus the plugin flags of
    ``open_clip train`` (``--loss``, ``--views``, ...)."""
    from uniclip_plugin.cli import _plugin_parser
    p = OneLineParser(prog=PROG, parents=[_plugin_parser()], allow_abbrev=False,
                      description="DeepSpeed trainer for open_clip / uniclip-plugin models (docs/DEEPSPEED.md).")
    g = p.add_argument_group("DeepSpeed")
    g.add_argument("--deepspeed_config", "--deepspeed-config", dest="deepspeed_config", default=None,
                   help="DeepSpeed JSON config (deepspeed_configs/*.json)")
    g.add_argument("--deepspeed", action="store_true", help=argparse.SUPPRESS)  # accepted for DeepSpeed habits
    g.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int,
                   default=int(os.environ.get("LOCAL_RANK", "0")), help="set by the deepspeed launcher")
    g.add_argument("--no-cpu-shm-comm", action="store_true",
                   help="CPU only: skip DeepSpeed's shared-memory allreduce op (its JIT build takes ~44 s cold) and "
                        "use plain gloo collectives")
    g.add_argument("--max-skipped-steps", type=int, default=10,
                   help="stop when DeepSpeed skipped this many optimiser steps in a row (bf16 overflow, #8415)")
    g = p.add_argument_group("model and data (open_clip_train names)")
    g.add_argument("--model", default=None, help="open_clip or plugin model config, e.g. UniCLIP-ViT-B-32")
    g.add_argument("--train-data", default=None, help="webdataset shards, e.g. 'shards/{000000..000999}.tar'")
    g.add_argument("--train-num-samples", type=int, default=None, help="samples per epoch (else sizes.json)")
    g.add_argument("--train-data-upsampling-factors", default=None)
    g.add_argument("--dataset-resampled", action="store_true", help="sample shards with replacement")
    g.add_argument("--workers", type=int, default=1, help="dataloader workers per rank")
    g.add_argument("--batch-size", type=int, default=None,
                   help=f"batch per rank (open_clip_train's meaning; {DEFAULT_BATCH_SIZE} when neither the config nor "
                        f"--global-batch-size sets one)")
    g.add_argument("--global-batch-size", type=int, default=None, help="batch per step over all ranks")
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
    g = p.add_argument_group("logs and checkpoints")
    g.add_argument("--logs", default="./logs/", help="root of run directories")
    g.add_argument("--name", default=None, help="run name (default: date-model-loss)")
    g.add_argument("--resume", default=None, help="'latest' (this run; starts fresh when it has no checkpoint), a "
                                                  "run dir, or a checkpoint dir")
    g.add_argument("--log-every-n-steps", type=int, default=100)
    g.add_argument("--save-every-n-steps", type=int, default=1000, help="step checkpoints (0: epoch ends only)")
    g.add_argument("--keep-checkpoints", type=int, default=2, help="complete checkpoints kept (≤0: all)")
    g = p.add_argument_group("export (no training)")
    g.add_argument("--export", default=None, metavar="RUN_DIR", help="write the consolidated fp32 weights of a run")
    g.add_argument("--out", default=None, help="export file; a bare file name goes to RUN_DIR/export/")
    g.add_argument("--tag", default=None, help="checkpoint to export (default: LATEST)")
    return p


# ------------------------------------------------------------------------------------------------------ building parts
def loss_namespace(args: argparse.Namespace, rank: int, world_size: int) -> argparse.Namespace:
    """open_clip_train-style args for ``registry.get_loss(name).build``: always local loss + gather with grad."""
    ns = argparse.Namespace(**vars(args))
    defaults = {"distill": False, "horovod": False, "siglip": False, "loss_dist_impl": None,
                "coca_caption_loss_weight": 2.0, "coca_contrastive_loss_weight": 1.0}
    for key, value in defaults.items():
        if not hasattr(ns, key):
            setattr(ns, key, value)
    ns.local_loss, ns.gather_with_grad, ns.rank, ns.world_size = True, True, rank, world_size
    return ns


def check_model_and_loss(args: argparse.Namespace) -> Any:
    """Registry lookup plus the same model/loss compatibility check as ``open_clip train``; returns the LossSpec."""
    import open_clip.factory as ocf

    from uniclip_plugin import registry
    from uniclip_plugin.cli import _check_model_for_loss
    if not args.model:
        raise HarnessError("--model is required (e.g. UniCLIP-Tiny-32)")
    if ocf.get_model_config(args.model) is None and not args.model.startswith(("local-dir:", "hf-hub:")):
        raise HarnessError(f"unknown --model {args.model!r}; see `open_clip list` or open_clip.list_models()")
    spec = registry.get_loss(args.loss)
    _check_model_for_loss(spec, args.model)
    return spec


def reshape_zero_dim_parameters(model: nn.Module) -> list[str]:
    """Replace 0-dim parameters by ``[1]`` ones: ``deepspeed.initialize`` views every parameter as bytes and fails on
    0-dim tensors (D1, stock CLIP's ``logit_scale``). Forward code broadcasts a ``[1]`` scale the same way."""
    names = []
    for name, param in list(model.named_parameters()):
        if param.dim() == 0:
            owner_name, _, attr = name.rpartition(".")
            owner = model.get_submodule(owner_name) if owner_name else model
            setattr(owner, attr, nn.Parameter(param.detach().reshape(1).clone(), requires_grad=param.requires_grad))
            names.append(name)
    return names


def build_model(args: argparse.Namespace, model_kwargs: Optional[dict] = None) -> tuple[nn.Module, Any, Any]:
    """Create the model and its transforms as ``open_clip train`` does (plugin overrides, whole-image training
    transform for models that sample views in forward), identically on every rank (seeded with ``--seed``).

    Returns:
        ``(model, preprocess_train, preprocess_val)``; the model is fp32 on CPU with no 0-dim parameters.
    """
    import open_clip

    from uniclip_plugin import factory
    from uniclip_plugin.cli import _model_overrides, _whole_image_train_transform
    factory.set_model_overrides(_model_overrides(args))
    seed_everything(args.seed)  # the same initial weights on every rank (DeepSpeed also broadcasts rank 0's)
    create = _whole_image_train_transform(open_clip.create_model_and_transforms)
    model, preprocess_train, preprocess_val = create(args.model, precision="fp32", device="cpu", output_dict=True,
                                                     **(model_kwargs or {}))
    reshaped = reshape_zero_dim_parameters(model)
    if reshaped:
        logging.info(f"Reshaped 0-dim parameters to [1] for DeepSpeed (D1): {', '.join(reshaped)}")
    return model, preprocess_train, preprocess_val


def model_kwargs_for_loss(loss_ns: argparse.Namespace) -> dict:
    """Model kwargs open_clip_train derives from its loss flags (``main.py``: SigLIP's initial scale and bias)."""
    import numpy as np
    return {"init_logit_scale": np.log(10), "init_logit_bias": -10} if getattr(loss_ns, "siglip", False) else {}


def no_decay(name: str, param: torch.Tensor) -> bool:
    """open_clip_train's rule (``main.py:335``): no weight decay for gains, biases, norms and the logit scale."""
    return param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name


def param_groups(model: nn.Module, weight_decay: float) -> tuple[list[dict], list[list[str]]]:
    """open_clip_train's two AdamW groups (no-decay first) and their parameter names (the layout saved for D5)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    layout = [[n for n, p in named if no_decay(n, p)], [n for n, p in named if not no_decay(n, p)]]
    params = dict(named)
    groups = [{"params": [params[n] for n in names], "weight_decay": wd}
              for names, wd in zip(layout, (0.0, weight_decay)) if names]
    return groups, [names for names in layout if names]


def seed_everything(seed: int) -> None:
    """``open_clip_train.main.random_seed``: python, numpy and torch."""
    import random

    import numpy as np
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def engine_dtype(engine: Any) -> torch.dtype:
    """The dtype DeepSpeed keeps the module in (inputs must match it, D4)."""
    return torch.bfloat16 if engine.bfloat16_enabled() else torch.float32


def loss_inputs(model_out: dict) -> dict:
    """Model outputs as the loss sees them: floating tensors in fp32 (fp32 logits under bf16, D4) and the image–text
    scale clamped to open_clip's range [1, 100] (D3: an in-place clamp of the parameter would be undone by ZeRO)."""
    out = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in model_out.items()}
    if torch.is_tensor(out.get("logit_scale")):
        out["logit_scale"] = out["logit_scale"].clamp(1.0, 100.0)
    return out


class NonFiniteLoss(HarnessError):
    """A non-finite loss on some rank: every rank stops before ``backward``/``step``."""


def train_step(engine: Any, loss_fn: nn.Module, images: torch.Tensor, texts: torch.Tensor, step: int,
               on_outputs: Optional[Callable[[dict, dict], None]] = None) -> float:
    """One optimiser step: ONE forward (ZeRO-3, #5321), loss in fp32, global finite check, backward, step.

    Args:
        engine: the DeepSpeed engine (train mode).
        loss_fn: a loss returning a dict; keys ending in ``_loss`` are summed (``TrainLossAdapter`` contract).
        images, texts: this rank's batch.
        step: index of this step (for messages).
        on_outputs: optional ``fn(model_out, loss_inputs)`` called after the forward (dtype logging, tests).

    Returns:
        The loss averaged over ranks (each rank's loss covers its own rows, so this is the global-batch loss).

    Raises:
        NonFiniteLoss: on every rank, before ``engine.backward``, when any rank's loss is not finite.
    """
    import torch.distributed as dist
    images = images.to(engine.device, dtype=engine_dtype(engine), non_blocking=True)
    texts = texts.to(engine.device, non_blocking=True)
    raw = engine(images, texts)
    out = loss_inputs(raw)
    if on_outputs is not None:
        on_outputs(raw, out)
    losses = loss_fn(**out)
    total = sum(v for k, v in losses.items() if k.endswith("_loss"))
    finite = torch.isfinite(total.detach())
    # One all-reduce per step gives both the logged global loss and a verdict every rank shares (a rank stopping
    # alone would leave the others blocked in the next collective).
    stats = torch.stack([torch.where(finite, total.detach().float(), torch.zeros((), device=total.device)),
                         (~finite).float()])
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(stats)
    world = dist.get_world_size() if dist.is_initialized() else 1
    if stats[1].item() > 0:
        raise NonFiniteLoss(f"non-finite loss at step {step} (on {int(stats[1].item())} of {world} ranks); stopped "
                            f"before the optimiser step, so the last checkpoint stays good; lower --lr or check the "
                            f"data")
    engine.backward(total)
    engine.step()
    return stats[0].item() / world


class SkipWatcher:
    """Logs every optimiser step DeepSpeed skipped (bf16 overflow is silent in 0.19, #8415) and stops a run whose
    steps keep being skipped."""

    def __init__(self, max_consecutive: int, total: int = 0):
        self.max_consecutive = max_consecutive
        self.total = total
        self.consecutive = 0

    def update(self, applied: bool, step: int) -> None:
        """Record whether ``step`` changed the weights; raise ``HarnessError`` after too many skips in a row."""
        if applied:
            self.consecutive = 0
            return
        self.total += 1
        self.consecutive += 1
        logging.warning(f"DeepSpeed skipped optimiser step {step} (gradient overflow); {self.consecutive} in a row, "
                        f"{self.total} in total")
        if self.max_consecutive > 0 and self.consecutive >= self.max_consecutive:
            raise HarnessError(f"DeepSpeed skipped the last {self.consecutive} optimiser steps (up to step {step}: "
                               f"gradient overflow, DeepSpeed #8415); the weights stopped changing. Lower --lr, set "
                               f"--grad-clip-norm, or train in fp32")


def wds_namespace(args: argparse.Namespace, batch_size: int, world_size: int) -> argparse.Namespace:
    """The fields ``open_clip_train.data.get_wds_dataset`` reads."""
    return argparse.Namespace(train_data=args.train_data, train_num_samples=args.train_num_samples,
                              dataset_resampled=args.dataset_resampled,
                              train_data_upsampling_factors=args.train_data_upsampling_factors, seed=args.seed,
                              batch_size=batch_size, workers=args.workers, world_size=world_size)


def epoch_loader(args: argparse.Namespace, preprocess: Any, tokenizer: Any, epoch: int, rank: int,
                 batch_size: int, world_size: int) -> Any:
    """open_clip_train's webdataset loader for one epoch, with the dataloader's worker seeds fixed by
    (seed, rank, epoch) so that a resumed run can rebuild the identical stream and fast-forward it."""
    from open_clip_train.data import get_wds_dataset
    from torch.utils.data import DataLoader
    info = get_wds_dataset(wds_namespace(args, batch_size, world_size), preprocess, True, epoch=epoch,
                           tokenizer=tokenizer)
    loader = info.dataloader
    stages = [loader] + list(getattr(loader, "pipeline", []))
    torch_loader = next(s for s in stages if isinstance(s, DataLoader))
    # Without a generator the loader draws its worker base seed from the global torch RNG, which differs after a resume.
    torch_loader.generator = torch.Generator().manual_seed((args.seed * 1_000_003 + rank * 10_007 + epoch) % 2**62)
    return loader


def count_shards(pattern: str) -> int:
    """Shards named by a brace pattern (``::``-separated sources summed)."""
    import braceexpand
    return sum(len(list(braceexpand.braceexpand(p))) for p in pattern.split("::"))


# --------------------------------------------------------------------------------------------------------- run set-up
def dist_env(args: argparse.Namespace) -> tuple[int, int, int]:
    """(rank, world size, local rank) from the launcher's environment; a bare ``python train.py`` is one rank."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), args.local_rank


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(no_cpu_shm_comm: bool) -> None:
    """``deepspeed.init_distributed`` (nccl on GPUs, gloo or ccl on CPU); a bare ``python`` run gets a 1-rank group."""
    import deepspeed
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())))
    if no_cpu_shm_comm:
        import deepspeed.ops
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # private switch, ECOSYSTEM.md §4
    deepspeed.init_distributed()


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


def _broadcast(obj: Any) -> Any:
    import torch.distributed as dist
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _barrier() -> None:
    import torch.distributed as dist
    if dist.is_initialized():
        dist.barrier()


class Metrics:
    """Rank 0's per-step log: ``metrics.jsonl`` (one JSON line per step) and TensorBoard when it is installed."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.session = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
        self.file = None
        if enabled:
            path = run_dir / "metrics.jsonl"
            self.file = open(path, "a")
            if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
                self.file.write("\n")  # a line cut by a killed run stays on its own line
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                logging.info("tensorboard is not installed: skipping TensorBoard logging (pip install tensorboard)")

    def log(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, "session": self.session, **values}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.tb.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def write_params(run_dir: Path, args: argparse.Namespace) -> None:
    """``params.txt`` in open_clip_train's ``name: value`` format (the bench reads its ``model:`` line)."""
    lines = [f"{name}: {getattr(args, name)}" for name in sorted(vars(args))]
    tmp = run_dir / ".params.txt.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, run_dir / "params.txt")


def _preflight(args: argparse.Namespace, world_size: int) -> tuple[dict, Any]:
    """Every check that needs no process group, so misconfiguration fails fast as one line on rank 0."""
    if not args.deepspeed_config:
        raise HarnessError("--deepspeed_config is required (e.g. deepspeed_configs/zero2.json)")
    raw = load_config(args.deepspeed_config)
    if not args.train_data:
        raise HarnessError("--train-data is required (webdataset shards, e.g. 'shards/{000000..000099}.tar')")
    from deepspeed.accelerator import get_accelerator
    from open_clip_train.params import get_default_params
    on_cpu = get_accelerator().device_name() == "cpu"
    spec = check_model_and_loss(args)
    defaults = get_default_params(args.model)
    args.lr = defaults["lr"] if args.lr is None else args.lr
    args.beta1 = defaults["beta1"] if args.beta1 is None else args.beta1
    args.beta2 = defaults["beta2"] if args.beta2 is None else args.beta2
    args.eps = defaults["eps"] if args.eps is None else args.eps
    batch_auto = all(raw.get(k, "auto") == "auto" for k in ("train_batch_size", "train_micro_batch_size_per_gpu"))
    if args.batch_size is None and args.global_batch_size is None and batch_auto:
        args.batch_size = DEFAULT_BATCH_SIZE
    cfg = prepare_config(raw, world_size=world_size, batch_size=args.batch_size,
                         global_batch_size=args.global_batch_size, lr=args.lr, betas=(args.beta1, args.beta2),
                         eps=args.eps, weight_decay=args.wd, grad_clip_norm=args.grad_clip_norm, on_cpu=on_cpu)
    from uniclip_plugin.cli import _check_train_data
    _check_train_data(args.train_data)
    if not args.dataset_resampled and count_shards(args.train_data) < max(1, args.workers) * world_size:
        raise HarnessError(f"{count_shards(args.train_data)} shards cannot feed {world_size} ranks × "
                           f"{max(1, args.workers)} workers; lower --workers or use --dataset-resampled")
    if args.epochs < 1:
        raise HarnessError("--epochs must be ≥ 1")
    return cfg, spec


# --------------------------------------------------------------------------------------------------------------- train
def train(args: argparse.Namespace) -> int:
    """Run (or resume) a DeepSpeed training run; returns the exit code."""
    rank, world_size, local_rank = dist_env(args)
    cfg, spec = _preflight(args, world_size)
    import deepspeed
    import open_clip
    import torch.distributed as dist
    from deepspeed.accelerator import get_accelerator
    from open_clip_train.scheduler import const_lr, cosine_lr

    from uniclip_plugin.train_hooks import TrainLossAdapter

    accelerator = get_accelerator()
    if accelerator.device_name() != "cpu":
        accelerator.set_device(local_rank)
    else:
        from uniclip_plugin.cpu_malloc import keep_freed_memory
        malloc_status = keep_freed_memory()
        if rank == 0:
            print(f"train.py: {malloc_status}", file=sys.stderr)
    init_distributed(args.no_cpu_shm_comm)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if args.name is None:
        args.name = _broadcast(f"{time.strftime('%Y_%m_%d-%H_%M_%S')}-{args.model}-{args.loss}")
    run_dir = Path(args.logs) / args.name
    ckpt_dir = run_dir / "checkpoints"
    verdict = None
    if rank == 0:
        if run_dir.exists() and args.resume is None:
            verdict = (f"run directory {run_dir} already exists; pass --resume latest to continue it, or a new "
                       f"--name")
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            removed = ckpt.clean_stale(ckpt_dir) if ckpt_dir.is_dir() else []
            if removed:
                print(f"removed incomplete checkpoints {removed}", flush=True)
    verdict = _broadcast(verdict)
    if verdict:
        raise HarnessError(verdict)
    resume_from, problem = None, None
    if args.resume is not None:
        if rank == 0:  # one rank decides (and fails) for all: a rank raising alone would leave the others waiting
            try:
                resume_from = ckpt.resolve_resume(args.resume, run_dir)
            except ckpt.CheckpointError as err:
                problem = str(err)
        resume_from, problem = _broadcast((resume_from, problem))
        if problem:
            raise ckpt.CheckpointError(problem)
    setup_logging(run_dir / "out.log" if rank == 0 else None, rank)
    if rank == 0:
        write_params(run_dir, args)
        (run_dir / "ds_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    micro = cfg["train_micro_batch_size_per_gpu"]
    logging.info(f"{world_size} ranks on {accelerator.device_name()}, {precision_of(cfg)} ZeRO-{zero_stage_of(cfg)}, "
                 f"batch {micro}/rank ({cfg['train_batch_size']} global), gradient_clipping "
                 f"{cfg['gradient_clipping']}, --loss {args.loss}, run dir {run_dir}")

    loss_ns = loss_namespace(args, rank, world_size)
    base_loss = spec.build(loss_ns)
    loss_fn = TrainLossAdapter(base_loss, log_every=args.log_every_n_steps, is_master=rank == 0)
    model, preprocess_train, _ = build_model(args, model_kwargs_for_loss(loss_ns))
    seed_everything(args.seed + rank)  # open_clip_train's random_seed(seed, rank): per-rank views / augmentations
    groups, layout = param_groups(model, args.wd)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=groups, config=cfg)
    engine.train()
    tokenizer = open_clip.get_tokenizer(args.model)
    if spec.wrap_tokenizer is not None:
        tokenizer = spec.wrap_tokenizer(tokenizer, args)

    probe = epoch_loader(args, preprocess_train, tokenizer, 0, rank, micro, world_size)
    steps_per_epoch = probe.num_batches
    del probe
    state = ckpt.TrainState(steps_per_epoch=steps_per_epoch, total_steps=steps_per_epoch * args.epochs)
    meta = run_meta(args, cfg, layout, world_size)
    rng_after_fast_forward = None
    if resume_from is not None:
        src_dir, tag = Path(resume_from[0]), resume_from[1]
        saved = ckpt.read_meta(src_dir, tag)
        ckpt.check_compatible(saved, meta)
        ckpt.log_resume(saved, src_dir / tag)
        state, rng_after_fast_forward = ckpt.load_checkpoint(engine, src_dir, tag, rank=rank)
        if state.steps_per_epoch != steps_per_epoch:
            raise HarnessError(f"the checkpoint has {state.steps_per_epoch} steps per epoch and this data/batch "
                               f"setup {steps_per_epoch}; resume with the same --train-data/--train-num-samples/batch")
        state.total_steps = steps_per_epoch * args.epochs
    elif args.resume is not None:
        logging.info(f"--resume {args.resume}: no complete checkpoint yet, starting from step 0")

    schedule = (cosine_lr if args.lr_scheduler == "cosine" else const_lr)(
        engine.optimizer, args.lr, args.warmup, state.total_steps)
    metrics = Metrics(run_dir, rank == 0)
    skips = SkipWatcher(args.max_skipped_steps, state.skipped_steps)
    last_saved = state.step if resume_from is not None else -1

    def save() -> None:
        nonlocal last_saved
        if state.step == last_saved:
            return
        state.skipped_steps = skips.total
        path = ckpt.save_checkpoint(engine, ckpt_dir, state, meta, rank=rank, keep=args.keep_checkpoints,
                                    barrier=_barrier)
        last_saved = state.step
        logging.info(f"Saved checkpoint {path}")

    logged_dtypes = False

    def log_dtypes(raw: dict, inputs: dict) -> None:
        def dtypes(d: dict) -> str:
            return ", ".join(f"{k} {str(v.dtype).replace('torch.', '')}" for k, v in d.items() if torch.is_tensor(v))
        logging.info(f"Model outputs: {dtypes(raw)} -> loss inputs: {dtypes(inputs)}")

    try:
        while state.epoch < args.epochs:
            loader = epoch_loader(args, preprocess_train, tokenizer, state.epoch, rank, micro, world_size)
            batches = iter(loader)
            for _ in range(state.step_in_epoch):  # mid-epoch resume: the same stream, consumed up to the checkpoint
                next(batches)
            if rng_after_fast_forward is not None:
                ckpt.restore_rng_state(rng_after_fast_forward)
                rng_after_fast_forward = None
            t_last, samples_since = time.time(), 0
            for images, texts in batches:
                lr = schedule(state.step)
                loss = train_step(engine, loss_fn, images, texts, state.step,
                                  None if logged_dtypes else log_dtypes)
                logged_dtypes = True
                skips.update(engine.was_step_applied(), state.step)
                state.step += 1
                state.step_in_epoch += 1
                samples_since += images.shape[0] * world_size
                metrics.log(state.step, {"epoch": state.epoch, "loss": loss, "lr": lr,
                                         "skipped_steps": skips.total})
                if state.step % max(1, args.log_every_n_steps) == 0 or state.step_in_epoch == steps_per_epoch:
                    elapsed = max(time.time() - t_last, 1e-9)
                    done = state.step_in_epoch * micro * world_size
                    logging.info(f"Train Epoch: {state.epoch} [{done}/{steps_per_epoch * micro * world_size} "
                                 f"({100.0 * state.step_in_epoch / steps_per_epoch:.0f}%)] step {state.step}/"
                                 f"{state.total_steps} Loss: {loss:.4f} LR: {lr:.3e} "
                                 f"{samples_since / elapsed:.1f} samples/s")
                    t_last, samples_since = time.time(), 0
                if state.step_in_epoch >= steps_per_epoch:
                    break
                if args.save_every_n_steps > 0 and state.step % args.save_every_n_steps == 0:
                    save()
            del batches, loader
            state.epoch += 1
            state.step_in_epoch = 0
            save()
    except HarnessError as err:
        logging.error(f"{err}; last checkpoint: {ckpt.read_latest(ckpt_dir) or 'none written yet'}")
        raise HarnessError(f"{err}; last checkpoint: {ckpt.read_latest(ckpt_dir) or 'none written yet'}") from None
    finally:
        metrics.close()
    logging.info(f"Finished {state.step} steps; export with: python harness/train.py --export {run_dir} "
                 f"--out {args.name}.pt")
    return 0


def run_meta(args: argparse.Namespace, cfg: dict, layout: list[list[str]], world_size: int) -> dict:
    """Run facts saved with every checkpoint: checked on resume (D5) and read by ``--export``."""
    from uniclip_plugin.cli import _model_overrides
    return {"world_size": world_size, "zero_stage": zero_stage_of(cfg), "precision": precision_of(cfg),
            "model": args.model, "loss": args.loss, "param_groups": layout, "seed": args.seed,
            "global_batch_size": cfg["train_batch_size"], "model_overrides": _model_overrides(args), "name": args.name,
            "workers": args.workers, "dataset_resampled": args.dataset_resampled}


# -------------------------------------------------------------------------------------------------------------- export
def export_run(run_dir: Path, out: Optional[str] = None, tag: Optional[str] = None, verify: bool = True) -> Path:
    """Consolidate a run's checkpoint into fp32 weights that stock ``open_clip.create_model_and_transforms`` loads.

    Args:
        run_dir: the run directory (``<logs>/<name>``).
        out: output file; None → ``run_dir/export/<name>.pt``; a bare file name → ``run_dir/export/<out>``.
        tag: checkpoint tag; None → the one ``LATEST`` names.
        verify: load the file back through ``open_clip.create_model_and_transforms(model, pretrained=file)``.

    Returns:
        The written file. Its ``state_dict`` holds fp32 tensors named as open_clip names them.
    """
    import open_clip
    ckpt_dir = run_dir / "checkpoints"
    tag = tag or ckpt.read_latest(ckpt_dir)
    if tag is None or not (ckpt_dir / tag / ckpt.META_FILE).is_file():
        raise HarnessError(f"--export {run_dir}: no complete checkpoint in {ckpt_dir}")
    meta = ckpt.read_meta(ckpt_dir, tag)
    model_name = meta["model"]
    params = run_dir / "params.txt"
    if params.is_file():  # the bench reads params.txt; keep both in agreement
        lines = [ln for ln in params.read_text().splitlines() if ln.startswith("model: ")]
        if lines and lines[0][len("model: "):] != model_name:
            raise HarnessError(f"{params} names model {lines[0][7:]!r} but the checkpoint {model_name!r}")
    overrides = meta.get("model_overrides") or {}
    if out is None:
        target = run_dir / "export" / f"{meta.get('name') or run_dir.name}.pt"
    elif os.path.dirname(out) == "":
        target = run_dir / "export" / out
    else:
        target = Path(out)
    sd = ckpt.consolidated_fp32_state_dict(ckpt_dir, tag)
    from uniclip_plugin import factory
    factory.set_model_overrides(overrides)
    reference = open_clip.create_model(model_name, precision="fp32", device="cpu").state_dict()
    sd = ckpt.match_shapes(sd, reference)
    ts = meta["train_state"]
    payload = {"name": meta.get("name"), "model": model_name, "epoch": ts["epoch"], "step": ts["step"],
               "model_overrides": overrides, "state_dict": sd}
    ckpt.atomic_torch_save(payload, target)
    if verify:
        loaded, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=str(target))
        for key, value in loaded.state_dict().items():
            if torch.is_tensor(value) and value.is_floating_point() and not torch.equal(value, sd[key].to(value.dtype)):
                raise HarnessError(f"export check failed: {key} differs after loading {target} in open_clip")
    return target


# ---------------------------------------------------------------------------------------------------------------- main
def main(argv: Optional[list[str]] = None) -> int:
    """Entry point; returns the exit code. User errors print one ``train.py: error:`` line (rank 0) and return 2."""
    import uniclip_plugin  # noqa: F401  (registers plugin models, losses and the upstream fixes)
    from uniclip_plugin.errors import PluginError
    args = build_parser().parse_args(argv)
    try:
        if args.export:
            path = export_run(Path(args.export), args.out, args.tag)
            print(f"wrote {path} (loads with open_clip.create_model_and_transforms(..., pretrained=...) after "
                  f"`import uniclip_plugin`)")
            return 0
        return train(args)
    except (HarnessError, ConfigError, PluginError, ckpt.CheckpointError) as err:
        _print_error(str(err))
        return 2


if __name__ == "__main__":
    sys.exit(main())
