"""mmengine hooks of rambo_mmdet.

:class:`NameRankingLossesHook` names every ranking loss of the model after its module path before
training starts, so that an error raised inside the loss says which head it belongs to::

    ValueError: roi_head.bbox_head.loss_cls (RaMBOAPLoss): cls_score contains 3 NaN/Inf value(s)...

and warns when a RoI box head's cross-entropy term (``RaMBOAPLoss(cross_entropy=...)``) is not the
one measured better with the run's optimiser (:data:`MEASURED_CROSS_ENTROPY`).

:class:`RankingLossStatsHook` logs, at the logger interval, what each ranking loss sees: the
training AP of each term, the fraction of scores that got a gradient, the score spread of
positives and negatives and, for a loss with score calibration, its learned map ``(a, b)``
(text log, ``scalars.json``, TensorBoard)::

    Iter(train) [20/800] ... roi_head.bbox_head/ap_map: 0.3120  roi_head.bbox_head/ap_apc: 0.2051
    roi_head.bbox_head/grad_frac: 0.3571  roi_head.bbox_head/pos_mean: 0.4410 ...

It also warns, once per loss, when the ranked logits drift away (see
:data:`LOGIT_DRIFT_LIMIT`): a ranking loss does not hold the logits' level, so a head whose
gradient does not either (the dense heads' balanced gradient without a score memory, in the
ATSS / FCOS twins) can push all of them up together, and then it does not train.

Use them in a config (``rambo_mmdet`` must be imported, e.g. through ``custom_imports``)::

    custom_hooks = [dict(type='NameRankingLossesHook'), dict(type='RankingLossStatsHook')]
"""
import math
import re
import warnings
from typing import Dict, List, Optional, Sequence

import torch
from mmengine.hooks import Hook, LoggerHook
from mmengine.model import is_model_wrapper
from mmdet.models.roi_heads.bbox_heads import BBoxHead
from mmdet.registry import HOOKS

from .models.losses.rambo_ap_loss import RaMBOAPLoss, name_ranking_losses

__all__ = ['NameRankingLossesHook', 'RankingLossStatsHook', 'calibration_keys',
           'cross_entropy_advice', 'ranking_loss_stat_prefixes', 'MEASURED_CROSS_ENTROPY']


@HOOKS.register_module()
class NameRankingLossesHook(Hook):
    """Set ``name`` of each ranking loss (``needs_all_samples``) to ``'<module path> (<type>)'``
    (see :func:`rambo_mmdet.models.losses.name_ranking_losses`) at ``before_run``; at
    ``before_train``, warn when a RoI box head's cross-entropy term is not the one measured
    better with the run's optimiser (:func:`cross_entropy_advice`; advice only).

    Cheap (one walk over the modules) and idempotent; a ``name`` set in the config is kept.
    """

    priority = 'VERY_HIGH'

    def before_run(self, runner) -> None:
        named = name_ranking_losses(runner.model)
        if named:
            runner.logger.info('ranking losses: ' + ', '.join(sorted(named.values())))

    def before_train(self, runner) -> None:
        """Warn when a box head's cross-entropy term is not the one measured better with the
        run's optimiser (:func:`cross_entropy_advice`; the optimiser is built by now)."""
        optimizer = getattr(getattr(runner, 'optim_wrapper', None), 'optimizer', None)
        for message in cross_entropy_advice(runner.model, optimizer):
            runner.logger.warning(message)


#: The cross-entropy term of ``RaMBOAPLoss`` in a RoI box head measured better with each
#: optimiser, and by how much (FashionDet Faster R-CNN twin, 1500 iterations, test mAP, paired
#: by seed; README "Modes"): with SGD the softmax term (28.9 vs 27.9), with AdamW the sigmoid
#: one (32.9 vs 32.0, two seeds of three). Adam is taken as AdamW; other optimisers: not measured.
MEASURED_CROSS_ENTROPY = {
    'SGD': ('softmax', '+1.0 +- 0.2 mAP over the sigmoid term, 3 seeds'),
    'AdamW': ('sigmoid', '+0.9 +- 1.1 mAP over the softmax term, 3 seeds'),
    'Adam': ('sigmoid', '+0.9 +- 1.1 mAP over the softmax term with AdamW, 3 seeds'),
}


