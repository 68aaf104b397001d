"""Training is unchanged by the restructure: every method's per-step loss terms, trained by ``open_clip train`` on
generated shards with a fixed seed, equal the curves recorded on the code before it (``tests/data/loss_curves.json``,
``python tests/loss_curves.py --record``), with the sample shuffle's old seed restored: the declared change of training
since then (tests/test_shuffle.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.loss_curves import CURVES, RUNS, all_curves


@pytest.mark.slow
def test_every_method_trains_as_before_the_restructure() -> None:
    recorded = json.loads(CURVES.read_text())
    assert sorted(recorded) == sorted(RUNS), "record the curves of every method: python tests/loss_curves.py --record"
    now = all_curves(Path(__file__).resolve().parents[1])
    for loss, terms in recorded.items():
        assert sorted(now[loss]) == sorted(terms), f"{loss}: logged loss terms changed"
        for term, values in terms.items():
            assert len(now[loss][term]) == len(values) > 0, f"{loss} {term}: {len(now[loss][term])} steps logged"
            # the log prints 5 significant digits: a real change of behaviour moves far more than that
            assert now[loss][term] == pytest.approx(values, rel=2e-4, abs=2e-4), f"{loss} {term}"
