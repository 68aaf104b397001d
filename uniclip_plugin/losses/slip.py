r"""SLIP's objective: CLIP InfoNCE + ``ssl_scale`` · SimCLR NT-Xent, after ``facebookresearch/SLIP``
``losses.py`` (``CLIPLoss``, ``SIMCLRLoss``, ``SLIPLoss``).

With rows ``R`` (this rank's samples under ``local_loss``, else the whole global batch), columns the gathered global
batch of ``N`` samples, ``ℓ(x, y) = CE(x, y)`` the mean cross-entropy over rows, ``label(i)`` row i's global index and
every embedding L2-normalised inside (as SLIP does):

* CLIP: ``L_clip = ½ [ ℓ(s·I_R T_allᵀ, label) + ℓ(s·T_R I_allᵀ, label) ]``, ``s`` the model's (clamped) logit scale.
* NT-Xent, views a and b with temperature τ: ``logits_ab = q_a k_bᵀ/τ``, ``logits_aa = q_a k_aᵀ/τ`` with each row's own
  column (its ``label``) masked by −1e9 (SLIP subtracts a one-hot·1e9); ``loss_a = ℓ([logits_ab | logits_aa], label)``,
  ``loss_b`` likewise with a ↔ b; ``L_ssl = ½ (loss_a + loss_b)``.
* Total: ``L = L_clip + ssl_scale · L_ssl``.

Deviation from SLIP, on purpose: every term all-gathers WITH gradient (``torch.distributed.nn.all_gather``). SLIP's
``CLIPLoss`` gathers without gradient (``utils.all_gather_batch``), so with local rows its gradient misses the other
ranks' terms of its columns (SLIP issue #31); with the gradient gather, ``--local-loss`` gives the exact global-batch
loss and gradient (tests/test_slip.py, 2 gloo ranks). Without ``--local-loss`` every rank computes the whole global
loss; the gather's backward then hands each rank ``world_size ×`` the gradient of its features, which DDP's mean over
ranks turns back into the exact global gradient, so both layouts train the same model (``--local-loss`` is cheaper).

Everything is computed in float32 (float64 stays float64) with autocast off, like the MP-NCE loss.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import gather_rows_with_grad

SELF_MASK = 1e9  # SLIP's mask value (losses.py: ``F.one_hot(labels, total) * 1e9``)
SSL_SCALE = 1.0  # SLIP's weight of the SimCLR term (main.py ``--ssl-scale``)
SSL_TEMP = 0.1  # SLIP's NT-Xent temperature (main.py ``--ssl-temp``)


def clip_infonce(
    img_rows: torch.Tensor,
    txt_rows: torch.Tensor,
    img_cols: torch.Tensor,
    txt_cols: torch.Tensor,
    logit_scale: torch.Tensor,
    labels: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric CLIP InfoNCE over normalised features (SLIP ``CLIPLoss``); returns ``(loss, image→text acc %)``."""
    logits_per_image = logit_scale * img_rows @ txt_cols.T  # [R, N]
    logits_per_text = logit_scale * txt_rows @ img_cols.T  # [R, N]
    loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
    with torch.no_grad():
        acc = 100.0 * (logits_per_image.argmax(dim=-1) == labels).float().mean()
    return loss, acc


def simclr_ntxent(
    q_a: torch.Tensor, q_b: torch.Tensor, k_a: torch.Tensor, k_b: torch.Tensor, labels: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """SLIP's ``SIMCLRLoss`` over normalised rows ``q`` and gathered columns ``k``; returns ``(loss, acc %)``."""
    self_mask = F.one_hot(labels, k_a.shape[0]).bool()  # [R, N]: each row's self
    logits_aa = (q_a @ k_a.T / temperature).masked_fill(self_mask, -SELF_MASK)  # [R, N]
    logits_bb = (q_b @ k_b.T / temperature).masked_fill(self_mask, -SELF_MASK)  # [R, N]
    logits_ab = q_a @ k_b.T / temperature  # [R, N]: positive at label
    logits_ba = q_b @ k_a.T / temperature  # [R, N]
    logits_a = torch.cat([logits_ab, logits_aa], dim=1)  # [R, 2N]
    logits_b = torch.cat([logits_ba, logits_bb], dim=1)  # [R, 2N]
    loss = (F.cross_entropy(logits_a, labels) + F.cross_entropy(logits_b, labels)) / 2
    with torch.no_grad():
        acc = 100.0 * (logits_a.argmax(dim=-1) == labels).float().mean()  # SLIP: view a only
    return loss, acc


def slip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    ssl_embed_1: torch.Tensor,
    ssl_embed_2: torch.Tensor,
    *,
    ssl_scale: float = SSL_SCALE,
    ssl_temp: float = SSL_TEMP,
    local_loss: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, torch.Tensor]:
    """SLIP's loss on one rank's outputs; the equations are in the module docstring.

    Args:
        image_features: ``[B, D]`` CLIP-view image embeddings (normalised again here, as SLIP does).
        text_features: ``[B, D]`` text embeddings.
        logit_scale: ``[]`` or ``[1]`` image–text logit scale (already exp'd).
        ssl_embed_1, ssl_embed_2: ``[B, E]`` SimCLR head outputs of the two SSL views (normalised here).
        ssl_scale: weight of the NT-Xent term; ssl_temp: its temperature τ.
        local_loss: rows are this rank's samples (else every gathered sample); only matters when ``world_size > 1``.
        rank: this process's rank; world_size: number of ranks (1 = no gather).

    Returns:
        ``{"clip_loss", "ssl_loss" (= ssl_scale · NT-Xent)}`` (summed by open_clip_train) plus detached metrics not
        ending in ``_loss``: ``ssl_ntxent`` (unscaled), ``clip_acc``, ``ssl_acc`` (percent, as SLIP logs them).

    Raises:
        ValueError: malformed shapes or an impossible option.
    """
    _check_options(ssl_scale, ssl_temp, rank, world_size)
    _check_inputs(image_features, text_features, ssl_embed_1, ssl_embed_2)
    batch = image_features.shape[0]
    work = torch.promote_types(image_features.dtype, torch.float32)
    with torch.autocast(device_type=image_features.device.type, enabled=False):
        img, txt, z_1, z_2 = (
            F.normalize(t.to(work), dim=-1) for t in (image_features, text_features, ssl_embed_1, ssl_embed_2)
        )
        all_img, all_txt, all_z1, all_z2 = gather_rows_with_grad([img, txt, z_1, z_2], rank=rank, world_size=world_size)
        if world_size == 1 or local_loss:
            rows = (img, txt, z_1, z_2)
            labels = rank * batch + torch.arange(batch, device=img.device)  # global index of each row
        else:
            rows = (all_img, all_txt, all_z1, all_z2)
            labels = torch.arange(all_img.shape[0], device=img.device)
        scale = logit_scale.to(work).reshape(())
        clip, clip_acc = clip_infonce(rows[0], rows[1], all_img, all_txt, scale, labels)
        ssl, ssl_acc = simclr_ntxent(rows[2], rows[3], all_z1, all_z2, labels, ssl_temp)
    return {
        "clip_loss": clip,
        "ssl_loss": ssl_scale * ssl,
        "ssl_ntxent": ssl.detach(),
        "clip_acc": clip_acc,
        "ssl_acc": ssl_acc,
    }


