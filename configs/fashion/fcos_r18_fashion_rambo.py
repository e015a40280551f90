# FCOS R18-FPN on FashionDet trained with RaMBO (AP loss) instead of the focal loss.
# Differs from fcos_r18_fashion_focal.py ONLY in the head type and loss_cls: RaMBOFCOSHead is
# FCOSHead (its loss already ranks all points of all levels and images in one call) with the
# package's build checks, telling the loss that it ranks every point (the balanced gradient in
# every call, see ../_base_/rambo_losses.py); it scores p x sigmoid(centerness) as the stock head, with p the loss's
# calibrated class probability (the centerness-head loss of ../_base_/rambo_losses.py).
_base_ = ['./fcos_r18_fashion_focal.py', '../_base_/rambo_losses.py']

model = dict(
    bbox_head=dict(
        type='RaMBOFCOSHead',
        loss_cls={{_base_.rambo_centerness_head_loss}}))
