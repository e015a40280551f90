"""Speed and peak-memory benchmark of RaMBO's AP loss against three baselines.

What is measured, on the SAME logits ``[N, C]`` / labels ``[N]`` (``C`` = background, mmdet style) /
label weights for every method of a case:

* ``rambo``         ``RaMBOAPLoss`` built as the shipped dense-head configs build it
                    (``rambo_dense_head_loss`` of ``configs/_base_/rambo_losses.py``: mode
                    ``'auto'``, i.e. the balanced gradient with margin 0.15 at a dense head's
                    positive fraction, β = 1/3, no score memory). Its score calibration is fitted
                    by the head on its training detections every 8th call, not by the loss, so it
                    is not part of this call (its cost is in the training timings of
                    ``results/quality/timing``);
* ``rambo-paper``   the paper's loss and gradient (λ = 0.5, α = 0.15, β = 1/3, no memory) by the
                    ranking core's fused ``detection_ap_loss`` (both terms in one blackbox node,
                    ignored rows excluded inside the ranker), what ``RaMBOAPLoss(mode='paper')``
                    computes; the one compared with the reference (same loss, same gradient);
* ``rambo+memory``  ``rambo`` with the paper's score memory (τ = 7), filled by 7 previous
                    calls on batches of the same shape (steady state: every timed call also pushes);
* ``reference``     the same loss computed the paper's way (:func:`reference_ap_loss`): full
                    ``argsort(argsort)`` ranks of every column and of the flattened matrix, blackbox
                    backward by two more full re-rankings (``ArgsortBlackboxRanks``), ranks among
                    positives by argsort too. Its loss and gradient are checked to equal RaMBO's on
                    tie-free data before anything is timed (the ``check`` section of the output);
* ``focal``         mmdet's ``FocalLoss`` (sigmoid, γ = 2, α = 0.25) called as RetinaHead calls it
                    (``avg_factor`` = number of positives). On CPU mmdet runs its Python path
                    ``py_sigmoid_focal_loss``; on CUDA the mmcv op. Without mmdet (a torch-only GPU
                    box) the same formula in plain torch is used and the row says so;
* ``aploss``        a pairwise ``O(P·N)`` AP-Loss (Chen et al., CVPR 2019) written from the paper's
                    description (:class:`PairwiseAPLoss`): one ranking of all (anchor, class)
                    scores, piecewise-linear step ``H(x) = clamp(x / 2δ + 0.5, 0, 1)`` with
                    δ = 1, and the paper's error-driven update as a custom autograd function.
                    Chunked over the positives (bounded memory); skipped where ``P·N`` exceeds
                    ``--aploss-budget``.

Timing: forward + backward (``loss.backward()`` down to the logits) of one call, in steady state:
after up to 8 warm-up calls (as many as fit in 3 s; glibc adapts its mmap threshold to the sizes
it sees, so the first calls pay page faults that later ones do not); the median of ``R`` timed
calls is reported, with the system time and page faults of the same calls (``R`` shrinks for slow calls, see
:func:`_repeats_for`; the table shows the ``R`` used).

Clock and threads on CPU: the default is ONE intra-op thread (``--threads 1``) and the time is the
process's CPU time (``time.process_time``), the wall-clock time next to it. On a small machine that
other jobs share, two OpenMP threads wait for each other at every parallel op's barrier whenever
one of them is descheduled: measured on the 2-core development box at load 8, the focal loss at
100k scores took 470 ms with 2 threads and 2 ms with 1; and the wall time of a single thread
grows with the machine's load. CPU time of one thread counts the work done, whatever else runs.
All methods run under the same setting. ``--threads 0`` uses torch's default thread count (time
is then wall clock), as does CUDA (synchronised wall clock).

Peak memory: the growth of the peak over the
live baseline (inputs, and the score memory for ``rambo+memory``) during the warm-up and the timed
calls (the gradient of the logits included):

* CPU: each case runs in its own forked child of a parent that only imported the libraries. The
  child builds its inputs, returns freed heap to the OS (``malloc_trim``), resets the kernel's peak
  resident set (``echo 5 > /proc/self/clear_refs``) and reads ``VmHWM - VmRSS`` from
  ``/proc/self/status`` around the calls. (``tracemalloc`` does not see torch allocations; torch's
  CPU allocator does not cache, so the resident peak is the allocation peak plus page granularity.)
  Where ``clear_refs`` is refused, ``ru_maxrss`` of the fresh child is used instead.
  A case that exceeds ``--case-timeout`` is killed and reported as skipped.
* CUDA: ``torch.cuda.max_memory_allocated`` (reset before each case) minus the memory allocated
  before the timed calls. Cases run in-process.

Data: per image ~150 positive anchors (long-tailed classes, ``p(c) ∝ 1/(c+1)``), 1% ignored anchors
(label = background, weight 0), the rest background. Regimes: ``init`` (all logits ``-4.6 +
0.1·randn``, positives too: the prior of a freshly initialised RetinaNet) and ``trained``
(negatives ``-8 + randn``, positive entries ``+2 + randn``).

Sizes (anchors per image × images × 80 classes): ``100k`` (1250 × 1), ``1M`` (12500 × 1), ``5M``
(62500 × 1), ``10M`` (125000 × 1), ``retina`` (120000 × 2 = 19.2M scores, 300 positives, RetinaNet
on COCO at batch 2) and, with ``--scale`` only, ``scale`` (78000 × 16 = 99.8M scores) for
``rambo``, ``rambo-paper`` and ``focal``: time and memory per score. It is off by default for its
cost (minutes on the 2-core CPU box, 0.4 GB of logits and several GB of peak).

Allocator effects: glibc serves allocations above its mmap threshold (at most 32 MB) with fresh
pages on every call, so from 10M scores on (40 MB per float32 temporary) every method pays page
faults on each temporary; at 5M (20 MB) the allocator reuses its heap. Compare the ratios at
5M (no such effect) with those at 10M and above (each method's temporaries pay it). ``quick`` (400 × 1) is for the smoke test
(``--quick``).

Usage::

    python tools/benchmark_loss.py                     # default: 100k,1M,5M,10M,retina on CPU
    python tools/benchmark_loss.py --device cuda --scale
    python tools/benchmark_loss.py --sizes 10M --repeats 7
    python tools/benchmark_loss.py --quick --out-dir /tmp/bench   # smoke test, seconds

Outputs ``<out-dir>/<device-name>.json`` and ``.md`` (``<device-name>-quick.*`` with ``--quick``),
default ``results/benchmark_loss/``; the device name is ``cpu-<cpu model>-<cores>c`` or the CUDA
device name. Printed: the table, a per-size summary (``rambo/focal`` time and peak-memory ratios,
the ``reference/rambo-paper`` speed-up), the stage breakdown and the goals with PASS/MISS: at 5M,
retina, 10M and 100M (``--scale``) scores ``rambo/focal`` <= 1.0 (init) and <= 0.25 (trained) and
a peak at most focal's; at 10M the paper's loss >= 5x (init) and >= 50x (trained) faster than the
reference.

Only ``rambo_mmdet.ranking`` (pure torch) is required. mmdet is imported lazily: without it the
``rambo`` rows use :func:`shipped_core_loss` (the shipped ``RaMBOAPLoss`` rebuilt from the ranking
core, checked against ``RaMBOAPLoss`` whenever mmdet is present) and ``focal`` the plain-torch formula.

Where the time goes: after the timed calls, one more call of each ``rambo*`` method runs under
``torch.profiler``; the CPU time inside the ranker's stages (``rambo_mmdet.ranking.STAGES``:
``select`` the strategy, ``filter`` the entries (sparse: candidate negatives; dense: cells and
their histogram), ``place`` exactly, ``backward``, ``memory``) and the rest (``other``: input
checks, loss arithmetic, autograd) are reported per row (the ``stages`` table); the profiled
call's total is close to, not equal to, the timed median. On CUDA every row also counts the host
synchronisations of one call, forward and backward apart (``torch.cuda.set_sync_debug_mode``),
e.g. on a torch-only GPU box::

    python tools/benchmark_loss.py --device cuda --scale --methods rambo,rambo-paper,reference,focal
"""
import argparse
import ctypes
import datetime
import json
import math
import os
import platform
import re
import resource
import select
import signal
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout, installed or not

