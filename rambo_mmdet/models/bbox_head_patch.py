"""The RoI box head calls a ranking loss on every process, also with zero RoIs.

mmdet's ``BBoxHead.loss`` skips ``loss_cls`` when ``cls_score`` is empty, i.e. when no RoI was
sampled in any image of this process's batch. For a per-element loss that is harmless. A ranking
loss that ranks the global batch under data parallelism (``RaMBOAPLoss``'s ``global_batch``) is
a collective: every process must call it once per step, so the other processes would wait for the
skipping one in the gather until the process-group timeout, or pair its next collective with the
wrong one (a desynchronised step).

:func:`apply` (run once by ``import rambo_mmdet``; idempotent) wraps ``BBoxHead.loss`` so that,
when ``cls_score`` is empty and ``loss_cls`` is a ranking loss (``needs_all_samples``), the loss
is called anyway on the ``[0, C]`` scores (with ``avg_factor=1``, mmdet's value for an empty
batch): the process takes part in the gather with zero rows, gets the global loss value, and its
classifier receives a zero gradient (so DDP also sees every parameter used). Its log then has the
same keys as the others (``loss_cls``, ``acc``). Any other loss, and every non-empty batch, runs
mmdet's code unchanged. It covers every head that inherits ``BBoxHead.loss`` (``BBoxHead``,
``Shared2FCBBoxHead``, ``Shared4Conv1FCBBoxHead``, the heads of Cascade R-CNN); heads that
define their own ``loss`` (SABL, DII, multi-instance) are not changed.

The wrapper also tells a loss with a ``sampled_rows`` attribute (``RaMBOAPLoss``) that its rows
are RoIs, a bounded sample, so mode ``'auto'`` keeps the RoI-head regime in every call, also when
a batch's positive fraction drops below its 1/32 switch (few objects per image).
"""
import functools

from mmdet.models.losses import accuracy
from mmdet.models.roi_heads.bbox_heads import BBoxHead

from .dense_heads.ranking_head import declare_row_sampling, is_ranking_loss

__all__ = ['apply']

_MARK = '__rambo_calls_ranking_loss_on_empty_batches__'


def apply() -> None:
    """Wrap ``BBoxHead.loss`` once (see the module docstring); later calls do nothing."""
    original = BBoxHead.loss
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def loss(self, cls_score, bbox_pred, rois, labels, label_weights, bbox_targets, bbox_weights,
             reduction_override=None):
        declare_row_sampling(self.loss_cls, True)  # RoIs: a bounded sample of rows
        losses = original(self, cls_score, bbox_pred, rois, labels, label_weights, bbox_targets,
                          bbox_weights, reduction_override=reduction_override)
        if cls_score is None or cls_score.numel() or not is_ranking_loss(self.loss_cls):
            return losses
        ranked = self.loss_cls(cls_score, labels, label_weights, avg_factor=1.0,
                               reduction_override=reduction_override)
        cls_losses = dict(ranked) if isinstance(ranked, dict) else dict(loss_cls=ranked)
        if self.custom_activation:
            cls_losses.update(self.loss_cls.get_accuracy(cls_score, labels))
        else:
            cls_losses['acc'] = accuracy(cls_score, labels)
        return {**cls_losses, **losses}  # mmdet's key order: classification first

    setattr(loss, _MARK, True)
    BBoxHead.loss = loss