class SLIPLoss(nn.Module):
    """Parameter-free module around :func:`slip_loss` for open_clip_train (``--loss slip``).

    Called as ``loss(**model_out, output_dict=True)`` with SLIP's training outputs ``image_features [B, D]``,
    ``text_features [B, D]``, ``logit_scale``, ``ssl_embed_1`` / ``ssl_embed_2 [B, E]``; other keys are ignored.
    ``local_loss`` defaults to False like open_clip_train's flag; the gather always carries the gradient.
    """

    def __init__(
        self,
        ssl_scale: float = SSL_SCALE,
        ssl_temp: float = SSL_TEMP,
        local_loss: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__()
        _check_options(ssl_scale, ssl_temp, rank, world_size)
        self.ssl_scale, self.ssl_temp = float(ssl_scale), float(ssl_temp)
        self.local_loss, self.rank, self.world_size = local_loss, rank, world_size

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        ssl_embed_1: torch.Tensor,
        ssl_embed_2: torch.Tensor,
        output_dict: bool = False,
        **_: Any,
    ) -> Any:
        """The dict of :func:`slip_loss` if ``output_dict`` else the total loss tensor."""
        out = slip_loss(
            image_features,
            text_features,
            logit_scale,
            ssl_embed_1,
            ssl_embed_2,
            ssl_scale=self.ssl_scale,
            ssl_temp=self.ssl_temp,
            local_loss=self.local_loss,
            rank=self.rank,
            world_size=self.world_size,
        )
        return out if output_dict else out["clip_loss"] + out["ssl_loss"]

    def extra_repr(self) -> str:
        return (
            f"ssl_scale={self.ssl_scale}, ssl_temp={self.ssl_temp}, local_loss={self.local_loss}, "
            f"rank={self.rank}, world_size={self.world_size}"
        )


def _check_options(ssl_scale: float, ssl_temp: float, rank: int, world_size: int) -> None:
    if not ssl_temp > 0:
        raise ValueError(f"ssl_temp must be > 0 (SLIP: {SSL_TEMP}), got {ssl_temp}")
    if not ssl_scale >= 0:
        raise ValueError(f"ssl_scale must be ≥ 0 (SLIP: {SSL_SCALE}), got {ssl_scale}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need world_size ≥ 1 and 0 ≤ rank < world_size, got rank={rank}, world_size={world_size}")


def _check_inputs(
    image_features: torch.Tensor, text_features: torch.Tensor, ssl_embed_1: torch.Tensor, ssl_embed_2: torch.Tensor
) -> None:
    if image_features.dim() != 2 or image_features.shape[0] < 1:
        raise ValueError(
            f"image_features must be a non-empty [B, D] (one CLIP view per sample), got "
            f"{tuple(image_features.shape)}: is the model a SLIP model?"
        )
    if tuple(text_features.shape) != tuple(image_features.shape):
        raise ValueError(
            f"text_features must be [B, D] = {list(image_features.shape)} like image_features, got "
            f"{tuple(text_features.shape)}"
        )
    batch = image_features.shape[0]
    for name, t in (("ssl_embed_1", ssl_embed_1), ("ssl_embed_2", ssl_embed_2)):
        if t.dim() != 2 or t.shape[0] != batch or t.shape != ssl_embed_1.shape:
            raise ValueError(
                f"{name} must be [B, E] with B = {batch} and both SSL embeddings of one shape, got {tuple(t.shape)}"
            )
