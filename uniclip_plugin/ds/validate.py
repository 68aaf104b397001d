"""In-training validation as ``open_clip train`` does it: retrieval metrics (open_clip_train's ``get_clip_metrics``)
and the CLIP validation loss on an open_clip_train webdataset val loader, logged as its ``Eval Epoch:`` line and
appended to ``checkpoints/results.jsonl`` (what ``uniclip_plugin.runs.RunDir.val_curve`` reads).

Every rank runs the forward over the whole validation set (open_clip_train's val pipeline does not split by node), so
ZeRO-3's parameter gathers, which are collectives, stay matched; rank 0 computes and writes the metrics. The
evaluation leaves every RNG as it found it, so a resumed run stays identical to an uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from uniclip_plugin.ds import checkpoint as ckpt
from uniclip_plugin.ds.step import engine_dtype


def due(args: argparse.Namespace, completed_epochs: int) -> bool:
    """open_clip_train's rule: every ``--val-frequency`` epochs and after the last one."""
    return (
        bool(args.val_data)
        and args.val_frequency > 0
        and (completed_epochs % args.val_frequency == 0 or completed_epochs == args.epochs)
    )


def val_loader(args: argparse.Namespace, preprocess: Any, tokenizer: Any, batch_size: int) -> Any:
    """open_clip_train's webdataset val loader (``get_wds_dataset(..., is_train=False)``): whole set, in order."""
    from open_clip_train.data import get_wds_dataset

    ns = argparse.Namespace(
        val_data=args.val_data,
        val_num_samples=args.val_num_samples,
        batch_size=batch_size,
        workers=args.workers,
        world_size=1,
        seed=args.seed,
        dataset_resampled=False,
    )
    return get_wds_dataset(ns, preprocess, False, tokenizer=tokenizer).dataloader


def _features(
    engine: Any, loader: Any, limit: Optional[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, int]:
    """Eval-mode features of the val set (fp32 on CPU), the last scale, the summed CLIP loss and the sample count."""
    images_f, texts_f, loss_sum, n, scale = [], [], 0.0, 0, torch.ones(1)
    with torch.no_grad():
        for images, texts in loader:
            if limit is not None:
                if n >= limit:
                    break
                images, texts = images[: limit - n], texts[: limit - n]
            out = engine(images.to(engine.device, dtype=engine_dtype(engine)), texts.to(engine.device))
            img, txt = out["image_features"].float(), out["text_features"].float()
            scale = out["logit_scale"].float().mean().clamp(1.0, 100.0)  # the scale training uses (D3)
            logits = scale * img @ txt.t()
            labels = torch.arange(img.shape[0], device=logits.device)
            loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
            loss_sum += loss.item() * img.shape[0]
            n += img.shape[0]
            images_f.append(img.cpu())
            texts_f.append(txt.cpu())
    return torch.cat(images_f), torch.cat(texts_f), scale.cpu(), loss_sum, n


def evaluate(engine: Any, loader: Any, epoch: int, args: argparse.Namespace, results_file: Optional[Path]) -> dict:
    """Evaluate on every rank; rank 0 (``results_file`` set) logs ``Eval Epoch:`` and appends ``results.jsonl``.

    Args:
        engine: the DeepSpeed engine (put in eval mode here and back in train mode after).
        loader: :func:`val_loader`.
        epoch: completed epochs (open_clip_train's numbering).
        args: the trainer's arguments (``--val-num-samples``).
        results_file: ``checkpoints/results.jsonl`` on rank 0, None elsewhere.

    Returns:
        open_clip_train's metrics: ``image_to_text_R@1`` ... ``clip_val_loss``, ``epoch``, ``num_samples``.
    """
    from open_clip_train.train import get_clip_metrics

    rng = ckpt.capture_rng_state()
    engine.eval()
    try:
        img, txt, scale, loss_sum, n = _features(engine, loader, args.val_num_samples)
    finally:
        engine.train()
        ckpt.restore_rng_state(rng)
    metrics = {
        **get_clip_metrics(img, txt, scale),
        "clip_val_loss": loss_sum / max(n, 1),
        "epoch": epoch,
        "num_samples": n,
    }
    metrics = {k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()}
    if results_file is not None:
        logging.info(f"Eval Epoch: {epoch} " + "\t".join(f"{k}: {round(v, 4):.4f}" for k, v in metrics.items()))
        results_file.parent.mkdir(parents=True, exist_ok=True)
        with open(results_file, "a+") as f:  # open_clip_train's file and format: one JSON object per line
            f.write(json.dumps(metrics) + "\n")
    return metrics
