"""DeCLIP's objective: 0.4·MVS + 0.2·SimSiam + 0.2·MLM + 0.2·NNS.

Follows Sense-GVT/DeCLIP ``prototype/solver/declip_solver.py`` (``ClsSolver.train``) with
``prototype/loss_functions/loss.py`` (``ClipInfoCELoss``, ``SimsiamLoss``) and the logits of
``prototype/model/declip.py``:

* MVS (``image_text_two_view``): mean of the 4 symmetric InfoNCE losses of (x1,t), (x2,t), (x1,t_aug), (x2,t_aug),
  each ½[CE(image→text) + CE(text→image)], one shared logit scale. Without an EDA row: the 2 losses of (x1,t),
  (x2,t).
* SimSiam: −½[cos(p1, sg(z2)) + cos(p2, sg(z1))], batch means.
* MLM: cross-entropy over the masked caption positions (mean over this rank's masked tokens, as DeCLIP).
* NNS: image→text only, CE of each image view against the nearest-neighbour texts NN(t) and NN(t_aug) of the batch:
  mean over views of ½[CE(x_v→NN(t)) + CE(x_v→NN(t_aug))].

Distributed, like open_clip's ``ClipLoss`` (``rank``/``world_size``/``local_loss``): the contrastive terms (MVS, NNS)
all-gather the features WITH gradient (``torch.distributed.nn.all_gather``), so they are the true global-batch loss
and gradient; ``local_loss`` computes only this rank's rows against all columns (labels offset by ``rank·B``).
Where we differ from DeCLIP's code: DeCLIP's gather carries no gradient (only local rows/columns get one); SimSiam
and MLM stay per-rank means (as DeCLIP; DDP averages them over ranks).

Every term is weighted by its ``*_weight``; weight 0 drops the term (its key is not returned).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import gather_rows_with_grad
from ..errors import PluginError

DEFAULT_WEIGHTS = {"mvs": 0.4, "simsiam": 0.2, "mlm": 0.2, "nns": 0.2}  # DeCLIP yfcc15m_vit_declip config


def info_nce(rows: torch.Tensor, columns: torch.Tensor, scale: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``scale · rows @ columns.T`` against ``labels`` (column index of each row's positive)."""
    return F.cross_entropy(scale * rows @ columns.T, labels)


def simsiam_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """−½[cos(p1, sg z2) + cos(p2, sg z1)] for ``p, z [B, 2, P]`` (DeCLIP ``SimsiamLoss``, symmetric)."""
    z = z.detach()  # stop-gradient
    return -0.5 * (
        F.cosine_similarity(p[:, 0], z[:, 1], dim=-1).mean() + F.cosine_similarity(p[:, 1], z[:, 0], dim=-1).mean()
    )


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean CE over the masked positions; 0 (with a graph) when none was masked (CE's mean would be NaN)."""
    if labels.numel() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), labels)  # ≥ fp32 softmax


