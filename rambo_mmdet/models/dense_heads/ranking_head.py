"""What every dense head of this package does for a ranking classification loss.

:class:`RankingLossHeadMixin` is the common base of the package's dense-head mixins (it does not
change how the loss is called; :class:`~.all_levels_loss.AllLevelsClsLossMixin` and
:class:`~.joined_levels.JoinedLevelsClsLossMixin` do that):

* build-time checks: a ranking loss needs ``use_sigmoid=True`` in the loss config; heads whose
  detection score multiplies the class probability by a quality factor
  (:attr:`RankingLossHeadMixin.score_has_factor`: FCOS, ATSS score ``p x sigmoid(centerness)``)
  refuse a map fitted on detections (``calibration_source='detections'``, which
  :class:`~.all_levels_loss.AllLevelsClsLossMixin` heads feed): there the map must turn the
  class logit into a class probability (``'ranked_rows'``), which the factor then multiplies, as
  with a focal loss's sigmoid;
* :attr:`RankingLossHeadMixin.ranks_all_levels`, which the tools' per-level warning reads;
* telling the loss whether the ranked rows are a bounded sample (``RaMBOAPLoss.sampled_rows``,
  which mode ``'auto'`` keys its gradient regime on): a sampler other than mmdet's
  ``PseudoSampler`` picks a bounded set of anchors (an RPN: the RoI-head regime); a
  ``PseudoSampler`` (RetinaNet, ATSS) or no sampler at all (:attr:`rows_sampled` False: FCOS)
  ranks every anchor or point (the dense regime).
"""
from typing import Optional

from mmdet.models.task_modules.samplers import PseudoSampler
from torch import nn

__all__ = ['RankingLossHeadMixin', 'is_ranking_loss', 'declare_row_sampling']


def is_ranking_loss(loss: Optional[nn.Module]) -> bool:
    """Whether ``loss`` must see all samples of a batch in one call (``needs_all_samples``)."""
    return bool(getattr(loss, 'needs_all_samples', False))


def declare_row_sampling(loss: Optional[nn.Module], sampled: bool) -> None:
    """Tell a loss with a ``sampled_rows`` attribute (``RaMBOAPLoss``) whether the head's rows
    are a bounded sample (RoIs, sampler-picked anchors) or every anchor."""
    if loss is not None and hasattr(loss, 'sampled_rows'):
        loss.sampled_rows = bool(sampled)


class RankingLossHeadMixin:
    """Mixin (first base) for mmdet dense heads trained with a ranking ``loss_cls``."""

    #: the head ranks all FPN levels of a batch in one ``loss_cls`` call (the tools warn about
    #: heads with a ranking loss that do not)
    ranks_all_levels = True
    #: the detection score is the class probability times a factor (centerness): the loss's map
    #: must be a class probability (``calibration_source='ranked_rows'``)
    score_has_factor = False
    #: whether the ranked rows are a bounded sample when the head has no sampler to tell
    #: (``None``: unknown; anchor heads build their sampler only with a train_cfg)
    rows_sampled: Optional[bool] = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._check_cls_loss()
        self._declare_row_sampling()

    def _declare_row_sampling(self) -> None:
        """Tell the loss (``RaMBOAPLoss.sampled_rows``) whether the ranked rows are a bounded
        sample: by the head's sampler where it has one, else by :attr:`rows_sampled`."""
        sampler = getattr(self, 'sampler', None)
        sampled = self.rows_sampled if sampler is None else \
            not isinstance(sampler, PseudoSampler)
        if sampled is not None:
            declare_row_sampling(self.loss_cls, sampled)

    def _check_cls_loss(self) -> None:
        """Raise ``ValueError`` at build time for a loss this head cannot use."""
        loss = self.loss_cls
        name = type(self).__name__
        if is_ranking_loss(loss) and not self.use_sigmoid_cls:
            raise ValueError(
                f'{name}: loss_cls={type(loss).__name__} ranks per-class sigmoid '
                'scores, but the head was configured for softmax (use_sigmoid is False or missing '
                'in the loss_cls config; the head reads it from the config, not from the loss '
                'default). Set loss_cls=dict(type=..., use_sigmoid=True, ...).')
        if self.score_has_factor and self._calibrates_on_detections():
            raise ValueError(
                f"{name}: calibration_source='detections' fits the map to final detection "
                'scores, but this head multiplies the class probability by its centerness '
                "after the map; use calibration_source='ranked_rows' (the map then gives the "
                'class probability that the centerness multiplies; '
                'configs/_base_/rambo_losses.py: rambo_centerness_head_loss)')

    # ------------------------------------------------------------------ calibration
    def _calibrates_on_detections(self) -> bool:
        loss = self.loss_cls
        return (getattr(loss, 'calibration', None) is not None
                and getattr(loss, 'calibration_source', None) == 'detections')
