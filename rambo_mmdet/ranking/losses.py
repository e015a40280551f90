"""Rank-based losses on score matrices, built on the blackbox ranker (pure torch).

All functions take ``scores`` of shape ``[n, G]``: ``G`` independent rankings (columns) of length
``n``, and the positives as a ``[n, G]`` bool mask or a :class:`PositiveSet` (cheaper to build from
labels: ``PositiveSet.from_labels``). They compute in float32 whatever the input dtype (float16 and
bfloat16 included) and return float32.

Margin α: before ranking, negatives are shifted up by α/2 and positives down by α/2, so a positive
must beat a negative by α to rank above it (applied inside the ranker, to the positives only).
"""
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .blackbox import GradScale, RankingProblem, rank_positives, rank_problems
from .counting import PositiveSet, SortedNegatives

__all__ = ['check_scores', 'as_positive_set', 'average_precision_loss', 'mean_ap_loss',
           'recall_loss', 'detection_ap_loss', 'detection_ranking_loss', 'DetectionRankingLoss']


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
    rank, rank_among_positives = rank_positives(scores.float(), positives, lambda_val, margin)
    return _ap_loss_per_group(scores, rank, rank_among_positives, positives)


def _ap_loss_per_group(scores: Tensor, rank: Tensor, rank_among_positives: Tensor,
                       positives: PositiveSet) -> Tuple[Tensor, Tensor]:
    """``1 - AP`` of each group from the positives' ranks (0 for a group without positives)."""
    num_groups = positives.group_end.numel()
    count = positives.group_end - positives.group_start
    has_positive = count > 0
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
                margin: float = 0.0, log_log: bool = False,
                grad_scale: Optional[GradScale] = None) -> Tensor:
    """The paper's refined recall loss, mean over positives of ``log(1 + r_i)``.

    ``r_i`` is the number of negatives ranked above positive ``i`` (at or above, by the tie
    convention), ``r_i = rk(i) - rk+(i)``; with ``log_log`` the loss is ``log(1 + log(1 + r_i))``.
    Only ``rk`` goes through the blackbox.

    Args:
        scores (Tensor): ``[n, G]`` scores, each column one ranking (e.g. one query's gallery).
        positive (Tensor | PositiveSet): ``[n, G]`` bool relevance, or the positive set.
        lambda_val, margin: as :func:`average_precision_loss`.
        log_log (bool): use ``log(1 + log(1 + r))``.
        grad_scale (GradScale, optional): see :class:`~rambo_mmdet.ranking.blackbox.GradScale`.

    Returns:
        Tensor: float32 scalar (0 with zero gradient when there is no positive).
    """
    check_scores(scores)
    positives = as_positive_set(scores, positive)
    problem = RankingProblem(scores.shape[1], positives)
    rank, rank_among_positives = rank_problems(scores.float(), [problem], lambda_val, margin,
                                               grad_scale, grad_scale is not None)[0]
    if rank.numel() == 0:
        return _zero_loss(scores)
    negatives_above = (rank - rank_among_positives) * scores.shape[0]
    loss = torch.log1p(negatives_above)
    if log_log:
        loss = torch.log1p(loss)
    return loss.mean()


def _balanced_gradient_applies(num_positives: int, ranked_rows: int,
                              balanced_gain: Optional[float],
                              balanced_below: Optional[float]) -> bool:
    """Whether :func:`detection_ap_loss` uses the balanced gradient: ``balanced_gain`` is set
    and, with ``balanced_below``, the positives of the ``L_mAP`` ranking (batch and memory) are
    fewer than that fraction of its ``ranked_rows`` (valid rows plus memory rows)."""
    if balanced_gain is None:
        return False
    return balanced_below is None or num_positives < balanced_below * ranked_rows


class DetectionRankingLoss(NamedTuple):
    """What :func:`detection_ranking_loss` returns."""
    #: float32 scalar, the value of :func:`detection_ap_loss`
    loss: Tensor
    #: whether the call used the balanced gradient (decided once, from the call's counts)
    balanced: bool


def detection_ap_loss(scores: Tensor, labels: Tensor, *args, **kwargs) -> Tensor:
    """RaMBO's detection loss ``(1 - β) L_mAP + β L_APC``, a float32 scalar: the ``loss`` of
    :func:`detection_ranking_loss` (same arguments)."""
    return detection_ranking_loss(scores, labels, *args, **kwargs).loss


