# Pilot: FCOS twin with RaMBOAPLoss as the README says a user writes it in a stock FCOSHead:
# loss_cls=dict(type='RaMBOAPLoss', use_sigmoid=True) (all defaults), nothing else changed.
_base_ = ['./fcos_r18_fashion_focal.py']
model = dict(bbox_head=dict(loss_cls=dict(_delete_=True, type='RaMBOAPLoss', use_sigmoid=True)))
