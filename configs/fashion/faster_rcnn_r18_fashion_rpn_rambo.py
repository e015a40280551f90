# Faster R-CNN R18-FPN on FashionDet with RaMBO in the RPN's objectness (RaMBORPNHead) and the
# stock cross-entropy in the RoI box head: differs from faster_rcnn_r18_fashion_ce.py ONLY in
# rpn_head.type and rpn_head.loss_cls, for the proposal-recall comparison with the stock RPN
# (tools/eval_proposals.py). Measured (seed 0, 1500 iterations, results/quality/proposals.md):
# AR@100 / AR@1000 35.3 / 39.7 vs the stock RPN's 56.5 / 58.1 (3 seeds): RaMBO does not train
# an RPN as well as cross-entropy yet (README, "Known limitations").
# The RPN ranks the anchors its sampler picked (256 per image, up to 50 % positives, one class):
# mode 'auto' gives it the paper's gradient with margin 0, the paper's score memory and the
# sigmoid cross-entropy term, the RoI-head setting of configs/_base_/rambo_losses.py (the AR
# above is of a run before that term; with it the logits run away the same way, README).
_base_ = ['./faster_rcnn_r18_fashion_ce.py', '../_base_/rambo_losses.py']

model = dict(
    rpn_head=dict(type='RaMBORPNHead', loss_cls={{_base_.rambo_box_head_loss}}))
