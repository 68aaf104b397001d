"""What autograd keeps for backward, counted exactly: the basis of the chunked loss's memory claims (its test and
``perf``'s loss-memory section), not the allocator's peak."""

from __future__ import annotations

from typing import Any, Callable

import torch


def saved_tensor_bytes(forward: Callable[[], Any]) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``forward()`` runs (saved-tensor hooks,
    deduplicated by storage pointer)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    del out
    return sum(storages.values())
