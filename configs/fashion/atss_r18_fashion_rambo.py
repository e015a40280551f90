# ATSS R18-FPN on FashionDet trained with RaMBO (AP loss) instead of the focal loss.
# Differs from atss_r18_fashion_focal.py ONLY in the head type and loss_cls: RaMBOATSSHead is
# ATSSHead (same layers, init, ATSS assignment, box and centerness losses, prediction) whose
# classification loss ranks all anchors of all FPN levels and all images of the batch in one call,
# and whose scores (sigmoid(logit) x centerness) go through the loss's calibration map.
_base_ = ['./atss_r18_fashion_focal.py', '../_base_/rambo_losses.py']

model = dict(
    bbox_head=dict(
        type='RaMBOATSSHead',
        # the shipped dense-head loss (see configs/_base_/rambo_losses.py). ATSS gives ~10 % of
        # the anchors a positive label here (above the 1/32 switch of mode 'auto'), so 'auto'
        # takes the paper's gradient with margin 0 plus the cross-entropy term in most calls.
        loss_cls={{_base_.rambo_dense_head_loss}}))
