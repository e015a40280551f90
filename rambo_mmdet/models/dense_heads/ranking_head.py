"""What every dense head of this package does for a ranking classification loss.

:class:`RankingLossHeadMixin` is the common base of the package's dense-head mixins (it does not
change how the loss is called; :class:`~.all_levels_loss.AllLevelsClsLossMixin` and
:class:`~.joined_levels.JoinedLevelsClsLossMixin` do that):

* build-time checks: a ranking loss needs ``use_sigmoid=True`` in the loss config;
* score calibration on detections (``RaMBOAPLoss(calibration_source='detections')``): on its
  training calls the head runs its own test-time post-processing on the detached outputs and
  passes the detections, with whether each is correct, to the loss, which fits its logit map;
* prediction with score factors (centerness heads: FCOS, ATSS score ``sigmoid(logit) x
  sigmoid(centerness)``): the map is applied to the detector's final scores (it is fitted on
  them), not to the classification logits.
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

    Heads that use it call :meth:`_calibrate_if_due` at the end of their ``loss_by_feat``.
    """

    #: the head ranks all FPN levels of a batch in one ``loss_cls`` call (the tools warn about
    #: heads with a ranking loss that do not)
    ranks_all_levels = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._check_cls_loss()
        if hasattr(self.loss_cls, 'update_calibration_from_detections'):
            self.loss_cls.detections_from_head = True

    def _check_cls_loss(self) -> None:
        """Raise ``ValueError`` at build time for a loss this head cannot use."""
        loss = self.loss_cls
        if is_ranking_loss(loss) and not self.use_sigmoid_cls:
            raise ValueError(
                f'{type(self).__name__}: loss_cls={type(loss).__name__} ranks per-class sigmoid '
                'scores, but the head was configured for softmax (use_sigmoid is False or missing '
                'in the loss_cls config; the head reads it from the config, not from the loss '
                'default). Set loss_cls=dict(type=..., use_sigmoid=True, ...).')

    # ------------------------------------------------------------------ calibration
    def _calibrates_on_detections(self) -> bool:
        loss = self.loss_cls
        return (getattr(loss, 'calibration', None) is not None
                and getattr(loss, 'calibration_source', None) == 'detections')

    def _calibrate_if_due(self, cls_scores: List[Tensor], bbox_preds: List[Tensor],
                          batch_gt_instances: InstanceList, batch_img_metas: List[dict],
                          score_factors: Optional[List[Tensor]] = None) -> None:
        """On training calls the loss says are due (every ``calibration_interval``-th), fit the
        loss's map on this batch's detections (:meth:`_calibrate_on_detections`)."""
        if (self.training and self._calibrates_on_detections()
                and self.loss_cls.calibration_due()):
            self._calibrate_on_detections(cls_scores, bbox_preds, batch_gt_instances,
                                          batch_img_metas, score_factors)

    @torch.no_grad()
    def _calibrate_on_detections(self, cls_scores: List[Tensor], bbox_preds: List[Tensor],
                                 batch_gt_instances: InstanceList, batch_img_metas: List[dict],
                                 score_factors: Optional[List[Tensor]] = None) -> None:
        """Score calibration on what the detector outputs (``calibration_source='detections'``).

        The head's test-time post-processing (its ``test_cfg``: ``nms_pre``, NMS,
        ``max_per_img``; ``score_thr`` 0) runs on this batch's detached outputs with the raw
        scores (``sigmoid(logit)``, times the score factors such as centerness where the head
        has them); each detection is correct when it matches a same-class ground-truth box at
        IoU >= 0.5 (greedily by score), and the loss fits its map of ``logit(score)`` to that.
        An anchor's own label says whether the anchor is a positive, which for the many anchors
        around an object is a different (and much rarer) event than a detection after NMS being
        correct.
        """
        cfg = copy.deepcopy(self.test_cfg)
        cfg['score_thr'] = 0.0
        factors = None if score_factors is None else [f.detach() for f in score_factors]
        with self.loss_cls.identity_calibration():
            results = self.predict_by_feat(
                [score.detach() for score in cls_scores], [pred.detach() for pred in bbox_preds],
                score_factors=factors, batch_img_metas=batch_img_metas, cfg=cfg, rescale=False)
        logits, labels, correct = [], [], []
        for result, gt in zip(results, batch_gt_instances):
            gt_boxes = get_box_tensor(gt.bboxes)
            correct.append(match_detections(result.bboxes, result.labels, result.scores,
                                            gt_boxes, gt.labels).to(result.scores.device))
            logits.append(torch.logit(result.scores.double(), eps=1e-12))
            labels.append(result.labels)
        self.loss_cls.update_calibration_from_detections(torch.cat(logits), torch.cat(labels),
                                                         torch.cat(correct))

    def _predict_by_feat_single(self, cls_score_list, bbox_pred_list, score_factor_list, *args,
                                **kwargs):
        """The stock prediction; with score factors, the loss's map goes on the final scores.

        Without score factors the loss's ``get_activation`` maps the logits (the stock path:
        ``RaMBOAPLoss`` declares ``custom_cls_channels``). With them (centerness heads) the
        detection score is ``sigmoid(logit) x factor``, so the stock path would multiply
        calibrated class probabilities by an uncalibrated factor; the map is instead fitted on
        ``logit(score)`` of the final detections (:meth:`_calibrate_on_detections`) and applied
        to them here (:meth:`RaMBOAPLoss.calibrated_probabilities`). The map is monotone: the
        same boxes, in the same order, as with raw scores (NMS included).
        """
        loss = self.loss_cls
        if (not score_factor_list or score_factor_list[0] is None
                or not hasattr(loss, 'calibrated_probabilities')):
            return super()._predict_by_feat_single(cls_score_list, bbox_pred_list,
                                                   score_factor_list, *args, **kwargs)
        with loss.identity_calibration():
            results = super()._predict_by_feat_single(cls_score_list, bbox_pred_list,
                                                      score_factor_list, *args, **kwargs)
        results.scores = loss.calibrated_probabilities(results.scores, results.labels)
        return results
