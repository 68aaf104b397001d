"""Every upstream fix of the plugin, one function per bug (docs/UPSTREAM.md: E1–E6 and "Other fixes").

Each function is idempotent, names the upstream reference, and has a test in ``tests/test_compat.py`` that fails
without it (the sample shuffle also in ``tests/test_shuffle.py``, truncated shards in ``tests/test_faults_data.py``,
webdataset 0.2.86 / 1.0.x in ``tests/test_webdataset_compat.py``). ``apply_all()`` applies them all;
``uniclip_plugin.register()`` calls it. The DeepSpeed pitfalls D1–D6 are handled in ``uniclip_plugin/ds/`` and the
plugin models, not here.

The plugin's other hooks into upstream, so the whole patch list reads in one place:

* ``uniclip_plugin/factory.py`` ``install()``: rebinds ``open_clip.create_model`` and ``open_clip.factory.create_model``
  (so ``create_model_and_transforms`` / ``create_model_from_pretrained`` and open_clip_train use it: plugin classes for
  configs with a ``uniclip_cfg``/``slip_cfg``/``declip_cfg`` marker, open_clip's own otherwise) and adds the plugin
  model configs (``open_clip.add_model_config``). open_clip 3.3.0 hard-wires the model class and has no plugin hook.
* ``uniclip_plugin/integration.py`` ``install_open_clip_train_hooks()``: rebinds ``open_clip_train.main.create_loss``,
  ``get_tokenizer`` (methods that wrap the tokenizer: DeCLIP's EDA) and ``create_model_and_transforms`` for one
  ``open_clip train`` run (open_clip_train has no loss registry).
* ``uniclip_plugin/train_hooks.py`` ``NonFiniteGuard.install()``: a global optimizer step pre-hook
  (``torch.optim.optimizer.register_optimizer_step_pre_hook``) that stops before a step with a non-finite loss or
  gradient; installed by ``open_clip train`` only.
* ``uniclip_plugin/bench_cli.py``: adds ``uniclip`` to clip_benchmark's ``models.TYPE2FUNC``/``MODEL_TYPES`` and sets
  ``sys.argv`` for clip_benchmark's CLI while it runs (restored afterwards); ``uniclip-benchmark`` only.

``import uniclip_plugin`` applies none of this. ``uniclip_plugin.register()`` (idempotent) applies ``apply_all()`` and
``factory.install()``; every console script calls it at start, and the package's model functions
(``uniclip_plugin.create_model`` etc.) on first use. The ``open_clip train`` and ``uniclip-benchmark`` hooks are
installed by those commands.
"""

from __future__ import annotations

import importlib
import os
import random
import threading
import types
from typing import Any, Callable

import torch

from .errors import PluginError

_APPLIED: set[str] = set()
_LOCK = threading.Lock()

# The upstream objects each fix replaced, so tests can show the upstream failure next to the fix.
UPSTREAM: dict[str, Any] = {}
# Counters of samples the training data pipeline skipped (per process; each dataloader worker logs its own).
SKIPPED_SAMPLES: dict[str, int] = {"corrupt": 0, "empty_caption": 0, "incomplete": 0, "shard_read_error": 0}


