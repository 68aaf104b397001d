"""The CPU allocator setting (uniclip_plugin/cpu_malloc.py): with it, a freed 64 MiB block is reused without fresh
page faults; with glibc's default settings every allocation of that size maps and faults new pages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "uniclip_plugin" / "cpu_malloc.py"

# loads cpu_malloc.py by path (no package __init__, which imports open_clip), then counts the minor page faults of
# four malloc-fill-free rounds of 64 MiB after one warm-up round (glibc's malloc directly: torch's CPU allocator asks
# for 64-byte aligned blocks, whose reuse depends on what else sits on the heap)
PROBE = r"""
import ctypes, importlib.util, json, resource, sys
spec = importlib.util.spec_from_file_location("cpu_malloc", sys.argv[1])
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
status = mod.keep_freed_memory() if sys.argv[2] == "tuned" else "not called"
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
def round_trip():
    ptr = libc.malloc(64 << 20); ctypes.memset(ptr, 1, 64 << 20); libc.free(ptr)
round_trip()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    round_trip()
print(json.dumps({"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, "status": status}))
"""


def _cpu_malloc() -> Any:
    import importlib

    return importlib.import_module("uniclip_plugin.cpu_malloc")


def _probe(mode: str) -> dict:
    mod = _cpu_malloc()
    chosen = mod.allocator_env()
    env = {k: v for k, v in os.environ.items() if k not in chosen and k != mod.OPT_OUT_ENV}
    env["OMP_NUM_THREADS"] = "1"
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(MODULE), mode], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_blocks_are_reused_without_page_faults() -> None:
    if not sys.platform.startswith("linux"):  # no glibc: the setting must say it did nothing
        assert _cpu_malloc().keep_freed_memory().startswith("default allocator")
        return
    default, tuned = _probe("default"), _probe("tuned")
    assert "keeps freed memory" in tuned["status"], tuned["status"]
    # default: 4 rounds × 64 MiB of fresh pages (16384 faults per round with 4 KiB pages; fewer with huge pages)
    assert default["faults"] >= 4 * 16, default
    assert tuned["faults"] * 10 < default["faults"], (default, tuned)


def test_user_allocator_choice_and_opt_out_are_respected(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu_malloc = _cpu_malloc()
    monkeypatch.setattr(cpu_malloc, "_applied", False)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert cpu_malloc.keep_freed_memory() == "allocator left as the environment sets it (MALLOC_ARENA_MAX)"
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    monkeypatch.setenv("UNICLIP_DEFAULT_MALLOC", "1")
    assert cpu_malloc.keep_freed_memory().startswith("default allocator (UNICLIP_DEFAULT_MALLOC is set)")
    assert cpu_malloc._applied is False
