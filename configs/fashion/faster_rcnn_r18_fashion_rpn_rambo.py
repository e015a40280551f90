# Faster R-CNN R18-FPN on FashionDet with RaMBO in the RPN's objectness (RaMBORPNHead) and the
# stock cross-entropy in the RoI box head: differs from faster_rcnn_r18_fashion_ce.py ONLY in
# rpn_head.type and rpn_head.loss_cls, for the proposal-recall comparison with the stock RPN
# (tools/eval_proposals.py). The RPN ranks the anchors its sampler picked (256 per image, all
# images together, one class). RaMBORPNHead tells the loss that these rows are a sample, so mode
# 'auto' gives it the RoI-head regime whatever the positive fraction (~2 % here): the paper's
# gradient with margin 0, the paper's score memory and 0.5 x the sigmoid cross-entropy, the
# setting of configs/_base_/rambo_losses.py's rambo_box_head_loss.
# Measured (seed 0, 1500 iterations, test split, results/quality/proposals.md): AR@100 / AR@1000
# 55.9 / 57.9 vs the stock RPN's 56.5 +- 0.6 / 58.1 +- 0.7 (3 seeds); detector validation mAP
# at 1500 iterations 29.9 vs 30.4 (stock, seed 0). Before the heads declared their sampling the
# RPN got the dense-head regime and trailed: 35.3 / 39.7 (results/quality/proposals/dense_regime/).
_base_ = ['./faster_rcnn_r18_fashion_ce.py', '../_base_/rambo_losses.py']

model = dict(
    rpn_head=dict(type='RaMBORPNHead', loss_cls={{_base_.rambo_box_head_loss}}))