def _once(name: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    def deco(fn: Callable[[], None]) -> Callable[[], None]:
        def wrapper() -> None:
            with _LOCK:
                if name in _APPLIED:
                    return
                fn()
                _APPLIED.add(name)

        wrapper.__name__ = fn.__name__
        wrapper.__doc__ = fn.__doc__
        return wrapper

    return deco


def check_training_dependencies() -> None:
    """E1/E2: open_clip_train imports pandas and clip_benchmark imports requests without declaring them.

    Both are dependencies of this package; this check turns a deep ImportError into a one-line fix.
    """
    missing = [m for m in ("pandas", "requests") if importlib.util.find_spec(m) is None]
    if missing:
        raise PluginError(
            f"missing Python packages {missing}: open_clip_train / clip_benchmark import them; "
            f"run `pip install {' '.join(missing)}` (or reinstall uniclip-plugin)"
        )


def wds_has_end_of_shard_marker() -> bool:
    """Whether the installed webdataset yields end-of-shard markers (E3): ≥ 0.2.87 does, 0.2.86 does not.

    Feature-detected (``tar_file_expander`` has an ``eof_value`` argument) rather than read from the version string.
    """
    import inspect

    from webdataset.tariterators import tar_file_expander

    return "eof_value" in inspect.signature(tar_file_expander).parameters


@_once("wds_eof_value")
def fix_wds_end_of_shard_marker() -> None:
    """E3 (open_clip #935): webdataset ≥ 0.2.87 yields ``{}`` at the end of each shard and open_clip_train's
    ``group_by_keys_nothrow`` fails with ``KeyError: 'fname'`` on the first batch. Re-bind the module global that
    ``get_wds_dataset`` looks up with a copy passing ``eof_value=None`` (the fix proposed upstream).

    webdataset 0.2.86 (what ``open_clip_torch[training]`` allows) has no marker and no ``eof_value`` argument; the
    copy then calls ``tar_file_expander`` as upstream does. It is installed with both versions because it also
    looks the error handler up at call time: upstream's default argument binds the original ``log_and_continue``
    when ``data.py`` is imported, so shard read errors escaped ``count_skipped_samples``.
    """
    import open_clip_train.data as octd
    from webdataset.tariterators import tar_file_expander, url_opener

    eof_kwargs = {"eof_value": None} if wds_has_end_of_shard_marker() else {}

    def tarfile_to_samples_nothrow(src: Any, handler: Callable | None = None) -> Any:
        handler = handler or octd.log_and_continue  # the counting handler once count_skipped_samples ran
        streams = url_opener(src, handler=handler)
        files = tar_file_expander(streams, handler=handler, **eof_kwargs)
        return octd.group_by_keys_nothrow(files, handler=handler)

    UPSTREAM["tarfile_to_samples_nothrow"] = octd.tarfile_to_samples_nothrow
    octd.tarfile_to_samples_nothrow = tarfile_to_samples_nothrow


def _is_shard_read_error(exn: BaseException) -> bool:
    import tarfile

    return isinstance(exn, (tarfile.TarError, EOFError))


@_once("count_skipped_samples")
def count_skipped_samples() -> None:
    """open_clip_train keeps samples with an empty caption (``filter_no_caption_or_no_image`` only checks that the
    key exists) and drops undecodable images, unreadable shard tails and incomplete samples with a log line or
    silently, but with no count. Skip empty captions too, and count every kind in ``SKIPPED_SAMPLES`` so a data
    problem is visible rather than silent: ``corrupt`` (a sample that failed to decode), ``empty_caption``,
    ``incomplete`` (no image or no caption, e.g. a sample cut by a truncated shard) and ``shard_read_error`` (a
    truncated or damaged tar: the rest of that shard is skipped in this pass; tarfile reports a cut inside a member
    twice, once for the member and once for the next header)."""
    import logging

    import open_clip_train.data as octd

    original_filter = octd.filter_no_caption_or_no_image

    def filter_no_caption_or_no_image(sample: dict) -> bool:
        if not original_filter(sample):
            SKIPPED_SAMPLES["incomplete"] += 1
            logging.warning(
                f"Skipping sample {sample.get('__key__')} without an image or a caption (members "
                f"{sorted(k for k in sample if not k.startswith('__'))}; skipped so far in this worker: "
                f"{SKIPPED_SAMPLES})"
            )
            return False
        text = sample["txt"]
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        if not text.strip():
            SKIPPED_SAMPLES["empty_caption"] += 1
            logging.warning(
                f"Skipping sample {sample.get('__key__')} with an empty caption "
                f"(skipped so far in this worker: {SKIPPED_SAMPLES})"
            )
            return False
        return True

    def log_and_continue(exn: BaseException) -> bool:
        if _is_shard_read_error(exn):
            SKIPPED_SAMPLES["shard_read_error"] += 1
            logging.warning(
                f"Shard read error ({exn!r}): skipping the rest of the shard "
                f"(skipped so far in this worker: {SKIPPED_SAMPLES})"
            )
            return True
        SKIPPED_SAMPLES["corrupt"] += 1
        logging.warning(
            f"Handling webdataset error ({exn!r}). Skipping the sample "
            f"(skipped so far in this worker: {SKIPPED_SAMPLES})"
        )
        return True

    UPSTREAM["filter_no_caption_or_no_image"] = original_filter
    UPSTREAM["log_and_continue"] = octd.log_and_continue
    octd.filter_no_caption_or_no_image = filter_no_caption_or_no_image
    octd.log_and_continue = log_and_continue


def _accuracy_fixed(output: torch.Tensor, target: torch.Tensor, topk: tuple = (1,)) -> list:
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum().item() for k in topk]


