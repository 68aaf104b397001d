"""User-facing errors: the CLIs print these as one line (no traceback) and exit non-zero."""


class PluginError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""


class NonFiniteError(PluginError):
    """A non-finite loss or gradient: training stops before the optimiser step, so the last checkpoint stays good."""
