"""DeCLIP (Li et al., ICLR 2022) on open_clip's CLIP towers: multi-view supervision, SimSiam, MLM and NNS.

Follows Sense-GVT/DeCLIP ``prototype/model/declip.py`` (``DECLIP.forward``), ``text_encoder/text_transformer.py``
(MLM forward) and ``utils/nnclr_modules`` (NNS bank); the loss terms are in ``losses/declip.py``. Its repository does
not run as released (it imports the internal ``linklink`` library), so this is a re-implementation, term by term.

Where we differ from DeCLIP's code, and why:

* Views are sampled in forward (``InForwardViews``, preset ``mocov2``: DeCLIP's MoCo-v2 recipe) and both views go
  through the image tower in ONE concatenated call (DeCLIP's ``forward_type='image_concat'``); all text rows (masked
  caption, EDA caption, [unmasked caption]) go through the text tower in ONE call (DeCLIP: two or three calls).
  EDA happens in the data pipeline (``text_aug.EDATokenizer``), not in forward: the model gets token ids.
* SimSiam's projector/predictor run once on both views ``[2, B, D]`` with BatchNorm statistics per view
  (``ViewBatchNorm1d``), which equals DeCLIP's two separate calls; running statistics get both updates in the same
  order. One call because ZeRO-3 fails on repeated forwards of a module (DeepSpeed #5321).
* The mask token is id 49408 appended after open_clip's SOT/EOT (DeCLIP inserts ``<|mask|>`` before SOT/EOT and
  shifts them). Pooling uses the EOT position of the UNMASKED ids: with our ids, argmax pooling of masked ids would
  land on the first mask token; DeCLIP's argmax lands on EOT, which is what we reproduce.
* NNS: one shared queue on all ranks (see ``nns.py``); the lookup and enqueue happen only when gradients are
  enabled (open_clip_train's ``--accum-freq`` first pass runs under ``no_grad``), matching Lightly's
  "update only if we later do a backward pass".
* Configs: DeCLIP-ViT-B-32 keeps DeCLIP's sizes (SimSiam 1024/512, queue 2**16). The Tiny configs scale SimSiam with
  the embedding (proj = 2·embed_dim, predictor bottleneck = embed_dim, DeCLIP's ratios) and shrink the queue (1024 /
  4096) so it fills within the first ~16 steps of a short run instead of holding mostly its random init throughout
  (DeCLIP's 2**16 fills in ~16-256 steps of a 15M-sample epoch).
* Eval forward / ``encode_image`` / ``encode_text`` are plain CLIP; ``encode_text`` also takes ``[N, R, ctx]`` (the
  training tokenizer's output) and encodes row 0, the original caption.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from open_clip.transformer import text_global_pool
from torch import nn

from ..config import from_dict
from ..errors import PluginError
from ..nns import NNMemoryBank
from ..similarity import MAX_LOG_SCALE
from ..text_aug import EOT_TOKEN_ID, IGNORE_INDEX, MASK_TOKEN_ID, SOT_TOKEN_ID, mask_tokens
from ..views import VIEW_PRESETS, InForwardViews

IMAGE_VIEWS = 2


@dataclass(frozen=True)
class DeCLIPCfg:
    """DeCLIP's parts (docs/METHODS.md §DeCLIP), carried by the ``declip_cfg`` key of a model config."""

    view_preset: str = "mocov2"  # the two image views' augmentation (views.VIEW_PRESETS)
    simsiam: bool = True  # SimSiam projector/predictor on the image embeddings
    mlm: bool = True  # mask the caption and predict it (MLM head Linear(width, vocab))
    nns: bool = True  # nearest-neighbour text queue
    queue_size: int = 2**16  # NNS FIFO size (DeCLIP: 2**16)
    simsiam_proj_dim: int = 1024  # projector hidden and output width (DeCLIP ViT-B/32: 1024)
    simsiam_pred_hidden: int = 512  # predictor bottleneck width (DeCLIP: 512)
    mlm_probability: float = 0.15  # share of caption tokens selected for MLM
    # DeCLIP's quirk: the CLIP text embedding of the caption comes from the MASKED forward pass
    # (``encode_text(texts, mask_type='MLM')``). False: also encode the unmasked caption (one more row, same pass).
    mlm_text_embedding_from_masked: bool = True
    mask_token_id: int = MASK_TOKEN_ID  # needs text_cfg.vocab_size > mask_token_id (DeCLIP configs: 49409)

    source_size: int = 0  # side of the training image the views are cut from (0: input size)

    def __post_init__(self) -> None:
        if self.view_preset not in VIEW_PRESETS:
            raise PluginError(f"declip_cfg.view_preset {self.view_preset!r} unknown; choices: {sorted(VIEW_PRESETS)}")
        if self.queue_size < 1:
            raise PluginError(f"declip_cfg.queue_size must be ≥ 1, got {self.queue_size}")
        if not 0.0 < self.mlm_probability < 1.0:
            raise PluginError(f"declip_cfg.mlm_probability must be in (0, 1), got {self.mlm_probability}")


