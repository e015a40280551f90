"""RaMBORecallLoss: the paper's refined recall loss over a [queries, gallery] score matrix."""
from typing import Optional

import torch
from mmdet.registry import MODELS
from torch import Tensor, nn

from ...ranking import GradScale, ScoreMemory, check_scores, recall_loss, route_output_grad

__all__ = ['RaMBORecallLoss']


@MODELS.register_module()
class RaMBORecallLoss(nn.Module):
    """Recall loss of RaMBO: mean over relevant pairs of ``log(1 + r)`` (or ``log(1+log(1+r))``),
    ``r`` = number of irrelevant gallery items ranked above the relevant one, per query.

    Input is a ``[Q, M]`` score matrix (each row one query ranking its ``M`` gallery items) and a
    ``[Q, M]`` bool relevance matrix. With ``memory_batches > 0`` (training only) the gallery of the
    last τ calls, for the same ``Q`` queries (e.g. classes), is appended, detached, to each ranking.

    Args:
        lambda_val (float): blackbox interpolation strength λ. Default 0.5.
        margin (float): margin α. Default 0.15.
        log_log (bool): use ``log(1 + log(1 + r))``. Default False.
        memory_batches (int): τ (0: no memory). Default 0.
        memory_max_rows (int): gallery items kept per remembered call. Default 4096.
        loss_weight (float): weight of value and gradient (it does not change λ: the ranker is
            fed the gradient of the unweighted loss, as in ``RaMBOAPLoss``). Default 1.0.
    """

    needs_all_samples = True

    def __init__(self, lambda_val: float = 0.5, margin: float = 0.15, log_log: bool = False,
                 memory_batches: int = 0, memory_max_rows: int = 4096,
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        if lambda_val <= 0 or margin < 0:
            raise ValueError(f'RaMBORecallLoss needs lambda_val > 0 and margin >= 0, got '
                             f'{lambda_val}, {margin}')
        self.lambda_val, self.margin, self.log_log = float(lambda_val), float(margin), log_log
        self.loss_weight = float(loss_weight)
        self.memory = ScoreMemory(memory_batches, memory_max_rows)

    def forward(self, scores: Tensor, relevance: Tensor,
                weight: Optional[Tensor] = None, avg_factor: Optional[float] = None,
                reduction_override: Optional[str] = None) -> Tensor:
        """Args: ``scores`` ``[Q, M]`` float, ``relevance`` ``[Q, M]`` bool. ``weight``,
        ``avg_factor`` and ``reduction_override`` are accepted for mmdet compatibility and
        ignored. Returns a float32 scalar (zero, zero gradient, without relevant pairs)."""
        check_scores(scores, name='RaMBORecallLoss: scores')
        if relevance.dtype != torch.bool or relevance.shape != scores.shape:
            raise ValueError(f'RaMBORecallLoss: relevance must be bool of shape '
                             f'{tuple(scores.shape)}, got {relevance.dtype} '
                             f'{tuple(relevance.shape)}')
        # Rankings run along dim 0 in the core: gallery items become rows.
        gallery, relevant = scores.t(), relevance.t()
        remember = self.training and self.memory.num_batches > 0
        if remember:
            gallery, relevant = self.memory.extend(gallery, relevant)
        grad_scale = GradScale() if torch.is_grad_enabled() and scores.requires_grad else None
        loss = recall_loss(gallery, relevant, self.lambda_val, self.margin, self.log_log,
                           grad_scale)
        if remember:
            self.memory.push(scores.t(), relevance.t())
        if grad_scale is not None:  # loss_weight / AMP scaling scale the gradient, not λ
            loss = route_output_grad(loss, grad_scale)
        return self.loss_weight * loss

