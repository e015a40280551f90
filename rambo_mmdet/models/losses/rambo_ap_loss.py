"""RaMBOAPLoss: the mAP + interclass-AP ranking loss of RaMBO as an mmdet classification loss."""
import contextlib
from typing import Dict, Optional, Tuple

import torch
from mmdet.registry import MODELS
from mmengine.model import is_model_wrapper
from torch import Tensor, nn

from ...calibration import MODES as CALIBRATION_MODES
from ...calibration import calibrate_logits, logistic_fit_step
from ...ranking import (CROSS_ENTROPIES, GradScale, ScoreMemory, check_scores,
                        detection_ap_loss, detection_ranking_loss, pointwise_term,
                        route_output_grad)
from ...ranking.distributed import (all_gather_ints, gather_rows, get_rank_and_world_size,
                                    is_distributed, resolve_global_batch)

__all__ = ['RaMBOAPLoss', 'name_ranking_losses']

_ACTIVATIONS = ('logits', 'sigmoid')
#: Each mode: defaults of lambda_val, margin (with the paper's gradient), balanced_margin (the
#: margin with the balanced gradient) and balanced_gain (None: the paper's gradient size),
#: balanced_below: the balanced gradient only when the positives are fewer than this fraction of
#: the ranked rows (None: always), bce_weight: the weight of the sigmoid cross-entropy term
#: added in the calls that use the paper's gradient, focal_weight: the weight of the sigmoid
#: focal loss added in the calls that use the balanced gradient, and error_driven: whether the
#: balanced gradient gives each positive its own error's share (see RankingProblem).
MODES = {
    'auto': dict(lambda_val=0.5, margin=0.0, balanced_margin=0.15, balanced_gain=1.0,
                 balanced_below=1 / 32, bce_weight=0.5, focal_weight=0.0, error_driven=True),
    'balanced': dict(lambda_val=0.5, margin=0.15, balanced_margin=0.15, balanced_gain=1.0,
                     balanced_below=None, bce_weight=0.0, focal_weight=0.0, error_driven=True),
    'paper': dict(lambda_val=0.5, margin=0.15, balanced_margin=0.15, balanced_gain=None,
                  balanced_below=None, bce_weight=0.0, focal_weight=0.0, error_driven=False),
}
#: labels travel to other ranks in a float32 column: exact below 2**24
_MAX_PACKED_CLASSES = 1 << 24
#: the score calibration's buffers (see RaMBOAPLoss, *Score calibration*)
_CALIBRATION_BUFFERS = ('calib_scale', 'calib_bias', 'calib_updates')
#: what the map is fitted on: the rows the loss ranks, or the head's training detections
_CALIBRATION_SOURCES = ('ranked_rows', 'detections')


def _kept_rows(label_weights: Tensor) -> Tensor:
    """``[N]`` bool: the rows a ``[N]`` (or ``[N, C]``, reduced per row) label weight keeps
    (weight > 0); the others are ignored samples."""
    weights = label_weights if label_weights.dim() == 1 else label_weights.flatten(1).amax(dim=1)
    return weights > 0


def _pointwise_weight(name: str, mode: str, key: str, value: Optional[float],
                      gradient: str) -> float:
    """The weight ``key`` of a pointwise term of mode ``'auto'`` (added in its calls with
    ``gradient`` gradient): the mode's default when ``None``; an error when set in another mode
    or negative."""
    if mode != 'auto' and value:
        raise ValueError(f"{name}: {key} applies to mode='auto' only (its calls with {gradient} "
                         f"gradient); mode={mode!r} has no such term")
    value = MODES[mode][key] if value is None else value
    if not value >= 0:
        raise ValueError(f'{name}: {key} must be >= 0, got {value}')
    return float(value)