def detection_ranking_loss(scores: Tensor,
                           labels: Tensor,
                           excluded_rows: Optional[Tensor] = None,
                           memory: Optional[Tuple[Tensor, Tensor]] = None,
                           lambda_val: float = 0.5,
                           margin: float = 0.15,
                           interclass_weight: float = 1.0 / 3.0,
                           grad_scale: Optional[GradScale] = None,
                           balanced_gain: Optional[float] = None,
                           balanced_below: Optional[float] = None,
                           balanced_margin: Optional[float] = None,
                           error_driven: bool = False,
                           memory_negatives: Optional[Sequence[SortedNegatives]] = None
                           ) -> DetectionRankingLoss:
    """RaMBO's detection loss ``(1 - β) L_mAP + β L_APC`` on a ``[N, C]`` score matrix.

    ``L_mAP``: mean of ``1 - AP_c`` over the classes with positives, each class ranking the
    valid rows of ``scores`` plus the ``memory`` rows. ``L_APC``: ``1 - AP`` of the valid rows'
    ``N * C`` scores flattened into one ranking. Both rankings run in one blackbox node, and
    neither copies ``scores`` (exclusions and the memory are handled inside the ranker).
    The scores are not checked here (see :func:`check_scores`).

    Args:
        scores (Tensor): ``[N, C]`` scores (float32; others are converted).
        labels (Tensor): ``[N]`` int64, ``0..C-1`` foreground, ``C`` background.
        excluded_rows (Tensor, optional): ascending row indices left out (ignored samples).
        memory (tuple, optional): ``(scores [M, C] float32, labels [M])`` ranked with the batch
            in ``L_mAP`` only; no gradient.
        lambda_val (float): λ. margin (float): α. interclass_weight (float): β in ``[0, 1]``.
        grad_scale (GradScale, optional): see :class:`~rambo_mmdet.ranking.blackbox.GradScale`.
        balanced_gain (float, optional): ``None`` (default): the paper's blackbox gradient. A
            gain ``g``: the balanced gradient (see
            :class:`~rambo_mmdet.ranking.blackbox.RankingProblem`): the positives of each class
            of ``L_mAP`` receive in total ``g (1 - β)(1 - AP_c) / K`` and those of ``L_APC``
            ``g β (1 - AP)`` (the negatives as much), whatever the ranking length and score
            spread; the same direction as the paper's gradient within each ranking (for the
            positives, unless ``error_driven``).
        balanced_below (float, optional): with ``balanced_gain``: use the balanced gradient only
            when the positives of the ``L_mAP`` ranking are fewer than this fraction of its rows
            (valid rows plus memory rows), the paper's gradient otherwise (``None``: always the
            balanced one). Decided per call from the count of positive rows, which the ranker
            needs anyway (no extra host sync).
        balanced_margin (float, optional): the margin α used instead of ``margin`` when the call
            uses the balanced gradient (``None``: ``margin`` in both cases).
        error_driven (bool): with the balanced gradient: each positive receives its own share
            of its ranking's loss, ``(1 - precision_i) / P`` times the ranking's weight (the
            error-driven update of Rank & Sort and aLRP), instead of a share proportional to the
            negatives its perturbation crossed (which favours positives near the top, where
            ``dL/drk`` is largest); the negatives' gradient is unchanged (see
            :class:`~rambo_mmdet.ranking.blackbox.RankingProblem`).
        memory_negatives (list of SortedNegatives, optional): the negatives of the ``memory`` rows,
            sorted (:meth:`~rambo_mmdet.ranking.memory.ScoreMemory.sorted_negatives`): ``L_mAP``
            then counts them by binary search instead of filtering and placing the memory on
            every call. The same result; ignored without ``memory``.

    Returns:
        DetectionRankingLoss: ``loss``, a float32 scalar (a term without positives contributes
        0, with a zero gradient), and ``balanced``: whether the call used the balanced gradient.
    """
    num_rows, num_classes = scores.shape
    live = scores.float()
    foreground = labels < num_classes
    if excluded_rows is not None and excluded_rows.numel():
        foreground.index_fill_(0, excluded_rows.long(), False)
    else:
        excluded_rows = None
    rows = foreground.nonzero().squeeze(1)
    live_positives = rows * num_classes + labels[rows]
    memory_rows = None
    if memory is not None and memory[0].shape[0]:
        memory_rows = (memory[1] < num_classes).nonzero().squeeze(1)
    num_memory = 0 if memory_rows is None else memory[0].shape[0]
    num_excluded = 0 if excluded_rows is None else excluded_rows.numel()
    balanced = _balanced_gradient_applies(
        rows.numel() + (0 if memory_rows is None else memory_rows.numel()),
        num_rows - num_excluded + num_memory, balanced_gain, balanced_below)
    if not balanced:
        balanced_gain = None
    if balanced_gain is not None and balanced_margin is not None:
        margin = balanced_margin

    problems, weights = [], []
    if interclass_weight < 1:
        flat_index, constant = live_positives, None
        if memory_rows is not None:
            constant, memory_labels = memory
            flat_index = torch.cat([flat_index, (num_rows + memory_rows) * num_classes
                                    + memory_labels[memory_rows]])
        problems.append(RankingProblem(num_classes,
                                       PositiveSet.from_flat_index(flat_index, num_classes),
                                       excluded_rows, constant,
                                       None if balanced_gain is None
                                       else balanced_gain * (1.0 - interclass_weight),
                                       error_driven,
                                       None if constant is None else memory_negatives))
        weights.append(1.0 - interclass_weight)
    if interclass_weight > 0:
        excluded_entries = None
        if excluded_rows is not None:
            excluded_entries = (excluded_rows[:, None] * num_classes
                                + torch.arange(num_classes, device=scores.device)).view(-1)
        problems.append(RankingProblem(1, PositiveSet.from_flat_index(live_positives, 1),
                                       excluded_entries, None,
                                       None if balanced_gain is None
                                       else balanced_gain * interclass_weight, error_driven))
        weights.append(interclass_weight)

    terms = []
    for problem, weight, (rank, rank_among) in zip(
            problems, weights,
            # with grad_scale the ranks receive this loss's own gradient: never negative
            rank_problems(live, problems, lambda_val, margin, grad_scale, grad_scale is not None)):
        if rank.numel():
            per_group, has_positive = _ap_loss_per_group(scores, rank, rank_among,
                                                          problem.positives)
            terms.append(weight * per_group.sum() / has_positive.sum().clamp(min=1))
    return DetectionRankingLoss(sum(terms) if terms else _zero_loss(scores), balanced)
