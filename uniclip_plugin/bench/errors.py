"""The benchmark's user-facing error and its one-line rendering of library exceptions."""

from __future__ import annotations

from uniclip_plugin.errors import PluginError


class BenchError(PluginError):
    """A problem the user can fix; the CLI prints it as one line starting with ``bench.py: ``."""


def one_line(err: BaseException) -> str:
    """``Type: first line of the message`` (just ``Type`` when the message is empty), at most ~300 characters.

    Args:
        err: any exception (open_clip's, clip_benchmark's, torch's).

    Returns:
        The one-line text.
    """
    lines = str(err).strip().splitlines()
    text = lines[0].split(" Available: ")[0] if lines else ""  # open_clip appends every built-in config name
    text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."