def cross_entropy_advice(model, optimizer) -> List[str]:
    """One message per RoI box head (mmdet ``BBoxHead``, more than one class) whose
    ``RaMBOAPLoss`` adds a cross-entropy term (mode ``'auto'``, ``bce_weight > 0``) of the kind
    that measured worse with ``optimizer``'s type (:data:`MEASURED_CROSS_ENTROPY`); none for an
    optimiser that was not measured. Advice only: the run is not changed. A model wrapper (DDP)
    is looked through."""
    kind = type(optimizer).__name__
    if kind not in MEASURED_CROSS_ENTROPY:
        return []
    better, margin = MEASURED_CROSS_ENTROPY[kind]
    messages = []
    for path, module in _unwrapped(model).named_modules():
        loss = getattr(module, 'loss_cls', None)
        if not (isinstance(module, BBoxHead) and isinstance(loss, RaMBOAPLoss)
                and loss.mode == 'auto' and loss.bce_weight > 0
                and getattr(module, 'num_classes', 0) > 1 and loss.cross_entropy != better):
            continue
        messages.append(
            f'{path}.loss_cls ({type(loss).__name__}): cross_entropy={loss.cross_entropy!r} with '
            f'{kind}; the FashionDet Faster R-CNN twin measured cross_entropy={better!r} '
            f'better with {kind} (README "Modes": {margin}). The run is unchanged; set '
            f'loss_cls.cross_entropy={better!r} (configs/_base_/rambo_losses.py: '
            f'rambo_box_head_loss_sgd for SGD, rambo_box_head_loss for AdamW) to follow it.')
    return messages


#: Statistics a ranking loss records (see ``RaMBOAPLoss._record_stats``), in log order.
STATS = ('ap_map', 'ap_apc', 'grad_frac', 'pos_mean', 'pos_std', 'neg_mean', 'neg_std')
#: :class:`RankingLossStatsHook` warns when the mean logit over the positives or over the
#: negatives of a loss's last call is larger than this in magnitude. The FashionDet twins' RaMBO
#: heads stay within about +-15 (dense heads' means about -3 / -5, the box head's about -1 / -9;
#: a box-head pilot with 4x the ranking weight dipped to -34 and recovered); the ATSS / FCOS
#: twins without the score memory passed 100 within 200-400 iterations and reached thousands
#: (README "Score memory").
LOGIT_DRIFT_LIMIT = 100.0


def _unwrapped(model):
    """``model`` without its model wrappers (DDP, ``MMDistributedDataParallel``)."""
    while is_model_wrapper(model):
        model = model.module
    return model


def calibration_keys(loss) -> Dict[str, str]:
    """``{key: buffer}`` of the score-calibration map of ``loss`` that the stats hook logs:
    ``calib_scale``, ``calib_bias`` (``calibration='global'``: the map itself), or
    ``calib_scale_mean``, ``calib_bias_mean`` (``'per_class'``: means over the classes); ``{}``
    for a loss without calibration (``calibration=None``, or no such attribute)."""
    if getattr(loss, 'calibration', None) is None or not hasattr(loss, 'calib_scale'):
        return {}
    suffix = '_mean' if loss.calib_scale.dim() > 0 else ''
    return {f'calib_scale{suffix}': 'calib_scale', f'calib_bias{suffix}': 'calib_bias'}


