from .rambo_ap_loss import RaMBOAPLoss
from .rambo_recall_loss import RaMBORecallLoss

__all__ = ['RaMBOAPLoss', 'RaMBORecallLoss']
