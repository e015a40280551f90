"""A bounded, detached memory of the score rows of the last τ batches.

RaMBO ranks the current batch together with the scores of the previous τ batches (τ = 7 in the
paper's detection setting), so that rare classes have positives to rank against. Stored rows are
detached constants: they shape the ranking (and hence the gradients of the current batch) but receive
no gradient and keep no graph alive.

Bound: at most ``max_rows`` rows are kept per batch. When a batch has more valid rows, all rows
holding a positive are kept first, then the negative rows whose highest score is largest (the only
negatives that can rank above positives). With the RoI box head of Faster R-CNN (512 RoIs per image)
the default keeps every row of a 2-8 image batch, which is exactly the paper's memory.
"""
from collections import deque
from typing import Deque, Tuple

import torch
from torch import Tensor, nn

__all__ = ['ScoreMemory']


class ScoreMemory(nn.Module):
    """Ring buffer of ``(scores [m, C] float32, positive [m, C] bool)`` for the last batches.

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

    def __len__(self) -> int:
        return len(self._batches) if self.num_batches else 0

    def reset(self) -> None:
        """Forget every stored batch."""
        self._batches.clear()

    @torch.no_grad()
    def push(self, scores: Tensor, positive: Tensor) -> None:
        """Remember one batch (detached, float32; bounded to ``max_rows`` rows).

        A batch whose class count differs from the stored ones (another head sharing the loss
        module) resets the memory.
        """
        if not self.num_batches or scores.shape[0] == 0:
            return
        if self._batches and self._batches[0][0].shape[1] != scores.shape[1]:
            self.reset()
        scores = scores.detach().float()
        if scores.shape[0] > self.max_rows:
            keep = self._rows_to_keep(scores, positive)
            scores, positive = scores[keep], positive[keep]
        self._batches.append((scores.clone(), positive.clone()))

    def _rows_to_keep(self, scores: Tensor, positive: Tensor) -> Tensor:
        """Indices of ``max_rows`` rows: positive rows first, then the highest-scoring others."""
        priority = scores.amax(dim=1)
        priority = torch.where(positive.any(dim=1), torch.full_like(priority, float('inf')),
                               priority)
        return torch.topk(priority, self.max_rows, sorted=False).indices

    def extend(self, scores: Tensor, positive: Tensor) -> Tuple[Tensor, Tensor]:
        """The current batch followed by the remembered rows (moved to ``scores``' device).

        Args:
            scores (Tensor): ``[N, C]`` current scores (kept differentiable).
            positive (Tensor): ``[N, C]`` bool.

        Returns:
            tuple: ``[N + m, C]`` scores (float32) and positive mask.
        """
        scores = scores.float()
        stored = [b for b in self._batches if b[0].shape[1] == scores.shape[1]]
        if not self.num_batches or not stored:
            return scores, positive
        device = scores.device
        old_scores = [s.to(device, non_blocking=True) for s, _ in stored]
        old_positive = [p.to(device, non_blocking=True) for _, p in stored]
        return torch.cat([scores, *old_scores]), torch.cat([positive, *old_positive])

    def _apply(self, fn, recurse=True):  # move stored rows with .to() / .cuda() / .cpu()
        super()._apply(fn, recurse)
        self._batches = deque(((fn(s).float(), p.to(fn(s).device)) for s, p in self._batches),
                              maxlen=self._batches.maxlen)
        return self

    def extra_repr(self) -> str:
        return f'num_batches={self.num_batches}, max_rows={self.max_rows}, stored={len(self)}'

