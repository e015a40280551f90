"""The pointwise classification loss that the detection loss adds next to the ranking (pure torch).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ['sigmoid_cross_entropy', 'pointwise_term']


def sigmoid_cross_entropy(logits: Tensor, labels: Tensor,
                          valid: Optional[Tensor] = None) -> Tensor:
    """mmdet's ``CrossEntropyLoss(use_sigmoid=True)`` as a RoI box head computes it.

    The binary cross-entropy of every (row, class) logit of ``logits [N, C]`` against the one-hot
    label of ``labels [N]`` (``0..C-1`` foreground, ``C`` background: all 0), summed over the
    classes and averaged over the rows of ``valid`` (``[N]`` bool; all rows when ``None``);
    float32.
    """
    logits = logits.float()
    targets = labels[:, None] == torch.arange(logits.shape[1], device=labels.device)
    if valid is not None:
        logits, targets = logits[valid], targets[valid]
    return F.binary_cross_entropy_with_logits(logits, targets.float(), reduction='sum') \
        / max(logits.shape[0], 1)


def pointwise_term(logits: Tensor, labels: Tensor, valid: Optional[Tensor], balanced: bool,
                   bce_weight: float) -> Optional[Tensor]:
    """The pointwise term of one detection-loss call: ``bce_weight`` x
    :func:`sigmoid_cross_entropy` when the call used the paper's gradient (``balanced`` False:
    RoI heads), ``None`` when it used the balanced one (dense heads) or ``bce_weight`` is 0."""
    if balanced or not bce_weight:
        return None
    return bce_weight * sigmoid_cross_entropy(logits, labels, valid)
