# RetinaNet R50-FPN on PASCAL VOC 07+12 (VOCMetric, 11-point mAP on VOC2007 test) with RaMBO in
# RaMBORetinaHead. The loss comes from _base_/rambo_losses.py, as in every shipped config.
_base_ = ['mmdet::pascal_voc/retinanet_r50_fpn_1x_voc0712.py', './_base_/rambo_losses.py',
          './_base_/imagenet_weights.py']

custom_imports = dict(imports=['rambo_mmdet'], allow_failed_imports=False)

model = dict(
    # torchvision's ImageNet ResNet-50 by its URL: no torchvision needed (see the fragment)
    backbone=dict(init_cfg=dict(checkpoint={{_base_.resnet50_imagenet}})),
    bbox_head=dict(
        type='RaMBORetinaHead',
        loss_cls={{_base_.rambo_dense_head_loss}}),
    # calibrated scores, but keep all candidates (see retinanet_rambo.py)
    test_cfg=dict(score_thr=0.0, nms_pre=1000, max_per_img=100))
