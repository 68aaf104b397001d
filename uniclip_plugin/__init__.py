"""uniclip-plugin: UniCLIP (NeurIPS 2022) and its baselines SLIP and DeCLIP for the OpenCLIP ecosystem.

``import uniclip_plugin`` only defines names: it imports no open_clip, patches nothing and registers nothing.
:func:`register` (idempotent) does the work: the upstream fixes in ``compat``, the method specs, the plugin model
configs and the routing of open_clip's ``create_model`` through ``factory``. Every console script calls it at start;
the model functions below call it on first use::

    import uniclip_plugin
    model, _, preprocess = uniclip_plugin.create_model_and_transforms("UniCLIP-Tiny-32", pretrained="epoch_30.pt")

(or ``uniclip_plugin.register()`` once, then open_clip's own functions.)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_REGISTERED = False


def register() -> None:
    """Apply the upstream fixes and register the methods and plugin model configs (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from . import compat, factory, methods  # noqa: F401  (methods: registers the built-in specs)

    compat.apply_all()
    factory.install()
    _REGISTERED = True


def create_model(model_name: str, *args: Any, **kwargs: Any) -> Any:
    """``open_clip.create_model`` with the plugin registered (plugin classes for plugin configs)."""
    register()
    from . import factory

    return factory.create_model(model_name, *args, **kwargs)


def create_model_and_transforms(model_name: str, *args: Any, **kwargs: Any) -> Any:
    """``open_clip.create_model_and_transforms`` with the plugin registered."""
    register()
    import open_clip

    return open_clip.create_model_and_transforms(model_name, *args, **kwargs)


def create_model_from_pretrained(model_name: str, *args: Any, **kwargs: Any) -> Any:
    """``open_clip.create_model_from_pretrained`` with the plugin registered."""
    register()
    import open_clip

    return open_clip.create_model_from_pretrained(model_name, *args, **kwargs)


def list_pretrained_tags(model_name: str) -> list[str]:
    """Pretrained tags ``model_name`` can start from: for a plugin model its base architecture's
    (``UniCLIP-ViT-B-32`` → ``ViT-B-32``'s), else open_clip's ``list_pretrained_tags_by_model``."""
    register()
    from . import factory

    return factory.list_pretrained_tags(model_name)


__all__ = [
    "__version__",
    "create_model",
    "create_model_and_transforms",
    "create_model_from_pretrained",
    "list_pretrained_tags",
    "register",
]
