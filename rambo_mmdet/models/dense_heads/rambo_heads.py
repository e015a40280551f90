"""Dense heads whose classification loss sees all anchors of all levels and images at once.

Each is the stock mmdet head plus a mixin; layers, initialisation, target assignment and the box
losses do not change. Use them with a ranking loss::

    bbox_head=dict(type='RaMBORetinaHead', ...,
                   loss_cls=dict(type='RaMBOAPLoss', use_sigmoid=True))

``RaMBORetinaHead`` / ``RaMBORPNHead``: :class:`AllLevelsClsLossMixin`; ``RaMBOATSSHead``:
:class:`JoinedLevelsClsLossMixin`; ``RaMBOFCOSHead``: the stock FCOS loss (already one call).
All four share :class:`RankingLossHeadMixin` (build checks; telling the loss whether their rows
are a bounded sample); the first two also fit the loss's map on their training detections.
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
    (:class:`JoinedLevelsClsLossMixin`), and the head tells the loss that it ranks every anchor
    (its ``PseudoSampler``: the balanced gradient in every call). Prediction is the stock
    head's: ``p x sigmoid(centerness)``, with ``p`` the loss's calibrated class probability (its
    map fitted on the ranked rows, ``calibration_source='ranked_rows'``; ``'detections'`` is
    refused).

    Losses: ``loss_cls`` (scalar), ``loss_bbox`` and ``loss_centerness`` (per level, stock).
    """

    score_has_factor = True


@MODELS.register_module()
class RaMBOFCOSHead(RankingLossHeadMixin, FCOSHead):
    """``FCOSHead`` (whose loss already ranks all points of all levels and images in one call)
    with the package's checks: a ranking loss needs ``use_sigmoid=True`` and a class-probability
    map (``calibration_source='ranked_rows'``, which the centerness multiplies); and a state dict
    without version metadata loads the loss's calibration buffers (see
    :meth:`_load_from_state_dict`). It tells the loss that it ranks every point
    (:attr:`rows_sampled` False: mode ``'auto'`` takes the balanced gradient in every call; the
    stock head does not say, and its calls with more than 1/32 positives take the RoI-head
    regime). Otherwise training and prediction are the stock head's.

    Losses: the stock head's (``loss_cls``, ``loss_bbox``, ``loss_centerness``).
    """

    score_has_factor = True
    rows_sampled = False  # every point of every level is ranked (FCOS has no sampler)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        """mmdet's ``AnchorFreeHead`` renames, in a state dict without version metadata (e.g. a
        plain ``{key: tensor}`` copy), every key whose first part below the head ends in
        ``cls`` to ``conv_cls`` (old FCOS checkpoints' ``fcos_cls``); that would take the loss's
        calibration buffers (``loss_cls.calib_*``) for the classifier's and fail to load. The
        loss's keys are kept out of that renaming (restored before the loss loads them)."""
        if local_metadata.get('version') is not None:
            return super()._load_from_state_dict(state_dict, prefix, local_metadata, *args,
                                                 **kwargs)
        own = prefix + 'loss_cls.'
        kept = {key: state_dict.pop(key) for key in list(state_dict) if key.startswith(own)}
        try:
            super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)
        finally:
            state_dict.update(kept)
