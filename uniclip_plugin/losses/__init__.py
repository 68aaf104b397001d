"""Parameter-free training objectives (called as ``loss(**model_out, output_dict=True)``; see docs/DESIGN.md)."""

from .mpnce import OBJECTIVES, UniversalContrastiveLoss, universal_contrastive_loss

__all__ = ["OBJECTIVES", "UniversalContrastiveLoss", "universal_contrastive_loss"]
