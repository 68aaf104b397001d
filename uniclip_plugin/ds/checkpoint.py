"""Step-level, atomic DeepSpeed checkpoints of the trainer, and the consolidation its export reads.

Layout of ``<run>/checkpoints/``::

    LATEST                       our pointer: the tag of the last COMPLETE checkpoint (written last, atomically)
    step_00000120/               one checkpoint (DeepSpeed's files + ours)
        mp_rank_00_model_states.pt, zero_pp_rank_*_optim_states.pt, ...   DeepSpeed (module, fp32 master, moments)
        harness_rank00000.pt ...  per rank: python / numpy / torch (/ accelerator) RNG states, module extra state
        harness_meta.json         step, epoch, data position, schedule, world size, parameter-group layout
    zero_to_fp32.py              DeepSpeed's converter (copied by DeepSpeed)

Atomicity: every rank writes into ``step_N.tmp``; after a barrier (all ranks finished) rank 0 renames the directory
to ``step_N`` and only then replaces ``LATEST`` (``uniclip_plugin.io``: temp file + ``os.replace``). A run killed at
any moment leaves ``LATEST`` on a complete checkpoint; a stale ``*.tmp`` directory is deleted at the next start.
DeepSpeed's own ``latest`` file is not written (``save_latest=False``). Multi-node runs need the checkpoint directory
on a filesystem every node sees (DeepSpeed needs that too).

Queue state (DeCLIP's nearest-neighbour queue and the like): any submodule that overrides ``nn.Module``'s
``get_extra_state``/``set_extra_state`` has that state saved per rank and restored on resume, so a queue that differs
between ranks survives too. No per-method code.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from uniclip_plugin.errors import PluginError
from uniclip_plugin.io import write_text_atomic

LATEST = "LATEST"
TAG_PREFIX = "step_"
TMP_SUFFIX = ".tmp"
META_FILE = "harness_meta.json"


class CheckpointError(PluginError):
    """A checkpoint problem the user can fix (printed as one ``train.py: error:`` line)."""


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint.

    Attributes:
        step: optimiser steps taken so far (the next step has index ``step``).
        epoch: current epoch.
        step_in_epoch: batches of ``epoch`` already consumed (the data position; 0 at an epoch start).
        steps_per_epoch: batches per rank per epoch (open_clip_train's ``num_batches``).
        total_steps: length of the LR schedule.
        skipped_steps: steps DeepSpeed skipped (bf16 overflow) so far.
    """

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    steps_per_epoch: int = 0
    total_steps: int = 0
    skipped_steps: int = 0
    extra: dict = field(default_factory=dict)


def tag_of(step: int) -> str:
    """Checkpoint tag for a step (sortable)."""
    return f"{TAG_PREFIX}{step:08d}"


