# FCOS R18-FPN on FashionDet with the stock FCOSHead + FocalLoss: the baseline twin of
# fcos_r18_fashion_rambo.py, which differs ONLY in the head type (RaMBOFCOSHead: the stock head
# with the package's checks, telling the loss that it ranks every point) and loss_cls (README
# "Quality", FCOS).
#
# Built on retinanet_r18_fashion_focal.py (backbone, FPN, data, schedule, runtime: the same
# budget choices, see that file) with the detector and head of mmdet's
# fcos_r50-caffe_fpn_gn-head_1x_coco.py (FCOS, FPN extra convs on the outputs with ReLU, FCOSHead
# with GroupNorm, focal / IoU / centerness losses), except:
# - 64 channels and GN with 16 groups, as the RetinaNet twin's head;
# - regression ranges halved (objects are ~7..75 px on the 160 px input; the RetinaNet twins
#   halve the anchor scale for the same reason);
# - test score_thr 0.0, nms_pre 1000, max_per_img 100 (as the RetinaNet twins).
# mmdet's FCOS config cannot be a base here (it also defines the COCO data and schedule, which
# mmengine refuses beside _fashion_runtime.py's).
_base_ = ['./retinanet_r18_fashion_focal.py']

model = dict(
    type='FCOS',
    neck=dict(add_extra_convs='on_output', relu_before_extra_convs=True),
    bbox_head=dict(
        _delete_=True,
        type='FCOSHead',
        num_classes=10,
        in_channels=64,
        stacked_convs=4,
        feat_channels=64,
        strides=[8, 16, 32, 64, 128],
        regress_ranges=((-1, 32), (32, 64), (64, 128), (128, 256), (256, 1e8)),
        norm_cfg=dict(type='GN', num_groups=16, requires_grad=True),
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                      loss_weight=1.0),
        loss_bbox=dict(type='IoULoss', loss_weight=1.0),
        loss_centerness=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0)),
    train_cfg=None,
    test_cfg=dict(_delete_=True, nms_pre=1000, min_bbox_size=0, score_thr=0.0,
                  nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
