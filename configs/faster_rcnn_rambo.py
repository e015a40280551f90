# Faster R-CNN R50-FPN 1x COCO trained with RaMBO (AP loss) in the RoI box head.
#
# Only the classification loss of roi_head.bbox_head differs from mmdet's
# faster-rcnn_r50_fpn_1x_coco.py (test thresholds included). The RPN keeps its cross-entropy
# objectness loss.
#
# RaMBOAPLoss in a BBoxHead: the box head asks the loss for its output channels
# (get_cls_channels -> num_classes: one sigmoid score per class, no background logit) and for
# the test-time activation (get_activation -> sigmoid scores plus a zero background column, the
# [N, C+1] layout multiclass_nms expects; the scores are calibrated probabilities, see the loss
# fragment). All sampled RoIs of all images of the batch go to the
# loss in one call, as the AP loss needs. mmdet's recipe trains with SGD, so the loss is the
# SGD variant of the box-head loss (its cross-entropy term the softmax one, see the fragment);
# with AdamW use rambo_box_head_loss.
_base_ = ['mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', './_base_/rambo_losses.py',
          './_base_/imagenet_weights.py']

custom_imports = dict(imports=['rambo_mmdet'], allow_failed_imports=False)

model = dict(
    # torchvision's ImageNet ResNet-50 by its URL: no torchvision needed (see the fragment)
    backbone=dict(init_cfg=dict(checkpoint={{_base_.resnet50_imagenet}})),
    roi_head=dict(
        bbox_head=dict(
            loss_cls={{_base_.rambo_box_head_loss_sgd}})),
    # test_cfg: mmdet's (score_thr 0.05, max_per_img 100). The loss learns a calibration map of
    # the logits during training (calibration='global', configs/_base_/rambo_losses.py), so the
    # scores are probabilities and mmdet's thresholds mean what they mean for a cross-entropy
    # model. Measured on the FashionDet twin (README "Calibrated scores"): score_thr 0.05 costs
    # 0.10-0.15 COCO mAP against 0.0 (ranking alone / with the default cross-entropy term), the
    # cross-entropy twin 0.11.
)
