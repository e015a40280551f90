# Faster R-CNN R18-FPN on FashionDet trained with RaMBO (AP loss) in the RoI box head.
# Differs from faster_rcnn_r18_fashion_ce.py ONLY in roi_head.bbox_head.loss_cls (the RPN keeps
# its cross-entropy objectness loss). Everything else (model, data, schedule, test score_thr)
# comes from that file.
_base_ = ['./faster_rcnn_r18_fashion_ce.py', '../_base_/rambo_losses.py']

model = dict(
    roi_head=dict(
        bbox_head=dict(
            # the shipped RoI-head loss: mode 'auto' (the paper's gradient here, with 25 %
            # positive RoIs) with margin 0, tau 7, plus 0.5 x the sigmoid cross-entropy of the
            # same logits (see configs/_base_/rambo_losses.py)
            loss_cls={{_base_.rambo_box_head_loss}})))