# ----------------------------------------------------------------------------------------------------------- RNG state
def capture_rng_state() -> dict:
    """Python, numpy, torch and accelerator RNG states of this process, in a ``weights_only``-loadable form."""
    np_state = np.random.get_state()
    state = {
        "python": _to_lists(random.getstate()),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(_to_tuples(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(obj: Any) -> Any:
    return [_to_lists(o) for o in obj] if isinstance(obj, (tuple, list)) else obj


def _to_tuples(obj: Any) -> Any:
    return tuple(_to_tuples(o) for o in obj) if isinstance(obj, list) else obj


# --------------------------------------------------------------------------------------------------------- extra state
def _has_own_extra_state(module: nn.Module) -> bool:
    return type(module).get_extra_state is not nn.Module.get_extra_state


def capture_extra_state(model: nn.Module) -> dict:
    """``{submodule name: get_extra_state()}`` for submodules that define it (queues), tensors moved to CPU."""
    return {name: _to_cpu(m.get_extra_state()) for name, m in model.named_modules() if _has_own_extra_state(m)}


def restore_extra_state(model: nn.Module, states: dict) -> list[str]:
    """Give each submodule its saved extra state back; returns the names restored."""
    modules = dict(model.named_modules())
    missing = [n for n in states if n not in modules]
    if missing:
        raise CheckpointError(f"checkpoint holds queue/extra state for submodules this model lacks: {missing}")
    for name, value in states.items():
        modules[name].set_extra_state(value)
    return list(states)


def _to_cpu(obj: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


# ---------------------------------------------------------------------------------------------------------- save/load
def clean_stale(ckpt_dir: Path) -> list[str]:
    """Remove ``*.tmp`` checkpoint directories left by a run killed while saving (rank 0, before training)."""
    removed = []
    for p in ckpt_dir.glob(f"{TAG_PREFIX}*{TMP_SUFFIX}"):
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p.name)
    return removed


def read_latest(ckpt_dir: Path) -> Optional[str]:
    """Tag named by ``LATEST`` if it points at a complete checkpoint, else None."""
    pointer = ckpt_dir / LATEST
    if not pointer.is_file():
        return None
    tag = pointer.read_text().strip()
    return tag if (ckpt_dir / tag / META_FILE).is_file() else None


def save_checkpoint(engine: Any, ckpt_dir: Path, state: TrainState, meta: dict, *, rank: int, keep: int,
                    barrier: Any) -> Path:
    """Save a resumable checkpoint of the current step on ALL ranks (DeepSpeed's save is a collective, D6).

    Args:
        engine: the DeepSpeed engine.
        ckpt_dir: ``<run>/checkpoints``.
        state: training position (step, epoch, data position).
        meta: run facts checked on resume (world size, ZeRO stage, parameter-group layout, model, ...).
        rank: global rank.
        keep: complete checkpoints to keep (older ones are deleted after ``LATEST`` moved on); ≤ 0 keeps all.
        barrier: a callable synchronising all ranks.

    Returns:
        The final checkpoint directory.
    """
    tag = tag_of(state.step)
    tmp_tag = tag + TMP_SUFFIX
    if rank == 0:
        shutil.rmtree(ckpt_dir / tmp_tag, ignore_errors=True)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    barrier()
    full_meta = {**meta, "train_state": asdict(state), "tag": tag}
    engine.save_checkpoint(str(ckpt_dir), tag=tmp_tag, client_state={"harness": full_meta}, save_latest=False)
    per_rank = {"rng": capture_rng_state(), "extra_state": capture_extra_state(engine.module), "rank": rank}
    torch.save(per_rank, ckpt_dir / tmp_tag / f"harness_rank{rank:05d}.pt")
    barrier()  # every rank's files are complete before the checkpoint becomes visible
    final = ckpt_dir / tag
    if rank == 0:
        write_text_atomic(ckpt_dir / tmp_tag / META_FILE, json.dumps(full_meta, indent=2, default=str))
        if final.exists():  # the same step saved twice (a step save that is also an epoch end)
            shutil.rmtree(final)
        os.replace(ckpt_dir / tmp_tag, final)
        write_text_atomic(ckpt_dir / LATEST, tag + "\n")
        if keep > 0:
            done = sorted(p for p in ckpt_dir.glob(f"{TAG_PREFIX}*") if p.is_dir() and not p.name.endswith(TMP_SUFFIX))
            for old in done[:-keep]:
                if old.name != tag:
                    shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def resolve_resume(resume: str, run_dir: Path) -> Optional[tuple[Path, str]]:
    """``--resume`` → (checkpoint dir, tag), or None when ``latest`` finds no complete checkpoint yet.

    Accepts ``latest`` (this run), a run directory, a ``checkpoints`` directory or one checkpoint directory.
    """
    if resume == "latest":
        ckpt_dir = run_dir / "checkpoints"
        tag = read_latest(ckpt_dir)
        return (ckpt_dir, tag) if tag else None
    path = Path(resume)
    if (path / META_FILE).is_file():
        return path.parent, path.name
    for ckpt_dir in (path / "checkpoints", path):
        tag = read_latest(ckpt_dir)
        if tag:
            return ckpt_dir, tag
    raise CheckpointError(f"--resume {resume!r}: no complete checkpoint there (expected a run dir, its checkpoints/ "
                          f"dir with {LATEST}, or a {TAG_PREFIX}N dir with {META_FILE})")


def read_meta(ckpt_dir: Path, tag: str) -> dict:
    """The run facts saved with a checkpoint."""
    return json.loads((ckpt_dir / tag / META_FILE).read_text())


def check_compatible(meta: dict, current: dict) -> None:
    """Refuse a resume DeepSpeed would reject with an obscure message (docs/UPSTREAM.md D5, DeepSpeed #3810)."""
    if meta["world_size"] != current["world_size"]:
        raise CheckpointError(f"the checkpoint was written by {meta['world_size']} ranks and this run has "
                              f"{current['world_size']}; resume with {meta['world_size']} ranks (or convert it with "
                              f"DeepSpeed's ds_to_universal.py)")
    if meta["zero_stage"] != current["zero_stage"]:
        raise CheckpointError(f"the checkpoint is ZeRO-{meta['zero_stage']} and the config "
                              f"ZeRO-{current['zero_stage']}; resume with the same stage")
    for key in ("model", "loss"):
        if meta[key] != current[key]:
            raise CheckpointError(f"the checkpoint was trained with --{key} {meta[key]}, not {current[key]}")
    for key, flag in (("workers", "--workers"), ("dataset_resampled", "--dataset-resampled")):
        if key in meta and meta[key] != current.get(key):  # both shape the data stream the resume fast-forwards
            raise CheckpointError(f"the checkpoint was trained with {flag} {meta[key]}, not {current.get(key)}; the "
                                  f"data stream (and so the resume position) depends on it")
    if meta["param_groups"] != current["param_groups"]:
        raise CheckpointError("the optimiser parameter groups differ from the checkpoint's (model overrides or "
                              "requires_grad changed); resume with the same model flags")


def load_checkpoint(engine: Any, ckpt_dir: Path, tag: str, *, rank: int) -> tuple[TrainState, dict]:
    """Load module, optimiser and per-rank state; returns the train state and this rank's RNG state (to restore
    once the data pipeline has been fast-forwarded)."""
    path, client = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True,
                                          load_lr_scheduler_states=False)
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load checkpoint {ckpt_dir / tag}")
    meta = client.get("harness") or read_meta(ckpt_dir, tag)
    per_rank_file = ckpt_dir / tag / f"harness_rank{rank:05d}.pt"
    if not per_rank_file.is_file():
        raise CheckpointError(f"{per_rank_file} is missing: the checkpoint is incomplete")
    per_rank = torch.load(per_rank_file, map_location="cpu", weights_only=True)
    restore_extra_state(engine.module, per_rank["extra_state"])
    state = TrainState(**meta["train_state"])
    return state, per_rank["rng"]


# --------------------------------------------------------------------------------------------------------------- export
def consolidated_fp32_state_dict(ckpt_dir: Path, tag: str) -> dict[str, torch.Tensor]:
    """fp32 weights of a ZeRO-1/2/3 checkpoint in one state dict (DeepSpeed's ``zero_to_fp32``), plus the
    non-parameter entries of the module (buffers, extra state) it leaves out."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    # The converter prints every buffer and partition and draws a progress bar: keep the export's output readable.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        sd = dict(get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag))
    module_files = sorted((ckpt_dir / tag).glob("*model_states.pt"))
    if module_files:
        module = torch.load(module_files[0], map_location="cpu", weights_only=False).get("module") or {}
        for key, value in module.items():
            if key not in sd and (not torch.is_tensor(value) or value.numel() > 0):
                sd[key] = value.float() if torch.is_tensor(value) and value.is_floating_point() else value
    return {k: (v.contiguous() if torch.is_tensor(v) else v) for k, v in sd.items()}


def match_shapes(sd: dict[str, Any], reference: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Reshape entries to the reference model's shapes where only the shape differs (a ``[1]`` logit scale trained
    under DeepSpeed, D1, goes back to open_clip's scalar); refuse missing or unexpected keys."""
    missing = sorted(set(reference) - set(sd))
    unexpected = sorted(set(sd) - set(reference))
    if missing or unexpected:
        raise CheckpointError(f"consolidated weights do not match the model: missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]} (was the run trained with other model flags?)")
    out = {}
    for key, ref in reference.items():
        value = sd[key]
        if torch.is_tensor(value) and torch.is_tensor(ref) and value.shape != ref.shape:
            if value.numel() != ref.numel():
                raise CheckpointError(f"{key}: checkpoint shape {tuple(value.shape)} vs model {tuple(ref.shape)}")
            value = value.reshape(ref.shape)
        out[key] = value
    return out


def log_resume(meta: dict, ckpt: Path) -> None:
    """One log line saying where a resumed run continues."""
    ts = meta["train_state"]
    logging.info(f"Resuming from {ckpt}: step {ts['step']}, epoch {ts['epoch']}, batch {ts['step_in_epoch']}/"
                 f"{ts['steps_per_epoch']} of the epoch")
