# The RaMBO classification losses of every shipped config, stated once. A config uses them with
#   _base_ = [..., '<path to>/_base_/rambo_losses.py']
#   model = dict(roi_head=dict(bbox_head=dict(loss_cls={{_base_.rambo_box_head_loss}})))
# (mmengine substitutes the dict when the config is read; `_delete_=True` drops the stock
# cross-entropy / focal keys of the base config). Change the loss here, once.
#
# mode 'auto' (RaMBOAPLoss's default) differs from the paper (mode='paper': lambda 0.5, margin
# 0.15, the paper's gradient everywhere) in dense heads (every anchor ranked, ~0.1 % positives)
# and in heads whose rows are a bounded sample (RoI box heads; an RPN's sampled anchors), which
# the heads declare (RaMBOAPLoss.sampled_rows), measured on the FashionDet twins of
# configs/fashion/ (see README.md "Modes"):
# - dense heads: the paper's gradient, whose size shrinks with the positive fraction, is replaced
#   by the balanced one: positives and negatives each receive the class's share of the loss
#   (gain 1), each positive its own error's share (1 - precision_i) / P (as Rank & Sort / aLRP;
#   error_driven), the negatives in the paper's direction, with the paper's margin 0.15 (with
#   margin 0 the classifier's features at positive anchors die within ~150 iterations;
#   RetinaNet validation AP50 at 600 iterations 21.3 with it, 13.2 without, focal 14.8).
#   Sharing the positives' gradient by the negatives each one's blackbox perturbation crosses
#   (the paper's direction) favours the best-ranked positives; with SGD (mmdet's COCO
#   optimiser) at gain 1 that spread their logits and RetinaNet did not learn (validation mAP
#   1.0 at 1125 iterations, focal 13.9; the previous default needed gain 0.25, on par with
#   focal). Error-driven shares train with SGD and AdamW and lead focal with both
#   (RetinaNet twin, 4500 iterations, 3 seeds each; README "Modes", "Quality");
# - RoI box heads (25 % positives; and sampled RPN anchors) keep the paper's gradient (the balanced one made them diverge)
#   with margin 0: from a fresh classifier (logits within a few hundredths) the margin 0.15 puts
#   every positive out of reach of the paper's perturbation (Faster R-CNN mAP at 600 iterations
#   11.0 with it, 19.5 without, cross-entropy 21.1);
# - and in those calls 'auto' adds bce_weight 0.5 x mmdet's sigmoid cross-entropy of the same
#   logits (not in the paper): the blackbox gradient reaches only 1-3 % of a box head's scores,
#   the cross-entropy gives all of them one (the shared fc layers also carry the box
#   regression). Faster R-CNN at 600 iterations, mAP / AP50: ranking alone 19.5 / 34.8, with the
#   term 22.3 / 38.2, the sigmoid cross-entropy alone 21.1 / 37.0, softmax cross-entropy
#   21.1 / 36.7; 1500 iterations, 3 seeds, test split: AP50 +2.3 +- 0.7 over softmax
#   cross-entropy (ranking alone: -2.4 +- 1.4; README "Quality"). bce_weight=0 turns it off.
#
# calibration='global' (RaMBOAPLoss's default, stated here so it is visible): the loss also
# learns p = sigmoid(a * logit + b), a > 0, one (a, b) for all classes, by logistic regression
# (binary cross-entropy) on the *detached* logits of every training call, so the test-time scores
# are probabilities (that a box is a positive of its class) instead of the ~0.4-0.65 level that
# an AP loss leaves them at. (a, b) are buffers saved in the checkpoint and updated by the loss
# itself (no optimizer, weight decay or gradient clipping involved); no gradient reaches the
# network, so training is unchanged, and one map for all classes keeps the order of every pair
# of scores, so NMS, the top-k and max_per_img keep the same boxes and AP is unchanged.
# Turn it off with calibration=None (scores = sigmoid(logit) as before); a checkpoint trained
# without it loads with the identity map (fit one afterwards with tools/calibrate.py).

# RoI box heads (Faster R-CNN and relatives): the paper's score memory of 7 batches
rambo_box_head_loss = dict(
    _delete_=True,
    type='RaMBOAPLoss',
    use_sigmoid=True,
    mode='auto',
    memory_batches=7,  # score memory tau, in batches (paper: 7)
    interclass_weight=1 / 3,  # beta, weight of the inter-class ranking (paper: 1/3)
    score_activation='logits',
    loss_weight=1.0,
    calibration='global')  # probabilities at test time (see above); None: off