from rambo_mmdet import ranking  # noqa: E402
from rambo_mmdet.ranking import (ArgsortBlackboxRanks, PositiveSet, ScoreMemory,  # noqa: E402
                                 argsort_ranks, average_precision_loss, check_scores)

#: the core's fused detection loss (both terms in one blackbox node), where the core has it
detection_ap_loss = getattr(ranking, 'detection_ap_loss', None)

# ------------------------------------------------------------------------------ settings
LAMBDA = 0.5           # blackbox interpolation λ (paper's detection default)
MARGIN = 0.15          # margin α
BETA = 1.0 / 3.0       # interclass weight β
TAU = 7                # score-memory batches τ
FOCAL_GAMMA, FOCAL_ALPHA = 2.0, 0.25
APLOSS_DELTA = 1.0     # AP-Loss's δ of the piecewise-linear step
NUM_CLASSES = 80
POS_PER_IMAGE = 150
IGNORED_FRACTION = 0.01

#: name -> (anchors per image, images); scores = anchors * images * NUM_CLASSES
SIZES: Dict[str, Tuple[int, int]] = {
    'quick': (400, 1),
    '100k': (1250, 1),
    '1M': (12500, 1),
    '5M': (62500, 1),
    '10M': (125000, 1),
    'retina': (120000, 2),
    'scale': (78000, 16),
}
DEFAULT_SIZES = ('100k', '1M', '5M', '10M', 'retina')
REGIMES = ('init', 'trained')
METHODS = ('rambo', 'rambo-paper', 'rambo+memory', 'reference', 'focal', 'aploss')
SCALE_METHODS = ('rambo', 'rambo-paper', 'focal')
#: methods whose profiled call is broken down by stage
STAGED_METHODS = ('rambo', 'rambo-paper', 'rambo+memory')
#: the shipped dense-head loss (configs/_base_/rambo_losses.py, mode 'auto' of RaMBOAPLoss), for
#: the core rebuild without mmdet (checked equal to RaMBOAPLoss where mmdet is present; on a
#: dense batch by tests/test_benchmark_loss.py)
SHIPPED_DENSE = dict(lambda_val=0.5, margin=0.0, balanced_gain=1.0, balanced_below=1 / 32,
                     balanced_margin=0.15, error_driven=True)
#: mode 'auto''s sigmoid cross-entropy term, in the calls with the paper's gradient only (never
#: at the benchmark's dense sizes; the tiny exactness-check size has 37 % positives)
SHIPPED_BCE_WEIGHT = 0.5

#: the exactness-comparable speed-up over the reference, at 10M scores
SPEEDUP_SIZE = '10M'
SPEEDUP_TARGETS = {'init': 5.0, 'trained': 50.0}  # min reference / rambo-paper
#: rambo (as shipped) / focal time, and peak memory at most focal's, at these sizes
RATIO_SIZES = ('5M', 'retina', '10M', 'scale')
RATIO_TARGETS = {'init': 1.0, 'trained': 0.25}  # max rambo / focal


def has_mmdet() -> bool:
    try:
        import mmdet  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------ inputs
