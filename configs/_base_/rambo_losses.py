# The RaMBO classification losses of every shipped config, stated once. A config uses them with
#   _base_ = [..., '<path to>/_base_/rambo_losses.py']
#   model = dict(roi_head=dict(bbox_head=dict(loss_cls={{_base_.rambo_box_head_loss}})))
# (mmengine substitutes the dict when the config is read; `_delete_=True` drops the stock
# cross-entropy / focal keys of the base config). Change the loss here, once.
#
# mode 'auto' (RaMBOAPLoss's default) differs from the paper (mode='paper': lambda 0.5, margin
# 0.15, the paper's gradient everywhere) in two ways, both measured on the FashionDet twins of
# configs/fashion/ (see README.md "Quality"):
# - margin 0: a fresh classifier starts with logits within a few hundredths; the margin 0.15 then
#   puts every positive below every negative by more than the blackbox perturbation moves them,
#   and the gradient is exactly zero;
# - where positives are rarer than 1/32 of the ranked rows (dense heads, ~0.1 % positive
#   anchors) the paper's gradient, whose size shrinks with the positive fraction, is replaced by
#   the balanced one (same direction, positives' total = 10 x their share of the loss); RoI box
#   heads (25 % positives) keep the paper's gradient (the balanced one made them diverge).

# RoI box heads (Faster R-CNN and relatives): the paper's score memory of 7 batches
rambo_box_head_loss = dict(
    _delete_=True,
    type='RaMBOAPLoss',
    use_sigmoid=True,
    mode='auto',
    memory_batches=7,  # score memory tau, in batches (paper: 7)
    interclass_weight=1 / 3,  # beta, weight of the inter-class ranking (paper: 1/3)
    score_activation='logits',
    loss_weight=1.0)

# Dense heads (RaMBORetinaHead): no score memory (paper: 7). A dense batch has plenty of
# positives, and 7 batches of stale hard negatives ranked with the current ones slowed learning
# (RetinaNet twin, 600 iterations: validation AP50 13.2 without, 9.6 with).
rambo_dense_head_loss = dict(
    _delete_=True,
    type='RaMBOAPLoss',
    use_sigmoid=True,  # required: the head reads it to get num_classes channels
    mode='auto',
    memory_batches=0,
    interclass_weight=1 / 3,
    score_activation='logits',
    loss_weight=1.0)

# Training signals of every ranking loss in the model, logged at the logger interval like a loss
# (text log, scalars.json, TensorBoard): training AP of each term (ap_map, ap_apc), the fraction
# of scores with a non-zero gradient (grad_frac), and the logit spread of positives and negatives
# (pos_mean/std, neg_mean/std). NameRankingLossesHook names each loss after its module path in
# error messages. Recording costs ~1.3-1.4x one loss call on the logged iterations only (~2 % of
# the loss time at interval 20). A config that also inherits custom_hooks from another base must
# merge the two lists itself (mmengine refuses duplicate keys among sibling bases).
custom_hooks = [dict(type='NameRankingLossesHook'), dict(type='RankingLossStatsHook')]
