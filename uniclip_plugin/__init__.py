"""uniclip-plugin: UniCLIP (NeurIPS 2022) and its baselines SLIP and DeCLIP for the OpenCLIP ecosystem.

``import uniclip_plugin`` registers everything (idempotent ``register()``): the upstream fixes in ``compat``, the
plugin model configs and classes in open_clip's factory, and the ``--loss`` registry.
"""
from __future__ import annotations

__version__ = "0.1.0"

_REGISTERED = False


def register() -> None:
    """Apply the upstream fixes and register plugin configs, classes and losses (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from . import compat, factory, methods
    compat.apply_all()
    methods.register_builtin_methods()
    factory.install()
    _REGISTERED = True


register()
