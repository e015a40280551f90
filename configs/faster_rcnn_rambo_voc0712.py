# Faster R-CNN R50-FPN on PASCAL VOC 07+12 (VOCMetric, 11-point mAP on VOC2007 test) with RaMBO
# in the RoI box head. Same RaMBO settings as faster_rcnn_rambo.py (mmdet configs cannot inherit
# the model part of one config and the data part of another, so the few lines are repeated;
# tests/test_configs.py checks that they agree).
_base_ = 'mmdet::pascal_voc/faster-rcnn_r50_fpn_1x_voc0712.py'

custom_imports = dict(imports=['rambo_mmdet'], allow_failed_imports=False)

model = dict(
    roi_head=dict(
        bbox_head=dict(
            loss_cls=dict(
                _delete_=True,
                type='RaMBOAPLoss',
                use_sigmoid=True,
                lambda_val=0.5,
                margin=0.15,
                memory_batches=7,
                interclass_weight=1 / 3,
                loss_weight=1.0))),
    # rank-calibrated scores: keep all boxes (see faster_rcnn_rambo.py)
    test_cfg=dict(rcnn=dict(score_thr=0.0, max_per_img=100)))