class ViewBatchNorm1d(nn.BatchNorm1d):
    """``BatchNorm1d`` over ``[V, B, C]`` with batch statistics per view, in one call.

    Training: equals calling ``nn.BatchNorm1d`` on each ``x[v]`` in turn (outputs and running statistics). Eval, or a
    2-D input: plain ``BatchNorm1d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            return super().forward(x)
        views, batch, channels = x.shape
        if not self.training:
            return super().forward(x.reshape(views * batch, channels)).view_as(x)
        # (view, channel) pairs as channels: one fused batch_norm with the affine parameters repeated per view
        flat = x.transpose(0, 1).reshape(batch, views * channels)
        weight = self.weight.repeat(views) if self.weight is not None else None
        bias = self.bias.repeat(views) if self.bias is not None else None
        out = F.batch_norm(flat, None, None, weight, bias, training=True, eps=self.eps)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                momentum = 0.1 if self.momentum is None else self.momentum
                data = x.detach().to(self.running_mean.dtype)
                means, variances = data.mean(dim=1), data.var(dim=1, unbiased=True)
                for v in range(views):  # sequential, as V separate calls would update them
                    self.running_mean.mul_(1 - momentum).add_(means[v], alpha=momentum)
                    self.running_var.mul_(1 - momentum).add_(variances[v], alpha=momentum)
                self.num_batches_tracked.add_(views)
        return out.view(batch, views, channels).transpose(0, 1)


class SimSiamProjector(nn.Module):
    """DeCLIP's ``projection_MLP``: Linear-BN-ReLU-Linear-BN-ReLU-Linear-BN (3 layers)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            ViewBatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim),
            ViewBatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
            ViewBatchNorm1d(out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SimSiamPredictor(nn.Module):
    """DeCLIP's ``prediction_MLP``: Linear-BN-ReLU-Linear (bottleneck, no BN on the output)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            ViewBatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DeCLIP(CLIP):
    """DeCLIP on open_clip's CLIP towers (state-dict names of the towers are CLIP's own).

    Added modules: ``simsiam_projector``/``simsiam_predictor`` (``simsiam``), ``mlm_head`` (``mlm``),
    ``nns.queue``/``nns.ptr`` buffers (``nns``; excluded from DDP's broadcast).

    Training forward (``model.train()``, image and text given): ``text`` is ``[B, R, ctx]`` (R=2: caption, EDA caption;
    R=1 or ``[B, ctx]``: no EDA view). Returns a dict, batch-first:

    * ``image_features [B, 2, D]``, ``text_features [B, R, D]``: L2-normalised; row 0 of the text is the caption
      (from the masked pass when ``mlm`` and ``mlm_text_embedding_from_masked``);
    * ``logit_scale []``: exp of the log-scale, clamped to ≤ 100 in forward;
    * ``simsiam_p``, ``simsiam_z [B, 2, P]``: predictor / projector outputs of the raw (pre-normalisation) embeddings;
    * ``mlm_logits [M, vocab]``, ``mlm_labels [M]``: at the M masked positions of the captions;
    * ``text_nn [B, R, D]``: the queue's nearest neighbour of each text feature (looked up before the enqueue).

    Eval forward (or no image/text): plain CLIP ``(image_features, text_features, logit_scale)`` / dict.
    """

    def __init__(
        self,
        embed_dim: int,
        vision_cfg: Any,
        text_cfg: Any,
        declip_cfg: Optional[dict] = None,
        quick_gelu: bool = False,
        init_logit_scale: float = np.log(1 / 0.07),
        init_logit_bias: Optional[float] = None,
        nonscalar_logit_scale: bool = False,
        cast_dtype: Optional[torch.dtype] = None,
        output_dict: bool = False,
    ):
        super().__init__(
            embed_dim,
            vision_cfg,
            text_cfg,
            quick_gelu=quick_gelu,
            init_logit_scale=init_logit_scale,
            init_logit_bias=init_logit_bias,
            nonscalar_logit_scale=nonscalar_logit_scale,
            cast_dtype=cast_dtype,
            output_dict=output_dict,
        )
        cfg = from_dict(DeCLIPCfg, declip_cfg, "declip_cfg")
        self.declip_cfg = cfg
        if cfg.mlm and self.vocab_size <= cfg.mask_token_id:
            raise PluginError(
                f"declip_cfg.mlm needs text_cfg.vocab_size > mask_token_id={cfg.mask_token_id} (the "
                f"extra <|mask|> row; DeCLIP configs use 49409), got {self.vocab_size}"
            )
        self.views = InForwardViews(cfg.view_preset)
        self.view_source_size = cfg.source_size or self.visual.image_size  # what the loader gives for training
        self.simsiam_projector = self.simsiam_predictor = None
        if cfg.simsiam:
            self.simsiam_projector = SimSiamProjector(embed_dim, cfg.simsiam_proj_dim, cfg.simsiam_proj_dim)
            self.simsiam_predictor = SimSiamPredictor(
                cfg.simsiam_proj_dim, cfg.simsiam_pred_hidden, cfg.simsiam_proj_dim
            )
        # DeCLIP: Linear(transformer width, vocab) on the final-layer (ln_final) token features
        self.mlm_head = nn.Linear(self.transformer.width, self.vocab_size) if cfg.mlm else None
        self.nns = NNMemoryBank(cfg.queue_size, embed_dim) if cfg.nns else None
        # DDP must not overwrite the queue with rank 0's every forward (every rank updates its own identical copy)
        self._ddp_params_and_buffers_to_ignore = ["nns.queue", "nns.ptr"] if cfg.nns else []
        self.mlm_generator: Optional[torch.Generator] = None  # tests: a generator on the text's device

    @classmethod
    def architecture_from_shapes(cls, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
        """``declip_cfg`` switches that change the weights, read off a checkpoint's parameter shapes: a run trained
        with a term switched off (``--declip-*-weight 0``) then loads by its base config name."""
        if "logit_scale" not in shapes:
            return {}
        arch: dict[str, Any] = {
            "simsiam": "simsiam_projector.net.0.weight" in shapes,
            "mlm": "mlm_head.weight" in shapes,
            "nns": "nns.queue" in shapes,
        }
        if arch["simsiam"]:
            arch["simsiam_proj_dim"] = shapes["simsiam_projector.net.0.weight"][0]
            arch["simsiam_pred_hidden"] = shapes["simsiam_predictor.net.0.weight"][0]
        if arch["nns"]:
            arch["queue_size"] = shapes["nns.queue"][0]
        return arch

    # ------------------------------------------------------------------------------------------------- text tower

    def encode_text_tokens(
        self, text: torch.Tensor, pool_text: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One text-tower pass returning ``(pooled projected features [N, D], ln_final token features [N, ctx, W])``.

        open_clip 3.3.0's ``CLIP.encode_text`` with the token features kept; ``pool_text`` (default ``text``) are the
        ids the pooling position is read from (the unmasked caption for MLM rows).
        """
        cast_dtype = self.transformer.get_cast_dtype()
        x = self.token_embedding(text).to(cast_dtype)
        x = x + self.positional_embedding.to(cast_dtype)
        x = self.transformer(x, attn_mask=self.attn_mask)
        tokens = self.ln_final(x)  # [N, ctx, width]
        pooled = text_global_pool(
            tokens,
            text if pool_text is None else pool_text,
            self.text_pool_type,
            eos_token_id=getattr(self, "text_eos_id", None),
        )
        if self.text_projection is not None:
            pooled = (
                self.text_projection(pooled)
                if isinstance(self.text_projection, nn.Linear)
                else pooled @ self.text_projection
            )
        return pooled, tokens

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        if text.dim() == 3:  # [N, R, ctx] from the training tokenizer: the original caption
            text = text[:, 0]
        return super().encode_text(text, normalize=normalize)

    # ---------------------------------------------------------------------------------------------------- forward

    def clamped_logit_scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=MAX_LOG_SCALE).exp().reshape(())

    def forward(self, image: Optional[torch.Tensor] = None, text: Optional[torch.Tensor] = None):
        if not self.training or image is None or text is None:
            return self._eval_forward(image, text)
        cfg = self.declip_cfg
        texts = text.unsqueeze(1) if text.dim() == 2 else text  # [B, R, ctx]
        batch, rows = texts.shape[:2]

        # two views, one image-tower pass
        views, _ = self.views(image, IMAGE_VIEWS, self.visual)  # [B, 2, C, H, W]
        raw_image = self.visual(views.flatten(0, 1)).view(batch, IMAGE_VIEWS, -1)  # [B, 2, D] pre-norm

        # all text rows, one text-tower pass: [caption (masked if mlm), EDA captions..., (unmasked caption)]
        caption = texts[:, 0]
        labels = None
        ids, pool_ids = [caption], [caption]
        if cfg.mlm:
            masked, labels = mask_tokens(
                caption,
                mask_id=cfg.mask_token_id,
                num_regular=SOT_TOKEN_ID,
                eot_id=EOT_TOKEN_ID,
                probability=cfg.mlm_probability,
                generator=self.mlm_generator,
            )
            ids = [masked]
        ids += [texts[:, r] for r in range(1, rows)]
        pool_ids += [texts[:, r] for r in range(1, rows)]
        extra_unmasked = cfg.mlm and not cfg.mlm_text_embedding_from_masked
        if extra_unmasked:
            ids.append(caption)
            pool_ids.append(caption)
        stacked = torch.stack(ids, dim=1)  # [B, K, ctx]
        pooled, tokens = self.encode_text_tokens(stacked.flatten(0, 1), torch.stack(pool_ids, 1).flatten(0, 1))
        pooled = pooled.view(batch, stacked.shape[1], -1)  # [B, K, D]
        text_raw = pooled[:, :rows]
        if extra_unmasked:
            text_raw = torch.cat([pooled[:, -1:], pooled[:, 1:rows]], dim=1)

        image_features = F.normalize(raw_image, dim=-1)
        text_features = F.normalize(text_raw, dim=-1)
        out: dict[str, torch.Tensor] = {
            "image_features": image_features,  # [B, 2, D]
            "text_features": text_features,  # [B, R, D]
            "logit_scale": self.clamped_logit_scale(),  # []
        }
        if self.simsiam_projector is not None and self.simsiam_predictor is not None:
            z = self.simsiam_projector(raw_image.transpose(0, 1))  # [2, B, P], BN per view
            p = self.simsiam_predictor(z)
            out["simsiam_z"], out["simsiam_p"] = z.transpose(0, 1), p.transpose(0, 1)  # [B, 2, P]
        if self.mlm_head is not None and labels is not None:
            caption_tokens = tokens.view(batch, stacked.shape[1], *tokens.shape[1:])[:, 0]  # [B, ctx, width]
            selected = labels != IGNORE_INDEX
            out["mlm_logits"] = self.mlm_head(caption_tokens[selected])  # [M, vocab]
            out["mlm_labels"] = labels[selected]  # [M]
        if self.nns is not None:
            out["text_nn"] = self.nns.lookup(text_features)  # [B, R, D], pre-update
            if torch.is_grad_enabled():
                # DeCLIP's order: the EDA captions first, then the captions
                self.nns.enqueue(text_features[:, list(range(1, rows)) + [0]])
        return out

    def _eval_forward(self, image: Optional[torch.Tensor], text: Optional[torch.Tensor]):
        image_features = self.encode_image(image, normalize=True) if image is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        scale = self.clamped_logit_scale()
        if self.output_dict:
            out = {"image_features": image_features, "text_features": text_features, "logit_scale": scale}
            return {k: v for k, v in out.items() if v is not None}
        return image_features, text_features, scale