def ranking_loss_stat_prefixes(model) -> Dict[str, object]:
    """``{key prefix: loss}`` of the ranking losses of ``model`` that record statistics.

    The prefix is the loss's module path (as :func:`name_ranking_losses` names it) without a last
    component ``loss*`` (``roi_head.bbox_head.loss_cls`` -> ``roi_head.bbox_head``; the full path
    where that would be ambiguous, with ``loss`` spelled ``rank``), because mmengine's
    ``LogProcessor`` averages every key that contains ``loss`` over its window instead of logging
    the value of the last update (its ``mean_pattern``).
    """
    losses = {path: module for path, module in _unwrapped(model).named_modules()
              if path and getattr(module, 'needs_all_samples', False)
              and hasattr(module, 'record_stats')}
    parents = [path.rpartition('.')[0] for path in losses]
    prefixes = {}
    for (path, module), parent in zip(losses.items(), parents):
        if parent and path.rpartition('.')[2].startswith('loss') and parents.count(parent) == 1:
            prefix = parent
        else:
            prefix = path
        prefixes[re.sub('loss', 'rank', prefix)] = module
    return prefixes


@HOOKS.register_module()
class RankingLossStatsHook(Hook):
    """Log what each ranking loss of the model sees, at the logger interval.

    For every ranking loss that records statistics (``RaMBOAPLoss``; found like
    :func:`name_ranking_losses`, a model wrapper looked through), on the iterations that are
    logged, the hook sets ``loss.record_stats`` before the iteration, and after it puts into the
    message hub as ``train/<prefix>/<stat>`` (prefix: see :func:`ranking_loss_stat_prefixes`):

    - ``ap_map``, ``ap_apc``: training AP of each term, ``1 - L_mAP`` (mean over the classes
      with positives, score memory included) and ``1 - L_APC`` (interclass), of the last call;
    - ``grad_frac``: fraction of the live scores (valid rows x classes) whose gradient was
      non-zero in that iteration's backward (0: the head does not learn from the loss);
    - ``pos_mean``, ``pos_std``, ``neg_mean``, ``neg_std``: mean and std of the ranked scores
      (logits) of the positive and of the negative entries;
    - ``calib_scale``, ``calib_bias``: the loss's score-calibration map ``(a, b)`` of
      ``sigmoid(a * logit + b)`` after the iteration (``calibration='global'``); with
      ``'per_class'`` their means over the classes, ``calib_scale_mean``, ``calib_bias_mean``.
      Nothing for a loss with ``calibration=None`` (see :func:`calibration_keys`).

    mmengine's ``LogProcessor`` takes every ``train/`` scalar into the log line, ``scalars.json``
    and the visualiser backends (TensorBoard) with the value of its last update. Values that are
    undefined in that iteration (no positive in the batch: ``ap_apc``, ``pos_*``) are skipped.

    Cost: only the logged iterations record (one extra ranking of the scores for ``ap_apc`` and a
    few passes over them); the floats, the calibration map's included, are read once per
    interval (one host sync per loss).

    Args:
        interval (int, optional): record every ``interval`` iterations. Default: the interval of
            the runner's ``LoggerHook``, and exactly the iterations it logs (end of epoch
            included), so every log line carries the statistics of its own iteration.
        stats (sequence of str): which statistics to log (default: all of :data:`STATS`).
        calibration (bool): also log the calibration map of the losses that have one
            (default True).
    """

    priority = 'NORMAL'  # after_train_iter before the LoggerHook's (BELOW_NORMAL)

    def __init__(self, interval: Optional[int] = None, stats: Sequence[str] = STATS,
                 calibration: bool = True) -> None:
        if interval is not None and (not isinstance(interval, int) or interval < 1):
            raise ValueError(f'RankingLossStatsHook: interval must be a positive int or None, '
                             f'got {interval!r}')
        unknown = sorted(set(stats) - set(STATS))
        if unknown:
            raise ValueError(f'RankingLossStatsHook: unknown stats {unknown}; choose from {STATS}')
        self.interval = interval
        self.stats = tuple(stats)
        self.calibration = bool(calibration)
        self._losses: Dict[str, object] = {}
        self._logger_hook: Optional[LoggerHook] = None
        self._recording = False
        self._drift_warned: set = set()

    def before_run(self, runner) -> None:
        self._losses = ranking_loss_stat_prefixes(runner.model)
        self._logger_hook = next((h for h in runner.hooks if isinstance(h, LoggerHook)), None)
        if self.interval is None and self._logger_hook is None:
            raise ValueError('RankingLossStatsHook: the runner has no LoggerHook; give the hook '
                             'an interval')
        if self._losses:
            runner.logger.info('RankingLossStatsHook: logging ' + ', '.join(
                f'{prefix}/{{{",".join(self.stats + tuple(self._calibration_keys(loss)))}}}'
                for prefix, loss in self._losses.items()))
        else:
            runner.logger.warning('RankingLossStatsHook: the model has no ranking loss that '
                                  'records statistics; nothing will be logged')

    def _calibration_keys(self, loss) -> Dict[str, str]:
        return calibration_keys(loss) if self.calibration else {}

    def _logs_this_iter(self, runner, batch_idx: int) -> bool:
        if self.interval is not None:
            return self.every_n_inner_iters(batch_idx, self.interval)
        hook = self._logger_hook  # the same test as LoggerHook.after_train_iter
        return self.every_n_inner_iters(batch_idx, hook.interval) or (
            self.end_of_epoch(runner.train_dataloader, batch_idx)
            and (not hook.ignore_last or len(runner.train_dataloader) <= hook.interval))

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._recording = bool(self._losses) and self._logs_this_iter(runner, batch_idx)
        for loss in self._losses.values():
            loss.record_stats, loss.stats = self._recording, None

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not self._recording:
            return
        for prefix, loss in self._losses.items():
            recorded = loss.stats or {}
            names = [name for name in self.stats if name in recorded]
            tensors = [recorded[name].float() for name in names]
            loss.record_stats, loss.stats = False, None
            for key, buffer in self._calibration_keys(loss).items():  # the map after the step
                names.append(key)
                tensors.append(getattr(loss, buffer).detach().float().mean())
            if not names:
                continue
            # one host transfer per loss, once per interval
            values = torch.stack(tensors).tolist()
            for name, value in zip(names, values):
                if math.isfinite(value):
                    runner.message_hub.update_scalar(f'train/{prefix}/{name}', value)
            self._check_drift(runner, prefix, loss, dict(zip(names, values)))
        self._recording = False

    def _check_drift(self, runner, prefix: str, loss, values: Dict[str, float]) -> None:
        """Warn once per loss when the mean logit of its positives or of its negatives is
        beyond :data:`LOGIT_DRIFT_LIMIT` (through ``runner.logger``, else ``warnings.warn``)."""
        means = {key: values[key] for key in ('pos_mean', 'neg_mean')
                 if key in values and math.isfinite(values[key])}
        if prefix in self._drift_warned or not any(
                abs(value) > LOGIT_DRIFT_LIMIT for value in means.values()):
            return
        self._drift_warned.add(prefix)
        found = ' and '.join(
            f'{value:.4g} over the {"positives" if key == "pos_mean" else "negatives"}'
            for key, value in means.items())
        message = (f'RankingLossStatsHook: the logits that {getattr(loss, "name", prefix)} '
                   f'ranks drifted to a mean of {found} (beyond +-{LOGIT_DRIFT_LIMIT:g}). A '
                   f"ranking loss does not hold the logits' level, and the head is probably not "
                   f'learning; with the balanced gradient (dense heads) keep the score memory '
                   f"(memory_batches > 0; the ATSS / FCOS heads' shipped loss has 7) or add a "
                   f'pointwise term (focal_weight > 0). See README.md, "Score memory".')
        logger = getattr(runner, 'logger', None)
        if logger is not None:
            logger.warning(message)
        else:
            warnings.warn(message, RuntimeWarning, stacklevel=2)

    def after_train(self, runner) -> None:
        for loss in self._losses.values():
            loss.record_stats, loss.stats = False, None
