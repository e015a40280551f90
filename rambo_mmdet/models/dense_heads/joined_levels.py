"""One classification-loss call for heads whose own loss code calls ``loss_cls`` per FPN level.

:class:`~.all_levels_loss.AllLevelsClsLossMixin` rewrites ``AnchorHead.loss_by_feat``. Heads
with their own per-level loss code (``ATSSHead`` computes centerness targets, decodes boxes and
weights the box loss per level) would each need their own rewrite. Instead,
:class:`JoinedLevelsClsLossMixin` runs the stock ``loss_by_feat`` unchanged, with ``loss_cls``
swapped for a recorder that keeps each level's ``(cls_score, labels, label_weights,
avg_factor)`` and returns 0, and then calls the real ``loss_cls`` once on the concatenation.
Target assignment, the box and centerness losses are the stock head's, computed by the stock
code. With a per-element loss (focal) the joined value equals the stock head's sum over levels.

Rows are level-major (level 0 of every image first: the order the stock code flattens each level
in); a ranking does not depend on the order of its rows.
"""
from typing import Optional

import torch
from torch import Tensor, nn

from .ranking_head import RankingLossHeadMixin

__all__ = ['JoinedLevelsClsLossMixin']


class _LevelCallRecorder(nn.Module):
    """Stands in for ``loss_cls`` during the stock per-level loop: records each call's inputs and
    returns a zero that keeps the scores in the graph."""

    def __init__(self, head_name: str, loss_name: str) -> None:
        super().__init__()
        self.head_name, self.loss_name = head_name, loss_name
        self.calls = []

    def forward(self, cls_score: Tensor, labels: Tensor, label_weights: Optional[Tensor] = None,
                avg_factor: Optional[float] = None, reduction_override: Optional[str] = None,
                **kwargs) -> Tensor:
        where = f'{self.head_name}: its per-level loss code calls loss_cls={self.loss_name}'
        if kwargs or not torch.is_tensor(labels):
            raise TypeError(f'{where} with {type(labels).__name__} targets and '
                            f'{sorted(kwargs)} options; joining the levels needs '
                            'loss_cls(cls_score, labels, label_weights, avg_factor=...)')
        if reduction_override is not None:
            raise ValueError(f'{where} with reduction_override={reduction_override!r}; joining '
                             'the levels needs the loss\'s own reduction')
        self.calls.append((cls_score, labels, label_weights, avg_factor))
        return cls_score.sum() * 0

    def joined(self) -> tuple:
        """``(cls_score [R, C], labels [R], label_weights [R] or None, avg_factor)`` of all
        recorded calls."""
        if not self.calls:
            raise RuntimeError(f'{self.head_name}: its loss code did not call loss_cls')
        scores, labels, weights, factors = zip(*self.calls)
        if any(f != factors[0] for f in factors):
            raise ValueError(f'{self.head_name}: the levels\' loss_cls calls have different '
                             f'avg_factor values {factors}; they cannot be joined')
        if any(w is None for w in weights) and not all(w is None for w in weights):
            weights = [torch.ones_like(lab, dtype=scores[0].dtype) if w is None else w
                       for w, lab in zip(weights, labels)]
        joined_weights = None if weights[0] is None else torch.cat(weights)
        return (torch.cat(scores), torch.cat([lab.reshape(-1) for lab in labels]),
                joined_weights, factors[0])


class JoinedLevelsClsLossMixin(RankingLossHeadMixin):
    """Mixin (first base) for dense heads whose ``loss_by_feat`` calls ``loss_cls`` per level.

    Use it as ``class MyHead(JoinedLevelsClsLossMixin, ATSSHead)``. The stock ``loss_by_feat``
    runs unchanged; its classification entry (:attr:`cls_loss_key`, a list of per-level values
    in the stock head) becomes the one joined call's scalar. The other entries are the stock
    head's. Requirements on the stock code: each level calls ``loss_cls(cls_score [R_l, C],
    labels [R_l], label_weights, avg_factor=...)`` with the same ``avg_factor`` (a recorder
    raises ``TypeError`` / ``ValueError`` naming the head otherwise: e.g. ``GFLHead`` passes
    ``(labels, quality)`` targets, which a ranking loss cannot take).
    """

    #: the entry of the stock head's loss dict that holds the classification losses
    cls_loss_key = 'loss_cls'

    def loss_by_feat(self, *args, **kwargs) -> dict:
        """The stock losses, with one ``loss_cls`` call over all levels and images."""
        loss_cls = self.loss_cls
        recorder = _LevelCallRecorder(type(self).__name__, type(loss_cls).__name__)
        self.loss_cls = recorder
        try:
            losses = super().loss_by_feat(*args, **kwargs)
        finally:
            self.loss_cls = loss_cls
        cls_score, labels, label_weights, avg_factor = recorder.joined()
        losses[self.cls_loss_key] = loss_cls(cls_score, labels, label_weights,
                                             avg_factor=avg_factor)
        return losses