@_once("numpy24_accuracy")
def fix_numpy24_accuracy() -> None:
    """E4: numpy 2.4 refuses ``float()`` of a shape-(1,) array; clip_benchmark's and open_clip_train's ``accuracy``
    do exactly that. Replace all three bindings with a ``.sum().item()`` version (same values)."""
    import open_clip_train.zero_shot as ozs

    UPSTREAM["open_clip_train.zero_shot.accuracy"] = ozs.accuracy
    ozs.accuracy = _accuracy_fixed
    try:
        import clip_benchmark.metrics.linear_probe as lp
        import clip_benchmark.metrics.zeroshot_classification as zc
    except ImportError:  # clip_benchmark is an optional (bench) dependency
        return

    def accuracy(output: torch.Tensor, target: torch.Tensor, topk: tuple = (1,)) -> list:
        return [v / len(target) for v in _accuracy_fixed(output, target, topk)]

    UPSTREAM["clip_benchmark.accuracy"] = zc.accuracy
    zc.accuracy = accuracy
    lp.accuracy = accuracy


class CPUFriendlyDDP(torch.nn.parallel.DistributedDataParallel):
    """DDP that drops ``device_ids``/``output_device`` for CPU modules, which torch rejects (E5)."""

    def __init__(self, module: torch.nn.Module, device_ids: Any = None, output_device: Any = None, **kwargs: Any):
        on_cpu = all(p.device.type == "cpu" for p in module.parameters())
        if on_cpu:
            device_ids, output_device = None, None
        super().__init__(module, device_ids=device_ids, output_device=output_device, **kwargs)


@_once("cpu_ddp_device_ids")
def fix_cpu_ddp_device_ids() -> None:
    """E5: ``open_clip_train/main.py:302`` passes ``device_ids=[device]`` also for CPU modules, so multi-process CPU
    (gloo) training crashes. main.py looks the class up as ``torch.nn.parallel.DistributedDataParallel`` at call
    time; a subclass keeps ``isinstance`` checks (``unwrap_model``) working."""
    UPSTREAM["DistributedDataParallel"] = torch.nn.parallel.DistributedDataParallel
    torch.nn.parallel.DistributedDataParallel = CPUFriendlyDDP  # type: ignore[misc]


def strip_torchrun_separator(argv: list[str]) -> list[str]:
    """E6: ``torchrun script.py --logs X`` fails (``--logs`` is an abbreviation of torchrun's ``--logs-specs``), so
    users write ``torchrun $(which open_clip) -- train --logs X``. Depending on the launcher the ``--`` may reach
    the script; drop a leading one."""
    return argv[1:] if argv and argv[0] == "--" else argv


@_once("atomic_checkpoints")
def fix_atomic_checkpoints() -> None:
    """open_clip_train writes ``epoch_N.pt`` with a bare ``torch.save``: a crash mid-write leaves a truncated file
    that ``--resume latest`` then picks up. Give ``open_clip_train.main`` a ``torch`` whose ``save`` is
    :func:`uniclip_plugin.io.atomic_torch_save` (other attributes are torch's own): it writes a file of the final
    name in a temp folder and renames it, so the archive's top folder is ``epoch_N/`` and the mode follows the
    umask, as with a plain ``torch.save``; a failed write leaves the previous file and raises."""
    import open_clip_train.main as ocm

    from .io import atomic_torch_save

    UPSTREAM["open_clip_train.main.torch"] = ocm.torch
    proxy = _TorchWithAtomicSave("torch")
    proxy.save = atomic_torch_save  # type: ignore[attr-defined]
    ocm.torch = proxy


class _TorchWithAtomicSave(types.ModuleType):
    """Module proxy: every attribute is torch's, except ``save``."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


class _WebdatasetWithSeededShuffle(types.ModuleType):
    """Module proxy: every attribute is webdataset's, except ``shuffle``."""

    def __getattr__(self, name: str) -> Any:
        import webdataset

        return getattr(webdataset, name)


