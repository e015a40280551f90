# Faster R-CNN R50-FPN 1x COCO trained with RaMBO (AP loss) in the RoI box head.
#
# Only the classification loss of roi_head.bbox_head and the test-time score threshold differ
# from mmdet's faster-rcnn_r50_fpn_1x_coco.py. The RPN keeps its cross-entropy objectness loss.
#
# RaMBOAPLoss in a BBoxHead: the box head asks the loss for its output channels
# (get_cls_channels -> num_classes: one sigmoid score per class, no background logit) and for
# the test-time activation (get_activation -> sigmoid scores plus a zero background column, the
# [N, C+1] layout multiclass_nms expects). All sampled RoIs of all images of the batch go to the
# loss in one call, as the AP loss needs.
_base_ = ['mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', './_base_/rambo_losses.py',
          './_base_/imagenet_weights.py']

custom_imports = dict(imports=['rambo_mmdet'], allow_failed_imports=False)

model = dict(
    # torchvision's ImageNet ResNet-50 by its URL: no torchvision needed (see the fragment)
    backbone=dict(init_cfg=dict(checkpoint={{_base_.resnet50_imagenet}})),
    roi_head=dict(
        bbox_head=dict(
            loss_cls={{_base_.rambo_box_head_loss}})),
    # AP-trained scores are rank-calibrated, not probabilities: the loss only orders positives
    # above negatives, so the absolute score level (and a good threshold) is arbitrary and can
    # drift during training. The stock score_thr=0.05 could drop most detections of such a model
    # and lower its AP; keep every box (score_thr=0.0, sigmoid scores are > 0) and let NMS and
    # max_per_img bound the output. Cost: multiclass_nms sees up to 1000 proposals x 80 classes
    # per image.
    test_cfg=dict(rcnn=dict(score_thr=0.0, max_per_img=100)))