def _no_autocast(device: torch.device):
    """A context that switches autocast off on ``device`` (the loss computes in float32)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


@MODELS.register_module()
class RaMBOAPLoss(nn.Module):
    """Average-precision loss of RaMBO (Rolínek et al., CVPR 2020), blackbox-differentiated.

    ``loss = loss_weight * ((1 - β) * L_mAP + β * L_APC)`` (plus a cross-entropy term in the
    RoI-head calls of the default mode, see *Modes*) where

    - ``L_mAP`` is the mean of ``1 - AP_c`` over the classes ``c`` that have positives, each class
      ranking the scores of the current batch **plus a detached memory of the last τ batches**;
    - ``L_APC`` is ``1 - AP`` of all (sample, class) scores of the current batch flattened into one
      ranking (the interclass term: it orders classes against each other).

    Ranks are normalised by the ranking length, as in the paper's code, so the paper's detection
    defaults λ = 0.5, α = 0.15, τ = 7, β = 1/3 (``L_mAP : L_APC = 2 : 1``) keep their meaning.

    **Modes** (the ranking loss value is the paper's in all of them, at the margin in use; they
    differ in the gradient's size, in the default margin and in the cross-entropy term):

    - ``'auto'`` (default): the *balanced* gradient (below) with the paper's margin 0.15 in
      dense heads (every anchor ranked, ~0.1 % positives), the paper's gradient with margin 0
      in heads whose rows are a bounded sample (RoI box heads; an RPN's sampler-picked anchors),
      as the heads declare (:attr:`sampled_rows`); for a head that does not, per call by the
      positive fraction (balanced below 1/32 of the ranked rows); plus, in the paper-gradient
      calls only, ``bce_weight`` (0.5) times mmdet's
      sigmoid cross-entropy of the same logits (one-hot targets, background rows all 0, summed
      over classes and averaged over rows, as mmdet's ``CrossEntropyLoss(use_sigmoid=True)`` in
      a box head). The blackbox gradient is sparse (1-3 % of a box head's scores get one) and
      the box head's shared fc layers also carry the box regression; the cross-entropy gives
      every score a gradient and keeps the logits on a probability scale, the ranking term
      orders them. ``cross_entropy='softmax'`` makes the term mmdet's softmax cross-entropy of
      a stock box head instead (the logits and a background logit held at 0): better with SGD,
      not with AdamW (FashionDet Faster R-CNN, 1500 iterations, seeds 0-2, test mAP: SGD 28.9
      with it, 27.9 sigmoid, 28.0 cross-entropy alone; AdamW 32.0 with it, 32.9 sigmoid, 31.3
      cross-entropy; see the README), so the shipped SGD configs (mmdet's COCO / VOC recipes)
      use it and the default stays sigmoid.
    - ``'balanced'``: per ranking group, positives and negatives each receive
      ``balanced_gain · (1 - AP_g) / K`` in total (``K`` groups with positives; the balance of
      Rank & Sort and aLRP): each positive its own error's share, ``balanced_gain ·
      (1 - precision_i) / (K · P_g)`` (``error_driven``, default), the negatives in the paper's
      direction (by the crossings of the blackbox perturbation, at most the group's share over
      its positives per crossing); margin 0.15; ``balanced_gain`` 1. Its size depends neither
      on the ranking length nor on the positive fraction, while the paper's shrinks with the
      fraction (measured: ~3x from 1 % to 0.2 % positives), which leaves a dense head almost no
      gradient. Why the positives' shares: the blackbox perturbation ``λ · dL/drk`` is largest
      for positives near the top (``dL/drk ∝ rk+ / rk²``), so sharing by crossings (the
      paper's direction, ``error_driven=False``) gives the best-ranked positives most of the
      gradient and the badly ranked ones almost none; with SGD (gain 1) that spread the
      positives' logits (std 8-14 within 100 iterations) and the RetinaNet twin did not learn
      (validation mAP 1.0 at 1125 iterations, focal 13.9), so the previous default needed gain
      0.25 and was only on par with focal. Shared by errors, gain 1 trains with SGD and AdamW
      and leads focal with both (see the README, *Quality*).
    - ``'paper'``: the paper's exact loss and gradient (λ 0.5, α 0.15, τ 7, β 1/3).

    An explicit ``margin`` applies with either gradient. Measured (FashionDet twins,
    ``configs/fashion/``, seed 0, validation after 600 iterations, see the README):

    - The box head's cross-entropy term (600 iterations, mAP / AP50 / AP75): ranking alone
      19.5 / 34.8 / 20.4, with ``bce_weight`` 0.5 22.3 / 38.2 / 23.6 (0.25: see the README; 1:
      20.6 / 37.9 / 21.1), the sigmoid cross-entropy alone 21.1 / 37.0 / 21.5, softmax
      cross-entropy (mmdet's default) 21.1 / 36.7 / 22.3. 1500 iterations, 3 seeds, test
      split: Δ mAP / AP50 / AP75 over softmax cross-entropy +1.6 / +2.3 / +1.9 (ranking alone:
      -0.6 / -2.4 / +0.2).
    - RetinaNet needs the balanced gradient (the paper's gradient, margin 0, scaled by ``n / P``,
      mmdet's per-positive convention: AP50 6.4) *and* the margin: with margin 0 the classifier
      tower's last features at positive anchors die (iteration 100-150: 97 % zeros, positives'
      logits within 0.005 of the bias, tied with the hard negatives around them; the head only
      pushes background down), AP50 13.2; with 0.15 they stay alive, AP50 21.3 (focal 14.8;
      gain 10). Gains and the positives' shares at 4500 iterations: see the README.
    - The RoI box head needs the paper's gradient (balanced: gradient norm ~1000 within 200
      iterations) *without* margin: from a fresh classifier (logits within a few hundredths) the
      margin puts every positive below every negative, out of reach of the paper's small
      perturbation (mAP 11.0 vs 19.5 with margin 0; cross-entropy 21.1).

    Unlike cross-entropy the loss is not a sum over samples: it needs every sample of the batch in
    one call. The RoI box head calls it once for all RoIs; dense heads need an all-levels head
    (``RaMBORetinaHead``, ``RaMBORPNHead``, or heads that already concatenate levels, like FCOS).

    The classifier has ``C`` channels (no background channel); ``get_activation`` appends a zero
    background column so mmdet's NMS and evaluators accept the scores.

    **Gradient scale.** The blackbox backward is not linear in the gradient it receives (that
    gradient sets the size of the perturbation, ``y' = y + λ·dL/drk``). So that anything scaling
    the loss from outside (``loss_weight``, mmengine's ``AmpOptimWrapper`` / ``GradScaler`` loss
    scale of 2**16, a weighted sum of losses) scales the gradient and does not change the
    effective λ, the ranker always receives the gradient of the unweighted
    ``(1 - β) L_mAP + β L_APC``, and the gradient that arrives at the loss output multiplies the
    resulting score gradient afterwards. λ therefore refers to the unweighted loss, and
    ``loss_weight`` scales value and gradient exactly.

    **Mixed precision.** Logits of any floating dtype (float16, bfloat16) are accepted; the loss
    runs with autocast disabled and computes in float32 (ranks are int64), returns a float32
    scalar, and the gradient comes back in the logits' dtype.

    **Global batch under data parallelism** (``global_batch``). With ``torch.distributed``
    initialised and more than one rank, every call all-gathers the valid (not ignored) rows of
    every rank (detached scores and labels; ranks may have different row counts, zero included),
    concatenates them in rank order with this rank's differentiable rows in place of its slice,
    and computes the loss on that global batch: the value is the single-process loss of the
    concatenated batch, identical on every rank, and the gradient of each local row is its
    gradient in that single-process loss, multiplied by the world size ``W`` when
    ``scale_grad_by_world_size`` (default). DDP averages parameter gradients over ranks (divides
    their sum by ``W``); each rank contributes the gradient through its own rows only, so with the
    factor ``W`` the averaged parameter gradient equals that of single-process training on the
    global batch. The factor is applied to the gradient of the scores, after the blackbox: the
    loss value (and what is logged) is not multiplied (multiplying the loss would multiply λ, see
    above). The cross-entropy term of ``'auto'`` is computed on the global batch in the same
    way (its gradient multiplied by ``W`` too). The memory stores the global batch, so it is
    identical on every rank. Every rank must
    call the loss the same number of times per step (the gather is a collective); each rank ranks
    the global batch (``W`` times the ranking work of one rank's batch).

    **Input handling** (each case is tested):

    - Ignored rows (``label_weights == 0``: anchors ignored by the assigner, outside the border,
      not sampled) are left out of the ranking and get zero gradient.
    - No row at all (an empty batch, or every row ignored): the loss is ``L_mAP`` of the memory
      alone (a constant; 0 with an empty memory) and the gradient is zero; nothing is remembered.
    - No positive in the batch (e.g. images without ground truth, or with only ignored boxes:
      mmdet's ``MaxIoUAssigner`` applies ignore regions only in images that have boxes, so all
      RoIs/anchors of such an image are negatives, as in an empty image): ``L_APC = 0``; the
      classes with positives in the memory still rank the batch's negatives (they get gradient);
      with no positive in the memory either, the loss is 0 with zero gradient (the graph stays
      intact, ``backward()`` works).
    - A class absent from the data: its positives stay in the memory for τ batches, so it stays
      in ``L_mAP`` (the mean over classes with positives) for the τ batches after the last batch
      that had it, and leaves ``L_mAP`` from the (τ+1)-th batch without it.
    - Labels outside ``0..C`` (``C`` = background), non-integer labels, wrong shapes: ``ValueError``
      naming the loss (``name``) and the problem.
    - NaN/Inf logits: ``ValueError`` naming the loss and the count (ranks of NaN are undefined).
      Under the global batch the ranks first exchange a status flag, so every rank raises
      (naming the rank(s) at fault) instead of leaving the others waiting in the gather.

    **Score calibration** (``calibration``). The loss trains only the order of the logits, so
    ``sigmoid(logit)`` is not a probability (a trained box head scores nearly every box 0.4-0.65).
    With ``calibration='global'`` (default) the loss also learns a monotone map ``a * logit + b``
    (``a > 0``) by logistic regression (binary cross-entropy) on *detached* logits during
    training, and ``get_activation`` (the test-time scores of box heads and of
    ``RaMBORetinaHead``) returns ``sigmoid(a * logit + b)``. What the map is fitted on
    (``calibration_source``):

    - ``'ranked_rows'`` (default; RoI box heads): the rows the loss ranks, with their labels (a
      row's own class 1, every other class 0; background rows 0 for every class; ignored rows
      left out): ``p`` is the probability that a sampled RoI is a positive of the class;
    - ``'detections'`` (dense heads, set by the shipped dense-head loss): the head's training
      detections after its test-time post-processing, correct when they match a same-class
      ground-truth box at IoU >= 0.5 (an ``AllLevelsClsLossMixin`` head passes them through
      :meth:`update_calibration_from_detections`); whether an anchor is a positive is a much
      rarer event than whether a detection after NMS is correct.

    ``(a, b)`` are buffers (``calib_scale``, ``calib_bias``, ``calib_updates``: saved in
    checkpoints, not touched by the optimizer, weight decay or gradient clipping). Each training
    call (every ``calibration_interval``-th) moves them by ``calibration_rate`` towards one safeguarded Newton step of the BCE on
    that call's entries (:func:`rambo_mmdet.calibration.logistic_fit_step`; sums all-reduced
    under the global batch, so every rank holds the same map): a moving fit over the last
    ~1/rate batches, from ``a = 1, b = 0``. The first updates average instead (the n-th moves
    by ``max(calibration_rate, 1 / n)``), so the map leaves the identity within a few updates
    rather than ~1/rate of them. No gradient reaches the network: training is exactly
    the same with calibration on or off. One map for all classes keeps the order of every pair
    of scores, within and across classes, so the detections (top-k, NMS, ``max_per_img``) and AP
    are unchanged (scores are computed in float64, so the map creates no ties);
    ``'per_class'`` (needs ``num_classes``) keeps the order within each class only.
    ``calibration=None`` turns it off (scores ``sigmoid(logit)``; calibration keys of a
    checkpoint are then ignored). A checkpoint without the keys loads with the identity map.
    Rows used per call (``'ranked_rows'``): all when at most ``calibration_max_rows``, else every
    positive row and evenly spaced negative rows, weighted by their inverse sampling rate (no
    random numbers are drawn, so the training's random state is the same with calibration on or
    off).

    ``name`` appears in every error message. :func:`name_ranking_losses` (or the
    ``NameRankingLossesHook`` of :mod:`rambo_mmdet.hooks`) sets it to the module path of the loss
    in the model, e.g. ``roi_head.bbox_head.loss_cls (RaMBOAPLoss)``.

    Args:
        use_sigmoid (bool): must be True: classes are scored independently (dense heads read it).
        mode (str): ``'auto'`` (default), ``'balanced'`` or ``'paper'`` (see *Modes*).
        balanced_gain (float, optional): gain of the balanced gradient (default 1; not in
            ``'paper'`` mode).
        lambda_val (float, optional): blackbox interpolation strength λ. Default: the mode's
            (0.5 in every mode).
        margin (float, optional): margin α: positives must outscore negatives by α, with either
            gradient. Default: the mode's (0.15 with the balanced gradient and in ``'paper'``; 0
            with the paper's gradient in ``'auto'``).
        memory_batches (int): τ, past batches kept in the score memory (0: none). Default 7.
        memory_max_rows (int): rows kept per remembered batch (positives first, then the
            highest-scoring negatives). Default 4096. Under the global batch a remembered batch is
            the global batch: raise it to ``W *`` (rows per rank) to remember every row.
        interclass_weight (float): β, the weight of ``L_APC``. Default 1/3.
        score_activation (str): what is ranked: ``'logits'`` (raw scores, default) or
            ``'sigmoid'``; inference scores are ``sigmoid(logits)`` either way.
        loss_weight (float): overall weight (of value and gradient). Default 1.0.
        global_batch (str | bool): ``'auto'`` (default): rank the global batch when
            ``torch.distributed`` is initialised with world size > 1; ``True``: the same (a
            single process is its own global batch); ``False``: each rank ranks its own rows.
        scale_grad_by_world_size (bool): under the global batch, multiply the score gradient by
            the world size to undo DDP's gradient averaging (see above). Default True.
        name (str): name used in error messages (e.g. the head that owns the loss).
        calibration (str, optional): ``'global'`` (default), ``'per_class'`` or None (off):
            the learned logit map of the inference scores (see *Score calibration*).
        num_classes (int, optional): number of classes; needed by ``'per_class'``.
        calibration_rate (float): step of the calibration's Newton update per training call,
            in (0, 1] (the n-th update: ``max(calibration_rate, 1 / n)``). Default 0.05.
        calibration_max_rows (int): rows used by one calibration update (see above). Default
            8192.
        calibration_source (str): ``'ranked_rows'`` (default) or ``'detections'`` (see above).
        bce_weight (float, optional): ``'auto'`` only: weight of the cross-entropy term added
            in the calls that use the paper's gradient (see *Modes*; 0: the ranking loss
            alone). Default 0.5.
        cross_entropy (str): that term: ``'sigmoid'`` (default; mmdet's
            ``CrossEntropyLoss(use_sigmoid=True)``, every class a binary target) or
            ``'softmax'`` (mmdet's softmax ``CrossEntropyLoss`` of a stock box head over the
            logits and a background logit held at 0; identical to ``'sigmoid'`` with one class,
            e.g. an RPN). Which is better depends on the optimiser (see *Modes*).
        focal_weight (float, optional): ``'auto'`` only: weight of mmdet's sigmoid focal loss
            (gamma 2, alpha 0.25, divided by the positive rows) added in the calls that use the
            balanced gradient (dense heads; see *Modes*). Default 0.
        error_driven (bool, optional): not in ``'paper'`` mode: the balanced gradient gives
            each positive its own error's share (see *Modes*). Default True (``'auto'``,
            ``'balanced'``); False: shares by the negatives each positive's perturbation crossed.
        calibration_interval (int, optional): update the map every this many training calls.
            Default: 1 for ``'ranked_rows'`` (a few passes over at most
            ``calibration_max_rows`` rows), 32 for ``'detections'`` (the head's test-time
            post-processing of a batch, mostly its NMS: measured ~75 ms CPU per batch of 4 on
            the RetinaNet twin, ~1/3 of an iteration; every 8th call was ~4 % of the training
            time, every 32nd ~1 %).
    """

    #: Tells heads that the loss ranks, so it needs all samples in one call.
    needs_all_samples = True
    #: Whether the head's rows are a bounded sample (RoIs, the anchors an RPN's sampler picked)
    #: rather than every anchor (dense heads without a sampler). Mode ``'auto'`` then takes the
    #: paper's gradient regime (``True``) or the balanced one (``False``) whatever the positive
    #: fraction of a call; ``None`` (a head that does not say): the fraction decides per call.
    #: Set by the heads: the package's dense heads (``RankingLossHeadMixin``: from the sampler;
    #: FCOS, without one: every point) and the RoI box head
    #: (:mod:`rambo_mmdet.models.bbox_head_patch`).
    sampled_rows: Optional[bool] = None
    custom_cls_channels = True
    custom_activation = True
    custom_accuracy = True
    #: Set by ``RankingLossStatsHook`` (:mod:`rambo_mmdet.hooks`) on the iterations it logs: the
    #: calls then fill :attr:`stats` (see :meth:`_record_stats`). Off by default: no cost.
    record_stats = False
    stats: Optional[Dict[str, Tensor]] = None

    def __init__(self,
                 use_sigmoid: bool = True,
                 mode: str = 'auto',
                 lambda_val: Optional[float] = None,
                 margin: Optional[float] = None,
                 balanced_gain: Optional[float] = None,
                 memory_batches: int = 7,
                 memory_max_rows: int = 4096,
                 interclass_weight: float = 1.0 / 3.0,
                 score_activation: str = 'logits',
                 loss_weight: float = 1.0,
                 global_batch='auto',
                 scale_grad_by_world_size: bool = True,
                 name: str = 'RaMBOAPLoss',
                 calibration: Optional[str] = 'global',
                 num_classes: Optional[int] = None,
                 calibration_rate: float = 0.05,
                 calibration_max_rows: int = 8192,
                 calibration_source: str = 'ranked_rows',
                 calibration_interval: Optional[int] = None,
                 bce_weight: Optional[float] = None,
                 cross_entropy: str = 'sigmoid',
                 focal_weight: Optional[float] = None,
                 error_driven: Optional[bool] = None) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f'{name}: mode must be one of {tuple(MODES)}, got {mode!r}')
        defaults = MODES[mode]
        lambda_val = defaults['lambda_val'] if lambda_val is None else lambda_val
        # an explicit margin applies with either gradient; the mode's default depends on it
        balanced_margin = defaults['balanced_margin'] if margin is None else margin
        margin = defaults['margin'] if margin is None else margin
        if mode == 'paper' and balanced_gain is not None:
            raise ValueError(f"{name}: balanced_gain does not apply to mode='paper' (the paper's "
                             f"gradient); use mode='auto' or 'balanced'")
        balanced_gain = defaults['balanced_gain'] if balanced_gain is None else balanced_gain
        bce_weight = _pointwise_weight(name, mode, 'bce_weight', bce_weight, "the paper's")
        focal_weight = _pointwise_weight(name, mode, 'focal_weight', focal_weight, 'the balanced')
        if balanced_gain is not None and balanced_gain <= 0:
            raise ValueError(f'{name}: balanced_gain must be > 0, got {balanced_gain}')
        if mode == 'paper' and error_driven:
            raise ValueError(f"{name}: error_driven does not apply to mode='paper' (the "
                             f"paper's gradient); use mode='auto' or 'balanced'")
        if not use_sigmoid:
            raise ValueError(
                f'{name}: use_sigmoid=False is not supported: RaMBOAPLoss scores each class '
                f'independently (C channels, no softmax over a background channel). Set '
                f'use_sigmoid=True in loss_cls.')
        if lambda_val <= 0:
            raise ValueError(f'{name}: lambda_val must be > 0, got {lambda_val}')
        if margin < 0:
            raise ValueError(f'{name}: margin must be >= 0, got {margin}')
        if not 0.0 <= interclass_weight <= 1.0:
            raise ValueError(f'{name}: interclass_weight must be in [0, 1], got '
                             f'{interclass_weight}')
        if score_activation not in _ACTIVATIONS:
            raise ValueError(f'{name}: score_activation must be one of {_ACTIVATIONS}, got '
                             f'{score_activation!r}')
        if global_batch != 'auto' and not isinstance(global_batch, bool):
            raise ValueError(f"{name}: global_batch must be 'auto', True or False, got "
                             f'{global_batch!r}')
        self.use_sigmoid = True
        self.mode = mode
        self.balanced_gain = None if balanced_gain is None else float(balanced_gain)
        self.balanced_below = defaults['balanced_below']
        self.lambda_val = float(lambda_val)
        self.margin = float(margin)
        self.balanced_margin = float(balanced_margin)
        self.interclass_weight = float(interclass_weight)
        self.bce_weight = float(bce_weight)
        if cross_entropy not in CROSS_ENTROPIES:
            raise ValueError(f'{name}: cross_entropy must be one of {sorted(CROSS_ENTROPIES)}, '
                             f'got {cross_entropy!r}')
        self.cross_entropy = cross_entropy
        self.focal_weight = float(focal_weight)
        self.error_driven = bool(defaults['error_driven'] if error_driven is None
                                 else error_driven)
        self.score_activation = score_activation
        self.loss_weight = float(loss_weight)
        self.global_batch = global_batch
        self.scale_grad_by_world_size = bool(scale_grad_by_world_size)
        self.name = name
        self.memory = ScoreMemory(memory_batches, memory_max_rows)
        self._init_calibration(calibration, num_classes, calibration_rate, calibration_max_rows)
        if calibration_source not in _CALIBRATION_SOURCES:
            raise ValueError(f'{name}: calibration_source must be one of {_CALIBRATION_SOURCES}, '
                             f'got {calibration_source!r}')
        self.calibration_source = calibration_source
        if calibration_interval is None:
            calibration_interval = 32 if calibration_source == 'detections' else 1
        if not isinstance(calibration_interval, int) or calibration_interval < 1:
            raise ValueError(f'{name}: calibration_interval must be a positive int, got '
                             f'{calibration_interval!r}')
        self.calibration_interval = calibration_interval
        self._calibration_calls = 0

    # ------------------------------------------------------------------ score calibration
    def _init_calibration(self, calibration, num_classes, rate, max_rows) -> None:
        name = self.name
        if calibration is False:
            calibration = None
        if calibration is not None and calibration not in CALIBRATION_MODES:
            raise ValueError(f'{name}: calibration must be one of {CALIBRATION_MODES} or None, '
                             f'got {calibration!r}')
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f'{name}: num_classes must be a positive int, got {num_classes!r}')
        if calibration == 'per_class' and num_classes is None:
            raise ValueError(f"{name}: calibration='per_class' needs num_classes")
        if not 0.0 < rate <= 1.0:
            raise ValueError(f'{name}: calibration_rate must be in (0, 1], got {rate}')
        if int(max_rows) < 1:
            raise ValueError(f'{name}: calibration_max_rows must be >= 1, got {max_rows}')
        self.calibration = calibration
        self.num_classes = num_classes
        self.calibration_rate = float(rate)
        self.calibration_max_rows = int(max_rows)
        if calibration is None:
            return
        shape = (num_classes, ) if calibration == 'per_class' else ()
        self.register_buffer('calib_scale', torch.ones(shape))
        self.register_buffer('calib_bias', torch.zeros(shape))
        self.register_buffer('calib_updates', torch.zeros((), dtype=torch.int64))

    @torch.no_grad()
    def _update_calibration(self, cls_score: Tensor, labels: Tensor,
                            label_weights: Optional[Tensor], use_global: bool) -> None:
        """One calibration step on this call's valid rows (``calibration_source='ranked_rows'``):
        targets are the labels (a row's own class 1, other classes and background rows 0)."""
        num_rows, num_classes = cls_score.shape
        if self.calibration == 'per_class' and num_classes != self.num_classes:
            raise ValueError(f'{self.name}: per_class calibration of {self.num_classes} classes, '
                             f'got scores with {num_classes} columns')
        rows = None  # None: every row, not copied
        if label_weights is not None:
            keep = _kept_rows(label_weights)
            if not bool(keep.all()):
                rows = keep.nonzero().squeeze(1)
        row_weights = None
        if (num_rows if rows is None else rows.numel()) > self.calibration_max_rows:
            if rows is None:
                rows = torch.arange(num_rows, device=cls_score.device)
            positive = labels[rows] < num_classes
            pos_rows, neg_rows = rows[positive], rows[~positive]
            room = max(self.calibration_max_rows - pos_rows.numel(), 1)
            stride = -(-neg_rows.numel() // room)  # ceil
            kept_neg = neg_rows[::stride]
            rows = torch.cat([pos_rows, kept_neg])
            row_weights = torch.cat([
                torch.ones(pos_rows.numel(), device=rows.device),
                torch.full((kept_neg.numel(), ), neg_rows.numel() / max(kept_neg.numel(), 1),
                           device=rows.device)])
        logits = cls_score.detach() if rows is None else cls_score.detach()[rows]
        row_labels = labels if rows is None else labels[rows]
        targets = row_labels[:, None] == torch.arange(num_classes, device=labels.device)
        self._calibration_step(logits, targets, row_weights, use_global)

    def calibration_due(self) -> bool:
        """Whether this training call updates the map (every ``calibration_interval``-th call;
        counts the call)."""
        due = self._calibration_calls % self.calibration_interval == 0
        self._calibration_calls += 1
        return due

    @torch.no_grad()
    def update_calibration_from_detections(self, logits: Tensor, labels: Tensor,
                                           correct: Tensor) -> None:
        """One calibration step on detections (``calibration_source='detections'``): ``[D]``
        raw logits of the detections' own classes, their ``labels`` and whether each is correct
        (see :func:`rambo_mmdet.calibration.match_detections`). Called by the dense heads of
        :mod:`rambo_mmdet.models.dense_heads` on their training predictions."""
        if self.calibration is None:
            return
        use_global = resolve_global_batch(self.global_batch)
        logits, correct = logits.detach().reshape(-1), correct.reshape(-1)
        if self.calibration == 'per_class':  # each detection fits its own class's map only
            columns = torch.nn.functional.one_hot(labels.reshape(-1).long(), self.num_classes)
            self._calibration_step(logits[:, None] * columns, correct[:, None] & columns.bool(),
                                   columns, use_global)
        else:
            self._calibration_step(logits[:, None], correct[:, None], None, use_global)

    def _calibration_step(self, logits: Tensor, targets: Tensor, weights: Optional[Tensor],
                          use_global: bool) -> None:
        """Move the map by ``calibration_rate`` towards one safeguarded Newton step of the BCE
        on these entries (sums all-reduced over the ranks under the global batch)."""
        reduce = None
        if use_global and is_distributed():
            def reduce(tensor):
                torch.distributed.all_reduce(tensor)
                return tensor
        scale, bias, _ = logistic_fit_step(logits, targets, self.calib_scale, self.calib_bias,
                                           weights, per_class=self.calibration == 'per_class',
                                           reduce=reduce)
        # the n-th update (n = calib_updates + 1) moves by max(rate, 1 / n): an average of the
        # first steps, then the moving fit (a tensor: no host synchronisation)
        rate = (self.calib_updates + 1).reciprocal().clamp(min=self.calibration_rate)
        self.calib_scale.copy_(self.calib_scale + rate * (scale.float() - self.calib_scale))
        self.calib_bias.copy_(self.calib_bias + rate * (bias.float() - self.calib_bias))
        self.calib_updates += 1

    @contextlib.contextmanager
    def identity_calibration(self):
        """Within the context, ``get_activation`` returns ``sigmoid(logits)`` (the raw logits'
        scores; used to collect detections with their logits)."""
        previous = getattr(self, '_identity', False)
        self._identity = True
        try:
            yield self
        finally:
            self._identity = previous

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        """Checkpoints saved without calibration load with the identity map (``a = 1, b = 0``);
        with calibration off, a checkpoint's calibration keys are ignored; a global map loads
        into a per-class one as the same map for every class."""
        keys = {name: prefix + name for name in _CALIBRATION_BUFFERS}
        if self.calibration is None:
            for key in keys.values():
                state_dict.pop(key, None)
        else:
            identity = dict(calib_scale=torch.ones_like(self.calib_scale),
                            calib_bias=torch.zeros_like(self.calib_bias),
                            calib_updates=torch.zeros_like(self.calib_updates))
            for name, key in keys.items():
                if key not in state_dict:
                    state_dict[key] = identity[name]
                elif (name != 'calib_updates' and state_dict[key].numel() == 1
                      and state_dict[key].shape != identity[name].shape):
                    state_dict[key] = state_dict[key].reshape(()).expand_as(identity[name]).clone()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    # ------------------------------------------------------------------ mmdet box-head hooks
    def get_cls_channels(self, num_classes: int) -> int:
        """The classifier outputs one channel per class (no background channel)."""
        return num_classes

    def _mapped(self, cls_score: Tensor) -> Optional[Tensor]:
        """``a * logit + b`` in float64, or None while no map applies (``calibration=None``,
        inside :meth:`identity_calibration`, or an identity map). Float64: float32 rounding of
        ``a * logit (+ b)`` could merge neighbouring logits into ties (e.g. logits near -4
        times a = 10: the product's float32 spacing exceeds the scaled spacing of the logits),
        and ties reorder NMS / top-k selections."""
        if (self.calibration is None or getattr(self, '_identity', False)
                or bool((self.calib_scale == 1).all() & (self.calib_bias == 0).all())):
            return None
        return calibrate_logits(cls_score.double(), self.calib_scale.double(),
                                self.calib_bias.double())

    def get_activation(self, cls_score: Tensor) -> Tensor:
        """``[N, C]`` logits -> ``[N, C + 1]`` scores: sigmoid of the calibrated logits (the
        logits themselves with ``calibration=None``), plus a zero background column."""
        mapped = self._mapped(cls_score)
        # without a map: bit-identical to the scores before calibration
        scores = cls_score.sigmoid() if mapped is None else mapped.sigmoid().to(cls_score.dtype)
        return torch.cat([scores, scores.new_zeros(scores.shape[0], 1)], dim=1)

    def calibrated_logits(self, cls_score: Tensor) -> Tensor:
        """``a * logit + b`` (the learned map, before the sigmoid), in the dtype of
        ``cls_score``; ``cls_score`` itself while no map applies (see :meth:`_mapped`). A
        per-class map needs the classes in the last dimension."""
        mapped = self._mapped(cls_score)
        return cls_score if mapped is None else mapped.to(cls_score.dtype)

    def get_accuracy(self, cls_score: Tensor, labels: Tensor) -> Dict[str, Tensor]:
        """Top-1 class accuracy (%) over the foreground samples (AP-trained scores have no
        meaningful foreground/background threshold, so background samples are left out)."""
        foreground = (labels >= 0) & (labels < cls_score.shape[1])
        hits = (cls_score.detach().argmax(dim=1) == labels) & foreground
        return dict(acc=hits.sum().float() * 100.0 / foreground.sum().clamp(min=1).float())

    # ------------------------------------------------------------------ checks
    def _check_shapes(self, cls_score: Tensor, labels: Tensor,
                      label_weights: Optional[Tensor]) -> None:
        """Structural checks (the same on every rank of a correct setup): raise at once."""
        if not torch.is_tensor(cls_score) or cls_score.dim() != 2:
            raise ValueError(f'{self.name}: cls_score must have shape [N, C], got '
                             f'{tuple(getattr(cls_score, "shape", ()))}')
        num_samples, num_classes = cls_score.shape
        if not torch.is_tensor(labels) or labels.shape != (num_samples, ):
            raise ValueError(f'{self.name}: labels must have shape [{num_samples}], got '
                             f'{tuple(getattr(labels, "shape", ()))}')
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f'{self.name}: labels must be an integer tensor (0..{num_classes - 1}'
                             f' foreground, {num_classes} background), got {labels.dtype}')
        if label_weights is not None and label_weights.shape[0] != num_samples:
            raise ValueError(f'{self.name}: label_weights must have {num_samples} rows, got '
                             f'{tuple(label_weights.shape)}')

    def _value_problem(self, cls_score: Tensor, labels: Tensor) -> Optional[str]:
        """Data-dependent checks (may fail on one rank only): the error message, or None."""
        num_samples, num_classes = cls_score.shape
        if num_samples and not bool(((labels >= 0) & (labels <= num_classes)).all()):
            bad = labels[(labels < 0) | (labels > num_classes)]
            return (f'{self.name}: labels must be in 0..{num_classes} ({num_classes} = '
                    f'background), got {bad[:5].tolist()}')
        try:
            check_scores(cls_score, name=f'{self.name}: cls_score')
        except ValueError as err:
            return str(err)
        return None

    # ------------------------------------------------------------------ loss
    def forward(self,
                cls_score: Tensor,
                labels: Tensor,
                label_weights: Optional[Tensor] = None,
                avg_factor: Optional[float] = None,
                reduction_override: Optional[str] = None) -> Tensor:
        """Compute the loss.

        Args:
            cls_score (Tensor): ``[N, C]`` class logits, any floating dtype (computed in float32).
            labels (Tensor): ``[N]`` int64, ``0..C-1`` foreground, ``C`` background.
            label_weights (Tensor, optional): ``[N]`` (or ``[N, C]``, reduced per row); rows with
                weight 0 are ignored, any positive weight counts as 1 (ranks are not weighted).
            avg_factor: ignored: AP is already normalised.
            reduction_override: accepted for mmdet compatibility; the loss is always a scalar.

        Returns:
            Tensor: float32 scalar. Zero (with zero gradient, graph intact) when there is no
            positive in the batch nor in the memory.
        """
        if reduction_override not in (None, 'none', 'mean', 'sum'):
            raise ValueError(f'{self.name}: unknown reduction_override {reduction_override!r}')
        self._check_shapes(cls_score, labels, label_weights)
        use_global = resolve_global_batch(self.global_batch)
        problem = self._value_problem(cls_score, labels)
        if problem is not None and not use_global:
            raise ValueError(problem)

        with _no_autocast(cls_score.device):
            loss = self._loss(cls_score, labels, label_weights, use_global, problem)
            if self.calibration is not None and self.training:
                if self.calibration_source == 'ranked_rows':
                    if self.calibration_due():
                        self._update_calibration(cls_score, labels, label_weights, use_global)
                elif not getattr(self, 'detections_from_head', False):
                    raise ValueError(
                        f"{self.name}: calibration_source='detections' needs a head that passes "
                        f'its training detections to the loss (RaMBORetinaHead, RaMBORPNHead, '
                        f"AllLevelsClsLossMixin heads); use 'ranked_rows' here")
        return loss

    def _balanced_below(self) -> Optional[float]:
        """The core's ``balanced_below``: the mode's, unless mode ``'auto'`` knows from the head
        whether its rows are sampled (0: never balanced) or dense (``None``: always)."""
        if self.mode != 'auto' or self.sampled_rows is None:
            return self.balanced_below
        return 0.0 if self.sampled_rows else None

    def _loss(self, cls_score: Tensor, labels: Tensor, label_weights: Optional[Tensor],
              use_global: bool, problem: Optional[str]) -> Tensor:
        # float32 first: the output gradient (e.g. an AMP loss scale) then multiplies the score
        # gradient before it is cast back to the logits' dtype, as a GradScaler intends.
        scores, labels = cls_score.float(), labels.long()
        valid = None
        if label_weights is not None:
            keep = _kept_rows(label_weights)
            if not bool(keep.all()):
                valid = keep
        factor = 1.0
        if use_global:
            if valid is not None:  # only valid rows travel
                scores, labels, valid = scores[valid], labels[valid], None
            scores, labels = self._global_batch(scores, labels, problem)
            if self.scale_grad_by_world_size:
                factor = float(get_rank_and_world_size()[1])
        # the ranking gets its own node (a view), so the stats' gradient count sees the
        # ranking's gradient only, not the cross-entropy's
        logits = scores
        scores = logits.sigmoid() if self.score_activation == 'sigmoid' else logits.view_as(logits)

        grad_scale = GradScale() if torch.is_grad_enabled() and scores.requires_grad else None
        remember = self.training and self.memory.num_batches > 0
        memory = self.memory.contents(scores) if remember else None
        excluded = None if valid is None else (~valid).nonzero().squeeze(1)
        loss, balanced = detection_ranking_loss(
            scores, labels,
            excluded_rows=excluded,
            memory=memory,
            memory_negatives=self.memory.sorted_negatives(scores) if remember else None,
            lambda_val=self.lambda_val, margin=self.margin,
            interclass_weight=self.interclass_weight, grad_scale=grad_scale,
            balanced_gain=self.balanced_gain, balanced_below=self._balanced_below(),
            balanced_margin=self.balanced_margin, error_driven=self.error_driven)
        pointwise = pointwise_term(logits, labels, valid, balanced, self.bce_weight,
                                   self.focal_weight, self.cross_entropy)
        if self.record_stats:
            self._record_stats(scores, labels, valid, excluded, memory, loss)
        if remember:
            self.memory.push(scores, labels, valid)
        if grad_scale is not None:
            loss = route_output_grad(loss, grad_scale, factor)
        if pointwise is not None:
            if factor != 1.0:  # the gradient scaled like the ranking's, the value kept
                pointwise = pointwise.detach() + factor * (pointwise - pointwise.detach())
            loss = loss + pointwise
        return self.loss_weight * loss

    @torch.no_grad()
    def _record_stats(self, scores: Tensor, labels: Tensor, valid: Optional[Tensor],
                      excluded: Optional[Tensor],
                      memory: Optional[Tuple[Tensor, Tensor]], loss: Tensor) -> None:
        """Set :attr:`stats` of this call: 0-dim detached float32 tensors (no host sync for the
        values themselves; NaN where undefined), over the live entries (the valid rows' scores,
        of the global batch under ``global_batch``):

        - ``ap_map``: ``1 - L_mAP`` (mean over the classes with positives, memory included),
          from the loss value and ``ap_apc``; ``ap_apc``: ``1 - L_APC`` (ranked once more, no
          gradient). A term with weight 0 is not reported.
        - ``pos_mean``, ``pos_std``, ``neg_mean``, ``neg_std``: mean and population std of the
          ranked scores (the logits, or their sigmoid) of the positive and negative entries.
        - ``grad_frac``: set when the backward reaches the scores: the fraction of the live
          entries whose gradient is non-zero.
        """
        num_classes = scores.shape[1]
        values = scores.detach()
        live_rows = torch.ones_like(labels, dtype=torch.bool) if valid is None else valid
        live = live_rows[:, None].expand_as(values)
        positive = (labels[:, None] == torch.arange(num_classes, device=labels.device)) & live
        num_live, num_pos = live.sum(), positive.sum()
        num_neg = num_live - num_pos
        pos_sum = torch.where(positive, values, 0.0).sum()
        neg_sum = torch.where(live, values, 0.0).sum() - pos_sum
        pos_mean, neg_mean = pos_sum / num_pos, neg_sum / num_neg
        squares = torch.where(live, (values - torch.where(positive, pos_mean, neg_mean)) ** 2, 0.0)
        pos_squares = torch.where(positive, squares, 0.0).sum()
        stats = dict(pos_mean=pos_mean, pos_std=(pos_squares / num_pos).sqrt(),
                     neg_mean=neg_mean, neg_std=((squares.sum() - pos_squares) / num_neg).sqrt())
        nan = torch.full_like(pos_mean, float('nan'))
        beta, total = self.interclass_weight, loss.detach().float()
        apc_loss = total
        if 0 < beta < 1:
            # the memory only decides the gradient regime (and so the margin) as in the loss
            # call; L_APC does not rank it
            apc_loss = detection_ap_loss(
                values, labels,
                excluded_rows=excluded, memory=memory,
                lambda_val=self.lambda_val, margin=self.margin, interclass_weight=1.0,
                balanced_gain=self.balanced_gain, balanced_below=self._balanced_below(),
                balanced_margin=self.balanced_margin, error_driven=self.error_driven)
        if beta > 0:
            stats['ap_apc'] = torch.where(num_pos > 0, 1 - apc_loss, nan)
        if beta < 1:
            has_positive = num_pos > 0
            if memory is not None:
                has_positive = has_positive | (memory[1] < num_classes).any()
            map_loss = (total - beta * apc_loss) / (1 - beta)
            stats['ap_map'] = torch.where(has_positive, 1 - map_loss, nan)
        self.stats = stats
        if scores.requires_grad:

            def count_nonzero_grad(grad: Tensor) -> None:
                stats['grad_frac'] = ((grad != 0) & live).sum() / num_live

            scores.register_hook(count_nonzero_grad)

    def _global_batch(self, scores: Tensor, labels: Tensor,
                      problem: Optional[str]) -> Tuple[Tensor, Tensor]:
        """The valid rows of all ranks in rank order, this rank's (differentiable) rows in place.

        Two collectives: ``[rows, status]`` of every rank, then the padded ``[rows, C + 1]``
        float32 block (the scores and the label as a last column).
        """
        num_classes = scores.shape[1]
        rank, world_size = get_rank_and_world_size()
        info = all_gather_ints([scores.shape[0], int(problem is not None)], scores.device)
        info = info.tolist()
        bad_ranks = [r for r, (_, status) in enumerate(info) if status]
        if bad_ranks:
            if problem is not None:
                raise ValueError(f'{problem} [rank {rank} of {world_size}; every rank stops]')
            raise ValueError(f'{self.name}: invalid input on rank(s) {bad_ranks} of {world_size} '
                             f'(see the error of that rank); every rank stops')
        if num_classes >= _MAX_PACKED_CLASSES:
            raise ValueError(f'{self.name}: global_batch supports up to '
                             f'{_MAX_PACKED_CLASSES - 1} classes, got {num_classes}')
        packed = torch.cat([scores.detach(), labels.to(scores.dtype)[:, None]], dim=1)
        rows, local = gather_rows(packed, sizes=[size for size, _ in info])
        global_labels = rows[:, -1].long()
        global_scores = torch.cat([rows[:local.start, :-1], scores, rows[local.stop:, :-1]])
        return global_scores, global_labels

    def extra_repr(self) -> str:
        return (f'mode={self.mode!r}, lambda_val={self.lambda_val}, margin={self.margin}, '
                f'balanced_margin={self.balanced_margin}, '
                f'balanced_gain={self.balanced_gain}, error_driven={self.error_driven}, '
                f'interclass_weight={self.interclass_weight:.4g}, bce_weight={self.bce_weight}, '
                f'cross_entropy={self.cross_entropy!r}, focal_weight={self.focal_weight}, '
                f'score_activation={self.score_activation!r}, loss_weight={self.loss_weight}, '
                f'global_batch={self.global_batch!r}, calibration={self.calibration!r}')


def name_ranking_losses(model: nn.Module) -> Dict[str, str]:
    """Name every ranking loss of ``model`` after its module path, for error messages.

    Sets ``loss.name = '<path> (<LossType>)'``, e.g. ``'roi_head.bbox_head.loss_cls
    (RaMBOAPLoss)'``, on each submodule that has ``needs_all_samples`` and a ``name`` attribute
    still equal to its type name (a name given in the config is kept). A model wrapper (DDP,
    ``MMDistributedDataParallel``) is looked through: paths are those of the wrapped model.

    Returns:
        dict: ``{path: name}`` of the losses named now.
    """
    while is_model_wrapper(model):
        model = model.module
    named = {}
    for path, module in model.named_modules():
        if not getattr(module, 'needs_all_samples', False) or not path:
            continue
        type_name = type(module).__name__
        if getattr(module, 'name', None) == type_name:
            module.name = f'{path} ({type_name})'
            named[path] = module.name
    return named
