"""One reader of a training run's folder, whichever trainer wrote it: ``open_clip train`` or the DeepSpeed trainer.

A run folder ``<logs>/<name>/`` holds:

- ``params.txt``: ``key: value`` lines (open_clip_train writes every argument; so does
  ``uniclip_plugin.ds.train.write_params``);
- ``command.json``: the training command as a JSON list (written by the study before it starts a run);
- ``checkpoints/epoch_<N>.pt`` (and ``epoch_latest.pt`` with ``--save-most-recent``), or the DeepSpeed trainer's
  sharded ``checkpoints/<tag>/`` with its ``export/*.pt`` consolidations;
- ``checkpoints/results.jsonl``: open_clip_train's validation metrics, one JSON line per evaluated epoch;
- ``out.log``: the training log; ``metrics.jsonl``: the DeepSpeed trainer's per-step log (``{"step", "loss", ...}``)
  with ``ds_config.json`` beside it.

Run names: ``<method>-seed<N>`` (the study writes them, :func:`run_name`), ``<method>-s<N>`` is read too
(:func:`parse_run_name`); runs of one method are aggregated by the benchmark.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional, Union

from uniclip_plugin.io import write_text_atomic

__all__ = ["RunDir", "run_name", "parse_run_name"]

_SEED_SUFFIX = re.compile(r"-(?:seed|s)(\d+)$")
_NUMBERED = re.compile(r"epoch_\d+\.pt")
_METRIC = re.compile(r"(\w+): ([-+]?(?:\d+\.?\d*(?:e[-+]?\d+)?|nan|inf))")  # train_hooks' "name: %.4g" fields
EPOCH_TIMES = "epoch_times.json"  # {epoch: save time} of checkpoints removed by RunDir.prune_checkpoints
# open_clip_train (train.py, v3.3.0): "Train Epoch: 0 [ 256/1024 (25%)] Data (t): ... Loss: 4.1234 (4.2000)"; the
# DeepSpeed trainer logs the same prefix. Per-term losses are logged as "Contrastive_loss: ..." and the total as
# "Loss: ..."; values use the "#.5g" format, which can be exponential or nan/inf.
_TRAIN_LINE = re.compile(
    r"Train Epoch: (\d+) \[\s*(\d+)/(\d+)[^\]]*\].* Loss: "  # greedy: the last " Loss: "
    r"([-+]?(?:\d+\.?\d*(?:e[-+]?\d+)?|nan|inf))"
)


def run_name(method: str, seed: int, lr: Optional[float] = None) -> str:
    """The folder name of a study run: ``<method>-seed<N>``, or ``<method>-lr<lr>-seed<N>`` for an lr-search run.

    Args:
        method: the method's name (``uniclip``, ``clip-aug``, ...).
        seed: the training seed.
        lr: the learning rate of an lr-search run, or None.

    Returns:
        The run name.
    """
    return f"{method}-seed{seed}" if lr is None else f"{method}-lr{lr:g}-seed{seed}"


def parse_run_name(name: str) -> tuple[str, Optional[int]]:
    """Split a run name into its method and seed: ``uniclip-seed3`` / ``uniclip-s3`` → ``("uniclip", 3)``.

    Args:
        name: a run folder's name (or a name given on the benchmark's command line).

    Returns:
        ``(method, seed)``; a name without a seed suffix is its own method, with seed None.
    """
    m = _SEED_SUFFIX.search(name)
    return (name[: m.start()], int(m[1])) if m else (name, None)


def _last_int(path: Path) -> int:
    nums = re.findall(r"\d+", path.stem)
    return int(nums[-1]) if nums else -1


def _checkpoint_epoch(path: Path) -> Optional[int]:
    """The ``epoch`` stored in an open_clip_train checkpoint, read through mmap (no tensor data is loaded)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(state["epoch"]) if isinstance(state, dict) and "epoch" in state else None
    except Exception:  # noqa: BLE001 (any unreadable file simply has no known epoch)
        return None


