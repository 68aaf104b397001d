"""DeepSpeed config handling for the trainer (``harness/train.py``): load a JSON config, fill its ``"auto"`` fields
from the CLI and check it before any process group exists, so a bad config fails as one line on rank 0 instead of a
traceback per rank.

Rules (docs/DEEPSPEED.md):

* ``"auto"`` batch fields come from ``--batch-size`` (per rank, open_clip_train's meaning) or ``--global-batch-size``;
  explicit values must agree with them and with the world size (``train_batch_size = micro × accumulation × world``).
* ``gradient_clipping`` must be written in the config: DeepSpeed 0.19 defaults it to 1.0 while open_clip does not clip
  (docs/UPSTREAM.md D2, updates were silently scaled ×0.038). ``--grad-clip-norm`` overrides it.
* The optimizer must be ``AdamW``; its ``"auto"`` hyper-parameters come from ``--lr/--beta1/--beta2/--eps/--wd``.
  The harness passes open_clip_train's two parameter groups itself (no weight decay for gains, biases, logit scale).
* No ``scheduler`` section: the harness drives the LR with open_clip_train's ``cosine_lr``/``const_lr``.
* fp16 is refused on CPU (DeepSpeed: ``Type fp16 is not supported``); use a ``*_bf16`` config.
* Gradient accumulation must be 1: DeepSpeed would accumulate gradients of independent micro-batch contrastive losses
  (fewer negatives), which is not open_clip's ``--accum-freq``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Optional

from uniclip_plugin.errors import PluginError

AUTO = "auto"


class ConfigError(PluginError):
    """A DeepSpeed-config problem the user can fix; ``train.py`` prints it as one ``train.py: error:`` line."""


def load_config(path: str | Path) -> dict:
    """Read a DeepSpeed JSON config; keys starting with ``_`` (comments) are dropped.

    Args:
        path: the JSON file.

    Returns:
        The config as a dict.

    Raises:
        ConfigError: the file is missing or is not a JSON object.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--deepspeed_config: no such file {str(p)!r} (shipped configs: deepspeed_configs/*.json)")
    try:
        cfg = json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"--deepspeed_config {str(p)!r} is not valid JSON: {err}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"--deepspeed_config {str(p)!r} must hold a JSON object")
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def precision_of(cfg: dict) -> str:
    """``"bf16"``, ``"fp16"`` or ``"fp32"`` as the config enables it."""
    if cfg.get("bf16", {}).get("enabled", False) is True or cfg.get("bfloat16", {}).get("enabled", False) is True:
        return "bf16"
    if cfg.get("fp16", {}).get("enabled", False) is True:
        return "fp16"
    return "fp32"


def zero_stage_of(cfg: dict) -> int:
    """The ZeRO stage of the config (0 when absent)."""
    return int(cfg.get("zero_optimization", {}).get("stage", 0))


def _fill(section: dict, key: str, value: Any, what: str) -> None:
    """Fill ``section[key]`` when missing or ``"auto"``; an explicit value must equal the CLI's when one is given."""
    current = section.get(key, AUTO)
    if current == AUTO:
        section[key] = value
    elif value is not None and current != value:
        raise ConfigError(
            f"config sets {what}={current!r} but the command line asks for {value!r}; set it to "
            f'"auto" in the config or drop the flag'
        )


def _batch_fields(cfg: dict, batch_size: Optional[int], global_batch_size: Optional[int], world_size: int) -> None:
    accum = cfg.get("gradient_accumulation_steps", 1)
    if accum == AUTO:
        accum = 1
    if accum != 1:
        raise ConfigError(
            f"gradient_accumulation_steps={accum} is not supported: DeepSpeed would average independent "
            f"micro-batch contrastive losses (fewer negatives); use a smaller model or more ranks"
        )
    cfg["gradient_accumulation_steps"] = 1
    micro, total = cfg.get("train_micro_batch_size_per_gpu", AUTO), cfg.get("train_batch_size", AUTO)
    if batch_size is not None and global_batch_size is not None:
        raise ConfigError("give --batch-size (per rank) or --global-batch-size, not both")
    if global_batch_size is not None:
        if total not in (AUTO, global_batch_size):
            raise ConfigError(f"config sets train_batch_size={total} but --global-batch-size is {global_batch_size}")
        total = global_batch_size
    if batch_size is not None:
        if micro not in (AUTO, batch_size):
            raise ConfigError(f"config sets train_micro_batch_size_per_gpu={micro} but --batch-size is {batch_size}")
        micro = batch_size
    if micro == AUTO and total == AUTO:
        raise ConfigError(
            "no batch size: pass --batch-size (per rank) or --global-batch-size, or set "
            "train_micro_batch_size_per_gpu in the config"
        )
    if micro == AUTO:
        if total % world_size:
            raise ConfigError(
                f"the global batch {total} is not divisible by the world size {world_size}; "
                f"choose a multiple of {world_size}"
            )
        micro = total // world_size
    if total == AUTO:
        total = micro * world_size
    if not isinstance(micro, int) or micro < 1:
        raise ConfigError(f"the per-rank batch must be a positive integer, got {micro!r}")
    if total != micro * world_size:
        raise ConfigError(
            f"train_batch_size {total} != per-rank batch {micro} × world size {world_size}; the global "
            f"batch must be divisible by the world size"
        )
    cfg["train_micro_batch_size_per_gpu"], cfg["train_batch_size"] = micro, total


def prepare_config(
    cfg: dict,
    *,
    world_size: int,
    batch_size: Optional[int] = None,
    global_batch_size: Optional[int] = None,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    grad_clip_norm: Optional[float] = None,
    on_cpu: bool = False,
) -> dict:
    """Fill the ``"auto"`` fields of a DeepSpeed config and check it (see the module docstring).

    Args:
        cfg: the config as loaded by :func:`load_config` (not modified).
        world_size: number of ranks of the run.
        batch_size: per-rank batch (``--batch-size``), or None.
        global_batch_size: batch per optimiser step over all ranks (``--global-batch-size``), or None.
        lr, betas, eps, weight_decay: AdamW hyper-parameters for the ``"auto"`` optimizer fields.
        grad_clip_norm: ``--grad-clip-norm``; overrides the config's ``gradient_clipping`` when given.
        on_cpu: the run uses DeepSpeed's CPU accelerator (fp16 is refused there).

    Returns:
        A new, complete config dict for ``deepspeed.initialize(config=...)``.

    Raises:
        ConfigError: a one-line description of the problem and its fix.
    """
    cfg = copy.deepcopy(cfg)
    if world_size < 1:
        raise ConfigError(f"world size must be ≥ 1, got {world_size}")
    precision = precision_of(cfg)
    if precision == "fp16":
        if on_cpu:
            raise ConfigError("fp16 is not supported by DeepSpeed on CPU; use a *_bf16.json or fp32 config")
        raise ConfigError("fp16 configs are not supported by this harness (no loss-scaling checks); use bf16 or fp32")
    if "scheduler" in cfg:
        raise ConfigError(
            "remove the config's 'scheduler' section: the harness drives the LR with open_clip_train's "
            "cosine schedule (--lr, --warmup, --lr-scheduler)"
        )
    if "gradient_clipping" not in cfg and grad_clip_norm is None:
        raise ConfigError(
            "the config must set gradient_clipping explicitly (DeepSpeed 0.19 defaults to 1.0, "
            "open_clip to no clipping: use 0.0), or pass --grad-clip-norm"
        )
    if grad_clip_norm is not None:
        cfg["gradient_clipping"] = float(grad_clip_norm)
    elif cfg["gradient_clipping"] == AUTO:
        cfg["gradient_clipping"] = 0.0
    _batch_fields(cfg, batch_size, global_batch_size, world_size)
    opt = cfg.get("optimizer")
    if not isinstance(opt, dict) or str(opt.get("type", "")).lower() != "adamw":
        raise ConfigError('the config\'s optimizer must be {"type": "AdamW", ...} (open_clip_train\'s optimizer)')
    params = opt.setdefault("params", {})
    _fill(params, "lr", lr, "optimizer.params.lr")
    _fill(params, "betas", list(betas), "optimizer.params.betas")
    _fill(params, "eps", eps, "optimizer.params.eps")
    _fill(params, "weight_decay", weight_decay, "optimizer.params.weight_decay")
    if isinstance(params.get("betas"), tuple):
        params["betas"] = list(params["betas"])
    stage = zero_stage_of(cfg)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"zero_optimization.stage must be 0-3, got {stage}")
    leftover = [k for k, v in _walk(cfg) if v == AUTO]
    if leftover:
        raise ConfigError(f'config fields left "auto" that the harness cannot fill: {", ".join(leftover)}')
    return cfg


def _walk(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(obj, dict):
        return [item for k, v in obj.items() for item in _walk(v, f"{prefix}{k}.")]
    return [(prefix[:-1], obj)]
