"""The paper's reference blackbox ranker: full ranks by ``argsort(argsort(y))``, ``O(n log n)``.

Used as the speed baseline of ``tools/benchmark_loss.py`` and as an exactness reference in the tests
(on tie-free input its gradients equal :class:`~rambo_mmdet.ranking.BlackboxPositiveRanks`'s).
Ties are broken arbitrarily by the sort, so it follows no tie convention.
"""
import torch
from torch import Tensor

__all__ = ['ArgsortBlackboxRanks', 'argsort_ranks']


def argsort_ranks(scores: Tensor) -> Tensor:
    """Ranks along dim 0 (1 = highest), normalised by the length: ``[n, G] -> [n, G]`` float."""
    order = torch.argsort(scores, dim=0, descending=True)
    return (torch.argsort(order, dim=0) + 1).to(scores.dtype) / scores.shape[0]


class ArgsortBlackboxRanks(torch.autograd.Function):
    """Normalised ranks of every entry of each column, blackbox backward by two full re-rankings."""

    @staticmethod
    def forward(ctx, scores: Tensor, lambda_val: float) -> Tensor:
        ranks = argsort_ranks(scores)
        ctx.lambda_val = lambda_val
        ctx.save_for_backward(scores, ranks)
        return ranks

    @staticmethod
    def backward(ctx, grad_ranks: Tensor):
        scores, ranks = ctx.saved_tensors
        perturbed_ranks = argsort_ranks(scores + ctx.lambda_val * grad_ranks)
        return -(ranks - perturbed_ranks) / ctx.lambda_val, None