class EpochSeededShuffle:
    """The train pipeline's sample shuffle, seeded from (``--seed``, epoch, rank, dataloader worker).

    ``get_wds_dataset`` builds it unbound; :func:`fix_unseeded_sample_shuffle` binds the run's seed, rank and the
    ``SharedEpoch`` the training loop sets (``data["train"].set_epoch``). The epoch is read when a pass over the
    data starts, so persistent dataloader workers (open_clip_train's default with ``--workers > 0``) get a new
    order each epoch. Unbound (used outside ``get_wds_dataset``) it falls back to the dataloader worker's seed.
    """

    def __init__(self, bufsize: int = 1000, initial: int = 100, **_: Any) -> None:
        self.bufsize, self.initial = bufsize, initial
        self.seed: int | None = None
        self.rank = 0
        self.epoch: Any = None  # open_clip_train's SharedEpoch (or an int)

    def bind(self, seed: int, rank: int, epoch: Any) -> None:
        """Seed every later pass from ``seed``, ``rank`` and ``epoch`` (a ``SharedEpoch`` or an int)."""
        self.seed, self.rank, self.epoch = seed, rank, epoch

    def rng(self) -> random.Random:
        """The generator of one pass: no torch RNG state enters it, so a fresh (or resumed) loader repeats it."""
        import open_clip_train.data as octd
        from torch.utils.data import get_worker_info

        if self.seed is None:
            return random.Random(octd.pytorch_worker_seed())
        epoch = self.epoch.get_value() if hasattr(self.epoch, "get_value") else int(self.epoch)
        worker = get_worker_info()
        worker_id = worker.id if worker is not None else 0
        # a str seed is hashed with SHA-512 by random.seed: stable across processes and PYTHONHASHSEED
        return random.Random(f"uniclip-sample-shuffle/{self.seed}/{epoch}/{self.rank}/{worker_id}")

    def __call__(self, src: Any) -> Any:
        from webdataset.filters import _shuffle

        # rng= works with webdataset 0.2.86 (which has no seed= argument) and 1.0.x alike
        return _shuffle(src, self.bufsize, self.initial, rng=self.rng())


def _global_rank(args: Any) -> int:
    """open_clip_train's ``args.rank``; callers whose namespace lacks it (the DeepSpeed trainer) get the process
    group's rank, else torchrun's ``RANK``, so that ranks never share a shuffle seed."""
    if getattr(args, "rank", None) is not None:
        return int(args.rank)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", 0))


def _shuffle_stages(loader: Any) -> list[EpochSeededShuffle]:
    """The EpochSeededShuffle stages of a WebLoader (a DataPipeline around a DataLoader around a DataPipeline)."""
    found, todo = [], [loader]
    while todo:
        obj = todo.pop()
        if isinstance(obj, EpochSeededShuffle):
            found.append(obj)
        todo.extend(getattr(obj, "pipeline", None) or [])
        if isinstance(obj, torch.utils.data.DataLoader):
            todo.append(obj.dataset)
    return found


@_once("seeded_sample_shuffle")
def fix_unseeded_sample_shuffle() -> None:
    """open_clip #734/#776: the train pipeline's sample shuffle (``data.py:378``, ``wds.shuffle``) seeds itself from
    pid and time, so ``--seed`` does not make runs repeatable. Seeding it from the dataloader worker's seed is not
    enough: open_clip_train keeps workers alive across epochs (``persistent_workers``), so a worker reading the same
    shards in two epochs would repeat its order. Like the shard shuffle (``detshuffle2``: seed + ``SharedEpoch``),
    seed each pass from ``--seed``, the epoch, the rank and the worker id (:class:`EpochSeededShuffle`), bound to
    the dataset's ``SharedEpoch`` by a wrapper of ``get_wds_dataset`` (looked up by ``get_dataset_fn`` at call
    time)."""
    import open_clip_train.data as octd

    original = octd.get_wds_dataset

    def get_wds_dataset(args: Any, *rest: Any, **kwargs: Any) -> Any:
        info = original(args, *rest, **kwargs)
        for stage in _shuffle_stages(info.dataloader):
            stage.bind(int(getattr(args, "seed", 0)), _global_rank(args), info.shared_epoch)
        return info

    proxy = _WebdatasetWithSeededShuffle("webdataset")
    proxy.shuffle = EpochSeededShuffle  # type: ignore[attr-defined]
    UPSTREAM["open_clip_train.data.wds"] = octd.wds
    UPSTREAM["get_wds_dataset"] = original
    octd.wds = proxy
    octd.get_wds_dataset = get_wds_dataset


def apply_all() -> None:
    """Apply every fix (idempotent)."""
    check_training_dependencies()
    fix_wds_end_of_shard_marker()
    count_skipped_samples()
    fix_numpy24_accuracy()
    fix_cpu_ddp_device_ids()
    fix_atomic_checkpoints()
    fix_unseeded_sample_shuffle()


def applied() -> frozenset[str]:
    return frozenset(_APPLIED)


__all__ = ["apply_all", "applied", "SKIPPED_SAMPLES", "CPUFriendlyDDP", "strip_torchrun_separator"]
