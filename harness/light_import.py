"""Import a ``uniclip_plugin`` submodule without running the package ``__init__``.

The package import registers the models with open_clip (≈ 5–10 s of imports per process on a small CPU box);
spawned worker processes and perf.py's timing subprocesses only need a loss or the views. The real package is used
when it is already imported.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any


def import_plugin_module(name: str) -> Any:
    """``uniclip_plugin.<name>`` (e.g. ``"losses.mpnce"``), loading only that submodule and what it imports."""
    if "uniclip_plugin" in sys.modules:
        return importlib.import_module(f"uniclip_plugin.{name}")
    spec = importlib.util.find_spec("uniclip_plugin")
    assert spec is not None and spec.submodule_search_locations is not None
    package = types.ModuleType("uniclip_plugin")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["uniclip_plugin"] = package
    try:
        return importlib.import_module(f"uniclip_plugin.{name}")
    finally:
        # the stand-in package only lives for this import: a later `import uniclip_plugin` runs the real __init__
        # (which registers the models) and reuses the submodules already loaded
        if sys.modules.get("uniclip_plugin") is package:
            del sys.modules["uniclip_plugin"]
