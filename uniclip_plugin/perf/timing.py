"""Timing primitives: medians, round-robin rounds, a fresh interpreter per measurement, the resident-set peak."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Optional


def median_time(fn: Callable[[], None], iters: int, warmup: int = 2) -> float:
    """Median seconds of ``iters`` calls of ``fn`` after ``warmup`` untimed calls.

    Args:
        fn: the work to time.
        iters: timed calls.
        warmup: untimed calls first.

    Returns:
        The median wall-clock seconds of one call.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def round_robin(fns: dict[str, Callable[[], None]], iters: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds of each callable, timed in rounds (one call of each per round).

    A change of machine load during the run shifts every entry alike instead of biasing the ratios between them.

    Args:
        fns: the callables by name; timed in this order within each round.
        iters: timed rounds.
        warmup: untimed rounds first.

    Returns:
        The median seconds of each callable, by name.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(warmup + iters):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def in_fresh_process(module: str, call: str, env: Optional[dict[str, str]] = None, register: bool = False) -> Any:
    """``<module>.<call>`` evaluated in a fresh interpreter; its JSON-encoded result.

    The child runs in the caller's working directory. Workers that only need a loss or the views import just their
    submodule, never open_clip.

    Args:
        module: the module that defines the call, e.g. ``"uniclip_plugin.perf.loss_memory"``.
        call: a Python expression on that module's names, e.g. ``"loss_point(256, 2, 128, 0, 3)"``.
        env: the child's environment (default: this process's).
        register: call ``uniclip_plugin.register()`` first (the call builds plugin models).

    Returns:
        The decoded JSON of the last line the child prints.

    Raises:
        RuntimeError: the child failed; the message is its last stderr line.
    """
    setup = "import uniclip_plugin; uniclip_plugin.register(); " if register else ""
    code = f"{setup}import json, {module} as m; print(json.dumps(m.{call}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError((out.stderr.strip().splitlines() or ["no output"])[-1])
    return json.loads(out.stdout.strip().splitlines()[-1])


class RssPeak:
    """Context manager: peak resident-set growth over the block (``extra``, bytes), sampled from /proc/self/statm.

    Args:
        interval: seconds between samples of the sampling thread.
    """

    def __init__(self, interval: float = 2e-4):
        self.interval, self.extra, self._stop = interval, 0, threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.extra = max(self.extra, self._rss() - self.base)
            time.sleep(self.interval)

    def __enter__(self) -> "RssPeak":
        self.base = self._rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.extra = max(self.extra, self._rss() - self.base)
