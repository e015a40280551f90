"""Rank-based losses on score matrices, built on the blackbox ranker (pure torch).

All functions take ``scores`` of shape ``[n, G]``: ``G`` independent rankings (columns) of length
``n``, and the positives as a ``[n, G]`` bool mask or a :class:`PositiveSet` (cheaper to build from
labels: ``PositiveSet.from_labels``). They compute in float32 whatever the input dtype (float16 and
bfloat16 included) and return float32.

Margin α: before ranking, negatives are shifted up by α/2 and positives down by α/2, so a positive
must beat a negative by α to rank above it (applied inside the ranker, to the positives only).
"""
from typing import Tuple, Union

import torch
from torch import Tensor

from .blackbox import rank_positives
from .counting import PositiveSet

__all__ = ['check_scores', 'as_positive_set', 'average_precision_loss', 'mean_ap_loss',
           'recall_loss']


def check_scores(scores: Tensor, name: str = 'scores') -> None:
    """Raise a ``ValueError`` naming the problem for malformed ranking input.

    Checks that ``scores`` is a 2-D floating tensor whose values are all finite. The finiteness
    test is one reduction and one host sync (a sum, confirmed element-wise only when it fails).
    """
    if not torch.is_tensor(scores) or not scores.is_floating_point():
        raise ValueError(f'{name} must be a floating-point tensor, got {type(scores).__name__} '
                         f'{getattr(scores, "dtype", "")}')
    if scores.dim() != 2:
        raise ValueError(f'{name} must have shape [n, G], got {tuple(scores.shape)}')
    if scores.numel() and not bool(torch.isfinite(scores.detach().float().sum())):
        bad = int((~torch.isfinite(scores.detach())).sum())
        if bad:
            raise ValueError(f'{name} contains {bad} NaN/Inf value(s); their ranking is undefined '
                             f'(check the learning rate, the loss weight, AMP overflow)')


def as_positive_set(scores: Tensor, positive: Union[Tensor, PositiveSet]) -> PositiveSet:
    """Accept a ``[n, G]`` bool mask or a :class:`PositiveSet`; validate it against ``scores``."""
    if isinstance(positive, PositiveSet):
        if positive.group_end.numel() != scores.shape[1]:
            raise ValueError(f'the positives describe {positive.group_end.numel()} rankings, '
                             f'the scores {scores.shape[1]}')
        return positive
    if not torch.is_tensor(positive) or positive.dtype != torch.bool \
            or positive.shape != scores.shape:
        raise ValueError(f'the positive mask must be a bool tensor of shape {tuple(scores.shape)}'
                         f', got {getattr(positive, "dtype", type(positive).__name__)} '
                         f'{tuple(getattr(positive, "shape", ()))}')
    return PositiveSet.from_mask(positive)


def _zero_loss(scores: Tensor) -> Tensor:
    """A zero that keeps the graph: zero loss, zero gradient, ``backward()`` still works."""
    return scores.float().sum() * 0.0


def average_precision_loss(scores: Tensor, positive: Union[Tensor, PositiveSet],
                           lambda_val: float = 0.5,
                           margin: float = 0.0) -> Tuple[Tensor, Tensor]:
    """Per-ranking AP loss ``1 - AP`` of each column, with the blackbox gradient.

    ``AP = mean over positives i of rk+(i) / rk(i)`` (``rk+``: rank among positives, a constant).
    The scores are not checked here (see :func:`check_scores`).

    Args:
        scores (Tensor): ``[n, G]`` scores, any floating dtype (computed in float32).
        positive (Tensor | PositiveSet): ``[n, G]`` bool mask, or the positive set.
        lambda_val (float): blackbox interpolation strength λ.
        margin (float): margin α.

    Returns:
        tuple(Tensor, Tensor): ``loss`` ``[G]`` float32 (0 for a column without positives) and
        ``has_positive`` ``[G]`` bool.
    """
    positives = as_positive_set(scores, positive)
    num_groups = scores.shape[1]
    count = positives.group_end - positives.group_start
    has_positive = count > 0
    rank, rank_among_positives = rank_positives(scores.float(), positives, lambda_val, margin)
    if rank.numel() == 0:  # keep the graph: zero loss, zero gradient
        return _zero_loss(scores).expand(num_groups), has_positive
    precision_sum = rank.new_zeros(num_groups).index_add(0, positives.group,
                                                         rank_among_positives / rank)
    ap = precision_sum / count.clamp(min=1)
    return torch.where(has_positive, 1.0 - ap, torch.zeros_like(ap)), has_positive


def mean_ap_loss(scores: Tensor, positive: Union[Tensor, PositiveSet], lambda_val: float = 0.5,
                 margin: float = 0.0) -> Tensor:
    """Mean of ``1 - AP`` over the columns that have positives (0 when none has).

    Args and dtypes as :func:`average_precision_loss`; returns a float32 scalar.
    """
    check_scores(scores)
    loss, has_positive = average_precision_loss(scores, positive, lambda_val, margin)
    return loss.sum() / has_positive.sum().clamp(min=1)


def recall_loss(scores: Tensor, positive: Union[Tensor, PositiveSet], lambda_val: float = 0.5,
                margin: float = 0.0, log_log: bool = False) -> Tensor:
    """The paper's refined recall loss, mean over positives of ``log(1 + r_i)``.

    ``r_i`` is the number of negatives ranked above positive ``i`` (at or above, by the tie
    convention), ``r_i = rk(i) - rk+(i)``; with ``log_log`` the loss is ``log(1 + log(1 + r_i))``.
    Only ``rk`` goes through the blackbox.

    Args:
        scores (Tensor): ``[n, G]`` scores, each column one ranking (e.g. one query's gallery).
        positive (Tensor | PositiveSet): ``[n, G]`` bool relevance, or the positive set.
        lambda_val, margin: as :func:`average_precision_loss`.
        log_log (bool): use ``log(1 + log(1 + r))``.

    Returns:
        Tensor: float32 scalar (0 with zero gradient when there is no positive).
    """
    check_scores(scores)
    positives = as_positive_set(scores, positive)
    rank, rank_among_positives = rank_positives(scores.float(), positives, lambda_val, margin)
    if rank.numel() == 0:
        return _zero_loss(scores)
    negatives_above = (rank - rank_among_positives) * scores.shape[0]
    loss = torch.log1p(negatives_above)
    if log_log:
        loss = torch.log1p(loss)
    return loss.mean()
