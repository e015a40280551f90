"""A bounded, detached memory of the score rows of the last τ batches.

RaMBO ranks the current batch together with the scores of the previous τ batches (τ = 7 in the
paper's detection setting), so that rare classes have positives to rank against. Stored rows are
detached float32 constants: they shape the ranking (and hence the gradients of the current batch) but
receive no gradient and keep no graph alive.

Bound: at most ``max_rows`` rows are kept per batch. When a batch has more rows, all rows holding a
positive are kept first, then the negative rows whose highest score is largest (the only negatives
that can rank above positives). With the RoI box head of Faster R-CNN (512 RoIs per image) the default
keeps every row of a batch of up to 8 images: exactly the paper's memory.

The stored negatives never receive gradient; a ranker only needs their number at or above each
positive. :meth:`ScoreMemory.sorted_negatives` sorts each stored batch's negatives once, at its first
use, so that every later call counts them by binary search instead of filtering and placing the
whole memory again (see :mod:`rambo_mmdet.ranking.counting`).
"""
from collections import deque
from typing import Deque, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from .blackbox import STAGES, searches_on_host
from .counting import SortedNegatives, sort_negatives

__all__ = ['ScoreMemory']


class ScoreMemory(nn.Module):
    """Ring buffer of ``(scores [m, C] float32, targets)`` of the last batches.

    ``targets`` are either ``[m]`` int64 labels following mmdet (``0..C-1`` foreground, ``C``
    background) or a ``[m, C]`` bool relevance mask; one memory holds one kind.

    Args:
        num_batches (int): τ, how many past batches to remember (0 disables the memory).
        max_rows (int): at most this many rows are stored per batch.
    """

    def __init__(self, num_batches: int = 7, max_rows: int = 4096) -> None:
        super().__init__()
        if num_batches < 0 or max_rows < 1:
            raise ValueError(f'ScoreMemory needs num_batches >= 0 and max_rows >= 1, got '
                             f'{num_batches}, {max_rows}')
        self.num_batches = num_batches
        self.max_rows = max_rows
        self._batches: Deque[Tuple[Tensor, Tensor]] = deque(maxlen=max(num_batches, 1))
        # each stored batch's sorted negatives (None until first asked for)
        self._sorted: Deque[Optional[SortedNegatives]] = deque(maxlen=max(num_batches, 1))

    def __len__(self) -> int:
        return len(self._batches)

    def reset(self) -> None:
        """Forget every stored batch."""
        self._batches.clear()
        self._sorted.clear()

    @torch.no_grad()
    @record_function(STAGES['memory'])
    def push(self, scores: Tensor, targets: Tensor, valid: Optional[Tensor] = None) -> None:
        """Remember one batch (detached, float32, at most ``max_rows`` rows).

        Args:
            scores (Tensor): ``[N, C]``.
            targets (Tensor): ``[N]`` labels or ``[N, C]`` bool relevance.
            valid (Tensor, optional): ``[N]`` bool; rows that are False (ignored samples) are
                not remembered.

        A batch whose class count differs from the stored ones resets the memory.
        """
        if not self.num_batches:
            return
        if valid is not None and not bool(valid.all()):
            scores, targets = scores[valid], targets[valid]
        if scores.shape[0] == 0:
            return
        if self._batches and self._batches[0][0].shape[1] != scores.shape[1]:
            self.reset()
        scores = scores.detach().float()
        if scores.shape[0] > self.max_rows:
            keep = self._rows_to_keep(scores, targets)
            scores, targets = scores[keep], targets[keep]
        self._batches.append((scores.clone(), targets.detach().clone()))
        self._sorted.append(None)

    def _rows_to_keep(self, scores: Tensor, targets: Tensor) -> Tensor:
        """Indices of ``max_rows`` rows: positive rows first, then the highest-scoring others."""
        positive_row = targets.any(dim=1) if targets.dim() == 2 else targets < scores.shape[1]
        priority = scores.amax(dim=1)
        priority = torch.where(positive_row, torch.full_like(priority, float('inf')), priority)
        return torch.topk(priority, self.max_rows, sorted=False).indices.sort().values

    @record_function(STAGES['memory'])
    def contents(self, like: Tensor) -> Optional[Tuple[Tensor, Tensor]]:
        """The remembered rows, oldest first, on ``like``'s device: ``(scores [M, C], targets)``;
        None when empty or when ``like`` (``[N, C]``) has another class count."""
        if not self._batches or self._batches[0][0].shape[1] != like.shape[1]:
            return None
        device = like.device
        return (torch.cat([s.to(device) for s, _ in self._batches]),
                torch.cat([t.to(device) for _, t in self._batches]))

    @record_function(STAGES['memory'])
    def sorted_negatives(self, like: Tensor) -> Optional[List[SortedNegatives]]:
        """The negatives of the rows of :meth:`contents`, sorted per class, one
        :class:`~rambo_mmdet.ranking.counting.SortedNegatives` per stored batch (on ``like``'s
        device), for a :class:`~rambo_mmdet.ranking.blackbox.RankingProblem` that ranks those
        rows (``constant_negatives``); None when :meth:`contents` is None. Each stored batch is
        sorted once, at its first use, and never written again (a graph that still holds it
        stays valid after later pushes)."""
        if not self._batches or self._batches[0][0].shape[1] != like.shape[1]:
            return None
        for i, ((scores, targets), block) in enumerate(zip(self._batches, self._sorted)):
            if block is None:
                self._sorted[i] = sort_negatives(scores, self._positive_mask(scores, targets),
                                                 searches_on_host(scores.device))
        device = like.device
        return [SortedNegatives(keys.to(device), end.to(device)) for keys, end in self._sorted]

    @staticmethod
    def _positive_mask(scores: Tensor, targets: Tensor) -> Tensor:
        """``[m, C]`` bool positives of stored rows (``targets``: labels or the mask itself)."""
        if targets.dim() == 2:
            return targets
        return targets[:, None] == torch.arange(scores.shape[1], device=targets.device)

    def extend(self, scores: Tensor, targets: Tensor) -> Tuple[Tensor, Tensor]:
        """The current batch followed by the remembered rows (moved to ``scores``' device).

        Args:
            scores (Tensor): ``[N, C]`` current scores (kept differentiable).
            targets (Tensor): ``[N]`` labels or ``[N, C]`` bool relevance.

        Returns:
            tuple: ``[N + m, C]`` float32 scores and the targets of the ``N + m`` rows.
        """
        scores = scores.float()
        stored = self.contents(scores)
        if stored is None:
            return scores, targets
        return torch.cat([scores, stored[0]]), torch.cat([targets, stored[1]])

    def _apply(self, fn, recurse=True):
        """Move the stored rows with ``.to()`` / ``.cuda()`` / ``.cpu()`` (they stay float32)."""
        super()._apply(fn, recurse)
        moved = []
        for scores, targets in self._batches:
            device = fn(scores[:0]).device
            moved.append((scores.to(device), targets.to(device)))
        self._batches = deque(moved, maxlen=self._batches.maxlen)
        self._sorted = deque([None] * len(moved), maxlen=self._sorted.maxlen)
        return self

    def extra_repr(self) -> str:
        return f'num_batches={self.num_batches}, max_rows={self.max_rows}, stored={len(self)}'
