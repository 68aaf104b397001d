"""Which checkpoints the benchmark evaluates: ``--models`` resolved to runs, and a run's model loaded.

A name resolves to the latest checkpoint of every run ``<name>``, ``<name>-seed<N>`` or ``<name>-s<N>`` in the runs
folder (read with :class:`uniclip_plugin.runs.RunDir`); ``name=checkpoint[:model-config]`` names a checkpoint
directly. Any open_clip-loadable model works, plugin or not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch

import uniclip_plugin
from uniclip_plugin.bench.errors import BenchError, one_line
from uniclip_plugin.runs import RunDir, parse_run_name

__all__ = ["Run", "model_config_of", "resolve_models", "load_model"]


@dataclass(frozen=True)
class Run:
    """One checkpoint to evaluate.

    Attributes:
        method: the method it belongs to (runs of one method are aggregated).
        run: unique run name (the run folder, or the name given on the command line).
        checkpoint: the checkpoint file.
        model_config: the open_clip model config name to build it with.
        run_dir: the run folder (for its training curve), when known.
    """

    method: str
    run: str
    checkpoint: Path
    model_config: str
    run_dir: Optional[Path] = None


def model_config_of(run_dir: Path) -> str:
    """The ``model: NAME`` line of ``run_dir/params.txt`` (written by open_clip_train and the DeepSpeed trainer).

    Raises:
        BenchError: the run has no such line.
    """
    name = RunDir(run_dir).model_name()
    if name is None:
        raise BenchError(
            f"{run_dir / 'params.txt'} has no 'model: NAME' line; give the model as NAME=CHECKPOINT:CONFIG"
        )
    return name


def _explicit(item: str) -> Run:
    """A ``name=checkpoint[:config]`` item; without the config, the ``params.txt`` two folders up is read."""
    name, target = item.split("=", 1)
    # A Windows drive letter aside, "path:CONFIG" splits at the last colon.
    ckpt, _, config = target.rpartition(":") if ":" in target else (target, "", "")
    path = Path(ckpt)
    if not path.is_file():
        raise BenchError(f"checkpoint {ckpt} for model {name!r} does not exist")
    run_dir = path.parent.parent if path.parent.name in ("checkpoints", "export") else None
    if not config:
        if run_dir is None:
            raise BenchError(f"no model config for {name!r}: give it as {name}={ckpt}:CONFIG")
        config = model_config_of(run_dir)
    return Run(parse_run_name(name)[0], name, path, config, run_dir)


def _seed_order(folder: Path, item: str) -> tuple[int, str]:
    # the bare name first, then by seed (numeric: seed10 after seed2)
    seed = parse_run_name(folder.name)[1]
    return (-1 if folder.name == item or seed is None else seed, folder.name)


def _named(item: str, runs_dir: Path) -> list[Run]:
    """Every run ``item``, ``item-seed<N>`` or ``item-s<N>`` in ``runs_dir``, at its latest checkpoint."""
    pattern = re.compile(rf"^{re.escape(item)}(-seed\d+|-s\d+)?$")
    dirs = (
        sorted(
            (d for d in runs_dir.iterdir() if d.is_dir() and pattern.match(d.name)), key=lambda d: _seed_order(d, item)
        )
        if runs_dir.is_dir()
        else []
    )
    if not dirs:
        raise BenchError(
            f"unknown model {item!r}: no run {item}, {item}-seed<N> or {item}-s<N> in {runs_dir}; "
            f"or pass {item}=CHECKPOINT[:MODEL_CONFIG]"
        )
    runs = []
    for d in dirs:
        run = RunDir(d)
        ckpt = run.latest_checkpoint()
        if ckpt is None:
            if run.has_sharded_checkpoint():  # DeepSpeed trainer run: sharded, not yet exported
                raise BenchError(
                    f"run {d} has only DeepSpeed checkpoints; export one first with "
                    f"`python harness/train.py --export {d}`"
                )
            raise BenchError(f"run {d} has no checkpoint (checkpoints/epoch_<N>.pt or export/*.pt)")
        runs.append(Run(item, d.name, ckpt, model_config_of(d), d))
    return runs


def resolve_models(spec: Union[str, Sequence[str]], runs_dir: Path) -> list[Run]:
    """Parse ``--models``: run/method names or ``name=checkpoint[:config]`` items.

    Args:
        spec: the comma-separated ``--models`` value, or its items as a list.
        runs_dir: folder holding the runs (``runs/<name>/...``).

    Returns:
        The runs in command-line order (runs of one method sorted by seed).

    Raises:
        BenchError: unknown name, missing checkpoint or config, or a duplicate run.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    runs: list[Run] = []
    for item in [s.strip() for s in items if s.strip()]:
        runs += [_explicit(item)] if "=" in item else _named(item, Path(runs_dir))
    seen: set[str] = set()
    for r in runs:
        if r.run in seen:
            raise BenchError(f"run {r.run!r} is named twice in --models")
        seen.add(r.run)
    return runs


def load_model(run: Run, device: str = "cpu") -> tuple[torch.nn.Module, Callable, Callable]:
    """Build ``run.model_config`` with ``pretrained=run.checkpoint`` in fp32 eval mode.

    Returns:
        ``(model, preprocess, tokenizer)`` as open_clip makes them (validation transform).

    Raises:
        BenchError: the config is unknown or the checkpoint does not load into it.
    """
    uniclip_plugin.register()  # plugin configs and classes, and the upstream fixes (idempotent)
    import open_clip

    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            run.model_config, pretrained=str(run.checkpoint), device=device, precision="fp32"
        )
        tokenizer = open_clip.get_tokenizer(run.model_config)
    except Exception as err:  # noqa: BLE001 (any load failure is the user's checkpoint/config; say which)
        raise BenchError(
            f"cannot load {run.checkpoint} as {run.model_config} (run {run.run}): {one_line(err)}"
        ) from err
    model.eval()
    return model, preprocess, tokenizer
