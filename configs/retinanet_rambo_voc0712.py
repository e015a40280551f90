# RetinaNet R50-FPN on PASCAL VOC 07+12 (VOCMetric, 11-point mAP on VOC2007 test) with RaMBO in
# RaMBORetinaHead. Same RaMBO settings as retinanet_rambo.py (repeated: mmdet configs cannot
# merge two bases that both define `model`; tests/test_configs.py checks that they agree).
_base_ = 'mmdet::pascal_voc/retinanet_r50_fpn_1x_voc0712.py'

custom_imports = dict(imports=['rambo_mmdet'], allow_failed_imports=False)

model = dict(
    bbox_head=dict(
        type='RaMBORetinaHead',
        loss_cls=dict(
            _delete_=True,
            type='RaMBOAPLoss',
            use_sigmoid=True,
            lambda_val=0.5,
            margin=0.15,
            memory_batches=7,
            interclass_weight=1 / 3,
            loss_weight=1.0)),
    # rank-calibrated scores: keep all candidates (see retinanet_rambo.py)
    test_cfg=dict(score_thr=0.0, nms_pre=1000, max_per_img=100))
