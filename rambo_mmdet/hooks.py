"""mmengine hooks of rambo_mmdet.

:class:`NameRankingLossesHook` names every ranking loss of the model after its module path before
training starts, so that an error raised inside the loss says which head it belongs to::

    ValueError: roi_head.bbox_head.loss_cls (RaMBOAPLoss): cls_score contains 3 NaN/Inf value(s)...

Use it in a config (``rambo_mmdet`` must be imported, e.g. through ``custom_imports``)::

    custom_hooks = [dict(type='NameRankingLossesHook')]
"""
from mmengine.hooks import Hook
from mmdet.registry import HOOKS

from .models.losses.rambo_ap_loss import name_ranking_losses

__all__ = ['NameRankingLossesHook']


@HOOKS.register_module()
class NameRankingLossesHook(Hook):
    """Set ``name`` of each ranking loss (``needs_all_samples``) to ``'<module path> (<type>)'``
    (see :func:`rambo_mmdet.models.losses.name_ranking_losses`) at ``before_run``.

    Cheap (one walk over the modules) and idempotent; a ``name`` set in the config is kept.
    """

    priority = 'VERY_HIGH'

    def before_run(self, runner) -> None:
        named = name_ranking_losses(runner.model)
        if named:
            runner.logger.info('ranking losses: ' + ', '.join(sorted(named.values())))
