"""Dense heads for ranking losses; importing this registers them into mmdet's ``MODELS``."""
from .all_levels_loss import (AllLevelsClsLossMixin, find_per_level_ranking_heads,
                              find_softmax_ranking_heads, is_ranking_loss)
from .rambo_heads import RaMBORetinaHead, RaMBORPNHead

__all__ = [
    'AllLevelsClsLossMixin', 'RaMBORetinaHead', 'RaMBORPNHead', 'find_per_level_ranking_heads',
    'find_softmax_ranking_heads', 'is_ranking_loss'
]
