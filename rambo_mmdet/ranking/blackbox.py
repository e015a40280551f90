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
place, the dense one joins it to the live scores once per call).
"""
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.profiler import record_function

from .counting import (CellGrid, PositiveSet, candidate_floor, cell_crossings, cells_above,
                       cells_of, contains, negative_candidates, negatives_above, place_sparse,
                       sort_positives, sparse_bins)
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
MAX_TOTAL_CELLS = 1 << 20


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
        self.pos_scores = self._gather(positives.flat_index) - margin
        self.excluded_flat = None
        if num_excluded:
            self.excluded_flat = (self.excluded[:, None] * groups
                                  + torch.arange(groups, device=live.device)).view(-1)

    def _candidates(self, floor: Tensor, within: Optional[Tensor] = None) -> Tensor:
        positives = self.problem.positives
        index = negative_candidates(self.live, floor, 0, positives, self.excluded_flat, within)
        if self.problem.constant is not None:
            index = torch.cat([index, negative_candidates(self.problem.constant, floor,
                                                          self.live_size, positives)])
        return index

    def _surviving_fraction(self, floor: Tensor) -> float:
        """Fraction of the entries scoring at or above their group's ``floor`` (one host sync),
        counted on every ``stride``-th row of a problem above :data:`SURVIVAL_SAMPLE` entries.
        It only chooses the strategy (both are exact), so an estimate is enough."""
        blocks = [self.live] + ([] if self.problem.constant is None else [self.problem.constant])
        total = sum(block.numel() for block in blocks)
        if total == 0:
            return 0.0
        stride = max(1, total // SURVIVAL_SAMPLE)
        surviving = sum(torch.count_nonzero(block[::stride] >= floor) for block in blocks)
        sampled = sum(block[::stride].numel() for block in blocks)
        return int(surviving) / sampled

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

    def select(self) -> None:
        """Sort the positives, find each group's candidate floor, choose the strategy."""
        positives = self.problem.positives
        with record_function(STAGES['select']):
            self.sorted_pos = sort_positives(self.pos_scores, positives)
            self.rank_among = (1 + positives.group_end[positives.group]
                               - self.sorted_pos.at_or_below)
            self.floor = candidate_floor(positives, self.pos_scores)
            self.dense = self._surviving_fraction(self.floor) > DENSE_FRACTION

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
        return self.rank, self.rank_among

    def backward(self, grad_rank: Tensor, lambda_val: float, grad: Optional[Tensor],
                 factor: Optional[Tensor]) -> Tensor:
        """Add this problem's blackbox gradient, times ``factor`` (a 0-dim tensor or None), to
        ``grad`` (flat, live entries; None: start one (dense strategy only)); returns it."""
        positives, groups = self.problem.positives, self.problem.num_groups
        perturbed = self.pos_scores + lambda_val * grad_rank.to(self.pos_scores.dtype)
        sorted_after = sort_positives(perturbed, positives)
        rank_after = 1 + positives.group_end[positives.group] - sorted_after.at_or_below

        if self.dense:
            return self._dense_backward(perturbed, sorted_after, rank_after, lambda_val, grad,
                                        factor)
        neg_index, neg_group, placement = self.neg_index, self.neg_group, self.placement
        if not bool((perturbed >= self.pos_scores).all()):
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
        live_neg = neg_index < self.live_size
        neg_index, neg_group, neg_delta = neg_index[live_neg], neg_group[live_neg], \
            (placement - placement_after)[live_neg]

        scale = self._grad_scale(rank_after, lambda_val, grad.dtype)
        if factor is not None:
            scale = factor.to(grad.dtype) * scale
        is_live = positives.flat_index < self.live_size
        pos_scale, neg_scale = (scale, scale) if scale.dim() == 0 else \
            (scale[positives.group[is_live]], scale[neg_group])
        grad.index_add_(0, neg_index, neg_delta.to(grad.dtype) * neg_scale)
        grad.index_add_(0, positives.flat_index[is_live],
                        self._positive_values(rank_after, pos_scale, factor, grad.dtype,
                                              is_live))
        return grad

    # ------------------------------------------------------------------ dense strategy
    def _entries(self) -> Tensor:
        """All entries, flat: the live scores, then the constant rows (a copy only with
        constant rows)."""
        live = self.live.reshape(-1)
        if self.problem.constant is None:
            return live
        return torch.cat([live, self.problem.constant.reshape(-1)])

    def _grid(self, entries: Tensor) -> CellGrid:
        """Cells over the entries' score range (one host sync), sized to the group length."""
        groups = self.problem.num_groups
        per_group = max(entries.numel() // max(groups, 1), 1)
        cells = 2
        while (cells < per_group // ENTRIES_PER_CELL and cells < MAX_CELLS
               and 2 * cells * groups <= MAX_TOTAL_CELLS):
            cells *= 2
        low, high = torch.stack(entries.aminmax()).tolist() if entries.numel() else (0.0, 0.0)
        return CellGrid.spanning(low, high, cells, groups)

    def _not_negative(self) -> Tensor:
        """Ascending flat indices of the entries that are no negatives: positives, excluded."""
        index = self.problem.positives.flat_index
        if self.excluded_flat is not None:
            index = torch.cat([index, self.excluded_flat]).sort().values
        return index

    def _shared_cell_entries(self, flags: Tensor) -> Tensor:
        """Ascending flat indices of the negatives whose cell is flagged."""
        owner: List[Tensor] = []
        hit = scratch_pool.take(self.cell.numel(), torch.bool, self.cell.device, owner)
        index = torch.index_select(flags, 0, self.cell, out=hit).nonzero().squeeze(1)
        scratch_pool.give(owner)
        return index[~contains(self.not_negative, index)]

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
            counts = torch.bincount(self.cell, minlength=num_cells)
            counts.index_add_(0, self.cell[self.not_negative].long(),
                              torch.full_like(counts[:1], -1).expand(self.not_negative.numel()))
            self.pos_cell = cells_of(grid, self.pos_scores, positives.group)
            self.flags = torch.zeros(num_cells, dtype=torch.bool, device=counts.device)
            self.flags[self.pos_cell.long()] = True
            self.shared = self._shared_cell_entries(self.flags)
        with record_function(STAGES['place']):
            self.shared_group = self.shared % groups
            self.shared_scores = entries[self.shared]
            self.shared_placement = place_sparse(sorted_pos, self.shared_scores,
                                                 self.shared_group)
            # negatives in no positive's cell, counted per cell
            self.counts = counts - torch.bincount(self.cell[self.shared], minlength=num_cells)
            self.above_cells = cells_above(self.counts, grid)[self.pos_cell.long()]
            return sparse_bins(sorted_pos, positives, self.shared_placement, self.shared_group)

    def _dense_backward(self, perturbed: Tensor, sorted_after, rank_after: Tensor,
                        lambda_val: float, grad: Optional[Tensor],
                        factor: Optional[Tensor]) -> Tensor:
        """Every negative in a cell that holds no positive before or after the perturbation
        moves by the net number of positives whose cells passed it (:func:`cell_crossings`,
        one table gather per entry); the negatives that share a cell with a positive, before
        or after, are placed exactly."""
        positives, groups, grid = self.problem.positives, self.problem.num_groups, self.grid
        cell_after = cells_of(grid, perturbed, positives.group)
        new = ~self.flags[cell_after.long()]
        flags = self.flags
        shared, shared_group = self.shared, self.shared_group
        shared_scores, placement = self.shared_scores, self.shared_placement
        counts = self.counts
        if bool(new.any()):
            added = torch.zeros_like(self.flags)
            added[cell_after[new].long()] = True
            flags = self.flags | added
            extra = self._shared_cell_entries(added)
            extra_group = extra % groups
            extra_scores = self._gather(extra)
            shared = torch.cat([shared, extra])
            shared_group = torch.cat([shared_group, extra_group])
            shared_scores = torch.cat([shared_scores, extra_scores])
            placement = torch.cat([placement,
                                   place_sparse(self.sorted_pos, extra_scores, extra_group)])
            counts = counts - torch.bincount(self.cell[extra], minlength=counts.numel())
        placement_after = place_sparse(sorted_after, shared_scores, shared_group)
        rank_after += cells_above(counts, grid)[cell_after.long()] + negatives_above(
            sorted_after, positives,
            sparse_bins(sorted_after, positives, placement_after, shared_group))

        dtype = self.pos_scores.dtype
        scale = self._grad_scale(rank_after, lambda_val, dtype)
        if factor is not None:
            scale = factor.to(dtype) * scale
        per_cell = cell_crossings(grid, self.pos_cell, cell_after).to(dtype)
        per_cell = (per_cell.view(groups, grid.cells) * (scale.view(-1, 1) if scale.dim()
                                                         else scale)).view(-1)
        per_cell[flags] = 0
        live_cell = self.cell[:self.live_size]
        # the first dense problem's values are the returned gradient (a fresh tensor); a later
        # one's are added to it and die here (a pooled block)
        values = per_cell.index_select(0, live_cell) if grad is None else torch.index_select(
            per_cell, 0, live_cell, out=scratch_pool.take(live_cell.numel(), dtype,
                                                          live_cell.device, self.scratch))
        not_negative = self.not_negative[self.not_negative < self.live_size]
        values[not_negative] = 0
        live = shared < self.live_size
        shared_scale = scale if scale.dim() == 0 else scale[shared_group[live]]
        values.index_add_(0, shared[live],
                          (placement - placement_after)[live].to(dtype) * shared_scale)
        is_live = positives.flat_index < self.live_size
        pos_scale = scale if scale.dim() == 0 else scale[positives.group[is_live]]
        values.index_add_(0, positives.flat_index[is_live],
                          self._positive_values(rank_after, pos_scale, factor, dtype, is_live))
        grad = values if grad is None else grad.add_(values)
        scratch_pool.give(self.scratch)  # the cells and the added values are dead now
        return grad

    def _positive_values(self, rank_after: Tensor, pos_scale: Tensor, factor: Optional[Tensor],
                         dtype: torch.dtype, is_live: Tensor) -> Tensor:
        """The live positives' gradient: rank change times the group's scale, or, with
        ``error_driven``, ``-w (1 - precision_i) / (K P_g)`` (times ``factor``)."""
        if not (self.problem.error_driven and self.problem.balanced_weight is not None):
            return (rank_after - self.rank)[is_live].to(dtype) * pos_scale
        precision, count, share = self._balanced_share(dtype)
        values = -share * (1.0 - precision) / count[self.problem.positives.group].clamp(min=1)
        if factor is not None:
            values = factor.to(dtype) * values
        return values[is_live]

    def _balanced_share(self, dtype: torch.dtype) -> Tuple[Tensor, Tensor, Tensor]:
        """What the balanced gradient divides: each positive's precision ``rk+ / rk`` ``[P]``,
        each group's positive count ``[G]`` and ``w / K`` (the balanced weight over the groups
        with positives), in ``dtype``."""
        positives = self.problem.positives
        count = (positives.group_end - positives.group_start).to(dtype)
        precision = self.rank_among.to(dtype) / self.rank.to(dtype)
        return precision, count, \
            self.problem.balanced_weight / (count > 0).sum().clamp(min=1).to(dtype)

    def _grad_scale(self, rank_after: Tensor, lambda_val: float, dtype: torch.dtype) -> Tensor:
        """Gradient per unit of rank change: the paper's ``1 / (λ n)`` (``-(rk(y) - rk(y')) /
        λ`` on the scale ``rk / n``), or ``[G]`` balanced factors (see :class:`RankingProblem`)."""
        weight = self.problem.balanced_weight
        if weight is None:
            return torch.tensor(1.0 / (lambda_val * self.length), dtype=dtype,
                                device=rank_after.device)
        positives, groups = self.problem.positives, self.problem.num_groups
        precision, count, share = self._balanced_share(dtype)
        loss = 1.0 - torch.zeros(groups, dtype=dtype, device=rank_after.device).index_add_(
            0, positives.group, precision) / count.clamp(min=1)
        target = share * loss
        # rank gained by the group's positives = positive-negative crossings (positive-positive
        # swaps cancel in the sum)
        gained = torch.zeros(groups, dtype=dtype, device=rank_after.device).index_add_(
            0, positives.group, (self.rank - rank_after).to(dtype))
        # per crossing at most target / count: a group whose positives cross few negatives (a
        # short or well-ordered ranking) gets proportionally less, instead of its whole share
        # concentrated on those few scores
        return torch.where(gained > 0, target / torch.maximum(gained, count).clamp(min=1),
                           torch.zeros_like(gained))


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
    :class:`RankingProblem`), ``lambda_val`` (float > 0), ``margin`` (float >= 0).

    Forward outputs, per problem: ``rank`` ``[P]`` (``rk / length``, differentiable) and
    ``rank_among_positives`` ``[P]`` (``rk+ / length``, a constant), in the order of the
    problem's ``positives.flat_index``; flattened into one tuple.

    Strategy, per problem: *sparse* when at most :data:`DENSE_FRACTION` of the entries score at or
    above the lowest positive of their group, else *dense* (see :mod:`rambo_mmdet.ranking.counting`).
    """

    @staticmethod
    def forward(ctx, live: Tensor, problems: Sequence[RankingProblem], lambda_val: float,
                margin: float, grad_scale: Optional[GradScale] = None) -> Tuple[Tensor, ...]:
        # The problems address entries by row-major flat index and the solvers view and filter
        # the scores flat: any other layout (transposed, sliced, expanded) is ranked as a
        # contiguous copy, bit-identically; contiguous scores (the usual case) are not copied.
        # The gradient is returned contiguous, in ``live``'s shape.
        live = live.contiguous()
        problems = [p if p.constant is None else p._replace(constant=p.constant.contiguous())
                    for p in problems]
        ctx.solvers = [_Solver(problem, live, margin) for problem in problems]
        ctx.lambda_val, ctx.shape, ctx.grad_scale = lambda_val, live.shape, grad_scale
        for solver in ctx.solvers:
            solver.select()
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
                grad = solver.backward(grad_rank, ctx.lambda_val, grad, factor)
        ctx.solvers = None
        return grad.view(ctx.shape), None, None, None, None


def rank_problems(live: Tensor, problems: Sequence[RankingProblem], lambda_val: float,
                  margin: float = 0.0,
                  grad_scale: Optional[GradScale] = None) -> List[Tuple[Tensor, Tensor]]:
    """Blackbox-differentiable normalised ranks of the positives of each problem.

    Args:
        live (Tensor): float32 scores that receive the gradient (viewed as ``[n, G]`` by each
            problem).
        problems (sequence of RankingProblem): the rankings to solve.
        lambda_val (float): blackbox interpolation strength λ > 0.
        margin (float): margin α >= 0 (positives ranked as if ``α`` lower than they score).
        grad_scale (GradScale, optional): a factor for the returned gradient, read at backward.

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
    outputs = iter(BlackboxPositiveRanks.apply(live, active, lambda_val, margin, grad_scale)
                   if active else ())
    empty = live.new_zeros(0)
    return [(next(outputs), next(outputs)) if p.positives.flat_index.numel() else (empty, empty)
            for p in problems]


def rank_positives(scores: Tensor, positives: PositiveSet, lambda_val: float,
                   margin: float = 0.0) -> Tuple[Tensor, Tensor]:
    """Normalised ranks of the positives of each column of ``scores`` ``[n, G]`` (one problem,
    no exclusions); see :func:`rank_problems`."""
    problem = RankingProblem(scores.shape[1], positives)
    return rank_problems(scores, [problem], lambda_val, margin)[0]
