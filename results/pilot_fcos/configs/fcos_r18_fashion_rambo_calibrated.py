# The FCOS pilot's RaMBO arm (fcos_r18_fashion_rambo.py: the stock FCOSHead with
# loss_cls=dict(type='RaMBOAPLoss', use_sigmoid=True), all defaults) with RaMBOFCOSHead and
# calibration_source='detections': the same layers, losses and training (the map is fitted on
# detached scores), with the map fitted on and applied to the final detection scores
# (sigmoid(logit) x sigmoid(centerness)). Used with tools/calibrate.py --fit train on the pilot's
# checkpoints (README "Quality", FCOS).
_base_ = ['./fcos_r18_fashion_rambo.py']

model = dict(bbox_head=dict(type='RaMBOFCOSHead',
                            loss_cls=dict(calibration_source='detections')))
