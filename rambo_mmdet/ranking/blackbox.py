"""Blackbox differentiation of ranking (Vlastelica et al., ICLR 2020; Rolínek et al., CVPR 2020).

The ranking solver is piecewise constant, so its true gradient is zero almost everywhere. The
blackbox backward returns the gradient of a piecewise-linear interpolation instead::

    y' = y + λ · dL/drk
    dL/dy ≈ -(rk(y) - rk(y')) / λ

Ranks are normalised by the ranking's length ``n`` (``rk / n``), as in the authors' code, so that
the paper's λ and margins keep their meaning.

:class:`BlackboxPositiveRanks` returns only the ranks of the positives (the only ranks an AP or recall
loss reads) and never sorts all scores (see :mod:`rambo_mmdet.ranking.counting`). Its gradient equals,
entry by entry, that of a full ``argsort(argsort(y))`` blackbox ranker on tie-free input
(:mod:`rambo_mmdet.ranking.reference`): for a positive, the change of its own rank; for a negative,
the change of the number of positives above it (only positives are perturbed, so a negative's rank
moves only when a positive crosses it).

Margin α: shifting negatives up by α/2 and positives down by α/2 ranks exactly like shifting only the
positives down by α (rankings are invariant to a common shift), so the margin costs ``O(P)``.
"""
from typing import Tuple

import torch
from torch import Tensor

from .counting import (PositiveSet, candidate_floor, dense_bins, negative_candidates,
                       negatives_above, place_dense, place_sparse, sort_positives, sparse_bins)

__all__ = ['BlackboxPositiveRanks', 'rank_positives', 'DENSE_FRACTION']

#: Above this fraction of surviving negatives, the dense strategy replaces the sparse one.
DENSE_FRACTION = 0.25


def _scores_by_group(scores: Tensor) -> Tensor:
    """``[n, G]`` -> contiguous ``[G, n]`` (a view when ``G == 1``)."""
    return scores.t().contiguous() if scores.shape[1] > 1 else scores.view(1, -1)


