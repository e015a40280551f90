"""Exact rank counting for the positives of many rankings at once, without sorting all scores.

A *ranking* here is one column of a score matrix ``scores`` of shape ``[n, G]``: ``G`` independent
rankings (groups) of length ``n`` each, with a boolean ``positive`` mask of the same shape.

Rank convention (rank 1 = highest score)::

    rk(i) = 1 + #{positives j of the group: s_j > s_i} + #{negatives j of the group: s_j >= s_i}

that is, positives tied with each other share a rank, and **a negative tied with a positive ranks
above it** (ties never flatter a positive). For a negative ``j`` only the number of positives strictly
above it matters to the blackbox gradient; it is ``P_g - placement_j`` with
``placement_j = #{positives i of the group: s_i <= s_j}``.

Only the ``P`` positives are sorted (by ``(group, score)``, via order-preserving integer keys). The
negatives are then placed among the sorted positives of their own group with ``searchsorted``, and a
histogram of placements gives, by suffix sums, the number of negatives above each positive. Two
strategies place the negatives, with identical results:

- *sparse*: only the negatives scoring at or above the lowest positive of their group (the only ones
  that can change a rank) are gathered, keyed by ``(group, score)`` and placed in the flat sorted
  keys. ``O(nG)`` filtering + ``O(k log P)`` for ``k`` surviving negatives. Best when most negatives
  score below the positives (a trained detector).
- *dense*: every entry is placed by one batched ``searchsorted`` of each group against a
  ``[G, P_max]`` table of its sorted positive scores (padded with ``+inf``). No gather, no index
  lists. Best when most negatives survive the filter (logits near the prior, at initialisation).
"""
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

__all__ = ['float_order_keys', 'group_keys', 'PositiveSet', 'SortedPositives', 'sort_positives',
           'candidate_floor', 'negative_candidates', 'contains', 'place_sparse', 'place_dense',
           'sparse_bins', 'dense_bin_index', 'dense_bins', 'local_to_bins', 'crossing_bounds',
           'negatives_above']

_SIGN_FLIP = 0x7FFFFFFF
_KEY_OFFSET = 1 << 31
_GROUP_SHIFT = 32


def float_order_keys(scores: Tensor) -> Tensor:
    """Map float32 scores to int64 keys with the same order (equal floats give equal keys).

    ``-0.0`` is folded into ``+0.0`` first (they compare equal as floats). NaN must be excluded by
    the caller.

    Args:
        scores (Tensor): float32 tensor of any shape.

    Returns:
        Tensor: int64 tensor of the same shape, values in ``[0, 2**32)``.
    """
    bits = (scores + 0.0).view(torch.int32)
    ordered = torch.where(bits < 0, bits ^ _SIGN_FLIP, bits)
    return ordered.to(torch.int64) + _KEY_OFFSET


def group_keys(scores: Tensor, groups: Tensor) -> Tensor:
    """Keys ordering entries by ``(group, score)``: ``groups << 32 | float_order_keys(scores)``."""
    return (groups.to(torch.int64) << _GROUP_SHIFT) | float_order_keys(scores)


class PositiveSet(NamedTuple):
    """The positives of a ``[n, G]`` ranking problem, in row-major (``nonzero``) order.

    Attributes:
        flat_index (Tensor): ``[P]`` int64, index into ``scores.view(-1)``.
        group (Tensor): ``[P]`` int64, the column (ranking) of each positive.
        group_start (Tensor): ``[G]`` int64; with ``group_end`` (``[G]``): the positives of group
            ``g`` occupy positions ``[group_start[g], group_end[g])`` of a group-major sorted order.
        max_count (int): the largest number of positives in one group.
    """
    flat_index: Tensor
    group: Tensor
    group_start: Tensor
    group_end: Tensor
    max_count: int

    @classmethod
    def from_flat_index(cls, flat_index: Tensor, num_groups: int) -> 'PositiveSet':
        """Build from sorted flat indices into a ``[n, num_groups]`` matrix (one host sync: the
        max count)."""
        group = flat_index % num_groups
        count = torch.bincount(group, minlength=num_groups)
        group_end = count.cumsum(0)
        max_count = int(count.max()) if flat_index.numel() else 0
        return cls(flat_index, group, group_end - count, group_end, max_count)

    @classmethod
    def from_mask(cls, positive: Tensor) -> 'PositiveSet':
        """Build from a ``[n, G]`` boolean mask (host syncs: ``nonzero`` and the max count)."""
        return cls.from_flat_index(positive.reshape(-1).nonzero().squeeze(1), positive.shape[1])

    @classmethod
    def from_labels(cls, labels: Tensor, num_classes: int, flatten: bool = False) -> 'PositiveSet':
        """Positives of a ``[n, C]`` class-score matrix from ``[n]`` labels (``C`` = background).

        With ``flatten`` the matrix is seen as one ranking ``[n * C, 1]`` (the interclass AP).
        """
        rows = (labels < num_classes).nonzero().squeeze(1)
        flat_index = rows * num_classes + labels[rows]
        return cls.from_flat_index(flat_index, 1 if flatten else num_classes)


