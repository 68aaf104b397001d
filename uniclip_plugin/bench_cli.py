"""``uniclip-benchmark``: clip_benchmark's CLI with the plugin registered in the same process.

    uniclip-benchmark eval --model_type uniclip --model UniCLIP-Tiny-64 --pretrained ckpt.pt \\
        --dataset wds/fmnist --dataset_root data/wds/fmnist --num_workers 1 --output result.json
    uniclip-benchmark build results/*.json --output benchmark.csv

Stock ``clip_benchmark`` runs in a fresh process that never imports the plugin (CLIP_benchmark #144), so plugin
configs are unknown there. This entry point registers the plugin, adds ``--model_type uniclip`` (clip_benchmark's
documented route for new model types: a ``TYPE2FUNC`` entry, PR #50) and runs clip_benchmark's own ``main``. The
plugin's registration also applies the numpy-2.4 ``accuracy`` fix (docs/UPSTREAM.md E4) that zero-shot needs.

One difference from stock ``clip_benchmark``: on a machine without CUDA, ``eval`` runs in fp32 (``--no_amp`` is
added), because clip_benchmark's default ``amp`` means bf16 autocast on CPU, which is slow there and gives different
numbers from ``harness/bench.py`` (fp32). Unchanged caveats: ``--task linear_probe`` asserts CUDA in clip_benchmark
(use ``harness/bench.py`` for a CPU probe), and ``--num_workers`` must not exceed a set's shard count (clip_benchmark's
default is 4; our evaluation sets have 4 shards per split).
"""

from __future__ import annotations

import sys
from typing import Any, Optional


def load_uniclip(model_name: str, pretrained: str, cache_dir: Optional[str], device: Any) -> tuple[Any, Any, Any]:
    """clip_benchmark loader: ``(model, transform, tokenizer)`` for any open_clip-loadable model, plugin or not.

    Args:
        model_name: open_clip model config name (e.g. ``UniCLIP-Tiny-64``).
        pretrained: checkpoint path (open_clip_train or exported), a pretrained tag, or empty for random weights.
        cache_dir: open_clip download cache (unused for local checkpoints).
        device: torch device.

    Returns:
        The model in eval mode (stock ``load_open_clip`` leaves it in train mode), its validation transform and
        tokenizer.
    """
    from . import register

    register()
    import open_clip

    model, _, transform = open_clip.create_model_and_transforms(
        model_name, pretrained=pretrained or None, cache_dir=cache_dir, device=device
    )
    model.eval()
    return model, transform, open_clip.get_tokenizer(model_name)


def register_model_type() -> None:
    """Add ``uniclip`` to clip_benchmark's model types (idempotent)."""
    from . import register

    register()
    from clip_benchmark import models

    models.TYPE2FUNC["uniclip"] = load_uniclip
    if "uniclip" not in models.MODEL_TYPES:
        # MODEL_TYPES is frozen at import, and cli.py's `--model_type choices=` is this same list object.
        models.MODEL_TYPES.append("uniclip")


def _cpu_defaults(argv: list[str]) -> list[str]:
    import torch

    if argv[:1] == ["eval"] and "--no_amp" not in argv and not torch.cuda.is_available():
        return argv + ["--no_amp"]
    return argv


def main(argv: Optional[list[str]] = None) -> int:
    """Run clip_benchmark's CLI (``eval`` / ``build``) with ``--model_type uniclip`` available.

    Args:
        argv: arguments without the program name; None reads ``sys.argv``.

    Returns:
        0 (clip_benchmark's ``main`` returns None and raises on errors).
    """
    register_model_type()
    from clip_benchmark import cli

    args = _cpu_defaults(list(sys.argv[1:] if argv is None else argv))
    saved = sys.argv
    sys.argv = ["uniclip-benchmark", *args]  # clip_benchmark's parser reads sys.argv
    try:
        return cli.main() or 0
    finally:
        sys.argv = saved


if __name__ == "__main__":
    sys.exit(main())
