"""Dense heads whose classification loss sees all anchors of all levels and images at once.

Each is the stock mmdet head plus a mixin; layers, initialisation, target assignment and the box
losses do not change. Use them with a ranking loss::

    bbox_head=dict(type='RaMBORetinaHead', ...,
                   loss_cls=dict(type='RaMBOAPLoss', use_sigmoid=True))

``RaMBORetinaHead`` / ``RaMBORPNHead``: :class:`AllLevelsClsLossMixin`; ``RaMBOATSSHead``:
:class:`JoinedLevelsClsLossMixin`; ``RaMBOFCOSHead``: the stock FCOS loss (already one call)
plus the score calibration of :class:`RankingLossHeadMixin`, which all four share.
"""
from mmdet.models.dense_heads import ATSSHead, FCOSHead, RetinaHead, RPNHead
from mmdet.registry import MODELS

from .all_levels_loss import AllLevelsClsLossMixin
from .joined_levels import JoinedLevelsClsLossMixin
from .ranking_head import RankingLossHeadMixin

__all__ = ['RaMBORetinaHead', 'RaMBORPNHead', 'RaMBOATSSHead', 'RaMBOFCOSHead']


@MODELS.register_module()
class RaMBORetinaHead(AllLevelsClsLossMixin, RetinaHead):
    """``RetinaHead`` with one ``loss_cls`` call over all levels and images.

    Losses: ``loss_cls`` and ``loss_bbox`` (scalars).
    """


@MODELS.register_module()
class RaMBORPNHead(AllLevelsClsLossMixin, RPNHead):
    """``RPNHead`` with one ``loss_cls`` call over all levels and images.

    The RPN is class-agnostic (``C = 1``): a ranking loss ranks objectness over the anchors the
    sampler picked (label weight 1) in all images. Losses keep the RPN names ``loss_rpn_cls`` and
    ``loss_rpn_bbox`` (the stock ``RPNHead.loss_by_feat`` only renames the keys; the mixin's
    ``loss_by_feat`` replaces it and names them through ``loss_keys``).
    """

    loss_keys = ('loss_rpn_cls', 'loss_rpn_bbox')

    def _predict_by_feat_single(self, cls_score_list, *args, **kwargs):
        """The stock RPN prediction, on the loss's calibrated logits ``a * logit + b``.

        The stock head scores proposals by ``sigmoid(logit)`` in float32, which is exactly 1.0
        for every logit above ~17; an AP-trained objectness spreads its logits much further
        (measured: +-100 after 1500 iterations on FashionDet), so the best proposals would tie
        in its top-k and NMS. The map is monotone (order kept) and brings the logits to the
        probability scale (``RaMBOAPLoss`` ``calibration``); with ``calibration=None``, or a
        loss without the map, the logits go through unchanged.
        """
        calibrated = getattr(self.loss_cls, 'calibrated_logits', None)
        if calibrated is not None:
            cls_score_list = [calibrated(score) for score in cls_score_list]
        return super()._predict_by_feat_single(cls_score_list, *args, **kwargs)


@MODELS.register_module()
class RaMBOATSSHead(JoinedLevelsClsLossMixin, ATSSHead):
    """``ATSSHead`` with one ``loss_cls`` call over all levels and images.

    The stock loss code runs unchanged (ATSS assignment, GIoU on decoded boxes weighted by the
    centerness targets, centerness loss); only its per-level ``loss_cls`` calls become one call
    (:class:`JoinedLevelsClsLossMixin`). Scores are ``sigmoid(logit) x sigmoid(centerness)`` as in
    the stock head, with the loss's calibration map applied to them (fitted on the head's
    training detections with ``calibration_source='detections'``).

    Losses: ``loss_cls`` (scalar), ``loss_bbox`` and ``loss_centerness`` (per level, stock).
    """

    def loss_by_feat(self, cls_scores, bbox_preds, centernesses, batch_gt_instances,
                     batch_img_metas, batch_gt_instances_ignore=None) -> dict:
        losses = super().loss_by_feat(cls_scores, bbox_preds, centernesses, batch_gt_instances,
                                      batch_img_metas, batch_gt_instances_ignore)
        self._calibrate_if_due(cls_scores, bbox_preds, batch_gt_instances, batch_img_metas,
                               score_factors=centernesses)
        return losses


@MODELS.register_module()
class RaMBOFCOSHead(RankingLossHeadMixin, FCOSHead):
    """``FCOSHead`` (whose loss already ranks all points of all levels and images in one call)
    with the loss's score calibration: scores ``sigmoid(logit) x sigmoid(centerness)`` as in the
    stock head, through the loss's map fitted on the head's training detections
    (``calibration_source='detections'``). Use the stock ``FCOSHead`` with
    ``calibration=None`` for the same training without it.

    Losses: the stock head's (``loss_cls``, ``loss_bbox``, ``loss_centerness``).
    """

    def loss_by_feat(self, cls_scores, bbox_preds, centernesses, batch_gt_instances,
                     batch_img_metas, batch_gt_instances_ignore=None) -> dict:
        losses = super().loss_by_feat(cls_scores, bbox_preds, centernesses, batch_gt_instances,
                                      batch_img_metas, batch_gt_instances_ignore)
        self._calibrate_if_due(cls_scores, bbox_preds, batch_gt_instances, batch_img_metas,
                               score_factors=centernesses)
        return losses
