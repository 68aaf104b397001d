"""DeCLIP: each loss term vs a naive float64 reference from its formula, the NNS queue (nearest neighbour, FIFO,
wrap-around), per-view BatchNorm, the model's training step (one tower call each), checkpoint/DDP bookkeeping and an
end-to-end `open_clip train --loss declip` run. Multi-process equality: tests/test_declip_multiproc.py."""

from __future__ import annotations

import os
import re
import subprocess
import types
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import uniclip_plugin
from tests.cpu_train import cpu_train_argv
from uniclip_plugin.losses.declip import DeCLIPLoss
from uniclip_plugin.methods import declip as declip_method
from uniclip_plugin.model.declip import DeCLIP, ViewBatchNorm1d
from uniclip_plugin.nns import NNMemoryBank
from uniclip_plugin.text_aug import EDA, IGNORE_INDEX, EDATokenizer

uniclip_plugin.register()  # import alone registers nothing

F64 = torch.float64
NAME = "DeCLIP-Tiny-32"
SEEDS = (0, 1, 2)


def _unit(*shape: int, g: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=g, dtype=F64), dim=-1)


def _features(seed: int, b: int = 5, r: int = 2, d: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "image_features": _unit(b, 2, d, g=g),
        "text_features": _unit(b, r, d, g=g),
        "text_nn": _unit(b, r, d, g=g),
        "logit_scale": torch.tensor(3.0 + seed, dtype=F64),
    }


def _nll(logits_row: list[torch.Tensor], target: int) -> torch.Tensor:
    denom = sum(torch.exp(v) for v in logits_row)
    return -torch.log(torch.exp(logits_row[target]) / denom)


