"""RaMBOAPLoss: the mAP + interclass-AP ranking loss of RaMBO as an mmdet classification loss."""
from typing import Dict, Optional

import torch
from mmdet.registry import MODELS
from torch import Tensor, nn

from ...ranking import PositiveSet, ScoreMemory, average_precision_loss, check_scores

__all__ = ['RaMBOAPLoss']

_ACTIVATIONS = ('logits', 'sigmoid')


@MODELS.register_module()
class RaMBOAPLoss(nn.Module):
    """Average-precision loss of RaMBO (Rolínek et al., CVPR 2020), blackbox-differentiated.

    ``loss = loss_weight * ((1 - β) * L_mAP + β * L_APC)`` where

    - ``L_mAP`` is the mean of ``1 - AP_c`` over the classes ``c`` that have positives, each class
      ranking the scores of the current batch **plus a detached memory of the last τ batches**;
    - ``L_APC`` is ``1 - AP`` of all (sample, class) scores of the current batch flattened into one
      ranking (the interclass term: it orders classes against each other).

    Ranks are normalised by the ranking length, as in the paper's code, so the paper's detection
    defaults λ = 0.5, α = 0.15, τ = 7, β = 1/3 (``L_mAP : L_APC = 2 : 1``) keep their meaning.

    Unlike cross-entropy the loss is not a sum over samples: it needs every sample of the batch in
    one call. The RoI box head calls it once for all RoIs; dense heads need an all-levels head
    (``RaMBORetinaHead``, ``RaMBORPNHead``, or heads that already concatenate levels, like FCOS).

    The classifier has ``C`` channels (no background channel); ``get_activation`` appends a zero
    background column so mmdet's NMS and evaluators accept the scores.

    Args:
        use_sigmoid (bool): must be True: classes are scored independently (dense heads read it).
        lambda_val (float): blackbox interpolation strength λ. Default 0.5.
        margin (float): margin α: positives must outscore negatives by α. Default 0.15.
        memory_batches (int): τ, past batches kept in the score memory (0: none). Default 7.
        memory_max_rows (int): rows kept per remembered batch (positives first, then the
            highest-scoring negatives). Default 4096.
        interclass_weight (float): β, the weight of ``L_APC``. Default 1/3.
        score_activation (str): what is ranked: ``'logits'`` (raw scores, default) or
            ``'sigmoid'``; inference scores are ``sigmoid(logits)`` either way.
        loss_weight (float): overall weight. Default 1.0.
        name (str): name used in error messages (e.g. the head that owns the loss).
    """

    #: Tells heads that the loss ranks, so it needs all samples in one call.
    needs_all_samples = True
    custom_cls_channels = True
    custom_activation = True
    custom_accuracy = True

    def __init__(self,
                 use_sigmoid: bool = True,
                 lambda_val: float = 0.5,
                 margin: float = 0.15,
                 memory_batches: int = 7,
                 memory_max_rows: int = 4096,
                 interclass_weight: float = 1.0 / 3.0,
                 score_activation: str = 'logits',
                 loss_weight: float = 1.0,
                 name: str = 'RaMBOAPLoss') -> None:
        super().__init__()
        if not use_sigmoid:
            raise ValueError(
                f'{name}: use_sigmoid=False is not supported: RaMBOAPLoss scores each class '
                f'independently (C channels, no softmax over a background channel). Set '
                f'use_sigmoid=True in loss_cls.')
        if lambda_val <= 0:
            raise ValueError(f'{name}: lambda_val must be > 0, got {lambda_val}')
        if margin < 0:
            raise ValueError(f'{name}: margin must be >= 0, got {margin}')
        if not 0.0 <= interclass_weight <= 1.0:
            raise ValueError(f'{name}: interclass_weight must be in [0, 1], got '
                             f'{interclass_weight}')
        if score_activation not in _ACTIVATIONS:
            raise ValueError(f'{name}: score_activation must be one of {_ACTIVATIONS}, got '
                             f'{score_activation!r}')
        self.use_sigmoid = True
        self.lambda_val = float(lambda_val)
        self.margin = float(margin)
        self.interclass_weight = float(interclass_weight)
        self.score_activation = score_activation
        self.loss_weight = float(loss_weight)
        self.name = name
        self.memory = ScoreMemory(memory_batches, memory_max_rows)

    # ------------------------------------------------------------------ mmdet box-head hooks
    def get_cls_channels(self, num_classes: int) -> int:
        """The classifier outputs one channel per class (no background channel)."""
        return num_classes

    def get_activation(self, cls_score: Tensor) -> Tensor:
        """``[N, C]`` logits -> ``[N, C + 1]`` scores: sigmoid, plus a zero background column."""
        scores = cls_score.sigmoid()
        return torch.cat([scores, scores.new_zeros(scores.shape[0], 1)], dim=1)

    def get_accuracy(self, cls_score: Tensor, labels: Tensor) -> Dict[str, Tensor]:
        """Top-1 class accuracy (%) over the foreground samples (AP-trained scores have no
        meaningful foreground/background threshold, so background samples are left out)."""
        foreground = (labels >= 0) & (labels < cls_score.shape[1])
        hits = (cls_score.detach().argmax(dim=1) == labels) & foreground
        return dict(acc=hits.sum().float() * 100.0 / foreground.sum().clamp(min=1).float())

    # ------------------------------------------------------------------ loss
    def _check_inputs(self, cls_score: Tensor, labels: Tensor,
                      label_weights: Optional[Tensor]) -> None:
        if cls_score.dim() != 2:
            raise ValueError(f'{self.name}: cls_score must have shape [N, C], got '
                             f'{tuple(cls_score.shape)}')
        num_samples, num_classes = cls_score.shape
        if labels.shape != (num_samples, ):
            raise ValueError(f'{self.name}: labels must have shape [{num_samples}], got '
                             f'{tuple(labels.shape)}')
        if label_weights is not None and label_weights.shape[0] != num_samples:
            raise ValueError(f'{self.name}: label_weights must have {num_samples} rows, got '
                             f'{tuple(label_weights.shape)}')
        if num_samples and not bool(((labels >= 0) & (labels <= num_classes)).all()):
            bad = labels[(labels < 0) | (labels > num_classes)]
            raise ValueError(f'{self.name}: labels must be in 0..{num_classes} ({num_classes} = '
                             f'background), got {bad[:5].tolist()}')
        check_scores(cls_score, name=f'{self.name}: cls_score')

    def forward(self,
                cls_score: Tensor,
                labels: Tensor,
                label_weights: Optional[Tensor] = None,
                avg_factor: Optional[float] = None,
                reduction_override: Optional[str] = None) -> Tensor:
        """Compute the loss.

        Args:
            cls_score (Tensor): ``[N, C]`` class logits, any floating dtype (computed in float32).
            labels (Tensor): ``[N]`` int64, ``0..C-1`` foreground, ``C`` background.
            label_weights (Tensor, optional): ``[N]`` (or ``[N, C]``, reduced per row); rows with
                weight 0 are ignored, any positive weight counts as 1 (ranks are not weighted).
            avg_factor: ignored: AP is already normalised.
            reduction_override: accepted for mmdet compatibility; the loss is always a scalar.

        Returns:
            Tensor: float32 scalar. Zero (with zero gradient, graph intact) when there is no
            positive in the batch nor in the memory.
        """
        if reduction_override not in (None, 'none', 'mean', 'sum'):
            raise ValueError(f'{self.name}: unknown reduction_override {reduction_override!r}')
        self._check_inputs(cls_score, labels, label_weights)
        num_classes = cls_score.shape[1]
        scores, labels = cls_score, labels.long()
        if label_weights is not None:
            keep = (label_weights if label_weights.dim() == 1 else
                    label_weights.flatten(1).amax(dim=1)) > 0
            if not bool(keep.all()):
                scores, labels = scores[keep], labels[keep]
        if self.score_activation == 'sigmoid':
            scores = scores.float().sigmoid()

        remember = self.training and self.memory.num_batches > 0
        class_scores, class_labels = (self.memory.extend(scores, labels) if remember
                                      else (scores.float(), labels))
        map_loss, has_positive = average_precision_loss(
            class_scores, PositiveSet.from_labels(class_labels, num_classes), self.lambda_val,
            self.margin)
        loss = (1.0 - self.interclass_weight) * map_loss.sum() / has_positive.sum().clamp(min=1)

        if self.interclass_weight > 0:
            flat_scores = scores.float().reshape(-1, 1)
            apc_loss, _ = average_precision_loss(
                flat_scores, PositiveSet.from_labels(labels, num_classes, flatten=True),
                self.lambda_val, self.margin)
            loss = loss + self.interclass_weight * apc_loss.sum()

        if remember:
            self.memory.push(scores, labels)
        return self.loss_weight * loss

    def extra_repr(self) -> str:
        return (f'lambda_val={self.lambda_val}, margin={self.margin}, '
                f'interclass_weight={self.interclass_weight:.4g}, '
                f'score_activation={self.score_activation!r}, loss_weight={self.loss_weight}')
