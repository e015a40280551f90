"""Score calibration of rank-trained classifiers, and how calibrated detection scores are.

A ranking loss (``RaMBOAPLoss``) trains only the *order* of the logits: their level and spread
are arbitrary, so ``sigmoid(logit)`` is not a probability. A monotone map of the logit,

    ``p = sigmoid(a * logit + b)``, ``a > 0``,

fitted by logistic regression (binary cross-entropy) on *detached* logits, turns them into
probabilities without changing their order. With one ``(a, b)`` for all classes (``'global'``)
every comparison of two scores is kept, also across classes, so everything a detector selects
by score (top-k over classes, NMS, ``max_per_img``) selects the same boxes and AP is unchanged;
one ``(a_c, b_c)`` per class (``'per_class'``) keeps the order within each class only.

* :func:`logistic_fit_step`: one safeguarded Newton step of ``(a, b)`` on a batch (what the
  loss does once per training call);
* :func:`fit_logistic`: the full fit on one set of logits (those steps until converged).
* :func:`match_detections` / :func:`expected_calibration_error`: the detection-level
  calibration measure (a detection is correct when it matches a same-class ground truth box at
  IoU >= 0.5, greedily by score; ECE over equal-width score bins).
"""
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

__all__ = ['MODES', 'calibrate_logits', 'logistic_fit_step', 'fit_logistic',
           'box_iou', 'match_detections', 'expected_calibration_error', 'reliability_bins']

#: calibration modes: one (a, b) for all classes, or one per class
MODES = ('global', 'per_class')
#: smallest scale a: keeps the map strictly increasing
MIN_SCALE = 1e-3


