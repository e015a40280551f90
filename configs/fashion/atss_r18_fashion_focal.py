# ATSS R18-FPN on FashionDet with the stock ATSSHead + FocalLoss: the baseline twin of
# atss_r18_fashion_rambo.py, which differs ONLY in the head type (RaMBOATSSHead = ATSSHead whose
# classification loss sees all FPN levels in one call) and in loss_cls.
#
# Built on retinanet_r18_fashion_focal.py (backbone, FPN width, data, schedule, runtime: the same
# budget choices, see that file) with the detector and head of mmdet's atss_r50_fpn_1x_coco.py
# (one square anchor per location, ATSSAssigner top 9, GIoU on decoded boxes, centerness branch,
# FPN extra convs on the outputs), except:
# - 64 channels and GN with 16 groups, as the RetinaNet twin's head;
# - anchor octave_base_scale 4 instead of 8 (32..512 px over strides 8..128): the garments are
#   ~7..75 px on the 160 px input (the RetinaNet twins halve the anchor scale for the same reason);
# - test score_thr 0.0, nms_pre 1000, max_per_img 100 (as the RetinaNet twins; mmdet's ATSS NMS
#   IoU 0.6 kept).
# mmdet's ATSS config cannot be a base here (it also defines the COCO data and schedule, which
# mmengine refuses beside _fashion_runtime.py's).
_base_ = ['./retinanet_r18_fashion_focal.py']

model = dict(
    type='ATSS',
    neck=dict(add_extra_convs='on_output'),
    bbox_head=dict(
        _delete_=True,
        type='ATSSHead',
        num_classes=10,
        in_channels=64,
        stacked_convs=4,
        feat_channels=64,
        norm_cfg=dict(type='GN', num_groups=16, requires_grad=True),
        anchor_generator=dict(type='AnchorGenerator', ratios=[1.0], octave_base_scale=4,
                              scales_per_octave=1, strides=[8, 16, 32, 64, 128]),
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[.0, .0, .0, .0],
                        target_stds=[0.1, 0.1, 0.2, 0.2]),
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                      loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=2.0),
        loss_centerness=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0)),
    train_cfg=dict(_delete_=True, assigner=dict(type='ATSSAssigner', topk=9),
                   allowed_border=-1, pos_weight=-1, debug=False),
    test_cfg=dict(_delete_=True, nms_pre=1000, min_bbox_size=0, score_thr=0.0,
                  nms=dict(type='nms', iou_threshold=0.6), max_per_img=100))
