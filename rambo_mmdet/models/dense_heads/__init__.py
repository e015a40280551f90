"""Dense heads for ranking losses; importing this registers them into mmdet's ``MODELS``."""
from .all_levels_loss import (AllLevelsClsLossMixin, find_per_level_ranking_heads,
                              find_softmax_ranking_heads)
from .joined_levels import JoinedLevelsClsLossMixin
from .rambo_heads import RaMBOATSSHead, RaMBOFCOSHead, RaMBORetinaHead, RaMBORPNHead
from .ranking_head import RankingLossHeadMixin, is_ranking_loss

__all__ = [
    'AllLevelsClsLossMixin', 'JoinedLevelsClsLossMixin', 'RankingLossHeadMixin',
    'RaMBOATSSHead', 'RaMBOFCOSHead', 'RaMBORetinaHead', 'RaMBORPNHead',
    'find_per_level_ranking_heads', 'find_softmax_ranking_heads', 'is_ranking_loss'
]
