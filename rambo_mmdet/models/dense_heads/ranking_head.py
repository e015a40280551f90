"""What every dense head of this package does for a ranking classification loss.

:class:`RankingLossHeadMixin` is the common base of the package's dense-head mixins (it does not
change how the loss is called; :class:`~.all_levels_loss.AllLevelsClsLossMixin` and
:class:`~.joined_levels.JoinedLevelsClsLossMixin` do that):

* build-time checks: a ranking loss needs ``use_sigmoid=True`` in the loss config;
* score calibration on detections (``RaMBOAPLoss(calibration_source='detections')``): on its
  training calls the head runs its own test-time post-processing on the detached outputs and
  passes the detections, with whether each is correct, to the loss, which fits its logit map.
  Heads whose detection score multiplies the class probability by a quality factor
  (:attr:`RankingLossHeadMixin.score_has_factor`: FCOS, ATSS score ``p x sigmoid(centerness)``)
  refuse that source: there the map must turn the class logit into a class probability
  (``'ranked_rows'``), which the factor then multiplies, as with a focal loss's sigmoid.
"""
import copy
from typing import List, Optional

import torch
from mmdet.structures.bbox import get_box_tensor
from mmdet.utils import InstanceList
from torch import Tensor, nn

from ...calibration import match_detections

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
    """Mixin (first base) for mmdet dense heads trained with a ranking ``loss_cls``.

    Heads that use it without a score factor call :meth:`_calibrate_if_due` at the end of their
    ``loss_by_feat``.
    """

    #: the head ranks all FPN levels of a batch in one ``loss_cls`` call (the tools warn about
    #: heads with a ranking loss that do not)
    ranks_all_levels = True
    #: the detection score is the class probability times a factor (centerness): the loss's map
    #: must be a class probability (``calibration_source='ranked_rows'``)
    score_has_factor = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._check_cls_loss()
        if (hasattr(self.loss_cls, 'update_calibration_from_detections')
                and not self.score_has_factor):
            self.loss_cls.detections_from_head = True

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

    def _calibrate_if_due(self, cls_scores: List[Tensor], bbox_preds: List[Tensor],
                          batch_gt_instances: InstanceList, batch_img_metas: List[dict]) -> None:
        """On training calls the loss says are due (every ``calibration_interval``-th), fit the
        loss's map on this batch's detections (:meth:`_calibrate_on_detections`)."""
        if (self.training and self._calibrates_on_detections()
                and self.loss_cls.calibration_due()):
            self._calibrate_on_detections(cls_scores, bbox_preds, batch_gt_instances,
                                          batch_img_metas)

    @torch.no_grad()
    def _calibrate_on_detections(self, cls_scores: List[Tensor], bbox_preds: List[Tensor],
                                 batch_gt_instances: InstanceList,
                                 batch_img_metas: List[dict]) -> None:
        """Score calibration on what the detector outputs (``calibration_source='detections'``).

        The head's test-time post-processing (its ``test_cfg``: ``nms_pre``, NMS,
        ``max_per_img``; ``score_thr`` 0) runs on this batch's detached outputs with the raw
        sigmoid scores; each detection is correct when it matches a same-class ground-truth box
        at IoU >= 0.5 (greedily by score), and the loss fits its logit map to that.
        An anchor's own label says whether the anchor is a positive, which for the many anchors
        around an object is a different (and much rarer) event than a detection after NMS being
        correct.
        """
        cfg = copy.deepcopy(self.test_cfg)
        cfg['score_thr'] = 0.0
        with self.loss_cls.identity_calibration():
            results = self.predict_by_feat(
                [score.detach() for score in cls_scores], [pred.detach() for pred in bbox_preds],
                batch_img_metas=batch_img_metas, cfg=cfg, rescale=False)
        logits, labels, correct = [], [], []
        for result, gt in zip(results, batch_gt_instances):
            gt_boxes = get_box_tensor(gt.bboxes)
            correct.append(match_detections(result.bboxes, result.labels, result.scores,
                                            gt_boxes, gt.labels).to(result.scores.device))
            logits.append(torch.logit(result.scores.double(), eps=1e-12))
            labels.append(result.labels)
        self.loss_cls.update_calibration_from_detections(torch.cat(logits), torch.cat(labels),
                                                         torch.cat(correct))