class SortedPositives(NamedTuple):
    """Positive scores sorted by ``(group, score)``.

    Attributes:
        keys (Tensor): ``[P]`` int64 sorted group keys.
        order (Tensor): ``[P]`` int64, ``keys = group_keys(...)[order]``.
        at_or_below (Tensor): ``[P]`` int64, for each positive (original order), the sorted position
            just past the last positive of its group with a score ``<=`` its own.
    """
    keys: Tensor
    order: Tensor
    at_or_below: Tensor


def sort_positives(pos_scores: Tensor, positives: PositiveSet) -> SortedPositives:
    """Sort ``[P]`` positive scores by group, then score (ascending)."""
    pos_keys = group_keys(pos_scores, positives.group)
    keys, order = torch.sort(pos_keys)
    return SortedPositives(keys, order, torch.searchsorted(keys, pos_keys, right=True))


def candidate_floor(positives: PositiveSet, pos_floor: Tensor) -> Tensor:
    """``[G]`` lowest ``pos_floor`` of each group (``+inf`` for a group without positives)."""
    floor = pos_floor.new_full((positives.group_end.numel(), ), float('inf'))
    return floor.scatter_reduce(0, positives.group, pos_floor, reduce='amin')


def negative_candidates(block: Tensor, floor: Tensor, offset: int, positives: PositiveSet,
                        excluded: Optional[Tensor] = None,
                        at_or_above: Optional[Tensor] = None) -> Tensor:
    """Flat indices of the negatives of a ``[rows, G]`` score block that can matter: those
    scoring at or above the ``floor`` of their group (:func:`candidate_floor`).

    Args:
        block (Tensor): ``[rows, G]`` scores; its flat indices start at ``offset``.
        floor (Tensor): ``[G]``.
        offset (int): flat index of ``block[0, 0]``.
        positives (PositiveSet): removed from the result.
        excluded (Tensor, optional): sorted flat indices that are no entries of the ranking.
        at_or_above (Tensor, optional): ``block >= floor`` when the caller has it already.

    Returns:
        Tensor: ``[k]`` int64 flat indices, ascending.
    """
    if at_or_above is None:
        at_or_above = block >= floor
    index = at_or_above.view(-1).nonzero().squeeze(1)
    if offset:
        index += offset
    keep = ~contains(positives.flat_index, index)
    if excluded is not None:
        keep &= ~contains(excluded, index)
    return index[keep]


def contains(sorted_index: Tensor, index: Tensor) -> Tensor:
    """Bool mask: which entries of ``index`` occur in the ascending ``sorted_index``."""
    if sorted_index.numel() == 0:
        return torch.zeros_like(index, dtype=torch.bool)
    where = torch.searchsorted(sorted_index, index).clamp_(max=sorted_index.numel() - 1)
    return sorted_index[where] == index


def place_sparse(sorted_pos: SortedPositives, neg_scores: Tensor, neg_group: Tensor) -> Tensor:
    """Placement of ``[k]`` candidate negatives: global sorted position just past the positives of
    their group scoring ``<=`` them (``group_start + #{pos <= s}``)."""
    return torch.searchsorted(sorted_pos.keys, group_keys(neg_scores, neg_group), right=True)


def place_dense(sorted_pos: SortedPositives, positives: PositiveSet, pos_scores: Tensor,
                scores_by_group: Tensor) -> Tensor:
    """Placement of every entry of ``scores_by_group`` (``[G, n]``) inside its group: ``[G, n]``
    int32 ``#{positives of the group scoring <= s}`` (entries that are positives included)."""
    num_groups = scores_by_group.shape[0]
    table = pos_scores.new_full((num_groups, max(positives.max_count, 1)), float('inf'))
    sorted_group = positives.group[sorted_pos.order]
    within = torch.arange(sorted_group.numel(), device=table.device) \
        - positives.group_start[sorted_group]
    table[sorted_group, within] = pos_scores[sorted_pos.order]
    return torch.searchsorted(table, scores_by_group, right=True, out_int32=True)


