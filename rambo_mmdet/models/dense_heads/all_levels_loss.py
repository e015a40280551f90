"""One classification-loss call for all anchors of all FPN levels and all images of a batch.

mmdet's ``AnchorHead.loss_by_feat`` calls the classification loss once per FPN level
(``multi_apply(self.loss_by_feat_single, ...)``). A per-element loss (focal, cross-entropy) does
not care: the per-level sums add up to the sum over the batch. A ranking loss such as
``RaMBOAPLoss`` does care: called per level it ranks the anchors of each level separately, so it
optimises the AP of five separate rankings instead of the AP of the one ranking that the
detector's output is evaluated on (all levels together, after NMS).

:class:`AllLevelsClsLossMixin` replaces ``loss_by_feat`` of an ``AnchorHead`` subclass by one
that concatenates the scores, labels and label weights of all levels and all images and calls
``loss_cls`` once. The target assignment (``get_anchors``/``get_targets``), the box regression
loss and its ``avg_factor`` are the stock head's; with a per-element loss the result equals the
stock head's sum over levels.

Shapes, with ``B`` images, ``L`` levels, ``A`` anchors per location, ``C = cls_out_channels``,
``n_l = H_l * W_l * A`` anchors on level ``l`` and ``n = sum_l n_l``:

* ``cls_scores[l]``: ``[B, A * C, H_l, W_l]`` -> flattened ``[B * n, C]``
* ``labels_list[l]`` / ``label_weights_list[l]``: ``[B, n_l]`` -> ``[B * n]``
* ``bbox_preds[l]``: ``[B, A * E, H_l, W_l]`` (``E = bbox_coder.encode_size``) -> ``[B * n, E]``
* ``bbox_targets_list[l]`` / ``bbox_weights_list[l]``: ``[B, n_l, D]`` -> ``[B * n, D]``

Rows are image-major, then level, then location, then anchor, identically for every tensor.
"""
import copy
from typing import Dict, List, Sequence

import torch
from mmdet.structures.bbox import cat_boxes, get_box_tensor, stack_boxes
from mmdet.utils import InstanceList, OptInstanceList
from torch import Tensor, nn

from ...calibration import match_detections
from .ranking_head import RankingLossHeadMixin, is_ranking_loss

__all__ = ['AllLevelsClsLossMixin', 'is_ranking_loss', 'find_per_level_ranking_heads',
           'find_softmax_ranking_heads']


def _flatten_levels(per_level: Sequence[Tensor], channels: int) -> Tensor:
    """``[B, A * channels, H_l, W_l]`` per level -> ``[B * n, channels]`` (image-major rows)."""
    num_imgs = per_level[0].size(0)
    flat = [x.permute(0, 2, 3, 1).reshape(num_imgs, -1, channels) for x in per_level]
    return torch.cat(flat, dim=1).reshape(-1, channels)


def _concat_targets(per_level: Sequence[Tensor]) -> Tensor:
    """``[B, n_l, *rest]`` per level -> ``[B * n, *rest]`` (image-major rows)."""
    joined = torch.cat(list(per_level), dim=1)
    return joined.reshape(-1, *joined.shape[2:])