def size_info(name: str) -> Dict:
    anchors, images = SIZES[name]
    rows = anchors * images
    return dict(size=name, anchors_per_image=anchors, images=images, rows=rows,
                classes=NUM_CLASSES, scores=rows * NUM_CLASSES,
                positives=images * min(POS_PER_IMAGE, anchors // 8))


def make_inputs(name: str, regime: str, device: str,
                seed: int = 0) -> Tuple[Tensor, Tensor, Tensor]:
    """``(logits [N, C] float32 requires_grad, labels [N] int64, label_weights [N] float32)``."""
    info = size_info(name)
    anchors, images, num_classes = info['anchors_per_image'], info['images'], NUM_CLASSES
    gen = torch.Generator().manual_seed(seed + 1000 * REGIMES.index(regime))
    labels = torch.full((images, anchors), num_classes, dtype=torch.int64)
    weights = torch.ones(images, anchors)
    class_prob = 1.0 / torch.arange(1, num_classes + 1, dtype=torch.float64)
    num_pos = info['positives'] // images
    num_ignored = max(1, int(IGNORED_FRACTION * anchors))
    for img in range(images):
        perm = torch.randperm(anchors, generator=gen)
        pos_rows = perm[:num_pos]
        labels[img, pos_rows] = torch.multinomial(class_prob, num_pos, replacement=True,
                                                  generator=gen)
        weights[img, perm[num_pos:num_pos + num_ignored]] = 0.0
    labels, weights = labels.view(-1), weights.view(-1)
    dgen = torch.Generator(device=device).manual_seed(seed + 7 + 1000 * REGIMES.index(regime))
    logits = torch.randn(info['rows'], num_classes, generator=dgen, device=device)
    labels, weights = labels.to(device), weights.to(device)
    pos_rows = (labels < num_classes).nonzero().squeeze(1)
    if regime == 'init':
        logits.mul_(0.1).add_(-4.6)
    else:
        logits.add_(-8.0)
        logits[pos_rows, labels[pos_rows]] += 10.0  # -8 + randn -> +2 + randn
    return logits.requires_grad_(True), labels, weights


def make_tie_free_inputs(name: str, regime: str, seed: int = 0) -> Tuple[Tensor, Tensor, Tensor]:
    """Inputs of the same structure whose scores are all distinct multiples of ``2**-12``, in the
    order of the regime's random scores but evenly spaced (so the gap between positives and
    negatives of ``trained`` shrinks to a few steps and the margin makes both losses non-trivial).

    On that grid every float32 value is exact, and ``s_pos - s_neg`` is never within ``0.4·2**-12``
    of the margin α = 0.15 (= 614.4 grid steps), so shifting by ``±α/2`` (reference) or by ``α``
    (RaMBO) orders every pair the same way despite rounding.
    """
    logits, labels, weights = make_inputs(name, regime, 'cpu', seed)
    with torch.no_grad():
        flat = logits.detach().view(-1)
        order = torch.argsort(flat)
        grid = torch.empty_like(flat)
        # distinct grid values in the same order as the random scores, centred on them
        steps = torch.arange(flat.numel(), dtype=torch.float64)
        centre = float(flat.double().median())
        spread = float(flat.double().std())
        span = flat.numel() * 2.0 ** -12
        stretch = max(1, int(math.ceil(6 * spread / span)))  # keep the regime's rough shape
        values = (torch.round(torch.tensor(centre * 4096.0)) / 4096.0
                  + (steps - flat.numel() / 2) * stretch * 2.0 ** -12)
        grid[order] = values.float()
    return grid.view_as(logits).requires_grad_(True), labels, weights


# ------------------------------------------------------------------------------ methods
def kept_rows(label_weights: Tensor) -> Tensor:
    """``[N]`` bool: the rows a ``[N]`` (or ``[N, C]``) label weight keeps (weight > 0 in some
    column), as ``RaMBOAPLoss`` reads it; the others are ignored samples."""
    return label_weights.reshape(label_weights.shape[0], -1).amax(dim=1) > 0


def excluded_rows(label_weights: Optional[Tensor]) -> Optional[Tensor]:
    """Ascending indices of the ignored rows (None without label weights)."""
    return None if label_weights is None else (~kept_rows(label_weights)).nonzero().squeeze(1)


def rambo_fused_loss(cls_score: Tensor, labels: Tensor,
                      label_weights: Optional[Tensor]) -> Tensor:
    """The core's fused ``detection_ap_loss`` (no memory): both terms in one blackbox node, ignored
    rows excluded inside the ranker, outside scaling routed through a ``GradScale`` as
    ``RaMBOAPLoss`` does; the same value and gradient as ``RaMBOAPLoss(mode='paper')``."""
    check_scores(cls_score)
    grad_scale = ranking.GradScale()
    loss = detection_ap_loss(cls_score, labels.long(), excluded_rows(label_weights), None, LAMBDA,
                             MARGIN, BETA, grad_scale)
    return ranking.route_output_grad(loss, grad_scale)


def shipped_dense_loss(**overrides):
    """``RaMBOAPLoss`` as the shipped dense-head configs build it (needs mmdet and mmengine)."""
    from mmengine.config import Config

    from rambo_mmdet.models.losses import RaMBOAPLoss
    cfg = Config.fromfile(str(REPO_ROOT / 'configs' / '_base_' / 'rambo_losses.py'))
    kwargs = {k: v for k, v in cfg.rambo_dense_head_loss.to_dict().items()
              if k not in ('_delete_', 'type')}
    kwargs.update(overrides)
    module = RaMBOAPLoss(**kwargs)
    # the calibration of calibration_source='detections' is fitted by the head, not this call
    module.detections_from_head = True
    return module


def shipped_core_loss(cls_score: Tensor, labels: Tensor, label_weights: Optional[Tensor],
                      memory: Optional[ScoreMemory] = None) -> Tensor:
    """The shipped dense-head ``RaMBOAPLoss`` rebuilt from the ranking core (no mmdet)."""
    check_scores(cls_score)
    scores, labels = cls_score.float(), labels.long()
    contents = memory.contents(scores) if memory is not None else None
    valid = None if label_weights is None else kept_rows(label_weights)
    excluded = None if valid is None else (~valid).nonzero().squeeze(1)
    grad_scale = ranking.GradScale()
    loss, balanced = ranking.detection_ranking_loss(
        scores, labels, excluded, contents, interclass_weight=BETA, grad_scale=grad_scale,
        memory_negatives=memory.sorted_negatives(scores) if memory is not None else None,
        **SHIPPED_DENSE)
    loss = ranking.route_output_grad(loss, grad_scale)
    pointwise = ranking.pointwise_term(scores, labels, valid, balanced, SHIPPED_BCE_WEIGHT)
    if pointwise is not None:
        loss = loss + pointwise
    if memory is not None:
        memory.push(scores, labels, valid)
    return loss


def _reference_columns(shifted: Tensor, positive: Tensor) -> Tuple[Tensor, Tensor]:
    """``1 - AP`` of every column by full argsort ranks; ``(loss [G], has_positive [G])``."""
    ranks = ArgsortBlackboxRanks.apply(shifted, LAMBDA)  # rk / n of every entry
    among = argsort_ranks(shifted.detach().masked_fill(~positive, float('-inf')))  # rk+ / n
    count = positive.sum(dim=0)
    precision = torch.where(positive, among / ranks, torch.zeros_like(ranks))
    ap = precision.sum(dim=0) / count.clamp(min=1)
    has_positive = count > 0
    return torch.where(has_positive, 1.0 - ap, torch.zeros_like(ap)), has_positive


def reference_ap_loss(cls_score: Tensor, labels: Tensor,
                      label_weights: Optional[Tensor]) -> Tensor:
    """RaMBO's loss the paper's way: margin shift ``±α/2`` of every entry, full ``argsort(argsort)``
    blackbox ranks of each class column and of the flattened matrix, ranks among positives by
    argsort (negatives masked to ``-inf``); ``(1 - β)·mean_c(1 - AP_c) + β·(1 - AP_flat)``."""
    num_classes = cls_score.shape[1]
    scores, labels = cls_score.float(), labels.long()
    if label_weights is not None:
        keep = kept_rows(label_weights)
        if not bool(keep.all()):
            scores, labels = scores[keep], labels[keep]
    positive = torch.zeros_like(scores, dtype=torch.bool)
    rows = (labels < num_classes).nonzero().squeeze(1)
    positive[rows, labels[rows]] = True
    half = MARGIN / 2
    shifted = scores + torch.where(positive, -half, half)
    class_loss, has_positive = _reference_columns(shifted, positive)
    loss = (1.0 - BETA) * class_loss.sum() / has_positive.sum().clamp(min=1)
    flat_loss, _ = _reference_columns(shifted.reshape(-1, 1), positive.reshape(-1, 1))
    return loss + BETA * flat_loss.sum()


def torch_focal_loss(cls_score: Tensor, labels: Tensor, label_weights: Tensor,
                     avg_factor: float) -> Tensor:
    """Sigmoid focal loss in plain torch, the formula of mmdet's ``py_sigmoid_focal_loss``
    (for a machine without mmdet)."""
    num_classes = cls_score.shape[1]
    target = F.one_hot(labels, num_classes + 1)[:, :num_classes].type_as(cls_score)
    prob = cls_score.sigmoid()
    one_minus_pt = (1 - prob) * target + prob * (1 - target)
    focal_weight = (FOCAL_ALPHA * target + (1 - FOCAL_ALPHA) * (1 - target)) \
        * one_minus_pt.pow(FOCAL_GAMMA)
    loss = F.binary_cross_entropy_with_logits(cls_score, target, reduction='none') * focal_weight
    loss = loss * label_weights.view(-1, 1)
    return loss.sum() / (avg_factor + torch.finfo(torch.float32).eps)


class PairwiseAPLoss(torch.autograd.Function):
    """AP-Loss (Chen et al., CVPR 2019) from the paper's description, pairwise ``O(P·N)``.

    One ranking of all scores: for positive ``i`` and every negative ``j``, ``x_ij = s_j - s_i``,
    ``H(x) = clamp(x / 2δ + 0.5, 0, 1)``;
    ``L_ij = H(x_ij) / (1 + Σ_{k pos, k≠i} H(x_ik) + Σ_{j neg} H(x_ij))``;
    loss ``= (1/P) Σ_i Σ_j L_ij`` (``= 1 - AP`` with the smoothed step).

    Backward is the paper's error-driven update (not the derivative of ``H``): with ``L_ij``
    held constant, ``g(s_i) = -(1/P) Σ_j L_ij`` for a positive, ``g(s_j) = (1/P) Σ_i L_ij`` for a
    negative. It is accumulated during the forward (as the paper's implementation does) and scaled
    by the incoming gradient in the backward. Positives are processed in chunks of at most
    ``chunk_pairs`` pairs, so the extra memory is ``O(chunk_pairs + N)``.
    """

    @staticmethod
    def forward(ctx, scores: Tensor, pos_index: Tensor, neg_index: Tensor, delta: float,
                chunk_pairs: int) -> Tensor:
        flat = scores.detach().reshape(-1).float()
        pos, neg = flat[pos_index], flat[neg_index]
        num_pos, num_neg = pos.numel(), neg.numel()
        update = torch.zeros_like(flat)
        if num_pos == 0:
            ctx.save_for_backward(update)
            return flat.new_zeros(())
        neg_update = torch.zeros_like(neg)
        pos_update = torch.empty_like(pos)
        loss_sum = flat.new_zeros(())
        chunk = max(1, min(num_pos, chunk_pairs // max(num_neg, num_pos, 1)))
        inv = 1.0 / (2.0 * delta)
        for start in range(0, num_pos, chunk):
            p = pos[start:start + chunk]
            # among positives: Σ_{k≠i} H(s_k - s_i) (H(0) = 0.5 is the k = i term)
            pos_term = (pos[None, :] - p[:, None]).mul_(inv).add_(0.5).clamp_(0.0, 1.0)
            rank_pos = pos_term.sum(dim=1) - 0.5
            pair = (neg[None, :] - p[:, None]).mul_(inv).add_(0.5).clamp_(0.0, 1.0)  # H(x_ij)
            rank_neg = pair.sum(dim=1)
            rank = 1.0 + rank_pos + rank_neg
            pair.div_(rank[:, None])  # L_ij
            neg_update += pair.sum(dim=0)
            pos_update[start:start + chunk] = -(rank_neg / rank)
            loss_sum += (rank_neg / rank).sum()
            del pair, pos_term
        update[pos_index] = pos_update / num_pos
        update[neg_index] = neg_update / num_pos
        ctx.save_for_backward(update)
        return loss_sum / num_pos

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        update, = ctx.saved_tensors
        return update * grad_output, None, None, None, None


def aploss_indices(labels: Tensor, label_weights: Tensor,
                   num_classes: int) -> Tuple[Tensor, Tensor]:
    """Flat indices into ``[N, C]`` of the positive and the negative entries (ignored rows out)."""
    rows = (labels < num_classes).nonzero().squeeze(1)
    pos_index = rows * num_classes + labels[rows]
    negative = (label_weights > 0)[:, None].expand(-1, num_classes).clone()
    negative[rows, labels[rows]] = False
    return pos_index, negative.view(-1).nonzero().squeeze(1)


def pairwise_ap_loss(cls_score: Tensor, labels: Tensor, label_weights: Tensor,
                     chunk_pairs: int = 1 << 24) -> Tensor:
    pos_index, neg_index = aploss_indices(labels, label_weights, cls_score.shape[1])
    loss = PairwiseAPLoss.apply(cls_score.reshape(-1), pos_index, neg_index, APLOSS_DELTA,
                                chunk_pairs)
    return loss


def build_method(method: str, device: str) -> Tuple[Callable, str]:
    """``(loss_fn(logits, labels, weights) -> loss, label for the table)``."""
    mmdet = has_mmdet()
    if method in ('rambo', 'rambo+memory'):
        tau = TAU if method == 'rambo+memory' else 0
        if mmdet:
            module = shipped_dense_loss(memory_batches=tau).to(device).train()
            label = 'RaMBOAPLoss as shipped (dense heads)' + (f', tau={tau}' if tau else '')
            return (lambda x, y, w: module(x, y, w)), label
        memory = ScoreMemory(tau) if tau else None
        label = ('ranking core (RaMBOAPLoss as shipped for dense heads, rebuilt, no mmdet)'
                 + (f' tau={tau}' if tau else ''))
        return (lambda x, y, w: shipped_core_loss(x, y, w, memory)), label
    if method == 'rambo-paper':
        if detection_ap_loss is None:
            raise RuntimeError('rambo_mmdet.ranking has no detection_ap_loss')
        return rambo_fused_loss, "the paper's loss: ranking core detection_ap_loss (fused)"
    if method == 'reference':
        return reference_ap_loss, 'argsort(argsort) reference, same loss'
    if method == 'focal':
        if mmdet:
            from mmdet.models.losses import FocalLoss
            focal = FocalLoss(use_sigmoid=True, gamma=FOCAL_GAMMA, alpha=FOCAL_ALPHA,
                              loss_weight=1.0)
            path = ('mmcv CUDA op' if device == 'cuda' else 'mmdet py_sigmoid_focal_loss')
            return ((lambda x, y, w: focal(x, y, w, avg_factor=float((y < x.shape[1]).sum()))),
                    f'mmdet FocalLoss ({path})')
        return ((lambda x, y, w: torch_focal_loss(x, y, w, float((y < x.shape[1]).sum()))),
                'focal loss, plain torch (no mmdet)')
    if method == 'aploss':
        return (pairwise_ap_loss, f'pairwise AP-Loss (delta={APLOSS_DELTA:g}, error-driven custom '
                'autograd)')
    raise ValueError(f'unknown method {method!r}')


# ------------------------------------------------------------------------------ measurement
def _sync(device: str) -> None:
    if device == 'cuda':
        torch.cuda.synchronize()


def _proc_status_kb(field: str) -> Optional[int]:
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory growth (bytes) over the baseline at ``start()``; see the module docstring."""

    def __init__(self, device: str) -> None:
        self.device, self.method, self.base = device, None, 0

    def start(self) -> None:
        if self.device == 'cuda':
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            self.method = 'torch.cuda.max_memory_allocated'
            return
        try:
            ctypes.CDLL('libc.so.6').malloc_trim(0)
        except (OSError, AttributeError):
            pass
        try:
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')  # reset VmHWM to the current RSS
            self.method = 'VmHWM - VmRSS (/proc/self, peak reset by clear_refs)'
        except OSError:
            self.method = 'ru_maxrss of a fresh child - VmRSS'
        self.base = (_proc_status_kb('VmRSS') or 0) * 1024

    def peak(self) -> Optional[int]:
        if self.device == 'cuda':
            return torch.cuda.max_memory_allocated() - self.base
        if self.method.startswith('VmHWM'):
            hwm = _proc_status_kb('VmHWM')
        else:
            import resource
            hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
        return None if hwm is None else max(0, hwm * 1024 - self.base)


#: warm-up calls before the timed ones (fewer when they would take over WARMUP_BUDGET_S)
WARMUP_CALLS = 8
WARMUP_BUDGET_S = 3.0


def _repeats_for(first_call_s: float, repeats: int) -> int:
    """Timed calls after the warm-up; fewer for slow cases (keeps the default run within minutes
    on 2 cores). 0: a call over 10 s is timed once, the warm-up call being that measurement
    (first-call effects are negligible at that duration); the table marks it ``1*``."""
    if first_call_s > 10.0:
        return 0
    if first_call_s > 3.0:
        return min(repeats, 3)
    return repeats


def use_cpu_clock(device: str) -> bool:
    """Time by the process's CPU time (see the module docstring) on a single-threaded CPU run."""
    return device == 'cpu' and torch.get_num_threads() == 1


def run_case(device: str, size: str, regime: str, method: str, repeats: int,
             seed: int = 0) -> Dict:
    """Time and measure one (size, regime, method); returns a row dict."""
    fn, label = build_method(method, device)
    tiny = make_inputs('quick', regime, device, seed + 99)
    loss = fn(*tiny)  # first-call effects (thread pools, lazy init) out of time and peak memory
    loss.backward()
    del tiny, loss
    logits, labels, weights = make_inputs(size, regime, device, seed)
    if method == 'rambo+memory':  # fill the memory with TAU previous batches
        with torch.no_grad():
            for k in range(TAU):
                x, y, w = make_inputs(size, regime, device, seed + 101 + k)
                fn(x.detach(), y, w)
                del x, y, w
    cpu_clock = use_cpu_clock(device)

    def call() -> Tuple[float, float, float, float, int]:
        """``(seconds by the reported clock, wall seconds, loss, system seconds, minor page
        faults)``."""
        logits.grad = None
        _sync(device)
        u0 = resource.getrusage(resource.RUSAGE_SELF)
        w0, c0 = time.perf_counter(), time.process_time()
        loss = fn(logits, labels, weights)
        loss.backward()
        _sync(device)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        u1 = resource.getrusage(resource.RUSAGE_SELF)
        return ((cpu if cpu_clock else wall), wall, float(loss.detach()),
                u1.ru_stime - u0.ru_stime, u1.ru_minflt - u0.ru_minflt)

    memory = PeakMemory(device)
    memory.start()  # baseline: the inputs (and the filled score memory)
    warm = call()
    n = _repeats_for(warm[0], repeats)
    # steady state: more warm-up calls while they are cheap (the allocator adapts its mmap
    # threshold to the sizes it sees; see the module docstring)
    spent, warmups = warm[0], 1
    while n and warmups < WARMUP_CALLS and spent < WARMUP_BUDGET_S:
        spent += call()[0]
        warmups += 1
    calls = [call() for _ in range(n)] or [warm]
    peak = memory.peak()
    times, walls = [c[0] for c in calls], [c[1] for c in calls]
    sys_ms = 1e3 * statistics.median(c[3] for c in calls)
    faults = statistics.median(c[4] for c in calls)
    stages = stage_breakdown(lambda: call()) if method in STAGED_METHODS else None
    syncs = count_host_syncs(fn, logits, labels, weights) if device == 'cuda' else None
    audited = audit_host_syncs(fn, logits, labels, weights) if method in STAGED_METHODS \
        else None
    return dict(status='ok', impl=label, ms=1e3 * statistics.median(times), stages=stages,
                host_syncs=syncs, sync_ops=audited,
                wall_ms=1e3 * statistics.median(walls), clock='cpu' if cpu_clock else 'wall',
                ms_all=[round(1e3 * t, 3) for t in times], warmup_ms=round(1e3 * warm[0], 3),
                repeats=len(times), warmup_is_sample=n == 0, warmup_calls=warmups,
                sys_ms=sys_ms, page_faults=faults,
                peak_mb=None if peak is None else peak / 2 ** 20, peak_method=memory.method,
                loss=warm[2])


def count_host_syncs(fn: Callable, logits: Tensor, labels: Tensor,
                     weights: Tensor) -> Dict[str, int]:
    """CUDA: host synchronisations of one call, forward and backward apart, as counted by
    ``torch.cuda.set_sync_debug_mode('warn')`` (one warning per synchronising operation)."""
    import warnings
    counts = {}
    logits.grad = None
    previous = torch.cuda.get_sync_debug_mode()
    try:
        torch.cuda.set_sync_debug_mode('warn')
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            loss = fn(logits, labels, weights)
            counts['forward'] = len(caught)
            loss.backward()
            counts['backward'] = len(caught) - counts['forward']
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    return counts


def audit_host_syncs(fn: Callable, logits: Tensor, labels: Tensor,
                     weights: Tensor) -> Dict[str, object]:
    """Any device: the operators of one call that synchronise on CUDA, forward and backward
    apart, as :class:`~rambo_mmdet.ranking.sync_audit.SyncAudit` models them, with the ranker's
    GPU backward (``blackbox.SYNC_FREE``) whatever the device: ``forward`` / ``backward``
    counts and ``backward_ops`` (what they are)."""
    from rambo_mmdet.ranking import blackbox
    from rambo_mmdet.ranking.sync_audit import SyncAudit
    previous, blackbox.SYNC_FREE = blackbox.SYNC_FREE, True
    try:
        logits.grad = None
        with SyncAudit() as forward:
            loss = fn(logits, labels, weights)
        with SyncAudit() as backward:
            loss.backward()
    finally:
        blackbox.SYNC_FREE = previous
    return dict(forward=len(forward.events), backward=len(backward.events),
                backward_ops=backward.counts())


def stage_breakdown(call: Callable) -> Dict[str, float]:
    """CPU ms of one profiled ``call()`` inside each of the ranker's stages
    (``rambo_mmdet.ranking.STAGES``), ``other`` (the rest) and ``total`` (all operators)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e3
    out = {}
    for stage, scope in ranking.STAGES.items():
        out[stage] = sum(e.cpu_time_total for e in events if e.key == scope) / 1e3
    out['other'] = max(0.0, total - sum(out.values()))
    out['total'] = total
    return {k: round(v, 3) for k, v in out.items()}


def run_check(device: str, size: str) -> Dict:
    """Loss and gradient of the paper's loss (the core's ``detection_ap_loss``, and
    ``RaMBOAPLoss(mode='paper')`` where mmdet is present) vs the argsort reference on tie-free
    data (both regimes); also the shipped ``RaMBOAPLoss`` vs its core rebuild (the ``rambo`` rows
    without mmdet). Raises ``AssertionError`` on a mismatch."""
    out = dict(size=size, regimes={})
    for regime in REGIMES:
        x, y, w = make_tie_free_inputs(size, regime)
        x = x.detach().to(device)
        y, w = y.to(device), w.to(device)
        flat = x.view(-1)
        assert torch.unique(flat).numel() == flat.numel(), 'check data has ties'
        results = {}
        methods = [('paper', rambo_fused_loss), ('reference', reference_ap_loss)]
        if has_mmdet():
            from rambo_mmdet.models.losses import RaMBOAPLoss
            paper = RaMBOAPLoss(mode='paper', memory_batches=0, calibration=None).to(device)
            shipped = shipped_dense_loss().to(device).train()
            methods += [('paper_module', lambda a, b, c: paper(a, b, c)),
                        ('shipped', lambda a, b, c: shipped(a, b, c)),
                        ('shipped_core', lambda a, b, c: shipped_core_loss(a, b, c))]
        for name, fn in methods:
            xi = x.clone().requires_grad_(True)
            loss = fn(xi, y, w)
            loss.backward()
            results[name] = (float(loss.detach()), xi.grad.detach().clone())
        rambo_loss, rambo_grad = results['paper']
        ref_loss, ref_grad = results['reference']
        grad_diff = float((rambo_grad - ref_grad).abs().max())
        grad_scale = float(ref_grad.abs().max())
        row = dict(rambo_loss=rambo_loss, reference_loss=ref_loss,
                   loss_abs_diff=abs(rambo_loss - ref_loss), grad_max_abs_diff=grad_diff,
                   grad_max_abs=grad_scale,
                   rambo_impl=build_method('rambo-paper', device)[1])
        row['loss_equal'] = abs(rambo_loss - ref_loss) <= 1e-6 * max(1.0, abs(ref_loss))
        row['grad_equal'] = grad_diff <= 1e-5 * max(1.0, grad_scale)

        def same(a, b):
            return (abs(a[0] - b[0]) <= 1e-6 * max(1.0, abs(b[0]))
                    and bool(torch.allclose(a[1], b[1], rtol=1e-5, atol=1e-7)))

        if 'paper_module' in results:  # RaMBOAPLoss(mode='paper') computes the paper's loss
            row['module_equal'] = same(results['paper_module'], results['reference'])
        if 'shipped' in results:  # the shipped loss equals its core rebuild (used without mmdet)
            row['shipped_loss'] = results['shipped'][0]
            row['core_equal'] = same(results['shipped'], results['shipped_core'])
        out['regimes'][regime] = row
        assert row.get('module_equal', True), f"{regime}: RaMBOAPLoss(mode='paper') != reference"
        assert row['loss_equal'], f'{regime}: RaMBO loss {rambo_loss} != reference {ref_loss}'
        assert row['grad_equal'], f'{regime}: gradients differ by {grad_diff}'
        assert row.get('core_equal', True), \
            f'{regime}: shipped RaMBOAPLoss != its ranking-core rebuild'
    return out


# ------------------------------------------------------------------------------ isolation
def in_child(fn: Callable, args: tuple, timeout: float, use_fork: bool) -> Dict:
    """Run ``fn(*args)`` in a forked child (fresh peak-memory accounting, killable); returns
    its dict, or ``{'status': 'skipped'|'error', 'reason': ...}``."""
    if not use_fork:
        try:
            return fn(*args)
        except Exception:  # noqa: BLE001 - reported in the table
            return dict(status='error', reason=traceback.format_exc(limit=3))
    sys.stdout.flush()
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(read_fd)
            try:
                payload = json.dumps(dict(result=fn(*args)))
            except BaseException:  # noqa: BLE001
                payload = json.dumps(dict(error=traceback.format_exc()))
            data = payload.encode()
            while data:
                data = data[os.write(write_fd, data):]
            os.close(write_fd)
        except BaseException:  # noqa: BLE001
            code = 1
        os._exit(code)
    os.close(write_fd)
    chunks, deadline, timed_out = [], time.monotonic() + timeout, False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([read_fd], [], [], left)
        if ready:
            chunk = os.read(read_fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    os.close(read_fd)
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if timed_out:
        return dict(status='skipped', reason=f'timeout: one case > {timeout:.0f} s')
    try:
        message = json.loads(b''.join(chunks).decode())
    except ValueError:
        return dict(status='error', reason=f'child died (wait status {status}, out of memory?)')
    if 'error' in message:
        return dict(status='error', reason=message['error'])
    return message['result']


# ------------------------------------------------------------------------------ reporting
def code_state() -> Dict:
    """Which code was measured: git commit, modified files, and a hash of the package sources
    (the checkout changes while people work; the forked children all run the code imported at
    the start)."""
    import hashlib
    import subprocess
    state = dict(git_commit=None, modified=None)
    try:
        state['git_commit'] = subprocess.run(
            ['git', 'rev-parse', 'HEAD'], cwd=REPO_ROOT, capture_output=True, text=True,
            timeout=10).stdout.strip() or None
        status = subprocess.run(['git', 'status', '--porcelain', '--', 'rambo_mmdet', 'tools'],
                                cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout
        state['modified'] = [line[3:] for line in status.splitlines()]
    except (OSError, subprocess.SubprocessError):
        pass
    digest = hashlib.sha256()
    for path in sorted((REPO_ROOT / 'rambo_mmdet').rglob('*.py')):
        digest.update(str(path.relative_to(REPO_ROOT)).encode() + b'\0' + path.read_bytes())
    state['rambo_mmdet_sha256'] = digest.hexdigest()[:16]
    return state


def device_name(device: str) -> str:
    if device == 'cuda':
        raw = torch.cuda.get_device_name(0)
    else:
        model = platform.processor() or platform.machine()
        try:
            with open('/proc/cpuinfo') as f:
                for line in f:
                    if line.startswith('model name'):
                        model = line.split(':', 1)[1]
                        break
        except OSError:
            pass
        raw = f'cpu-{model}-{os.cpu_count()}c'
    return re.sub(r'[^a-z0-9]+', '-', raw.lower().replace('(r)', '').replace('(tm)', '')).strip('-')


def _fmt(value, spec: str, missing: str = '-') -> str:
    return missing if value is None else format(value, spec)


def summarise(rows: List[Dict]) -> List[Dict]:
    by_key = {(r['size'], r['regime'], r['method']): r for r in rows}
    out = []
    for size in dict.fromkeys(r['size'] for r in rows):
        for regime in REGIMES:
            rambo = by_key.get((size, regime, 'rambo'))
            if rambo is None or rambo['status'] != 'ok':
                continue

            def row(method):
                found = by_key.get((size, regime, method))
                return found if found and found['status'] == 'ok' else {}

            def ratio(a, b):
                return None if a is None or b is None else a / b

            base, paper = rambo['ms'], row('rambo-paper').get('ms')
            ref, focal = row('reference').get('ms'), row('focal').get('ms')
            apl, mem = row('aploss').get('ms'), row('rambo+memory').get('ms')
            def user(found):
                return None if not found or found.get('sys_ms') is None \
                    else found['ms'] - found['sys_ms']

            out.append(dict(size=size, regime=regime, scores=rambo['scores'], rambo_ms=base,
                            rambo_user_over_focal=ratio(user(rambo), user(row('focal'))),
                            rambo_peak_mb=rambo['peak_mb'],
                            focal_peak_mb=row('focal').get('peak_mb'),
                            rambo_over_focal=ratio(base, focal),
                            peak_over_focal=ratio(rambo['peak_mb'], row('focal').get('peak_mb')),
                            paper_ms=paper, reference_over_paper=ratio(ref, paper),
                            paper_over_focal=ratio(paper, focal),
                            aploss_over_rambo=ratio(apl, base),
                            memory_over_rambo=ratio(mem, base),
                            rambo_backward_sync_ops=(rambo.get('sync_ops')
                                                     or {}).get('backward')))
    return out


def evaluate_targets(summary: List[Dict]) -> List[Dict]:
    """The speed goals: ``rambo`` (as shipped) / ``focal`` time and peak memory at the sizes of
    :data:`RATIO_SIZES`; the exactness-comparable speed-up of ``rambo-paper`` over the reference
    at :data:`SPEEDUP_SIZE`."""
    def status(value, ok):
        return 'n/a' if value is None else ('PASS' if ok(value) else 'MISS')

    out = []
    for s in summary:
        if s['size'] in RATIO_SIZES:
            limit = RATIO_TARGETS[s['regime']]
            out.append(dict(method='rambo', name=f"{s['size']} {s['regime']}: rambo/focal <= "
                            f'{limit:g}x', value=s['rambo_over_focal'],
                            status=status(s['rambo_over_focal'], lambda v: v <= limit)))
            out.append(dict(method='rambo', name=f"{s['size']} {s['regime']}: rambo peak <= "
                            'focal peak', value=s['peak_over_focal'],
                            status=status(s['peak_over_focal'], lambda v: v <= 1.0)))
        if s['size'] == SPEEDUP_SIZE:
            limit = SPEEDUP_TARGETS[s['regime']]
            out.append(dict(method='rambo-paper', name=f"{s['size']} {s['regime']}: "
                            f'reference/rambo-paper >= {limit:g}x',
                            value=s['reference_over_paper'],
                            status=status(s['reference_over_paper'], lambda v: v >= limit)))
        out.append(dict(method='rambo', name=f"{s['size']} {s['regime']}: rambo backward "
                        'synchronising operators (audit, GPU path) == 0',
                        value=s.get('rambo_backward_sync_ops'),
                        status=status(s.get('rambo_backward_sync_ops'), lambda v: v == 0)))
    return out


STAGES_NOTE = ('One more call of each `rambo*` method under `torch.profiler`, after the timed '
               "calls: CPU ms inside the ranker's stages (select: sort the positives, choose "
               'the strategy; filter: sparse candidates or dense cells and histogram; place: exact '
               'placement and counts; backward; memory: score memory reads/writes), other: '
               'the rest (input checks, loss arithmetic, autograd), total: all operators. '
               'sync ops (audit): the operators of one call that make a CUDA host wait for the '
               'device (nonzero, boolean-mask indexing, host reads, bincount, ...), counted on '
               'any device by rambo_mmdet.ranking.sync_audit.SyncAudit with the GPU backward '
               '(blackbox.SYNC_FREE); host syncs (CUDA only): counted by '
               'torch.cuda.set_sync_debug_mode.')
NOTE_R = ('fwd+bwd ms: median over R timed calls after up to 8 warm-up calls (as many as fit '
          'in 3 s, at least one; 1*: one call of more than 10 s, the warm-up call itself timed), '
          'by the clock named above; wall ms: the median wall-clock time of the same calls; '
          'sys ms and faults: the median system (kernel) CPU time and minor page faults per '
          'call, i.e. the allocator effect inside fwd+bwd (fresh pages for temporaries above '
          "glibc's mmap threshold, at most 32 MB).")


def render(result: Dict) -> Tuple[str, str]:
    """``(plain-text report, markdown report)``."""
    rows, summary, targets, meta = (result['rows'], result['summary'], result['targets'],
                                    result['meta'])
    rambo_ms = {(r['size'], r['regime']): r['ms'] for r in rows
                if r['method'] == 'rambo' and r['status'] == 'ok'}
    head = ['size', 'scores', 'P', 'regime', 'method', 'fwd+bwd ms', 'R', 'wall ms', 'sys ms',
            'faults', 'peak MB', 'x rambo', 'loss', 'note']
    table = []
    for r in rows:
        base = rambo_ms.get((r['size'], r['regime']))
        ok = r['status'] == 'ok'
        note = r.get('impl', '') if ok else r.get('reason', '').strip().splitlines()[-1][:90]
        table.append([r['size'], f"{r['scores'] / 1e6:.2f}M", str(r['positives']), r['regime'],
                      r['method'], _fmt(r.get('ms') if ok else None, '.1f', r['status']),
                      (str(r['repeats']) + ('*' if r.get('warmup_is_sample') else ''))
                      if ok else '-',
                      _fmt(r.get('wall_ms') if ok else None, '.1f'),
                      _fmt(r.get('sys_ms') if ok else None, '.1f'),
                      _fmt(r.get('page_faults') if ok else None, '.0f'),
                      _fmt(r.get('peak_mb') if ok else None, '.1f'),
                      _fmt(r['ms'] / base if ok and base else None, '.2f'),
                      _fmt(r.get('loss') if ok else None, '.5f'), note])
    shead = ['size', 'regime', 'rambo ms', 'rambo/focal', 'user time rambo/focal',
             'rambo peak / focal peak',
             'rambo peak B/score', 'rambo+memory/rambo', 'rambo-paper ms', 'reference/paper',
             'paper/focal', 'aploss/rambo']
    stable = [[s['size'], s['regime'], f"{s['rambo_ms']:.1f}", _fmt(s['rambo_over_focal'], '.3f'),
               _fmt(s.get('rambo_user_over_focal'), '.3f'),
               _fmt(s['peak_over_focal'], '.2f'),
               _fmt(None if s['rambo_peak_mb'] is None
                    else s['rambo_peak_mb'] * 2 ** 20 / s['scores'], '.1f'),
               _fmt(s['memory_over_rambo'], '.2f'), _fmt(s['paper_ms'], '.1f'),
               _fmt(s['reference_over_paper'], '.1f'), _fmt(s['paper_over_focal'], '.3f'),
               _fmt(s['aploss_over_rambo'], '.1f')] for s in summary]
    stage_names = list(ranking.STAGES) + ['other', 'total']
    ghead = ['size', 'regime', 'method'] + [f'{n} ms' for n in stage_names]
    gtable = [[r['size'], r['regime'], r['method']]
              + [_fmt(r['stages'].get(n), '.1f') for n in stage_names]
              for r in rows if r['status'] == 'ok' and r.get('stages')]
    staged = [r for r in rows if r['status'] == 'ok' and r.get('stages')]
    # synchronising operators per call, modelled on any device (the GPU's backward)
    ghead = ghead + ['sync ops fwd (audit)', 'sync ops bwd (audit)']
    gtable = [row + [str((r.get('sync_ops') or {}).get('forward', '-')),
                     str((r.get('sync_ops') or {}).get('backward', '-'))]
              for row, r in zip(gtable, staged)]
    if any(r.get('host_syncs') for r in rows):  # CUDA runs: host syncs per call, counted
        ghead = ghead + ['host syncs fwd', 'host syncs bwd']
        gtable = [row + [str((r.get('host_syncs') or {}).get('forward', '-')),
                         str((r.get('host_syncs') or {}).get('backward', '-'))]
                  for row, r in zip(gtable, staged)]
    ttable = [[t['name'], _fmt(t['value'], '.3g'), t['status']] for t in targets]
    check = result.get('check') or {}

    def plain(header, body):
        widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
        line = lambda cells: '  '.join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa
        return '\n'.join([line(header), line(['-' * w for w in widths])] + [line(b) for b in body])

    def markdown(header, body):
        esc = lambda c: str(c).replace('|', '\\|')  # noqa
        return '\n'.join(['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
                         + ['| ' + ' | '.join(esc(c) for c in b) + ' |' for b in body])

    check_lines = []
    for regime, c in check.get('regimes', {}).items():
        check_lines.append(
            f"{regime}: rambo {c['rambo_loss']:.7f} reference {c['reference_loss']:.7f} "
            f"(|diff| {c['loss_abs_diff']:.1e}); max |grad diff| {c['grad_max_abs_diff']:.1e} "
            f"of max |grad| {c['grad_max_abs']:.1e}"
            + (f"; RaMBOAPLoss(mode='paper') == reference: {c['module_equal']}"
               if 'module_equal' in c else '')
            + (f"; shipped RaMBOAPLoss == its core rebuild: {c['core_equal']}"
               if 'core_equal' in c else ''))
    code = meta.get('code') or {}
    info = (f"code {str(code.get('git_commit'))[:10]} + {len(code.get('modified') or [])} "
            f"modified file(s) (rambo_mmdet sha256 {code.get('rambo_mmdet_sha256')}); "
            f"device {meta['device_name']} ({meta['device']}), torch {meta['torch']}, mmdet "
            f"{meta['mmdet'] or 'absent'}, {meta['threads']} thread(s), time = {meta['clock']}; "
            f"load average at start "
            f"{meta['loadavg_start']}, at end {meta['loadavg_end']}; total {meta['total_s']:.0f} s")
    text = '\n'.join([
        info, '', f"exactness check (tie-free {check.get('size')} data):", *check_lines, '',
        plain(head, table), NOTE_R, '', 'summary (time ratios, medians):', plain(shead, stable), '',
        'where the time goes (one profiled call, CPU ms per stage):', plain(ghead, gtable), '',
        'targets:', plain(['target', 'value', 'status'], ttable)])
    md = '\n'.join([
        f"# Loss benchmark: {meta['device_name']}", '', info, '',
        'Forward + backward time of one call (median of R timed calls after a warm-up) and peak '
        'memory growth, on the same logits / labels for every method of a row group. '
        '`rambo`: RaMBOAPLoss as the shipped dense-head configs build it; `rambo-paper`: the '
        "paper's loss (the one the reference computes). "
        f"Peak memory: {meta['peak_method']}. `x rambo`: time relative to `rambo` (no memory). "
        f"{NOTE_R}",
        '', f"Exactness check on tie-free {check.get('size')} data (reference vs RaMBO):", '',
        *[f'- {line}' for line in check_lines], '', markdown(head, table), '', '## Summary', '',
        markdown(shead, stable), '', '## Where the time goes', '', STAGES_NOTE, '',
        markdown(ghead, gtable), '', '## Targets', '',
        markdown(['target', 'value', 'status'], ttable), '',
        'Settings: ' + ', '.join(f'{k}={v}' for k, v in meta['settings'].items()), ''])
    return text, md


# ------------------------------------------------------------------------------ main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cpu')
    parser.add_argument('--sizes', default=','.join(DEFAULT_SIZES),
                        help=f'comma-separated, of {",".join(SIZES)} (default %(default)s)')
    parser.add_argument('--regimes', default=','.join(REGIMES))
    parser.add_argument('--methods', default=','.join(METHODS))
    parser.add_argument('--repeats', type=int, default=5,
                        help='timed calls per case after the warm-up (fewer for slow cases)')
    parser.add_argument('--scale', action='store_true',
                        help='also the 100M-score case (16 x 78000 x 80): rambo, rambo-paper '
                             'and focal only')
    parser.add_argument('--quick', action='store_true',
                        help='tiny sizes only, 2 repeats (smoke test); writes <device>-quick.*')
    parser.add_argument('--out-dir', default=str(REPO_ROOT / 'results' / 'benchmark_loss'))
    parser.add_argument('--aploss-budget', type=float, default=2e9,
                        help='skip aploss where positives x negatives exceeds this')
    parser.add_argument('--case-timeout', type=float, default=300.0,
                        help='CPU: kill and skip a case taking longer (seconds)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch intra-op threads (default: 1 on CPU, see the docstring; '
                             'torch\'s own default on CUDA); 0: torch\'s default')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats, args.scale = 'quick', min(args.repeats, 2), False
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    loadavg_start = ' '.join(f'{x:.2f}' for x in os.getloadavg())
    if args.device == 'cuda' and not torch.cuda.is_available():
        print('--device cuda: CUDA is not available', file=sys.stderr)
        return 2
    sizes = [s for s in args.sizes.split(',') if s]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        print(f'unknown size(s) {unknown}; known: {list(SIZES)}', file=sys.stderr)
        return 2
    if args.scale and 'scale' not in sizes:
        sizes.append('scale')
    regimes = [r for r in args.regimes.split(',') if r]
    methods = [m for m in args.methods.split(',') if m]
    if set(regimes) - set(REGIMES) or set(methods) - set(METHODS):
        print(f'regimes must be in {REGIMES}, methods in {METHODS}', file=sys.stderr)
        return 2
    threads = args.threads if args.threads is not None else (1 if args.device == 'cpu' else 0)
    if threads > 0:
        torch.set_num_threads(threads)  # before any parallel region and before forking
    use_fork = args.device == 'cpu' and hasattr(os, 'fork')
    mmdet_version = None
    if has_mmdet():
        import mmdet
        from mmdet.models.losses import FocalLoss  # noqa: F401  (imported once, before forking)

        from rambo_mmdet.models.losses import RaMBOAPLoss  # noqa: F401
        mmdet_version = mmdet.__version__
    name = device_name(args.device) + ('-quick' if args.quick else '')
    code = code_state()

    print(f'benchmark_loss: {name}, sizes {sizes}, regimes {regimes}, methods {methods}',
          flush=True)
    check_size = 'quick'
    check = in_child(run_check, (args.device, check_size), args.case_timeout, use_fork)
    if check.get('status') == 'error':
        print('exactness check FAILED:\n' + check['reason'], file=sys.stderr)
        return 1
    print('exactness check: ' + json.dumps(
        {k: (v['rambo_loss'], v['reference_loss']) for k, v in check['regimes'].items()}),
        flush=True)

    rows = []
    for size in sizes:
        info = size_info(size)
        for regime in regimes:
            for method in methods:
                row = dict(info, regime=regime, method=method)
                negatives = info['scores'] - info['positives']
                if size == 'scale' and method not in SCALE_METHODS:
                    continue
                if method == 'aploss' and info['positives'] * negatives > args.aploss_budget:
                    row.update(status='skipped', reason=f'skipped: O(P*N) = '
                               f'{info["positives"] * negatives:.2g} > budget '
                               f'{args.aploss_budget:.2g}')
                else:
                    row.update(in_child(run_case, (args.device, size, regime, method,
                                                   args.repeats, args.seed),
                                        args.case_timeout, use_fork))
                rows.append(row)
                shown = (f"{row['ms']:.1f} ms, peak {_fmt(row.get('peak_mb'), '.1f')} MB, "
                         f"R={row['repeats']}" if row['status'] == 'ok'
                         else row['status'] + ': ' + row.get('reason', '').strip()[-300:])
                print(f'  {size:>6} {regime:>7} {method:<13} {shown}', flush=True)

    summary = summarise(rows)
    result = dict(
        meta=dict(device=args.device, device_name=name, torch=torch.__version__,
                  mmdet=mmdet_version, threads=torch.get_num_threads(), cpu_count=os.cpu_count(),
                  python=platform.python_version(), code=code,
                  date=datetime.datetime.now().isoformat(timespec='seconds'),
                  argv=sys.argv[1:] if argv is None else list(argv), sizes=sizes,
                  regimes=regimes, methods=methods, repeats=args.repeats,
                  clock='process CPU time (single thread)' if use_cpu_clock(args.device)
                  else 'wall clock',
                  peak_method=next((r['peak_method'] for r in rows if r.get('peak_method')), None),
                  loadavg_start=loadavg_start,
                  settings=dict(paper_lambda_val=LAMBDA, paper_margin=MARGIN,
                                shipped_dense={k: v if isinstance(v, bool) else round(v, 6)
                                               for k, v in SHIPPED_DENSE.items()},
                                interclass_weight=round(BETA, 6),
                                memory_batches=TAU, focal_gamma=FOCAL_GAMMA,
                                focal_alpha=FOCAL_ALPHA, aploss_delta=APLOSS_DELTA,
                                aploss_budget=args.aploss_budget, pos_per_image=POS_PER_IMAGE,
                                ignored_fraction=IGNORED_FRACTION, seed=args.seed)),
        check=check, rows=rows, summary=summary, targets=evaluate_targets(summary))
    result['meta']['loadavg_end'] = ' '.join(f'{x:.2f}' for x in os.getloadavg())
    result['meta']['total_s'] = time.monotonic() - start
    text, md = render(result)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f'{name}.json').write_text(json.dumps(result, indent=1) + '\n')
    (out_dir / f'{name}.md').write_text(md)
    print()
    print(text)
    print(f'\nwrote {out_dir / (name + ".json")} and .md')
    errors = [r for r in rows if r['status'] == 'error']
    return 1 if errors else 0


if __name__ == '__main__':
    sys.exit(main())