def negatives_above(sorted_pos: SortedPositives, positives: PositiveSet, bins: Tensor) -> Tensor:
    """Number of negatives at or above each positive, from the negatives' histogram bins.

    Args:
        bins (Tensor): ``[P + 1]`` int64; ``bins[q]`` (``q < P``) counts the negatives whose lowest
            positive at-or-below is sorted position ``q``; ``bins[P]`` is a spare bin for negatives
            below every positive of their group.

    Returns:
        Tensor: ``[P]`` int64, in the original order of the positives.
    """
    num_pos = sorted_pos.keys.numel()
    suffix = torch.cat([bins[:num_pos].flip(0).cumsum(0).flip(0), bins.new_zeros(1)])
    sorted_end = positives.group_end[sorted_pos.keys >> _GROUP_SHIFT]
    above_sorted = suffix[:num_pos] - suffix[sorted_end]
    above = torch.empty_like(above_sorted)
    above[sorted_pos.order] = above_sorted
    return above


def sparse_bins(sorted_pos: SortedPositives, positives: PositiveSet, placement: Tensor,
                neg_group: Tensor) -> Tensor:
    """Histogram bins (see :func:`negatives_above`) of sparse placements."""
    num_pos = sorted_pos.keys.numel()
    above_any = placement > positives.group_start[neg_group]
    return torch.bincount(torch.where(above_any, placement - 1, num_pos), minlength=num_pos + 1)


def dense_bin_index(positives: PositiveSet, placement: Tensor) -> Tensor:
    """Flat index ``group * (P_max + 1) + placement`` of dense ``[G, m]`` placements (int32,
    ``[G * m]``): the cell of each entry in per-group tables of width ``P_max + 1``."""
    num_groups = placement.shape[0]
    width = max(positives.max_count, 1) + 1
    offsets = torch.arange(num_groups, device=placement.device, dtype=placement.dtype) * width
    return (placement + offsets[:, None]).view(-1)


def local_to_bins(positives: PositiveSet, group: Tensor, local: Tensor) -> Tensor:
    """Histogram bin (see :func:`negatives_above`) of group-local placements: ``group_start +
    local - 1``, or the spare bin ``P`` for ``local == 0``."""
    num_pos = positives.flat_index.numel()
    return torch.where(local > 0, positives.group_start[group] + local - 1, num_pos)


def dense_bins(sorted_pos: SortedPositives, positives: PositiveSet, binned: Tensor,
               not_negative: Tensor) -> Tensor:
    """Histogram bins (see :func:`negatives_above`) of dense placements.

    Args:
        binned (Tensor): :func:`dense_bin_index` of the placements.
        not_negative (Tensor): int64 positions in ``binned`` of the entries that were placed but
            are not negatives (the positives themselves, excluded entries); their contributions
            are removed.
    """
    num_groups = positives.group_end.numel()
    width = max(positives.max_count, 1) + 1
    per_group = torch.bincount(binned, minlength=num_groups * width)
    removed = binned[not_negative].long()
    per_group = per_group.index_add(0, removed, torch.full_like(per_group[:1], -1).expand(
        removed.numel())).view(num_groups, width)
    # Group-local placement t >= 1 lands in global bin group_start + t - 1; t = 0 in the spare bin.
    num_pos = sorted_pos.keys.numel()
    bins = per_group.new_zeros(num_pos + 1)
    counts = positives.group_end - positives.group_start
    valid = torch.arange(1, width, device=binned.device)[None, :] <= counts[:, None]
    target = positives.group_start[:, None] + torch.arange(width - 1, device=binned.device)
    return bins.index_put_((target[valid],), per_group[:, 1:][valid], accumulate=True)


def crossing_bounds(sorted_pos: SortedPositives, positives: PositiveSet,
                    perturbed: Tensor) -> Tuple[Tensor, Tensor]:
    """Which placed entries a perturbation of the positives can re-place.

    An entry in cell ``t`` of its group (above the ``t`` lowest original positives) changes
    placement iff one of those ``t`` positives now scores above it (``s < upper[t]``) or one of
    the others now scores at or below it (``s >= lower[t]``).

    Returns:
        tuple: ``upper`` and ``lower``, ``[G * (P_max + 1)]`` float32, indexed like
        :func:`dense_bin_index`: the prefix maximum and the suffix minimum of the perturbed
        scores in the original sorted order (``-inf`` / ``+inf`` where empty).
    """
    num_groups = positives.group_end.numel()
    width = max(positives.max_count, 1) + 1
    group = positives.group[sorted_pos.order]
    within = torch.arange(group.numel(), device=group.device) - positives.group_start[group]
    values = perturbed[sorted_pos.order]
    low = perturbed.new_full((num_groups, width), -float('inf'))
    low[group, within + 1] = values
    upper = low.cummax(dim=1).values
    high = perturbed.new_full((num_groups, width), float('inf'))
    high[group, within] = values
    lower = high.flip(1).cummin(dim=1).values.flip(1)
    return upper.view(-1), lower.view(-1)
