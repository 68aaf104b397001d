"""glibc malloc settings for CPU training: keep freed memory in the process instead of returning it to the OS.

Why (docs/PERF.md, finding 1): the towers' forward/backward scratch tensors are larger than glibc's mmap threshold
(dynamic, at most 32 MiB), so with the default settings every step maps them fresh, page-faults them in and unmaps them
again. UniCLIP, SLIP and DeCLIP run their views as one concatenated image pass and pay this more than CLIP: at batch
256 on the 2-core study machine UniCLIP's step went 5.25 → 4.20 s and the minor page faults 14.2 M → 1.6 M.

``mallopt`` at run time does what the ``MALLOC_*_`` environment variables do at process start, so the launchers
(``open_clip train``, ``harness/train.py``, ``harness/perf.py``) call :func:`keep_freed_memory` themselves when they
train on CPU. Costs: freed memory stays in the process (its resident size is the peak, not the live set).
It does nothing when the user chose an allocator (any ``MALLOC_*`` / ``GLIBC_TUNABLES`` / ``LD_PRELOAD`` variable), on
a C library other than glibc, or with ``UNICLIP_DEFAULT_MALLOC=1``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

OPT_OUT_ENV = "UNICLIP_DEFAULT_MALLOC"
# mallopt parameter numbers (glibc malloc.h) and the values: thresholds as high as mallopt's int allows
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
INT_MAX = 2**31 - 1
SETTINGS = {
    M_MMAP_THRESHOLD: INT_MAX,  # tensors below 2 GiB come from the heap, reused across steps
    M_TRIM_THRESHOLD: INT_MAX,  # free memory at the heap top is kept up to 2 GiB
    M_TOP_PAD: 1 << 30,
}  # grow the heap 1 GiB at a time (fewer brk calls and fresh pages)
_applied = False


def allocator_env() -> dict[str, str]:
    """The allocator-related variables the process was started with (the user's choice, if any)."""
    return {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k in ("LD_PRELOAD", "GLIBC_TUNABLES")}


def keep_freed_memory() -> str:
    """Apply :data:`SETTINGS` with glibc's ``mallopt`` once per process; returns a one-line status for the log."""
    global _applied
    if _applied:
        return "glibc malloc keeps freed memory (already set)"
    if os.environ.get(OPT_OUT_ENV, "") not in ("", "0"):
        return f"default allocator ({OPT_OUT_ENV} is set)"
    chosen = allocator_env()
    if chosen:
        return f"allocator left as the environment sets it ({', '.join(sorted(chosen))})"
    if not sys.platform.startswith("linux"):
        return f"default allocator (mallopt tuning is glibc-only; platform {sys.platform})"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        version = libc.gnu_get_libc_version().decode()
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "default allocator (the C library is not glibc)"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    failed = [param for param, value in SETTINGS.items() if mallopt(param, value) != 1]
    if failed:
        return f"default allocator (glibc {version} refused mallopt parameters {failed})"
    _applied = True
    return f"glibc {version} malloc keeps freed memory (CPU training; {OPT_OUT_ENV}=1 for the default allocator)"
