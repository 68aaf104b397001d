"""Train-loop glue: metric stripping and the non-finite guard that stops before the optimiser step."""

from __future__ import annotations

import pytest
import torch

from uniclip_plugin.errors import NonFiniteError
from uniclip_plugin.train_hooks import NonFiniteGuard, TrainLossAdapter


class _DictLoss(torch.nn.Module):
    def forward(self, x: torch.Tensor, output_dict: bool = False, **_: object) -> dict:
        return {"a_loss": x.sum(), "b_loss": 2 * x.sum(), "pos_cos_it": torch.tensor(0.5)}


def test_adapter_returns_only_loss_keys_and_keeps_metrics() -> None:
    adapter = TrainLossAdapter(_DictLoss(), log_every=1)
    out = adapter(x=torch.ones(3))
    assert set(out) == {"a_loss", "b_loss"}
    assert sum(out.values()).item() == 9.0  # what open_clip_train sums
    assert adapter.last_metrics == {"pos_cos_it": 0.5}


def _step(guard: NonFiniteGuard, grad_value: float, loss_value: float = 1.0) -> torch.nn.Parameter:
    param = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([param], lr=0.1)
    guard.adapter = TrainLossAdapter(_DictLoss())
    guard.adapter.last_total = torch.tensor(loss_value)
    param.grad = torch.full((2,), grad_value)
    opt.step()
    return param


def test_guard_stops_before_the_step_on_nan_gradient() -> None:
    guard = NonFiniteGuard().install()
    try:
        assert torch.equal(_step(guard, 1.0), torch.full((2,), 0.9))  # a finite step goes through
        param = None
        with pytest.raises(NonFiniteError, match="non-finite gradient.*step 2"):
            param = _step(guard, float("nan"))
        assert param is None
    finally:
        guard.remove()


def test_guard_names_a_non_finite_loss() -> None:
    guard = NonFiniteGuard().install()
    try:
        with pytest.raises(NonFiniteError, match=r"non-finite loss \(inf\) at optimiser step 1"):
            _step(guard, 1.0, loss_value=float("inf"))
    finally:
        guard.remove()


def test_guard_leaves_parameters_untouched_on_failure() -> None:
    guard = NonFiniteGuard().install()
    param = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([param], lr=0.1)
    param.grad = torch.tensor([1.0, float("inf")])
    try:
        with pytest.raises(NonFiniteError):
            opt.step()
        assert torch.equal(param.detach(), torch.ones(2))
    finally:
        guard.remove()
