# FCOS R50-caffe-FPN (GN head) 1x COCO trained with RaMBO (AP loss) instead of the focal loss.
#
# RaMBOFCOSHead is mmdet's FCOSHead (its classification loss already sees all points of all FPN
# levels and all images in one call) plus the package's build checks, a checkpoint-loading fix
# and telling the loss that it ranks every point (README "Heads"). It scores p x sigmoid(centerness) as the stock head, with p the loss's
# calibrated class probability (rambo_centerness_head_loss, see _base_/rambo_losses.py).
# Measured on the FashionDet twin (configs/fashion/fcos_r18_fashion_*.py, 4500 iterations,
# 3 seeds): mAP 30.8 +- 0.6 vs focal 26.5 +- 0.2 (results/quality_fcos/, README "Quality").
# The backbone is mmdet's (caffe-style ResNet-50, open-mmlab://detectron/resnet50_caffe), as are
# the optimiser (SGD lr 0.01, biases at 2x lr without decay, gradient clipping) and schedule.
_base_ = ['mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py', './_base_/rambo_losses.py']

custom_imports = dict(imports=['rambo_mmdet'], allow_failed_imports=False)

model = dict(
    bbox_head=dict(
        type='RaMBOFCOSHead',
        loss_cls={{_base_.rambo_centerness_head_loss}}),
    # keep all candidates (see retinanet_rambo.py); mmdet's FCOS NMS kept
    test_cfg=dict(score_thr=0.0))
