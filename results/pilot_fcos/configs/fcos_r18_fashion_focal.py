# The FCOS pilot's focal arm: the same file as the shipped baseline twin
# configs/fashion/fcos_r18_fashion_focal.py (which it was copied to), kept here as the base of the
# pilot's RaMBO arm (fcos_r18_fashion_rambo.py: the stock FCOSHead with RaMBOAPLoss defaults).
_base_ = ['../../../configs/fashion/fcos_r18_fashion_focal.py']
