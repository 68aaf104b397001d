"""The built-in methods, one module each; importing this package registers their specs (``registry.register_method``).

``clip`` / ``siglip`` (open_clip's own losses on plain CLIP models), ``uniclip_mpnce``, ``slip``, ``declip``. A new
method is a new module here with one ``@register_method`` function, imported below.
"""

from __future__ import annotations

from . import clip, declip, slip, uniclip  # noqa: F401  (each module registers its spec)

__all__ = ["clip", "declip", "slip", "uniclip"]
