# RetinaNet R50-FPN 1x COCO trained with RaMBO (AP loss) instead of the focal loss.
#
# RaMBORetinaHead is RetinaHead whose classification loss sees all anchors of all FPN levels and
# all images of the batch in one call (one ranking, the AP the detector is evaluated on). The
# stock RetinaHead would call the loss once per level: five separate, weaker per-level rankings.
# Box regression (L1 on deltas, averaged over positives) is unchanged.
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['rambo_mmdet'], allow_failed_imports=False)

model = dict(
    bbox_head=dict(
        type='RaMBORetinaHead',
        loss_cls=dict(
            _delete_=True,
            type='RaMBOAPLoss',
            use_sigmoid=True,  # required here: the head reads it to get num_classes channels
            lambda_val=0.5,  # blackbox interpolation strength lambda (paper: 0.5)
            margin=0.15,  # margin alpha between positives and negatives (paper: 0.15)
            memory_batches=7,  # score memory tau, in batches (paper: 7)
            interclass_weight=1 / 3,  # beta, weight of the inter-class ranking (paper: 1/3)
            loss_weight=1.0)),
    # AP-trained scores are rank-calibrated, not probabilities: only their order is trained, so
    # the stock score_thr=0.05 is an arbitrary cut that may remove many true detections. Keep
    # every candidate (sigmoid scores are > 0); nms_pre (top 1000 per level) and max_per_img
    # bound the work and the output.
    test_cfg=dict(score_thr=0.0, nms_pre=1000, max_per_img=100))
