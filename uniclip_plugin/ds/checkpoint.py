"""Step-level, atomic DeepSpeed checkpoints of the trainer, and the consolidation its export reads.

Layout of ``<run>/checkpoints/``::

    LATEST                       our pointer: the tag of the last COMPLETE checkpoint (written last, atomically)
    step_00000120/               one checkpoint (DeepSpeed's files + ours)
        mp_rank_00_model_states.pt, zero_pp_rank_*_optim_states.pt, ...   DeepSpeed (module, fp32 master, moments)
        harness_rank00000.pt ...  per rank: python / numpy / torch (/ accelerator) RNG states, module extra state
        harness_meta.json         step, epoch, data position, schedule, world size, parameter-group layout
    zero_to_fp32.py              DeepSpeed's converter (copied by DeepSpeed)

Atomicity: every rank writes into ``step_N.tmp``; after a barrier (all ranks finished) rank 0 records every file's
size in ``harness_meta.json``, renames the directory to ``step_N`` and only then replaces ``LATEST`` and DeepSpeed's
``latest`` (same tag; ``uniclip_plugin.io``: temp file + ``os.replace``). DeepSpeed's ``save_checkpoint`` runs with
``save_latest=False`` because it would write ``latest`` before the rename; writing it ourselves afterwards keeps it
atomic and lets DeepSpeed's tools work without a tag: ``python checkpoints/zero_to_fp32.py checkpoints OUT`` and
``engine.load_checkpoint(checkpoints)``. A run killed at any moment leaves both pointers on a complete checkpoint; a
stale ``*.tmp`` directory is deleted at the next start. Multi-node runs need the checkpoint directory on a filesystem
every node sees (DeepSpeed needs that too).

Failures (docs/DEEPSPEED.md "Faults"):

* A write that fails (``OSError``: disk full, quota, permissions) on any rank fails the save on every rank with one
  :class:`CheckpointError` naming the rank, the error and the intact previous checkpoint; the partial ``*.tmp`` is
  removed. The ranks agree through one all-gather, so no rank is left waiting in a barrier.
* At resume, rank 0 checks the checkpoint ``LATEST`` names (file sizes against the manifest, every ``*.pt`` opened
  with ``torch.load(mmap=True)``). A damaged one is renamed ``step_N.damaged``, the pointers move back, and the run
  resumes from the newest intact checkpoint; with none intact it refuses with the fix. A flipped bit inside tensor
  data is not detected (no content hash: hashing multi-GB checkpoints at every save would cost minutes).

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
import re
import shutil
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from uniclip_plugin.errors import PluginError
from uniclip_plugin.io import write_text_atomic

LATEST = "LATEST"
DS_LATEST = "latest"  # DeepSpeed's pointer (zero_to_fp32.py, engine.load_checkpoint without a tag)
TAG_PREFIX = "step_"
TMP_SUFFIX = ".tmp"
DAMAGED_SUFFIX = ".damaged"
META_FILE = "harness_meta.json"
_TAG_RE = re.compile(rf"{TAG_PREFIX}\d{{8}}")


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
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].copy()),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
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


def step_tags(ckpt_dir: Path) -> list[str]:
    """Tags of the finished (renamed) checkpoint directories, oldest first (``*.tmp``/``*.damaged`` excluded)."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir() and _TAG_RE.fullmatch(p.name))


def point_latest(ckpt_dir: Path, tag: str) -> None:
    """Move ``LATEST`` and DeepSpeed's ``latest`` to ``tag``, each atomically (ours first: it is what we read)."""
    write_text_atomic(ckpt_dir / LATEST, tag + "\n")
    write_text_atomic(ckpt_dir / DS_LATEST, tag + "\n")  # DeepSpeed strips the content


def file_manifest(directory: Path) -> dict[str, int]:
    """``{relative path: size}`` of every file of a checkpoint directory but the meta file (checked at resume)."""
    return {
        p.relative_to(directory).as_posix(): p.stat().st_size
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != META_FILE
    }


def _describe(err: OSError) -> str:
    return f"{type(err).__name__}: {err}"


def gather_errors(error: Optional[str]) -> list[str]:
    """Every rank's error (``"rank R: ..."``), the same list on every rank: a collective, so it also synchronises.

    Args:
        error: this rank's error, or None.
    """
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [f"rank 0: {error}"] if error else []
    errors: list[Optional[str]] = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    return [f"rank {r}: {e}" for r, e in enumerate(errors) if e]


def _write_rank_files(
    engine: Any, ckpt_dir: Path, tmp_tag: str, full_meta: dict, rank: int, barrier: Any
) -> Optional[str]:
    """This rank's part of the save (DeepSpeed's files, RNG/extra state); returns the write error, or None."""
    try:
        engine.save_checkpoint(str(ckpt_dir), tag=tmp_tag, client_state={"harness": full_meta}, save_latest=False)
    except OSError as err:
        # The writes come after DeepSpeed's last collective but one: its closing barrier, which the other ranks are
        # waiting in. Join it so that every rank reaches the error exchange.
        barrier()
        return _describe(err)
    per_rank = {"rng": capture_rng_state(), "extra_state": capture_extra_state(engine.module), "rank": rank}
    try:
        torch.save(per_rank, ckpt_dir / tmp_tag / f"harness_rank{rank:05d}.pt")
    except OSError as err:
        return _describe(err)
    return None