def naive_mvs(img: torch.Tensor, txt: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    b, views, rows = img.shape[0], img.shape[1], txt.shape[1]
    terms = []
    for v in range(views):
        for r in range(rows):
            i2t = sum(_nll([s * torch.dot(img[i, v], txt[j, r]) for j in range(b)], i) for i in range(b)) / b
            t2i = sum(_nll([s * torch.dot(txt[i, r], img[j, v]) for j in range(b)], i) for i in range(b)) / b
            terms.append(0.5 * (i2t + t2i))
    return sum(terms) / len(terms)


def naive_nns(img: torch.Tensor, nn_txt: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    b, views, rows = img.shape[0], img.shape[1], nn_txt.shape[1]
    per_view = []
    for v in range(views):
        per_row = [
            sum(_nll([s * torch.dot(img[i, v], nn_txt[j, r]) for j in range(b)], i) for i in range(b)) / b
            for r in range(rows)
        ]
        per_view.append(sum(per_row) / rows)  # ½[CE(x_v→NN(t)) + CE(x_v→NN(t_aug))]
    return sum(per_view) / views


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.dot(a, b) / (torch.sqrt(torch.dot(a, a)) * torch.sqrt(torch.dot(b, b)))


# ------------------------------------------------------------------------------------------------- loss vs reference


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rows", [2, 1])
def test_mvs_and_nns_equal_naive_references(seed: int, rows: int) -> None:
    f = _features(seed, r=rows)
    out = DeCLIPLoss(mvs_weight=0.4, simsiam_weight=0, mlm_weight=0, nns_weight=0.2)(**f)
    assert set(out) == {"mvs_loss", "nns_loss", "i2t_acc", "logit_scale"}
    s = f["logit_scale"]
    assert torch.allclose(out["mvs_loss"], 0.4 * naive_mvs(f["image_features"], f["text_features"], s), atol=1e-12)
    assert torch.allclose(out["nns_loss"], 0.2 * naive_nns(f["image_features"], f["text_nn"], s), atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_mvs_gradient_matches_the_reference(seed: int) -> None:
    f = _features(seed, b=4, d=5)
    img = f["image_features"].clone().requires_grad_()
    txt = f["text_features"].clone().requires_grad_()
    DeCLIPLoss(1, 0, 0, 0)(img, txt, f["logit_scale"])["mvs_loss"].backward()
    ref_img, ref_txt = img.detach().clone().requires_grad_(), txt.detach().clone().requires_grad_()
    naive_mvs(ref_img, ref_txt, f["logit_scale"]).backward()
    assert torch.allclose(img.grad, ref_img.grad, atol=1e-12) and torch.allclose(txt.grad, ref_txt.grad, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_simsiam_equals_reference_and_stops_the_gradient(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(6, 2, 7, generator=g, dtype=F64, requires_grad=True)
    z = torch.randn(6, 2, 7, generator=g, dtype=F64, requires_grad=True)
    out = DeCLIPLoss(0, 0.2, 0, 0)(
        torch.zeros(6, 2, 3, dtype=F64), torch.zeros(6, 2, 3, dtype=F64), torch.tensor(1.0), simsiam_p=p, simsiam_z=z
    )
    assert set(out) == {"simsiam_loss", "logit_scale"}
    pr = p.detach().clone().requires_grad_()
    zc = z.detach()  # the reference treats z as a constant: sg(z)
    ref = -0.5 * (
        sum(_cos(pr[i, 0], zc[i, 1]) for i in range(6)) / 6 + sum(_cos(pr[i, 1], zc[i, 0]) for i in range(6)) / 6
    )
    assert torch.allclose(out["simsiam_loss"], 0.2 * ref, atol=1e-12)
    out["simsiam_loss"].backward()
    (0.2 * ref).backward()
    assert z.grad is None or torch.count_nonzero(z.grad) == 0  # stop-gradient on z
    assert torch.allclose(p.grad, pr.grad, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_mlm_equals_reference(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(9, 13, generator=g, dtype=F64)
    labels = torch.randint(0, 13, (9,), generator=g)
    out = DeCLIPLoss(0, 0, 0.2, 0)(
        torch.zeros(2, 2, 3), torch.zeros(2, 2, 3), torch.tensor(1.0), mlm_logits=logits, mlm_labels=labels
    )
    ref = sum(-torch.log(torch.exp(logits[m, labels[m]]) / torch.exp(logits[m]).sum()) for m in range(9)) / 9
    assert torch.allclose(out["mlm_loss"], 0.2 * ref, atol=1e-12)
    empty = DeCLIPLoss(0, 0, 0.2, 0)(
        torch.zeros(2, 2, 3),
        torch.zeros(2, 2, 3),
        torch.tensor(1.0),
        mlm_logits=torch.zeros(0, 13),
        mlm_labels=torch.zeros(0, dtype=torch.long),
    )
    assert float(empty["mlm_loss"]) == 0.0  # nothing masked: 0, not NaN


def test_default_weights_and_missing_part_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loss = DeCLIPLoss()
    assert loss.weights == {"mvs": 0.4, "simsiam": 0.2, "mlm": 0.2, "nns": 0.2}
    from uniclip_plugin.errors import PluginError

    with pytest.raises(PluginError, match="declip-nns-weight 0"):
        loss(**{k: v for k, v in _features(0).items() if k != "text_nn"})
    args = types.SimpleNamespace(declip_simsiam_weight=0.0, declip_mlm_weight=0.2, declip_nns_weight=0)
    assert declip_method.model_overrides(args) == {"simsiam": False, "nns": False}
    declip_wrap_tokenizer = declip_method.wrap_tokenizer
    from uniclip_plugin.registry import get_method

    assert get_method("declip").wrap_tokenizer is declip_wrap_tokenizer and get_method("declip").marker == "declip_cfg"
    tokenizer = open_clip.get_tokenizer(NAME)
    assert declip_wrap_tokenizer(tokenizer, types.SimpleNamespace(declip_no_eda=True)) is tokenizer
    from tests.test_text_aug import write_fake_wordnet

    monkeypatch.setenv("UNICLIP_WORDNET_DIR", str(write_fake_wordnet(tmp_path / "wordnet")))  # CI may lack wn
    wrapped = declip_wrap_tokenizer(tokenizer, types.SimpleNamespace(declip_no_eda=False, seed=5))
    assert isinstance(wrapped, EDATokenizer) and wrapped.seed == 5


# --------------------------------------------------------------------------------------------------------- NNS bank


def test_nns_lookup_is_the_true_nearest_neighbour() -> None:
    torch.manual_seed(0)
    bank = NNMemoryBank(64, 8)
    query = torch.randn(5, 3, 8)
    got = bank.lookup(query)
    q = F.normalize(query, dim=-1).reshape(-1, 8)
    for k in range(q.shape[0]):
        best = max(range(64), key=lambda j: float(torch.dot(q[k], bank.queue[j])))
        assert torch.allclose(got.reshape(-1, 8)[k], bank.queue[best])
    assert got.shape == query.shape and not got.requires_grad


def test_nns_fifo_order_and_wrap_around() -> None:
    bank = NNMemoryBank(5, 2)
    vec = lambda k: F.normalize(torch.tensor([[1.0, float(k)]]), dim=-1)  # noqa: E731  (distinct unit vectors)
    bank.enqueue(torch.cat([vec(1), vec(2), vec(3)]))
    assert int(bank.ptr) == 3 and torch.allclose(bank.queue[:3], torch.cat([vec(1), vec(2), vec(3)]))
    bank.enqueue(torch.cat([vec(4), vec(5), vec(6)]))  # wraps: 6 overwrites the oldest (1)
    assert int(bank.ptr) == 1
    assert torch.allclose(bank.queue, torch.cat([vec(6), vec(2), vec(3), vec(4), vec(5)]))
    bank.enqueue(torch.cat([vec(k) for k in range(7, 15)]))  # longer than the queue: newest 5 survive
    assert int(bank.ptr) == (1 + 8) % 5
    order = [(int(bank.ptr) + i) % 5 for i in range(5)]  # oldest -> newest
    assert torch.allclose(bank.queue[order], torch.cat([vec(k) for k in range(10, 15)]))
    # [N, K, D]: written group by group (DeCLIP: all t_aug, then all t)
    grouped = NNMemoryBank(4, 2)
    grouped.enqueue(torch.stack([torch.cat([vec(1), vec(2)]), torch.cat([vec(3), vec(4)])], dim=0))
    assert torch.allclose(grouped.queue, torch.cat([vec(1), vec(3), vec(2), vec(4)]))


def test_view_batchnorm_equals_one_batchnorm_call_per_view() -> None:
    torch.manual_seed(0)
    ours, ref = ViewBatchNorm1d(6), nn.BatchNorm1d(6)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.uniform_(-1, 1)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 8, 6) * 3 + 1
    got = ours(x)
    want = torch.stack([ref(x[0]), ref(x[1])])
    assert torch.allclose(got, want, atol=1e-5)
    for key, value in ref.state_dict().items():
        assert torch.allclose(ours.state_dict()[key].float(), value.float(), atol=1e-6), key
    ours.eval()
    ref.eval()
    assert torch.allclose(ours(x), torch.stack([ref(x[0]), ref(x[1])]), atol=1e-6)


# ------------------------------------------------------------------------------------------------------------ model


@pytest.fixture(scope="module")
def model() -> DeCLIP:
    torch.manual_seed(0)
    m = open_clip.create_model(NAME)
    assert isinstance(m, DeCLIP)
    return m


def _batch(b: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    tokenizer = EDATokenizer(open_clip.get_tokenizer(NAME), seed=0, eda=EDA(lambda w: ("hound",) if w == "dog" else ()))
    captions = [f"a dog number {i} on the red beach at night" for i in range(b)]
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(0)), tokenizer(captions)


def test_training_step_calls_each_tower_once_and_outputs_everything(model: DeCLIP) -> None:
    image, text = _batch()
    calls = {"visual": 0, "text": 0}
    hooks = [
        model.visual.register_forward_hook(lambda *_: calls.__setitem__("visual", calls["visual"] + 1)),
        model.transformer.register_forward_hook(lambda *_: calls.__setitem__("text", calls["text"] + 1)),
    ]
    model.train()
    try:
        ptr = int(model.nns.ptr)
        out = model(image, text)
    finally:
        for h in hooks:
            h.remove()
    assert calls == {"visual": 1, "text": 1}
    b, d = 6, 64
    assert out["image_features"].shape == (b, 2, d) and out["text_features"].shape == (b, 2, d)
    assert out["simsiam_p"].shape == out["simsiam_z"].shape == (b, 2, 128)
    assert out["text_nn"].shape == (b, 2, d) and out["logit_scale"].shape == ()
    assert out["mlm_logits"].shape == (out["mlm_labels"].shape[0], 49409)
    assert torch.allclose(out["image_features"].norm(dim=-1), torch.ones(b, 2), atol=1e-5)
    assert int(model.nns.ptr) == (ptr + 2 * b) % model.nns.size  # t_aug and t enqueued
    losses = DeCLIPLoss()(**out)
    total = sum(v for k, v in losses.items() if k.endswith("_loss"))
    total.backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == []  # DDP needs every parameter used
    model.zero_grad(set_to_none=True)
    with torch.no_grad():  # --accum-freq's first pass: no enqueue
        ptr = int(model.nns.ptr)
        model(image, text)
        assert int(model.nns.ptr) == ptr


def test_text_rows_and_mlm_pooling(model: DeCLIP) -> None:
    image, text = _batch()
    model.train()
    model.mlm_generator = torch.Generator().manual_seed(5)
    try:
        out = model(image, text)
        from uniclip_plugin.text_aug import mask_tokens

        masked, labels = mask_tokens(text[:, 0], generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            pooled, tokens = model.encode_text_tokens(masked, text[:, 0])  # pooled at the caption's EOT
            aug = model.encode_text(text[:, 1], normalize=True)
        assert torch.allclose(out["text_features"][:, 0], F.normalize(pooled, dim=-1), atol=1e-5)  # DeCLIP's quirk
        assert torch.allclose(out["text_features"][:, 1], aug, atol=1e-5)
        selected = labels != IGNORE_INDEX
        assert torch.equal(out["mlm_labels"], text[:, 0][selected])
        assert torch.allclose(out["mlm_logits"], model.mlm_head(tokens[selected]), atol=1e-4)
        # two-dimensional text: no EDA row
        out1 = model(image, text[:, 0])
        assert out1["text_features"].shape == (6, 1, 64) and out1["text_nn"].shape == (6, 1, 64)
    finally:
        model.mlm_generator = None
        model.zero_grad(set_to_none=True)


def test_unmasked_text_embedding_option() -> None:
    torch.manual_seed(0)
    m = open_clip.create_model(NAME, declip_cfg={"mlm_text_embedding_from_masked": False})
    image, text = _batch()
    m.train()
    calls = []
    hook = m.transformer.register_forward_hook(lambda *_: calls.append(1))
    out = m(image, text)
    hook.remove()
    assert len(calls) == 1
    with torch.no_grad():
        want = m.encode_text(text[:, 0], normalize=True)
    assert torch.allclose(out["text_features"][:, 0], want, atol=1e-5)


def test_eval_is_plain_clip_and_queue_is_checkpointed_not_broadcast(model: DeCLIP) -> None:
    image, text = _batch()
    model.eval()
    with torch.no_grad():
        img, txt, scale = model(image, text[:, 0])
        assert torch.allclose(img, open_clip.model.CLIP.encode_image(model, image, normalize=True))
        assert torch.allclose(txt, open_clip.model.CLIP.encode_text(model, text[:, 0], normalize=True))
        assert torch.allclose(model.encode_text(text), txt * 0 + model.encode_text(text[:, 0]))  # [N, R, ctx]: row 0
    state = model.state_dict()
    assert "nns.queue" in state and "nns.ptr" in state and state["nns.queue"].shape == (1024, 64)
    buffers = dict(model.named_buffers())
    assert model._ddp_params_and_buffers_to_ignore == ["nns.queue", "nns.ptr"]
    assert all(name in buffers for name in model._ddp_params_and_buffers_to_ignore)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert DeCLIP.architecture_from_shapes(shapes) == {
        "simsiam": True,
        "mlm": True,
        "nns": True,
        "simsiam_proj_dim": 128,
        "simsiam_pred_hidden": 64,
        "queue_size": 1024,
    }


def test_switched_off_parts_have_no_parameters() -> None:
    m = open_clip.create_model(NAME, declip_cfg={"simsiam": False, "mlm": False, "nns": False})
    assert m.simsiam_projector is None and m.mlm_head is None and m.nns is None
    assert m._ddp_params_and_buffers_to_ignore == []
    image, text = _batch()
    m.train()
    out = m(image, text)
    assert set(out) == {"image_features", "text_features", "logit_scale"}
    arch = DeCLIP.architecture_from_shapes({k: tuple(v.shape) for k, v in m.state_dict().items()})
    assert arch == {"simsiam": False, "mlm": False, "nns": False}


# --------------------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_open_clip_train_declip_end_to_end(tmp_path: Path) -> None:
    from tests.test_text_aug import write_fake_wordnet
    from uniclip_plugin.testing.synthetic import build_synthetic_pretrain

    shards = build_synthetic_pretrain(tmp_path / "shards", n_samples=256, res=32, n_shards=2, seed=0)
    wordnet = write_fake_wordnet(tmp_path / "wordnet")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", UNICLIP_WORDNET_DIR=str(wordnet))
    cmd = cpu_train_argv(
        "declip",
        NAME,
        shards["pattern"],
        tmp_path / "logs",
        "declip",
        train_num_samples="480",
        batch_size="32",
        save_frequency="3",
        epochs="3",
    )
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (tmp_path / "logs" / "declip" / "out.log").read_text()
    mvs = [float(m) for m in re.findall(r"Mvs_loss: ([0-9.]+)", log)]
    assert len(mvs) >= 6 and all(k in log for k in ("Simsiam_loss", "Mlm_loss", "Nns_loss")), log[-2000:]
    assert sum(mvs[-3:]) / 3 < 0.9 * sum(mvs[:3]) / 3, mvs
    ckpt = tmp_path / "logs" / "declip" / "checkpoints" / "epoch_3.pt"
    loaded, _, _ = open_clip.create_model_and_transforms(NAME, pretrained=str(ckpt))  # stock open_clip call
    assert isinstance(loaded, DeCLIP)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    live = open_clip.create_model(NAME)
    live.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    assert torch.equal(loaded.nns.queue, state["nns.queue"])  # the queue travelled with it ...
    assert int(loaded.nns.ptr) == int(state["nns.ptr"]) == (45 * 32 * 2) % 1024  # ... with its write pointer
    loaded.eval()
    live.eval()
    tokens = open_clip.get_tokenizer(NAME)(["a red circle", "a blue square"])
    with torch.no_grad():
        images = torch.randn(2, 3, 32, 32)
        assert torch.equal(loaded.encode_image(images), live.encode_image(images))
        assert torch.equal(loaded.encode_text(tokens), live.encode_text(tokens))


def test_weight_zero_switches_the_model_part_off_and_such_checkpoints_load_by_name(tmp_path: Path) -> None:
    from uniclip_plugin import integration
    from uniclip_plugin.cli import plugin_parser

    ours, _ = plugin_parser().parse_known_args(
        ["--loss", "declip", "--declip-simsiam-weight", "0", "--declip-nns-weight", "0"]
    )
    setup = integration.prepare(ours)
    assert setup.model_kwargs == {"declip_cfg": {"simsiam": False, "nns": False}}
    plain = integration.prepare(plugin_parser().parse_known_args(["--loss", "declip"])[0], rank=0)
    assert plain.model_kwargs == {} and plain.loss.weights == {"mvs": 0.4, "simsiam": 0.2, "mlm": 0.2, "nns": 0.2}
    trained, _, _ = integration.create_model_and_transforms(NAME, setup)
    assert trained.simsiam_projector is None and trained.nns is None and trained.mlm_head is not None
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in trained.state_dict().items()}}, ckpt)
    loaded, _, _ = open_clip.create_model_and_transforms(NAME, pretrained=str(ckpt))  # base name, no overrides
    assert loaded.simsiam_projector is None and loaded.nns is None
    tokens = open_clip.get_tokenizer(NAME)(["a red circle"])
    trained.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded.encode_text(tokens), trained.encode_text(tokens))


def test_missing_wordnet_is_a_one_line_error(
    capsys: pytest.CaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from uniclip_plugin import text_aug
    from uniclip_plugin.cli import main
    from uniclip_plugin.testing.synthetic import build_synthetic_pretrain

    monkeypatch.setattr(text_aug, "find_wordnet_dir", lambda: None)
    shards = build_synthetic_pretrain(tmp_path / "shards", n_samples=32, res=32, n_shards=1)
    argv = [
        "train",
        "--loss",
        "declip",
        "--model",
        NAME,
        "--train-data",
        shards["pattern"],
        "--dataset-type",
        "webdataset",
        "--train-num-samples",
        "32",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--logs",
        str(tmp_path / "logs"),
        "--name",
        "nowordnet",
        "--precision",
        "fp32",
    ]
    import logging

    import open_clip_train.main as ocm
    import torch.optim.optimizer as optim_module

    for attr in ("create_loss", "get_tokenizer", "create_model_and_transforms"):  # cli.train patches these
        monkeypatch.setattr(ocm, attr, getattr(ocm, attr))
    hooks = dict(optim_module._global_optimizer_pre_hooks)  # ... and installs its guard
    handlers = list(logging.getLogger().handlers)
    try:
        assert main(argv) == 2
    finally:
        optim_module._global_optimizer_pre_hooks.clear()
        optim_module._global_optimizer_pre_hooks.update(hooks)
        logging.getLogger().handlers[:] = handlers
    last = capsys.readouterr().err.strip().splitlines()[-1]  # above it: open_clip_train's own log lines
    assert last.startswith("open_clip train: error: EDA needs WordNet") and "pip install" in last, last
