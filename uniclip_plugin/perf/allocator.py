"""Allocator A/B (``--malloc-ab``): the same method steps in two fresh processes, glibc's default malloc settings
against ``cpu_malloc.keep_freed_memory`` (as the training launchers set it)."""

from __future__ import annotations

import os
from typing import Any

import uniclip_plugin

from .settings import Settings
from .steps import MODEL_PREFIX, build_step
from .timing import in_fresh_process, round_robin

MODULE = "uniclip_plugin.perf.allocator"
AB_METHODS = ("clip", "slip", "uniclip_mpnce")


def malloc_child(tuned: bool, size: str, batch: int, iters: int, methods: tuple[str, ...]) -> dict[str, Any]:
    """In a fresh process: optionally ``keep_freed_memory()``, then each method's step (round-robin medians).

    Args:
        tuned: set glibc to keep freed memory first.
        size: the config suffix.
        batch: B.
        iters: timed rounds.
        methods: the losses.

    Returns:
        ``allocator`` (the setting in force), ``step_s`` (median by method) and ``minor_faults`` (the process's
        minor page faults over the timed rounds).
    """
    import resource

    from uniclip_plugin.cpu_malloc import keep_freed_memory

    uniclip_plugin.register()  # the plugin configs, before build_step
    status = keep_freed_memory() if tuned else "glibc defaults"
    built = {name: build_step(name, f"{MODEL_PREFIX[name]}-{size}", batch)[0] for name in methods}
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    medians = round_robin(built, iters, warmup=2)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
    return {"allocator": status, "step_s": medians, "minor_faults": faults}


def malloc_ab(size: str, batch: int, iters: int, methods: tuple[str, ...] = AB_METHODS) -> dict[str, Any]:
    """The same steps in two fresh processes; the caller's MALLOC_* variables are removed from both.

    Args:
        size: the config suffix.
        batch: B.
        iters: timed rounds.
        methods: the losses.

    Returns:
        ``default`` and ``tuned``: ``malloc_child``'s result in each process.
    """
    from uniclip_plugin.cpu_malloc import OPT_OUT_ENV, allocator_env

    chosen = allocator_env()
    env = {k: v for k, v in os.environ.items() if k not in chosen and k != OPT_OUT_ENV}
    return {
        "tuned" if tuned else "default": in_fresh_process(
            MODULE, f"malloc_child({tuned}, {size!r}, {batch}, {iters}, {tuple(methods)!r})", env, register=True
        )
        for tuned in (False, True)
    }


def measure(settings: Settings, results: dict[str, Any]) -> dict[str, Any]:
    """The ``--malloc-ab`` mode: ``malloc_ab`` at the run's size, batch and rounds.

    Args:
        settings: the run's settings.
        results: the run so far (unused).

    Returns:
        ``malloc_ab``: ``malloc_ab``'s result.
    """
    return {"malloc_ab": malloc_ab(settings.size, settings.batch, settings.iters)}