def _publish(ckpt_dir: Path, tmp_tag: str, tag: str, full_meta: dict) -> Optional[str]:
    """Rank 0, all files written: manifest and meta, rename, pointers. Returns the write error, or None."""
    tmp, final = ckpt_dir / tmp_tag, ckpt_dir / tag
    try:
        meta = {**full_meta, "files": file_manifest(tmp)}
        write_text_atomic(tmp / META_FILE, json.dumps(meta, indent=2, default=str))
        if final.exists():  # the same step saved twice (a step save that is also an epoch end)
            shutil.rmtree(final)
        os.replace(tmp, final)
        point_latest(ckpt_dir, tag)
    except OSError as err:
        return _describe(err)
    return None


def _prune(ckpt_dir: Path, tag: str, keep: int) -> None:
    if keep > 0:
        for old in step_tags(ckpt_dir)[:-keep]:
            if old != tag:
                shutil.rmtree(ckpt_dir / old, ignore_errors=True)


def _raise_if_failed(errors: list[str], ckpt_dir: Path, tag: str, rank: int) -> None:
    if not errors:
        return
    if rank == 0:
        shutil.rmtree(ckpt_dir / (tag + TMP_SUFFIX), ignore_errors=True)
    previous = read_latest(ckpt_dir)
    kept = f"the last complete checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
    raise CheckpointError(
        f"could not write checkpoint {tag} ({'; '.join(errors)}); {kept}; free space in "
        f"{ckpt_dir} (or lower --keep-checkpoints) and rerun with --resume latest"
    )