# RoI box heads trained with SGD (mmdet's COCO / VOC recipe, which the shipped
# configs/faster_rcnn_rambo*.py inherit): the same loss with the cross-entropy term as mmdet's
# softmax cross-entropy of a stock box head (the logits and a background logit held at 0)
# instead of the sigmoid one. Measured on the FashionDet Faster R-CNN twin, 1500 iterations,
# seeds 0-2, test mAP / AP50 (README "Quality"): with SGD (lr 0.02) cross-entropy 28.0 / 47.0,
# this loss 28.9 / 48.1 (paired delta +0.9 +- 0.2 / +1.0 +- 0.8), the sigmoid term 27.9 / 47.1
# (on par with cross-entropy); with AdamW not better: the sigmoid term 32.9 / 51.8, softmax
# 32.0 / 50.6 (paired delta -0.9 +- 1.1 mAP; cross-entropy 31.3 / 49.5). With one class (an RPN)
# the two terms are identical. NameRankingLossesHook warns when a box head's term does not
# match the run's optimiser this way.
rambo_box_head_loss_sgd = dict(rambo_box_head_loss, cross_entropy='softmax')

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
    loss_weight=1.0,
    calibration='global',
    # fitted on the head's training detections (after NMS) rather than on the anchors it ranks:
    # whether an anchor is a positive is a much rarer event than whether a detection is correct
    calibration_source='detections')

# Centerness heads (RaMBOATSSHead, RaMBOFCOSHead): the dense-head loss with the paper's score
# memory (tau 7) and the map fitted on the ranked rows. The heads tell the loss that they rank
# every anchor / point (RaMBOAPLoss.sampled_rows False), so mode 'auto' takes the dense heads'
# balanced gradient in every call, although ATSS and FCOS label 2-5 % of their points positive
# here (RetinaNet ~0.3 %), above the 1/32 at which an undeclared head's calls switch to the
# RoI-head regime: 3 seeds each, 4500 iterations, test mAP ATSS 33.5 +- 0.5 and FCOS 30.8 +-
# 0.6 declared vs 32.9 +- 0.4 and 29.3 +- 0.5 switching per call (focal 29.3, 26.5; ahead of
# the per-call switch on every seed; README "Quality"); forcing the RoI-head regime did not
# train ATSS (validation mAP 6.1 at 2250 iterations, 21.8 switching). The memory was measured
# with the per-call switch: ATSS 32.9 +- 0.4 with it vs 31.7 +- 0.3 without, FCOS 29.3 +- 0.5 vs
# 26.7 +- 0.4 (results/quality_{atss,fcos}/memory_ablation.md). With the balanced gradient in
# every call the memory is what holds the logits' level: without it both twins' logits drifted up
# together (seed 0, mean over positives / negatives 3400-4100 / 800-900 at iteration 1000, where
# tau 7 keeps them near -4 / -5) and they did not train (README "Quality"): a ranking does not see a
# common shift of the logits, while the remembered scores of the last batches are a fixed
# reference that the current ones are ranked against. The map: these heads score a
# detection p x sigmoid(centerness); the map makes the class logit a class probability p, as a
# focal loss's sigmoid is, before the centerness multiplies it.
# Ranking the raw sigmoid(logit) x centerness instead (an AP-trained logit's scale is arbitrary)
# cost the ATSS twin 1.6 +- 0.2 mAP / 3.3 +- 0.4 AP50 (3 seeds, the same weights scored both ways;
# results/quality_atss/calibration/scoring.md, README "Quality").
rambo_centerness_head_loss = dict(rambo_dense_head_loss, memory_batches=7,
                                  calibration_source='ranked_rows')

# Training signals of every ranking loss in the model, logged at the logger interval like a loss
# (text log, scalars.json, TensorBoard): training AP of each term (ap_map, ap_apc), the fraction
# of scores with a non-zero gradient (grad_frac), and the logit spread of positives and negatives
# (pos_mean/std, neg_mean/std), plus the learned calibration map (calib_scale, calib_bias; their
# class means with 'per_class'). NameRankingLossesHook names each loss after its module path in
# error messages. Recording costs ~1.3-1.4x one loss call on the logged iterations only (~2 % of
# the loss time at interval 20). A config that also inherits custom_hooks from another base must
# merge the two lists itself (mmengine refuses duplicate keys among sibling bases).
custom_hooks = [dict(type='NameRankingLossesHook'), dict(type='RankingLossStatsHook')]
