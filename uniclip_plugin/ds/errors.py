"""The trainer's user-facing error and the program name its one-line messages carry."""

from __future__ import annotations

from uniclip_plugin.errors import PluginError

# Messages read ``train.py: error: ...`` whichever entry point started the trainer (the docs and tests match it).
PROG = "train.py"


class HarnessError(PluginError):
    """A problem the user can fix; printed as one ``train.py: error:`` line."""
