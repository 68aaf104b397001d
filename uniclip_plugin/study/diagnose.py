"""Where the universal softmax puts its mass, read off a UniCLIP checkpoint without training (issue 18).

For training batches (views sampled as in training, with a fixed seed) the script reports, for the image–text anchors
of the universal set (every image view and every text):

* ``neg_share_own``: the share of the anchor's negative softmax mass ``Σ_{n∈N(u)} e^{s_un}`` that falls on its own
  domain (an image anchor's image negatives, a text anchor's text negatives); 1 − it falls on the other domain, which
  is all that retrieval ranks. Means over image anchors and over text anchors.
* ``prob_it`` / ``prob_ii``: each positive group's mean probability ``e^{s_up} / (e^{s_up} + Σ_{n∈N(u)} e^{s_un})``.

    python -m uniclip_plugin.study.diagnose --checkpoint runs/x/checkpoints/epoch_40.pt --data 'data/pretrain/...tar'
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

import torch

from ..losses.mpnce import universal_contrastive_loss
from ..similarity import DOMAIN_TEXT, domain_logits, universal_embeddings


def negative_mass_share(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    scales: torch.Tensor,
    offsets: torch.Tensor,
    form: str = "shift_scale",
) -> dict[str, float]:
    """Mean share of each anchor's negative softmax mass on its own domain, for image and text anchors.

    Args:
        image_features: ``[B, V, D]`` normalised views; text_features: ``[B, D]``; scales, offsets: ``[3]``.
    """
    z, sample, dom = universal_embeddings(image_features, text_features)
    with torch.no_grad():
        logits = domain_logits(z, dom, z, dom, scales, offsets, form)  # [M, M]
        negative = sample[:, None] != sample[None, :]  # other samples only
        weights = torch.softmax(logits.masked_fill(~negative, float("-inf")), dim=1)  # over N(u)
        own = (weights * (dom[:, None] == dom[None, :])).sum(dim=1)  # [M]
    is_text = dom == DOMAIN_TEXT
    return {"neg_share_own_image": own[~is_text].mean().item(), "neg_share_own_text": own[is_text].mean().item()}


def _batches(
    model: torch.nn.Module, model_name: str, pattern: str, batch: int, count: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``count`` batches of the shards in order, through the model's training input transform."""
    import open_clip
    import webdataset as wds
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from ..integration import whole_image_transforms

    preprocess_val = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    train, _ = whole_image_transforms(model, (None, preprocess_val))
    tokenizer = open_clip.get_tokenizer(model_name)
    data = wds.WebDataset(pattern, shardshuffle=False).decode("pilrgb").to_tuple("png", "txt")
    images, texts, out = [], [], []
    for image, text in data:
        images.append(train(image))
        texts.append(text)
        if len(images) == batch:
            out.append((torch.stack(images), tokenizer(texts)))
            images, texts = [], []
            if len(out) == count:
                break
    return out


def diagnose(
    model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], seed: int = 0
) -> dict[str, float]:
    """Means over ``batches`` of the negative-mass shares and the groups' positive probabilities."""
    torch.manual_seed(seed)
    model.train()  # training views; no gradient, no parameter changes
    sums: dict[str, float] = {}
    with torch.no_grad():
        for images, texts in batches:
            out = model(images, texts)
            scales, offsets = out["logit_bias"][0], out["logit_bias"][1]
            form = model.uniclip_cfg.similarity_form
            row = negative_mass_share(out["image_features"], out["text_features"], scales, offsets, form)
            loss = universal_contrastive_loss(
                out["image_features"], out["text_features"], scales, offsets, similarity_form=form
            )
            row.update({k: float(loss[k]) for k in ("prob_it", "prob_ii", "loss_it", "loss_ii") if k in loss})
            for key, value in row.items():
                sums[key] = sums.get(key, 0.0) + value / len(batches)
    model.eval()
    return sums


def main(argv: Optional[list[str]] = None) -> int:
    """Load a checkpoint, run the diagnostic on the first batches of the shards, print and write JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--model", default="UniCLIP-Tiny-32")
    p.add_argument("--data", required=True, help="training shards (brace pattern)")
    p.add_argument("--uniclip-cfg", default="{}", help="JSON options the run was trained with (views, presets, ...)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--out", default=None, help="JSON file")
    args = p.parse_args(argv)
    import uniclip_plugin

    model, _, _ = uniclip_plugin.create_model_and_transforms(
        args.model, pretrained=args.checkpoint, uniclip_cfg=json.loads(args.uniclip_cfg), output_dict=True
    )
    result: dict[str, Any] = diagnose(model, _batches(model, args.model, args.data, args.batch, args.batches))
    print(json.dumps(result, indent=1))
    if args.out:
        from ..io import write_json_atomic

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.out, {"checkpoint": args.checkpoint, **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