class AllLevelsClsLossMixin(RankingLossHeadMixin):
    """Mixin for ``AnchorHead`` subclasses: one ``loss_cls`` call over all levels and images.

    Use it as the *first* base: ``class MyHead(AllLevelsClsLossMixin, RetinaHead)``. It overrides
    ``loss_by_feat`` only; forward, target assignment and prediction are the stock head's.

    * Classification: ``loss_cls(cls_score [B*n, C], labels [B*n], label_weights [B*n],
      avg_factor=avg_factor)``. Anchors that the assigner ignores (IoU between the negative and
      the positive threshold), anchors outside the image border and, with a sampler, anchors not
      sampled have label weight 0. A ranking loss leaves them out of the ranking; a per-element
      loss gives them weight 0 as in the stock head.
    * Regression: ``loss_bbox`` on the same concatenated rows with the stock ``avg_factor``
      (decoding the predictions first when ``reg_decoded_bbox``). For the usual reductions
      (``mean`` with ``avg_factor``) this equals the stock head's sum of per-level losses.

    The returned dict has one scalar per key instead of the stock head's list of per-level
    values; the logged totals are the same. The key names come from :attr:`loss_keys`
    (``RPNHead`` uses ``loss_rpn_cls``/``loss_rpn_bbox``).

    Build-time checks (:meth:`_check_cls_loss`): a ranking loss (one with
    ``needs_all_samples = True``) needs ``use_sigmoid=True`` *in the loss config*, because the
    head reads ``loss_cls['use_sigmoid']`` from the config dict (default False) to choose between
    ``C = num_classes`` sigmoid channels and ``C = num_classes + 1`` softmax channels.
    """

    #: names of the (classification, regression) entries of the returned loss dict
    loss_keys = ('loss_cls', 'loss_bbox')

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if hasattr(self.loss_cls, 'update_calibration_from_detections'):
            self.loss_cls.detections_from_head = True

    def loss_by_feat(self,
                     cls_scores: List[Tensor],
                     bbox_preds: List[Tensor],
                     batch_gt_instances: InstanceList,
                     batch_img_metas: List[dict],
                     batch_gt_instances_ignore: OptInstanceList = None) -> Dict[str, Tensor]:
        """Losses of the head, with one classification-loss call for the whole batch.

        Args:
            cls_scores (list[Tensor]): per level, ``[B, A * C, H_l, W_l]``.
            bbox_preds (list[Tensor]): per level, ``[B, A * E, H_l, W_l]``.
            batch_gt_instances (list[InstanceData]): per image, ``bboxes`` ``[G_i, 4]`` and
                ``labels`` ``[G_i]``.
            batch_img_metas (list[dict]): per image meta information.
            batch_gt_instances_ignore (list[InstanceData], optional): boxes to ignore.

        Returns:
            dict[str, Tensor]: ``{loss_keys[0]: scalar, loss_keys[1]: scalar}``.
        """
        featmap_sizes = [featmap.size()[-2:] for featmap in cls_scores]
        assert len(featmap_sizes) == self.prior_generator.num_levels
        anchor_list, valid_flag_list = self.get_anchors(
            featmap_sizes, batch_img_metas, device=cls_scores[0].device)
        targets = self.get_targets(
            anchor_list,
            valid_flag_list,
            batch_gt_instances,
            batch_img_metas,
            batch_gt_instances_ignore=batch_gt_instances_ignore)
        (labels_list, label_weights_list, bbox_targets_list, bbox_weights_list,
         avg_factor) = targets[:5]

        cls_score = _flatten_levels(cls_scores, self.cls_out_channels)
        labels = _concat_targets(labels_list)
        label_weights = _concat_targets(label_weights_list)
        loss_cls = self.loss_cls(cls_score, labels, label_weights, avg_factor=avg_factor)

        bbox_pred = _flatten_levels(bbox_preds, self.bbox_coder.encode_size)
        bbox_targets = _concat_targets(bbox_targets_list)
        bbox_weights = _concat_targets(bbox_weights_list)
        if self.reg_decoded_bbox:
            # per image: all levels' anchors [n, 4] -> [B, n, 4] -> [B * n, 4]
            anchors = stack_boxes([cat_boxes(per_img) for per_img in anchor_list])
            anchors = anchors.reshape(-1, anchors.size(-1))
            bbox_pred = get_box_tensor(self.bbox_coder.decode(anchors, bbox_pred))
        loss_bbox = self.loss_bbox(bbox_pred, bbox_targets, bbox_weights, avg_factor=avg_factor)

        if (self.training and self._calibrates_on_detections()
                and self.loss_cls.calibration_due()):
            self._calibrate_on_detections(cls_scores, bbox_preds, batch_gt_instances,
                                          batch_img_metas)

        cls_key, bbox_key = self.loss_keys
        return {cls_key: loss_cls, bbox_key: loss_bbox}

    @torch.no_grad()
    def _calibrate_on_detections(self, cls_scores: List[Tensor], bbox_preds: List[Tensor],
                                 batch_gt_instances: InstanceList,
                                 batch_img_metas: List[dict]) -> None:
        """Score calibration on what the detector outputs (``calibration_source='detections'``).

        The head's test-time post-processing (its ``test_cfg``: ``nms_pre``, NMS,
        ``max_per_img``; ``score_thr`` 0) runs on this batch's detached outputs with the raw
        sigmoid scores; each detection is correct when it matches a same-class ground-truth box
        at IoU >= 0.5 (greedily by score), and the loss fits its logit map to that. An anchor's
        own label says whether the anchor is a positive, which for the many anchors around an
        object is a different (and much rarer) event than a detection after NMS being correct.
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


def find_per_level_ranking_heads(model: nn.Module) -> List[str]:
    """Names of submodules of ``model`` that call a ranking loss once per FPN level.

    That is: heads with mmdet's per-level ``loss_by_feat_single`` (``AnchorHead`` and most of its
    subclasses, ``ATSSHead``, ``GFLHead``, ...) whose ``loss_cls`` has ``needs_all_samples`` and
    that do not rank all levels in one call (``ranks_all_levels``, set by the package's heads:
    :class:`AllLevelsClsLossMixin`, ``JoinedLevelsClsLossMixin``). Such a configuration works,
    but each level is ranked separately (a weaker, per-level AP); the tools log a warning.
    """
    found = []
    for name, module in model.named_modules():
        if (hasattr(module, 'loss_by_feat_single')
                and not getattr(module, 'ranks_all_levels', False)
                and is_ranking_loss(getattr(module, 'loss_cls', None))):
            found.append(name or type(module).__name__)
    return found


def find_softmax_ranking_heads(model: nn.Module) -> List[str]:
    """Names of dense heads of ``model`` that feed a ranking loss softmax-style channels.

    A dense head reads ``use_sigmoid`` from its ``loss_cls`` *config* (default False); when it is
    missing there, a stock head builds ``num_classes + 1`` channels and the ranking loss would
    take the background channel for a class. :class:`AllLevelsClsLossMixin` heads refuse this at
    build time; for stock heads the tools check it with this function before training.
    """
    return [name or type(module).__name__ for name, module in model.named_modules()
            if getattr(module, 'use_sigmoid_cls', True) is False
            and is_ranking_loss(getattr(module, 'loss_cls', None))]
