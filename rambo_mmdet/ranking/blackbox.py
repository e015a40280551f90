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

Several :class:`RankingProblem` s over the same live scores (e.g. per-class rankings and the
flattened interclass ranking of a detector's ``[N, C]`` logits) run in one autograd node that writes
one gradient buffer; those that run sparse filter the live scores once, at the lowest of their
floors. A problem may leave entries out (ignored samples, without copying the scores) and rank a
constant block beside the live scores (a detached score memory: the sparse strategy reads it in
place, the dense one joins it to the live scores once per call; or, when the problem also gets the
block's negatives sorted, both only count them by binary search).
"""
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.profiler import record_function

from .counting import (CellGrid, PositiveSet, SortedNegatives, add_counts, candidate_floor,
                       cell_crossings, cells_above, cells_of, count_at_or_above, histogram,
                       negative_candidates, negatives_above, place_sparse, sort_positives,
                       sparse_bins)
from .scratch import scratch_pool

__all__ = ['RankingProblem', 'GradScale', 'route_output_grad', 'BlackboxPositiveRanks',
           'rank_problems', 'rank_positives', 'DENSE_FRACTION', 'STAGES']

#: Profiler scopes (``torch.profiler.record_function``; free when no profiler runs) of the
#: ranker's stages, read by ``tools/benchmark_loss.py``: choosing the strategy (sorting the
#: positives, the candidate floor, counting the survivors), filtering (sparse: gathering the
#: candidate negatives; dense: the cells and their histogram), exact placement, the backward,
#: and the score memory's reads and writes (:class:`~rambo_mmdet.ranking.memory.ScoreMemory`).
STAGES = dict(select='rambo.select', filter='rambo.filter', place='rambo.place',
              backward='rambo.backward', memory='rambo.memory')
#: Above this fraction of surviving negatives, the dense strategy replaces the sparse one.
DENSE_FRACTION = 0.25
#: The surviving fraction is counted on about this many entries (every k-th row of a larger
#: problem).
SURVIVAL_SAMPLE = 1 << 16
#: Dense strategy: cells per group ~ entries per group / ENTRIES_PER_CELL (a power of two, at
#: most MAX_CELLS per group and MAX_TOTAL_CELLS over all groups, at least 2).
ENTRIES_PER_CELL = 16
MAX_CELLS = 1 << 18
#: ... and at least this many cells per positive of a group (a ranking with many positives
#: for its length, e.g. a small batch with a score memory: the entries that share a cell with
#: a positive are placed exactly, so fewer entries per positive's cell place fewer of them)
CELLS_PER_POSITIVE = 16
MAX_TOTAL_CELLS = 1 << 20
#: Whether the dense backward runs without reading anything on the host: ``None`` (default):
#: on every device but the CPU. On a GPU a host read stalls the host until the device catches
#: up, while an extra pass over the scores costs microseconds; on the CPU a read is free and
#: the pass is not (the dense backward then skips it when no positive moves into a new cell).
#: Both ways give identical results.
SYNC_FREE: Optional[bool] = None


def reads_host_freely(device: torch.device) -> bool:
    """Whether code on ``device`` may read on the host for speed: not when it runs sync-free
    (:data:`SYNC_FREE`; by default every device but the CPU)."""
    return not (device.type != 'cpu' if SYNC_FREE is None else SYNC_FREE)


def searches_on_host(device: torch.device) -> bool:
    """Whether sorts and binary searches of tensors on ``device`` run in numpy (faster than
    torch's on the CPU, see :mod:`~rambo_mmdet.ranking.counting`): on the CPU, unless its
    sync-free path is forced (:data:`SYNC_FREE`, as the tests audit the GPU's)."""
    return device.type == 'cpu' and reads_host_freely(device)


class RankingProblem(NamedTuple):
    """``G`` rankings (columns) over the live scores viewed as ``[n, G]``, plus constant rows.

    The entries of the problem are, in flat order: the live scores (``live.view(n, G)``, flat
    indices ``0 .. n*G - 1``) followed by the ``constant`` rows (``[m, G]``, no gradient; flat
    indices from ``n*G`` on). Every ranking has length ``n - len(excluded_rows) + m``.

    Attributes:
        num_groups (int): ``G``; the live scores' element count must be divisible by it.
        positives (PositiveSet): positive entries (flat indices as above, ascending).
        excluded_rows (Tensor, optional): ascending live row indices left out of every ranking
            (ignored samples): neither positives nor negatives, zero gradient.
        constant (Tensor, optional): ``[m, G]`` float32 rows ranked with the live ones.
        balanced_weight (float, optional): ``None`` (default): the paper's blackbox gradient,
            ``-(rk(y) - rk(y')) / (λ n)``. A weight ``w``: the *balanced* gradient: the same
            entries move in the same direction (each group's paper gradient times one positive
            factor), but each group's gradient is rescaled so that its positives receive in
            total ``w · (1 - AP_g) / K`` (``K``: groups with positives), and so its negatives
            the same amount (ranks are conserved): the group's share of the loss
            ``w · mean_g (1 - AP_g)``. This is the balance of Rank & Sort and aLRP (positives'
            and negatives' gradients each sum to the loss); it makes the gradient's size
            independent of the ranking length, of the score spread and of λ. The upstream
            gradient still sets the perturbation; its size no longer scales the result (a
            :class:`GradScale` factor still does). Per positive-negative crossing the factor is
            at most the group's share divided by its number of positives: a group whose
            positives cross fewer negatives than there are positives (a short or well-ordered
            ranking) gets proportionally less, rather than its whole share on a few scores. A
            group whose perturbation crosses no entry gets no gradient, in both modes.
    """
    num_groups: int
    positives: PositiveSet
    excluded_rows: Optional[Tensor] = None
    constant: Optional[Tensor] = None
    balanced_weight: Optional[float] = None
    #: with ``balanced_weight``: each positive ``i`` receives its own share of the group's loss,
    #: ``w · (1 - precision_i) / (K · P_g)`` (``P_g``: the group's positives; the error-driven
    #: update of Rank & Sort and aLRP), instead of a share proportional to the negatives its
    #: perturbation crossed; the negatives keep the blackbox's distribution and total.
    error_driven: bool = False
    #: with ``constant``: exactly its negatives, sorted (:class:`~rambo_mmdet.ranking.counting.
    #: SortedNegatives`, e.g. from :meth:`~rambo_mmdet.ranking.memory.ScoreMemory.
    #: sorted_negatives`): they are then counted by binary search instead of being filtered
    #: and placed on every call (they get no gradient; the result is identical). The constant
    #: rows then only supply the scores of their positives.
    constant_negatives: Optional[Sequence[SortedNegatives]] = None


class GradScale:
    """A factor for the returned score gradient, read when the backward runs.

    The blackbox backward is not linear in the gradient it receives: that gradient sets the size
    of the perturbation ``y' = y + λ·dL/drk``. A caller that wants outside scaling (a loss weight,
    an AMP loss scale) to scale the gradient *without* changing the effective λ feeds the ranker
    the gradient of the unscaled loss and records the outside factor here (e.g. from an autograd
    node on the loss output, whose backward runs before the ranker's); the ranker multiplies its
    gradient by ``value`` (a 0-dim tensor) at no extra pass over the scores.
    """

    __slots__ = ('value', )

    def __init__(self) -> None:
        self.value: Optional[Tensor] = None


class _RouteOutputGrad(torch.autograd.Function):
    """Identity on a loss. Its backward (which runs before the ranker's) stores the incoming
    gradient times ``factor`` in a :class:`GradScale` and passes a unit gradient on."""

    @staticmethod
    def forward(ctx, loss: Tensor, grad_scale: GradScale, factor: float) -> Tensor:
        ctx.grad_scale, ctx.factor = grad_scale, factor
        return loss.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        ctx.grad_scale.value = grad.detach() * ctx.factor
        return torch.ones_like(grad), None, None


def route_output_grad(loss: Tensor, grad_scale: GradScale, factor: float = 1.0) -> Tensor:
    """Make outside scaling of ``loss`` scale the ranker's gradient instead of its λ.

    ``loss`` must be a scalar computed by rankers that were given ``grad_scale``; whatever
    multiplies the returned value (a loss weight, an AMP loss scale, a sum with other losses)
    then multiplies the score gradient exactly, times ``factor``.
    """
    return _RouteOutputGrad.apply(loss, grad_scale, factor)


def _num_rows(block: Optional[Tensor]) -> int:
    return 0 if block is None else block.shape[0]


class _Solver:
    """Forward and backward of one :class:`RankingProblem` (state kept between the two)."""

    def __init__(self, problem: RankingProblem, live: Tensor, margin: float) -> None:
        self.problem = problem
        groups = problem.num_groups
        self.live = live.view(-1, groups)
        self.live_rows = self.live.shape[0]
        self.excluded = problem.excluded_rows
        num_excluded = _num_rows(self.excluded)
        self.length = self.live_rows - num_excluded + _num_rows(problem.constant)
        positives = problem.positives
        self.live_size = self.live.numel()
        self.sync_free = not reads_host_freely(live.device)
        self.pos_scores = self._gather(positives.flat_index) - margin
        # the constant block's negatives, when given sorted: counted, not placed; else the
        # block is placed with the live entries
        self.counted = None if problem.constant is None else problem.constant_negatives
        self.placed_constant = problem.constant if self.counted is None else None
        self.count_on_host = searches_on_host(live.device)
        self.excluded_flat = None
        if num_excluded:
            self.excluded_flat = (self.excluded[:, None] * groups
                                  + torch.arange(groups, device=live.device)).view(-1)

    def _candidates(self, floor: Tensor, within: Optional[Tensor] = None) -> Tensor:
        positives = self.problem.positives
        index = negative_candidates(self.live, floor, 0, positives, self.excluded_flat, within)
        if self.placed_constant is not None:
            index = torch.cat([index, negative_candidates(self.placed_constant, floor,
                                                          self.live_size, positives)])
        return index

    def _surviving_fraction(self, floor: Tensor) -> Tensor:
        """Fraction of the entries scoring at or above their group's ``floor`` (a 0-dim tensor),
        counted on every ``stride``-th row of a problem above :data:`SURVIVAL_SAMPLE` entries.
        It only chooses the strategy (both are exact), so an estimate is enough."""
        blocks = [self.live] + ([] if self.placed_constant is None else [self.placed_constant])
        total = sum(block.numel() for block in blocks)
        if total == 0:
            return floor.new_zeros(())
        stride = max(1, total // SURVIVAL_SAMPLE)
        surviving = sum(torch.count_nonzero(block[::stride] >= floor) for block in blocks)
        sampled = sum(block[::stride].numel() for block in blocks)
        return surviving.to(floor.dtype) / sampled

    def _gather(self, index: Tensor) -> Tensor:
        """Scores at flat indices of the problem (live entries, then constant rows)."""
        live = self.live.reshape(-1)
        constant = self.problem.constant
        if constant is None:
            return live[index]
        constant = constant.reshape(-1)
        if self.live_size == 0:
            return constant[index]
        is_live = index < self.live_size
        return torch.where(is_live, live[index.clamp(max=self.live_size - 1)],
                           constant[(index - self.live_size).clamp(min=0)])

    def select(self) -> Tensor:
        """Sort the positives, find each group's candidate floor; returns the surviving fraction
        that chooses the strategy (:func:`_select_strategies` sets ``dense``)."""
        positives = self.problem.positives
        with record_function(STAGES['select']):
            self.sorted_pos = sort_positives(self.pos_scores, positives)
            self.rank_among = (1 + positives.group_end[positives.group]
                               - self.sorted_pos.at_or_below)
            self.floor = candidate_floor(positives, self.pos_scores)
            return self._surviving_fraction(self.floor)

    def forward(self, shared: Optional['_SharedCandidates'] = None) -> Tuple[Tensor, Tensor]:
        """Ranks of the positives (after :meth:`select`); ``shared``: the live entries at or
        above a floor no higher than this problem's (sparse strategy)."""
        positives, groups = self.problem.positives, self.problem.num_groups
        sorted_pos, floor = self.sorted_pos, self.floor
        if self.dense:
            bins = self._dense_forward(sorted_pos)
        else:
            with record_function(STAGES['filter']):
                self.neg_index = self._candidates(
                    floor, None if shared is None else shared.index())
                self.neg_group = self.neg_index % groups
                self.neg_scores = self._gather(self.neg_index)
            with record_function(STAGES['place']):
                self.placement = place_sparse(sorted_pos, self.neg_scores, self.neg_group)
                bins = sparse_bins(sorted_pos, positives, self.placement, self.neg_group)
        self.rank = self.rank_among + negatives_above(sorted_pos, positives, bins)
        if self.dense:
            self.rank = self.rank + self.above_cells
        if self.counted is not None:
            self.rank = self.rank + count_at_or_above(self.counted, sorted_pos,
                                                      self.count_on_host)
        return self.rank, self.rank_among

    def backward(self, grad_rank: Tensor, lambda_val: float, grad: Optional[Tensor],
                 factor: Optional[Tensor], grad_nonnegative: bool = False) -> Tensor:
        """Add this problem's blackbox gradient, times ``factor`` (a 0-dim tensor or None), to
        ``grad`` (flat, live entries; None: start one (dense strategy only)); returns it.

        ``grad_nonnegative``: the caller guarantees ``grad_rank >= 0`` (it is clamped so), so no
        positive moves down and the sparse strategy skips its one host-synchronising check.
        With ``sync_free`` (:data:`SYNC_FREE`), nothing else reads on the host either
        (``sync_audit.py``)."""
        positives, groups = self.problem.positives, self.problem.num_groups
        if self.live_size == 0:  # only constant rows: nothing receives a gradient
            return grad if grad is not None else self.live.new_zeros(0)
        grad_rank = grad_rank.to(self.pos_scores.dtype)
        if grad_nonnegative:
            grad_rank = grad_rank.clamp(min=0)
        perturbed = self.pos_scores + lambda_val * grad_rank
        sorted_after = sort_positives(perturbed, positives)
        rank_after = 1 + positives.group_end[positives.group] - sorted_after.at_or_below
        if self.counted is not None:
            rank_after = rank_after + count_at_or_above(self.counted, sorted_after,
                                                        self.count_on_host)
        # the balanced gradient's precision / count / share, computed once per backward
        share = None
        if self.problem.balanced_weight is not None:
            share = self._balanced_share(self.pos_scores.dtype)

        if self.dense:
            return self._dense_backward(perturbed, sorted_after, rank_after, lambda_val, grad,
                                        factor, share)
        neg_index, neg_group, placement = self.neg_index, self.neg_group, self.placement
        if not grad_nonnegative and not bool((perturbed >= self.pos_scores).all()):
            # A positive moved down (an upstream gradient that rewards worse ranks):
            # negatives below the forward's floor may now be crossed; select them again.
            floor = candidate_floor(positives, torch.minimum(self.pos_scores, perturbed))
            neg_index = self._candidates(floor)
            neg_group = neg_index % groups
            self.neg_scores = self._gather(neg_index)
            placement = place_sparse(self.sorted_pos, self.neg_scores, neg_group)
        placement_after = place_sparse(sorted_after, self.neg_scores, neg_group)
        rank_after += negatives_above(sorted_after, positives, sparse_bins(
            sorted_after, positives, placement_after, neg_group))

        scale = self._grad_scale(rank_after, lambda_val, grad.dtype, share)
        if factor is not None:
            scale = factor.to(grad.dtype) * scale
        neg_scale = scale if scale.dim() == 0 else scale[neg_group]
        self._add_live(grad, neg_index, (placement - placement_after).to(grad.dtype) * neg_scale)
        self._add_live(grad, positives.flat_index,
                       self._positive_values(rank_after, scale, factor, grad.dtype, share))
        return grad

    def _add_live(self, grad: Tensor, index: Tensor, values: Tensor) -> Tensor:
        """``grad[index] += values`` for the indices of live entries; those of constant rows
        (``index >= live_size``) are dropped without selecting them (no output-size sync)."""
        if self.problem.constant is None:
            return grad.index_add_(0, index, values)
        live = index < self.live_size
        return grad.index_add_(0, index.clamp(max=self.live_size - 1),
                               torch.where(live, values, torch.zeros_like(values)))

    # ------------------------------------------------------------------ dense strategy
    def _entries(self) -> Tensor:
        """The entries to place, flat: the live scores, then the constant rows unless their
        negatives are counted (a copy only with constant rows)."""
        live = self.live.reshape(-1)
        if self.placed_constant is None:
            return live
        return torch.cat([live, self.placed_constant.reshape(-1)])

    def _grid(self, entries: Tensor) -> CellGrid:
        """Cells over the entries' score range (one host sync), sized to the group length."""
        groups = self.problem.num_groups
        per_group = max(entries.numel() // max(groups, 1), 1)
        positives_per_group = self.problem.positives.flat_index.numel() // max(groups, 1)
        target = max(per_group // ENTRIES_PER_CELL, CELLS_PER_POSITIVE * positives_per_group)
        cells = 2
        while (cells < target and cells < MAX_CELLS
               and 2 * cells * groups <= MAX_TOTAL_CELLS):
            cells *= 2
        low, high = torch.stack(entries.aminmax()).tolist() if entries.numel() else (0.0, 0.0)
        return CellGrid.spanning(low, high, cells, groups)

    def _not_negative(self) -> Tensor:
        """Ascending flat indices of the entries (of :meth:`_entries`) that are no negatives:
        positives, excluded."""
        index = self.problem.positives.flat_index
        if self.counted is not None:  # the constant positives are no entries here
            index = index[index < self.live_size]
        if self.excluded_flat is not None:
            index = torch.cat([index, self.excluded_flat]).sort().values
        return index

    def _cell_negatives(self, flags: Tensor,
                        size: Optional[int] = None) -> Tuple[Tensor, Optional[Tensor]]:
        """Ascending flat indices of the negatives whose cell is flagged (``found``: None). With
        ``size`` (at least their number): exactly ``size`` indices, those negatives first, then
        index 0, and ``found`` (``[size]`` bool) marks the real ones; computed without reading
        their number on the host."""
        owner: List[Tensor] = []
        hit = scratch_pool.take(self.cell.numel(), torch.bool, self.cell.device, owner)
        torch.index_select(flags, 0, self.cell, out=hit)
        hit.index_fill_(0, self.not_negative, False)
        if size is None:
            index, found = hit.nonzero().view(-1), None
        else:
            index = _nonzero_padded(hit, size)
            found = index >= 0
            index = index.clamp(min=0)
        scratch_pool.give(owner)
        return index, found

    def _dense_forward(self, sorted_pos) -> Tensor:
        """Histogram the cells of every entry; place exactly only the negatives that share a
        cell with a positive. Returns the bins of :func:`negatives_above` of those negatives;
        the negatives in cells above each positive's are counted in ``self.above_cells``."""
        positives, groups = self.problem.positives, self.problem.num_groups
        with record_function(STAGES['filter']):
            entries = self._entries()
            grid = self.grid = self._grid(entries)
            # the cells live until the backward, in a pooled block (scratch.py)
            self.scratch: List[Tensor] = []
            self.cell = cells_of(grid, entries.view(-1, groups), out=scratch_pool.take(
                entries.numel(), torch.float32, entries.device, self.scratch))
            self.not_negative = self._not_negative()
            num_cells = groups * grid.cells
            counts = histogram(self.cell, num_cells)
            if self.sync_free:
                # the backward places the entries of the cells its positives move into without
                # reading their number: at most one new cell per positive, each holding at
                # most the fullest cell's entries (one host sync, here)
                self.new_entries_bound = min(positives.flat_index.numel() * int(counts.max()),
                                             entries.numel())
            add_counts(counts, self.cell[self.not_negative], -1)
            self.pos_cell = cells_of(grid, self.pos_scores, positives.group)
            self.flags = torch.zeros(num_cells, dtype=torch.bool, device=counts.device)
            self.flags.index_fill_(0, self.pos_cell.long(), True)
            self.shared = self._cell_negatives(self.flags)[0]
        with record_function(STAGES['place']):
            self.shared_group = self.shared % groups
            self.shared_scores = entries[self.shared]
            self.shared_placement = place_sparse(sorted_pos, self.shared_scores,
                                                 self.shared_group)
            # negatives in no positive's cell, counted per cell
            self.counts = add_counts(counts, self.cell[self.shared], -1)
            self.above_cells = cells_above(self.counts, grid)[self.pos_cell.long()]
            # the live entries that are no negatives (their gradient is the positives' own)
            self.not_negative_live = self.not_negative if self.placed_constant is None \
                else self.not_negative[self.not_negative < self.live_size]
            return sparse_bins(sorted_pos, positives, self.shared_placement, self.shared_group)

    def _dense_backward(self, perturbed: Tensor, sorted_after, rank_after: Tensor,
                        lambda_val: float, grad: Optional[Tensor], factor: Optional[Tensor],
                        share: Optional[Tuple[Tensor, Tensor, Tensor]]) -> Tensor:
        """Every negative in a cell that holds no positive before or after the perturbation
        moves by the net number of positives whose cells passed it (:func:`cell_crossings`,
        one table gather per entry); the negatives that share a cell with a positive, before
        or after, are placed exactly. With ``sync_free``, the entries of the cells the
        positives move into are found and placed at a size fixed in the forward (no host
        sync)."""
        positives, groups, grid = self.problem.positives, self.problem.num_groups, self.grid
        cell_after = cells_of(grid, perturbed, positives.group).long()
        added = torch.zeros_like(self.flags)
        added.index_put_((cell_after, ), ~self.flags[cell_after])
        flags = self.flags | added
        # the negatives in the cells the positives moved into: a fixed-size padded list
        # (``found`` marks its real entries) without host reads, else (CPU) the exact list, or
        # none when no positive entered a new cell (the usual case at initialisation)
        extra, found = (self._cell_negatives(added, self.new_entries_bound) if self.sync_free
                        else (self._cell_negatives(added) if bool(added.any()) else (None, None)))
        shared, shared_group, shared_scores = self.shared, self.shared_group, self.shared_scores
        placement, counts, counted = self.shared_placement, self.counts, None
        if extra is not None:
            extra_group = extra % groups
            extra_scores = self._gather(extra)
            shared = torch.cat([shared, extra])
            shared_group = torch.cat([shared_group, extra_group])
            shared_scores = torch.cat([shared_scores, extra_scores])
            placement = torch.cat([placement,
                                   place_sparse(self.sorted_pos, extra_scores, extra_group)])
            if found is None:
                counts = add_counts(counts.clone(), self.cell[extra], -1)
            else:
                counts = counts.index_add(0, self.cell[extra], -found.to(counts.dtype))
                counted = torch.cat([torch.ones_like(self.shared, dtype=torch.bool), found])
        placement_after = place_sparse(sorted_after, shared_scores, shared_group)
        rank_after += cells_above(counts, grid)[cell_after] + negatives_above(
            sorted_after, positives,
            sparse_bins(sorted_after, positives, placement_after, shared_group, counted))

        dtype = self.pos_scores.dtype
        scale = self._grad_scale(rank_after, lambda_val, dtype, share)
        if factor is not None:
            scale = factor.to(dtype) * scale
        per_cell = cell_crossings(grid, self.pos_cell, cell_after).to(dtype)
        per_cell = (per_cell.view(groups, grid.cells) * (scale.view(-1, 1) if scale.dim()
                                                         else scale)).view(-1)
        per_cell.masked_fill_(flags, 0)
        live_cell = self.cell[:self.live_size]
        # the first dense problem's values are the returned gradient (a fresh tensor); a later
        # one's are added to it and die here (a pooled block)
        values = per_cell.index_select(0, live_cell) if grad is None else torch.index_select(
            per_cell, 0, live_cell, out=scratch_pool.take(live_cell.numel(), dtype,
                                                          live_cell.device, self.scratch))
        values.index_fill_(0, self.not_negative_live, 0)
        shared_scale = scale if scale.dim() == 0 else scale[shared_group]
        moved = (placement - placement_after).to(dtype) * shared_scale
        if counted is not None:  # the padding of a fixed-size list moves nothing
            moved = torch.where(counted, moved, torch.zeros_like(moved))
        self._add_live(values, shared, moved)
        self._add_live(values, positives.flat_index,
                       self._positive_values(rank_after, scale, factor, dtype, share))
        grad = values if grad is None else grad.add_(values)
        scratch_pool.give(self.scratch)  # the cells and the added values are dead now
        return grad

    def _positive_values(self, rank_after: Tensor, scale: Tensor, factor: Optional[Tensor],
                         dtype: torch.dtype,
                         share: Optional[Tuple[Tensor, Tensor, Tensor]]) -> Tensor:
        """The positives' gradient ``[P]``: rank change times their group's ``scale`` (0-dim or
        ``[G]``, ``factor`` included), or, with ``error_driven``, ``-w (1 - precision_i) /
        (K P_g)`` (times ``factor``)."""
        if not (self.problem.error_driven and share is not None):
            pos_scale = scale if scale.dim() == 0 else scale[self.problem.positives.group]
            return (rank_after - self.rank).to(dtype) * pos_scale
        precision, count, weight_per_group = share
        values = -weight_per_group * (1.0 - precision) \
            / count[self.problem.positives.group].clamp(min=1)
        if factor is not None:
            values = factor.to(dtype) * values
        return values

    def _balanced_share(self, dtype: torch.dtype) -> Tuple[Tensor, Tensor, Tensor]:
        """What the balanced gradient divides: each positive's precision ``rk+ / rk`` ``[P]``,
        each group's positive count ``[G]`` and ``w / K`` (the balanced weight over the groups
        with positives), in ``dtype``."""
        positives = self.problem.positives
        count = (positives.group_end - positives.group_start).to(dtype)
        precision = self.rank_among.to(dtype) / self.rank.to(dtype)
        return precision, count, \
            self.problem.balanced_weight / (count > 0).sum().clamp(min=1).to(dtype)

    def _grad_scale(self, rank_after: Tensor, lambda_val: float, dtype: torch.dtype,
                    share: Optional[Tuple[Tensor, Tensor, Tensor]]) -> Tensor:
        """Gradient per unit of rank change: the paper's ``1 / (λ n)`` (``-(rk(y) - rk(y')) /
        λ`` on the scale ``rk / n``), or ``[G]`` balanced factors (see :class:`RankingProblem`;
        ``share``: :meth:`_balanced_share`)."""
        if share is None:
            return torch.full((), 1.0 / (lambda_val * self.length), dtype=dtype,
                              device=rank_after.device)
        positives, groups = self.problem.positives, self.problem.num_groups
        precision, count, weight_per_group = share
        loss = 1.0 - torch.zeros(groups, dtype=dtype, device=rank_after.device).index_add_(
            0, positives.group, precision) / count.clamp(min=1)
        target = weight_per_group * loss
        # rank gained by the group's positives = positive-negative crossings (positive-positive
        # swaps cancel in the sum)
        gained = torch.zeros(groups, dtype=dtype, device=rank_after.device).index_add_(
            0, positives.group, (self.rank - rank_after).to(dtype))
        # per crossing at most target / count: a group whose positives cross few negatives (a
        # short or well-ordered ranking) gets proportionally less, instead of its whole share
        # concentrated on those few scores
        return torch.where(gained > 0, target / torch.maximum(gained, count).clamp(min=1),
                           torch.zeros_like(gained))


def _select_strategies(solvers: Sequence[_Solver]) -> None:
    """:meth:`_Solver.select` every problem and choose each one's strategy (``dense``), with
    one host read for all of them."""
    if not solvers:
        return
    fractions = torch.stack([solver.select() for solver in solvers]).tolist()
    for solver, fraction in zip(solvers, fractions):
        solver.dense = fraction > DENSE_FRACTION


def _nonzero_padded(mask: Tensor, size: int) -> Tensor:
    """Ascending indices of the true entries of the flat ``mask``, then ``-1`` up to ``size``
    entries (``size`` must be at least their number): ``torch.nonzero_static``, which does not
    read the number of true entries on the host."""
    try:
        return torch.nonzero_static(mask, size=size, fill_value=-1).view(-1)
    except (AttributeError, NotImplementedError):  # older torch, or no kernel for the device
        index = mask.nonzero().view(-1)  # one host sync
        return torch.cat([index, index.new_full((size - index.numel(), ), -1)])


class _SharedCandidates:
    """The live entries at or above the lowest candidate floor of several sparse problems
    (ascending flat indices, found on first use): every candidate of each of them, so each
    filters this short list with its own floors instead of all scores. (The per-class and
    the interclass ranking of a detector share the positives, so the interclass floor, the
    lowest positive of all, is the lowest.)"""

    def __init__(self, live: Tensor, floors: Sequence[Tensor]) -> None:
        self.live = live.reshape(-1)
        self.floor = torch.stack([floor.min() for floor in floors]).min()
        self._index: Optional[Tensor] = None

    def index(self) -> Tensor:
        if self._index is None:
            self._index = (self.live >= self.floor).nonzero().squeeze(1)
        return self._index


class BlackboxPositiveRanks(torch.autograd.Function):
    """Normalised ranks of the positives of several ranking problems over the same live scores,
    with the blackbox backward (one gradient buffer for all problems).

    Forward inputs: ``live`` (float32 tensor, any shape), ``problems`` (sequence of
    :class:`RankingProblem`), ``lambda_val`` (float > 0), ``margin`` (float >= 0),
    ``grad_scale`` and ``grad_nonnegative`` (see :func:`rank_problems`).

    Forward outputs, per problem: ``rank`` ``[P]`` (``rk / length``, differentiable) and
    ``rank_among_positives`` ``[P]`` (``rk+ / length``, a constant), in the order of the
    problem's ``positives.flat_index``; flattened into one tuple.

    Strategy, per problem: *sparse* when at most :data:`DENSE_FRACTION` of the entries score at or
    above the lowest positive of their group, else *dense* (see :mod:`rambo_mmdet.ranking.counting`).
    """

    @staticmethod
    def forward(ctx, live: Tensor, problems: Sequence[RankingProblem], lambda_val: float,
                margin: float, grad_scale: Optional[GradScale] = None,
                grad_nonnegative: bool = False) -> Tuple[Tensor, ...]:
        # The problems address entries by row-major flat index and the solvers view and filter
        # the scores flat: any other layout (transposed, sliced, expanded) is ranked as a
        # contiguous copy, bit-identically; contiguous scores (the usual case) are not copied.
        # The gradient is returned contiguous, in ``live``'s shape.
        live = live.contiguous()
        problems = [p if p.constant is None else p._replace(constant=p.constant.contiguous())
                    for p in problems]
        ctx.solvers = [_Solver(problem, live, margin) for problem in problems]
        ctx.lambda_val, ctx.shape, ctx.grad_scale = lambda_val, live.shape, grad_scale
        ctx.grad_nonnegative = grad_nonnegative
        _select_strategies(ctx.solvers)
        sparse = [solver for solver in ctx.solvers if not solver.dense]
        # sparse problems over the same live scores filter them once, at the lowest floor
        shared = _SharedCandidates(live, [s.floor for s in sparse]) if len(sparse) > 1 else None
        outputs, constants = [], []
        for solver in ctx.solvers:
            rank, rank_among = solver.forward(shared)
            rank_among_positives = rank_among.to(live.dtype) / solver.length
            outputs += [rank.to(live.dtype) / solver.length, rank_among_positives]
            constants.append(rank_among_positives)
        ctx.mark_non_differentiable(*constants)
        return tuple(outputs)

    @staticmethod
    def backward(ctx, *grads: Tensor):
        with record_function(STAGES['backward']):
            # the first dense problem's per-entry gradient becomes the buffer (no zero-filled one)
            grad = None
            factor = None if ctx.grad_scale is None else ctx.grad_scale.value
            for solver, grad_rank in zip(ctx.solvers, grads[::2]):
                if grad is None and not solver.dense:
                    grad = torch.zeros(ctx.shape.numel(), dtype=grads[0].dtype,
                                       device=grads[0].device)
                grad = solver.backward(grad_rank, ctx.lambda_val, grad, factor,
                                       ctx.grad_nonnegative)
        ctx.solvers = None
        return grad.view(ctx.shape), None, None, None, None, None


def rank_problems(live: Tensor, problems: Sequence[RankingProblem], lambda_val: float,
                  margin: float = 0.0, grad_scale: Optional[GradScale] = None,
                  grad_nonnegative: bool = False) -> List[Tuple[Tensor, Tensor]]:
    """Blackbox-differentiable normalised ranks of the positives of each problem.

    Args:
        live (Tensor): float32 scores that receive the gradient (viewed as ``[n, G]`` by each
            problem).
        problems (sequence of RankingProblem): the rankings to solve.
        lambda_val (float): blackbox interpolation strength λ > 0.
        margin (float): margin α >= 0 (positives ranked as if ``α`` lower than they score).
        grad_scale (GradScale, optional): a factor for the returned gradient, read at backward.
        grad_nonnegative (bool): the gradient reaching the ranks is never negative (a loss that
            never improves when a positive's rank worsens, e.g. the AP and recall losses, whose
            outside scaling goes through ``grad_scale``). The backward then runs without any
            host synchronisation on CUDA (it skips a check of the perturbation's direction);
            a negative entry is treated as 0.

    Returns:
        list of ``(rank, rank_among_positives)``, one pair per problem, each ``[P]``:
        ``rk / length`` (differentiable) and ``rk+ / length`` (constant), in the order of the
        problem's ``positives.flat_index``. Empty tensors for a problem without positives.
    """
    if lambda_val <= 0:
        raise ValueError(f'lambda_val must be > 0, got {lambda_val}')
    if margin < 0:
        raise ValueError(f'margin must be >= 0, got {margin}')
    active = [p for p in problems if p.positives.flat_index.numel()]
    outputs = iter(BlackboxPositiveRanks.apply(live, active, lambda_val, margin, grad_scale,
                                               grad_nonnegative) if active else ())
    empty = live.new_zeros(0)
    return [(next(outputs), next(outputs)) if p.positives.flat_index.numel() else (empty, empty)
            for p in problems]


def rank_positives(scores: Tensor, positives: PositiveSet, lambda_val: float,
                   margin: float = 0.0) -> Tuple[Tensor, Tensor]:
    """Normalised ranks of the positives of each column of ``scores`` ``[n, G]`` (one problem,
    no exclusions); see :func:`rank_problems`."""
    problem = RankingProblem(scores.shape[1], positives)
    return rank_problems(scores, [problem], lambda_val, margin)[0]
