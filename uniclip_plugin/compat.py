"""Every upstream fix of the plugin, one function per bug (docs/UPSTREAM.md: E1–E6 and "Other fixes").

Each function is idempotent, names the upstream reference, and has a test in ``tests/test_compat.py`` that fails
without it. ``apply_all()`` applies them all; ``uniclip_plugin.register()`` calls it. The DeepSpeed pitfalls D1–D6
are handled in ``uniclip_plugin/ds/`` and the plugin models, not here.

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
import tempfile
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
SKIPPED_SAMPLES: dict[str, int] = {"corrupt": 0, "empty_caption": 0}


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
        raise PluginError(f"missing Python packages {missing}: open_clip_train / clip_benchmark import them; "
                          f"run `pip install {' '.join(missing)}` (or reinstall uniclip-plugin)")


@_once("wds_eof_value")
def fix_wds_end_of_shard_marker() -> None:
    """E3 (open_clip #935): webdataset ≥ 0.2.87 yields ``{}`` at the end of each shard and open_clip_train's
    ``group_by_keys_nothrow`` fails with ``KeyError: 'fname'`` on the first batch. Re-bind the module global that
    ``get_wds_dataset`` looks up with a copy passing ``eof_value=None`` (the fix proposed upstream)."""
    import open_clip_train.data as octd
    from webdataset.tariterators import tar_file_expander, url_opener

    def tarfile_to_samples_nothrow(src: Any, handler: Callable = octd.log_and_continue) -> Any:
        streams = url_opener(src, handler=handler)
        files = tar_file_expander(streams, handler=handler, eof_value=None)
        return octd.group_by_keys_nothrow(files, handler=handler)

    UPSTREAM["tarfile_to_samples_nothrow"] = octd.tarfile_to_samples_nothrow
    octd.tarfile_to_samples_nothrow = tarfile_to_samples_nothrow


@_once("count_skipped_samples")
def count_skipped_samples() -> None:
    """open_clip_train keeps samples with an empty caption (``filter_no_caption_or_no_image`` only checks that the
    key exists) and drops undecodable images with a log line but no count. Skip empty captions too, and count both
    in ``SKIPPED_SAMPLES`` so a data problem is visible rather than silent."""
    import logging

    import open_clip_train.data as octd
    original_filter = octd.filter_no_caption_or_no_image

    def filter_no_caption_or_no_image(sample: dict) -> bool:
        if not original_filter(sample):
            return False
        text = sample["txt"]
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        if not text.strip():
            SKIPPED_SAMPLES["empty_caption"] += 1
            logging.warning(f"Skipping sample {sample.get('__key__')} with an empty caption "
                            f"(skipped so far in this worker: {SKIPPED_SAMPLES})")
            return False
        return True

    def log_and_continue(exn: BaseException) -> bool:
        SKIPPED_SAMPLES["corrupt"] += 1
        logging.warning(f"Handling webdataset error ({exn!r}). Skipping the sample "
                        f"(skipped so far in this worker: {SKIPPED_SAMPLES})")
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


def _atomic_torch_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
    if not isinstance(f, (str, os.PathLike)):
        return torch.save(obj, f, *args, **kwargs)
    path = os.fspath(f)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-", suffix=".pt")
    os.close(fd)
    try:
        torch.save(obj, tmp, *args, **kwargs)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


@_once("atomic_checkpoints")
def fix_atomic_checkpoints() -> None:
    """open_clip_train writes ``epoch_N.pt`` with a bare ``torch.save``: a crash mid-write leaves a truncated file
    that ``--resume latest`` then picks up. Give ``open_clip_train.main`` a ``torch`` whose ``save`` writes a temp
    file and renames it (other attributes are torch's own)."""
    import open_clip_train.main as ocm
    UPSTREAM["open_clip_train.main.torch"] = ocm.torch
    proxy = _TorchWithAtomicSave("torch")
    proxy.save = _atomic_torch_save  # type: ignore[attr-defined]
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


@_once("seeded_sample_shuffle")
def fix_unseeded_sample_shuffle() -> None:
    """open_clip #734/#776: the train pipeline's sample shuffle (``data.py:378``, ``wds.shuffle``) seeds itself from
    pid and time, so ``--seed`` does not make runs repeatable. Seed it from the dataloader worker's seed, which
    torch derives from ``--seed``, the rank (``random_seed(seed, rank)``), the epoch's iterator and the worker id."""
    import open_clip_train.data as octd
    import webdataset
    from webdataset.filters import _shuffle

    def seeded_shuffle(data: Any, bufsize: int = 1000, initial: int = 100, **_: Any) -> Any:
        return _shuffle(data, bufsize, initial, seed=octd.pytorch_worker_seed())

    proxy = _WebdatasetWithSeededShuffle("webdataset")
    proxy.shuffle = webdataset.pipelinefilter(seeded_shuffle)  # type: ignore[attr-defined]
    UPSTREAM["open_clip_train.data.wds"] = octd.wds
    octd.wds = proxy


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
