from .rambo_ap_loss import RaMBOAPLoss, name_ranking_losses
from .rambo_recall_loss import RaMBORecallLoss

__all__ = ['RaMBOAPLoss', 'RaMBORecallLoss', 'name_ranking_losses']