class RunDir:
    """A run folder of ``open_clip train`` or of the DeepSpeed trainer (see the module docstring for its files).

    Attributes:
        path: the folder.
        name: its name (the run name).
        method: the method the run belongs to (the name without its ``-seed<N>`` / ``-s<N>`` suffix).
        seed: the seed in the name, or None.
    """

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)
        self.name = self.path.name
        self.method, self.seed = parse_run_name(self.name)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ------------------------------------------------------------------------------------------------- settings
    def params(self) -> dict[str, str]:
        """``params.txt`` as ``{key: value}`` (both stripped; the first line of a key wins); empty when absent."""
        path = self.path / "params.txt"
        values: dict[str, str] = {}
        if path.is_file():
            for line in path.read_text(errors="replace").splitlines():
                key, sep, value = line.partition(":")
                if sep and key.strip():
                    values.setdefault(key.strip(), value.strip())
        return values

    def model_name(self) -> Optional[str]:
        """The open_clip model config the run trained (``params.txt`` line ``model: NAME``), or None."""
        return self.params().get("model") or None

    def command(self) -> Optional[list[str]]:
        """The training command recorded in ``command.json`` (the study writes it), or None."""
        path = self.path / "command.json"
        return list(json.loads(path.read_text())) if path.is_file() else None

    # ---------------------------------------------------------------------------------------------- checkpoints
    def epoch_checkpoint(self, epoch: int) -> Path:
        """Where open_clip_train saves epoch ``epoch`` (``checkpoints/epoch_<N>.pt``; it may not exist)."""
        return self.path / "checkpoints" / f"epoch_{epoch}.pt"

    def checkpoints(self) -> list[Path]:
        """Every checkpoint file in epoch order: open_clip_train's ``checkpoints/epoch_<N>.pt`` by N, then the
        DeepSpeed trainer's ``export/*.pt`` (by the last number in the name, then mtime).

        ``epoch_latest.pt`` is a copy of the newest epoch under another name, so it is not listed (see
        :meth:`latest_checkpoint`); neither are the DeepSpeed trainer's sharded checkpoints (export them first).
        """
        numbered = [p for p in self.path.glob("checkpoints/epoch_*.pt") if _NUMBERED.fullmatch(p.name)]
        exports = [p for p in self.path.glob("export/*.pt") if p.is_file()]
        return sorted(numbered, key=_last_int) + sorted(exports, key=lambda p: (_last_int(p), p.stat().st_mtime))

    def latest_checkpoint(self) -> Optional[Path]:
        """The newest checkpoint: ``checkpoints/epoch_<max N>.pt``, or ``epoch_latest.pt`` when it holds a later
        epoch (``--save-most-recent`` with ``--save-frequency`` > 1), or else the DeepSpeed trainer's newest
        ``export/*.pt``. With both layouts, the newer file wins. None when the run has no checkpoint file.
        """
        candidates = []
        numbered = [p for p in self.path.glob("checkpoints/epoch_*.pt") if _NUMBERED.fullmatch(p.name)]
        best = max(numbered, key=_last_int, default=None)
        latest = self.path / "checkpoints" / "epoch_latest.pt"
        if latest.is_file():
            latest_epoch = _checkpoint_epoch(latest)
            if best is None or (latest_epoch is not None and latest_epoch > _last_int(best)):
                best = latest
        if best is not None:
            candidates.append(best)
        exports = [p for p in self.path.glob("export/*.pt") if p.is_file()]
        if exports:
            candidates.append(max(exports, key=lambda p: (_last_int(p), p.stat().st_mtime)))
        return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None

    def prune_checkpoints(self, keep: set[int]) -> list[Path]:
        """Delete the numbered epoch checkpoints whose epoch is not in ``keep``; returns the deleted paths.

        Each checkpoint's save time goes to ``checkpoints/epoch_times.json`` first (atomically), so
        :meth:`val_curve` keeps its wall-clock axis: a 40-epoch run is 1.6 GB of checkpoints, a study dozens of runs.
        """
        doomed = [p for p in self.checkpoints() if p.parent.name == "checkpoints" and _last_int(p) not in keep]
        if not doomed:
            return []
        times = {**self._epoch_times(), **{str(_last_int(p)): p.stat().st_mtime for p in self.checkpoints()}}
        write_text_atomic(self.path / "checkpoints" / EPOCH_TIMES, json.dumps(times, sort_keys=True))
        for path in doomed:
            path.unlink()
        return doomed

    def _epoch_times(self) -> dict[str, float]:
        path = self.path / "checkpoints" / EPOCH_TIMES
        return json.loads(path.read_text()) if path.is_file() else {}

    def has_sharded_checkpoint(self) -> bool:
        """Whether the DeepSpeed trainer left a sharded checkpoint (``checkpoints/LATEST``), exported or not."""
        return (self.path / "checkpoints" / "LATEST").is_file()

    # --------------------------------------------------------------------------------------------------- curves
    def val_curve(self, steps_per_epoch: int, start: Optional[float]) -> list[dict[str, float]]:
        """Per-epoch validation points from open_clip_train's ``checkpoints/results.jsonl``.

        Args:
            steps_per_epoch: optimiser steps per epoch (``step`` = epoch × this).
            start: the wall-clock time (``time.time()``) training started, or None when unknown.

        Returns:
            ``[{"epoch", "step", "seconds", "val_r1", "val_i2t_r1", "val_t2i_r1", "val_loss"}]`` sorted by epoch;
            ``val_r1`` is the mean of image→text and text→image R@1 in %; ``seconds`` is the wall-clock from
            ``start`` to the epoch's checkpoint (nan without a start, e.g. a resumed run; 0 at epoch 0). A repeated
            epoch (a resumed run appends) keeps its last line.
        """
        path = self.path / "checkpoints" / "results.jsonl"
        points: dict[int, dict[str, float]] = {}
        if not path.is_file():
            return []
        saved = self._epoch_times()  # save times of pruned checkpoints
        for line in path.read_text().splitlines():
            m = json.loads(line) if line.strip() else {}
            if "image_to_text_R@1" not in m:
                continue
            epoch = int(m["epoch"])
            ckpt = self.epoch_checkpoint(epoch)
            saved_at = ckpt.stat().st_mtime if ckpt.is_file() else saved.get(str(epoch))
            if start is not None and saved_at is not None:
                seconds = saved_at - start
            else:
                seconds = 0.0 if epoch == 0 else float("nan")
            i2t, t2i = 100 * float(m["image_to_text_R@1"]), 100 * float(m["text_to_image_R@1"])
            points[epoch] = {
                "epoch": epoch,
                "step": epoch * steps_per_epoch,
                "seconds": seconds,
                "val_r1": (i2t + t2i) / 2,
                "val_i2t_r1": i2t,
                "val_t2i_r1": t2i,
                "val_loss": float(m.get("clip_val_loss", float("nan"))),
            }
        return [points[e] for e in sorted(points)]

    def loss_curve(self) -> list[tuple[int, float]]:
        """(samples seen, total training loss) points, sorted by samples seen; empty when the run logged none.

        A DeepSpeed run is read from its ``metrics.jsonl`` (every step; samples = step × the samples one step
        consumes, from ``ds_config.json``); an open_clip_train run from the ``Train Epoch`` lines of ``out.log``
        (samples = epoch × samples per epoch + samples within the epoch). A resumed run appends to the same files,
        so a repeated step keeps its last value.
        """
        per_step = self._samples_per_step()
        if per_step is not None:
            return self._metrics_curve(per_step)
        points: dict[int, float] = {}
        for line in self._log_lines():
            m = _TRAIN_LINE.search(line)
            if m:
                epoch, seen, per_epoch, loss = int(m[1]), int(m[2]), int(m[3]), float(m[4])
                points[epoch * per_epoch + seen] = loss
        return sorted(points.items())

    def step_seconds(self, field: str = "Batch") -> list[float]:
        """open_clip_train's logged ``Batch (t)`` values (seconds of the logged step, data wait included), or with
        ``field="Data"`` its ``Data (t)`` values (the wait for the loader), in log order; empty without ``out.log``."""
        return [float(v) for line in self._log_lines() for v in re.findall(field + r" \(t\): ([0-9.]+)", line)]

    def loss_metrics(self, last: int = 20) -> dict[str, float]:
        """The loss's own metrics (``Loss metrics: name: value ...`` lines of ``out.log``, logged with every training
        line: per-group MP-NCE loss and positive probability, learned scales), averaged over the last ``last`` lines
        (a mean over the end of training, not one batch); empty when the run logged none."""
        rows = [dict(_METRIC.findall(line)) for line in self._log_lines() if "Loss metrics: " in line][-last:]
        names = [k for k in rows[-1]] if rows else []
        return {k: sum(float(r[k]) for r in rows if k in r) / sum(k in r for r in rows) for k in names}

    def last_train_point(self) -> Optional[dict[str, float]]:
        """The last ``Train Epoch`` line of ``out.log`` (progress of a run that may still be training).

        Only the log's tail is read, so polling a long run's growing log stays cheap.

        Returns:
            ``{"epoch", "seen", "per_epoch", "loss"}`` (epoch counted from 0, samples seen within it, samples per
            epoch, the logged total loss), or None when no training line was logged yet.
        """
        log = self.path / "out.log"
        if not log.is_file():
            return None
        with open(log, "rb") as f:
            f.seek(max(0, log.stat().st_size - 65536))  # ~300 log lines: always more than one logging interval
            lines = f.read().decode(errors="replace").splitlines()
        for line in reversed(lines):
            m = _TRAIN_LINE.search(line)
            if m:
                return {"epoch": int(m[1]), "seen": int(m[2]), "per_epoch": int(m[3]), "loss": float(m[4])}
        return None

    # -------------------------------------------------------------------------------------------------- helpers
    def _log_lines(self) -> list[str]:
        log = self.path / "out.log"
        return log.read_text(errors="replace").splitlines() if log.is_file() else []

    def _samples_per_step(self) -> Optional[int]:
        """Samples one DeepSpeed step consumes (micro batch × ranks = global batch / accumulation), or None when
        this is not a DeepSpeed run with a ``metrics.jsonl``."""
        metrics, config = self.path / "metrics.jsonl", self.path / "ds_config.json"
        if not (metrics.is_file() and config.is_file()):
            return None
        try:
            cfg = json.loads(config.read_text())
            return int(cfg["train_batch_size"]) // int(cfg.get("gradient_accumulation_steps", 1) or 1)
        except (ValueError, KeyError, TypeError):
            return None  # an unresolved ("auto") config: fall back to the log

    def _metrics_curve(self, per_step: int) -> list[tuple[int, float]]:
        points: dict[int, float] = {}
        for line in (self.path / "metrics.jsonl").read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a killed run
            if isinstance(record, dict) and "step" in record and "loss" in record:
                points[int(record["step"]) * per_step] = float(record["loss"])
        return sorted(points.items())