def calibrate_logits(logits: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
    """``logits * scale + bias`` (``scale``/``bias``: scalars, or ``[C]`` for the last dimension
    of ``logits`` ``[N, C]``), in float64 for float64 logits, else in float32."""
    if logits.dtype != torch.float64:
        logits = logits.float()
    return logits * scale.to(logits.dtype) + bias.to(logits.dtype)


def _weights_like(z: Tensor, weights: Optional[Tensor]) -> Optional[Tensor]:
    """``[N, C]`` float64 weights, or None for unit weights (no multiplications then)."""
    if weights is None:
        return None
    weights = weights.double()
    return (weights[:, None] if weights.dim() == 1 else weights).expand_as(z)


def logistic_fit_step(logits: Tensor, targets: Tensor, scale: Tensor, bias: Tensor,
                      weights: Optional[Tensor] = None, per_class: bool = False,
                      reduce: Optional[Callable[[Tensor], Tensor]] = None,
                      max_halvings: int = 30) -> Tuple[Tensor, Tensor, Tensor]:
    """One safeguarded Newton step of the BCE fit of ``sigmoid(scale * logits + bias)``.

    Newton's direction is computed in standardised coordinates (``(logit - mean) / std`` of the
    weighted logits, so a narrow band of logits far from 0 does not make it ill-conditioned),
    then halved until the weighted BCE of these rows does not increase (backtracking line
    search; pure Newton overshoots and cycles on skewed data). ``scale`` stays >=
    :data:`MIN_SCALE`.

    Args:
        logits: ``[N, C]`` (detached; computed in float64).
        targets: ``[N, C]`` 0/1.
        scale, bias: the current map: scalars, or ``[C]`` with ``per_class``.
        weights: ``[N]`` row weights or ``[N, C]`` entry weights (e.g. inverse sampling rates,
            or 0 for the entries that are not fitted); default 1.
        per_class: one map per column.
        reduce: applied to every sum before it is used (e.g. an all-reduce over data-parallel
            ranks: all ranks then take the same decisions and get the same result).

    Returns:
        ``(scale, bias, bce)``: the new map (float64) and the mean BCE at it. Columns (or a
        batch) without weight keep their map.
    """
    z = logits.detach().double()
    t = targets.double()
    w = _weights_like(z, weights)
    dims = (0, ) if per_class else (0, 1)
    reduce = reduce or (lambda x: x)

    def weighted_sum(values: Tensor) -> Tensor:
        return (values if w is None else w * values).sum(dims)

    if w is None:
        count = z.new_full(z.shape[1:] if per_class else (), z.shape[0] if per_class else z.numel())
    else:
        count = w.sum(dims)
    moments = reduce(torch.stack([count, weighted_sum(z), weighted_sum(z * z)]))
    count = moments[0]
    mean = moments[1] / count.clamp(min=1e-300)
    std = (moments[2] / count.clamp(min=1e-300) - mean * mean).clamp(min=0).sqrt()
    std = std.clamp(min=1e-6 * (1 + mean.abs()))
    x = (z - mean) / std
    scale, bias = scale.double(), bias.double()
    alpha, beta = scale * std, bias + scale * mean  # the same map on x

    def bce_sums(alpha, beta):
        u = alpha * x + beta
        return reduce(weighted_sum(torch.nn.functional.softplus(u) - t * u))

    u = alpha * x + beta
    p = u.sigmoid()
    r, q = p - t, p * (1 - p)
    rx, qx = r * x, q * x
    sums = reduce(torch.stack([weighted_sum(rx), weighted_sum(r), weighted_sum(qx * x),
                               weighted_sum(qx), weighted_sum(q)], dim=-1))
    g_a, g_b, h_aa, h_ab, h_bb = sums.unbind(-1)
    ridge = 1e-6 * count + 1e-12
    h_aa, h_bb = h_aa + ridge, h_bb + ridge
    det = h_aa * h_bb - h_ab * h_ab
    d_a = (h_bb * g_a - h_ab * g_b) / det
    d_b = (h_aa * g_b - h_ab * g_a) / det
    bce0 = bce_sums(alpha, beta)
    step = torch.ones_like(bce0)
    min_alpha = MIN_SCALE * std
    for _ in range(max_halvings):
        new_alpha = torch.maximum(alpha - step * d_a, min_alpha)
        new_beta = beta - step * d_b
        bce = bce_sums(new_alpha, new_beta)
        ok = bce <= bce0
        if bool(ok.all()):
            break
        step = torch.where(ok, step, step / 2)
    else:  # no decrease found: keep the map where that failed
        new_alpha = torch.where(ok, new_alpha, alpha)
        new_beta = torch.where(ok, new_beta, beta)
        bce = torch.where(ok, bce, bce0)
    empty = count <= 0
    new_alpha = torch.where(empty, alpha, new_alpha)
    new_beta = torch.where(empty, beta, new_beta)
    new_scale = (new_alpha / std).clamp(min=MIN_SCALE)
    new_bias = new_beta - new_scale * mean
    return new_scale, new_bias, bce / count.clamp(min=1e-300)


def fit_logistic(logits: Tensor, targets: Tensor, per_class: bool = False,
                 weights: Optional[Tensor] = None, max_iters: int = 200,
                 tol: float = 1e-7) -> Tuple[Tensor, Tensor]:
    """Fit ``sigmoid(a * logits + b)`` to ``targets`` by BCE (safeguarded Newton, from
    ``a = 1, b = 0``, until the map changes by less than ``tol``).

    ``logits``/``targets``: ``[N, C]`` (or ``[N]``, one class). Returns float32 ``(a, b)``:
    scalars, or ``[C]`` with ``per_class``.
    """
    if logits.dim() == 1:
        logits, targets = logits[:, None], targets[:, None]
    shape = (logits.shape[1], ) if per_class else ()
    scale = torch.ones(shape, dtype=torch.float64, device=logits.device)
    bias = torch.zeros(shape, dtype=torch.float64, device=logits.device)
    for _ in range(max_iters):
        new_scale, new_bias, _ = logistic_fit_step(logits, targets, scale, bias, weights,
                                                   per_class)
        change = torch.maximum((new_scale - scale).abs().max(), (new_bias - bias).abs().max())
        scale, bias = new_scale, new_bias
        if change < tol:
            break
    return scale.float(), bias.float()


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of ``[N, 4]`` and ``[M, 4]`` ``(x1, y1, x2, y2)`` boxes: ``[N, M]`` (float64)."""
    a, b = boxes1.double(), boxes2.double()
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def match_detections(det_bboxes: Tensor, det_labels: Tensor, det_scores: Tensor,
                     gt_bboxes: Tensor, gt_labels: Tensor, iou_thr: float = 0.5) -> Tensor:
    """Which detections of one image are correct: ``[D]`` bool.

    Greedily by descending score (ties: the earlier detection first), each detection takes the
    unmatched ground-truth box of its own class with the highest IoU, if that IoU is >=
    ``iou_thr`` (COCO's rule at one threshold, without crowd boxes); it is then correct.
    """
    num_dets = det_scores.numel()
    correct = torch.zeros(num_dets, dtype=torch.bool)
    if num_dets == 0 or gt_bboxes.numel() == 0:
        return correct
    iou = box_iou(det_bboxes.reshape(-1, 4).cpu(), gt_bboxes.reshape(-1, 4).cpu())
    same = det_labels.cpu()[:, None] == gt_labels.cpu()[None, :]
    iou = torch.where(same, iou, torch.full_like(iou, -1.0))
    taken = torch.zeros(iou.shape[1], dtype=torch.bool)
    order = torch.sort(det_scores.cpu(), descending=True, stable=True).indices
    for i in order.tolist():
        row = torch.where(taken, torch.full_like(iou[i], -1.0), iou[i])
        best = int(row.argmax())
        if row[best] >= iou_thr:
            taken[best] = True
            correct[i] = True
    return correct


def reliability_bins(scores: Tensor, correct: Tensor, num_bins: int = 15) -> Tensor:
    """Per equal-width score bin of ``[0, 1]`` (the last bin includes 1): ``[num_bins, 3]``
    float64 ``(count, sum of scores, number correct)``."""
    s = scores.detach().double().reshape(-1).cpu()
    c = correct.reshape(-1).cpu().double()
    idx = (s * num_bins).floor().long().clamp(0, num_bins - 1)
    out = torch.zeros(num_bins, 3, dtype=torch.float64)
    out[:, 0].index_add_(0, idx, torch.ones_like(s))
    out[:, 1].index_add_(0, idx, s)
    out[:, 2].index_add_(0, idx, c)
    return out


def expected_calibration_error(scores: Tensor, correct: Tensor, num_bins: int = 15) -> float:
    """Expected calibration error of detection scores.

    ``ECE = sum over bins b of (n_b / N) * |accuracy_b - mean score_b|``, with ``num_bins``
    equal-width bins over ``[0, 1]``, ``accuracy_b`` the fraction of correct detections in bin
    ``b`` (see :func:`match_detections`). 0 for no detection.
    """
    bins = reliability_bins(scores, correct, num_bins)
    total = bins[:, 0].sum()
    if total == 0:
        return 0.0
    return float((bins[:, 2] - bins[:, 1]).abs().sum() / total)