class DeCLIPLoss(nn.Module):
    """Parameter-free DeCLIP loss over the training output of ``model.declip.DeCLIP``.

    Args:
        mvs_weight, simsiam_weight, mlm_weight, nns_weight: term weights (DeCLIP: 0.4, 0.2, 0.2, 0.2); 0 drops a term.
        local_loss: contrastive rows from this rank only (open_clip ``--local-loss``); else every rank computes all
            rows (same value on every rank).
        rank, world_size: this process in the default process group.
    """

    def __init__(
        self,
        mvs_weight: float = DEFAULT_WEIGHTS["mvs"],
        simsiam_weight: float = DEFAULT_WEIGHTS["simsiam"],
        mlm_weight: float = DEFAULT_WEIGHTS["mlm"],
        nns_weight: float = DEFAULT_WEIGHTS["nns"],
        local_loss: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__()
        self.weights = {
            "mvs": float(mvs_weight),
            "simsiam": float(simsiam_weight),
            "mlm": float(mlm_weight),
            "nns": float(nns_weight),
        }
        self.local_loss = local_loss
        self.rank = rank
        self.world_size = world_size

    def _required(self, term: str, value: Optional[torch.Tensor], key: str) -> torch.Tensor:
        if value is None:
            raise PluginError(
                f"DeCLIP {term} term has weight {self.weights[term]} but the model output lacks "
                f"'{key}' (its declip_cfg switched the part off); set --declip-{term}-weight 0"
            )
        return value

    def _contrastive(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        nn_text: Optional[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """MVS (and NNS when ``nn_text`` is given): this rank's rows (``local_loss``) or every row, against the
        columns gathered with gradient; plus the image→text accuracy of view 0 against captions."""
        w, out = self.weights, {}
        batch, views, rows = image_features.shape[0], image_features.shape[1], text_features.shape[1]
        local = [image_features, text_features] + ([nn_text] if nn_text is not None else [])
        gathered = gather_rows_with_grad(local, rank=self.rank, world_size=self.world_size)
        all_image, all_text = gathered[0], gathered[1]
        if self.local_loss or self.world_size <= 1:
            row_image, row_text = image_features, text_features
            offset = self.rank * batch if self.world_size > 1 else 0
            labels = torch.arange(batch, device=image_features.device) + offset
        else:
            row_image, row_text = all_image, all_text
            labels = torch.arange(all_image.shape[0], device=image_features.device)
        if w["mvs"] > 0:
            terms = [
                0.5
                * (
                    info_nce(row_image[:, v], all_text[:, r], logit_scale, labels)
                    + info_nce(row_text[:, r], all_image[:, v], logit_scale, labels)
                )
                for r in range(rows)
                for v in range(views)
            ]
            out["mvs_loss"] = w["mvs"] * torch.stack(terms).mean()
        if nn_text is not None:
            terms = [
                info_nce(row_image[:, v], gathered[2][:, r], logit_scale, labels)
                for v in range(views)
                for r in range(rows)
            ]
            out["nns_loss"] = w["nns"] * torch.stack(terms).mean()
        with torch.no_grad():
            out["i2t_acc"] = ((row_image[:, 0] @ all_text[:, 0].T).argmax(-1) == labels).float().mean()
        return out

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        simsiam_p: Optional[torch.Tensor] = None,
        simsiam_z: Optional[torch.Tensor] = None,
        mlm_logits: Optional[torch.Tensor] = None,
        mlm_labels: Optional[torch.Tensor] = None,
        text_nn: Optional[torch.Tensor] = None,
        output_dict: bool = True,
        **_: Any,
    ) -> dict[str, torch.Tensor]:
        """Weighted terms ``{mvs,simsiam,mlm,nns}_loss`` (enabled ones) and detached metrics.

        Args:
            image_features: ``[B, 2, D]`` normalised views; text_features: ``[B, R, D]`` normalised captions
                (row 0) and EDA captions; logit_scale: ``[]`` (already exp'd); text_nn: ``[B, R, D]`` normalised
                nearest neighbours (no gradient); simsiam_p/z: ``[B, 2, P]``; mlm_logits ``[M, V]``/labels ``[M]``.
        """
        w = self.weights
        out: dict[str, torch.Tensor] = {}
        if w["mvs"] > 0 or w["nns"] > 0:
            nn_text = self._required("nns", text_nn, "text_nn").detach() if w["nns"] > 0 else None
            out.update(self._contrastive(image_features, text_features, logit_scale, nn_text))
        if w["simsiam"] > 0:
            out["simsiam_loss"] = w["simsiam"] * simsiam_loss(
                self._required("simsiam", simsiam_p, "simsiam_p"), self._required("simsiam", simsiam_z, "simsiam_z")
            )
        if w["mlm"] > 0:
            out["mlm_loss"] = w["mlm"] * mlm_loss(
                self._required("mlm", mlm_logits, "mlm_logits"), self._required("mlm", mlm_labels, "mlm_labels")
            )
        out["logit_scale"] = logit_scale.detach()
        return out
