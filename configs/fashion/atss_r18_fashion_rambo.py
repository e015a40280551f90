# ATSS R18-FPN on FashionDet trained with RaMBO (AP loss) instead of the focal loss.
# Differs from atss_r18_fashion_focal.py ONLY in the head type and loss_cls: RaMBOATSSHead is
# ATSSHead (same layers, init, ATSS assignment, box and centerness losses, prediction) whose
# classification loss ranks all anchors of all FPN levels and all images of the batch in one call;
# it scores p x sigmoid(centerness) as the stock head, with p the loss's calibrated class
# probability (the centerness-head loss of ../_base_/rambo_losses.py: the map fitted on the
# ranked rows).
_base_ = ['./atss_r18_fashion_focal.py', '../_base_/rambo_losses.py']

model = dict(
    bbox_head=dict(
        type='RaMBOATSSHead',
        # the centerness-head loss: tau 7 and a class-probability map (../_base_/rambo_losses.py).
        # ATSS gives 1.7-4.2 % of the anchors a positive label here (12 training batches), around
        # the 1/32 switch of mode 'auto'; the head tells the loss it ranks every anchor (its
        # PseudoSampler), so every call takes the balanced gradient (margin 0.15).
        loss_cls={{_base_.rambo_centerness_head_loss}}))
