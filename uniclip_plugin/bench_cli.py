"""``uniclip-benchmark``: clip_benchmark's CLI with the plugin registered in the same process.

Stock ``clip_benchmark`` runs in a fresh process that never imports the plugin (CLIP_benchmark #144), so plugin
configs are unknown there. This entry point registers the plugin, adds ``--model_type uniclip`` (clip_benchmark's
documented route: a ``TYPE2FUNC`` entry, PR #50) and runs clip_benchmark's own ``main``.
"""
from __future__ import annotations

import sys
from typing import Any, Optional


def load_uniclip(model_name: str, pretrained: str, cache_dir: Optional[str], device: Any) -> tuple[Any, Any, Any]:
    """clip_benchmark loader signature → (model, transform, tokenizer) for any open_clip-loadable plugin model."""
    import open_clip

    import uniclip_plugin  # noqa: F401
    model, _, transform = open_clip.create_model_and_transforms(model_name, pretrained=pretrained or None,
                                                                cache_dir=cache_dir, device=device)
    model.eval()
    return model, transform, open_clip.get_tokenizer(model_name)


def register_model_type() -> None:
    from clip_benchmark import models

    import uniclip_plugin  # noqa: F401  (also applies the numpy-2.4 accuracy fix, E4)
    models.TYPE2FUNC["uniclip"] = load_uniclip
    if "uniclip" not in models.MODEL_TYPES:
        models.MODEL_TYPES.append("uniclip")  # the same list object is cli.py's `choices`


def main() -> int:
    register_model_type()
    from clip_benchmark import cli
    return cli.main() or 0


if __name__ == "__main__":
    sys.exit(main())