class BlackboxPositiveRanks(torch.autograd.Function):
    """Normalised ranks of the positives of ``G`` rankings, with the blackbox backward.

    Forward inputs: ``scores`` ``[n, G]`` float32 (each column one ranking), ``positives``
    (:class:`PositiveSet`), ``lambda_val`` (float > 0), ``margin`` (float >= 0).

    Forward outputs: ``rank`` ``[P]`` (``rk / n``, differentiable) and ``rank_among_positives``
    ``[P]`` (``rk+ / n``, a constant), in the order of ``positives.flat_index``.

    Strategy: *sparse* when at most :data:`DENSE_FRACTION` of the entries score at or above the
    lowest positive of their group, else *dense* (see :mod:`rambo_mmdet.ranking.counting`).
    """

    @staticmethod
    def forward(ctx, scores: Tensor, positives: PositiveSet, lambda_val: float,
                margin: float) -> Tuple[Tensor, Tensor]:
        length, num_groups = scores.shape
        flat = scores.reshape(-1)
        pos_scores = flat[positives.flat_index] - margin
        sorted_pos = sort_positives(pos_scores, positives)
        rank_among = 1 + positives.group_end[positives.group] - sorted_pos.at_or_below

        floor = candidate_floor(scores, positives, pos_scores)
        dense = int(torch.count_nonzero(scores >= floor)) > DENSE_FRACTION * scores.numel()
        if dense:
            by_group = _scores_by_group(scores)
            placement = place_dense(sorted_pos, positives, pos_scores, by_group)
            bins = dense_bins(sorted_pos, positives, placement)
            ctx.save_for_backward(by_group, placement)
        else:
            neg_index = negative_candidates(scores, positives, floor)
            neg_group = neg_index % num_groups
            placement = place_sparse(sorted_pos, flat[neg_index], neg_group)
            bins = sparse_bins(sorted_pos, positives, placement, neg_group)
            ctx.save_for_backward(scores, neg_index, placement)
        rank = rank_among + negatives_above(sorted_pos, positives, bins)

        ctx.dense, ctx.shape = dense, scores.shape
        ctx.positives, ctx.pos_scores, ctx.rank = positives, pos_scores, rank
        ctx.lambda_val = lambda_val
        rank_among_positives = rank_among.to(scores.dtype) / length
        ctx.mark_non_differentiable(rank_among_positives)
        return rank.to(scores.dtype) / length, rank_among_positives

    @staticmethod
    def backward(ctx, grad_rank: Tensor, _grad_rank_among_positives: Tensor):
        positives, pos_scores, lambda_val = ctx.positives, ctx.pos_scores, ctx.lambda_val
        length, num_groups = ctx.shape
        perturbed = pos_scores + lambda_val * grad_rank.to(pos_scores.dtype)
        sorted_after = sort_positives(perturbed, positives)
        rank_after = 1 + positives.group_end[positives.group] - sorted_after.at_or_below
        scale = 1.0 / (lambda_val * length)  # -(rk(y) - rk(y')) / λ on the scale rk / n

        if ctx.dense:
            by_group, placement = ctx.saved_tensors
            placement_after = place_dense(sorted_after, positives, perturbed, by_group)
            rank_after += negatives_above(sorted_after, positives,
                                          dense_bins(sorted_after, positives, placement_after))
            grad = (placement - placement_after).to(pos_scores.dtype).mul_(scale)
            rows = positives.flat_index // num_groups
            grad[positives.group, rows] = (rank_after - ctx.rank).to(grad.dtype) * scale
            grad = grad.t() if num_groups > 1 else grad.view(length, 1)
            return grad, None, None, None

        scores, neg_index, placement = ctx.saved_tensors
        flat = scores.reshape(-1)
        if not bool((perturbed >= pos_scores).all()):
            # Some positive moved down (a loss that rewards worse ranks): negatives below the
            # forward's floor may now be crossed, so select the candidates again.
            floor = candidate_floor(scores, positives, torch.minimum(pos_scores, perturbed))
            neg_index = negative_candidates(scores, positives, floor)
            placement = place_sparse(sort_positives(pos_scores, positives), flat[neg_index],
                                     neg_index % num_groups)
        neg_scores, neg_group = flat[neg_index], neg_index % num_groups
        placement_after = place_sparse(sorted_after, neg_scores, neg_group)
        rank_after += negatives_above(
            sorted_after, positives, sparse_bins(sorted_after, positives, placement_after,
                                                 neg_group))
        grad = torch.zeros_like(flat)
        grad[positives.flat_index] = (rank_after - ctx.rank).to(grad.dtype) * scale
        grad[neg_index] = (placement - placement_after).to(grad.dtype) * scale
        return grad.view_as(scores), None, None, None


def rank_positives(scores: Tensor, positives: PositiveSet, lambda_val: float,
                   margin: float = 0.0) -> Tuple[Tensor, Tensor]:
    """Blackbox-differentiable normalised ranks of the positives of each column of ``scores``.

    Args:
        scores (Tensor): ``[n, G]`` float32, ``G`` rankings of length ``n`` (one per column).
        positives (PositiveSet): the positive entries (e.g. ``PositiveSet.from_mask(mask)``).
        lambda_val (float): blackbox interpolation strength λ > 0.
        margin (float): margin α >= 0 (positives ranked as if ``α`` lower than they score).

    Returns:
        tuple: ``rank`` ``[P]`` (``rk / n``, differentiable) and ``rank_among_positives`` ``[P]``
        (``rk+ / n``, constant), in the order of ``positives.flat_index`` (``positives.group``
        says which column each belongs to). Empty tensors when there is no positive.
    """
    if lambda_val <= 0:
        raise ValueError(f'lambda_val must be > 0, got {lambda_val}')
    if margin < 0:
        raise ValueError(f'margin must be >= 0, got {margin}')
    if positives.flat_index.numel() == 0:  # nothing to rank; the caller returns a zero loss
        empty = scores.new_zeros(0)
        return empty, empty
    return BlackboxPositiveRanks.apply(scores, positives, lambda_val, margin)
