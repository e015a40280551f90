# RetinaNet R18-FPN on FashionDet trained with RaMBO (AP loss) instead of the focal loss.
# Differs from retinanet_r18_fashion_focal.py ONLY in the head type and loss_cls:
# RaMBORetinaHead is RetinaHead (same layers, init, assignment, prediction) whose classification
# loss ranks all anchors of all FPN levels and all images of the batch in one call; box
# regression is unchanged. Everything else comes from that file.
_base_ = ['./retinanet_r18_fashion_focal.py']

model = dict(
    bbox_head=dict(
        type='RaMBORetinaHead',
        loss_cls=dict(
            _delete_=True,
            type='RaMBOAPLoss',
            use_sigmoid=True,  # required: the head reads it to get num_classes channels
            lambda_val=0.5,  # blackbox interpolation strength lambda (paper: 0.5)
            # margin alpha: 0, not the paper's 0.15. From scratch the classifier starts with
            # near-constant logits (prior bias -4.6, std ~0.01); the margin then puts every
            # positive below every negative by more than the blackbox perturbation can move them
            # and the gradient is exactly zero (see faster_rcnn_r18_fashion_rambo.py).
            margin=0.0,
            memory_batches=7,  # score memory tau, in batches (paper: 7)
            interclass_weight=1 / 3,  # beta (paper: 1/3)
            score_activation='logits',
            loss_weight=1.0)))
