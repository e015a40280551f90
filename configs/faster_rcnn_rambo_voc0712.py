# Faster R-CNN R50-FPN on PASCAL VOC 07+12 (VOCMetric, 11-point mAP on VOC2007 test) with RaMBO
# in the RoI box head. The loss comes from _base_/rambo_losses.py, as in every shipped config
# (its SGD variant: mmdet's VOC recipe trains with SGD, see faster_rcnn_rambo.py).
_base_ = ['mmdet::pascal_voc/faster-rcnn_r50_fpn_1x_voc0712.py', './_base_/rambo_losses.py',
          './_base_/imagenet_weights.py']

custom_imports = dict(imports=['rambo_mmdet'], allow_failed_imports=False)

model = dict(
    # torchvision's ImageNet ResNet-50 by its URL: no torchvision needed (see the fragment)
    backbone=dict(init_cfg=dict(checkpoint={{_base_.resnet50_imagenet}})),
    roi_head=dict(
        bbox_head=dict(
            loss_cls={{_base_.rambo_box_head_loss_sgd}})))
# test_cfg: mmdet's (calibrated scores, see faster_rcnn_rambo.py)