def save_checkpoint(
    engine: Any, ckpt_dir: Path, state: TrainState, meta: dict, *, rank: int, keep: int, barrier: Any
) -> Path:
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

    Raises:
        CheckpointError: on every rank, when a write failed on any rank (the previous checkpoint stays ``LATEST``).
    """
    tag = tag_of(state.step)
    tmp_tag = tag + TMP_SUFFIX
    if rank == 0:
        shutil.rmtree(ckpt_dir / tmp_tag, ignore_errors=True)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    barrier()
    full_meta = {**meta, "train_state": asdict(state), "tag": tag}
    error = _write_rank_files(engine, ckpt_dir, tmp_tag, full_meta, rank, barrier)
    # The all-gather is the barrier after which every rank's files are complete (or the save failed everywhere).
    _raise_if_failed(gather_errors(error), ckpt_dir, tag, rank)
    error = _publish(ckpt_dir, tmp_tag, tag, full_meta) if rank == 0 else None
    _raise_if_failed(gather_errors(error), ckpt_dir, tag, rank)
    if rank == 0:
        _prune(ckpt_dir, tag, keep)
    barrier()
    return ckpt_dir / tag


# ------------------------------------------------------------------------------------------------------------ resume
def verify_checkpoint(ckpt_dir: Path, tag: str) -> Optional[str]:
    """What is wrong with a checkpoint (cheaply: sizes and archive structure), or None when it looks intact.

    Args:
        ckpt_dir: the checkpoints directory.
        tag: the checkpoint's tag.

    Returns:
        A short description of the damage, or None.
    """
    directory = ckpt_dir / tag
    try:
        meta = read_meta(ckpt_dir, tag)
    except (OSError, ValueError) as err:
        return f"{META_FILE} is unreadable ({type(err).__name__})"
    for name, size in (meta.get("files") or {}).items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} of its {size} bytes (truncated or overwritten)"
    for path in sorted(directory.glob("*.pt")):
        try:  # mmap: the archive structure and pickles are read, the tensor data is not (legacy files: all of it)
            torch.load(path, map_location="cpu", weights_only=False, mmap=zipfile.is_zipfile(path))
        except Exception as err:  # noqa: BLE001 - whatever torch raises on a damaged file means "damaged"
            return f"{path.name} does not load ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
    return None


def newest_intact(ckpt_dir: Path, notes: Optional[list[str]] = None) -> Optional[str]:
    """The checkpoint to resume from: ``LATEST``'s if intact, else the newest older intact one (rank 0 only: it sets
    damaged ones aside as ``step_N.damaged`` and moves the pointers back).

    Args:
        ckpt_dir: the checkpoints directory.
        notes: receives one line per damaged checkpoint set aside (for the run log).

    Returns:
        The tag, or None when the directory holds no checkpoint and no pointer at all (a fresh run).

    Raises:
        CheckpointError: checkpoints exist but none is intact; the message names the fix.
    """
    pointer = (ckpt_dir / LATEST).read_text().strip() if (ckpt_dir / LATEST).is_file() else None
    tags = [t for t in reversed(step_tags(ckpt_dir)) if pointer is None or t <= pointer]
    if pointer is None and not tags:
        return None
    damaged = [] if pointer is None or pointer in tags else [f"{pointer}: missing"]
    for tag in tags:
        problem = verify_checkpoint(ckpt_dir, tag)
        if problem is None:
            for bad in damaged:
                name = bad.split(":")[0]
                if (ckpt_dir / name).is_dir():
                    os.replace(ckpt_dir / name, ckpt_dir / (name + DAMAGED_SUFFIX))
            if damaged:
                point_latest(ckpt_dir, tag)
                if notes is not None:
                    notes.append(
                        f"damaged checkpoint set aside ({'; '.join(damaged)}, renamed *{DAMAGED_SUFFIX}); "
                        f"resuming from the previous intact checkpoint {tag}"
                    )
            return tag
        damaged.append(f"{tag}: {problem}")
    raise CheckpointError(
        f"no intact checkpoint in {ckpt_dir} ({'; '.join(damaged)}); restore one from a backup, "
        f"or delete {ckpt_dir} to train from step 0"
    )


def resolve_resume(resume: str, run_dir: Path, notes: Optional[list[str]] = None) -> Optional[tuple[Path, str]]:
    """``--resume`` → (checkpoint dir, tag), or None when ``latest`` finds no checkpoint yet (rank 0 only).

    Accepts ``latest`` (this run), a run directory, a ``checkpoints`` directory or one checkpoint directory. For the
    first three a damaged newest checkpoint falls back to the previous intact one (:func:`newest_intact`); a named
    checkpoint directory must be intact.

    Raises:
        CheckpointError: nothing to resume from there, or only damaged checkpoints.
    """
    if resume == "latest":
        ckpt_dir = run_dir / "checkpoints"
        tag = newest_intact(ckpt_dir, notes)
        return (ckpt_dir, tag) if tag else None
    path = Path(resume)
    if (path / META_FILE).is_file():
        problem = verify_checkpoint(path.parent, path.name)
        if problem:
            raise CheckpointError(
                f"--resume {resume}: the checkpoint is damaged ({problem}); pass an older "
                f"{TAG_PREFIX}N directory or the run directory"
            )
        return path.parent, path.name
    for ckpt_dir in (path / "checkpoints", path):
        tag = newest_intact(ckpt_dir, notes) if ckpt_dir.is_dir() else None
        if tag:
            return ckpt_dir, tag
    raise CheckpointError(
        f"--resume {resume!r}: no complete checkpoint there (expected a run dir, its checkpoints/ "
        f"dir with {LATEST}, or a {TAG_PREFIX}N dir with {META_FILE})"
    )


def read_meta(ckpt_dir: Path, tag: str) -> dict:
    """The run facts saved with a checkpoint."""
    return json.loads((ckpt_dir / tag / META_FILE).read_text())


def check_compatible(meta: dict, current: dict) -> None:
    """Refuse a resume DeepSpeed would reject with an obscure message (docs/UPSTREAM.md D5, DeepSpeed #3810)."""
    if meta["world_size"] != current["world_size"]:
        raise CheckpointError(
            f"the checkpoint was written by {meta['world_size']} ranks and this run has "
            f"{current['world_size']}; resume with {meta['world_size']} ranks (or convert it with "
            f"DeepSpeed's ds_to_universal.py)"
        )
    if meta["zero_stage"] != current["zero_stage"]:
        raise CheckpointError(
            f"the checkpoint is ZeRO-{meta['zero_stage']} and the config "
            f"ZeRO-{current['zero_stage']}; resume with the same stage"
        )
    for key in ("model", "loss"):
        if meta[key] != current[key]:
            raise CheckpointError(f"the checkpoint was trained with --{key} {meta[key]}, not {current[key]}")
    for key, flag in (("workers", "--workers"), ("dataset_resampled", "--dataset-resampled")):
        if key in meta and meta[key] != current.get(key):  # both shape the data stream the resume fast-forwards
            raise CheckpointError(
                f"the checkpoint was trained with {flag} {meta[key]}, not {current.get(key)}; the "
                f"data stream (and so the resume position) depends on it"
            )
    if meta["param_groups"] != current["param_groups"]:
        raise CheckpointError(
            "the optimiser parameter groups differ from the checkpoint's (model overrides or "
            "requires_grad changed); resume with the same model flags"
        )


def load_checkpoint(engine: Any, ckpt_dir: Path, tag: str, *, rank: int) -> tuple[TrainState, dict]:
    """Load module, optimiser and per-rank state; returns the train state and this rank's RNG state (to restore
    once the data pipeline has been fast-forwarded)."""
    path, client = engine.load_checkpoint(
        str(ckpt_dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=False
    )
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
        raise CheckpointError(
            f"consolidated weights do not match the model: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]} (was the run trained with other model flags?)"
        )
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
    logging.info(
        f"Resuming from {ckpt}: step {ts['step']}, epoch {ts['epoch']}, batch {ts['step_in_epoch']}/"
        f"{ts['steps_per_epoch']} of the epoch"
    )
