"""The pointwise classification loss that the detection loss adds next to the ranking (pure torch).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ['sigmoid_cross_entropy', 'softmax_cross_entropy', 'sigmoid_focal_loss',
           'pointwise_term', 'CROSS_ENTROPIES']


def sigmoid_cross_entropy(logits: Tensor, labels: Tensor,
                          valid: Optional[Tensor] = None) -> Tensor:
    """mmdet's ``CrossEntropyLoss(use_sigmoid=True)`` as a RoI box head computes it.

    The binary cross-entropy of every (row, class) logit of ``logits [N, C]`` against the one-hot
    label of ``labels [N]`` (``0..C-1`` foreground, ``C`` background: all 0), summed over the
    classes and averaged over the rows of ``valid`` (``[N]`` bool; all rows when ``None``);
    float32.
    """
    logits = logits.float().contiguous()  # every layout computed alike, bit for bit
    targets = labels[:, None] == torch.arange(logits.shape[1], device=labels.device)
    if valid is None:
        return F.binary_cross_entropy_with_logits(logits, targets.float(), reduction='sum') \
            / max(logits.shape[0], 1)
    loss = F.binary_cross_entropy_with_logits(logits, targets.float(), reduction='none')
    return _masked_sum(loss, valid) / valid.sum().clamp(min=1)


def softmax_cross_entropy(logits: Tensor, labels: Tensor,
                          valid: Optional[Tensor] = None) -> Tensor:
    """mmdet's softmax ``CrossEntropyLoss`` of a box head, the background logit held at 0.

    The cross-entropy of the softmax over ``[logits, 0]`` (``logits [N, C]`` and a constant zero
    background column, the column that ``get_activation`` appends at test time) against
    ``labels [N]`` (``C``: background), averaged over the rows of ``valid`` (all rows when
    ``None``); float32. A stock box head learns ``C + 1`` logits; a softmax does not change when
    one constant is added to a row, so holding the background logit at 0 loses nothing: it is the
    stock loss of the same classifier (its logits minus the background logit).
    """
    logits = logits.float().contiguous()
    logits = torch.cat([logits, logits.new_zeros(logits.shape[0], 1)], dim=1)
    loss = F.cross_entropy(logits, labels.long(), reduction='none')
    if valid is None:
        return loss.sum() / max(logits.shape[0], 1)
    return _masked_sum(loss[:, None], valid) / valid.sum().clamp(min=1)


#: The cross-entropy term's kinds (``RaMBOAPLoss(cross_entropy=...)``).
CROSS_ENTROPIES = {'sigmoid': sigmoid_cross_entropy, 'softmax': softmax_cross_entropy}


def _masked_sum(loss: Tensor, valid: Tensor) -> Tensor:
    """Sum of the rows ``valid`` of ``loss [N, C]``, without selecting them (selecting reads
    their number on the host on CUDA, forward and backward)."""
    return torch.where(valid[:, None], loss, torch.zeros_like(loss)).sum()


def sigmoid_focal_loss(logits: Tensor, labels: Tensor, valid: Optional[Tensor] = None,
                       gamma: float = 2.0, alpha: float = 0.25) -> Tensor:
    """mmdet's ``FocalLoss(use_sigmoid=True)`` as a dense head computes it.

    The focal loss of every (row, class) logit of ``logits [N, C]`` against the one-hot label of
    ``labels [N]`` (``C``: background), summed over the rows of ``valid`` and the classes and
    divided by the number of positive rows among them (mmdet's ``avg_factor``; at least 1);
    float32.
    """
    logits = logits.float().contiguous()  # every layout computed alike, bit for bit
    positive = labels[:, None] == torch.arange(logits.shape[1], device=labels.device)
    targets = positive.float()
    prob = logits.sigmoid()
    miss = (1 - prob) * targets + prob * (1 - targets)
    weight = (alpha * targets + (1 - alpha) * (1 - targets)) * miss.pow(gamma)
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction='none') * weight
    if valid is None:
        return loss.sum() / targets.sum().clamp(min=1)
    return _masked_sum(loss, valid) / (positive & valid[:, None]).sum().clamp(min=1)


def pointwise_term(logits: Tensor, labels: Tensor, valid: Optional[Tensor], balanced: bool,
                   bce_weight: float, focal_weight: float = 0.0,
                   cross_entropy: str = 'sigmoid') -> Optional[Tensor]:
    """The pointwise term of one detection-loss call: ``bce_weight`` x the ``cross_entropy``
    term (:func:`sigmoid_cross_entropy` or :func:`softmax_cross_entropy`) when the call used the
    paper's gradient (``balanced`` False: RoI heads), ``focal_weight`` x
    :func:`sigmoid_focal_loss` when it used the balanced one (dense heads); ``None`` when that
    weight is 0."""
    if balanced:
        return focal_weight * sigmoid_focal_loss(logits, labels, valid) if focal_weight else None
    if not bce_weight:
        return None
    return bce_weight * CROSS_ENTROPIES[cross_entropy](logits, labels, valid)
